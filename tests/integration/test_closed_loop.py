"""The closed loop over the wire: a real edge node ranks, simulated visitors click, the batch rebuilds from the
shipped logs, and the edge swaps bundles (aura.batch.simulator)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aura.batch.events import load_interactions
from aura.batch.posteriors import REPORT_KEY
from aura.batch.simulator import LoopConfig, LoopReport, publication_cycles, run_closed_loop
from aura.batch.synthetic import generate_site
from aura.bundle.format import CONTENT, USER_SEGMENTS
from aura.bundle.store import LocalBundleStore

REPO = Path(__file__).resolve().parents[2]
CONFIG = LoopConfig(
    seed=7,
    n_content=40,
    history_visitors=1500,
    history_days=45,
    cycles=3,
    visitors_per_cycle=300,
    config_dir=REPO / "config",
)
RANDOM_MARGIN = 1.25
"""The bandit must beat random ranking by 25% in the last cycle: it beat it by 34-38% in three runs (0.1006-0.1034
against 0.0748 expected clicks per impression); the edge's own unseeded Thompson draws move the bandit's CTR
by about 0.003 between runs."""
STATIC_MARGIN = 1.05
"""The bandit must beat static popularity ranking (the first bundle's) by 5% in the last cycle: +10.3% to +13.4%
in three runs (0.0912 expected clicks per impression for static popularity). On this site a fifth of the items
are published during the loop: the bandit finds the good ones (neighbour priors, exploration, the node's online
posteriors), static popularity never ranks them."""
POPULARITY_MARGIN = 1.03
"""The bandit must beat popularity refreshed with every bundle by 3% in the last cycle: +9.0% to +13.5% in three
runs, most of it on the items published with the last bundle, which the node learns between bundles."""


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory) -> tuple[LoopReport, Path]:
    work = tmp_path_factory.mktemp("loop")
    return run_closed_loop(CONFIG, work), work


def test_every_cycle_is_served_by_the_bundle_learnt_from_the_previous_ones(loop: tuple[LoopReport, Path]) -> None:
    report, work = loop
    store = LocalBundleStore(work / "store")
    versions = [c.bundle_version for c in report.cycles]
    assert len(set(versions)) == CONFIG.cycles
    assert store.current() == versions[-1]
    for parent, child in itertools.pairwise(versions):
        manifest = store.read_manifest(child)
        assert manifest.parent_version == parent
        assert manifest.reports[REPORT_KEY]["incremental_from"] == parent


def test_every_decision_and_click_reaches_the_batch_through_the_logs(loop: tuple[LoopReport, Path]) -> None:
    report, _ = loop
    seen = 0
    for cycle in report.cycles[:-1]:
        seen += cycle.impressions + cycle.clicks
        assert cycle.events_loaded == seen
    assert all(c.requests >= CONFIG.visitors_per_cycle and c.clicks > 0 for c in report.cycles)


def test_items_published_during_the_loop_reach_the_bundles_and_the_visitors(loop: tuple[LoopReport, Path]) -> None:
    report, work = loop
    catalogues = [
        set(pq.read_table(work / "built" / c.bundle_version / CONTENT, columns=["id"])["id"].to_pylist())
        for c in report.cycles
    ]
    assert all(earlier < later for earlier, later in itertools.pairwise(catalogues))
    published_later = catalogues[-1] - catalogues[0]
    assert len(published_later) == len(
        publication_cycles(generate_site(CONFIG.seed, CONFIG.n_content, n_visitors=50, days=1).content, CONFIG)
    )
    shown = set(load_interactions(LocalBundleStore(work / "store"))["content_id"].to_pylist())
    assert shown & published_later


def test_the_bandit_learns(loop: tuple[LoopReport, Path]) -> None:
    report, work = loop
    first, last = report.cycles[0], report.last
    assert last.ctr("bandit") > RANDOM_MARGIN * last.ctr("random")
    assert last.ctr("bandit") > STATIC_MARGIN * last.ctr("static")
    assert last.ctr("bandit") > POPULARITY_MARGIN * last.ctr("popularity")
    assert last.ctr("oracle") > last.ctr("bandit")
    # Visitors who clicked in the loop get segment assignments in the rebuilt bundles.
    first_assigned, last_assigned = (
        pq.read_metadata(work / "built" / cycle.bundle_version / USER_SEGMENTS).num_rows for cycle in (first, last)
    )
    assert last_assigned > first_assigned
