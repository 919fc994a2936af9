"""The Rank response in protobuf wire format, assembled from bytes prepared when a bundle is loaded.

Most of a RankResponse is constant for a bundle: each item's content id and metadata, each surface's
name, policy version, cache TTL and bundle version. Building the response as messages costs more
than the decision itself; encoding the few per-request fields and joining prepared bytes does not.
The per-request fields are encoded, and joined with these parts, by the compiled
`aura.server._native.ranked_items` and `aura.server._native.rank_response`.
Field numbers are those of proto/aura/v1/decision_service.proto and common.proto (all below 16, so
every tag is one byte); the tests parse the output with the generated classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aura.config import Surface
from aura.v1 import common_pb2

_LENGTH_DELIMITED = 2


_ONE_BYTE = tuple(bytes((value,)) for value in range(0x80))


def varint(value: int) -> bytes:
    """The base-128 varint encoding of a non-negative integer."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field_bytes(field: int, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message) with its one-byte tag."""
    return bytes((field << 3 | _LENGTH_DELIMITED,)) + varint(len(payload)) + payload


def _string(field: int, value: str) -> bytes:
    return field_bytes(field, value.encode()) if value else b""


@dataclass(frozen=True)
class ResponseParts:
    """The prepared bytes of one bundle's Rank responses."""

    item_tails: tuple[bytes, ...]
    """Per content row: RankedItem.content_id and RankedItem.metadata."""
    surface_fields: Mapping[str, bytes]
    """Per surface: RankResponse.surface, policy_version, cache_ttl and bundle_version."""


def response_parts(
    content_ids: Sequence[str],
    metadata: Sequence[common_pb2.ItemMetadata],
    surfaces: Mapping[str, Surface],
    policy_version: str,
    bundle_version: str,
) -> ResponseParts:
    """Prepare the constant parts of the Rank responses of a bundle."""
    return ResponseParts(
        item_tails=tuple(
            _string(1, content_id) + field_bytes(4, item.SerializeToString())
            for content_id, item in zip(content_ids, metadata, strict=True)
        ),
        surface_fields={
            surface_id: _string(2, surface_id)
            + _string(6, policy_version)
            + (b"\x38" + varint(surface.cache_ttl) if surface.cache_ttl else b"")
            + _string(8, bundle_version)
            for surface_id, surface in surfaces.items()
        },
    )
