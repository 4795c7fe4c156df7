"""The decision log: every decision the scoring service answers, appended durably before the answer leaves.

Each record names the request (a fresh ``request_id``, returned in the response), the model version and alias
served, the decision policy's version and fingerprint, the definitions' fingerprint, the score, the decision and
its reason codes, the time scoring took, and the flag variant, experiment and arm that chose the version
(``rollout``, ``trellis.flags``). A version scored in shadow of an answer is a record of its own, logged after the
answer: ``role: shadow``, ``of`` the answer's request id (answers have ``role: primary``). The scored event's key (the label join key, e.g.
``transaction_id``) is kept as sent, so matured labels join to decisions; every entity key (``customer_id``...)
is kept only as a keyed hash (``trellis.pii``): the log holds no raw identifier of a person.

Embedded default: a SQLite file (WAL, ``synchronous=full``) under ``data/``. Appends go through one writer thread
that commits everything waiting at once (group commit: one fsync for all the requests in flight), and a request
waits for its own record to be durable: a decision answered is a decision logged, whatever crash follows, and a
request id is logged once (a re-sent record with the same id is a duplicate, not a second row).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import orjson

from trellis.batching import Stage, WriterClosed
from trellis.online.eventlog import canonical, open_wal

_SCHEMA = """
create table if not exists decisions (
    "offset" integer primary key autoincrement,
    request_id text not null unique,
    logged_us integer not null,
    body blob not null
);
"""
WRITE_GROUP = 2_000  # records committed together at most


class DecisionLogUnavailable(RuntimeError):
    """The decision log cannot be written: the decision is not answered."""


class _Pending:
    __slots__ = ("future", "records")

    def __init__(self, records: Sequence[Mapping[str, Any]]):
        self.records = records
        self.future: Future[None] = Future()


class DecisionLog:
    """The embedded decision log at ``path`` (created with its folder); ``sync``: SQLite's ``synchronous``."""

    def __init__(self, path: str | Path, *, sync: str = "full"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # synchronous=normal: a commit is a write into the OS's file cache (tens of microseconds), done by the
        # caller itself (``append``) rather than paying a hand-over to a thread and back (the WAL is copied back
        # into the file by a thread beside it: ``Checkpointer``). full: each commit waits for an fsync, done by the
        # writer thread for every request waiting (group commit).
        self.inline = sync == "normal"
        try:
            self._conn, self._checkpoints = open_wal(self.path, sync, _SCHEMA, 1.0 if self.inline else 5.0)
        except sqlite3.Error as exc:
            raise DecisionLogUnavailable(f"decision log: {exc}") from None
        self._lock = threading.Lock()
        self._closed = False
        self._writer = None if self.inline else \
            Stage("decision-log", self._commit, lambda p: len(p.records), limit=WRITE_GROUP)

    def submit(self, records: Sequence[Mapping[str, Any]]) -> Future[None]:
        """Hand ``records`` (each with a ``request_id``) to the writer; the future ends once they are durable (a
        request id logged before is kept as it was), or with ``DecisionLogUnavailable`` (none of them logged)."""
        pending = _Pending(records)
        if self._writer is None:  # inline: written now
            try:
                self.append(records)
                pending.future.set_result(None)
            except DecisionLogUnavailable as exc:
                pending.future.set_exception(exc)
            return pending.future
        try:
            self._writer.put(pending)
        except WriterClosed:
            raise DecisionLogUnavailable("the decision log is closed: the service is stopping") from None
        return pending.future

    def append(self, records: Sequence[Mapping[str, Any]]) -> None:
        """``records`` logged now (inline) or by the writer thread; returns once they are in the log."""
        if self._writer is not None:
            self.submit(records).result()
            return
        self._write(records)

    def _write(self, records: Sequence[Mapping[str, Any]]) -> None:
        now = time.time_ns() // 1000
        rows = [(r["request_id"], now, canonical(r)) for r in records]
        with self._lock:
            if self._closed:
                raise DecisionLogUnavailable("the decision log is closed: the service is stopping")
            try:
                self._conn.execute("begin immediate")
                self._conn.executemany("insert or ignore into decisions (request_id, logged_us, body) "
                                       "values (?, ?, ?)", rows)
                self._conn.execute("commit")
            except sqlite3.Error as exc:
                if self._conn.in_transaction:
                    self._conn.execute("rollback")
                raise DecisionLogUnavailable(f"decision log: {exc}; nothing was logged") from None
            self._checkpoints.written()

    def _commit(self, group: Sequence[_Pending]) -> None:
        """The writer thread's step: every waiting request's records in one commit (one fsync)."""
        try:
            self._write([r for p in group for r in p.records])
        except DecisionLogUnavailable as exc:
            for pending in group:
                pending.future.set_exception(exc)
            return
        for pending in group:
            pending.future.set_result(None)

    def read(self, after: int = 0, limit: int = 100_000) -> list[dict[str, Any]]:
        """Records after offset ``after``, in order, each with its ``offset``."""
        with self._lock:
            return _records(self._conn, after, limit)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._checkpoints.close()
        with self._lock:
            self._closed = True
            self._conn.close()


DECISIONS_TABLE = "logs.decisions"


def _records(conn: sqlite3.Connection, after: int, limit: int) -> list[dict[str, Any]]:
    rows = conn.execute('select "offset", body from decisions where "offset" > ? order by "offset" limit ?',
                        (after, limit)).fetchall()
    return [{"offset": offset, **orjson.loads(body)} for offset, body in rows]


def read_decisions(path: str | Path) -> list[dict[str, Any]]:
    """Every record of the decision log at ``path``, read only (no writer started, nothing created): none when
    the service has not logged any yet."""
    if not Path(path).exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error as exc:
        raise DecisionLogUnavailable(f"decision log: {exc}") from None
    try:
        return _records(conn, 0, 1 << 62)
    except sqlite3.Error as exc:
        raise DecisionLogUnavailable(f"decision log: {exc}") from None
    finally:
        conn.close()


def decisions_frame(records: Sequence[Mapping[str, Any]]) -> Any:
    """The log's records as one Arrow table, a column per field (an entity key's hash as ``<key>_hash``; times
    as naive-UTC timestamps; the flag that chose the version as ``flag``, ``variant``, ``flag_reason``,
    ``experiment``, ``arm``), ordered by offset. ``role`` is ``primary`` for an answer and ``shadow`` for a version
    scored in its shadow (``shadow_of``: the answer's request id)."""
    import pyarrow as pa

    entity_keys = sorted({k for r in records for k in r.get("entities", {})})
    fixed = {"offset", "request_id", "at_us", "latency_us", "entities", "model", "policy", "definitions", "score",
             "decision", "reason_codes", "defaults", "role", "of", "rollout", "shadows"}
    # Records logged before flags existed have no role (they are answers), no rollout and no shadows.
    rollouts = [r.get("rollout") or {} for r in records]
    event_keys = sorted({k for r in records for k in r} - fixed)  # the scored event's key (e.g. transaction_id)
    at = pa.array([r["at_us"] for r in records], pa.int64()).cast(pa.timestamp("us"))
    columns = {
        "offset": pa.array([r["offset"] for r in records], pa.int64()),
        "request_id": pa.array([r["request_id"] for r in records], pa.string()),
        "role": pa.array([r.get("role", "primary") for r in records], pa.string()),
        "shadow_of": pa.array([r.get("of") for r in records], pa.string()),
        "at": at,
        **{k: pa.array([r.get(k) for r in records]) for k in event_keys},
        **{f"{k}_hash": pa.array([r.get("entities", {}).get(k) for r in records], pa.string())
           for k in entity_keys},
        "model": pa.array([r["model"]["name"] for r in records], pa.string()),
        "model_version": pa.array([r["model"]["version"] for r in records], pa.string()),
        "alias": pa.array([r["model"]["alias"] for r in records], pa.string()),
        "policy_version": pa.array([r["policy"]["version"] for r in records], pa.int64()),
        "policy_fingerprint": pa.array([r["policy"]["fingerprint"] for r in records], pa.string()),
        "definitions": pa.array([r["definitions"] for r in records], pa.string()),
        "score": pa.array([r["score"] for r in records], pa.float64()),
        "decision": pa.array([r["decision"] for r in records], pa.string()),
        "reason_codes": pa.array([r["reason_codes"] for r in records], pa.list_(pa.string())),
        "defaults": pa.array([r["defaults"] for r in records], pa.list_(pa.string())),
        "latency_us": pa.array([r["latency_us"] for r in records], pa.int64()),
        **{name: pa.array([o.get(key) for o in rollouts], pa.string()) for name, key in (
            ("flag", "flag"), ("variant", "variant"), ("flag_reason", "reason"), ("experiment", "experiment"),
            ("arm", "arm"))},
        "shadows": pa.array([r.get("shadows") or [] for r in records], pa.list_(pa.string())),
    }
    return pa.table(columns)


def load_decisions(con: Any, path: str | Path, table: str = DECISIONS_TABLE) -> int:
    """The decision log at ``path`` into the warehouse table ``table`` (DuckDB connection ``con``), replaced in
    one transaction (readers see the previous copy or this one); returns its rows."""
    frame = decisions_frame(read_decisions(path))
    replace_table(con, table, frame, order_by='"offset"')
    return frame.num_rows


def replace_table(con: Any, table: str, frame: Any, order_by: str | None = None) -> None:
    """``table`` (``schema.name``) replaced by ``frame`` (Arrow or pandas) in one transaction of the DuckDB
    connection ``con``: readers see the previous table or this one. The tables built from the decision log."""
    schema = table.split(".")[0]
    con.execute("begin")
    try:
        con.execute(f'create schema if not exists "{schema}"')
        con.register("trellis_replacing", frame)
        con.execute(f"create or replace table {table} as select * from trellis_replacing"
                    + (f" order by {order_by}" if order_by else ""))
        con.unregister("trellis_replacing")
        con.execute("commit")
    except BaseException:
        con.execute("rollback")
        raise


__all__ = ["DECISIONS_TABLE", "DecisionLog", "DecisionLogUnavailable", "decisions_frame", "load_decisions",
           "read_decisions"]
