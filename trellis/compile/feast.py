"""The Feast repo generated from the definitions: entities, sources over the dbt feature tables (exported
to Parquet), feature views and feature services, plus feature_store.yaml."""

from __future__ import annotations

import pprint
from datetime import timedelta

from trellis.compile.dbt import header
from trellis.compile.offline import FEATURE_TS
from trellis.spec import Model, Project
from trellis.types import mapping

_VALUE_TYPES = {"int64": "INT64", "int32": "INT32", "string": "STRING"}


def _ttl(project: Project, group_name: str) -> timedelta:
    """A row of the feature table is current until its longest window has slid past it."""
    features = project.features(group_name)
    spans = [f.delay + f.window for f in features if f.window is not None]
    return max(spans) if spans and all(f.window is not None for f in features) else timedelta(0)


def _td(delta: timedelta) -> str:
    return f"timedelta(seconds={int(delta.total_seconds())})"


def feature_definitions(project: Project) -> str:
    lines = [
        header("#", "definitions/"),
        '"""Feast objects for the Trellis feature groups (entities, sources, views, services)."""',
        "",
        "from datetime import timedelta",
        "from pathlib import Path",
        "",
        "from feast import (",
        "    Entity,",
        "    FeatureService,",
        "    FeatureView,",
        "    Field,",
        "    FileSource,",
        "    RequestSource,",
        "    ValueType,",
        ")",
        "from feast.on_demand_feature_view import on_demand_feature_view",
        "from feast.types import Bool, Bytes, Float64, Int32, Int64, String, UnixTimestamp  # noqa: F401",
        "",
        "# Feast reads FileSource paths relative to the working directory, so anchor them to this repo.",
        "DATA = Path(__file__).resolve().parent / 'data'",
        "",
        "# The time a live (on-demand) view computes its windows at: the scoring request's time.",
        f"{REQUEST_SOURCE} = RequestSource(",
        f"    name={REQUEST_SOURCE!r},",
        f"    schema=[Field(name={REQUEST_TIME!r}, dtype=UnixTimestamp)],",
        ")",
        "",
    ]
    for entity in project.entities.values():
        lines += [
            f"{entity.name} = Entity(",
            f"    name={entity.name!r},",
            f"    join_keys=[{entity.join_key!r}],",
            f"    value_type=ValueType.{_VALUE_TYPES[entity.key_type]},",
            f"    description={entity.description!r},",
            f"    tags={{'pii': {str(entity.pii).lower()!r}}},",
            ")",
            "",
        ]
    online_views = []
    for group in project.feature_groups.values():
        features = project.features(group)
        key = project.key_column(group)
        lines += [
            f"{group.name}_source = FileSource(",
            f"    name='feat_{group.name}',",
            f"    path=str(DATA / 'feat_{group.name}.parquet'),",
            f"    timestamp_field={FEATURE_TS!r},",
            f"    description='dbt model feat_{group.name}',",
            ")",
            "",
            f"{group.name} = FeatureView(",
            f"    name={group.name!r},",
            f"    entities=[{group.entity}],",
            f"    ttl={_td(_ttl(project, group.name))},",
            "    schema=[",
            f"        Field(name={key!r}, dtype={mapping(project.entities[group.entity].key_type).feast}),",
            *[f"        Field(name={f.name!r}, dtype={mapping(f.dtype).feast})," for f in features],
            "    ],",
            f"    source={group.name}_source,",
            f"    online={group.online},",
            f"    description={(group.description or '').strip()!r},",
            f"    owner={group.owner!r},",
            f"    tags={dict(sorted(group.tags.items()))!r},",
            ")",
            "",
        ]
        if group.online:
            online_views.append(group.name)
            lines += _live_views(project, group.name)
    lines += [
        "all_online_features = FeatureService(",
        "    name='all_online_features',",
        f"    features=[{', '.join(online_views)}],",
        "    description='Every online feature group.',",
        ")",
        "",
    ]
    for model in project.models.values():
        lines += _model_service(project, model)
    return "\n".join(lines)


def feature_service_name(model_name: str) -> str:
    """The Feast feature service of a model: what each of its registered versions names in its
    ``trellis.feature_service`` tag."""
    return model_name


def _model_service(project: Project, model: Model) -> list[str]:
    """The model's stored features, view by view: the whole view when the model reads all of it, otherwise
    a projection of the features it reads. One service per model, not per version: versions are numbered by
    the MLflow registry at registration, and the generated repo depends on the definitions alone."""
    features, requests = project.model_inputs(model)
    by_group: dict[str, list[str]] = {}
    for feature in features:
        by_group.setdefault(feature.group, []).append(feature.name)
    parts = [group if len(names) == len(project.features(group)) else f"{group}[{names!r}]"
             for group, names in by_group.items()]
    tags = {"trellis.model": model.name}
    if requests:  # computed from the scoring request by Trellis, not stored in Feast
        tags["trellis.request_features"] = ",".join(r.name for r in requests)
    return [
        f"model_{model.name} = FeatureService(",
        f"    name={feature_service_name(model.name)!r},",
        f"    features=[{', '.join(parts)}],",
        f"    description={' '.join(model.description.split())!r},",
        f"    owner={model.owner!r},",
        f"    tags={tags!r},",
        ")",
        "",
    ]


REQUEST_SOURCE = "scoring_time"
REQUEST_TIME = "request_ts"


def _live_views(project: Project, group_name: str) -> list[str]:
    """The group's streaming state view and the on-demand view that evaluates it at the request time.

    The transformation's source text is all Feast keeps of it (it re-creates the function from the text), so
    the group's online spec is written into the body as a literal."""
    from trellis.errors import DefinitionError, Problem
    from trellis.online.state import (
        DELTA_FIELD,
        STATE_FIELD,
        STATUS_FIELD,
        STATUS_OK,
        STATUS_TOO_OLD,
        STATUS_UNKNOWN,
        group_spec,
        state_view,
    )

    group = project.feature_groups[group_name]
    if any(f.name == STATUS_FIELD for f in project.features(group)):
        raise DefinitionError([Problem(None, None, f"{group_name}.features", (
            f"the feature name {STATUS_FIELD!r} is reserved: the view {group_name}_live reports its state's "
            f"status under it; rename the feature"))])
    entity = project.entities[group.entity]
    key = project.key_column(group)
    spec = group_spec(project, group_name)
    state = state_view(group_name)
    literal = pprint.pformat(spec.to_literal(), width=100, sort_dicts=True).replace("\n", "\n        ")
    return [
        f"{state}_source = FileSource(",
        f"    name={state!r},",
        f"    path=str(DATA / '{state}.parquet'),",
        f"    timestamp_field={FEATURE_TS!r},",
        f"    description='Streaming state (raw tails) of {group_name}, written by trellis materialize',",
        ")",
        "",
        f"{state} = FeatureView(",
        f"    name={state!r},",
        f"    entities=[{group.entity}],",
        "    ttl=timedelta(seconds=0),",
        "    schema=[",
        f"        Field(name={key!r}, dtype={mapping(entity.key_type).feast}),",
        f"        Field(name={STATE_FIELD!r}, dtype=Bytes),",
        f"        Field(name={DELTA_FIELD!r}, dtype=Bytes),",
        "    ],",
        f"    source={state}_source,",
        "    online=True,",
        f"    description='Raw tail of {group_name} per entity; read through {group_name}_live.',",
        f"    owner={group.owner!r},",
        "    tags={'trellis': 'online-state'},",
        ")",
        "",
        "",
        "@on_demand_feature_view(",
        f"    sources=[{state}, {REQUEST_SOURCE}],",
        "    schema=[",
        *[f"        Field(name={f.name!r}, dtype={mapping(f.dtype).feast})," for f in project.features(group)],
        # No description on these fields: `feast apply` compares them with the fields it infers by running the
        # view on sample input, descriptions included, so the status is documented on the view.
        f"        Field(name={STATUS_FIELD!r}, dtype=String),",
        "    ],",
        "    mode='python',",
        "    description=(",
        f"        {f'{group_name} evaluated exactly at {REQUEST_TIME} from the streaming state. {STATUS_FIELD}: '!r}",
        f"        {f'{STATUS_OK!r}, the features are exact; {STATUS_TOO_OLD!r}, {REQUEST_TIME} is older than the '!r}",
        f"        {'state answers (the scoring endpoint refuses it): every feature null; '!r}",
        f"        {f'{STATUS_UNKNOWN!r}, no state for the entity: the declared empty-window values.'!r}),",
        ")",
        f"def {group_name}_live(inputs: dict) -> dict:",
        "    from trellis.online.state import evaluate_rows",
        "",
        "    return evaluate_rows(",
        f"        {literal},",
        "        inputs,",
        "    )",
        "",
        "",
    ]


FEATURE_STORE_YAML = """project: trellis
provider: local
registry: data/registry.db
online_store:
  type: sqlite
  path: data/online_store.db
offline_store:
  type: duckdb
entity_key_serialization_version: 3
"""

FEASTIGNORE = """# feast apply imports every .py here; only features.py holds definitions.
data/
"""


def generate(project: Project) -> dict[str, str]:
    return {
        "feature_repo/features.py": feature_definitions(project),
        "feature_repo/feature_store.yaml": header("#", "trellis (online store: SQLite by default)") + FEATURE_STORE_YAML,
        "feature_repo/.feastignore": header("#", "trellis") + FEASTIGNORE,
    }
