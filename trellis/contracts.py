"""Pandera contracts built from the definitions, and ingestion that enforces a source's contract.

A source row that breaks its contract is never dropped silently: it goes to ``quarantine.<source>`` with
the reason, and the counts always add up (rows in = rows accepted + rows quarantined). A source that
declares ``on_violation: fail`` stops the run instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import pandas as pd
import pandera.pandas as pa

from trellis.compile.dbt import VALIDATED_SCHEMA, FeatureModel
from trellis.spec import Project, Source
from trellis.types import mapping, on_scale

QUARANTINE_SCHEMA = "quarantine"


def _checks(col) -> list[pa.Check]:
    checks = []
    if col.checks.ge is not None:
        checks.append(pa.Check.ge(col.checks.ge))
    if col.checks.le is not None:
        checks.append(pa.Check.le(col.checks.le))
    if col.checks.isin is not None:
        checks.append(pa.Check.isin(col.checks.isin))
    if col.scale is not None:
        checks.append(pa.Check(lambda values, scale=col.scale: pd.Series(on_scale(values, scale), index=values.index),
                               name="scale",
                               error=f"a multiple of {10.0 ** -col.scale:g} (scale {col.scale})"))
    return checks


def source_schema(source: Source) -> pa.DataFrameSchema:
    columns = {
        name: pa.Column(mapping(col.type).pandas, checks=_checks(col), nullable=not col.checks.not_null, coerce=True)
        for name, col in source.columns.items()
    }
    unique = [source.primary_key] if source.primary_key else None
    return pa.DataFrameSchema(columns, name=f"source {source.name}", unique=unique, strict="filter")


def feature_schema(project: Project, group_name: str) -> pa.DataFrameSchema:
    model = FeatureModel(project, project.feature_groups[group_name])
    counts = {f.name for f in model.compiler.features if f.agg in ("count", "count_distinct")}
    columns = {}
    for name, dtype in model.columns():
        is_feature = any(f.name == name for f in model.compiler.features)
        checks = [pa.Check.ge(0)] if name in counts else []
        columns[name] = pa.Column(mapping(dtype).pandas, checks=checks,
                                  nullable=is_feature and name not in counts, coerce=True)
    return pa.DataFrameSchema(columns, name=f"feature table {model.name}", strict=True)


class ContractViolation(Exception):
    pass


@dataclass(frozen=True)
class IngestResult:
    source: str
    rows_in: int
    rows_accepted: int
    rows_quarantined: int
    reasons: dict[str, int]


def ingest(con: duckdb.DuckDBPyConnection, project: Project, source: Source) -> IngestResult:
    """Validate a source against its contract; write accepted rows to ``validated.<name>`` and rejected ones
    (with a ``_reason``) to ``quarantine.<name>``."""
    relation = source.table if source.table else _file_relation(project, source)
    frame = con.sql(f"select * from {relation}").df()
    schema = source_schema(source)
    rows_in = len(frame)
    try:
        accepted = schema.validate(frame, lazy=True)
        rejected = frame.iloc[0:0].assign(_reason=pd.Series(dtype="object"))
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        row_cases = cases[cases["index"].notna()]
        table_cases = cases[cases["index"].isna()]
        if not table_cases.empty:  # a missing column or wrong table shape: nothing can be accepted
            raise ContractViolation(
                f"source {source.name!r} ({relation}) does not match its definition: "
                + "; ".join(f"{r.column}: {r.check} ({r.failure_case})" for r in table_cases.itertuples())
            ) from None
        reasons = (row_cases.assign(reason=row_cases["column"].astype(str) + ": " + row_cases["check"].astype(str)
                                    + " (got " + row_cases["failure_case"].astype(str) + ")")
                   .groupby("index")["reason"].agg("; ".join))
        bad = frame.index.isin(reasons.index)
        rejected = frame[bad].assign(_reason=reasons.reindex(frame.index[bad]).to_numpy())
        accepted = schema.validate(frame[~bad], lazy=True)
        if source.on_violation == "fail":
            sample = "; ".join(rejected["_reason"].head(5))
            raise ContractViolation(
                f"source {source.name!r}: {len(rejected)} of {rows_in} rows break the contract "
                f"(on_violation: fail). First: {sample}"
            ) from None
    for schema_name, table in ((VALIDATED_SCHEMA, accepted), (QUARANTINE_SCHEMA, rejected)):
        con.execute(f"create schema if not exists {schema_name}")
        con.register("__frame", table)
        con.execute(f"create or replace table {schema_name}.{source.name} as select * from __frame")
        con.unregister("__frame")
    counts = rejected["_reason"].str.split("; ").explode().str.split(" \\(got").str[0].value_counts()
    return IngestResult(source.name, rows_in, len(accepted), len(rejected), {k: int(v) for k, v in counts.items()})


def _file_relation(project: Project, source: Source) -> str:
    path = (project.root / source.path).resolve()
    if not path.exists():
        raise ContractViolation(f"source {source.name!r}: file {path} does not exist")
    reader = "read_parquet" if path.suffix == ".parquet" else "read_csv_auto"
    return f"{reader}('{path}')"
