"""The lifecycle from the command line (issue 12), as a user with their own Parquet file runs it: `trellis init`, the
file's sources declared (upper-case column names read with `from:`, the fraud label on the transaction's row, known 7
days later), then validate -> ingest -> build -> train -> evaluate -> backtest -> score -> materialize -> `trellis
serve` answering one scored request, with the CLI alone. Then bad input on every new command: one line naming what
was wrong, a non-zero exit code, and nothing already stored changed."""

from __future__ import annotations

import hashlib
import socket
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import duckdb
import httpx
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_external_sources import cli as external_cli
from test_external_sources import errors, simulated_rows

from trellis.paths import clean_env

BIN = Path(sys.executable).parent
SOURCES = """\
- kind: source
  name: transactions
  path: data/transactions.parquet
  event_time: tx_datetime
  primary_key: transaction_id
  not_before: "2000-01-01"
  columns:
    transaction_id: {type: int64, from: TRANSACTION_ID}
    tx_datetime: {type: timestamp, from: TX_DATETIME}
    customer_id: {type: int64, from: CUSTOMER_ID}
    terminal_id: {type: int64, from: TERMINAL_ID}
    amount: {type: float64, from: TX_AMOUNT, scale: 2, checks: {ge: 0}}
- kind: source
  name: fraud_labels
  derived_from: transactions
  event_time: tx_datetime
  available_at: tx_datetime + 7d
  primary_key: transaction_id
  columns:
    transaction_id: {type: int64, from: TRANSACTION_ID}
    tx_datetime: {type: timestamp, from: TX_DATETIME}
    terminal_id: {type: int64, from: TERMINAL_ID}
    tx_fraud: {type: int32, from: TX_FRAUD, checks: {isin: [0, 1]}}
"""
ENTITIES = """\
- {kind: entity, name: customer, join_key: customer_id, key_type: int64}
- {kind: entity, name: terminal, join_key: terminal_id, key_type: int64}
"""
FEATURES = """\
- kind: feature_group
  name: customer_spending
  entity: customer
  source: transactions
  online: true
  features:
    - {name: tx_count, agg: count, windows: [1d, 7d, 30d]}
    - {name: avg_amount, agg: mean, column: amount, windows: [1d, 7d, 30d]}
    - {name: max_amount, agg: max, column: amount, windows: [1d, 7d]}
- kind: feature_group
  name: terminal_risk
  entity: terminal
  source: fraud_labels
  spine: transactions
  delay: 7d
  online: true
  features:
    - {name: tx_count, agg: count, windows: [7d, 30d]}
    - {name: fraud_risk, agg: mean, column: tx_fraud, windows: [7d, 30d]}
"""
MODELS = """\
- kind: model
  name: fraud
  spine: transactions
  label: {source: fraud_labels, column: tx_fraud, join_key: transaction_id}
  features: [customer_spending, terminal_risk]
  catboost: {iterations: 60, depth: 4, learning_rate: 0.2, thread_count: 2}
  seed: 7
  card_key: customer_id
  backtest: {folds: 2, train_days: 14, gap_days: 7, test_days: 7}
"""
# The user's own environment file: the MLflow run must log this one, never Trellis' pyproject.toml or uv.lock.
USER_PYPROJECT = '[project]\nname = "my-fraud-project"\nversion = "0.0.1"\n'


def cli(*args: str | Path) -> tuple[int, str]:
    """A `trellis` command as a user runs it (test_external_sources.cli), without MLflow's own logging level."""
    return external_cli(*args, env={"MLFLOW_LOGGING_LEVEL": None})


def new_project(root: Path, rows: pd.DataFrame) -> Path:
    """`trellis init`, the user's file, and the definitions that read it (as the README's "Your own data")."""
    code, out = cli("init", root)
    assert code == 0, out
    (root / "data").mkdir()
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), root / "data" / "transactions.parquet")
    for rel, text in (
        ("sources/sources.yaml", SOURCES),
        ("entities/entities.yaml", ENTITIES),
        ("features/features.yaml", FEATURES),
        ("models/models.yaml", MODELS),
    ):
        (root / "definitions" / rel).write_text(text)
    (root / "pyproject.toml").write_text(USER_PYPROJECT)
    return root


def stored(root: Path) -> dict[str, str]:
    """Every file under the project's data/ and feature_repo/ with a digest of its bytes: what a refused command
    must leave as it was."""
    files = [p for part in ("data", "feature_repo") for p in sorted((root / part).rglob("*")) if p.is_file()]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A project taken through the whole lifecycle with the CLI; the outputs of each command."""
    rows = simulated_rows(days=100)
    root = new_project(tmp_path_factory.mktemp("lifecycle") / "mine", rows)
    last = rows["TX_DATETIME"].max().date()
    outputs: dict[str, str] = {}
    steps = {
        "validate": ["validate"],
        "ingest": ["ingest"],
        "build": ["build"],
        "train": ["train", "fraud"],
        "evaluate": ["evaluate", "fraud"],
        "backtest": ["backtest", "fraud"],
        "score": [
            "score",
            "fraud",
            "--from",
            last - timedelta(days=6),
            "--to",
            last,
            "--out",
            root / "out/s.parquet",
        ],
        "materialize": ["materialize"],
    }
    for step, args in steps.items():
        started = time.perf_counter()
        code, out = cli(*args, "--project", root)
        assert code == 0, f"trellis {step}: {out}"
        outputs[step] = out
        print(f"trellis {step}: {time.perf_counter() - started:.1f}s")
    return {"root": root, "rows": rows, "out": outputs, "last": last}


@pytest.mark.slow
def test_from_init_and_a_parquet_file_to_a_scored_request_with_the_cli_alone(lifecycle: dict) -> None:
    root, rows, out, last = lifecycle["root"], lifecycle["rows"], lifecycle["out"], lifecycle["last"]
    n = len(rows)
    assert f"transactions: {n:,} in = {n:,} accepted" in out["ingest"]

    # build: the feature tables, one row per transaction, and their Parquet copies for Feast
    assert "compiled dbt_project/models/features/feat_customer_spending.sql" in out["build"]
    assert f"features.feat_customer_spending: {n:,} rows" in out["build"]
    assert f"features.feat_terminal_risk: {n:,} rows" in out["build"]
    assert {p.name for p in (root / "feature_repo/data").glob("*.parquet")} >= {
        "feat_customer_spending.parquet",
        "feat_terminal_risk.parquet",
    }

    # train: registered in the project's own registry, the run naming the project and logging its files
    assert "registered fraud v1 (challenger)" in out["train"]
    check_mlflow_run(root)

    # evaluate and backtest: the held-out period and the folds, reports on disk
    assert "fraud v1 on its test period" in out["evaluate"] and "average_precision" in out["evaluate"]
    assert (root / "data/reports/fraud/v1/metrics.json").is_file()
    assert "fraud: 2 folds over the training set" in out["backtest"]
    assert list((root / "data/reports/fraud/backtest").glob("*/backtest.json"))

    # score: every transaction of the week, each with its ids as the user's file has them
    scores = pd.read_parquet(root / "out/s.parquet")
    assert list(scores.columns[:6]) == [
        "transaction_id",
        "customer_id",
        "terminal_id",
        "tx_datetime",
        "score",
        "model_version",
    ]
    start = pd.Timestamp(last - timedelta(days=6))
    week = rows[
        (rows["TX_DATETIME"] >= start) & (rows["TX_DATETIME"] < pd.Timestamp(last + timedelta(days=1)))
    ]
    assert len(scores) == len(week) > 100 and f"scored {len(week):,} events" in out["score"]
    file = week.set_index("TRANSACTION_ID").loc[scores["transaction_id"]]
    assert (scores["customer_id"].to_numpy() == file["CUSTOMER_ID"].to_numpy()).all()
    assert (scores["terminal_id"].to_numpy() == file["TERMINAL_ID"].to_numpy()).all()
    assert (scores["tx_datetime"].to_numpy() == file["TX_DATETIME"].to_numpy()).all()
    assert scores["score"].between(0, 1).all() and scores["score"].nunique() > 10
    assert (scores["model_version"] == "1").all()

    # materialize, then `trellis serve` answers a scored request: a transaction of the last day, scored at its own
    # time, gets the score the batch gave it (same features online and offline)
    assert "customer_spending: " in out["materialize"] and "materialized " in out["materialize"]
    tx = scores[scores["tx_datetime"].dt.date == last].iloc[0]
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "trellis"), "serve", "--project", str(root), "--port", str(port)],
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, f"trellis serve exited: {server.stdout.read()}"
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "trellis serve was not ready within 90 s"
            time.sleep(0.5)
        request = {
            "transaction_id": int(tx["transaction_id"]),
            "customer_id": int(tx["customer_id"]),
            "terminal_id": int(tx["terminal_id"]),
            "tx_datetime": tx["tx_datetime"].isoformat(),
        }
        response = httpx.post(f"{url}/v1/score", json=request, timeout=10)
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["transaction_id"] == request["transaction_id"]
        assert body["model"] == {"name": "fraud", "version": "1", "alias": "champion"}
        assert body["score"] == pytest.approx(float(tx["score"]), rel=1e-9)
    finally:
        server.terminate()
        server.wait(timeout=30)


def check_mlflow_run(root: Path) -> None:
    """The run of fraud v1 records the user's project: its name reads, its source is the project, the project's
    definitions and pyproject.toml are logged, and nothing of Trellis' checkout (its git commit, uv.lock)."""
    from mlflow import MlflowClient

    from trellis.modeling import _mlflow
    from trellis.spec import load_project

    uri = f"sqlite:///{root / 'data/mlflow.db'}"
    with _mlflow(uri):
        client = MlflowClient(uri, uri)
        version = client.get_model_version("fraud", "1")
        run = client.get_run(version.run_id)
        tags = run.data.tags
        assert run.info.run_name.startswith("fraud as of ")
        assert tags["mlflow.source.name"] == str(root.resolve())
        # Nothing names Trellis' checkout (the program running Trellis, its git commit): the project is no repository
        trellis_checkout = str(Path(__file__).resolve().parent.parent)
        assert not {
            k: v for k, v in tags.items() if trellis_checkout in v or k.startswith("mlflow.source.git")
        }
        assert tags["trellis.definitions_hash"] == load_project(root).fingerprint()
        assert version.tags["trellis.project"] == str(root.resolve())

        def files(path: str | None = None) -> list[str]:
            found = []
            for item in client.list_artifacts(run.info.run_id, path):
                found.extend(files(item.path) if item.is_dir else [item.path])
            return found

        logged = files()
        assert "project/pyproject.toml" in logged and "project/definitions/models/models.yaml" in logged
        assert not [f for f in logged if f.endswith(("uv.lock", ".python-version"))], logged
        local = client.download_artifacts(run.info.run_id, "project/pyproject.toml")
        assert Path(local).read_text() == USER_PYPROJECT


# --- Bad input: one line naming what was wrong, a non-zero exit, nothing stored changed -----------------------

BAD_INPUT = [
    # (command, exit code, what the one error line says)
    (["train", "frod"], 1, "unknown model 'frod' (did you mean 'fraud'?)"),
    (["train", "fraud", "--as-of", "yesterday"], 2, "--as-of 'yesterday' is not a date or time"),
    (["train", "fraud", "--as-of", "2001-01-01"], 1, "--as-of 2001-01-01 is not after the first event"),
    (
        ["backtest", "fraud", "--as-of", "2018-04-01T02:00+02:00"],
        1,
        "--as-of 2018-04-01T02:00+02:00 is not after the first event",
    ),  # 00:00 UTC, before the first transaction
    (
        ["evaluate", "fraud", "--amount-column", "TX_AMOUNT"],
        1,
        "--amount-column 'TX_AMOUNT' is not a column of 'transactions'",
    ),
    (["evaluate", "fraud", "--version", "9"], 1, "fraud has no version '9'"),
    (
        ["backtest", "fraud", "--amount-column", "nope"],
        1,
        "--amount-column 'nope' is not a column of 'transactions'",
    ),
    (
        ["score", "fraud", "--from", "2018-07-09", "--to", "2018-07-01"],
        2,
        "--from 2018-07-09 is after --to 2018-07-01",
    ),
    (
        ["score", "fraud", "--from", "2018-13-01", "--to", "2018-07-01"],
        2,
        "--from '2018-13-01' is not a date",
    ),
    (
        ["score", "fraud", "--from", "2030-01-01", "--to", "2030-01-07"],
        1,
        "no transactions from 2030-01-01 to 2030-01-07: the data covers 2018-04-01 to ",
    ),
    (
        ["score", "fraud", "--from", "2018-07-01", "--to", "2018-07-02", "--out", "{root}/scores.txt"],
        2,
        "/scores.txt: the file name must end in .parquet or .csv",
    ),
    (
        ["score", "fraud", "--from", "2018-07-01", "--to", "2018-07-02", "--version", "7"],
        1,
        "fraud has no version '7'",
    ),
    (["score", "fruad", "--from", "2018-07-01", "--to", "2018-07-02"], 1, "unknown model 'fruad'"),
    (["serve", "--model", "nope"], 1, "unknown model 'nope'"),
    (["serve", "--alias", "gold"], 1, "no 'gold' version of registered model 'fraud'"),
]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "code", "message"), BAD_INPUT, ids=[" ".join(a[:3]) for a, _, _ in BAD_INPUT]
)
def test_bad_input_is_one_line_and_changes_nothing(
    lifecycle: dict, args: list[str], code: int, message: str
) -> None:
    root = lifecycle["root"]
    before = stored(root)
    got, out = cli(*(a.replace("{root}", str(root)) for a in args), "--project", root)
    assert got == code, out
    assert len(errors(out)) == 1 and message in errors(out)[0], out
    assert "Traceback" not in out
    assert stored(root) == before
    assert not (root / "scores.txt").exists()


@pytest.mark.slow
def test_a_missing_training_set_file_is_named_and_nothing_changes(lifecycle: dict) -> None:
    root = lifecycle["root"]
    [path] = (root / "data/training/fraud").glob("*/*.parquet")  # train and backtest built the same one
    aside = path.with_suffix(".aside")
    path.rename(aside)
    try:
        before = stored(root)
        code, out = cli("evaluate", "fraud", "--project", root)
        assert code == 1 and errors(out) == [
            f"error: the training set of fraud v1 ({path}) does not exist"
        ], out
        assert stored(root) == before
    finally:
        aside.rename(path)


def test_every_new_command_names_a_folder_that_is_no_project(tmp_path: Path) -> None:
    for args in (
        ["build"],
        ["train", "m"],
        ["evaluate", "m"],
        ["backtest", "m"],
        ["score", "m", "--from", "2018-01-01", "--to", "2018-01-02"],
        ["materialize"],
        ["serve"],
    ):
        code, out = cli(*args, "--project", tmp_path / "nowhere")
        assert code == 1 and errors(out) == [
            f"error: no Trellis project at {tmp_path / 'nowhere'} (no definitions/ folder); `trellis init "
            f"{tmp_path / 'nowhere'}` makes one, or pass --project DIR"
        ], (args, out)
    assert not (tmp_path / "nowhere").exists()


def test_each_step_before_its_inputs_says_which_command_to_run_first(tmp_path: Path) -> None:
    """Out of order, each step names the missing tables and the command that makes them, and writes nothing: no
    warehouse appears before `trellis ingest`, the warehouse is unchanged before `trellis build`."""
    rows = simulated_rows(days=20)
    root = new_project(tmp_path / "mine", rows)
    code, out = cli("build", "--project", root)
    assert code == 1 and errors(out) == [
        f"error: validated.transactions, validated.fraud_labels: there is no warehouse yet; run `trellis ingest "
        f"--project {root}` first"
    ], out
    assert not (root / "data/warehouse.duckdb").exists()
    assert not list((root / "dbt_project").glob("models/features/*.sql"))  # not even compiled

    assert cli("ingest", "--project", root)[0] == 0
    before = stored(root)
    for args in (
        ["train", "fraud"],
        ["backtest", "fraud"],
        ["score", "fraud", "--from", "2018-04-02", "--to", "2018-04-03"],
    ):
        code, out = cli(*args, "--project", root)
        assert code == 1 and errors(out) == [
            f"error: features.feat_customer_spending, features.feat_terminal_risk: not in "
            f"{root.resolve() / 'data/warehouse.duckdb'}; run `trellis build --project {root.resolve()}` first"
        ], out
    code, out = cli("materialize", "--project", root)
    assert code == 1 and "run `trellis build --project" in errors(out)[0]
    code, out = cli("evaluate", "fraud", "--project", root)
    assert code == 1 and errors(out) == [
        f"error: no model registry yet at {root.resolve() / 'data/mlflow.db'}; run `trellis train fraud --project "
        f"{root.resolve()}` first"
    ], out
    code, out = cli("serve", "--project", root)
    assert code == 1 and errors(out) == [
        f"error: no online store at {root.resolve() / 'feature_repo/data/online_store.db'}; run `trellis "
        f"materialize --project {root}` first"
    ], out
    assert stored(root) == before
    with duckdb.connect(str(root / "data/warehouse.duckdb"), read_only=True) as con:
        assert con.sql(
            "select count(*) from information_schema.tables where table_schema = 'features'"
        ).fetchone() == (0,)


def test_score_dates_are_checked_before_anything_is_read(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    assert cli("init", root)[0] == 0
    code, out = cli("score", "m", "--from", str(date(2018, 5, 2)), "--to", "2018-05-01", "--project", root)
    assert code == 2 and errors(out) == ["error: --from 2018-05-02 is after --to 2018-05-01"], out


@pytest.mark.slow
def test_a_failing_dbt_build_is_one_line_naming_the_model(tmp_path: Path) -> None:
    """A warehouse table that lost a column the definitions read: dbt fails on the staging model, and `trellis build`
    says so in one line (the model and dbt's first error line) with exit code 1."""
    root = new_project(tmp_path / "mine", simulated_rows(days=20))
    assert cli("ingest", "--project", root)[0] == 0
    with duckdb.connect(str(root / "data/warehouse.duckdb")) as con:
        con.execute("alter table validated.transactions drop column amount")
    code, out = cli("build", "--project", root)
    assert code == 1, out
    [line] = errors(out)
    assert line.startswith("error: dbt build failed: stg_transactions: ") and "amount" in line, out
    assert line.endswith(f"dbt's log: {root.resolve() / 'dbt_project/logs/dbt.log'}"), line
