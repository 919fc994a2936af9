"""The decision log: Rank's appends into compiled column buffers come out as rows of the documented schema."""

import orjson
import pyarrow as pa
import pytest

from aura.eventlog import SCHEMAS, read_log
from aura.server._native import DecisionColumns
from aura.server.decision_log import DecisionBuffer, decision_log

SCHEMA = SCHEMAS["decisions"]
OLD_IDS, NEW_IDS = ("a", "b", "c"), ["x", "y", "z", "w"]


def _decision(event_id: str, **changes):
    """Arguments of one append, by field name (the order of DecisionColumns.append)."""
    fields = {
        "event_id": event_id,
        "ts": 1_764_000_000_000,
        "node_id": "n1",
        "bundle_version": "v1",
        "policy_version": "p1",
        "surface_id": "homepage_hero",
        "segment_id": "seg_a",
        "segment_source": "assignment",
        "segment_confidence": 0.9,
        "holdout": False,
        "anon_id": "anon-1",
        "session_id": "s-1",
        "device": "mobile",
        "referrer_host": "example.com",
        "page_type": "home",
        "country": "DE",
        "region": "",
        "consent": frozenset({"personalization", "analytics"}),
        "context": {"campaign": "spring"},
        "seed": 2**64 - 1,
        "exploration_rate": 0.05,
        "eligible_count": 97,
        "content_ids": OLD_IDS,
        "rows": [2, 0],
        "scores": [0.9, 0.5],
        "propensities": [0.7, 0.2],
        "explored_slot": 1,
    }
    fields.update(changes)
    return fields


def _expected_row(fields: dict) -> dict:
    row = {name: fields[name] for name in SCHEMA.names if name in fields}
    row["consent"] = sorted(fields["consent"])
    row["context_json"] = orjson.dumps(dict(fields["context"])).decode() if fields["context"] else ""
    row["items"] = [
        {
            "content_id": fields["content_ids"][content_row],
            "position": slot + 1,
            "score": score,
            "propensity": propensity,
            "explored": slot == fields["explored_slot"],
        }
        for slot, (content_row, score, propensity) in enumerate(
            zip(fields["rows"], fields["scores"], fields["propensities"], strict=True)
        )
    ]
    return row


def _rows(table: pa.Table) -> list[dict]:
    rows = table.select(SCHEMA.names).to_pylist()
    for row in rows:
        row["ts"] = int(row["ts"].timestamp() * 1000)
    return rows


DECISIONS = [
    _decision("req_1"),
    _decision("req_2", content_ids=NEW_IDS, rows=[3], scores=[0.4], propensities=[1.0], explored_slot=-1),
    _decision("req_3", rows=[], scores=[], propensities=[], explored_slot=-1, consent=frozenset(), context={}),
    _decision(
        "req_4",
        content_ids=NEW_IDS,
        rows=[0, 1, 2],
        scores=[0.3, 0.2, 0.1],
        propensities=[0.5, 0.4, 0.3],
        explored_slot=0,
        holdout=True,
        anon_id="",
        session_id="",
        segment_source="no_consent",
        region="Île-de-France",
        context={"q": 'say "hi"\\\n\t\x01\x1f\x7f é \u2028', "utm": "x"},
        seed=0,
    ),
]


def test_decisions_are_written_as_rows_of_the_schema_even_across_a_bundle_swap(tmp_path) -> None:
    log = decision_log(tmp_path, node_id="n1", flush_interval=60)
    for fields in DECISIONS:
        log.queue.columns.append(*fields.values())
    log.close()
    table = read_log(tmp_path, "decisions")
    assert table.select(SCHEMA.names).schema.equals(SCHEMA, check_metadata=False)
    assert _rows(table) == [_expected_row(fields) for fields in DECISIONS]


@pytest.mark.parametrize(
    "context",
    [{}, {"k": "v"}, {"a": "1", "b": "2"}, {'q"': "\\"}, {"c": "".join(map(chr, range(0x20)))}, {"ü": "\u2028😀\x7f"}],
)
def test_the_context_is_json_as_orjson_writes_it(context) -> None:
    buffer = DecisionBuffer(SCHEMA, 10, lambda: None)
    buffer.columns.append(*_decision("req", context=context).values())
    (batch,) = buffer.batches(buffer.take())
    assert batch.column("context_json").to_pylist() == [orjson.dumps(context).decode() if context else ""]


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"rows": [0, 7]}, IndexError),
        ({"rows": [0, -1]}, IndexError),
        ({"consent": frozenset({"ok", 3})}, TypeError),
        ({"context": {"k": 1}}, TypeError),
        ({"context": ("k", "v")}, TypeError),
        ({"scores": [0.1]}, ValueError),
        ({"seed": -1}, OverflowError),
        ({"region": None}, TypeError),
    ],
)
def test_a_decision_that_fails_leaves_nothing_behind(change, error) -> None:
    buffer = DecisionBuffer(SCHEMA, 10, lambda: None)
    buffer.columns.append(*_decision("req_1").values())
    with pytest.raises(error):
        buffer.columns.append(*_decision("bad", **change).values())
    buffer.columns.append(*_decision("req_2").values())
    assert len(buffer) == 2
    (batch,) = buffer.batches(buffer.take())
    batch.validate(full=True)
    assert _rows(pa.Table.from_batches([batch])) == [_expected_row(_decision(e)) for e in ("req_1", "req_2")]
    assert len(buffer) == 0


def test_the_writer_is_woken_when_a_batch_is_full() -> None:
    wakes = []
    columns = DecisionColumns(2, lambda: wakes.append(len(wakes)))
    for count in range(5):
        columns.append(*_decision(f"req_{count}").values())
    assert wakes == [0]
    rows, _ = columns.take()
    assert rows == 5 and len(columns) == 0
    columns.append(*_decision("req_5").values())
    columns.append(*_decision("req_6").values())
    assert wakes == [0, 1]
