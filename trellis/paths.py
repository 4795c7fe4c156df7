"""Where a project keeps its generated and runtime files. One place, so every command agrees."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

SOURCE_PARTS = ("definitions", "dbt_project", "feature_repo")  # what a project is, without its build output
FLAGS_PART = "flags"  # the flags files (trellis.flags), copied with the sources when the project has them
# Variables that point commands at a project's files (dbt_env sets the middle three); a child process meant for
# another project must not inherit them.
PROJECT_ENV = ("TRELLIS_PROJECT", "TRELLIS_DATA_DIR", "TRELLIS_WAREHOUSE", "TRELLIS_FEATURE_EXPORTS",
               "DBT_PROFILES_DIR", "TRELLIS_MLFLOW_URI", "TRELLIS_EVENT_LOG")


def clean_env(pythonpath: str | Path | None = None) -> dict[str, str]:
    """This process's environment without ``PROJECT_ENV`` and with ``pythonpath`` first on ``PYTHONPATH``: for a
    child process to be pointed at another project."""
    env = {k: v for k, v in os.environ.items() if k not in PROJECT_ENV}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


@dataclass(frozen=True)
class ProjectPaths:
    root: Path

    @classmethod
    def of(cls, root: str | Path = ".") -> ProjectPaths:
        return cls(Path(root).resolve())

    @property
    def data(self) -> Path:
        return Path(os.environ.get("TRELLIS_DATA_DIR", self.root / "data")).resolve()

    @property
    def warehouse(self) -> Path:
        """The DuckDB database holding raw sources, staging views and feature tables."""
        return Path(os.environ.get("TRELLIS_WAREHOUSE", self.data / "warehouse.duckdb")).resolve()

    @property
    def event_log(self) -> str:
        """The event log streamed rows are acknowledged into (``trellis.online.eventlog.open_log``): a SQLite
        file by default, ``TRELLIS_EVENT_LOG`` for another file or a ``redis://`` URL."""
        return os.environ.get("TRELLIS_EVENT_LOG") or str(self.data / "event_log.db")

    @property
    def decision_log(self) -> Path:
        """The decision log the scoring service appends to (``trellis.decisionlog``): ``TRELLIS_DECISION_LOG``, or
        ``<data>/decision_log.db``."""
        return Path(os.environ.get("TRELLIS_DECISION_LOG") or self.data / "decision_log.db").resolve()

    @property
    def rollback_log(self) -> Path:
        """The canary rollbacks the guardrails made, one JSON line each (``trellis.guardrails``):
        ``TRELLIS_ROLLBACK_LOG``, or ``<data>/rollbacks.jsonl``."""
        return Path(os.environ.get("TRELLIS_ROLLBACK_LOG") or self.data / "rollbacks.jsonl").resolve()

    @property
    def mlflow_uri(self) -> str:
        """MLflow tracking and registry store: a local SQLite file by default, any MLflow URI via the env."""
        return os.environ.get("TRELLIS_MLFLOW_URI") or f"sqlite:///{self.data / 'mlflow.db'}"

    @property
    def dbt_project(self) -> Path:
        return self.root / "dbt_project"

    @property
    def feature_repo(self) -> Path:
        return self.root / "feature_repo"

    @property
    def feature_exports(self) -> Path:
        """Parquet copies of the feature tables that Feast's offline store reads."""
        return self.feature_repo / "data"

    def dbt_env(self) -> dict[str, str]:
        """Environment for dbt so profiles.yml points at this project's warehouse and export folder."""
        return {
            "TRELLIS_WAREHOUSE": str(self.warehouse),
            "TRELLIS_FEATURE_EXPORTS": str(self.feature_exports),
            "DBT_PROFILES_DIR": str(self.dbt_project),
        }

    def copy_sources(self, dest: str | Path) -> Path:
        """A self-contained copy of the project at ``dest``: definitions, dbt project and Feast repo, without
        build output (dbt targets and logs, Parquet exports, databases, bytecode), and its flags (``flags/``, which
        version serves: a copy without them would serve the alias alone) when it has any."""
        dest = Path(dest)
        for part in SOURCE_PARTS:
            shutil.copytree(self.root / part, dest / part,
                            ignore=shutil.ignore_patterns("target", "logs", "*.parquet", "*.db", "__pycache__"))
        if (self.root / FLAGS_PART).is_dir():
            shutil.copytree(self.root / FLAGS_PART, dest / FLAGS_PART, ignore=shutil.ignore_patterns("*.tmp"))
        return dest
