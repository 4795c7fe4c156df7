"""Column lineage read from the compiled SQL with sqlglot: each feature column -> source columns."""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.lineage import to_node
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import build_scope

from trellis.compile.offline import placeholder


def column_lineage(sql: str, columns: list[str], sources: list[str], dialect: str = "duckdb") -> dict[str, list[str]]:
    """For each output column, the sorted ``source.column`` names it is computed from.

    ``sql`` must still hold the source placeholders (``offline.placeholder``) so tables can be named.

    What ``sqlglot.lineage.lineage(column, sql)`` gives column by column, computed for all columns together: that
    function qualifies (and deep-copies) the whole query for every column, and copies each SELECT it passes through
    once per column again, which for a group of 50 features over a query of a few thousand nodes took minutes and
    gigabytes. Here the query is qualified and scoped once and each column walks that one scope (the walk reads it,
    never changes it). ``trim_selects`` only shortens the SELECT shown on an inner node, never which tables the
    leaves name, so it is off. Each column keeps its own node cache, as in ``lineage``: sqlglot caches a UNION's
    column as the node that first reached it, which, shared, could hand one column's inputs to the next."""
    by_placeholder = {placeholder(s): s for s in sources}
    tree = qualify(sqlglot.parse_one(sql, dialect=dialect), dialect=dialect, validate_qualify_columns=False,
                   identify=False)
    scope = build_scope(tree)
    if scope is None:
        raise SqlglotError("Cannot build lineage, sql must be SELECT")
    selected = {select.alias_or_name for select in scope.expression.selects}
    out: dict[str, list[str]] = {}
    for column in columns:
        name = normalize_identifiers(column, dialect=dialect).name
        if name not in selected:
            raise SqlglotError(f"Cannot find column '{name}' in query.")
        found: set[str] = set()
        for node in to_node(name, scope, dialect, trim_selects=False, _cache={}).walk():
            if node.downstream or not isinstance(node.source, exp.Table):
                continue
            table = by_placeholder.get(node.source.name)
            if table is not None:
                found.add(f"{table}.{node.name.split('.')[-1].strip(chr(34))}")
        out[column] = sorted(found)
    return out
