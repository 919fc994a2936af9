"""Checks an hnswlib index file against hnswlib's on-disk format before hnswlib reads it.

hnswlib trusts the file it loads: a corrupt count, offset, link count or neighbour id makes `load_index` or a
later search read out of bounds and crash the whole process, where a corrupt bundle must only be refused.
The layout is that of `HierarchicalNSW::saveIndex` in hnswlib's `hnswalg.h` (0.8.0), little-endian:

- a 96-byte header (`_Header`);
- `count` level-0 records of `size_data_per_element` bytes: a uint32 link count, `maxM0` uint32 neighbour
  ids, the `dim` float32 vector and the uint64 label;
- per element, a uint32 byte size and then its upper-level links: one block of a uint32 count and `maxM`
  uint32 neighbour ids for each of its levels above 0.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

from aura.errors import BundleError

_MAX_M = 0x7FFF
"""The largest M whose level-0 capacity (2M) fits the 16 bits hnswlib reads a link count from."""
_NO_ENTRY_POINT = 0xFFFFFFFF
"""The entry point of an empty index (hnswlib's -1 as an unsigned id)."""
_WORD = 4
"""The size of the uint32 link counts, neighbour ids and upper-level sizes."""


class _Header(NamedTuple):
    offset_level0: int
    max_elements: int
    count: int
    size_data_per_element: int
    label_offset: int
    offset_data: int
    max_level: int
    entry_point: int
    max_m: int
    max_m0: int
    m: int
    mult: float
    ef_construction: int


_HEADER = struct.Struct("<6QiI3QdQ")
"""The fields of `_Header`, in order: six size_t, the int maxlevel, the uint32 entry point, three size_t, the
double mult and one size_t."""


def check_hnsw_file(path: Path, bundle: str, *, dim: int, count: int) -> None:
    """Refuse, with a BundleError naming the bundle and the file, an hnswlib index that is not well-formed.

    Well-formed: `count` finite float32 vectors of `dim` components labelled 0..count-1, consistent sizes and
    offsets, every link count within its level's capacity, every neighbour an element that has that level,
    and nothing after the last element. Example: `check_hnsw_file(bundle_dir / INDEX, "v001", dim=384, count=20)`.
    """
    size = path.stat().st_size
    # A memory map, not a read: the level-0 records of a large index are hundreds of MB, shared with hnswlib.
    problem = _index_problem(np.memmap(path, mode="r") if size else b"", dim, count)
    if problem:
        raise BundleError(f"bundle {bundle}: {path.name} {problem}; the index is corrupt.")


def _index_problem(data: np.ndarray | bytes, dim: int, count: int) -> str | None:
    """What is wrong with the index file's bytes, or None."""
    if len(data) < _HEADER.size:
        return f"is {len(data)} bytes long, shorter than the {_HEADER.size}-byte hnswlib header"
    header = _Header._make(_HEADER.unpack_from(data))
    if header.offset_level0 != 0:
        return f"has offsetLevel0 {header.offset_level0}, not 0"
    if header.count != count:
        return f"holds {header.count} elements, the id map {count}"
    if header.max_elements < count:
        return f"has max_elements {header.max_elements}, fewer than its {count} elements"
    if not (2 <= header.m <= _MAX_M and header.max_m == header.m and header.max_m0 == 2 * header.m):
        return (
            f"has M {header.m}, maxM {header.max_m} and maxM0 {header.max_m0}; hnswlib writes maxM = M and "
            f"maxM0 = 2M with 2 <= M <= {_MAX_M}"
        )
    if not math.isclose(header.mult, 1 / math.log(header.m), rel_tol=1e-9):
        return f"has mult {header.mult}, not 1/ln(M) for M {header.m}"
    if header.ef_construction < header.m:
        return f"has ef_construction {header.ef_construction}, less than M {header.m}"
    record = np.dtype(
        [("links", "<u4"), ("neighbours", "<u4", (header.max_m0,)), ("vector", "<f4", (dim,)), ("label", "<u8")]
    )
    layout = (header.size_data_per_element, header.offset_data, header.label_offset)
    expected = (record.itemsize, record.fields["vector"][1], record.fields["label"][1])
    if layout != expected:
        return (
            f"has record size, vector offset and label offset {layout}, expected {expected} for dimension {dim} "
            f"and maxM0 {header.max_m0}"
        )
    if count == 0:
        if (header.max_level, header.entry_point) != (-1, _NO_ENTRY_POINT):
            return f"is empty but has maxlevel {header.max_level} and entry point {header.entry_point}"
        return None if len(data) == _HEADER.size else f"is empty but has {len(data) - _HEADER.size} bytes of data"
    if header.entry_point >= count or header.max_level < 0:
        return f"has entry point {header.entry_point} and maxlevel {header.max_level} for {count} elements"
    level0_end = _HEADER.size + count * record.itemsize
    if len(data) < level0_end:
        return f"is {len(data)} bytes long, too short for {count} level-0 records of {record.itemsize} bytes"
    return _level0_problem(np.frombuffer(data, record, count, _HEADER.size), header) or _upper_levels_problem(
        data, level0_end, header
    )


def _level0_problem(records: np.ndarray, header: _Header) -> str | None:
    """What is wrong with the level-0 records (links, vectors, labels), or None; vectorized over elements."""
    count = len(records)
    # The whole word, not its low 16 bits: bits 16-23 hold hnswlib's deletion mark, which the writer never sets.
    links = records["links"]
    if np.any(links > header.max_m0):
        element = int(np.argmax(links > header.max_m0))
        return f"gives element {element} a level-0 link count of {links[element]}, more than maxM0 {header.max_m0}"
    used = np.arange(header.max_m0) < links[:, None]
    if np.any(records["neighbours"][used] >= count):
        element = int(np.argmax(np.any(used & (records["neighbours"] >= count), axis=1)))
        return f"links element {element} at level 0 to a neighbour id outside 0..{count - 1}"
    if not np.all(np.isfinite(records["vector"])):
        return "holds a vector that is not finite"
    if not np.array_equal(np.sort(records["label"]), np.arange(count)):
        return f"does not label its elements 0..{count - 1}, each once"
    return None


def _upper_levels_problem(data: np.ndarray, start: int, header: _Header) -> str | None:
    """What is wrong with the upper-level links that follow the level-0 records at `start`, or None."""
    count = header.count
    block_words = 1 + header.max_m
    block_bytes = block_words * _WORD
    if (len(data) - start) % _WORD:
        return f"has {len(data) - start} bytes of upper-level links, not whole {_WORD}-byte words"
    words = np.frombuffer(data, "<u4", (len(data) - start) // _WORD, start)
    sizes = words.tolist()  # Python ints: the walk below reads one per element, where numpy scalars are slow
    word_count = len(sizes)
    element_levels = [0] * count
    blocks = []
    word = 0
    for element in range(count):  # each element's offset depends on the sizes of all before it
        size = sizes[word] if word < word_count else -1
        word += 1
        if size < 0 or size % block_bytes or word + size // _WORD > word_count:
            return f"ends or breaks off in the upper-level links of element {element}"
        if size:
            element_levels[element] = size // block_bytes
            blocks.append(words[word : word + size // _WORD])
            word += size // _WORD
    if word != word_count:
        return f"has {(word_count - word) * _WORD} bytes after its last element"
    levels = np.array(element_levels)
    if levels.max() != header.max_level or levels[header.entry_point] != header.max_level:
        return (
            f"has maxlevel {header.max_level} and entry point {header.entry_point} at level "
            f"{levels[header.entry_point]}, but its highest element level is {levels.max()}"
        )
    if not blocks:
        return None
    rows = np.concatenate(blocks).reshape(-1, block_words)
    links, neighbours = rows[:, 0], rows[:, 1:]
    if np.any(links > header.max_m):
        return f"has an upper-level link count of {links.max()}, more than maxM {header.max_m}"
    # The level of each row: an element of level k has rows for levels 1..k, in order.
    owners = np.repeat(np.flatnonzero(levels), levels[levels > 0])
    row_levels = np.arange(len(rows)) - np.searchsorted(owners, owners) + 1
    used = np.arange(header.max_m) < links[:, None]
    ids, id_levels = neighbours[used], np.repeat(row_levels, links)
    if np.any(ids >= count):
        return f"has an upper-level neighbour id outside 0..{count - 1}"
    if np.any(levels[ids] < id_levels):
        return "links an element at a level above that element's own"
    return None
