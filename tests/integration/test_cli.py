"""The `aura` console script end to end, in subprocesses: demo data, builds, the store commands, errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from aura.batch import cli
from aura.batch.cli import BATCH_ENV_NAMES, main
from aura.bundle.loader import load_bundle
from aura.bundle.store import open_store
from aura.config import ENV_NAMES, load_policies, load_surfaces
from aura.eventlog import SCHEMAS

pytest_plugins = ["tests.moto_fixture"]

AURA = Path(sys.executable).with_name("aura")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
SMALL = ["--content", "60", "--visitors", "400"]


# Every variable the CLI reads, left out of the environment the tests inherit.
CLI_ENV = frozenset(ENV_NAMES.values()) | frozenset(BATCH_ENV_NAMES)


def aura(*args: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the console script with the test's environment minus the CLI's variables, plus `env`."""
    environ = {k: v for k, v in os.environ.items() if k not in CLI_ENV} | (env or {})
    return subprocess.run([str(AURA), *map(str, args)], capture_output=True, text=True, timeout=120, env=environ)


def ok(*args: str | Path, env: dict[str, str] | None = None) -> str:
    result = aura(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def config_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The repo's config with the k-anonymity threshold lowered to 10 for a 400-visitor site."""
    config = tmp_path_factory.mktemp("config")
    shutil.copy(CONFIG_DIR / "surfaces.yaml", config / "surfaces.yaml")
    policies = (CONFIG_DIR / "policies.yaml").read_text()
    assert "k_anonymity_threshold: 50" in policies
    (config / "policies.yaml").write_text(policies.replace("k_anonymity_threshold: 50", "k_anonymity_threshold: 10"))
    return config


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    out = ok("demo-data", "--out", site, "--seed", "4", *SMALL, "--as-of", "2025-10-01")
    assert f"wrote site to {site}: 60 content items, 400 visitors" in out
    return site


@pytest.fixture(scope="module")
def first_bundle(site_dir: Path, config_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle built from the demo site without a store."""
    out = tmp_path_factory.mktemp("bundles")
    stdout = ok("build", "--site", site_dir, "--config-dir", config_dir, "--out", out)
    assert "content items" in stdout and "segment coverage" in stdout and "pushed" not in stdout
    (bundle_dir,) = out.iterdir()
    return bundle_dir


def test_push_build_promote_list_rollback(first_bundle: Path, site_dir: Path, config_dir: Path, tmp_path: Path) -> None:
    store, out, v1 = tmp_path / "store", tmp_path / "bundles", first_bundle.name
    assert ok("push", first_bundle, "--store", store).strip() == f"pushed {v1} to {store}"
    ok("promote", v1, "--store", store)
    bundle = load_bundle(first_bundle)
    assert bundle.manifest.stats["k_anonymity_threshold"] == 10 and len(bundle.content) == 60

    second = ok("build", "--site", site_dir, "--config-dir", config_dir, "--out", out, "--store", store, "--promote")
    (v2,) = (p.name for p in out.iterdir())
    assert f"parent version: {v1}" in second and f"pushed {v2}" in second and f"promoted {v2}" in second

    listing = ok("list", "--store", store).splitlines()
    assert listing[0].split() == ["VERSION", "CREATED_AT", "ITEMS", "SEGMENTS", "PARENT"]
    rows = {line.split()[-5]: line for line in listing[1:]}
    assert rows[v2].startswith("*") and not rows[v1].startswith("*")
    assert rows[v2].split()[-1] == v1 and rows[v1].split()[-3] == "60"

    assert ok("rollback", "--store", store).strip() == f"rolled back {store} to {v1}"
    assert open_store(str(store)).current() == v1


def test_push_to_s3(first_bundle: Path, moto_endpoint: str, s3_bucket: str) -> None:
    url, endpoint = f"s3://{s3_bucket}/prod", ["--s3-endpoint-url", moto_endpoint]
    assert f"pushed {first_bundle.name} to" in ok("push", first_bundle, "--store", url, *endpoint)
    ok("promote", first_bundle.name, "--store", url, *endpoint)
    assert f"*  {first_bundle.name}" in ok("list", "--store", url, *endpoint)


def test_demo_bundle(config_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "new" / "store"
    out = ok("demo-bundle", "--store", store, "--config-dir", config_dir, *SMALL, "--seed", "2")
    version = open_store(str(store)).current()
    assert version is not None and f"promoted {version}" in out
    assert open_store(str(store)).read_manifest(version).stats["visitors"] == 400


def test_bench_build_writes_a_matching_config(config_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench"
    stdout = ok(
        "build",
        "--bench",
        "--config-dir",
        config_dir,
        "--out",
        out,
        "--surfaces",
        "6",
        "--segments",
        "8",
        "--k-anonymity",
        "2",
        *SMALL,
    )
    (bundle_dir,) = (p for p in out.iterdir() if p.name != "config")
    surfaces = load_surfaces(out / "config" / "surfaces.yaml")
    assert list(surfaces) == [f"surface_{i:03d}" for i in range(6)]
    assert load_policies(out / "config" / "policies.yaml").segmentation.fairness.k_anonymity_threshold == 2
    bundle = load_bundle(bundle_dir)
    assert bundle.surfaces == tuple(surfaces) and len(bundle.segments) == 8
    assert f"AURA_CONFIG_DIR={out / 'config'}" in stdout


def test_console_script_reports_user_errors_in_one_line(tmp_path: Path) -> None:
    result = aura("promote", "v-missing", "--store", tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"aura: error: bundle version v-missing is not in the store {tmp_path}.\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "--site", "{tmp}/nowhere", "--config-dir", "{config}", "--out", "{tmp}/out"], "does not exist"),
        (["build", "--site", "{tmp}", "--config-dir", "{tmp}/nope", "--out", "{tmp}/out"], "config directory"),
        (["build", "--site", "{tmp}", "--config-dir", "{config}", "--out", "{tmp}/out"], "has no content.parquet"),
        (["rollback", "--store", "{tmp}"], "no earlier promoted version"),
        (["push", "{tmp}/nowhere", "--store", "{tmp}/store"], "bundle directory"),
        (["push", "{tmp}", "--store", "{tmp}/store"], "manifest.json is missing"),
        (["list", "--store", "{tmp}/missing"], "unreachable"),
        (["list", "--store", ""], "no bundle store given"),
    ],
)
def test_user_errors_exit_2_with_one_line(
    args: list[str], message: str, config_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([a.format(tmp=tmp_path, config=config_dir) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aura: error: ") and message in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["build", "--out", "out"], "build needs --site DIR or --bench"),
        (["build", "--bench", "--out", "out", "--promote"], "--promote needs --store"),
        (["demo-data", "--out", "out", "--visitors", "0"], "must be at least 1"),
        (["demo-data", "--out", "out", "--as-of", "yesterday"], "expected a date"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(args)
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def _with_ope_report(bundle_dir: Path, dest: Path, version: str, candidate_dr: float) -> Path:
    """A copy of a bundle under another version whose manifest carries an off-policy report."""
    copy = shutil.copytree(bundle_dir, dest / version)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["bundle_version"] = version
    manifest["reports"]["ope"] = {
        "candidate_version": version,
        "serving_version": bundle_dir.name,
        "candidate": {"dr": candidate_dr},
        "serving": {"dr": 0.1},
        "relative_change": candidate_dr / 0.1 - 1,
    }
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_promotion_is_gated_by_the_off_policy_report(first_bundle: Path, tmp_path: Path) -> None:
    store = tmp_path / "store"
    ok("push", first_bundle, "--store", store)
    ok("promote", first_bundle.name, "--store", store)
    assert "has no off-policy report" in ok("promote", first_bundle.name, "--store", store)
    worse = _with_ope_report(first_bundle, tmp_path, "v-worse", 0.09)
    ok("push", worse, "--store", store)

    refused = aura("promote", "v-worse", "--store", store)
    assert refused.returncode == 2
    assert refused.stderr == (
        f"aura: error: not promoting v-worse: off-policy DR 0.0900 vs 0.1000 per decision for {first_bundle.name} "
        "(-10.0%, margin 5.0%); pass --force to promote anyway.\n"
    )
    assert open_store(str(store)).current() == first_bundle.name
    assert "promoted v-worse" in ok("promote", "v-worse", "--store", store, "--ope-margin", "0.2")
    ok("rollback", "--store", store)
    forced = ok("promote", "v-worse", "--store", store, "--force")
    assert "forced past the gate" in forced and open_store(str(store)).current() == "v-worse"


def test_build_evaluates_off_policy_on_decision_logs(
    first_bundle: Path, site_dir: Path, config_dir: Path, tmp_path: Path
) -> None:
    store, out, logs = tmp_path / "store", tmp_path / "bundles", tmp_path / "logs"
    ok("push", first_bundle, "--store", store)
    ok("promote", first_bundle.name, "--store", store)
    cells = pq.read_table(first_bundle / "posteriors.parquet").to_pylist()[:30]
    now = datetime(2025, 10, 1, tzinfo=UTC)
    decisions = [
        {
            "event_id": f"r{i}",
            "ts": now + timedelta(seconds=i),
            "bundle_version": first_bundle.name,
            "surface_id": cell["surface_id"],
            "segment_id": cell["segment_id"],
            "items": [{"content_id": cell["content_id"], "position": 0, "propensity": None}],
        }
        for i, cell in enumerate(cells)
    ]
    feedback = [
        {
            "event_id": f"f{i}",
            "ts": now,
            "request_id": f"r{i}",
            "item_id": cells[i]["content_id"],
            "reward_type": "click",
        }
        | {"reward_value": 1.0}
        for i in range(0, 30, 4)
    ]
    for stream, rows in (("decisions", decisions), ("feedback", feedback)):
        (logs / stream / "date=2025-10-01" / "hour=00").mkdir(parents=True)
        table = pa.Table.from_pylist(rows, schema=SCHEMAS[stream])
        pq.write_table(table, logs / stream / "date=2025-10-01" / "hour=00" / "seg.parquet")
    args = [
        "--config-dir",
        config_dir,
        "--out",
        out,
        "--store",
        store,
        "--decision-logs",
        logs,
        "--heldout-fraction",
        "1",
    ]
    stdout = ok("build", "--site", site_dir, *args, "--ope-margin", "0.99", "--promote")
    (version,) = (p.name for p in out.iterdir())
    report = open_store(str(store)).read_manifest(version).reports["ope"]
    assert report["serving_version"] == first_bundle.name and report["candidate"]["decisions"] == 30
    assert report["reconstructed_propensities"] == 30
    assert f"for {first_bundle.name}" in stdout and f"promoted {version}" in stdout
    assert open_store(str(store)).read_manifest(version).reports["posteriors"]["incremental_from"] == first_bundle.name


def test_cms_sync_writes_the_site_content(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    record = {"uid": "c1", "title": "One", "url": "/1", "type": "guide", "publishedAt": "2025-09-01T00:00:00Z"}
    export = tmp_path / "export.json"
    export.write_text(json.dumps([record, record | {"uid": "c2", "type": "product", "headline": "Two"}]))
    assert (
        main(["cms-sync", "--source", str(export), "--out", str(tmp_path / "site"), "--field", "headline=title"]) == 0
    )
    assert (
        capsys.readouterr().out
        == f"wrote 2 content items to {tmp_path / 'site' / 'content.parquet'} (guide 1, product 1)\n"
    )
    content = pq.read_table(tmp_path / "site" / "content.parquet").to_pydict()
    assert content["id"] == ["c1", "c2"] and content["title"] == ["One", "Two"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cms-sync", "--out", "{tmp}/site"], "no CMS source given"),
        (["cms-sync", "--source", "{tmp}/x.json", "--out", "{tmp}/site", "--field", "title"], "--field takes"),
        (["cms-sync", "--source", "{tmp}/x.json", "--out", "{tmp}/site"], "does not exist"),
    ],
)
def test_cms_sync_errors(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CMS_API_URL", raising=False)
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    assert message in capsys.readouterr().err


def test_nightly_pipeline_builds_from_the_cms_and_promotes(
    first_bundle: Path, site_dir: Path, config_dir: Path, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    ok("push", first_bundle, "--store", store)
    ok("promote", first_bundle.name, "--store", store)
    export = tmp_path / "cms.jsonl"
    content = pq.read_table(site_dir / "content.parquet").drop_columns(["latent_appeal"])
    export.write_text("\n".join(json.dumps(row, default=str) for row in content.to_pylist()))
    out = ok(
        "pipeline",
        "--store",
        store,
        "--cms-source",
        export,
        "--work-dir",
        tmp_path / "work",
        "--config-dir",
        config_dir,
    )
    assert "wrote 60 content items" in out
    current = open_store(str(store)).current()
    assert current != first_bundle.name
    assert open_store(str(store)).read_manifest(current).parent_version == first_bundle.name
    missing = aura("pipeline", "--store", store, "--work-dir", tmp_path / "w2")
    assert missing.returncode == 2 and "no CMS source given: pass --cms-source" in missing.stderr
    assert not (tmp_path / "w2").exists(), "the pipeline stops before it syncs anything"


def test_retention_and_erasure_commands(tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    assert "deleted 0 log segment(s)" in ok("retention", "--store", store, "--event-days", "30")
    assert "erased visitor" in ok("erase-user", "anon_abc123", "--store", store)
    assert "no bundle store given" in aura("erase-user", "anon_abc123").stderr


def test_build_applies_the_policy_overrides_of_the_environment(
    first_bundle: Path, site_dir: Path, config_dir: Path, tmp_path: Path
) -> None:
    """SEGMENT_CONFIDENCE_THRESHOLD and FRESHNESS_HALF_LIFE override policies.yaml in the batch as on the edge."""
    env = {"SEGMENT_CONFIDENCE_THRESHOLD": "0.95", "FRESHNESS_HALF_LIFE": "1"}
    result = aura("build", "--site", site_dir, "--config-dir", config_dir, "--out", tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert "policies.yaml overridden by the environment: FRESHNESS_HALF_LIFE, SEGMENT_CONFIDENCE_THRESHOLD" in (
        result.stderr
    )
    (bundle_dir,) = tmp_path.iterdir()
    bundle, default = load_bundle(bundle_dir).manifest, load_bundle(first_bundle).manifest

    confidence = pq.read_table(bundle_dir / "user_segments.parquet")["confidence"].to_numpy()
    assert load_policies(config_dir / "policies.yaml").segmentation.confidence.assignment_threshold == 0.7
    assert bundle.stats["confident_assignments"] == round(float(np.mean(confidence >= np.float32(0.95))), 4)
    assert bundle.stats["confident_assignments"] < default.stats["confident_assignments"]

    content = pq.read_table(bundle_dir / "content.parquet", columns=["published_at", "freshness_score"])
    now = datetime.fromisoformat(bundle.reports["now"])
    age_days = np.array([max((now - t).total_seconds() / 86400, 0.0) for t in content["published_at"].to_pylist()])
    np.testing.assert_allclose(content["freshness_score"].to_numpy(), 0.5**age_days, rtol=1e-5, atol=1e-30)


def test_an_invalid_policy_override_fails_the_build_in_one_line(
    site_dir: Path, config_dir: Path, tmp_path: Path
) -> None:
    env = {"SEGMENT_CONFIDENCE_THRESHOLD": "high"}
    result = aura("build", "--site", site_dir, "--config-dir", config_dir, "--out", tmp_path, env=env)
    assert result.returncode == 2 and not list(tmp_path.iterdir())
    assert result.stderr.startswith("aura: error: ") and "SEGMENT_CONFIDENCE_THRESHOLD" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        (
            {"EVENT_RETENTION_DAYS": "395d"},
            ["retention", "--store", "{tmp}"],
            "EVENT_RETENTION_DAYS must be a whole number of at least 1, got '395d'.",
        ),
        ({"EVENT_RETENTION_DAYS": "0"}, ["retention", "--store", "{tmp}"], "EVENT_RETENTION_DAYS must be at least 1"),
        (
            {"FEATURE_RETENTION_DAYS": "-5"},
            ["retention", "--store", "{tmp}"],
            "FEATURE_RETENTION_DAYS must be at least 1, got -5.",
        ),
        (
            {"FEATURE_RETENTION_DAYS": "10000000"},
            ["retention", "--store", "{tmp}"],
            "FEATURE_RETENTION_DAYS must be at most 36500 days",
        ),
        (
            {"MODEL_RETENTION_VERSIONS": "five"},
            ["retention", "--store", "{tmp}"],
            "MODEL_RETENTION_VERSIONS must be a whole number",
        ),
        (
            {"AURA_DUCKDB_THREADS": "0"},
            ["build", "--site", "{tmp}", "--out", "{tmp}/out"],
            "AURA_DUCKDB_THREADS must be at least 1, got 0.",
        ),
        (
            {"AURA_DUCKDB_MEMORY_LIMIT": "lots"},
            ["demo-bundle", "--store", "{tmp}/store"],
            "AURA_DUCKDB_MEMORY_LIMIT must be a size like 2GB or 512MiB, got 'lots'.",
        ),
        (
            {"AURA_DUCKDB_THREADS": "2.5"},
            ["pipeline", "--store", "{tmp}", "--cms-source", "{tmp}/cms.json", "--work-dir", "{tmp}/work"],
            "AURA_DUCKDB_THREADS must be a whole number of at least 1, got '2.5'.",
        ),
    ],
)
def test_bad_environment_values_exit_2_in_one_line(
    env: dict[str, str], args: list[str], message: str, tmp_path: Path
) -> None:
    result = aura(*(a.format(tmp=tmp_path) for a in args), env=env)
    assert result.returncode == 2
    assert result.stderr.startswith("aura: error: ") and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing ran"


def test_a_misspelt_aura_variable_is_reported(tmp_path: Path) -> None:
    result = aura("list", "--store", tmp_path, env={"AURA_BUNDLE_STOR": "s3://typo/x"})
    assert result.returncode == 0
    assert result.stderr == (
        "aura: warning: environment: AURA_BUNDLE_STOR is not an AURA setting and is ignored; "
        "did you mean AURA_BUNDLE_STORE?\n"
    )


def test_a_bad_variable_fails_only_the_commands_that_read_it(tmp_path: Path) -> None:
    env = {"EVENT_RETENTION_DAYS": "395d", "AURA_DUCKDB_THREADS": "0"}
    assert ok("list", "--store", tmp_path, env=env) == f"no bundles in {tmp_path}\n"
    assert "deleted 0 log segment(s)" in ok("retention", "--store", tmp_path, "--event-days", "30", env=env)


def test_retention_periods_come_from_the_environment(tmp_path: Path) -> None:
    store = tmp_path / "store"
    day = (datetime.now(UTC) - timedelta(days=60)).date().isoformat()
    segment = store / "logs" / "decisions" / f"date={day}" / "hour=00" / "seg.parquet"
    segment.parent.mkdir(parents=True)
    segment.write_bytes(b"x")
    assert "deleted 0 log segment(s)" in ok("retention", "--store", store)
    assert segment.exists()
    assert "deleted 1 log segment(s)" in ok("retention", "--store", store, env={"EVENT_RETENTION_DAYS": "30"})
    assert not segment.exists()


def test_every_environment_variable_the_cli_reads_is_declared() -> None:
    """The manifests' tests (tests/unit/test_infra.py) accept aura.config.ENV_NAMES and BATCH_ENV_NAMES."""
    source = (Path(__file__).resolve().parents[2] / "batch" / "cli.py").read_text()
    read = set(re.findall(r'os\.environ(?:\.get\(|\[)"(\w+)"', source)) | {
        name for name, _, _ in cli._ENV_DEFAULTS.values()
    }
    assert read and read <= CLI_ENV
    assert {"CMS_API_URL", "CMS_API_KEY", "AURA_DUCKDB_THREADS"} <= read
