"""The event log: the source of truth for streamed rows (design section 6).

``POST /v1/events`` and ``/v1/labels`` acknowledge a row only after it is appended here durably. Everything
else is derived from the log and can be rebuilt from it: the online state is a consumer that stores the offset
it has applied in the same transaction as the state itself (``OnlineFeatures.catch_up``), and a
re-materialization folds the log into the tails it writes, so no acknowledged row is lost by either.

The shape is Kafka's: an append-only sequence of entries numbered by an **offset** (1, 2, ...; never reused),
each carrying its source, an **idempotency key** (the source's primary key value; the content hash where a
source has none) and the row as canonical JSON with its SHA-256. Appending a batch is all-or-nothing:

* a row whose key is new is appended;
* a row whose key is logged with the same content is a **duplicate**: not appended again, answered with the
  offset it already has;
* a row whose key is logged with other content is a **conflict**: the whole batch is refused
  (``LogConflict`` names the key and the differing fields) and nothing is appended. A correction is an explicit
  operation (``correct``), logged as its own entry, never a side effect of re-delivery.

Two backends behind one interface (``open_log``):

* ``SqliteEventLog`` (the embedded default, ``data/event_log.db``): one SQLite file in WAL mode with
  ``synchronous=FULL`` by default, so a commit is on disk (the WAL fsynced) before ``append`` returns; a crash at
  any point leaves every acknowledged row and no partial batch (``sync="normal"``: a killed process loses
  nothing, a power cut may lose the last commits). ``append_many`` writes many requests' batches in one
  transaction, each batch still checked on its own: the online writer (``trellis.online.service``) groups the
  requests waiting meanwhile, so one fsync serves all of them.
* ``RedisEventLog`` (``redis://host:port/db``): a Redis Stream whose entry ids are ``0-<offset>``, with a hash
  of idempotency keys beside it, both written by one Lua script (atomic on the server). Durable as far as the
  server's persistence is configured: the log refuses to open on a server without ``appendonly yes`` unless
  told ``durable=False`` (then a server restart can lose rows; for tests and throwaway servers).
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlparse

import orjson

CORRECTION = "correction"  # the kind of an entry that replaces a logged row on purpose


class LogConflict(ValueError):
    """A row whose key is logged with other content: nothing of its batch was appended."""

    def __init__(self, source: str, key: str, fields: Sequence[str]):
        self.source, self.key, self.fields = source, key, list(fields)
        super().__init__(f"{source} row {key} is already logged with other values of "
                         f"{', '.join(self.fields) or 'its content'}; nothing of this request was logged "
                         f"(a correction is an explicit operation: trellis.online.eventlog correct)")


class LogUnavailable(RuntimeError):
    """The log cannot be written or read now; nothing was acknowledged."""


@dataclass(frozen=True)
class LogEntry:
    offset: int
    source: str
    key: str
    row: dict[str, Any]  # as logged: timestamps as ISO text (``decode_row`` turns them back)


@dataclass(frozen=True)
class Appended:
    offsets: tuple[int, ...]  # per row, its offset (a duplicate's is the offset it was first logged at)
    new: int
    duplicates: int
    entries: tuple[LogEntry, ...] = ()  # the rows this append logged, as ``read`` gives them back

    @property
    def last(self) -> int:
        return max(self.offsets, default=0)


Batch = tuple[str, Sequence[Mapping[str, Any]], Sequence[str]]  # (source, rows, their idempotency keys)


class EventLog(Protocol):
    def append(self, source: str, rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Appended: ...

    def append_many(self, batches: Sequence[Batch]) -> list[Appended | LogConflict]: ...

    def correct(self, source: str, row: Mapping[str, Any], key: str, reason: str) -> int: ...

    def read(self, after: int, limit: int = 10_000) -> list[LogEntry]: ...

    def last_offset(self) -> int: ...

    def close(self) -> None: ...


def append_one(log: EventLog, source: str, rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Appended:
    """``append`` in terms of ``append_many``: one batch, all or nothing (``LogConflict`` raised)."""
    (result,) = log.append_many([(source, rows, keys)])
    if isinstance(result, LogConflict):
        raise result
    return result


def _default(value: Any) -> Any:
    raise TypeError(f"cannot log a {type(value).__name__}: {value!r}")


def canonical(row: Mapping[str, Any]) -> bytes:
    """The row as canonical JSON: sorted keys, ISO timestamps (naive ones are UTC and stay naive), shortest
    round-trip floats."""
    return orjson.dumps(dict(row), option=orjson.OPT_SORT_KEYS, default=_default)


def row_key(primary_key: str | None, row: Mapping[str, Any], body: bytes | None = None) -> str:
    """A row's idempotency key: its primary key value as JSON (``42``, ``"a"``); without a primary key, its
    content hash (identical content is the same row)."""
    if primary_key is not None:
        return orjson.dumps(row.get(primary_key)).decode()
    return "sha256:" + hashlib.sha256(body if body is not None else canonical(row)).hexdigest()


def differing(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))


def decode_row(row: Mapping[str, Any], timestamps: Sequence[str]) -> dict[str, Any]:
    """A logged row with its timestamp columns as naive-UTC datetimes again."""
    out = dict(row)
    for name in timestamps:
        value = out.get(name)
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
            out[name] = value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)
        elif isinstance(value, date) and not isinstance(value, datetime):
            out[name] = datetime(value.year, value.month, value.day)
    return out


def logged_rows(log: EventLog, sources: Mapping[str, Sequence[str]], upto: int | None = None,
                page: int = 50_000) -> dict[str, list[dict[str, Any]]]:
    """The current content of every logged row of ``sources`` ({source: its timestamp columns}) up to offset
    ``upto`` (default: the last), by source, in offset order, timestamps decoded: a corrected row once, as
    corrected."""
    last = log.last_offset() if upto is None else upto
    current: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in sources}
    after = 0
    while after < last:
        entries = log.read(after, page)
        if not entries:
            break
        for entry in entries:
            if entry.offset > last:
                break
            rows = current.get(entry.source)
            if rows is not None:
                rows.pop(entry.key, None)  # a correction moves the row to its offset
                rows[entry.key] = decode_row(entry.row, sources[entry.source])
        after = entries[-1].offset
    return {name: list(rows.values()) for name, rows in current.items() if rows}


def read_logged(url: str | Path, project: Any, sources: Sequence[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """``logged_rows`` of the ``sources`` (default: every source) of ``project`` (``trellis.spec.Project``) from the
    log at ``url``: what the warehouse's ingestion takes after each source's own rows. No log file yet: nothing
    logged."""
    if not str(url).startswith(("redis://", "rediss://")) and not Path(url).exists():
        return {}
    log = open_log(url)
    try:
        return logged_rows(log, {name: source.timestamp_columns for name, source in project.sources.items()
                                 if sources is None or name in sources})
    finally:
        log.close()


# ---------------------------------------------------------------------------------------------------------
# Embedded: SQLite.

_SCHEMA = """
create table if not exists log (
    "offset" integer primary key autoincrement,
    source text not null,
    key text not null,
    digest blob not null,
    body blob not null,
    kind text not null default 'event',
    note text,
    logged_us integer not null
);
create unique index if not exists log_source_key on log (source, key) where kind = 'event';
create table if not exists current (
    source text not null,
    key text not null,
    "offset" integer not null,
    digest blob not null,
    primary key (source, key)
) without rowid;
"""


# What an acknowledged append survives (SQLite's ``synchronous`` in WAL mode): ``full`` fsyncs the WAL at every
# commit (a power cut or an OS crash loses nothing acknowledged); ``normal`` leaves the commit to the OS (a killed
# process loses nothing, a power cut may lose the last commits; Kafka's default stance, without its replicas).
SYNC_MODES = ("full", "normal")


CHECKPOINT_EVERY = 0.05  # seconds between checkpoints of a WAL file while small writes go on


class Checkpointer:
    """Copies the WAL of the SQLite file at ``path`` back into the file (a passive checkpoint: never waits for a
    reader or the writer) every ``CHECKPOINT_EVERY`` seconds after a write (``written``), on a thread of its own
    and a connection of its own, opened for each checkpoint (so a file replaced meanwhile is simply the file
    checkpointed next). A failed checkpoint is retried at the next tick; a file left alone checkpoints itself
    when its last connection closes. Its writers set ``wal_autocheckpoint=0``: SQLite's own checkpoint runs
    inside a commit, and copying the WAL back (whole pages, then an fsync) stalled every write behind it (the
    online store: p99 of streamed events 17-20 ms against p98 2.9 ms; the decision log: p99 of an append 0.7-3.5
    ms against 0.13 ms, on a busy machine)."""

    def __init__(self, path: Path, name: str):
        self.path = path
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def written(self) -> None:
        self._dirty.set()

    def _run(self) -> None:
        while not self._stop.wait(CHECKPOINT_EVERY):
            if not self._dirty.is_set():
                continue
            self._dirty.clear()
            try:
                conn = sqlite3.connect(f"file:{self.path}?mode=rw", uri=True, timeout=0, isolation_level=None)
                try:
                    conn.execute("pragma wal_checkpoint(passive)")
                finally:
                    conn.close()
            except sqlite3.Error:
                self._dirty.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def open_wal(path: Path, sync: str, schema: str, timeout: float) -> tuple[sqlite3.Connection, Checkpointer]:
    """A writing connection to the log file at ``path`` (created if missing): WAL, ``synchronous=sync``,
    ``schema`` applied, checkpointed by the ``Checkpointer`` returned with it (call its ``written`` after each
    commit, ``close`` it with the connection). Used by the event log and the decision log."""
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.execute("pragma journal_mode=wal")
    conn.execute(f"pragma synchronous={sync}")
    conn.execute("pragma wal_autocheckpoint=0")
    conn.executescript(schema)
    return conn, Checkpointer(path, f"{path.stem}-checkpoints")


class SqliteEventLog:
    """The embedded log: ``path`` (created with its folder if missing); ``sync``: one of ``SYNC_MODES``.

    ``current`` maps every key to the offset and digest of its current content (the event, or the latest
    correction of it), so a duplicate or a conflict is one index lookup. Writes are serialised by a lock (and
    across processes by SQLite's write lock); ``append_many`` commits many batches in one transaction."""

    def __init__(self, path: str | Path, *, sync: str = "full", busy_timeout: float = 5.0):
        if sync not in SYNC_MODES:
            raise ValueError(f"event log sync {sync!r}: one of {', '.join(SYNC_MODES)}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn, self._checkpoints = open_wal(self.path, sync, _SCHEMA, busy_timeout)
        except sqlite3.Error as exc:
            raise LogUnavailable(f"event log: {exc}") from None
        self._reader = threading.local()
        self._write = threading.Lock()

    def _read_conn(self) -> sqlite3.Connection:
        conn = getattr(self._reader, "conn", None)
        if conn is None:
            conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5, check_same_thread=False,
                                   isolation_level=None)
            self._reader.conn = conn
        return conn

    # -- writes ------------------------------------------------------------------------------------------

    def append(self, source: str, rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Appended:
        return append_one(self, source, rows, keys)

    def append_many(self, batches: Sequence[Batch]) -> list[Appended | LogConflict]:
        """Append every batch in one transaction (one fsync), each all-or-nothing on its own: a batch with a
        conflicting row gets its ``LogConflict`` and leaves nothing, the others are logged. ``LogUnavailable``
        (nothing of any batch logged) when the file cannot be written.

        Every batch is checked against the keys logged before it (read in one statement) and the ones logged by
        the batches before it in this call, before anything of it is staged: nothing ever needs undoing, and the
        whole call is a handful of statements whatever the number of batches."""
        prepared = [(source, [(key, hashlib.sha256(body := canonical(row)).digest(), body)
                              for row, key in zip(rows, keys, strict=True)]) for source, rows, keys in batches]
        results: list[Appended | LogConflict] = []
        with self._write:
            conn = self._conn
            try:
                conn.execute("begin immediate")
                held = self._held(conn, {(source, key) for source, rows in prepared for key, _, _ in rows})
                (last,) = conn.execute("select coalesce((select seq from sqlite_sequence where name = 'log'), 0)"
                                       ).fetchone()
                bodies: dict[int, bytes] = {}  # of the rows staged by this call, by offset
                staged: list[tuple[int, str, str, bytes, bytes, int]] = []
                now = time.time_ns() // 1000
                for source, rows in prepared:
                    result = self._stage(conn, source, rows, held, last + len(staged), bodies)
                    results.append(result)
                    if isinstance(result, Appended):
                        staged += [(e.offset, source, e.key, held[source, e.key][1], bodies[e.offset], now)
                                   for e in result.entries]
                if staged:
                    conn.executemany('insert into log ("offset", source, key, digest, body, logged_us) '
                                     "values (?, ?, ?, ?, ?, ?)", staged)
                    conn.executemany('insert into current (source, key, "offset", digest) values (?, ?, ?, ?)',
                                     [(source, key, offset, digest) for offset, source, key, digest, _, _ in staged])
                conn.execute("commit")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("rollback")
                raise LogUnavailable(f"event log: {exc}; nothing was logged") from None
            self._checkpoints.written()
        return results

    @staticmethod
    def _held(conn: sqlite3.Connection, wanted: set[tuple[str, str]]) -> dict[tuple[str, str], tuple[int, bytes]]:
        """{(source, key): (offset, digest)} of the ``wanted`` keys already logged."""
        by_source: dict[str, list[str]] = {}
        for source, key in wanted:
            by_source.setdefault(source, []).append(key)
        held: dict[tuple[str, str], tuple[int, bytes]] = {}
        for source, keys in by_source.items():
            for i in range(0, len(keys), 500):
                chunk = keys[i:i + 500]
                for key, offset, digest in conn.execute(
                        f'select key, "offset", digest from current where source = ? and key in '
                        f'({", ".join("?" * len(chunk))})', (source, *chunk)):
                    held[source, key] = (offset, digest)
        return held

    def _stage(self, conn: sqlite3.Connection, source: str, rows: Sequence[tuple[str, bytes, bytes]],
               held: dict[tuple[str, str], tuple[int, bytes]], last: int,
               bodies: dict[int, bytes]) -> Appended | LogConflict:
        """Check one batch against ``held`` (the keys logged before it, updated with its own once it passes)
        and give its new rows the offsets after ``last`` (their bodies into ``bodies``); on a conflict nothing of
        it is staged."""
        offsets: list[int] = []
        mine: dict[str, tuple[int, bytes, bytes]] = {}  # key -> (offset, digest, body) of this batch's new rows
        for key, digest, body in rows:
            found = mine.get(key) or held.get((source, key))
            if found is not None:
                if found[1] != digest:
                    old = mine[key][2] if key in mine else bodies.get(found[0])
                    fields = differing(orjson.loads(old), orjson.loads(body)) if old is not None else \
                        self._differing(conn, found[0], body)
                    return LogConflict(source, key, fields)
                offsets.append(found[0])
                continue
            mine[key] = (last + len(mine) + 1, digest, body)
            offsets.append(mine[key][0])
        entries = []
        for key, (offset, digest, body) in mine.items():
            held[source, key] = (offset, digest)
            bodies[offset] = body
            entries.append(LogEntry(offset, source, key, orjson.loads(body)))
        return Appended(tuple(offsets), len(entries), len(offsets) - len(entries), tuple(entries))

    @staticmethod
    def _differing(conn: sqlite3.Connection, offset: int, body: bytes) -> list[str]:
        (old,) = conn.execute('select body from log where "offset" = ?', (offset,)).fetchone()
        return differing(orjson.loads(old), orjson.loads(body))

    def correct(self, source: str, row: Mapping[str, Any], key: str, reason: str) -> int:
        """Replace the logged content of ``key`` on purpose: a new entry of kind ``correction`` with the reason;
        later re-deliveries of the corrected content are duplicates, of the old one conflicts."""
        if not reason.strip():
            raise ValueError("a correction needs a reason")
        body = canonical(row)
        digest = hashlib.sha256(body).digest()
        with self._write:
            conn = self._conn
            try:
                conn.execute("begin immediate")
                offset = conn.execute(
                    "insert into log (source, key, digest, body, kind, note, logged_us) values (?, ?, ?, ?, ?, ?, ?) "
                    'returning "offset"', (source, key, digest, body, CORRECTION, reason, time.time_ns() // 1000)
                ).fetchone()[0]
                conn.execute('insert into current (source, key, "offset", digest) values (?, ?, ?, ?) on conflict '
                             '(source, key) do update set "offset" = excluded."offset", digest = excluded.digest',
                             (source, key, offset, digest))
                conn.execute("commit")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("rollback")
                raise LogUnavailable(f"event log: {exc}; the correction was not logged") from None
            self._checkpoints.written()
        return offset

    # -- reads -------------------------------------------------------------------------------------------

    def read(self, after: int, limit: int = 10_000) -> list[LogEntry]:
        """Entries with an offset above ``after``, in offset order, at most ``limit``."""
        try:
            rows = self._read_conn().execute(
                'select "offset", source, key, body from log where "offset" > ? order by "offset" limit ?',
                (after, limit)).fetchall()
        except sqlite3.Error as exc:
            raise LogUnavailable(f"event log: {exc}") from None
        return [LogEntry(offset, source, key, orjson.loads(body)) for offset, source, key, body in rows]

    def last_offset(self) -> int:
        try:
            row = self._read_conn().execute('select max("offset") from log').fetchone()
        except sqlite3.Error as exc:
            raise LogUnavailable(f"event log: {exc}") from None
        return row[0] or 0

    def close(self) -> None:
        self._checkpoints.close()
        self._conn.close()
        conn = getattr(self._reader, "conn", None)
        if conn is not None:
            conn.close()


# ---------------------------------------------------------------------------------------------------------
# At scale: Redis Streams.

# KEYS: stream, index (hash key -> "<digest hex> <offset>"), counter. ARGV: source, then key, digest, body per
# row. Returns {"ok", offset or -offset (duplicate), ...} or {"conflict", key, old offset}. All or nothing: the
# checks run before the first write.
_APPEND_LUA = """
local source = ARGV[1]
local n = (#ARGV - 1) / 3
local seen = {}
for i = 0, n - 1 do
  local key, digest = ARGV[2 + 3 * i], ARGV[3 + 3 * i]
  local held = redis.call('HGET', KEYS[2], source .. '\\0' .. key) or seen[key]
  if held then
    local space = string.find(held, ' ', 1, true)
    if string.sub(held, 1, space - 1) ~= digest then
      return {'conflict', key, string.sub(held, space + 1)}
    end
  else
    seen[key] = digest .. ' 0'
  end
end
local out = {'ok'}
for i = 0, n - 1 do
  local key, digest, body = ARGV[2 + 3 * i], ARGV[3 + 3 * i], ARGV[4 + 3 * i]
  local field = source .. '\\0' .. key
  local held = redis.call('HGET', KEYS[2], field)
  if held then
    local space = string.find(held, ' ', 1, true)
    table.insert(out, -tonumber(string.sub(held, space + 1)))
  else
    local offset = redis.call('INCR', KEYS[3])
    redis.call('XADD', KEYS[1], '0-' .. offset, 'source', source, 'key', key, 'body', body, 'kind', 'event')
    redis.call('HSET', KEYS[2], field, digest .. ' ' .. offset)
    table.insert(out, offset)
  end
end
return out
"""

_CORRECT_LUA = """
local offset = redis.call('INCR', KEYS[3])
redis.call('XADD', KEYS[1], '0-' .. offset, 'source', ARGV[1], 'key', ARGV[2], 'body', ARGV[4], 'kind', 'correction',
           'note', ARGV[5])
redis.call('HSET', KEYS[2], ARGV[1] .. '\\0' .. ARGV[2], ARGV[3] .. ' ' .. offset)
return offset
"""


class RedisEventLog:
    """The log on a Redis server: stream ``<prefix>:log``, key index ``<prefix>:keys``, counter ``<prefix>:next``."""

    def __init__(self, url: str, prefix: str = "trellis", *, durable: bool = True):
        import redis

        self.prefix = prefix
        self._keys = [f"{prefix}:log", f"{prefix}:keys", f"{prefix}:next"]
        try:
            self._client = redis.Redis.from_url(url, socket_timeout=5)
            if durable and self._client.config_get("appendonly").get("appendonly") != "yes":
                raise LogUnavailable(
                    f"event log {url}: the server does not persist writes (appendonly is not 'yes'); a restart "
                    f"would lose acknowledged rows. Turn on AOF, or open the log with durable=False")
            self._append = self._client.register_script(_APPEND_LUA)
            self._correct = self._client.register_script(_CORRECT_LUA)
        except redis.RedisError as exc:
            raise LogUnavailable(f"event log {url}: {exc}") from None

    def append(self, source: str, rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> Appended:
        return append_one(self, source, rows, keys)

    def append_many(self, batches: Sequence[Batch]) -> list[Appended | LogConflict]:
        """Each batch by one script call (atomic on the server), in order."""
        return [self._append_batch(source, rows, keys) for source, rows, keys in batches]

    def _append_batch(self, source: str, rows: Sequence[Mapping[str, Any]],
                      keys: Sequence[str]) -> Appended | LogConflict:
        import redis

        args: list[Any] = [source]
        bodies = []
        for row, key in zip(rows, keys, strict=True):
            body = canonical(row)
            bodies.append(body)
            args += [key, hashlib.sha256(body).hexdigest(), body]
        if not bodies:
            return Appended((), 0, 0)
        try:
            result = self._append(keys=self._keys, args=args)
        except redis.RedisError as exc:
            raise LogUnavailable(f"event log: {exc}; nothing was logged") from None
        if result[0] == b"conflict":
            key, offset = result[1].decode(), int(result[2])
            body = bodies[list(keys).index(key)]
            old = self._entry(offset) if offset else None
            return LogConflict(source, key, differing(old.row, orjson.loads(body)) if old is not None else [])
        offsets = [abs(int(x)) for x in result[1:]]
        entries = tuple(LogEntry(int(x), source, key, orjson.loads(body))
                        for x, key, body in zip(result[1:], keys, bodies, strict=True) if int(x) > 0)
        return Appended(tuple(offsets), len(entries), len(offsets) - len(entries), entries)

    def correct(self, source: str, row: Mapping[str, Any], key: str, reason: str) -> int:
        if not reason.strip():
            raise ValueError("a correction needs a reason")
        body = canonical(row)
        return int(self._correct(keys=self._keys, args=[source, key, hashlib.sha256(body).hexdigest(), body, reason]))

    def _entry(self, offset: int) -> LogEntry | None:
        found = self._client.xrange(self._keys[0], f"0-{offset}", f"0-{offset}")
        return self._entries(found)[0] if found else None

    @staticmethod
    def _entries(raw: list[Any]) -> list[LogEntry]:
        return [LogEntry(int(entry_id.split(b"-")[1]), fields[b"source"].decode(), fields[b"key"].decode(),
                         orjson.loads(fields[b"body"])) for entry_id, fields in raw]

    def read(self, after: int, limit: int = 10_000) -> list[LogEntry]:
        import redis

        try:
            return self._entries(self._client.xrange(self._keys[0], f"(0-{after}", "+", count=limit))
        except redis.RedisError as exc:
            raise LogUnavailable(f"event log: {exc}") from None

    def last_offset(self) -> int:
        import redis

        try:
            return int(self._client.get(self._keys[2]) or 0)
        except redis.RedisError as exc:
            raise LogUnavailable(f"event log: {exc}") from None

    def close(self) -> None:
        self._client.close()


def open_log(url: str | Path, *, sync: str = "full") -> EventLog:
    """The log at ``url``: a file path (SQLite, ``sync`` one of ``SYNC_MODES``) or
    ``redis://host:port/db?prefix=P&durable=false``."""
    text = str(url)
    if text.startswith(("redis://", "rediss://")):
        parsed = urlparse(text)
        query = parse_qs(parsed.query)
        base = parsed._replace(query="").geturl()
        return RedisEventLog(base, prefix=query.get("prefix", ["trellis"])[0],
                             durable=query.get("durable", ["true"])[0].lower() != "false")
    return SqliteEventLog(text, sync=sync)


__all__ = [
    "Appended",
    "EventLog",
    "LogConflict",
    "LogEntry",
    "LogUnavailable",
    "RedisEventLog",
    "SqliteEventLog",
    "canonical",
    "decode_row",
    "differing",
    "logged_rows",
    "open_log",
    "read_logged",
    "row_key",
]
