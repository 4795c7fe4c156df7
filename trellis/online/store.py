"""Trellis' side of Feast's online store: the exact bytes Feast writes and reads, and a store that
reads them fast.

Feast keeps one row per ``(entity_key, feature_name)`` in a table ``<project>_<view>``: the entity key in
Feast's serialisation (version 3), the value as a serialised ``feast.types.Value`` protobuf, its text
(``value_text``: the number or string as Python prints it) and the event time in whole seconds.
``encode_key(s)`` / ``encode_values`` / ``value_texts`` / ``feast_event_seconds`` produce those without
protobuf objects, whole columns at a time with numpy (tested equal to Feast's own serialisers), which is what
makes bulk materialisation fast; ``OnlineStore`` reads state blobs on the hot path with one prepared query
per group on a per-thread connection.

Two backends behind one class:

* ``sqlite`` (the default, ``feature_store.yaml`` ``online_store.type: sqlite``): reads and bulk writes go
  straight to Feast's table layout; a bulk write is **one transaction** over every view it touches, so a
  reader sees the previous complete version or the new one, never half of it (WAL mode: readers are not
  blocked while it runs), and a crash rolls back. A bulk write takes column-wise ``ViewBatch``es (keys and
  values as ``Packed`` buffers) and hands SQLite a few buffers and a JSON array per view, from which one
  ``INSERT ... SELECT`` makes Feast's rows in primary-key order;
* anything else Feast supports (Redis, ...): reads and writes go through Feast's own ``OnlineStore``
  interface (``online_read`` / ``online_write_batch``). A full refresh (``replace``) must first empty the
  replaced views: Feast's Redis store skips every row whose event time is not newer than the one it holds, so
  rewriting a state as of the same (or an earlier) cutoff, or after ingestion stamped it with the clock, would
  otherwise keep the old values. On a single Redis (or Sentinel's master) the emptying and every new row go in
  **one MULTI/EXEC transaction**, in Feast's own layout (its key, field and timestamp helpers), so a reader
  sees the old version or the new one. On Redis Cluster (a transaction cannot span its slots) and Feast's other
  stores the views are emptied (``delete_table``) and then written: not atomic, a reader may see an entity
  missing (its declared defaults) while the refresh runs.

Ingestion (small writes, ``apply``) writes Feast's rows (the columns and upsert of its ``online_write_batch``)
for every view an event feeds **all or nothing**: one SQLite transaction, or one MULTI/EXEC on Redis; with the
event log's position of the online state (``Position``) moved in the same transaction, compare-and-set, so
the state is always exactly "the log up to its position" (``trellis.online.service.OnlineFeatures.catch_up``).
Feast's other stores are written view by view through its interface, without a recorded position.

A SQLite store Trellis creates (``OnlineStore.create``, before ``feast apply``) has ``PAGE_SIZE`` pages and is in
WAL mode from its first byte; Feast then adds its tables to it. A store created by Feast alone (4 KiB pages)
works the same, with slower bulk writes: a page size is fixed when a database is created.
"""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from itertools import chain, pairwise
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from trellis.online.eventlog import Checkpointer

# feast.value_type.ValueType numbers used in the entity-key serialisation
_STRING, _INT32, _INT64 = 2, 3, 4
_KEY_TYPES = {"int64": _INT64, "int32": _INT32, "string": _STRING}
# the first byte of a serialised feast.types.Value of each logical type (field number << 3 | wire type)
_VALUE_TAGS = {"bytes": 0x0A, "string": 0x12, "int32": 0x18, "int64": 0x20, "float64": 0x29, "bool": 0x38}


# SQLite page size of the stores Trellis creates. Larger pages mean fewer pages, B-tree splits and WAL frames
# for a bulk write (the materialization of the default benchmark: 4 KiB 1.04 s, 16 KiB 0.82 s, 32 KiB 0.74 s
# of SQLite time, bench/README.md); smaller ones mean less to write for a streamed event, which changes a row
# or two of each group's table: each page it touches goes to the WAL whole (and back to the file at the next
# checkpoint). The writer in process, median of 4 A/B rounds (bench_ingest.writer_in_process): 32 KiB 197 us
# per event written alone and 112 us per event in writes of 100; 8 KiB 159 and 75 us. A state's tail is written
# when it folds its delta (``state.merge_states``), a few kilobytes: it spills to an overflow page at 8 KiB
# only for the busiest entities. Readers do not map the file (a mapped file truncated under a reader is a SIGBUS
# that kills the process); each keeps READER_CACHE_KIB of pages in its own cache instead.
PAGE_SIZE = 8192
READER_CACHE_KIB = 16384
_READ_CHUNK = 30_000  # keys bound in one read statement (SQLite allows 32,766 variables)


class StoreUnavailable(RuntimeError):
    """The online store cannot be read or written (missing, locked, unreachable); the message says which."""


class PositionMoved(RuntimeError):
    """Another writer moved the consumer's event-log position meanwhile: nothing was written; read and retry."""


@dataclass(frozen=True, order=True)
class Position:
    """What a stored state holds of the event log: every entry up to ``offset`` applied, on top of the
    materialization ``epoch`` (a new epoch per full refresh, so a writer that read the state before a refresh
    cannot write over it)."""

    epoch: str
    offset: int

    def __str__(self) -> str:
        return f"{self.epoch} {self.offset}"

    @classmethod
    def parse(cls, text: str) -> Position:
        epoch, offset = text.rsplit(" ", 1)
        return cls(epoch, int(offset))


# Trellis' own tables in a SQLite store. Feast names its tables <project>_<view> from letters, digits and
# underscores, so a name with a hyphen can never be one of them (a view named "meta" cannot collide).
POSITIONS = "trellis-log-positions"  # consumer positions in the event log
META = "trellis-meta"  # facts about the last full refresh (OnlineStore.meta)
WRITE_LOCK_WAIT = 2.0  # seconds a small write waits for SQLite's write lock before a 503


def _has_positions(conn: sqlite3.Connection) -> bool:
    return conn.execute("select 1 from sqlite_master where name = ?", (POSITIONS,)).fetchone() is not None


def _get_position(conn: sqlite3.Connection, consumer: str) -> Position | None:
    if not _has_positions(conn):
        return None
    row = conn.execute(f'select epoch, log_offset from "{POSITIONS}" where consumer = ?', (consumer,)).fetchone()
    return None if row is None else Position(row[0], row[1])


def _set_position(conn: sqlite3.Connection, consumer: str, position: Position) -> None:
    conn.execute(f'create table if not exists "{POSITIONS}" (consumer TEXT PRIMARY KEY, epoch TEXT NOT NULL, '
                 f"log_offset INTEGER NOT NULL)")
    conn.execute(f'insert into "{POSITIONS}" values (?, ?, ?) on conflict(consumer) do update set '
                 f"epoch = excluded.epoch, log_offset = excluded.log_offset", (consumer, position.epoch, position.offset))


def _reason(exc: sqlite3.Error) -> str:
    """SQLite's message without file paths (they never reach a client)."""
    return str(exc).split(": /")[0]


# ---------------------------------------------------------------------------------------------------------
# Bytes, exactly as Feast writes them.


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64/int32 values take ten bytes, two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_key(join_key: str, value: Any, key_type: str = "int64") -> bytes:
    """Feast's ``serialize_entity_key`` (version 3) for a single-column entity key."""
    return key_encoder(join_key, key_type)(value)


def key_encoder(join_key: str, key_type: str = "int64"):
    """A fast ``value -> key bytes`` for one entity (the constant prefix built once)."""
    name = join_key.encode()
    head = struct.pack("<III", 1, _STRING, len(name)) + name
    kind = _KEY_TYPES[key_type]
    if kind == _INT64:
        prefix, pack = head + struct.pack("<II", _INT64, 8), struct.Struct("<q").pack
        return lambda value: prefix + pack(int(value))
    if kind == _INT32:
        prefix, pack = head + struct.pack("<II", _INT32, 4), struct.Struct("<i").pack
        return lambda value: prefix + pack(int(value))
    prefix = head + struct.pack("<I", _STRING)
    return lambda value: prefix + struct.pack("<I", len(b := str(value).encode())) + b


def encode_keys(join_key: str, key_type: str, values: Sequence[Any] | np.ndarray) -> list[bytes]:
    """``key_encoder`` over a column; integer keys are packed with numpy (one buffer, then sliced)."""
    return pack_keys(join_key, key_type, values).tolist()


def pack_keys(join_key: str, key_type: str, values: Sequence[Any] | np.ndarray) -> Packed:
    """``encode_keys`` as one ``Packed`` buffer (integer keys: one numpy matrix, no object per key)."""
    if _KEY_TYPES[key_type] == _STRING:
        encode = key_encoder(join_key, key_type)
        return Packed.of([encode(v) for v in values])
    width = 8 if key_type == "int64" else 4
    prefix = np.frombuffer(key_encoder(join_key, key_type)(0)[:-width], dtype=np.uint8)
    numbers = np.asarray(values, dtype=f"<i{width}")
    matrix = np.hstack([np.broadcast_to(prefix, (len(numbers), len(prefix))), numbers.view(np.uint8).reshape(-1, width)])
    return Packed(matrix, np.full(len(numbers), matrix.shape[1], dtype=np.int64))


def key_order(key_type: str, values: np.ndarray) -> np.ndarray:
    """The permutation that sorts integer key values into the byte order of their Feast keys (little-endian:
    the lowest byte first), the order of the online tables' primary key."""
    width = 8 if key_type == "int64" else 4
    numbers = np.asarray(values, dtype=f"<i{width}").view(f"<u{width}")
    return np.argsort(numbers.byteswap(), kind="stable")


def _rows_of(matrix: np.ndarray) -> list[bytes]:
    """One bytes object per row of a C-contiguous uint8 matrix."""
    width = matrix.shape[1]
    if width == 0:
        return [b""] * len(matrix)
    buffer = np.ascontiguousarray(matrix).tobytes()
    return [buffer[i:i + width] for i in range(0, len(buffer), width)]


class Packed(Sequence[bytes]):
    """A column of byte strings in one buffer: item ``i`` is ``data[i, :length[i]]`` (``data`` an (n, width)
    uint8 matrix, zero-padded). What the bulk write hands SQLite as a few large parameters, without one Python
    object per value; indexing and ``tolist`` give the bytes."""

    __slots__ = ("data", "length")

    def __init__(self, data: np.ndarray, length: np.ndarray):
        self.data = np.ascontiguousarray(data, dtype=np.uint8)
        self.length = np.asarray(length, dtype=np.int64)
        if self.data.ndim != 2 or len(self.data) != len(self.length):
            raise ValueError("Packed: data must be an (n, width) matrix with one length per row")

    @classmethod
    def of(cls, items: Sequence[bytes]) -> Packed:
        lengths = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
        width = int(lengths.max(initial=0))
        buffer = bytearray(b"".join(item.ljust(width, b"\0") for item in items))
        return cls(np.frombuffer(buffer, dtype=np.uint8).reshape(len(items), width), lengths)

    def __len__(self) -> int:
        return len(self.length)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return self.tolist()[i]
        return self.data[i, :self.length[i]].tobytes()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Packed | list | tuple):
            return self.tolist() == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Packed({self.tolist()!r})"

    def tolist(self) -> list[bytes]:
        rows = _rows_of(self.data)
        width = self.data.shape[1]
        if (self.length == width).all():
            return rows
        return [row if n == width else row[:n] for row, n in zip(rows, self.length.tolist(), strict=True)]

    def take(self, order: np.ndarray) -> Packed:
        return Packed(self.data[order], self.length[order])


def _null_mask(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "f":
            return np.isnan(values)
        if values.dtype.kind == "O":
            return np.array([v is None or (isinstance(v, float) and v != v) for v in values.tolist()], dtype=bool)
        return np.zeros(len(values), dtype=bool)
    return np.array([v is None or (isinstance(v, float) and v != v) for v in values], dtype=bool)


def _varints(tag: int, numbers: np.ndarray) -> Packed:
    """``tag`` + the protobuf varint of each int64 (negative numbers: ten bytes, two's complement)."""
    unsigned = numbers.astype(np.int64).view(np.uint64)
    length = np.ones(len(unsigned), dtype=np.int64)
    for shift in range(7, 64, 7):
        length += (unsigned >> np.uint64(shift)) > 0
    size = int(length.max(initial=1))
    matrix = np.zeros((len(unsigned), size + 1), dtype=np.uint8)
    matrix[:, 0] = tag
    for j in range(size):
        byte = ((unsigned >> np.uint64(7 * j)) & np.uint64(0x7F)).astype(np.uint8)
        byte[length > j + 1] |= 0x80
        byte[length <= j] = 0
        matrix[:, j + 1] = byte
    return Packed(matrix, length + 1)


def encode_values(logical: str, values: Sequence[Any] | np.ndarray, null: np.ndarray | None = None) -> list[bytes]:
    """Serialised ``feast.types.Value`` for a column of one logical type; None, NaN and the rows ``null`` marks
    become Feast's null (an empty message), as ``feast materialize`` writes them. Numbers go through numpy."""
    if logical in ("bytes", "string"):
        # Built value by value anyway: the list as built, not through a ``Packed`` matrix and back. Every value
        # padded to the longest and cut again cost the online writer 950 us a write for 87 state blobs of 8-11 kB,
        # against 40 us for the list.
        out = _delimited(_VALUE_TAGS[logical], values)
        if null is not None:
            for i in np.flatnonzero(null).tolist():
                out[i] = b""
        return out
    return pack_values(logical, values, null).tolist()


def _delimited(tag: int, values: Sequence[Any] | np.ndarray) -> list[bytes]:
    """``tag`` + length + data for each bytes or string value; None gives Feast's null (empty)."""
    head = bytes((tag,))
    out = []
    for v in values:
        if v is None:
            out.append(b"")
        else:
            data = v if isinstance(v, bytes) else str(v).encode()
            out.append(b"".join((head, _varint(len(data)), data)))
    return out


def pack_values(logical: str, values: Sequence[Any] | np.ndarray, null: np.ndarray | None = None) -> Packed:
    """``encode_values`` as one ``Packed`` buffer (numbers: numpy matrices, no object per value)."""
    if logical not in _VALUE_TAGS:
        raise ValueError(f"no Feast value encoding for logical type {logical!r}")
    tag = _VALUE_TAGS[logical]
    if logical in ("bytes", "string"):
        packed = Packed.of(_delimited(tag, values))
    else:
        numbers, null = _numbers(logical, values, null)
        if logical == "float64":
            matrix = np.empty((len(numbers), 9), dtype=np.uint8)
            matrix[:, 0] = tag
            matrix[:, 1:] = numbers.view(np.uint8).reshape(-1, 8)
            packed = Packed(matrix, np.full(len(numbers), 9, dtype=np.int64))
        elif logical == "bool":
            matrix = np.empty((len(numbers), 2), dtype=np.uint8)
            matrix[:, 0] = tag
            matrix[:, 1] = numbers.astype(bool)
            packed = Packed(matrix, np.full(len(numbers), 2, dtype=np.int64))
        else:
            packed = _varints(tag, numbers)
    if null is not None:  # Feast's null: an empty message
        packed.data[null] = 0
        packed.length[null] = 0
    return packed


def value_texts(logical: str, values: Sequence[Any] | np.ndarray, null: np.ndarray | None = None) -> list[str | None]:
    """The ``value_text`` column Feast's SQLite store writes next to each value (``extract_text_and_num``):
    ``str`` of a number or bool, the string itself, NULL for bytes and for Feast's null."""
    if logical not in _VALUE_TAGS:
        raise ValueError(f"no Feast value encoding for logical type {logical!r}")
    if logical == "bytes":
        return [None] * len(values)
    if logical == "string":
        out = [None if v is None else str(v) for v in values]
    else:
        numbers, null = _numbers(logical, values, null)
        out = list(map(repr if logical == "float64" else str, numbers.tolist()))
    if null is not None:
        for i in np.flatnonzero(null).tolist():
            out[i] = None
    return out


def _numbers(logical: str, values: Sequence[Any] | np.ndarray,
             null: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """A numeric column as a numpy array of its type (nulls as 0 or NaN) and its null mask (None: no nulls)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iub" and logical != "float64":
        numbers = values
    elif isinstance(values, np.ndarray) and values.dtype.kind == "f":
        numbers = values
        null = np.isnan(values) if null is None else null | np.isnan(values)
    else:
        items = values.tolist() if isinstance(values, np.ndarray) else list(values)
        missing = np.array([v is None or (isinstance(v, float) and v != v) for v in items], dtype=bool)
        null = missing if null is None else null | missing
        fill = np.nan if logical == "float64" else 0
        numbers = np.array([fill if m else v for v, m in zip(items, missing.tolist(), strict=True)])
    dtype = {"float64": "<f8", "int64": np.int64, "int32": np.int32, "bool": bool}[logical]
    if logical != "float64" and numbers.dtype.kind == "f":
        numbers = np.where(np.isnan(numbers), 0, numbers)
    numbers = numbers.astype(dtype)
    return numbers, (null if null is not None and null.any() else None)


def value_text(message: bytes | None) -> str | None:
    """``value_text`` of one serialised ``feast.types.Value`` (what ``value_texts`` gives for its type)."""
    if not message:
        return None
    tag = message[0]
    if tag == 0x29:
        return repr(struct.unpack_from("<d", message, 1)[0])
    if tag in (0x20, 0x18, 0x38, 0x12):
        number, i = _read_varint(message, 1)
        if tag == 0x12:
            return message[i:i + number].decode()
        if tag == 0x38:
            return str(bool(number))
        bits = 64 if tag == 0x20 else 32
        number &= (1 << bits) - 1
        return str(number - (1 << bits) if number >> (bits - 1) else number)
    if tag == 0x0A:
        return None
    raise ValueError(f"no value_text rule for a Feast value with tag {tag:#x}")


def decode_bytes_value(message: bytes | None) -> bytes | None:
    """The ``bytes_val`` of a serialised ``feast.types.Value`` (None for Feast's null)."""
    if not message:
        return None
    if message[0] != 0x0A:
        raise StoreUnavailable(f"expected a bytes value in the online store, got tag {message[0]:#x}")
    size, i = _read_varint(message, 1)
    return message[i:i + size]


def _read_varint(message: bytes, i: int) -> tuple[int, int]:
    """The protobuf varint at ``message[i:]`` and the index after it."""
    number = shift = 0
    while True:
        byte = message[i]
        number |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            return number, i
        shift += 7


def feast_event_ts(value: datetime) -> int:
    """What Feast's SQLite store keeps for an event time: whole epoch seconds of the naive UTC time, read as
    local time (``int(datetime.timestamp())`` in its adapter). Kept identical so rows compare byte for byte."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return int(value.timestamp())


# ---------------------------------------------------------------------------------------------------------
# The store.

Row = tuple[bytes, Mapping[str, bytes], datetime]  # (entity key bytes, feature -> value bytes, event time)

_EPOCH = datetime(1970, 1, 1)


def feast_event_seconds(event_us: np.ndarray) -> np.ndarray:
    """``feast_event_ts`` over a column of naive-UTC epoch microseconds (numpy where local time is UTC)."""
    event_us = np.asarray(event_us, dtype=np.int64)
    if time.timezone == 0 and not time.daylight:
        seconds = event_us // 1_000_000
        return seconds + ((seconds < 0) & (event_us % 1_000_000 != 0))  # int() of a float truncates to zero
    return np.array([feast_event_ts(_EPOCH + timedelta(microseconds=u)) for u in event_us.tolist()], dtype=np.int64)


def _as_batch(batch: ViewBatch | Iterable[Row]) -> ViewBatch:
    return batch if isinstance(batch, ViewBatch) else ViewBatch.from_rows(batch)


@dataclass(frozen=True)
class RowList:
    """A small write's rows of one view (``apply``, ``merge``) as given, the later of two for one key winning:
    unlike a ``ViewBatch`` (a bulk write's columns), rows may carry different features (a streamed event
    writes an entity's state delta alone)."""

    items: list[Row]

    @classmethod
    def of(cls, rows: ViewBatch | Iterable[Row]) -> ViewBatch | RowList:
        if isinstance(rows, ViewBatch):
            return rows
        return cls(list({key: (key, values, when) for key, values, when in rows}.values()))

    def __len__(self) -> int:
        return len(self.items)

    def rows(self) -> Iterator[Row]:
        return iter(self.items)


def _epoch_us(value: datetime) -> int:
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return (value - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class ViewBatch:
    """One view's rows, column-wise: entity ``i`` has the key bytes ``keys[i]``, the event time ``event_us[i]``
    (naive-UTC epoch microseconds) and, for every feature, the serialised value ``values[feature][i]`` and
    Feast's text of it ``texts[feature][i]`` (``value_texts``). Keys are unique; in ascending byte order a
    SQLite write skips its sort."""

    keys: Sequence[bytes]
    event_us: np.ndarray
    values: Mapping[str, Sequence[bytes]]
    texts: Mapping[str, Sequence[str | None]]

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def from_rows(cls, rows: Iterable[Row]) -> ViewBatch:
        """From ``(key, {feature: value bytes}, event time)`` rows; of two rows for one key the later wins.
        Every row must carry the same features."""
        latest: dict[bytes, tuple[Mapping[str, bytes], datetime]] = {}
        for key, values, when in rows:
            latest[key] = (values, when)
        names = sorted({name for values, _ in latest.values() for name in values})
        if any(len(values) != len(names) for values, _ in latest.values()):
            raise ValueError("every row of a view must carry the same features")
        keys = sorted(latest)
        columns = {name: [latest[k][0][name] for k in keys] for name in names}
        return cls(keys, np.array([_epoch_us(latest[k][1]) for k in keys], dtype=np.int64), columns,
                   {name: [value_text(v) for v in column] for name, column in columns.items()})

    def rows(self) -> Iterator[Row]:
        """The batch as ``Row``s (event times as naive-UTC datetimes), for Feast's ``online_write_batch``."""
        columns = {name: _as_list(column) for name, column in self.values.items()}
        for i, key in enumerate(_as_list(self.keys)):
            yield (key, {name: column[i] for name, column in columns.items()},
                   _EPOCH + timedelta(microseconds=int(self.event_us[i])))

    def prepare(self) -> ViewBatch:
        """Build now what a SQLite write binds (``_SqliteRows``), e.g. in a producer thread while the writer is
        busy with another view; a write calls it anyway. Returns the batch."""
        self._sqlite  # noqa: B018 - computed and cached
        return self

    @cached_property
    def _sqlite(self) -> _SqliteRows:
        return _SqliteRows.of(self)


def _as_list(column: Sequence[Any]) -> list[Any]:
    return column.tolist() if isinstance(column, Packed) else list(column)


def _digits(numbers: np.ndarray) -> tuple[bytes, int, int]:
    """Integers as fixed-width decimal ASCII, after subtracting the smallest: (buffer, width, smallest). SQL reads
    number ``i`` back with ``cast(substr(buffer, i * width + 1, width) as integer) + smallest``."""
    numbers = np.asarray(numbers, dtype=np.int64)
    low = int(numbers.min(initial=0))
    shifted = numbers.view(np.uint64) - np.uint64(low & (2**64 - 1))  # wraps to the (non-negative) difference
    width = len(str(int(shifted.max(initial=0))))
    powers = np.uint64(10) ** np.arange(width - 1, -1, -1, dtype=np.uint64)
    return ((shifted[:, None] // powers) % np.uint64(10) + np.uint64(48)).astype(np.uint8).tobytes(), width, low


@dataclass(frozen=True)
class _SqliteRows:
    """A view's rows as the few parameters of one ``INSERT ... SELECT``: SQLite iterates the JSON array of the
    value texts (one element per (entity, feature), in primary-key order) and slices every other column out of
    fixed-width buffers by the element's index: no Python object and no bound parameter per value."""

    entities: int
    names: list[str]
    select: str  # Feast's columns: entity_key, feature_name, value, value_text, event_ts, created_ts
    params: dict[str, Any]
    nul_texts: list[tuple[int, str]]  # texts with a NUL character (JSON cannot carry them), by element index

    @classmethod
    def of(cls, batch: ViewBatch) -> _SqliteRows:
        names = sorted(batch.values)
        keys = batch.keys if isinstance(batch.keys, Packed) else Packed.of(list(batch.keys))
        values = [batch.values[n] if isinstance(batch.values[n], Packed) else Packed.of(list(batch.values[n]))
                  for n in names]
        texts = [batch.texts[n] for n in names]
        seconds = feast_event_seconds(batch.event_us)
        listed = keys.tolist()
        if any(a >= b for a, b in pairwise(listed)):
            order = sorted(range(len(listed)), key=listed.__getitem__)
            if any(listed[a] == listed[b] for a, b in pairwise(order)):
                raise ValueError("an entity key occurs twice in one batch")
            keys, seconds = keys.take(np.array(order)), seconds[order]
            values = [v.take(np.array(order)) for v in values]
            texts = [[t[i] for i in order] for t in texts]
        n, f = len(keys), len(names)
        params: dict[str, Any] = {}

        def read(name: str, numbers: np.ndarray, index: str) -> str:  # an integer column (SQL literal if constant)
            if len(numbers) and (numbers == numbers[0]).all():
                return str(int(numbers[0]))
            params[name], width, low = _digits(numbers)  # a blob cast to integer is read as text
            return f"(cast(substr(:{name}, {index} * {width} + 1, {width}) as integer){f' + {low}' if low else ''})"

        entity = f"(j.key / {f})"
        params["keys"] = keys.data.tobytes()
        key = f"substr(:keys, {entity} * {keys.data.shape[1]} + 1, {read('key_len', keys.length, entity)})"
        width = max([1, *(v.data.shape[1] for v in values)])
        matrix = np.zeros((n, f, width), dtype=np.uint8)
        for i, v in enumerate(values):
            matrix[:, i, :v.data.shape[1]] = v.data
        params["values"] = matrix.tobytes()
        lengths = np.stack([v.length for v in values], axis=1).reshape(-1) if f else np.zeros(0, dtype=np.int64)
        value = f"substr(:values, j.key * {width} + 1, {read('value_len', lengths, 'j.key')})"
        flat = list(chain.from_iterable(zip(*texts, strict=True)))
        params["texts"] = json.dumps(flat, ensure_ascii=False)
        nul_texts = []
        if "\\u0000" in params["texts"]:  # SQLite's JSON ends a string at \u0000: these go through a side table
            nul_texts = [(i, t) for i, t in enumerate(flat) if t is not None and "\0" in t]
            for i, _ in nul_texts:
                flat[i] = None
            params["texts"] = json.dumps(flat, ensure_ascii=False)
        text = "j.value" if not nul_texts else \
            "coalesce(j.value, (select t from temp.trellis_texts where k = j.key))"
        select = (f"select {key}, n.name, {value}, {text}, {read('seconds', seconds, entity)}, NULL "
                  f"from json_each(:texts) j cross join temp.trellis_names n on n.i = j.key % {f}")
        return cls(n, names, select, params, nul_texts)


class _Reader:
    """A thread's reader connection; ``lock`` is held while it reads, so ``close`` from another thread never
    closes a connection in use (sqlite3 crashes on that)."""

    __slots__ = ("closed", "conn", "identity", "lock")

    def __init__(self, conn: sqlite3.Connection, identity: tuple[int, int]):
        self.conn, self.identity, self.lock, self.closed = conn, identity, threading.Lock(), False

    def close(self) -> None:
        with self.lock:
            if not self.closed:
                self.closed = True
                self.conn.close()


class OnlineStore:
    """Feast's online store of a generated repo (``feature_repo/``), for Trellis' reads and bulk writes."""

    def __init__(self, repo: str | Path):
        self.repo = Path(repo).resolve()
        config_path = self.repo / "feature_store.yaml"
        try:
            config = yaml.safe_load(config_path.read_text())
        except FileNotFoundError:
            raise StoreUnavailable(f"no Feast repo at {self.repo} (feature_store.yaml missing)") from None
        self.project = config["project"]
        online = config.get("online_store") or {"type": "sqlite", "path": "data/online_store.db"}
        self.kind = online.get("type", "sqlite")
        self.path = (self.repo / online.get("path", "data/online_store.db")).resolve() \
            if self.kind == "sqlite" else None
        self._local = threading.local()
        self._readers: list[_Reader] = []
        self._union_sql: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}  # read_many statements
        self._write_lock = threading.Lock()
        self._write_conn: sqlite3.Connection | None = None  # small writes (``apply``), on the file ``_write_identity``
        self._write_identity: tuple[int, int] | None = None
        self._checkpoints: Checkpointer | None = None  # started with the small-write connection
        self._feast: Any = None  # FeatureStore, loaded on first use of Feast's interface

    def table(self, view: str) -> str:
        return f"{self.project}_{view}"

    def create(self) -> bool:
        """Create the SQLite store file (``PAGE_SIZE`` pages, WAL mode) unless it exists, for ``feast apply`` to
        add its tables to; True if it was created. Other backends: nothing to do (False)."""
        if self.kind != "sqlite" or (self.path.exists() and self.path.stat().st_size > 0):
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute(f"pragma page_size={PAGE_SIZE}")  # takes effect when the first page is written:
            conn.execute("pragma journal_mode=wal")  # now (the header records WAL mode)
        finally:
            conn.close()
        return True

    # -- SQLite --------------------------------------------------------------------------------------------

    def _identity(self) -> tuple[int, int]:
        """(device, inode) of the store file at ``path`` now."""
        try:
            st = os.stat(self.path)
        except OSError:
            raise StoreUnavailable("online store does not exist: materialize it first (Dagster asset "
                                   "online/materialized)") from None
        return st.st_dev, st.st_ino

    def _reader(self) -> _Reader:
        """This thread's reader, on the file that is at ``path`` now: a store file replaced (a new inode) or
        renamed away is noticed at the next read (one ``stat``, ~1 us), never answered from the old one.
        Readers do not map the file: a mapped file truncated by another process kills the reader with SIGBUS,
        where a read of an unmapped one fails with an error (``StoreUnavailable``)."""
        try:
            identity = self._identity()
        except StoreUnavailable:
            self._drop_reader()
            raise
        reader: _Reader | None = getattr(self._local, "reader", None)
        if reader is not None and (reader.closed or reader.identity != identity):
            self._drop_reader()
            reader = None
        if reader is None:
            try:
                conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=0.5,
                                       check_same_thread=False, isolation_level=None)
                conn.execute(f"pragma cache_size=-{READER_CACHE_KIB}")
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"online store: {_reason(exc)}") from None
            reader = self._local.reader = _Reader(conn, identity)
            with self._write_lock:
                self._readers.append(reader)
        return reader

    def _query(self, sql: str, params: Sequence[Any], what: str = "") -> list[tuple]:
        """Rows of one read statement on this thread's reader; any SQLite error is ``StoreUnavailable`` (and the
        reader is dropped, so the next read opens the store anew: the service recovers by itself once the
        store is back)."""
        while True:
            reader = self._reader()
            with reader.lock:  # close() from another thread waits for this read
                if reader.closed:
                    continue
                try:
                    return reader.conn.execute(sql, params).fetchall()
                except sqlite3.Error as exc:
                    error = exc
            self._drop_reader()
            raise StoreUnavailable(f"online store{what}: {_reason(error)}") from None

    def _drop_reader(self) -> None:
        reader = getattr(self._local, "reader", None)
        self._local.reader = None
        if reader is not None:
            with self._write_lock:
                if reader in self._readers:
                    self._readers.remove(reader)
            reader.close()

    def close(self) -> None:
        """Close every reader (each thread opens a new one on its next read; a read in progress finishes first)
        and the small-write connection."""
        with self._write_lock:
            readers, self._readers = self._readers, []
            self._drop_writer()
            checkpoints, self._checkpoints = self._checkpoints, None
        for reader in readers:
            reader.close()
        if checkpoints is not None:
            checkpoints.close()

    def ping(self) -> None:
        """Raise StoreUnavailable unless the store can be read now."""
        if self.kind != "sqlite":  # one real read: building a FeatureStore does not connect (e.g. to Redis)
            store = self._feature_store()
            try:
                views = store.list_feature_views()
            except Exception as exc:
                raise StoreUnavailable(f"Feast repo {self.repo}: {exc}") from None
            if views:
                view = views[0]
                self._feast_read(view.name, [encode_key(view.join_keys[0], 0)], [view.features[0].name])
            return
        self._query("select count(*) from sqlite_master", ())

    def read_values(self, view: str, keys: Sequence[bytes], feature: str) -> list[bytes | None]:
        """The serialised value of ``feature`` for each entity key (None when absent)."""
        return [values[0] for values in self.read_rows(view, keys, (feature,))]

    def read_rows(self, view: str, keys: Sequence[bytes], features: Sequence[str]) -> list[tuple[bytes | None, ...]]:
        """The serialised values of ``features`` for each entity key (None where absent), in one read."""
        if self.kind != "sqlite":
            return self._feast_read(view, keys, features)
        if len(keys) == 1:
            rows = self._query(f'select feature_name, value from "{self.table(view)}" where entity_key = ? and '
                               f'feature_name in ({",".join("?" * len(features))})', (keys[0], *features),
                               f", view {view!r}")
            found = dict(rows)
            return [tuple(found.get(f) for f in features)]
        return self._values_in(lambda sql, params: self._query(sql, params, f", view {view!r}"), view, keys, features)

    def read_many(self, wanted: Sequence[tuple[str, bytes]], features: Sequence[str]) -> list[tuple[bytes | None, ...]]:
        """``read_rows`` for each ``(view, entity key)``. SQLite: one ``union all`` statement over the views'
        tables, one round trip instead of one per view."""
        if self.kind != "sqlite" or len(wanted) < 2:
            return [self.read_rows(view, [key], features)[0] for view, key in wanted]
        views = tuple(view for view, _ in wanted)
        features = tuple(features)
        sql = self._union_sql.get((views, features))
        if sql is None:
            names = ",".join("?" * len(features))
            sql = self._union_sql[views, features] = " union all ".join(
                f'select {i}, feature_name, value from "{self.table(view)}" where entity_key = ? and '
                f"feature_name in ({names})" for i, view in enumerate(views))
        rows = self._query(sql, [x for _, key in wanted for x in (key, *features)],
                           f", views {', '.join(repr(view) for view in views)}")
        found: dict[tuple[int, str], bytes] = {(i, name): value for i, name, value in rows}
        return [tuple(found.get((i, f)) for f in features) for i in range(len(wanted))]

    def write(self, batches: Mapping[str, ViewBatch | Iterable[Row]] | Iterable[tuple[str, ViewBatch | Iterable[Row]]],
              *, replace: Iterable[str] = (), position: tuple[str, Position] | None = None,
              meta: Mapping[str, str] | None = None) -> int:
        """Write rows of several views at once; ``replace`` views are emptied first (a full refresh).
        ``batches``: a mapping of views to batches, or ``(view, batch)`` pairs, which may still be in the making
        (a generator): SQLite writes each as it comes. SQLite: one transaction, so readers never see part of
        it; it begins with the first batch. ``position``: ``(consumer, position)`` recorded in the same
        transaction (what the written state holds of the event log); ``meta``: facts about what was written
        (``meta``), in the same transaction too. Returns the number of values written."""
        pairs = batches.items() if isinstance(batches, Mapping) else batches
        replace = set(replace)
        if self.kind != "sqlite":
            batches = {view: _as_batch(batch) for view, batch in pairs}
            replaced = {view: batch for view, batch in batches.items() if view in replace}
            with self._write_lock:
                written = self._redis_transaction(replaced, replace=True, position=position, meta=meta) \
                    if replaced else 0
                if written is None and (position is not None or meta):
                    raise StoreUnavailable(f"online store ({self.kind}) cannot record an event-log position "
                                           f"atomically; use sqlite or redis")
                if written is None:
                    self._feast_clear(list(replaced))
                    written = self._feast_write({view: batch.rows() for view, batch in replaced.items()})
                return written + self._feast_write({view: batch.rows() for view, batch in batches.items()
                                                    if view not in replace})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with self._write_lock:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                conn.execute("pragma journal_mode=wal")
                # A bulk write appends in key order, so a page once full is not touched again: a small cache (8 MiB,
                # this connection only) spills it to the WAL early. Measured on the default benchmark, 32 KiB
                # pages: 0.65 s of SQLite time with 4-8 MiB, 0.70 s with 64 MiB (bench/README.md).
                conn.execute("pragma cache_size=-8192")
                conn.execute("pragma temp_store=memory")  # the names tables below
                for view, batch in pairs:
                    batch = _as_batch(batch).prepare()
                    if not conn.in_transaction:
                        conn.execute("begin immediate")
                    written += self._write_view(conn, self.table(view), batch, view in replace)
                if not conn.in_transaction:
                    conn.execute("begin immediate")
                if position is not None:
                    _set_position(conn, *position)
                if meta:
                    conn.execute(f'create table if not exists "{META}" (key TEXT PRIMARY KEY, value TEXT NOT NULL)')
                    conn.executemany(f'insert into "{META}" values (?, ?) on conflict(key) do update set '
                                     f"value = excluded.value", list(meta.items()))
                conn.execute("commit")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("rollback")
                raise
            finally:
                conn.close()
        return written

    # -- small writes: ingestion and log catch-up -------------------------------------------------------------

    def position(self, consumer: str) -> Position | None:
        """What the stored state holds of the event log for ``consumer`` (None: never recorded)."""
        if self.kind == "sqlite":
            if not self._query("select 1 from sqlite_master where name = ?", (POSITIONS,)):
                return None
            rows = self._query(f'select epoch, log_offset from "{POSITIONS}" where consumer = ?', (consumer,))
            return Position(*rows[0]) if rows else None
        try:
            raw = self._redis_client().get(self._position_key(consumer))
        except Exception as exc:
            raise StoreUnavailable(f"online store ({self.kind}): {exc}") from None
        return None if raw is None else Position.parse(raw.decode())

    def meta(self, key: str) -> str | None:
        """A fact recorded with the last full refresh (``write(meta=...)``), None if never recorded."""
        if self.kind == "sqlite":
            if not self._query("select 1 from sqlite_master where name = ?", (META,)):
                return None
            rows = self._query(f'select value from "{META}" where key = ?', (key,))
            return rows[0][0] if rows else None
        try:
            raw = self._redis_client().get(self._meta_key(key))
        except Exception as exc:
            raise StoreUnavailable(f"online store ({self.kind}): {exc}") from None
        return None if raw is None else raw.decode()

    def apply(self, batches: Mapping[str, Iterable[Row]], *, consumer: str | None = None,
              expect: Position | None = None, position: Position | None = None) -> int:
        """Upsert rows of several views **all or nothing** (SQLite: one transaction; Redis: one MULTI/EXEC),
        and, with ``consumer``, move its recorded position from ``expect`` to ``position`` in the same
        transaction; ``PositionMoved`` (nothing written) when another writer moved it meanwhile. A failure is
        ``StoreUnavailable`` with nothing written. Returns the number of values written."""
        views = {view: RowList.of(rows) for view, rows in batches.items()}
        if self.kind != "sqlite":
            return self._apply_feast(views, consumer, expect, position)
        return self._transaction(lambda conn: sum(self._upsert(conn, self.table(view), batch.rows())
                                                  for view, batch in views.items()), consumer, expect, position)

    def merge(self, reads: Mapping[str, Sequence[bytes]], features: Sequence[str],
              merged: Callable[[dict[str, list[tuple[bytes | None, ...]]]], Mapping[str, Iterable[Row]]], *,
              consumer: str | None = None, expect: Position | None = None,
              position: Position | None = None) -> int:
        """Read, change and write in one go: the stored values of ``features`` for each key of ``reads`` ({view:
        keys}, as ``read_rows`` gives them) go to ``merged``, whose rows ({view: rows}) are written as by
        ``apply``, with the same position and all-or-nothing rules. SQLite reads inside the write transaction on
        the writing connection (its cache holds what it wrote last, and nothing can change between the read and
        the write); other stores read first, and the position check turns a write in between into
        ``PositionMoved``. Whatever ``merged`` raises leaves the store unchanged. Returns the values written."""
        if self.kind != "sqlite":
            current = {view: self.read_rows(view, keys, features) for view, keys in reads.items()}
            return self._apply_feast({view: RowList.of(rows) for view, rows in merged(current).items()},
                                     consumer, expect, position)

        def change(conn: sqlite3.Connection) -> int:
            current = {view: self._read_in(conn, view, keys, features) for view, keys in reads.items()}
            return sum(self._upsert(conn, self.table(view), rows) for view, rows in merged(current).items())

        return self._transaction(change, consumer, expect, position)

    def _apply_feast(self, views: Mapping[str, ViewBatch | RowList], consumer: str | None, expect: Position | None,
                     position: Position | None) -> int:
        """``apply`` on a store other than SQLite."""
        with self._write_lock:
            written = self._redis_transaction(views, replace=False, position=(consumer, position),
                                              check=True, expect=expect) if consumer else \
                self._redis_transaction(views, replace=False)
            if written is None:  # a store without transactions: Feast's interface, view by view
                if consumer is not None:
                    raise StoreUnavailable(f"online store ({self.kind}) cannot record an event-log position "
                                           f"atomically; use sqlite or redis")
                written = self._feast_write({view: batch.rows() for view, batch in views.items()})
            return written

    def _transaction(self, body: Callable[[sqlite3.Connection], int], consumer: str | None,
                     expect: Position | None, position: Position | None) -> int:
        """``body`` on the writing connection in one immediate transaction, with the consumer's position checked
        first and moved last; committed only when ``body`` returns."""
        with self._write_lock:
            conn = self._writer()
            try:
                conn.execute("begin immediate")
                if consumer is not None:
                    current = _get_position(conn, consumer)
                    if current != expect:
                        conn.execute("rollback")
                        raise PositionMoved(f"{consumer}: expected {expect}, found {current}")
                written = body(conn)
                if consumer is not None and position is not None:
                    _set_position(conn, consumer, position)
                conn.execute("commit")
                self._checkpoints.written()
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("rollback")
                self._drop_writer()
                raise StoreUnavailable(f"online store: {_reason(exc)}; nothing was written") from None
            except BaseException:
                if conn.in_transaction:
                    conn.execute("rollback")
                raise
        return written

    def open_writer(self) -> None:
        """Open the connection small writes use now (and start its checkpoints), so the first write after
        start-up does not pay for it; ``StoreUnavailable`` when the store cannot be opened."""
        if self.kind == "sqlite":
            with self._write_lock:
                self._writer()

    def _writer(self) -> sqlite3.Connection:
        """The connection small writes use (kept open; the caller holds ``_write_lock``)."""
        try:
            identity = self._identity()
        except StoreUnavailable:
            self._drop_writer()
            raise
        conn = self._write_conn
        if conn is not None and self._write_identity != identity:
            self._drop_writer()  # the file was replaced: never write into one that is gone
            conn = None
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=WRITE_LOCK_WAIT,
                                   check_same_thread=False, isolation_level=None)
            self._write_identity = identity
            # The state is derived from the event log, and its position is written in the same transaction: a
            # commit lost to a power cut loses its position too, and the next catch-up applies it again.
            conn.execute("pragma synchronous=normal")
            # No checkpoint inside a commit: copying the WAL back (whole pages) stalled every write behind it
            # (p99 of streamed events 17-20 ms against p98 2.9 ms); a thread beside the writes does it instead.
            conn.execute("pragma wal_autocheckpoint=0")
            # A write reads the tails it changes on this connection (``merge``): pages it wrote stay cached here.
            conn.execute(f"pragma cache_size=-{READER_CACHE_KIB}")
            if self._checkpoints is None:
                self._checkpoints = Checkpointer(self.path, "store-checkpoints")
            self._write_conn = conn
        return conn

    def _drop_writer(self) -> None:
        conn = self._write_conn
        self._write_conn = None
        if conn is not None:
            conn.close()

    @staticmethod
    def _upsert(conn: sqlite3.Connection, table: str, rows: Iterable[Row]) -> int:
        """Feast's ``online_write_batch`` rows (same columns and upsert) for a few entities."""
        values, stamps = [], {}
        for key, features, when in rows:
            stamp = stamps.get(when)
            if stamp is None:
                stamp = stamps[when] = feast_event_ts(when)
            values.extend((key, name, value, value_text(value), stamp) for name, value in features.items())
        conn.executemany(
            f'insert into "{table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
            f"values (?, ?, ?, ?, ?, NULL) on conflict(entity_key, feature_name) do update set "
            f"value = excluded.value, value_text = excluded.value_text, event_ts = excluded.event_ts, "
            f"created_ts = excluded.created_ts", values)
        return len(values)

    def _read_in(self, conn: sqlite3.Connection, view: str, keys: Sequence[bytes],
                 features: Sequence[str]) -> list[tuple[bytes | None, ...]]:
        """``read_rows`` on ``conn`` (inside its transaction)."""
        return self._values_in(lambda sql, params: conn.execute(sql, params).fetchall(), view, keys, features)

    def _values_in(self, run: Callable[[str, Sequence[Any]], list[tuple]], view: str, keys: Sequence[bytes],
                   features: Sequence[str]) -> list[tuple[bytes | None, ...]]:
        """The stored values of ``features`` for each of ``keys`` (None where absent), read by ``run(sql,
        params)`` with one ``IN`` list per ``_READ_CHUNK`` keys."""
        found: dict[tuple[bytes, str], bytes] = {}
        names = ",".join("?" * len(features))
        for start in range(0, len(keys), _READ_CHUNK):
            chunk = keys[start:start + _READ_CHUNK]
            found.update(((key, name), value) for key, name, value in run(
                f'select entity_key, feature_name, value from "{self.table(view)}" where feature_name in ({names}) '
                f'and entity_key in ({",".join("?" * len(chunk))})', (*features, *chunk)))
        return [tuple(found.get((k, f)) for f in features) for k in keys]

    @staticmethod
    def _write_view(conn: sqlite3.Connection, table: str, batch: ViewBatch, replace: bool) -> int:
        """One view into its table inside the caller's transaction: one ``INSERT ... SELECT`` over the batch's
        ``_SqliteRows`` (a handful of bound buffers), which SQLite turns into Feast's one row per (entity_key,
        feature_name), in that order, so the table and both its indexes grow at their ends (Feast's redundant
        ``<table>_ek`` index included: kept up to date this way it costs less than a rebuild after the inserts).
        A table or index missing (a store Feast has not set up) is created with Feast's columns and indexes."""
        conn.execute(
            f'create table if not exists "{table}" (entity_key BLOB, feature_name TEXT, value BLOB, '
            f'value_text TEXT, vector_value BLOB, event_ts timestamp, created_ts timestamp, '
            f'PRIMARY KEY(entity_key, feature_name))')
        conn.execute(f'create index if not exists "{table}_ek" on "{table}" (entity_key)')
        if replace:
            conn.execute(f'delete from "{table}"')
        rows = batch._sqlite
        if rows.entities and rows.names:
            conn.execute("create temp table trellis_names (i INTEGER PRIMARY KEY, name TEXT)")
            conn.executemany("insert into temp.trellis_names values (?, ?)", enumerate(rows.names))
            if rows.nul_texts:
                conn.execute("create temp table trellis_texts (k INTEGER PRIMARY KEY, t TEXT)")
                conn.executemany("insert into temp.trellis_texts values (?, ?)", rows.nul_texts)
            # The columns and the upsert Feast's online_write_batch uses (vector_value untouched); into a table
            # just emptied, a plain insert (the batch's keys are unique).
            upsert = "" if replace else (
                " where true on conflict(entity_key, feature_name) do update set value = excluded.value, "
                "value_text = excluded.value_text, event_ts = excluded.event_ts, created_ts = excluded.created_ts")
            conn.execute(f'insert into "{table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
                         f"{rows.select}{upsert}", rows.params)
            if rows.nul_texts:
                conn.execute("drop table temp.trellis_texts")
            conn.execute("drop table temp.trellis_names")
        return rows.entities * len(rows.names)

    # -- Feast's interface ---------------------------------------------------------------------------------

    def _feature_store(self) -> Any:
        if self._feast is None:
            from feast import FeatureStore

            try:
                self._feast = FeatureStore(repo_path=str(self.repo))
            except Exception as exc:  # Feast raises many kinds for a missing registry or unreachable store
                raise StoreUnavailable(f"Feast repo {self.repo}: {exc}") from None
        return self._feast

    def _view(self, name: str) -> Any:
        return self._feature_store().get_feature_view(name)

    def _feast_read(self, view: str, keys: Sequence[bytes], features: Sequence[str]) -> list[tuple[bytes | None, ...]]:
        from feast.infra.key_encoding_utils import deserialize_entity_key

        store = self._feature_store()
        provider = store._get_provider()
        protos = [deserialize_entity_key(k, store.config.entity_key_serialization_version) for k in keys]
        try:
            rows = provider.online_read(store.config, self._view(view), protos, list(features))
        except Exception as exc:
            raise StoreUnavailable(f"online store ({self.kind}), view {view!r}: {exc}") from None
        return [tuple(None if values is None or f not in values else values[f].SerializeToString() for f in features)
                for _, values in rows]

    def _feast_write(self, batches: Mapping[str, Iterable[Row]]) -> int:
        from feast.infra.key_encoding_utils import deserialize_entity_key
        from feast.protos.feast.types.Value_pb2 import Value

        store = self._feature_store()
        provider = store._get_provider()
        version = store.config.entity_key_serialization_version
        written = 0
        for view, rows in batches.items():
            data = []
            for key, values, when in rows:
                protos = {name: Value.FromString(value) for name, value in values.items()}
                data.append((deserialize_entity_key(key, version), protos, when, None))
                written += len(protos)
            try:
                provider.online_write_batch(store.config, self._view(view), data, None)
            except Exception as exc:
                raise StoreUnavailable(f"online store ({self.kind}), view {view!r}: {exc}") from None
        return written

    def _feast_clear(self, views: Sequence[str]) -> None:
        """Delete every row of ``views`` through Feast's online store where it offers that (Redis'
        ``delete_table``; Feast's other stores overwrite rows whatever their event time)."""
        store = self._feature_store()
        online = store._get_provider().online_store
        if not views or not hasattr(online, "delete_table"):
            return
        try:
            for view in views:
                online.delete_table(store.config, self._view(view))
        except Exception as exc:
            raise StoreUnavailable(f"online store ({self.kind}), views {', '.join(views)}: {exc}") from None

    def _redis_client(self) -> Any:
        store = self._feature_store()
        return store._get_provider().online_store._get_client(store.config.online_store)

    def _position_key(self, consumer: str) -> str:
        return f"trellis:{self.project}:position:{consumer}"

    def _meta_key(self, key: str) -> str:
        return f"trellis:{self.project}:meta:{key}"

    def _redis_transaction(self, batches: Mapping[str, ViewBatch | RowList], *, replace: bool,
                           position: tuple[str | None, Position | None] | None = None,
                           check: bool = False, expect: Position | None = None,
                           meta: Mapping[str, str] | None = None) -> int | None:
        """Write ``batches``' views on Feast's Redis store in one MULTI/EXEC transaction, in Feast's own layout
        (its key, field and timestamp helpers, as ``online_write_batch`` writes them). ``replace``: every field of
        those views goes first (Feast's ``delete_table``: its fields and ``_ts:<view>`` on every key of the
        project; a hash left empty disappears). ``position``: ``(consumer, position)`` set in the same transaction;
        with ``check``, the consumer's key is watched and ``PositionMoved`` raised (nothing written) unless it
        holds ``expect``. Returns the number of values written; None when the store is not a single Redis (Redis
        Cluster, other stores), where the caller writes non-atomically. For a refresh the keys to empty are
        scanned just before the transaction: an entity another process writes in between, and the new version
        lacks, keeps what that process wrote (it is newer than the refresh)."""
        store = self._feature_store()
        online = store._get_provider().online_store
        from feast.infra.online_stores.redis import RedisOnlineStore, RedisType, _versioned_fv_name

        config = store.config
        if not isinstance(online, RedisOnlineStore) or config.online_store.redis_type == RedisType.redis_cluster:
            return None
        import redis
        from feast.infra.key_encoding_utils import deserialize_entity_key
        from feast.infra.online_stores.helpers import _mmh3, _redis_key, _redis_key_prefix
        from feast.utils import make_tzaware
        from google.protobuf.timestamp_pb2 import Timestamp

        version, ttl = config.entity_key_serialization_version, config.online_store.key_ttl_seconds
        suffix = config.project.encode("utf8")
        consumer, new_position = position if position is not None else (None, None)
        try:
            client = online._get_client(config.online_store)
            views = {view: self._view(view) for view in batches}
            names = {view: _versioned_fv_name(fv, config) for view, fv in views.items()}
            held: list[tuple[bytes, list[bytes]]] = []
            if replace:
                # The fields of the replaced views by entity-key prefix: a group's values and its state share
                # their entity, so each prefix's keys are scanned once for both.
                fields: dict[bytes, list[bytes]] = {}
                for view, fv in views.items():
                    fields.setdefault(_redis_key_prefix(fv.join_keys), []).extend(
                        [*(_mmh3(f"{names[view]}:{f.name}") for f in fv.features), f"_ts:{names[view]}".encode()])
                held = [(key, wanted) for prefix, wanted in fields.items()  # every key holding them now
                        for key in client.scan_iter(prefix + b"*" + suffix, count=1000)]
            written = 0
            with client.pipeline(transaction=True) as pipe:
                if consumer is not None and check:
                    pipe.watch(self._position_key(consumer))
                    raw = pipe.get(self._position_key(consumer))
                    current = None if raw is None else Position.parse(raw.decode())
                    if current != expect:
                        raise PositionMoved(f"{consumer}: expected {expect}, found {current}")
                    pipe.multi()
                for key, wanted in held:
                    pipe.hdel(key, *wanted)
                for view, batch in batches.items():
                    ts_field = f"_ts:{names[view]}"
                    for key_bytes, values, when in batch.rows():
                        key = _redis_key(config.project, deserialize_entity_key(key_bytes, version),
                                         entity_key_serialization_version=version)
                        stamp = Timestamp()
                        stamp.FromDatetime(make_tzaware(when))
                        mapping: dict[Any, bytes] = {ts_field: stamp.SerializeToString()}
                        mapping.update((_mmh3(f"{names[view]}:{name}"), bytes(value)) for name, value in values.items())
                        pipe.hset(key, mapping=mapping)
                        if ttl:
                            pipe.expire(key, ttl)
                        written += len(values)
                if consumer is not None and new_position is not None:
                    pipe.set(self._position_key(consumer), str(new_position))
                for key, value in (meta or {}).items():
                    pipe.set(self._meta_key(key), value)
                pipe.execute()
        except redis.WatchError:
            raise PositionMoved(f"{consumer}: moved during the transaction") from None
        except PositionMoved:
            raise
        except Exception as exc:
            raise StoreUnavailable(f"online store ({self.kind}), views {', '.join(batches)}: {exc}; "
                                   f"nothing was written") from None
        return written



__all__ = [
    "OnlineStore",
    "Position",
    "PositionMoved",
    "Packed",
    "StoreUnavailable",
    "ViewBatch",
    "decode_bytes_value",
    "encode_key",
    "encode_keys",
    "encode_values",
    "feast_event_seconds",
    "feast_event_ts",
    "key_encoder",
    "key_order",
    "pack_keys",
    "pack_values",
    "value_text",
    "value_texts",
]
