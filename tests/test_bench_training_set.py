"""Smoke test of bench/bench_training_set.py at a tiny size, so the benchmark cannot rot: its data, its
Trellis definitions and Feast repo, both point-in-time joins, and their equality."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow  # runs the training-set benchmark against Feast

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_training_set", REPO / "bench" / "bench_training_set.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_trellis_and_feast_build_the_same_training_set(bench, tmp_path: Path):
    from feast import FeatureStore

    from trellis.compile.dbt import FeatureModel
    from trellis.spec import load_project

    data = bench.generate(tmp_path, entities=40, feature_rows=2_000, spine_rows=500)
    assert data["ties"] > 0  # some events sit exactly on a feature row: feature_ts == event_ts counts
    features = pd.read_parquet(data["features"])
    assert not features.duplicated(["entity_id", "feature_ts"]).any()
    assert len(features) == 2_000 and len(pd.read_parquet(data["spine"])) == 500

    project = load_project(bench.write_project(tmp_path / "project"))
    con = bench.trellis_connection(data)
    # The synthetic feature table is what Trellis compiles from the synthetic source: the definitions the
    # benchmark joins through are honest.
    model = FeatureModel(project, project.feature_groups[bench.GROUP])
    compiled = con.sql(model.sql({bench.SOURCE: f"validated.{bench.SOURCE}"})).df()
    key = ["entity_id", "feature_ts"]
    pd.testing.assert_frame_equal(compiled.sort_values(key).reset_index(drop=True)[features.columns],
                                  features.sort_values(key).reset_index(drop=True), check_dtype=False)

    trellis_frame, _ = bench.trellis_training_frame(con, project)
    store = FeatureStore(repo_path=str(bench.write_feast_repo(tmp_path / "feast_repo", data["features"])))
    feast_frame = bench.feast_training_frame(store, bench.feast_entity_df(data["spine"]))

    # Inclusive on both sides: an event exactly at a feature row's time gets that row.
    ties = trellis_frame.merge(features, left_on=["entity_id", "event_time"], right_on=key)
    assert len(ties) >= data["ties"]
    assert (ties[f"{bench.GROUP}__f0"] == ties["f0"]).all() and (ties[f"{bench.GROUP}__f7"] == ties["f7"]).all()

    check = bench.compare(trellis_frame, feast_frame)
    assert check["rows"] == 500
    assert 0 < check["rows_without_features"] < 500  # events before their entity's first feature row
    assert trellis_frame[bench.OUTPUT_FEATURES].notna().any(axis=None)

    # The comparison is not vacuous: one changed value is caught.
    broken = feast_frame.copy()
    broken.loc[broken[bench.OUTPUT_FEATURES[0]].notna().idxmax(), bench.OUTPUT_FEATURES[0]] += 1.0
    with pytest.raises(AssertionError, match="differs on 1 rows"):
        bench.compare(trellis_frame, broken)
