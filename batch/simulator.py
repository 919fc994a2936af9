"""The closed loop, run for real: simulated visitors against a live edge node, and the batch in between.

Each cycle starts an `aura-edge` node (a subprocess, gRPC only) on the promoted bundle and checks that
it serves that version, sends the cycle's visitors through `Rank` over gRPC, lets them click each shown
item with its ground-truth probability (`SyntheticSite.click_probabilities`: latent intent, expertise
and interests, partly visible through device, referrer, page type, time of day and campaign) and
reports the clicks through `Feedback`. Then the node is stopped gracefully, which closes its log
segments and ships them to the store; the batch reads the shipped logs (`load_interactions`), rebuilds
the bundle from the site's history plus every log so far, continuing the posteriors from the previous
bundle, and pushes and promotes it; the next cycle's node swaps it in.

The site publishes while the loop runs: `new_content_share` of its items are absent from the history and
the first bundle and appear with the rebuilds (new content gets its prior from its semantic neighbours).

Every cycle is scored with the ground truth on the same requests: the expected CTR (expected clicks per
impression) of the slates the edge showed (the bandit), of static popularity ranking (the first bundle's
`seg_global` posterior means, which never learn of new items), of popularity refreshed with every bundle
(the serving bundle's `seg_global` means), of a random ranking and of the oracle (the best slate by the
ground truth), all limited to the published items the edge may show the visitor. The visitors, their pages and
their clicks on any slate are seeded; the edge draws its own Thompson samples, so the bandit's slates,
and what is learnt from them, vary a little from run to run.

    >>> report = run_closed_loop(LoopConfig(seed=7, cycles=3), Path("var/loop"))
    >>> print(report.table())
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import polars as pl
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from aura.batch.build import EVENT_COLUMNS, SiteTables, build_bundle
from aura.batch.events import load_interactions
from aura.batch.synthetic import INTENTS, PAGE_BY_INTENT, PAGE_TYPES, PLACEMENTS, SyntheticSite, generate_site
from aura.bundle.format import GLOBAL_SEGMENT, POSTERIORS
from aura.bundle.store import LocalBundleStore
from aura.config import AppConfig, Surface, load_config
from aura.context import jurisdictions_of
from aura.embedding import TextEmbedder
from aura.errors import AuraError, ConfigError
from aura.v1 import admin_service_pb2 as admin_pb
from aura.v1 import admin_service_pb2_grpc as admin_grpc
from aura.v1 import common_pb2
from aura.v1 import decision_service_pb2 as pb
from aura.v1 import decision_service_pb2_grpc as pb_grpc

SITE_DIMENSIONS: tuple[str, ...] = ("intent", "device_class", "topic_interest")
"""The synthetic site's segment hierarchy: its clicks depend on intent, device and topic interests, not on
recency or price sensitivity (as segment dimensions those only split the segments' evidence)."""
CONSENT: tuple[str, ...] = ("analytics", "personalization")
"""The consent every simulated visitor grants (no `age_verified`: age-restricted items stay hidden)."""
NODE_START_SECONDS = 90.0
NODE_STOP_SECONDS = 30.0
RPC_TIMEOUT_SECONDS = 10.0


class SimulationError(AuraError):
    """The loop could not run: the edge node failed to start, serve the promoted bundle, or stop."""


@dataclass(frozen=True)
class LoopConfig:
    """What one closed-loop run simulates; the same config and seed give the same visitors and clicks."""

    seed: int = 7
    n_content: int = 120
    """Items of the synthetic site."""
    history_visitors: int = 3000
    """Visitors of the site's logged history (the first bundle's training data) and of the cycles."""
    history_days: int = 30
    cycles: int = 3
    """Traffic rounds; the bundle is rebuilt from the logs between rounds (cycles - 1 rebuilds)."""
    visitors_per_cycle: int = 400
    pages_per_visit: int = 2
    slate_size: int = 4
    """Items requested per Rank (capped by the surface's max_items)."""
    config_dir: Path = Path("config")
    """Where policies.yaml and surfaces.yaml are; the node and the batch read the same."""
    neutral_editorial: bool = True
    """Run with every surface's freshness_boost at 0 and diversity off: the ground truth rewards neither fresh
    nor varied slates, so these editorial rules would only handicap the bandit against the baselines (which
    ignore them)."""
    segment_dimensions: tuple[str, ...] | None = SITE_DIMENSIONS
    """The segment hierarchy the batch builds (None: policies.yaml's `segmentation.dimensions`)."""
    new_content_share: float = 0.2
    """Share of the items published during the loop: absent from the history and the first bundle, they
    appear in equal parts with each rebuild, as a site publishes (static popularity never ranks them)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.new_content_share < 1.0:
            raise ConfigError(f"closed loop: new_content_share must be in [0, 1), got {self.new_content_share}.")
        for name in ("n_content", "history_visitors", "history_days", "cycles", "visitors_per_cycle"):
            if getattr(self, name) < 1:
                raise ConfigError(f"closed loop: {name} must be at least 1, got {getattr(self, name)}.")
        if self.pages_per_visit < 1 or self.slate_size < 1:
            raise ConfigError("closed loop: pages_per_visit and slate_size must be at least 1.")


@dataclass
class CycleReport:
    """One cycle: the serving bundle, the traffic, and each policy's expected clicks on the same requests."""

    cycle: int
    bundle_version: str
    requests: int = 0
    impressions: int = 0
    clicks: int = 0
    """Realized clicks of the simulated visitors, each sent as Feedback."""
    personalized_share: float = 0.0
    """Share of decisions the edge made with a segment other than seg_global."""
    expected_clicks: dict[str, float] = field(default_factory=lambda: dict.fromkeys(POLICIES, 0.0))
    start_seconds: float = 0.0
    """From starting the node to it serving this cycle's bundle."""
    traffic_seconds: float = 0.0
    rebuild_seconds: float | None = None
    """Drain, log loading and the build of the next bundle (None after the last cycle)."""
    events_loaded: int | None = None
    """Interaction rows the rebuild read from the shipped logs."""

    def ctr(self, policy: str) -> float:
        """Expected clicks per impression of `policy` (one of POLICIES)."""
        return self.expected_clicks[policy] / self.impressions if self.impressions else 0.0

    def uplift(self, baseline: str = "popularity") -> float:
        """Bandit CTR over `baseline`'s CTR, minus one."""
        reference = self.ctr(baseline)
        return self.ctr("bandit") / reference - 1.0 if reference else 0.0

    @property
    def regret(self) -> float:
        """Oracle CTR minus bandit CTR (expected clicks lost per impression)."""
        return self.ctr("oracle") - self.ctr("bandit")

    @property
    def regret_clicks(self) -> float:
        """Expected clicks the bandit lost against the oracle over the cycle."""
        return self.expected_clicks["oracle"] - self.expected_clicks["bandit"]

    def to_dict(self) -> dict[str, Any]:
        """The report with every CTR, the uplift and the regret, for JSON."""
        return {
            **asdict(self),
            **{f"{p}_ctr": round(self.ctr(p), 6) for p in POLICIES},
            "uplift_over_static": round(self.uplift("static"), 6),
            "uplift_over_popularity": round(self.uplift(), 6),
            "regret_per_impression": round(self.regret, 6),
            "regret_clicks": round(self.regret_clicks, 3),
        }


POLICIES: tuple[str, ...] = ("bandit", "static", "popularity", "random", "oracle")
"""The bandit (the edge's slates), static popularity (the first bundle's seg_global means, never updated),
popularity (the serving bundle's seg_global means), random, and the oracle (the ground truth's best)."""


@dataclass
class LoopReport:
    """Every cycle of a run."""

    config: LoopConfig
    cycles: list[CycleReport]
    initial_build_seconds: float

    @property
    def last(self) -> CycleReport:
        """The final cycle, served by the bundle learnt from the history and every earlier cycle."""
        return self.cycles[-1]

    def table(self) -> str:
        """A fixed-width table: one line per cycle."""
        head = (
            f"{'cycle':>5} {'bundle':<24} {'requests':>8} {'clicks':>6} {'bandit':>7} {'static':>7} {'popular':>7} "
            f"{'random':>7} {'oracle':>7} {'vs stat':>7} {'vs pop':>7} {'regret':>7} {'rebuild':>8}"
        )
        lines = [head]
        for c in self.cycles:
            rebuild = f"{c.rebuild_seconds:7.1f}s" if c.rebuild_seconds is not None else f"{'-':>8}"
            lines.append(
                f"{c.cycle:>5} {c.bundle_version:<24} {c.requests:>8} {c.clicks:>6} {c.ctr('bandit'):>7.4f} "
                f"{c.ctr('static'):>7.4f} {c.ctr('popularity'):>7.4f} {c.ctr('random'):>7.4f} {c.ctr('oracle'):>7.4f} "
                f"{c.uplift('static'):>+7.1%} {c.uplift():>+7.1%} {c.regret:>7.4f} {rebuild}"
            )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """The run as JSON-ready data."""
        config = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.config).items()}
        return {
            "config": config,
            "initial_build_seconds": self.initial_build_seconds,
            "cycles": [c.to_dict() for c in self.cycles],
        }


@dataclass(frozen=True)
class Visit:
    """One Rank request of the simulation: who asks, for which surface, in which context."""

    visitor: int
    """Row of the site's visitors table."""
    session_id: str
    surface_id: str
    page_type: str


class EdgeProcess:
    """An `aura-edge --no-gateway` subprocess with its own state directory, serving from a local store."""

    def __init__(self, work_dir: Path, store_dir: Path, config_dir: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        self.log_path = work_dir / "edge.log"
        environment = {
            **os.environ,
            "AURA_STATE_DIR": str(work_dir / "state"),
            "AURA_BUNDLE_STORE": str(store_dir),
            "AURA_GRPC_ADDRESS": self.address,
            "AURA_CONFIG_DIR": str(config_dir.resolve()),
            "AURA_NODE_ID": "sim-edge",
            "AURA_BUNDLE_POLL_SECONDS": "0.5",
            "EVENT_FLUSH_INTERVAL": "0.05",
            "API_LOG_LEVEL": "warning",
            "OPENBLAS_NUM_THREADS": "1",
        }
        with self.log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "aura.edge.node", "--workers", "1", "--no-gateway"],
                env=environment,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=work_dir,
            )
        self.channel = grpc.insecure_channel(self.address)

    def wait_serving(self, version: str) -> None:
        """Poll the admin status until the node serves `version`; raise SimulationError on exit or timeout."""
        admin = admin_grpc.AdminServiceStub(self.channel)
        deadline = time.monotonic() + NODE_START_SECONDS
        active = ""
        while active != version:
            if self.process.poll() is not None:
                raise SimulationError(f"edge node exited with {self.process.returncode}:\n{self._tail()}")
            if time.monotonic() > deadline:
                raise SimulationError(
                    f"edge node did not serve bundle {version} (it serves {active!r}):\n{self._tail()}"
                )
            try:
                active = admin.GetBundleStatus(admin_pb.GetBundleStatusRequest(), timeout=1).active_version
            except grpc.RpcError:
                active = ""
            if active != version:
                time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM and wait: the node drains, closes its log segments and ships them to the store."""
        self.channel.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=NODE_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise SimulationError(
                    f"edge node did not stop within {NODE_STOP_SECONDS:.0f} s:\n{self._tail()}"
                ) from None
        if self.process.returncode != 0:
            raise SimulationError(f"edge node exited with {self.process.returncode}:\n{self._tail()}")

    def _tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


class GroundTruth:
    """The site's click model and the edge's eligibility rules, per visitor, surface and context."""

    def __init__(self, site: SyntheticSite, app: AppConfig) -> None:
        self.site = site
        self.surfaces = app.surfaces
        self.visitors = site.visitors.to_dicts()
        content = site.content
        self.ids: list[str] = content["id"].to_list()
        self.row_of = {cid: i for i, cid in enumerate(self.ids)}
        self._types = np.array(content["content_type"].to_list(), dtype=object)
        self._devices = content["device_suitability"].to_list()
        self._jurisdictions = content["jurisdictions"].to_list()
        self._flags = content["policy_flags"].to_list()
        unlocked = {f for f, scope in app.policies.decisioning.eligibility.flag_consents.items() if scope in CONSENT}
        self._unlocked = frozenset(unlocked)
        self._eligible: dict[tuple[str, str, str], np.ndarray] = {}
        self._truth: dict[tuple[int, str], np.ndarray] = {}

    def probabilities(self, visitor: int, surface_id: str) -> np.ndarray:
        """Click probability of every content row for the visitor on the surface."""
        key = (visitor, surface_id)
        if key not in self._truth:
            self._truth[key] = self.site.click_probabilities(self.visitors[visitor], surface_id)
        return self._truth[key]

    def eligible(self, surface_id: str, device: str, country: str) -> np.ndarray:
        """Content rows the edge may show: surface type, device suitability, jurisdiction and policy flags."""
        key = (surface_id, device, country)
        if key not in self._eligible:
            surface: Surface = self.surfaces[surface_id]
            allowed = set(surface.allowed_policy_flags) | self._unlocked
            regions = set(jurisdictions_of(country))
            types = set(surface.eligible_content_types)
            self._eligible[key] = np.array(
                [
                    (not types or kind in types)
                    and (not devices or device in devices)
                    and (not places or bool(regions.intersection(places)))
                    and set(flags or ()) <= allowed
                    for kind, devices, places, flags in zip(
                        self._types, self._devices, self._jurisdictions, self._flags, strict=True
                    )
                ],
                dtype=bool,
            )
        return self._eligible[key]


def plan_visits(site: SyntheticSite, surfaces: Mapping[str, Surface], config: LoopConfig, cycle: int) -> list[Visit]:
    """The cycle's Rank requests: seeded visitors (returning site visitors), their page views (page types
    drawn by latent intent) and the surfaces placed on each page."""
    rng = np.random.default_rng([config.seed, cycle, 1])
    intents = site.visitors["latent_intent"].to_list()
    visits = []
    chosen = rng.integers(site.visitors.height, size=config.visitors_per_cycle)
    for n, visitor in enumerate(chosen.tolist()):
        page_share = PAGE_BY_INTENT[INTENTS.index(intents[visitor])]
        for page in rng.choice(len(PAGE_TYPES), size=config.pages_per_visit, p=page_share).tolist():
            page_type = PAGE_TYPES[page]
            for surface_id in surfaces:
                if page_type in PLACEMENTS.get(surface_id, PAGE_TYPES):
                    visits.append(Visit(visitor, f"sim_{config.seed}_{cycle}_{n}", surface_id, page_type))
    return visits


def publication_cycles(content: pl.DataFrame, config: LoopConfig) -> dict[str, int]:
    """The items published during the loop and the cycle each first appears in, spread evenly over cycles 1
    to cycles - 1: `config.new_content_share` of each content type (rounded down, so every type keeps items
    from the start), seeded; every other item is published from the start."""
    if config.cycles < 2:
        return {}
    rng = np.random.default_rng([config.seed, 3])
    chosen: list[str] = []
    for _, group in content.group_by("content_type", maintain_order=True):
        ids = sorted(group["id"].to_list())
        count = int(config.new_content_share * len(ids))
        chosen += [ids[i] for i in sorted(rng.choice(len(ids), size=count, replace=False).tolist())]
    return {content_id: 1 + k % (config.cycles - 1) for k, content_id in enumerate(sorted(chosen))}


def effective_config(config: LoopConfig, out_dir: Path) -> Path:
    """The config directory the loop runs with: `config.config_dir`, or with `config.neutral_editorial` a copy
    whose surfaces have freshness boosts at 0 and diversity off."""
    if not config.neutral_editorial:
        return config.config_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(config.config_dir / "policies.yaml", out_dir / "policies.yaml")
    surfaces = yaml.safe_load((config.config_dir / "surfaces.yaml").read_text())
    for surface in surfaces.get("surfaces", {}).values():
        surface["freshness_boost"] = 0.0
        surface["diversity"] = False
    (out_dir / "surfaces.yaml").write_text(yaml.safe_dump(surfaces, sort_keys=False))
    return out_dir


def popularity_scores(bundle_dir: Path, content_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """Per surface, the `seg_global` posterior mean of every content row (-inf where the surface has none)."""
    table = pq.read_table(bundle_dir / POSTERIORS, columns=["surface_id", "segment_id", "content_id", "alpha", "beta"])
    table = table.filter(pc.equal(table["segment_id"], GLOBAL_SEGMENT))
    row_of = {cid: i for i, cid in enumerate(content_ids)}
    scores: dict[str, np.ndarray] = {}
    for surface_id, content_id, alpha, beta in zip(
        *(table[c].to_pylist() for c in ("surface_id", "content_id", "alpha", "beta")), strict=True
    ):
        column = scores.setdefault(surface_id, np.full(len(content_ids), -np.inf))
        column[row_of[content_id]] = alpha / (alpha + beta)
    return scores


def run_traffic(
    edge: EdgeProcess,
    truth: GroundTruth,
    visits: Sequence[Visit],
    baselines: Mapping[str, Mapping[str, np.ndarray]],
    published: np.ndarray,
    config: LoopConfig,
    report: CycleReport,
) -> None:
    """Send the visits through Rank, score every policy's slate with the ground truth, click and send Feedback.

    `baselines` maps "static" and "popularity" to their per-surface scores (`popularity_scores`); `published`
    marks the content rows the site has published by this cycle."""
    stub = pb_grpc.DecisionServiceStub(edge.channel)
    pending = []
    personalized = 0
    for i, visit in enumerate(visits):
        visitor = truth.visitors[visit.visitor]
        surface = truth.surfaces[visit.surface_id]
        context = {"time_of_day": visitor["time_of_day"]} | (
            {"campaign": visitor["campaign"]} if visitor["campaign"] else {}
        )
        request = pb.RankRequest(
            surface_id=visit.surface_id,
            limit=min(config.slate_size, surface.max_items),
            user_ctx=common_pb2.UserContext(
                anon_id=visitor["anon_id"],
                session_id=visit.session_id,
                device=visitor["device"],
                referrer=visitor["referrer"],
                page_type=visit.page_type,
                consent=CONSENT,
                geo=common_pb2.Geo(country=visitor["country"]),
            ),
            context=context,
        )
        try:
            response = stub.Rank(request, timeout=RPC_TIMEOUT_SECONDS)
        except grpc.RpcError as exc:
            raise SimulationError(f"Rank failed for {visit}: {exc.code().name} {exc.details()}") from None
        rows = np.array([truth.row_of[item.content_id] for item in response.items], dtype=np.int64)
        if rows.size == 0:
            continue
        candidates = np.flatnonzero(truth.eligible(visit.surface_id, visitor["device"], visitor["country"]) & published)
        if not np.isin(rows, candidates).all():
            raise SimulationError(
                f"the edge showed an item the simulator's eligibility rules exclude ({visit}); "
                "the baselines would not be comparable."
            )
        p = truth.probabilities(visit.visitor, visit.surface_id)
        n = rows.size
        eligible_p = p[candidates]
        ranked = {
            name: candidates[np.argsort(-scores[visit.surface_id][candidates], kind="stable")[:n]]
            for name, scores in baselines.items()
        }
        for policy, clicks in (
            ("bandit", p[rows].sum()),
            ("static", p[ranked["static"]].sum()),
            ("popularity", p[ranked["popularity"]].sum()),
            ("random", n * eligible_p.mean()),
            ("oracle", np.sort(eligible_p)[-n:].sum()),
        ):
            report.expected_clicks[policy] += float(clicks)
        report.requests += 1
        report.impressions += n
        personalized += response.segment.id != GLOBAL_SEGMENT
        draws = np.random.default_rng([config.seed, report.cycle, 2, i]).random(len(truth.ids))
        for item, row in zip(response.items, rows.tolist(), strict=True):
            if draws[row] < p[row]:
                report.clicks += 1
                feedback = pb.FeedbackRequest(
                    request_id=response.request_id,
                    item_id=item.content_id,
                    reward=pb.Reward(type=pb.REWARD_TYPE_CLICK, value=1.0),
                    context=pb.FeedbackContext(position=item.position),
                )
                pending.append(stub.Feedback.future(feedback, timeout=RPC_TIMEOUT_SECONDS))
    for future in pending:
        try:
            future.result()
        except grpc.RpcError as exc:
            raise SimulationError(f"Feedback failed: {exc.code().name} {exc.details()}") from None
    report.personalized_share = round(personalized / report.requests, 4) if report.requests else 0.0


class ClosedLoop:
    """The batch side of the loop: the site, its store, and the bundles built from its logs."""

    def __init__(self, config: LoopConfig, work_dir: Path, embedder: TextEmbedder | None = None) -> None:
        self.config = config
        self.work_dir = work_dir
        self.config_dir = effective_config(config, work_dir / "config")
        self.app = load_config({"AURA_CONFIG_DIR": str(self.config_dir)})
        # The history ends at this hour, just before the live traffic, so its evidence has not decayed away.
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        self.site = generate_site(
            config.seed,
            n_content=config.n_content,
            n_visitors=config.history_visitors,
            days=config.history_days,
            surfaces=self.app.surfaces,
            now=now,
        )
        self.truth = GroundTruth(self.site, self.app)
        self.published_in = publication_cycles(self.site.content, config)
        self.store = LocalBundleStore(work_dir / "store")
        self.built = work_dir / "built"
        self.embedder = embedder or TextEmbedder.load()
        self.bundle_dir: Path | None = None

    def published(self, cycle: int) -> np.ndarray:
        """Which content rows the site has published by `cycle`."""
        return np.array([self.published_in.get(cid, 0) <= cycle for cid in self.truth.ids])

    def content(self, cycle: int) -> pl.DataFrame:
        """The content table as of `cycle`; items published during the loop carry the history's end as their
        publication date."""
        content = self.site.content.filter(pl.Series(self.published(cycle)))
        fresh = pl.col("id").is_in(list(self.published_in))
        return content.with_columns(
            published_at=pl.when(fresh).then(pl.lit(self.site.now)).otherwise(pl.col("published_at")),
            updated_at=pl.when(fresh).then(pl.lit(self.site.now)).otherwise(pl.col("updated_at")),
        )

    def build(self, events: pl.DataFrame, cycle: int) -> str:
        """Build the bundle that serves `cycle` from the events (continuing the previous bundle's posteriors),
        push and promote it."""
        previous = self.bundle_dir
        manifest = build_bundle(
            SiteTables(self.content(cycle), events),
            policies=self.app.policies,
            surfaces=self.app.surfaces,
            out_dir=self.built,
            parent_version=previous.name if previous is not None else None,
            embedder=self.embedder,
            dimensions=self.config.segment_dimensions,
            seed=self.config.seed,
            previous_dir=previous,
        )
        self.bundle_dir = self.built / manifest.bundle_version
        self.store.push(self.bundle_dir)
        self.store.promote(manifest.bundle_version)
        return manifest.bundle_version

    def history(self) -> pl.DataFrame:
        """The site's logged history, without the items published during the loop."""
        events = self.site.events.select(EVENT_COLUMNS)
        return events.filter(~pl.col("content_id").is_in(list(self.published_in)))

    def history_and_logs(self) -> tuple[pl.DataFrame, int]:
        """The history plus every interaction of the logs shipped to the store, as builder events."""
        interactions = load_interactions(self.store)
        live = pl.from_arrow(interactions.select(list(EVENT_COLUMNS)))
        history = self.history()
        return pl.concat([history, live.cast(history.schema)], how="vertical"), interactions.num_rows

    def run(self, log: Callable[[str], None] | None = None) -> LoopReport:
        """Build the first bundle from the history, then run the cycles; see the module docstring."""
        say = log or (lambda _line: None)
        started = time.perf_counter()
        history = self.history()
        version = self.build(history, 0)
        static = popularity_scores(self.built / version, self.truth.ids)
        report = LoopReport(self.config, [], round(time.perf_counter() - started, 3))
        say(f"bundle {version} built from {history.height} history events in {report.initial_build_seconds} s")
        for cycle in range(self.config.cycles):
            cycle_report = CycleReport(cycle, version)
            cycle_dir = self.work_dir / "edge"
            cycle_dir.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            edge = EdgeProcess(cycle_dir, self.store.root, self.config_dir)
            try:
                edge.wait_serving(version)
                cycle_report.start_seconds = round(time.perf_counter() - started, 3)
                started = time.perf_counter()
                visits = plan_visits(self.site, self.app.surfaces, self.config, cycle)
                baselines = {"static": static, "popularity": popularity_scores(self.built / version, self.truth.ids)}
                run_traffic(edge, self.truth, visits, baselines, self.published(cycle), self.config, cycle_report)
                cycle_report.traffic_seconds = round(time.perf_counter() - started, 3)
            finally:
                edge.stop()
            if cycle < self.config.cycles - 1:
                started = time.perf_counter()
                events, cycle_report.events_loaded = self.history_and_logs()
                version = self.build(events, cycle + 1)
                cycle_report.rebuild_seconds = round(time.perf_counter() - started, 3)
            report.cycles.append(cycle_report)
            say(report.table().splitlines()[-1])
        return report


def run_closed_loop(config: LoopConfig, work_dir: str | Path, log: Callable[[str], None] | None = None) -> LoopReport:
    """Run the closed loop in `work_dir` (created; its store and logs are kept for inspection)."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    return ClosedLoop(config, work).run(log)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m aura.batch.simulator`: run the closed loop and print one line per cycle."""
    defaults = LoopConfig()
    parser = argparse.ArgumentParser(prog="aura-simulate", description=__doc__.splitlines()[0])
    parser.add_argument("--work-dir", required=True, help="directory for the store, the bundles and the node's state")
    for name in ("seed", "n_content", "history_visitors", "history_days", "cycles", "visitors_per_cycle", "slate_size"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--config-dir", type=Path, default=defaults.config_dir)
    parser.add_argument(
        "--new-content-share",
        type=float,
        default=defaults.new_content_share,
        help="share of the items published during the loop (default %(default)s)",
    )
    parser.add_argument(
        "--editorial", action="store_true", help="keep the surfaces' freshness boosts and diversity rules"
    )
    parser.add_argument("--json", help="also write the report as JSON to this file")
    args = parser.parse_args(argv)
    try:
        options = {k: v for k, v in vars(args).items() if k not in ("work_dir", "json", "editorial")}
        config = LoopConfig(**options, neutral_editorial=not args.editorial)
        report = run_closed_loop(config, args.work_dir, log=print)
    except (AuraError, ConfigError) as exc:
        print(f"aura-simulate: {exc}", file=sys.stderr)
        return 1
    print(report.table())
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
