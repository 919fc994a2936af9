"""The synthetic site: determinism, table sanity, and a ground truth with real signal in it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from aura.batch.build import CONTENT_COLUMNS, EVENT_COLUMNS
from aura.batch.synthetic import (
    CONTENT_TYPES,
    DEFAULT_SURFACES,
    INTENTS,
    URL_PREFIX,
    SyntheticSite,
    generate_site,
    generate_surfaces,
)
from aura.config import load_surfaces
from aura.context import referrer_class, time_of_day

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"


@pytest.fixture(scope="module")
def site() -> SyntheticSite:
    return generate_site(5, n_content=60, n_visitors=400)


def test_same_seed_same_site(site: SyntheticSite) -> None:
    again = generate_site(5, n_content=60, n_visitors=400)
    assert again.content.equals(site.content)
    assert again.visitors.equals(site.visitors)
    assert again.events.equals(site.events)


def test_other_seed_other_site(site: SyntheticSite) -> None:
    other = generate_site(6, n_content=60, n_visitors=400)
    assert not other.events.equals(site.events)
    assert other.content["title"].to_list() != site.content["title"].to_list()


def test_content_table(site: SyntheticSite) -> None:
    content = site.content
    assert content.height == 60
    assert set(CONTENT_COLUMNS) <= set(content.columns)
    assert content["id"].n_unique() == 60 and content["url"].n_unique() == 60
    assert set(content["content_type"]) == set(CONTENT_TYPES)
    for row in content.iter_rows(named=True):
        assert row["url"].startswith(URL_PREFIX[row["content_type"]] + "/")
        assert row["title"] and row["summary"] and len(row["body"].split()) >= 10
        assert 1 <= len(row["topics"]) <= 2 and row["personas"] and row["device_suitability"]
        assert row["published_at"] <= site.now and row["updated_at"] >= row["published_at"]


def test_event_log(site: SyntheticSite) -> None:
    events = site.events
    assert events.columns == list(EVENT_COLUMNS)
    assert set(events["type"]) == {"impression", "click"}
    assert events["event_id"].n_unique() == events.height
    assert events["ts"].is_sorted()
    assert set(events["anon_id"]) <= set(site.visitors["anon_id"])
    assert set(events["surface_id"]) == set(DEFAULT_SURFACES)
    hours = events["ts"].dt.hour().to_list()
    assert events["time_of_day"].to_list() == [time_of_day(h) for h in hours]
    assert {referrer_class(r) for r in events["referrer"].unique()} <= {"direct", "search", "social", "email", "other"}
    per_item = events.group_by("session_id", "surface_id", "content_id").agg(
        (pl.col("type") == "impression").sum().alias("impressions"), (pl.col("type") == "click").sum().alias("clicks")
    )
    assert (per_item["clicks"] <= per_item["impressions"]).all()


def test_events_respect_surface_eligibility(site: SyntheticSite) -> None:
    shown = site.events.join(site.content.select(pl.col("id").alias("content_id"), "content_type"), on="content_id")
    for surface_id, surface in DEFAULT_SURFACES.items():
        types = set(shown.filter(pl.col("surface_id") == surface_id)["content_type"])
        assert types <= set(surface.eligible_content_types)


def test_default_surfaces_match_the_config() -> None:
    configured = load_surfaces(CONFIG_DIR / "surfaces.yaml")
    assert configured == DEFAULT_SURFACES


def test_click_probability_matches_the_vectorized_model(site: SyntheticSite) -> None:
    visitor = site.visitors.row(0, named=True)
    vector = site.click_probabilities(visitor, "homepage.hero")
    for row in (0, 17, 59):
        content_row = site.content.row(row, named=True)
        assert site.click_probability(visitor, content_row, "homepage.hero") == pytest.approx(vector[row])
    assert ((vector > 0) & (vector <= 0.6)).all()


def test_ground_truth_ctr_depends_on_intent(site: SyntheticSite) -> None:
    visitor = {"expertise": "intermediate", "interests": ["ai", "retail"], "device": "desktop"}
    kinds = site.content["content_type"].to_numpy()

    def mean_ctr(intent: str, content_type: str) -> float:
        p = site.click_probabilities({**visitor, "latent_intent": intent}, "product_listing")
        return float(p[kinds == content_type].mean())

    assert mean_ctr("learn", "guide") > 2 * mean_ctr("buy", "guide")
    assert mean_ctr("buy", "product") > 2 * mean_ctr("learn", "product")
    assert mean_ctr("compare", "case_study") > mean_ctr("browse", "case_study")


def test_logged_clicks_carry_the_intent_signal(site: SyntheticSite) -> None:
    logged = site.events.join(site.visitors.select("anon_id", "latent_intent"), on="anon_id").join(
        site.content.select(pl.col("id").alias("content_id"), "content_type"), on="content_id"
    )
    ctr = (
        logged.group_by("latent_intent", "content_type")
        .agg(((pl.col("type") == "click").sum() / (pl.col("type") == "impression").sum()).alias("ctr"))
        .rows_by_key(["latent_intent", "content_type"], unique=True)
    )
    assert ctr[("learn", "guide")][0] > 2 * ctr[("buy", "guide")][0]
    assert ctr[("buy", "promotion")][0] > 2 * ctr[("learn", "promotion")][0]


def test_unsuited_device_lowers_the_probability(site: SyntheticSite) -> None:
    row = site.content.filter(pl.col("device_suitability").list.len() < 3).row(0, named=True)
    unsuited = next(d for d in ("mobile", "desktop", "tablet") if d not in row["device_suitability"])
    suited = row["device_suitability"][0]
    visitor = {"latent_intent": "learn", "expertise": "beginner", "interests": ["ai", "cloud"]}
    p_unsuited = site.click_probability({**visitor, "device": unsuited}, row, "blog.index")
    p_suited = site.click_probability({**visitor, "device": suited}, row, "blog.index")
    assert p_unsuited < 0.5 * p_suited


def test_write_and_read_back(site: SyntheticSite, tmp_path: Path) -> None:
    site.write(tmp_path)
    back = SyntheticSite.read(tmp_path)
    assert back.events.equals(site.events) and back.content.equals(site.content)
    assert (back.seed, back.now) == (site.seed, site.now)
    visitor = site.visitors.row(3, named=True)
    np.testing.assert_array_equal(
        back.click_probabilities(visitor, "promo.banner"), site.click_probabilities(visitor, "promo.banner")
    )


def test_visitors_have_every_intent(site: SyntheticSite) -> None:
    assert set(site.visitors["latent_intent"]) == set(INTENTS)


def test_generated_surfaces_are_seeded_and_valid() -> None:
    surfaces = generate_surfaces(12, seed=3)
    assert surfaces == generate_surfaces(12, seed=3)
    assert list(surfaces) == [f"surface_{i:03d}" for i in range(12)]
    for surface in surfaces.values():
        assert 1 <= len(surface.eligible_content_types) <= 3
        assert set(surface.eligible_content_types) <= set(CONTENT_TYPES)
        assert surface.max_items in (1, 5, 10, 20)


def test_bench_surfaces_get_events() -> None:
    surfaces = generate_surfaces(4, seed=1)
    bench = generate_site(2, n_content=40, n_visitors=300, surfaces=surfaces)
    assert set(bench.events["surface_id"]) <= set(surfaces)
    assert bench.events["surface_id"].n_unique() >= 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_content": 5}, "n_content >= 6"),
        ({"n_visitors": 0}, "n_visitors >= 1"),
        ({"days": 0}, "days >= 1"),
    ],
)
def test_invalid_sizes(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        generate_site(1, **kwargs)
