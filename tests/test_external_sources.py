"""Sources from where data lives: Parquet and CSV files or globs, a PostgreSQL table, column names of their own
(``from:``), and a label that lives on the event's row (``derived_from`` with ``available_at: tx_datetime + 7d``),
each ingested through the same contracts by ``trellis ingest`` into a project made by ``trellis init``, and by the
Dagster ``raw/<source>`` asset. Bad input is one line naming the source, the column and the file; nothing stored
changes when ingestion fails."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import service_missing

from trellis.cli import main
from trellis.errors import DefinitionError
from trellis.paths import PROJECT_ENV
from trellis.simulate import SimulationConfig, simulate
from trellis.spec import load_project

POSTGRES = "127.0.0.1:5432"  # the PostgreSQL these machines run (user postgres, trust auth)
# The reference data's names, as a public fraud data set spells them (upper case, the label on the row).
UPPER = {
    "transaction_id": "TRANSACTION_ID",
    "tx_datetime": "TX_DATETIME",
    "customer_id": "CUSTOMER_ID",
    "terminal_id": "TERMINAL_ID",
    "tx_amount": "TX_AMOUNT",
    "tx_fraud": "TX_FRAUD",
}
# The Trellis names of the transactions: DuckDB matches names regardless of case, so `amount` (not `tx_amount`) is
# the column that only `from: TX_AMOUNT` can find.
TRELLIS = {
    "TRANSACTION_ID": "transaction_id",
    "TX_DATETIME": "tx_datetime",
    "CUSTOMER_ID": "customer_id",
    "TERMINAL_ID": "terminal_id",
    "TX_AMOUNT": "amount",
}

TRANSACTIONS = """\
- kind: source
  name: transactions
  {location}
  event_time: tx_datetime
  primary_key: transaction_id
  not_before: "2000-01-01"
  columns:
    transaction_id: {{type: int64, from: TRANSACTION_ID}}
    tx_datetime: {{type: timestamp, from: TX_DATETIME}}
    customer_id: {{type: int64, from: CUSTOMER_ID}}
    terminal_id: {{type: int64, from: TERMINAL_ID}}
    amount: {{type: float64, from: TX_AMOUNT, scale: 2, checks: {{ge: 0}}}}
"""
LABELS = """\
- kind: source
  name: fraud_labels
  derived_from: transactions
  event_time: tx_datetime
  available_at: tx_datetime + 7d
  primary_key: transaction_id
  columns:
    transaction_id: {type: int64, from: TRANSACTION_ID}
    tx_datetime: {type: timestamp, from: TX_DATETIME}
    tx_fraud: {type: int32, from: TX_FRAUD, checks: {isin: [0, 1]}}
"""


def cli(*args: str | Path, env: dict[str, str | None] | None = None) -> tuple[int, str]:
    """A `trellis` command as a user runs it (no project variables of this process): exit code and output."""
    result = CliRunner(env={**dict.fromkeys(PROJECT_ENV), **(env or {})}).invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def errors(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("error")]


def simulated_rows(days: int = 20) -> pd.DataFrame:
    """A small simulated data set in the shape of the public one: upper-case names, the fraud label on the row."""
    tables = simulate(SimulationConfig(seed=5, n_days=days).scaled(0.01))
    tx = tables["transactions"].to_pandas()
    labels = tables["fraud_labels"].to_pandas()[["transaction_id", "tx_fraud"]]
    rows = tx.merge(labels, on="transaction_id", validate="one_to_one")
    return rows[list(UPPER)].rename(columns=UPPER)


def new_project(root: Path, location: str, labels: bool = True) -> Path:
    """`trellis init` and the sources of the user's data (the transactions, and their labels on the same rows)."""
    code, out = cli("init", root)
    assert code == 0, out
    (root / "definitions/sources/sources.yaml").write_text(
        TRANSACTIONS.format(location=location) + (LABELS if labels else "")
    )
    return root


def table(root: Path, name: str) -> pd.DataFrame:
    with duckdb.connect(str(root / "data/warehouse.duckdb"), read_only=True) as con:
        return con.sql(f"select * from {name} order by all").df()


def stored(root: Path) -> dict[str, pd.DataFrame]:
    """Every table of the warehouse, as it is."""
    with duckdb.connect(str(root / "data/warehouse.duckdb"), read_only=True) as con:
        names = [
            f"{s}.{t}"
            for s, t in con.sql(
                "select table_schema, table_name from information_schema.tables order by all"
            ).fetchall()
        ]
        return {name: con.sql(f"select * from {name} order by all").df() for name in names}


def expected_transactions(rows: pd.DataFrame) -> pd.DataFrame:
    out = rows.drop(columns="TX_FRAUD").rename(columns=TRELLIS)
    return out.sort_values(list(out.columns)).reset_index(drop=True)


# --- Parquet with its own column names, and the label on the event's row ---------------------------------------


def test_a_parquet_file_with_upper_case_names_and_the_label_on_the_row(tmp_path: Path):
    rows = simulated_rows()
    root = new_project(tmp_path / "mine", "path: data/transactions.parquet")
    (root / "data").mkdir()
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), root / "data/transactions.parquet")
    code, out = cli("validate", "--project", root)
    assert code == 0 and "2 sources" in out, out
    code, out = cli("ingest", "--project", root)
    assert code == 0, out
    n = len(rows)
    assert f"transactions: {n:,} in = {n:,} accepted + 0 quarantined" in out
    assert f"fraud_labels: {n:,} in = {n:,} accepted + 0 quarantined" in out

    # validated.transactions: the Trellis names, every row, every value as in the file
    got = table(root, "validated.transactions")
    assert list(got.columns) == ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "amount"]
    pd.testing.assert_frame_equal(got, expected_transactions(rows), check_dtype=False)

    # validated.fraud_labels: the label of each row, known exactly 7 days after its event
    labels = table(root, "validated.fraud_labels")
    assert list(labels.columns) == ["transaction_id", "tx_datetime", "tx_fraud", "available_at"]
    file = rows.set_index("TRANSACTION_ID").loc[labels["transaction_id"]]
    assert (labels["tx_fraud"].to_numpy() == file["TX_FRAUD"].to_numpy()).all()
    assert (labels["available_at"] - labels["tx_datetime"] == timedelta(days=7)).all()
    assert (labels["tx_datetime"].to_numpy() == file["TX_DATETIME"].to_numpy()).all()
    assert labels["tx_fraud"].sum() > 0  # the data set has frauds: the label column was read, not defaulted


def test_training_reads_the_derived_labels_matured_by_their_available_at(tmp_path: Path):
    """The labels on the event's row reach training's maturity rule unchanged: a training set as of T holds
    exactly the transactions whose event time is at least 7 days before T (available_at = event time + 7d < T)."""
    import ibis

    from trellis.training import _parts

    rows = simulated_rows()
    root = new_project(tmp_path / "mine", "path: data/transactions.parquet")
    (root / "data").mkdir()
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), root / "data/transactions.parquet")
    (root / "definitions/entities/entities.yaml").write_text(
        "- {kind: entity, name: customer, join_key: customer_id}\n"
    )
    (root / "definitions/features/features.yaml").write_text(
        "- kind: feature_group\n  name: spending\n  entity: customer\n  source: transactions\n"
        "  features: [{name: tx_count, agg: count, windows: [1d]}]\n"
    )
    (root / "definitions/models/models.yaml").write_text(
        "- kind: model\n  name: fraud\n  spine: transactions\n  features: [spending]\n"
        "  label: {source: fraud_labels, column: tx_fraud, join_key: transaction_id}\n"
    )
    assert cli("ingest", "--project", root)[0] == 0
    project = load_project(root)
    as_of = rows["TX_DATETIME"].min() + timedelta(days=12)
    parts = _parts(project, "fraud", as_of.to_pydatetime(), "validated", "features")
    with duckdb.connect(str(root / "data/warehouse.duckdb"), read_only=True) as con:
        entering = con.sql(ibis.to_sql(parts.entering, dialect="duckdb")).df()
    matured = rows[rows["TX_DATETIME"] + timedelta(days=7) < as_of]
    assert sorted(entering["transaction_id"]) == sorted(matured["TRANSACTION_ID"])
    assert 0 < len(matured) < len(rows[rows["TX_DATETIME"] < as_of])  # some known, some not yet


# --- CSV files through a glob ---------------------------------------------------------------------------------


def test_a_csv_glob_of_two_files_is_one_source(tmp_path: Path):
    rows = simulated_rows()
    root = new_project(tmp_path / "mine", "path: data/tx_*.csv")
    (root / "data").mkdir()
    half = len(rows) // 2
    for i, part in enumerate((rows.iloc[:half], rows.iloc[half:])):
        pacsv.write_csv(pa.Table.from_pandas(part, preserve_index=False), root / f"data/tx_{i}.csv")
    (root / "data/tx_notes.txt").write_text("not matched by the glob\n")
    code, out = cli("ingest", "--project", root)
    assert code == 0, out
    assert f"transactions: {len(rows):,} in = {len(rows):,} accepted + 0 quarantined" in out
    pd.testing.assert_frame_equal(
        table(root, "validated.transactions"), expected_transactions(rows), check_dtype=False
    )
    labels = table(root, "validated.fraud_labels")
    assert (
        len(labels) == len(rows)
        and (labels["available_at"] - labels["tx_datetime"] == timedelta(days=7)).all()
    )


def test_values_that_do_not_cast_are_quarantined_with_their_reason(tmp_path: Path):
    """CSV text that does not read as the declared type is a quarantined row with a reason, never a crash, even
    past the rows DuckDB samples to detect types; rows in = accepted + quarantined, in both sources."""
    once = simulated_rows()
    copies = [once.assign(TRANSACTION_ID=once["TRANSACTION_ID"] + i * len(once)) for i in range(12)]
    rows = pd.concat(copies, ignore_index=True).astype(
        {"TX_AMOUNT": object, "TX_DATETIME": str, "TX_FRAUD": object}
    )
    sampled = 20_480  # the rows DuckDB's CSV reader samples by default to detect a column's type
    last = len(rows) - 1
    assert last > sampled + 10
    rows.loc[sampled + 3, "TX_AMOUNT"] = "12,50"
    rows.loc[last, "TX_DATETIME"] = "yesterday"
    rows.loc[sampled + 5, "TX_FRAUD"] = "maybe"
    root = new_project(tmp_path / "mine", "path: data/tx.csv")
    (root / "data").mkdir()
    rows.astype(str).to_csv(root / "data/tx.csv", index=False)
    code, out = cli("ingest", "--project", root)
    assert code == 0, out
    n = len(rows)
    assert f"transactions: {n:,} in = {n - 2:,} accepted + 2 quarantined" in out
    assert f"fraud_labels: {n:,} in = {n - 2:,} accepted + 2 quarantined" in out
    ids = rows["TRANSACTION_ID"]
    quarantined = table(root, "quarantine.transactions").set_index("transaction_id")["_reason"].to_dict()
    assert quarantined == {
        ids[sampled + 3]: "amount: not a number (got 12,50)",
        ids[last]: "tx_datetime: not a timestamp (got yesterday)",
    }
    labels = table(root, "quarantine.fraud_labels").set_index("transaction_id")["_reason"].to_dict()
    assert labels[ids[sampled + 5]] == "tx_fraud: not a number (got maybe)"
    assert labels[ids[last]].startswith("tx_datetime: not a timestamp (got yesterday)")


# --- PostgreSQL --------------------------------------------------------------------------------------------------


@pytest.fixture
def postgres_db():
    """A throwaway database on the local PostgreSQL (created here, dropped after); its DSN. No server: a failure
    under CI, a skip otherwise (conftest.service_missing)."""
    import psycopg

    name = f"trellis_ext_{uuid.uuid4().hex[:12]}"
    admin = f"postgresql://postgres@{POSTGRES}/postgres"
    try:
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as con:
            con.execute(f'create database "{name}"')
    except psycopg.OperationalError as exc:
        service_missing("PostgreSQL", POSTGRES, str(exc).splitlines()[0], start="pg_ctlcluster 15 main start")
    try:
        yield f"postgresql://postgres@{POSTGRES}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as con:
            con.execute(f'drop database if exists "{name}" with (force)')


def test_a_postgresql_table_is_read_in_batches(tmp_path: Path, postgres_db: str, monkeypatch):
    import psycopg

    import trellis.external

    rows = simulated_rows()
    with psycopg.connect(postgres_db) as con:
        con.execute(
            'create schema shop; create table shop.tx ("TRANSACTION_ID" bigint, "TX_DATETIME" timestamptz, '
            '"CUSTOMER_ID" integer, "TERMINAL_ID" bigint, "TX_AMOUNT" numeric(12, 2), "TX_FRAUD" smallint, '
            "note text)"
        )
        with con.cursor().copy(
            'copy shop.tx ("TRANSACTION_ID", "TX_DATETIME", "CUSTOMER_ID", "TERMINAL_ID", '
            '"TX_AMOUNT", "TX_FRAUD") from stdin'
        ) as copy:
            for row in rows.itertuples(index=False):
                # the event time as a Paris wall clock (+02:00 in summer): read back as naive UTC
                copy.write_row(
                    (row[0], pd.Timestamp(row[1]).tz_localize("UTC").tz_convert("Europe/Paris"), *row[2:])
                )
    monkeypatch.setattr(trellis.external, "POSTGRES_BATCH_ROWS", 500)  # several batches
    root = new_project(tmp_path / "mine", "postgres: {table: shop.tx, dsn_env: SHOP_DSN}")
    code, out = cli("ingest", "--project", root, env={"SHOP_DSN": postgres_db})
    assert code == 0, out
    n = len(rows)
    assert n > 1500 and f"transactions: {n:,} in = {n:,} accepted + 0 quarantined" in out
    pd.testing.assert_frame_equal(
        table(root, "validated.transactions"), expected_transactions(rows), check_dtype=False
    )
    labels = table(root, "validated.fraud_labels")
    assert (labels["available_at"] - labels["tx_datetime"] == timedelta(days=7)).all()
    assert sorted(labels["tx_fraud"]) == sorted(rows["TX_FRAUD"])
    staged = "select count(*) from duckdb_tables() where table_name like '%postgres%'"
    with duckdb.connect(str(root / "data/warehouse.duckdb"), read_only=True) as con:
        assert con.sql(staged).fetchone() == (0,)  # the staged copy was not kept

    # The DSN's variable unset, a table that is not there, a column that is not there: one line each.
    code, out = cli("ingest", "--project", root)
    assert code == 1 and errors(out) == [
        "error: source 'transactions' reads PostgreSQL through the connection string in $SHOP_DSN, which is not set"
    ]
    definitions = root / "definitions/sources/sources.yaml"
    definitions.write_text(definitions.read_text().replace("shop.tx,", "shop.txn,"))
    code, out = cli("ingest", "--project", root, env={"SHOP_DSN": postgres_db})
    assert code == 1 and errors(out) == [
        "error: source 'transactions' reads PostgreSQL table shop.txn, which does "
        "not exist (or has no columns) in that database"
    ]
    definitions.write_text(
        definitions.read_text()
        .replace("shop.txn,", "shop.tx,")
        .replace("from: TERMINAL_ID", "from: TERMINAL")
    )
    code, out = cli("ingest", "--project", root, env={"SHOP_DSN": postgres_db})
    assert code == 1 and errors(out) == [
        "error: source 'transactions': column 'terminal_id' reads 'TERMINAL', which PostgreSQL table shop.tx does "
        "not have (did you mean 'TERMINAL_ID'?) (its columns: TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, "
        "TERMINAL_ID, TX_AMOUNT, TX_FRAUD, note)"
    ]
    code, out = cli("ingest", "--project", root, env={"SHOP_DSN": postgres_db.replace("5432", "1")})
    assert code == 1 and len(errors(out)) == 1 and "Traceback" not in out
    assert errors(out)[0].startswith(
        "error: source 'transactions': cannot connect to PostgreSQL for shop.tx: "
    )


# --- Bad input: one line, nothing stored changed ----------------------------------------------------------------


def test_a_missing_file_or_column_is_one_line_and_changes_nothing(tmp_path: Path):
    rows = simulated_rows(days=5)
    root = new_project(tmp_path / "mine", "path: data/transactions.parquet")
    code, out = cli("ingest", "--project", root)
    assert code == 1 and errors(out) == [
        f"error: source 'transactions' reads data/transactions.parquet, which does not exist under {root}"
    ]
    assert not (root / "data/warehouse.duckdb").exists()
    (root / "data").mkdir()
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), root / "data/transactions.parquet")
    assert cli("ingest", "--project", root)[0] == 0
    before = stored(root)
    assert set(before) == {
        "validated.transactions",
        "quarantine.transactions",
        "validated.fraud_labels",
        "quarantine.fraud_labels",
    }

    # the label column misspelt in the derived source: the transactions (read first, and fine) are not rewritten
    pq.write_table(
        pa.Table.from_pandas(rows.head(10), preserve_index=False), root / "data/transactions.parquet"
    )
    definitions = root / "definitions/sources/sources.yaml"
    definitions.write_text(definitions.read_text().replace("from: TX_FRAUD", "from: TX_FRUAD"))
    code, out = cli("ingest", "--project", root)
    assert code == 1 and errors(out) == [
        "error: source 'fraud_labels': column 'tx_fraud' reads 'TX_FRUAD', which data/transactions.parquet does not "
        "have (did you mean 'TX_FRAUD'?) (its columns: TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, "
        "TX_AMOUNT, TX_FRAUD)"
    ]
    after = stored(root)
    assert after.keys() == before.keys()
    for name in before:
        pd.testing.assert_frame_equal(after[name], before[name])

    # a glob that matches nothing
    definitions.write_text(
        definitions.read_text().replace("data/transactions.parquet", "data/2019/*.parquet")
    )
    code, out = cli("ingest", "--project", root)
    assert code == 1 and errors(out) == [
        f"error: source 'transactions' reads data/2019/*.parquet, which matches no file under {root}"
    ]


def test_the_dagster_asset_ingests_a_derived_source_through_the_same_contract(tmp_path: Path, monkeypatch):
    import dagster as dg

    import assets.project
    from assets.raw.assets import _source_asset
    from assets.resources import Warehouse

    rows = simulated_rows(days=5)
    rows["TX_AMOUNT"] = rows["TX_AMOUNT"].astype(object)
    rows.loc[2, "TX_AMOUNT"] = "n/a"
    root = new_project(tmp_path / "mine", "path: data/tx_*.csv")
    (root / "data").mkdir()
    rows.to_csv(root / "data/tx_1.csv", index=False)
    monkeypatch.setenv("TRELLIS_PROJECT", str(root))
    assets.project.trellis_project.cache_clear()
    warehouse = Warehouse(path=str(root / "data/warehouse.duckdb"))
    try:
        result = dg.materialize(
            [_source_asset("transactions"), _source_asset("fraud_labels")], resources={"warehouse": warehouse}
        )
        assert result.success
        (checked, labels_checked) = sorted(
            result.get_asset_check_evaluations(), key=lambda e: str(e.asset_key)
        )
        assert checked.passed and labels_checked.passed
        metadata = {
            str(e.asset_key): e.materialization.metadata for e in result.get_asset_materialization_events()
        }
        tx = metadata["AssetKey(['raw', 'transactions'])"]
        assert (tx["rows_in"].value, tx["dagster/row_count"].value, tx["rows_quarantined"].value) == (
            len(rows),
            len(rows) - 1,
            1,
        )
        assert tx["read_from"].value == "data/tx_*.csv"
        labels = table(root, "validated.fraud_labels")
        assert (
            len(labels) == len(rows)
            and (labels["available_at"] - labels["tx_datetime"] == timedelta(days=7)).all()
        )

        # a missing column fails the run with the one-line reason, and the tables stay as they were
        before = stored(root)
        definitions = root / "definitions/sources/sources.yaml"
        definitions.write_text(definitions.read_text().replace("from: CUSTOMER_ID", "from: CUSTOMER"))
        assets.project.trellis_project.cache_clear()
        failed = dg.materialize(
            [_source_asset("transactions")], resources={"warehouse": warehouse}, raise_on_error=False
        )
        assert not failed.success
        (failure,) = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
        assert (
            "source 'transactions': column 'customer_id' reads 'CUSTOMER', which data/tx_*.csv does not have"
            in failure.step_failure_data.user_failure_data.description
        )
        after = stored(root)
        for name in before:
            pd.testing.assert_frame_equal(after[name], before[name])
    finally:
        assets.project.trellis_project.cache_clear()


# --- The declaration, validated -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "field", "message"),
    [
        (
            "path: data/tx.parquet\n  table: raw.tx",
            "path",
            "give either 'table' or 'path', not both (table: 'raw.tx', path: 'data/tx.parquet')",
        ),
        (
            "path: data/tx.parquet\n  postgres: {table: shop.tx, dsn_env: SHOP_DSN}",
            "postgres",
            "give either 'path' or 'postgres', not both (path: 'data/tx.parquet', postgres: 'shop.tx')",
        ),
        (
            "postgres: {table: shop.tx}",
            "postgres",
            "give the connection as exactly one of 'dsn' (a connection string) or 'dsn_env'",
        ),
        ("postgres: {table: tx, dsn_env: SHOP_DSN}", "postgres.table", "String should match pattern"),
        ("path: data/tx.json", "path", "'data/tx.json' must be a .parquet or .csv file, or a glob of them"),
    ],
)
def test_a_source_gives_exactly_one_location(tmp_path: Path, location: str, field: str, message: str):
    root = new_project(tmp_path / "mine", location, labels=False)
    with pytest.raises(DefinitionError) as caught:
        load_project(root)
    (problem,) = caught.value.problems
    assert (str(problem.file), problem.field) == ("definitions/sources/sources.yaml", field), str(problem)
    assert message in problem.message and "\n" not in str(problem)


@pytest.mark.parametrize(
    ("old", "new", "field", "message"),
    [
        (
            "available_at: tx_datetime + 7d",
            "available_at: tx_datetime + 7 days",
            "available_at",
            "invalid delay '7 days'",
        ),
        (
            "available_at: tx_datetime + 7d",
            "available_at: tx_fraud + 7d",
            "available_at",
            "column 'tx_fraud' must be a timestamp, not int32",
        ),
        (
            "available_at: tx_datetime + 7d",
            "available_at: tx_date + 7d",
            "available_at",
            "unknown column 'tx_date' in available_at tx_date + 7d (did you mean 'tx_datetime'?)",
        ),
        (
            "derived_from: transactions",
            "derived_from: transaction",
            "derived_from",
            "unknown source 'transaction' (did you mean 'transactions'?)",
        ),
        (
            "tx_fraud: {type: int32,",
            "available_at: {type: timestamp}\n    tx_fraud: {type: int32,",
            "available_at",
            "computes the column 'available_at', which columns already declares",
        ),
    ],
)
def test_a_derived_source_is_checked(tmp_path: Path, old: str, new: str, field: str, message: str):
    root = new_project(tmp_path / "mine", "path: data/tx.parquet")
    definitions = root / "definitions/sources/sources.yaml"
    assert old in definitions.read_text()
    definitions.write_text(definitions.read_text().replace(old, new))
    with pytest.raises(DefinitionError) as caught:
        load_project(root)
    (problem,) = caught.value.problems
    assert problem.field == field and message in problem.message, str(problem)
    lines = definitions.read_text().splitlines()
    assert problem.line == next(i for i, line in enumerate(lines, 1) if line.strip().startswith(f"{field}:"))


def test_the_templates_commented_example_of_a_label_on_the_row_validates(tmp_path: Path):
    """The commented `derived_from` example `trellis init` writes works as written."""
    root = new_project(tmp_path / "mine", "path: data/tx.parquet", labels=False)
    lines = (root / "definitions/sources/sources.yaml").read_text().splitlines()
    template = (
        Path(__file__).resolve().parent.parent / "trellis/templates/project/definitions/sources/sources.yaml"
    )
    example = template.read_text().splitlines()
    start = next(i for i, line in enumerate(example) if line.startswith("#   - kind: source"))
    end = next(i for i in range(start, len(example)) if example[i] == "#")
    (root / "definitions/sources/sources.yaml").write_text(
        "\n".join(lines) + "\n" + "\n".join(line[4:] for line in example[start:end]) + "\n"
    )
    project = load_project(root)
    labels = project.sources["fraud_labels"]
    assert (labels.available_at, labels.available_after.column, labels.available_after.delay) == (
        "available_at",
        "tx_datetime",
        "7d",
    )
    assert labels.columns["tx_fraud"].from_ == "TX_FRAUD"


def test_the_staged_postgresql_copy_is_dropped_from_the_callers_connection(tmp_path: Path, postgres_db: str,
                                                                          monkeypatch):
    """ingest stages a PostgreSQL table as a temporary table of the caller's connection; once written, the copy is
    dropped there (a caller that keeps its connection open does not keep the rows twice), and a source's staged
    copy serves the sources derived from it in the same ingest_all."""
    import psycopg

    from trellis.contracts import ingest_all

    rows = simulated_rows(days=3)
    with psycopg.connect(postgres_db) as con:
        con.execute('create schema shop; create table shop.tx ("TRANSACTION_ID" bigint, "TX_DATETIME" timestamp, '
                    '"CUSTOMER_ID" integer, "TERMINAL_ID" bigint, "TX_AMOUNT" numeric(12, 2), "TX_FRAUD" smallint)')
        with con.cursor().copy('copy shop.tx from stdin') as copy:
            for row in rows.itertuples(index=False):
                copy.write_row(row)
    root = new_project(tmp_path / "mine", "postgres: {table: shop.tx, dsn_env: SHOP_DSN}")
    monkeypatch.setenv("SHOP_DSN", postgres_db)
    project = load_project(root)
    staged = "select count(*) from duckdb_tables() where table_name like '__postgres_%'"
    with duckdb.connect(str(tmp_path / "warehouse.duckdb")) as con:
        results = ingest_all(con, project, [project.sources["transactions"], project.sources["fraud_labels"]])
        assert [(r.rows_in, r.rows_accepted) for r in results] == [(len(rows), len(rows))] * 2
        assert con.sql(staged).fetchone() == (0,)
