"""Source contracts: bad rows are quarantined with a reason and counted, or fail the run when declared."""

from __future__ import annotations

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
    path = project_copy / "definitions/sources/fraud_labels.yaml"
    path.write_text(path.read_text().replace("table: raw.fraud_labels", f"path: labels.{fmt}"))
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
