"""Trellis' side of Feast's online store: the exact bytes Feast writes and reads, and a store that
reads them fast.

Feast keeps one row per ``(entity_key, feature_name)`` in a table ``<project>_<view>``: the entity key in
Feast's serialisation (version 3), the value as a serialised ``feast.types.Value`` protobuf and the event time.
``encode_key`` / ``encode_values`` produce those bytes without protobuf objects (tested equal to Feast's own
serialisers), which is what makes bulk materialisation fast; ``OnlineStore`` reads state blobs on the hot
path with one prepared query per group on a per-thread connection.

Two backends behind one class:

* ``sqlite`` (the default, ``feature_store.yaml`` ``online_store.type: sqlite``): reads and bulk writes go
  straight to Feast's table layout; a bulk write is **one transaction** over every view it touches, so a
  reader sees the previous complete version or the new one, never half of it (WAL mode: readers are not
  blocked while it runs), and a crash rolls back;
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
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

# feast.value_type.ValueType numbers used in the entity-key serialisation
_STRING, _INT32, _INT64 = 2, 3, 4
_KEY_TYPES = {"int64": _INT64, "int32": _INT32, "string": _STRING}


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


def encode_values(logical: str, values: Sequence[Any] | np.ndarray) -> list[bytes]:
    """Serialised ``feast.types.Value`` for a column of one logical type; None and NaN become Feast's null
    (an empty message), as ``feast materialize`` writes them."""
    if logical == "float64":
        array = np.asarray([np.nan if v is None else v for v in values] if not isinstance(values, np.ndarray)
                           else values, dtype="<f8")
        raw = array.tobytes()
        nan = np.isnan(array)
        return [b"" if nan[i] else b")" + raw[8 * i:8 * i + 8] for i in range(len(array))]
    if logical in ("int64", "int32", "bool"):
        tag = {"int64": b" ", "int32": b"\x18", "bool": b"8"}[logical]
        out = []
        for v in values.tolist() if isinstance(values, np.ndarray) else values:
            if v is None or (isinstance(v, float) and v != v):
                out.append(b"")
            elif logical == "bool":
                out.append(tag + (b"\x01" if v else b"\x00"))
            else:
                out.append(tag + _varint(int(v)))
        return out
    if logical in ("bytes", "string"):
        tag = b"\n" if logical == "bytes" else b"\x12"
        out = []
        for v in values:
            if v is None:
                out.append(b"")
            else:
                data = v if isinstance(v, bytes) else str(v).encode()
                out.append(tag + _varint(len(data)) + data)
        return out
    raise ValueError(f"no Feast value encoding for logical type {logical!r}")


def decode_bytes_value(message: bytes | None) -> bytes | None:
    """The ``bytes_val`` of a serialised ``feast.types.Value`` (None for Feast's null)."""
    if not message:
        return None
    if message[0] != 0x0A:
        raise StoreUnavailable(f"expected a bytes value in the online store, got tag {message[0]:#x}")
    size, shift, i = 0, 0, 1
    while True:
        byte = message[i]
        size |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            break
        shift += 7
    return message[i:i + size]


def feast_event_ts(value: datetime) -> int:
    """What Feast's SQLite store keeps for an event time: whole epoch seconds of the naive UTC time, read as
    local time (``int(datetime.timestamp())`` in its adapter). Kept identical so rows compare byte for byte."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return int(value.timestamp())


# ---------------------------------------------------------------------------------------------------------
# The store.

Row = tuple[bytes, Mapping[str, bytes], datetime]  # (entity key bytes, feature -> value bytes, event time)


def _entity_key(row: Row) -> bytes:
    return row[0]


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

    def write(self, batches: Mapping[str, Iterable[Row]], *, replace: Iterable[str] = ()) -> int:
        """Write rows of several views at once; ``replace`` views are emptied first (a full refresh).
        SQLite: one transaction, so readers never see part of it. Returns the number of values written."""
        if self.kind != "sqlite":
            with self._write_lock:
                self._feast_clear([view for view in batches if view in set(replace)])
                return self._feast_write(batches)
        replace = set(replace)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        written = 0
        with self._write_lock:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            try:
                conn.execute("pragma journal_mode=wal")
                # A bulk write touches every page of the tables and their two indexes: keep them cached
                # (64 MiB for this connection only) instead of spilling and re-reading them mid-transaction.
                conn.execute("pragma cache_size=-65536")
                conn.execute("begin immediate")
                for view, rows in batches.items():
                    table = self.table(view)
                    conn.execute(
                        f'create table if not exists "{table}" (entity_key BLOB, feature_name TEXT, value BLOB, '
                        f'value_text TEXT, vector_value BLOB, event_ts timestamp, created_ts timestamp, '
                        f'PRIMARY KEY(entity_key, feature_name))')
                    conn.execute(f'create index if not exists "{table}_ek" on "{table}" (entity_key)')
                    if view in replace:
                        conn.execute(f'delete from "{table}"')
                    # In (entity_key, feature_name) order, so the primary-key index grows at its end instead
                    # of taking random inserts (stable sort: of two rows for one key, the later still wins).
                    flat = [(key, name, value, ts)
                            for key, values, when in sorted(rows, key=_entity_key)
                            for ts in (feast_event_ts(when),)
                            for name, value in sorted(values.items())]
                    conn.executemany(  # the columns Feast leaves NULL are literals, not bound per row
                        f'insert into "{table}" (entity_key, feature_name, value, value_text, vector_value, '
                        f'event_ts, created_ts) values (?, ?, ?, NULL, NULL, ?, NULL) '
                        f'on conflict(entity_key, feature_name) do update set value = excluded.value, '
                        f'value_text = NULL, vector_value = NULL, event_ts = excluded.event_ts, created_ts = NULL',
                        flat)
                    written += len(flat)
                conn.execute("commit")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("rollback")
                raise
            finally:
                conn.close()
        return written

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
    "decode_bytes_value",
    "encode_key",
    "encode_values",
    "feast_event_ts",
    "key_encoder",
]
