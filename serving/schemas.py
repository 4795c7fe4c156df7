"""Request and response models, generated from the definitions: the scoring request carries the model's
entity keys and request fields; event and label bodies are rows of their sources. Types and range checks
come from the same source columns and checks that ingestion contracts use, so a request the offline
contract would reject is a 422 here, naming the field and the value.

Input is strict, as in the contracts (``trellis/contracts.py``): a number field takes JSON numbers only (not
``true`` or ``"812.15"``), an integer field JSON integers only, a timestamp an ISO 8601 string only (not a
number of seconds), within the source's ``not_before`` and ``max_future`` (the service's own setting when the
source declares none); a row's ``available_at`` is never before its event time.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    Tag,
    ValidationInfo,
    create_model,
    field_validator,
)
from pydantic_core import PydanticCustomError

from trellis.decisions import policy_of
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
        # Strict: a JSON integer is a number too, a boolean or a numeric string is not.
        base = Annotated[StrictFloat, Field(allow_inf_nan=False, **constraints)]
        if column is not None and column.scale is not None:
            # The OpenAPI document says it too (multipleOf), so clients and generated tests know the grid.
            base = Annotated[base, AfterValidator(_scale_check(column.scale)),
                             Field(json_schema_extra={"multipleOf": 10.0 ** -column.scale})]
    elif logical == "bool":
        base = StrictBool
    elif logical == "timestamp":
        base = Annotated[datetime, BeforeValidator(_timestamp_text)]
    else:
        base = Annotated[str, Field(max_length=1000)]
    if checks is not None and checks.isin:
        # A Literal alone takes true for 1: the column's own type is checked first.
        base = Annotated[Literal[tuple(checks.isin)], BeforeValidator(_strict_type(logical))]  # type: ignore
    nullable = optional or (column is not None and not column.checks.not_null)
    return (base | None, None) if nullable else (base, ...)


def _strict_type(logical: str) -> Any:
    """The JSON type a value of ``logical`` must have, for a field whose values are a list (``isin``)."""
    allowed = {"int64": ((int,), "an integer"), "int32": ((int,), "an integer"), "float64": ((int, float), "a number"),
               "bool": ((bool,), "true or false"), "string": ((str,), "a string")}
    types, what = allowed.get(logical, ((object,), "a value"))

    def check(value: Any) -> Any:
        if value is not None and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise PydanticCustomError("type_error", "expected {what}", {"what": what})
        return value

    return check


def _scale_check(scale: int) -> Any:
    """The contract's ``scale`` check (``trellis.types.on_scale``): a value off the column's grid is refused, as
    ingestion would quarantine it."""

    def check(value: float) -> float:
        if not on_scale(value, scale):
            raise ValueError(f"{value!r} is not a multiple of {10.0 ** -scale:g} (the column's scale is {scale})")
        return value

    return check


def _timestamp_text(value: Any) -> Any:
    """A timestamp arrives as an ISO 8601 string: a number would be read as seconds or milliseconds since 1970
    depending on its size, and a boolean as 1970-01-01."""
    if isinstance(value, bool | int | float):
        raise PydanticCustomError("timestamp_type", "not a timestamp: expected an ISO 8601 string")
    return value


def _time_validator(source: Source, names: list[str], default_max_future: timedelta) -> Any:
    """Times as naive UTC (naive input is UTC), within ``source.time_bounds`` (its ``not_before`` and
    ``max_future``, the service's ``default_max_future`` when it declares none), and ``available_at`` not
    before the event time. The event time is validated first (the model lists it before ``available_at``)."""

    def check(cls: type, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
        try:
            naive = aware.astimezone(UTC).replace(tzinfo=None)
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
            raise ValueError(f"{value.isoformat()} is out of range in UTC") from None
        earliest, latest = source.time_bounds(datetime.now(UTC).replace(tzinfo=None), default_max_future)
        # Short messages that start with what is wrong: error bodies may shorten them.
        if earliest is not None and naive < earliest:
            raise PydanticCustomError("time_not_before", "{value} is before not_before {earliest}",
                                      {"value": value.isoformat(), "earliest": earliest.isoformat()})
        if latest is not None and naive > latest:
            ahead = source.max_future or f"{default_max_future.total_seconds():g}s"
            raise PydanticCustomError("time_max_future", "{value} is more than {ahead} in the future (max_future)",
                                      {"value": value.isoformat(), "ahead": ahead})
        happened = info.data.get(source.event_time)
        if info.field_name == source.available_at and happened is not None and naive < happened:
            raise PydanticCustomError("available_before_event", "{field} is before {event_time} {happened}",
                                      {"field": source.available_at, "event_time": source.event_time,
                                       "happened": happened.isoformat()})
        return naive

    return field_validator(*names)(check)


def _model(name: str, fields: dict[str, Any], validators: dict[str, Any], doc: str) -> type[BaseModel]:
    return create_model(name, __config__=_FORBID, __doc__=doc, __validators__=validators, **fields)


def source_row_model(source: Source, max_future: timedelta) -> type[BaseModel]:
    """One row of ``source`` (every column; nullable where the contract allows). ``max_future`` applies
    where the source declares none."""
    order = sorted(source.columns, key=lambda n: n == source.available_at)  # the event time first
    fields = {n: _annotation(source.columns[n].type, source.columns[n]) for n in order}
    validators = {"_times": _time_validator(source, source.timestamp_columns, max_future)}
    return _model(f"{_camel(source.name)}Row", fields, validators if source.timestamp_columns else {},
                  f"A row of source {source.name}.")


def rows_body(row: type[BaseModel]) -> Any:
    """The body of ``/v1/events`` and ``/v1/labels``: one row or a list of rows. The body's own JSON type picks
    which, so an invalid object is reported against the row model alone, field by field, never also as "not a
    list" with the whole body as its input."""
    one, many = row.__name__, f"list[{row.__name__}]"
    return Annotated[Union[Annotated[row, Tag(one)], Annotated[list[row], Tag(many)]],  # noqa: UP007
                     Discriminator(lambda value: many if isinstance(value, list) else one)]


def score_request_model(project: Project, model: Model, max_future: timedelta) -> type[BaseModel]:
    """What ``/v1/score`` takes for ``model``: the label join key (optional, echoed back), the entity keys
    of its feature groups, the spine's event time and the request fields of its request features. Keys keep
    the spine column's checks (an id below its declared range is a 422; a missing one gets defaults); times
    keep the spine's plausible range."""
    stored, requests = project.model_inputs(model)
    spine = project.sources[model.spine]
    fields: dict[str, Any] = {}
    join_key = model.label.join_key
    if join_key in spine.columns:
        fields[join_key] = _annotation(spine.columns[join_key].type, spine.columns[join_key], optional=True)
    for group_name in dict.fromkeys(f.group for f in stored):
        entity = project.entities[project.feature_groups[group_name].entity]
        fields[entity.join_key] = _annotation(entity.key_type, spine.columns.get(entity.join_key), optional=True)
    fields[spine.event_time] = _annotation("timestamp")
    for request_set in requests:
        for name, logical in request_set.request_schema.items():
            fields[name] = _annotation(logical, spine.columns.get(name))
    for override in policy_of(model).overrides:  # what picks a decision override (a product, a partner...)
        for name in override.when:
            if name not in fields:
                fields[name] = _annotation(spine.columns[name].type, spine.columns[name], optional=True)
    times = [n for n in fields if n == spine.event_time or
             any(r.request_schema.get(n) == "timestamp" for r in requests)]
    return _model(f"{_camel(model.name)}ScoreRequest", fields,
                  {"_times": _time_validator(spine, times, max_future)},
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
    alias: str | None = Field(description="The registry alias the version was reached through (null: a version "
                                          "the flags pin).")


class Rollout(BaseModel):
    flag: str | None = Field(description="The feature flag that chose the version (null: no flags file, the "
                                         "service's alias answers).")
    variant: str | None = Field(description="The flag's variant served.")
    reason: str = Field(description="OpenFeature's resolution reason (STATIC, TARGETING_MATCH, DEFAULT, ERROR...).")
    experiment: str | None = Field(description="The experiment the flag runs (a canary, an A/B test), if any.")
    arm: str | None = Field(description="The experiment's arm served (the variant), if any.")


class DecisionPolicyRef(BaseModel):
    version: int = Field(description="The policy's declared version (0: the one the model's threshold implies).")
    fingerprint: str = Field(description="Hash of the policy as declared.")


class ScoreResponse(BaseModel):
    model_config = ConfigDict(extra="allow")  # the label join key is echoed back under its own name

    request_id: str = Field(description="This answer's id in the decision log.")
    score: float
    decision: str = Field(description="The decision policy's decision for this score (without a policy: 'alert' "
                                      "when score >= threshold, else 'pass').")
    reason_codes: list[str] = Field(default_factory=list, description="The policy's codes for that decision.")
    policy: DecisionPolicyRef
    threshold: float = Field(description="The model's alert threshold (evaluation and batch summaries).")
    model: ServedModel
    rollout: Rollout = Field(description="What the feature flags decided for this request (trellis.flags).")
    defaults: list[str] = Field(description="Feature groups whose entity was unknown (declared defaults used).")
    reasons: list[Reason] = Field(default_factory=list, description="Top contributions toward fraud.")
    features: dict[str, float | int | bool | str | None] | None = Field(
        None, description="Every model input used (with ?include_features=true).")


class BatchScoreResponse(BaseModel):
    results: list[ScoreResponse]


class IngestResponse(BaseModel):
    source: str
    rows: int
    new: int = Field(description="Rows appended to the event log by this request.")
    duplicates: int = Field(description="Rows the log already held with the same content (counted once).")
    offset: int = Field(description="The event log's offset the online state holds after this request.")
    applied: bool = Field(description="True: the online state includes these rows.")
    groups: list[str]
    entities: int
    detail: str | None = Field(None, description="With applied false (202): why the rows are not applied yet.")


class Problem(BaseModel):
    """An RFC 9457 problem document (``application/problem+json``); some carry extension members (a 409 its
    ``source``, ``key`` and ``fields``)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str


class InvalidField(BaseModel):
    loc: list[str | int] = Field(description="Where: 'body', then the field names and list positions.")
    field: str = Field(description="The field, dotted ('body' for the body as a whole).")
    msg: str
    type: str | None = None
    input: Any = Field(None, description="The offending value when it is a scalar (never a whole object).")


class ValidationProblem(Problem):
    """The 422 problem: for a request that does not validate, ``detail`` names the first field and value and
    ``errors`` lists each; for a request the online state cannot answer (a time older than it keeps), the
    reason."""

    errors: list[InvalidField] = Field(default_factory=list)


__all__ = [
    "BatchScoreResponse",
    "IngestResponse",
    "InvalidField",
    "Problem",
    "ScoreResponse",
    "rows_body",
    "score_request_model",
    "source_row_model",
    "ValidationProblem",
]
