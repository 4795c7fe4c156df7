"""The definition language: pydantic models of the YAML under ``definitions/`` and the loader.

Loading is two passes. Each file is parsed and validated against its kind's model (shape, types,
names); then the whole set is cross-checked (references between objects, columns, SQL snippets). Every
problem from both passes is collected and reported with file, line and field, so an author fixes a file in
one round instead of one error at a time.
"""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from trellis.errors import DefinitionError, Problem, did_you_mean
from trellis.types import LOGICAL_TYPES, LogicalType, aggregate_output_type

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=63)]

_DURATION = re.compile(r"^(\d+)(s|m|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
AGGREGATIONS = ("count", "sum", "mean", "min", "max", "std", "count_distinct", "last", "first")


def parse_duration(text: str) -> timedelta:
    """'30m', '1h', '7d', '2w' -> timedelta. Raises ValueError naming the bad value."""
    match = _DURATION.match(str(text).strip())
    if not match:
        raise ValueError(
            f"invalid duration {text!r}: expected a whole number followed by s, m, h, d or w (e.g. '7d', '1h')"
        )
    return timedelta(seconds=int(match.group(1)) * _UNIT_SECONDS[match.group(2)])


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entity(_Strict):
    kind: Literal["entity"]
    name: Name
    join_key: Name
    key_type: LogicalType = "int64"
    description: str = ""
    pii: bool = False


class ColumnChecks(_Strict):
    ge: float | None = None
    le: float | None = None
    isin: list[Any] | None = None
    not_null: bool = True


class Column(_Strict):
    type: LogicalType
    description: str = ""
    pii: bool = False
    checks: ColumnChecks = ColumnChecks()


class Source(_Strict):
    kind: Literal["source"]
    name: Name
    table: str | None = Field(None, description="A DuckDB table, as schema.table.")
    path: str | None = Field(None, description="A Parquet or CSV file (relative to the project).")
    event_time: str
    available_at: str | None = Field(None, description="When a row became known; defaults to event_time.")
    primary_key: str | None = None
    columns: dict[str, Column]
    on_violation: Literal["quarantine", "fail"] = "quarantine"
    description: str = ""
    owner: str = ""

    @field_validator("columns")
    @classmethod
    def _column_names(cls, columns: dict[str, Column]) -> dict[str, Column]:
        for name in columns:
            if not re.match(NAME_PATTERN, name):
                raise ValueError(f"column name {name!r} must be snake_case")
        return columns

    @property
    def relation(self) -> str:
        return self.table or f"read_file({self.path!r})"


class Aggregation(_Strict):
    name: Name
    agg: Literal["count", "sum", "mean", "min", "max", "std", "count_distinct", "last", "first"]
    column: str | None = None
    expr: str | None = Field(None, description="A SQL expression over the source row, instead of column.")
    windows: list[str] = Field(default_factory=list, description="Empty means the entity's whole history.")
    delay: str | None = Field(None, description="Overrides the group's delay for this feature.")
    description: str = ""

    @field_validator("windows")
    @classmethod
    def _windows(cls, windows: list[str]) -> list[str]:
        for window in windows:
            if parse_duration(window) <= timedelta(0):
                raise ValueError(f"window {window!r} must be positive")
        if len(set(windows)) != len(windows):
            raise ValueError(f"windows repeat: {windows}")
        return windows

    @field_validator("delay")
    @classmethod
    def _delay(cls, delay: str | None) -> str | None:
        if delay is not None:
            parse_duration(delay)
        return delay


class FeatureGroup(_Strict):
    kind: Literal["feature_group"]
    name: Name
    entity: str
    source: str
    key_column: str | None = Field(None, description="Source column holding the entity key; default the join key.")
    filter: str | None = Field(None, description="SQL boolean over the source row; other rows are ignored.")
    delay: str = "0s"
    include_current: bool = False
    spine: str | None = Field(None, description="Source whose events the offline feature table is computed at.")
    online: bool = True
    owner: str = ""
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    features: list[Aggregation] = Field(min_length=1)

    @field_validator("delay")
    @classmethod
    def _delay(cls, delay: str) -> str:
        parse_duration(delay)
        return delay


class RequestFeature(_Strict):
    name: Name
    expr: str
    description: str = ""


class RequestFeatures(_Strict):
    kind: Literal["request_features"]
    name: Name
    request_schema: dict[str, LogicalType]
    features: list[RequestFeature] = Field(min_length=1)
    description: str = ""
    owner: str = ""


Definition = Annotated[Entity | Source | FeatureGroup | RequestFeatures, Field(discriminator="kind")]
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Definition)
KINDS = ("entity", "source", "feature_group", "request_features")


# ---------------------------------------------------------------------------------------------------
# Resolved features: what a compiler iterates over.


class Feature(BaseModel):
    """One output column of a feature group: an aggregation at one window."""

    model_config = ConfigDict(frozen=True)
    group: str
    name: str  # column name in the group's table, e.g. tx_count_7d
    agg: str
    column: str | None
    expr: str | None
    window: timedelta | None  # None: whole history
    delay: timedelta
    dtype: str

    @property
    def qualified(self) -> str:
        return f"{self.group}__{self.name}"


def features_of(group: FeatureGroup, source: Source) -> list[Feature]:
    out = []
    for spec in group.features:
        input_type = source.columns[spec.column].type if spec.column in source.columns else None
        if spec.expr is not None:
            input_type = "float64"
        delay = parse_duration(spec.delay or group.delay)
        for label in spec.windows or [None]:
            out.append(
                Feature(
                    group=group.name,
                    name=f"{spec.name}_{label}" if label else spec.name,
                    agg=spec.agg,
                    column=spec.column,
                    expr=spec.expr,
                    window=parse_duration(label) if label else None,
                    delay=delay,
                    dtype=aggregate_output_type(spec.agg, input_type),
                )
            )
    return out


# ---------------------------------------------------------------------------------------------------
# YAML with line numbers.


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that also records the line of every mapping key and sequence item."""


def _load_with_lines(text: str, path: Path) -> tuple[Any, dict[tuple, int]]:
    loader = _LineLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise DefinitionError([Problem(path, line, "", f"malformed YAML: {problem}")]) from None
    finally:
        loader.dispose()
    lines: dict[tuple, int] = {}

    def build(node: yaml.Node | None, at: tuple) -> Any:
        if node is None:
            return None
        lines.setdefault(at, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            out = {}
            for key_node, value_node in node.value:
                key = loader.construct_object(key_node, deep=True)
                lines[(*at, key)] = key_node.start_mark.line + 1
                out[key] = build(value_node, (*at, key))
            return out
        if isinstance(node, yaml.SequenceNode):
            return [build(item, (*at, i)) for i, item in enumerate(node.value)]
        return loader.construct_object(node, deep=True)

    return build(node, ()), lines


def _line_for(lines: dict[tuple, int], loc: tuple) -> int | None:
    # Walk up the path until a recorded position: an unknown key has none of its own.
    for end in range(len(loc), -1, -1):
        if loc[:end] in lines:
            return lines[loc[:end]]
    return None


# ---------------------------------------------------------------------------------------------------
# Project: every definition, cross-checked.


class Project:
    """All definitions of a project, validated. Build with ``load_project``."""

    def __init__(self, root: Path, definitions: list[tuple[Any, Path, dict[tuple, int], tuple]]):
        self.root = root
        self._where: dict[tuple[str, str], tuple[Path, dict[tuple, int], tuple]] = {}
        self.entities: dict[str, Entity] = {}
        self.sources: dict[str, Source] = {}
        self.feature_groups: dict[str, FeatureGroup] = {}
        self.request_features: dict[str, RequestFeatures] = {}
        self._buckets = {
            "entity": self.entities,
            "source": self.sources,
            "feature_group": self.feature_groups,
            "request_features": self.request_features,
        }
        for obj, path, lines, prefix in definitions:
            self._buckets[obj.kind][obj.name] = obj
            self._where[(obj.kind, obj.name)] = (path, lines, prefix)

    def location(self, obj: BaseModel, *field: Any) -> tuple[Path | None, int | None]:
        path, lines, prefix = self._where.get((obj.kind, obj.name), (None, {}, ()))  # type: ignore[attr-defined]
        return path, _line_for(lines, (*prefix, *field))

    def problem(self, obj: BaseModel, field: tuple, message: str) -> Problem:
        path, line = self.location(obj, *field)
        return Problem(path, line, ".".join(str(f) for f in field), message)

    def features(self, group: str | FeatureGroup) -> list[Feature]:
        group = self.feature_groups[group] if isinstance(group, str) else group
        return features_of(group, self.sources[group.source])

    def entity_of(self, group: FeatureGroup) -> Entity:
        return self.entities[group.entity]

    def key_column(self, group: FeatureGroup) -> str:
        return group.key_column or self.entities[group.entity].join_key

    def spine_of(self, group: FeatureGroup) -> Source:
        return self.sources[group.spine or group.source]

    def all_features(self) -> dict[str, Feature]:
        return {f.qualified: f for g in self.feature_groups.values() for f in self.features(g)}

    def fingerprint(self) -> str:
        """Hash of every definition's content: changes when any definition changes."""
        digest = hashlib.sha256()
        for kind in KINDS:
            for name in sorted(self._buckets[kind]):
                digest.update(self._buckets[kind][name].model_dump_json().encode())
        return digest.hexdigest()[:16]


def definition_files(root: Path) -> list[Path]:
    folder = root / "definitions"
    if not folder.is_dir():
        raise DefinitionError([Problem(folder, None, "", "no definitions/ folder here (use --project DIR)")])
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml"))


def _pydantic_problems(exc: ValidationError, path: Path, lines: dict[tuple, int], prefix: tuple) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        # The discriminated union inserts the kind as the first location element; it is not a YAML key.
        if loc and loc[0] in KINDS:
            loc = loc[1:]
        message = error["msg"]
        if error["type"] == "extra_forbidden":
            model_fields = _fields_at(error, loc)
            message = f"unknown field {loc[-1]!r}{did_you_mean(str(loc[-1]), model_fields)}"
        elif error["type"] == "union_tag_invalid":
            tag = error.get("input", {}).get("kind") if isinstance(error.get("input"), dict) else None
            message = f"unknown kind {tag!r}{did_you_mean(str(tag), KINDS)}; expected one of {', '.join(KINDS)}"
            loc = ("kind",)
        elif error["type"] == "union_tag_not_found":
            message = f"missing 'kind' (one of {', '.join(KINDS)})"
        elif error["type"] == "literal_error" and "input" in error:
            expected = error.get("ctx", {}).get("expected", "")
            message = f"invalid value {error['input']!r}; expected {expected}"
            options = re.findall(r"'([^']+)'", expected)
            message += did_you_mean(str(error["input"]), options)
        elif "input" in error and error["type"] not in ("missing",) and not isinstance(error["input"], dict):
            message = f"{message} (got {error['input']!r})"
        full = (*prefix, *loc)
        problems.append(Problem(path, _line_for(lines, full), ".".join(str(p) for p in loc), message))
    return problems


def _fields_at(error: dict, loc: tuple) -> list[str]:
    models: dict[str, type[BaseModel]] = {
        "entity": Entity,
        "source": Source,
        "feature_group": FeatureGroup,
        "request_features": RequestFeatures,
    }
    nested: dict[str, type[BaseModel]] = {"features": Aggregation, "columns": Column, "checks": ColumnChecks}
    model = models.get(error["loc"][0]) if error["loc"] else None
    for part in loc[:-1]:
        if isinstance(part, str) and part in nested:
            model = nested[part]
            if part == "features" and error["loc"][0] == "request_features":
                model = RequestFeature
    return list(model.model_fields) if model else []


def load_project(root: str | Path = ".") -> Project:
    """Load and validate every definition under ``root/definitions``; raise DefinitionError listing all
    problems when anything is wrong."""
    root = Path(root).resolve()
    problems: list[Problem] = []
    parsed: list[tuple[Any, Path, dict[tuple, int], tuple]] = []
    for path in definition_files(root):
        rel = path.relative_to(root)
        try:
            data, lines = _load_with_lines(path.read_text(), rel)
        except DefinitionError as exc:
            problems.extend(exc.problems)
            continue
        items = data if isinstance(data, list) else [data]
        for index, item in enumerate(items):
            prefix = (index,) if isinstance(data, list) else ()
            if not isinstance(item, dict):
                problems.append(Problem(rel, _line_for(lines, prefix), "", "expected a mapping with a 'kind'"))
                continue
            try:
                parsed.append((_ADAPTER.validate_python(item), rel, lines, prefix))
            except ValidationError as exc:
                problems.extend(_pydantic_problems(exc, rel, lines, prefix))
    seen: dict[str, Path] = {}
    for obj, path, lines, prefix in parsed:
        if obj.name in seen:
            problems.append(
                Problem(path, _line_for(lines, (*prefix, "name")), "name",
                        f"duplicate name {obj.name!r} (also defined in {seen[obj.name]})")
            )
        seen[obj.name] = path
    project = Project(root, parsed)
    if not problems:
        from trellis.checks import check_project  # cross-checks need DuckDB; import lazily

        problems.extend(check_project(project))
    if problems:
        raise DefinitionError(problems)
    return project


def json_schema() -> dict[str, Any]:
    """JSON Schema for one definition file (an object or a list of them), for editors."""
    single = _ADAPTER.json_schema()
    defs = single.pop("$defs", {})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Trellis definition",
        "$defs": defs,
        "oneOf": [single, {"type": "array", "items": single}],
    }


__all__ = [
    "AGGREGATIONS",
    "LOGICAL_TYPES",
    "Aggregation",
    "Column",
    "Entity",
    "Feature",
    "FeatureGroup",
    "Project",
    "RequestFeature",
    "RequestFeatures",
    "Source",
    "json_schema",
    "load_project",
    "parse_duration",
]
