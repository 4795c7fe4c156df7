"""Training sets: matured-label spine, ASOF point-in-time features, request features, fingerprint, contract.

Two warehouses hold the same simulated network: ``at_t`` as it was known just before the cutoff T (events
before T, labels available before T) and ``later`` after more data arrived (events after T, late labels
for old transactions, and late labels flipped). A set built as of T must be byte-identical in both.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from trellis.compile.dbt import FeatureModel
from trellis.contracts import ingest
from trellis.simulate import SimulationConfig, simulate, write_duckdb
from trellis.spec import load_project
from trellis.training import (
    TrainingSetError,
    build_training_set,
    read_training_set,
    training_set_schema,
    training_set_sql,
    validate,
)

REPO = Path(__file__).resolve().parent.parent
CONFIG = SimulationConfig(n_customers=150, n_terminals=300, n_days=40, label_delay="uniform")
T = datetime(2018, 4, 29, 13, 37, 0)  # day 28 of 40, mid-afternoon
MODEL = "card_fraud"
KNOWN = "coalesce(available_at, tx_datetime)"


def _warehouse(path: Path, project, tables, *, known_before: datetime | None = None,
               flip_after: datetime | None = None, exact_windows: bool = True) -> duckdb.DuckDBPyConnection:
    write_duckdb(tables, path, schema="raw")
    con = duckdb.connect(str(path))
    if exact_windows:
        # DuckDB's segment-tree window aggregates round float sums differently when a partition holds more
        # rows (here: rows after T), so rebuilt feature tables differ in the last bit (~1e-16) for rows
        # before T. Computing each frame separately makes them bit-stable; see test_feature_table_rounding.
        con.execute("set debug_window_mode = 'separate'")
    for source in project.sources.values():
        ingest(con, project, source)
    if known_before is not None:  # the world as known just before the cutoff
        con.execute("delete from validated.transactions where tx_datetime >= ?", [known_before])
        con.execute(f"delete from validated.fraud_labels where {KNOWN} >= ?", [known_before])
    if flip_after is not None:  # late labels disagree with what an earlier reading would have said
        con.execute(f"update validated.fraud_labels set tx_fraud = 1 - tx_fraud where {KNOWN} >= ?", [flip_after])
    _build_features(con, project)
    return con


def _build_features(con: duckdb.DuckDBPyConnection, project) -> None:
    con.execute("create schema if not exists features")
    for group in project.feature_groups.values():
        model = FeatureModel(project, group)
        sql = model.sql({s: f"validated.{s}" for s in model.sources})
        con.execute(f"create or replace table features.{model.name} as {sql}")


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    project = load_project(REPO)
    tables = simulate(CONFIG)
    root = tmp_path_factory.mktemp("training")
    at_t = _warehouse(root / "at_t.duckdb", project, tables, known_before=T)
    later = _warehouse(root / "later.duckdb", project, tables, flip_after=T)
    yield SimpleNamespace(project=project, tables=tables, at_t=at_t, later=later, root=root)
    at_t.close()
    later.close()


@pytest.fixture(scope="module")
def built(world):
    """The set as of T from the later warehouse, and its frame."""
    ts = build_training_set(world.later, world.project, MODEL, T, world.root / "later_out")
    return ts, read_training_set(ts.path)


def test_data_arriving_after_the_cutoff_never_enters_the_set(world, built):
    later = world.later
    # The later warehouse really has more: events after T, late labels of old transactions, flipped labels.
    assert later.sql("select count(*) from validated.transactions where tx_datetime >= ?", params=[T]).fetchone()[0]
    late_old = later.sql(f"select count(*) from validated.fraud_labels where tx_datetime < ? and {KNOWN} >= ?",
                         params=[T, T]).fetchone()[0]
    assert late_old > 100

    early = build_training_set(world.at_t, world.project, MODEL, T, world.root / "at_t_out")
    ts, frame = built
    assert early.fingerprint == ts.fingerprint
    assert early.path.read_bytes() == ts.path.read_bytes()
    assert early.path.relative_to(world.root / "at_t_out") == ts.path.relative_to(world.root / "later_out")
    assert (early.rows, early.positives) == (ts.rows, ts.positives) and ts.rows > 3000 and ts.positives > 0

    labels = later.sql(f"select transaction_id, {KNOWN} as known from validated.fraud_labels").df()
    rows = frame.merge(labels, on="transaction_id", how="left", validate="one_to_one")
    assert rows["known"].notna().all() and (rows["known"] < T).all()
    assert (frame["event_time"] < T).all()
    # Exactly the transactions before T whose label was known before T.
    expected = later.sql(
        f"select count(*) from validated.transactions t join validated.fraud_labels l using (transaction_id) "
        f"where t.tx_datetime < ? and {KNOWN.replace('tx_datetime', 'l.tx_datetime')} < ?",
        params=[T, T]).fetchone()[0]
    assert ts.rows == expected


def test_label_must_be_known_strictly_before_the_cutoff(world):
    """A label whose available_at is exactly T is not in the set as of T; one a microsecond earlier is."""
    con = world.later
    con.execute("create schema if not exists edge")
    for name in ("transactions", "fraud_labels"):
        con.execute(f"create or replace table edge.{name} as select * from validated.{name}")
    at_t, just_before = con.sql(
        "select transaction_id from edge.fraud_labels where tx_datetime < ? - interval 1 day "
        "order by transaction_id limit 2", params=[T]).fetchall()
    con.execute("update edge.fraud_labels set available_at = ? where transaction_id = ?", [T, at_t[0]])
    con.execute("update edge.fraud_labels set available_at = ? where transaction_id = ?",
                [T - timedelta(microseconds=1), just_before[0]])
    ts = build_training_set(con, world.project, MODEL, T, world.root / "edge_out", source_schema="edge")
    ids = set(read_training_set(ts.path)["transaction_id"])
    assert at_t[0] not in ids and just_before[0] in ids


def test_rebuilding_gives_the_same_bytes_and_fingerprint(world, built):
    ts, _ = built
    again = build_training_set(world.later, world.project, MODEL, T, world.root / "again")
    assert again.fingerprint == ts.fingerprint and again.path.read_bytes() == ts.path.read_bytes()
    assert again.path.parts[-2:] == ("as_of=20180429T133700", f"{ts.fingerprint}.parquet")
    other = build_training_set(world.later, world.project, MODEL, T + timedelta(days=1), world.root / "again")
    assert other.fingerprint != ts.fingerprint and other.rows > ts.rows
    # Only the Arrow schema itself (types); no pandas or other metadata that could vary between builds.
    assert set(pq.read_metadata(ts.path).metadata) == {b"ARROW:schema"}


def test_stored_features_are_the_feature_tables_row_for_the_transaction(world, built):
    ts, frame = built
    project = world.project
    stored = [c for c in ts.feature_columns if not c.startswith("transaction_context__")]
    assert stored == [f.qualified for f in project.model_inputs(project.models[MODEL])[0]]
    for group in ("customer_spending", "terminal_risk", "device_sharing"):
        table = world.later.sql(f"select * from features.feat_{group}").df()
        names = [c for c in stored if c.startswith(f"{group}__")]
        table = table.rename(columns={c.split("__", 1)[1]: c for c in names})[["transaction_id", *names]]
        merged = frame[["transaction_id", *names]].merge(table, on="transaction_id", suffixes=("", "_table"),
                                                         validate="one_to_one")
        assert len(merged) == len(frame)
        for name in names:
            np.testing.assert_array_equal(merged[name].to_numpy(float), merged[f"{name}_table"].to_numpy(float),
                                          err_msg=name)


def test_request_features_equal_a_direct_computation(world, built):
    _, frame = built
    amounts = world.later.sql("select transaction_id, tx_amount from validated.transactions").df()
    rows = frame.merge(amounts, on="transaction_id", validate="one_to_one")
    weekend = rows["event_time"].dt.dayofweek.isin([5, 6])  # pandas: Monday = 0
    assert (rows["transaction_context__is_weekend"] == weekend).all() and weekend.any() and not weekend.all()
    assert (rows["transaction_context__is_night"] == (rows["event_time"].dt.hour < 6)).all()
    avg = rows["customer_spending__avg_amount_30d"]
    expected = rows["tx_amount"] / avg.where(avg != 0)
    np.testing.assert_allclose(rows["transaction_context__amount_to_avg_30d"], expected, rtol=1e-12)
    assert rows["transaction_context__amount_to_avg_30d"].notna().sum() > len(rows) // 2


def test_features_are_joined_with_asof_joins_not_window_dedupe(world):
    sql = training_set_sql(world.project, MODEL, T)
    assert sql.count("ASOF LEFT JOIN") == 3  # one per stored feature group
    assert "ROW_NUMBER" not in sql.upper() and "QUALIFY" not in sql.upper()


def test_columns_and_contract(world, built):
    ts, frame = built
    assert list(frame.columns[:6]) == ["transaction_id", "event_time", "customer_id", "terminal_id", "device_id",
                                       "label"]
    assert list(frame.columns[6:]) == ts.feature_columns
    assert (ts.label_column, ts.time_column) == ("label", "event_time")
    assert frame["event_time"].is_monotonic_increasing and ts.positives == int(frame["label"].sum())
    schema = training_set_schema(world.project, MODEL)
    assert list(schema.columns) == list(frame.columns)
    validate(frame, world.project, MODEL, T)

    corrupted = frame.copy()
    corrupted.loc[corrupted.index[:3], "label"] = 2
    with pytest.raises(TrainingSetError, match=r"label: isin\(\[0, 1\]\) \(3 rows"):
        validate(corrupted, world.project, MODEL)
    with pytest.raises(TrainingSetError, match="event_time"):
        validate(frame, world.project, MODEL, frame["event_time"].iloc[-1].to_pydatetime())
    with pytest.raises(TrainingSetError, match="transaction_id"):
        validate(pd.concat([frame, frame.iloc[:1]]), world.project, MODEL)
    with pytest.raises(TrainingSetError, match="customer_id"):
        validate(frame.assign(customer_id=None), world.project, MODEL)


def test_feature_table_rounding_noise_does_not_change_the_fingerprint(world, built):
    """With DuckDB's default (segment tree) window mode, feature tables rebuilt after more data arrived differ
    in the last bits of float averages; the fingerprint (definitions + data known before T + code version)
    is unchanged and every value agrees to 1e-12."""
    ts, frame = built
    default = _warehouse(world.root / "default.duckdb", world.project, world.tables, flip_after=T,
                         exact_windows=False)
    try:
        other = build_training_set(default, world.project, MODEL, T, world.root / "default_out")
    finally:
        default.close()
    assert other.fingerprint == ts.fingerprint and other.rows == ts.rows
    again = read_training_set(other.path)
    for column in frame.columns:
        if pd.api.types.is_float_dtype(frame[column]):
            np.testing.assert_allclose(again[column], frame[column], rtol=1e-12, err_msg=column)
        else:
            pd.testing.assert_series_equal(again[column], frame[column])
