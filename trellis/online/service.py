"""The online feature path of a project: ingest source rows into the streaming state, and serve feature
vectors as of a request time. Used by the scoring service, the parity replay and the tests alike."""

from __future__ import annotations

import contextlib
import hashlib
import json
import struct
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from trellis.batching import Stage, WriterClosed
from trellis.online.state import (
    DELTA_FIELD,
    STATE_FIELD,
    GroupSpec,
    RowMapper,
    StateError,
    Tail,
    empty_values,
    evaluate,
    group_spec,
    joined,
    merge_states,
    row_mapper,
    state_view,
    unanswerable,
)
from trellis.online.store import OnlineStore, StoreUnavailable, decode_bytes_value, encode_values, key_encoder
from trellis.spec import Project

if TYPE_CHECKING:
    from trellis.online.eventlog import Appended, EventLog, LogEntry
    from trellis.online.store import Position

TAIL_CACHE_BYTES = 64 << 20  # decoded tails kept per OnlineFeatures (about; emptied when over)


LOG_CONSUMER = "online"  # the online state's name as a consumer of the event log
STATE_FINGERPRINT = "state_fingerprint"  # the store's record of the definitions its state was built from


def state_fingerprint(specs: Mapping[str, GroupSpec]) -> str:
    """What a stored state's layout and meaning depend on: every online group's spec (its inputs, features,
    windows and horizon), and the fields it is stored in (a service that read only the tails would miss the
    deltas). A state written under another fingerprint cannot be read with these definitions."""
    text = json.dumps({"fields": STATE_FIELDS, "groups": {g: spec.to_literal() for g, spec in specs.items()}},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StateMismatch(StoreUnavailable):
    """The stored state was built from other definitions than the loaded ones: re-materialize it."""


class NotApplied(StoreUnavailable):
    """Rows logged durably (acknowledged) but not applied to the online state yet: the next catch-up applies
    them; re-sending them is a duplicate. ``report`` says what was logged."""

    def __init__(self, reason: str, report: IngestReport):
        super().__init__(reason)
        self.report = report


CATCH_UP_BATCH = 5_000  # log entries applied per transaction when catching up
WRITE_GROUP_ROWS = 5_000  # rows of waiting requests the writer logs and applies together (at least one request)


@dataclass(frozen=True)
class IngestReport:
    source: str
    rows: int
    groups: tuple[str, ...]
    entities: int
    new: int = 0  # rows appended to the event log (without a log: rows applied)
    duplicates: int = 0  # rows the log already held with the same content (counted once)
    offset: int = 0  # the highest log offset of these rows (a duplicate's: where it was first logged; 0: no log)


@dataclass
class _Pending:
    source: str
    records: Sequence[Mapping[str, Any]]
    keys: list[str]
    future: Future[IngestReport]


@dataclass(frozen=True)
class GroupVector:
    values: dict[str, Any]
    known: bool  # False: the entity has no state; values are the group's empty-window defaults


class OnlineFeatures:
    """Streaming state of every online group of ``project`` in ``store`` (a Feast online store)."""

    def __init__(self, project: Project, store: OnlineStore, groups: Sequence[str] | None = None,
                 log: EventLog | None = None):
        self.project = project
        self.store = store
        self.log = log
        names = list(groups) if groups is not None else [
            g.name for g in project.feature_groups.values() if g.online]
        self.specs: dict[str, GroupSpec] = {g: group_spec(project, g) for g in names}
        self.mappers: dict[str, RowMapper] = {g: row_mapper(project, g, self.specs[g]) for g in names}
        self.defaults = {g: empty_values(spec) for g, spec in self.specs.items()}
        self.entity_keys: dict[str, str] = {}
        self.encoders = {}
        self.by_source: dict[str, list[str]] = defaultdict(list)
        for g in names:
            group = project.feature_groups[g]
            entity = project.entities[group.entity]
            self.entity_keys[g] = entity.join_key
            self.encoders[g] = key_encoder(entity.join_key, entity.key_type)
            self.by_source[group.source].append(g)
        self._lock = threading.Lock()
        # Decoded tails by (group, key bytes), each with the stored value it was decoded from: a read whose
        # value is byte-equal to the cached one reuses the decoded tail (decoding is a pure function of those
        # bytes), anything else decodes afresh. Every read still goes to the store, so ingestion and a
        # materialization by another process are seen at once: no invalidation to get wrong.
        self._tails: dict[tuple[str, bytes], tuple[bytes, Tail]] = {}
        self._tails_bytes = 0
        self.fingerprint = state_fingerprint(self.specs)
        self._held: Position | None = None  # the log position the state was last seen at (checked on write)
        self.behind: str | None = None  # why rows logged by the writer are not applied yet (None: they are)
        self._logging: Stage | None = None  # the writer's two stages (started by the first submit)
        self._starting = threading.Lock()
        self._applying: Stage | None = None

    def check_state(self) -> None:
        """Raise ``StateMismatch`` unless the store's state was materialized from these definitions (a store
        materialized before fingerprints were recorded passes: nothing to compare)."""
        stored = self.store.meta(STATE_FINGERPRINT)
        if stored is not None and stored != self.fingerprint:
            raise StateMismatch(f"the online state was materialized from other definitions (state fingerprint "
                                f"{stored}, loaded {self.fingerprint}): materialize online/materialized again")

    # -- ingestion ---------------------------------------------------------------------------------------

    def ingest(self, source: str, records: Sequence[Mapping[str, Any]]) -> IngestReport:
        """Take rows of ``source``. With an event log: ``submit`` them and wait. Without a log (the parity
        replay, tests): apply them directly. Either way every group the source feeds is updated in one
        transaction, or none."""
        if self.log is not None:
            return self.submit(source, records).result()
        groups = self._groups(source)
        with self._lock:
            entities = self._write({source: records})
        return IngestReport(source, len(records), groups, entities, new=len(records))

    def submit(self, source: str, records: Sequence[Mapping[str, Any]]) -> Future[IngestReport]:
        """Hand rows of ``source`` to the writer; the future ends when they are logged durably and applied to
        the state (an ``IngestReport``), or with the reason they are not: ``LogConflict`` (a row's key logged
        with other content; nothing of this request logged), ``LogUnavailable`` (nothing logged),
        ``NotApplied`` (logged durably, acknowledged, not applied yet: the next catch-up applies them and
        re-sending them is a duplicate).

        The writer is a pipeline of two threads. The first takes every request waiting (up to
        ``WRITE_GROUP_ROWS`` rows) and appends them to the log in one transaction: one fsync for all, each
        request still all-or-nothing on its own. The second takes everything the first has logged meanwhile and
        applies it to the state in one transaction with the log position. So the log's fsync for the next
        requests overlaps the state's write for the previous ones (SQLite leaves the GIL while it commits),
        concurrent requests cost a commit per group, not each, and the threads answering requests only wait.
        (One thread doing both measured 1,810 events/s, p99 5.5 ms at 4 connections, against 1,890 events/s,
        p99 4.5-4.9 ms: bench/bench_ingest.py's setting, session 7.)"""
        if self.log is None:
            raise StateError("no event log: use ingest")
        from trellis.online.eventlog import row_key

        self._groups(source)
        pk = self.project.sources[source].primary_key
        pending = _Pending(source, records, [row_key(pk, r) for r in records], Future())
        try:
            self._writer().put(pending)
        except WriterClosed:
            raise StoreUnavailable("the online writer is closed: the service is stopping") from None
        return pending.future

    def warm(self) -> None:
        """Start the writer and open the store's write connection now, so the first write after start-up costs
        what every other does (``StoreUnavailable`` is left to the first write to report)."""
        if self.log is None:
            return
        self._writer()
        with contextlib.suppress(StoreUnavailable):
            self.store.open_writer()

    def _writer(self) -> Stage:
        """The writer's first stage (both stages started on first use)."""
        if self._logging is None:
            with self._starting:
                if self._logging is None:
                    self._applying = Stage("online-apply", self._apply_group, lambda item: len(item[1].entries),
                                          limit=WRITE_GROUP_ROWS)
                    self._logging = Stage("online-log", self._log_group, lambda item: len(item.records),
                                          then=self._applying, limit=WRITE_GROUP_ROWS)
        return self._logging

    def close(self) -> None:
        """Stop the writer once the requests already submitted are answered."""
        if self._logging is not None:
            self._logging.close()

    def _groups(self, source: str) -> tuple[str, ...]:
        if source not in self.project.sources:
            raise StateError(f"unknown source {source!r}; known: {', '.join(sorted(self.project.sources))}")
        return tuple(self.by_source.get(source, []))

    def _log_group(self, group: Sequence[_Pending]) -> list[tuple[_Pending, Appended]]:
        """The writer's first stage: append the requests to the log; a request refused (``LogConflict``) is
        answered now, the others go on to ``_apply_group``."""
        from trellis.online.eventlog import Appended

        assert self.log is not None
        results = self.log.append_many([(p.source, p.records, p.keys) for p in group])
        logged = []
        for pending, result in zip(group, results, strict=True):
            if isinstance(result, Appended):
                logged.append((pending, result))
            else:
                pending.future.set_exception(result)
        return logged

    def _apply_group(self, logged: Sequence[tuple[_Pending, Appended]]) -> None:
        """The writer's second stage: apply logged requests to the state and answer them."""
        from trellis.online.eventlog import LogUnavailable

        reports = []
        for pending, appended in logged:
            groups = tuple(self.by_source.get(pending.source, []))
            entities = len({(g, self.mappers[g].key(r)) for g in groups for r in pending.records})
            reports.append(IngestReport(pending.source, len(pending.records), groups, entities, new=appended.new,
                                        duplicates=appended.duplicates, offset=appended.last))
        try:
            held = self._apply_logged([e for _, appended in logged for e in appended.entries])
            if held < max(appended.last for _, appended in logged):  # a duplicate logged but not applied yet
                self.catch_up()
        except (StoreUnavailable, StateError, LogUnavailable) as exc:
            self.behind = str(exc)
            for (pending, _), report in zip(logged, reports, strict=True):
                pending.future.set_exception(NotApplied(str(exc), report))
            return
        for (pending, _), report in zip(logged, reports, strict=True):
            pending.future.set_result(report)

    def _apply_logged(self, entries: Sequence[LogEntry]) -> int:
        """Apply ``entries``, just logged, to the state: directly when they are the next entries of the log
        after the state's position (the usual case: nothing else wrote to the log meanwhile), else by reading
        the log (``catch_up``). Returns the offset the state holds after."""
        from trellis.online.store import PositionMoved

        with self._lock:
            held = self._held if self._held is not None else self.store.position(LOG_CONSUMER)
            start = held.offset if held else 0
            if entries and all(e.offset == start + i for i, e in enumerate(entries, 1)):
                try:
                    return self._apply_entries(held, entries).offset
                except PositionMoved:  # another process applied or refreshed meanwhile
                    self._held = None
            elif not entries:
                return start
        self.catch_up()
        return self._held.offset if self._held is not None else 0

    def catch_up(self) -> int:
        """Apply every log entry the stored state does not hold yet, ``CATCH_UP_BATCH`` at a time, each batch
        with its log position in one transaction (so the state is always "the log up to its position" and no
        entry is applied twice, whatever crashes); returns the number of entries applied."""
        if self.log is None:
            return 0
        from trellis.online.store import PositionMoved

        applied = 0
        with self._lock:
            while True:
                held = self.store.position(LOG_CONSUMER)
                self._held = held
                entries = self.log.read(held.offset if held else 0, CATCH_UP_BATCH)
                if not entries:
                    return applied
                try:
                    self._apply_entries(held, entries)
                except PositionMoved:  # another process applied or refreshed meanwhile: read again
                    continue
                applied += len(entries)
                if len(entries) < CATCH_UP_BATCH:
                    return applied

    def _apply_entries(self, held: Position | None, entries: Sequence[LogEntry]) -> Position:
        """Apply log ``entries`` (the ones right after ``held``) and move the position to the last of them, in one
        transaction; ``PositionMoved`` (nothing written) when the stored position is not ``held``. The caller
        holds ``_lock``."""
        from trellis.online.eventlog import decode_row
        from trellis.online.store import Position

        latest: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)  # a correction wins
        for entry in entries:
            source = self.project.sources.get(entry.source)
            if source is not None:  # a source no longer defined: nothing of the state reads it
                latest[entry.source][entry.key] = decode_row(entry.row, source.timestamp_columns)
        position = Position(held.epoch if held else "", entries[-1].offset)
        self._write({name: list(rows.values()) for name, rows in latest.items()}, consumer=LOG_CONSUMER,
                    expect=held, position=position)
        self._held, self.behind = position, None  # the state holds the log up to here, earlier failures included
        return position

    def _write(self, rows: Mapping[str, Sequence[Mapping[str, Any]]], **position: Any) -> int:
        """Merge ``rows`` ({source: records}) into the state of every group they feed, in one transaction of the
        store (``OnlineStore.merge``: each entity's stored tail read, its rows merged in, written back), with
        ``position`` (``consumer``, ``expect``, ``position``) as ``OnlineStore.apply`` takes it. Returns the
        number of (group, entity) states written."""
        per_group: dict[str, dict[Any, list[Mapping[str, Any]]]] = {}
        for source, records in rows.items():
            for g in self.by_source.get(source, []):
                spec, mapper = self.specs[g], self.mappers[g]
                by_key = per_group.setdefault(g, defaultdict(list))
                for record in records:
                    key = mapper.key(record)
                    if key is None:
                        raise StateError(f"{source} row has no {spec.key_column!r}")
                    by_key[key].append(record)
        encoded = {state_view(g): [self.encoders[g](k) for k in by_key] for g, by_key in per_group.items()}

        def merged(current: dict[str, list[tuple[bytes | None, ...]]]) -> dict[str, list[Any]]:
            # Each entity's new (tail, delta) (``merge_states``), most writes computed for all entities at once;
            # only the values that change are written.
            now = datetime.now(UTC)
            out = {}
            for g, by_key in per_group.items():
                view = state_view(g)
                states = merge_states(self.mappers[g], [(decode_bytes_value(t), decode_bytes_value(d))
                                                        for t, d in current[view]], list(by_key.values()))
                out[view] = [(key, _changed(tail, delta), now)
                             for key, (tail, delta) in zip(encoded[view], states, strict=True)]
            return out

        self.store.merge(encoded, STATE_FIELDS, merged, **position)
        return sum(len(keys) for keys in encoded.values())

    # -- serving -----------------------------------------------------------------------------------------

    def tail(self, group: str, key: Any) -> Tail | None:
        encoded = self.encoders[group](key)
        return self._decoded(group, encoded, self.store.read_rows(state_view(group), [encoded], STATE_FIELDS)[0])

    def _decoded(self, group: str, encoded: bytes, values: tuple[bytes | None, ...]) -> Tail | None:
        """The tail stored as ``values`` (the serialised Feast values of the tail and its delta; None: no
        state), decoded once per distinct value of an entity."""
        if not values[0]:
            return None
        cache_key = (group, encoded)
        hit = self._tails.get(cache_key)
        if hit is not None and hit[0] == values:
            return hit[1]
        spec = self.specs[group]
        try:
            tail = Tail.decode(spec, joined(spec, decode_bytes_value(values[0]), decode_bytes_value(values[1])))
        except (StateError, ValueError, IndexError, struct.error) as exc:
            raise StateMismatch(f"the stored state of group {group!r} does not fit the loaded definitions "
                                f"({exc}): materialize online/materialized again") from None
        if self._tails_bytes > TAIL_CACHE_BYTES:
            self._tails, self._tails_bytes = {}, 0
        self._tails[cache_key] = (values, tail)
        self._tails_bytes += 2 * sum(len(v) for v in values if v)  # the values and the decoded copy
        return tail

    def vector(self, group: str, key: Any, t_us: int) -> GroupVector:
        """The group's features for entity ``key`` as of ``t_us`` (µs since the epoch)."""
        return self.vectors([(group, key)], t_us)[0]

    def vectors(self, wanted: Sequence[tuple[str, Any]], t_us: int) -> list[GroupVector]:
        """``vector`` of several ``(group, key)`` as of the same time; their states are read together (SQLite:
        in one statement)."""
        encoded = [None if key is None else self.encoders[group](key) for group, key in wanted]
        reads = [(group, k) for (group, _), k in zip(wanted, encoded, strict=True) if k is not None]
        values = iter(self._read_states(reads))
        out = []
        for (group, key), k in zip(wanted, encoded, strict=True):
            tail = None if k is None else self._decoded(group, k, next(values))
            if tail is None:
                out.append(GroupVector(dict(self.defaults[group]), known=False))
                continue
            spec = self.specs[group]
            if (why := unanswerable(spec, tail, t_us)) is not None:  # the guard the `_live` views obey too
                raise StateError(f"{self.entity_keys[group]}={key!r}: {why.reason}")
            out.append(GroupVector(evaluate(spec, tail, t_us), known=True))
        return out

    def _read_states(self, wanted: Sequence[tuple[str, bytes]]) -> list[tuple[bytes | None, ...]]:
        """The stored state values (tail, delta) of each ``(group, key bytes)`` (None: absent), read together."""
        return self.store.read_many([(state_view(group), key) for group, key in wanted], STATE_FIELDS)


STATE_FIELDS = (STATE_FIELD, DELTA_FIELD)


def _changed(tail: bytes | None, delta: bytes | None) -> dict[str, bytes]:
    """The state values to write (Feast's serialised bytes values) for what ``merge_states`` changed."""
    out = {}
    if tail is not None:
        out[STATE_FIELD] = encode_values("bytes", [tail])[0]
    if delta is not None:
        out[DELTA_FIELD] = encode_values("bytes", [delta])[0]
    return out


__all__ = ["LOG_CONSUMER", "STATE_FINGERPRINT", "GroupVector", "IngestReport", "NotApplied", "OnlineFeatures",
           "StateMismatch", "state_fingerprint"]
