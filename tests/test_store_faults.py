"""Store faults are answers, not crashes (issue 11): a real service process (uvicorn) on a copy of the
pipeline's store, with the store file truncated, renamed away, replaced by garbage, and built from other
definitions. Each fault is a 503 with a reason and no file path; the process never dies; it recovers without a
restart once the store is back."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest
import yaml
from fastapi.testclient import TestClient
from test_serving import last_day_transactions, request_of
from test_write_path import free_port, start_service

from serving.app import create_app

pytestmark = pytest.mark.slow


def store_file(root: Path) -> Path:
    return root / "feature_repo" / "data" / "online_store.db"


def checkpoint(path: Path) -> None:
    """Fold the WAL into the file, so the file alone is the store (a copy of it is a whole store)."""
    con = sqlite3.connect(path, isolation_level=None)
    try:
        assert con.execute("pragma wal_checkpoint(truncate)").fetchone()[0] == 0
    finally:
        con.close()


def assert_unavailable(http: httpx.Client, tx: dict, root: Path, fragment: str) -> None:
    for path, method in (("/v1/score", "post"), ("/readyz", "get")):
        response = http.post(path, json=tx) if method == "post" else http.get(path)
        assert response.status_code == 503, (path, response.status_code, response.text)
        assert fragment in response.text, (path, response.text)
        assert str(root) not in response.text and "/tmp" not in response.text, response.text


def test_truncated_renamed_and_garbage_store_are_503s_and_the_service_recovers(served) -> None:
    root, _, paths = served
    path = store_file(root)
    checkpoint(path)
    original = path.read_bytes()
    tx = request_of(last_day_transactions(paths, 1)[0])
    port = free_port()
    process = start_service(root, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            assert http.post("/v1/score", json=tx).status_code == 200
            want = http.post("/v1/score", json=tx).json()["score"]

            # truncated in place (as a botched copy leaves it): a mapped reader would die of SIGBUS
            with open(path, "r+b") as f:
                f.truncate(len(original) // 3)
            assert_unavailable(http, tx, root, "online store")
            assert process.poll() is None, "the service died"
            with open(path, "r+b") as f:  # restored in place
                f.write(original)
            assert http.post("/v1/score", json=tx).json()["score"] == want
            assert http.get("/readyz").status_code == 200

            # renamed away: not answered from the old inode
            aside = path.with_name("aside.db")
            path.rename(aside)
            assert_unavailable(http, tx, root, "does not exist")
            aside.rename(path)
            assert http.post("/v1/score", json=tx).json()["score"] == want

            # replaced by a file that is not a database
            garbage = path.with_name("garbage.db")
            garbage.write_bytes(b"not a database " * 5000)
            os.replace(garbage, path)
            assert_unavailable(http, tx, root, "online store")
            restored = path.with_name("restored.db")
            restored.write_bytes(original)
            os.replace(restored, path)
            assert http.post("/v1/score", json=tx).json()["score"] == want
            assert http.get("/readyz").status_code == 200
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)


def test_a_state_built_from_other_definitions_is_a_503_naming_the_mismatch(served) -> None:
    """The issue: after a definitions edit compiled but not re-materialized, /readyz said ready while every
    /v1/score was a bare 500 (a state blob decoded with the new layout)."""
    root, settings, paths = served
    definition = root / "definitions" / "features" / "customer_spending.yaml"
    group = yaml.safe_load(definition.read_text())
    group["features"].append({"name": "min_amount", "agg": "min", "column": "tx_amount", "windows": ["7d"],
                              "description": "Smallest amount."})
    definition.write_text(yaml.safe_dump(group, sort_keys=False))
    tx = request_of(last_day_transactions(paths, 1)[0])
    with TestClient(create_app(settings)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503, ready.text
        assert any("other definitions" in p and "materialize" in p for p in ready.json()["problems"])
        response = client.post("/v1/score", json=tx)
        assert response.status_code == 503, response.text
        assert "other definitions" in response.json()["detail"]
    # the same store with the definitions it was built from is ready
    shutil.copy(paths.root / "definitions" / "features" / "customer_spending.yaml", definition)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").status_code == 200
        assert client.post("/v1/score", json=tx).status_code == 200
