"""Column lineage read from the compiled SQL with sqlglot: each feature column -> source columns."""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.lineage import lineage

from trellis.compile.offline import placeholder


def column_lineage(sql: str, columns: list[str], sources: list[str], dialect: str = "duckdb") -> dict[str, list[str]]:
    """For each output column, the sorted ``source.column`` names it is computed from.

    ``sql`` must still hold the source placeholders (``offline.placeholder``) so tables can be named."""
    by_placeholder = {placeholder(s): s for s in sources}
    tree = sqlglot.parse_one(sql, dialect=dialect)
    out: dict[str, list[str]] = {}
    for column in columns:
        found: set[str] = set()
        for node in lineage(column, tree, dialect=dialect).walk():
            if node.downstream or not isinstance(node.source, exp.Table):
                continue
            table = by_placeholder.get(node.source.name)
            if table is not None:
                found.add(f"{table}.{node.name.split('.')[-1].strip(chr(34))}")
        out[column] = sorted(found)
    return out
