"""The in-process half of the benchmark: the real Rank responses, and micro-benchmarks of the decision core.

For every `request-N.bin` (a serialized RankRequest) in `--requests`, runs the real `DecisionService.Rank`
adapter on the bench bundle and writes the serialized reply next to it as `response-N.bin`: what the bare
server replays. Then times (CPU time of this one thread; run it with OPENBLAS_NUM_THREADS=1 so numpy uses one core):
`decide()` alone, the whole `Rank` adapter (validation, decide, response bytes, request id, decision log
append) and the numpy query embedding. Prints the figures as one JSON object.

    OPENBLAS_NUM_THREADS=1 python -m tests.bench.core --bundle DIR --config-dir DIR --requests DIR
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from aura.config import load_config
from aura.embedding import default_embedder
from aura.server.decision import Traffic, decide
from aura.server.servicer import DecisionService, node_deps
from aura.server.state import ServingHolder, prepare_serving
from aura.server.validation import rank_query
from aura.v1 import decision_service_pb2 as pb

QUERIES = (
    "how do I set up analytics for a small online store",
    "pricing comparison for enterprise plans",
    "getting started guide for beginners",
    "case study: finance industry customer retention with personalization and machine learning",
)


def percentiles_us(samples_ns: Sequence[int]) -> dict[str, float]:
    """p50, p99 and mean of nanosecond samples, in microseconds."""
    values = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    return {
        "p50_us": round(float(np.percentile(values, 50)), 1),
        "p99_us": round(float(np.percentile(values, 99)), 1),
        "mean_us": round(float(values.mean()), 1),
        "calls": len(values),
    }


def time_calls(call: Callable[[int], object], calls: int, warmup: int = 200) -> dict[str, float]:
    """CPU time of this thread per `call(i)`, i in range(calls), after `warmup` untimed calls.

    The thread's CPU clock, not the wall clock: other processes on a shared machine do not inflate it.
    """
    for i in range(warmup):
        call(i)
    samples = []
    for i in range(calls):
        start = time.thread_time_ns()
        call(i)
        samples.append(time.thread_time_ns() - start)
    return percentiles_us(samples)


async def run(bundle_dir: Path, config_dir: Path, requests_dir: Path, calls: int) -> dict[str, object]:
    """Write the real responses and return the micro-benchmark figures."""
    config = load_config({"AURA_CONFIG_DIR": str(config_dir), "API_LOG_LEVEL": "warning"})
    request_paths = sorted(requests_dir.glob("request-*.bin"))
    requests = [path.read_bytes() for path in request_paths]
    with tempfile.TemporaryDirectory(prefix="aura-bench-core-") as tmp:
        state_dir = Path(tmp)
        started = time.perf_counter()
        serving = prepare_serving(bundle_dir, config, state_dir)
        load_seconds = time.perf_counter() - started
        holder = ServingHolder()
        holder.swap(serving)
        embedder = default_embedder()
        deps = node_deps(config, holder, state_dir, embedder.embed_query, node_id="bench")
        service = DecisionService(deps)
        sizes, items = [], []
        for path, request in zip(request_paths, requests, strict=True):
            data = service.Rank(request, None)
            path.with_name(path.name.replace("request-", "response-")).write_bytes(data)
            sizes.append(len(data))
            items.append(len(pb.RankResponse.FromString(data).items))

        queries = [rank_query(request, config.surfaces) for request in requests]
        params = serving.posteriors.params
        policies, traffic = config.policies, Traffic()

        def one_decision(i: int) -> object:
            return decide(serving.index, params, queries[i % len(queries)], policies, traffic, i)

        def one_rank(i: int) -> object:
            return service.Rank(requests[i % len(requests)], None)

        texts = random.Random(0).choices(QUERIES, k=max(50, calls // 20))
        figures = {
            "bundle_load_seconds": round(load_seconds, 2),
            "response_bytes": sizes,
            "request_bytes": [len(request) for request in requests],
            "items_per_response": items,
            "decide": time_calls(one_decision, calls),
            "rank_adapter": time_calls(one_rank, calls),
            "embed_query": time_calls(lambda i: embedder.embed_query(texts[i % len(texts)]), len(texts), warmup=5),
        }
        for event_log in (deps.decisions, deps.feedback, deps.admin_log):
            event_log.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    """Run and print the figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True, help="the bench bundle directory")
    parser.add_argument("--config-dir", type=Path, required=True, help="policies.yaml + surfaces.yaml of the bench")
    parser.add_argument("--requests", type=Path, required=True, help="directory of request-N.bin files")
    parser.add_argument("--calls", type=int, default=3000, help="timed calls of decide and Rank (default 3000)")
    args = parser.parse_args(argv)
    figures = asyncio.run(run(args.bundle, args.config_dir, args.requests, args.calls))
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
