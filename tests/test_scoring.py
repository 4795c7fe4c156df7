"""Batch scoring: a day's transactions (labelled or not) get the training set's features, the model's score
and SHAP reason codes; the per-institution summary adds up to the day."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from catboost import CatBoostClassifier, Pool
from test_modeling import AS_OF, small_world
from test_training import _mixed

from trellis.explain import ExplainerError, ObliviousExplainer
from trellis.modeling import prepare_features, register, train_catboost
from trellis.scoring import (
    ScoringError,
    _matrix,
    _value_strings,
    backfill,
    daily_summary,
    duckdb_frame,
    explainer_for,
    load_champion,
    model_features,
    score_day,
    score_frame,
    scoring_frame,
)
from trellis.training import read_training_set

pytestmark = pytest.mark.slow  # trains and registers CatBoost models on the small world

MODEL = "card_fraud"
DAY = date(2018, 5, 17)  # four days before AS_OF: some labels of the day are known by then, some are not


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    world = small_world(tmp_path_factory.mktemp("scoring"), iterations=60, name=MODEL)
    project, con, training_set, model = world.project, world.con, world.training_set, world.model
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
    # The reference model's declared summary (batch_scoring.summaries: institutions, through raw.customers).
    assert world.project.models[MODEL].threshold == 0.5
    summary = daily_summary(world.con, world.project, MODEL, "institutions", world.scores, DAY, as_of=as_of)
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
    later = daily_summary(world.con, world.project, MODEL, "institutions", world.scores, DAY,
                          as_of=as_of + timedelta(days=60))
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


# --------------------------------------------------------------------------------------------------
# Feature-table pruning and the explainer path


@pytest.mark.parametrize(("day", "days"),
                         [(date(2018, 4, 25), 1), (date(2018, 4, 1), 1), (DAY - timedelta(days=2), 3)])
def test_pruned_feature_tables_give_the_same_frame(world, day, days):
    """A day in the middle of the data, the first day (no history before it) and a range of days: reading
    only the feature rows an ASOF match can come from gives the very same frame as the whole tables."""
    pruned = scoring_frame(world.con, world.project, MODEL, day, days=days)
    whole = scoring_frame(world.con, world.project, MODEL, day, days=days, prune=False)
    assert len(pruned) > 100
    pd.testing.assert_frame_equal(pruned, whole, check_exact=True)
    # The pruning has something to prune: feature rows before the day that are not a key's latest.
    before = world.con.sql(
        "select count(*) - count(distinct customer_id) from features.feat_customer_spending "
        "where feature_ts < ?",
        params=[datetime.combine(day, datetime.min.time())]).fetchone()[0]
    assert before > 0 or day == date(2018, 4, 1)


@pytest.mark.parametrize(("day", "days"),
                         [(date(2018, 4, 1), 1), (date(2018, 4, 25), 1), (DAY, 1), (DAY - timedelta(days=2), 3),
                          (date(2018, 5, 20), 1)])
def test_primary_key_joins_give_the_asof_frame(world, day, days):
    """scoring_frame with the primary-key joins (default) is the ASOF-join frame, pruned or not, on several
    days: the first day, the middle of the data, the fixture's day, a range, and the last simulated day."""
    reference = scoring_frame(world.con, world.project, MODEL, day, days=days, prune=False,
                              primary_key_join=False)
    assert len(reference) > 100
    pd.testing.assert_frame_equal(scoring_frame(world.con, world.project, MODEL, day, days=days,
                                                primary_key_join=False), reference, check_exact=True)
    for prune in (True, False):
        pd.testing.assert_frame_equal(scoring_frame(world.con, world.project, MODEL, day, days=days, prune=prune),
                                      reference, check_exact=True)


def test_pruning_stays_exact_for_groups_kept_on_the_asof_join(world, tmp_path):
    """With a group computed at another spine (ASOF, reaching back before the day) next to the primary-key
    groups, the pruned frame (the day's rows for the primary-key groups, the day's rows plus each key's latest
    earlier rows for the ASOF group) equals the whole-table frame and the all-ASOF one."""
    project, model = _mixed(tmp_path, world.con, "mixed")
    for day in (date(2018, 4, 1), date(2018, 4, 25), DAY):
        reference = scoring_frame(world.con, project, model, day, prune=False, primary_key_join=False,
                                  feature_schema="mixed")
        assert len(reference) > 100 and reference["customer_labelled__tx_count_7d"].notna().sum() > 50
        for prune in (True, False):
            frame = scoring_frame(world.con, project, model, day, prune=prune, feature_schema="mixed")
            pd.testing.assert_frame_equal(frame, reference, check_exact=True)
        # Only the ASOF group's rows come from before the day: the primary-key groups' would never match.
        start = datetime.combine(day, datetime.min.time())
        before = world.con.sql("select count(*) from mixed.feat_customer_labelled where feature_ts < ?",
                               params=[start]).fetchone()[0]
        assert before > 0 or day == date(2018, 4, 1)


def test_the_scoring_query_reads_no_label_table(world):
    """Scoring renders the training query with ``labels=False``: the same feature joins, but no label table is
    read (every spine row of the day is kept, labelled or not), and the label comes out NULL."""
    from trellis.training import training_set_sql

    end = datetime(2018, 5, 18)
    scoring = training_set_sql(world.project, MODEL, end, labels=False)
    training = training_set_sql(world.project, MODEL, end)
    assert '"fraud_labels"' in training and '"fraud_labels"' not in scoring
    rows = world.con.sql(scoring).to_arrow_table()
    assert rows.num_rows == world.con.sql("select count(*) from validated.transactions where tx_datetime < ?",
                                          params=[end]).fetchone()[0]
    assert rows.column("label").null_count == rows.num_rows


@pytest.mark.parametrize("rows", ["limit 0", "limit 1", ""])
def test_frames_are_what_duckdbs_df_gives(rows):
    """scoring_frame converts through Arrow; the frame equals DuckDB's ``.df()`` of the same result for every
    logical type, with and without NULLs (nullable integers and booleans become Int64 / boolean, dates
    datetime64, decimals float64), and with no row at all."""
    import duckdb

    con = duckdb.connect()
    sql = ("select * from (values (1::bigint, 1.5::double, true, 'a', timestamp '2020-01-01 00:00:01', 1::int, "
           "1.25::decimal(10,2), date '2020-01-02', 3::utinyint, 5::bigint, false), "
           "(null, null, null, null, null, null, null, null, null, 6, true)) "
           f"t(i, f, b, s, ts, i32, d, dt, u8, i_full, b_full) {rows}")
    expected = con.sql(sql).df()
    pd.testing.assert_frame_equal(duckdb_frame(con.sql(sql).to_arrow_table()), expected, check_exact=True)
    if rows == "":
        assert str(expected["i"].dtype) == "Int64" and expected["i_full"].dtype == np.int64


def test_scoring_frame_keeps_counts_integer_where_a_join_finds_nothing(world, tmp_path):
    """An ASOF group with no earlier row for some events gives NULL counts: they stay integers (Int64 with NA),
    as DuckDB's ``.df()`` of the same query gives them, so reason values print as ``3``, not ``3.0``."""
    project, model = _mixed(tmp_path, world.con, "mixed_nulls")
    frame = scoring_frame(world.con, project, model, date(2018, 4, 2), feature_schema="mixed_nulls")
    column = frame["customer_labelled__tx_count_7d"]
    assert column.isna().any() and column.notna().any()
    assert str(column.dtype) == "Int64"


def _catboost_reasons(model, frame: pd.DataFrame, features: list[str], cats: list[str], top_k: int = 3):
    """The previous implementation: predict_proba, ShapValues, stable argsort, str() of each value."""
    x = prepare_features(frame, features, cats)
    shap = model.get_feature_importance(Pool(x, cat_features=cats), type="ShapValues")[:, :-1]
    order = np.argsort(-shap, axis=1, kind="stable")[:, :top_k]
    raw = frame[features].astype(object).to_numpy()
    rows = np.arange(len(frame))
    values = [[None if pd.isna(v) else str(v) for v in raw[rows, order[:, i]]] for i in range(top_k)]
    return model.predict_proba(x)[:, 1], shap, order, values


def test_explainer_scores_and_reasons_equal_catboosts(world):
    trained, frame, scores = world.trained, world.frame, world.scores
    proba, shap, order, values = _catboost_reasons(trained.model, frame, trained.feature_columns,
                                                   trained.cat_features)
    assert np.abs(scores["score"].to_numpy() - proba).max() <= 1e-12
    rows = np.arange(len(frame))
    names = np.asarray(trained.feature_columns, dtype=object)
    ranked = -np.sort(-shap, axis=1)
    for i in range(3):
        contribution = scores[f"reason_{i + 1}_contribution"].to_numpy()
        assert np.abs(contribution - shap[rows, order[:, i]]).max() <= 1e-6
        # Same feature unless two contributions tie within rounding (then either order is right).
        clear = np.abs(ranked[:, i] - ranked[:, i + 1]) > 1e-9
        if i > 0:
            clear &= np.abs(ranked[:, i] - ranked[:, i - 1]) > 1e-9
        assert (scores[f"reason_{i + 1}"].to_numpy()[clear] == names[order[clear, i]]).all()
        same = scores[f"reason_{i + 1}"].to_numpy() == names[order[:, i]]
        assert same.mean() > 0.99
        ours = scores[f"reason_{i + 1}_value"].to_numpy()[same]
        assert ours.tolist() == np.asarray(values[i], object)[same].tolist()
    # Without reasons: the same scores, no reason columns.
    plain = score_frame(trained.model, frame, trained.feature_columns, trained.cat_features,
                        model_version="3", top_k=0)
    assert list(plain.columns) == ["transaction_id", "event_time", "score", "model_version"]
    np.testing.assert_allclose(plain["score"], scores["score"], rtol=0, atol=1e-12)


def test_feature_matrix_equals_prepare_features(world):
    frame = world.frame.copy()
    frame.loc[frame.index[:7], "customer_spending__avg_amount_1d"] = np.nan
    frame.loc[frame.index[7:9], "customer_spending__avg_amount_1d"] = [-0.0, 0.0]
    frame["customer_spending__max_amount_1d"] = frame["customer_spending__max_amount_1d"].astype(np.float32)
    frame["customer_spending__tx_count_1d"] = frame["customer_spending__tx_count_1d"].astype("Int64")
    frame.loc[frame.index[:5], "customer_spending__tx_count_1d"] = pd.NA
    features = world.trained.feature_columns
    expected = prepare_features(frame, features, []).to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(_matrix(frame, features), expected)
    assert {str(frame[c].dtype) for c in features} >= {"float64", "float32", "Int64", "bool", "int64"}
    # Reason values of such columns read like str() of the value (None when missing).
    column = np.array([features.index(name) for name, count in (
        ("customer_spending__tx_count_1d", 9), ("customer_spending__avg_amount_1d", 9),
        ("transaction_context__is_night", 2), ("customer_spending__max_amount_1d", 9),
        ("customer_spending__tx_count_7d", 9)) for _ in range(count)])
    rows = frame.iloc[np.r_[0:9, 0:9, 0:2, 0:9, 0:9]].reset_index(drop=True)
    raw = rows[features].astype(object).to_numpy()  # as the CatBoost path reads values
    expected_values = [None if pd.isna(v) else str(v) for v in raw[np.arange(len(rows)), column]]
    assert "-0.0" in expected_values and "0.0" in expected_values
    assert _value_strings(rows, features, column).tolist() == expected_values


def test_models_with_categorical_features_take_catboosts_path(world, monkeypatch):
    training = world.training.assign(merchant_kind=(world.training["terminal_id"] % 3).astype(str))
    frame = world.frame.assign(merchant_kind=(world.frame["terminal_id"] % 3).astype(str))
    features = [*world.trained.feature_columns, "merchant_kind"]
    model = CatBoostClassifier(iterations=30, depth=4, random_seed=1, thread_count=2, verbose=False,
                               allow_writing_files=False)
    model.fit(prepare_features(training, features, ["merchant_kind"]), training["label"],
              cat_features=["merchant_kind"])
    assert explainer_for(model) is None
    with pytest.raises(ExplainerError, match="merchant_kind"):
        ObliviousExplainer.from_catboost(model)

    def refuse(*args, **kwargs):
        raise AssertionError("the explainer must not be used for a model with categorical features")

    monkeypatch.setattr(ObliviousExplainer, "from_catboost", refuse)
    scores = score_frame(model, frame, features, ["merchant_kind"], model_version="7")
    proba, shap, order, values = _catboost_reasons(model, frame, features, ["merchant_kind"])
    np.testing.assert_array_equal(scores["score"], proba)
    rows = np.arange(len(frame))
    for i in range(3):
        assert scores[f"reason_{i + 1}"].tolist() == [features[j] for j in order[:, i]]
        np.testing.assert_array_equal(scores[f"reason_{i + 1}_contribution"], shap[rows, order[:, i]])
        assert scores[f"reason_{i + 1}_value"].tolist() == values[i]
