"""The compiled slate draw (aura.server._native.draw_slate) on its own: distribution, order, diversity, input checks;
and add_at, which counts impressions."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from aura.server._native import add_at, draw_slate


def pool(alphas, betas, *, clusters=None, similar: dict[int, list[int]] | None = None, propensity=None):
    """The array arguments of draw_slate for a pool whose item i has posterior row i and content row i."""
    n = len(alphas)
    params = np.array([*alphas, *betas], dtype=np.float64)
    param_rows = np.arange(2 * n, dtype=np.int64)
    neighbours = [sorted((similar or {}).get(i, [])) for i in range(n)]
    offsets = np.cumsum([0] + [len(rows) for rows in neighbours]).astype(np.int64)
    flat = np.array([r for rows in neighbours for r in rows], dtype=np.int64)
    cluster_ids = np.array(clusters if clusters is not None else range(n), dtype=np.int64)
    estimates = np.array(propensity if propensity is not None else [np.nan] * n, dtype=np.float64)
    return params, param_rows, np.ones(n), estimates, cluster_ids, np.arange(n, dtype=np.int64), offsets, flat


def draw(arrays, *, seed=1, limit=3, top_n=0, max_per_cluster=1, rate=0.0, scale=1.0, propensities=False):
    """(slate, scores, samples, explored slot, demoted) of one draw; with `propensities`, the slate's propensities."""
    slate, posterior_rows, scores, samples, alphas, betas, _, slot_propensities, explored, demoted = draw_slate(
        *arrays, scale, seed, limit, top_n, max_per_cluster, 8, rate, True
    )
    assert posterior_rows == slate
    assert (alphas, betas) == ([arrays[0][r] for r in slate], [arrays[0][len(arrays[2]) + r] for r in slate])
    if propensities:
        return slot_propensities
    return slate, scores, samples, explored, demoted


@pytest.mark.parametrize(("a", "b", "scale"), [(1.0, 1.0, 1.0), (0.3, 2.0, 1.0), (5.0, 50.0, 0.25), (0.5, 0.5, 1.0)])
def test_draws_follow_the_sharpened_beta(a: float, b: float, scale: float) -> None:
    n = 2000
    arrays = pool([a] * n, [b] * n)
    samples = np.concatenate([draw(arrays, seed=seed, limit=n, scale=scale)[2] for seed in range(10)])
    reference = np.random.default_rng(0).beta(a / scale, b / scale, size=samples.size)
    assert samples.mean() == pytest.approx(reference.mean(), abs=0.01)
    assert samples.std() == pytest.approx(reference.std(), rel=0.05)
    for q in (0.1, 0.5, 0.9):
        assert np.quantile(samples, q) == pytest.approx(np.quantile(reference, q), abs=0.015)


def test_the_squeezes_never_change_a_draw() -> None:
    """A logged seed replays the same slate on later code: these 4,000 Gamma draws, at shapes from 1 to 20,000,
    are those of the code before the second squeeze (commit 3717319), which ran the exact test whenever the first
    squeeze failed. A second squeeze two thirds as tight as it is (-0.5 d t^4 / m^4) changes them."""
    shapes = np.geomspace(1.0, 20000.0, 40)
    arrays = pool(shapes, shapes[::-1])
    samples = np.array([draw(arrays, seed=seed, limit=40)[2] for seed in range(50)])
    assert hashlib.sha256(samples.tobytes()).hexdigest() == (
        "2805a5e4bab60fb4b5a942207b3a2e3565c06b5080fab021521337e097001b3b"
    )


def test_the_slate_is_the_best_scores_in_order_and_replays_from_its_seed() -> None:
    arrays = pool([900.0, 1.0, 500.0, 700.0, 2.0], [100.0, 999.0, 500.0, 300.0, 998.0])
    slate, scores, _, explored, demoted = draw(arrays, limit=3)
    assert slate == [0, 3, 2]
    assert scores == sorted(scores, reverse=True)
    assert (explored, demoted) == (-1, [])
    assert draw(arrays, seed=99) == draw(arrays, seed=99)


def test_diversity_defers_a_full_cluster_and_too_similar_items() -> None:
    alphas, betas = [900.0, 800.0, 700.0, 600.0], [100.0, 200.0, 300.0, 400.0]
    slate, _, _, _, demoted = draw(pool(alphas, betas, clusters=[0, 0, 1, 2]), limit=2, top_n=2)
    assert (slate, demoted) == ([0, 2], [1])
    slate, _, _, _, _ = draw(pool(alphas, betas, similar={0: [2], 2: [0]}), limit=2, top_n=2)
    assert slate == [0, 1]
    slate, _, _, _, _ = draw(pool(alphas, betas, similar={0: [1], 1: [0]}), limit=3, top_n=2)
    assert slate == [0, 2, 1]


def diverse_slate(order, clusters, similar, limit, top_n, max_per_cluster, scan_per_slot=8):
    """The documented diversity pass over a best-first order: (slate, demoted)."""
    window = order[: limit + scan_per_slot * top_n]
    slate, deferred, scanned = [], [], 0
    while scanned < len(window) and len(slate) < top_n:
        item = window[scanned]
        crowded = sum(clusters[other] == clusters[item] for other in slate) >= max_per_cluster
        if crowded or any(other in similar.get(item, ()) for other in slate):
            deferred.append(item)
        else:
            slate.append(item)
        scanned += 1
    while len(slate) < limit and deferred:
        slate.append(deferred.pop(0))
    slate += window[scanned : scanned + limit - len(slate)]
    return slate, deferred


def test_diversity_matches_the_documented_pass_on_random_pools() -> None:
    rng = np.random.default_rng(5)
    for trial in range(300):
        n = int(rng.integers(1, 60))
        clusters = rng.integers(0, int(rng.integers(1, 6)), n).tolist()
        similar = {i: set(rng.choice(n, size=int(rng.integers(0, 4))).tolist()) - {i} for i in range(n)}
        similar = {i: sorted(rows | {j for j in range(n) if i in similar[j]}) for i, rows in similar.items()}
        arrays = pool(
            rng.uniform(1, 50, n).tolist(), rng.uniform(1, 50, n).tolist(), clusters=clusters, similar=similar
        )
        order = draw(arrays, seed=trial, limit=n)[0]
        limit = int(rng.integers(1, n + 1))
        top_n = int(rng.integers(0, limit + 1))
        max_per_cluster = int(rng.integers(1, 3))
        slate, _, _, _, demoted = draw(arrays, seed=trial, limit=limit, top_n=top_n, max_per_cluster=max_per_cluster)
        assert (slate, demoted) == diverse_slate(order, clusters, similar, limit, top_n, max_per_cluster)


@pytest.mark.parametrize("rate", [0.0, 1.0])
def test_without_detail_the_slate_is_the_same_and_the_explaining_values_are_left_out(rate: float) -> None:
    arrays = pool([900.0, 800.0, 700.0, 1.0, 1.0], [100.0, 200.0, 300.0, 999.0, 999.0], clusters=[0, 0, 1, 2, 3])
    detailed = draw_slate(*arrays, 1.0, 7, 2, 2, 1, 8, rate, True)
    plain = draw_slate(*arrays, 1.0, 7, 2, 2, 1, 8, rate, False)
    assert len(detailed[3]) == 2 and detailed[9] == [1] and (detailed[8] >= 0) == (rate == 1.0)
    assert plain[:3] + plain[7:9] == detailed[:3] + detailed[7:9]
    assert plain[3:7] + plain[9:] == (None,) * 5


def test_exploration_gives_one_slot_to_an_item_outside_the_sampled_slate() -> None:
    arrays = pool([900.0, 800.0, 1.0, 1.0], [100.0, 200.0, 999.0, 999.0])
    slate, _, _, explored, _ = draw(arrays, limit=2, rate=1.0)
    assert explored in (0, 1)
    assert slate[explored] in (2, 3)
    assert slate[1 - explored] == [0, 1][1 - explored]


def test_propensities_mix_the_sampling_estimate_with_the_exploration_budget() -> None:
    alphas, betas = [900.0, 800.0, 1.0, 1.0], [100.0, 200.0, 999.0, 999.0]
    assert draw(pool(alphas, betas), limit=2, propensities=True) == [0.5, 0.5]  # unknown: slate / eligible
    known = pool(alphas, betas, propensity=[0.9, 0.6, 0.1, 0.1])
    # Exploration budget 0.1 over a slate of 2; 4 - 2 + 1 = 3 items sampling left out.
    expected = [p * (1 - 0.1 / 2) + 0.1 * (1 - p) / 3 for p in (0.9, 0.6)]
    assert draw(known, limit=2, rate=0.1, seed=3, propensities=True) == pytest.approx(expected)


def test_bad_arguments_are_refused() -> None:
    params, rows, freshness, estimates, clusters, content_rows, offsets, flat = pool([1.0, 2.0], [1.0, 2.0])
    with pytest.raises(TypeError, match="float64"):
        draw((params.astype(np.float32), rows, freshness, estimates, clusters, content_rows, offsets, flat))
    with pytest.raises(IndexError, match="out of range"):
        draw((params, rows + 3, freshness, estimates, clusters, content_rows, offsets, flat))
    with pytest.raises(ValueError, match="2n rows"):
        draw((params, rows[:3], freshness, estimates, clusters, content_rows, offsets, flat))
    with pytest.raises(ValueError, match="invalid slate parameters"):
        draw((params, rows, freshness, estimates, clusters, content_rows, offsets, flat), scale=0.0)


def test_add_at_adds_increments_at_listed_rows_in_place() -> None:
    values = np.zeros(5)
    add_at(values, [3, 0, 3], np.array([1.0, 2.0, 4.0, 100.0]))
    assert values.tolist() == [2.0, 0.0, 0.0, 5.0, 0.0]
    add_at(values, [], np.array([]))
    assert values.tolist() == [2.0, 0.0, 0.0, 5.0, 0.0]


def test_add_at_refuses_bad_arguments_and_leaves_values_unchanged() -> None:
    values = np.zeros(3)
    with pytest.raises(IndexError, match="row 3 is out of range"):
        add_at(values, [0, 3], np.ones(2))
    with pytest.raises(IndexError, match="row -1 is out of range"):
        add_at(values, [-1], np.ones(1))
    with pytest.raises(ValueError, match="shorter than rows"):
        add_at(values, [0, 1], np.ones(1))
    with pytest.raises(TypeError, match="list of ints"):
        add_at(values, np.array([0]), np.ones(1))
    with pytest.raises(TypeError, match="float64"):
        add_at(values.astype(np.float32), [0], np.ones(1))
    with pytest.raises(ValueError, match="read-only"):
        add_at(np.frombuffer(bytes(24)), [0], np.ones(1))
    assert values.tolist() == [0.0, 0.0, 0.0]


def test_exploration_keeps_the_diversity_of_the_top_slots() -> None:
    # Clusters 0, 1 and 2 each hold several items; item 9 is too similar to item 0.
    clusters = [0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 4]
    arrays = pool([900.0, 800.0, 700.0] + [1.0] * 8, [100.0, 200.0, 300.0] + [999.0] * 8, clusters=clusters,
                  similar={9: [0], 0: [9]})  # fmt: skip
    explored_items = set()
    for seed in range(300):
        slate, _, _, explored, _ = draw(arrays, seed=seed, limit=3, top_n=3, max_per_cluster=1, rate=1.0)
        assert explored >= 0
        assert len({clusters[item] for item in slate}) == 3
        assert not ({0, 9} <= set(slate))
        explored_items.add(slate[explored])
    # The cluster of the replaced item is free again, so it may come from any cluster; 9 only replaces item 0.
    assert explored_items <= set(range(3, 11))
    assert {3, 4, 5, 10} <= explored_items


def test_no_exploration_when_no_item_keeps_the_top_slots_diverse() -> None:
    arrays = pool([900.0, 800.0, 1.0, 1.0], [100.0, 200.0, 999.0, 999.0], clusters=[0, 1, 0, 1])
    for seed in range(50):
        slate, _, _, explored, _ = draw(arrays, seed=seed, limit=2, top_n=2, max_per_cluster=1, rate=1.0)
        assert explored in (-1, 0, 1)
        assert sorted(clusters := [[0, 1, 0, 1][item] for item in slate]) == [0, 1], clusters


def test_exploration_below_the_top_slots_is_free_of_the_diversity_rule() -> None:
    # The one item left out shares cluster 1 with the item in slot 1: it may replace that item or take slot 2,
    # which lies below the top 2, but not slot 0.
    arrays = pool([900.0, 800.0, 700.0, 1.0], [100.0, 200.0, 300.0, 999.0], clusters=[0, 1, 2, 1])
    slots = set()
    for seed in range(200):
        slate, _, _, explored, _ = draw(arrays, seed=seed, limit=3, top_n=2, max_per_cluster=1, rate=1.0)
        if explored >= 0:
            assert slate[explored] == 3
        slots.add(explored)
    assert slots == {-1, 1, 2}
