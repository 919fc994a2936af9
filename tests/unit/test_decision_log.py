"""The decision log converts Rank's request-time record fields into the documented schema."""

import pyarrow as pa

from aura.eventlog import SCHEMAS, read_log
from aura.server.decision_log import DECISION_COLUMNS, LoggedSlate, decision_log

ITEMS = SCHEMAS["decisions"].field("items").type


def test_slates_become_item_structs_even_across_a_bundle_swap() -> None:
    old_ids, new_ids = ("a", "b", "c"), ("x", "y", "z", "w")
    slates = [
        LoggedSlate(old_ids, [2, 0], [0.9, 0.5], [0.7, 0.2], 1),
        LoggedSlate(new_ids, [3], [0.4], [1.0], -1),
        LoggedSlate(old_ids, [], [], [], -1),
        LoggedSlate(new_ids, [0, 1, 2], [0.3, 0.2, 0.1], [0.5, 0.4, 0.3], 0),
    ]
    expected = pa.array(
        [
            [
                (s.content_ids[row], slot + 1, score, p, slot == s.explored_slot)
                for slot, (row, score, p) in enumerate(zip(s.rows, s.scores, s.propensities, strict=True))
            ]
            for s in slates
        ],
        type=ITEMS,
    )
    assert DECISION_COLUMNS["items"](slates, ITEMS).equals(expected)
    assert DECISION_COLUMNS["items"](slates[:1], ITEMS).to_pylist()[0][1] == {
        "content_id": "a",
        "position": 2,
        "score": 0.5,
        "propensity": 0.2,
        "explored": True,
    }


def test_consent_and_context_are_serialized_by_the_writer(tmp_path) -> None:
    log = decision_log(tmp_path, node_id="n1", flush_interval=60)
    record = log.record(
        event_id="req_1",
        ts=1_764_000_000_000,
        consent=frozenset({"personalization", "analytics"}),
        context_json={"campaign": "spring"},
        items=LoggedSlate(("c1", "c2"), [1], [0.5], [0.25], -1),
    )
    log.append(record)
    log.append(record._replace(event_id="req_2", consent=frozenset(), context_json={}))
    log.close()
    rows = read_log(tmp_path, "decisions").to_pylist()
    assert [(r["event_id"], r["consent"], r["context_json"]) for r in rows] == [
        ("req_1", ["analytics", "personalization"], '{"campaign":"spring"}'),
        ("req_2", [], ""),
    ]
    assert rows[0]["items"] == [
        {"content_id": "c2", "position": 1, "score": 0.5, "propensity": 0.25, "explored": False}
    ]
