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
    SLACK_US,
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
)
from trellis.online.store import OnlineStore, decode_bytes_value, encode_values, key_encoder
from trellis.spec import Project


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
        blob = self.store.read_values(state_view(group), [self.encoders[group](key)], STATE_FIELD)[0]
        data = decode_bytes_value(blob)
        return None if data is None else Tail.decode(self.specs[group], data)

    def vector(self, group: str, key: Any, t_us: int) -> GroupVector:
        """The group's features for entity ``key`` as of ``t_us`` (µs since the epoch)."""
        tail = None if key is None else self.tail(group, key)
        if tail is None:
            return GroupVector(dict(self.defaults[group]), known=False)
        spec = self.specs[group]
        if spec.horizon_us is not None and len(tail) and t_us < int(tail.event_us[-1]) - SLACK_US:
            newest = int(tail.event_us[-1])
            raise StateError(
                f"{self.entity_keys[group]}={key!r}: request time {_iso(t_us)} is more than "
                f"{SLACK_US // 3_600_000_000} h before the newest {spec.group} row of this entity "
                f"({_iso(newest)}); the online state keeps only what requests from then on need "
                f"(score older times offline: trellis.scoring)")
        return GroupVector(evaluate(spec, tail, t_us), known=True)


def _iso(t_us: int) -> str:
    return (datetime(1970, 1, 1) + timedelta(microseconds=t_us)).isoformat()


__all__ = ["GroupVector", "IngestReport", "OnlineFeatures"]
