"""Shared fixtures. The end-to-end fixture copies the project to a temp folder so tests never touch the
working tree's warehouse or Feast registry."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from collections.abc import Callable
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


@pytest.fixture(scope="session")
def built_once(tmp_path_factory: pytest.TempPathFactory):
    """Something several modules' tests start from, built once per test process: ``built_once(name, build)`` runs
    ``build(folder)`` in a new folder the first time ``name`` is asked for and returns what it returned, then the same
    value. Callers copy what they change (the engine tests' projects built on DuckDB, test_engine_postgres)."""
    built: dict[str, Any] = {}

    def once(name: str, build: Callable[[Path], Any]) -> Any:
        if name not in built:
            built[name] = build(tmp_path_factory.mktemp(name))
        return built[name]

    return once


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
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "pipeline" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)
    units = os.environ.get(UNITS_ENV)
    if units and hasattr(config, "workerinput"):  # an xdist worker of a `--dist loadgroup` run
        distribute(items, Path(units) / f"{config.workerinput['workerid']}.json")


# --- Two workers (`make test`: pytest-xdist, -n 2 --dist loadgroup) ------------------------------------------------
# Each worker is a process of its own (its own tmp_path, scratch home and session fixtures); services are shared but
# every test names its own Redis prefix, Feast project or PostgreSQL database. What must not be built twice stays on
# one worker: every module with a test on the session pipeline runs on the worker that builds it (its other tests too:
# they run after the pipeline there, as in a serial run), a test using another session fixture of this file
# (built_once) runs with the others that use it, and a test using a module- or class-scoped fixture runs with the
# rest of its module. Any other test is free to run on either worker. Order of the work: the pipeline first,
# then the slow tests, so that no long unit starts when the other worker has nothing left to do (tests keep their
# order within each of these three parts).
#
# xdist's own loadgroup reads xdist_group marks into the test ids, which pytest 9.2 no longer lets it do; so each
# worker writes the unit of every test it collected to a file (UNITS_ENV names the folder, made by the controller
# before it starts the workers), and the controller's scheduler (UnitScheduling) reads it.
PIPELINE_GROUP = "pipeline"
UNITS_ENV = "TRELLIS_TEST_UNITS"
_SHARED_SCOPES = frozenset({"class", "module", "package"})


def distribute(items: list[pytest.Item], out: Path) -> None:
    """Orders ``items`` by part (pipeline, slow, the rest) and writes each one's unit of work (its group, or itself)
    to ``out`` as JSON {test id: unit}."""
    on_pipeline = {item.module.__name__ for item in items
                   if isinstance(item, pytest.Function) and "pipeline" in item.fixturenames}

    def group(item: pytest.Item) -> str | None:
        module = item.module.__name__ if isinstance(item, pytest.Function) else None
        if module in on_pipeline:
            return PIPELINE_GROUP
        fixtures = {name: defs[-1] for name, defs in
                    getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}).items() if defs}
        ours = sorted(name for name, fixture in fixtures.items()
                      if fixture.scope == "session" and getattr(fixture.func, "__module__", None) == __name__)
        if ours:
            return ours[0]
        if any(fixture.scope in _SHARED_SCOPES for fixture in fixtures.values()):
            return module or item.nodeid.split("::")[0]
        return None

    units: dict[pytest.Item, str] = {}
    rank: dict[str, int] = {}
    for item in items:
        name = group(item)
        unit = units[item] = f"@{name}" if name else item.nodeid
        part = 0 if name == PIPELINE_GROUP else 1 if item.get_closest_marker("slow") else 2
        rank[unit] = min(rank.get(unit, part), part)
    items.sort(key=lambda item: rank[units[item]])  # stable: a module's tests keep their order
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps({item.nodeid: units[item] for item in items}))
    partial.replace(out)


def pytest_configure(config: pytest.Config) -> None:
    """The controller of a `--dist loadgroup` run: the folder the workers write their units to."""
    if getattr(config.option, "dist", "no") == "loadgroup" and not hasattr(config, "workerinput"):
        folder = Path(tempfile.mkdtemp(prefix="trellis-test-units-"))
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
        os.environ[UNITS_ENV] = str(folder)  # before the workers start: they inherit it


@pytest.hookimpl(optionalhook=True)  # an xdist hook: pytest -p no:xdist never calls it
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if getattr(config.option, "dist", "no") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        """xdist's scope scheduling (whole units to one worker, each worker asking for more when it has two tests
        left), with the units the workers wrote, in the order they collected them."""

        units: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.units is None:  # every worker has collected by now: scheduling starts after the last one did
                files = sorted(Path(os.environ[UNITS_ENV]).glob("*.json"))
                self.units = json.loads(files[0].read_text()) if files else {}
            return self.units.get(nodeid, nodeid)

    config.option.loadscopereorder = False  # the workers' order: the pipeline first, then the slow tests
    return UnitScheduling(config, log)


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
