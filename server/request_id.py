"""Self-contained, signed request ids, so feedback can be checked on any process of any edge node.

A request id carries what a Feedback call needs to validate and apply a reward without the decision
ever having been seen by the process that receives it: when the decision was made, with which bundle,
for which surface and segment, and a fingerprint of every item shown, in order. A MAC over all of it
(key: AURA_REQUEST_ID_SECRET, shared by the fleet) makes it unforgeable.

Layout before base64url: version (1) | decided_at ms (6) | nonce (6) | bundle tag (4) |
surface index (2) | segment index (2) | item count (1) | crc32 per item (4 each) | keyed BLAKE2b (10),
integers big-endian. Rank encodes through the compiled `aura.server._native.serve_slate` (encode_request_id).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import struct
import zlib
from dataclasses import dataclass

from aura.errors import InvalidRequest
from aura.server._native import encode_request_id

PREFIX = "req_"
_VERSION = 2
_HEADER = struct.Struct(">B6s6sIHHB")
_MAC_BYTES = 10
MAX_ITEMS = 100


def item_fingerprint(content_id: str) -> int:
    """The 32-bit fingerprint of a content id used inside request ids."""
    return zlib.crc32(content_id.encode())


def bundle_tag(bundle_version: str) -> int:
    """The 32-bit tag of a bundle version used inside request ids."""
    return zlib.crc32(bundle_version.encode())


@dataclass(frozen=True)
class DecisionRef:
    """What a request id says about its decision."""

    decided_at_ms: int
    bundle_tag: int
    surface_index: int
    segment_index: int
    item_fingerprints: tuple[int, ...]

    def position_of(self, content_id: str) -> int:
        """1-based position of `content_id` in the decision, or 0 if it was not shown."""
        fingerprint = item_fingerprint(content_id)
        for position, candidate in enumerate(self.item_fingerprints, start=1):
            if candidate == fingerprint:
                return position
        return 0


class RequestIdCodec:
    """Encodes and verifies request ids with one secret."""

    def __init__(self, secret: str) -> None:
        self.mac = functools.partial(
            hashlib.blake2b, key=hashlib.sha256(secret.encode()).digest(), digest_size=_MAC_BYTES
        )
        """The keyed MAC of a request id's body: `mac(body).digest()` is its last 10 bytes."""

    def encode(self, ref: DecisionRef, nonce: int) -> str:
        """Return the request id of a decision; `nonce` is a random 48-bit integer.

        Rank encodes its ids in compiled code (aura.server._native.serve_slate) with the same `mac`.
        """
        fingerprints = ref.item_fingerprints
        return encode_request_id(
            self.mac, ref.decided_at_ms, nonce, ref.bundle_tag, ref.surface_index, ref.segment_index,
            fingerprints, range(len(fingerprints)),
        )  # fmt: skip

    def decode(self, request_id: str) -> DecisionRef:
        """Verify a request id and return its decision reference; InvalidRequest if it is not ours."""
        if not request_id.startswith(PREFIX) or len(request_id) > 1024:
            raise InvalidRequest("request_id is not a request id issued by Rank.")
        token = request_id[len(PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise InvalidRequest("request_id is not a request id issued by Rank.") from None
        if len(raw) < _HEADER.size + _MAC_BYTES:
            raise InvalidRequest("request_id is truncated.")
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        expected = self.mac(body).digest()
        if not hmac.compare_digest(mac, expected):
            raise InvalidRequest("request_id failed verification: it was altered or issued by another deployment.")
        version, decided, _nonce, tag, surface, segment, count = _HEADER.unpack_from(body)
        if version != _VERSION or len(body) != _HEADER.size + 4 * count:
            raise InvalidRequest("request_id has an unsupported layout.")
        items = struct.unpack_from(f">{count}I", body, _HEADER.size)
        return DecisionRef(int.from_bytes(decided, "big"), tag, surface, segment, tuple(items))
