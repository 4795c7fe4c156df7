"""The promotion gate (trellis.registry.gate) on a real MLflow registry, with small CatBoost models: fast enough
for the quick loop and for mutation runs (tests/test_registry.py covers the same gate on the small world's
training sets, in the slow suite).

Every expected metric is computed here from the in-memory models with scikit-learn, not read back through the
registry, so the gate is checked against an independent reference.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from catboost import CatBoostClassifier
from sklearn.metrics import average_precision_score, roc_auc_score

from trellis import registry
from trellis.modeling import TrainedModel, register
from trellis.spec import Model, load_project
from trellis.training import training_set_schema

REPO = Path(__file__).resolve().parent.parent
FEATURES = ["amount", "hour", "channel"]
CATEGORICAL = ["channel"]


def _frame(seed: int, n: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    amount = rng.gamma(2.0, 50.0, n)
    hour = rng.integers(0, 24, n).astype(float)
    channel = rng.choice(["web", "pos", "atm"], n)
    risk = 0.02 * amount + 1.5 * (channel == "web") + 1.0 * (hour < 6) + rng.normal(0, 1.0, n)
    label = (risk > np.quantile(risk, 0.8)).astype(int)
    # Extra columns and another order than the models': the gate must pick the model's own columns.
    return pd.DataFrame({"note": "x", "channel": channel, "label": label, "hour": hour, "amount": amount,
                         "y": 1 - label})


def _train(frame: pd.DataFrame, labels: np.ndarray) -> TrainedModel:
    model = CatBoostClassifier(iterations=40, depth=3, random_seed=0, thread_count=1, verbose=False,
                               allow_writing_files=False)
    model.fit(frame[FEATURES], labels, cat_features=CATEGORICAL)
    return TrainedModel(model=model, feature_columns=FEATURES, cat_features=CATEGORICAL, metrics={},
                        baseline_metrics={})


def _expected(trained: TrainedModel, frame: pd.DataFrame, metric: str, label: str = "label") -> float:
    scores = trained.model.predict_proba(frame[FEATURES])[:, 1]
    score = average_precision_score if metric == "average_precision" else roc_auc_score
    return float(score(frame[label], scores))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A registry holding v1 (good, champion), v2 (trained on shuffled labels, challenger) and v3 (the good
    model again), registered by trellis.modeling.register; each test works on its own copy."""
    root = tmp_path_factory.mktemp("gate")
    train, test = _frame(0, 600), _frame(1, 400)
    good = _train(train, train["label"].to_numpy())
    worse = _train(train, np.random.default_rng(2).permutation(train["label"].to_numpy()))
    spec = load_project(REPO).models["card_fraud"].model_copy(update={"name": "gate_test"})
    training_set = SimpleNamespace(fingerprint="f" * 16, path=root / "missing" / f"{'f' * 16}.parquet",
                                   as_of=datetime(2024, 1, 1), rows=len(train), positives=int(train["label"].sum()))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        for trained, version in ((good, "1"), (worse, "2"), (good, "3")):
            assert register(trained, spec, training_set, uri) == ("gate_test", version)
        yield SimpleNamespace(root=root, spec=spec, good=good, worse=worse, test=test)


@pytest.fixture
def uri(world: SimpleNamespace, tmp_path: Path) -> str:
    """A copy of the registry; aliases: champion v1, challenger v2 (artifacts stay where v1..v3 logged them)."""
    shutil.copy(world.root / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _alias(uri, world.spec.name, registry.CHALLENGER, "2")
    return uri


def _alias(uri: str, name: str, alias: str, version: str | None) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    if version is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, version)


def _with_gates(spec: Model, **gates: object) -> Model:
    return spec.model_copy(update={"gates": spec.gates.model_copy(update=gates)})


def test_a_worse_challenger_fails_with_both_values_in_the_reason(world: SimpleNamespace, uri: str) -> None:
    result = registry.gate(uri, world.spec, world.test)
    champion = _expected(world.good, world.test, "average_precision")
    challenger = _expected(world.worse, world.test, "average_precision")
    assert champion - challenger > 0.1  # a clear gap, far beyond the tolerance
    assert not result.passed
    assert (result.metric, result.max_drop) == ("average_precision", 0.01)
    assert (result.champion_version, result.challenger_version) == ("1", "2")
    assert result.champion_value == pytest.approx(champion, abs=1e-12)
    assert result.challenger_value == pytest.approx(challenger, abs=1e-12)
    assert result.contract == "not checked"
    assert result.reason == (f"challenger v2 average_precision={challenger:.4f} vs champion v1 {champion:.4f}: "
                             f"worse than the tolerance 0.01")


def test_the_tolerance_is_inclusive(world: SimpleNamespace, uri: str) -> None:
    """challenger >= champion - max_drop passes: an equal challenger passes with no tolerance at all, and the
    worse one passes exactly when the tolerance covers its gap."""
    _alias(uri, world.spec.name, registry.CHALLENGER, "3")
    equal = registry.gate(uri, _with_gates(world.spec, max_drop=0.0), world.test)
    assert equal.passed and equal.challenger_value == equal.champion_value
    assert equal.reason.endswith("within the tolerance 0.0") and equal.challenger_version == "3"

    _alias(uri, world.spec.name, registry.CHALLENGER, "2")
    gap = _expected(world.good, world.test, "roc_auc") - _expected(world.worse, world.test, "roc_auc")
    assert gap > 0
    assert registry.gate(uri, _with_gates(world.spec, metric="roc_auc", max_drop=gap + 1e-9), world.test).passed
    below = registry.gate(uri, _with_gates(world.spec, metric="roc_auc", max_drop=gap - 1e-9), world.test)
    assert not below.passed and below.metric == "roc_auc"
    assert below.champion_value == pytest.approx(_expected(world.good, world.test, "roc_auc"), abs=1e-12)


def test_feature_columns_and_label_column(world: SimpleNamespace, uri: str) -> None:
    """The models' own feature names by default (the frame has other columns, in another order); given
    columns are used in their order; the label column is the one named."""
    default = registry.gate(uri, world.spec, world.test)
    explicit = registry.gate(uri, world.spec, world.test, feature_columns=FEATURES)
    assert (explicit.champion_value, explicit.challenger_value) == (default.champion_value, default.challenger_value)
    with pytest.raises(ValueError, match="feature columns missing from the frame: nope"):
        registry.gate(uri, world.spec, world.test, feature_columns=["amount", "nope", "channel"])
    flipped = registry.gate(uri, world.spec, world.test, label_column="y")
    assert flipped.champion_value == pytest.approx(_expected(world.good, world.test, "average_precision", "y"),
                                                   abs=1e-12)


def test_no_champion_yet_or_the_challenger_is_the_champion(world: SimpleNamespace, uri: str) -> None:
    _alias(uri, world.spec.name, registry.CHALLENGER, "1")
    same = registry.gate(uri, world.spec, world.test)
    assert same.passed and same.reason == "the challenger is the champion (version 1)"
    assert (same.champion_value, same.challenger_value, same.champion_version) == (None, None, "1")
    _alias(uri, world.spec.name, registry.CHALLENGER, "2")
    _alias(uri, world.spec.name, registry.CHAMPION, None)
    first = registry.gate(uri, world.spec, world.test)
    assert first.passed and first.reason == "no champion yet"
    assert (first.champion_version, first.challenger_version, first.champion_value) == (None, "2", None)


def test_no_challenger_or_no_model_fails(world: SimpleNamespace, uri: str) -> None:
    _alias(uri, world.spec.name, registry.CHALLENGER, None)
    result = registry.gate(uri, world.spec, world.test)
    assert result.passed is False and result.reason == "gate_test has no 'challenger' alias"
    assert (result.champion_version, result.challenger_version, result.challenger_value) == ("1", None, None)
    with pytest.raises(registry.RegistryError, match="unknown registered model 'other'"):
        registry.gate(uri, world.spec.model_copy(update={"name": "other"}), world.test)


def test_an_undefined_metric_fails(world: SimpleNamespace, uri: str) -> None:
    one_class = world.test[world.test["label"] == 0]
    result = registry.gate(uri, world.spec, one_class)
    assert result.passed is False
    assert result.reason == "average_precision is undefined on the test frame (a single label class?)"
    assert np.isnan(result.champion_value) and np.isnan(result.challenger_value)


def test_the_contract_part_fails_when_the_training_set_is_gone(world: SimpleNamespace, uri: str) -> None:
    """With the project, the challenger's training set is re-read first: a missing file fails the gate before
    any scoring, whatever the test frame says."""
    project = load_project(REPO)
    result = registry.gate(uri, world.spec, world.test, project=project)
    assert result.passed is False
    assert result.contract.startswith("the training set of gate_test v2 (") and "does not exist" in result.contract
    assert result.reason == f"contract: {result.contract}"
    assert (result.champion_version, result.challenger_version, result.champion_value) == ("1", "2", None)
    with pytest.raises(ValueError) as caught:
        registry.gate(uri, world.spec)
    assert str(caught.value) == ("gate: pass the test frame, or the project so that the challenger's training set "
                                 "is used")


# --- The contract part passing: the challenger's own training set, re-read, is the test frame ------------------

SET_FEATURES = ["customer_spending__avg_amount_30d", "terminal_risk__fraud_risk_7d"]
SPLIT_END = datetime(2024, 4, 1)  # the recorded training cutoff: the test part is the 14 days before it
AS_OF = datetime(2024, 5, 1)


def _training_set(spec: Model, seed: int) -> pd.DataFrame:
    """A training set that keeps ``spec``'s contract (every column of training_set_schema, typed, label in
    {0, 1}, unique join key), with events from 2024-01-01 to 2024-04-20: later than the recorded split_end, so
    a test part anchored at the latest event would be other rows."""
    schema = training_set_schema(load_project(REPO), spec)
    rng = np.random.default_rng(seed)
    n = 1500
    seconds = np.sort(rng.integers(0, 110 * 86_400, n))
    columns: dict[str, object] = {}
    for name, column in schema.columns.items():
        dtype = str(column.dtype)
        if name == "event_time":
            columns[name] = pd.Timestamp("2024-01-01") + pd.to_timedelta(seconds, unit="s")
        elif dtype == "int64":
            columns[name] = np.arange(n, dtype="int64")
        elif dtype == "Int64":
            columns[name] = pd.array(rng.integers(0, 20, n), dtype="Int64")
        elif dtype == "boolean":
            columns[name] = pd.array(rng.random(n) < 0.3, dtype="boolean")
        else:
            columns[name] = rng.gamma(2.0, 30.0, n)
    frame = pd.DataFrame(columns)
    risk = 0.03 * frame[SET_FEATURES[0]] + 0.02 * frame[SET_FEATURES[1]] + rng.normal(0, 1.0, n)
    frame["label"] = (risk > np.quantile(risk, 0.85)).astype("int64")
    return frame


@pytest.fixture(scope="module")
def on_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """A registry of model gate_file whose versions name real training sets: v1 (good, champion) and v2 (trained
    on shuffled labels, challenger) the same file, which keeps the contract; v3 (the good model) a file with a
    label of 2 in it."""
    root = tmp_path_factory.mktemp("gate_file")
    spec = load_project(REPO).models["card_fraud"].model_copy(update={"name": "gate_file"})
    frame = _training_set(spec, 3)
    broken = frame.assign(label=frame["label"].where(frame.index != 5, 2))
    sets = {}
    for fingerprint, rows in (("c" * 16, frame), ("b" * 16, broken)):
        path = root / f"{fingerprint}.parquet"
        rows.to_parquet(path, index=False)
        sets[fingerprint] = SimpleNamespace(fingerprint=fingerprint, path=path, as_of=AS_OF, rows=len(rows),
                                            positives=int(frame["label"].sum()))

    def train(labels: np.ndarray) -> TrainedModel:
        model = CatBoostClassifier(iterations=40, depth=3, random_seed=0, thread_count=1, verbose=False,
                                   allow_writing_files=False)
        model.fit(frame[SET_FEATURES], labels)
        return TrainedModel(model=model, feature_columns=SET_FEATURES, cat_features=[], metrics={},
                            baseline_metrics={}, split_end=SPLIT_END)

    good = train(frame["label"].to_numpy())
    worse = train(np.random.default_rng(4).permutation(frame["label"].to_numpy()))
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.delenv("MLFLOW_REGISTRY_URI", raising=False)
        for trained, fingerprint, version in ((good, "c" * 16, "1"), (worse, "c" * 16, "2"), (good, "b" * 16, "3")):
            assert register(trained, spec, sets[fingerprint], uri) == ("gate_file", version)
        yield SimpleNamespace(root=root, spec=spec, frame=frame, good=good, worse=worse)


@pytest.fixture
def file_uri(on_file: SimpleNamespace, tmp_path: Path) -> str:
    """A copy of on_file's registry; aliases: champion v1, challenger v2."""
    shutil.copy(on_file.root / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _alias(uri, on_file.spec.name, registry.CHALLENGER, "2")
    return uri


def _expected_on(trained: TrainedModel, rows: pd.DataFrame) -> float:
    return float(average_precision_score(rows["label"], trained.model.predict_proba(rows[SET_FEATURES])[:, 1]))


def test_the_contract_part_passes_and_the_recorded_test_split_is_scored(on_file: SimpleNamespace,
                                                                         file_uri: str) -> None:
    """With the project and no test frame, the challenger's training set is re-validated ("passed") and its
    test part, the 14 days (split.test_days) before the recorded split_end, is what both versions are scored on:
    the expected values come from those rows selected here by date, not by trellis' split."""
    result = registry.gate(file_uri, on_file.spec, project=load_project(REPO))
    times = on_file.frame["event_time"]
    test = on_file.frame[(times >= SPLIT_END - timedelta(days=14)) & (times < SPLIT_END)]
    assert 150 < len(test) < 250 and test["label"].nunique() == 2
    assert result.contract == "passed"
    assert (result.champion_version, result.challenger_version) == ("1", "2")
    assert result.champion_value == pytest.approx(_expected_on(on_file.good, test), abs=1e-12)
    assert result.challenger_value == pytest.approx(_expected_on(on_file.worse, test), abs=1e-12)
    assert not result.passed and result.reason.endswith("worse than the tolerance 0.01")


def test_a_given_test_frame_is_scored_after_the_contract_part(on_file: SimpleNamespace, file_uri: str) -> None:
    """With the project and a test frame, the contract part still runs, and the given rows are the ones scored."""
    later = on_file.frame[on_file.frame["event_time"] >= SPLIT_END]
    result = registry.gate(file_uri, on_file.spec, later, project=load_project(REPO))
    assert result.contract == "passed"
    assert result.champion_value == pytest.approx(_expected_on(on_file.good, later), abs=1e-12)
    assert result.challenger_value == pytest.approx(_expected_on(on_file.worse, later), abs=1e-12)


def test_a_training_set_that_breaks_its_contract_fails_the_gate(on_file: SimpleNamespace, file_uri: str) -> None:
    """v3 is the champion's own model, so quality alone would pass it; its training set holds a label of 2, so
    the gate fails on the contract, naming the column, the check and the value, and scores nothing."""
    _alias(file_uri, on_file.spec.name, registry.CHALLENGER, "3")
    assert registry.gate(file_uri, on_file.spec, on_file.frame).passed  # quality alone: the same model
    result = registry.gate(file_uri, on_file.spec, on_file.frame, project=load_project(REPO))
    assert result.passed is False
    assert result.contract.startswith("training set gate_file breaks its contract: "
                                      "label: isin([0, 1]) (1 rows, e.g. 2")
    assert result.reason == f"contract: {result.contract}"
    assert (result.champion_value, result.challenger_value) == (None, None)
    assert (result.champion_version, result.challenger_version) == ("1", "3")
