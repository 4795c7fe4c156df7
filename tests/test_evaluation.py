"""Evaluation: held-out metrics of a registered model and its baseline, the prequential backtest, plots, and the
promotion gate's contract part; on real CatBoost, DuckDB, MLflow and Dagster."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import shutil
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import (
    average_precision_score,
    confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)
from test_modeling import PLAN, small_world

from trellis import evaluation, registry
from trellis.evaluation import BASELINE, METRICS, MODEL, EvaluationError
from trellis.modeling import (
    TrainedModel,
    card_precision_at_k,
    known_compromised,
    register,
    time_split,
    train_catboost,
)
from trellis.spec import BacktestPlan, load_project
from trellis.training import LABEL_AVAILABLE_AT, PARQUET_OPTIONS, attach_label_times, read_training_set

pytestmark = pytest.mark.slow  # trains, evaluates and backtests CatBoost models

NAME = "card_fraud"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    world = small_world(tmp_path_factory.mktemp("evaluation"), iterations=120, name=NAME)
    project, root, con, training_set, model = world.project, world.root, world.con, world.training_set, world.model
    frame = evaluation.attach_spine_columns(con, project, model, read_training_set(training_set.path), ["tx_amount"])
    frame = attach_label_times(con, project, model, frame, training_set.as_of)  # each part's label cutoff
    amounts = con.sql("select transaction_id, tx_amount from validated.transactions").df()
    trained = train_catboost(frame, model, training_set.feature_columns)
    report = evaluation.held_out(frame, model, trained.model, end=trained.split_end, amount_column="tx_amount")
    backtest = evaluation.backtest(frame, model, training_set.feature_columns, amount_column="tx_amount")
    con.close()
    return SimpleNamespace(project=project, root=root, training_set=training_set, model=model, frame=frame,
                           amounts=amounts, trained=trained, report=report, backtest=backtest)


def _reports(world) -> list[evaluation.Report]:
    return [world.report, *world.backtest.folds]


# ---------------------------------------------------------------------------------------------------
# Metrics


def test_metrics_agree_with_sklearn(world):
    checked_alerts = 0
    for report in _reports(world):
        scores = report.scores
        y, amounts = scores["label"].to_numpy(), scores["amount"].to_numpy()
        assert 0 < y.sum() < len(y)
        for who in (MODEL, BASELINE):
            s, metrics = scores[who].to_numpy(), getattr(report, who)
            assert metrics["roc_auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
            assert metrics["average_precision"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
            # The alert set: the top 1% of scores. Checked with sklearn where no tie straddles the cut.
            k = math.ceil(0.01 * len(y))
            cut = np.sort(s)[::-1][k - 1]
            if (s == cut).sum() != 1 or (s > cut).sum() != k - 1:
                continue
            flagged = (s >= cut).astype(int)
            tn, fp, _, _ = confusion_matrix(y, flagged).ravel()
            assert metrics["fraud_caught_at_1pct"] == pytest.approx(recall_score(y, flagged))
            assert metrics["precision_at_1pct"] == pytest.approx(precision_score(y, flagged))
            assert metrics["false_positive_rate_at_1pct"] == pytest.approx(fp / (fp + tn))
            # The share of fraud amount caught is the amount-weighted recall.
            assert metrics["fraud_amount_caught_at_1pct"] == pytest.approx(
                recall_score(y, flagged, sample_weight=amounts))
            checked_alerts += 1
    assert checked_alerts >= 5  # most reports have a tie-free cut


def test_held_out_scores_the_split_test_part_with_the_same_baseline(world):
    report, trained, frame = world.report, world.trained, world.frame
    _, _, test = time_split(frame, world.model.split, "event_time", end=trained.split_end)
    assert report.rows == len(test) and report.train_rows == trained.split_rows["train"]
    np.testing.assert_array_equal(report.scores["event_time"], test["event_time"].to_numpy())
    np.testing.assert_array_equal(report.scores[MODEL], trained.predict(test))
    # The baseline refitted for evaluation is the one training fitted on the same train part.
    np.testing.assert_allclose(report.scores[BASELINE], trained.baseline.predict_proba(trained.features(test))[:, 1],
                               rtol=0, atol=1e-12)
    window = report.window  # whole days: the test part ends at the midnight that ends the latest event's day
    assert window.test_end == frame["event_time"].max().normalize() + timedelta(days=1) and not window.closed_end
    assert window.test_start == window.test_end - timedelta(days=PLAN.test_days)
    assert window.gap == timedelta(days=PLAN.gap_days + PLAN.validation_days)
    # The amounts are the warehouse's, row for row; card precision uses the card key and the event day.
    expected = test[["transaction_id"]].merge(world.amounts, on="transaction_id", how="left")["tx_amount"]
    np.testing.assert_array_equal(report.scores["amount"], expected.to_numpy())
    assert report.model["card_precision_at_100_excl_detected"] == card_precision_at_k(
        test["customer_id"], test["event_time"], test["label"], trained.predict(test))
    # The literature's variant also drops the cards with a fraud label known before the day (whole set).
    known = known_compromised(frame["customer_id"], frame["label"], frame[LABEL_AVAILABLE_AT])
    assert report.model["card_precision_at_100_excl_known"] == card_precision_at_k(
        test["customer_id"], test["event_time"], test["label"], trained.predict(test), known=known)
    assert report.model["card_precision_at_100_excl_known"] != report.model["card_precision_at_100_excl_detected"]
    for name in METRICS:  # the baseline is in the report, every metric, and the lift is their difference
        assert name in report.model and name in report.baseline
        assert report.lift[name] == pytest.approx(report.model[name] - report.baseline[name])


def test_attach_spine_columns_names_bad_input(world):
    import duckdb

    con = duckdb.connect(str(world.root / "w.duckdb"), read_only=True)
    try:
        with pytest.raises(EvaluationError, match="spine source 'transactions' has no column.*'amount'"):
            evaluation.attach_spine_columns(con, world.project, world.model, world.frame.head(), ["amount"])
        ghost = world.frame.head(3).assign(transaction_id=[-1, -2, world.frame["transaction_id"].iloc[0]])
        ghost = ghost.drop(columns=["tx_amount"])
        with pytest.raises(EvaluationError, match="2 rows have no validated.transactions row"):
            evaluation.attach_spine_columns(con, world.project, world.model, ghost, ["tx_amount"])
    finally:
        con.close()
    with pytest.raises(EvaluationError, match="no column.*tx_amount_x"):
        evaluation.held_out(world.frame, world.model, world.trained.model, amount_column="tx_amount_x")


# ---------------------------------------------------------------------------------------------------
# Backtest


def test_backtest_folds_roll_forward_with_the_declared_gap_to_the_data_end(world):
    plan, folds, frame = world.model.backtest, world.backtest.folds, world.frame
    assert (plan.folds, plan.train_days, plan.gap_days, plan.test_days) == (4, 7, 7, 7)  # as declared
    assert len(folds) == plan.folds
    times = frame["event_time"]
    end = times.max()
    for i, fold in enumerate(folds):
        w = fold.window
        assert w.train_end - w.train_start == timedelta(days=plan.train_days)
        assert w.test_start - w.train_end == timedelta(days=plan.gap_days)
        assert w.test_end - w.test_start == timedelta(days=plan.test_days)
        # The rows each fold trained and tested on: inside its periods, nothing from the gap; a fold trains only
        # on labels known when its test period starts (labels here arrive 0 to 14 days late: some are not).
        in_period = (times >= w.train_start) & (times < w.train_end)
        assert fold.train_rows == (in_period & (frame[LABEL_AVAILABLE_AT] < w.test_start)).sum() > 500
        assert fold.train_rows < in_period.sum()
        tested = fold.scores["event_time"]
        assert tested.is_monotonic_increasing and tested.min() >= w.test_start
        assert (tested <= w.test_end).all() if w.closed_end else (tested < w.test_end).all()
        right = (times <= w.test_end) if w.closed_end else (times < w.test_end)
        assert fold.rows == ((times >= w.test_start) & right).sum()
        assert w.closed_end == (i == len(folds) - 1)
        if i:
            previous = folds[i - 1]
            assert w.test_start == previous.window.test_end  # consecutive, non-overlapping test periods
            assert tested.min() >= previous.scores["event_time"].max()
        for who in (MODEL, BASELINE):  # both, every metric, in every fold
            assert set(METRICS) <= set(getattr(fold, who))
    last = folds[-1]
    assert last.window.test_end == end and last.scores["event_time"].max() == end
    ids = [set(frame.loc[frame["event_time"].isin(f.scores["event_time"]), "transaction_id"]) for f in folds]
    assert sum(len(i) for i in ids) == len(set().union(*ids))  # no transaction is tested twice


def test_backtest_summary_is_mean_and_std_over_folds(world):
    summary = world.backtest.summary()
    for who in (MODEL, BASELINE, "lift"):
        for name in METRICS:
            values = [getattr(f, who)[name] if who != "lift" else f.lift[name] for f in world.backtest.folds]
            assert summary[who][name]["mean"] == pytest.approx(np.mean(values))
            assert summary[who][name]["std"] == pytest.approx(np.std(values, ddof=1))
            assert summary[who][name]["folds"] == len(values)
    table = evaluation.summary_markdown(world.report.as_dict(), summary)
    ap = summary[MODEL]["average_precision"]
    assert f"| average precision | {world.report.model['average_precision']:.4f} |" in table
    assert f"{ap['mean']:.4f} ± {ap['std']:.4f}" in table


def test_backtest_is_deterministic(world):
    again = evaluation.backtest(world.frame, world.model, world.training_set.feature_columns,
                                amount_column="tx_amount")
    assert json.dumps(again.as_dict(), sort_keys=True) == json.dumps(world.backtest.as_dict(), sort_keys=True)
    for first, second in zip(world.backtest.folds, again.folds, strict=True):
        pd.testing.assert_frame_equal(first.scores, second.scores, check_exact=True)


def test_backtest_rejects_a_plan_the_data_cannot_hold(world):
    too_long = BacktestPlan(folds=8, train_days=7, gap_days=7, test_days=7)
    with pytest.raises(EvaluationError, match=r"folds=8, .* need 70 days of data .* spans 50\.0 days"):
        evaluation.backtest(world.frame, world.model, world.training_set.feature_columns, plan=too_long)
    # A fold whose train period holds a single label class is named, with its period.
    first = evaluation.backtest_windows(world.model.backtest, world.frame["event_time"].min(),
                                        world.frame["event_time"].max())[0]
    no_fraud = world.frame.assign(label=np.where(world.frame["event_time"] < first.train_end, 0,
                                                 world.frame["label"]))
    with pytest.raises(EvaluationError, match=r"backtest fold 1 .* single label class .* backtest.train_days"):
        evaluation.backtest(no_fraud, world.model, world.training_set.feature_columns)


# ---------------------------------------------------------------------------------------------------
# Plots


def _assert_png(path: Path) -> None:
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 5_000
    pixels = imread(path)
    assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300
    assert pixels[..., :3].std() > 0.05  # a drawing, not a blank canvas


def test_plots_are_valid_deterministic_pngs(world, tmp_path):
    plots = evaluation.plot_report(world.report, tmp_path / "a", NAME)
    assert {k: p.name for k, p in plots.items()} == {"roc": "roc.png", "pr": "pr.png", "scores": "scores.png"}
    folds = evaluation.plot_backtest(world.backtest, tmp_path / "a", NAME)
    assert folds == {"folds": tmp_path / "a" / "folds.png"}
    again = {**evaluation.plot_report(world.report, tmp_path / "b", NAME),
             **evaluation.plot_backtest(world.backtest, tmp_path / "b", NAME)}
    for name, path in {**plots, **folds}.items():
        _assert_png(path)
        assert path.read_bytes() == again[name].read_bytes()  # same data, same bytes
        embedded = evaluation.markdown_image(path, name)
        assert embedded.startswith(f"![{name}](data:image/png;base64,")
        assert base64.b64decode(embedded.split(",", 1)[1].rstrip(")")) == path.read_bytes()
    assert plots["roc"].read_bytes() != plots["pr"].read_bytes()


# ---------------------------------------------------------------------------------------------------
# Promotion gate: the training-set contract


def _corrupt(training_set, folder: Path, column: str, value, arrow_type) -> object:
    """A copy of the training set's Parquet with one value of ``column`` replaced (stored as ``arrow_type``),
    under the fingerprinted name, as a TrainingSet pointing at it."""
    table = pq.read_table(training_set.path)
    values = table[column].to_pylist()
    values[len(values) // 2] = value
    if arrow_type == pa.string():
        values = [None if v is None else str(v) for v in values]
    table = table.set_column(table.schema.get_field_index(column), column, pa.array(values, type=arrow_type))
    folder.mkdir(parents=True)
    path = folder / training_set.path.name
    pq.write_table(table, path, **PARQUET_OPTIONS)
    return dataclasses.replace(training_set, path=path)


@pytest.fixture
def uri(tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_gate_fails_when_the_challengers_training_set_breaks_its_contract(world, uri, tmp_path):
    from mlflow import MlflowClient

    assert register(world.trained, world.model, world.training_set, uri)[1] == "1"
    clean = registry.gate(uri, world.model, project=world.project)
    assert clean.passed and clean.contract == "passed"

    # A count feature out of contract (counts are >= 0): the reason names the column, the check and the value.
    negative = _corrupt(world.training_set, tmp_path / "negative", "customer_spending__tx_count_7d", -5, pa.int64())
    assert register(world.trained, world.model, negative, uri)[1] == "2"
    result = registry.gate(uri, world.model, project=world.project)
    assert not result.passed and result.challenger_version == "2"
    assert "customer_spending__tx_count_7d" in result.reason and "greater_than_or_equal_to(0)" in result.reason
    assert re.search(r"\(1 rows, e\.g\. (np\.int64\()?-5\b", result.reason) and result.contract in result.reason
    assert result.champion_value is None  # the gate stops before comparing quality

    # A wrong type: text in a float feature.
    text = _corrupt(world.training_set, tmp_path / "text", "terminal_risk__fraud_risk_7d", "high", pa.string())
    assert register(world.trained, world.model, text, uri)[1] == "3"
    result = registry.gate(uri, world.model, project=world.project)
    assert not result.passed and "terminal_risk__fraud_risk_7d" in result.reason and "'high'" in result.reason

    # A file that is gone, or is not the fingerprinted one.
    shutil.rmtree(tmp_path / "text")
    result = registry.gate(uri, world.model, project=world.project)
    assert not result.passed and "does not exist" in result.reason
    moved = tmp_path / "moved" / "0123456789abcdef.parquet"
    moved.parent.mkdir()
    shutil.copy(world.training_set.path, moved)
    assert register(world.trained, world.model, dataclasses.replace(world.training_set, path=moved), uri)[1] == "4"
    result = registry.gate(uri, world.model, project=world.project)
    assert not result.passed and f"not the fingerprinted file {world.training_set.fingerprint}" in result.reason

    # The clean version as the challenger passes again (the gate reads the challenger's own set each time).
    MlflowClient(tracking_uri=uri, registry_uri=uri).set_registered_model_alias(NAME, "challenger", "1")
    assert registry.gate(uri, world.model, project=world.project).passed


# ---------------------------------------------------------------------------------------------------
# Dagster: the evaluation assets and the gate in the end-to-end pipeline


def _materialized(result) -> dict[str, dict]:
    return {e.event_specific_data.materialization.asset_key.to_user_string():
            {k: v.value for k, v in e.event_specific_data.materialization.metadata.items()}
            for e in result.get_asset_materialization_events()}


@pytest.mark.slow
def test_evaluation_asset_reports_the_registered_version_on_its_held_out_period(pipeline):
    import mlflow.catboost
    from mlflow import MlflowClient

    result, paths = pipeline
    meta = _materialized(result)
    evaluated, trained = meta[f"evaluation/{NAME}"], meta[f"models/{NAME}"]
    assert evaluated["version"] == trained["version"] == "1"
    assert "test_roc_auc" not in trained  # training registers; evaluation evaluates

    # Independently: load the registered version, take its training set's test part, score, ask sklearn.
    client = MlflowClient(tracking_uri=paths.mlflow_uri, registry_uri=paths.mlflow_uri)
    version = client.get_model_version(NAME, "1")
    loaded = mlflow.catboost.load_model(client.get_model_version_download_uri(NAME, "1"))
    frame = read_training_set(version.tags["trellis.training_set_path"])
    model = load_project(paths.root).models[NAME]
    _, _, test = time_split(frame, model.split, "event_time", end=pd.Timestamp(version.tags["trellis.split_end"]))
    scores = loaded.predict_proba(test[list(loaded.feature_names_)].astype(float))[:, 1]
    assert evaluated["dagster/row_count"] == len(test)
    assert evaluated["positives"] == test["label"].sum()
    assert evaluated["test_roc_auc"] == pytest.approx(roc_auc_score(test["label"], scores), abs=1e-12)
    assert evaluated["test_average_precision"] == pytest.approx(average_precision_score(test["label"], scores))

    summary = evaluated["metrics_json"]
    for name in METRICS:
        assert name in summary["model"] and name in summary["baseline"]
    assert summary["baseline"]["roc_auc"] == evaluated["baseline_test_roc_auc"]
    assert "| average precision |" in evaluated["metrics"] and "| lift |" in evaluated["metrics"]

    for name in ("roc", "pr", "scores"):
        path = Path(evaluated[f"plot_{name}_path"])
        assert path.parent == paths.data / "reports" / NAME / "v1"
        _assert_png(path)
        assert evaluated[f"plot_{name}"] == evaluation.markdown_image(path, name)

    # Logged to the version's MLflow run: metrics and the plots as artifacts.
    run = client.get_run(version.run_id)
    assert run.data.metrics["test_roc_auc"] == pytest.approx(evaluated["test_roc_auc"])
    assert run.data.metrics["baseline_test_average_precision"] == pytest.approx(
        summary["baseline"]["average_precision"])
    artifacts = {Path(a.path).name for a in client.list_artifacts(version.run_id, "evaluation")}
    assert {"roc.png", "pr.png", "scores.png", "metrics.json"} <= artifacts


@pytest.mark.slow
def test_backtest_asset_reports_every_fold_for_model_and_baseline(pipeline):
    result, paths = pipeline
    meta = _materialized(result)
    backtest, training = meta[f"evaluation/{NAME}_backtest"], meta[f"training/{NAME}_training_set"]
    plan = load_project(paths.root).models[NAME].backtest
    folds = backtest["backtest_json"]["folds"]
    assert len(folds) == plan.folds
    end = read_training_set(training["path"])["event_time"].max()
    assert pd.Timestamp(folds[-1]["test_end"]) == end
    for fold in folds:
        for who in ("model", "baseline"):
            assert set(METRICS) <= set(fold[who])
        assert pd.Timestamp(fold["test_start"]) - pd.Timestamp(fold["train_end"]) == timedelta(days=plan.gap_days)
    summary = backtest["backtest_json"]["summary"]
    aps = [f["model"]["average_precision"] for f in folds]
    assert summary["model"]["average_precision"]["mean"] == pytest.approx(np.mean(aps))
    assert backtest["mean_average_precision"] == pytest.approx(np.mean(aps))
    assert backtest["baseline_mean_average_precision"] == pytest.approx(
        np.mean([f["baseline"]["average_precision"] for f in folds]))
    assert backtest["folds"].count("| logistic baseline |") == plan.folds + 2  # the folds, then mean and std
    _assert_png(Path(backtest["plot_folds_path"]))


@pytest.mark.slow
def test_promotion_gate_checks_contracts_in_the_pipeline(pipeline, tmp_path, monkeypatch):
    import dagster as dg

    from assets.training.assets import contract_check_keys, model_checks, upstream_contract_failures

    result, paths = pipeline
    gate = next(c for c in result.get_asset_check_evaluations() if c.check_name == "promotion_gate")
    metadata = {k: v.value for k, v in gate.metadata.items()}
    assert gate.passed and metadata["training_set_contract"] == "passed"
    checked = metadata["upstream_checks"]["checked"]
    assert "features/terminal_risk pandera_contract" in checked and "raw/transactions rows_add_up" in checked
    assert any(c.startswith("staging/fraud_labels ") for c in checked) and metadata["upstream_checks"]["failed"] == []

    # Upstream contract checks: a failed one (or one never evaluated) fails the gate, by name.
    keys = contract_check_keys(NAME)
    assert upstream_contract_failures(result.instance, keys) == []
    fresh = dg.DagsterInstance.ephemeral()
    failing = dg.AssetCheckKey(dg.AssetKey(["features", "terminal_risk"]), "pandera_contract")
    fresh.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=failing.asset_key, check_name=failing.name, passed=False))
    failures = upstream_contract_failures(fresh, keys)
    assert "features/terminal_risk pandera_contract: failed" in failures
    assert "raw/transactions rows_add_up: never evaluated" in failures and len(failures) == len(keys)

    # The Dagster check itself, on a copy of the pipeline's registry whose challenger was trained on a
    # corrupted training set: it fails, naming the column and the value.
    db = tmp_path / "mlflow.db"
    shutil.copy(paths.data / "mlflow.db", db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("TRELLIS_MLFLOW_URI", uri)
    training = _materialized(result)[f"training/{NAME}_training_set"]
    corrupted = _corrupt(_training_set(training), tmp_path / "corrupted", "device_sharing__distinct_customers_7d",
                         -3, pa.int64())
    info = registry.version_info(uri, NAME, "1")  # the same model again, as v2, with the corrupted set
    same = TrainedModel(model=registry.load_version(uri, NAME, "1"), feature_columns=training["features"],
                        cat_features=[], metrics={}, baseline_metrics={}, split_end=info.split_end)
    assert register(same, load_project(paths.root).models[NAME], corrupted, uri)[1] == "2"
    checks = model_checks()
    from assets.resources import Warehouse

    run = dg.materialize(checks, instance=result.instance, raise_on_error=False,
                         resources={"warehouse": Warehouse(path=str(paths.warehouse))},
                         selection=dg.AssetSelection.checks(*checks))
    evaluation_ = next(c for c in run.get_asset_check_evaluations() if c.check_name == "promotion_gate")
    reason = evaluation_.metadata["reason"].value
    assert not evaluation_.passed
    assert "device_sharing__distinct_customers_7d" in reason and "-3" in reason
    assert evaluation_.metadata["challenger_version"].value == "2"


def _training_set(meta: dict):
    from datetime import datetime

    from trellis.training import TrainingSet

    return TrainingSet(model=NAME, as_of=datetime.fromisoformat(meta["as_of"]), path=Path(meta["path"]),
                       rows=meta["dagster/row_count"], positives=meta["positives"], fingerprint=meta["fingerprint"],
                       feature_columns=list(meta["features"]))
