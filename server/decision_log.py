"""The decision log: Rank appends each decision into compiled column buffers, the writer wraps them as Arrow.

Rank's compiled `serve_slate` appends to `decisions.queue.columns` (aura.server._native.DecisionColumns) the
fields of the `decisions` schema (aura.eventlog.SCHEMAS) in its order, three of them in the form Rank already
holds: consent as a set, the context as a mapping and the slate as content rows with their scores and propensities.
The writer thread takes the buffers of every decision since its last write at once and wraps them as Arrow
arrays without a Python object per record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa

from aura.eventlog import EventLog
from aura.server._native import DecisionColumns

_NUMBER_TYPES = {pa.int32(): np.int32, pa.uint64(): np.uint64, pa.float64(): np.float64}


def _column(buffers: Mapping[str, bytes], name: str, field_type: pa.DataType, length: int) -> pa.Array:
    """The Arrow array of buffer `name`, a column of `length` entries of `field_type`."""
    if pa.types.is_string(field_type):
        return pa.Array.from_buffers(
            field_type, length, [None, pa.py_buffer(buffers[name]), pa.py_buffer(buffers[name + ".data"])]
        )
    if pa.types.is_boolean(field_type):
        return pa.array(np.frombuffer(buffers[name], dtype=np.bool_), type=field_type)
    if pa.types.is_timestamp(field_type):
        return pa.Array.from_buffers(field_type, length, [None, pa.py_buffer(buffers[name])])
    if pa.types.is_list(field_type):
        offsets = np.frombuffer(buffers[name], dtype=np.int32)
        child_type = field_type.value_type
        child_length = int(offsets[-1])
        if pa.types.is_struct(child_type):
            children = [_column(buffers, f"{name}.{field.name}", field.type, child_length) for field in child_type]
            child = pa.StructArray.from_arrays(children, fields=list(child_type))
        else:
            child = _column(buffers, f"{name}.scope", child_type, child_length)
        return pa.ListArray.from_arrays(pa.array(offsets), child, type=field_type)
    return pa.array(np.frombuffer(buffers[name], dtype=_NUMBER_TYPES[field_type]), type=field_type)


class DecisionBuffer:
    """The decisions log's buffer (aura.eventlog.RecordBuffer): compiled columns, appended to by Rank."""

    def __init__(self, schema: pa.Schema, batch_size: int, wake: Callable[[], None]) -> None:
        self._schema = schema
        self.columns = DecisionColumns(batch_size, wake)
        """The buffered decisions, which Rank appends to (aura.server._native.DecisionColumns.append)."""

    def __len__(self) -> int:
        return len(self.columns)

    def take(self) -> tuple[int, dict[str, bytes]]:
        """The rows and the column buffers of every decision so far."""
        return self.columns.take()

    def batches(self, taken: tuple[int, dict[str, bytes]]) -> list[pa.RecordBatch]:
        """The decisions as one record batch of the decisions schema."""
        rows, buffers = taken
        columns = [_column(buffers, field.name, field.type, rows) for field in self._schema]
        return [pa.RecordBatch.from_arrays(columns, schema=self._schema)]


def decision_log(root: str | Path, *, node_id: str, flush_interval: float, batch_size: int = 1000) -> EventLog:
    """The `decisions` event log of one server process, filled by Rank through `queue.columns` (module docstring)."""
    return EventLog(
        root, "decisions", node_id=node_id, flush_interval=flush_interval, batch_size=batch_size, buffer=DecisionBuffer
    )
