"""The decision log's records: what Rank keeps per request, and how the log's writer turns it into columns.

A request costs one tuple: the fields of the `decisions` schema (aura.eventlog.SCHEMAS), with three of them
kept in the form Rank already holds and converted for a whole batch on the log's writer thread:
`consent` (a set, sorted there), `context_json` (the context map, serialized there) and `items` (the slate
as a `LoggedSlate`, built there with vectorized array operations).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson
import pyarrow as pa

from aura.eventlog import DECISION_ITEM, EventLog


class LoggedSlate(NamedTuple):
    """A slate as Rank holds it: content rows into `content_ids` (the bundle's), best first."""

    content_ids: Sequence[str]
    rows: list[int]
    scores: list[float]
    propensities: list[float]
    explored_slot: int
    """The slot the exploration budget filled, or -1."""


def _consent(column: Sequence[frozenset[str]], field_type: pa.DataType) -> pa.Array:
    return pa.array([sorted(scopes) for scopes in column], type=field_type)


def _context_json(column: Sequence[Mapping[str, str]], field_type: pa.DataType) -> pa.Array:
    return pa.array([orjson.dumps(dict(context)).decode() if context else "" for context in column], type=field_type)


_ID_ARRAYS: dict[int, tuple[Sequence[str], pa.Array]] = {}
"""The content ids of recent bundles as Arrow arrays, by the identity of the bundle's id table."""


def _id_array(content_ids: Sequence[str]) -> pa.Array:
    cached = _ID_ARRAYS.get(id(content_ids))
    if cached is None or cached[0] is not content_ids:
        if len(_ID_ARRAYS) >= 4:
            _ID_ARRAYS.clear()
        cached = _ID_ARRAYS[id(content_ids)] = (content_ids, pa.array(content_ids, type=pa.string()))
    return cached[1]


def _items(column: Sequence[LoggedSlate], field_type: pa.DataType) -> pa.Array:
    content_ids, rows, scores, propensities, explored_slots = zip(*column, strict=True)
    lengths = np.fromiter(map(len, rows), dtype=np.int32, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    flat_rows = np.fromiter(itertools.chain.from_iterable(rows), np.int64, total)
    # Rows index their own bundle's ids: with several bundles in a batch (a swap), into their concatenation.
    tables = {id(table): table for table in content_ids}
    if len(tables) == 1:
        ids = _id_array(content_ids[0])
    else:
        bases = dict(zip(tables, itertools.accumulate(map(len, tables.values()), initial=0), strict=False))
        flat_rows += np.repeat(np.fromiter((bases[id(table)] for table in content_ids), np.int64), lengths)
        ids = pa.concat_arrays([_id_array(table) for table in tables.values()])
    positions = np.arange(1, total + 1, dtype=np.int32) - np.repeat(offsets[:-1], lengths)
    explored = positions == np.repeat(np.array(explored_slots, dtype=np.int32) + 1, lengths)
    items = pa.StructArray.from_arrays(
        [
            ids.take(pa.array(flat_rows)),
            pa.array(positions),
            pa.array(np.fromiter(itertools.chain.from_iterable(scores), np.float64, total)),
            pa.array(np.fromiter(itertools.chain.from_iterable(propensities), np.float64, total)),
            pa.array(explored),
        ],
        fields=list(DECISION_ITEM),
    )
    return pa.ListArray.from_arrays(pa.array(offsets), items, type=field_type)


DECISION_COLUMNS = {"consent": _consent, "context_json": _context_json, "items": _items}
"""How the writer converts the columns Rank logs in their request-time form."""


def decision_log(root: str | Path, *, node_id: str, flush_interval: float, batch_size: int = 1000) -> EventLog:
    """The `decisions` event log of one server process, taking records in Rank's form (module docstring)."""
    return EventLog(
        root,
        "decisions",
        node_id=node_id,
        flush_interval=flush_interval,
        batch_size=batch_size,
        column_builders=DECISION_COLUMNS,
    )
