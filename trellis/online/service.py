"""The online feature path of a project: ingest source rows into the streaming state, and serve feature
vectors as of a request time. Used by the scoring service, the parity replay and the tests alike."""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

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
from trellis.online.store import OnlineStore, decode_bytes_value, encode_values, key_encoder
from trellis.spec import Project

TAIL_CACHE_BYTES = 64 << 20  # decoded tails kept per OnlineFeatures (about; emptied when over)


@dataclass(frozen=True)
class IngestReport:
    source: str
    rows: int
    groups: tuple[str, ...]
    entities: int


@dataclass(frozen=True)
class GroupVector:
    values: dict[str, Any]
    known: bool  # False: the entity has no state; values are the group's empty-window defaults


class OnlineFeatures:
    """Streaming state of every online group of ``project`` in ``store`` (a Feast online store)."""

    def __init__(self, project: Project, store: OnlineStore, groups: Sequence[str] | None = None):
        self.project = project
        self.store = store
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

    # -- ingestion ---------------------------------------------------------------------------------------

    def ingest(self, source: str, records: Sequence[Mapping[str, Any]]) -> IngestReport:
        """Add rows of ``source`` to the state of every online group that reads it (read, merge, write
        through Feast's ``online_write_batch``). Rows for the same entity in one call are merged together."""
        if source not in self.project.sources:
            raise StateError(f"unknown source {source!r}; known: {', '.join(sorted(self.project.sources))}")
        groups = self.by_source.get(source, [])
        entities = 0
        with self._lock:
            for g in groups:
                spec, mapper = self.specs[g], self.mappers[g]
                by_key: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
                for record in records:
                    key = mapper.key(record)
                    if key is None:
                        raise StateError(f"{source} row has no {spec.key_column!r}: {dict(record)!r}")
                    by_key[key].append(record)
                keys = list(by_key)
                encoded = [self.encoders[g](k) for k in keys]
                current = self.store.read_values(state_view(g), encoded, STATE_FIELD)
                blobs = [Tail.decode(spec, decode_bytes_value(blob)).merge(spec, mapper.tail(by_key[key])).encode()
                         for key, blob in zip(keys, current, strict=True)]
                now = datetime.now(UTC)
                self.store.write_through_feast({state_view(g): [
                    (key_bytes, {STATE_FIELD: value}, now)
                    for key_bytes, value in zip(encoded, encode_values("bytes", blobs), strict=True)]})
                entities += len(keys)
        return IngestReport(source, len(records), tuple(groups), entities)

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
        tail = Tail.decode(self.specs[group], decode_bytes_value(value))
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


def _iso(t_us: int) -> str:
    return (datetime(1970, 1, 1) + timedelta(microseconds=t_us)).isoformat()


__all__ = ["GroupVector", "IngestReport", "OnlineFeatures"]
