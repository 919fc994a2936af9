import base64
import hashlib
import random
import struct

import pytest

from aura.errors import InvalidRequest
from aura.server._native import encode_request_id
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
    request_id = codec.encode(REF, random.getrandbits(48))
    assert request_id.startswith("req_")
    assert codec.decode(request_id) == REF


def test_another_node_with_the_same_secret_verifies_it() -> None:
    request_id = RequestIdCodec("fleet-secret").encode(REF, 0)
    assert RequestIdCodec("fleet-secret").decode(request_id) == REF


def test_positions_are_one_based_and_zero_when_absent() -> None:
    assert REF.position_of("c123") == 1
    assert REF.position_of("c789") == 3
    assert REF.position_of("c999") == 0


def test_nonce_makes_ids_unique() -> None:
    codec = RequestIdCodec("secret")
    assert codec.encode(REF, 0) != codec.encode(REF, 1)


@pytest.mark.parametrize("items", [0, 1, 2, 3, 100])
def test_the_compiled_encoder_writes_the_documented_layout(items: int) -> None:
    fingerprints = [random.getrandbits(32) for _ in range(items)]
    ref = DecisionRef(2**47 + 5, 2**32 - 1, 65535, 7, tuple(fingerprints))
    nonce = 0xA1B2C3D4E5F6
    body = struct.pack(
        ">B6s6sIHHB", 2, ref.decided_at_ms.to_bytes(6, "big"), nonce.to_bytes(6, "big"), 2**32 - 1, 65535, 7, items
    )
    body += struct.pack(f">{items}I", *fingerprints)
    mac = hashlib.blake2b(body, key=hashlib.sha256(b"secret").digest(), digest_size=10).digest()
    expected = "req_" + base64.urlsafe_b64encode(body + mac).rstrip(b"=").decode()
    assert RequestIdCodec("secret").encode(ref, nonce) == expected


def test_a_slate_is_encoded_from_the_fingerprints_of_its_rows() -> None:
    codec = RequestIdCodec("secret")
    table = [item_fingerprint(f"c{i}") for i in range(10)]
    request_id = encode_request_id(codec.mac, REF.decided_at_ms, 9, REF.bundle_tag, 3, 41, table, [7, 2, 5])
    assert codec.decode(request_id).item_fingerprints == (table[7], table[2], table[5])


@pytest.mark.parametrize(
    "fields",
    [(-1, 0, 0, 0, 0), (2**48, 0, 0, 0, 0), (0, 2**48, 0, 0, 0), (0, 0, 2**32, 0, 0), (0, 0, 0, 2**16, 0)],
)
def test_out_of_range_header_fields_are_refused(fields: tuple[int, ...]) -> None:
    with pytest.raises(OverflowError):
        encode_request_id(RequestIdCodec("secret").mac, *fields, [1], [0])


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
        (lambda rid: RequestIdCodec("other-secret").encode(REF, 0), "verification"),
        (lambda rid: "req_" + "A" * 2000, "not a request id"),
    ],
)
def test_forged_or_damaged_ids_are_rejected(make, message: str) -> None:
    codec = RequestIdCodec("secret")
    with pytest.raises(InvalidRequest, match=message):
        codec.decode(make(codec.encode(REF, 0x070707070707)))
