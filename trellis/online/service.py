"""The online feature path of a project: ingest source rows into the streaming state, and serve feature
vectors as of a request time. Used by the scoring service, the parity replay and the tests alike."""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from trellis.online.state import (
    STATE_FIELD,
    GroupSpec,
    RowMapper,
    StateError,
    Tail,
    empty_values,
    evaluate,
    group_spec,
    row_mapper,
    state_view,
    unanswerable,
)
from trellis.online.store import OnlineStore, StoreUnavailable, decode_bytes_value, encode_values, key_encoder
from trellis.spec import Project

if TYPE_CHECKING:
    from trellis.online.eventlog import EventLog

TAIL_CACHE_BYTES = 64 << 20  # decoded tails kept per OnlineFeatures (about; emptied when over)


LOG_CONSUMER = "online"  # the online state's name as a consumer of the event log
STATE_FINGERPRINT = "state_fingerprint"  # the store's record of the definitions its state was built from


def state_fingerprint(specs: Mapping[str, GroupSpec]) -> str:
    """What a stored state's layout and meaning depend on: every online group's spec (its inputs, features,
    windows and horizon). A state written under another fingerprint cannot be read with these definitions."""
    text = json.dumps({g: spec.to_literal() for g, spec in sorted(specs.items())}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class StateMismatch(StoreUnavailable):
    """The stored state was built from other definitions than the loaded ones: re-materialize it."""


CATCH_UP_BATCH = 5_000  # log entries applied per transaction when catching up


@dataclass(frozen=True)
class IngestReport:
    source: str
    rows: int
    groups: tuple[str, ...]
    entities: int
    new: int = 0  # rows appended to the event log (without a log: rows applied)
    duplicates: int = 0  # rows the log already held with the same content (counted once)
    offset: int = 0  # the highest log offset of these rows (a duplicate's: where it was first logged; 0: no log)


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

    def check_state(self) -> None:
        """Raise ``StateMismatch`` unless the store's state was materialized from these definitions (a store
        materialized before fingerprints were recorded passes: nothing to compare)."""
        stored = self.store.meta(STATE_FINGERPRINT)
        if stored is not None and stored != self.fingerprint:
            raise StateMismatch(f"the online state was materialized from other definitions (state fingerprint "
                                f"{stored}, loaded {self.fingerprint}): materialize online/materialized again")

    # -- ingestion ---------------------------------------------------------------------------------------

    def ingest(self, source: str, records: Sequence[Mapping[str, Any]]) -> IngestReport:
        """Take rows of ``source``. With an event log: append them durably (duplicates counted once, a
        conflict refused whole: ``LogConflict``), then bring the state up to the log (``catch_up``); a
        ``StoreUnavailable`` from the catch-up leaves the rows logged but not applied yet (the next catch-up
        applies them; re-sending them is a duplicate). Without a log (the parity replay, tests): apply them
        directly. Either way every group the source feeds is updated in one transaction, or none."""
        if source not in self.project.sources:
            raise StateError(f"unknown source {source!r}; known: {', '.join(sorted(self.project.sources))}")
        groups = tuple(self.by_source.get(source, []))
        if self.log is None:
            with self._lock:
                batches, entities = self._merged({source: records})
                self.store.apply(batches)
            return IngestReport(source, len(records), groups, entities, new=len(records))
        from trellis.online.eventlog import row_key

        pk = self.project.sources[source].primary_key
        appended = self.log.append(source, records, [row_key(pk, r) for r in records])
        self.catch_up()
        entities = len({(g, self.mappers[g].key(r)) for g in groups for r in records})
        return IngestReport(source, len(records), groups, entities, new=appended.new,
                            duplicates=appended.duplicates, offset=appended.last)

    def catch_up(self) -> int:
        """Apply every log entry the stored state does not hold yet, ``CATCH_UP_BATCH`` at a time, each batch
        with its log position in one transaction (so the state is always "the log up to its position" and no
        entry is applied twice, whatever crashes); returns the number of entries applied."""
        if self.log is None:
            return 0
        from trellis.online.eventlog import decode_row
        from trellis.online.store import Position, PositionMoved

        applied = 0
        with self._lock:
            while True:
                held = self.store.position(LOG_CONSUMER)
                entries = self.log.read(held.offset if held else 0, CATCH_UP_BATCH)
                if not entries:
                    return applied
                latest: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)  # a correction wins
                for entry in entries:
                    source = self.project.sources.get(entry.source)
                    if source is not None:  # a source no longer defined: nothing of the state reads it
                        latest[entry.source][entry.key] = decode_row(entry.row, source.timestamp_columns)
                batches, _ = self._merged({name: list(rows.values()) for name, rows in latest.items()})
                position = Position(held.epoch if held else "", entries[-1].offset)
                try:
                    self.store.apply(batches, consumer=LOG_CONSUMER, expect=held, position=position)
                except PositionMoved:  # another process applied or refreshed meanwhile: read again
                    continue
                applied += len(entries)

    def _merged(self, rows: Mapping[str, Sequence[Mapping[str, Any]]]) -> tuple[dict[str, list[Any]], int]:
        """The new state rows of every group fed by ``rows`` ({source: records}): each entity's stored tail
        with its rows merged in (rows of one entity merged together). Returns ({state view: rows}, entities)."""
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
        now = datetime.now(UTC)
        batches: dict[str, list[Any]] = {}
        entities = 0
        for g, by_key in per_group.items():
            spec, mapper = self.specs[g], self.mappers[g]
            keys = list(by_key)
            encoded = [self.encoders[g](k) for k in keys]
            current = self.store.read_values(state_view(g), encoded, STATE_FIELD)
            blobs = [Tail.decode(spec, decode_bytes_value(blob)).merge(spec, mapper.tail(by_key[key])).encode()
                     for key, blob in zip(keys, current, strict=True)]
            batches[state_view(g)] = [(key_bytes, {STATE_FIELD: value}, now)
                                      for key_bytes, value in zip(encoded, encode_values("bytes", blobs), strict=True)]
            entities += len(keys)
        return batches, entities

    # -- serving -----------------------------------------------------------------------------------------

    def tail(self, group: str, key: Any) -> Tail | None:
        encoded = self.encoders[group](key)
        return self._decoded(group, encoded, self.store.read_values(state_view(group), [encoded], STATE_FIELD)[0])

    def _decoded(self, group: str, encoded: bytes, value: bytes | None) -> Tail | None:
        """The tail stored as ``value`` (a serialised Feast value; None: no state), decoded once per distinct
        value of an entity."""
        if not value:
            return None
        cache_key = (group, encoded)
        hit = self._tails.get(cache_key)
        if hit is not None and hit[0] == value:
            return hit[1]
        try:
            tail = Tail.decode(self.specs[group], decode_bytes_value(value))
        except (StateError, ValueError, IndexError, struct.error) as exc:
            raise StateMismatch(f"the stored state of group {group!r} does not fit the loaded definitions "
                                f"({exc}): materialize online/materialized again") from None
        if self._tails_bytes > TAIL_CACHE_BYTES:
            self._tails, self._tails_bytes = {}, 0
        self._tails[cache_key] = (value, tail)
        self._tails_bytes += 2 * len(value)  # the value and the decoded copy
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

    def _read_states(self, wanted: Sequence[tuple[str, bytes]]) -> list[bytes | None]:
        """The stored state value of each ``(group, key bytes)`` (None: no state), read together."""
        return self.store.read_many([(state_view(group), key) for group, key in wanted], STATE_FIELD)


__all__ = ["LOG_CONSUMER", "STATE_FINGERPRINT", "GroupVector", "IngestReport", "OnlineFeatures", "StateMismatch",
           "state_fingerprint"]
