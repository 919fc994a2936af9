import os

import pytest

from aura.errors import InvalidRequest
from aura.server.request_id import DecisionRef, RequestIdCodec, bundle_tag, item_fingerprint

REF = DecisionRef(
    decided_at_ms=1_764_258_000_123,
    bundle_tag=bundle_tag("20261127T000000Z-abcdef"),
    surface_index=3,
    segment_index=41,
    item_fingerprints=tuple(item_fingerprint(c) for c in ("c123", "c456", "c789")),
)


def test_round_trip_keeps_every_field() -> None:
    codec = RequestIdCodec("secret")
    request_id = codec.encode(REF, os.urandom(6))
    assert request_id.startswith("req_")
    assert codec.decode(request_id) == REF


def test_another_node_with_the_same_secret_verifies_it() -> None:
    request_id = RequestIdCodec("fleet-secret").encode(REF, b"\x00" * 6)
    assert RequestIdCodec("fleet-secret").decode(request_id) == REF


def test_positions_are_one_based_and_zero_when_absent() -> None:
    assert REF.position_of("c123") == 1
    assert REF.position_of("c789") == 3
    assert REF.position_of("c999") == 0


def test_nonce_makes_ids_unique() -> None:
    codec = RequestIdCodec("secret")
    assert codec.encode(REF, b"\x00" * 6) != codec.encode(REF, b"\x00" * 5 + b"\x01")


def _tampered(request_id: str) -> str:
    body = request_id[4:]
    middle = len(body) // 2
    flipped = "A" if body[middle] != "A" else "B"
    return "req_" + body[:middle] + flipped + body[middle + 1 :]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda rid: "", "not a request id"),
        (lambda rid: "abc", "not a request id"),
        (lambda rid: "req_", "truncated"),
        (lambda rid: "req_!!!", "not a request id|truncated"),
        (lambda rid: rid[:20], "truncated|verification"),
        (_tampered, "verification"),
        (lambda rid: RequestIdCodec("other-secret").encode(REF, b"\x00" * 6), "verification"),
        (lambda rid: "req_" + "A" * 2000, "not a request id"),
    ],
)
def test_forged_or_damaged_ids_are_rejected(make, message: str) -> None:
    codec = RequestIdCodec("secret")
    with pytest.raises(InvalidRequest, match=message):
        codec.decode(make(codec.encode(REF, b"\x07" * 6)))
