"""The loader: the cold-start table (custom context keys, malformed rules, older formats) and the posteriors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from aura.bundle.format import COLD_START, COLD_START_CONTEXT, MANIFEST, POSTERIORS, Manifest
from aura.bundle.loader import load_bundle, match_cold_start
from aura.bundle.writer import sha256_file
from aura.errors import BundleError
from tests.bundle_factory import make_tiny_bundle

SEGMENT = "seg_learn_mobile_new"
ANY = ("", "", "", "", "", "")


def _rewrite(bundle_dir: Path, table, format_version: int | None = None, file: str = COLD_START) -> None:
    """Replace one of the bundle's Parquet files and fix the manifest (checksum, rows and optionally the format)."""
    path = bundle_dir / file
    pq.write_table(table, path)
    manifest = Manifest.read(bundle_dir)
    files = {**manifest.files, file: dataclasses.replace(
        manifest.files[file], sha256=sha256_file(path), rows=table.num_rows, bytes=path.stat().st_size
    )}  # fmt: skip
    changed = dataclasses.replace(manifest, files=files, format_version=format_version or manifest.format_version)
    (bundle_dir / MANIFEST).write_text(changed.to_json())


def test_custom_context_keys_round_trip(tmp_path: Path) -> None:
    rules = [
        {"device": "mobile", "segment_id": SEGMENT, "confidence": 0.6},
        {COLD_START_CONTEXT: json.dumps({"plan": "pro"}), "segment_id": SEGMENT, "confidence": 0.7},
        {"country": "US", COLD_START_CONTEXT: json.dumps({"tier": "a", "plan": "pro"}), "segment_id": SEGMENT,
         "confidence": 0.8},
    ]  # fmt: skip
    bundle = load_bundle(make_tiny_bundle(tmp_path, "v1", cold_start=rules))
    assert bundle.manifest.format_version == 2
    assert bundle.cold_start_context_keys == ("plan", "tier")
    assert bundle.cold_start == {
        ("mobile", None, None, None, None, None, None, None): (SEGMENT, 0.6),
        (None, None, None, None, None, None, "pro", None): (SEGMENT, 0.7),
        (None, None, None, "US", None, None, "pro", "a"): (SEGMENT, 0.8),
    }
    assert match_cold_start(bundle, ("", "", "", "US", "", "", "pro", "a")) == (SEGMENT, 0.8)
    assert match_cold_start(bundle, ("", "", "", "US", "", "", "pro", "b")) == (SEGMENT, 0.7)
    assert match_cold_start(bundle, (*ANY, "", "a")) is None


@pytest.mark.parametrize("context_json", ["not json", "[]", '{"plan": 3}', '{"plan": ""}', '{"": "x"}'])
def test_a_malformed_rule_context_is_refused(tmp_path: Path, context_json: str) -> None:
    rules = [{COLD_START_CONTEXT: context_json, "segment_id": SEGMENT, "confidence": 0.7}]
    with pytest.raises(BundleError, match=r"bundle v1: a cold-start rule's context_json .* is not a JSON object"):
        load_bundle(make_tiny_bundle(tmp_path, "v1", cold_start=rules))


def test_a_format_1_bundle_loads_without_custom_keys(tmp_path: Path) -> None:
    bundle_dir = make_tiny_bundle(tmp_path, "v1")
    _rewrite(bundle_dir, pq.read_table(bundle_dir / COLD_START).drop_columns([COLD_START_CONTEXT]), format_version=1)
    bundle = load_bundle(bundle_dir)
    assert (bundle.manifest.format_version, bundle.cold_start_context_keys) == (1, ())
    assert match_cold_start(bundle, ("mobile", *ANY[1:])) == (SEGMENT, 0.6)


def test_schema_and_format_mismatches_are_refused(tmp_path: Path) -> None:
    bundle_dir = make_tiny_bundle(tmp_path, "v1")
    _rewrite(bundle_dir, pq.read_table(bundle_dir / COLD_START).drop_columns([COLD_START_CONTEXT]))
    with pytest.raises(BundleError, match=r"bundle v1: cold_start.parquet has schema .* expected .*context_json"):
        load_bundle(bundle_dir)
    _rewrite(bundle_dir, pq.read_table(bundle_dir / COLD_START), format_version=3)
    with pytest.raises(BundleError, match="format_version 3 is not supported; this build reads formats 1, 2"):
        load_bundle(bundle_dir)


def _two_surfaces(posteriors: pa.Table) -> pa.Table:
    """The tiny bundle's posteriors plus a copy of them for a second surface that sorts before the first."""
    surfaces = pa.array(["article.sidebar"] * posteriors.num_rows, pa.string())
    copy = posteriors.set_column(0, posteriors.schema.field("surface_id"), surfaces)
    return pa.concat_tables([posteriors, copy])


def test_posteriors_load_ordered_by_cell_and_content_row_whatever_the_file_order(tmp_path: Path) -> None:
    bundle_dir = make_tiny_bundle(tmp_path, "v1")
    tiny = pq.read_table(bundle_dir / POSTERIORS)
    # A third surface whose one-item cell ends with the item the next cell (same segment) starts with.
    first_global = tiny.filter(pc.equal(tiny["segment_id"], "seg_global")).sort_by("content_id").slice(0, 1)
    footer = first_global.set_column(0, tiny.schema.field("surface_id"), pa.array(["blog.footer"], pa.string()))
    posteriors = pa.concat_tables([_two_surfaces(tiny), footer])
    propensity = pa.array([None if i % 3 else i / 100 for i in range(posteriors.num_rows)], pa.float32())
    index = posteriors.schema.get_field_index("propensity")
    posteriors = posteriors.set_column(index, posteriors.schema.field(index), propensity)
    shuffled = posteriors.take(np.random.default_rng(7).permutation(posteriors.num_rows))
    _rewrite(bundle_dir, shuffled, file=POSTERIORS)

    bundle = load_bundle(bundle_dir)
    assert bundle.surfaces == ("article.sidebar", "blog.footer", "homepage.hero")
    assert list(bundle.cells) == [
        ("article.sidebar", "seg_global"), ("article.sidebar", "seg_learn_mobile_new"), ("blog.footer", "seg_global"),
        ("homepage.hero", "seg_global"), ("homepage.hero", "seg_learn_mobile_new"),
    ]  # fmt: skip
    assert bundle.cells[("article.sidebar", "seg_global")].start == 0
    assert sum(span.stop - span.start for span in bundle.cells.values()) == posteriors.num_rows
    for (surface, segment), span in bundle.cells.items():
        cell = posteriors.filter(pc.and_(pc.equal(posteriors["surface_id"], surface),
                                         pc.equal(posteriors["segment_id"], segment)))  # fmt: skip
        rows = [bundle.content.index_of[c] for c in cell["content_id"].to_pylist()]
        by_row = np.argsort(rows)
        assert bundle.cell_items[span.start : span.stop].tolist() == sorted(rows)
        assert bundle.alpha[span.start : span.stop].tolist() == cell["alpha"].to_numpy()[by_row].tolist()
        assert bundle.beta[span.start : span.stop].tolist() == cell["beta"].to_numpy()[by_row].tolist()
        expected = np.asarray(cell["propensity"].to_numpy(zero_copy_only=False), dtype=np.float64)[by_row]
        np.testing.assert_array_equal(bundle.propensity[span.start : span.stop], expected)  # None becomes NaN


def _second_surface_without_global_cell(posteriors: pa.Table) -> pa.Table:
    both = _two_surfaces(posteriors)
    global_cell = pc.and_(pc.equal(both["surface_id"], "article.sidebar"), pc.equal(both["segment_id"], "seg_global"))
    return both.filter(pc.invert(global_cell))


def _replace(table: pa.Table, column: str, row: int, value) -> pa.Table:
    index = table.schema.get_field_index(column)
    values = table[column].to_pylist()
    values[row] = value
    return table.set_column(index, table.schema.field(index), pa.array(values, table.schema.field(index).type))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: _replace(t, "segment_id", 4, "seg_nobody"), "posteriors name unknown segment seg_nobody"),
        (lambda t: _replace(t, "content_id", 4, "c999"), "posteriors name unknown content c999"),
        (lambda t: _replace(t, "content_id", 1, t["content_id"][2].as_py()),
         r"cell \('homepage.hero', 'seg_global'\) lists a content item twice"),
        (lambda t: _replace(t, "alpha", 3, 0.0), "posterior alpha and beta must be finite and positive"),
        (lambda t: _replace(t, "beta", 3, float("nan")), "posterior alpha and beta must be finite and positive"),
        (_second_surface_without_global_cell, "surface article.sidebar has no seg_global cell"),
    ],
    ids=["unknown segment", "unknown content", "repeated item", "zero alpha", "NaN beta", "no global cell"],
)  # fmt: skip
def test_bad_posteriors_are_refused(tmp_path: Path, change, message: str) -> None:
    bundle_dir = make_tiny_bundle(tmp_path, "v1")
    _rewrite(bundle_dir, change(pq.read_table(bundle_dir / POSTERIORS)), file=POSTERIORS)
    with pytest.raises(BundleError, match=f"bundle v1: {message}"):
        load_bundle(bundle_dir)
