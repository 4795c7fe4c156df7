"""Cross-checks between definitions: references, columns, types and SQL snippets.

Every check runs, even when an earlier one found problems, so that one load reports everything wrong;
a check only skips what it cannot judge (e.g. columns of a group whose source does not exist), and request
features that use a broken group's features are not checked against them (that group is already reported).
"""

from __future__ import annotations

from trellis import expr
from trellis.errors import Problem, did_you_mean
from trellis.spec import FeatureGroup, Model, Project, RequestFeatures, Source, column_name
from trellis.types import mapping

_NUMERIC_AGGS = {"sum", "mean", "std"}


def check_project(project: Project) -> list[Problem]:
    problems: list[Problem] = []
    for source in project.sources.values():
        problems += _check_source(project, source)
    broken: set[str] = set()
    for group in project.feature_groups.values():
        found = _check_group(project, group)
        if found:
            broken.add(group.name)
        problems += found
    for request in project.request_features.values():
        problems += _check_request(project, request, broken)
    for model in project.models.values():
        problems += _check_model(project, model, broken)
    return problems


def _check_model(project: Project, model: Model, broken: set[str]) -> list[Problem]:
    out = []
    sources = project.sources
    for field, name in (("spine",), model.spine), (("label", "source"), model.label.source):
        if name not in sources:
            out.append(project.problem(model, field, f"unknown source {name!r}{did_you_mean(name, sources)}"))
    if out:
        return out
    spine, labels = sources[model.spine], sources[model.label.source]
    if model.label.column not in labels.columns:
        out.append(project.problem(model, ("label", "column"), f"unknown column {model.label.column!r} in source "
                                   f"{labels.name!r}{did_you_mean(model.label.column, labels.columns)}"))
    elif not mapping(labels.columns[model.label.column].type).numeric and \
            labels.columns[model.label.column].type != "bool":
        out.append(project.problem(model, ("label", "column"),
                                   f"label {model.label.column!r} must be 0/1 or boolean, not "
                                   f"{labels.columns[model.label.column].type}"))
    for table in (spine, labels):
        if model.label.join_key not in table.columns:
            out.append(project.problem(model, ("label", "join_key"),
                                       f"source {table.name!r} has no column {model.label.join_key!r}"
                                       f"{did_you_mean(model.label.join_key, table.columns)}"))
    if broken:  # the groups' own problems are reported; their features cannot be judged here
        return out
    if model.card_key is not None and model.card_key not in spine.columns:
        out.append(project.problem(model, ("card_key",), f"spine {spine.name!r} has no column {model.card_key!r}"
                                   f"{did_you_mean(model.card_key, spine.columns)}"))
    known = [*project.feature_groups, *project.all_features(), *project.request_features]
    for index, ref in enumerate(model.features):
        if ref not in known:
            out.append(project.problem(model, ("features", index),
                                       f"unknown feature, feature group or request feature set {ref!r}"
                                       f"{did_you_mean(ref, known)}"))
    features, _ = project.model_inputs(model)
    for feature in features:
        group = project.feature_groups[feature.group]
        key = project.key_column(group)
        if key not in spine.columns:
            out.append(project.problem(model, ("features",),
                                       f"feature {feature.qualified!r} is keyed by {key!r}, which spine "
                                       f"{spine.name!r} does not have"))
            break
    return out


def _check_source(project: Project, source: Source) -> list[Problem]:
    out = []
    if source.table is not None and source.path is not None:
        out.append(project.problem(
            source, ("path",),
            f"give either 'table' or 'path', not both (table: {source.table!r}, path: {source.path!r})"))
    elif source.table is None and source.path is None:
        out.append(project.problem(
            source, ("table",),
            "missing 'table' or 'path': where the rows are (a DuckDB table such as raw.transactions, "
            "or a .parquet / .csv file)"))
    if source.path is not None and not source.path.endswith((".parquet", ".csv")):
        out.append(project.problem(source, ("path",), f"{source.path!r} must be a .parquet or .csv file"))
    for field in ("event_time", "available_at", "primary_key"):
        column = getattr(source, field)
        if column is None:
            continue
        if column not in source.columns:
            out.append(project.problem(
                source, (field,),
                f"unknown column {column!r} in source {source.name!r}{did_you_mean(column, source.columns)}"))
        elif field != "primary_key" and source.columns[column].type != "timestamp":
            out.append(project.problem(
                source, (field,), f"column {column!r} must be a timestamp, not {source.columns[column].type}"))
    return out


def _check_group(project: Project, group: FeatureGroup) -> list[Problem]:
    out = []
    entity = project.entities.get(group.entity)
    if entity is None:
        out.append(project.problem(
            group, ("entity",), f"unknown entity {group.entity!r}{did_you_mean(group.entity, project.entities)}"))
    if group.source not in project.sources:
        out.append(project.problem(
            group, ("source",), f"unknown source {group.source!r}{did_you_mean(group.source, project.sources)}"))
    if group.spine is not None and group.spine not in project.sources:
        out.append(project.problem(
            group, ("spine",), f"unknown source {group.spine!r}{did_you_mean(group.spine, project.sources)}"))
    out += _check_feature_names(project, group)
    if group.source not in project.sources:
        return out  # columns, filter and expressions are all judged against the source
    source = project.sources[group.source]
    if entity is not None:
        out += _check_key(project, group, source)
    types = {name: column.type for name, column in source.columns.items()}
    if group.filter is not None:
        try:
            expr.check(group.filter, types, expect="bool")
        except expr.ExpressionError as exc:
            out.append(project.problem(group, ("filter",), str(exc)))
    for index, feature in enumerate(group.features):
        at = ("features", index)
        if feature.column is not None and feature.expr is not None:
            out.append(project.problem(
                group, (*at, "expr"),
                f"feature {feature.name!r} gives both 'column' ({feature.column!r}) and 'expr'; give only one"))
            continue
        if feature.agg != "count" and feature.column is None and feature.expr is None:
            out.append(project.problem(
                group, (*at, "agg"),
                f"aggregation {feature.agg!r} of feature {feature.name!r} needs a 'column' or an 'expr' "
                f"to aggregate (only 'count' works without one)"))
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
                    f"aggregation {feature.agg!r} needs a numeric column, but {source.name}.{feature.column} "
                    f"is {input_type}"))
        if feature.expr is not None:
            try:
                expr.check(feature.expr, types, expect="numeric" if feature.agg in _NUMERIC_AGGS else None)
            except expr.ExpressionError as exc:
                out.append(project.problem(group, (*at, "expr"), str(exc)))
    return out


def _check_key(project: Project, group: FeatureGroup, source: Source) -> list[Problem]:
    out = []
    entity = project.entities[group.entity]
    key = project.key_column(group)
    field = "key_column" if group.key_column else "entity"
    tables = [("source", source)]
    if group.spine is not None and group.spine != group.source and group.spine in project.sources:
        tables.append(("spine", project.sources[group.spine]))
    for role, table in tables:
        if key not in table.columns:
            out.append(project.problem(
                group, (field,),
                f"{role} {table.name!r} has no key column {key!r} for entity {entity.name!r}"
                f"{did_you_mean(key, table.columns)}"))
        elif table.columns[key].type != entity.key_type:
            out.append(project.problem(
                group, (field,),
                f"key type mismatch: {role} column {table.name}.{key} is {table.columns[key].type}, but entity "
                f"{entity.name!r} has key_type {entity.key_type}"))
    return out


def _check_feature_names(project: Project, group: FeatureGroup) -> list[Problem]:
    out = []
    first: dict[str, int] = {}
    for index, feature in enumerate(group.features):
        for window in feature.windows or [None]:
            name = column_name(feature, window)
            if name in first and first[name] != index:
                out.append(project.problem(
                    group, ("features", index, "name"),
                    f"feature column {name!r} is produced twice (features[{first[name]}] and features[{index}] "
                    f"of group {group.name!r}); rename one"))
            first.setdefault(name, index)
    return out


def _check_request(project: Project, request: RequestFeatures, broken: set[str]) -> list[Problem]:
    out = []
    available = dict(request.request_schema)
    unjudged: set[str] = set()  # features of groups with problems of their own
    for group in project.feature_groups.values():
        if group.name in broken:
            unjudged |= {f"{group.name}__{column_name(f, w)}" for f in group.features for w in f.windows or [None]}
            continue
        for feature in project.features(group):
            available.setdefault(feature.qualified, feature.dtype)
    seen: dict[str, int] = {}
    for index, feature in enumerate(request.features):
        if feature.name in seen:
            out.append(project.problem(
                request, ("features", index, "name"),
                f"duplicate request feature {feature.name!r} (also features[{seen[feature.name]}])"))
        seen.setdefault(feature.name, index)
        try:
            if set(expr.parse(feature.expr).columns) & unjudged:
                continue
            expr.check(feature.expr, available, unknown="request field or feature")
        except expr.ExpressionError as exc:
            out.append(project.problem(request, ("features", index, "expr"), str(exc)))
    return out
