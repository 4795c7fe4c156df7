"""Shared fixtures. The end-to-end fixture copies the project to a temp folder so tests never touch the
working tree's warehouse or Feast registry."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import pytest
from hypothesis import Phase, settings

from trellis.paths import PROJECT_ENV, ProjectPaths

REPO = Path(__file__).resolve().parent.parent


# --- Hypothesis profiles ---------------------------------------------------------------------------------------
# "ci" (the default, and what CI runs): a failing property reports its first failing example instead of shrinking
# it, because shrinking a scenario of dozens of events through DuckDB ran for more than 10 minutes on a one-character
# bug in trellis/timesem.py. Derandomized, so CI runs the same examples every time and a red run is reproducible;
# print_blob prints a @reproduce_failure line to replay the example locally. "dev" (HYPOTHESIS_PROFILE=dev): random
# examples, the example database and full shrinking, for a minimal counterexample while debugging. The deadline
# (looser than Hypothesis' 200 ms; most property tests set deadline=None) only flags a pathologically slow example.
HYPOTHESIS_PROFILE_ENV = "HYPOTHESIS_PROFILE"
_CI_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target)
settings.register_profile("ci", phases=_CI_PHASES, derandomize=True, database=None, print_blob=True,
                          deadline=timedelta(seconds=2))
settings.register_profile("dev", phases=tuple(Phase), print_blob=True, deadline=timedelta(seconds=2))
# Loaded here, at import, so the settings objects test modules build at import (PROPERTY = settings(...)) inherit it.
settings.load_profile(os.environ.get(HYPOTHESIS_PROFILE_ENV) or "ci")


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


# --- The slow marker --------------------------------------------------------------------------------------------
# `pytest -m "not slow"` (make test-fast) is the quick loop. A test that needs the session pipeline, directly or
# through another fixture (served, applied, ...), costs the 1-5 minute build, so it is marked here from its
# fixture closure rather than by hand in each module; tests that are slow for other reasons carry the mark in
# their module. tryfirst: before pytest's own -m deselection reads the marks.
@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "pipeline" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


# --- Services the tests name, and nothing written into the user's home -----------------------------------------
CI_ENV = "CI"


def in_ci() -> bool:
    """Whether this is a CI run (CI=true, as GitHub Actions, GitLab and .ci/run set it)."""
    return os.environ.get(CI_ENV, "").strip().lower() in {"1", "true", "yes"}


def service_missing(name: str, address: str, problem: object, start: str) -> NoReturn:
    """A test needs the service ``name`` at ``address`` and cannot reach it. Under CI that is a failure: a run
    that silently skips its Redis tests would be green without having tested Redis (.ci/run starts the services
    it needs). Locally a skip, saying how to get the service."""
    message = f"{name} is not reachable at {address} ({problem}); start one with `{start}`, or run .ci/run"
    if in_ci():
        pytest.fail(f"{message}. {CI_ENV}=true: a missing service fails the run instead of skipping", pytrace=False)
    pytest.skip(message)


REDIS = "127.0.0.1:6379"  # the Redis these machines run (.ci/run starts one where none is)


def redis_client(address: str = REDIS) -> Any:
    """A client of the Redis at ``address``; if none answers, a failure under CI and a skip otherwise
    (``service_missing``)."""
    import redis

    host, port = address.rsplit(":", 1)
    client = redis.Redis(host=host, port=int(port), socket_connect_timeout=5)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        client.close()
        service_missing("Redis", address, exc, start=f"redis-server --port {port} --save ''")
    return client


# Caches the code under test would keep in the user's home go to a scratch directory of this run instead:
# rendered training-set SQL (trellis.training.SQL_CACHE_ENV, default ~/.cache/trellis/sql; spelled out here because
# importing trellis.training pulls in Ibis, ~3 s) and matplotlib's config and font cache (~/.config/matplotlib,
# ~/.cache/matplotlib). Set at import, before any test module imports matplotlib, and inherited by subprocesses.
SCRATCH_HOME = Path(tempfile.mkdtemp(prefix="trellis-tests-"))
atexit.register(shutil.rmtree, SCRATCH_HOME, ignore_errors=True)
os.environ["TRELLIS_SQL_CACHE"] = str(SCRATCH_HOME / "sql_cache")
os.environ["MPLCONFIGDIR"] = str(SCRATCH_HOME / "matplotlib")


# Variables that point a project's paths elsewhere (trellis.paths.ProjectPaths): `assets.project.paths()` sets them
# for dbt in this process (os.environ.setdefault), so a test that builds a project of its own in tmp_path and
# reads ProjectPaths.of(root) would otherwise be sent to the repository's warehouse.
PATH_VARIABLES = ("TRELLIS_WAREHOUSE", "TRELLIS_DATA_DIR", "TRELLIS_FEATURE_EXPORTS", "DBT_PROFILES_DIR",
                  "TRELLIS_EVENT_LOG", "TRELLIS_DECISION_LOG")


@pytest.fixture
def own_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The test's projects use their own folders, whatever an earlier test left in the environment."""
    for name in PATH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
