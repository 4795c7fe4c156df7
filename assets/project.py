"""Which Trellis project this code location serves, and its compiled definitions (loaded once)."""

from __future__ import annotations

import os
import shutil
import sys
from functools import cache
from pathlib import Path

from trellis.paths import ProjectPaths
from trellis.spec import Project, load_project


def project_root() -> Path:
    return Path(os.environ.get("TRELLIS_PROJECT", Path(__file__).resolve().parent.parent)).resolve()


@cache
def trellis_project() -> Project:
    return load_project(project_root())


@cache
def paths() -> ProjectPaths:
    found = ProjectPaths.of(project_root())
    for key, value in found.dbt_env().items():
        os.environ.setdefault(key, value)  # dbt reads the warehouse path from the environment
    if shutil.which("dbt") is None:  # dagster-dbt looks dbt up on PATH; use the one beside this Python
        os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    found.data.mkdir(parents=True, exist_ok=True)
    found.feature_exports.mkdir(parents=True, exist_ok=True)
    return found
