"""The hand-assembled RankResponse parses to exactly the message the generated classes would build."""

from __future__ import annotations

import pytest

from aura.config import Surface
from aura.server._native import rank_response, ranked_items
from aura.server.wire import response_parts, varint
from aura.v1 import common_pb2
from aura.v1 import decision_service_pb2 as pb


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**64 - 1])
def test_varint_matches_protobuf(value: int) -> None:
    message = pb.RankResponse(seed=value)
    assert message.SerializeToString() == (b"\x48" + varint(value) if value else b"")


def test_rank_response_equals_the_generated_message() -> None:
    metadata = [
        common_pb2.ItemMetadata(title="Intro to CRM", url="/blog/crm", topics=["crm", "sales"]),
        common_pb2.ItemMetadata(title="Ünïcode ✓", url="", topics=[]),
        common_pb2.ItemMetadata(),
    ]
    surfaces = {"homepage.hero": Surface(id="homepage.hero", max_items=200, cache_ttl=300)}
    parts = response_parts(["c1", "c2", "c3"], metadata, surfaces, "2025-10-01", "v20251001")
    # (content row, score, propensity); slot 1 explored; 150 slots, so positions take two bytes. A reason is its
    # row's head and the slate's tail, or the explored slot's own tail.
    items = [(0, 0.42, 0.3), (1, 1e-9, 1.0)] + [(2, 0.0, 0.0)] * 148
    heads = ("beginner", "x" * 200, "")
    reasons = ["beginner+mobile", "x" * 200 + "+exploration"] + ["+mobile"] * 148
    explanation = pb.Explanation(segment_source="cold_start", exploration_rate=0.08)
    data = rank_response(
        "req_abc",
        parts.surface_fields["homepage.hero"],
        ranked_items(
            [score for _, score, _ in items],
            [p for _, _, p in items],
            1,
            [row for row, _, _ in items],
            parts.item_tails,
            heads,
            "+mobile",
            "+exploration",
        ),
        "seg_learn_mobile_new",
        0.851249,
        "learn",
        "thompson",
        False,
        2**64 - 1,
        explanation.SerializeToString(),
    )
    expected = pb.RankResponse(
        request_id="req_abc",
        surface="homepage.hero",
        items=[
            pb.RankedItem(
                content_id=f"c{row + 1}",
                score=score,
                reason=reason,
                metadata=metadata[row],
                position=slot + 1,
                propensity=p,
                explored=slot == 1,
            )
            for slot, ((row, score, p), reason) in enumerate(zip(items, reasons, strict=True))
        ],
        segment=common_pb2.Segment(id="seg_learn_mobile_new", confidence=0.8512, intent="learn"),
        experiment=common_pb2.Experiment(variant="thompson", holdout=False),
        policy_version="2025-10-01",
        cache_ttl=300,
        bundle_version="v20251001",
        seed=2**64 - 1,
        explanation=explanation,
    )
    assert pb.RankResponse.FromString(data) == expected
    held_out = pb.RankResponse.FromString(rank_response("r", b"", b"", "seg_global", 1.0, "", "holdout", True, 0, b""))
    assert (held_out.experiment.variant, held_out.experiment.holdout, held_out.segment.confidence) == (
        "holdout",
        True,
        1.0,
    )
    assert not held_out.HasField("explanation")


def test_the_compiled_encoders_refuse_bad_arguments() -> None:
    with pytest.raises(TypeError, match="request_id must be str"):
        rank_response(b"r", b"", b"", "s", 1.0, "", "v", False, 0, b"")
    with pytest.raises(OverflowError):
        rank_response("r", b"", b"", "s", 1.0, "", "v", False, -1, b"")
    with pytest.raises(ValueError, match="one length"):
        ranked_items([0.5], [0.1, 0.2], -1, [0], (b"",), ("h",), "", "")
    with pytest.raises(TypeError, match="tail must be bytes"):
        ranked_items([0.5], [0.1], -1, [0], ("not bytes",), ("h",), "", "")
    with pytest.raises(TypeError, match="reason head must be str"):
        ranked_items([0.5], [0.1], -1, [0], (b"",), (b"h",), "", "")
    with pytest.raises(IndexError, match="no prepared tail"):
        ranked_items([0.5], [0.1], -1, [1], (b"",), ("h",), "", "")
    with pytest.raises(IndexError, match="no prepared reason head"):
        ranked_items([0.5], [0.1], -1, [0], (b"",), (), "", "")
