"""Training sets: matured-label spine, point-in-time features (primary-key or ASOF joins), request features,
fingerprint, contract.

Two warehouses hold the same simulated network: ``at_t`` as it was known just before the cutoff T (events
before T, labels available before T) and ``later`` after more data arrived (events after T, late labels
for old transactions, and late labels flipped). A set built as of T must be byte-identical in both.
"""

from __future__ import annotations

import re
import shutil
from datetime import date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import duckdb
import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from trellis import training
from trellis.compile.dbt import FeatureModel
from trellis.contracts import ingest
from trellis.scoring import scoring_frame
from trellis.simulate import SimulationConfig, simulate, write_duckdb
from trellis.spec import load_project
from trellis.training import (
    TrainingSetError,
    _parts,
    build_training_set,
    read_training_set,
    training_set_expr,
    training_set_schema,
    training_set_sql,
    validate,
)

pytestmark = pytest.mark.slow  # builds training sets over simulated warehouses (the ties test alone takes 10-20 s)

REPO = Path(__file__).resolve().parent.parent
CONFIG = SimulationConfig(n_customers=150, n_terminals=300, n_days=40, label_delay="uniform")
T = datetime(2018, 4, 29, 13, 37, 0)  # day 28 of 40, mid-afternoon
MODEL = "card_fraud"
KNOWN = "coalesce(available_at, tx_datetime)"


def _warehouse(path: Path, project, tables, *, known_before: datetime | None = None,
               flip_after: datetime | None = None, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    write_duckdb(tables, path, schema="raw")
    con = duckdb.connect(str(path))
    if threads is not None:
        con.execute(f"set threads = {threads}")
    for source in project.sources.values():
        ingest(con, project, source)
    if known_before is not None:  # the world as known just before the cutoff
        con.execute("delete from validated.transactions where tx_datetime >= ?", [known_before])
        con.execute(f"delete from validated.fraud_labels where {KNOWN} >= ?", [known_before])
    if flip_after is not None:  # late labels disagree with what an earlier reading would have said
        con.execute(f"update validated.fraud_labels set tx_fraud = 1 - tx_fraud where {KNOWN} >= ?", [flip_after])
    _build_features(con, project)
    return con


def _build_features(con: duckdb.DuckDBPyConnection, project, schema: str = "features") -> None:
    con.execute(f"create schema if not exists {schema}")
    for group in project.feature_groups.values():
        model = FeatureModel(project, group)
        sql = model.sql({s: f"validated.{s}" for s in model.sources})
        con.execute(f"create or replace table {schema}.{model.name} as {sql}")


# A group computed at another source's events (the label events), so a model on transactions must keep the
# ASOF join for it: its table has no row per transaction.
MIXED_GROUP = """kind: feature_group
name: customer_labelled
description: The customer's spending, computed at label events (a spine that is not the model's).
entity: customer
source: transactions
spine: fraud_labels
features:
  - {name: tx_count, agg: count, windows: [7d]}
  - {name: max_amount, agg: max, column: tx_amount, windows: [7d]}
"""


def _mixed(root: Path, con: duckdb.DuckDBPyConnection, schema: str):
    """The project plus ``customer_labelled`` (spine fraud_labels), card_fraud with it, and every feature table
    in ``schema``. Two thirds of the new group's rows are dropped so that its ASOF join has to reach back to
    earlier rows (as for a spine with fewer events than the model's)."""
    shutil.copytree(REPO / "definitions", root / "definitions", dirs_exist_ok=True)
    (root / "definitions" / "features" / "customer_labelled.yaml").write_text(MIXED_GROUP)
    project = load_project(root)
    model = project.models[MODEL]
    model = model.model_copy(update={"features": [*model.features, "customer_labelled"]})
    _build_features(con, project, schema)
    con.execute(f"delete from {schema}.feat_customer_labelled where transaction_id % 3 <> 0")
    return project, model


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


def test_features_are_joined_by_primary_key_or_asof_never_window_dedupe(world):
    # Every stored group of card_fraud is computed at the model's spine (transactions): one LEFT equi-join
    # per group on the primary key, the key and the time; no ASOF join.
    sql = training_set_sql(world.project, MODEL, T)
    assert "ASOF" not in sql.upper() and sql.count("LEFT OUTER JOIN") == 3
    for group, key in (("customer_spending", "customer_id"), ("terminal_risk", "terminal_id"),
                       ("device_sharing", "device_id")):
        for left, right in (("transaction_id", "pk"), (key, "k"), ("tx_datetime", "ts")):
            assert re.search(rf'\."{left}" = "\w+"\."__{right}_{group}"', sql), (group, left)
    assert _parts(world.project, MODEL, T, "validated", "features").by_primary_key == [
        "customer_spending", "terminal_risk", "device_sharing"]
    reference = training_set_sql(world.project, MODEL, T, primary_key_join=False)
    assert reference.count("ASOF LEFT JOIN") == 3  # the reference: one ASOF join per stored feature group
    for text in (sql, reference):
        assert "ROW_NUMBER" not in text.upper() and "QUALIFY" not in text.upper()


@pytest.mark.parametrize("days_before", [0, 9])
def test_primary_key_join_builds_the_asof_join_set_byte_for_byte(world, days_before):
    """Built with the primary-key joins or with the ASOF joins, the set is the same: same Arrow table, same
    Parquet bytes, same fingerprint (the code version is the same package version in both builds), in the
    warehouse as known at T and in the later one."""
    as_of = T - timedelta(days=days_before)
    for name, con in (("at_t", world.at_t), ("later", world.later)):
        out = world.root / f"join_{name}_{days_before}"
        by_pk = build_training_set(con, world.project, MODEL, as_of, out / "pk")
        by_asof = build_training_set(con, world.project, MODEL, as_of, out / "asof", primary_key_join=False)
        assert by_pk.rows == by_asof.rows > 2000 and by_pk.positives == by_asof.positives > 0
        assert pq.read_table(by_pk.path).equals(pq.read_table(by_asof.path))
        assert by_pk.fingerprint == by_asof.fingerprint
        assert by_pk.path.read_bytes() == by_asof.path.read_bytes()


def _with_ties(tables: dict[str, pa.Table], every: int = 6) -> dict[str, pa.Table]:
    """Every ``every``-th transaction twice: a copy under a new id with the same customer, terminal, device and
    time, half the amount, and its label copied with the opposite outcome (so the two rows differ)."""
    tx, labels = tables["transactions"], tables["fraud_labels"]
    picked = tx.filter(pa.array(tx["transaction_id"].to_numpy() % every == 0))
    offset = pc.max(tx["transaction_id"]).as_py() + 1
    new_ids = pc.add(picked["transaction_id"], offset)
    copies = picked.set_column(0, "transaction_id", new_ids).set_column(
        picked.schema.get_field_index("tx_amount"), "tx_amount", pc.multiply(picked["tx_amount"], 0.5))
    label_copies = labels.filter(pc.is_in(labels["transaction_id"], picked["transaction_id"]))
    label_copies = label_copies.set_column(0, "transaction_id", pc.add(label_copies["transaction_id"], offset))
    flipped = pc.cast(pc.subtract(pa.scalar(1, label_copies["tx_fraud"].type), label_copies["tx_fraud"]),
                      label_copies["tx_fraud"].type)
    label_copies = label_copies.set_column(label_copies.schema.get_field_index("tx_fraud"), "tx_fraud", flipped)
    return {**tables, "transactions": pa.concat_tables([tx, copies.cast(tx.schema)]),
            "fraud_labels": pa.concat_tables([labels, label_copies.cast(labels.schema)])}


def test_ties_same_entity_same_time_give_the_same_set_and_frames(world):
    """Two transactions of one customer, terminal and device at the same instant: ASOF may take either one's
    feature row, the primary-key join takes each row's own, and both rows have the same feature values (same
    key, same time, same rule), so the sets and the scoring frames are identical. Default (segment tree)
    window mode, as in production."""
    con = _warehouse(world.root / "ties.duckdb", world.project, _with_ties(world.tables))
    try:
        ties = con.sql("select count(*) from (select customer_id, feature_ts from features.feat_customer_spending "
                       "group by all having count(*) > 1)").fetchone()[0]
        assert ties > 100  # the ASOF join has a choice between two rows for each of them
        by_pk = build_training_set(con, world.project, MODEL, T, world.root / "ties_pk")
        by_asof = build_training_set(con, world.project, MODEL, T, world.root / "ties_asof",
                                     primary_key_join=False)
        assert pq.read_table(by_pk.path).equals(pq.read_table(by_asof.path))
        assert by_pk.path.read_bytes() == by_asof.path.read_bytes() and by_pk.fingerprint == by_asof.fingerprint
        frame = read_training_set(by_pk.path)
        for group, key in (("customer_spending", "customer_id"), ("terminal_risk", "terminal_id"),
                           ("device_sharing", "device_id")):
            columns = [c for c in frame.columns if c.startswith(f"{group}__")]
            tied = frame.groupby([key, "event_time"]).filter(lambda g: len(g) > 1)
            assert len(tied) > 100 and tied["label"].groupby([tied[key], tied["event_time"]]).nunique().max() == 2
            distinct = tied.groupby([key, "event_time"])[columns].nunique(dropna=False)
            assert (distinct == 1).all().all(), group
        for day in (date(2018, 4, 3), date(2018, 4, 20), date(2018, 4, 28)):
            reference = scoring_frame(con, world.project, MODEL, day, prune=False, primary_key_join=False)
            assert len(reference) > 100 and reference.duplicated(["customer_id", "event_time"]).sum() > 5
            for prune in (True, False):
                pd.testing.assert_frame_equal(scoring_frame(con, world.project, MODEL, day, prune=prune),
                                              reference, check_exact=True)
    finally:
        con.close()


def test_groups_at_another_spine_keep_the_asof_join(world, tmp_path):
    """A group computed at the label events keeps its ASOF join (the latest row of the customer at or before
    the transaction, as merge_asof finds it) while the others are joined on the primary key; the set is the
    all-ASOF one, byte for byte."""
    project, model = _mixed(tmp_path, world.later, "mixed")
    parts = _parts(project, model, T, "validated", "mixed")
    assert parts.groups[-1] == "customer_labelled" and "customer_labelled" not in parts.by_primary_key
    assert len(parts.by_primary_key) == 3
    sql = training_set_sql(project, model, T, feature_schema="mixed")
    assert sql.count("ASOF LEFT JOIN") == 1 and sql.count("LEFT OUTER JOIN") == 3
    by_pk = build_training_set(world.later, project, model, T, tmp_path / "pk", feature_schema="mixed")
    by_asof = build_training_set(world.later, project, model, T, tmp_path / "asof", feature_schema="mixed",
                                 primary_key_join=False)
    assert by_pk.path.read_bytes() == by_asof.path.read_bytes() and by_pk.fingerprint == by_asof.fingerprint
    frame = read_training_set(by_pk.path)
    columns = ["customer_labelled__tx_count_7d", "customer_labelled__max_amount_7d"]
    table = world.later.sql("select customer_id, feature_ts, tx_count_7d as customer_labelled__tx_count_7d, "
                            "max_amount_7d as customer_labelled__max_amount_7d from mixed.feat_customer_labelled "
                            "order by feature_ts").df()
    expected = pd.merge_asof(frame[["transaction_id", "customer_id", "event_time"]].sort_values("event_time"),
                             table, left_on="event_time", right_on="feature_ts", by="customer_id",
                             direction="backward", allow_exact_matches=True).set_index("transaction_id")
    expected = expected.loc[frame["transaction_id"]]
    assert expected["feature_ts"].notna().sum() > len(frame) // 2
    assert (expected["feature_ts"] < expected["event_time"]).sum() > len(frame) // 3  # reached back
    for column in columns:
        np.testing.assert_array_equal(frame[column].to_numpy(float), expected[column].to_numpy(float),
                                      err_msg=column)


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


def test_the_set_has_the_same_bytes_whatever_the_summation_order(world, built):
    """Feature tables built on one thread instead of all of them (DuckDB's windows then split and combine
    their segment trees differently) give the same set, byte for byte: the amount's sums, means and standard
    deviations are exact (its column declares ``scale: 2``), and every other aggregate is exact anyway.
    (With DuckDB's floating-point AVG and STDDEV, rows before T differed in the last bit once rows after T
    were added.)"""
    ts, _ = built
    one = _warehouse(world.root / "one_thread.duckdb", world.project, world.tables, flip_after=T, threads=1)
    try:
        other = build_training_set(one, world.project, MODEL, T, world.root / "one_thread_out")
    finally:
        one.close()
    assert other.fingerprint == ts.fingerprint and other.path.read_bytes() == ts.path.read_bytes()


# A model whose label is a column of its spine rows (the spine is the label source, joined on its primary key).
LABELLED_PAYMENTS = {
    "entities/account.yaml": "kind: entity\nname: account\njoin_key: account_id\nkey_type: int64\n",
    "sources/payments.yaml": (
        "kind: source\nname: payments\ntable: raw.payments\nevent_time: ts\navailable_at: labelled_at\n"
        "primary_key: payment_id\ncolumns:\n  payment_id: {type: int64}\n  account_id: {type: int64}\n"
        "  ts: {type: timestamp}\n  labelled_at: {type: timestamp}\n  amount: {type: float64}\n"
        "  fraud: {type: int32, checks: {isin: [0, 1]}}\n"),
    "features/spend.yaml": (
        "kind: feature_group\nname: spend\nentity: account\nsource: payments\nfeatures:\n"
        "  - {name: payments, agg: count, windows: [7d]}\n  - {name: total, agg: sum, column: amount, windows: [7d]}\n"),
    "models/payments_fraud.yaml": (
        "kind: model\nname: payments_fraud\nspine: payments\n"
        "label: {source: payments, column: fraud, join_key: payment_id}\nfeatures: [spend]\n"),
}


def test_label_on_the_spine_row_is_one_filter_with_the_same_rules(tmp_path):
    """When the label is a column of the spine row, the set is those rows with ``event_time < T`` and the label
    known before T (``available_at``, or the event time when it is missing): one scan, no self-join."""
    for name, text in LABELLED_PAYMENTS.items():
        (tmp_path / "definitions" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "definitions" / name).write_text(text)
    project = load_project(tmp_path)
    cutoff = datetime(2024, 1, 10)
    rng = np.random.default_rng(3)
    n = 600
    ts = np.datetime64("2024-01-01", "us") + rng.integers(0, 12 * 86_400_000_000, n).astype("timedelta64[us]")
    delay = rng.integers(0, 4 * 86_400_000_000, n).astype("timedelta64[us]")
    payments = pd.DataFrame({
        "payment_id": np.arange(n), "account_id": rng.integers(0, 30, n), "ts": ts,
        "labelled_at": pd.Series(ts + delay).mask(rng.random(n) < 0.2),  # a fifth: labelled at the event
        "amount": rng.gamma(2.0, 30.0, n).round(2), "fraud": (rng.random(n) < 0.2).astype(np.int32)})
    payments.loc[0, ["ts", "labelled_at"]] = [cutoff - timedelta(days=1), cutoff]  # label known at T: out
    payments.loc[1, ["ts", "labelled_at"]] = [cutoff - timedelta(days=1), cutoff - timedelta(microseconds=1)]
    payments.loc[2, ["ts", "labelled_at"]] = [cutoff - timedelta(microseconds=1), pd.NaT]  # known at its event
    con = duckdb.connect()
    con.execute("create schema validated")
    con.register("payments_frame", payments)
    con.execute("create table validated.payments as select * from payments_frame")
    _build_features(con, project)

    sql = training_set_sql(project, "payments_fraud", cutoff)
    assert "INNER JOIN" not in sql and sql.count("JOIN") == 1  # only the feature group's join
    ts_set = build_training_set(con, project, "payments_fraud", cutoff, tmp_path / "out")
    frame = read_training_set(ts_set.path)
    known = payments["labelled_at"].fillna(payments["ts"])
    expected = payments[(payments["ts"] < cutoff) & (known < cutoff)].sort_values(["ts", "payment_id"])
    assert {1, 2} <= set(frame["payment_id"]) and 0 not in set(frame["payment_id"])
    assert 100 < len(expected) < len(payments) - 100 and ts_set.rows == len(expected)
    np.testing.assert_array_equal(frame["payment_id"], expected["payment_id"])
    np.testing.assert_array_equal(frame["label"], expected["fraud"])
    assert frame["spend__payments_7d"].notna().all() and (frame["spend__payments_7d"] > 0).any()
    con.close()


def test_training_sql_is_rendered_once_per_definitions_and_code(world, tmp_path, monkeypatch):
    """The SQL is the Ibis expression's rendering with the cutoff written in; the rendering is kept on disk
    under a key of the definitions, model, schemas, join choice and code, and reused for every cutoff."""
    cache = tmp_path / "sql"
    monkeypatch.setenv("TRELLIS_SQL_CACHE", str(cache))
    sql = training_set_sql(world.project, MODEL, T)
    (entry,) = cache.glob("training-*.sql")
    assert "TIMESTAMP '2018-04-29 13:37:00.000000'" in sql and "1001" not in sql and "1001" in entry.read_text()
    direct = str(ibis.to_sql(training_set_expr(world.project, MODEL, T), dialect="duckdb"))
    assert direct != sql and world.later.sql(sql).arrow().read_all().equals(
        world.later.sql(direct).arrow().read_all())
    # Another cutoff (to the microsecond) reuses the entry; the rows are the expression's at that cutoff.
    before = T - timedelta(days=5, microseconds=7)
    assert "TIMESTAMP '2018-04-24 13:36:59.999993'" in training_set_sql(world.project, MODEL, before)
    assert list(cache.glob("training-*.sql")) == [entry]
    # The entry is what is read back (so its key must change whenever the rendering could).
    entry.write_text(entry.read_text().replace("ORDER BY", "/* from the cache */ ORDER BY"))
    assert "/* from the cache */" in training_set_sql(world.project, MODEL, T)
    training_set_sql(world.project, MODEL, T, primary_key_join=False)
    training_set_sql(world.project, MODEL, T, source_schema="edge")
    model = world.project.models[MODEL]
    training_set_sql(world.project, model.model_copy(update={"features": model.features[:1]}), T)
    training_set_sql(world.project, MODEL, T, labels=False)  # the scoring frame's rendering
    assert len(list(cache.glob("training-*.sql"))) == 5
    # Bounded: writing a new entry drops the oldest beyond SQL_CACHE_ENTRIES.
    monkeypatch.setattr(training, "SQL_CACHE_ENTRIES", 3)
    training_set_sql(world.project, MODEL, T, feature_schema="other")
    assert len(list(cache.glob("training-*.sql"))) == 3
    monkeypatch.setenv("TRELLIS_SQL_CACHE", "")  # off: rendered every time, nothing written
    assert training_set_sql(world.project, MODEL, T) == sql and len(list(cache.iterdir())) == 3
