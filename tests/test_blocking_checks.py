"""Blocking asset checks stop what is downstream of them, on the real Dagster asset graph (assets.definitions).

A failed blocking check fails its step, and Dagster does not run the assets downstream of it in the same run.
Each test starts from the session pipeline (every asset materialized once, every check passed), copies its
project so nothing the other tests read changes, breaks one thing, and runs the affected assets again:

* ``models/<model>`` ``promotion_gate``: a challenger worse than the champion must not move the champion alias
  (``models/<model>_champion`` is not materialized);
* ``monitoring/<model>_parity`` ``parity_within_1e_9``: an offline feature table that no longer matches the
  online path fails the run, and nothing downstream of the parity asset runs;
* ``features/<group>`` ``pandera_contract``: a feature table that breaks its contract fails the run, and nothing
  downstream of the feature table runs.

Flipping ``blocking=True`` to ``False`` on any of these checks turns its test red.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pytest

MODEL = "card_fraud"
MODEL_KEY = dg.AssetKey(["models", MODEL])
CHAMPION_KEY = dg.AssetKey(["models", f"{MODEL}_champion"])
TRAINING_KEY = dg.AssetKey(["training", f"{MODEL}_training_set"])
PARITY_KEY = dg.AssetKey(["monitoring", f"{MODEL}_parity"])
GATE = dg.AssetCheckKey(MODEL_KEY, "promotion_gate")

pytestmark = pytest.mark.slow  # starts from the session pipeline

# Set by paths() from the project root (dbt_env) or by the pipeline fixture; cleared so the copy sets its own.
_PROJECT_VARS = ("TRELLIS_DATA_DIR", "TRELLIS_WAREHOUSE", "TRELLIS_FEATURE_EXPORTS", "DBT_PROFILES_DIR",
                 "TRELLIS_EVENT_LOG")


@dataclass
class Copy:
    """A copy of the materialized pipeline project, served by the code location (assets.definitions)."""

    root: Path
    defs: dg.Definitions
    instance: dg.DagsterInstance
    mlflow_uri: str
    warehouse: Path

    def asset(self, key: dg.AssetKey) -> dg.AssetsDefinition:
        return next(a for a in self.defs.assets if isinstance(a, dg.AssetsDefinition) and key in a.keys)

    def check(self, key: dg.AssetCheckKey) -> dg.AssetChecksDefinition:
        return next(c for c in self.defs.asset_checks if key in c.check_keys)


def _clear_code_location_caches() -> None:
    """Forget the project the code location serves. The dbt assets' definition stays cached from the pipeline
    (building it traces every feature's column lineage, minutes on a busy machine): the copy's dbt project is
    the same, and no test here runs dbt."""
    from assets.project import paths, trellis_project

    paths.cache_clear()
    trellis_project.cache_clear()


@pytest.fixture
def copied(pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Copy]:
    """The pipeline's project copied (definitions, dbt project, Feast repo, warehouse, registry, training set;
    MLflow's artifacts stay where the registry names them), the code location pointed at it, and a fresh Dagster
    instance holding what a retrain run reads from the pipeline's: the latest training set (at its copied path)
    and the latest evaluation of every contract check the promotion gate requires."""
    from assets.training.assets import contract_check_keys

    result, paths = pipeline
    root = tmp_path / "project"
    shutil.copytree(paths.root, root, ignore=shutil.ignore_patterns("mlartifacts", "*.wal", "__pycache__"))
    for name in _PROJECT_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRELLIS_PROJECT", str(root))
    uri = f"sqlite:///{root / 'data' / 'mlflow.db'}"
    monkeypatch.setenv("TRELLIS_MLFLOW_URI", uri)
    _clear_code_location_caches()
    try:
        from assets.definitions import defs

        instance = dg.DagsterInstance.ephemeral()
        training = result.instance.get_latest_materialization_event(TRAINING_KEY).asset_materialization
        metadata = dict(training.metadata)
        copied = root / Path(metadata["path"].value).relative_to(paths.root)
        assert copied.is_file()
        metadata["path"] = dg.MetadataValue.path(str(copied))
        instance.report_runless_asset_event(dg.AssetMaterialization(asset_key=TRAINING_KEY, metadata=metadata))
        for key in contract_check_keys(MODEL):
            record = result.instance.get_latest_asset_check_evaluation_record(key)
            assert record is not None and record.evaluation is not None and record.evaluation.passed, key
            instance.report_runless_asset_event(record.evaluation)
        yield Copy(root, defs(), instance, uri, root / "data" / "warehouse.duckdb")
    finally:
        monkeypatch.undo()  # before the caches are rebuilt, so they point at the pipeline's project again
        _clear_code_location_caches()
        # Rebuilt now, while the environment is the pipeline's: paths() sets the warehouse variables dbt reads
        # (os.environ.setdefault), and rebuilt lazily inside a later test's CliRunner it would take that test's
        # data dir for every test after it (test_live_views read another project's warehouse).
        from assets.project import paths as code_location_paths

        code_location_paths()


def _materialized(result: dg.ExecuteInProcessResult) -> set[dg.AssetKey]:
    return {e.asset_key for e in result.get_asset_materialization_events()}


def _evaluation(result: dg.ExecuteInProcessResult, key: dg.AssetCheckKey) -> dg.AssetCheckEvaluation:
    (evaluation,) = [e for e in result.get_asset_check_evaluations() if e.asset_check_key == key]
    return evaluation


def test_promotion_gate_and_parity_checks_are_declared_blocking(copied: Copy) -> None:
    """The checks that guard a promotion and the online path, and the feature tables' contracts."""
    specs = {spec.key: spec for d in [*copied.defs.assets, *copied.defs.asset_checks]
             if isinstance(d, dg.AssetsDefinition | dg.AssetChecksDefinition) for spec in d.check_specs}
    from assets.monitoring.assets import PARITY_CHECK

    assert specs[GATE].blocking
    assert specs[dg.AssetCheckKey(PARITY_KEY, PARITY_CHECK)].blocking
    contracts = [key for key in specs if key.name == "pandera_contract"]
    assert contracts and all(specs[key].blocking for key in contracts)


def test_a_worse_challenger_fails_the_gate_and_the_champion_alias_stays(copied: Copy) -> None:
    """A retrain run (model, gate, champion step) with a crippled CatBoost configuration (one tree of depth
    1): the challenger is registered, the gate fails on quality alone (every upstream contract passed), and the
    champion step does not run, so the alias stays on the champion."""
    from trellis.registry import CHALLENGER, CHAMPION, alias_version

    definition = copied.root / "definitions" / "models" / f"{MODEL}.yaml"
    text = definition.read_text()
    crippled = text.replace("iterations: 300", "iterations: 1").replace("depth: 6", "depth: 1")
    assert crippled != text
    definition.write_text(crippled)
    _clear_code_location_caches()  # the code location reads the edited definition
    from assets.definitions import defs

    copied.defs = defs()
    champion = alias_version(copied.mlflow_uri, MODEL, CHAMPION)
    assert champion == "1"

    result = dg.materialize([copied.asset(MODEL_KEY), copied.check(GATE), copied.asset(CHAMPION_KEY)],
                            instance=copied.instance, resources=copied.defs.resources, raise_on_error=False)

    assert alias_version(copied.mlflow_uri, MODEL, CHALLENGER) == "2"  # the new version was registered...
    assert alias_version(copied.mlflow_uri, MODEL, CHAMPION) == champion  # ...and did not become the champion
    assert MODEL_KEY in _materialized(result) and CHAMPION_KEY not in _materialized(result)
    gate = _evaluation(result, GATE)
    reason = gate.metadata["reason"].value
    assert not gate.passed, reason
    assert "worse than the tolerance" in reason, reason
    assert gate.metadata["upstream_checks"].value["failed"] == []
    assert not result.success  # the failed blocking check failed the model's step


def test_the_gate_judges_institution_and_amount_band_from_the_warehouse(copied: Copy) -> None:
    """The challenger's training set holds neither the institution (raw.customers) nor the amount: the gate reads
    them from the warehouse (attach_segments), so both segments are judged in the pipeline, not listed as not
    measured. A bound no segment can meet (every group's alert rate equal) makes each judged segment fail by name;
    the groups are small at this scale, so every group is judged."""
    from trellis.registry import CHAMPION, alias_version

    definition = copied.root / "definitions" / "models" / f"{MODEL}.yaml"
    text = definition.read_text()
    strict = (text.replace("min_rows: 1000", "min_rows: 1").replace("min_positives: 50", "min_positives: 1")
              .replace("min_ratio: {recall: 0.7}", "min_ratio: {alert_rate: 1.0}")
              .replace("edges: [0, 25, 50, 100, 220], min_ratio: {}", "edges: [0, 25, 50, 100, 220]"))
    assert strict.count("min_ratio") == text.count("min_ratio") - 1
    definition.write_text(strict)
    _clear_code_location_caches()  # the code location reads the edited definition
    from assets.definitions import defs

    copied.defs = defs()
    result = dg.materialize([copied.asset(MODEL_KEY), copied.check(GATE), copied.asset(CHAMPION_KEY)],
                            instance=copied.instance, resources=copied.defs.resources, raise_on_error=False)

    gate = _evaluation(result, GATE)
    fairness = gate.metadata["fairness"].value
    assert not gate.passed and alias_version(copied.mlflow_uri, MODEL, CHAMPION) == "1"
    assert fairness.startswith("failed: "), fairness
    assert "segment 'institution' alert_rate ratio " in fairness, fairness
    assert "segment 'amount_band' alert_rate ratio " in fairness, fairness
    assert "not measured" not in fairness, fairness
    assert "fairness failed: " in gate.metadata["reason"].value


def test_a_parity_break_fails_the_run_and_stops_what_is_downstream(copied: Copy) -> None:
    """The offline feature table no longer matches what the online path computes (a count shifted by one on the
    replayed day): the parity check fails, the run fails, and an asset downstream of monitoring/<model>_parity
    (the graph has none yet; a stand-in here) is not materialized."""
    from assets.monitoring.assets import PARITY_CHECK
    from assets.resources import Warehouse

    con = duckdb.connect(str(copied.warehouse))
    try:
        day = con.sql("select cast(max(tx_datetime) as date) from validated.transactions").fetchone()[0]
        con.execute("update features.feat_customer_spending set tx_count_1d = tx_count_1d + 1 "
                    "where feature_ts >= ?", [day])
        shifted = con.sql("select count(*) from features.feat_customer_spending where feature_ts >= ?",
                          params=[day]).fetchone()[0]
    finally:
        con.close()
    assert shifted > 0

    @dg.asset(key=["monitoring", "after_parity"], deps=[PARITY_KEY])
    def downstream() -> None:
        """Anything that must only run on a model whose online and offline values agree."""

    resources = {**copied.defs.resources, "warehouse": Warehouse(path=str(copied.warehouse))}
    result = dg.materialize([copied.asset(PARITY_KEY), downstream], instance=copied.instance, resources=resources,
                            raise_on_error=False)

    check = _evaluation(result, dg.AssetCheckKey(PARITY_KEY, PARITY_CHECK))
    assert not check.passed
    below = check.metadata["features_below_100pct"].value
    assert any(name.endswith("tx_count_1d") for name in below), below
    assert PARITY_KEY in _materialized(result)  # the report is kept for whoever investigates...
    assert downstream.key not in _materialized(result)  # ...but nothing downstream runs
    assert not result.success


def test_a_failed_feature_contract_stops_what_is_downstream(copied: Copy) -> None:
    """A feature table materialized in breach of its Pandera contract (a count below zero): the blocking
    ``pandera_contract`` check of features/<group> (the code location's own) fails, the run fails, and an asset
    downstream of the feature table is not materialized. The feature asset and the downstream one are
    stand-ins: the first writes the broken table instead of running dbt (which would build a correct one), the
    second does nothing, so that only the check can stop it."""
    group = "customer_spending"
    feature_key = dg.AssetKey(["features", group])
    contract_key = dg.AssetCheckKey(feature_key, "pandera_contract")
    warehouse = copied.warehouse

    @dg.asset(key=feature_key)
    def broken_feature_table() -> None:
        con = duckdb.connect(str(warehouse))
        try:
            con.execute(f"update features.feat_{group} set tx_count_1d = -1 "
                        f"where rowid = (select min(rowid) from features.feat_{group})")
        finally:
            con.close()

    @dg.asset(key=["training", "after_features"], deps=[feature_key])
    def downstream() -> None:
        """Anything that reads the feature table (a training set, the online materialization)."""

    from assets.resources import Warehouse

    resources = {**copied.defs.resources, "warehouse": Warehouse(path=str(warehouse))}
    result = dg.materialize([broken_feature_table, copied.check(contract_key), downstream],
                            instance=copied.instance, resources=resources, raise_on_error=False)

    check = _evaluation(result, contract_key)
    assert not check.passed
    failures = check.metadata["failures"].value
    assert any(name.startswith("tx_count_1d: greater_than_or_equal_to(0)") for name in failures), failures
    assert feature_key in _materialized(result)
    assert downstream.key not in _materialized(result)
    assert not result.success
