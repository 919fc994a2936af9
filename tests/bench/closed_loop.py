"""`make bench`, the learning loop: CTR uplift and regret per cycle, and the batch's speed on 10 million events.

1. The closed loop (aura.batch.simulator) with a real edge node: per cycle, the expected CTR of the bandit's
   slates against static popularity ranking (the first bundle's), popularity refreshed with every bundle,
   random ranking and the oracle, on the same requests.
2. A bundle built from 10 million events: a seeded synthetic site's event table (1 million events)
   tiled ten times with renamed visitors, sessions and events, written as the builder's event table
   (`events.parquet`); the build (`SiteTables.read(scan_events=True)`, whose events DuckDB scans in place, +
   `build_bundle`) runs in a fresh process, which reports its wall time, rows per second and peak resident
   memory (getrusage). Targets: under 60 s and 4 GiB.

    .venv/bin/python -m tests.bench.closed_loop [--dir var/bench/closed_loop] [--events 10000000] [--skip-loop]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from aura.batch.build import SITE_FILES, SiteTables, build_bundle
from aura.batch.simulator import LoopConfig, run_closed_loop
from aura.batch.synthetic import generate_site
from aura.config import load_config
from aura.embedding import TextEmbedder

REPO = Path(__file__).resolve().parents[2]
LOOP = LoopConfig(
    seed=7,
    n_content=120,
    history_visitors=3000,
    history_days=30,
    cycles=4,
    visitors_per_cycle=1000,
    config_dir=REPO / "config",
)
TILE_VISITORS = 22_000
"""Visitors of the site that is tiled; with 400 items and 30 days it logs about a million events."""
TARGET_SECONDS = 60.0
TARGET_BYTES = 4 * 1024**3


def loop_bench(work: Path) -> None:
    """Run the closed loop and print its cycles."""
    shutil.rmtree(work, ignore_errors=True)
    print(
        f"closed loop: seed {LOOP.seed}, {LOOP.n_content} items ({LOOP.new_content_share:.0%} published during the "
        f"loop), {LOOP.history_visitors} visitors with {LOOP.history_days} days of history, {LOOP.cycles} cycles of "
        f"{LOOP.visitors_per_cycle} visitors"
    )
    report = run_closed_loop(LOOP, work)
    print(report.table())
    last = report.last
    print(
        f"last cycle: bandit CTR {last.ctr('bandit'):.4f}, {last.uplift('static'):+.1%} over static popularity "
        f"({last.ctr('static'):.4f}; seed claim 10-20%), {last.uplift():+.1%} over popularity refreshed with every "
        f"bundle ({last.ctr('popularity'):.4f}), {last.uplift('random'):+.1%} over "
        f"random ({last.ctr('random'):.4f}), regret {last.regret:.4f} per impression against the oracle "
        f"({last.ctr('oracle'):.4f}); personalized decisions {report.cycles[0].personalized_share:.0%} -> "
        f"{last.personalized_share:.0%}"
    )
    (work / "report.json").write_text(json.dumps(report.to_dict(), indent=2))


def make_big_site(site_dir: Path, events: int, seed: int = 11) -> int:
    """Write a site whose event table has at least `events` rows; return the row count (cached by size)."""
    site = generate_site(seed, n_content=400, n_visitors=TILE_VISITORS, days=30)
    tiles = -(-events // site.events.height)
    total = tiles * site.events.height
    events_path = site_dir / SITE_FILES["events"]
    if events_path.is_file() and pq.ParquetFile(events_path).metadata.num_rows == total:
        return total
    site_dir.mkdir(parents=True, exist_ok=True)
    site.content.write_parquet(site_dir / SITE_FILES["content"])
    renamed = ("event_id", "anon_id", "session_id")
    with pq.ParquetWriter(events_path, site.events.to_arrow().schema, compression="zstd") as writer:
        for tile in range(tiles):
            frame = site.events.with_columns(pl.col(c) + f"-{tile}" for c in renamed)
            writer.write_table(frame.to_arrow(), row_group_size=1 << 20)
    return total


def build_once(site_dir: Path, out_dir: Path) -> dict[str, float]:
    """Build a bundle from a site directory in this process; return seconds, rows and peak memory."""
    app = load_config({"AURA_CONFIG_DIR": str(REPO / "config")})
    embedder = TextEmbedder.load()
    started = time.perf_counter()
    site = SiteTables.read(site_dir, scan_events=True)
    manifest = build_bundle(site, policies=app.policies, surfaces=app.surfaces, out_dir=out_dir, embedder=embedder)
    seconds = time.perf_counter() - started
    return {
        "rows": manifest.stats["events_used"],
        "seconds": round(seconds, 2),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "steps": manifest.reports.get("build_seconds", {}),
        "segments": manifest.stats["segments"],
        "posterior_rows": manifest.stats["posterior_rows"],
    }


def build_bench(work: Path, events: int) -> int:
    """Build from `events` events in a fresh process and print the speed and whether the targets are met;
    return 1 when the build fails, else 0 (a missed target is reported, not an error)."""
    site_dir = work / "site"
    started = time.perf_counter()
    rows = make_big_site(site_dir, events)
    print(f"batch speed: {rows:,} events in {site_dir} (ready in {time.perf_counter() - started:.1f} s)")
    out_dir = work / "built"
    shutil.rmtree(out_dir, ignore_errors=True)
    child = subprocess.run(
        [sys.executable, "-m", "tests.bench.closed_loop", "--build-only", str(site_dir), str(out_dir)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    if child.returncode != 0:
        print(f"the build failed:\n{child.stderr[-4000:]}")
        return 1
    result = json.loads(child.stdout.strip().splitlines()[-1])
    seconds, peak = result["seconds"], result["peak_rss_bytes"]
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in result["steps"].items())
    print(
        f"  built in {seconds:.1f} s ({result['rows'] / seconds:,.0f} rows/s; {steps}); "
        f"peak memory {peak / 1024**3:.2f} GiB; {result['segments']} segments, "
        f"{result['posterior_rows']:,} posterior rows"
    )
    for name, met in (("time", seconds < TARGET_SECONDS), ("memory", peak < TARGET_BYTES)):
        print(
            f"  {name} target (< {TARGET_SECONDS:.0f} s, < {TARGET_BYTES / 1024**3:.0f} GiB): "
            + ("met" if met else "MISSED")
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the loop and the batch speed bench; exit 1 when the build fails."""
    parser = argparse.ArgumentParser(prog="closed_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=REPO / "var" / "bench" / "closed_loop")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--skip-loop", action="store_true")
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--build-only", nargs=2, metavar=("SITE_DIR", "OUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.build_only:
        print(json.dumps(build_once(Path(args.build_only[0]), Path(args.build_only[1]))))
        return 0
    if not args.skip_loop:
        loop_bench(args.dir / "loop")
    return 0 if args.skip_build else build_bench(args.dir, args.events)


if __name__ == "__main__":
    sys.exit(main())
