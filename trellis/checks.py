"""Cross-checks between definitions: references, columns, types and SQL snippets.

Every check runs, even when an earlier one found problems, so that one load reports everything wrong;
a check only skips what it cannot judge (e.g. columns of a group whose source does not exist), and a reference
into a definition with problems of its own is not reported again: request features and models that use a
broken group's features (its own problems reported here, or its definition partly or not at all loaded, see
``Project.unjudged``), and references to a definition that failed to load.
"""

from __future__ import annotations

from trellis import expr
from trellis.errors import Problem, did_you_mean
from trellis.spec import FeatureGroup, Model, Project, RequestFeatures, Source, column_name
from trellis.types import from_arrow, mapping

_NUMERIC_AGGS = {"sum", "mean", "std"}
# Schemas Trellis writes into (ingestion, dbt, batch scores): a source table there would be replaced by
# Trellis' own output, so a definition may not name one.
TRELLIS_SCHEMAS = ("validated", "quarantine", "staging", "features", "scores")


def check_project(project: Project) -> list[Problem]:
    problems: list[Problem] = []
    broken_sources: set[str] = set()
    for source in project.sources.values():
        found = _check_source(project, source)
        if found:
            broken_sources.add(source.name)
        problems += found
    problems += _check_simulation(project, broken_sources)
    broken: set[str] = set(project.partial & set(project.feature_groups))
    for group in project.feature_groups.values():
        found = _check_group(project, group)
        # A definition the group names is missing (reported, here or where it failed to load): the group's
        # features cannot be resolved, so what refers to them is not judged.
        unresolved = group.entity not in project.entities or any(
            name not in project.sources for name in (group.source, group.spine or group.source))
        if found or unresolved:
            broken.add(group.name)
        problems += found
    for request in project.request_features.values():
        problems += _check_request(project, request, broken)
    for model in project.models.values():
        problems += _check_model(project, model, broken)
    return problems


def _unjudged_ref(project: Project, ref: str, broken: set[str]) -> bool:
    """Whether ``ref`` (a feature group, a group's feature ``group__name``, or a request feature set) may point
    into a definition whose own problems are reported: a group with problems (``broken``), or a definition that
    did not load, so that it resolving to nothing is not a problem of its own."""
    if not (project.judges("feature_group", ref) and project.judges("request_features", ref)):
        return True
    if "__" in ref and "feature_group" in project.unjudged_kinds:
        return True
    return any(ref.startswith(f"{group}__") for group in (*broken, *project.unjudged))


def _check_model(project: Project, model: Model, broken: set[str]) -> list[Problem]:
    out = []
    sources = project.sources
    for field, name in (("spine",), model.spine), (("label", "source"), model.label.source):
        if name not in sources and project.judges("source", name):
            out.append(project.problem(model, field, f"unknown source {name!r}{did_you_mean(name, sources)}"))
    spine, labels = sources.get(model.spine), sources.get(model.label.source)
    if labels is not None and model.label.column not in labels.columns:
        out.append(project.problem(model, ("label", "column"), f"unknown column {model.label.column!r} in source "
                                   f"{labels.name!r}{did_you_mean(model.label.column, labels.columns)}"))
    elif labels is not None and not mapping(labels.columns[model.label.column].type).numeric and \
            labels.columns[model.label.column].type != "bool":
        out.append(project.problem(model, ("label", "column"),
                                   f"label {model.label.column!r} must be 0/1 or boolean, not "
                                   f"{labels.columns[model.label.column].type}"))
    for table in (t for t in (spine, labels) if t is not None):
        if model.label.join_key not in table.columns:
            out.append(project.problem(model, ("label", "join_key"),
                                       f"source {table.name!r} has no column {model.label.join_key!r}"
                                       f"{did_you_mean(model.label.join_key, table.columns)}"))
    if spine is not None:
        out += _check_summaries(project, model, spine)
        out += _check_decision(project, model, spine)
        out += _check_fairness(project, model, spine, broken)
        if model.card_key is not None and model.card_key not in spine.columns:
            out.append(project.problem(model, ("card_key",), f"spine {spine.name!r} has no column "
                                       f"{model.card_key!r}{did_you_mean(model.card_key, spine.columns)}"))
    resolved = {name: group for name, group in project.feature_groups.items() if group.source in project.sources}
    known = [*project.feature_groups, *(f.qualified for g in resolved.values() for f in project.features(g)),
             *project.request_features]
    known_set = set(known)
    for index, ref in enumerate(model.features):
        if ref not in known_set and not _unjudged_ref(project, ref, broken):
            out.append(project.problem(model, ("features", index),
                                       f"unknown feature, feature group or request feature set {ref!r}"
                                       f"{did_you_mean(ref, known)}"))
    features, _ = project.model_inputs(model) if len(resolved) == len(project.feature_groups) else ([], [])
    for feature in features:
        group = project.feature_groups[feature.group]
        if spine is None or group.name in broken:  # the group's own problems are reported (its key, its entity)
            continue
        key = project.key_column(group)
        if key not in spine.columns:
            out.append(project.problem(model, ("features",),
                                       f"feature {feature.qualified!r} is keyed by {key!r}, which spine "
                                       f"{spine.name!r} does not have"))
            break
    return out


_OVERRIDE_TYPES = {"int64": int, "int32": int, "string": str, "bool": bool}  # what a `when` value may match


def _check_decision(project: Project, model: Model, spine: Source) -> list[Problem]:
    """A decision override names spine columns (the request carries them) with values of their type."""
    out = []
    for index, override in enumerate(model.decision.overrides if model.decision is not None else ()):
        for name, value in override.when.items():
            where = ("decision", "overrides", index, "when", name)
            column = spine.columns.get(name)
            if column is None:
                out.append(project.problem(model, where, f"spine {spine.name!r} has no column {name!r}"
                                           f"{did_you_mean(name, spine.columns)}"))
            elif column.type not in _OVERRIDE_TYPES:
                out.append(project.problem(model, where, f"column {name!r} is a {column.type}: overrides match "
                                           f"{', '.join(_OVERRIDE_TYPES)} columns"))
            elif type(value) is not _OVERRIDE_TYPES[column.type]:
                out.append(project.problem(model, where, f"{value!r} can never equal column {name!r} "
                                           f"({column.type})"))
    return out


def _check_summaries(project: Project, model: Model, spine: Source) -> list[Problem]:
    """Batch summaries: unique names, asset names no other model's scores take, and a 'by' column the spine or
    the lookup table has (checked against the simulator's table when the simulation writes the lookup)."""
    if model.batch_scoring is None:
        return []
    out = []
    simulated = {table.lower(): name for s in project.sources.values() for table, name in s.simulated_writes}
    seen: dict[str, int] = {}
    for index, summary in enumerate(model.batch_scoring.summaries):
        at = ("batch_scoring", "summaries", index)
        if summary.name in seen:
            out.append(project.problem(model, (*at, "name"), f"duplicate summary {summary.name!r} (also "
                                                             f"summaries[{seen[summary.name]}])"))
        seen.setdefault(summary.name, index)
        asset = f"{model.name}_{summary.name}"
        if asset in project.models:
            out.append(project.problem(model, (*at, "name"), f"summary {summary.name!r} would be scores/{asset}, "
                                                             f"the scores of model {asset!r}; rename it"))
        if summary.lookup is None:
            if summary.by not in spine.columns:
                out.append(project.problem(
                    model, (*at, "by"),
                    f"spine {spine.name!r} has no column {summary.by!r}{did_you_mean(summary.by, spine.columns)}; "
                    f"give a lookup (table and key) where it comes from"))
            continue
        if summary.lookup.key not in spine.columns:
            out.append(project.problem(
                model, (*at, "lookup", "key"),
                f"spine {spine.name!r} has no column {summary.lookup.key!r}"
                f"{did_you_mean(summary.lookup.key, spine.columns)}"))
        generated = simulated.get(summary.lookup.table.lower())
        if generated is not None:
            columns = simulator_columns(generated)
            for field, column in (("key", summary.lookup.key), ("by", summary.by)):
                if column not in columns:
                    out.append(project.problem(
                        model, (*at, "by") if field == "by" else (*at, "lookup", "key"),
                        f"{summary.lookup.table} (the simulator's {generated} table) has no column {column!r}"
                        f"{did_you_mean(column, columns)}"))
    return out


def _check_fairness(project: Project, model: Model, spine: Source, broken: set[str]) -> list[Problem]:
    """Fairness segments read columns that exist: a spine column (or one of the model's feature columns, which
    the scored rows also hold), or, with a lookup, a key the spine has and a column of the lookup table (checked
    against the simulator's table when the simulation writes it, or a declared source's table); bands of a
    number, and the simulated region of an integer id. What only the warehouse knows (a table no definition
    describes) is left to ``trellis.fairness.attach_segment_columns``."""
    if model.fairness is None:
        return []
    out = []
    simulated = {table.lower(): name for s in project.sources.values() for table, name in s.simulated_writes}
    declared = {s.table.lower(): s for s in project.sources.values() if s.table is not None}
    features, requests = project.model_inputs(model) if all(
        group.source in project.sources for group in project.feature_groups.values()) else ([], [])
    scored = {**{name: column.type for name, column in spine.columns.items()},
              **{f.qualified: f.dtype for f in features},
              **{f"{r.name}__{item.name}": None for r in requests for item in r.features}}
    for name, segment in model.fairness.segments.items():
        at = ("fairness", "segments", name)
        if segment.lookup is None:
            if segment.column not in scored:
                if "__" in segment.column and _unjudged_ref(project, segment.column, broken):
                    continue  # maybe a feature of a group whose own problems are reported
                out.append(project.problem(
                    model, (*at, "column"),
                    f"{segment.column!r} is not a column of spine {spine.name!r} nor a feature of the model"
                    f"{did_you_mean(segment.column, scored)}; give a lookup (table and key) where it comes from"))
                continue
            kind = scored[segment.column]
        else:
            lookup = segment.lookup
            if lookup.key not in spine.columns:
                out.append(project.problem(model, (*at, "lookup", "key"),
                                           f"spine {spine.name!r} has no column {lookup.key!r}"
                                           f"{did_you_mean(lookup.key, spine.columns)}"))
            table = lookup.table.lower()
            if table in simulated:
                columns, what = simulator_columns(simulated[table]), f"(the simulator's {simulated[table]} table)"
            elif table in declared:
                source = declared[table]
                columns = {c: column.type for c, column in source.columns.items()}
                what = f"(the table of source {source.name!r})"
            else:
                continue
            for field, column in (("key", lookup.key), ("column", segment.column)):
                if column not in columns:
                    out.append(project.problem(
                        model, (*at, "lookup", "key") if field == "key" else (*at, "column"),
                        f"{lookup.table} {what} has no column {column!r}{did_you_mean(column, columns)}"))
            if segment.column not in columns:
                continue
            kind = columns[segment.column]
        if kind is None:  # a request feature: its type is known only once computed
            continue
        if segment.edges is not None and not mapping(kind).numeric:
            out.append(project.problem(model, (*at, "edges"), f"bands need a number; column {segment.column!r} "
                                                              f"is a {kind}"))
        if segment.derive == "simulated_region" and kind not in ("int64", "int32"):
            out.append(project.problem(model, (*at, "derive"), f"the simulated region is derived from an integer "
                                                               f"customer id; column {segment.column!r} is a {kind}"))
    return out


_LOCATIONS = ("table", "path", "postgres", "derived_from")  # where a source's rows are: exactly one


def _check_source(project: Project, source: Source) -> list[Problem]:
    out = []
    given = [field for field in _LOCATIONS if getattr(source, field) is not None]
    if len(given) > 1:
        shown = {"postgres": source.postgres.table if source.postgres else None}
        values = ", ".join(f"{field}: {shown.get(field) or getattr(source, field)!r}" for field in given)
        out.append(project.problem(
            source, (given[1],),
            (f"give either {given[0]!r} or {given[1]!r}, not both" if len(given) == 2 else
             f"give one of {', '.join(map(repr, given))}, not several") + f" ({values})"))
    elif not given:
        out.append(project.problem(
            source, ("table",),
            "missing 'table' or 'path' (or 'postgres', 'derived_from'): where the rows are (a DuckDB table such "
            "as raw.transactions, a .parquet / .csv file or glob, postgres: {table: schema.table, dsn_env: VAR}, "
            "or derived_from: another source whose rows these are)"))
    if source.path is not None and not source.path.endswith((".parquet", ".csv")):
        out.append(project.problem(source, ("path",), f"{source.path!r} must be a .parquet or .csv file, or a "
                                                      f"glob of them (e.g. data/*.parquet)"))
    if source.derived_from is not None:
        parent = project.sources.get(source.derived_from)
        if parent is None and not project.judges("source", source.derived_from):
            pass  # the source it names did not load; its own problems are reported
        elif parent is None or parent.name == source.name:
            out.append(project.problem(
                source, ("derived_from",),
                f"unknown source {source.derived_from!r}"
                f"{did_you_mean(source.derived_from, [s for s in project.sources if s != source.name])}"
                if parent is None else "a source cannot be derived from itself"))
        elif parent.derived_from is not None:
            out.append(project.problem(
                source, ("derived_from",),
                f"source {parent.name!r} is itself derived from {parent.derived_from!r}: derive from "
                f"{parent.derived_from!r} directly"))
    if source.available_after is not None:
        after = source.available_after.column
        if after not in source.columns or after == source.available_at:
            out.append(project.problem(
                source, ("available_at",),
                f"unknown column {after!r} in available_at {after} + {source.available_after.delay}"
                f"{did_you_mean(after, [c for c in source.columns if c != source.available_at])}"))
        elif source.columns[after].type != "timestamp":
            out.append(project.problem(
                source, ("available_at",),
                f"available_at {after} + {source.available_after.delay}: column {after!r} must be a timestamp, "
                f"not {source.columns[after].type}"))
    if source.table is not None and _schema_of(source.table) in TRELLIS_SCHEMAS:
        out.append(project.problem(
            source, ("table",),
            f"table {source.table!r} is in schema {_schema_of(source.table)!r}, which Trellis writes (its schemas: "
            f"{', '.join(TRELLIS_SCHEMAS)}); keep source tables in another schema, e.g. raw"))
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


def _schema_of(table: str) -> str:
    """The schema of 'schema.table' (or 'db.schema.table'); DuckDB's 'main' for a bare name."""
    parts = table.lower().split(".")
    return parts[-2] if len(parts) > 1 else "main"


def _check_simulation(project: Project, broken: set[str]) -> list[Problem]:
    """Simulated sources: a table to write, a simulator table whose columns are the declared ones, one world
    for all of them, and no table written twice or belonging to a source that is not simulated. A source with
    problems of its own (``broken``, already reported) is not compared with the simulator."""
    from trellis.spec import SIMULATOR_TABLES

    simulated = [s for s in project.sources.values() if s.simulated is not None]
    out: list[Problem] = []
    writer: dict[str, str] = {}  # warehouse table (lower case) -> the simulated source writing it
    own_data = {s.table.lower(): s.name for s in project.sources.values() if s.simulated is None and s.table}
    for source in simulated:
        sim = source.simulated
        assert sim is not None
        if source.name in broken:
            continue
        if source.table is None:
            given = next((f for f in ("path", "postgres", "derived_from") if getattr(source, f) is not None), None)
            if given is not None:  # no location at all: _check_source says so
                out.append(project.problem(
                    source, ("simulated",),
                    f"a simulated source is written by the simulator into a DuckDB table: give 'table' (e.g. "
                    f"raw.transactions), not {given!r}"))
            continue
        name = sim.simulator_table(source.name)
        if name not in SIMULATOR_TABLES:
            out.append(project.problem(
                source, ("simulated",),
                f"the simulator has no table {name!r}{did_you_mean(name, SIMULATOR_TABLES)}; say which one this "
                f"source is with simulated.table (one of {', '.join(SIMULATOR_TABLES)})"))
            continue
        columns = simulator_columns(name)
        for column, declared in source.columns.items():
            if column not in columns:
                out.append(project.problem(
                    source, ("columns", column),
                    f"column {column!r} is not in the simulator's {name} table{did_you_mean(column, columns)} "
                    f"(its columns: {', '.join(columns)})"))
            elif columns[column] != declared.type:
                out.append(project.problem(
                    source, ("columns", column, "type"),
                    f"the simulator's {name}.{column} is {columns[column]}, not {declared.type}"))
        reference = simulated[0].simulated
        assert reference is not None
        differ = [f"{field} {mine} vs {theirs}" for field, mine, theirs in
                  zip(("scale", "days", "seed", "start_date"), sim.world, reference.world, strict=True)
                  if mine != theirs]
        if differ:
            out.append(project.problem(
                source, ("simulated",),
                f"simulated sources are one simulation (the labels must match the transactions), but this one "
                f"differs from source {simulated[0].name!r}: {', '.join(differ)}"))
        fields = [("simulated", "table") if sim.table else ("table",),
                  *(("simulated", "also_write", i) for i in range(len(sim.also_write)))]
        for (table, _), field in zip(source.simulated_writes, fields, strict=True):
            key = table.lower()
            if key in own_data:
                out.append(project.problem(
                    source, field,
                    f"the simulation would write {table}, the table of source {own_data[key]!r}, which is not "
                    f"simulated: Trellis never writes a source's own data"))
            elif key in writer:
                out.append(project.problem(
                    source, field, f"the simulation would write {table} twice (also for source {writer[key]!r})"))
            else:
                writer[key] = source.name
    return out


def simulator_columns(table: str) -> dict[str, str]:
    """Column -> logical type of one of the simulator's tables."""
    from trellis.simulate import TABLE_SCHEMAS

    return {field.name: from_arrow(field.type) for field in TABLE_SCHEMAS[table]}


def _check_group(project: Project, group: FeatureGroup) -> list[Problem]:
    out = []
    entity = project.entities.get(group.entity)
    if entity is None and project.judges("entity", group.entity):
        out.append(project.problem(
            group, ("entity",), f"unknown entity {group.entity!r}{did_you_mean(group.entity, project.entities)}"))
    if group.source not in project.sources and project.judges("source", group.source):
        out.append(project.problem(
            group, ("source",), f"unknown source {group.source!r}{did_you_mean(group.source, project.sources)}"))
    if group.spine is not None and group.spine not in project.sources and project.judges("source", group.spine):
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
    for group in project.feature_groups.values():
        if group.name in broken:  # its features are not judged (_unjudged_ref)
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
            columns = expr.parse(feature.expr).columns
            if any(c not in available and _unjudged_ref(project, c, broken) for c in columns):
                continue
            # Only the columns it reads: a project's every feature would make each check build a table of them.
            used = {c: available[c] for c in columns if c in available}
            expr.check(feature.expr, used if len(used) == len(set(columns)) else available,
                       unknown="request field or feature")
        except expr.ExpressionError as exc:
            out.append(project.problem(request, ("features", index, "expr"), str(exc)))
    return out
