"""ObliviousExplainer against CatBoost itself: real models trained here (depths 1..8, several seeds, NaNs
in training and scoring rows, sample weights, features reused across trees and within a tree), compared on
fresh rows with predict_proba, RawFormulaVal, calc_leaf_indexes and ShapValues."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from catboost import CatBoostClassifier, CatBoostRegressor, Pool

from trellis.explain import ExplainerError, ObliviousExplainer

N_FEATURES = 7


def _data(seed: int, n: int, nan_share: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, N_FEATURES))
    x[:, 3] = np.round(x[:, 3] * 2) / 2  # few distinct values: many rows sit exactly on a border
    x[:, 4] = x[:, 0] * 0.8 + rng.normal(scale=0.3, size=n)  # correlated with feature 0
    logit = x[:, 0] + 0.5 * x[:, 1] - 0.4 * x[:, 2] ** 2 + 0.6 * x[:, 3] * x[:, 5] + rng.normal(size=n)
    y = (logit > 0.2).astype(int)
    x[rng.random(x.shape) < nan_share] = np.nan
    return x, y


def _compare(model, explainer: ObliviousExplainer, x: np.ndarray) -> dict[str, float]:
    """Max abs differences between the explainer and CatBoost on the rows ``x``; asserts the tolerances."""
    raw, probability, contributions = explainer.explain(x)
    cb_raw = model.predict(x, prediction_type="RawFormulaVal")
    cb_shap = model.get_feature_importance(Pool(x), type="ShapValues")
    diffs = {
        "raw": float(np.abs(raw - cb_raw).max()),
        "contributions": float(np.abs(contributions - cb_shap[:, :-1]).max()),
        "expected": float(np.abs(explainer.expected_value - cb_shap[:, -1]).max()),
        "additivity": float(np.abs(contributions.sum(axis=1) + explainer.expected_value - raw).max()),
    }
    if isinstance(model, CatBoostClassifier):
        diffs["probability"] = float(np.abs(probability - model.predict_proba(x)[:, 1]).max())
        assert diffs["probability"] <= 1e-12, diffs
    assert diffs["raw"] <= 1e-9, diffs
    assert diffs["contributions"] <= 1e-6, diffs
    assert diffs["expected"] <= 1e-9, diffs
    assert diffs["additivity"] <= 1e-9, diffs
    np.testing.assert_array_equal(explainer.leaf_indexes(x), model.calc_leaf_indexes(Pool(x)))
    return diffs


def _tree_features(model) -> list[list[int]]:
    """Per tree, the feature index of each split (depth order), from CatBoost's JSON dump."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.json"
        model.save_model(str(path), format="json")
        trees = json.loads(path.read_text())["oblivious_trees"]
    return [[s["float_feature_index"] for s in tree["splits"]] for tree in trees]


CASES = [  # depth, seed, nan_mode, sample weights
    (1, 0, "Min", False),
    (2, 1, "Min", True),
    (3, 2, "Max", False),
    (4, 3, "Min", True),
    (5, 4, "Max", True),
    (6, 5, "Min", False),
    (6, 6, "Min", True),
    (7, 7, "Max", False),
    (8, 8, "Min", True),
]


@pytest.mark.parametrize(("depth", "seed", "nan_mode", "weighted"), CASES)
def test_matches_catboost(depth: int, seed: int, nan_mode: str, weighted: bool):
    x, y = _data(seed, 3000)
    weights = np.random.default_rng(seed + 100).uniform(0.2, 3.0, len(y)) if weighted else None
    model = CatBoostClassifier(iterations=40, depth=depth, learning_rate=0.2, nan_mode=nan_mode,
                               random_seed=seed, thread_count=2, verbose=False, allow_writing_files=False)
    model.fit(x, y, sample_weight=weights)
    explainer = ObliviousExplainer.from_catboost(model)
    assert explainer.n_trees == model.tree_count_
    assert (explainer.depth, explainer.n_features) == (depth, N_FEATURES)
    rows, _ = _data(seed + 1000, 2000, nan_share=0.15)
    diffs = _compare(model, explainer, rows)
    assert max(diffs.values()) < 1e-13  # what it achieves: float64 rounding only

    # The single-row API agrees with the batch one (and so with CatBoost).
    raw, probability, contributions = explainer.explain(rows[:50])
    for i in range(50):
        one = explainer.explain_row(rows[i])
        assert abs(one.raw - raw[i]) <= 1e-12 and abs(one.probability - probability[i]) <= 1e-15
        np.testing.assert_allclose(one.contributions, contributions[i], rtol=0, atol=1e-12)
    # CatBoost's own leaf indexes give the same result as the numpy evaluation.
    leaves = model.calc_leaf_indexes(Pool(rows))
    again = explainer.explain(leaf_indexes=leaves)
    np.testing.assert_allclose(again[2], explainer.explain(rows)[2], rtol=0, atol=1e-12)
    np.testing.assert_allclose(explainer.shap_values(rows)[:, -1], explainer.expected_value)


def test_features_reused_within_and_across_trees():
    """Two informative features and depth 6: every tree splits several times on the same feature."""
    rng = np.random.default_rng(11)
    x = rng.normal(size=(4000, 3))
    x[rng.random(x.shape) < 0.05] = np.nan
    y = ((np.nan_to_num(x[:, 0]) * np.nan_to_num(x[:, 1]) + 0.3 * rng.normal(size=4000)) > 0).astype(int)
    model = CatBoostClassifier(iterations=60, depth=6, random_seed=3, thread_count=2, verbose=False,
                               allow_writing_files=False)
    model.fit(x, y)
    trees = _tree_features(model)
    assert all(len(set(t)) < len(t) for t in trees)  # a feature at several depths of each tree
    assert any(t.count(0) >= 3 for t in trees)
    rows = rng.normal(size=(3000, 3))
    rows[rng.random(rows.shape) < 0.1] = np.nan
    _compare(model, ObliviousExplainer.from_catboost(model), rows)


def test_float32_borders_and_nan_rows():
    """CatBoost compares float32(x) with float32 borders: a float64 value just above a border that rounds
    onto it in float32 is *not* greater. NaN in a feature never missing in training goes "not greater"."""
    x, y = _data(21, 3000, nan_share=0.0)
    model = CatBoostClassifier(iterations=30, depth=4, random_seed=21, thread_count=2, verbose=False,
                               allow_writing_files=False)
    model.fit(x, y)
    explainer = ObliviousExplainer.from_catboost(model)
    borders = model.get_borders()
    rows, rounded_onto_border = [], 0
    for feature, values in borders.items():
        for border in values[:: max(1, len(values) // 8)]:
            above = np.nextafter(border, np.inf)  # > border in float64, == border in float32
            rounded_onto_border += bool(above > border and np.float32(above) == np.float32(border))
            for value in (border, above, float(np.nextafter(np.float32(border), np.float32(np.inf))),
                          np.nextafter(border, -np.inf)):
                row = x[len(rows) % len(x)].copy()
                row[feature] = value
                rows.append(row)
    rows = np.array(rows)
    rows = np.vstack([rows, np.where(np.random.default_rng(0).random(rows.shape) < 0.3, np.nan, rows)])
    assert rounded_onto_border > 10
    _compare(model, explainer, rows)


def test_deeper_trees_use_two_byte_leaf_indexes():
    x, y = _data(5, 4000)
    model = CatBoostClassifier(iterations=8, depth=10, random_seed=5, thread_count=2, verbose=False,
                               allow_writing_files=False)
    model.fit(x, y)
    explainer = ObliviousExplainer.from_catboost(model)
    rows, _ = _data(6, 500)
    _compare(model, explainer, rows)
    _, _, contributions = explainer.explain(rows[:5])
    for i in range(5):
        np.testing.assert_allclose(explainer.explain_row(rows[i]).contributions, contributions[i], atol=1e-12)


def test_bias_scale_and_regression():
    x, y = _data(9, 3000)
    regressor = CatBoostRegressor(iterations=40, depth=5, random_seed=9, thread_count=2, verbose=False,
                                  allow_writing_files=False)  # RMSE: boost_from_average gives a bias
    target = np.nan_to_num(x[:, 0]) * 2 + y
    regressor.fit(x, target)
    assert regressor.get_scale_and_bias()[1] != 0
    rows, _ = _data(10, 1000)
    _compare(regressor, ObliviousExplainer.from_catboost(regressor), rows)

    classifier = CatBoostClassifier(iterations=30, depth=4, random_seed=9, thread_count=2, verbose=False,
                                    allow_writing_files=False)
    classifier.fit(x, y)
    classifier.set_scale_and_bias(0.7, -0.3)  # CatBoost's ShapValues refuse a scale; raw and probability only
    explainer = ObliviousExplainer.from_catboost(classifier)
    raw, probability, contributions = explainer.explain(rows)
    expected_raw = classifier.predict(rows, prediction_type="RawFormulaVal")
    np.testing.assert_allclose(raw, expected_raw, rtol=0, atol=1e-9)
    np.testing.assert_allclose(probability, classifier.predict_proba(rows)[:, 1], rtol=0, atol=1e-12)
    np.testing.assert_allclose(contributions.sum(axis=1) + explainer.expected_value, raw, rtol=0, atol=1e-9)


def test_dataframe_input_uses_the_model_column_order():
    x, y = _data(12, 2000)
    names = [f"f{i}" for i in range(N_FEATURES)]
    frame = pd.DataFrame(x, columns=names)
    model = CatBoostClassifier(iterations=20, depth=3, random_seed=1, thread_count=2, verbose=False,
                               allow_writing_files=False)
    model.fit(frame, y)
    explainer = ObliviousExplainer.from_catboost(model)
    assert explainer.feature_names == names
    shuffled = frame[names[::-1]]
    np.testing.assert_allclose(explainer.predict_proba(shuffled), model.predict_proba(frame)[:, 1],
                               rtol=0, atol=1e-12)
    with pytest.raises(ExplainerError, match="f3"):
        explainer.explain(frame.drop(columns=["f3"]))
    with pytest.raises(ExplainerError, match="matrix"):
        explainer.explain(x[:, :3])


def test_categorical_features_are_refused_by_name():
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"amount": rng.normal(size=500), "merchant_kind": rng.choice(["a", "b", "c"], 500)})
    y = (frame["amount"] + (frame["merchant_kind"] == "a") > 0.5).astype(int)
    model = CatBoostClassifier(iterations=10, depth=3, random_seed=0, thread_count=2, verbose=False,
                               allow_writing_files=False, cat_features=["merchant_kind"])
    model.fit(frame, y)
    with pytest.raises(ExplainerError, match="categorical features.*'merchant_kind'"):
        ObliviousExplainer.from_catboost(model)


def test_multiclass_and_non_symmetric_trees_are_refused():
    x, y = _data(13, 1500)
    multi = CatBoostClassifier(iterations=5, depth=3, loss_function="MultiClass", random_seed=0,
                               thread_count=2, verbose=False, allow_writing_files=False)
    multi.fit(x, y + (np.nan_to_num(x[:, 1]) > 1))
    with pytest.raises(ExplainerError, match="multi-class"):
        ObliviousExplainer.from_catboost(multi)
    depthwise = CatBoostClassifier(iterations=5, depth=3, grow_policy="Depthwise", random_seed=0,
                                   thread_count=2, verbose=False, allow_writing_files=False)
    depthwise.fit(x, y)
    with pytest.raises(ExplainerError, match="non-symmetric"):
        ObliviousExplainer.from_catboost(depthwise)


def test_blocks_and_threads_give_the_same_result(monkeypatch):
    import trellis.explain as explain_module

    x, y = _data(14, 3000)
    model = CatBoostClassifier(iterations=30, depth=5, random_seed=14, thread_count=2, verbose=False,
                               allow_writing_files=False)
    model.fit(x, y)
    explainer = ObliviousExplainer.from_catboost(model)
    rows, _ = _data(15, 2500)
    whole = explainer.explain(rows)
    leaves = model.calc_leaf_indexes(Pool(rows))
    monkeypatch.setattr(explain_module, "BLOCK_ROWS", 300)  # 9 blocks
    monkeypatch.setattr(explain_module, "CHUNK_ROWS", 128)
    for threads in (1, 2, 3):
        blocked = explainer.explain(rows, threads=threads)
        for ours, reference in zip(blocked, whole, strict=True):
            np.testing.assert_array_equal(ours, reference)
        # raw() sums the leaf values pairwise, explain() in tree order: equal up to rounding
        np.testing.assert_allclose(explainer.raw(rows, threads=threads), whole[0], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(explainer.leaf_indexes(rows, threads=threads), leaves)
    np.testing.assert_array_equal(explainer.explain(leaf_indexes=leaves, threads=2)[2], whole[2])
