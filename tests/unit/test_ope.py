"""Off-policy estimators on a synthetic bandit with a known value, propensity reconstruction, logs and the gate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aura.batch.events import load_interactions
from aura.batch.ope import (
    LOGGED_SCHEMA,
    SlatePolicy,
    compare,
    estimate,
    fill_propensities,
    gate_passes,
    latest_decisions,
    logged_slates,
)
from aura.batch.posteriors import thompson_propensity
from aura.bundle.format import GLOBAL_SEGMENT
from aura.errors import InvalidRequest
from aura.eventlog import SCHEMAS

NOW = datetime(2025, 10, 1, tzinfo=UTC)
ARMS = [f"a{i}" for i in range(5)]
TRUE_CTR = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
LOGGING = np.array([0.3, 0.25, 0.2, 0.15, 0.1])
TARGET = np.array([0.05, 0.05, 0.1, 0.2, 0.6])
TRUE_VALUE = float(TARGET @ TRUE_CTR)  # 0.425


def _policy(
    inclusion: np.ndarray, means: np.ndarray, version: str | None = None, strength: float = 10.0
) -> SlatePolicy:
    n = len(inclusion)
    return SlatePolicy(
        pa.table(
            {
                "surface_id": ["hero"] * n,
                "segment_id": [GLOBAL_SEGMENT] * n,
                "content_id": ARMS[:n],
                "alpha": strength * means,
                "beta": strength * (1 - means),
                "propensity": pa.array(inclusion, pa.float32()),
            }
        ),
        version,
    )


def _bandit_log(rng: np.random.Generator, n: int) -> tuple[pa.Table, np.ndarray]:
    arms = rng.choice(len(ARMS), size=n, p=LOGGING)
    rewards = (rng.random(n) < TRUE_CTR[arms]).astype(np.float64)
    table = pa.table(
        {
            "decision_id": [f"d{i}" for i in range(n)],
            "ts": pa.array([NOW + timedelta(seconds=i) for i in range(n)], pa.timestamp("ms", tz="UTC")),
            "bundle_version": ["v1"] * n,
            "surface_id": ["hero"] * n,
            "segment_id": [GLOBAL_SEGMENT] * n,
            "content_id": [ARMS[a] for a in arms],
            "slate_size": pa.array([1] * n, pa.int32()),
            "propensity": LOGGING[arms],
            "reward": rewards,
        },
        schema=LOGGED_SCHEMA,
    )
    return table, table["propensity"].to_numpy()


def test_ips_and_dr_are_unbiased_and_snips_is_bounded() -> None:
    rng = np.random.default_rng(5)
    target = _policy(TARGET, np.full(5, 0.5))
    wrong_model = _policy(LOGGING, np.full(5, 0.3))
    right_model = _policy(LOGGING, TRUE_CTR, strength=1e6)
    runs = []
    for _ in range(200):
        logged, propensity = _bandit_log(rng, 500)
        wrong, right = (
            estimate(logged, propensity, target, wrong_model),
            estimate(logged, propensity, target, right_model),
        )
        assert 0.0 <= wrong.snips <= 1.0
        assert wrong.decisions == wrong.slots == 500
        runs.append((wrong.ips, wrong.snips, wrong.dr, right.dr))
    ips, snips, dr_wrong, dr_right = np.array(runs).T
    assert ips.mean() == pytest.approx(TRUE_VALUE, abs=0.01)
    assert snips.mean() == pytest.approx(TRUE_VALUE, abs=0.01)
    assert dr_wrong.mean() == pytest.approx(TRUE_VALUE, abs=0.01)
    assert dr_right.mean() == pytest.approx(TRUE_VALUE, abs=0.005)
    assert dr_right.std() < 0.9 * ips.std()


def test_snips_stays_in_the_reward_range_when_ips_does_not() -> None:
    # One rare, rewarded action with a tiny logging propensity blows IPS past the maximum reward.
    logged, _ = _bandit_log(np.random.default_rng(0), 4)
    logged = logged.set_column(8, "reward", pa.array([1.0, 0.0, 0.0, 0.0]))
    propensity = np.array([0.01, 0.5, 0.5, 0.5])
    result = estimate(logged, propensity, _policy(TARGET, np.full(5, 0.5)), _policy(LOGGING, np.full(5, 0.3)))
    assert result.ips > 1.0
    assert 0.0 <= result.snips <= 1.0


def test_missing_propensities_are_reconstructed_from_posterior_draws() -> None:
    means = np.array([0.9, 0.5, 0.5, 0.1, 0.1])
    logging = _policy(np.full(5, np.nan), means, "v1")
    logged, _ = _bandit_log(np.random.default_rng(1), 6)
    logged = logged.set_column(7, "propensity", pa.array([None, 0.4, None, None, None, None], pa.float64()))
    logged = logged.set_column(5, "content_id", pa.array(["a0", "a1", "a2", "a3", "zz", "a0"]))
    logged = logged.set_column(6, "slate_size", pa.array([2] * 6, pa.int32()))
    propensity, reconstructed = fill_propensities(logged, {"v1": logging}, None, seed=4, draws=400)
    cell = logging.cell("hero", GLOBAL_SEGMENT)
    assert cell is not None
    expected = thompson_propensity(cell.alpha[None], cell.beta[None], 2, np.random.default_rng(4), 400)[0]
    assert reconstructed == 4
    np.testing.assert_allclose(propensity[[0, 2, 3, 5]], expected[[0, 2, 3, 0]])
    assert propensity[1] == 0.4 and np.isnan(propensity[4])
    assert expected.sum() == pytest.approx(2.0)


def _eventlogs() -> tuple[pa.Table, pa.Table]:
    def item(content: str, position: int, propensity: float | None) -> dict[str, object]:
        return {"content_id": content, "position": position, "score": 0.5, "propensity": propensity, "explored": False}

    rows = [
        ("r1", NOW, False, [item("a1", 0, 0.5), item("a2", 1, None)]),
        ("r1", NOW, False, [item("a1", 0, 0.5), item("a2", 1, None)]),
        ("r2", NOW + timedelta(minutes=1), True, [item("a3", 0, 0.2)]),
        ("r3", NOW + timedelta(minutes=2), False, [item("a3", 0, 0.25)]),
    ]
    decisions = pa.Table.from_pylist(
        [
            {
                "event_id": rid,
                "ts": ts,
                "bundle_version": "v1",
                "surface_id": "hero",
                "segment_id": "seg_learn",
                "holdout": holdout,
                "items": items,
            }
            for rid, ts, holdout, items in rows
        ],
        schema=SCHEMAS["decisions"],
    )
    feedback = pa.Table.from_pylist(
        [
            {
                "event_id": "f1",
                "ts": NOW,
                "request_id": "r1",
                "item_id": "a2",
                "reward_type": "click",
                "reward_value": 1.0,
            },
            {
                "event_id": "f2",
                "ts": NOW,
                "request_id": "r3",
                "item_id": "a3",
                "reward_type": "dwell",
                "reward_value": 1.0,
            },
        ],
        schema=SCHEMAS["feedback"],
    )
    return decisions, feedback


def test_logged_slates_from_ingested_logs(tmp_path: Path) -> None:
    for stream, table in zip(("decisions", "feedback"), _eventlogs(), strict=True):
        (tmp_path / stream / "date=2025-10-01" / "hour=00").mkdir(parents=True)
        pq.write_table(table, tmp_path / stream / "date=2025-10-01" / "hour=00" / "seg.parquet")
    logged = logged_slates(load_interactions(tmp_path))
    assert logged.schema == LOGGED_SCHEMA
    rows = [
        (r["decision_id"], r["content_id"], r["slate_size"], r["propensity"], r["reward"]) for r in logged.to_pylist()
    ]
    # r1 is logged twice (deduplicated); only click feedback is a reward.
    assert rows == [
        ("r1", "a1", 2, 0.5, 0.0),
        ("r1", "a2", 2, None, 1.0),
        ("r2", "a3", 1, 0.2, 0.0),
        ("r3", "a3", 1, 0.25, 0.0),
    ]
    assert latest_decisions(logged, 0.4)["decision_id"].to_pylist() == ["r3"]


def test_compare_gates_a_worse_candidate() -> None:
    logged, _ = _bandit_log(np.random.default_rng(9), 3000)
    serving = _policy(LOGGING, TRUE_CTR, "v1")
    better = _policy(TARGET, TRUE_CTR, "v2")
    worse = _policy(np.array([0.6, 0.2, 0.1, 0.05, 0.05]), TRUE_CTR, "v3")
    good = compare(logged, better, serving)
    assert good.passed and good.relative_change > 0.2
    bad = compare(logged, worse, serving, margin=0.05)
    report = bad.to_dict()
    assert not bad.passed and report["passed"] is False and report["relative_change"] < -0.05
    assert report["candidate_version"] == "v3" and report["serving_version"] == "v1"
    assert gate_passes(report, margin=0.5)
    assert bad.on_policy_reward == pytest.approx(float(LOGGING @ TRUE_CTR), abs=0.02)
    assert bad.serving.ips == pytest.approx(bad.on_policy_reward)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: gate_passes({"candidate": {"dr": 1}, "serving": {"dr": 1}}, 1.0), r"margin must be in \[0, 1\)"),
        (lambda: latest_decisions(LOGGED_SCHEMA.empty_table(), 0.0), r"fraction must be in \(0, 1\]"),
        (lambda: SlatePolicy.from_bundle("/nonexistent"), "has no posteriors.parquet"),
    ],
)
def test_invalid_arguments(call: object, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        call()  # type: ignore[operator]
