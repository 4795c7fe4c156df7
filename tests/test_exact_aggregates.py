"""Exact aggregation of a column with a declared ``scale`` (amounts in cents): sums, means and standard
deviations come from exact integer sums, so the compiled SQL gives the same bits in any summation order
(DuckDB's segment trees, threads, more rows in a partition) and the online state gives the same bits again.

Same scenarios and brute-force reference as ``test_point_in_time``; here the values are compared bit for bit
between offline and online, and to the reference within 1e-9."""

from __future__ import annotations

import copy
import math
import struct
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pit_reference import HOUR, Event, mismatches, reference
from test_online_state import online_values
from test_point_in_time import (
    ENTITY,
    PROPERTY,
    RELATIONS,
    SOURCES,
    SPINE,
    as_source,
    by_row,
    event_table,
    feature_set,
    group_definition,
    run_sql,
    scenarios,
    spine_table,
    write_project,
)

from trellis.compile.offline import GroupCompiler, to_sql
from trellis.contracts import ingest
from trellis.errors import DefinitionError
from trellis.online.state import _exact, _sql_double
from trellis.spec import load_project

EXACT = feature_set((("sum", "amount"), ("mean", "amount"), ("std", "amount"), ("max", "amount")),
                    ("1h", "1d", "3d"), ("0s", "2d"))


def scaled_sources() -> list[dict[str, Any]]:
    sources = copy.deepcopy(SOURCES)
    for source in sources:
        if "amount" in source["columns"]:
            source["columns"]["amount"]["scale"] = 2
    return sources


@pytest.fixture(scope="module")
def exact_projects(tmp_path_factory: pytest.TempPathFactory):
    cache = {}

    def project(source: str):
        if source not in cache:
            group = group_definition(source, False, None, EXACT[0])
            cache[source] = write_project(tmp_path_factory.mktemp("exact"), group, sources=scaled_sources())
        return cache[source]

    return project


def bits(value: Any) -> Any:
    return None if value is None else struct.pack("<d", value) if isinstance(value, float) else value


@pytest.mark.slow
@pytest.mark.parametrize("source", ["events", "labels"], ids=["windows", "windows_and_late_rows"])
@PROPERTY
@given(data=scenarios(), seed=st.integers(0, 2**16))
def test_offline_and_online_give_the_same_bits(exact_projects, source: str, data, seed: int) -> None:
    """Every exact feature: the SQL's value and the online state's value are the same double (or both null),
    and both equal the reference within 1e-9. ``labels`` has late rows, so its SQL merges partial sums."""
    events, spine = data
    project = exact_projects(source)
    group = project.feature_groups["account_activity"]
    assert {f.name: f.scale for f in project.features(group)}["mean_amount_d0s_1d"] == 2
    sql = to_sql(GroupCompiler(project, group).point_in_time(spine=SPINE), RELATIONS)
    tables = {source: event_table(events, with_available_at=source == "labels"),
              "spine_tbl": spine_table(spine, "spine_id", "feature_ts")}
    offline = by_row(run_sql(sql, tables), "spine_id")
    online = online_values(project, events, spine, seed)
    expected = reference(as_source(events, source), spine, EXACT[1], False)
    assert not mismatches(expected, offline), "\n".join(mismatches(expected, offline))
    for row_id, values in online.items():
        for name, value in values.items():
            assert bits(value) == bits(offline[row_id][name]), (row_id, name, value, offline[row_id][name])


@pytest.mark.slow
def test_the_sql_gives_the_same_bits_whatever_the_summation_order(exact_projects) -> None:
    """One busy account (a few thousand rows, so DuckDB's windows use segment trees), computed by the default
    window mode, frame by frame (``debug_window_mode = 'separate'``), on 1 and 2 threads, and with the rows
    shuffled and other accounts added: the exact features are bit-identical in every run."""
    project = exact_projects("events")
    compiler = GroupCompiler(project, project.feature_groups["account_activity"])
    sql = to_sql(compiler.point_in_time(), RELATIONS)
    rng = np.random.default_rng(11)
    n = 4000
    base = pd.DataFrame({
        "event_id": np.arange(n), "account_id": 1,
        "ts": pd.Timestamp("2024-01-01") + pd.to_timedelta(np.sort(rng.integers(0, 20 * 86_400, n)), unit="s"),
        "amount": rng.gamma(2.0, 40.0, n).round(2), "qty": 1, "merchant": "m0", "flag": 0})
    others = base.assign(event_id=base["event_id"] + n, account_id=rng.integers(2, 50, n),
                         amount=rng.gamma(2.0, 90.0, n).round(2))
    names = [f.name for f in project.features(project.feature_groups["account_activity"])
             if f.scale is not None]

    def run(frame: pd.DataFrame, *settings: str) -> pd.DataFrame:
        con = duckdb.connect()
        try:
            for setting in settings:
                con.execute(setting)
            con.register("events_frame", frame)
            con.execute('create table "events" as select * from events_frame')
            out = con.execute(sql).df()
        finally:
            con.close()
        return out[out["account_id"] == 1].set_index("event_id").sort_index()[names]

    first = run(base)
    runs = {
        "separate frames": run(base, "set debug_window_mode = 'separate'"),
        "1 thread": run(base, "set threads = 1"),
        "shuffled, more accounts": run(pd.concat([base, others]).sample(frac=1.0, random_state=3)),
    }
    assert first.notna().to_numpy().sum() > n  # real values, not all nulls
    for label, other in runs.items():
        for name in names:
            a, b = first[name].to_numpy(), other[name].to_numpy()
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            assert same.all(), f"{label}: {name} differs in {int((~same).sum())} rows"


def test_large_amounts_do_not_overflow(exact_projects) -> None:
    """Amounts of tens of millions (their squares in cents pass BIGINT): the SQL squares in DECIMAL(38, 0),
    and offline and online still agree bit for bit."""
    project = exact_projects("events")
    group = project.feature_groups["account_activity"]
    sql = to_sql(GroupCompiler(project, group).point_in_time(spine=SPINE), RELATIONS)
    amounts = [45_000_000.01, 38_123_456.78, 99_999_999.99, 0.01, 31_000_000.5]
    events = [Event(key=1, ts=i * HOUR, available_at=i * HOUR,
                    values={"amount": a, "qty": 1, "merchant": "m0", "flag": 0}) for i, a in enumerate(amounts)]
    spine = [(0, 1, 10 * HOUR), (1, 1, 3 * HOUR + 1)]
    offline = by_row(run_sql(sql, {"events": event_table(events, with_available_at=False),
                                   "spine_tbl": spine_table(spine, "spine_id", "feature_ts")}), "spine_id")
    online = online_values(project, events, spine, seed=1)
    assert offline[0]["std_amount_d0s_all"] is not None
    for row_id, values in online.items():
        for name, value in values.items():
            assert bits(value) == bits(offline[row_id][name]), (row_id, name, value, offline[row_id][name])


def test_the_python_formulas_are_the_sql_formulas() -> None:
    """``_sql_double`` is DuckDB's HUGEINT to DOUBLE cast bit for bit, beyond 2^64 and below zero too, and the
    exact mean and std computed by DuckDB from the same integers are ``_exact``'s."""
    rng = np.random.default_rng(5)
    big = [int(x) for x in rng.integers(0, 2**62, 300)]
    values = [a * b for a, b in zip(big, big[::-1], strict=True)] + [-v for v in big] + [2**64 + 1, -(2**64) - 3]
    con = duckdb.connect()
    got = [r[0] for r in con.execute("select cast(cast(v as hugeint) as double) from unnest(?) t(v)",
                                     [[str(v) for v in values]]).fetchall()]
    assert [_sql_double(v) for v in values] == got
    units = [int(x) for x in rng.integers(0, 10_000_000, 500)]
    s, q, n = sum(units), sum(u * u for u in units), len(units)
    mean, std = con.execute(
        "select cast(s as double) / cast(n * 100 as double), "
        "sqrt(cast(n * q - s * s as double) / cast(n * (n - 1) as double)) / 100 "
        "from (select ?::hugeint s, ?::hugeint q, ?::bigint n)", [str(s), str(q), n]).fetchone()
    assert (mean, std) == (_exact("mean", units, 100), _exact("std", units, 100))
    assert _exact("std", [1234] * 7, 100) == 0.0 and _exact("std", [5], 100) is None
    assert math.isclose(_exact("std", units, 100), float(np.std(np.array(units) / 100, ddof=1)), rel_tol=1e-12)


def test_off_scale_values_are_quarantined_with_the_reason(exact_projects) -> None:
    project = exact_projects("events")
    frame = pd.DataFrame({"event_id": [1, 2, 3, 4], "account_id": [1, 1, 2, 2],
                          "ts": pd.to_datetime(["2024-01-01"] * 4), "amount": [12.34, 12.345, None, 0.1],
                          "qty": 1, "merchant": "m0", "flag": 0})
    con = duckdb.connect()
    con.register("events_frame", frame)
    con.execute('create table "events" as select * from events_frame')
    result = ingest(con, project, project.sources["events"])
    assert (result.rows_in, result.rows_accepted, result.rows_quarantined) == (4, 3, 1)
    reason = con.execute("select event_id, _reason from quarantine.events").fetchall()
    assert reason == [(2, "amount: a multiple of 0.01 (scale 2) (got 12.345)")]


def test_scale_is_only_for_float_columns(tmp_path) -> None:
    sources = scaled_sources()
    sources[0]["columns"]["qty"]["scale"] = 2
    (tmp_path / "definitions").mkdir()
    (tmp_path / "definitions" / "project.yaml").write_text(yaml.safe_dump([ENTITY, *sources]))
    with pytest.raises(DefinitionError, match=r"scale 2 is for float64 columns; this column is int64"):
        load_project(tmp_path)

