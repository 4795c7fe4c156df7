"""Request and response models, generated from the definitions: the scoring request carries the model's
entity keys and request fields; event and label bodies are rows of their sources. Types and range checks
come from the same source columns and checks that ingestion contracts use, so a request the offline
contract would reject is a 422 here, naming the field and the value."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    create_model,
    field_validator,
)

from trellis.spec import Column, Model, Project, Source
from trellis.types import on_scale

_FORBID = ConfigDict(extra="forbid", allow_inf_nan=False)


def _annotation(logical: str, column: Column | None = None, *, optional: bool = False) -> Any:
    checks = column.checks if column is not None else None
    constraints: dict[str, Any] = {}
    if checks is not None and checks.ge is not None:
        constraints["ge"] = checks.ge
    if checks is not None and checks.le is not None:
        constraints["le"] = checks.le
    if logical in ("int64", "int32"):
        bound = 2**63 - 1 if logical == "int64" else 2**31 - 1
        base: Any = Annotated[StrictInt, Field(ge=max(-bound - 1, constraints.get("ge", -bound - 1)),
                                               le=min(bound, constraints.get("le", bound)))]
    elif logical == "float64":
        base = Annotated[float, Field(allow_inf_nan=False, **constraints)]
        if column is not None and column.scale is not None:
            # The OpenAPI document says it too (multipleOf), so clients and generated tests know the grid.
            base = Annotated[base, AfterValidator(_scale_check(column.scale)),
                             Field(json_schema_extra={"multipleOf": 10.0 ** -column.scale})]
    elif logical == "bool":
        base = StrictBool
    elif logical == "timestamp":
        base = datetime
    else:
        base = Annotated[str, Field(max_length=1000)]
    if checks is not None and checks.isin:
        from typing import Literal

        base = Literal[tuple(checks.isin)]  # type: ignore[valid-type]
    nullable = optional or (column is not None and not column.checks.not_null)
    return (base | None, None) if nullable else (base, ...)


def _scale_check(scale: int) -> Any:
    """The contract's ``scale`` check (``trellis.types.on_scale``): a value off the column's grid is refused, as
    ingestion would quarantine it."""

    def check(value: float) -> float:
        if not on_scale(value, scale):
            raise ValueError(f"{value!r} is not a multiple of {10.0 ** -scale:g} (the column's scale is {scale})")
        return value

    return check


def _time_validator(names: list[str], max_future: timedelta) -> Any:
    """Times as naive UTC (naive input is UTC); reject times too far in the future."""

    def check(cls: type, value: Any) -> Any:
        if value is None:
            return value
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        if aware > datetime.now(UTC) + max_future:
            raise ValueError(f"{value.isoformat()} is more than {max_future} in the future")
        try:
            return aware.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise ValueError(f"{value.isoformat()} is out of range in UTC") from None

    return field_validator(*names)(check)


def _model(name: str, fields: dict[str, Any], times: list[str], max_future: timedelta,
           doc: str) -> type[BaseModel]:
    validators = {}
    if times:
        validators["_times"] = _time_validator(times, max_future)
    model = create_model(name, __config__=_FORBID, __doc__=doc, __validators__=validators, **fields)
    return model


def source_row_model(source: Source, max_future: timedelta) -> type[BaseModel]:
    """One row of ``source`` (every column; nullable where the contract allows)."""
    fields = {n: _annotation(c.type, c) for n, c in source.columns.items()}
    times = [n for n, c in source.columns.items() if c.type == "timestamp"]
    return _model(f"{_camel(source.name)}Row", fields, times, max_future, f"A row of source {source.name}.")


def score_request_model(project: Project, model: Model, max_future: timedelta) -> type[BaseModel]:
    """What ``/v1/score`` takes for ``model``: the label join key (optional, echoed back), the entity keys
    of its feature groups, the spine's event time and the request fields of its request features."""
    stored, requests = project.model_inputs(model)
    spine = project.sources[model.spine]
    fields: dict[str, Any] = {}
    join_key = model.label.join_key
    if join_key in spine.columns:
        fields[join_key] = _annotation(spine.columns[join_key].type, optional=True)
    for group_name in dict.fromkeys(f.group for f in stored):
        entity = project.entities[project.feature_groups[group_name].entity]
        fields[entity.join_key] = _annotation(entity.key_type, optional=True)
    fields[spine.event_time] = _annotation("timestamp")
    for request_set in requests:
        for name, logical in request_set.request_schema.items():
            fields[name] = _annotation(logical, spine.columns.get(name))
    times = [n for n in fields if n == spine.event_time or
             any(r.request_schema.get(n) == "timestamp" for r in requests)]
    return _model(f"{_camel(model.name)}ScoreRequest", fields, times, max_future,
                  f"A transaction to score with model {model.name}. A missing or unknown entity key gets the "
                  f"group's declared defaults, flagged in the response's 'defaults'.")


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


class Reason(BaseModel):
    feature: str
    value: float | int | bool | str | None
    contribution: float = Field(description="SHAP contribution in log-odds, toward fraud when positive.")


class ServedModel(BaseModel):
    name: str
    version: str
    alias: str


class ScoreResponse(BaseModel):
    model_config = ConfigDict(extra="allow")  # the label join key is echoed back under its own name

    score: float
    decision: str = Field(description="'alert' when score >= threshold, else 'pass'.")
    threshold: float
    model: ServedModel
    defaults: list[str] = Field(description="Feature groups whose entity was unknown (declared defaults used).")
    reasons: list[Reason] = Field(default_factory=list, description="Top contributions toward fraud.")
    features: dict[str, float | int | bool | str | None] | None = Field(
        None, description="Every model input used (with ?include_features=true).")


class BatchScoreResponse(BaseModel):
    results: list[ScoreResponse]


class IngestResponse(BaseModel):
    source: str
    rows: int
    groups: list[str]
    entities: int


class Problem(BaseModel):
    detail: str


__all__ = [
    "BatchScoreResponse",
    "IngestResponse",
    "Problem",
    "ScoreResponse",
    "score_request_model",
    "source_row_model",
]
