"""SQL snippets in definitions (filters, row expressions, request features), parsed once with sqlglot
and translated to Ibis.

Authors write DuckDB-flavoured SQL. Translating the parsed tree into Ibis (instead of pasting the text
into a query) is what lets the same definition compile to every engine Ibis targets, and it gives a real
type check at load time: an unknown column, an unsupported function or ``tx_amount + 'abc'`` fails here,
with the offending name, before any pipeline runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

import ibis
import ibis.expr.types as ir
import sqlglot
from sqlglot import exp

from trellis.errors import did_you_mean
from trellis.types import mapping


class ExpressionError(ValueError):
    """A snippet that cannot be used; the message names the offending part."""


@dataclass(frozen=True)
class Parsed:
    text: str
    tree: exp.Expression

    @property
    def columns(self) -> list[str]:
        return sorted({c.name for c in self.tree.find_all(exp.Column)})


@lru_cache(maxsize=4096)
def parse(text: str) -> Parsed:
    try:
        statements = sqlglot.parse(text, dialect="duckdb")
    except sqlglot.errors.ParseError as exc:
        first = exc.errors[0] if exc.errors else {}
        raise ExpressionError(f"SQL syntax error in {text!r}: {first.get('description', exc)}") from None
    statements = [s for s in statements if s is not None]
    if len(statements) != 1:
        raise ExpressionError(f"expected one SQL expression, got {len(statements)} statements in {text!r}")
    tree = statements[0]
    if isinstance(tree, exp.Query | exp.DDL | exp.DML | exp.Command):
        raise ExpressionError(f"expected an expression, not a {tree.key.upper()} statement: {text!r}")
    return Parsed(text, tree)


# DuckDB semantics for the date parts authors use most; ibis spells them differently.
def _day_of_week(x: ir.TimestampValue) -> ir.IntegerValue:
    return ((x.day_of_week.index() + 1) % 7).cast("int64")  # DuckDB: Sunday = 0


_UNARY: dict[type[exp.Expression], Callable[[ir.Value], ir.Value]] = {
    exp.DayOfWeek: _day_of_week,
    exp.Hour: lambda x: x.hour().cast("int64"),
    exp.Minute: lambda x: x.minute().cast("int64"),
    exp.Day: lambda x: x.day().cast("int64"),
    exp.Month: lambda x: x.month().cast("int64"),
    exp.Year: lambda x: x.year().cast("int64"),
    exp.Abs: lambda x: x.abs(),
    exp.Ln: lambda x: x.ln(),
    exp.Sqrt: lambda x: x.sqrt(),
    exp.Floor: lambda x: x.floor(),
    exp.Ceil: lambda x: x.ceil(),
    exp.Exp: lambda x: x.exp(),
    exp.Neg: lambda x: -x,
    exp.Not: lambda x: ~x,
    exp.Paren: lambda x: x,
}
_BINARY: dict[type[exp.Expression], Callable[[ir.Value, ir.Value], ir.Value]] = {
    exp.Add: lambda a, b: a + b,
    exp.Sub: lambda a, b: a - b,
    exp.Mul: lambda a, b: a * b,
    exp.Div: lambda a, b: a / b,
    exp.Mod: lambda a, b: a % b,
    exp.EQ: lambda a, b: a == b,
    exp.NEQ: lambda a, b: a != b,
    exp.GT: lambda a, b: a > b,
    exp.GTE: lambda a, b: a >= b,
    exp.LT: lambda a, b: a < b,
    exp.LTE: lambda a, b: a <= b,
    exp.And: lambda a, b: a & b,
    exp.Or: lambda a, b: a | b,
}
_EXTRACT_PARTS = {"hour": exp.Hour, "minute": exp.Minute, "day": exp.Day, "month": exp.Month,
                  "year": exp.Year, "dow": exp.DayOfWeek, "dayofweek": exp.DayOfWeek}
_CASTS = {"DOUBLE": "float64", "FLOAT": "float64", "BIGINT": "int64", "INT": "int32", "INTEGER": "int32",
          "BOOLEAN": "bool", "VARCHAR": "string", "TEXT": "string", "TIMESTAMP": "timestamp", "DATE": "date"}
SUPPORTED_FUNCTIONS = sorted(
    {"dayofweek", "hour", "minute", "day", "month", "year", "abs", "ln", "sqrt", "floor", "ceil", "exp",
     "coalesce", "nullif", "greatest", "least", "round", "if", "extract", "cast"}
)


def to_ibis(parsed: Parsed, columns: Mapping[str, ir.Value]) -> ir.Value:
    """Translate a parsed snippet into an Ibis value over ``columns`` (name -> Ibis column)."""

    def lit(node: exp.Literal) -> ir.Value:
        if node.is_string:
            return ibis.literal(node.this)
        text = node.this
        return ibis.literal(float(text)) if any(ch in text for ch in ".eE") else ibis.literal(int(text))

    def go(node: exp.Expression) -> ir.Value:
        kind = type(node)
        if kind is exp.Column:
            name = node.name
            if name not in columns:
                raise ExpressionError(f"unknown column {name!r}{did_you_mean(name, columns)}")
            return columns[name]
        if kind is exp.Literal:
            return lit(node)
        if kind is exp.Boolean:
            return ibis.literal(bool(node.this))
        if kind is exp.Null:
            return ibis.null()
        if kind in _UNARY:
            return _UNARY[kind](go(node.this))
        if kind in _BINARY:
            return _BINARY[kind](go(node.this), go(node.expression))
        if kind is exp.Extract:
            part = node.this.name.lower()
            if part not in _EXTRACT_PARTS:
                raise ExpressionError(f"extract({part}) is not supported; use one of {sorted(_EXTRACT_PARTS)}")
            return _UNARY[_EXTRACT_PARTS[part]](go(node.expression))
        if kind is exp.In:
            return go(node.this).isin([go(e) for e in node.expressions])
        if kind is exp.Between:
            return go(node.this).between(go(node.args["low"]), go(node.args["high"]))
        if kind is exp.Is:
            if not isinstance(node.expression, exp.Null):
                raise ExpressionError("only 'IS NULL' / 'IS NOT NULL' are supported")
            return go(node.this).isnull()
        if kind is exp.Coalesce:
            return ibis.coalesce(go(node.this), *[go(e) for e in node.expressions])
        if kind is exp.Nullif:
            return go(node.this).nullif(go(node.expression))
        if kind in (exp.Greatest, exp.Least):
            fn = ibis.greatest if kind is exp.Greatest else ibis.least
            return fn(go(node.this), *[go(e) for e in node.expressions])
        if kind is exp.Round:
            decimals = node.args.get("decimals")
            return go(node.this).round(int(decimals.this) if decimals is not None else 0)
        if kind is exp.If:
            false = node.args.get("false")
            return ibis.ifelse(go(node.this), go(node.args["true"]), go(false) if false else ibis.null())
        if kind is exp.Case:
            if node.this is not None:
                raise ExpressionError("use 'CASE WHEN cond THEN …' (searched CASE), not 'CASE x WHEN …'")
            builder = ibis.cases(*[(go(branch.this), go(branch.args["true"])) for branch in node.args["ifs"]],
                                 else_=go(node.args["default"]) if node.args.get("default") else None)
            return builder
        if kind in (exp.Cast, exp.TryCast):
            target = node.to.this.name
            if target not in _CASTS:
                raise ExpressionError(f"cast to {target} is not supported; use one of {sorted(_CASTS)}")
            return go(node.this).cast(mapping(_CASTS[target]).ibis)
        name = node.sql_name() if kind is not exp.Anonymous else node.name
        raise ExpressionError(
            f"unsupported function or operator {name.lower()!r}"
            f"{did_you_mean(name.lower(), SUPPORTED_FUNCTIONS)}; supported functions: {', '.join(SUPPORTED_FUNCTIONS)}"
        )

    try:
        return go(parsed.tree)
    except ExpressionError:
        raise
    except (TypeError, AttributeError, NotImplementedError, ibis.common.exceptions.IbisTypeError) as exc:
        raise ExpressionError(f"type error in {parsed.text!r}: {exc}") from None


def check(text: str, column_types: Mapping[str, str], expect: str | None = None) -> str:
    """Validate a snippet against typed columns; return its logical result type.

    ``expect='bool'`` for filters, ``'numeric'`` for aggregation inputs."""
    table = ibis.table({name: mapping(t).ibis for name, t in column_types.items()}, name="check")
    value = to_ibis(parse(text), {name: table[name] for name in column_types})
    dtype = value.type()
    if expect == "bool" and not dtype.is_boolean():
        raise ExpressionError(f"{text!r} must be a boolean condition, but it is {dtype}")
    if expect == "numeric" and not (dtype.is_numeric() or dtype.is_boolean()):
        raise ExpressionError(f"{text!r} must be numeric, but it is {dtype}")
    return logical_type(dtype)


def logical_type(dtype: ibis.expr.datatypes.DataType) -> str:
    if dtype.is_boolean():
        return "bool"
    if dtype.is_integer():
        return "int64"
    if dtype.is_floating() or dtype.is_decimal():
        return "float64"
    if dtype.is_timestamp():
        return "timestamp"
    if dtype.is_date():
        return "date"
    if dtype.is_string():
        return "string"
    if dtype.is_null():
        return "float64"
    raise ExpressionError(f"expressions of type {dtype} are not supported")
