"""`aura`: the operator CLI of the batch side (synthetic data, bundle builds, the bundle store).

Examples:
    aura demo-data --out var/site --seed 7
    aura build --site var/site --out var/bundles --store var/bundle-store --promote
    aura build --site var/site --out var/bundles --store var/bundle-store --decision-logs var/edge/logs --promote
    aura promote 20261127T154200Z-3fa9c1 --store var/bundle-store --force
    aura build --bench --content 1200 --segments 50 --surfaces 20 --out var/bench
    aura list --store s3://aura-bundles/prod --s3-endpoint-url http://127.0.0.1:9000
    aura demo-bundle --store var/bundle-store
    aura cms-sync --source https://cms.example.com/api/content --out var/site

User errors (a bad path, an invalid config or environment variable, a bundle or store problem) print one line and
exit with 2.
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

from aura.batch.events import export_command, parse_time
from aura.batch.ope import DEFAULT_MARGIN
from aura.batch.posteriors import DEFAULT_HALF_LIFE_DAYS
from aura.batch.retention import erase_user_command, retention_command
from aura.bundle.store import BundleStore, LocalBundleStore, open_store
from aura.config import (
    ENV_NAMES,
    MAX_DAYS,
    Policies,
    Settings,
    Surface,
    apply_env_overrides,
    load_policies,
    load_settings,
    load_surfaces,
    unknown_aura_variables,
)
from aura.errors import AuraError, BundleError, ConfigError

if TYPE_CHECKING:
    import pyarrow as pa

    from aura.batch.build import SiteTables
    from aura.bundle.format import Manifest

# The build and synthetic modules (DuckDB, polars, the embedder) are imported by the commands that use
# them, so that the store commands start in a fraction of the time.

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

BATCH_ENV_NAMES = ("CMS_API_URL", "CMS_API_KEY", "AURA_DUCKDB_MEMORY_LIMIT", "AURA_DUCKDB_THREADS")
"""Environment variables the batch reads besides `aura.config.ENV_NAMES`."""

# The settings of policies.yaml that environment variables override (`aura.config.apply_env_overrides`).
_POLICY_OVERRIDES = ("exploration_rate", "diversity_constraint", "freshness_half_life", "segment_confidence_threshold")

_STAT_LABELS: dict[str, str] = {
    "content_items": "content items",
    "topic_clusters": "topic clusters",
    "segments": "segments",
    "visitors": "visitors",
    "users_assigned": "users assigned",
    "segment_coverage": "segment coverage (visitors)",
    "session_coverage": "segment coverage (sessions)",
    "confident_assignments": "assignments >= threshold",
    "surfaces": "surfaces",
    "cells": "posterior cells",
    "posterior_rows": "posterior rows",
    "events_used": "events used",
    "clicks_on_eligible": "clicks on eligible content",
    "new_items_with_cohort_prior": "new items (cohort prior)",
    "cold_start_rules": "cold-start rules",
    "k_anonymity_threshold": "k-anonymity threshold",
    "intent_method": "intent method",
    "intent_model_heldout_accuracy": "intent held-out acc. (model)",
    "intent_evidence_heldout_accuracy": "intent held-out acc. (rules)",
}

_SHARES = frozenset(
    {
        "segment_coverage",
        "session_coverage",
        "confident_assignments",
        "intent_model_heldout_accuracy",
        "intent_evidence_heldout_accuracy",
    }
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return its exit code (0 ok, 2 user error, 130 interrupted)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "build":
        _check_build_args(parser, args)
    for message in unknown_aura_variables():
        print(f"aura: warning: {message}", file=sys.stderr)
    try:
        _apply_env_defaults(args)
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

    gate = argparse.ArgumentParser(add_help=False)
    gate.add_argument(
        "--ope-margin",
        type=_share,
        default=DEFAULT_MARGIN,
        help=f"refuse promotion when the off-policy DR value is more than this share below the serving bundle's "
        f"(default {DEFAULT_MARGIN})",
    )
    gate.add_argument("--force", action="store_true", help="promote even when the off-policy evaluation refuses")
    learning = argparse.ArgumentParser(add_help=False, parents=[gate])
    learning.add_argument(
        "--half-life-days",
        type=_positive_float,
        default=DEFAULT_HALF_LIFE_DAYS,
        help=f"half-life of the posteriors' evidence in days (default {DEFAULT_HALF_LIFE_DAYS:g})",
    )
    learning.add_argument(
        "--segment-dimensions",
        type=lambda text: tuple(d.strip() for d in text.split(",") if d.strip()),
        help="segment hierarchy, coarsest first, comma-separated: intent, device_class, recency, "
        "price_sensitivity, topic_interest, the context keys device, referrer_class, page_type, country, "
        "time_of_day, campaign, and context.<key> for a key of the request's context map "
        "(default: policies.yaml segmentation.dimensions)",
    )
    learning.add_argument(
        "--full-rebuild",
        action="store_true",
        help="recompute the posteriors from all events instead of continuing from the store's current bundle",
    )
    learning.add_argument(
        "--duckdb-memory-limit",
        type=_memory_limit,
        help="memory cap of the build's DuckDB, e.g. 2GB; past it DuckDB spills to a temporary directory "
        "(default $AURA_DUCKDB_MEMORY_LIMIT or 2GB)",
    )
    learning.add_argument(
        "--duckdb-threads",
        type=_positive,
        help="worker threads of the build's DuckDB (default $AURA_DUCKDB_THREADS or one per core)",
    )
    learning.add_argument(
        "--decision-logs",
        type=Path,
        help="log directory (an edge's STATE_DIR/logs, or shipped logs) whose decisions and feedback evaluate "
        "the new bundle off-policy",
    )
    learning.add_argument(
        "--heldout-fraction",
        type=_fraction,
        default=0.2,
        help="share of the latest logged decisions held out for the off-policy evaluation (default 0.2)",
    )

    demo_data = commands.add_parser("demo-data", parents=[site], help="write a synthetic site as Parquet")
    demo_data.add_argument("--out", type=Path, required=True, help="directory to write the site into")
    demo_data.add_argument("--content", type=_positive, default=400, help="content items (default 400)")
    demo_data.set_defaults(handler=_demo_data)

    build = commands.add_parser(
        "build",
        parents=[config, store, learning],
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

    pipeline = commands.add_parser(
        "pipeline",
        parents=[config, store, learning],
        help="the nightly job: CMS sync, shipped logs, incremental build, push, gated promotion",
        description="Sync content from the CMS, read the edge logs shipped to --store, build a bundle from the "
        "serving one plus the new events (evaluated off-policy on the latest decisions), push it and promote it.",
    )
    pipeline.add_argument(
        "--cms-source",
        default=os.environ.get("CMS_API_URL") or None,
        help="CMS export file or http(s) API URL (default $CMS_API_URL)",
    )
    pipeline.add_argument("--work-dir", type=Path, default=Path("var/pipeline"), help="scratch directory")
    pipeline.add_argument("--seed", type=int, default=0, help="seed of clustering and propensities")
    pipeline.set_defaults(handler=_with_store(_pipeline))

    push = commands.add_parser("push", parents=[store], help="verify and upload a bundle directory")
    push.add_argument("bundle_dir", type=Path, help="bundle directory (OUT/<version>)")
    push.set_defaults(handler=_push)

    promote = commands.add_parser(
        "promote",
        parents=[store, gate],
        help="make a pushed version current",
        description="Make a pushed version current, unless its off-policy report says it is worse than the "
        "serving bundle beyond --ope-margin (override with --force).",
    )
    promote.add_argument("version", help="bundle version to promote")
    promote.set_defaults(handler=_promote)

    rollback = commands.add_parser("rollback", parents=[store], help="re-promote the previous version")
    rollback.set_defaults(handler=_rollback)

    listing = commands.add_parser("list", parents=[store], help="list the store's versions, current marked *")
    listing.set_defaults(handler=_list)

    retention = commands.add_parser(
        "retention", parents=[store], help="delete logs, features and bundles past their retention periods"
    )
    for flag, dest, what in (
        ("--event-days", "event_days", "keep event logs this many days"),
        ("--feature-days", "feature_days", "keep feature tables this many days"),
        ("--model-versions", "model_versions", "keep this many bundle versions"),
    ):
        name, parse, fallback = _ENV_DEFAULTS[dest]
        retention.add_argument(flag, type=parse, help=f"{what} (default ${name} or {fallback})")
    retention.set_defaults(handler=_with_store(retention_command))

    erase = commands.add_parser("erase-user", parents=[store], help="erase one visitor's history from the store")
    erase.add_argument("user_id", help="the visitor's anonymous id")
    erase.set_defaults(handler=_with_store(erase_user_command))

    interactions = commands.add_parser(
        "interactions", parents=[store], help="write the shipped logs' interactions as OUT/events.parquet"
    )
    interactions.add_argument("--out", type=Path, required=True, help="directory to write events.parquet into")
    interactions.add_argument("--since", type=parse_time, help="first event time (RFC 3339 or YYYY-MM-DD)")
    interactions.add_argument("--until", type=parse_time, help="end of the event window (exclusive)")
    interactions.add_argument("--cache-dir", type=Path, help="where to mirror shipped logs (default: a temp dir)")
    interactions.set_defaults(handler=_with_store(export_command))

    cms = commands.add_parser(
        "cms-sync",
        help="read a CMS export or API into a site's content.parquet",
        description="Read a CMS export (.json, .jsonl, .csv) or HTTP JSON API (paged) into OUT/content.parquet.",
    )
    cms.add_argument(
        "--source",
        default=os.environ.get("CMS_API_URL") or None,
        help="export file or http(s) API URL (default $CMS_API_URL)",
    )
    cms.add_argument("--out", type=Path, required=True, help="site directory to write content.parquet into")
    cms.add_argument("--page-size", type=_positive, default=100, help="API page size (default 100)")
    cms.add_argument(
        "--field",
        action="append",
        default=[],
        metavar="SOURCE=COLUMN",
        help="map a CMS field (dotted path) to a content column; repeatable",
    )
    cms.set_defaults(handler=_cms_sync)

    demo_bundle = commands.add_parser(
        "demo-bundle",
        parents=[config, store, site, learning],
        help="generate a site, build, push and promote in one go",
    )
    demo_bundle.add_argument("--content", type=_positive, default=400, help="content items (default 400)")
    demo_bundle.add_argument("--out", type=Path, help="keep the built bundle here (default: a temporary directory)")
    demo_bundle.set_defaults(handler=_demo_bundle)
    return parser


def _apply_env_defaults(args: argparse.Namespace) -> None:
    """Fill the options of `_ENV_DEFAULTS` that the command has and the command line left unset.

    The variables are read here, after parsing, so that only a command with the option reads its variable and a
    bad value fails that command with one line naming the variable (argparse would name the option instead).
    """
    for dest, (name, parse, fallback) in _ENV_DEFAULTS.items():
        if not hasattr(args, dest) or getattr(args, dest) is not None:
            continue
        text = os.environ.get(name, "").strip()
        if not text:
            setattr(args, dest, fallback)
            continue
        try:
            setattr(args, dest, parse(text))
        except (argparse.ArgumentTypeError, ValueError) as exc:
            raise ConfigError(f"{name} {exc}.") from None


def _with_store(handler: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
    """Run `handler` only when a store was given, with the same message as the other store commands."""

    def checked(args: argparse.Namespace) -> None:
        _store(args)
        handler(args)

    return checked


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _days(text: str) -> int:
    value = _positive(text)
    if value > MAX_DAYS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_DAYS} days, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _memory_limit(text: str) -> str:
    """A memory limit that DuckDB accepts, e.g. 2GB or 512MiB (checked here, not half-way through a build)."""
    import duckdb

    try:
        duckdb.connect(config={"memory_limit": text}).close()
    except duckdb.Error:
        raise argparse.ArgumentTypeError(f"must be a size like 2GB or 512MiB, got {text!r}") from None
    return text


def _share(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def _as_of(text: str) -> datetime:
    try:
        day = date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a date like 2025-10-01, got {text!r}") from None
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


_DEFAULTS = Settings()

# Options whose default is an environment variable: dest -> (variable, parser, default when the variable is unset).
_ENV_DEFAULTS: dict[str, tuple[str, Callable[[str], Any], Any]] = {
    "duckdb_memory_limit": ("AURA_DUCKDB_MEMORY_LIMIT", _memory_limit, None),
    "duckdb_threads": ("AURA_DUCKDB_THREADS", _positive, None),
    "event_days": (ENV_NAMES["event_retention_days"], _days, _DEFAULTS.event_retention_days),
    "feature_days": (ENV_NAMES["feature_retention_days"], _days, _DEFAULTS.feature_retention_days),
    "model_versions": (ENV_NAMES["model_retention_versions"], _positive, _DEFAULTS.model_retention_versions),
}


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
    policies = load_policies(config_dir / "policies.yaml")
    surfaces = load_surfaces(surfaces_path)
    # The overrides the edge applies (EXPLORATION_RATE, SEGMENT_CONFIDENCE_THRESHOLD, ...), so that the bundle is
    # built with the policies it is served with.
    settings = load_settings()
    overridden = [ENV_NAMES[name] for name in _POLICY_OVERRIDES if getattr(settings, name) is not None]
    if overridden:
        _log(f"policies.yaml overridden by the environment: {', '.join(overridden)}")
    return apply_env_overrides(policies, settings), surfaces


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
        site = SiteTables.read(args.site, scan_events=True)
    store = _store(args, create=True) if args.store else None
    manifest = _build_and_report(site, args, policies, surfaces, store, n_segments_max)
    if args.bench:
        config_dir = _write_config(args.out / "config", policies, surfaces)
        print(f"bench config written to {config_dir} (AURA_CONFIG_DIR={config_dir})")
    if store is not None:
        _publish(store, args.out / manifest.bundle_version, args if args.promote else None)


def _build_and_report(
    site: SiteTables,
    args: argparse.Namespace,
    policies: Policies,
    surfaces: dict[str, Surface],
    store: BundleStore | None,
    n_segments_max: int | None = None,
) -> Manifest:
    from aura.batch.build import DUCKDB_MEMORY_LIMIT, build_bundle

    parent = store.current() if store is not None else None
    heldout = _heldout(args.decision_logs, args.heldout_fraction) if args.decision_logs else None
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="aura-parent-") as tmp:
        previous_dir = None
        if store is not None and parent is not None and not args.full_rebuild:
            previous_dir = _timed(f"downloaded the serving bundle {parent}", lambda: store.download(parent, tmp))
        manifest = build_bundle(
            site,
            policies=policies,
            surfaces=surfaces,
            out_dir=args.out,
            parent_version=parent,
            n_segments_max=n_segments_max,
            dimensions=args.segment_dimensions,
            seed=args.seed,
            half_life_days=args.half_life_days,
            previous_dir=previous_dir,
            heldout=heldout,
            ope_margin=args.ope_margin,
            progress=True,
            log=_log,
            duckdb_memory_limit=args.duckdb_memory_limit or DUCKDB_MEMORY_LIMIT,
            duckdb_threads=args.duckdb_threads,
        )
    print(_summary(manifest, args.out / manifest.bundle_version, time.perf_counter() - start))
    return manifest


def _heldout(logs_dir: Path, fraction: float) -> pa.Table:
    """The latest `fraction` of the decisions logged under `logs_dir`, with their rewards."""
    from aura.batch.events import load_interactions
    from aura.batch.ope import latest_decisions, logged_slates

    if not logs_dir.is_dir():
        raise ConfigError(f"decision log directory {logs_dir} does not exist.")
    logged = logged_slates(load_interactions(logs_dir))
    _log(f"read {len(set(logged['decision_id'].to_pylist())):,} logged decisions from {logs_dir}")
    return latest_decisions(logged, fraction) if logged.num_rows else logged


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
        shown = f"{value:.1%}" if key in _SHARES else value if isinstance(value, str) else f"{value:,}"
        lines.append(f"  {label:<28}{shown:>12}")
    steps = manifest.reports.get("build_seconds", {})
    if steps:
        lines.append("  steps: " + ", ".join(f"{name} {s:.1f} s" for name, s in steps.items()))
    if manifest.parent_version:
        lines.append(f"  parent version: {manifest.parent_version}")
    return "\n".join(lines)


def _publish(store: BundleStore, bundle_dir: Path, args: argparse.Namespace | None = None) -> None:
    """Push a bundle directory; with `args`, promote it through the off-policy gate of `args`."""
    version = store.push(bundle_dir)
    print(f"pushed {version} to {store.url}")
    if args is not None:
        _gated_promote(store, version, args.ope_margin, args.force)


def _gated_promote(store: BundleStore, version: str, margin: float, force: bool) -> None:
    """Promote `version` unless its manifest's off-policy report fails at `margin` and `force` is off."""
    from aura.batch.ope import REPORT_KEY, gate_passes

    report = store.read_manifest(version).reports.get(REPORT_KEY)
    if report is None:
        print(f"{version} has no off-policy report; promoting without the gate")
    else:
        verdict = (
            f"off-policy DR {report['candidate']['dr']:.4f} vs {report['serving']['dr']:.4f} per decision "
            f"for {report['serving_version']} ({report['relative_change']:+.1%}, margin {margin:.1%})"
        )
        current = store.current()
        if current != report["serving_version"]:
            print(f"note: the report compares against {report['serving_version']}, the store now serves {current}")
        if not gate_passes(report, margin):
            if not force:
                raise BundleError(f"not promoting {version}: {verdict}; pass --force to promote anyway.")
            print(f"forced past the gate: {verdict}")
        else:
            print(verdict)
    store.promote(version)
    print(f"promoted {version}; it is now current in {store.url}")


def _push(args: argparse.Namespace) -> None:
    if not args.bundle_dir.is_dir():
        raise ConfigError(f"bundle directory {args.bundle_dir} does not exist.")
    _publish(_store(args), args.bundle_dir)


def _promote(args: argparse.Namespace) -> None:
    _gated_promote(_store(args), args.version, args.ope_margin, args.force)


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


def _cms_sync(args: argparse.Namespace) -> None:
    from aura.batch.build import SITE_FILES
    from aura.batch.cms import fetch_cms_api, read_cms_export

    if not args.source:
        raise ConfigError("no CMS source given: pass --source FILE|URL or set CMS_API_URL.")
    pairs = [f.split("=", 1) for f in args.field]
    if any(len(p) != 2 or not all(p) for p in pairs):
        raise ConfigError(f"--field takes SOURCE=COLUMN, got {args.field}.")
    field_map = dict(pairs)
    if args.source.startswith(("http://", "https://")):
        api_key = os.environ.get("CMS_API_KEY") or None
        content = _timed(
            "fetched the CMS API",
            lambda: fetch_cms_api(args.source, api_key=api_key, page_size=args.page_size, field_map=field_map),
        )
    else:
        content = read_cms_export(args.source, field_map)
    args.out.mkdir(parents=True, exist_ok=True)
    content.write_parquet(args.out / SITE_FILES["content"])
    types = ", ".join(f"{t} {n}" for t, n in sorted(content["content_type"].value_counts().iter_rows()))
    print(f"wrote {content.height} content items to {args.out / SITE_FILES['content']} ({types})")


def _pipeline(args: argparse.Namespace) -> None:
    if not args.cms_source:
        raise ConfigError("no CMS source given: pass --cms-source FILE|URL or set CMS_API_URL.")
    site_dir, logs_dir = args.work_dir / "site", args.work_dir / "logs"
    _cms_sync(argparse.Namespace(source=args.cms_source, out=site_dir, page_size=100, field=[]))
    export_command(
        argparse.Namespace(
            store=args.store,
            s3_endpoint_url=args.s3_endpoint_url,
            out=site_dir,
            since=None,
            until=None,
            cache_dir=logs_dir,
        )
    )
    overrides = {"site": site_dir, "bench": False, "out": args.work_dir / "bundles", "promote": True}
    decision_logs = logs_dir if logs_dir.is_dir() else None  # no shipped logs yet: nothing to evaluate on
    _build(argparse.Namespace(**{**vars(args), "decision_logs": decision_logs, **overrides}))


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
        _publish(store, args.out / manifest.bundle_version, args)


if __name__ == "__main__":
    sys.exit(main())
