"""The framework's limit: a bare grpc.aio server answering Rank with canned bytes, one process per core.

Same process model as the edge node (spawned workers sharing the port with SO_REUSEPORT), no decision
work: a generic handler maps each request's raw bytes to the canned response recorded for it (the first
one for an unknown request). Every worker counts its OK responses in its own 8-byte slot of
`--count-file`, which the benchmark reads while the server runs.

    python -m tests.bench.bare_server --port 50099 --workers 2 --responses DIR --count-file counts.bin
"""

from __future__ import annotations

import argparse
import asyncio
import mmap
import multiprocessing
import signal
import struct
import sys
from pathlib import Path

import grpc

RANK_METHOD = "/aura.v1.DecisionService/Rank"
SLOT = struct.Struct("<q")
STOP_GRACE_SECONDS = 2.0


def read_counts(count_file: str | Path) -> list[int]:
    """The OK responses of each worker so far."""
    data = Path(count_file).read_bytes()
    return [SLOT.unpack_from(data, offset)[0] for offset in range(0, len(data), SLOT.size)]


def load_responses(directory: Path) -> tuple[dict[bytes, bytes], bytes]:
    """Pairs `request-N.bin` -> `response-N.bin` of `directory`, and the first response as the default."""
    pairs = {}
    for request_path in sorted(directory.glob("request-*.bin")):
        response_path = request_path.with_name(request_path.name.replace("request-", "response-"))
        pairs[request_path.read_bytes()] = response_path.read_bytes()
    if not pairs:
        raise SystemExit(f"bare_server: no request-N.bin / response-N.bin pairs in {directory}")
    return pairs, next(iter(pairs.values()))


async def _serve(port: int, responses_dir: Path, count_file: Path, slot: int) -> None:
    pairs, default = load_responses(responses_dir)
    with count_file.open("r+b") as handle:
        counts = mmap.mmap(handle.fileno(), 0)
    offset = slot * SLOT.size
    ok = 0

    async def rank(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        nonlocal ok
        ok += 1
        SLOT.pack_into(counts, offset, ok)
        return pairs.get(request, default)

    handler = grpc.method_handlers_generic_handler(
        "aura.v1.DecisionService", {"Rank": grpc.unary_unary_rpc_method_handler(rank)}
    )
    server = grpc.aio.server(options=[("grpc.so_reuseport", 1)])
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"127.0.0.1:{port}") != port:
        raise SystemExit(f"bare_server: cannot bind 127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(STOP_GRACE_SECONDS)
    counts.close()


def _worker(port: int, responses_dir: Path, count_file: Path, slot: int) -> None:
    asyncio.run(_serve(port, responses_dir, count_file, slot))


def main(argv: list[str] | None = None) -> int:
    """Start the workers and stop them on SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="loopback port all workers share")
    parser.add_argument("--workers", type=int, default=2, help="server processes (default 2)")
    parser.add_argument("--responses", type=Path, required=True, help="directory of request-N.bin/response-N.bin")
    parser.add_argument("--count-file", type=Path, required=True, help="file the workers count OK responses in")
    args = parser.parse_args(argv)
    args.count_file.write_bytes(bytes(SLOT.size * args.workers))
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(args.port, args.responses, args.count_file, slot), name=f"bare-{slot}")
        for slot in range(args.workers)
    ]
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for worker in workers:
        worker.start()
    while not stopping and all(worker.is_alive() for worker in workers):
        workers[0].join(0.2)
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(STOP_GRACE_SECONDS + 3)
        if worker.is_alive():
            worker.kill()
    return 0 if stopping else 1


if __name__ == "__main__":
    sys.exit(main())
