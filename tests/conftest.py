"""Shared fixtures. The end-to-end fixture copies the project to a temp folder so tests never touch the
working tree's warehouse or Feast registry."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from trellis.paths import PROJECT_ENV, ProjectPaths

REPO = Path(__file__).resolve().parent.parent


def copy_project(dest: Path) -> Path:
    """A self-contained copy of the project (definitions, dbt project, Feast repo) without build output."""
    return ProjectPaths.of(REPO).copy_sources(dest)


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory: pytest.TempPathFactory):
    """The whole asset graph materialized once with real Dagster, dbt, DuckDB and Feast on a small
    simulated network. Returns (result, project paths)."""
    root = copy_project(tmp_path_factory.mktemp("pipeline") / "project")
    saved = {k: os.environ.get(k) for k in PROJECT_ENV}
    for key in saved:
        os.environ.pop(key, None)
    os.environ["TRELLIS_PROJECT"] = str(root)
    os.environ["TRELLIS_MLFLOW_URI"] = f"sqlite:///{root / 'data' / 'mlflow.db'}"

    from assets.project import paths
    from assets.run import materialize_all

    run = materialize_all(scale=0.03, n_days=100)
    result = run.result
    result.instance = run.instance  # the sensors' tests read materializations from it
    result.scores, result.score_day = run.scores, run.score_day
    yield result, paths()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def served(pipeline, tmp_path: Path):
    """A copy of the materialized project (definitions, Feast repo with its online store, registry), for
    tests that ingest into the store or move aliases: (root, service settings, the pipeline's paths)."""
    from serving.settings import Settings

    _, paths = pipeline
    root = tmp_path / "project"
    shutil.copytree(paths.root / "definitions", root / "definitions")
    shutil.copytree(paths.feature_repo, root / "feature_repo", ignore=shutil.ignore_patterns("*.parquet"))
    (root / "data").mkdir()
    shutil.copy(paths.data / "mlflow.db", root / "data" / "mlflow.db")
    uri = f"sqlite:///{root / 'data' / 'mlflow.db'}"
    settings = Settings(project=root, model="card_fraud", mlflow_uri=uri, alias_poll_seconds=0)
    return root, settings, paths
