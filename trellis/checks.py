"""Cross-checks between definitions: references, columns, types and SQL snippets."""

from __future__ import annotations

from trellis import expr
from trellis.errors import Problem, did_you_mean
from trellis.spec import FeatureGroup, Project, RequestFeatures, Source
from trellis.types import mapping

_NUMERIC_AGGS = {"sum", "mean", "std"}


def check_project(project: Project) -> list[Problem]:
    problems: list[Problem] = []
    for source in project.sources.values():
        problems += _check_source(project, source)
    if problems:
        return problems
    for group in project.feature_groups.values():
        problems += _check_group(project, group)
    if problems:
        return problems
    for request in project.request_features.values():
        problems += _check_request(project, request)
    return problems


def _check_source(project: Project, source: Source) -> list[Problem]:
    out = []
    if (source.table is None) == (source.path is None):
        out.append(project.problem(source, ("table",), "give exactly one of 'table' or 'path'"))
    if source.path is not None and not source.path.endswith((".parquet", ".csv")):
        out.append(project.problem(source, ("path",), f"{source.path!r} must be a .parquet or .csv file"))
    for field in ("event_time", "available_at", "primary_key"):
        column = getattr(source, field)
        if column is None:
            continue
        if column not in source.columns:
            out.append(project.problem(
                source, (field,), f"unknown column {column!r}{did_you_mean(column, source.columns)}"))
        elif field != "primary_key" and source.columns[column].type != "timestamp":
            out.append(project.problem(
                source, (field,), f"column {column!r} must be a timestamp, not {source.columns[column].type}"))
    return out


def _check_group(project: Project, group: FeatureGroup) -> list[Problem]:
    out = []
    if group.entity not in project.entities:
        out.append(project.problem(
            group, ("entity",), f"unknown entity {group.entity!r}{did_you_mean(group.entity, project.entities)}"))
    if group.source not in project.sources:
        out.append(project.problem(
            group, ("source",), f"unknown source {group.source!r}{did_you_mean(group.source, project.sources)}"))
    if group.spine is not None and group.spine not in project.sources:
        out.append(project.problem(
            group, ("spine",), f"unknown source {group.spine!r}{did_you_mean(group.spine, project.sources)}"))
    if out:
        return out
    source = project.sources[group.source]
    entity = project.entities[group.entity]
    key = project.key_column(group)
    for role, table in (("source", source), ("spine", project.spine_of(group))):
        if key not in table.columns:
            out.append(project.problem(
                group, ("key_column" if group.key_column else "entity",),
                f"{role} {table.name!r} has no key column {key!r} for entity {entity.name!r}"
                f"{did_you_mean(key, table.columns)}"))
        elif table.columns[key].type != entity.key_type:
            out.append(project.problem(
                group, ("entity",),
                f"{role} column {table.name}.{key} is {table.columns[key].type} but entity "
                f"{entity.name!r} keys are {entity.key_type}"))
    types = {name: column.type for name, column in source.columns.items()}
    if group.filter is not None:
        try:
            expr.check(group.filter, types, expect="bool")
        except expr.ExpressionError as exc:
            out.append(project.problem(group, ("filter",), str(exc)))
    for index, feature in enumerate(group.features):
        at = ("features", index)
        if feature.column is not None and feature.expr is not None:
            out.append(project.problem(group, (*at, "expr"), "give either 'column' or 'expr', not both"))
            continue
        if feature.agg != "count" and feature.column is None and feature.expr is None:
            out.append(project.problem(group, (*at, "agg"), f"aggregation {feature.agg!r} needs a 'column' or 'expr'"))
            continue
        if feature.column is not None:
            if feature.column not in source.columns:
                out.append(project.problem(
                    group, (*at, "column"),
                    f"unknown column {feature.column!r} in source {source.name!r}"
                    f"{did_you_mean(feature.column, source.columns)}"))
                continue
            input_type = source.columns[feature.column].type
            if feature.agg in _NUMERIC_AGGS and not mapping(input_type).numeric:
                out.append(project.problem(
                    group, (*at, "column"),
                    f"{feature.agg} needs a numeric column; {feature.column!r} is {input_type}"))
        if feature.expr is not None:
            try:
                expr.check(feature.expr, types, expect="numeric" if feature.agg in _NUMERIC_AGGS else None)
            except expr.ExpressionError as exc:
                out.append(project.problem(group, (*at, "expr"), str(exc)))
    names = [f.name for f in project.features(group)]
    for name in {n for n in names if names.count(n) > 1}:
        out.append(project.problem(group, ("features",), f"feature column {name!r} is produced twice"))
    return out


def _check_request(project: Project, request: RequestFeatures) -> list[Problem]:
    out = []
    available = dict(request.request_schema)
    for name, feature in project.all_features().items():
        available[name] = feature.dtype
    for index, feature in enumerate(request.features):
        try:
            expr.check(feature.expr, available)
        except expr.ExpressionError as exc:
            out.append(project.problem(request, ("features", index, "expr"), str(exc)))
    return out
