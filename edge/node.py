"""The edge node: gRPC decision server processes (one per core, sharing the port) plus the HTTP gateway.

This is the composition root: it wires the bundle store and sync (edge), the serving state and
servicers (server) and the durable logs, and supervises the processes. `aura-edge` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from functools import partial
from pathlib import Path

from aura.bundle.store import open_store
from aura.config import DEV_REQUEST_ID_SECRET, AppConfig, load_config, parse_host_port, unknown_aura_variables
from aura.edge.logship import LogShipper
from aura.edge.sync import BundleSync
from aura.embedding import default_embedder
from aura.errors import ConfigError
from aura.eventlog import default_node_id
from aura.server.app import create_server
from aura.server.servicer import node_deps
from aura.server.state import ServingHolder, prepare_serving, with_current_freshness

log = logging.getLogger("aura.edge")

RESTART_BACKOFF_SECONDS = 1.0
STOP_GRACE_SECONDS = 5.0
FRESHNESS_REFRESH_SECONDS = 3600.0
"""How old the serving index may get before it is rebuilt with current freshness (bundles may stay for days)."""


async def serve_decisions(config: AppConfig, stop: asyncio.Event | None = None, bound: list[int] | None = None) -> None:
    """Run one decision server process until SIGTERM/SIGINT (or `stop`), then drain and flush its logs."""
    settings = config.settings
    state_dir = Path(settings.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Outside the main thread (a test running the server in-process) there are no signal handlers.
        with contextlib.suppress(RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)

    holder = ServingHolder()
    store = open_store(settings.bundle_store, settings.s3_endpoint_url or None)
    sync = BundleSync(
        store,
        state_dir,
        loader=partial(prepare_serving, config=config, state_dir=state_dir),
        on_swap=holder.swap,
        keep=settings.model_retention_versions,
        poll_seconds=settings.bundle_poll_seconds,
    )
    node = default_node_id()
    embedder = await loop.run_in_executor(None, default_embedder)
    deps = node_deps(config, holder, state_dir, embedder.embed_query, node_id=node, control=sync)
    # Load the first bundle before joining the shared port, so that no connection reaches a process that
    # cannot answer yet; with an empty or unreachable store it listens anyway and reports NOT_SERVING.
    await loop.run_in_executor(None, sync.sync_once)
    # The loaded bundle lives until the next swap: keep its objects out of the garbage collector's scans.
    gc.freeze()
    holder.on_swap(lambda _serving: gc.freeze())
    server, port = await create_server(settings.grpc_address, deps)
    await server.start()
    if bound is not None:
        bound.append(port)
    log.info("decision server pid %d listening on port %d", os.getpid(), port)
    sync.start()
    shipper = LogShipper(state_dir / "logs", store, node)
    shipper.start()
    refresher = asyncio.create_task(keep_freshness_current(holder, config, stop, FRESHNESS_REFRESH_SECONDS))
    try:
        await stop.wait()
    finally:
        await refresher
        log.info("decision server pid %d stopping", os.getpid())
        await server.stop(STOP_GRACE_SECONDS)
        sync.stop()
        for event_log in (deps.decisions, deps.feedback, deps.admin_log):
            event_log.close()
        await loop.run_in_executor(None, shipper.stop)


async def keep_freshness_current(holder: ServingHolder, config: AppConfig, stop: asyncio.Event, max_age: float) -> None:
    """Until `stop`, rebuild the loaded bundle's serving index once it is `max_age` seconds old.

    Freshness decays with an item's age, which the index computes when it is built; a bundle that stays
    loaded for days would otherwise keep the scores of the hour it was loaded.
    """
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max_age / 4)
        current = holder.current
        if stop.is_set() or current is None or time.time() - current.index.built_at < max_age:
            continue
        try:
            holder.replace(current, await asyncio.to_thread(with_current_freshness, current, config))
        except Exception:
            log.exception("rebuilding the serving index of bundle %s failed; it keeps serving", current.version)


GC_THRESHOLDS = (2_000, 20, 100)
"""Cycle-collector thresholds of the server processes (CPython's default is 700, 10, 10)."""


def collect_garbage_in_small_passes() -> None:
    """Keep the cycle collector's young-generation passes short and its full passes rare.

    A young pass costs about a microsecond per object it finds, and grpc.aio leaves about six objects of
    cyclic garbage per call (the closure of its method lookup). At a threshold of 50,000 each pass freed
    about 40,000 of them and stalled its process for 40-70 ms every few seconds at 500 RPS, the largest
    latency spikes of the node; at 2,000 a pass takes 1-5 ms, for the same total. CPython's default
    thresholds cost about 15% of a Rank's CPU (in process, without gRPC: 78 against 66 µs per request).
    """
    gc.set_threshold(*GC_THRESHOLDS)


def _decision_worker() -> None:
    _configure_logging(load_config().settings.api_log_level)
    collect_garbage_in_small_passes()
    asyncio.run(serve_decisions(load_config()))


def _gateway_worker() -> None:
    from aura.edge.gateway.app import run_gateway

    settings = load_config().settings
    _configure_logging(settings.api_log_level)
    collect_garbage_in_small_passes()
    run_gateway(settings)


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s", stream=sys.stderr
    )


class Supervisor:
    """Starts the worker processes, restarts any that die, and stops them all on SIGTERM/SIGINT."""

    def __init__(self, targets: list[tuple[str, object]]) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._targets = targets
        self._processes: dict[str, multiprocessing.process.BaseProcess] = {}
        self._stopping = False

    def _start(self, name: str, target) -> None:
        process = self._context.Process(target=target, name=name, daemon=False)
        process.start()
        self._processes[name] = process

    def run(self) -> int:
        """Run until a signal; return the exit code: 0, or 1 if a worker did not stop cleanly."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        for name, target in self._targets:
            self._start(name, target)
        while not self._stopping:
            time.sleep(0.2)
            for name, target in self._targets:
                process = self._processes[name]
                if not process.is_alive() and not self._stopping:
                    log.warning("%s exited with code %s; restarting", name, process.exitcode)
                    time.sleep(RESTART_BACKOFF_SECONDS)
                    self._start(name, target)
        for process in self._processes.values():
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        window = STOP_GRACE_SECONDS + 5
        deadline = time.monotonic() + window
        clean = True
        for name, process in self._processes.items():
            process.join(max(0.1, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("%s did not stop within %.0f s; killing it", name, window)
                process.kill()
                process.join()
                clean = False
            elif process.exitcode != 0:
                log.warning("%s stopped with exit code %s", name, process.exitcode)
                clean = False
        return 0 if clean else 1

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stopping = True


def _listening(host: str, port: int) -> bool:
    """Whether something accepts connections on host:port (a wildcard host is probed on loopback)."""
    probe = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    try:
        with socket.create_connection((probe, port), timeout=0.5):
            return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    """Entry point of `aura-edge`."""
    parser = argparse.ArgumentParser(prog="aura-edge", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, help="decision server processes (default: API_WORKERS)")
    parser.add_argument("--gateway-workers", type=int, default=1, help="HTTP gateway processes (default 1)")
    parser.add_argument("--no-gateway", action="store_true", help="run only the gRPC decision servers")
    args = parser.parse_args(argv)
    try:
        config = load_config()
    except ConfigError as exc:
        print(f"aura-edge: configuration error: {exc}", file=sys.stderr)
        return 2
    _configure_logging(config.settings.api_log_level)
    for message in unknown_aura_variables():
        log.warning("%s", message)
    if config.settings.request_id_secret == DEV_REQUEST_ID_SECRET:
        log.warning(
            "AURA_REQUEST_ID_SECRET is not set: request ids are signed with the public development secret, so "
            "anyone can forge feedback; set a random secret, the same on every edge node."
        )
    # Concurrency comes from one process per core; a multi-threaded BLAS per process only contends
    # (a query embedding took ~230 ms with two OpenBLAS threads on 2 cores, ~13 ms with one).
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    workers = args.workers or config.settings.api_workers
    if workers < 1 or args.gateway_workers < 0:
        print("aura-edge: --workers must be at least 1 and --gateway-workers at least 0.", file=sys.stderr)
        return 2
    # The workers bind with SO_REUSEPORT, which would let them join another node's port and split its traffic.
    ports = [("gRPC", *parse_host_port(config.settings.grpc_address))]
    if not args.no_gateway:
        ports.append(("HTTP", config.settings.api_host, config.settings.api_port))
    for kind, host, port in ports:
        if _listening(host, port):
            print(
                f"aura-edge: the {kind} port {host}:{port} is already in use, perhaps by another AURA node; "
                "stop it or choose another port.",
                file=sys.stderr,
            )
            return 2
    targets: list[tuple[str, object]] = [(f"decision-{i}", _decision_worker) for i in range(workers)]
    if not args.no_gateway:
        targets += [(f"gateway-{i}", _gateway_worker) for i in range(args.gateway_workers)]
    log.info(
        "edge node %s: %d decision server(s) on %s, gateway on %s:%d, bundle store %s",
        default_node_id(),
        workers,
        config.settings.grpc_address,
        config.settings.api_host,
        config.settings.api_port,
        config.settings.bundle_store,
    )
    return Supervisor(targets).run()


if __name__ == "__main__":
    sys.exit(main())
