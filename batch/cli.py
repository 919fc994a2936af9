"""`aura`: the operator CLI of the batch side (synthetic data, bundle builds, the bundle store).

Examples:
    aura demo-data --out var/site --seed 7
    aura build --site var/site --out var/bundles --store var/bundle-store --promote
    aura build --bench --content 1200 --segments 50 --surfaces 20 --out var/bench
    aura list --store s3://aura-bundles/prod --s3-endpoint-url http://127.0.0.1:9000
    aura demo-bundle --store var/bundle-store

User errors (a bad path, an invalid config, a bundle or store problem) print one line and exit with 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from aura.bundle.store import BundleStore, LocalBundleStore, open_store
from aura.config import Policies, Surface, load_policies, load_surfaces
from aura.errors import AuraError, ConfigError

if TYPE_CHECKING:
    from aura.batch.build import SiteTables
    from aura.bundle.format import Manifest

# The build and synthetic modules (DuckDB, polars, the embedder) are imported by the commands that use
# them, so that the store commands start in a fraction of the time.

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

_STAT_LABELS: dict[str, str] = {
    "content_items": "content items",
    "topic_clusters": "topic clusters",
    "segments": "segments",
    "visitors": "visitors",
    "users_assigned": "users assigned",
    "segment_coverage": "segment coverage",
    "confident_assignments": "assignments >= threshold",
    "surfaces": "surfaces",
    "cells": "posterior cells",
    "posterior_rows": "posterior rows",
    "events_used": "events used",
    "clicks_on_eligible": "clicks on eligible content",
    "cold_start_rules": "cold-start rules",
    "k_anonymity_threshold": "k-anonymity threshold",
}

_SHARES = frozenset({"segment_coverage", "confident_assignments"})


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "build":
        _check_build_args(parser, args)
    try:
        args.handler(args)
    except (AuraError, ConfigError, OSError) as exc:
        print(f"aura: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("aura: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aura", description="AURA batch and bundle operations.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    store = argparse.ArgumentParser(add_help=False)
    store.add_argument(
        "--store",
        default=os.environ.get("AURA_BUNDLE_STORE") or None,
        help="bundle store: a directory or s3://bucket/prefix (default $AURA_BUNDLE_STORE)",
    )
    store.add_argument(
        "--s3-endpoint-url",
        default=os.environ.get("AURA_S3_ENDPOINT_URL") or None,
        help="S3 API endpoint, e.g. MinIO (default $AURA_S3_ENDPOINT_URL)",
    )
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config-dir",
        type=Path,
        default=Path(os.environ.get("AURA_CONFIG_DIR") or "config"),
        help="directory with policies.yaml and surfaces.yaml (default $AURA_CONFIG_DIR or ./config)",
    )
    site = argparse.ArgumentParser(add_help=False)
    site.add_argument("--seed", type=int, default=7, help="seed of the synthetic site (default 7)")
    site.add_argument("--visitors", type=_positive, default=3000, help="synthetic visitors (default 3000)")
    site.add_argument("--days", type=_positive, default=60, help="days of synthetic events (default 60)")
    site.add_argument(
        "--as-of",
        type=_as_of,
        default=_as_of(datetime.now(UTC).date().isoformat()),
        help="end of the synthetic event window, YYYY-MM-DD (default today, UTC)",
    )

    demo_data = commands.add_parser("demo-data", parents=[site], help="write a synthetic site as Parquet")
    demo_data.add_argument("--out", type=Path, required=True, help="directory to write the site into")
    demo_data.add_argument("--content", type=_positive, default=400, help="content items (default 400)")
    demo_data.set_defaults(handler=_demo_data)

    build = commands.add_parser(
        "build",
        parents=[config, store],
        help="build a bundle from a site (or a synthetic bench site)",
        description="Build a bundle from --site, or with --bench from a generated site of realistic size; "
        "optionally push it to --store and --promote it.",
    )
    source = build.add_mutually_exclusive_group()
    source.add_argument("--site", type=Path, help="site directory written by `aura demo-data` (or the warehouse)")
    source.add_argument("--bench", action="store_true", help="generate a bench site, surfaces and config")
    build.add_argument("--out", type=Path, required=True, help="directory the bundle is written into")
    build.add_argument("--promote", action="store_true", help="promote the bundle after pushing it")
    build.add_argument("--seed", type=int, default=0, help="seed of clustering, propensities and the bench site")
    bench = build.add_argument_group("bench (with --bench)")
    bench.add_argument("--content", type=_positive, default=1200, help="content items (default 1200)")
    bench.add_argument("--segments", type=_positive, default=50, help="segments to fill, seg_global included")
    bench.add_argument("--surfaces", type=_positive, default=20, help="generated surfaces (default 20)")
    bench.add_argument("--visitors", type=_positive, default=4000, help="synthetic visitors (default 4000)")
    bench.add_argument(
        "--k-anonymity",
        type=_positive,
        default=10,
        help="k-anonymity threshold of the bench build, written into its policies.yaml (default 10)",
    )
    build.set_defaults(handler=_build)

    push = commands.add_parser("push", parents=[store], help="verify and upload a bundle directory")
    push.add_argument("bundle_dir", type=Path, help="bundle directory (OUT/<version>)")
    push.set_defaults(handler=_push)

    promote = commands.add_parser("promote", parents=[store], help="make a pushed version current")
    promote.add_argument("version", help="bundle version to promote")
    promote.set_defaults(handler=_promote)

    rollback = commands.add_parser("rollback", parents=[store], help="re-promote the previous version")
    rollback.set_defaults(handler=_rollback)

    listing = commands.add_parser("list", parents=[store], help="list the store's versions, current marked *")
    listing.set_defaults(handler=_list)

    demo_bundle = commands.add_parser(
        "demo-bundle",
        parents=[config, store, site],
        help="generate a site, build, push and promote in one go",
    )
    demo_bundle.add_argument("--content", type=_positive, default=400, help="content items (default 400)")
    demo_bundle.add_argument("--out", type=Path, help="keep the built bundle here (default: a temporary directory)")
    demo_bundle.set_defaults(handler=_demo_bundle)
    return parser


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _as_of(text: str) -> datetime:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2025-10-01, got {text!r}") from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def _check_build_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not args.site and not args.bench:
        parser.error("build needs --site DIR or --bench")
    if args.promote and not args.store:
        parser.error("--promote needs --store (or AURA_BUNDLE_STORE)")


def _store(args: argparse.Namespace, create: bool = False) -> BundleStore:
    """Open the store of `--store`; `create` makes a missing local store directory (the first push would)."""
    if not args.store:
        raise ConfigError("no bundle store given: pass --store DIR|s3://bucket/prefix or set AURA_BUNDLE_STORE.")
    store = open_store(args.store, endpoint_url=args.s3_endpoint_url)
    if create and isinstance(store, LocalBundleStore):
        store.root.mkdir(parents=True, exist_ok=True)
    return store


def _log(line: str) -> None:
    print(f"  {line}", file=sys.stderr, flush=True)


def _load_config(config_dir: Path) -> tuple[Policies, dict[str, Surface]]:
    if not config_dir.is_dir():
        raise ConfigError(f"config directory {config_dir} does not exist.")
    surfaces_path = config_dir / "surfaces.yaml"
    if not surfaces_path.is_file():
        raise ConfigError(f"config directory {config_dir} has no surfaces.yaml.")
    return load_policies(config_dir / "policies.yaml"), load_surfaces(surfaces_path)


def _timed(label: str, step: Callable[[], Any]) -> Any:
    start = time.perf_counter()
    result = step()
    _log(f"{label} in {time.perf_counter() - start:.1f} s")
    return result


def _demo_data(args: argparse.Namespace) -> None:
    from aura.batch.synthetic import generate_site

    site = _timed(
        "generated the site",
        lambda: generate_site(args.seed, args.content, args.visitors, args.days, now=args.as_of),
    )
    site.write(args.out)
    clicks = site.events.filter(site.events["type"] == "click").height
    print(
        f"wrote site to {args.out}: {site.content.height} content items, {site.visitors.height:,} visitors, "
        f"{site.events.height:,} events ({clicks:,} clicks)"
    )


def _build(args: argparse.Namespace) -> None:
    from aura.batch.build import SiteTables
    from aura.batch.synthetic import generate_site, generate_surfaces

    policies, surfaces = _load_config(args.config_dir)
    n_segments_max = None
    if args.bench:
        policies = _with_k(policies, args.k_anonymity)
        surfaces = generate_surfaces(args.surfaces, args.seed)
        site = _timed(
            "generated the bench site",
            lambda: generate_site(args.seed, args.content, args.visitors, surfaces=surfaces),
        )
        n_segments_max = args.segments
    else:
        site = SiteTables.read(args.site)
    store = _store(args, create=True) if args.store else None
    manifest = _build_and_report(site, args, policies, surfaces, store, n_segments_max)
    if args.bench:
        config_dir = _write_config(args.out / "config", policies, surfaces)
        print(f"bench config written to {config_dir} (AURA_CONFIG_DIR={config_dir})")
    if store is not None:
        _publish(store, args.out / manifest.bundle_version, promote=args.promote)


def _build_and_report(
    site: SiteTables,
    args: argparse.Namespace,
    policies: Policies,
    surfaces: dict[str, Surface],
    store: BundleStore | None,
    n_segments_max: int | None = None,
) -> Manifest:
    from aura.batch.build import build_bundle

    parent = store.current() if store is not None else None
    start = time.perf_counter()
    manifest = build_bundle(
        site,
        policies=policies,
        surfaces=surfaces,
        out_dir=args.out,
        parent_version=parent,
        n_segments_max=n_segments_max,
        price_split=n_segments_max is not None,
        seed=args.seed,
        progress=True,
        log=_log,
    )
    print(_summary(manifest, args.out / manifest.bundle_version, time.perf_counter() - start))
    return manifest


def _with_k(policies: Policies, k: int) -> Policies:
    fairness = dataclasses.replace(policies.segmentation.fairness, k_anonymity_threshold=k)
    segmentation = dataclasses.replace(policies.segmentation, fairness=fairness)
    return dataclasses.replace(policies, segmentation=segmentation)


def _write_config(config_dir: Path, policies: Policies, surfaces: dict[str, Surface]) -> Path:
    """Write policies.yaml and surfaces.yaml that `load_policies` / `load_surfaces` read back unchanged."""
    config_dir.mkdir(parents=True, exist_ok=True)
    (config_dir / "policies.yaml").write_text(yaml.safe_dump(_plain(dataclasses.asdict(policies)), sort_keys=False))
    bodies = {sid: {k: v for k, v in _plain(dataclasses.asdict(s)).items() if k != "id"} for sid, s in surfaces.items()}
    (config_dir / "surfaces.yaml").write_text(yaml.safe_dump({"surfaces": bodies}, sort_keys=False))
    return config_dir


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _summary(manifest: Manifest, bundle_dir: Path, seconds: float) -> str:
    lines = [f"bundle {manifest.bundle_version} written to {bundle_dir} in {seconds:.1f} s"]
    for key, label in _STAT_LABELS.items():
        if key not in manifest.stats:
            continue
        value = manifest.stats[key]
        shown = f"{value:.1%}" if key in _SHARES else f"{value:,}"
        lines.append(f"  {label:<28}{shown:>12}")
    steps = manifest.reports.get("build_seconds", {})
    if steps:
        lines.append("  steps: " + ", ".join(f"{name} {s:.1f} s" for name, s in steps.items()))
    if manifest.parent_version:
        lines.append(f"  parent version: {manifest.parent_version}")
    return "\n".join(lines)


def _publish(store: BundleStore, bundle_dir: Path, promote: bool) -> None:
    version = store.push(bundle_dir)
    print(f"pushed {version} to {store.url}")
    if promote:
        store.promote(version)
        print(f"promoted {version}; it is now current in {store.url}")


def _push(args: argparse.Namespace) -> None:
    if not args.bundle_dir.is_dir():
        raise ConfigError(f"bundle directory {args.bundle_dir} does not exist.")
    _publish(_store(args), args.bundle_dir, promote=False)


def _promote(args: argparse.Namespace) -> None:
    store = _store(args)
    store.promote(args.version)
    print(f"promoted {args.version}; it is now current in {store.url}")


def _rollback(args: argparse.Namespace) -> None:
    store = _store(args)
    version = store.rollback()
    print(f"rolled back {store.url} to {version}")


def _list(args: argparse.Namespace) -> None:
    store = _store(args)
    versions = store.list_versions()
    if not versions:
        print(f"no bundles in {store.url}")
        return
    current = store.current()
    rows = [("", "VERSION", "CREATED_AT", "ITEMS", "SEGMENTS", "PARENT")]
    for version in versions:
        manifest = store.read_manifest(version)
        rows.append(
            (
                "*" if version == current else "",
                version,
                manifest.created_at,
                str(manifest.stats.get("content_items", "-")),
                str(manifest.stats.get("segments", "-")),
                manifest.parent_version or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(
                cell.rjust(w) if i in (3, 4) else cell.ljust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            ).rstrip()
        )


def _demo_bundle(args: argparse.Namespace) -> None:
    from aura.batch.synthetic import generate_site

    policies, surfaces = _load_config(args.config_dir)
    store = _store(args, create=True)
    site = _timed(
        "generated the site",
        lambda: generate_site(args.seed, args.content, args.visitors, args.days, surfaces=surfaces, now=args.as_of),
    )
    with tempfile.TemporaryDirectory(prefix="aura-demo-") as tmp:
        args.out = args.out or Path(tmp)
        manifest = _build_and_report(site, args, policies, surfaces, store)
        _publish(store, args.out / manifest.bundle_version, promote=True)


if __name__ == "__main__":
    sys.exit(main())
