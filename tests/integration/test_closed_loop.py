"""The closed loop over the wire: a real edge node ranks, simulated visitors click, the batch rebuilds from the
shipped logs, and the edge swaps bundles (aura.batch.simulator)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from aura.batch.posteriors import REPORT_KEY
from aura.batch.simulator import LoopConfig, LoopReport, run_closed_loop
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
RANDOM_MARGIN = 1.35
"""The bandit must beat random ranking by 35% in the last cycle: with this seed it beat it by 44% and 45% in
two runs (0.1078 and 0.1087 against 0.0748 expected clicks per impression); the edge's own unseeded Thompson
draws move the bandit's CTR by about 0.001 between runs, far inside the margin."""
POPULARITY_FLOOR = 0.96
"""The bandit must reach 96% of static popularity ranking's CTR in the last cycle. It reached 98% and 99.8%
in two runs (0.1078 and 0.1087 against 0.1100 and 0.1089), 96% before intents were learnt and cold-start
rules walked up the segment hierarchy. The issue's claim, clearly above popularity, is not met
(docs/benchmarks.md, the closed loop)."""


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


def test_the_bandit_learns(loop: tuple[LoopReport, Path]) -> None:
    report, _ = loop
    first, last = report.cycles[0], report.last
    assert last.ctr("bandit") > RANDOM_MARGIN * last.ctr("random")
    assert last.ctr("bandit") > POPULARITY_FLOOR * last.ctr("popularity")
    assert last.ctr("oracle") > last.ctr("bandit")
    # Visitors who clicked in the loop get segment assignments in the rebuilt bundles.
    assert last.personalized_share > first.personalized_share
