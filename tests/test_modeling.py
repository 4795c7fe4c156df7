"""Modeling: time-ordered split, CatBoost training (deterministic, early-stopped) with a logistic-regression
baseline compared on the validation part, the metric primitives, and registration in a real MLflow registry
on a local SQLite store. Held-out evaluation and backtests: test_evaluation.py."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from test_training import _warehouse

from trellis.modeling import evaluate, register, time_split, train_catboost
from trellis.simulate import SimulationConfig, simulate
from trellis.spec import SplitPlan, load_project
from trellis.training import build_training_set, read_training_set

pytestmark = pytest.mark.slow  # trains CatBoost models on the small world

REPO = Path(__file__).resolve().parent.parent
CONFIG = SimulationConfig(n_customers=200, n_terminals=400, n_days=50, label_delay="uniform")
AS_OF = datetime(2018, 5, 21)  # the simulation starts 2018-04-01; all 50 days are before the cutoff
PLAN = SplitPlan(train_days=21, validation_days=7, gap_days=3, test_days=10)


def small_world(root: Path, iterations: int, name: str = "card_fraud") -> SimpleNamespace:
    """The setting the model tests share: the repo's project, a warehouse of CONFIG's simulated data in ``root``
    (``con``, open: the caller closes it), the model's training set as of AS_OF and its definition with PLAN's
    split and ``iterations`` trees (the data is small)."""
    project = load_project(REPO)
    con = _warehouse(root / "w.duckdb", project, simulate(CONFIG))
    training_set = build_training_set(con, project, name, AS_OF, root / "sets")
    definition = project.models[name]
    model = definition.model_copy(
        update={"split": PLAN, "catboost": {**definition.catboost, "iterations": iterations}})
    return SimpleNamespace(project=project, root=root, con=con, training_set=training_set, model=model)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    world = small_world(tmp_path_factory.mktemp("modeling"), iterations=120)
    world.con.close()
    world.frame = read_training_set(world.training_set.path)
    world.trained = train_catboost(world.frame, world.model, world.training_set.feature_columns)
    return world


def test_time_split_boundaries():
    start = datetime(2024, 1, 1)
    frame = pd.DataFrame({"t": [start + timedelta(hours=h) for h in range(24 * 30)][::-1], "x": range(720)})
    end = frame["t"].max()  # 2024-01-30 23:00: the split ends at the midnight that ends its day
    plan = SplitPlan(train_days=10, validation_days=5, gap_days=2, test_days=7)
    train, validation, test = time_split(frame, plan, "t")
    midnight = datetime(2024, 1, 31)
    test_start, gap_start = midnight - timedelta(days=7), midnight - timedelta(days=9)
    val_start, train_start = gap_start - timedelta(days=5), gap_start - timedelta(days=15)
    assert test["t"].min() == test_start and test["t"].max() == end and len(test) == 7 * 24
    assert validation["t"].min() == val_start and validation["t"].max() == gap_start - timedelta(hours=1)
    assert train["t"].min() == train_start and train["t"].max() == val_start - timedelta(hours=1)
    assert (len(train), len(validation)) == (10 * 24, 5 * 24)
    # The gap (and anything older than train) is dropped; parts are time-sorted and disjoint.
    gap = frame[(frame["t"] >= gap_start) & (frame["t"] < test_start)]
    assert len(gap) == 2 * 24 and not set(gap["x"]) & set(pd.concat([train, validation, test])["x"])
    for part in (train, validation, test):
        assert part["t"].is_monotonic_increasing
    assert train["t"].max() < validation["t"].min() and validation["t"].max() < test["t"].min()
    # An explicit end (the training cutoff) anchors the split at its last midnight, whole days before it.
    _, _, early_test = time_split(frame, plan, "t", end=datetime(2024, 1, 25, 6))
    assert early_test["t"].min() == datetime(2024, 1, 18) and early_test["t"].max() == datetime(2024, 1, 24, 23)


@pytest.mark.parametrize(("field", "plan", "hours", "end"), [
    # too little history for train
    ("train_days", SplitPlan(train_days=10, validation_days=5, gap_days=2, test_days=20), range(24 * 25), None),
    # a hole in the data (days 10..20) where validation falls
    ("validation_days", SplitPlan(train_days=10, validation_days=5, gap_days=2, test_days=3),
     [*range(24 * 10), *range(24 * 20, 24 * 25)], None),
    # a long silence before the given end: no events in the test window
    ("test_days", SplitPlan(train_days=10, validation_days=5, gap_days=2, test_days=7), range(24 * 20),
     datetime(2024, 2, 15)),
])
def test_time_split_names_the_empty_part(field, plan, hours, end):
    frame = pd.DataFrame({"t": [datetime(2024, 1, 1) + timedelta(hours=h) for h in hours]})
    with pytest.raises(ValueError, match=f"split.{field}="):
        time_split(frame, plan, "t", end=end)


def test_evaluate_at_the_alert_rate():
    y = np.array([1] * 5 + [0] * 195)
    scores = np.linspace(1, 0, 200)  # the 2 flagged rows (1% of 200) are the top two, both frauds
    metrics = evaluate(y, scores, amounts=np.array([10, 30, 20, 20, 20] + [5] * 195))
    assert metrics["roc_auc"] == 1.0 and metrics["average_precision"] == 1.0
    assert metrics["fraud_caught_at_1pct"] == 2 / 5 and metrics["precision_at_1pct"] == 1.0
    assert metrics["false_positive_rate_at_1pct"] == 0.0
    assert metrics["fraud_amount_caught_at_1pct"] == 40 / 100
    worst = evaluate(y, -scores)
    assert worst["fraud_caught_at_1pct"] == 0.0 and worst["false_positive_rate_at_1pct"] == 2 / 195
    assert np.isnan(evaluate(np.zeros(10), np.arange(10))["roc_auc"])


def test_training_is_deterministic_and_beats_chance(world):
    trained = world.trained
    again = train_catboost(world.frame, world.model, world.training_set.feature_columns)
    np.testing.assert_array_equal(trained.predict(world.frame), again.predict(world.frame))
    assert trained.metrics == again.metrics

    params = trained.model.get_params()
    assert params["random_seed"] == world.model.seed == 7 and params["thread_count"] == 2
    assert params["use_best_model"] is True and params["od_type"] == "Iter" and params["od_wait"] == 30
    assert 0 <= trained.metrics["best_iteration"] < 120
    assert trained.cat_features == []  # the card_fraud features are numeric and bool (bools cast to 0/1)
    assert min(trained.split_rows.values()) > 500

    m, b = trained.metrics, trained.baseline_metrics
    assert m["validation_roc_auc"] > 0.7
    assert m["validation_average_precision"] > m["validation_positives"] / m["validation_rows"]  # beats random
    assert 0 < m["validation_fraud_caught_at_1pct"] <= 1
    assert 0 <= m["validation_false_positive_rate_at_1pct"] < 0.02
    assert set(b) == {k for k in m if k != "best_iteration"} and 0.5 < b["validation_roc_auc"] <= 1
    # Training does not look at the held-out test part (trellis.evaluation does), but records the split anchor.
    assert not [k for k in (*m, *b) if k.startswith("test_")]
    assert trained.split_end is None  # no cutoff given: the split is anchored at the frame's latest event
    assert trained.periods.test.end == world.frame["event_time"].max().normalize() + timedelta(days=1)
    _, validation, test = time_split(world.frame, world.model.split, "event_time")
    assert trained.split_rows == {"train": trained.split_rows["train"], "validation": len(validation),
                                  "test": len(test)}
    assert m["validation_rows"] == len(validation)


def test_catboost_params_with_and_without_early_stopping(world):
    from trellis.modeling import catboost_params

    early = catboost_params(world.model)
    assert (early["use_best_model"], early["od_type"], early["od_wait"]) == (True, "Iter", 30)
    plain = catboost_params(world.model, early_stopping=False)
    assert not {"use_best_model", "od_type", "od_wait"} & set(plain)
    assert plain["iterations"] == 120 and plain["random_seed"] == 7 and plain["depth"] == 6


def test_categorical_string_columns_are_native(world):
    frame = world.frame.assign(
        channel=np.where(world.frame["transaction_id"] % 3 == 0, "web", "pos"),
        is_weekend=world.frame["transaction_context__is_weekend"])
    frame.loc[frame.index[::50], "channel"] = None
    columns = [*world.training_set.feature_columns, "channel"]
    trained = train_catboost(frame, world.model, columns)
    assert trained.cat_features == ["channel"]
    assert trained.model.get_cat_feature_indices() == [len(columns) - 1]
    assert trained.predict(frame).shape == (len(frame),)


def test_register_versions_aliases_and_reload(world, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    definitions = world.project.fingerprint()
    first = register(world.trained, world.model, world.training_set, uri, definitions_hash=definitions)
    second = register(world.trained, world.model, world.training_set, uri, definitions_hash=definitions)
    assert first == ("card_fraud", "1") and second == ("card_fraud", "2")
    assert not mlflow.is_tracking_uri_set()  # register leaves no global MLflow state behind

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("card_fraud", "champion").version) == "1"
    assert str(client.get_model_version_by_alias("card_fraud", "challenger").version) == "2"
    version = client.get_model_version("card_fraud", "2")
    assert version.tags["trellis.training_fingerprint"] == world.training_set.fingerprint
    assert version.tags["trellis.definitions_hash"] == definitions
    assert version.tags["trellis.feature_service"] == "card_fraud"  # the model's generated Feast feature service
    run = client.get_run(version.run_id)
    assert run.data.tags["trellis.training_fingerprint"] == world.training_set.fingerprint
    assert run.data.params["catboost.random_seed"] == "7"
    assert run.data.metrics["validation_roc_auc"] == pytest.approx(world.trained.metrics["validation_roc_auc"])
    assert run.data.metrics["baseline_validation_average_precision"] == pytest.approx(
        world.trained.baseline_metrics["validation_average_precision"])
    assert run.data.metrics["lift_validation_roc_auc"] == pytest.approx(
        world.trained.metrics["validation_roc_auc"] - world.trained.baseline_metrics["validation_roc_auc"])
    assert version.tags["trellis.split_end"] == ""  # trained without a cutoff: anchored at the latest event
    test = world.trained.periods.test
    assert run.data.params["split.test_period_utc"] == f"[{test.start.isoformat()}, {test.end.isoformat()})"
    assert (tmp_path / "mlartifacts").is_dir()

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        loaded = mlflow.catboost.load_model("models:/card_fraud@champion")
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    x = world.trained.features(world.frame)
    np.testing.assert_array_equal(loaded.predict_proba(x)[:, 1], world.trained.predict(world.frame))


def test_every_version_registered_with_its_project_has_a_model_card(world, tmp_path, monkeypatch):
    # `trellis train` and the Dagster models/<model> asset register through lifecycle.train, which passes the
    # project to register: the version's run holds model_card.md from the start (trellis evaluate rewrites it).
    from mlflow import MlflowClient

    from trellis import lifecycle
    from trellis.paths import ProjectPaths

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("TRELLIS_MLFLOW_URI", uri)
    monkeypatch.setenv("TRELLIS_WAREHOUSE", str(world.root / "w.duckdb"))
    monkeypatch.setattr("trellis.modeling.train_catboost", lambda *args, **kwargs: world.trained)  # trained once
    registered = lifecycle.train(world.project, world.model, world.training_set, ProjectPaths.of(world.root))
    assert ProjectPaths.of(world.root).mlflow_uri == uri and registered.version == "1"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run_id = client.get_model_version("card_fraud", "1").run_id
    card = Path(client.download_artifacts(run_id, "model_card.md", str(tmp_path))).read_text()
    assert card.startswith("# Model card: card_fraud v1\n")
    assert f"training set {world.training_set.fingerprint} " in card
    assert "| customer_spending__tx_count_1d | customer_spending |" in card
    assert "## Metrics (held-out)\n\nnot evaluated yet" in card
    assert "none recorded (a first version becomes champion at registration" in card


def test_card_precision_at_k_by_hand():
    from trellis.modeling import card_precision_at_k

    day1, day2 = "2018-05-01 10:00", "2018-05-02 10:00"
    cards = ["a", "a", "b", "c", "a", "b", "c"]
    days = [day1, day1, day1, day1, day2, day2, day2]
    y = [0, 1, 0, 0, 1, 0, 1]
    scores = [0.1, 0.9, 0.8, 0.2, 0.95, 0.7, 0.6]
    # Day 1, k=2: cards by max score a (0.9, fraud), b (0.8) -> 1/2; a is now known compromised.
    # Day 2: a is excluded; b (0.7, genuine), c (0.6, fraud) -> 1/2.
    assert card_precision_at_k(cards, days, y, scores, k=2) == 0.5
    assert card_precision_at_k(cards, days, y, scores, k=1) == 0.5  # day 1: a (1/1); day 2: b (0/1)
