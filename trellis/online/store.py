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
  blocked while it runs), and a crash rolls back. A bulk write takes column-wise ``ViewBatch``es: it stages
  one row per entity and lets SQLite unpivot them into Feast's rows in primary-key order; a full refresh
  drops the redundant ``<table>_ek`` index and rebuilds it from Feast's own DDL after the inserts;
* anything else Feast supports (Redis, ...): reads and writes go through Feast's own ``OnlineStore``
  interface (``online_read`` / ``online_write_batch``). On Redis a full refresh (``replace``) first empties
  the replaced views (Feast's ``delete_table``): Feast's Redis store skips every row whose event time is not
  newer than the one it holds, so rewriting a state as of the same (or an earlier) cutoff, or after
  ingestion stamped it with the clock, would otherwise keep the old values. Not atomic: readers may see an
  entity missing (its declared defaults) while the refresh runs.

Ingestion (small writes) always goes through Feast's ``online_write_batch``, the interface ``feast
materialize`` and push sources use.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# feast.value_type.ValueType numbers used in the entity-key serialisation
_STRING, _INT32, _INT64 = 2, 3, 4
_KEY_TYPES = {"int64": _INT64, "int32": _INT32, "string": _STRING}
# the first byte of a serialised feast.types.Value of each logical type (field number << 3 | wire type)
_VALUE_TAGS = {"bytes": 0x0A, "string": 0x12, "int32": 0x18, "int64": 0x20, "float64": 0x29, "bool": 0x38}


class StoreUnavailable(RuntimeError):
    """The online store cannot be read or written (missing, locked, unreachable); the message says which."""


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
    if _KEY_TYPES[key_type] == _STRING:
        encode = key_encoder(join_key, key_type)
        return [encode(v) for v in values]
    width = 8 if key_type == "int64" else 4
    prefix = np.frombuffer(key_encoder(join_key, key_type)(0)[:-width], dtype=np.uint8)
    numbers = np.asarray(values, dtype=f"<i{width}")
    return _rows_of(np.hstack([np.broadcast_to(prefix, (len(numbers), len(prefix))),
                               numbers.view(np.uint8).reshape(-1, width)]))


def key_order(key_type: str, values: np.ndarray) -> np.ndarray:
    """The permutation that sorts integer key values into the byte order of their Feast keys (little-endian:
    the lowest byte first), the order of the online tables' primary key."""
    width = 8 if key_type == "int64" else 4
    numbers = np.asarray(values, dtype=f"<i{width}").view(f"<u{width}")
    return np.argsort(numbers.byteswap(), kind="stable")


def _rows_of(matrix: np.ndarray) -> list[bytes]:
    """One bytes object per row of a C-contiguous uint8 matrix."""
    width = matrix.shape[1]
    buffer = np.ascontiguousarray(matrix).tobytes()
    return [buffer[i:i + width] for i in range(0, len(buffer), width)]


def _null_mask(values: Sequence[Any] | np.ndarray) -> np.ndarray:
    if isinstance(values, np.ndarray):
        if values.dtype.kind == "f":
            return np.isnan(values)
        if values.dtype.kind == "O":
            return np.array([v is None or (isinstance(v, float) and v != v) for v in values.tolist()], dtype=bool)
        return np.zeros(len(values), dtype=bool)
    return np.array([v is None or (isinstance(v, float) and v != v) for v in values], dtype=bool)


def _varints(tag: int, numbers: np.ndarray) -> list[bytes]:
    """``tag`` + the protobuf varint of each int64 (negative numbers: ten bytes, two's complement)."""
    unsigned = numbers.astype(np.int64).view(np.uint64)
    out: list[bytes] = [b""] * len(unsigned)
    length = np.ones(len(unsigned), dtype=np.int64)
    for shift in range(7, 64, 7):
        length += (unsigned >> np.uint64(shift)) > 0
    for size in np.unique(length).tolist():
        where = np.flatnonzero(length == size)
        chunk = unsigned[where]
        matrix = np.empty((len(where), size + 1), dtype=np.uint8)
        matrix[:, 0] = tag
        for j in range(size):
            byte = (chunk >> np.uint64(7 * j)) & np.uint64(0x7F)
            matrix[:, j + 1] = byte | np.uint64(0x80) if j < size - 1 else byte
        for i, encoded in zip(where.tolist(), _rows_of(matrix), strict=True):
            out[i] = encoded
    return out


def encode_values(logical: str, values: Sequence[Any] | np.ndarray, null: np.ndarray | None = None) -> list[bytes]:
    """Serialised ``feast.types.Value`` for a column of one logical type; None, NaN and the rows ``null`` marks
    become Feast's null (an empty message), as ``feast materialize`` writes them. Numbers go through numpy."""
    if logical not in _VALUE_TAGS:
        raise ValueError(f"no Feast value encoding for logical type {logical!r}")
    tag = _VALUE_TAGS[logical]
    if logical in ("bytes", "string"):
        out = []
        for v in values:
            if v is None:
                out.append(b"")
            else:
                data = v if isinstance(v, bytes) else str(v).encode()
                out.append(bytes((tag,)) + _varint(len(data)) + data)
    else:
        numbers, null = _numbers(logical, values, null)
        if logical == "float64":
            matrix = np.empty((len(numbers), 9), dtype=np.uint8)
            matrix[:, 0] = tag
            matrix[:, 1:] = numbers.view(np.uint8).reshape(-1, 8)
            out = _rows_of(matrix)
        elif logical == "bool":
            out = [b"8\x01" if v else b"8\x00" for v in numbers.tolist()]
        else:
            out = _varints(tag, numbers)
    if null is not None:
        for i in np.flatnonzero(null).tolist():
            out[i] = b""
    return out


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
        names = list(self.values)
        for i, key in enumerate(self.keys):
            yield (key, {name: self.values[name][i] for name in names},
                   _EPOCH + timedelta(microseconds=int(self.event_us[i])))


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
        self._readers: list[sqlite3.Connection] = []
        self._union_sql: dict[tuple[str, ...], str] = {}  # read_many statements by views
        self._write_lock = threading.Lock()
        self._feast: Any = None  # FeatureStore, loaded on first use of Feast's interface

    def table(self, view: str) -> str:
        return f"{self.project}_{view}"

    # -- SQLite --------------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if not self.path.exists():
                raise StoreUnavailable(f"online store {self.path} does not exist: materialize it first "
                                       f"(Dagster asset online/materialized)")
            conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=0.5,
                                   check_same_thread=False, isolation_level=None)
            self._local.conn = conn
            with self._write_lock:
                self._readers.append(conn)
        return conn

    def close(self) -> None:
        """Close every reader connection (each thread opens a new one on its next read)."""
        with self._write_lock:
            conns, self._readers = self._readers, []
            self._local = threading.local()
        for conn in conns:
            conn.close()

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
                self._feast_read(view.name, [encode_key(view.join_keys[0], 0)], view.features[0].name)
            return
        try:
            self._connection().execute("select count(*) from sqlite_master").fetchone()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"online store {self.path}: {exc}") from None

    def read_values(self, view: str, keys: Sequence[bytes], feature: str) -> list[bytes | None]:
        """The serialised value of ``feature`` for each entity key (None when absent)."""
        if self.kind != "sqlite":
            return self._feast_read(view, keys, feature)
        try:
            conn = self._connection()
            if len(keys) == 1:
                row = conn.execute(f'select value from "{self.table(view)}" where entity_key = ? and '
                                   f'feature_name = ?', (keys[0], feature)).fetchone()
                return [None if row is None else row[0]]
            marks = ",".join("?" * len(keys))
            rows = conn.execute(f'select entity_key, value from "{self.table(view)}" where feature_name = ? '
                                f'and entity_key in ({marks})', (feature, *keys)).fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"online store {self.path}, view {view!r}: {exc}") from None
        found = dict(rows)
        return [found.get(k) for k in keys]

    def read_many(self, wanted: Sequence[tuple[str, bytes]], feature: str) -> list[bytes | None]:
        """The serialised value of ``feature`` for each ``(view, entity key)``, None when absent. SQLite: one
        ``union all`` statement over the views' tables, one round trip instead of one per view."""
        if self.kind != "sqlite" or len(wanted) < 2:
            return [self.read_values(view, [key], feature)[0] for view, key in wanted]
        views = tuple(view for view, _ in wanted)
        sql = self._union_sql.get(views)
        if sql is None:
            sql = self._union_sql[views] = " union all ".join(
                f'select {i}, value from "{self.table(view)}" where entity_key = ? and feature_name = ?'
                for i, view in enumerate(views))
        try:
            rows = self._connection().execute(sql, [x for _, key in wanted for x in (key, feature)]).fetchall()
        except sqlite3.Error as exc:
            names = ", ".join(repr(view) for view in views)
            raise StoreUnavailable(f"online store {self.path}, views {names}: {exc}") from None
        out: list[bytes | None] = [None] * len(wanted)
        for i, value in rows:
            out[i] = value
        return out

    def write(self, batches: Mapping[str, ViewBatch | Iterable[Row]], *, replace: Iterable[str] = ()) -> int:
        """Write rows of several views at once; ``replace`` views are emptied first (a full refresh).
        SQLite: one transaction, so readers never see part of it. Returns the number of values written."""
        batches = {view: batch if isinstance(batch, ViewBatch) else ViewBatch.from_rows(batch)
                   for view, batch in batches.items()}
        replace = set(replace)
        if self.kind != "sqlite":
            with self._write_lock:
                self._feast_clear([view for view in batches if view in replace])
                return self._feast_write({view: batch.rows() for view, batch in batches.items()})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with self._write_lock:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                conn.execute("pragma journal_mode=wal")
                # A bulk write touches every page of the tables and their indexes: keep them cached (64 MiB for
                # this connection only) instead of spilling and re-reading them mid-transaction.
                conn.execute("pragma cache_size=-65536")
                conn.execute("pragma temp_store=memory")  # the staging tables below
                conn.execute("begin immediate")
                for view, batch in batches.items():
                    written += self._write_view(conn, self.table(view), batch, view in replace)
                conn.execute("commit")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("rollback")
                raise
            finally:
                conn.close()
        return written

    @staticmethod
    def _write_view(conn: sqlite3.Connection, table: str, batch: ViewBatch, replace: bool) -> int:
        """One view into its table inside the caller's transaction. The rows are staged one per entity (one
        bound parameter per value and text, not four per value), then turned into Feast's one row per
        (entity_key, feature_name) by SQLite itself, in that order, so every index grows at its end."""
        conn.execute(
            f'create table if not exists "{table}" (entity_key BLOB, feature_name TEXT, value BLOB, '
            f'value_text TEXT, vector_value BLOB, event_ts timestamp, created_ts timestamp, '
            f'PRIMARY KEY(entity_key, feature_name))')
        found = conn.execute("select sql from sqlite_master where type = 'index' and name = ?",
                             (f"{table}_ek",)).fetchone()
        index_sql = found[0] if found else f'create index "{table}_ek" on "{table}" (entity_key)'
        if replace:
            conn.execute(f'delete from "{table}"')
            if found:  # rebuilt after the inserts (as Feast's DDL had it): one sorted pass, not one per row
                conn.execute(f'drop index "{table}_ek"')
        names = sorted(batch.values)
        keys = batch.keys
        if len(keys) and names:
            seconds = feast_event_seconds(batch.event_us).tolist()
            columns = [c for name in names for c in (batch.values[name], batch.texts[name])]
            if any(a >= b for a, b in pairwise(keys)):
                order = sorted(range(len(keys)), key=keys.__getitem__)
                if any(keys[a] == keys[b] for a, b in pairwise(order)):
                    raise ValueError(f"{table}: an entity key occurs twice in one batch")
                keys, seconds = [keys[i] for i in order], [seconds[i] for i in order]
                columns = [[c[i] for i in order] for c in columns]
            conn.execute("create temp table trellis_names (i INTEGER PRIMARY KEY, name TEXT)")
            conn.executemany("insert into temp.trellis_names values (?, ?)", enumerate(names))
            staged = ", ".join(f"v{i} BLOB, t{i} TEXT" for i in range(len(names)))
            conn.execute(f"create temp table trellis_rows (k BLOB, ts INTEGER, {staged})")
            # bytearray, not bytes: Python's sqlite3 binds bytearray directly but looks up an adapter for every
            # bytes object (an attribute lookup that fails), which costs more than the copy.
            columns = [map(bytearray, c) if i % 2 == 0 else c for i, c in enumerate(columns)]
            conn.executemany(f"insert into temp.trellis_rows values (?, ?{', ?, ?' * len(names)})",
                             zip(map(bytearray, keys), seconds, *columns, strict=True))
            pick = lambda column: "case n.i " + " ".join(  # noqa: E731
                f"when {i} then s.{column}{i}" for i in range(len(names))) + " end"
            conn.execute(  # the columns and the upsert Feast's online_write_batch uses (vector_value untouched)
                f'insert into "{table}" (entity_key, feature_name, value, value_text, event_ts, created_ts) '
                f"select s.k, n.name, {pick('v')}, {pick('t')}, s.ts, NULL "
                f"from temp.trellis_rows s cross join temp.trellis_names n where true order by s.rowid, n.i "
                f"on conflict(entity_key, feature_name) do update set value = excluded.value, "
                f"value_text = excluded.value_text, event_ts = excluded.event_ts, created_ts = excluded.created_ts")
            conn.execute("drop table temp.trellis_rows")
            conn.execute("drop table temp.trellis_names")
        if replace or not found:
            conn.execute(index_sql)
        return len(keys) * len(names)

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

    def _feast_read(self, view: str, keys: Sequence[bytes], feature: str) -> list[bytes | None]:
        from feast.infra.key_encoding_utils import deserialize_entity_key

        store = self._feature_store()
        provider = store._get_provider()
        protos = [deserialize_entity_key(k, store.config.entity_key_serialization_version) for k in keys]
        try:
            rows = provider.online_read(store.config, self._view(view), protos, [feature])
        except Exception as exc:
            raise StoreUnavailable(f"online store ({self.kind}), view {view!r}: {exc}") from None
        return [None if values is None or feature not in values else values[feature].SerializeToString()
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

    def write_through_feast(self, batches: Mapping[str, Iterable[Row]]) -> int:
        """Small writes (ingestion) through Feast's ``online_write_batch``, whatever the backend."""
        with self._write_lock:
            return self._feast_write(batches)


__all__ = [
    "OnlineStore",
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
    "value_text",
    "value_texts",
]
