"""The loader's cold-start table: custom context keys round-trip, malformed rules and older formats."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from aura.bundle.format import COLD_START, COLD_START_CONTEXT, MANIFEST, Manifest
from aura.bundle.loader import load_bundle, match_cold_start
from aura.bundle.writer import sha256_file
from aura.errors import BundleError
from tests.bundle_factory import make_tiny_bundle

SEGMENT = "seg_learn_mobile_new"
ANY = ("", "", "", "", "", "")


def _rewrite(bundle_dir: Path, table, format_version: int | None = None) -> None:
    """Replace cold_start.parquet and fix the manifest (checksum, rows and optionally the format)."""
    path = bundle_dir / COLD_START
    pq.write_table(table, path)
    manifest = Manifest.read(bundle_dir)
    files = {**manifest.files, COLD_START: dataclasses.replace(
        manifest.files[COLD_START], sha256=sha256_file(path), rows=table.num_rows, bytes=path.stat().st_size
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
