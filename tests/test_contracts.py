"""Source contracts: bad rows are quarantined with a reason and counted, or fail the run when declared."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pandera.pandas as pa
import pytest

from trellis.contracts import ContractViolation, feature_schema, ingest, ingest_all, source_schema
from trellis.paths import ProjectPaths
from trellis.simulate import SimulationConfig, simulate, write_duckdb
from trellis.spec import load_project


@pytest.fixture
def warehouse(tmp_path: Path) -> duckdb.DuckDBPyConnection:
    tables = simulate(SimulationConfig(n_customers=60, n_terminals=120, n_days=10))
    path = tmp_path / "wh.duckdb"
    write_duckdb(tables, path, schema="raw")
    con = duckdb.connect(str(path))
    yield con
    con.close()


def _break_rows(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("update raw.transactions set tx_amount = -5 where transaction_id = 3")
    con.execute("update raw.transactions set customer_id = null where transaction_id = 4")
    con.execute("update raw.transactions set tx_amount = 1e9 where transaction_id = 5")


def test_bad_rows_are_quarantined_with_reasons_and_counts_add_up(warehouse, project_copy):
    project = load_project(project_copy)
    _break_rows(warehouse)
    rows_in = warehouse.sql("select count(*) from raw.transactions").fetchone()[0]
    result = ingest(warehouse, project, project.sources["transactions"])
    assert result.rows_in == rows_in == result.rows_accepted + result.rows_quarantined
    assert result.rows_quarantined == 3
    quarantined = warehouse.sql("select transaction_id, _reason from quarantine.transactions order by 1").df()
    assert quarantined["transaction_id"].tolist() == [3, 4, 5]
    reasons = dict(zip(quarantined["transaction_id"], quarantined["_reason"], strict=True))
    assert "tx_amount" in reasons[3] and "greater_than_or_equal_to(0" in reasons[3]
    assert "customer_id" in reasons[4] and "not_nullable" in reasons[4]
    assert "less_than_or_equal_to(100000" in reasons[5]
    accepted = warehouse.sql("select count(*) from validated.transactions where transaction_id in (3,4,5)")
    assert accepted.fetchone()[0] == 0


NOW = datetime(2026, 1, 1)  # where max_future counts from in these tests


@pytest.mark.parametrize(("update", "reason"), [
    ("set transaction_id = -1", "transaction_id: greater_than_or_equal_to(0.0) (got -1)"),
    ("set terminal_id = null", "terminal_id: not_nullable (got null)"),
    ("set tx_amount = 12.345", "tx_amount: a multiple of 0.01 (scale 2) (got 12.345)"),
    ("set tx_amount = -5", "tx_amount: greater_than_or_equal_to(0.0) (got -5.0)"),
    ("set tx_datetime = '0001-01-01'",
     "tx_datetime: before not_before 2000-01-01 00:00:00 (got 0001-01-01 00:00:00)"),
    ("set tx_datetime = '1900-01-01'",
     "tx_datetime: before not_before 2000-01-01 00:00:00 (got 1900-01-01 00:00:00)"),
    ("set tx_datetime = '2030-01-01'",
     "tx_datetime: more than max_future 5m past the clock (after 2026-01-01 00:05:00) (got 2030-01-01 00:00:00)"),
])
def test_an_implausible_transaction_is_quarantined_naming_column_and_value(warehouse, project_copy, update,
                                                                           reason):
    """The API's rules (tests/test_strict_input.py) hold at ingestion: ids in range and present, amounts on
    the grid, times within the source's not_before / max_future."""
    project = load_project(project_copy)
    warehouse.execute(f"update raw.transactions {update} where transaction_id = 7")
    result = ingest(warehouse, project, project.sources["transactions"], now=NOW)
    quarantined = warehouse.sql("select _reason from quarantine.transactions").fetchall()
    assert quarantined == [(reason,)]
    assert result.rows_quarantined == 1 and result.rows_in == result.rows_accepted + 1


def test_a_label_available_before_its_event_is_quarantined_naming_both(warehouse, project_copy):
    project = load_project(project_copy)
    warehouse.execute("update raw.fraud_labels set available_at = tx_datetime - interval 1 hour "
                      "where transaction_id = 7")
    warehouse.execute("update raw.fraud_labels set available_at = tx_datetime where transaction_id = 8")  # allowed
    happened = warehouse.sql("select tx_datetime from raw.fraud_labels where transaction_id = 7").fetchone()[0]
    result = ingest(warehouse, project, project.sources["fraud_labels"], now=NOW)
    assert warehouse.sql("select transaction_id, _reason from quarantine.fraud_labels").fetchall() == [
        (7, f"available_at: before tx_datetime (got available_at={happened.replace(hour=happened.hour - 1)}, "
            f"tx_datetime={happened})")]
    assert result.reasons == {"available_at: before tx_datetime": 1}


@pytest.mark.parametrize("sql_type", ["boolean", "varchar"])
def test_a_typed_column_that_is_not_a_number_refuses_the_table(warehouse, project_copy, sql_type):
    """A BOOLEAN or VARCHAR column where the definition declares a number would be coerced (true -> 1.0,
    '812.15' -> 812.15): the table does not match its definition, as a JSON true or "812.15" is a 422."""
    project = load_project(project_copy)
    warehouse.execute(f"alter table raw.transactions alter tx_amount type {sql_type} "
                      f"using {'tx_amount > 50' if sql_type == 'boolean' else 'tx_amount'}")
    with pytest.raises(ContractViolation, match=f"tx_amount is {sql_type.upper()}, the definition declares float64"):
        ingest(warehouse, project, project.sources["transactions"], now=NOW)


def as_file_source(definition: Path, table: str, path: str) -> None:
    """A reference source read from the user's file instead of its simulated table: ``path`` for ``table``, and
    no ``simulated:`` line (a simulated source is a table the simulator writes)."""
    lines = definition.read_text().replace(table, path).splitlines(keepends=True)
    definition.write_text("".join(line for line in lines if not line.startswith("simulated:")))


def test_csv_values_that_do_not_read_as_their_type_are_quarantined(warehouse, project_copy):
    """A CSV is text: 'true' in an amount column or 1.5 in an id column is a quarantined row, never 1.0 or 1."""
    warehouse.execute("create table raw.bad as select * from raw.transactions")
    warehouse.execute("alter table raw.bad alter tx_amount type varchar")
    warehouse.execute("alter table raw.bad alter terminal_id type double")
    warehouse.execute("update raw.bad set tx_amount = 'true' where transaction_id = 3")
    warehouse.execute("update raw.bad set terminal_id = 1.5 where transaction_id = 4")
    warehouse.execute(f"copy raw.bad to '{project_copy / 'tx.csv'}' (format csv)")
    as_file_source(project_copy / "definitions/sources/transactions.yaml", "table: raw.transactions", "path: tx.csv")
    project = load_project(project_copy)
    result = ingest(warehouse, project, project.sources["transactions"], now=NOW)
    assert warehouse.sql("select transaction_id, _reason from quarantine.transactions order by 1").fetchall() == [
        (3, "tx_amount: not a number (got true)"), (4, "terminal_id: not an integer (got 1.5)")]
    assert result.rows_quarantined == 2


def test_nullable_boolean_and_integer_columns_keep_their_nulls(warehouse, project_copy):
    """A column declared ``not_null: false`` takes nulls whatever its type: a boolean one with a null used to be
    quarantined as "dtype('bool')" (numpy's bool holds no null); a declared non-null one still quarantines it."""
    warehouse.execute("create table raw.bad as select *, transaction_id % 2 = 0 as is_even, "
                      "cast(transaction_id % 7 as integer) as bucket from raw.transactions")
    warehouse.execute("update raw.bad set is_even = null, bucket = null where transaction_id in (3, 4)")
    warehouse.execute(f"copy raw.bad to '{project_copy / 'tx.parquet'}' (format parquet)")
    definition = project_copy / "definitions/sources/transactions.yaml"
    as_file_source(definition, "table: raw.transactions", "path: tx.parquet")
    text = definition.read_text()
    definition.write_text(text.replace("columns:\n", "columns:\n  is_even: {type: bool, checks: {not_null: false}}\n"
                                                     "  bucket: {type: int32, checks: {not_null: false}}\n", 1))
    project = load_project(project_copy)
    result = ingest(warehouse, project, project.sources["transactions"], now=NOW)
    assert result.rows_quarantined == 0
    assert warehouse.sql("select is_even, bucket from validated.transactions where transaction_id in (3, 4, 6)"
                         " order by transaction_id").fetchall() == [(None, None), (None, None), (True, 6)]
    definition.write_text(text.replace("columns:\n", "columns:\n  is_even: {type: bool}\n", 1))
    project = load_project(project_copy)
    result = ingest(warehouse, project, project.sources["transactions"], now=NOW)
    assert warehouse.sql("select transaction_id, _reason from quarantine.transactions order by 1").fetchall() == [
        (3, "is_even: not_nullable (got null)"), (4, "is_even: not_nullable (got null)")]


def test_a_duplicated_key_keeps_its_first_copy_and_quarantines_the_extras(warehouse, project_copy):
    """The first copy by (event time, available_at, position) is accepted; only the extras are quarantined."""
    project = load_project(project_copy)
    con = warehouse
    original = con.sql("select * from raw.transactions where transaction_id = 7").fetchone()
    # id 7: an exact re-delivery and a copy one hour later, both after the original in the table
    con.execute("insert into raw.transactions select * from raw.transactions where transaction_id = 7")
    con.execute("insert into raw.transactions select * replace (tx_datetime + interval 1 hour as tx_datetime) "
                "from raw.transactions where transaction_id = 7 limit 1")
    # id 8: a copy one hour *earlier* placed after it in the table: the earlier event time is kept
    con.execute("insert into raw.transactions select * replace (tx_datetime - interval 1 hour as tx_datetime, "
                "tx_amount + 1 as tx_amount) from raw.transactions where transaction_id = 8")
    # id 9: the first copy breaks a check, so the second (valid) copy is kept, not quarantined as a duplicate
    con.execute("insert into raw.transactions select * from raw.transactions where transaction_id = 9")
    con.execute("update raw.transactions set tx_amount = -1 where rowid = (select min(rowid) from raw.transactions "
                "where transaction_id = 9)")
    rows_in = con.sql("select count(*) from raw.transactions").fetchone()[0]
    result = ingest(con, project, project.sources["transactions"], now=NOW)

    quarantined = con.sql("select transaction_id, tx_datetime, _reason from quarantine.transactions").fetchall()
    assert sorted((t, r) for t, _, r in quarantined) == [
        (7, "duplicate of transaction_id=7"), (7, "duplicate of transaction_id=7"),
        (8, "duplicate of transaction_id=8"), (9, "tx_amount: greater_than_or_equal_to(0.0) (got -1.0)")]
    assert original[1] + timedelta(hours=1) in [d for t, d, _ in quarantined if t == 7]
    kept = con.sql("select * from validated.transactions where transaction_id in (7, 8, 9) order by 1").fetchall()
    assert [row[0] for row in kept] == [7, 8, 9]
    assert kept[0] == original
    raw8 = con.sql("select min(tx_datetime) from raw.transactions where transaction_id = 8").fetchone()[0]
    assert kept[1][1] == raw8
    assert result.rows_in == rows_in == result.rows_accepted + result.rows_quarantined
    assert result.rows_quarantined == 4
    assert result.reasons == {"duplicate of transaction_id": 3, "tx_amount: greater_than_or_equal_to(0.0)": 1}


def _raw_bad_and_duplicated(con: duckdb.DuckDBPyConnection) -> None:
    _break_rows(con)
    con.execute("insert into raw.transactions select * from raw.transactions where transaction_id in (7, 8)")


def test_ingest_counts_what_the_tables_hold(warehouse, project_copy):
    """The counts ingest returns are those of the tables it wrote, and every source row is in exactly one of
    them: a row lost or written twice on the way to validated.* or quarantine.* breaks this test."""
    project = load_project(project_copy)
    _raw_bad_and_duplicated(warehouse)
    result = ingest(warehouse, project, project.sources["transactions"], now=NOW)

    def count(table: str) -> int:
        return warehouse.sql(f"select count(*) from {table}").fetchone()[0]

    assert (result.rows_in, result.rows_accepted, result.rows_quarantined) == (
        count("raw.transactions"), count("validated.transactions"), count("quarantine.transactions"))
    assert result.adds_up and result.rows_quarantined == 5
    assert sum(result.reasons.values()) >= result.rows_quarantined
    # The same rows, each once: the multiset of keys in = the keys accepted + the keys quarantined.
    ids = "select transaction_id, count(*) from {} group by 1"
    written = warehouse.sql("select transaction_id, sum(n) from ("
                            "select transaction_id, count(*) n from validated.transactions group by 1 union all "
                            "select transaction_id, count(*) n from quarantine.transactions group by 1) group by 1")
    assert sorted(written.fetchall()) == sorted(warehouse.sql(ids.format("raw.transactions")).fetchall())


@pytest.mark.parametrize("fault", ["drop", "duplicate"])
def test_rows_add_up_check_fails_when_the_tables_do_not_hold_every_row(warehouse, project_copy, monkeypatch,
                                                                       fault):
    """The Dagster check ``rows_add_up`` of ``raw/<source>`` counts what was written, so a writer that loses
    (or repeats) a row on the way to the table fails it; the honest writer passes it."""
    import dagster as dg

    import assets.project
    import trellis.contracts
    from assets.raw.assets import _source_asset
    from assets.resources import Warehouse

    _raw_bad_and_duplicated(warehouse)
    warehouse.close()
    monkeypatch.setenv("TRELLIS_PROJECT", str(project_copy))
    # The code location's paths() sets the dbt variables for good (setdefault) and is cached: set them here, so
    # they are undone after the test, and forget the cached paths after it, or a later test (the drift sensor's
    # defs()) would be served this test's temporary project, gone by then.
    for key, value in ProjectPaths.of(project_copy).dbt_env().items():
        monkeypatch.setenv(key, value)
    assets.project.trellis_project.cache_clear()
    assets.project.paths.cache_clear()
    honest = trellis.contracts._write

    def faulty(con, schema_name, table_name, frame):
        frame = frame.iloc[1:] if fault == "drop" else pd.concat([frame, frame.head(1)])
        honest(con, schema_name, table_name, frame)

    def check(writer) -> tuple[bool, dg.AssetCheckEvaluation]:
        monkeypatch.setattr(trellis.contracts, "_write", writer)
        result = dg.materialize([_source_asset("transactions")], raise_on_error=False,
                                resources={"warehouse": Warehouse(path=str(project_copy.parent / "wh.duckdb"))})
        (evaluation,) = result.get_asset_check_evaluations()
        return result.success, evaluation

    try:
        (good_run, good), (bad_run, bad) = check(honest), check(faulty)
    finally:
        assets.project.trellis_project.cache_clear()
        assets.project.paths.cache_clear()
    assert good_run and good.passed and good.metadata["rows_in"].value == good.metadata["accepted"].value + 5
    assert not bad.passed and not bad_run  # blocking: the run fails
    off = 2 if fault == "drop" else -2  # one row per table: validated and quarantine
    assert bad.metadata["rows_in"].value == bad.metadata["accepted"].value + bad.metadata["quarantined"].value + off


def test_on_violation_fail_stops_the_run(warehouse, project_copy):
    path = project_copy / "definitions/sources/transactions.yaml"
    path.write_text(path.read_text().replace("on_violation: quarantine", "on_violation: fail"))
    project = load_project(project_copy)
    _break_rows(warehouse)
    with pytest.raises(ContractViolation, match=r"3 of \d+ rows break the contract .*tx_amount"):
        ingest(warehouse, project, project.sources["transactions"])


def test_missing_column_is_a_clear_error(warehouse, project_copy):
    project = load_project(project_copy)
    warehouse.execute("alter table raw.transactions drop column device_id")
    with pytest.raises(ContractViolation, match="device_id"):
        ingest(warehouse, project, project.sources["transactions"])


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_file_sources_are_ingested_like_tables(warehouse, project_copy, fmt):
    warehouse.execute(f"copy raw.fraud_labels to '{project_copy / f'labels.{fmt}'}' (format {fmt})")
    as_file_source(project_copy / "definitions/sources/fraud_labels.yaml", "table: raw.fraud_labels",
                   f"path: labels.{fmt}")
    project = load_project(project_copy)
    result = ingest(warehouse, project, project.sources["fraud_labels"])
    assert result.rows_in == result.rows_accepted > 0
    expected = warehouse.sql("select * from raw.fraud_labels order by transaction_id").df()
    got = warehouse.sql("select * from validated.fraud_labels order by transaction_id").df()
    pd.testing.assert_frame_equal(got, expected, check_dtype=False)


def test_feature_table_contract_rejects_negative_counts_and_wrong_columns():
    project = load_project(Path(__file__).resolve().parent.parent)
    schema = feature_schema(project, "device_sharing")
    good = pd.DataFrame({"device_id": [1], "feature_ts": pd.to_datetime(["2020-01-01"]), "transaction_id": [1],
                         "distinct_customers_1d": [0], "distinct_customers_7d": [2], "tx_count_7d": [3]})
    schema.validate(good)
    for bad, column in ((good.assign(distinct_customers_7d=[-1]), "distinct_customers_7d"),
                        (good.assign(surprise=[1]), "surprise"),
                        (good.drop(columns=["feature_ts"]), "feature_ts")):
        with pytest.raises(pa.errors.SchemaErrors) as caught:
            schema.validate(bad, lazy=True)
        assert column in caught.value.failure_cases["failure_case"].astype(str).tolist() + \
            caught.value.failure_cases["column"].astype(str).tolist()


def test_a_feature_table_contract_types_its_columns_and_lets_only_non_count_features_be_null():
    """feature_schema of customer_spending: keys, time and counts are never null, counts are integers >= 0 (0
    included), the other features may be null and carry no range check; values are coerced to the column's
    type (text to a timestamp, 11.0 to an integer); the table is named for its dbt model."""
    project = load_project(Path(__file__).resolve().parent.parent)
    schema = feature_schema(project, "customer_spending")
    assert schema.name == "feature table feat_customer_spending"
    counts = [f"{name}_{w}" for name in ("tx_count", "distinct_terminals") for w in ("1d", "7d", "30d")]
    others = [f"{name}_{w}" for name, windows in (("avg_amount", ("1d", "7d", "30d")), ("std_amount", ("7d", "30d")),
                                                   ("max_amount", ("1d", "7d", "30d"))) for w in windows]
    good = pd.DataFrame({"customer_id": [1, 2], "feature_ts": ["2020-01-01 00:00:00", "2020-01-02 03:00:00"],
                         "transaction_id": [10.0, 11.0], **{c: [0, 3] for c in counts},
                         **{c: [None, -2] for c in others}})
    out = schema.validate(good, lazy=True)
    assert out.dtypes.astype(str).to_dict() == {"customer_id": "int64", "feature_ts": "datetime64[ns]",
                                                "transaction_id": "int64", **dict.fromkeys(counts, "int64"),
                                                **dict.fromkeys(others, "float64")}
    assert out["feature_ts"].tolist() == [pd.Timestamp("2020-01-01"), pd.Timestamp("2020-01-02 03:00")]
    assert out["avg_amount_30d"].isna().tolist() == [True, False] and out["max_amount_1d"].tolist()[1] == -2.0
    for column in ["customer_id", "feature_ts", "transaction_id", *counts]:
        with pytest.raises(pa.errors.SchemaErrors) as caught:
            schema.validate(good.assign(**{column: [good[column][0], None]}), lazy=True)
        cases = caught.value.failure_cases
        assert "not_nullable" in cases.loc[cases["column"] == column, "check"].astype(str).tolist(), column
    with pytest.raises(pa.errors.SchemaErrors) as caught:
        schema.validate(good.assign(tx_count_7d=[0, -1]), lazy=True)
    assert caught.value.failure_cases[["column", "check"]].astype(str).values.tolist() == [
        ["tx_count_7d", "greater_than_or_equal_to(0)"]]


def test_an_integer_feature_other_than_a_count_may_be_null(project_copy):
    """The latest terminal of a device (agg last over an integer column) is null for a device with no row in the
    window: its column is a nullable integer (pandas Int64), so a null is accepted and 7 stays the integer 7."""
    path = project_copy / "definitions/features/device_sharing.yaml"
    path.write_text(path.read_text() + "  - name: last_terminal\n    agg: last\n    column: terminal_id\n"
                                       "    windows: [1d]\n    description: The latest terminal of the device.\n")
    schema = feature_schema(load_project(project_copy), "device_sharing")
    frame = pd.DataFrame({"device_id": [1, 2], "feature_ts": pd.to_datetime(["2020-01-01", "2020-01-02"]),
                          "transaction_id": [1, 2], "distinct_customers_1d": [0, 1], "distinct_customers_7d": [0, 2],
                          "tx_count_7d": [0, 3], "last_terminal_1d": [None, 7]})
    out = schema.validate(frame, lazy=True)
    assert str(out["last_terminal_1d"].dtype) == "Int64"
    assert out["last_terminal_1d"].isna().tolist() == [True, False] and out["last_terminal_1d"][1] == 7


def test_logged_rows_follow_the_source_through_the_same_contract(warehouse, project_copy):
    """``logged`` (the event log's rows of the source, as trellis.online.eventlog.logged_rows gives them) comes after
    the source's own rows, each value cast to its column's type and a key that is not a column ignored, and goes
    through the same contract: a valid row is accepted as sent, a bad one quarantined with its reason, and a
    re-sent key later than the table's copy is the duplicate."""
    project = load_project(project_copy)
    rows, last_id, last_time = warehouse.sql(
        "select count(*), max(transaction_id), max(tx_datetime) from raw.transactions").fetchone()
    seven = warehouse.sql("select * from raw.transactions where transaction_id = 7").fetchone()
    fresh, late = last_id + 1, last_time + timedelta(minutes=1)
    logged = [
        {"transaction_id": fresh, "tx_datetime": late, "customer_id": 3, "terminal_id": 5, "device_id": 9,
         "tx_amount": 12.5, "note": "not a column"},
        {"transaction_id": fresh + 1, "tx_datetime": late, "customer_id": 3, "terminal_id": 5, "device_id": 9,
         "tx_amount": -1.0},
        dict(zip(["transaction_id", "tx_datetime", "customer_id", "terminal_id", "device_id", "tx_amount"],
                 [7, seven[1] + timedelta(hours=1), *seven[2:]], strict=True)),
    ]
    result = ingest(warehouse, project, project.sources["transactions"], now=NOW, logged=logged)
    assert (result.rows_in, result.rows_accepted, result.rows_quarantined) == (rows + 3, rows + 1, 2)
    assert result.reasons == {"tx_amount: greater_than_or_equal_to(0.0)": 1, "duplicate of transaction_id": 1}
    assert warehouse.sql(f"select * from validated.transactions where transaction_id in (7, {fresh}) "
                         "order by 1").fetchall() == [seven, (fresh, late, 3, 5, 9, 12.5)]
    assert warehouse.sql("select transaction_id, tx_datetime, _reason from quarantine.transactions "
                         "order by 1").fetchall() == [
        (7, seven[1] + timedelta(hours=1), "duplicate of transaction_id=7"),
        (fresh + 1, late, "tx_amount: greater_than_or_equal_to(0.0) (got -1.0)")]


def test_one_reason_per_broken_check_and_per_value_that_cannot_be_read(warehouse, project_copy):
    """A row breaking two checks gets both reasons, each counted; a value the column's type cannot hold (inf or
    1e30 in an integer column of a CSV) is one reason naming the column and the value, not a second one for the
    column's dtype."""
    warehouse.execute("create table raw.bad as select * from raw.transactions")
    warehouse.execute("alter table raw.bad alter terminal_id type varchar")
    warehouse.execute("update raw.bad set terminal_id = 'inf' where transaction_id = 3")
    warehouse.execute("update raw.bad set terminal_id = '1e30' where transaction_id = 4")
    warehouse.execute("update raw.bad set tx_amount = -5.555 where transaction_id = 5")
    warehouse.execute(f"copy raw.bad to '{project_copy / 'tx.csv'}' (format csv)")
    as_file_source(project_copy / "definitions/sources/transactions.yaml", "table: raw.transactions", "path: tx.csv")
    project = load_project(project_copy)
    result = ingest(warehouse, project, project.sources["transactions"], now=NOW)
    reasons = dict(warehouse.sql("select transaction_id, _reason from quarantine.transactions").fetchall())
    assert reasons[5] == ("tx_amount: greater_than_or_equal_to(0.0) (got -5.555); "
                          "tx_amount: a multiple of 0.01 (scale 2) (got -5.555)")
    for key, value in ((3, "inf"), (4, "1e+30")):
        assert "; " not in reasons[key] and reasons[key].startswith("terminal_id: ")
        assert reasons[key].endswith(f"(got {value})")
    assert len(reasons) == result.rows_quarantined == 3
    cannot_read = reasons[3].removesuffix(" (got inf)")
    assert result.reasons == {cannot_read: 2, "tx_amount: greater_than_or_equal_to(0.0)": 1,
                              "tx_amount: a multiple of 0.01 (scale 2)": 1}


def test_a_table_missing_several_columns_names_each(warehouse, project_copy):
    project = load_project(project_copy)
    warehouse.execute("alter table raw.transactions drop column device_id")
    warehouse.execute("alter table raw.transactions drop column terminal_id")
    with pytest.raises(ContractViolation) as caught:
        ingest(warehouse, project, project.sources["transactions"], now=NOW)
    assert str(caught.value) == (
        "source 'transactions' (raw.transactions) does not match its definition: "
        "source transactions: column_in_dataframe (terminal_id); "
        "source transactions: column_in_dataframe (device_id)")
    assert "validated" not in warehouse.sql("select schema_name from information_schema.schemata").df().values


def test_the_kept_copy_of_a_key_is_the_first_known_at_equal_event_times(warehouse, project_copy):
    """Copies of a label with the same event time: the one available first is kept whatever its position, and a
    null available_at (where the column may be null) counts as the event time (known first)."""
    path = project_copy / "definitions/sources/fraud_labels.yaml"
    path.write_text(path.read_text().replace("available_at: {type: timestamp}",
                                             "available_at: {type: timestamp, checks: {not_null: false}}"))
    project = load_project(project_copy)
    con = warehouse
    original = {i: con.sql(f"select * from raw.fraud_labels where transaction_id = {i}").fetchone() for i in (7, 8)}
    # id 7: a copy known a day after the event, placed after the original (known 7 days after): the copy is kept
    con.execute("insert into raw.fraud_labels select * replace (tx_datetime + interval 1 day as available_at, "
                "1 - tx_fraud as tx_fraud) from raw.fraud_labels where transaction_id = 7")
    # id 8: a copy with no available_at, placed after the original: known at the event time, so kept
    con.execute("insert into raw.fraud_labels select * replace (null as available_at, 1 - tx_fraud as tx_fraud) "
                "from raw.fraud_labels where transaction_id = 8")
    result = ingest(con, project, project.sources["fraud_labels"], now=NOW)
    kept = con.sql("select * from validated.fraud_labels where transaction_id in (7, 8) order by 1").fetchall()
    seven, eight = original[7], original[8]
    assert kept == [(*seven[:4], 1 - seven[4], seven[5], seven[3] + timedelta(days=1)),
                    (*eight[:4], 1 - eight[4], eight[5], None)]
    assert con.sql("select * exclude (_reason) from quarantine.fraud_labels order by 1").fetchall() == [seven, eight]
    assert result.reasons == {"duplicate of transaction_id": 2}


def test_a_source_without_a_primary_key_keeps_every_copy(warehouse, project_copy):
    path = project_copy / "definitions/sources/transactions.yaml"
    path.write_text(path.read_text().replace("primary_key: transaction_id\n", ""))
    project = load_project(project_copy)
    assert project.sources["transactions"].primary_key is None
    warehouse.execute("insert into raw.transactions select * from raw.transactions where transaction_id = 7")
    rows = warehouse.sql("select count(*) from raw.transactions").fetchone()[0]
    result = ingest(warehouse, project, project.sources["transactions"], now=NOW)
    assert (result.rows_in, result.rows_accepted, result.rows_quarantined) == (rows, rows, 0)
    assert warehouse.sql("select count(*) from validated.transactions where transaction_id = 7").fetchone()[0] == 2


def test_ingest_leaves_no_frame_registered_on_the_connection(warehouse, project_copy):
    """The frames written are registered on the caller's connection only while they are copied: left there, a
    name would shadow the caller's own and the rows would stay in memory."""
    project = load_project(project_copy)
    ingest(warehouse, project, project.sources["transactions"], now=NOW)
    with pytest.raises(duckdb.CatalogException):
        warehouse.sql("select count(*) from __frame")


def test_csv_booleans_are_read_as_words(warehouse, project_copy):
    """In a CSV a boolean is text: true/t/yes/1 and false/f/no/0 in any case and with spaces around, an empty
    field a null (where allowed); any other word is a quarantined row, never True (astype(bool) of 'false')."""
    words = {3: "TRUE", 4: " f ", 5: "Yes", 6: "0", 7: "maybe", 8: None}
    warehouse.execute("create table raw.flagged as select *, 'no' as is_online from raw.transactions")
    for key, word in words.items():
        warehouse.execute("update raw.flagged set is_online = ? where transaction_id = ?", [word, key])
    warehouse.execute(f"copy raw.flagged to '{project_copy / 'tx.csv'}' (format csv)")
    definition = project_copy / "definitions/sources/transactions.yaml"
    as_file_source(definition, "table: raw.transactions", "path: tx.csv")
    definition.write_text(definition.read_text().replace(
        "columns:\n", "columns:\n  is_online: {type: bool, checks: {not_null: false}}\n", 1))
    project = load_project(project_copy)
    result = ingest(warehouse, project, project.sources["transactions"], now=NOW)
    assert warehouse.sql("select transaction_id, is_online from validated.transactions where transaction_id "
                         "between 2 and 8 order by 1").fetchall() == [
        (2, False), (3, True), (4, False), (5, True), (6, False), (8, None)]
    assert warehouse.sql("select transaction_id, _reason from quarantine.transactions").fetchall() == [
        (7, "is_online: not true or false (got maybe)")]
    assert result.reasons == {"is_online: not true or false": 1}


def test_validated_rows_have_the_declared_types_and_columns(warehouse, project_copy):
    """A CSV's integers read as BIGINT are written as the declared int32, and a table's column that the definition
    does not declare is not written to validated.* (the quarantined rows keep it, as they were read)."""
    warehouse.execute(f"copy raw.fraud_labels to '{project_copy / 'labels.csv'}' (format csv)")
    as_file_source(project_copy / "definitions/sources/fraud_labels.yaml", "table: raw.fraud_labels",
                   "path: labels.csv")
    warehouse.execute("alter table raw.transactions add column note varchar default 'x'")
    warehouse.execute("update raw.transactions set tx_amount = -1 where transaction_id = 3")
    project = load_project(project_copy)
    for name in ("fraud_labels", "transactions"):
        ingest(warehouse, project, project.sources[name], now=NOW)
    declared = {"transaction_id": "BIGINT", "customer_id": "BIGINT", "terminal_id": "BIGINT",
                "tx_datetime": "TIMESTAMP_NS", "tx_fraud": "INTEGER", "tx_fraud_scenario": "INTEGER",
                "available_at": "TIMESTAMP_NS"}
    assert dict(warehouse.sql("select column_name, column_type from (describe validated.fraud_labels)")
                .fetchall()) == declared
    assert warehouse.sql("select * from validated.transactions").columns == [
        "transaction_id", "tx_datetime", "customer_id", "terminal_id", "device_id", "tx_amount"]
    assert warehouse.sql("select note from quarantine.transactions").fetchall() == [("x",)]


def test_the_default_clock_is_utc_whatever_the_machine_time_zone(warehouse, project_copy, monkeypatch):
    """max_future counts from the UTC clock: on a machine five hours behind UTC, a transaction of a minute ago
    (UTC) is on time, for ingest and for source_schema alike."""
    import time

    project = load_project(project_copy)
    source = project.sources["transactions"]
    a_minute_ago = datetime.now(UTC).replace(tzinfo=None, microsecond=0) - timedelta(minutes=1)
    warehouse.execute("update raw.transactions set tx_datetime = ? where transaction_id = 3", [a_minute_ago])
    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    try:
        result = ingest(warehouse, project, source)
        frame = warehouse.sql("select * from raw.transactions where transaction_id = 3").df()
        checked = source_schema(source).validate(frame)
    finally:
        monkeypatch.undo()
        time.tzset()
    assert result.rows_quarantined == 0
    assert checked["tx_datetime"].tolist() == [pd.Timestamp(a_minute_ago)]


def test_the_source_contract_names_its_checks(project_copy):
    """source_schema is the Pandera contract a user can validate with: named for its source, each check named
    (the money grid 'scale', the row check 'available_at_not_before_event_time') with its error in words, and
    columns the definition does not declare filtered out."""
    project = load_project(project_copy)
    labels = source_schema(project.sources["fraud_labels"], NOW)
    assert labels.name == "source fraud_labels" and labels.strict == "filter"
    assert [(c.name, c.error) for c in labels.checks] == [
        ("available_at_not_before_event_time", "available_at before tx_datetime")]
    amount = source_schema(project.sources["transactions"], NOW).columns["tx_amount"]
    assert [(c.name, c.error) for c in amount.checks] == [
        ("greater_than_or_equal_to", "greater_than_or_equal_to(0.0)"),
        ("less_than_or_equal_to", "less_than_or_equal_to(100000.0)"),
        ("scale", "a multiple of 0.01 (scale 2)")]


def test_a_missing_column_is_named_alone_when_later_columns_hold_text(warehouse, project_copy):
    """A table without terminal_id is refused for that column only: the text of a later timestamp column is still
    read first (one bad value is a row's reason, not a failure of the whole table)."""
    warehouse.execute("alter table raw.transactions drop column terminal_id")
    warehouse.execute("alter table raw.transactions add column seen_at varchar default '2018-04-01T00:00:00'")
    warehouse.execute("update raw.transactions set seen_at = 'soon' where transaction_id = 3")
    definition = project_copy / "definitions/sources/transactions.yaml"
    lines = definition.read_text().splitlines(keepends=True)
    definition.write_text("".join(line for line in lines if not line.startswith("simulated:"))
                          + "  seen_at: {type: timestamp, checks: {not_null: false}}\n")
    project = load_project(project_copy)
    with pytest.raises(ContractViolation) as caught:
        ingest(warehouse, project, project.sources["transactions"], now=NOW)
    assert str(caught.value) == ("source 'transactions' (raw.transactions) does not match its definition: "
                                 "source transactions: column_in_dataframe (terminal_id)")


def test_csv_timestamps_in_any_iso_form_become_naive_utc(warehouse, project_copy):
    """ISO 8601 text in its several forms (a space or a T, an offset, a Z, a date alone) in one CSV column is read
    row by row as naive UTC; text that is no timestamp is that row's reason."""
    texts = {3: "2018-04-01 05:00:00", 4: "2018-04-01T06:00:00+02:00", 5: "2018-04-01T07:30:00Z",
             6: "2018-04-02", 7: "soon"}
    warehouse.execute("create table raw.texts as select * replace (cast(tx_datetime as varchar) as tx_datetime) "
                      "from raw.transactions")
    for key, text in texts.items():
        warehouse.execute("update raw.texts set tx_datetime = ? where transaction_id = ?", [text, key])
    warehouse.execute(f"copy raw.texts to '{project_copy / 'tx.csv'}' (format csv)")
    as_file_source(project_copy / "definitions/sources/transactions.yaml", "table: raw.transactions", "path: tx.csv")
    project = load_project(project_copy)
    ingest(warehouse, project, project.sources["transactions"], now=NOW)
    assert warehouse.sql("select transaction_id, tx_datetime from validated.transactions where transaction_id "
                         "between 3 and 7 order by 1").fetchall() == [
        (3, datetime(2018, 4, 1, 5)), (4, datetime(2018, 4, 1, 4)), (5, datetime(2018, 4, 1, 7, 30)),
        (6, datetime(2018, 4, 2))]
    assert warehouse.sql("select transaction_id, _reason from quarantine.transactions").fetchall() == [
        (7, "tx_datetime: not a timestamp (got soon)")]


def test_csv_reasons_found_before_the_checks_are_joined_per_row(warehouse, project_copy):
    """A CSV row with a fractional int32 (1.5 would become 1, a valid scenario) and text in a number column has
    both reasons, in the order of the columns; a row with a value that does not read is not checked further."""
    warehouse.execute("create table raw.texts as select * replace (cast(tx_fraud_scenario as double) as "
                      "tx_fraud_scenario, cast(terminal_id as varchar) as terminal_id) from raw.fraud_labels")
    warehouse.execute("update raw.texts set tx_fraud_scenario = 1.5, terminal_id = 'n/a' where transaction_id = 3")
    warehouse.execute("update raw.texts set tx_fraud_scenario = 2.5 where transaction_id = 4")
    warehouse.execute("update raw.texts set terminal_id = 'n/a', tx_fraud = 5 where transaction_id = 5")
    warehouse.execute(f"copy raw.texts to '{project_copy / 'labels.csv'}' (format csv)")
    as_file_source(project_copy / "definitions/sources/fraud_labels.yaml", "table: raw.fraud_labels",
                   "path: labels.csv")
    project = load_project(project_copy)
    ingest(warehouse, project, project.sources["fraud_labels"], now=NOW)
    assert warehouse.sql("select transaction_id, _reason from quarantine.fraud_labels order by 1").fetchall() == [
        (3, "terminal_id: not a number (got n/a); tx_fraud_scenario: not an integer (got 1.5)"),
        (4, "tx_fraud_scenario: not an integer (got 2.5)"),
        (5, "terminal_id: not a number (got n/a)")]


@pytest.mark.parametrize(("value", "reason"), [
    ("9999-12-31 00:00:00", "more than max_future 5m past the clock (after 2026-01-01 00:05:00)"),
    ("0001-01-01 00:00:00", "before not_before 2000-01-01 00:00:00"),
])
def test_a_time_nanoseconds_cannot_hold_is_a_row_reason_naming_the_bound(warehouse, project_copy, value, reason):
    """Pandas holds nanoseconds from 1677 to 2262: a time outside is quarantined before the contract's coercion
    (which would fail the whole column), with the bound of the source that it breaks."""
    project = load_project(project_copy)
    warehouse.execute("update raw.transactions set tx_datetime = ? where transaction_id = 3", [value])
    ingest(warehouse, project, project.sources["transactions"], now=NOW)
    assert warehouse.sql("select transaction_id, _reason from quarantine.transactions").fetchall() == [
        (3, f"tx_datetime: {reason} (got {value})")]


def test_without_time_bounds_nanoseconds_are_the_only_range(warehouse, project_copy):
    """A source declaring neither not_before nor max_future takes any time pandas can hold, the last microsecond
    of 2262-04-11 included; a time outside is quarantined naming that range."""
    definition = project_copy / "definitions/sources/transactions.yaml"
    lines = definition.read_text().splitlines(keepends=True)
    definition.write_text("".join(line for line in lines if not line.startswith(("not_before:", "max_future:"))))
    project = load_project(project_copy)
    source = project.sources["transactions"]
    assert (source.not_before, source.max_future) == (None, None)
    values = {3: "9999-12-31 00:00:00", 4: "0001-01-01 00:00:00", 5: "2262-04-11 23:47:16.854775",
              6: "1677-09-22 00:00:00"}
    for key, value in values.items():
        warehouse.execute("update raw.transactions set tx_datetime = ? where transaction_id = ?", [value, key])
    ingest(warehouse, project, source, now=NOW)
    assert warehouse.sql("select transaction_id, _reason from quarantine.transactions order by 1").fetchall() == [
        (3, "tx_datetime: outside 1677-09-21 to 2262-04-11 (got 9999-12-31 00:00:00)"),
        (4, "tx_datetime: outside 1677-09-21 to 2262-04-11 (got 0001-01-01 00:00:00)")]
    assert warehouse.sql("select cast(tx_datetime as varchar) from validated.transactions where transaction_id "
                         "in (5, 6) order by 1").fetchall() == [("1677-09-22 00:00:00",),
                                                              ("2262-04-11 23:47:16.854775",)]


def test_a_time_zone_aware_table_column_is_read_as_naive_utc(warehouse, project_copy):
    """A DuckDB table whose event time is TIMESTAMP WITH TIME ZONE (the column reads as tz-aware datetimes) is
    accepted, its times written as naive UTC."""
    project = load_project(project_copy)
    expected = warehouse.sql("select transaction_id, tx_datetime from raw.transactions order by 1").fetchall()
    warehouse.execute("set TimeZone = 'UTC'")
    warehouse.execute("alter table raw.transactions alter tx_datetime type timestamptz")
    warehouse.execute("set TimeZone = 'America/New_York'")
    result = ingest(warehouse, project, project.sources["transactions"], now=NOW)
    assert result.rows_quarantined == 0
    assert warehouse.sql("select transaction_id, tx_datetime from validated.transactions order by 1").fetchall() \
        == expected


def test_a_time_at_an_early_not_before_that_nanoseconds_cannot_hold_names_that_range(warehouse, project_copy):
    """not_before is inclusive: at a not_before earlier than 1677, a time exactly there passes it, and is
    quarantined for the range pandas can hold."""
    definition = project_copy / "definitions/sources/transactions.yaml"
    definition.write_text(definition.read_text().replace('not_before: "2000-01-01"', 'not_before: "1600-01-01"'))
    project = load_project(project_copy)
    warehouse.execute("update raw.transactions set tx_datetime = '1600-01-01' where transaction_id = 3")
    warehouse.execute("update raw.transactions set tx_datetime = '1599-12-31' where transaction_id = 4")
    ingest(warehouse, project, project.sources["transactions"], now=NOW)
    assert warehouse.sql("select transaction_id, _reason from quarantine.transactions order by 1").fetchall() == [
        (3, "tx_datetime: outside 1677-09-21 to 2262-04-11 (got 1600-01-01 00:00:00)"),
        (4, "tx_datetime: before not_before 1600-01-01 00:00:00 (got 1599-12-31 00:00:00)")]


def test_a_typed_table_with_several_wrong_columns_names_each_and_the_table(warehouse, project_copy):
    project = load_project(project_copy)
    warehouse.execute("alter table raw.transactions alter tx_amount type varchar")
    warehouse.execute("alter table raw.transactions alter terminal_id type boolean using terminal_id > 5")
    with pytest.raises(ContractViolation) as caught:
        ingest(warehouse, project, project.sources["transactions"], now=NOW)
    assert str(caught.value) == (
        "source 'transactions' (raw.transactions) does not match its definition: terminal_id is BOOLEAN, the "
        "definition declares int64; tx_amount is VARCHAR, the definition declares float64")


def test_on_violation_fail_names_the_count_and_the_first_five_reasons(warehouse, project_copy):
    path = project_copy / "definitions/sources/transactions.yaml"
    path.write_text(path.read_text().replace("on_violation: quarantine", "on_violation: fail"))
    project = load_project(project_copy)
    rows = warehouse.sql("select count(*) from raw.transactions").fetchone()[0]
    warehouse.execute("update raw.transactions set tx_amount = -transaction_id where transaction_id between 1 and 6")
    with pytest.raises(ContractViolation) as caught:
        ingest(warehouse, project, project.sources["transactions"], now=NOW)
    first = "; ".join(f"tx_amount: greater_than_or_equal_to(0.0) (got -{i}.0)" for i in range(1, 6))
    assert str(caught.value) == (f"source 'transactions': 6 of {rows} rows break the contract (on_violation: fail). "
                                 f"First: {first}")
    assert "validated" not in warehouse.sql("select schema_name from information_schema.schemata").df().values


def test_a_failed_write_rolls_back_every_source_and_raises_its_own_error(warehouse, project_copy):
    """ingest_all writes every source in one transaction: when DuckDB refuses the last table (a view stands
    where quarantine.transactions goes), the labels already written are rolled back, DuckDB's error is the one
    raised, and the caller's connection is usable again."""
    project = load_project(project_copy)
    warehouse.execute("create schema quarantine")
    warehouse.execute("create view quarantine.transactions as select 1 as x")
    with pytest.raises(duckdb.CatalogException, match="quarantine.transactions|transactions"):
        ingest_all(warehouse, project, [project.sources["fraud_labels"], project.sources["transactions"]], now=NOW)
    tables = warehouse.sql("select table_schema || '.' || table_name from information_schema.tables "
                           "where table_schema <> 'raw'").fetchall()
    assert tables == [("quarantine.transactions",)]
    warehouse.execute("begin transaction")  # no transaction left open
    warehouse.execute("commit")


def test_the_first_microsecond_nanoseconds_hold_is_accepted_and_the_one_before_quarantined(warehouse, project_copy):
    """Nanoseconds start at 1677-09-21 00:12:43.145224193: the microsecond .145224 is before that and is a row
    reason (not a failed coercion that refuses the table), .145225 is the first that fits and is accepted."""
    definition = project_copy / "definitions/sources/transactions.yaml"
    lines = definition.read_text().splitlines(keepends=True)
    definition.write_text("".join(line for line in lines if not line.startswith(("not_before:", "max_future:"))))
    project = load_project(project_copy)
    values = {3: "1677-09-21 00:12:43.145224", 4: "1677-09-21 00:12:43.145225"}
    for key, value in values.items():
        warehouse.execute("update raw.transactions set tx_datetime = ? where transaction_id = ?", [value, key])
    ingest(warehouse, project, project.sources["transactions"], now=NOW)
    assert warehouse.sql("select transaction_id, _reason from quarantine.transactions").fetchall() == [
        (3, "tx_datetime: outside 1677-09-21 to 2262-04-11 (got 1677-09-21 00:12:43.145224)")]
    # Read as Python datetimes: DuckDB cannot cast a TIMESTAMP_NS this close to its minimum to text.
    assert warehouse.sql("select tx_datetime from validated.transactions where transaction_id = 4").fetchall() \
        == [(datetime(1677, 9, 21, 0, 12, 43, 145225),)]


def test_a_date_nanoseconds_cannot_hold_is_a_row_reason(warehouse, project_copy):
    """A date column is held as nanoseconds too: 0001-01-01 and 9999-12-31 are quarantined naming the range
    (not a failed coercion that refuses the table); the first and last whole days of the range are accepted, and
    not_before, a bound of timestamp columns, does not apply to a date."""
    definition = project_copy / "definitions/sources/transactions.yaml"
    lines = definition.read_text().splitlines(keepends=True)
    definition.write_text("".join(line for line in lines if not line.startswith("simulated:"))
                          + "  tx_day: {type: date}\n")
    project = load_project(project_copy)
    warehouse.execute("alter table raw.transactions add column tx_day date")
    warehouse.execute("update raw.transactions set tx_day = cast(tx_datetime as date)")
    values = {3: "0001-01-01", 4: "9999-12-31", 5: "1677-09-22", 6: "2262-04-11", 7: "1990-01-01"}
    for key, value in values.items():
        warehouse.execute("update raw.transactions set tx_day = ? where transaction_id = ?", [value, key])
    rows = warehouse.sql("select count(*) from raw.transactions").fetchone()[0]
    result = ingest(warehouse, project, project.sources["transactions"], now=NOW)
    assert (result.rows_accepted, result.rows_quarantined) == (rows - 2, 2)
    assert warehouse.sql("select transaction_id, _reason from quarantine.transactions order by 1").fetchall() == [
        (3, "tx_day: outside 1677-09-21 to 2262-04-11 (got 0001-01-01)"),
        (4, "tx_day: outside 1677-09-21 to 2262-04-11 (got 9999-12-31)")]
    assert warehouse.sql("select transaction_id, cast(tx_day as date)::varchar from validated.transactions "
                         "where transaction_id in (5, 6, 7) order by 1").fetchall() == [
        (5, "1677-09-22"), (6, "2262-04-11"), (7, "1990-01-01")]
