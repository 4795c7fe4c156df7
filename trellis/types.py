"""The one type mapping every compiler uses.

A definition names a logical type (``int64``, ``float64``, ``string``, ...). Each target needs its own
spelling of it: Ibis dtypes for the offline expressions, DuckDB SQL for dbt contracts, Feast types for
feature views, pandas dtypes for Pandera, and whether CatBoost treats it as categorical. Keeping the table
here means a new type is added once and every target agrees on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

LogicalType = Literal["int64", "int32", "float64", "bool", "string", "timestamp", "date"]
LOGICAL_TYPES: tuple[str, ...] = ("int64", "int32", "float64", "bool", "string", "timestamp", "date")


@dataclass(frozen=True)
class TypeMapping:
    ibis: str
    duckdb: str
    feast: str  # name of the feast.types attribute
    pandas: str
    numeric: bool
    categorical: bool


TYPES: dict[str, TypeMapping] = {
    "int64": TypeMapping("int64", "BIGINT", "Int64", "int64", True, False),
    "int32": TypeMapping("int32", "INTEGER", "Int32", "int32", True, False),
    "float64": TypeMapping("float64", "DOUBLE", "Float64", "float64", True, False),
    "bool": TypeMapping("boolean", "BOOLEAN", "Bool", "bool", False, True),
    "string": TypeMapping("string", "VARCHAR", "String", "object", False, True),
    "timestamp": TypeMapping("timestamp", "TIMESTAMP", "UnixTimestamp", "datetime64[us]", False, False),
    "date": TypeMapping("date", "DATE", "UnixTimestamp", "datetime64[us]", False, False),
}

# DuckDB reports some types under other names (information_schema, DESCRIBE); map them back.
_DUCKDB_ALIASES = {
    "BIGINT": "int64",
    "INTEGER": "int32",
    "DOUBLE": "float64",
    "BOOLEAN": "bool",
    "VARCHAR": "string",
    "TIMESTAMP": "timestamp",
    "TIMESTAMP_NS": "timestamp",
    "TIMESTAMP_US": "timestamp",
    "DATE": "date",
    "TINYINT": "int32",
    "SMALLINT": "int32",
    "FLOAT": "float64",
}


# The logical types spelled for the other dbt targets (``trellis compile --target``): staging casts and contracts.
# PostgreSQL's spellings are those Ibis writes in the casts of the compiled SQL (a string is VARCHAR, not TEXT:
# dbt's contract check compares the types PostgreSQL reports, and it tells the two apart).
SQL_TYPES: dict[str, dict[str, str]] = {
    "postgres": {
        "int64": "BIGINT",
        "int32": "INTEGER",
        "float64": "DOUBLE PRECISION",
        "bool": "BOOLEAN",
        "string": "VARCHAR",
        "timestamp": "TIMESTAMP",
        "date": "DATE",
    },
    # Spark's TIMESTAMP is zone-aware (shown in the session time zone); TIMESTAMP_NTZ is the naive one Trellis means.
    "spark": {
        "int64": "BIGINT",
        "int32": "INT",
        "float64": "DOUBLE",
        "bool": "BOOLEAN",
        "string": "STRING",
        "timestamp": "TIMESTAMP_NTZ",
        "date": "DATE",
    },
}


def sql_type(logical: str, target: str = "duckdb") -> str:
    """The SQL spelling of a logical type on a dbt target (duckdb, postgres, spark)."""
    if target == "duckdb":
        return mapping(logical).duckdb
    mapping(logical)  # names an unknown type
    return SQL_TYPES[target][logical]


def mapping(logical: str) -> TypeMapping:
    try:
        return TYPES[logical]
    except KeyError:
        raise ValueError(f"unknown type {logical!r}; expected one of {', '.join(LOGICAL_TYPES)}") from None


def pandas_dtype(logical: str, nullable: bool) -> str:
    """The pandas dtype of a column: a nullable integer or boolean column (an empty window's min/max/last/first,
    a LEFT JOIN's miss) needs pandas' nullable dtypes, which numpy's cannot hold."""
    if nullable and logical in ("int64", "int32"):
        return "Int64" if logical == "int64" else "Int32"
    if nullable and logical == "bool":
        return "boolean"
    return mapping(logical).pandas


# Arrow's names (``str(pa.DataType)``) of the types Trellis writes itself (the simulator's tables).
_ARROW_ALIASES = {
    "int64": "int64",
    "int32": "int32",
    "double": "float64",
    "bool": "bool",
    "string": "string",
    "timestamp[us]": "timestamp",
    "date32[day]": "date",
}


def from_arrow(arrow_type: object) -> str | None:
    """Logical type for an Arrow type (``pyarrow.DataType``), or None when Trellis has no mapping for it."""
    return _ARROW_ALIASES.get(str(arrow_type))


def from_duckdb(sql_type: str) -> str | None:
    """Logical type for a DuckDB column type, or None when Trellis has no mapping for it."""
    return _DUCKDB_ALIASES.get(sql_type.upper())


def aggregate_output_type(agg: str, input_type: str | None) -> str:
    """Type of a windowed aggregation's result: counts are integers, moments are floats,
    order statistics keep the input's type."""
    if agg in ("count", "count_distinct"):
        return "int64"
    if agg in ("mean", "std"):
        return "float64"
    if agg == "sum":
        return "float64" if input_type == "float64" else "int64"
    return input_type or "float64"  # unknown input: the definition checks report it


def on_scale(values, scale: int):  # noqa: ANN001, ANN201 (a float or an array in, a bool or a bool array out)
    """Whether each value is a multiple of 10^-scale (a column's declared ``scale``), up to the float error of
    writing such a multiple in binary: 12.34 is, 12.345 is not at scale 2. NaN is not."""
    if type(values) is float or type(values) is int:  # one value (the API's check, per field): no array
        x = float(values) * 10.0**scale
        return math.isfinite(x) and abs(x - round(x)) <= max(1e-6, abs(x) * 1e-15)
    import numpy as np

    x = np.asarray(values, dtype=np.float64) * 10.0**scale
    return np.abs(x - np.rint(x)) <= np.maximum(1e-6, np.abs(x) * 1e-15)
