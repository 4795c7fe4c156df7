"""The compiled-SQL cache the Dagster code location loads from (trellis.compile.artefacts): what it returns is what
the compiler gives for the current definitions, never what it gave for earlier ones."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trellis.compile.artefacts import COMPILER_MODULES, cache_key, compile_group, compiled_groups
from trellis.compile.dbt import FeatureModel
from trellis.spec import load_project

REPO = Path(__file__).resolve().parents[1]
SPENDING = "definitions/features/customer_spending.yaml"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "definitions", tmp_path / "definitions")
    return tmp_path


def test_cached_artefacts_are_the_compilers(root: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    project = load_project(root)
    first = compiled_groups(project, cache)
    assert [p.name for p in cache.iterdir()] == [f"compiled-{cache_key(project)}.json"]
    again = compiled_groups(load_project(root), cache)  # a new process's load: read from the file
    for name, group in project.feature_groups.items():
        model = FeatureModel(project, group)
        assert first[name] == again[name] == compile_group(project, name)
        assert again[name].sql == model.sql({s: s for s in model.sources})
        assert again[name].lineage == model.lineage
        assert list(again[name].lineage) == [c for c, _ in model.columns()]  # in the table's column order


def test_a_definition_change_is_compiled_again(root: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    before = compiled_groups(load_project(root), cache)["customer_spending"]
    path = root / SPENDING
    path.write_text(path.read_text().replace("windows: [7d, 30d]", "windows: [7d, 14d]"))
    changed = load_project(root)
    after = compiled_groups(changed, cache)["customer_spending"]
    assert after == compile_group(changed, "customer_spending")
    assert after.sql != before.sql and "std_amount_14d" in after.lineage
    assert [p.name for p in cache.iterdir()] == [f"compiled-{cache_key(changed)}.json"]  # the old key's file is gone


def test_an_unreadable_cache_file_is_compiled_again(root: Path, tmp_path: Path):
    cache = tmp_path / "cache"
    project = load_project(root)
    cache.mkdir()
    (cache / f"compiled-{cache_key(project)}.json").write_text('{"customer_spending": ')
    assert compiled_groups(project, cache)["device_sharing"] == compile_group(project, "device_sharing")


def test_the_cache_key_covers_every_module_the_compiler_imports():
    """A module the compiler imports but the key does not hash could change compiled SQL behind a cache hit."""
    code = ("import sys, trellis.compile.artefacts, trellis.compile.dbt; "
            "print('\\n'.join(m.__file__ for n, m in sys.modules.items() if n.split('.')[0] == 'trellis'))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    package = REPO / "trellis"
    hashed = {package / name for name in COMPILER_MODULES}
    for file in map(Path, loaded.stdout.split()):
        assert file == package / "compile" / file.name or file in hashed, (
            f"{file.relative_to(package)} is imported by the compiler but not in COMPILER_MODULES")
