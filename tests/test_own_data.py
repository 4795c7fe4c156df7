"""A project on the user's own data: Trellis never writes a table it does not own.

The simulator is one declared kind of source (``simulated:`` in a source's YAML) and writes only the tables of the
sources that declare it; a source without it is the user's table, which a full materialization of the Dagster
definitions (every asset and check, as ``assets/run.py`` runs them for ``make demo``) reads and leaves byte for
byte as it was. A batch summary is declared too (``batch_scoring.summaries``): a project without one, and without
the reference data's customers table, materializes with no failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date, datetime
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pandas as pd
import pytest
import yaml
from conftest import copy_project

from trellis.errors import DefinitionError
from trellis.paths import clean_env
from trellis.simulate import TABLE_SCHEMAS, SimulationConfig, declared_simulation, simulate, write_duckdb
from trellis.spec import SIMULATOR_TABLES, load_project

REPO = Path(__file__).resolve().parent.parent
SCALE, DAYS = 0.03, 100  # the session pipeline's size (tests/conftest.py)
OWN_TABLES = ("raw.transactions", "raw.fraud_labels")

# materialize_all in a fresh process pointed at the project (the code location caches its project per process).
_MATERIALIZE = """
import json, sys
from assets.run import materialize_all
run = materialize_all(scale=%(scale)r, n_days=%(days)r, quiet=True)
def failures(result):
    return [] if result is None else [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
from assets.definitions import defs
print(json.dumps({
    "assets": sorted(k.to_user_string() for a in defs().assets for k in a.keys),
    "success": run.result.success,
    "materialized": sorted({e.asset_key.to_user_string() for e in run.result.get_asset_materialization_events()}),
    "failed_steps": failures(run.result),
    "score_day": run.score_day,
    "scores_success": run.scores is not None and run.scores.success,
    "scored": sorted({e.asset_key.to_user_string() for e in run.scores.get_asset_materialization_events()})
              if run.scores is not None else [],
    "scores_failed_steps": failures(run.scores),
}))
"""


def fingerprint(warehouse: Path, table: str) -> tuple:
    """(schema, row count, hash of every row): an md5 of each row's text, the sorted list hashed again."""
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        schema = con.sql(f"describe {table}").fetchall()
        rows, digest = con.sql(f"select count(*), md5(string_agg(h, ',' order by h)) from "
                               f"(select md5(cast(t as varchar)) as h from {table} t)").fetchone()
    finally:
        con.close()
    return schema, rows, digest


def own_data_project(root: Path) -> Path:
    """The reference project as a user with their own data has it: its two sources are the user's tables (no
    ``simulated:``), the model declares no batch summary and no fairness segment by institution, and the warehouse holds the user's raw.transactions
    and raw.fraud_labels (another world than the simulator's: seed 11) and no customers table."""
    copy_project(root)
    for name in ("transactions", "fraud_labels"):
        path = root / "definitions" / "sources" / f"{name}.yaml"
        definition = yaml.safe_load(path.read_text())
        definition.pop("simulated", None)
        path.write_text(yaml.safe_dump(definition, sort_keys=False))
    path = root / "definitions" / "models" / "card_fraud.yaml"
    definition = yaml.safe_load(path.read_text())
    definition["batch_scoring"].pop("summaries", None)
    definition["fairness"]["segments"].pop("institution")  # read from the customers table, which is not here
    path.write_text(yaml.safe_dump(definition, sort_keys=False))
    tables = simulate(SimulationConfig(seed=11, n_days=DAYS).scaled(SCALE))
    (root / "data").mkdir()
    write_duckdb({"transactions": tables["transactions"], "fraud_labels": tables["fraud_labels"]},
                 root / "data" / "warehouse.duckdb", schema="raw")
    return root


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = own_data_project(tmp_path_factory.mktemp("own_data") / "project")
    warehouse = root / "data" / "warehouse.duckdb"
    before = {table: fingerprint(warehouse, table) for table in OWN_TABLES}
    env = {**clean_env(REPO), "TRELLIS_PROJECT": str(root), "TRELLIS_MLFLOW_URI": f"sqlite:///{root / 'data/mlflow.db'}",
           "DAGSTER_HOME": str(root / ".dagster_home")}
    (root / ".dagster_home").mkdir()
    done = subprocess.run([sys.executable, "-c", _MATERIALIZE % {"scale": SCALE, "days": DAYS}], cwd=root, env=env,
                          capture_output=True, text=True, timeout=1800, check=False)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    after = {table: fingerprint(warehouse, table) for table in OWN_TABLES}
    return SimpleNamespace(root=root, warehouse=warehouse, before=before, after=after, report=report)


@pytest.mark.slow
def test_own_tables_survive_a_full_materialization_byte_for_byte(materialized):
    report = materialized.report
    assert report["success"], report["failed_steps"]
    # The graph did read them: validated, featured, trained on.
    assert {"raw/transactions", "raw/fraud_labels", "models/card_fraud"} <= set(report["materialized"])
    for table in OWN_TABLES:
        schema, rows, digest = materialized.after[table]
        assert rows > 10_000
        assert materialized.after[table] == materialized.before[table], f"{table} was rewritten"
    assert "landing/reference_data" not in report["assets"]  # nothing is simulated: there is no simulation


@pytest.mark.slow
def test_a_project_without_customers_or_summaries_materializes_with_no_failure(materialized):
    report = materialized.report
    assert report["success"] and report["failed_steps"] == []
    assert report["scores_success"], report["scores_failed_steps"]
    assert sorted(report["scored"]) == ["monitoring/card_fraud_drift", "monitoring/card_fraud_quality",
                                        "scores/card_fraud"]  # no summary declared: none built
    assert not [key for key in report["assets"] if key.endswith("_institutions")]
    con = duckdb.connect(str(materialized.warehouse), read_only=True)
    try:
        raw = {t for t, in con.sql("select table_name from information_schema.tables where table_schema = 'raw'")
               .fetchall()}
        scored = con.sql("select count(*) from scores.card_fraud where cast(event_time as date) = ?",
                         params=[report["score_day"]]).fetchone()[0]
    finally:
        con.close()
    assert raw == {"transactions", "fraud_labels"}  # no customers table, and nothing added to the user's schema
    assert scored > 0


# --- The declaration, validated -------------------------------------------------------------------------------


def _problems(root: Path) -> list[str]:
    with pytest.raises(DefinitionError) as caught:
        load_project(root)
    return [str(p) for p in caught.value.problems]


def _edit(root: Path, rel: str, old: str, new: str) -> None:
    path = root / rel
    text = path.read_text()
    assert old in text, (rel, old)
    path.write_text(text.replace(old, new))


TX, LABELS, MODEL = ("definitions/sources/transactions.yaml", "definitions/sources/fraud_labels.yaml",
                     "definitions/models/card_fraud.yaml")


def test_the_reference_project_declares_one_simulation_of_its_two_sources():
    declared = declared_simulation(load_project(REPO))
    assert declared is not None
    assert declared.sources == ("fraud_labels", "transactions")
    assert declared.targets == {"raw.fraud_labels": "fraud_labels", "raw.transactions": "transactions",
                                "raw.customers": "customers", "raw.terminals": "terminals",
                                "raw.institutions": "institutions"}
    # The same world `make demo` always simulated: the simulator's defaults.
    assert declared.config == SimulationConfig()
    assert set(SIMULATOR_TABLES) == set(TABLE_SCHEMAS)


def test_simulated_sources_must_agree_on_one_world(project_copy: Path):
    _edit(project_copy, LABELS, "days: 183", "days: 90")
    (problem,) = _problems(project_copy)
    # Reported at the source that differs from the first one (fraud_labels, by file name), naming both values.
    assert problem.startswith(f"{TX}:") and " simulated: " in problem
    assert "one simulation" in problem and "differs from source 'fraud_labels': days 183 vs 90" in problem


def test_a_simulated_column_must_be_the_simulators(project_copy: Path):
    _edit(project_copy, TX, "  device_id: {type: int64", "  device: {type: int64")
    _edit(project_copy, TX, "terminal_id: {type: int64", "terminal_id: {type: string")
    problems = _problems(project_copy)
    assert any("columns.device: column 'device' is not in the simulator's transactions table (did you mean "
               "'device_id'?)" in p for p in problems), problems
    assert any("columns.terminal_id.type: the simulator's transactions.terminal_id is int64, not string" in p
               for p in problems), problems


def test_the_simulator_table_is_named_with_a_did_you_mean(project_copy: Path):
    _edit(project_copy, TX, "simulated: {", "simulated: {table: transaction, ")
    (problem,) = _problems(project_copy)
    assert "simulated.table: unknown value for 'table' 'transaction' (did you mean 'transactions'?)" in problem


def test_the_simulation_never_writes_a_table_of_a_source_that_is_not_simulated(project_copy: Path):
    # The user's labels in raw.customers, which the simulation of transactions would replace.
    definition = yaml.safe_load((project_copy / LABELS).read_text())
    definition.pop("simulated")
    definition["table"] = "raw.customers"
    (project_copy / LABELS).write_text(yaml.safe_dump(definition, sort_keys=False))
    (problem,) = _problems(project_copy)
    assert problem.startswith(f"{TX}:") and "simulated.also_write.0:" in problem
    assert "would write raw.customers, the table of source 'fraud_labels', which is not simulated" in problem


def test_a_source_table_in_a_schema_trellis_writes_is_refused(project_copy: Path):
    definition = yaml.safe_load((project_copy / TX).read_text())
    definition.pop("simulated")
    definition["table"] = "validated.transactions"  # ingestion would replace it with its own output
    (project_copy / TX).write_text(yaml.safe_dump(definition, sort_keys=False))
    (problem,) = _problems(project_copy)
    assert "table: table 'validated.transactions' is in schema 'validated', which Trellis writes" in problem


def test_a_summary_needs_a_column_it_can_find(project_copy: Path):
    _edit(project_copy, MODEL, "by: institution_id", "by: institution")
    _edit(project_copy, MODEL, "lookup: {table: raw.customers, key: customer_id}",
          "lookup: {table: raw.customers, key: customer}")
    problems = _problems(project_copy)
    assert any("batch_scoring.summaries.0.lookup.key: spine 'transactions' has no column 'customer' (did you "
               "mean 'customer_id'?)" in p for p in problems), problems
    assert any("batch_scoring.summaries.0.by: raw.customers (the simulator's customers table) has no column "
               "'institution' (did you mean 'institution_id'?)" in p for p in problems), problems


def test_a_summary_by_a_spine_column_reads_no_other_table(tmp_path: Path):
    """A summary of the spine's own column, on a warehouse with no customers table: per terminal, adding up."""
    from trellis.scoring import ScoringError, daily_summary

    root = copy_project(tmp_path / "project")
    _edit(root, MODEL, "- name: institutions", "- name: terminals")
    _edit(root, MODEL, "by: institution_id     # the card holder's bank, from the customers table\n"
                       "      lookup: {table: raw.customers, key: customer_id}", "by: terminal_id")
    project = load_project(root)
    day = date(2018, 4, 20)
    tables = simulate(SimulationConfig(n_days=25, n_customers=300, n_terminals=600))
    con = duckdb.connect()
    try:
        con.execute("create schema validated")
        for name in ("transactions", "fraud_labels"):
            con.register("t", tables[name])
            con.execute(f"create table validated.{name} as select * from t")
            con.unregister("t")
        scores = con.sql("select transaction_id, (transaction_id % 10) / 10 as score from validated.transactions "
                         "where cast(tx_datetime as date) = ?", params=[day]).df()
        as_of = datetime(2018, 4, 27, 12)  # labels arrive 7 days late: those of the morning are known
        summary = daily_summary(con, project, "card_fraud", "terminals", scores, day, as_of=as_of)
        direct = con.sql(
            "select t.terminal_id, count(*) n, count(l.transaction_id) labelled, "
            "coalesce(sum(l.tx_fraud), 0) frauds from validated.transactions t left join "
            "(select * from validated.fraud_labels where available_at < ?) l using (transaction_id) "
            "where cast(t.tx_datetime as date) = ? group by 1 order by 1", params=[as_of, day]).df()
        with pytest.raises(ScoringError, match="reads raw.customers .* which is not in the warehouse"):
            reference = load_project(REPO)
            daily_summary(con, reference, "card_fraud", "institutions", scores, day, as_of=as_of)
    finally:
        con.close()
    assert list(summary.columns) == ["day", "terminal_id", "transactions", "mean_score", "alert_share", "labelled",
                                     "confirmed_frauds", "as_of"]
    assert summary["terminal_id"].tolist() == direct["terminal_id"].tolist()
    assert summary["transactions"].tolist() == direct["n"].tolist() and summary["transactions"].sum() == len(scores)
    assert summary["labelled"].tolist() == direct["labelled"].tolist()
    assert summary["confirmed_frauds"].tolist() == direct["frauds"].astype("int64").tolist()
    assert 0 < summary["labelled"].sum() < len(scores)  # labels of the day mature a week later: some by as_of
    weighted = (summary["mean_score"] * summary["transactions"]).sum() / summary["transactions"].sum()
    assert weighted == pytest.approx(scores["score"].mean(), rel=1e-12)
    assert (summary["day"] == pd.Timestamp(day)).all() and (summary["as_of"] == pd.Timestamp(as_of)).all()
