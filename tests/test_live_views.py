"""Feast's own ``get_online_features`` on the generated ``<group>_live`` views obeys the online state's guard.

On the materialized pipeline, for a sample of entities of every online group and request times from weeks
before the newest data to after it, each row Feast returns is either exactly the offline point-in-time value
(the group's compiled SQL over ``validated.<source>`` with that spine) with ``state_status`` "ok", or every
feature null with ``state_status`` "too_old" — exactly where ``OnlineFeatures.vector`` (the scoring endpoint's
read) refuses with StateError. An entity with no state gets the declared empty-window values and "unknown",
as the endpoint gives its defaults."""

from __future__ import annotations

import random
import struct
from datetime import datetime, timedelta
from typing import Any

import duckdb
import ibis
import pytest

from trellis.compile.dbt import VALIDATED_SCHEMA
from trellis.compile.offline import FEATURE_TS, GroupCompiler, to_sql
from trellis.online.service import OnlineFeatures
from trellis.online.state import (
    STATUS_FIELD,
    STATUS_OK,
    STATUS_TOO_OLD,
    STATUS_UNKNOWN,
    StateError,
    to_us,
)
from trellis.online.store import OnlineStore
from trellis.spec import load_project

pytestmark = pytest.mark.slow

ENTITIES = {"customer_spending": 6, "device_sharing": 5, "terminal_risk": 6}  # 17 entities in all
# Request times before the newest row of the data: weeks (older than any busy entity's state answers), days,
# hours (near the 24 h slack) and after it.
BEFORE = [timedelta(days=60), timedelta(days=35), timedelta(days=14), timedelta(days=3), timedelta(hours=25),
          timedelta(hours=1), -timedelta(days=2)]
UNKNOWN_KEY = 987_654_321  # no entity of the reference data has this id


def bits(value: Any) -> Any:
    """A value compared bit for bit (offline and online floats are the same doubles)."""
    return struct.pack("<d", value) if isinstance(value, float) else value


def sample(con: duckdb.DuckDBPyConnection, project, group: str, n: int, rng: random.Random) -> list[Any]:
    """``n`` entities of the group: half the busiest (their state is pruned), half at random."""
    definition = project.feature_groups[group]
    source, key = definition.source, project.key_column(definition)
    counts = con.sql(f'select "{key}", count(*) from {VALIDATED_SCHEMA}."{source}" where "{key}" is not null '
                     f'group by 1 order by 2 desc, 1').fetchall()
    busy = [k for k, _ in counts[: n // 2]]
    rest = [k for k, _ in counts[n // 2:]]
    return busy + rng.sample(rest, n - len(busy))


def offline_truth(con: duckdb.DuckDBPyConnection, project, group: str,
                  rows: list[tuple[int, Any, datetime]]) -> dict[int, dict[str, Any]]:
    """The group's compiled point-in-time SQL over ``validated.*`` for the spine ``(row id, key, time)``."""
    definition = project.feature_groups[group]
    key = project.key_column(definition)
    key_type = project.entities[definition.entity].key_type
    spine = ibis.table({key: key_type, FEATURE_TS: "timestamp", "spine_id": "int64"}, name="live_spine")
    relations = {name: f'{VALIDATED_SCHEMA}."{name}"' for name in project.sources}
    sql = to_sql(GroupCompiler(project, definition).point_in_time(spine=spine), relations)
    con.execute("create or replace temp table live_spine "
                f'("{key}" {"varchar" if key_type == "string" else "bigint"}, {FEATURE_TS} timestamp, spine_id bigint)')
    con.executemany("insert into live_spine values (?, ?, ?)", [(k, t, i) for i, k, t in rows])
    result = con.sql(sql)
    names = result.columns
    return {r[names.index("spine_id")]: dict(zip(names, r, strict=True)) for r in result.fetchall()}


def test_live_views_answer_exactly_or_say_why_not(pipeline):
    from feast import FeatureStore

    _, paths = pipeline
    project = load_project(paths.root)
    feast_store = FeatureStore(repo_path=str(paths.feature_repo))
    online = OnlineFeatures(project, OnlineStore(paths.feature_repo))
    rng = random.Random(11)
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    problems: list[str] = []
    statuses: dict[str, int] = {STATUS_OK: 0, STATUS_TOO_OLD: 0, STATUS_UNKNOWN: 0}
    try:
        newest = con.sql(f'select max(tx_datetime) from {VALIDATED_SCHEMA}."transactions"').fetchone()[0]
        times = [newest - delta for delta in BEFORE]
        for group, n in ENTITIES.items():
            definition = project.feature_groups[group]
            key = project.key_column(definition)
            names = [f.name for f in project.features(definition)]
            keys = sample(con, project, group, n, rng)
            rows = [(i, k, t) for i, (k, t) in enumerate((k, t) for k in keys for t in times)]
            truth = offline_truth(con, project, group, rows)
            rows.append((len(rows), UNKNOWN_KEY, times[-1]))
            got = feast_store.get_online_features(
                features=[f"{group}_live:{name}" for name in [*names, STATUS_FIELD]],
                entity_rows=[{key: k, "request_ts": t} for _, k, t in rows]).to_dict()
            for i, k, t in rows:
                status = got[STATUS_FIELD][i]
                statuses[status] = statuses.get(status, 0) + 1
                values = {name: got[name][i] for name in names}
                where = f"{group} {key}={k} at {t}"
                try:
                    vector = online.vector(group, k, to_us(t))
                except StateError:
                    if status != STATUS_TOO_OLD or any(v is not None for v in values.values()):
                        problems.append(f"{where}: the endpoint refuses, Feast gave {status!r} {values}")
                    continue
                if not vector.known:
                    if status != STATUS_UNKNOWN or values != vector.values:
                        problems.append(f"{where}: no state, Feast gave {status!r} {values}")
                    continue
                if status != STATUS_OK:
                    problems.append(f"{where}: the endpoint answers, Feast said {status!r}")
                for name in names:
                    want = truth[i][name]
                    if bits(values[name]) != bits(want) or bits(vector.values[name]) != bits(want):
                        problems.append(f"{where} {name}: offline {want!r}, Feast {values[name]!r}, "
                                        f"endpoint {vector.values[name]!r}")
    finally:
        con.close()
    assert not problems, f"{len(problems)} problems, first ones:\n" + "\n".join(problems[:25])
    # The sample spans both sides of the guard (and an unknown entity per group).
    assert statuses[STATUS_OK] >= 20 and statuses[STATUS_TOO_OLD] >= 20, statuses
    assert statuses[STATUS_UNKNOWN] == len(ENTITIES), statuses
