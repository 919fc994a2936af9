"""The bundle store on S3, against a real moto server on loopback."""

from __future__ import annotations

import socket
from pathlib import Path

import boto3
import pytest

from aura.bundle.format import MANIFEST, Manifest
from aura.bundle.loader import verify_bundle
from aura.bundle.store import S3BundleStore, open_store
from aura.errors import BundleError, NotFound
from tests.bundle_factory import corrupt_file, make_tiny_bundles

pytest_plugins = ["tests.moto_fixture"]

VERSIONS = ("v001", "v002", "v003")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundles(tmp_path_factory.mktemp("built"), VERSIONS)


@pytest.fixture
def store(s3_bucket: str, moto_endpoint: str) -> S3BundleStore:
    opened = open_store(f"s3://{s3_bucket}/edge/prod", endpoint_url=moto_endpoint)
    assert isinstance(opened, S3BundleStore)
    return opened


def keys(bucket: str, endpoint: str) -> list[str]:
    listing = boto3.client("s3", endpoint_url=endpoint).list_objects_v2(Bucket=bucket)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


def test_lifecycle_on_s3(store: S3BundleStore, built: Path, s3_bucket: str, moto_endpoint: str, tmp_path: Path) -> None:
    assert store.list_versions() == []
    assert store.current() is None
    for version in VERSIONS:
        assert store.push(built / version) == version
        store.promote(version)
    assert store.list_versions() == list(VERSIONS)
    assert store.current() == "v003"
    assert store.read_manifest("v002") == Manifest.read(built / "v002")
    assert "edge/prod/CURRENT.json" in keys(s3_bucket, moto_endpoint)
    assert "edge/prod/bundles/v001/manifest.json" in keys(s3_bucket, moto_endpoint)

    assert store.rollback() == "v002"
    assert store.current() == "v002"
    path = store.download("v002", tmp_path / "cache")
    assert verify_bundle(path).bundle_version == "v002"
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["v002"]

    store.delete("v003")
    assert store.list_versions() == ["v001", "v002"]
    assert not [k for k in keys(s3_bucket, moto_endpoint) if k.startswith("edge/prod/bundles/v003/")]
    with pytest.raises(BundleError, match="already exists"):
        store.push(built / "v001")


def test_half_pushed_bundle_is_invisible_on_s3(
    store: S3BundleStore, built: Path, s3_bucket: str, moto_endpoint: str
) -> None:
    store.push(built / "v001")
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    for path in (built / "v002").iterdir():
        if path.name != MANIFEST:
            client.upload_file(str(path), s3_bucket, f"edge/prod/bundles/v002/{path.name}")
    assert store.list_versions() == ["v001"]
    with pytest.raises(NotFound, match="bundle version v002 is not in the store s3://"):
        store.promote("v002")


def test_missing_object_is_refused_at_download(
    store: S3BundleStore, built: Path, s3_bucket: str, moto_endpoint: str, tmp_path: Path
) -> None:
    store.push(built / "v001")
    boto3.client("s3", endpoint_url=moto_endpoint).delete_object(
        Bucket=s3_bucket, Key="edge/prod/bundles/v001/content_index.hnsw"
    )
    with pytest.raises(BundleError, match=r"bundles/v001/content_index.hnsw is missing; the bundle is incomplete"):
        store.download("v001", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_corrupt_object_is_refused_at_download(
    store: S3BundleStore, built: Path, s3_bucket: str, moto_endpoint: str, tmp_path: Path
) -> None:
    store.push(built / "v001")
    client = boto3.client("s3", endpoint_url=moto_endpoint)
    local = tmp_path / "content.parquet"
    client.download_file(s3_bucket, "edge/prod/bundles/v001/content.parquet", str(local))
    corrupt_file(local)
    client.upload_file(str(local), s3_bucket, "edge/prod/bundles/v001/content.parquet")
    with pytest.raises(BundleError, match=r"content.parquet does not match its checksum; the bundle is corrupt"):
        store.download("v001", tmp_path / "cache")
    assert list((tmp_path / "cache").iterdir()) == []


def test_prefixes_are_independent_stores(built: Path, s3_bucket: str, moto_endpoint: str) -> None:
    staging = open_store(f"s3://{s3_bucket}/staging", endpoint_url=moto_endpoint)
    prod = open_store(f"s3://{s3_bucket}/prod", endpoint_url=moto_endpoint)
    staging.push(built / "v001")
    staging.promote("v001")
    assert prod.list_versions() == []
    assert prod.current() is None


def test_listing_follows_pagination(built: Path, s3_bucket: str, moto_endpoint: str) -> None:
    store = S3BundleStore(s3_bucket, "paged", endpoint_url=moto_endpoint, page_size=2)
    for version in VERSIONS:
        store.push(built / version)
    assert store.list_versions() == list(VERSIONS)


def test_missing_bucket_is_a_clear_error(moto_endpoint: str) -> None:
    store = open_store("s3://no-such-bucket/prod", endpoint_url=moto_endpoint)
    with pytest.raises(
        BundleError, match=r"^bundle store s3://no-such-bucket/prod: bucket no-such-bucket does not exist\.$"
    ):
        store.current()


def test_unreachable_endpoint_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    store = open_store("s3://aura-bundles/prod", endpoint_url=f"http://127.0.0.1:{port}")
    with pytest.raises(BundleError, match=r"^bundle store s3://aura-bundles/prod is unreachable: Could not connect"):
        store.list_versions()
