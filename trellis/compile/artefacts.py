"""What the Dagster code location shows of each feature group's compiled SQL (the SQL, its code version, column
lineage), kept on disk per definitions fingerprint so that a load does not compile anything the previous one did.

Compiling a group (an Ibis expression, its SQL, the lineage sqlglot reads from it) takes about a second per group
and has to happen before Dagster can list a single asset. Its result depends only on the definitions, on Trellis'
compiler (``COMPILER_MODULES``: every Trellis module ``trellis.compile.dbt`` imports, which a test keeps true) and
on the Ibis and sqlglot versions, so the cache file is named by a hash of all three: any change of a definition, of
the compiler's code or of those libraries is a miss, and the miss compiles and rewrites the file. Nothing is ever
read back that another key wrote. ``trellis compile`` does not read this cache (its output is what CI
checks), so a stale cache can never reach a generated file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path

from trellis.spec import Project

_TRELLIS = Path(__file__).resolve().parents[1]
_PREFIX = "compiled-"
# The code a CompiledGroup comes from, relative to the trellis package (a folder: every module in it).
COMPILER_MODULES = ("__init__.py", "compile", "spec.py", "types.py", "timesem.py", "expr.py", "sqlsnippet.py",
                    "errors.py")


@dataclass(frozen=True)
class CompiledGroup:
    sql: str  # DuckDB SQL with each source by its name (what a reader of the asset sees)
    code_version: str  # changes when the compiled SQL does
    lineage: dict[str, list[str]]  # output column -> the source.column names it is computed from


def compile_group(project: Project, group_name: str) -> CompiledGroup:
    from trellis.compile.dbt import FeatureModel

    model = FeatureModel(project, project.feature_groups[group_name])
    return CompiledGroup(
        sql=model.sql({s: s for s in model.sources}),
        code_version=hashlib.sha256(model.raw_sql.encode()).hexdigest()[:12],
        lineage=model.lineage,
    )


@cache
def _code_hash() -> str:
    """The compiler's code and the libraries that shape compiled SQL."""
    digest = hashlib.sha256()
    files = [p for name in COMPILER_MODULES for p in
             (sorted((_TRELLIS / name).glob("*.py")) if (_TRELLIS / name).is_dir() else [_TRELLIS / name])]
    for path in files:
        digest.update(str(path.relative_to(_TRELLIS)).encode())
        digest.update(path.read_bytes())
    for package in ("ibis-framework", "sqlglot"):
        digest.update(f"{package}=={version(package)}".encode())
    return digest.hexdigest()


def cache_key(project: Project) -> str:
    return hashlib.sha256(f"{project.fingerprint()}:{_code_hash()}".encode()).hexdigest()[:24]


def compiled_groups(project: Project, cache_dir: Path | None) -> dict[str, CompiledGroup]:
    """Every feature group's ``CompiledGroup``: read from ``cache_dir`` when this project's key is there, else
    compiled and written there (replacing the files of other keys). ``None``, or a folder that cannot be written,
    just compiles."""
    path = cache_dir / f"{_PREFIX}{cache_key(project)}.json" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            stored = json.loads(path.read_text())
            if set(stored) == set(project.feature_groups):
                return {name: CompiledGroup(**fields) for name, fields in stored.items()}
        except (OSError, ValueError, TypeError):
            pass  # unreadable or from an older layout: compile again and overwrite
    groups = {name: compile_group(project, name) for name in project.feature_groups}
    if path is not None:
        _store(path, {name: asdict(group) for name, group in groups.items()})
    return groups


def _store(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".tmp-", suffix=".json", delete=False) as out:
            json.dump(data, out)  # key order kept: the lineage lists columns in the table's order
        os.replace(out.name, path)  # readers see the old file or the whole new one
        for old in path.parent.glob(f"{_PREFIX}*.json"):
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only data folder: the next load compiles again
