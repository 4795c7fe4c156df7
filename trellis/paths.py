"""Where a project keeps its generated and runtime files. One place, so every command agrees."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


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
