"""`make demo` records its runs where `make dagster` looks (DAGSTER_HOME), so the UI shows what it did."""

from __future__ import annotations

from pathlib import Path

from assets.demo import demo_instance


def test_the_demo_records_its_runs_in_the_persistent_instance(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    instance = demo_instance()
    try:
        assert instance.is_persistent and Path(instance.root_directory) == tmp_path
    finally:
        instance.dispose()
    monkeypatch.delenv("DAGSTER_HOME")
    assert not demo_instance().is_persistent
