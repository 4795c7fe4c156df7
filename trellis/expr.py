"""SQL snippets in definitions (filters, row expressions, request features), parsed once with sqlglot
and translated to Ibis.

Authors write DuckDB-flavoured SQL. Translating the parsed tree into Ibis (instead of pasting the text
into a query) is what lets the same definition compile to every engine Ibis targets, and it gives a real
type check at load time: an unknown column, an unsupported function or ``tx_amount + 'abc'`` fails here,
with the offending name, before any pipeline runs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import ibis
import ibis.expr.datatypes as dt
import ibis.expr.types as ir
from sqlglot import exp

from trellis.errors import did_you_mean

# The parsing half lives in trellis.sqlsnippet (no Ibis import); re-exported so trellis.expr keeps its API.
from trellis.sqlsnippet import CASTS as _CASTS
from trellis.sqlsnippet import EXTRACT_PARTS as _EXTRACT_PARTS
from trellis.sqlsnippet import OPERATORS as _OPERATORS
from trellis.sqlsnippet import (
    SUPPORTED_FUNCTIONS,
    ExpressionError,
    Parsed,
    _is_statement,
    _syntax_message,
    parse,
    suggest,
)
from trellis.sqlsnippet import operator_name as _operator
from trellis.types import mapping

__all__ = ["SUPPORTED_FUNCTIONS", "ExpressionError", "Parsed", "check", "logical_type", "parse", "suggest",
           "to_ibis", "type_name", "_CASTS", "_EXTRACT_PARTS", "_OPERATORS", "_is_statement", "_operator",
           "_syntax_message"]


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


# What each operator / function accepts, for type errors that name the offending argument. Ibis would reject
# most of these too, but with messages about its own classes, and it accepts some SQL does not ('a' + 'b').
def _numeric(dtype: dt.DataType) -> bool:
    return dtype.is_numeric()


def _boolean(dtype: dt.DataType) -> bool:
    return dtype.is_boolean()


def _timestamp(dtype: dt.DataType) -> bool:
    return dtype.is_timestamp()


def _temporal(dtype: dt.DataType) -> bool:
    return dtype.is_timestamp() or dtype.is_date()


_NEEDS: dict[type[exp.Expression], tuple[str, Callable[[dt.DataType], bool]]] = {
    **{k: ("a timestamp", _timestamp) for k in (exp.Hour, exp.Minute)},
    **{k: ("a timestamp or date", _temporal) for k in (exp.DayOfWeek, exp.Day, exp.Month, exp.Year)},
    **{k: ("a number", _numeric) for k in (exp.Abs, exp.Ln, exp.Sqrt, exp.Floor, exp.Ceil, exp.Exp, exp.Neg,
                                            exp.Round, exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)},
    **{k: ("a boolean", _boolean) for k in (exp.Not, exp.And, exp.Or, exp.If)},
}
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.In, exp.Between)


def type_name(dtype: dt.DataType) -> str:
    """The logical type name authors know (int64, string, ...), or ibis's name for anything else."""
    if dtype.is_null():
        return "NULL"
    try:
        return logical_type(dtype)
    except ExpressionError:
        return str(dtype)


def to_ibis(parsed: Parsed, columns: Mapping[str, ir.Value], unknown: str = "column") -> ir.Value:
    """Translate a parsed snippet into an Ibis value over ``columns`` (name -> Ibis column).

    ``unknown`` names what an unknown identifier is called in the error ('column', 'request field or
    feature')."""
    text = parsed.text

    def lit(node: exp.Literal) -> ir.Value:
        if node.is_string:
            return ibis.literal(node.this)
        text = node.this
        return ibis.literal(float(text)) if any(ch in text for ch in ".eE") else ibis.literal(int(text))

    def need(node: exp.Expression, child: exp.Expression, value: ir.Value) -> ir.Value:
        what, ok = _NEEDS[type(node)]
        dtype = value.type()
        if not (dtype.is_null() or ok(dtype)):
            raise ExpressionError(
                f"type error in {text!r}: {_operator(node)} needs {what}, but {child.sql(dialect='duckdb')} "
                f"is {type_name(dtype)}"
            )
        return value

    def unary(kind: type[exp.Expression], node: exp.Expression, child: exp.Expression) -> ir.Value:
        value = go(child)
        if kind in _NEEDS:
            # extract(hour from x) checks as hour(x)
            need(node if type(node) is kind else kind(this=child), child, value)
        return _UNARY[kind](value)

    def binary(node: exp.Expression) -> ir.Value:
        left, right = go(node.this), go(node.expression)
        if type(node) in _NEEDS:
            need(node, node.this, left)
            need(node, node.expression, right)
        # NULL takes the other side's type, as in SQL ('x + NULL' is a NULL number, not an error).
        if left.type().is_null() and not right.type().is_null():
            left = ibis.null().cast(right.type())
        elif right.type().is_null() and not left.type().is_null():
            right = ibis.null().cast(left.type())
        return _BINARY[type(node)](left, right)

    def build(node: exp.Expression) -> ir.Value:
        kind = type(node)
        if kind is exp.Column:
            name = node.name
            if name not in columns:
                raise ExpressionError(f"unknown {unknown} {name!r}{suggest(name, columns)}")
            return columns[name]
        if kind is exp.Literal:
            return lit(node)
        if kind is exp.Boolean:
            return ibis.literal(bool(node.this))
        if kind is exp.Null:
            return ibis.null()
        if kind in _UNARY:
            return unary(kind, node, node.this)
        if kind in _BINARY:
            return binary(node)
        if kind is exp.Extract:
            part = node.this.name.lower()
            if part not in _EXTRACT_PARTS:
                raise ExpressionError(f"extract({part}) is not supported; use one of {sorted(_EXTRACT_PARTS)}")
            return unary(_EXTRACT_PARTS[part], node, node.expression)
        if kind is exp.In:
            if node.args.get("query") is not None or node.args.get("unnest") is not None:
                raise ExpressionError(f"only 'x IN (a, b, ...)' with a list of values is supported: {text!r}")
            value, options = go(node.this), [go(e) for e in node.expressions]
            for option in options:
                value == option  # noqa: B015 - raises when the types cannot be compared
            return value.isin(options)
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
            value = need(node, node.this, go(node.this))
            decimals = node.args.get("decimals")
            if decimals is None:
                return value.round(0)
            if not (isinstance(decimals, exp.Literal) and not decimals.is_string and decimals.this.isdigit()):
                raise ExpressionError(
                    f"round() takes a whole number of decimals, got {decimals.sql(dialect='duckdb')} in {text!r}")
            return value.round(int(decimals.this))
        if kind is exp.If:
            need(node, node.this, go(node.this))
            false = node.args.get("false")
            return ibis.ifelse(go(node.this), go(node.args["true"]), go(false) if false else ibis.null())
        if kind is exp.Case:
            if node.this is not None:
                raise ExpressionError("use 'CASE WHEN cond THEN …' (searched CASE), not 'CASE x WHEN …'")
            branches = []
            for branch in node.args["ifs"]:
                condition = go(branch.this)
                if not (condition.type().is_boolean() or condition.type().is_null()):
                    raise ExpressionError(
                        f"type error in {text!r}: CASE WHEN needs a boolean condition, but "
                        f"{branch.this.sql(dialect='duckdb')} is {type_name(condition.type())}")
                branches.append((condition, go(branch.args["true"])))
            default = node.args.get("default")
            return ibis.cases(*branches, else_=go(default) if default is not None else None)
        if kind in (exp.Cast, exp.TryCast):
            target = node.to.this.name
            if target not in _CASTS:
                raise ExpressionError(f"cast to {target} is not supported; use one of {sorted(_CASTS)}")
            return go(node.this).cast(mapping(_CASTS[target]).ibis)
        if kind is exp.Alias:
            raise ExpressionError(
                f"unexpected alias {node.alias!r} in {text!r} (a missing operator between two names?)")
        if isinstance(node, exp.AggFunc):
            raise ExpressionError(
                f"aggregate function {node.sql_name().lower()!r} in {text!r}: snippets are evaluated per row; "
                f"aggregate with a feature's 'agg' and 'windows' instead")
        if not isinstance(node, exp.Func):
            raise ExpressionError(f"unsupported SQL construct {node.sql(dialect='duckdb')!r} in {text!r}")
        name = (node.sql_name() if kind is not exp.Anonymous else node.name).lower()
        raise ExpressionError(
            f"unsupported function or operator {name!r} in {text!r}"
            f"{did_you_mean(name, SUPPORTED_FUNCTIONS)}; supported functions: {', '.join(SUPPORTED_FUNCTIONS)}"
        )

    def go(node: exp.Expression) -> ir.Value:
        try:
            return build(node)
        except ExpressionError:
            raise
        except Exception as exc:  # ibis rejecting a combination of types; say which, in SQL terms
            raise ExpressionError(_type_error(text, node, exc, build)) from None

    return go(parsed.tree)


def _type_error(text: str, node: exp.Expression, exc: Exception,
                build: Callable[[exp.Expression], ir.Value]) -> str:
    operands = []
    for child in node.iter_expressions():
        if isinstance(child, exp.DataType | exp.Var | exp.Identifier):
            continue
        try:
            operands.append(f"{child.sql(dialect='duckdb')} is {type_name(build(child).type())}")
        except Exception:  # best effort: the message is still useful without the operand
            continue
    detail = "; ".join(operands) if operands else str(exc).splitlines()[0]
    if isinstance(node, _COMPARISONS):
        return f"type error in {text!r}: cannot compare these with {_operator(node)}: {detail}"
    return f"type error in {text!r}: {_operator(node)} cannot combine these types: {detail}"


def check(text: str, column_types: Mapping[str, str], expect: str | None = None, unknown: str = "column") -> str:
    """Validate a snippet against typed columns; return its logical result type.

    ``expect='bool'`` for filters, ``'numeric'`` for aggregation inputs. ``unknown`` is what an unknown
    name is called in the error."""
    table = ibis.table({name: mapping(t).ibis for name, t in column_types.items()}, name="check")
    value = to_ibis(parse(text), {name: table[name] for name in column_types}, unknown=unknown)
    dtype = value.type()
    if expect == "bool" and not dtype.is_boolean():
        raise ExpressionError(f"{text!r} must be a boolean condition, but it is {type_name(dtype)}")
    if expect == "numeric" and not (dtype.is_numeric() or dtype.is_boolean()):
        raise ExpressionError(f"{text!r} must be numeric, but it is {type_name(dtype)}")
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
