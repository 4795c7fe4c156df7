"""Hostile bytes at the HTTP boundary, on the real app without a pipeline (validation and size limits come
before the store or the model are used): any byte sequence gets a 4xx problem document, never a 500; a body
over the limit is refused before it is read; error bodies name the field and its value, never the request."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from serving.settings import Settings

POSTS = ["/v1/score", "/v1/score/batch", "/v1/events", "/v1/labels"]
JSON = {"content-type": "application/json"}


@pytest.fixture
def client(project_copy: Path):
    settings = Settings(project=project_copy, mlflow_uri=f"sqlite:///{project_copy / 'mlflow.db'}",
                        alias_poll_seconds=0, catch_up_seconds=0, max_body_bytes=4096)
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("path", POSTS)
@pytest.mark.parametrize("body", [
    b'{"customer_id": "\\ud800"}',  # a lone surrogate, escaped
    b'[{"transaction_id": 1, "tx_amount": "\\udfff\\ud800"}]',
    b'{"tx_datetime": "2018-01-01T00:00:00", "tx_amount": 1e999}',
    b'\xff\xfe\x00garbage',  # not UTF-8
    b'{"a": ' * 2000,  # deep nesting, truncated
    b'',
    b'null',
    b'"\\ud800"',
])
def test_any_bytes_get_a_4xx_problem_never_a_500(client, path, body) -> None:
    response = client.post(path, content=body, headers=JSON)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    problem = response.json()
    assert problem["status"] == response.status_code and problem["title"] and problem["detail"]
    assert response.headers["content-type"] == "application/problem+json"


def test_a_422_names_the_field_and_value_and_does_not_echo_the_request(client) -> None:
    secret = "4111111111111111-a-card-number-the-client-should-not-see-again"
    body = {"transaction_id": 7, "tx_datetime": "2018-09-30T12:00:00", "customer_id": 1, "terminal_id": 2,
            "device_id": 3, "tx_amount": -5.0, "note": secret}
    response = client.post("/v1/events", json=body)
    assert response.status_code == 422, response.text
    assert secret not in response.text
    problem = response.json()
    fields = {e["field"] for e in problem["errors"]}
    assert any(f.endswith("tx_amount") for f in fields), fields
    amount = next(e for e in problem["errors"] if e["field"].endswith("tx_amount"))
    assert amount["input"] == -5.0
    assert all(not isinstance(e.get("input"), dict | list) for e in problem["errors"])
    assert "/work" not in response.text and "/tmp" not in response.text


@pytest.mark.parametrize("path", POSTS)
def test_a_body_over_the_limit_is_a_413_before_it_is_read(client, path) -> None:
    big = b"[" + b",".join([b'{"transaction_id": 1}'] * 1000) + b"]"
    assert len(big) > 4096
    response = client.post(path, content=big, headers=JSON)
    assert response.status_code == 413, response.text
    assert "4096 bytes" in response.json()["detail"]

    # without a content-length (chunked): refused once the bytes received pass the limit
    def chunks():
        for _ in range(100):
            yield b" " * 1000

    response = client.post(path, content=chunks(), headers=JSON)
    assert response.status_code == 413, response.text
    openapi = client.get("/openapi.json").json()
    assert "413" in openapi["paths"]["/v1/events"]["post"]["responses"]
    assert "409" in openapi["paths"]["/v1/events"]["post"]["responses"]
