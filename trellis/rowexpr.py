"""Request-time SQL snippets evaluated on one row in pure Python, with the offline (Ibis -> DuckDB) semantics.

The real-time scoring path computes request features from the *same* parsed snippets as training
(``trellis.expr``), but per request and without DuckDB or Ibis (importing Ibis takes seconds, a DuckDB query
costs about a millisecond). ``compile_row`` turns a snippet into a Python closure once, at service start;
calling the closure on a row (a mapping of column name to value) takes a few microseconds.

The closure returns what ``trellis.expr.to_ibis`` compiled to DuckDB SQL and executed through Ibis
returns for that row, value for value, including DuckDB's own rules that differ from Python's:

* SQL NULL propagation and three-valued AND / OR / NOT / IN / BETWEEN;
* ``/`` is floating-point division, even of integers; ``x / 0`` is +-inf, ``0 / 0`` is NaN;
* ``%`` takes the sign of the dividend; an integer or decimal ``x % 0`` is NULL, a double one NaN;
* numbers written with a decimal point are exact DECIMALs in DuckDB (``0.1 + 0.2`` is exactly 0.3, and the
  result reaches Python through Arrow as ``3 * 0.1 == 0.30000000000000004``); ``1e20`` is a DOUBLE;
* integer arithmetic is done in the operands' width (INTEGER for ``int32`` columns and small literals) and
  overflow raises; ``round`` rounds half away from zero (on doubles as DuckDB does:
  ``round(x * 10^n) / 10^n``), while ``CAST(double AS BIGINT)`` rounds half to even;
* NaN equals NaN and sorts above every other value (comparisons, ``greatest``, ``least``);
* ``greatest`` / ``least`` / ``coalesce`` skip NULLs; ``ln`` of zero or a negative number and ``sqrt`` of a
  negative number raise, as DuckDB does;
* ``dayofweek`` counts Sunday = 0; string literals compared with timestamps are read as DuckDB reads them;
* Ibis's own rewrites: ``NULL = NULL`` is TRUE (``NULL IS NULL``), a cast to the type Ibis already gives
  a value is dropped (so ``cast(0.1 as double)`` stays the exact decimal 0.1), ``round(x)``/``floor``/``ceil``
  are BIGINT, and a result is converted to the type Ibis computed (through Arrow).

What is evaluated, which decides where DuckDB raises, follows DuckDB's execution too: CASE branches and
coalesce arguments only for the rows that reach them; CASE conditions stop at the first FALSE side of
AND / OR, while a projection evaluates both sides; constant parts are folded first (``false AND x`` never
evaluates ``x``, an arithmetic or comparison with a NULL constant is NULL unevaluated); ``x BETWEEN a AND b``
is ``x >= a AND x <= b``, ``nullif(a, b)`` is ``CASE WHEN a = b THEN NULL ELSE a END``; and a subexpression
that occurs twice is computed for every row first (DuckDB's common-subexpression elimination).

Where DuckDB raises for a row (overflow, ``ln(-1)``, a failed cast), the closure raises
``EvaluationError``. Snippets ``trellis.expr.check`` rejects are rejected here too (``compile_row`` runs it
unless told the definitions were validated already).

Rows hold plain Python values: ``float``/``int``/``bool``/``str``, ``datetime`` for timestamps (naive =
UTC; aware ones are converted to UTC), ``date``; NumPy / pandas scalars are accepted, and ``None``,
``pd.NA`` and ``NaT`` are NULL. A float NaN is the DOUBLE NaN, not NULL.

This mirrors the DuckDB and Ibis versions in uv.lock; tests/test_rowexpr.py compares the two paths on random
snippets and rows, so an upgrade that changes a rule shows up there. Known gaps, all about which rows raise:

* integer overflow under DuckDB's optimizer rewrites: comparisons of integer arithmetic with constants are
  rearranged (``k + 1 > 5`` becomes ``k > 4``, constants are regrouped), so a row whose ``k + 1`` overflows
  INT32 raises here but may get a value offline;
* the training set computes all request features in one query, where DuckDB also shares subexpressions
  *between* features; here each snippet is compiled alone;
* decimals wider than 64 bits convert to DOUBLE with DuckDB's two-step rounding only approximately.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from itertools import product
from typing import Any

from sqlglot import exp

from trellis.errors import did_you_mean
from trellis.sqlsnippet import (
    CASTS,
    EXTRACT_PARTS,
    SUPPORTED_FUNCTIONS,
    ExpressionError,
    operator_name,
    parse,
    suggest,
)

__all__ = ["EvaluationError", "ExpressionError", "RowFunction", "compile_row"]

RowFunction = Callable[[Mapping[str, Any]], Any]


class EvaluationError(ValueError):
    """DuckDB raises for this row (an overflow, ln of a negative number, a cast that fails, ...)."""


# ---------------------------------------------------------------------------------------------------
# DuckDB types, as the compiled SQL sees them


class _T:
    """A DuckDB type. ``lit`` marks an integer literal (DuckDB's INTEGER_LITERAL, which takes the width of
    the integer it meets) or a string literal (which DuckDB casts to the timestamp or date it is compared
    with)."""

    __slots__ = ("bits", "islit", "kind", "lit", "s", "w")

    def __init__(
        self, kind: str, bits: int = 0, w: int = 0, s: int = 0, lit: Any = None, islit: bool = False
    ):
        self.kind, self.bits, self.w, self.s, self.lit, self.islit = kind, bits, w, s, lit, islit

    @property
    def name(self) -> str:
        if self.kind == "int":
            return f"INT{self.bits}"
        if self.kind == "dec":
            return f"DECIMAL({self.w},{self.s})"
        return _KIND_NAMES[self.kind]


_KIND_NAMES = {
    "null": "NULL",
    "bool": "BOOLEAN",
    "double": "DOUBLE",
    "varchar": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "date": "DATE",
}
NULL_T, BOOL, DOUBLE, VARCHAR = _T("null"), _T("bool"), _T("double"), _T("varchar")
TIMESTAMP, DATE = _T("timestamp"), _T("date")
_INTS = {bits: _T("int", bits) for bits in (8, 16, 32, 64)}
_BOUNDS = {bits: (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) for bits in (8, 16, 32, 64)}
_DEC_INT_WIDTH = {8: 3, 16: 5, 32: 10, 64: 19}  # an integer of that width as a DECIMAL(w, 0)
_MAX_DEC = 10**38


def _int_lit(value: int) -> _T:
    return _T("int", 32 if _fits(value, 32) else 64, lit=value, islit=True)


def _dec(w: int, s: int) -> _T:
    return _T("dec", w=min(w, 38), s=s)


def _fits(value: int, bits: int) -> bool:
    lo, hi = _BOUNDS[bits]
    return lo <= value <= hi


def _as_dec(t: _T) -> _T:
    return t if t.kind == "dec" else _dec(_DEC_INT_WIDTH[t.bits], 0)


def _max_type(a: _T, b: _T) -> _T | None:
    """DuckDB's common type of two values (coalesce, CASE, comparisons, IN, ...); None if there is none."""
    if a.kind == "null":
        return b
    if b.kind == "null":
        return a
    ka, kb = a.kind, b.kind
    if ka == "int" and kb == "int":
        if a.islit and b.islit:
            return _INTS[max(a.bits, b.bits)]
        if a.islit:
            return b if _fits(a.lit, b.bits) else _INTS[max(a.bits, b.bits)]
        if b.islit:
            return a if _fits(b.lit, a.bits) else _INTS[max(a.bits, b.bits)]
        return _INTS[max(a.bits, b.bits)]
    if {ka, kb} == {"bool", "int"}:  # TRUE = 1 compares integers
        return _INTS[(b if kb == "int" else a).bits]
    if ka in ("int", "dec") and kb in ("int", "dec"):
        da, db = _as_dec(a), _as_dec(b)
        s = max(da.s, db.s)
        return _dec(max(da.w - da.s, db.w - db.s) + s, s)
    if ka in ("int", "dec", "double") and kb in ("int", "dec", "double"):
        return DOUBLE
    if ka == kb:
        return VARCHAR if ka == "varchar" else a
    kinds = {ka, kb}
    if kinds == {"date", "timestamp"}:
        return TIMESTAMP
    if kinds in ({"varchar", "timestamp"}, {"varchar", "date"}):
        literal = a if ka == "varchar" else b
        if literal.islit:
            return TIMESTAMP if "timestamp" in kinds else DATE
    return None


def _max_types(types: Sequence[_T]) -> _T | None:
    result = NULL_T
    for t in types:
        result = _max_type(result, t)
        if result is None:
            return None
    return result


# ---------------------------------------------------------------------------------------------------
# Value conversions between DuckDB types (Python values: bool, int, DECIMAL as its unscaled int, float,
# str, datetime, date)

_P10 = [float(10**i) for i in range(39)]
_NEG_P10 = [float(f"1e-{i}") for i in range(39)]


def _dec_to_double(v: int, s: int) -> float:
    # DuckDB: CAST(DECIMAL AS DOUBLE) = double(unscaled) / 10^scale
    return float(v) / _P10[s] if s else float(v)


def _arrow_dec_to_double(v: int, s: int) -> float:
    """Arrow's decimal128 -> float64 cast, which is how a DECIMAL result reaches Python through Ibis:
    unscaled * 10^-scale, split into whole and fraction above 2^53."""
    if s == 0:
        return float(v)
    negative, v = v < 0, abs(v)
    if v <= 1 << 53:
        x = float(v) * _NEG_P10[s]
    else:
        whole, fraction = divmod(v, 10**s)
        x = float(whole) + float(fraction) * _NEG_P10[s]
    return -x if negative else x


def _arrow_int_to_double(v: int) -> float:
    # Arrow's safe int64 -> float64 cast refuses integers a double cannot hold exactly
    if -(1 << 53) <= v <= 1 << 53:
        return float(v)
    raise EvaluationError(f"Integer value {v} not in range: {-(1 << 53)} to {1 << 53}")


def _date_to_ts(d: date) -> datetime:
    return datetime(d.year, d.month, d.day)


def _converter(src: _T, dst: _T) -> Callable[[Any], Any] | None:
    """The implicit cast DuckDB inserts to bring a ``src`` value to ``dst``; None when nothing changes."""
    ks, kd = src.kind, dst.kind
    if ks == "null" or (ks == kd and ks != "dec"):
        return None
    if kd == "dec":
        shift = dst.s - (src.s if ks == "dec" else 0)
        if shift == 0:
            return None
        factor = 10**shift
        return lambda v: v * factor
    if kd == "double":
        if ks == "dec":
            scale = src.s
            return lambda v: _dec_to_double(v, scale)
        return float
    if kd == "int" and ks == "bool":
        return int
    if kd == "timestamp":
        return _parse_timestamp if ks == "varchar" else _date_to_ts
    if kd == "date" and ks == "varchar":
        return _parse_date
    raise AssertionError(f"no implicit cast from {src.name} to {dst.name}")  # pragma: no cover


# Comparisons. DuckDB orders NaN above every other double and NaN = NaN.
def _d_eq(a: float, b: float) -> bool:
    return a == b or (a != a and b != b)


def _d_ne(a: float, b: float) -> bool:
    return not (a == b or (a != a and b != b))


def _d_lt(a: float, b: float) -> bool:
    return a < b or (b != b and a == a)


def _d_le(a: float, b: float) -> bool:
    return a <= b or b != b


def _d_gt(a: float, b: float) -> bool:
    return a > b or (a != a and b == b)


def _d_ge(a: float, b: float) -> bool:
    return a >= b or a != a


_COMPARE = {
    exp.EQ: operator.eq,
    exp.NEQ: operator.ne,
    exp.LT: operator.lt,
    exp.LTE: operator.le,
    exp.GT: operator.gt,
    exp.GTE: operator.ge,
}
_COMPARE_DOUBLE = {
    exp.EQ: _d_eq,
    exp.NEQ: _d_ne,
    exp.LT: _d_lt,
    exp.LTE: _d_le,
    exp.GT: _d_gt,
    exp.GTE: _d_ge,
}


def _comparison(kind: type[exp.Expression], t: _T) -> Callable[[Any, Any], bool]:
    return (_COMPARE_DOUBLE if t.kind == "double" else _COMPARE)[kind]


# ---------------------------------------------------------------------------------------------------
# Arithmetic, functions and casts on non-NULL values


# The NaN the FPU produces for an invalid operation (x86: the sign bit is set, DuckDB prints '-nan'); Python's
# float arithmetic produces and propagates NaNs exactly as DuckDB's C++ does, only these two need help.
_INVALID_NAN = math.inf - math.inf


def _div(a: float, b: float) -> float:
    try:
        return a / b
    except ZeroDivisionError:  # IEEE 754, as DuckDB: +-inf, or NaN for 0/0 and NaN/0
        if a != a:
            return a
        if a == 0:
            return _INVALID_NAN
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


def _fmod(a: float, b: float) -> float:
    try:
        return math.fmod(a, b)
    except ValueError:  # C fmod: x % 0 and inf % y are NaN
        return _INVALID_NAN


def _double_str(v: float) -> str:
    if v != v:
        return "-nan" if math.copysign(1.0, v) < 0 else "nan"
    return repr(v)  # DuckDB writes doubles as Python does: shortest round-trip digits, 1e+16, 1e-05


def _c_round(v: float) -> float:
    """C's round(): half away from zero."""
    if v != v or v in (math.inf, -math.inf):
        return v
    r = float(math.trunc(v))
    if abs(v - r) >= 0.5:
        r += math.copysign(1.0, v)
    return r if r != 0 else math.copysign(0.0, v)


def _round_double(v: float, digits: int) -> float:
    # DuckDB's ROUND(DOUBLE, n): round(v * 10^n) / 10^n, and v itself when that is not finite
    modifier = 10.0**digits if digits <= 308 else math.inf
    rounded = _c_round(v * modifier) / modifier
    return v if rounded != rounded or rounded in (math.inf, -math.inf) else rounded


def _round_dec(v: int, s: int, digits: int) -> int:
    """Round half away from zero to ``digits`` decimals; the result has scale ``digits``."""
    if digits >= s:
        return v
    q, r = divmod(abs(v), 10 ** (s - digits))
    if 2 * r >= 10 ** (s - digits):
        q += 1
    return -q if v < 0 else q


def _ln(v: float) -> float:
    if v < 0:
        raise EvaluationError("cannot take logarithm of a negative number")
    if v == 0:
        raise EvaluationError("cannot take logarithm of zero")
    return math.log(v)


def _sqrt(v: float) -> float:
    if v < 0:
        raise EvaluationError("cannot take square root of a negative number")
    return math.sqrt(v)


def _exp(v: float) -> float:
    try:
        return math.exp(v)
    except OverflowError:
        return math.inf


def _double_to_int(v: float, bits: int) -> int:
    # DuckDB: range check on the double, then nearbyint (half to even), then a C cast -- which wraps the
    # one value that rounds up past the maximum (2147483647.5 -> -2147483648).
    half = float(1 << (bits - 1))
    if not (-half <= v < half):
        raise EvaluationError(
            f"Type DOUBLE with value {v!r} can't be cast because the value is out of range "
            f"for the destination type INT{bits}"
        )
    r = round(v)
    return r - (1 << bits) if r >= 1 << (bits - 1) else r


def _check_int(v: int, bits: int, source: str) -> int:
    if not _fits(v, bits):
        raise EvaluationError(
            f"Type {source} with value {v} can't be cast because the value is out of range "
            f"for the destination type INT{bits}"
        )
    return v


def _dec_str(v: int, s: int) -> str:
    if s == 0:
        return str(v)
    q, r = divmod(abs(v), 10**s)
    return f"{'-' if v < 0 else ''}{q}.{r:0{s}d}"


def _ts_str(v: datetime) -> str:
    text = f"{v.year:04d}-{v.month:02d}-{v.day:02d} {v.hour:02d}:{v.minute:02d}:{v.second:02d}"
    return f"{text}.{v.microsecond:06d}".rstrip("0") if v.microsecond else text


def _date_str(v: date) -> str:
    return f"{v.year:04d}-{v.month:02d}-{v.day:02d}"


# Strings, parsed as DuckDB parses them.
_INT_TEXT = re.compile(
    r"\s*(?:0[xX](?P<hex>[0-9a-fA-F]+(?:_[0-9a-fA-F]+)*)|0[bB](?P<bin>[01]+(?:_[01]+)*)"
    r"|(?P<sign>[+-]?)(?P<int>\d+(?:_\d+)*)?(?:\.(?P<frac>(?:\d+(?:_\d+)*)?))?"
    r"(?:[eE](?P<exp>[+-]?\d+(?:_\d+)*))?)\s*"
)
_TRUE_TEXT, _FALSE_TEXT = {"true", "t", "yes", "y", "1"}, {"false", "f", "no", "n", "0"}
_DATE_TEXT = re.compile(r"(?P<neg>-)?(?P<y>\d+)(?P<sep>[-/ \\])(?P<m>\d{1,2})(?P=sep)(?P<d>\d{1,2})(?!\d)")
_TIME_TEXT = re.compile(
    r"(?:T| +)(?P<H>\d{1,2}):(?P<M>\d{1,2})(?::(?P<S>\d{1,2})(?:\.(?P<f>\d*))?)?"
    r"(?:Z|[+-]\d{2}(?::?\d{2}(?::?\d{2})?)?| +UTC)? *"
)


def _parse_int(text: str, bits: int) -> int:
    m = _INT_TEXT.fullmatch(text) if text.isascii() else None
    value = None
    if m and m["hex"]:
        value = int(m["hex"].replace("_", ""), 16)
    elif m and m["bin"]:
        value = int(m["bin"].replace("_", ""), 2)
    elif m and (m["int"] or m["frac"]):
        digits = (m["int"] or "").replace("_", "") + (m["frac"] or "").replace("_", "")
        exponent = int(m["exp"].replace("_", "")) if m["exp"] else 0
        exponent -= len((m["frac"] or "").replace("_", ""))
        mantissa = int(digits)
        if mantissa == 0:
            value = 0
        elif exponent >= 0:
            value = mantissa * 10**exponent if exponent < 40 else None
        elif -exponent > len(digits) + 1:
            value = 0
        else:
            q, r = divmod(mantissa, 10**-exponent)
            value = q + (2 * r >= 10**-exponent)
        if value is not None and m["sign"] == "-":
            value = -value
    if value is None or not _fits(value, bits):
        raise EvaluationError(f"Could not convert string {text!r} to INT{bits}")
    return value


def _parse_double(text: str) -> float:
    try:
        if text.isascii():
            return float(text)
    except ValueError:
        pass
    raise EvaluationError(f"Could not convert string {text!r} to DOUBLE")


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE_TEXT:
        return True
    if lowered in _FALSE_TEXT:
        return False
    raise EvaluationError(f"Could not convert string {text!r} to BOOL")


def _make_date(m: re.Match, text: str) -> date:
    if m["neg"]:
        raise EvaluationError(f"date {text!r} is before year 1, which Python cannot represent")
    try:
        return date(int(m["y"]), int(m["m"]), int(m["d"]))
    except ValueError:
        raise EvaluationError(f"date field value out of range: {text!r}") from None


def _parse_date(text: str) -> date:
    stripped = text.lstrip()
    if stripped.lower() == "epoch":
        return date(1970, 1, 1)
    m = _DATE_TEXT.match(stripped)
    if not m:
        raise EvaluationError(f"invalid date field format: {text!r}, expected format is (YYYY-MM-DD)")
    if stripped[m.end() :].lstrip().startswith("(BC)"):
        raise EvaluationError(f"date {text!r} is before year 1, which Python cannot represent")
    return _make_date(m, text)


def _parse_timestamp(text: str) -> datetime:
    if text.lower() == "epoch":
        return datetime(1970, 1, 1)
    m = _DATE_TEXT.match(text)
    rest = _TIME_TEXT.fullmatch(text, m.end()) if m else None
    if not m or not (m.end() == len(text) or rest):
        raise EvaluationError(
            f"invalid timestamp field format: {text!r}, expected format is "
            f"(YYYY-MM-DD HH:MM:SS[.US][±HH[:MM[:SS]]| ZONE])"
        )
    day = _make_date(m, text)
    if rest is None:
        return datetime(day.year, day.month, day.day)
    hour, minute, second = int(rest["H"]), int(rest["M"]), int(rest["S"] or 0)
    micros = int((rest["f"] or "")[:6].ljust(6, "0"))
    if minute > 59 or second > 59:
        raise EvaluationError(f"invalid timestamp field format: {text!r}")
    if hour > 24 or (hour == 24 and (minute or second or micros)):
        raise EvaluationError(f"timestamp field value out of range: {text!r}")
    return datetime(day.year, day.month, day.day) + timedelta(
        hours=hour, minutes=minute, seconds=second, microseconds=micros
    )


def _unimplemented(source: str, target: str) -> Callable[[Any], Any]:
    def fail(_: Any) -> Any:
        raise EvaluationError(f"Unimplemented type for cast ({source} -> {target})")

    return fail


def _cast(src: _T, target: str) -> tuple[Callable[[Any], Any] | None, _T]:
    """CAST(src AS target) for a logical target type: (function on a non-NULL value or None, result type)."""
    k = src.kind
    if target in ("int64", "int32"):
        bits = 64 if target == "int64" else 32
        dst = _INTS[bits]
        if k == "int":
            return (None if bits >= src.bits else (lambda v: _check_int(v, bits, src.name))), dst
        if k == "bool":
            return int, dst
        if k == "dec":
            scale, name = src.s, src.name
            return (lambda v: _check_int(_round_dec(v, scale, 0), bits, name)), dst
        if k == "double":
            return (lambda v: _double_to_int(v, bits)), dst
        if k == "varchar":
            return (lambda v: _parse_int(v, bits)), dst
    elif target == "float64":
        if k in ("int", "bool"):
            return float, DOUBLE
        if k == "dec":
            scale = src.s
            return (lambda v: _dec_to_double(v, scale)), DOUBLE
        if k == "double":
            return None, DOUBLE
        if k == "varchar":
            return _parse_double, DOUBLE
    elif target == "bool":
        if k in ("int", "dec", "double"):
            return (lambda v: v != 0), BOOL
        if k == "bool":
            return None, BOOL
        if k == "varchar":
            return _parse_bool, BOOL
    elif target == "string":
        if k == "dec":
            scale = src.s
            return (lambda v: _dec_str(v, scale)), VARCHAR
        to_text = {
            "int": str,
            "bool": lambda v: "true" if v else "false",
            "double": _double_str,
            "varchar": None,
            "timestamp": _ts_str,
            "date": _date_str,
        }
        if k in to_text:
            return to_text[k], VARCHAR
    elif target == "date":
        if k == "timestamp":
            return datetime.date, DATE
        if k == "date":
            return None, DATE
        if k == "varchar":
            return _parse_date, DATE
    elif target == "timestamp":
        if k == "date":
            return _date_to_ts, TIMESTAMP
        if k == "timestamp":
            return None, TIMESTAMP
        if k == "varchar":
            return _parse_timestamp, TIMESTAMP
    if k == "null":
        return None, {
            "int64": _INTS[64],
            "int32": _INTS[32],
            "float64": DOUBLE,
            "bool": BOOL,
            "string": VARCHAR,
            "date": DATE,
            "timestamp": TIMESTAMP,
        }[target]
    result = {
        "int64": "INT64",
        "int32": "INT32",
        "float64": "DOUBLE",
        "bool": "BOOLEAN",
        "string": "VARCHAR",
        "date": "DATE",
        "timestamp": "TIMESTAMP",
    }[target]
    return _unimplemented(src.name, result), _cast(NULL_T, target)[1]


# ---------------------------------------------------------------------------------------------------
# Reading a row


def _is_missing(v: Any) -> bool:
    """pd.NA, NaT (pandas and NumPy)."""
    name = type(v).__name__
    if name in ("NAType", "NaTType"):
        return True
    return name == "datetime64" and v != v


def _to_double(v: Any, name: str) -> float | None:
    if _is_missing(v):
        return None
    if isinstance(v, str) or not hasattr(v, "__float__"):
        raise TypeError(f"column {name!r} is float64, got {type(v).__name__} {v!r}")
    return float(v)


def _to_int(bits: int) -> Callable[[Any, str], int | None]:
    def convert(v: Any, name: str) -> int | None:
        if _is_missing(v):
            return None
        if isinstance(v, float) or type(v).__name__.startswith("float"):
            if not float(v).is_integer():
                raise TypeError(f"column {name!r} is int{bits}, got the non-integral {v!r}")
            v = int(v)
        elif isinstance(v, str) or not hasattr(v, "__index__"):
            raise TypeError(f"column {name!r} is int{bits}, got {type(v).__name__} {v!r}")
        v = int(v)
        if not _fits(v, bits):
            raise ValueError(f"column {name!r} is int{bits}; {v} is out of its range")
        return v

    return convert


def _to_bool(v: Any, name: str) -> bool | None:
    if _is_missing(v):
        return None
    if type(v).__name__ == "bool_" or v in (0, 1):
        return bool(v)
    raise TypeError(f"column {name!r} is bool, got {type(v).__name__} {v!r}")


def _to_str(v: Any, name: str) -> str | None:
    if _is_missing(v):
        return None
    if isinstance(v, str):
        return str(v)
    raise TypeError(f"column {name!r} is string, got {type(v).__name__} {v!r}")


def _to_timestamp(v: Any, name: str) -> datetime | None:
    if _is_missing(v):
        return None
    if isinstance(v, datetime):
        if v.tzinfo is not None:
            v = v.astimezone(UTC).replace(tzinfo=None)
        if type(v) is not datetime:  # pandas Timestamp: drop nanoseconds (DuckDB TIMESTAMP is microseconds)
            v = datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)
        return v
    if isinstance(v, date):
        return _date_to_ts(v)
    if type(v).__name__ == "datetime64":
        value = v.astype("datetime64[us]").item()
        if isinstance(value, datetime):
            return value
        if isinstance(value, date):
            return _date_to_ts(value)
        raise ValueError(f"column {name!r}: {v!r} is outside the range of Python datetimes")
    raise TypeError(f"column {name!r} is timestamp, got {type(v).__name__} {v!r}")


def _to_date(v: Any, name: str) -> date | None:
    if isinstance(v, datetime) or type(v).__name__ == "datetime64":
        v = _to_timestamp(v, name)
        return None if v is None else v.date()
    if _is_missing(v):
        return None
    if isinstance(v, date):
        return date(v.year, v.month, v.day)
    raise TypeError(f"column {name!r} is date, got {type(v).__name__} {v!r}")


_READERS: dict[str, tuple[type, Callable[[Any, str], Any]]] = {
    "float64": (float, _to_double),
    "int64": (int, _to_int(64)),
    "int32": (int, _to_int(32)),
    "bool": (bool, _to_bool),
    "string": (str, _to_str),
    "timestamp": (datetime, _to_timestamp),
    "date": (date, _to_date),
}


def _reader(name: str, logical: str) -> Callable[[Mapping[str, Any]], Any]:
    fast, convert = _READERS[logical]

    def missing() -> KeyError:
        return KeyError(f"the row has no value for {name!r}")

    if logical == "timestamp":

        def read(row: Mapping[str, Any]) -> Any:
            try:
                v = row[name]
            except KeyError:
                raise missing() from None
            if (type(v) is datetime and v.tzinfo is None) or v is None:
                return v
            return convert(v, name)
    elif logical in ("int32", "int64"):
        lo, hi = _BOUNDS[32 if logical == "int32" else 64]

        def read(row: Mapping[str, Any]) -> Any:
            try:
                v = row[name]
            except KeyError:
                raise missing() from None
            if (type(v) is int and lo <= v <= hi) or v is None:
                return v
            return convert(v, name)
    else:

        def read(row: Mapping[str, Any]) -> Any:
            try:
                v = row[name]
            except KeyError:
                raise missing() from None
            if type(v) is fast or v is None:
                return v
            return convert(v, name)

    return read


# ---------------------------------------------------------------------------------------------------
# Ibis's view of the types (it decides which casts it drops, how it types a NULL next to a value, and the
# type the result is converted to on its way out of DuckDB)

_LOGICAL_TO_IBIS = {
    "int64": "int64",
    "int32": "int32",
    "float64": "float64",
    "bool": "boolean",
    "string": "string",
    "timestamp": "timestamp",
    "date": "date",
}
_IBIS_TO_DUCK = {
    "int8": _INTS[8],
    "int16": _INTS[16],
    "int32": _INTS[32],
    "int64": _INTS[64],
    "float64": DOUBLE,
    "boolean": BOOL,
    "string": VARCHAR,
    "timestamp": TIMESTAMP,
    "date": DATE,
    "null": NULL_T,
}
_IBIS_INT_BITS = {"int8": 8, "int16": 16, "int32": 32, "int64": 64}
_IBIS_INTS = {bits: name for name, bits in _IBIS_INT_BITS.items()}


def _ibis_infer_int(value: int) -> str:
    for bits in (8, 16, 32, 64):
        if _fits(value, bits):
            return _IBIS_INTS[bits]
    return "int64"


def _ibis_castable(src: str, dst: str, value: Any = None) -> bool:
    """ibis.expr.datatypes.castable for the types snippets produce (``value``: the literal's value)."""
    if src == dst or src == "null":
        return True
    if dst == "boolean":
        return src in _IBIS_INT_BITS and value in (0, 1) and not isinstance(value, bool | str)
    if dst in _IBIS_INT_BITS:
        if src not in _IBIS_INT_BITS:
            return False
        if isinstance(value, int):
            return _fits(value, _IBIS_INT_BITS[dst])
        return _IBIS_INT_BITS[src] <= _IBIS_INT_BITS[dst]
    if dst == "float64":
        return src in _IBIS_INT_BITS
    if dst in ("date", "timestamp"):
        if src == "string":
            return isinstance(value, str) and _temporal_text(value, dst)
        return src in ("date", "timestamp")
    return False


def _temporal_text(text: str, dst: str) -> bool:
    try:
        (_parse_timestamp if dst == "timestamp" else _parse_date)(text)
    except EvaluationError:
        return False
    return True


def _ibis_higher(a: str, b: str) -> str | None:
    if _ibis_castable(a, b):
        return b
    if _ibis_castable(b, a):
        return a
    return None


def _ibis_type_name(t: str) -> str:
    if t == "null":
        return "NULL"
    if t in _IBIS_INT_BITS:
        return "int64"
    return "bool" if t == "boolean" else t


def _ibis_logical(t: str) -> str:
    return "float64" if t == "null" else _ibis_type_name(t)


# ---------------------------------------------------------------------------------------------------
# Compiled nodes

_UNSET = object()


class _N:
    """A compiled node: ``fn(row)`` is its DuckDB value. ``select(row)``, for AND / OR, is whether it is TRUE
    when DuckDB evaluates it as a CASE condition, where conjunctions skip the right side for rows the left
    side already decides (in a projection both sides are always evaluated)."""

    __slots__ = (
        "cached",
        "children",
        "const",
        "fn",
        "ibis",
        "ibis_lit",
        "key",
        "name",
        "null_lit",
        "sc",
        "select",
        "sql",
        "t",
        "value",
    )

    def __init__(
        self,
        fn: Callable[[Mapping[str, Any]], Any],
        t: _T,
        ibis: str,
        sql: str,
        *,
        const: bool,
        value: Any = _UNSET,
        ibis_lit: Any = _UNSET,
        null_lit: bool = False,
        name: str | None = None,
    ):
        self.fn, self.t, self.ibis, self.sql, self.const = fn, t, ibis, sql, const
        self.value, self.ibis_lit, self.null_lit, self.name = value, ibis_lit, null_lit, name
        self.select: Callable[[Mapping[str, Any]], bool] | None = None
        # For DuckDB's common-subexpression elimination: the expression's identity (None for columns and
        # constants, which it leaves alone), its children in DuckDB's order, and whether it is a CASE or
        # AND / OR (whose later children are evaluated only for some rows).
        self.key: str | None = None
        self.children: Sequence[_N] = ()
        self.sc = self.cached = False

    def identity(self) -> str:
        if self.key is not None:
            return self.key
        if self.name is not None:
            return f"col:{self.name}"
        return f"const:{self.t.name}:{self.value!r}" if self.folded else f"?:{self.sql}"

    def selector(self) -> Callable[[Mapping[str, Any]], bool]:
        if self.select is not None and not self.folded and not self.cached:
            return self.select
        fn = self.fn
        return lambda row: fn(row) is True

    @property
    def folded(self) -> bool:
        return self.value is not _UNSET

    @property
    def is_null_constant(self) -> bool:
        return self.value is None


class _Scope:
    """What the compiled functions of a snippet with common subexpressions read: the row, and the values of
    those subexpressions, computed first for every row as DuckDB does."""

    __slots__ = ("row", "values")

    def __init__(self, row: Mapping[str, Any]):
        self.row, self.values = row, []

    def __getitem__(self, name: str) -> Any:
        return self.row[name]


class _Folding:
    """What constant folding evaluates against: no columns, and no common subexpressions (those that are
    constant are there because folding them raised)."""

    @property
    def values(self) -> list[Any]:
        raise EvaluationError("not a constant")

    def __getitem__(self, name: str) -> Any:  # pragma: no cover - constants read no column
        raise EvaluationError("not a constant")


_FOLD = _Folding()


def _slot_reader(slot: int) -> Callable[[_Scope], Any]:
    return lambda scope: scope.values[slot]


def _common_subexpressions(root: _N) -> frozenset[str]:
    """The expressions DuckDB's common-subexpression elimination computes in a projection of their own, for
    every row, even where the snippet would evaluate them only for some rows (a coalesce argument, a CASE
    branch) -- which matters when they raise. DuckDB counts every expression but columns and constants; under
    a CASE or AND / OR only the first child may add a new one, the later children only count again what was
    seen before. Top-down, an expression counted twice is extracted (and its children left alone)."""
    counts: dict[str, int] = {}

    def count(n: _N, short_circuited: bool) -> None:
        if n.key is None:
            return
        if n.key in counts:
            counts[n.key] += 1
        elif not short_circuited:
            counts[n.key] = 1
        for i, child in enumerate(n.children):
            count(child, short_circuited or (n.sc and i > 0))

    extracted: set[str] = set()

    def replace(n: _N) -> None:
        if n.key is None:
            return
        if counts.get(n.key, 0) > 1:
            extracted.add(n.key)
            return
        for child in n.children:
            replace(child)

    count(root, False)
    replace(root)
    return frozenset(extracted)


def _constant(value: Any) -> Callable[[Mapping[str, Any]], Any]:
    def fn(row: Mapping[str, Any]) -> Any:
        return value

    return fn


def _apply(fn: Callable[[Mapping[str, Any]], Any], f: Callable[[Any], Any] | None) -> Callable:
    """fn, then f on a non-NULL result."""
    if f is None:
        return fn

    def g(row: Mapping[str, Any]) -> Any:
        v = fn(row)
        return None if v is None else f(v)

    return g


_NUMERIC = ("int8", "int16", "int32", "int64", "float64")
_DATE_PARTS = {exp.Hour: "hour", exp.Minute: "minute", exp.Day: "day", exp.Month: "month", exp.Year: "year"}
_NEEDS: dict[type[exp.Expression], tuple[str, tuple[str, ...]]] = {
    **{k: ("a timestamp", ("timestamp",)) for k in (exp.Hour, exp.Minute)},
    **{
        k: ("a timestamp or date", ("timestamp", "date"))
        for k in (exp.DayOfWeek, exp.Day, exp.Month, exp.Year)
    },
    **{
        k: ("a number", _NUMERIC)
        for k in (
            exp.Abs,
            exp.Ln,
            exp.Sqrt,
            exp.Floor,
            exp.Ceil,
            exp.Exp,
            exp.Neg,
            exp.Round,
            exp.Add,
            exp.Sub,
            exp.Mul,
            exp.Div,
            exp.Mod,
        )
    },
    **{k: ("a boolean", ("boolean",)) for k in (exp.Not, exp.And, exp.Or, exp.If)},
}
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)
_WORDS = {exp.Add: ("addition", "+"), exp.Sub: ("subtraction", "-"), exp.Mul: ("multiplication", "*")}


class _Compiler:
    def __init__(
        self, text: str, column_types: Mapping[str, str], unknown: str, eager: frozenset[str] = frozenset()
    ):
        self.text, self.column_types, self.unknown = text, column_types, unknown
        # keys of the expressions DuckDB computes first, for every row (see _common_subexpressions)
        self.eager = eager
        self.slots: dict[str, int] = {}
        self.eager_fns: list[Callable[[Any], Any]] = []

    # -- helpers -----------------------------------------------------------------------------------

    def error(self, message: str) -> ExpressionError:
        return ExpressionError(message)

    def combine_error(self, node: exp.Expression, operands: Sequence[_N]) -> ExpressionError:
        detail = "; ".join(f"{o.sql} is {_ibis_type_name(o.ibis)}" for o in operands)
        if isinstance(node, exp.EQ | exp.NEQ | exp.GT | exp.GTE | exp.LT | exp.LTE | exp.In | exp.Between):
            return self.error(
                f"type error in {self.text!r}: cannot compare these with {operator_name(node)}: {detail}"
            )
        return self.error(
            f"type error in {self.text!r}: {operator_name(node)} cannot combine these types: {detail}"
        )

    def need(self, node: exp.Expression, operand: _N) -> None:
        what, ok = _NEEDS[type(node)]
        if operand.ibis != "null" and operand.ibis not in ok:
            raise self.error(
                f"type error in {self.text!r}: {operator_name(node)} needs {what}, but "
                f"{operand.sql} is {_ibis_type_name(operand.ibis)}"
            )

    def node(
        self,
        fn: Callable,
        t: _T,
        ibis: str,
        sql: str,
        children: Sequence[_N],
        *,
        label: str,
        sc: bool = False,
        **kw: Any,
    ) -> _N:
        """A node; folded to a constant when its inputs are constant and evaluating it does not raise
        (DuckDB's constant folding, which also leaves an expression that raises for execution time)."""
        n = _N(fn, t, ibis, sql, const=all(c.const for c in children), **kw)
        if n.const and not n.folded:
            try:
                n.value = fn(_FOLD)
            except EvaluationError:
                pass
            else:
                n.fn = _constant(n.value)
                return n
        n.children, n.sc = children, sc
        n.key = f"{label}({', '.join(c.identity() for c in children)})"
        if n.key in self.eager:
            slot = self.slots.get(n.key)
            if slot is None:
                slot = self.slots[n.key] = len(self.eager_fns)
                self.eager_fns.append(fn)
            n.fn, n.cached = _slot_reader(slot), True
        return n

    def null_of(self, ibis: str, sql: str = "NULL") -> _N:
        """ibis.null().cast(<ibis type>): a typed NULL constant (DuckDB folds whatever it meets to NULL)."""
        return _N(_constant(None), _IBIS_TO_DUCK[ibis], ibis, sql, const=True, value=None)

    def overflow(self, word: str, sym: str, a: Any, b: Any, t: _T) -> EvaluationError:
        return EvaluationError(f"Overflow in {word} of {t.name} ({a} {sym} {b}) in {self.text!r}")

    def wrap_errors(self, f: Callable[[Any], Any]) -> Callable[[Any], Any]:
        text = self.text

        def g(v: Any) -> Any:
            try:
                return f(v)
            except EvaluationError as exc:
                raise EvaluationError(f"{exc} in {text!r}") from None

        return g

    # -- the tree ----------------------------------------------------------------------------------

    def go(self, node: exp.Expression) -> _N:
        kind = type(node)
        sql = node.sql(dialect="duckdb")
        if kind is exp.Paren:
            return self.go(node.this)
        if kind is exp.Column:
            name = node.name
            if name not in self.column_types:
                raise self.error(f"unknown {self.unknown} {name!r}{suggest(name, self.column_types)}")
            logical = self.column_types[name]
            duck = {
                "int64": _INTS[64],
                "int32": _INTS[32],
                "float64": DOUBLE,
                "bool": BOOL,
                "string": VARCHAR,
                "timestamp": TIMESTAMP,
                "date": DATE,
            }[logical]
            return _N(_reader(name, logical), duck, _LOGICAL_TO_IBIS[logical], sql, const=False, name=name)
        if kind is exp.Literal:
            return self.literal(node, sql)
        if kind is exp.Boolean:
            value = bool(node.this)
            return _N(_constant(value), BOOL, "boolean", sql, const=True, value=value, ibis_lit=value)
        if kind is exp.Null:
            return _N(_constant(None), NULL_T, "null", sql, const=True, value=None, null_lit=True)
        if kind in _DATE_PARTS or kind is exp.DayOfWeek:
            return self.date_part(node, kind, self.go(node.this), sql)
        if kind is exp.Extract:
            part = node.this.name.lower()
            if part not in EXTRACT_PARTS:
                raise self.error(f"extract({part}) is not supported; use one of {sorted(EXTRACT_PARTS)}")
            target = EXTRACT_PARTS[part]
            return self.date_part(target(this=node.expression), target, self.go(node.expression), sql)
        if kind in (exp.Abs, exp.Neg, exp.Ln, exp.Sqrt, exp.Exp, exp.Floor, exp.Ceil):
            return self.numeric_function(node, kind, self.go(node.this), sql)
        if kind is exp.Not:
            return self.negation(node, self.go(node.this), sql)
        if kind in _ARITHMETIC or kind in _COMPARE or kind in (exp.And, exp.Or):
            return self.binary(node, kind, sql)
        if kind is exp.In:
            if node.args.get("query") is not None or node.args.get("unnest") is not None:
                raise self.error(f"only 'x IN (a, b, ...)' with a list of values is supported: {self.text!r}")
            return self.in_list(node, self.go(node.this), [self.go(e) for e in node.expressions], sql)
        if kind is exp.Between:
            return self.between(
                node, self.go(node.this), self.go(node.args["low"]), self.go(node.args["high"]), sql
            )
        if kind is exp.Is:
            if not isinstance(node.expression, exp.Null):
                raise self.error("only 'IS NULL' / 'IS NOT NULL' are supported")
            value = self.go(node.this)
            fn = value.fn
            return self.node(lambda row: fn(row) is None, BOOL, "boolean", sql, [value], label="isnull")
        if kind in (exp.Coalesce, exp.Greatest, exp.Least):
            return self.variadic(
                node, kind, [self.go(node.this), *[self.go(e) for e in node.expressions]], sql
            )
        if kind is exp.Nullif:
            return self.nullif(node, self.go(node.this), self.go(node.expression), sql)
        if kind is exp.Round:
            return self.round(node, sql)
        if kind is exp.If:
            condition = self.go(node.this)
            self.need(node, condition)
            false = node.args.get("false")
            otherwise = (
                self.go(false)
                if false
                else _N(_constant(None), NULL_T, "null", "NULL", const=True, value=None, null_lit=True)
            )
            return self.case(node, [(condition, self.go(node.args["true"]))], otherwise, sql)
        if kind is exp.Case:
            if node.this is not None:
                raise self.error("use 'CASE WHEN cond THEN …' (searched CASE), not 'CASE x WHEN …'")
            branches = []
            for branch in node.args["ifs"]:
                condition = self.go(branch.this)
                if condition.ibis == "null" and not condition.null_lit:  # ibis.cases: NULL, or a boolean
                    raise self.combine_error(node, [condition])
                if condition.ibis not in ("boolean", "null"):
                    raise self.error(
                        f"type error in {self.text!r}: CASE WHEN needs a boolean condition, but "
                        f"{branch.this.sql(dialect='duckdb')} is {_ibis_type_name(condition.ibis)}"
                    )
                branches.append((condition, self.go(branch.args["true"])))
            default = node.args.get("default")
            otherwise = (
                self.go(default)
                if default is not None
                else _N(_constant(None), NULL_T, "null", "NULL", const=True, value=None, null_lit=True)
            )
            return self.case(node, branches, otherwise, sql)
        if kind in (exp.Cast, exp.TryCast):
            target = node.to.this.name
            if target not in CASTS:
                raise self.error(f"cast to {target} is not supported; use one of {sorted(CASTS)}")
            return self.cast(self.go(node.this), CASTS[target], sql)
        if kind is exp.Alias:
            raise self.error(
                f"unexpected alias {node.alias!r} in {self.text!r} (a missing operator between two names?)"
            )
        if isinstance(node, exp.AggFunc):
            raise self.error(
                f"aggregate function {node.sql_name().lower()!r} in {self.text!r}: snippets are evaluated "
                f"per row; aggregate with a feature's 'agg' and 'windows' instead"
            )
        if not isinstance(node, exp.Func):
            raise self.error(f"unsupported SQL construct {sql!r} in {self.text!r}")
        name = (node.sql_name() if kind is not exp.Anonymous else node.name).lower()
        raise self.error(
            f"unsupported function or operator {name!r} in {self.text!r}"
            f"{did_you_mean(name, SUPPORTED_FUNCTIONS)}; "
            f"supported functions: {', '.join(SUPPORTED_FUNCTIONS)}"
        )

    def literal(self, node: exp.Literal, sql: str) -> _N:
        if node.is_string:
            value = node.this
            return _N(
                _constant(value),
                _T("varchar", lit=value, islit=True),
                "string",
                sql,
                const=True,
                value=value,
                ibis_lit=value,
            )
        text = node.this
        if any(ch in text for ch in ".eE"):
            # Ibis writes the float back as repr(float): '1000.0' is a DECIMAL(5,1) for DuckDB, '1e+16' and
            # 'inf' are DOUBLEs.
            number = float(text)
            written = repr(number)
            if "e" in written or "n" in written:
                return _N(
                    _constant(number), DOUBLE, "float64", sql, const=True, value=number, ibis_lit=number
                )
            whole, fraction = written.split(".")
            t = _dec(len(whole) + len(fraction), len(fraction))
            unscaled = int(whole + fraction)
            return _N(_constant(unscaled), t, "float64", sql, const=True, value=unscaled, ibis_lit=number)
        value = int(text)
        if not _fits(value, 64):
            raise self.error(
                f"type error in {self.text!r}: 'literal' cannot combine these types: Value {value} "
                f"is out of bounds for type Int64"
            )
        return _N(
            _constant(value),
            _int_lit(value),
            _ibis_infer_int(value),
            sql,
            const=True,
            value=value,
            ibis_lit=value,
        )

    # -- operators -----------------------------------------------------------------------------------

    def binary(self, node: exp.Expression, kind: type[exp.Expression], sql: str) -> _N:
        left, right = self.go(node.this), self.go(node.expression)
        if kind in _NEEDS:
            self.need(node, left)
            self.need(node, right)
        if left.ibis == "null" and right.ibis == "null":
            if kind in (exp.EQ, exp.NEQ) and (right.null_lit or left.null_lit):
                # Ibis: x == NULL is x.isnull() (and x != NULL is x.notnull())
                other = left if right.null_lit else right
                fn, equal = other.fn, kind is exp.EQ
                return self.node(
                    lambda row: (fn(row) is None) is equal,
                    BOOL,
                    "boolean",
                    sql,
                    [other],
                    label="isnull" if equal else "notnull",
                )
            if kind not in _COMPARE:
                raise self.combine_error(node, [left, right])
        elif left.ibis == "null":
            left = self.null_of(right.ibis, left.sql)
        elif right.ibis == "null":
            right = self.null_of(left.ibis, right.sql)
        if kind in (exp.And, exp.Or):
            return self.logical(kind, left, right, sql)
        if kind in _COMPARE:
            return self.compare(node, kind, left, right, sql)
        return self.arithmetic(node, kind, left, right, sql)

    def arithmetic(
        self, node: exp.Expression, kind: type[exp.Expression], left: _N, right: _N, sql: str
    ) -> _N:
        ibis = self.arithmetic_ibis(node, kind, left, right)
        lt, rt = left.t, right.t
        ks = {lt.kind, rt.kind}
        if kind is exp.Div or "double" in ks:
            result = DOUBLE
            ca, cb = _converter(lt, DOUBLE), _converter(rt, DOUBLE)
            op = {
                exp.Add: operator.add,
                exp.Sub: operator.sub,
                exp.Mul: operator.mul,
                exp.Div: _div,
                exp.Mod: _fmod,
            }[kind]
        elif "dec" in ks:
            op, result, ca, cb = self.decimal_arithmetic(kind, lt, rt)
        else:
            result = _max_type(lt, rt)  # never a literal: two literals give their default width
            ca = cb = None
            op = self.int_op(kind, result)
        if left.is_null_constant or right.is_null_constant:
            # DuckDB folds arithmetic with a NULL constant to NULL without evaluating the other side
            return _N(_constant(None), result, ibis, sql, const=True, value=None)
        return self.node(
            self.binary_fn(left, right, ca, cb, op), result, ibis, sql, [left, right], label=kind.__name__
        )

    def arithmetic_ibis(self, node: exp.Expression, kind: type[exp.Expression], left: _N, right: _N) -> str:
        a, b = left.ibis, right.ibis
        if kind is exp.Div:
            return "float64"
        if a in _IBIS_INT_BITS and b in _IBIS_INT_BITS:
            # ibis's integral promotion: the widest of the operands and of the results at their bounds
            bounds = [
                [n.ibis_lit]
                if isinstance(n.ibis_lit, int) and not isinstance(n.ibis_lit, bool)
                else _BOUNDS[_IBIS_INT_BITS[n.ibis]]
                for n in (left, right)
            ]
            op = {exp.Add: operator.add, exp.Sub: operator.sub, exp.Mul: operator.mul, exp.Mod: operator.mod}[
                kind
            ]
            try:
                results = [op(x, y) for x, y in product(*bounds)]
            except ZeroDivisionError:  # x % 0 with a literal 0
                raise self.combine_error(node, [left, right]) from None
            bits = max(
                _IBIS_INT_BITS[a], _IBIS_INT_BITS[b], *(_IBIS_INT_BITS[_ibis_infer_int(r)] for r in results)
            )
            return _IBIS_INTS[bits]
        return "float64"

    def int_op(self, kind: type[exp.Expression], t: _T) -> Callable[[int, int], int | None]:
        lo, hi = _BOUNDS[t.bits]
        if kind is exp.Mod:
            text = self.text

            def mod(a: int, b: int) -> int | None:
                if b == 0:
                    return None
                if b == -1 and a == lo:
                    raise EvaluationError(f"Overflow in division of {a} / {b} in {text!r}")
                r = abs(a) % abs(b)
                return -r if a < 0 else r

            return mod
        word, sym = _WORDS[kind]
        op = {exp.Add: operator.add, exp.Sub: operator.sub, exp.Mul: operator.mul}[kind]
        overflow = self.overflow

        def f(a: int, b: int) -> int:
            r = op(a, b)
            if lo <= r <= hi:
                return r
            raise overflow(word, sym, a, b, t)

        return f

    def decimal_arithmetic(self, kind: type[exp.Expression], lt: _T, rt: _T) -> tuple:
        da, db = _as_dec(lt), _as_dec(rt)
        if kind is exp.Mod:
            result = _max_type(da, db)
            ca, cb = _converter(lt, result), _converter(rt, result)

            def mod(a: int, b: int) -> int | None:
                if b == 0:
                    return None
                r = abs(a) % abs(b)
                return -r if a < 0 else r

            return mod, result, ca, cb
        if kind is exp.Mul:
            scale = da.s + db.s
            if scale > 38:
                raise self.error(
                    f"{self.text!r}: DuckDB needs scale {scale} to multiply {da.name} by {db.name} exactly, "
                    f"more than the DECIMAL maximum of 38; cast an operand to DOUBLE"
                )
            result = _dec(da.w + db.w, scale)
            ca, cb = _converter(lt, da), _converter(rt, db)
            op = operator.mul
        else:
            scale = max(da.s, db.s)
            result = _dec(max(da.w - da.s, db.w - db.s) + scale + 1, scale)
            ca, cb = _converter(lt, _dec(38, scale)), _converter(rt, _dec(38, scale))
            op = operator.add if kind is exp.Add else operator.sub
        word, sym = _WORDS[kind]
        overflow = self.overflow

        def f(a: int, b: int) -> int:
            r = op(a, b)
            if -_MAX_DEC < r < _MAX_DEC:
                return r
            raise overflow(word, sym, a, b, result)

        return f, result, ca, cb

    def binary_fn(
        self, left: _N, right: _N, ca: Callable | None, cb: Callable | None, op: Callable[[Any, Any], Any]
    ) -> Callable[[Mapping[str, Any]], Any]:
        fa, fb = left.fn, right.fn
        b = a = _UNSET
        try:  # the common 'x < 6' / 'x / 2' shapes: convert the constant once
            if right.folded:
                b = right.value if cb is None else cb(right.value)
            elif left.folded:
                a = left.value if ca is None else ca(left.value)
        except EvaluationError:  # DuckDB raises when it executes the conversion, not before
            pass
        if b is not _UNSET:
            if ca is None:

                def f(row: Mapping[str, Any]) -> Any:
                    a = fa(row)
                    return None if a is None else op(a, b)
            else:

                def f(row: Mapping[str, Any]) -> Any:
                    a = fa(row)
                    return None if a is None else op(ca(a), b)

            return f
        if a is not _UNSET:

            def f(row: Mapping[str, Any]) -> Any:
                b = fb(row)
                return None if b is None else op(a, b if cb is None else cb(b))

            return f
        if ca is None and cb is None:

            def f(row: Mapping[str, Any]) -> Any:
                a = fa(row)
                b = fb(row)
                return None if a is None or b is None else op(a, b)

            return f

        def f(row: Mapping[str, Any]) -> Any:
            a = fa(row)
            b = fb(row)
            if a is None or b is None:
                return None
            return op(a if ca is None else ca(a), b if cb is None else cb(b))

        return f

    def compare_types(self, node: exp.Expression, operands: Sequence[_N]) -> _T:
        """Check Ibis accepts comparing the first operand with each other one; DuckDB's common type."""
        first = operands[0]
        for other in operands[1:]:
            if not (
                _ibis_castable(first.ibis, other.ibis, _lit(first))
                or _ibis_castable(other.ibis, first.ibis, _lit(other))
            ):
                raise self.combine_error(node, [first, other])
        common = _max_types([o.t for o in operands])
        if common is None:  # pragma: no cover - Ibis rejects these first
            raise self.combine_error(node, operands)
        return common

    def compare(
        self,
        node: exp.Expression,
        kind: type[exp.Expression],
        left: _N,
        right: _N,
        sql: str,
        common: _T | None = None,
    ) -> _N:
        """left <op> right, in ``common`` (by default their common type)."""
        if common is None:
            common = self.compare_types(node, [left, right])
        if left.is_null_constant or right.is_null_constant:  # DuckDB: NULL, the other side not evaluated
            return _N(_constant(None), BOOL, "boolean", sql, const=True, value=None)
        ca, cb = self.converter(left.t, common), self.converter(right.t, common)
        return self.node(
            self.binary_fn(left, right, ca, cb, _comparison(kind, common)),
            BOOL,
            "boolean",
            sql,
            [left, right],
            label=f"{kind.__name__}:{common.name}",
        )

    def converter(self, src: _T, dst: _T) -> Callable[[Any], Any] | None:
        f = _converter(src, dst)
        return self.wrap_errors(f) if f in (_parse_timestamp, _parse_date) else f

    def logical(self, kind: type[exp.Expression], left: _N, right: _N, sql: str) -> _N:
        if kind is exp.And:
            if left.value is False or right.value is False:  # DuckDB drops the other side
                return _N(_constant(False), BOOL, "boolean", sql, const=True, value=False)
        elif left.value is True or right.value is True:
            return _N(_constant(True), BOOL, "boolean", sql, const=True, value=True)
        fa, fb = left.fn, right.fn
        if kind is exp.And:

            def f(row: Mapping[str, Any]) -> bool | None:
                a = fa(row)
                b = fb(row)  # DuckDB evaluates both sides
                if a is False or b is False:
                    return False
                return None if a is None or b is None else True
        else:

            def f(row: Mapping[str, Any]) -> bool | None:
                a = fa(row)
                b = fb(row)
                if a is True or b is True:
                    return True
                return None if a is None or b is None else False

        n = self.node(f, BOOL, "boolean", sql, [left, right], label=kind.__name__, sc=True)
        if n.folded or n.cached:
            return n
        sa, sb = left.selector(), right.selector()
        n.select = (lambda row: sa(row) and sb(row)) if kind is exp.And else (lambda row: sa(row) or sb(row))
        return n

    def negation(self, node: exp.Expression, value: _N, sql: str) -> _N:
        self.need(node, value)
        if value.ibis == "null":
            raise self.combine_error(node, [value])
        fn = value.fn
        return self.node(
            lambda row: None if (v := fn(row)) is None else not v, BOOL, "boolean", sql, [value], label="not"
        )

    def in_list(self, node: exp.Expression, value: _N, options: list[_N], sql: str) -> _N:
        common = self.compare_types(node, [value, *options])
        eq = _comparison(exp.EQ, common)
        fv = _apply(value.fn, self.converter(value.t, common))
        fns = [_apply(o.fn, self.converter(o.t, common)) for o in options]
        if all(o.folded for o in options) and common.kind != "double":
            try:
                values = [f(_FOLD) for f in fns]
            except EvaluationError:
                values = None
            if values is not None:
                members, has_null = frozenset(v for v in values if v is not None), None in values
                if has_null:

                    def f(row: Mapping[str, Any]) -> bool | None:
                        v = fv(row)
                        return None if v is None or v not in members else True
                else:

                    def f(row: Mapping[str, Any]) -> bool | None:
                        v = fv(row)
                        return None if v is None else v in members

                return self.node(f, BOOL, "boolean", sql, [value, *options], label="in")

        def f(row: Mapping[str, Any]) -> bool | None:
            v = fv(row)
            candidates = [g(row) for g in fns]  # DuckDB evaluates every option
            if v is None:
                return None
            found_null = False
            for c in candidates:
                if c is None:
                    found_null = True
                elif eq(v, c):
                    return True
            return None if found_null else False

        return self.node(f, BOOL, "boolean", sql, [value, *options], label="in")

    def between(self, node: exp.Expression, value: _N, low: _N, high: _N, sql: str) -> _N:
        # DuckDB rewrites x BETWEEN lo AND hi into x >= lo AND x <= hi (in the common type of the three),
        # then simplifies each comparison: one with a NULL constant is NULL without evaluating the other side.
        common = self.compare_types(node, [value, low, high])
        return self.logical(
            exp.And,
            self.compare(node, exp.GTE, value, low, sql, common),
            self.compare(node, exp.LTE, value, high, sql, common),
            sql,
        )

    # -- functions -----------------------------------------------------------------------------------

    def date_part(self, node: exp.Expression, kind: type[exp.Expression], value: _N, sql: str) -> _N:
        self.need(node, value)
        if value.ibis == "null":
            raise self.combine_error(node, [value])
        fn = value.fn
        if kind is exp.DayOfWeek:

            def f(row: Mapping[str, Any]) -> int | None:
                v = fn(row)
                return None if v is None else (v.weekday() + 1) % 7  # DuckDB: Sunday = 0
        else:
            attribute = operator.attrgetter(_DATE_PARTS[kind])

            def f(row: Mapping[str, Any]) -> int | None:
                v = fn(row)
                return None if v is None else attribute(v)

        return self.node(f, _INTS[64], "int64", sql, [value], label=kind.__name__)

    def numeric_function(self, node: exp.Expression, kind: type[exp.Expression], value: _N, sql: str) -> _N:
        self.need(node, value)
        if value.ibis == "null":
            raise self.combine_error(node, [value])
        t = value.t
        if kind in (exp.Ln, exp.Sqrt, exp.Exp):
            f = {exp.Ln: _ln, exp.Sqrt: _sqrt, exp.Exp: _exp}[kind]
            to_double = _converter(t, DOUBLE)
            g = f if to_double is None else (lambda v: f(to_double(v)))
            return self.node(
                _apply(value.fn, self.wrap_errors(g)), DOUBLE, "float64", sql, [value], label=kind.__name__
            )
        if kind in (exp.Floor, exp.Ceil):  # CAST(FLOOR(x) AS BIGINT)
            if t.kind == "dec":
                q = 10**t.s
                g = (lambda v: v // q) if kind is exp.Floor else (lambda v: -(-v // q))
                name = _dec(t.w, 0).name
                h = lambda v: _check_int(g(v), 64, name)  # noqa: E731
            else:  # DuckDB's FLOOR/CEIL of an integer is a DOUBLE, as of a double
                rounding = math.floor if kind is exp.Floor else math.ceil
                h = lambda v: _double_to_int(float(rounding(v)) if math.isfinite(v) else v, 64)  # noqa: E731
            return self.node(
                _apply(value.fn, self.wrap_errors(h)), _INTS[64], "int64", sql, [value], label=kind.__name__
            )
        if kind is exp.Neg:
            if t.kind == "int" and t.islit:  # DuckDB reads -(5) as the literal -5
                v = -t.lit
                return _N(_constant(v), _int_lit(v), value.ibis, sql, const=True, value=v)
            if t.kind == "int":
                lo = _BOUNDS[t.bits][0]
                text = self.text

                def neg(v: int) -> int:
                    if v == lo:
                        raise EvaluationError(f"Overflow in negation of numeric value {v} in {text!r}")
                    return -v

                return self.node(_apply(value.fn, neg), t, value.ibis, sql, [value], label="neg")
            return self.node(_apply(value.fn, operator.neg), t, value.ibis, sql, [value], label="neg")
        # abs
        result = _INTS[t.bits] if t.kind == "int" else t
        if t.kind == "int":
            lo = _BOUNDS[t.bits][0]
            text = self.text

            def absolute(v: int) -> int:
                if v == lo:
                    raise EvaluationError(f"Overflow on abs({v}) in {text!r}")
                return abs(v)

            return self.node(_apply(value.fn, absolute), result, value.ibis, sql, [value], label="abs")
        return self.node(_apply(value.fn, abs), result, value.ibis, sql, [value], label="abs")

    def round(self, node: exp.Round, sql: str) -> _N:
        value = self.go(node.this)
        self.need(node, value)
        if value.ibis == "null":
            raise self.combine_error(node, [value])
        decimals = node.args.get("decimals")
        if decimals is not None and not (
            isinstance(decimals, exp.Literal) and not decimals.is_string and decimals.this.isdigit()
        ):
            raise self.error(
                f"round() takes a whole number of decimals, got {decimals.sql(dialect='duckdb')} in "
                f"{self.text!r}"
            )
        digits = int(decimals.this) if decimals is not None else 0
        t = value.t
        if digits == 0:  # round(x) and round(x, 0) are both CAST(ROUND(x, 0) AS BIGINT)
            if t.kind == "dec":
                scale, name = t.s, _dec(t.w, 0).name
                f = lambda v: _check_int(_round_dec(v, scale, 0), 64, name)  # noqa: E731
            elif t.kind == "double":
                f = lambda v: _double_to_int(_round_double(v, 0), 64)  # noqa: E731
            else:
                f = None
            return self.node(
                _apply(value.fn, f if f is None else self.wrap_errors(f)),
                _INTS[64],
                "int64",
                sql,
                [value],
                label="round",
            )
        # CAST(ROUND(x, n) AS DOUBLE)
        if t.kind == "dec":
            scale = t.s
            f = lambda v: _dec_to_double(_round_dec(v, scale, digits), min(scale, digits))  # noqa: E731
        elif t.kind == "double":
            f = lambda v: _round_double(v, digits)  # noqa: E731
        else:
            f = float
        return self.node(_apply(value.fn, f), DOUBLE, "float64", sql, [value], label=f"round{digits}")

    def variadic(self, node: exp.Expression, kind: type[exp.Expression], args: list[_N], sql: str) -> _N:
        ibis = self.ibis_common(node, args)
        common = _max_types([a.t for a in args])
        if common is None:  # pragma: no cover - Ibis rejects these first
            raise self.combine_error(node, args)
        fns = [_apply(a.fn, self.converter(a.t, common)) for a in args]
        if kind is exp.Coalesce:

            def f(row: Mapping[str, Any]) -> Any:
                for g in fns:  # DuckDB evaluates the next argument only where the previous ones are NULL
                    v = g(row)
                    if v is not None:
                        return v
                return None
        else:
            better = _comparison(exp.GT if kind is exp.Greatest else exp.LT, common)

            def f(row: Mapping[str, Any]) -> Any:
                best = None
                for v in [g(row) for g in fns]:
                    if v is not None and (best is None or better(v, best)):
                        best = v
                return best

        return self.node(f, common, ibis, sql, args, label=kind.__name__)

    def ibis_common(self, node: exp.Expression, args: Sequence[_N]) -> str:
        result = "null"
        for a in args:
            higher = _ibis_higher(result, a.ibis)
            if higher is None:
                raise self.combine_error(node, args)
            result = higher
        return result

    def nullif(self, node: exp.Expression, value: _N, other: _N, sql: str) -> _N:
        # DuckDB: CASE WHEN value = other THEN NULL ELSE value END
        ibis = self.ibis_common(node, [value, other])
        common = _max_type(value.t, other.t)
        if common is None:  # pragma: no cover - Ibis rejects these first
            raise self.combine_error(node, [value, other])
        comparison = self.compare(node, exp.EQ, value, other, sql, common)
        equal, fv = comparison.selector(), value.fn

        def f(row: Mapping[str, Any]) -> Any:
            return None if equal(row) else fv(row)

        return self.node(
            f,
            value.t if value.t.kind != "null" else other.t,
            ibis,
            sql,
            [comparison, value],
            label="case",
            sc=True,
        )

    def case(self, node: exp.Expression, branches: list[tuple[_N, _N]], otherwise: _N, sql: str) -> _N:
        results = [r for _, r in branches] + [otherwise]
        ibis = self.ibis_common(node, results)
        common = _max_types([r.t for r in results])
        if common is None:  # pragma: no cover - Ibis rejects these first
            raise self.combine_error(node, results)
        pairs = [(c.selector(), _apply(r.fn, self.converter(r.t, common))) for c, r in branches]
        default = _apply(otherwise.fn, self.converter(otherwise.t, common))

        def f(row: Mapping[str, Any]) -> Any:
            for selected, result in pairs:
                if selected(row):
                    return result(row)
            return default(row)

        return self.node(
            f, common, ibis, sql, [n for pair in branches for n in pair] + [otherwise], label="case", sc=True
        )

    def cast(self, value: _N, target: str, sql: str) -> _N:
        ibis = _LOGICAL_TO_IBIS[target]
        if value.ibis == ibis:  # Ibis drops a cast to the type it already has (DuckDB may not agree)
            return value
        f, t = _cast(value.t, target)
        return self.node(
            _apply(value.fn, f if f is None else self.wrap_errors(f)),
            t,
            ibis,
            sql,
            [value],
            label=f"cast:{target}",
        )


def _lit(n: _N) -> Any:
    return None if n.ibis_lit is _UNSET else n.ibis_lit


def _output(t: _T, ibis: str) -> Callable[[Any], Any] | None:
    """The cast Ibis applies (through Arrow) to bring DuckDB's result to the type it computed."""
    if ibis == "float64":
        if t.kind == "dec":
            scale = t.s
            return lambda v: _arrow_dec_to_double(v, scale)
        if t.kind == "int":
            return _arrow_int_to_double
        return float if t.kind == "bool" else None
    if ibis in _IBIS_INT_BITS and t.kind == "int" and t.bits > _IBIS_INT_BITS[ibis]:
        bits = _IBIS_INT_BITS[ibis]

        def narrow(v: int) -> int:
            if not _fits(v, bits):
                raise EvaluationError(
                    f"Integer value {v} not in range: {_BOUNDS[bits][0]} to {_BOUNDS[bits][1]}"
                )
            return v

        return narrow
    if ibis in _IBIS_INT_BITS and t.kind == "dec":
        scale = t.s

        def to_int(v: int) -> int:
            q, r = divmod(v, 10**scale)
            if r:
                raise EvaluationError(f"Rescaling Decimal value would cause data loss: {_dec_str(v, scale)}")
            return q

        return to_int
    if ibis in _IBIS_INT_BITS and t.kind == "double":  # pragma: no cover - Ibis types these as float64
        return int
    if ibis == "date" and t.kind == "timestamp":
        return datetime.date
    if ibis == "timestamp" and t.kind == "date":  # pragma: no cover - DuckDB makes these timestamps
        return _date_to_ts
    return None


def compile_row(
    text: str, column_types: Mapping[str, str], *, check: bool = True, unknown: str = "column"
) -> RowFunction:
    """Compile a snippet into ``f(row) -> value`` with the same result as the offline Ibis/DuckDB path.

    ``column_types`` maps each name the snippet may use to its Trellis logical type (``trellis.types``).
    ``check=True`` (the default) first runs ``trellis.expr.check`` -- which imports Ibis, once -- so that
    exactly the snippets the offline path accepts compile; pass ``check=False`` when the definitions were
    validated already (``trellis validate``, project load) to keep Ibis out of the process: the compiler
    then applies its own copy of those type rules. ``unknown`` is what an unknown name is called in errors.

    The returned function raises ``KeyError`` for a missing column, ``TypeError`` for a value of the wrong
    type and ``EvaluationError`` where DuckDB raises. It carries ``text``, ``columns`` (names it reads) and
    ``result_type`` (logical type of the result) as attributes.
    """
    for name, logical in column_types.items():
        if logical not in _READERS:
            raise ExpressionError(
                f"column {name!r} has unknown type {logical!r}; expected one of {', '.join(_READERS)}"
            )
    if check:
        from trellis import expr  # imports Ibis

        expected = expr.check(text, column_types, unknown=unknown)
    parsed = parse(text)
    compiler = _Compiler(text, column_types, unknown)
    root = compiler.go(parsed.tree)
    eager = _common_subexpressions(root)
    if eager:  # compile again, computing those first for every row
        compiler = _Compiler(text, column_types, unknown, eager)
        root = compiler.go(parsed.tree)
    result_type = _ibis_logical(root.ibis)
    if check and result_type != expected:  # pragma: no cover - a bug in the type rules here
        raise AssertionError(f"{text!r}: rowexpr types the result {result_type}, trellis.expr {expected}")
    convert = None if root.ibis == "null" else _output(root.t, root.ibis)
    fn = root.fn
    if compiler.eager_fns:
        inner, first = fn, tuple(compiler.eager_fns)

        def fn(row: Mapping[str, Any]) -> Any:
            scope = _Scope(row)
            values = scope.values
            for g in first:
                values.append(g(scope))
            return inner(scope)

    if root.ibis == "null":

        def evaluate(row: Mapping[str, Any]) -> Any:
            fn(row)  # for what it raises
            return None
    elif convert is None:
        evaluate = fn  # a closure of this compilation: the attributes below are its own
    else:

        def evaluate(row: Mapping[str, Any]) -> Any:
            v = fn(row)
            return None if v is None else convert(v)

    if root.folded and root.ibis != "null":
        try:
            value = root.value if root.value is None or convert is None else convert(root.value)
        except EvaluationError:  # raised when evaluated, as DuckDB does
            pass
        else:
            evaluate = _constant(value)
    evaluate.text = text  # type: ignore[attr-defined]
    evaluate.columns = parsed.columns  # type: ignore[attr-defined]
    evaluate.result_type = result_type  # type: ignore[attr-defined]
    return evaluate
