"""Model registry: the promotion gate, promote / rollback of the champion alias with recorded history, and the
`trellis models` commands, on a real MLflow SQLite registry with real CatBoost models."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from click.testing import CliRunner
from test_modeling import small_world

from trellis import registry
from trellis.cli import main
from trellis.evaluation import held_out, log_to_mlflow
from trellis.modeling import evaluate, register, time_split, train_catboost
from trellis.paths import ProjectPaths
from trellis.training import read_training_set

pytestmark = pytest.mark.slow  # every test builds and registers CatBoost models on the small world (about 10 s each)

NAME = "card_fraud"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    world = small_world(tmp_path_factory.mktemp("registry"), iterations=60, name=NAME)
    world.con.close()
    project, training_set, model = world.project, world.training_set, world.model
    frame = read_training_set(training_set.path)
    columns = training_set.feature_columns
    good = train_catboost(frame, model, columns)
    # A deliberately worse challenger: the same features trained on shuffled labels.
    shuffled = frame.assign(label=np.random.default_rng(0).permutation(frame["label"].to_numpy()))
    worse = train_catboost(shuffled, model, columns)
    _, _, test = time_split(frame, model.split, "event_time")
    return SimpleNamespace(project=project, training_set=training_set, frame=frame, model=model, good=good,
                           worse=worse, test=test, columns=columns)


@pytest.fixture
def uri(world, tmp_path, monkeypatch) -> str:
    """A registry holding v1 (good, champion) and v2 (worse, challenger)."""
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert register(world.good, world.model, world.training_set, uri) == (NAME, "1")
    assert register(world.worse, world.model, world.training_set, uri) == (NAME, "2")
    return uri


def _champion(uri: str) -> str:
    from mlflow import MlflowClient

    return str(MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(NAME, "champion").version)


def test_default_tracking_uri(tmp_path, monkeypatch):
    monkeypatch.delenv("TRELLIS_MLFLOW_URI", raising=False)
    monkeypatch.delenv("TRELLIS_DATA_DIR", raising=False)
    paths = ProjectPaths.of(tmp_path)
    assert paths.mlflow_uri == f"sqlite:///{tmp_path.resolve() / 'data' / 'mlflow.db'}"
    monkeypatch.setenv("TRELLIS_MLFLOW_URI", "http://127.0.0.1:5000")
    assert paths.mlflow_uri == "http://127.0.0.1:5000"
    monkeypatch.setenv("TRELLIS_MLFLOW_URI", "")
    assert paths.mlflow_uri.startswith("sqlite:///")


def test_list_versions(world, uri):
    rows = registry.list_versions(uri, NAME)
    assert [r["version"] for r in rows] == ["1", "2"]
    assert rows[0]["aliases"] == ["champion"] and rows[1]["aliases"] == ["challenger"]
    assert rows[0]["fingerprint"] == world.training_set.fingerprint
    assert rows[0]["created"].endswith("+00:00")
    # Held-out metrics appear once the version has been evaluated (trellis.evaluation logs them to its run).
    assert "test_roc_auc" not in rows[0]["metrics"]
    info = registry.version_info(uri, NAME, "1")
    report = held_out(world.frame, world.model, registry.load_version(uri, NAME, "1"), end=info.split_end)
    log_to_mlflow(uri, info.run_id, report)
    rows = registry.list_versions(uri, NAME)
    assert rows[0]["metrics"]["test_roc_auc"] == pytest.approx(report.model["roc_auc"])
    assert rows[0]["metrics"]["lift_test_average_precision"] == pytest.approx(
        report.model["average_precision"] - report.baseline["average_precision"])
    assert "test_roc_auc" not in rows[1]["metrics"]
    with pytest.raises(registry.RegistryError, match="unknown registered model 'nope'"):
        registry.list_versions(uri, "nope")


def test_gate_blocks_a_worse_challenger_and_passes_an_equal_one(world, uri):
    result = registry.gate(uri, world.model, world.test, world.columns)
    assert not result.passed
    assert (result.champion_version, result.challenger_version) == ("1", "2")
    assert result.metric == world.model.gates.metric and result.max_drop == world.model.gates.max_drop
    assert result.challenger_value < result.champion_value - result.max_drop
    assert "worse than the tolerance" in result.reason
    # The gate scored the champion (the good model) on the test frame.
    good = evaluate(world.test["label"].astype(int), world.good.predict(world.test))[result.metric]
    assert result.champion_value == pytest.approx(good)
    # (The worse model's own reported test metric is on shuffled labels; the gate uses the real ones.)
    real = evaluate(world.test["label"].astype(int), world.worse.predict(world.test))[result.metric]
    assert result.challenger_value == pytest.approx(real)

    # A wide enough tolerance lets the same challenger through.
    lenient = world.model.model_copy(update={"gates": world.model.gates.model_copy(update={"max_drop": 1.0})})
    assert registry.gate(uri, lenient, world.test, world.columns).passed

    # An equally good challenger (v3, the same model as the champion) passes; feature columns default to the
    # model's own feature names.
    assert register(world.good, world.model, world.training_set, uri)[1] == "3"
    equal = registry.gate(uri, world.model, world.test)
    assert equal.passed and equal.challenger_version == "3"
    assert equal.challenger_value == pytest.approx(equal.champion_value)
    assert "within the tolerance" in equal.reason


def test_gate_with_the_project_checks_the_training_set_contract_and_uses_its_test_part(world, uri):
    explicit = registry.gate(uri, world.model, world.test, world.columns)
    derived = registry.gate(uri, world.model, project=world.project)
    assert explicit.contract == "not checked" and derived.contract == "passed"
    assert not derived.passed and derived.challenger_version == "2"
    # The test frame defaults to the test part of the challenger's own training set (its recorded split).
    assert (derived.champion_value, derived.challenger_value) == pytest.approx(
        (explicit.champion_value, explicit.challenger_value))
    with pytest.raises(ValueError, match="pass the test frame"):
        registry.gate(uri, world.model)


def test_gate_without_champion_or_with_challenger_as_champion(world, uri):
    from mlflow import MlflowClient

    registry.promote(uri, NAME, "2", who="t", why="test")
    same = registry.gate(uri, world.model, world.test, world.columns)
    assert same.passed and "is the champion" in same.reason
    MlflowClient(tracking_uri=uri, registry_uri=uri).delete_registered_model_alias(NAME, "champion")
    none = registry.gate(uri, world.model, world.test, world.columns)
    assert none.passed and none.reason == "no champion yet" and none.champion_value is None


def test_promote_records_history_and_rollback_restores_the_previous_champion(world, uri, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    assert _champion(uri) == "1"
    with pytest.raises(registry.RegistryError, match="no previous champion"):
        registry.rollback(uri, NAME, who="alice", why="nothing to undo")

    event = registry.promote(uri, NAME, 2, who="alice", why="weekly retrain")
    assert _champion(uri) == "2"
    assert {k: event[k] for k in ("action", "who", "why", "from", "to")} == {
        "action": "promote", "who": "alice", "why": "weekly retrain", "from": "1", "to": "2"}
    assert event["when"].endswith("+00:00")

    back = registry.rollback(uri, NAME, who="bob", why="precision dropped in production")
    assert _champion(uri) == "1"
    assert (back["action"], back["from"], back["to"], back["who"]) == ("rollback", "2", "1", "bob")
    events = registry.history(uri, NAME)
    assert [(e["action"], e["from"], e["to"]) for e in events] == [("promote", "1", "2"), ("rollback", "2", "1")]
    tag = MlflowClient(tracking_uri=uri, registry_uri=uri).get_registered_model(NAME).tags[registry.HISTORY_TAG]
    assert json.loads(tag) == events

    # Any reader resolving the alias now gets version 1's model.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        loaded = mlflow.catboost.load_model(f"models:/{NAME}@champion")
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    x = world.good.features(world.frame)
    np.testing.assert_array_equal(loaded.predict_proba(x)[:, 1], world.good.predict(world.frame))

    # Rollback is a stack: 1 -> 2 -> 3, then two rollbacks go 3 -> 2 -> 1, and a third has nothing left.
    assert register(world.good, world.model, world.training_set, uri)[1] == "3"
    registry.promote(uri, NAME, "2", who="a", why="")
    registry.promote(uri, NAME, "3", who="a", why="")
    assert registry.rollback(uri, NAME, who="a")["to"] == "2"
    assert registry.rollback(uri, NAME, who="a")["to"] == "1"
    assert _champion(uri) == "1"
    with pytest.raises(registry.RegistryError, match="no previous champion"):
        registry.rollback(uri, NAME, who="a")


def test_promote_unknown_model_or_version(uri):
    with pytest.raises(registry.RegistryError, match="has no version '9'"):
        registry.promote(uri, NAME, "9", who="a", why="")
    with pytest.raises(registry.RegistryError, match="unknown registered model"):
        registry.promote(uri, "nope", "1", who="a", why="")
    assert _champion(uri) == "1"


def test_cli_list_promote_rollback(world, uri, tmp_path, monkeypatch):
    monkeypatch.setenv("USER", "carol")
    runner = CliRunner()
    common = ["--project", str(tmp_path), "--tracking-uri", uri]
    info = registry.version_info(uri, NAME, "1")  # v1 evaluated on its held-out period, v2 not yet
    log_to_mlflow(uri, info.run_id, held_out(world.frame, world.model, world.good.model, end=info.split_end))

    listed = runner.invoke(main, ["models", "list", NAME, *common])
    assert listed.exit_code == 0, listed.output
    lines = listed.output.strip().splitlines()
    assert lines[0].startswith(f"{NAME} v1  [champion]") and "test_roc_auc=" in lines[0]
    assert lines[1].startswith(f"{NAME} v2  [challenger]") and "test_roc_auc=" not in lines[1]
    assert "validation_average_precision=" in lines[1]

    promoted = runner.invoke(main, ["models", "promote", NAME, "2", *common, "--why", "better recall"])
    assert promoted.exit_code == 0, promoted.output
    assert "champion v1 -> v2 by carol" in promoted.output and _champion(uri) == "2"

    rolled = runner.invoke(main, ["models", "rollback", NAME, *common, "--why", "incident 42"])
    assert rolled.exit_code == 0, rolled.output
    assert "rolled back v2 -> v1 by carol" in rolled.output and _champion(uri) == "1"
    last = registry.history(uri, NAME)[-1]
    assert (last["who"], last["why"], last["action"]) == ("carol", "incident 42", "rollback")

    for args, message in ((["promote", NAME, "7"], "has no version '7'"),
                          (["list", "nope"], "unknown registered model 'nope'"),
                          (["rollback", NAME], "no previous champion")):
        bad = runner.invoke(main, ["models", *args, *common])
        assert bad.exit_code == 1 and message in bad.output and "Traceback" not in bad.output
        assert bad.exception is None or isinstance(bad.exception, SystemExit)

    missing = tmp_path / "elsewhere" / "mlflow.db"
    nowhere = runner.invoke(main, ["models", "list", NAME, "--tracking-uri", f"sqlite:///{missing}"])
    assert nowhere.exit_code == 1 and "no MLflow registry at" in nowhere.output
    assert not missing.exists()  # the lookup does not create an empty store


def test_a_version_names_its_feature_service_training_set_description_and_run(world, uri, tmp_path):
    """What a user of MLflow expects of a version: the Feast feature service its tag names exists once the
    generated repo is applied, its run has the training set as input (the fingerprint as digest), the run's
    name is readable and the version has a description."""
    import shutil
    import subprocess
    import sys

    from feast import FeatureStore
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version(NAME, "2")
    repo = tmp_path / "feature_repo"
    (repo / "data").mkdir(parents=True)
    for name in ("features.py", "feature_store.yaml", ".feastignore"):  # the checked-in, generated repo
        shutil.copy(REPO / "feature_repo" / name, repo / name)
    applied = subprocess.run([str(Path(sys.executable).parent / "feast"), "-c", str(repo), "apply"],
                             capture_output=True, text=True, check=False)
    assert applied.returncode == 0, applied.stderr[-2000:]
    service = FeatureStore(repo_path=str(repo)).get_feature_service(version.tags["trellis.feature_service"])
    stored, _ = world.project.model_inputs(world.model)
    assert ({(p.name, f.name) for p in service.feature_view_projections for f in p.features}
            == {(f.group, f.name) for f in stored})

    run = client.get_run(version.run_id)
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.digest == world.training_set.fingerprint
    assert str(Path(world.training_set.path).resolve()) in dataset.dataset.source
    assert {t.key: t.value for t in dataset.tags} == {
        "mlflow.data.context": "training", "trellis.training_fingerprint": world.training_set.fingerprint}
    assert "label" in dataset.dataset.schema

    as_of = f"{world.training_set.as_of:%Y-%m-%d %H:%M}"
    assert run.info.run_name == f"{NAME} as of {as_of} ({world.training_set.fingerprint[:8]}) v2"
    assert version.description.startswith(f"{NAME} v2: CatBoost")
    for fact in (world.training_set.fingerprint, "train period (UTC)", "| average_precision |",
                 f"`{service.name}`"):
        assert fact in version.description
