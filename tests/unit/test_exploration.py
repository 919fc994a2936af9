"""The exploration budget's per-process state: visitor shares (bounded, least recently seen forgotten first) and
the request rate, as the compiled ExplorationLedger keeps them for serve_slate."""

from __future__ import annotations

import math

import pytest

from aura.server._native import ExplorationLedger, exploration_budget


def test_shares_count_each_visitors_explored_decisions() -> None:
    ledger = ExplorationLedger(0.5, 0.3, math.inf)
    assert ledger.share("v1") == 0.0  # a visitor not seen yet
    for explored in (True, False, False, True):
        ledger.record("v1", explored)
    ledger.record("v2", False)
    ledger.record("", True)  # no visitor id: nothing to count
    assert (ledger.share("v1"), ledger.share("v2"), ledger.share(""), len(ledger)) == (0.5, 0.0, 0.0, 2)


def test_the_per_visitor_cap_stops_exploration() -> None:
    ledger = ExplorationLedger(0.5, 0.3, math.inf)
    assert ledger.budget("v1", 10.0) == 0.5
    ledger.record("v1", True)  # share 1.0, past the cap of 0.3
    assert ledger.budget("v1", 10.0) == 0.0
    for _ in range(3):
        ledger.record("v1", False)  # share 0.25
    assert ledger.budget("v1", 10.0) == 0.5
    assert ledger.budget("", 10.0) == 0.5  # an anonymous request has no share


def test_the_budget_shrinks_with_the_last_whole_seconds_rate() -> None:
    ledger = ExplorationLedger(0.4, 1.0, 4.0)
    assert [ledger.budget("v", 100.0 + i / 10) for i in range(8)] == [0.4] * 8  # no completed second yet
    assert ledger.budget("v", 101.5) == pytest.approx(0.4 * 4 / 8)  # second 100 had 8 requests, above 4
    assert ledger.budget("v", 102.0) == 0.4  # second 101 had 1
    assert ledger.budget("v", 104.0) == 0.4  # second 103 had none: a gap resets the rate
    unthrottled = ExplorationLedger(0.4, 1.0, math.inf)
    assert [unthrottled.budget("v", 200.0) for _ in range(50)][-1] == 0.4
    assert unthrottled.budget("v", 201.0) == 0.4


def test_the_least_recently_seen_visitors_are_forgotten_first() -> None:
    ledger = ExplorationLedger(0.5, 1.0, math.inf, capacity=3)
    for visitor in ("a", "b", "c"):
        ledger.record(visitor, True)
    ledger.record("a", False)  # a is now the most recently seen; b the least
    ledger.record("d", True)
    assert len(ledger) == 3
    assert [ledger.share(v) for v in "abcd"] == [0.5, 0.0, 1.0, 1.0]
    for visitor in ("e", "f"):
        ledger.record(visitor, True)
    assert [ledger.share(v) for v in "acdef"] == [0.0, 0.0, 1.0, 1.0, 1.0]
    for round_ in range(1000):  # slots are reused without end
        ledger.record(f"visitor-{round_}", round_ % 2 == 0)
    assert len(ledger) == 3 and ledger.share("visitor-998") == 1.0 and ledger.share("visitor-999") == 0.0


def test_the_rule_matches_the_policy() -> None:
    assert exploration_budget(0.08, 0.15, 500.0, 0.0, 1000.0) == pytest.approx(0.04)
    assert exploration_budget(0.08, 0.15, 500.0, 0.0, 400.0) == 0.08
    assert exploration_budget(0.08, 0.15, 500.0, 0.15, 10.0) == 0.0
    assert exploration_budget(0.08, 0.15, math.inf, 0.1, 1e9) == 0.08


@pytest.mark.parametrize(
    "arguments",
    [(1.5, 0.1, 1.0), (0.1, -0.1, 1.0), (0.1, 0.1, 0.0), (0.1, 0.1, math.nan), (0.1, 0.1, 1.0, 0)],
)
def test_a_ledger_refuses_settings_out_of_range(arguments) -> None:
    with pytest.raises(ValueError):
        ExplorationLedger(*arguments)


def test_visitor_ids_must_be_strings() -> None:
    ledger = ExplorationLedger(0.1, 0.1, 1.0)
    with pytest.raises(TypeError):
        ledger.record(b"v1", True)
    with pytest.raises(TypeError):
        ledger.budget(None, 1.0)
