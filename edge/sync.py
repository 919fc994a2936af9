"""Keeps an edge process serving the right bundle: pulls from the store, loads off the request path, swaps.

Several server processes of one node share a state directory and coordinate only through it:

    state_dir/bundles/<version>/   the local bundle cache (downloads land atomically)
    state_dir/pin.json             {"version": ...} when an operator pinned the node to a version
    state_dir/history.json         activated versions, newest first (what node rollback walks back through)
    state_dir/.lock                an flock serializing history and cache clean-up between processes
    state_dir/loading/<version>@<pid>  present while a process loads a version; one left by a dead process
                                   means the version crashed it, and no process of the node loads it again
    state_dir/processes/<pid>.json what each live process serves (ProcessState), so any process can report the node
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Generic, TypeVar

from aura.bundle.format import MANIFEST, Manifest
from aura.bundle.store import BundleStore, atomic_path, check_version, utc_now
from aura.errors import AuraError, BundleError, NotFound
from aura.processes import process_alive

log = logging.getLogger(__name__)

T = TypeVar("T")

PIN_CHECK_SECONDS = 1.0
"""How often the background thread reads the pin file, so a pin set by a sibling process applies quickly."""
HISTORY_LIMIT = 50
STALE_DOWNLOAD_SECONDS = 3600.0
"""A temporary download directory older than this was left by a crashed process and is removed."""


@dataclass(frozen=True)
class VersionInfo:
    """One bundle version known to the node: in its cache, in the store or both."""

    version: str
    cached: bool
    in_store: bool
    active: bool
    manifest: Manifest | None
    """The version's manifest, or None when it could not be read."""


@dataclass(frozen=True)
class ProcessState:
    """What one server process of the node serves, as it publishes it in `state_dir/processes/<pid>.json`."""

    pid: int
    active_version: str
    """Empty before the first load."""
    loaded_at: str
    """When the serving version was swapped in, RFC 3339; empty before the first load."""
    last_error: str
    """Empty when none."""


@dataclass(frozen=True)
class SyncStatus:
    """What a process serves and what it could serve."""

    active_version: str | None
    loaded_at: datetime | None
    pinned: str | None
    """The version the node is pinned to, or None when it follows the store."""
    store_version: str | None
    """The store's promoted version as last seen."""
    available: tuple[VersionInfo, ...]
    """Versions in the local cache or the store, newest first."""
    last_error: str | None
    processes: tuple[ProcessState, ...]
    """The node's live server processes by pid, this one included."""


@dataclass(frozen=True)
class SwapResult:
    """The outcome of an activation or rollback."""

    active_version: str
    previous_version: str | None


class BundleSync(Generic[T]):
    """Pulls bundles from a store into a local cache and hot-swaps the loaded bundle of this process.

    `loader(path)` verifies and loads a bundle directory (raising BundleError for a bad one) and
    `on_swap(loaded)` installs the result; both run off the request path, and any failure leaves the
    current bundle serving. Call `sync_once()` for a blocking first load, then `start()`.
    """

    def __init__(
        self,
        store: BundleStore,
        state_dir: str | Path,
        loader: Callable[[Path], T],
        on_swap: Callable[[T], None],
        keep: int = 5,
        poll_seconds: float = 30.0,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1 cached bundle version, got {keep}.")
        if poll_seconds <= 0:
            raise ValueError(f"poll_seconds must be positive, got {poll_seconds}.")
        self._store = store
        self._state_dir = Path(state_dir)
        self._cache_dir = self._state_dir / "bundles"
        self._pin_path = self._state_dir / "pin.json"
        self._history_path = self._state_dir / "history.json"
        self._lock_path = self._state_dir / ".lock"
        self._loading_dir = self._state_dir / "loading"
        self._refresh_path = self._state_dir / "refresh-requested"
        self._processes_dir = self._state_dir / "processes"
        self._loader = loader
        self._on_swap = on_swap
        self._keep = keep
        self._poll_seconds = poll_seconds
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        self._loading_dir.mkdir(exist_ok=True)
        self._processes_dir.mkdir(exist_ok=True)

        self._lock = threading.RLock()
        self._active: str | None = None
        self._loaded_at: datetime | None = None
        self._pinned: str | None = None
        self._store_version: str | None = None
        self._store_seen = False
        self._failed: str | None = None
        self._last_error: str | None = None
        self._manifests: dict[str, Manifest] = {}
        self._published: ProcessState | None = None
        self._refresh_seen = self._refresh_request_time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active_version(self) -> str | None:
        """The version this process serves, or None before the first load."""
        return self._active

    def sync_once(self) -> bool:
        """Check the pin and the store now and swap if the desired version changed; True if it swapped."""
        return self._sync(check_store=True, retry_failed=True)

    def refresh(self) -> bool:
        """Sync now and have the node's other processes check the store within a second (the admin refresh).

        True if this process's serving version changed.
        """
        self._refresh_path.touch()
        self._refresh_seen = self._refresh_request_time()
        return self.sync_once()

    def start(self) -> None:
        """Start the background thread: pin file about every second, store every `poll_seconds`."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="aura-bundle-sync", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background thread, waiting for a sync in progress to finish, and withdraw the published state."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._process_path(os.getpid()).unlink(missing_ok=True)
        self._published = None

    def activate(self, version: str) -> SwapResult:
        """Pin the node to `version` and serve it now; activating the store's current version clears the pin.

        Raises NotFound if the version is neither cached nor in the store, and BundleError (with the pin
        restored) if it cannot be loaded.
        """
        return self._activate(check_version(version), rollback=False)

    def rollback(self) -> SwapResult:
        """Pin the node to the version it served before the current one and serve it now."""
        with self._lock:
            if self._active is None:
                raise NotFound("no bundle is active, so there is no earlier version to roll back to.")
            history = self._read_history()
            start = history.index(self._active) if self._active in history else len(history)
            target = next((v for v in history[start + 1 :] if v != self._active), None)
            if target is None:
                raise NotFound(f"this node served no version before {self._active}; there is nothing to roll back to.")
            return self._activate(target, rollback=True)

    def status(self) -> SyncStatus:
        """Report the serving version, the pin, the store's version, every version available and the processes."""
        with self._lock:
            active, loaded_at, last_error = self._active, self._loaded_at, self._last_error
            own_state = self._own_state()
        store_version, store_versions = self._store_version, set()
        try:
            store_version = self._store.current()
            store_versions = set(self._store.list_versions())
        except AuraError as exc:
            log.warning("bundle store %s: status could not list versions: %s", self._store.url, exc)
        cached = set(self._cached_versions())
        available = [
            VersionInfo(
                version=version,
                cached=version in cached,
                in_store=version in store_versions,
                active=version == active,
                manifest=self._manifest(version, cached=version in cached),
            )
            for version in sorted(cached | store_versions, reverse=True)
        ]
        return SyncStatus(
            active_version=active,
            loaded_at=loaded_at,
            pinned=self._read_pin_quietly(),
            store_version=store_version,
            available=tuple(available),
            last_error=last_error,
            processes=self._node_processes(own_state),
        )

    def _run(self) -> None:
        next_store_check = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            check_store = now >= next_store_check or self._refresh_requested()
            if check_store:
                next_store_check = now + self._poll_seconds
            try:
                self._sync(check_store=check_store, retry_failed=check_store)
            except Exception:
                # The thread must outlive any surprise (e.g. a full disk); the next tick retries.
                log.exception("bundle sync tick failed unexpectedly")
            self._stop.wait(min(PIN_CHECK_SECONDS, self._poll_seconds))

    def _refresh_request_time(self) -> int | None:
        try:
            return self._refresh_path.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _refresh_requested(self) -> bool:
        """Whether a process sharing the state directory asked for a refresh since this one last looked."""
        requested = self._refresh_request_time()
        if requested == self._refresh_seen:
            return False
        self._refresh_seen = requested
        return True

    def _sync(self, *, check_store: bool, retry_failed: bool) -> bool:
        with self._changing_state():
            try:
                desired = self._desired(check_store)
            except AuraError as exc:
                fallback = self._last_cached_active() if self._active is None else None
                if fallback is not None:
                    log.warning("bundle store %s is unreachable; loading the cached %s", self._store.url, fallback)
                swapped = fallback is not None and self._try_swap(fallback)
                self._note_error(exc)
                return swapped
            if desired is None:
                return self._without_promoted_version(retry_failed=retry_failed)
            if desired == self._active:
                self._last_error = None
                return False
            if desired == self._failed and not retry_failed:
                return False
            if self._try_swap(desired):
                return True
            # A process that serves nothing yet falls back to the last version this node served.
            fallback = self._last_cached_active() if self._active is None else None
            if fallback in (None, desired):
                return False
            error, swapped = self._last_error, self._try_swap(fallback)
            self._last_error = error
            return swapped

    def _without_promoted_version(self, *, retry_failed: bool) -> bool:
        """The store is reachable but has no promoted version (and no pin is set): keep or fall back.

        A process that serves a version keeps it; one that serves nothing yet loads the last version this
        node served, as when the store is unreachable. Either way `last_error` says so. A new node with no
        cached version serves nothing without an error: the store has not promoted its first bundle yet.
        """
        no_version = f"bundle store {self._store.url} has no promoted version"
        if self._active is not None:
            self._note_state(f"{no_version}; serving the cached {self._active}.")
            return False
        fallback = self._last_cached_active()
        if fallback is None:
            self._last_error = None
            return False
        if fallback == self._failed and not retry_failed:
            return False
        if self._try_swap(fallback):
            self._note_state(f"{no_version}; serving the cached {fallback}.")
            return True
        self._last_error = f"{no_version}; the cached {fallback} failed: {self._last_error}"
        return False

    @contextmanager
    def _changing_state(self) -> Iterator[None]:
        """Hold the lock for a sync or activation, then publish this process's state if it changed."""
        with self._lock:
            try:
                yield
            finally:
                self._publish_state()

    def _own_state(self) -> ProcessState:
        return ProcessState(
            pid=os.getpid(),
            active_version=self._active or "",
            loaded_at=self._loaded_at.isoformat(timespec="seconds").replace("+00:00", "Z") if self._loaded_at else "",
            last_error=self._last_error or "",
        )

    def _process_path(self, pid: int) -> Path:
        return self._processes_dir / f"{pid}.json"

    def _publish_state(self) -> None:
        """Write this process's state to `processes/<pid>.json` unless the file already holds it."""
        state = self._own_state()
        if state == self._published:
            return
        try:
            self._write_json(self._process_path(state.pid), {**asdict(state), "updated_at": utc_now()})
        except OSError as exc:
            log.warning("bundle sync could not publish the state of process %d: %s", state.pid, exc)
            return
        self._published = state

    def _node_processes(self, own_state: ProcessState) -> tuple[ProcessState, ...]:
        """`own_state` and the states the node's other live processes published; a dead process's file is removed."""
        states = [own_state]
        for path in self._processes_dir.glob("*.json"):
            pid = int(path.stem) if path.stem.isdigit() else None
            if pid is None or pid == own_state.pid:
                continue
            if not process_alive(pid):
                path.unlink(missing_ok=True)
                continue
            state = self._read_process_state(path, pid)
            if state is not None:
                states.append(state)
        return tuple(sorted(states, key=lambda state: state.pid))

    @staticmethod
    def _read_process_state(path: Path, pid: int) -> ProcessState | None:
        """The state in a process's file, or None when the file is gone, unreadable or malformed."""
        try:
            data = json.loads(path.read_text())
            fields = (data["active_version"], data["loaded_at"], data["last_error"])
        except (OSError, ValueError, TypeError, KeyError):
            return None
        if not all(isinstance(field, str) for field in fields):
            return None
        return ProcessState(pid, *fields)

    def _note_state(self, message: str) -> None:
        """Set `last_error` to a condition checked every tick, logging it only when it starts."""
        if message != self._last_error:
            log.warning("%s", message)
        self._last_error = message

    def _try_swap(self, version: str) -> bool:
        try:
            self._swap_to(version)
        except AuraError as exc:
            self._note_error(exc)
            return False
        self._last_error = None
        return True

    def _note_error(self, exc: AuraError) -> None:
        self._last_error = str(exc)
        log.warning("bundle sync failed, %s keeps serving: %s", self._active or "nothing", exc)

    def _desired(self, check_store: bool) -> str | None:
        pin = self._read_pin()
        pin_cleared = self._pinned is not None and pin is None
        self._pinned = pin
        if pin is not None:
            return pin
        if check_store or pin_cleared or not self._store_seen:
            self._store_version = self._store.current()
            self._store_seen = True
        return self._store_version

    def _activate(self, version: str, *, rollback: bool) -> SwapResult:
        with self._changing_state():
            if not self._is_cached(version):
                self._manifest_from_store(version)
            try:
                store_version = self._store.current()
            except AuraError:
                store_version = self._store_version
            previous, old_pin = self._active, self._read_pin_quietly()
            new_pin = None if version == store_version else version
            self._write_pin(new_pin)
            self._pinned = new_pin
            if version != self._active:
                try:
                    self._swap_to(version, rollback=rollback)
                except AuraError as exc:
                    self._write_pin(old_pin)
                    self._pinned = old_pin
                    self._last_error = str(exc)
                    raise BundleError(f"bundle {version} was not activated, {previous} keeps serving: {exc}") from None
            self._last_error = None
            return SwapResult(active_version=version, previous_version=previous)

    def _swap_to(self, version: str, *, rollback: bool = False) -> None:
        try:
            self._refuse_if_it_crashed_a_process(version)
            path = self._cache_dir / version
            if not self._is_cached(version):
                path = self._store.download(version, self._cache_dir)
            marker = self._loading_dir / f"{version}@{os.getpid()}"
            marker.touch()
            try:
                self._on_swap(self._loader(path))
            except BundleError:
                self._discard(version)
                raise
            except Exception as exc:
                log.exception("bundle %s failed to load", version)
                raise BundleError(f"bundle {version} failed to load: {type(exc).__name__}: {exc}") from None
            finally:
                marker.unlink(missing_ok=True)
        except AuraError:
            self._failed = version
            raise
        self._active, self._loaded_at, self._failed = version, datetime.now(UTC), None
        log.info("bundle %s is now serving", version)
        os.utime(path)
        self._record_activation(version, rollback=rollback)
        self._apply_retention()

    def _refuse_if_it_crashed_a_process(self, version: str) -> None:
        for marker in self._loading_dir.glob(f"{version}@*"):
            pid = marker.name.rpartition("@")[2]
            if pid.isdigit() and not process_alive(int(pid)):
                raise BundleError(
                    f"bundle {version} crashed server process {pid} while it loaded, so this node does not load it "
                    f"again (delete {marker} to retry)."
                )

    def _is_cached(self, version: str) -> bool:
        return (self._cache_dir / version / MANIFEST).is_file()

    def _cached_versions(self) -> list[str]:
        return [p.name for p in self._cache_dir.iterdir() if not p.name.startswith(".") and self._is_cached(p.name)]

    def _discard(self, version: str) -> None:
        """Remove a cached copy that failed to load so the next attempt downloads it afresh."""
        if version != self._active:
            with self._file_lock():
                shutil.rmtree(self._cache_dir / version, ignore_errors=True)

    def _manifest_from_store(self, version: str) -> Manifest:
        manifest = self._store.read_manifest(version)
        self._manifests[version] = manifest
        return manifest

    def _manifest(self, version: str, *, cached: bool) -> Manifest | None:
        if version in self._manifests:
            return self._manifests[version]
        try:
            manifest = Manifest.read(self._cache_dir / version) if cached else self._manifest_from_store(version)
        except AuraError:
            return None
        self._manifests[version] = manifest
        return manifest

    def _last_cached_active(self) -> str | None:
        return next((v for v in self._read_history() if self._is_cached(v)), None)

    def _apply_retention(self) -> None:
        with self._file_lock():
            protected = {v for v in (self._active, self._read_pin_quietly()) if v is not None}
            newest_first = sorted(
                self._cached_versions(),
                key=lambda v: ((self._cache_dir / v).stat().st_mtime_ns, v),
                reverse=True,
            )
            kept = [v for v in newest_first if v in protected]
            for version in newest_first:
                if version in protected:
                    continue
                if len(kept) < self._keep:
                    kept.append(version)
                else:
                    shutil.rmtree(self._cache_dir / version, ignore_errors=True)
                    log.info("bundle %s removed from the local cache (keeping %d)", version, self._keep)
            stale = time.time() - STALE_DOWNLOAD_SECONDS
            for leftover in self._cache_dir.glob(".tmp-*"):
                with suppress(FileNotFoundError):
                    if leftover.stat().st_mtime < stale:
                        shutil.rmtree(leftover, ignore_errors=True)

    def _record_activation(self, version: str, *, rollback: bool) -> None:
        """Put `version` on top of the node history; a rollback drops the entries it walked back over."""
        with self._file_lock():
            history = self._read_history_entries()
            versions = [entry["version"] for entry in history]
            if rollback and version in versions:
                history = history[versions.index(version) :]
            elif not versions or versions[0] != version:
                history.insert(0, {"version": version, "activated_at": utc_now()})
            self._write_json(self._history_path, history[:HISTORY_LIMIT])

    def _read_history(self) -> list[str]:
        return [entry["version"] for entry in self._read_history_entries()]

    def _read_history_entries(self) -> list[dict[str, str]]:
        try:
            data = self._read_json(self._history_path) or []
        except BundleError:
            data = None
        if not isinstance(data, list) or not all(
            isinstance(e, dict) and isinstance(e.get("version"), str) for e in data
        ):
            log.warning("%s is malformed; the node history starts afresh", self._history_path)
            return []
        return data

    def _read_pin(self) -> str | None:
        data = self._read_json(self._pin_path)
        if data is None:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("version"), str):
            raise BundleError(f'{self._pin_path} is malformed; it must be {{"version": "..."}}.')
        return check_version(data["version"])

    def _read_pin_quietly(self) -> str | None:
        try:
            return self._read_pin()
        except AuraError:
            return self._pinned

    def _write_pin(self, version: str | None) -> None:
        if version is None:
            self._pin_path.unlink(missing_ok=True)
        else:
            self._write_json(self._pin_path, {"version": version})

    @staticmethod
    def _read_json(path: Path) -> object | None:
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BundleError(f"{path} cannot be read: {exc}.") from None

    @staticmethod
    def _write_json(path: Path, data: object) -> None:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2))

    @contextmanager
    def _file_lock(self) -> Iterator[None]:
        with self._lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
