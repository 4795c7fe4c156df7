"""The scoring service end to end: the real FastAPI app (TestClient, lifespan included) on the pipeline's
Feast online store and MLflow registry, each test on its own copy so ingestion and promotions stay local."""

from __future__ import annotations

import re
import sqlite3
import threading
from datetime import datetime, timedelta
from typing import Any

import duckdb
import numpy as np
import pytest
from fastapi.testclient import TestClient

from serving.app import create_app
from trellis.decisions import Policy
from trellis.online.state import state_view
from trellis.spec import load_project

MODEL = "card_fraud"


@pytest.fixture
def client(served):
    _, settings, _ = served
    with TestClient(create_app(settings)) as c:
        yield c


def last_day_transactions(paths, limit: int = 50) -> list[dict[str, Any]]:
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        rows = con.sql("""
            select * from validated.transactions
            where tx_datetime >= (select cast(max(tx_datetime) as date) from validated.transactions)
            order by tx_datetime, transaction_id""").df()
    finally:
        con.close()
    return [{k: (v.isoformat() if hasattr(v, "isoformat") else v.item() if hasattr(v, "item") else v)
             for k, v in r.items()} for r in rows.head(limit).to_dict("records")]


def request_of(tx: dict[str, Any]) -> dict[str, Any]:
    return {k: tx[k] for k in ("transaction_id", "customer_id", "terminal_id", "device_id", "tx_datetime",
                               "tx_amount")}


def test_score_has_score_decision_model_reasons(client, served):
    _, _, paths = served
    tx = last_day_transactions(paths, 1)[0]
    response = client.post("/v1/score", json=request_of(tx))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["transaction_id"] == tx["transaction_id"]
    assert 0.0 <= body["score"] <= 1.0
    policy = Policy(load_project(served[0]).models[MODEL])  # the reference policy: approve / review / decline
    decided = policy.decide(body["score"], {})
    assert (body["decision"], body["reason_codes"]) == (decided.decision, list(decided.reason_codes))
    assert body["policy"] == {"version": 1, "fingerprint": policy.fingerprint}
    assert body["model"] == {"name": MODEL, "version": "1", "alias": "champion"}
    assert body["defaults"] == []
    assert len(body["reasons"]) == 3
    contributions = [r["contribution"] for r in body["reasons"]]
    assert contributions == sorted(contributions, reverse=True)


def test_online_score_equals_offline_for_the_same_transaction(client, served):
    """The materialized state is as of the end of the data; a transaction of the last day scored at its own
    time sees only earlier rows, so online equals the offline training-set row (features and score)."""
    from trellis.registry import load_alias
    from trellis.scoring import model_features, score_frame, scoring_frame

    root, settings, paths = served
    project = load_project(root)
    txs = last_day_transactions(paths, 40)
    con = duckdb.connect(str(paths.warehouse), read_only=True)
    try:
        day = datetime.fromisoformat(txs[0]["tx_datetime"]).date()
        offline = scoring_frame(con, project, MODEL, day).set_index("transaction_id")
    finally:
        con.close()
    model, version = load_alias(settings.mlflow_uri, MODEL)
    features, cats = model_features(model)
    batch = score_frame(model, offline.reset_index(), features, cats, model_version=version,
                        join_key="transaction_id").set_index("transaction_id")
    for tx in txs:
        body = client.post("/v1/score", params={"include_features": "true"}, json=request_of(tx)).json()
        row = offline.loc[tx["transaction_id"]]
        for name in features:
            want, got = row[name], body["features"][name]
            if want is None or (isinstance(want, float) and np.isnan(want)):
                assert got is None, (tx["transaction_id"], name, got)
            else:
                assert got == pytest.approx(float(want), rel=1e-9, abs=0), (tx["transaction_id"], name)
        assert body["score"] == pytest.approx(batch.loc[tx["transaction_id"], "score"], rel=1e-9, abs=1e-15)


def test_events_and_labels_update_the_state_and_feast_returns_the_same_values(client, served):
    from feast import FeatureStore

    root, _, paths = served
    tx = last_day_transactions(paths, 1)[0]
    later = datetime.fromisoformat(tx["tx_datetime"]) + timedelta(days=30)
    customer = 9_999_999  # a customer nobody has seen
    probe = {**request_of(tx), "customer_id": customer, "tx_datetime": later.isoformat()}
    before = client.post("/v1/score", params={"include_features": "true"}, json=probe).json()
    assert before["defaults"] == ["customer_spending"]
    assert before["features"]["customer_spending__tx_count_1d"] == 0

    events = [{**tx, "transaction_id": 10**12 + i, "customer_id": customer, "tx_amount": 10.0 * (i + 1),
               "tx_datetime": (later - timedelta(hours=i + 1)).isoformat()} for i in range(3)]
    response = client.post("/v1/events", json=events)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == 3 and "customer_spending" in response.json()["groups"]
    assert client.post("/v1/events", json=events[0]).status_code == 200  # re-delivery counts once

    after = client.post("/v1/score", params={"include_features": "true"}, json=probe).json()
    assert after["defaults"] == []
    assert after["features"]["customer_spending__tx_count_1d"] == 3
    assert after["features"]["customer_spending__avg_amount_1d"] == pytest.approx(20.0)
    assert after["features"]["customer_spending__max_amount_1d"] == 30.0

    store = FeatureStore(repo_path=str(root / "feature_repo"))
    names = [f.name for f in load_project(root).features("customer_spending")]
    feast_values = store.get_online_features(
        features=[f"customer_spending_live:{n}" for n in names],
        entity_rows=[{"customer_id": customer, "request_ts": later}]).to_dict()
    for n in names:
        assert feast_values[n][0] == after["features"][f"customer_spending__{n}"], n

    label = {"transaction_id": events[0]["transaction_id"], "customer_id": customer,
             "terminal_id": tx["terminal_id"], "tx_datetime": events[0]["tx_datetime"], "tx_fraud": 1,
             "tx_fraud_scenario": 1, "available_at": later.isoformat()}
    response = client.post("/v1/labels", json=label)
    assert response.status_code == 200 and response.json()["groups"] == ["terminal_risk"]


@pytest.mark.parametrize(("change", "field", "fragment"), [
    ({"tx_amount": -5.0}, "tx_amount", "greater than or equal to 0"),
    ({"tx_amount": 1e9}, "tx_amount", "less than or equal to 100000"),
    ({"tx_amount": 12.345}, "tx_amount", "12.345 is not a multiple of 0.01 (the column's scale is 2)"),
    ({"customer_id": "abc"}, "customer_id", "valid integer"),
    ({"tx_datetime": "2999-01-01T00:00:00"}, "tx_datetime", "in the future"),
    ({"tx_datetime": "yesterday"}, "tx_datetime", "datetime"),
    ({"surprise": 1}, "surprise", "Extra inputs are not permitted"),
    ({"tx_amount": None}, "tx_amount", "valid number"),
])
def test_bad_input_is_a_422_naming_the_field(client, served, change, field, fragment):
    _, _, paths = served
    body = {**request_of(last_day_transactions(paths, 1)[0]), **change}
    response = client.post("/v1/score", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert any(field in e["loc"] and fragment in e["msg"] for e in errors), errors
    assert field in response.json()["detail"]


def test_a_time_older_than_the_online_state_keeps_is_a_422(client, served):
    _, _, paths = served
    tx = request_of(last_day_transactions(paths, 1)[0])
    old = (datetime.fromisoformat(tx["tx_datetime"]) - timedelta(days=40)).isoformat()
    response = client.post("/v1/score", json={**tx, "tx_datetime": old})
    assert response.status_code == 422, response.text
    assert f"request time {old}" in response.json()["detail"]
    assert f"customer_id={tx['customer_id']}" in response.json()["detail"]


def test_missing_field_and_malformed_json(client):
    response = client.post("/v1/score", json={"customer_id": 1})
    assert response.status_code == 422
    missing = {e["loc"][-1] for e in response.json()["errors"] if e["type"] == "missing"}
    assert {"tx_datetime", "tx_amount"} <= missing
    response = client.post("/v1/score", content=b'{"customer_id": 1,', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["type"] == "json_invalid"
    # Python's JSON parser takes NaN and Infinity: still a 422 naming the field, not a failure to render it
    response = client.post("/v1/score", content=b'{"tx_datetime": "2018-07-01T00:00:00", "tx_amount": NaN}',
                           headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert (["body", "tx_amount"], "finite_number", "nan") in [
        (e["loc"], e["type"], e.get("input")) for e in response.json()["errors"]]


def test_batch_scores_every_request_in_order(client, served):
    _, _, paths = served
    txs = last_day_transactions(paths, 5)
    response = client.post("/v1/score/batch", json=[request_of(t) for t in txs])
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["transaction_id"] for r in results] == [t["transaction_id"] for t in txs]
    single = client.post("/v1/score", json=request_of(txs[2])).json()
    assert results[2]["score"] == single["score"]


def test_health_readiness_metrics(client, served):
    _, _, paths = served
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model"]["version"] == "1"
    client.post("/v1/score", json=request_of(last_day_transactions(paths, 1)[0]))
    text = client.get("/metrics").text
    assert 'trellis_request_seconds_bucket{endpoint="/v1/score"' in text
    assert 'trellis_requests_total{endpoint="/v1/score",status="200"}' in text
    assert 'trellis_decisions_total{decision=' in text and 'version="1"' in text
    assert client.get("/openapi.json").json()["paths"]["/v1/score"]["post"]


def test_missing_store_is_reported_and_scoring_answers_503(served):
    root, settings, paths = served
    (root / "feature_repo" / "data" / "online_store.db").unlink()
    with TestClient(create_app(settings)) as c:
        ready = c.get("/readyz")
        assert ready.status_code == 503
        assert any("does not exist" in p for p in ready.json()["problems"])
        response = c.post("/v1/score", json=request_of(last_day_transactions(paths, 1)[0]))
        assert response.status_code == 503
        assert "online store" in response.json()["detail"]


def test_locked_store_answers_503_with_a_reason(client, served):
    root, _, paths = served
    tx = request_of(last_day_transactions(paths, 1)[0])
    assert client.post("/v1/score", json=tx).status_code == 200
    store = client.app.state.service.store
    store.close()  # the service's readers let go; the locker takes the database for itself
    locker = sqlite3.connect(root / "feature_repo" / "data" / "online_store.db", isolation_level=None)
    try:
        locker.execute("pragma locking_mode=exclusive")
        locker.execute("begin exclusive")
        locker.execute(f'delete from "trellis_{state_view("customer_spending")}" where 0')
        response = client.post("/v1/score", json=tx)
        assert response.status_code == 503, response.text
        assert "locked" in response.json()["detail"]
        assert client.get("/readyz").status_code == 503
    finally:
        locker.close()
    store.close()
    assert client.post("/v1/score", json=tx).status_code == 200


def test_alias_moves_without_restart_or_failed_requests(client, served):
    from trellis import registry
    from trellis.modeling import _mlflow

    _, settings, paths = served
    tx = request_of(last_day_transactions(paths, 1)[0])
    with _mlflow(settings.mlflow_uri) as mlflow:
        mlflow_client = mlflow.MlflowClient()
        v1 = mlflow_client.get_model_version(MODEL, "1")
        mlflow_client.create_model_version(MODEL, v1.source, run_id=v1.run_id)  # version 2, same artifact
    statuses, versions, stop = [], set(), threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            response = client.post("/v1/score", json=tx)
            statuses.append(response.status_code)
            versions.add(response.json()["model"]["version"])

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        registry.promote(settings.mlflow_uri, MODEL, "2", why="test: serve v2")
        assert client.post("/v1/model/reload").json()["version"] == "2"
        registry.rollback(settings.mlflow_uri, MODEL, why="test: back to v1")
        assert client.post("/v1/model/reload").json()["version"] == "1"
    finally:
        stop.set()
        worker.join()
    assert statuses and set(statuses) == {200}
    assert {"1", "2"} <= versions


def request_ids(content: bytes) -> bytes:
    """An answer with each decision's ``request_id`` (a fresh random id) in place, not its value."""
    return re.sub(rb'"request_id":"[0-9a-f]{32}"', b'"request_id":"<id>"', content)


def test_lean_scoring_path_answers_byte_for_byte_as_the_fastapi_routes(served):
    """Well-formed scoring requests are answered by the app's lean ASGI path (``LeanPath``); with it off
    (``lean_path=False``) FastAPI's routes answer everything. Same status, headers and bytes either way:
    flags, batches, state errors, and everything the lean path hands to FastAPI (bad input, other spellings of
    the flags, other content types, an oversized batch)."""
    _, settings, paths = served
    txs = [request_of(t) for t in last_day_transactions(paths, 6)]
    old = (datetime.fromisoformat(txs[0]["tx_datetime"]) - timedelta(days=40)).isoformat()
    json_cases = [
        ("/v1/score", {}, txs[0]),
        ("/v1/score", {"include_features": "true"}, txs[1]),
        ("/v1/score", {"explain": "false", "include_features": "1"}, txs[2]),
        ("/v1/score", {"explain": "0"}, txs[3]),
        ("/v1/score", {"explain": "no"}, txs[3]),  # FastAPI's bool parsing reads more spellings
        ("/v1/score", {"include_features": "TRUE"}, txs[4]),
        ("/v1/score", {"explain": "maybe"}, txs[4]),
        ("/v1/score", {"unknown": "1"}, txs[5]),
        ("/v1/score", {}, {**txs[0], "tx_amount": -1.0}),
        ("/v1/score", {}, {**txs[0], "customer_id": 2**70}),
        ("/v1/score", {}, {k: v for k, v in txs[0].items() if k != "tx_datetime"}),
        ("/v1/score", {}, {**txs[0], "tx_datetime": old}),  # a state error: 422 with the reason
        ("/v1/score", {}, [txs[0]]),
        ("/v1/score/batch", {}, txs),
        ("/v1/score/batch", {}, []),
        ("/v1/score/batch", {}, [txs[0], {**txs[1], "tx_amount": "x"}]),
        ("/v1/score/batch", {}, [txs[0]] * (settings.max_batch + 1)),
        ("/v1/score/batch", {}, txs[0]),
    ]
    raw_cases = [
        ("/v1/score", b'{"customer_id": 1,', "application/json"),
        ("/v1/score", b"", "application/json"),
        ("/v1/score", b'{"tx_amount": NaN}', "application/json"),
        ("/v1/score", b"\xff\xfe", "application/json"),
        ("/v1/score", json_bytes(txs[0]), "application/json; charset=utf-8"),
        ("/v1/score", json_bytes(txs[0]), "text/plain"),
        ("/v1/score", json_bytes(txs[0]), "application/vnd.trellis+json"),
    ]
    slow_settings = settings.model_copy(update={"lean_path": False})
    with TestClient(create_app(settings)) as fast, TestClient(create_app(slow_settings)) as slow:
        assert slow.app.lean_path is None

        def same(path: str, **request: Any) -> int:
            a, b = fast.post(path, **request), slow.post(path, **request)
            assert (a.status_code, a.headers.get("content-type"), request_ids(a.content)) == \
                (b.status_code, b.headers.get("content-type"), request_ids(b.content)), (path, request)
            return a.status_code

        statuses = [same(path, params=params, json=body) for path, params, body in json_cases]
        statuses += [same(path, content=body, headers={"content-type": kind}) for path, body, kind in raw_cases]
        assert {200, 422} <= set(statuses)
        # The lean path answered the well-formed ones (four flag spellings, a state error, two batches, a
        # charset parameter) and handed every other request to FastAPI.
        assert fast.app.lean_path.answered == 8
        metrics = fast.get("/metrics").text
        assert 'trellis_requests_total{endpoint="/v1/score",status="200"}' in metrics
        assert 'trellis_requests_total{endpoint="/v1/score",status="422"}' in metrics
        assert 'trellis_requests_total{endpoint="/v1/score/batch",status="200"}' in metrics


def json_bytes(value: Any) -> bytes:
    import json

    return json.dumps(value).encode()
