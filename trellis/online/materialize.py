"""Bulk materialisation of online feature groups into Feast's online store, from the warehouse.

For every online group two Feast views are written in **one transaction** (SQLite):

* ``<group>``: each entity's latest row of the offline feature table ``features.feat_<group>``, exactly the
  rows ``feast materialize`` writes from the same table (same key bytes, value bytes and event time);
* ``<group>_state``: each entity's raw tail (``trellis.online.state``) as of the cutoff ``as_of``: the source
  rows available before ``as_of`` that a window can still see. Also exported to
  ``feature_repo/data/<group>_state.parquet``, the state view's Feast source, so ``feast materialize`` of that
  view writes the same bytes.

Readers of the store see the previous complete version until the transaction commits; a crash in the middle
leaves the previous version (SQLite rolls the transaction back).
"""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import chain
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from trellis.compile.dbt import VALIDATED_SCHEMA, known_at
from trellis.compile.dbt import quote as _q
from trellis.compile.offline import FEATURE_TS
from trellis.online.eventlog import logged_rows
from trellis.online.service import LOG_CONSUMER, STATE_FINGERPRINT, state_fingerprint
from trellis.online.state import (
    DELTA_FIELD,
    SLACK_US,
    STATE_FIELD,
    GroupSpec,
    Tail,
    group_spec,
    row_mapper,
    state_view,
    to_us,
)
from trellis.online.store import (
    OnlineStore,
    Position,
    ViewBatch,
    key_order,
    pack_keys,
    pack_values,
    value_texts,
)
from trellis.spec import Project
from trellis.training import FEATURE_SCHEMA

if TYPE_CHECKING:
    from trellis.online.eventlog import EventLog


@dataclass
class GroupReport:
    group: str
    entities: int
    value_rows: int
    state_rows: int  # source rows kept in the tails
    seconds: float


@dataclass
class MaterializeReport:
    as_of: datetime
    log_offset: int | None = None  # the event log's offset folded into the state (None: no log)
    groups: list[GroupReport] = field(default_factory=list)
    values_written: int = 0
    seconds: float = 0.0


def _cutoff(con: duckdb.DuckDBPyConnection, project: Project, groups: list[str]) -> datetime:
    """Default ``as_of``: 1 µs after the newest row any online group's source knows."""
    newest = []
    for name in groups:
        source = project.sources[project.feature_groups[name].source]
        newest.append(con.sql(f"select max({known_at(source)}) from {VALIDATED_SCHEMA}.{_q(source.name)}").fetchone()[0])
    newest = [n for n in newest if n is not None]
    return (max(newest) if newest else datetime(1970, 1, 1)) + timedelta(microseconds=1)


def latest_values(con: duckdb.DuckDBPyConnection, project: Project, group: str) -> pa.Table:
    """Each entity's latest row of the group's feature table (what ``feast materialize`` picks)."""
    key = project.key_column(project.feature_groups[group])
    # arg_max over the whole row (a struct, never NULL, so no row is skipped): ~25% less work than ranking every
    # row in a window. Among rows with the same newest time it keeps one, as Feast's row_number() does.
    return con.sql(
        f"select unnest(arg_max(f, f.{_q(FEATURE_TS)})) from {FEATURE_SCHEMA}.{_q('feat_' + group)} f "
        f"where {_q(key)} is not null group by {_q(key)}").to_arrow_table()


def tails(con: duckdb.DuckDBPyConnection, project: Project, group: str, as_of: datetime,
          spec: GroupSpec | None = None) -> tuple[list[Any], list[Tail]]:
    """Every entity's tail as of ``as_of``: keys and tails, from ``validated.<source>``."""
    spec = spec or group_spec(project, group)
    definition = project.feature_groups[group]
    source = project.sources[definition.source]
    event, known = _q(source.event_time), known_at(source)
    where = [f"{known} < ?"]
    params: list[Any] = [as_of]
    relation = f"{VALIDATED_SCHEMA}.{_q(source.name)}"
    if definition.filter or any(name.startswith("expr:") for name, _ in spec.inputs):
        # Row expressions: the same compiled closures the ingestion path uses, row by row; each tail is then
        # pruned as ingestion prunes it.
        cursor = con.execute(f"select * from {relation} where {' and '.join(where)}", params)
        names = [d[0] for d in cursor.description]
        records = [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        mapper = row_mapper(project, group, spec)
        by_key: dict[Any, list[dict[str, Any]]] = {}
        for record in records:
            by_key.setdefault(mapper.key(record), []).append(record)
        keys = sorted(k for k in by_key if k is not None)
        return keys, [mapper.tail(by_key[k]).pruned(spec) for k in keys]
    qualify = ""
    if spec.horizon_us is not None:
        # Per entity, what its windows can see for requests from its newest event on (minus the slack): the
        # tails' own pruning rule, so a tail is complete for every t >= its newest event - SLACK.
        qualify = (f"qualify epoch_us({event}) >= max(epoch_us({event})) over (partition by "
                   f"{_q(spec.key_column)}) - {spec.horizon_us + SLACK_US}")
    key = _q(spec.key_column)
    columns = [f"epoch_us({event}) as __event", f"epoch_us({known}) as __avail"]
    for i, (name, _) in enumerate(spec.inputs):
        columns.append(f"{_q(name.removeprefix('pk:'))} as __in{i}")
    order = f"__key, __event, __avail{f', __in{len(spec.inputs) - 1}' if spec.has_primary_key else ''}"
    table = con.execute(  # the tails' own order (Tail._sorted): ties in time by primary key
        f"select {key} as __key, {', '.join(columns)} from {relation} where {' and '.join(where)} "
        f"and {key} is not null {qualify} order by {order}", params).to_arrow_table()
    if table.num_rows == 0:
        return [], []
    keys_all = table.column("__key").to_numpy(zero_copy_only=False)
    starts = np.flatnonzero(np.r_[True, keys_all[1:] != keys_all[:-1]])
    bounds = np.r_[starts, len(keys_all)]
    event_us = table.column("__event").to_numpy().astype(np.int64)
    avail_us = table.column("__avail").to_numpy().astype(np.int64)
    inputs: list[np.ndarray] = []
    masks: list[np.ndarray | None] = []
    for i, (_, kind) in enumerate(spec.inputs):
        column = table.column(f"__in{i}")
        nulls = column.is_null().to_numpy(zero_copy_only=False)
        if kind == "f8":
            inputs.append(column.cast(pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64))
            masks.append(None)
        elif kind == "i8":
            if pa.types.is_timestamp(column.type):
                column = column.cast(pa.timestamp("us")).cast(pa.int64())
            inputs.append(column.cast(pa.int64()).fill_null(0).to_numpy().astype(np.int64))
            masks.append(nulls if nulls.any() else None)
        else:
            inputs.append(np.array(column.cast(pa.string()).to_pylist(), dtype=object))
            masks.append(None)
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        out.append(Tail(event_us[a:b], avail_us[a:b], [c[a:b] for c in inputs],
                        [None if m is None or not m[a:b].any() else m[a:b] for m in masks]))
    return keys_all[starts].tolist(), out


def materialize(con: duckdb.DuckDBPyConnection, project: Project, store: OnlineStore, *,
                as_of: datetime | None = None, exports: Path | None = None,
                groups: list[str] | None = None, state: bool = True, log: EventLog | None = None) -> MaterializeReport:
    """Write every online group's values and state (see the module docstring); returns what was written.
    ``state=False`` writes only the ``<group>`` views (what ``feast materialize`` of them writes).

    ``log``: the event log. Every row it holds up to its last offset (read before anything else) is folded into
    the tails (a row the warehouse has too, same primary key, counts once), and that offset is recorded as the
    online state's log position in the same transaction, under a new epoch: the service's catch-up then
    applies only what was logged after it, and a writer that read the state before this refresh cannot write
    over it. So a re-materialization never loses an acknowledged event.

    A producer thread reads and encodes the groups (DuckDB releases the GIL while it queries, on a cursor of
    ``con``) while this thread writes the ones already encoded into the store's one transaction (SQLite
    releases it too). This thread reads and encodes the smallest group itself meanwhile, so the writer starts
    early, and DuckDB runs one thread per query: each thread has a core. The transaction (the store's write
    lock: Feast's own writers wait 5 s for it) begins with the first batch, so with the state views, whose
    tails take longer to build than to write, the writer waits for all of them."""
    started = time.perf_counter()
    groups = groups or _online_groups(project)
    logged, position = _logged_rows(project, log) if log is not None and state else ({}, None)
    as_of = as_of or _cutoff(con, project, groups)
    report = MaterializeReport(as_of=as_of, log_offset=position.offset if position else None)
    views = [view for name in groups for view in ((name, state_view(name)) if state else (name,))]
    done: dict[str, GroupReport] = {}

    threads = int(con.execute("select current_setting('threads')").fetchone()[0])
    # Two queries at once, then the writer beside the producer's query: DuckDB's other threads would take the
    # writer's core (SQLite writes ran 2-3x slower beside a 2-thread DuckDB query on 2 cores).
    leave = max(1, min(threads, _cores() - 1))

    order = sorted(groups, key=lambda g: len(project.features(project.feature_groups[g])))

    def group(db: duckdb.DuckDBPyConnection, name: str) -> list[tuple[str, ViewBatch]]:
        t0 = time.perf_counter()
        values = latest_values(db, project, name)
        out = [(name, value_batch(project, name, values).prepare())]
        entities, state_rows = 0, 0
        if state:
            batch, state_rows = _state_batch(db, project, name, as_of, exports, logged)
            out.append((state_view(name), batch.prepare()))
            entities = len(batch)
        done[name] = GroupReport(name, entities, values.num_rows, state_rows, time.perf_counter() - t0)
        return out

    def produce(put: Callable[[tuple[str, ViewBatch]], None]) -> None:
        with con.cursor() as db:
            for name in order[1:]:
                for item in group(db, name):
                    put(item)

    if leave < threads:
        con.execute(f"set threads = {leave}")
    try:
        with _ahead(produce) as batches:
            first = group(con, order[0]) if order else []
            batches = chain(first, batches)
            if state:  # the tails take longer to build than to write: hold the write lock only while writing
                batches = list(batches)
            meta = {STATE_FINGERPRINT: state_fingerprint({g: group_spec(project, g) for g in groups})} \
                if state and len(groups) == len(_online_groups(project)) else None
            report.values_written = store.write(batches, replace=views, meta=meta,
                                                position=None if position is None else (LOG_CONSUMER, position))
    finally:
        con.execute(f"set threads = {threads}")
    report.groups = [done[name] for name in groups]
    report.seconds = time.perf_counter() - started
    return report


def _online_groups(project: Project) -> list[str]:
    return [g.name for g in project.feature_groups.values() if g.online]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class _Stop(Exception):
    """The consumer of ``_ahead`` stopped early (its write failed): the producer ends."""


@contextmanager
def _ahead(produce: Callable[[Callable[[Any], None]], None]) -> Iterator[Iterator[Any]]:
    """Run ``produce(put)`` in a thread; the items it puts come out of the yielded iterator in order (its
    exception re-raised there). On exit the producer is stopped at its next ``put`` and waited for, so nothing
    uses the caller's DuckDB connection afterwards."""
    items: queue.Queue = queue.Queue()
    stop = threading.Event()
    end = object()

    def put(item: Any) -> None:
        if stop.is_set():
            raise _Stop
        items.put(item)

    def run() -> None:
        try:
            produce(put)
            items.put(end)
        except _Stop:
            pass
        except BaseException as exc:  # handed to the consumer, raised in its thread
            items.put(exc)

    def consume() -> Iterator[Any]:
        while (item := items.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item

    thread = threading.Thread(target=run, name="trellis-materialize", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()


def _logged_rows(project: Project, log: EventLog) -> tuple[dict[str, list[dict[str, Any]]], Position]:
    """Every row of the event log up to its last offset by source (as corrected, timestamps decoded), and the
    position a state holding them has: that offset, under a new epoch."""
    last = log.last_offset()
    stamps = {name: source.timestamp_columns for name, source in project.sources.items()}
    return logged_rows(log, stamps, upto=last), Position(uuid.uuid4().hex, last)


def _with_logged(project: Project, group: str, keys: list[Any], group_tails: list[Tail],
                 logged: dict[str, list[dict[str, Any]]]) -> tuple[list[Any], list[Tail]]:
    """``keys``/``group_tails`` with the group's logged rows merged in (entities only the log knows added), in
    key order."""
    records = logged.get(project.feature_groups[group].source)
    if not records:
        return keys, group_tails
    spec = group_spec(project, group)
    mapper = row_mapper(project, group, spec)
    by_key: dict[Any, list[dict[str, Any]]] = {}
    for record in records:
        key = mapper.key(record)
        if key is not None:
            by_key.setdefault(key, []).append(record)
    merged = dict(zip(keys, group_tails, strict=True))
    for key, rows in by_key.items():
        merged[key] = merged.get(key, Tail.empty(spec)).merge(spec, mapper.tail(rows))
    ordered = sorted(merged)
    return ordered, [merged[k] for k in ordered]


def _state_batch(con: duckdb.DuckDBPyConnection, project: Project, group: str, as_of: datetime,
                 exports: Path | None, logged: dict[str, list[dict[str, Any]]] | None = None) -> tuple[ViewBatch, int]:
    """The ``<group>_state`` view's rows (every entity's tail as of ``as_of``, with the ``logged`` rows of its
    source merged in), exported to ``exports`` if given; and the number of source rows the tails keep."""
    entity = project.entities[project.feature_groups[group].entity]
    keys, group_tails = tails(con, project, group, as_of)
    if logged:
        keys, group_tails = _with_logged(project, group, keys, group_tails, logged)
    blobs = [t.encode() for t in group_tails]
    if exports is not None:
        _export_state(exports / f"{state_view(group)}.parquet", entity.join_key, entity.key_type, keys, blobs, as_of)
    batch = _batch(entity.join_key, entity.key_type, keys, np.full(len(keys), to_us(as_of), dtype=np.int64),
                   {STATE_FIELD: ("bytes", blobs, None),  # and no delta yet (Feast's null, as its materialize writes)
                    DELTA_FIELD: ("bytes", [None] * len(blobs), np.ones(len(blobs), dtype=bool))})
    return batch, sum(len(t) for t in group_tails)


def value_batch(project: Project, group: str, values: pa.Table) -> ViewBatch:
    """The ``<group>`` view's rows from ``latest_values``: Feast's key and value bytes, its value texts."""
    definition = project.feature_groups[group]
    entity = project.entities[definition.entity]
    columns = {f.name: (f.dtype, *_column(values, f.name, f.dtype)) for f in project.features(definition)}
    stamps = values.column(FEATURE_TS).cast(pa.timestamp("us")).cast(pa.int64()).to_numpy()
    return _batch(entity.join_key, entity.key_type, values.column(project.key_column(definition)), stamps, columns)


def _batch(join_key: str, key_type: str, keys: pa.ChunkedArray | list[Any], event_us: np.ndarray,
           columns: dict[str, tuple[str, Any, np.ndarray | None]]) -> ViewBatch:
    """Encode a view's columns ({feature: (logical type, values, null mask)}) in the byte order of the keys:
    keys and values as ``Packed`` buffers (numbers through numpy), texts as lists."""
    if key_type in ("int64", "int32"):
        numbers = keys.to_numpy() if isinstance(keys, pa.ChunkedArray) else np.asarray(keys, dtype=np.int64)
        order = key_order(key_type, numbers)
        encoded = pack_keys(join_key, key_type, numbers[order])
    else:
        raw = keys.to_pylist() if isinstance(keys, pa.ChunkedArray) else list(keys)
        packed = pack_keys(join_key, key_type, raw)
        listed = packed.tolist()
        order = np.array(sorted(range(len(raw)), key=listed.__getitem__), dtype=np.int64)
        encoded = packed.take(order)
    taken = {}
    for name, (logical, data, null) in columns.items():
        data = data[order] if isinstance(data, np.ndarray) else [data[i] for i in order.tolist()]
        taken[name] = (logical, data, None if null is None else null[order])
    return ViewBatch(encoded, event_us[order],
                     {n: pack_values(t, d, null) for n, (t, d, null) in taken.items()},
                     {n: value_texts(t, d, null) for n, (t, d, null) in taken.items()})


def _column(table: pa.Table, name: str, logical: str) -> tuple[Any, np.ndarray | None]:
    """A feature column for ``pack_values``: numbers as numpy with a null mask (floats: NaN), else a list."""
    column = table.column(name)
    if logical == "float64":
        return column.cast(pa.float64()).to_numpy(zero_copy_only=False), None
    if logical in ("int64", "int32", "bool"):
        null = column.is_null().to_numpy(zero_copy_only=False) if column.null_count else None
        return column.fill_null(False if logical == "bool" else 0).to_numpy(zero_copy_only=False), null
    return column.to_pylist(), None


def _export_state(path: Path, join_key: str, key_type: str, keys: list[Any], blobs: list[bytes],
                  as_of: datetime) -> None:
    key_type_arrow = {"int64": pa.int64(), "int32": pa.int32()}.get(key_type, pa.string())
    table = pa.table({
        join_key: pa.array(keys, type=key_type_arrow),
        STATE_FIELD: pa.array(blobs, type=pa.binary()),
        DELTA_FIELD: pa.nulls(len(blobs), type=pa.binary()),  # rows streamed later go here (merge_states)
        FEATURE_TS: pa.array([as_of] * len(keys), type=pa.timestamp("us")),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


__all__ = ["GroupReport", "MaterializeReport", "latest_values", "materialize", "state_view", "tails", "to_us",
           "value_batch"]
