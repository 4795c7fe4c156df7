"""Batch scoring: a day's transactions (labelled or not) get the training set's features, the model's score
and SHAP reason codes; the per-institution summary adds up to the day."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from catboost import Pool
from test_modeling import AS_OF, CONFIG, PLAN, REPO
from test_training import _warehouse

from trellis.modeling import register, train_catboost
from trellis.scoring import (
    ScoringError,
    backfill,
    institution_summary,
    load_champion,
    model_features,
    score_day,
    score_frame,
    scoring_frame,
)
from trellis.simulate import simulate
from trellis.spec import load_project
from trellis.training import build_training_set, read_training_set

MODEL = "card_fraud"
DAY = date(2018, 5, 17)  # four days before AS_OF: some labels of the day are known by then, some are not


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    project = load_project(REPO)
    root = tmp_path_factory.mktemp("scoring")
    con = _warehouse(root / "w.duckdb", project, simulate(CONFIG), exact_windows=False)
    training_set = build_training_set(con, project, MODEL, AS_OF, root / "sets")
    model = project.models[MODEL].model_copy(
        update={"split": PLAN, "catboost": {**project.models[MODEL].catboost, "iterations": 60}})
    training = read_training_set(training_set.path)
    trained = train_catboost(training, model, training_set.feature_columns)
    frame = scoring_frame(con, project, MODEL, DAY)
    scores = score_frame(trained.model, frame, trained.feature_columns, trained.cat_features, model_version="3")
    yield SimpleNamespace(project=project, con=con, training=training, trained=trained, frame=frame,
                          scores=scores, features=training_set.feature_columns)
    con.close()


def _day_count(con, day: date) -> int:
    return con.sql("select count(*) from validated.transactions where tx_datetime >= ? and tx_datetime < ?",
                   params=[day, day + timedelta(days=1)]).fetchone()[0]


def test_every_transaction_of_the_day_is_scored_labelled_or_not(world):
    frame, scores = world.frame, world.scores
    spine = _day_count(world.con, DAY)
    assert len(frame) == len(scores) == spine > 100
    assert frame["transaction_id"].is_unique
    start = pd.Timestamp(DAY)
    assert frame["event_time"].min() >= start and frame["event_time"].max() < start + pd.Timedelta(days=1)
    labelled = world.training["transaction_id"].isin(frame["transaction_id"]).sum()
    assert 0 < labelled < spine  # the day has both labelled and not-yet-labelled transactions
    assert list(frame.columns) == [c for c in world.training.columns if c != "label"]
    assert scores["model_version"].eq("3").all() and scores["score"].between(0, 1).all()


def test_batch_scores_equal_the_model_on_the_training_set_row(world):
    day_rows = world.training[world.training["transaction_id"].isin(world.scores["transaction_id"])]
    merged = day_rows.merge(world.scores, on="transaction_id", suffixes=("", "_scored"), validate="one_to_one")
    assert len(merged) == len(day_rows) > 50
    np.testing.assert_allclose(merged["score"], world.trained.predict(day_rows), rtol=0, atol=1e-12)
    # And the features themselves are the training set's (same query), bit for bit.
    features = world.frame.merge(day_rows[["transaction_id"]], on="transaction_id")
    pd.testing.assert_frame_equal(
        features[world.features].reset_index(drop=True),
        day_rows.set_index("transaction_id").loc[features["transaction_id"], world.features].reset_index(drop=True))


def test_reason_codes_are_the_top_shap_contributions(world):
    trained, frame, scores = world.trained, world.frame, world.scores
    x = trained.features(frame)
    shap = trained.model.get_feature_importance(Pool(x, cat_features=trained.cat_features), type="ShapValues")
    raw = trained.model.predict(x, prediction_type="RawFormulaVal")
    np.testing.assert_allclose(shap.sum(axis=1), raw, atol=1e-6)
    position = {name: i for i, name in enumerate(trained.feature_columns)}
    rows = np.arange(len(frame))
    previous = np.full(len(frame), np.inf)
    for i in (1, 2, 3):
        idx = scores[f"reason_{i}"].map(position).to_numpy()
        contribution = scores[f"reason_{i}_contribution"].to_numpy()
        np.testing.assert_allclose(contribution, shap[rows, idx], atol=1e-6)
        assert (contribution <= previous + 1e-12).all()
        previous = contribution
    # Nothing outside the top 3 contributes more than reason_3.
    assert (np.sort(shap[:, :-1], axis=1)[:, -3] <= scores["reason_3_contribution"].to_numpy() + 1e-12).all()
    np.testing.assert_allclose(1 / (1 + np.exp(-raw)), scores["score"], atol=1e-9)
    # Values are the row's feature values as strings.
    row = frame.iloc[0]
    value = row[scores.loc[0, "reason_1"]]
    assert scores.loc[0, "reason_1_value"] == (None if pd.isna(value) else str(value))


def test_institution_summary_adds_up_to_the_day(world):
    as_of = datetime.combine(DAY, datetime.min.time()) + timedelta(days=4)
    summary = institution_summary(world.con, world.scores, DAY, as_of=as_of, threshold=0.5)
    assert summary["transactions"].sum() == len(world.scores) == _day_count(world.con, DAY)
    assert summary["institution_id"].notna().all() and summary["institution_id"].is_unique
    assert len(summary) > 1 and (summary["confirmed_frauds"] <= summary["labelled"]).all()
    weighted = (summary["mean_score"] * summary["transactions"]).sum() / summary["transactions"].sum()
    assert weighted == pytest.approx(world.scores["score"].mean(), rel=1e-9)
    alerts = (summary["alert_share"] * summary["transactions"]).sum()
    assert alerts == pytest.approx((world.scores["score"] >= 0.5).sum())
    # Confirmed frauds count only labels known before as_of: more of them mature later.
    labels = world.con.sql(
        "select count(*), coalesce(sum(tx_fraud), 0) from validated.fraud_labels where tx_datetime >= ? "
        "and tx_datetime < ? and coalesce(available_at, tx_datetime) < ?",
        params=[DAY, DAY + timedelta(days=1), as_of]).fetchone()
    assert (summary["labelled"].sum(), summary["confirmed_frauds"].sum()) == labels
    later = institution_summary(world.con, world.scores, DAY, as_of=as_of + timedelta(days=60))
    assert later["labelled"].sum() == len(world.scores) > labels[0]


def test_load_champion_scores_like_the_trained_model(world, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    model = world.project.models[MODEL]
    training_set = SimpleNamespace(fingerprint="f", path=tmp_path / "set.parquet", as_of=AS_OF, rows=1, positives=1)
    register(world.trained, model, training_set, uri)
    champion, version = load_champion(uri, MODEL)
    assert version == "1"
    scores = score_day(world.con, world.project, MODEL, champion, DAY, model_version=version)
    np.testing.assert_allclose(scores["score"], world.scores["score"], rtol=0, atol=1e-12)
    with pytest.raises(ScoringError, match="challenger2"):
        load_champion(uri, MODEL, alias="challenger2")


def test_score_day_and_backfill_use_the_models_own_features(world):
    features, cats = model_features(world.trained.model)
    assert (features, cats) == (world.trained.feature_columns, world.trained.cat_features)
    days = backfill(world.con, world.project, MODEL, world.trained.model, DAY - timedelta(days=1), DAY,
                    model_version="3")
    assert list(days) == [DAY - timedelta(days=1), DAY]
    pd.testing.assert_frame_equal(days[DAY], world.scores)
    assert len(days[DAY - timedelta(days=1)]) == _day_count(world.con, DAY - timedelta(days=1))
    empty = score_day(world.con, world.project, MODEL, world.trained.model, date(2030, 1, 1), model_version="3")
    assert empty.empty and list(empty.columns) == list(world.scores.columns)
    with pytest.raises(ScoringError):
        backfill(world.con, world.project, MODEL, world.trained.model, DAY, DAY - timedelta(days=1),
                 model_version="3")
