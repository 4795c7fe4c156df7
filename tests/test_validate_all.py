"""One pass of validation: `trellis validate` reports every problem of every file at once.

A project with several independent mistakes across files (a YAML shape problem, a definition of the wrong shape,
unknown columns, a bad model feature reference) gets all of them from one load, each with file, line, field and
value, and none of the consequences of another (a reference to a definition that failed to load)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_definitions import DEVICES, ENTITIES, REPO, SPENDING, TERMINALS

from trellis.cli import main
from trellis.errors import DefinitionError
from trellis.spec import load_project

MODEL = "definitions/models/card_fraud.yaml"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "definitions", tmp_path / "definitions")
    return tmp_path


def edit(root: Path, rel: str, old: str, new: str) -> None:
    path = root / rel
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {rel}"
    path.write_text(text.replace(old, new))


def line_of(root: Path, rel: str, needle: str, occurrence: int = 0) -> int:
    return [i for i, line in enumerate((root / rel).read_text().splitlines(), 1) if needle in line][occurrence]


def problems(root: Path) -> list:
    with pytest.raises(DefinitionError) as info:
        load_project(root)
    return info.value.problems


def break_five_things(root: Path) -> list[tuple[str, int, str, str]]:
    """Five independent mistakes in four files; returns (file, line, field, what the message must say)."""
    # The YAML itself: a key given twice (the file used to be dropped whole, hiding everything else in it).
    edit(root, DEVICES, "online: true\n", "online: true\nonline: false\n")
    # The shape of one feature: a window without a valid unit ...
    edit(root, SPENDING, "    column: tx_amount\n    windows: [7d, 30d]\n",
         "    column: tx_amount\n    windows: [7days, 30d]\n")
    # ... and, in a later feature of the same group, a column typo (reported only once the window was fixed).
    edit(root, SPENDING, "  - name: max_amount\n    agg: max\n    column: tx_amount\n",
         "  - name: max_amount\n    agg: max\n    column: tx_amout\n")
    # An unknown column in another file.
    edit(root, TERMINALS, "column: tx_fraud", "column: tx_frad")
    # A model feature that no group produces.
    edit(root, MODEL, "  - device_sharing\n", "  - device_sharing\n  - device_sharing__tx_count_30d\n")
    return [
        (DEVICES, line_of(root, DEVICES, "online:", 1), "online", "duplicate key 'online'"),
        (SPENDING, line_of(root, SPENDING, "7days"), "features.2.windows.0", "invalid window '7days'"),
        (SPENDING, line_of(root, SPENDING, "tx_amout"), "features.3.column", "unknown column 'tx_amout'"),
        (TERMINALS, line_of(root, TERMINALS, "tx_frad"), "features.1.column", "unknown column 'tx_frad'"),
        (MODEL, line_of(root, MODEL, "device_sharing__tx_count_30d"), "features.3",
         "'device_sharing__tx_count_30d' (did you mean 'device_sharing__tx_count_7d'?)"),
    ]


def test_every_problem_of_every_file_in_one_load(root):
    expected = break_five_things(root)
    found = problems(root)
    assert sorted((str(p.file), p.line, p.field) for p in found) == sorted((f, line, field)
                                                                           for f, line, field, _ in expected), (
        "\n".join(map(str, found)))
    by_place = {(str(p.file), p.line, p.field): p.message for p in found}
    for file, line, field, fragment in expected:
        assert fragment in by_place[(file, line, field)], by_place[(file, line, field)]


def test_validate_prints_them_all_with_file_line_field_and_value(root):
    expected = break_five_things(root)
    result = CliRunner().invoke(main, ["validate", "--project", str(root)])
    assert result.exit_code == 1
    assert "5 problem(s) in the definitions:" in result.output, result.output
    for file, line, field, fragment in expected:
        assert f"{file}:{line}: {field}: " in result.output, result.output
        assert fragment in result.output
    assert "Traceback" not in result.output


def test_a_definition_that_failed_to_load_is_not_also_reported_as_missing(root):
    # The entity 'terminal' has a bad key type: its definition fails, and terminal_risk (which names it) is not
    # reported as using an unknown entity; a column typo elsewhere is still found in the same load.
    edit(root, ENTITIES, "  name: terminal\n  join_key: terminal_id\n  key_type: int64\n",
         "  name: terminal\n  join_key: terminal_id\n  key_type: integer64\n")
    edit(root, SPENDING, "  - name: max_amount\n    agg: max\n    column: tx_amount\n",
         "  - name: max_amount\n    agg: max\n    column: tx_amout\n")
    found = problems(root)
    assert [(str(p.file), p.field) for p in found] == [(ENTITIES, "key_type"), (SPENDING, "features.3.column")], (
        "\n".join(map(str, found)))


def test_a_file_that_is_not_yaml_does_not_hide_the_others(root):
    # A broken file: its definition's name is still read from the text, so the model that uses it is not
    # reported for it; the other files are checked as usual.
    edit(root, DEVICES, "tags: {domain: fraud, tier: realtime, flavour: graph}",
         "tags: {domain: fraud, tier: realtime, flavour: graph")
    edit(root, TERMINALS, "column: tx_fraud", "column: tx_frad")
    found = problems(root)
    assert [(str(p.file), p.field) for p in found] == [(DEVICES, ""), (TERMINALS, "features.1.column")], (
        "\n".join(map(str, found)))
    assert "malformed YAML" in found[0].message
