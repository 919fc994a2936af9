"""The `aura` console script end to end, in subprocesses: demo data, builds, the store commands, errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from aura.batch.cli import main
from aura.bundle.loader import load_bundle
from aura.bundle.store import open_store
from aura.config import load_policies, load_surfaces

pytest_plugins = ["tests.moto_fixture"]

AURA = Path(sys.executable).with_name("aura")
CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
SMALL = ["--content", "60", "--visitors", "400"]


def aura(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("AURA_BUNDLE_STORE", "AURA_CONFIG_DIR", "AURA_S3_ENDPOINT_URL")
    }
    return subprocess.run([str(AURA), *map(str, args)], capture_output=True, text=True, timeout=120, env=env)


def ok(*args: str | Path) -> str:
    result = aura(*args)
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
