"""The Feast repo generated from the definitions: entities, sources over the dbt feature tables (exported
to Parquet), feature views and feature services, plus feature_store.yaml."""

from __future__ import annotations

from datetime import timedelta

from trellis.compile.dbt import header
from trellis.compile.offline import FEATURE_TS
from trellis.spec import Project
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
        "from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType",
        "from feast.types import Bool, Float64, Int32, Int64, String, UnixTimestamp  # noqa: F401",
        "",
        "# Feast reads FileSource paths relative to the working directory, so anchor them to this repo.",
        "DATA = Path(__file__).resolve().parent / 'data'",
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
    lines += [
        "all_online_features = FeatureService(",
        "    name='all_online_features',",
        f"    features=[{', '.join(online_views)}],",
        "    description='Every online feature group.',",
        ")",
        "",
    ]
    return "\n".join(lines)


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
