"""The bundle store: where the batch pushes and promotes bundles and edge nodes pull them (see docs/bundle.md).

Layout under a root (a local directory or `s3://bucket/prefix`):

    bundles/<version>/<file>   every file of a bundle; manifest.json is written last
    CURRENT.json               {"version": ..., "promoted_at": ..., "history": [older promoted versions]}

and the data the batch learns from (docs/events.md), written and read through the object methods:

    logs/<stream>/date=YYYY-MM-DD/hour=HH/<segment>.parquet   closed event-log segments shipped by edge nodes
    features/<table>/date=YYYY-MM-DD/<file>                    feature tables of the batch
    erasures/<sha256 of the user id>                           one record per erased user
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
from boto3.exceptions import Boto3Error
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from aura.bundle.format import MANIFEST, Manifest
from aura.bundle.loader import verify_bundle
from aura.errors import BundleError, InvalidRequest, NotFound

CURRENT = "CURRENT.json"
BUNDLES = "bundles"
LOGS = "logs"
HISTORY_LIMIT = 50
"""How many previously promoted versions CURRENT.json remembers."""

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A bundle version, a bundle file name or a store key's path segment: safe as a path and as an S3 key."""
_PARTITION = re.compile(r"date=(\d{4}-\d{2}-\d{2})(?:/hour=(\d{2}))?")


def check_version(version: str) -> str:
    """Return `version` if it is a safe bundle version name, else raise InvalidRequest."""
    if not isinstance(version, str) or not SAFE_NAME.fullmatch(version):
        raise InvalidRequest(
            f"bundle version {version!r} is not a valid version name "
            "(1-128 letters, digits, '.', '_' or '-', starting with a letter or digit)."
        )
    return version


@contextmanager
def atomic_path(dest: Path, *, make_parents: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; when the block succeeds it replaces `dest` atomically.

    `make_parents` creates the missing directories above `dest` first; without it they must exist.
    """
    if make_parents:
        dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
    try:
        yield tmp
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def check_data_key(key: str) -> str:
    """Return `key` if it names an object outside the bundle area (`a/b=c/d.parquet`), else raise InvalidRequest."""
    parts = key.split("/") if isinstance(key, str) else [""]
    valid = all(SAFE_NAME.fullmatch(part.partition("=")[2] if "=" in part else part) for part in parts)
    if not valid or parts[0] in (BUNDLES, CURRENT):
        raise InvalidRequest(
            f"store key {key!r} is not a valid data key (path segments of letters, digits, '.', '_', '-' "
            f"or name=value, outside {BUNDLES}/ and {CURRENT})."
        )
    return key


def partition_start(key: str) -> datetime | None:
    """The UTC start of the Hive partition a key lies in (`.../date=2026-01-02/hour=03/...`), or None."""
    match = _PARTITION.search(key)
    if match is None:
        return None
    try:
        day = datetime.strptime(match.group(1), "%Y-%m-%d").replace(tzinfo=UTC)
    except ValueError:
        return None
    return day + timedelta(hours=int(match.group(2) or 0))


def utc_now() -> str:
    """Return the current UTC time as RFC 3339 with a `Z` suffix."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class BundleStore(ABC):
    """Versioned bundles plus a promotion pointer; subclasses supply object-level I/O on relative keys."""

    url: str
    """Where the store lives, for messages (a directory or `s3://bucket/prefix`)."""

    def list_versions(self) -> list[str]:
        """Return the complete (manifest present) bundle versions, oldest first."""
        versions = set()
        for key in self._list_keys(f"{BUNDLES}/"):
            parts = key.split("/")
            if len(parts) == 3 and parts[2] == MANIFEST:
                versions.add(parts[1])
        return sorted(versions)

    def current(self) -> str | None:
        """Return the promoted version, or None before the first promotion."""
        return self._read_current()["version"]

    def push(self, bundle_dir: str | Path) -> str:
        """Verify a bundle directory and upload it, manifest last; return its version."""
        bundle_dir = Path(bundle_dir)
        manifest = verify_bundle(bundle_dir)
        version = check_version(manifest.bundle_version)
        if self._read_bytes(_key(version, MANIFEST)) is not None:
            raise BundleError(f"bundle {version} already exists in {self.url}; versions are immutable.")
        for name in sorted(manifest.files.keys() - {MANIFEST}):
            self._put_file(bundle_dir / _file_name(version, name), _key(version, name))
        self._put_file(bundle_dir / MANIFEST, _key(version, MANIFEST))
        return version

    def promote(self, version: str) -> None:
        """Make `version` the store's current bundle; the previous one goes to the history."""
        self._require(version)
        state = self._read_current()
        if state["version"] == version:
            return
        history = [v for v in [state["version"], *state["history"]] if v is not None and v != version]
        self._write_current(version, history)

    def rollback(self) -> str:
        """Re-promote the newest still-present version of the history and return it."""
        state = self._read_current()
        present = set(self.list_versions())
        for position, version in enumerate(state["history"]):
            if version in present:
                self._write_current(version, state["history"][position + 1 :])
                return version
        raise BundleError(f"bundle store {self.url} has no earlier promoted version to roll back to.")

    def download(self, version: str, dest_dir: str | Path) -> Path:
        """Download and verify `version` into `dest_dir/<version>` atomically; return that directory.

        The files land in a temporary directory beside the target, which is renamed into place once
        verified. If the target appeared meanwhile (a sibling process downloaded it), it is used as is.
        """
        check_version(version)
        dest_dir = Path(dest_dir)
        dest_dir.mkdir(parents=True, exist_ok=True)
        target = dest_dir / version
        staging_root = Path(tempfile.mkdtemp(prefix=f".tmp-{version}-", dir=dest_dir))
        try:
            staging = staging_root / version
            staging.mkdir()
            manifest = self._fetch_manifest(version, staging)
            for name in sorted(manifest.files):
                self._get_file(_key(version, name), staging / _file_name(version, name))
            verify_bundle(staging)
            try:
                staging.rename(target)
            except OSError as exc:
                if not (target / MANIFEST).is_file():
                    raise BundleError(f"bundle {version}: cannot move the download into {target}: {exc}.") from None
        finally:
            shutil.rmtree(staging_root, ignore_errors=True)
        return target

    def delete(self, version: str) -> None:
        """Delete a version that is not the promoted one; its manifest goes first so it vanishes at once."""
        check_version(version)
        if version == self.current():
            raise BundleError(f"bundle {version} is the promoted version of {self.url}; promote another first.")
        keys = self._list_keys(f"{BUNDLES}/{version}/")
        if not keys:
            raise NotFound(f"bundle version {version} is not in the store {self.url}.")
        manifest_key = _key(version, MANIFEST)
        self._delete_keys([manifest_key])
        self._delete_keys([k for k in keys if k != manifest_key])

    def read_manifest(self, version: str) -> Manifest:
        """Return the manifest of a complete version (NotFound if there is none)."""
        check_version(version)
        with tempfile.TemporaryDirectory(prefix="aura-manifest-") as tmp:
            return self._fetch_manifest(version, Path(tmp) / version)

    def list_objects(self, prefix: str) -> dict[str, int]:
        """Every data object under `prefix` (a data key or a folder of one, ending in `/`) and its size in bytes."""
        check_data_key(prefix.rstrip("/"))
        return self._list_sizes(prefix)

    def read_object(self, key: str) -> bytes | None:
        """A data object's bytes, or None when it does not exist."""
        return self._read_bytes(check_data_key(key))

    def write_object(self, key: str, data: bytes) -> None:
        """Write a data object; it appears whole or not at all."""
        self._put_bytes(check_data_key(key), data)

    def delete_objects(self, keys: list[str]) -> None:
        """Delete data objects (missing ones are ignored)."""
        if keys:
            self._delete_keys([check_data_key(k) for k in keys])

    def put_log(self, stream: str, relative_path: str, local_path: str | Path) -> int:
        """Upload a closed log segment to `logs/<stream>/<relative_path>` (replacing any object there).

        Returns the stored size once the store confirms it equals the local file's; raises BundleError otherwise.
        """
        key = check_data_key(f"{LOGS}/{stream}/{relative_path}")
        size = Path(local_path).stat().st_size
        self._put_file(Path(local_path), key)
        stored = self._size(key)
        if stored != size:
            raise BundleError(f"bundle store {self.url}: {key} holds {stored} bytes after the upload, not {size}.")
        return size

    def list_logs(self, stream: str, since: datetime | None = None) -> dict[str, int]:
        """The shipped segments of a stream as {relative path: size}, from the hour of `since` on if given."""
        prefix = check_data_key(f"{LOGS}/{stream}") + "/"
        start_after = f"{prefix}date={since:%Y-%m-%d}" if since is not None else None
        floor = since.replace(minute=0, second=0, microsecond=0) if since is not None else None
        logs = {}
        for key, size in self._list_sizes(prefix, start_after).items():
            start = partition_start(key)
            if key.endswith(".parquet") and start is not None and (floor is None or start >= floor):
                logs[key.removeprefix(prefix)] = size
        return logs

    def download_logs(self, stream: str, dest: str | Path, since: datetime | None = None) -> list[Path]:
        """Mirror a stream's shipped segments (from `since` on) into `dest/<stream>/...`; return their paths.

        Files already there with the stored size are kept; files the store no longer has (removed by
        retention, or rewritten by an erasure) are deleted, so the mirror never outlives the store's data.
        """
        root = Path(dest) / stream
        logs = self.list_logs(stream, since)
        if root.is_dir():
            floor = since.replace(minute=0, second=0, microsecond=0) if since is not None else None
            for path in root.glob("date=*/hour=*/*"):
                relative = path.relative_to(root).as_posix()
                start = partition_start(relative)
                in_range = floor is None or (start is not None and start >= floor)
                if in_range and logs.get(relative) != path.stat().st_size:
                    path.unlink()
        paths = []
        for relative, size in sorted(logs.items()):
            path = root / relative
            if not (path.is_file() and path.stat().st_size == size):
                with atomic_path(path) as tmp:
                    self._get_file(f"{LOGS}/{stream}/{relative}", tmp)
            paths.append(path)
        return paths

    def _require(self, version: str) -> None:
        check_version(version)
        if self._read_bytes(_key(version, MANIFEST)) is None:
            raise NotFound(f"bundle version {version} is not in the store {self.url}.")

    def _fetch_manifest(self, version: str, bundle_dir: Path) -> Manifest:
        data = self._read_bytes(_key(version, MANIFEST))
        if data is None:
            raise NotFound(f"bundle version {version} is not in the store {self.url}.")
        bundle_dir.mkdir(parents=True, exist_ok=True)
        (bundle_dir / MANIFEST).write_bytes(data)
        manifest = Manifest.read(bundle_dir)
        if manifest.bundle_version != version:
            raise BundleError(f"bundle {version} in {self.url} holds manifest version {manifest.bundle_version}.")
        return manifest

    def _read_current(self) -> dict[str, Any]:
        data = self._read_bytes(CURRENT)
        if data is None:
            return {"version": None, "promoted_at": None, "history": []}
        try:
            state = json.loads(data)
            if not isinstance(state, dict) or not isinstance(state.get("history", []), list):
                raise ValueError("it must be an object with a history list")
        except ValueError as exc:
            raise BundleError(f"bundle store {self.url}: {CURRENT} is malformed: {exc}.") from None
        return {"version": state.get("version"), "promoted_at": state.get("promoted_at"), "history": state["history"]}

    def _write_current(self, version: str, history: list[str]) -> None:
        state = {"version": version, "promoted_at": utc_now(), "history": history[:HISTORY_LIMIT]}
        self._put_bytes(CURRENT, json.dumps(state, indent=2).encode())

    def _list_keys(self, prefix: str) -> list[str]:
        """Every key under `prefix` (relative to the root)."""
        return sorted(self._list_sizes(prefix))

    @abstractmethod
    def _list_sizes(self, prefix: str, start_after: str | None = None) -> dict[str, int]:
        """Every key under `prefix` (sorting after `start_after`, if given) and its size."""

    @abstractmethod
    def _size(self, key: str) -> int | None:
        """The object's size, or None when it does not exist."""

    @abstractmethod
    def _read_bytes(self, key: str) -> bytes | None:
        """The object's bytes, or None when it does not exist."""

    @abstractmethod
    def _get_file(self, key: str, dest: Path) -> None:
        """Copy an object into a local file; a missing object is a BundleError."""

    @abstractmethod
    def _put_file(self, src: Path, key: str) -> None:
        """Upload a local file; the object appears whole or not at all."""

    @abstractmethod
    def _put_bytes(self, key: str, data: bytes) -> None:
        """Write an object; it appears whole or not at all."""

    @abstractmethod
    def _delete_keys(self, keys: list[str]) -> None:
        """Delete objects (missing ones are ignored)."""


def _key(version: str, name: str) -> str:
    return f"{BUNDLES}/{version}/{name}"


def _file_name(version: str, name: str) -> str:
    if not SAFE_NAME.fullmatch(name):
        raise BundleError(f"bundle {version}: the manifest lists an invalid file name {name!r}.")
    return name


class LocalBundleStore(BundleStore):
    """A bundle store in a local (or mounted network) directory.

    Only `push` creates the root directory (the first push makes a new store). Every other operation on a
    root that does not exist fails as unreachable, the way an S3 store without a network does: a vanished
    root is an unmounted volume or a moved directory, and recreating it would send writes (shipped logs,
    promotions) where nobody reads them and show readers an empty store.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.url = str(self.root)

    def push(self, bundle_dir: str | Path) -> str:
        """Verify a bundle directory and copy it in, manifest last; the first push creates the root."""
        self.root.mkdir(parents=True, exist_ok=True)
        return super().push(bundle_dir)

    def _check_root(self) -> None:
        """Raise the store's unreachable BundleError unless the root directory exists."""
        if not self.root.is_dir():
            reason = (
                "it is not a directory" if self.root.exists() else "the directory does not exist (an unmounted volume?)"
            )
            raise BundleError(f"bundle store {self.url} is unreachable: {reason}.")

    def _list_sizes(self, prefix: str, start_after: str | None = None) -> dict[str, int]:
        self._check_root()
        folder, _, _ = prefix.rpartition("/")
        base = self.root / folder
        if not base.is_dir():
            self._check_root()  # the root may have vanished since the first check
            return {}
        sizes = {}
        for path in base.rglob("*"):
            key = path.relative_to(self.root).as_posix()
            # Skip the temporary files of writes in progress (atomic_path) and keys outside the prefix.
            if path.name.startswith(".") or not key.startswith(prefix) or (start_after and key <= start_after):
                continue
            with suppress(FileNotFoundError):
                if path.is_file():
                    sizes[key] = path.stat().st_size
        return dict(sorted(sizes.items()))

    def _size(self, key: str) -> int | None:
        self._check_root()
        try:
            return (self.root / key).stat().st_size
        except FileNotFoundError:
            self._check_root()
            return None

    def _read_bytes(self, key: str) -> bytes | None:
        self._check_root()
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            self._check_root()
            return None
        except OSError as exc:
            raise BundleError(f"bundle store {self.url}: cannot read {key}: {exc.strerror}.") from None

    def _get_file(self, key: str, dest: Path) -> None:
        self._check_root()
        try:
            shutil.copyfile(self.root / key, dest)
        except FileNotFoundError:
            self._check_root()
            raise BundleError(f"bundle store {self.url}: {key} is missing; the bundle is incomplete.") from None
        except OSError as exc:
            raise BundleError(f"bundle store {self.url}: cannot read {key}: {exc.strerror}.") from None

    def _put_file(self, src: Path, key: str) -> None:
        with self._writing(key) as tmp:
            shutil.copyfile(src, tmp)

    def _put_bytes(self, key: str, data: bytes) -> None:
        with self._writing(key) as tmp:
            tmp.write_bytes(data)

    @contextmanager
    def _writing(self, key: str) -> Iterator[Path]:
        """Yield a temporary path that replaces the object `key` when the block succeeds.

        The folders of the key are created below the root, never the root itself: a missing root is unreachable.
        """
        self._check_root()
        dest = self.root / key
        try:
            folder = self.root
            for part in Path(key).parent.parts:
                folder = folder / part
                folder.mkdir(exist_ok=True)
            with atomic_path(dest, make_parents=False) as tmp:
                yield tmp
        except OSError as exc:
            self._check_root()
            raise BundleError(f"bundle store {self.url}: cannot write {key}: {exc.strerror}.") from None

    def _delete_keys(self, keys: list[str]) -> None:
        self._check_root()
        for key in keys:
            path = self.root / key
            path.unlink(missing_ok=True)
            parent = path.parent
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent


class S3BundleStore(BundleStore):
    """A bundle store in an S3 bucket under a prefix; `endpoint_url` points at MinIO, moto or another S3 API.

    `page_size` is how many keys one list request returns (S3 caps it at 1000).
    """

    _DELETE_BATCH = 1000

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str | None = None, page_size: int = 1000) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.page_size = page_size
        self.url = f"s3://{bucket}/{self.prefix}"
        config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"})
        self._client = boto3.session.Session().client("s3", endpoint_url=endpoint_url or None, config=config)

    def _full(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    @contextmanager
    def _errors(self, key: str) -> Iterator[None]:
        try:
            yield
        except ClientError as exc:
            error = exc.response.get("Error", {})
            if error.get("Code") == "NoSuchBucket":
                raise BundleError(f"bundle store {self.url}: bucket {self.bucket} does not exist.") from None
            detail = error.get("Message") or error.get("Code") or str(exc)
            raise BundleError(f"bundle store {self.url}: access to {key} failed: {detail}.") from None
        except (BotoConnectionError, HTTPClientError) as exc:
            raise BundleError(f"bundle store {self.url} is unreachable: {exc}.") from None
        except (BotoCoreError, Boto3Error) as exc:
            raise BundleError(f"bundle store {self.url}: {exc}.") from None

    def _list_sizes(self, prefix: str, start_after: str | None = None) -> dict[str, int]:
        start = len(self._full(""))
        extra = {"StartAfter": self._full(start_after)} if start_after else {}
        sizes = {}
        with self._errors(prefix):
            for page in self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self._full(prefix), PaginationConfig={"PageSize": self.page_size}, **extra
            ):
                sizes.update((obj["Key"][start:], obj["Size"]) for obj in page.get("Contents", []))
        return sizes

    def _size(self, key: str) -> int | None:
        with self._errors(key):
            try:
                return self._client.head_object(Bucket=self.bucket, Key=self._full(key))["ContentLength"]
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise

    def _read_bytes(self, key: str) -> bytes | None:
        with self._errors(key):
            try:
                return self._client.get_object(Bucket=self.bucket, Key=self._full(key))["Body"].read()
            except self._client.exceptions.NoSuchKey:
                return None

    def _get_file(self, key: str, dest: Path) -> None:
        with self._errors(key):
            try:
                self._client.download_file(self.bucket, self._full(key), str(dest))
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                    raise BundleError(f"bundle store {self.url}: {key} is missing; the bundle is incomplete.") from None
                raise

    def _put_file(self, src: Path, key: str) -> None:
        with self._errors(key):
            self._client.upload_file(str(src), self.bucket, self._full(key))

    def _put_bytes(self, key: str, data: bytes) -> None:
        with self._errors(key):
            self._client.put_object(Bucket=self.bucket, Key=self._full(key), Body=data)

    def _delete_keys(self, keys: list[str]) -> None:
        with self._errors(keys[0] if keys else ""):
            for start in range(0, len(keys), self._DELETE_BATCH):
                batch = [{"Key": self._full(k)} for k in keys[start : start + self._DELETE_BATCH]]
                self._client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})


def open_store(url: str, endpoint_url: str | None = None) -> BundleStore:
    """Open `s3://bucket/prefix` as an S3 store, anything else as a local directory.

    Example: `open_store("s3://aura-bundles/prod", endpoint_url="http://127.0.0.1:9000")`.
    """
    if url.startswith("s3://"):
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not bucket:
            raise BundleError(f"bundle store URL {url!r} names no bucket; use s3://bucket/prefix.")
        return S3BundleStore(bucket, prefix, endpoint_url=endpoint_url)
    return LocalBundleStore(url)
