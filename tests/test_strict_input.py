"""Strict input at the API: the real FastAPI app (TestClient, lifespan included) on the pipeline's store refuses
every implausible event, label and scoring request with a 422 naming the field and the value, without echoing
the request. The same rules hold in the ingestion contracts (tests/test_contracts.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import hypothesis.strategies as st
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import given, settings
from test_serving import last_day_transactions, request_of

from serving.app import create_app
from trellis.types import on_scale

SENTINEL = 7_654_321  # a device id no bad case touches: the 422 body must not show it (no echo of the request)
FAR_FUTURE = f"{datetime.now(UTC).year + 4}-01-01T00:00:00"


@pytest.fixture
def client(served):
    _, settings, _ = served
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def event(served) -> dict[str, Any]:
    _, _, paths = served
    tx = last_day_transactions(paths, 1)[0]
    return {**tx, "transaction_id": 10**12 + 17, "device_id": SENTINEL}


def label_of(event: dict[str, Any], delay: timedelta) -> dict[str, Any]:
    happened = datetime.fromisoformat(event["tx_datetime"])
    return {"transaction_id": event["transaction_id"], "customer_id": event["customer_id"],
            "terminal_id": event["terminal_id"], "tx_datetime": event["tx_datetime"], "tx_fraud": 0,
            "tx_fraud_scenario": 0, "available_at": (happened + delay).isoformat()}


def errors_of(response) -> list[dict[str, Any]]:
    """The error items of a 422, in FastAPI's shape (``detail``) or a problem document's (``errors``)."""
    body = response.json()
    items = body.get("errors") if isinstance(body.get("errors"), list) else body.get("detail")
    assert isinstance(items, list), body
    return items


def assert_refused(response, field: str, value: Any, *fragments: str) -> None:
    """A 422 with an error on ``field`` that shows ``value`` (as its input or in its message) and every
    fragment, and that does not echo the rest of the request."""
    assert response.status_code == 422, response.text
    items = errors_of(response)
    hits = [e for e in items if field in [str(p) for p in e["loc"]]
            and ((type(e.get("input")) is type(value) and e.get("input") == value) or str(value) in e["msg"])]
    assert hits, items
    assert any(all(f in e["msg"] for f in fragments) for e in hits), hits
    assert str(SENTINEL) not in response.text, f"the 422 echoes the request: {response.text}"


BAD_EVENTS = [
    ("tx_amount", True, "valid number"),
    ("tx_amount", False, "valid number"),
    ("tx_amount", "812.15", "valid number"),
    ("tx_amount", 12.345, "not a multiple of 0.01"),
    ("tx_amount", -5.0, "greater than or equal to 0"),
    ("transaction_id", -1, "greater than or equal to 0"),
    ("customer_id", -1, "greater than or equal to 0"),
    ("terminal_id", 1.5, "valid integer"),
    ("customer_id", True, "valid integer"),
    ("customer_id", None, "valid integer"),
    ("transaction_id", None, "valid integer"),
    ("tx_datetime", "0001-01-01T00:00:00", "is before not_before 2000-01-01T00:00:00"),
    ("tx_datetime", "1900-01-01T00:00:00", "not_before"),
    ("tx_datetime", FAR_FUTURE, "in the future (max_future)"),
    ("tx_datetime", 1530403200, "not a timestamp"),
]


@pytest.mark.parametrize(("field", "value", "fragment"), BAD_EVENTS, ids=[f"{f}={v!r}" for f, v, _ in BAD_EVENTS])
@pytest.mark.parametrize("as_list", [False, True], ids=["row", "list"])
def test_a_bad_event_is_a_422_naming_field_and_value(client, event, field, value, fragment, as_list):
    row = {**event, field: value}
    response = client.post("/v1/events", json=[row] if as_list else row)
    assert_refused(response, field, value, fragment)


def test_a_good_event_and_label_are_accepted(client, event):
    """The control: the rows the bad cases start from are valid, so each 422 above is for its one field."""
    response = client.post("/v1/events", json=event)
    assert response.status_code == 200, response.text
    response = client.post("/v1/labels", json=label_of(event, timedelta(days=7)))
    assert response.status_code == 200, response.text
    other = {**event, "transaction_id": event["transaction_id"] + 1}
    assert client.post("/v1/events", json=other).status_code == 200
    response = client.post("/v1/labels", json=label_of(other, timedelta(0)))  # known at once: allowed
    assert response.status_code == 200, response.text


def test_a_label_available_before_its_event_is_a_422_naming_both(client, event):
    label = label_of(event, -timedelta(hours=1))
    response = client.post("/v1/labels", json=label)
    happened = datetime.fromisoformat(event["tx_datetime"]).isoformat()
    assert_refused(response, "available_at", label["available_at"], "tx_datetime", happened)


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("tx_fraud", True, "expected an integer"),
    ("terminal_id", -1, "greater than or equal to 0"),
    ("tx_datetime", "0001-01-01T00:00:00", "not_before"),
    ("available_at", FAR_FUTURE, "in the future"),
])
def test_a_bad_label_is_a_422_naming_field_and_value(client, event, field, value, fragment):
    label = {**label_of(event, timedelta(days=7)), field: value}
    response = client.post("/v1/labels", json=label)
    assert response.status_code == 422, response.text
    items = errors_of(response)
    assert any(field in e["loc"] and fragment in e["msg"] for e in items), items


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("tx_amount", True, "valid number"),
    ("tx_amount", "812.15", "valid number"),
    ("customer_id", -1, "greater than or equal to 0"),
    ("tx_datetime", "0001-01-01T00:00:00", "not_before"),
])
def test_a_bad_scoring_request_is_a_422_on_both_paths(served, field, value, fragment):
    """The lean path (LeanPath) validates with the same model: a bad request gets the same 422 from
    it as from the FastAPI route."""
    _, settings, paths = served
    body = {**request_of(last_day_transactions(paths, 1)[0]), field: value}
    answers = []
    for fast in (True, False):
        with TestClient(create_app(settings.model_copy(update={"lean_path": fast}))) as c:
            response = c.post("/v1/score", json=body)
            assert response.status_code == 422, response.text
            assert any(field in e["loc"] and fragment in e["msg"] for e in errors_of(response)), response.text
            answers.append(response.json())
    assert answers[0] == answers[1]


# ---------------------------------------------------------------------------------------------------
# The declarations: validated with file and line, exported in the JSON Schema.


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("not_before", "yesterday", "invalid not_before 'yesterday': expected a date or timestamp"),
    ("not_before", "2000-13-01", "invalid not_before '2000-13-01'"),
    ("max_future", "1 day", "invalid max_future '1 day'"),
    ("max_future", "-5m", "invalid max_future '-5m': must not be negative"),
])
def test_a_bad_time_bound_is_reported_with_file_and_line(project_copy, field, value, fragment):
    from click.testing import CliRunner

    from trellis.cli import main

    path = project_copy / "definitions/sources/transactions.yaml"
    lines = path.read_text().splitlines()
    line = next(i for i, text in enumerate(lines, 1) if text.startswith(f"{field}:"))
    lines[line - 1] = f"{field}: {value!r}"
    path.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["validate", "--project", str(project_copy)])
    assert result.exit_code != 0
    assert f"definitions/sources/transactions.yaml:{line}: {field}: {fragment}" in result.output, result.output


def test_the_time_bounds_are_in_the_json_schema():
    import jsonschema
    from jsonschema.exceptions import best_match

    from trellis.spec import json_schema

    validator = jsonschema.Draft202012Validator(json_schema())
    source = {"kind": "source", "name": "s", "table": "raw.s", "event_time": "t",
              "columns": {"t": {"type": "timestamp"}}}
    assert list(validator.iter_errors({**source, "not_before": "2000-01-01", "max_future": "1d"})) == []
    error = best_match(validator.iter_errors({**source, "max_future": "1 day"}))
    assert error is not None and list(error.absolute_path) == ["max_future"], error
    properties = json_schema()["$defs"]["Source"]["properties"]
    assert {"not_before", "max_future"} <= set(properties)


@settings(max_examples=3000, deadline=None)
@given(value=st.one_of(st.floats(), st.integers(-(2**70), 2**70),
                       st.builds(lambda cents, nudge: cents / 100 + nudge, st.integers(-(10**9), 10**9),
                                 st.sampled_from([0.0, 0.0, 1e-9, -1e-9, 0.005, 5e-7]))),
       scale=st.integers(0, 6))
def test_the_api_scale_check_is_the_ingestion_contract_s(value: float, scale: int) -> None:
    """The API checks one value at a time (``on_scale`` of a number), ingestion a column (``on_scale`` of an
    array): the same answer for every value, NaN, infinities and integers beyond 2**53 included."""
    one = on_scale(value, scale)
    column = on_scale(np.array([value, 0.0], dtype=np.float64), scale)
    assert type(one) is bool
    assert one == bool(column[0]), (value, scale)
