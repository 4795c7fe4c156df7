"""serving/schemas.py without HTTP: the row and scoring-request models accept exactly what the source's contract
accepts, field by field, at every edge (integer widths, declared ranges, the money grid, lists of allowed
values, strict JSON types, plausible times, available_at after the event time).

The HTTP tests (test_strict_input, test_http_input) check the same rules through the app and the error
documents; these are fast, and each edge is probed on both sides.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from serving.schemas import rows_body, score_request_model, source_row_model
from trellis.spec import Source, load_project

REPO = Path(__file__).resolve().parent.parent
MAX_FUTURE = timedelta(hours=1)  # the service's setting, for a source that declares no max_future

SOURCE = Source.model_validate({
    "kind": "source", "name": "card_events", "table": "raw.card_events",
    "event_time": "ts", "available_at": "known_at", "primary_key": "id",
    "not_before": "2000-01-01", "max_future": "5m",
    "columns": {
        "id": {"type": "int64", "checks": {"ge": 0}},
        "ts": {"type": "timestamp"},
        "known_at": {"type": "timestamp"},
        "n64": {"type": "int64"},
        "n32": {"type": "int32"},
        "level": {"type": "int32", "checks": {"ge": -3, "le": 7}},
        "amount": {"type": "float64", "scale": 2, "checks": {"ge": 0, "le": 1000}},
        "ratio": {"type": "float64", "checks": {"le": 1}},
        "flag": {"type": "bool"},
        "name": {"type": "string"},
        "code": {"type": "int32", "checks": {"isin": [0, 1]}},
        "code64": {"type": "int64", "checks": {"isin": [7, 9]}},
        "day": {"type": "date", "checks": {"isin": ["2024-01-01"]}},
        "kind_of": {"type": "string", "checks": {"isin": ["a", "b"]}},
        "rate": {"type": "float64", "checks": {"isin": [0.5, 2]}},
        "bit": {"type": "bool", "checks": {"isin": [True]}},
        "note": {"type": "string", "checks": {"not_null": False}},
    },
})
VALID: dict[str, Any] = {
    "id": 1, "ts": "2024-01-01T00:00:00", "known_at": "2024-01-02T00:00:00", "n64": 5, "n32": 5, "level": 0,
    "amount": 12.34, "ratio": 0.25, "flag": False, "name": "x", "code": 1, "code64": 9, "day": "2024-01-01", "kind_of": "a", "rate": 0.5,
    "bit": True, "note": "n",
}


@pytest.fixture
def row() -> type[BaseModel]:
    """Built in each test (not once per module): a mutation run replays a mutant in only the tests that called
    the mutated builder."""
    return source_row_model(SOURCE, MAX_FUTURE)


def _errors(model: type[BaseModel], data: dict[str, Any]) -> list[dict[str, Any]]:
    try:
        model.model_validate(data)
    except ValidationError as exc:
        return exc.errors()
    return []


def _refused(model: type[BaseModel], data: dict[str, Any], field: str) -> dict[str, Any]:
    """The one error of ``data``, which names ``field``."""
    errors = _errors(model, data)
    assert errors, f"{field}={data.get(field)!r} was accepted"
    assert {e["loc"][0] for e in errors} == {field}, errors
    return errors[0]


ACCEPTED = [
    ("n64", 2**63 - 1), ("n64", -(2**63)), ("n32", 2**31 - 1), ("n32", -(2**31)),
    ("level", -3), ("level", 7), ("id", 0),
    ("amount", 0), ("amount", 1000), ("amount", 12.3), ("amount", 7), ("ratio", 1), ("ratio", 0.123456789),
    ("flag", True), ("name", "x" * 1000), ("name", ""),
    ("code", 0), ("code64", 7), ("kind_of", "b"), ("rate", 2), ("rate", 2.0), ("bit", True),
    ("note", None),
]
REFUSED = [
    ("n64", 2**63), ("n64", -(2**63) - 1), ("n32", 2**31), ("n32", -(2**31) - 1),
    ("level", -4), ("level", 8), ("id", -1),
    ("n64", 1.5), ("n64", True), ("n64", "5"), ("n32", 5.0), ("n32", None),
    ("amount", -0.01), ("amount", 1000.01), ("amount", 12.345), ("amount", True), ("amount", "12.34"),
    ("amount", float("nan")), ("amount", float("inf")), ("ratio", 1.01), ("ratio", float("-inf")),
    ("flag", 1), ("flag", "true"), ("name", "x" * 1001), ("name", 5),
    ("code", 2), ("code", True), ("code", 1.0), ("code", "1"), ("code64", 8), ("code64", True), ("code64", "7"),
    ("day", "2024-01-02"), ("day", True), ("kind_of", "c"), ("kind_of", 1),
    ("rate", 1), ("rate", "0.5"), ("rate", True), ("bit", 1), ("bit", False),
]


@pytest.mark.parametrize(("field", "value"), ACCEPTED)
def test_a_row_takes_each_value_its_contract_accepts(row: type[BaseModel], field: str, value: Any) -> None:
    assert _errors(row, {**VALID, field: value}) == []
    assert getattr(row.model_validate({**VALID, field: value}), field) == value


@pytest.mark.parametrize(("field", "value"), REFUSED)
def test_a_row_refuses_each_value_its_contract_refuses(row: type[BaseModel], field: str, value: Any) -> None:
    _refused(row, {**VALID, field: value}, field)


def test_required_and_unknown_fields(row: type[BaseModel]) -> None:
    for field in VALID:
        data = {k: v for k, v in VALID.items() if k != field}
        if field == "note":  # nullable: may be left out
            assert _errors(row, data) == [] and row.model_validate(data).note is None
        else:
            assert _refused(row, data, field)["type"] == "missing"
    assert _refused(row, {**VALID, "extra": 1}, "extra")["type"] == "extra_forbidden"


def test_off_grid_money_names_the_value_and_the_grid(row: type[BaseModel]) -> None:
    error = _refused(row, {**VALID, "amount": 12.345}, "amount")
    assert "12.345 is not a multiple of 0.01 (the column's scale is 2)" in error["msg"]
    assert row.model_json_schema()["properties"]["amount"]["multipleOf"] == pytest.approx(0.01)


def test_a_list_of_allowed_values_names_the_expected_type(row: type[BaseModel]) -> None:
    for field, value, what in (("code", True, "an integer"), ("code64", True, "an integer"),
                               ("kind_of", 1, "a string"), ("rate", "0.5", "a number"),
                               ("bit", 1, "true or false"), ("day", True, "a value")):
        error = _refused(row, {**VALID, field: value}, field)
        assert (error["type"], error["msg"]) == ("type_error", f"expected {what}"), field


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def test_times_are_iso_strings_in_their_plausible_range(row: type[BaseModel]) -> None:
    for value in (1_700_000_000, 1.5, True):
        error = _refused(row, {**VALID, "ts": value}, "ts")
        assert (error["type"], error["msg"]) == ("timestamp_type", "not a timestamp: expected an ISO 8601 string")
    error = _refused(row, {**VALID, "ts": "1999-12-31T23:59:59.999999"}, "ts")
    assert error["type"] == "time_not_before"
    assert error["msg"] == "1999-12-31T23:59:59.999999 is before not_before 2000-01-01T00:00:00"
    assert _errors(row, {**VALID, "ts": "2000-01-01T00:00:00"}) == []
    soon, later = (_now() + timedelta(minutes=4)).isoformat(), (_now() + timedelta(minutes=6)).isoformat()
    assert _errors(row, {**VALID, "ts": soon, "known_at": soon}) == []
    error = _refused(row, {**VALID, "known_at": later}, "known_at")
    assert error["type"] == "time_max_future"
    assert error["msg"] == f"{later} is more than 5m in the future (max_future)"


def test_times_become_naive_utc(row: type[BaseModel]) -> None:
    parsed = row.model_validate({**VALID, "ts": "2024-01-01T01:30:00+02:00", "known_at": "2024-01-01T00:00:00Z"})
    assert parsed.ts == datetime(2023, 12, 31, 23, 30) and parsed.known_at == datetime(2024, 1, 1)
    assert parsed.ts.tzinfo is None and parsed.known_at.tzinfo is None
    error = _refused(row, {**VALID, "ts": "0001-01-01T00:00:00+01:00"}, "ts")
    assert "0001-01-01T00:00:00+01:00 is out of range in UTC" in error["msg"]


def test_available_at_is_never_before_the_event_time(row: type[BaseModel]) -> None:
    same = row.model_validate({**VALID, "ts": "2024-01-01T00:00:00", "known_at": "2024-01-01T00:00:00"})
    assert same.known_at == same.ts
    error = _refused(row, {**VALID, "ts": "2024-01-01T00:00:00", "known_at": "2023-12-31T23:59:59.999999"},
                     "known_at")
    assert error["type"] == "available_before_event"
    assert error["msg"] == "known_at is before ts 2024-01-01T00:00:00"
    # An event time that is itself invalid is reported once, on its own field.
    assert {e["loc"][0] for e in _errors(row, {**VALID, "ts": "1990-01-01T00:00:00"})} == {"ts"}


def test_a_source_without_max_future_takes_the_service_setting() -> None:
    source = SOURCE.model_copy(update={"max_future": None})
    row = source_row_model(source, MAX_FUTURE)
    inside, outside = _now() + MAX_FUTURE - timedelta(minutes=1), _now() + MAX_FUTURE + timedelta(minutes=1)
    assert _errors(row, {**VALID, "ts": inside.isoformat(), "known_at": inside.isoformat()}) == []
    error = _refused(row, {**VALID, "known_at": outside.isoformat()}, "known_at")
    assert error["msg"] == f"{outside.isoformat()} is more than 3600s in the future (max_future)"
    untimed = source_row_model(source.model_copy(update={"not_before": None}), MAX_FUTURE)
    assert _errors(untimed, {**VALID, "ts": "1900-01-01T00:00:00", "known_at": "1900-01-01T00:00:00"}) == []


def test_rows_body_takes_one_row_or_a_list_and_reports_a_bad_row_alone(row: type[BaseModel]) -> None:
    body = TypeAdapter(rows_body(row))
    assert body.validate_python(VALID).id == 1
    assert [r.id for r in body.validate_python([VALID, {**VALID, "id": 2}])] == [1, 2]
    with pytest.raises(ValidationError) as one:
        body.validate_python({**VALID, "id": -1})
    assert [e["loc"] for e in one.value.errors()] == [(row.__name__, "id")]
    with pytest.raises(ValidationError) as many:
        body.validate_python([VALID, {**VALID, "id": -1}])
    assert [e["loc"] for e in many.value.errors()] == [(f"list[{row.__name__}]", 1, "id")]
    assert row.__name__ == "CardEventsRow"


def test_the_scoring_request_of_the_card_fraud_model() -> None:
    project = load_project(REPO)
    request = score_request_model(project, project.models["card_fraud"], MAX_FUTURE)
    assert request.__name__ == "CardFraudScoreRequest"
    minimal = {"tx_datetime": "2024-01-01T00:00:00", "tx_amount": 10.5}
    parsed = request.model_validate(minimal)  # unknown entities get defaults: every key is optional
    assert (parsed.transaction_id, parsed.customer_id, parsed.terminal_id, parsed.device_id) == (None,) * 4
    full = {**minimal, "transaction_id": 3, "customer_id": 4, "terminal_id": 5, "device_id": 6}
    assert request.model_validate(full).device_id == 6
    for key in ("transaction_id", "customer_id", "terminal_id", "device_id"):
        _refused(request, {**full, key: -1}, key)  # the spine column's ge 0
        _refused(request, {**full, key: 2**63}, key)
        _refused(request, {**full, key: "4"}, key)
    for field in ("tx_datetime", "tx_amount"):
        assert _refused(request, {k: v for k, v in minimal.items() if k != field}, field)["type"] == "missing"
    _refused(request, {**minimal, "tx_amount": 10.555}, "tx_amount")  # the spine's scale and range
    _refused(request, {**minimal, "tx_amount": 100000.01}, "tx_amount")
    assert _refused(request, {**minimal, "tx_datetime": "1999-01-01T00:00:00"},
                    "tx_datetime")["type"] == "time_not_before"
    later = (_now() + timedelta(minutes=6)).isoformat()
    assert _refused(request, {**minimal, "tx_datetime": later}, "tx_datetime")["type"] == "time_max_future"
    assert _refused(request, {**minimal, "tx_datetime": 1_700_000_000}, "tx_datetime")["type"] == "timestamp_type"
    assert request.model_validate({**minimal, "tx_datetime": "2024-01-01T02:00:00+02:00"}).tx_datetime == \
        datetime(2024, 1, 1)
    assert _refused(request, {**minimal, "merchant": 1}, "merchant")["type"] == "extra_forbidden"


def test_the_event_time_is_a_plausible_timestamp_without_request_features() -> None:
    """A model whose request features do not name the spine's event time: the scoring request still requires it,
    as a timestamp in the spine's plausible range (the request-feature loop must not be what declares it)."""
    project = load_project(REPO)
    model = project.models["card_fraud"].model_copy(
        update={"features": [f for f in project.models["card_fraud"].features if f != "transaction_context"]})
    request = score_request_model(project, model, MAX_FUTURE)
    assert request.model_validate({"tx_datetime": "2024-01-01T02:00:00+02:00"}).tx_datetime == datetime(2024, 1, 1)
    assert _refused(request, {}, "tx_datetime")["type"] == "missing"
    assert _refused(request, {"tx_datetime": "not a time"}, "tx_datetime")["type"] != "extra_forbidden"
    assert _refused(request, {"tx_datetime": "1999-01-01T00:00:00"}, "tx_datetime")["type"] == "time_not_before"
    assert _refused(request, {"tx_amount": 10.5, "tx_datetime": "2024-01-01T00:00:00"},
                    "tx_amount")["type"] == "extra_forbidden"


def test_a_request_timestamp_other_than_the_event_time_is_checked_like_it() -> None:
    """A request feature set with a timestamp of its own (not the event time): the same plausible range and the
    same conversion to naive UTC as the event time."""
    project = load_project(REPO)
    context = project.request_features["transaction_context"]
    project.request_features["transaction_context"] = context.model_copy(
        update={"request_schema": {**context.request_schema, "card_issued_at": "timestamp"}})
    request = score_request_model(project, project.models["card_fraud"], MAX_FUTURE)
    valid = {"tx_datetime": "2024-01-01T00:00:00", "tx_amount": 10.5}
    parsed = request.model_validate({**valid, "card_issued_at": "2023-06-01T01:00:00+01:00"})
    assert parsed.card_issued_at == datetime(2023, 6, 1)
    assert _refused(request, {**valid, "card_issued_at": "1999-01-01T00:00:00"},
                    "card_issued_at")["type"] == "time_not_before"
    later = (_now() + timedelta(minutes=6)).isoformat()
    assert _refused(request, {**valid, "card_issued_at": later}, "card_issued_at")["type"] == "time_max_future"


def test_the_models_describe_themselves_in_the_openapi_document(row: type[BaseModel]) -> None:
    """The generated models carry their description: the OpenAPI document shows it for the bodies."""
    assert row.model_json_schema()["description"] == "A row of source card_events."
    project = load_project(REPO)
    request = score_request_model(project, project.models["card_fraud"], MAX_FUTURE)
    assert request.model_json_schema()["description"] == (
        "A transaction to score with model card_fraud. A missing or unknown entity key gets the group's declared "
        "defaults, flagged in the response's 'defaults'.")


def test_times_are_utc_whatever_the_machine_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a machine five hours behind UTC: a naive time is UTC (not the machine's wall clock), an offset is
    converted to UTC, and max_future counts from the UTC clock."""
    import time

    monkeypatch.setenv("TZ", "EST+05")
    time.tzset()
    try:
        row = source_row_model(SOURCE, MAX_FUTURE)
        parsed = row.model_validate({**VALID, "ts": "2024-01-01T00:00:00", "known_at": "2024-01-01T03:00:00+02:00"})
        recent = (_now() - timedelta(minutes=1)).isoformat()
        recent_errors = _errors(row, {**VALID, "ts": recent, "known_at": recent})
        ahead = (_now() + timedelta(hours=2)).isoformat()
        ahead_errors = _errors(row, {**VALID, "ts": ahead, "known_at": ahead})
    finally:
        monkeypatch.undo()
        time.tzset()
    assert (parsed.ts, parsed.known_at) == (datetime(2024, 1, 1), datetime(2024, 1, 1, 1))
    assert recent_errors == []
    assert {e["type"] for e in ahead_errors} == {"time_max_future"}


def test_max_future_is_inclusive_as_at_ingestion(monkeypatch: pytest.MonkeyPatch) -> None:
    """The latest time allowed is the clock plus max_future, included (ingestion's contract checks <= too): with
    the clock held still, exactly that time passes and a microsecond later is refused."""
    import serving.schemas

    clock = datetime(2024, 6, 1, 12, 0, 0)

    class Still(datetime):
        @classmethod
        def now(cls, tz=None):  # noqa: ANN001, ANN206
            return clock.replace(tzinfo=UTC).astimezone(tz) if tz is not None else clock

    row = source_row_model(SOURCE, MAX_FUTURE)  # built first: its timestamp fields are of the real datetime
    monkeypatch.setattr(serving.schemas, "datetime", Still)  # the clock the time check reads
    edge = clock + timedelta(minutes=5)
    assert _errors(row, {**VALID, "ts": edge.isoformat(), "known_at": edge.isoformat()}) == []
    past = (edge + timedelta(microseconds=1)).isoformat()
    assert _refused(row, {**VALID, "ts": edge.isoformat(), "known_at": past}, "known_at")["type"] == "time_max_future"


def test_a_decision_override_column_is_an_optional_field_with_its_column_checks() -> None:
    """A spine column that only a decision override names (a partner) becomes an optional request field with its
    column's type and checks: a partner of another type or out of range is a 422, as at ingestion."""
    from trellis.spec import Column, DecisionOverride

    project = load_project(REPO)
    spine = project.sources["transactions"]
    partner = Column.model_validate({"type": "int32", "checks": {"ge": 1, "le": 99}})
    project.sources["transactions"] = spine.model_copy(update={"columns": {**spine.columns, "partner_id": partner}})
    model = project.models["card_fraud"]
    override = DecisionOverride.model_validate({"when": {"partner_id": 7}, "bands": [{"decision": "approve"}]})
    model = model.model_copy(update={"decision": model.decision.model_copy(update={"overrides": [override]})})
    request = score_request_model(project, model, MAX_FUTURE)
    valid = {"tx_datetime": "2024-01-01T00:00:00", "tx_amount": 10.5}
    assert request.model_validate(valid).partner_id is None
    assert request.model_validate({**valid, "partner_id": 7}).partner_id == 7
    for value in (0, 100, "7", 7.5, True):
        _refused(request, {**valid, "partner_id": value}, "partner_id")


def test_a_spine_without_max_future_takes_the_service_setting_for_scoring() -> None:
    project = load_project(REPO)
    project.sources["transactions"] = project.sources["transactions"].model_copy(update={"max_future": None})
    request = score_request_model(project, project.models["card_fraud"], MAX_FUTURE)
    inside, outside = _now() + MAX_FUTURE - timedelta(minutes=1), _now() + MAX_FUTURE + timedelta(minutes=1)
    assert request.model_validate({"tx_datetime": inside.isoformat(), "tx_amount": 1.0}).tx_datetime == inside
    error = _refused(request, {"tx_datetime": outside.isoformat(), "tx_amount": 1.0}, "tx_datetime")
    assert error["msg"] == f"{outside.isoformat()} is more than 3600s in the future (max_future)"
