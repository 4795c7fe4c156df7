"""Parsing SQL snippets (filters, row expressions, request features): the light half of ``trellis.expr``.

Everything here needs only sqlglot, so code that must not pay for importing Ibis (the real-time scoring
path, ``trellis.rowexpr``) parses and names snippets exactly as the offline path does. ``trellis.expr``
re-exports all of it and adds the translation to Ibis.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import sqlglot
from sqlglot import exp

from trellis.errors import did_you_mean


class ExpressionError(ValueError):
    """A snippet that cannot be used; the message names the offending part."""


@dataclass(frozen=True)
class Parsed:
    text: str
    tree: exp.Expression

    @property
    def columns(self) -> list[str]:
        return sorted({c.name for c in self.tree.find_all(exp.Column)})


def _syntax_message(text: str, error: dict) -> str:
    """sqlglot's parse error, without its internals (class names), pointing at the column."""
    description = str(error.get("description", "")).strip()
    near, col = error.get("highlight") or "", error.get("col")
    if description.startswith("Required keyword"):
        description = f"{near!r} is missing an operand" if near else "incomplete expression"
    elif description.startswith("Expecting "):
        description = f"expected {description.removeprefix('Expecting ').strip()!r}"
    elif description.startswith("Invalid expression / Unexpected token"):
        description = f"unexpected {near!r}" if near else "unexpected token"
    where = f" at column {col}" if col else ""
    return f"SQL syntax error in {text!r}{where}: {description}"


@lru_cache(maxsize=4096)
def parse(text: str) -> Parsed:
    if not str(text).strip():
        raise ExpressionError("empty SQL expression")
    try:
        statements = sqlglot.parse(text, dialect="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise ExpressionError(_syntax_message(text, exc.errors[0] if exc.errors else {})) from None
    except sqlglot.errors.TokenError:
        hint = " (unterminated string? close it with ')" if text.count("'") % 2 else ""
        raise ExpressionError(f"SQL syntax error in {text!r}: cannot read it as SQL{hint}") from None
    statements = [s for s in statements if s is not None]
    if len(statements) != 1:
        raise ExpressionError(
            f"expected one SQL expression, got {len(statements)} statements in {text!r} "
            f"(a snippet is a single expression, without ';')"
        )
    tree = statements[0]
    if _is_statement(tree):
        raise ExpressionError(f"expected an expression, not a {tree.key.upper()} statement: {text!r}")
    if tree.find(exp.Query) is not None:
        raise ExpressionError(f"subqueries are not supported in {text!r}; use columns of the row")
    return Parsed(text, tree)


def _is_statement(tree: exp.Expression) -> bool:
    # DROP, ALTER, SET, PRAGMA, ... are not subclasses of exp.DDL; sqlglot keeps them in its ddl module.
    module = type(tree).__module__.rsplit(".", 1)[-1]
    return isinstance(tree, exp.Query | exp.DDL | exp.DML | exp.Command) or module in ("ddl", "dml", "query")


# The vocabulary both translations (Ibis offline, ``trellis.rowexpr`` online) accept.
EXTRACT_PARTS: dict[str, type[exp.Expression]] = {
    "hour": exp.Hour,
    "minute": exp.Minute,
    "day": exp.Day,
    "month": exp.Month,
    "year": exp.Year,
    "dow": exp.DayOfWeek,
    "dayofweek": exp.DayOfWeek,
}
# SQL type name (as sqlglot spells it) -> logical type
CASTS: dict[str, str] = {
    "DOUBLE": "float64",
    "FLOAT": "float64",
    "BIGINT": "int64",
    "INT": "int32",
    "INTEGER": "int32",
    "BOOLEAN": "bool",
    "VARCHAR": "string",
    "TEXT": "string",
    "TIMESTAMP": "timestamp",
    "DATE": "date",
}
SUPPORTED_FUNCTIONS = sorted(
    {
        "dayofweek",
        "hour",
        "minute",
        "day",
        "month",
        "year",
        "abs",
        "ln",
        "sqrt",
        "floor",
        "ceil",
        "exp",
        "coalesce",
        "nullif",
        "greatest",
        "least",
        "round",
        "if",
        "extract",
        "cast",
    }
)
OPERATORS: dict[type[exp.Expression], str] = {
    exp.Add: "+",
    exp.Sub: "-",
    exp.Mul: "*",
    exp.Div: "/",
    exp.Mod: "%",
    exp.EQ: "=",
    exp.NEQ: "<>",
    exp.GT: ">",
    exp.GTE: ">=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.And: "AND",
    exp.Or: "OR",
    exp.Not: "NOT",
    exp.Neg: "unary -",
    exp.In: "IN",
    exp.Between: "BETWEEN",
    exp.Is: "IS",
}


def operator_name(node: exp.Expression) -> str:
    """How an error message names the operator or function of ``node``: '+', hour(), ..."""
    kind = type(node)
    if kind in OPERATORS:
        return repr(OPERATORS[kind])
    if kind is exp.Anonymous:
        return f"{node.name.lower()}()"
    if isinstance(node, exp.Func):
        return f"{node.sql_name().lower().replace('_', '')}()"
    return repr(node.key)


def suggest(name: str, choices: Iterable[str]) -> str:
    """did-you-mean for an unknown name. Knows feature names are qualified ('group__feature'): an author
    who writes 'avg_amount_30d' is pointed at 'customer_spending__avg_amount_30d'."""
    choices = list(choices)
    qualified = sorted(c for c in choices if c.endswith(f"__{name}"))
    if qualified:
        return f" (did you mean {' or '.join(repr(c) for c in qualified[:3])}?)"
    hint = did_you_mean(name, choices)
    if hint:
        return hint
    short = {c.split("__", 1)[1]: c for c in choices if "__" in c}
    match = difflib.get_close_matches(name, list(short), n=1, cutoff=0.75)
    return f" (did you mean {short[match[0]]!r}?)" if match else ""
