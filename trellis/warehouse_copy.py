"""The command line of the engine loaders (``python -m trellis.warehouse_postgres``, ``trellis.warehouse_spark``):
the project's validated tables, read from its DuckDB warehouse, copied to another engine."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import duckdb

from trellis.spec import Project


def copy_main(prog: str, description: str, argv: list[str] | None,
              copy: Callable[[duckdb.DuckDBPyConnection, Project, Path], dict[str, int]],
              failures: tuple[type[BaseException], ...] = ()) -> int:
    """Parse ``--project``, load its definitions, open its warehouse read-only and ``copy(con, project, root)``
    (rows per table, printed); a definition problem, a missing warehouse or one of ``failures`` is a one-line
    error and exit code 1."""
    warnings.filterwarnings("ignore", message=".*sqlglot.*deprecated.*")  # as the trellis command does
    from trellis.compile.dbt import VALIDATED_SCHEMA
    from trellis.errors import DefinitionError
    from trellis.paths import ProjectPaths
    from trellis.spec import load_project

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--project", type=Path, default=Path("."), help="Project folder (default: .)")
    args = parser.parse_args(argv)
    try:
        project = load_project(args.project)
    except DefinitionError as exc:
        print(f"{len(exc.problems)} problem(s) in the definitions:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    warehouse = ProjectPaths.of(args.project).warehouse
    if not warehouse.exists():
        print(f"error: no warehouse at {warehouse}: run `trellis ingest` first", file=sys.stderr)
        return 1
    con = duckdb.connect(str(warehouse), read_only=True)
    try:
        counts = copy(con, project, args.project)
    except (duckdb.CatalogException, *failures) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
    finally:
        con.close()
    for name, rows in counts.items():
        print(f"{VALIDATED_SCHEMA}.{name}: {rows:,} rows")
    return 0


__all__ = ["copy_main"]
