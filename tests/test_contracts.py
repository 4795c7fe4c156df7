"""Source contracts: bad rows are quarantined with a reason and counted, or fail the run when declared."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pandera.pandas as pa
import pytest

from trellis.contracts import ContractViolation, feature_schema, ingest
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
    assets.project.trellis_project.cache_clear()
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
