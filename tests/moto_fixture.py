"""A real S3 API on loopback: moto's threaded server, for tests that talk to S3 through boto3.

Use it from a test module with `pytest_plugins = ["tests.moto_fixture"]`, then request `moto_endpoint`
(the endpoint URL), `s3_bucket` (an empty bucket on it) or `moto_server` (to stop it early).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import boto3
import pytest
from moto.server import ThreadedMotoServer

_bucket_numbers = itertools.count()


@pytest.fixture
def moto_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ThreadedMotoServer]:
    """Start a moto S3 server on a free loopback port with dummy credentials; stop it after the test.

    A test may stop it early (to make the store unreachable); stopping twice is harmless.
    """
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def moto_endpoint(moto_server: ThreadedMotoServer) -> str:
    """The endpoint URL of the test's moto S3 server, e.g. `http://127.0.0.1:41234`."""
    host, port = moto_server.get_host_and_port()
    return f"http://{host}:{port}"


@pytest.fixture
def s3_bucket(moto_endpoint: str) -> str:
    """Create an empty bucket on the moto server and return its name."""
    name = f"aura-test-{next(_bucket_numbers)}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=name)
    return name
