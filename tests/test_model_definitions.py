"""Model definitions (kind: model) are validated like every other definition."""

from __future__ import annotations

from pathlib import Path

import pytest

from trellis.errors import DefinitionError
from trellis.spec import load_project

MODEL = "definitions/models/card_fraud.yaml"


def _problems(root: Path, old: str, new: str) -> list[str]:
    path = root / MODEL
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(DefinitionError) as caught:
        load_project(root)
    return [str(p) for p in caught.value.problems]


def test_reference_model_resolves_its_inputs():
    project = load_project(Path(__file__).resolve().parent.parent)
    features, requests = project.model_inputs(project.models["card_fraud"])
    names = [f.qualified for f in features]
    assert names[0] == "customer_spending__tx_count_1d" and "terminal_risk__fraud_risk_30d" in names
    assert len(names) == len(set(names)) == 23
    assert [r.name for r in requests] == ["transaction_context"]


@pytest.mark.parametrize(("old", "new", "expected"), [
    ("  - terminal_risk\n", "  - terminal_risks\n",
     "features.1: unknown feature, feature group or request feature set 'terminal_risks' "
     "(did you mean 'terminal_risk'?)"),
    ("column: tx_fraud", "column: tx_frod", "label.column: unknown column 'tx_frod' in source 'fraud_labels' "
     "(did you mean 'tx_fraud'?)"),
    ("join_key: transaction_id", "join_key: tx_id", "label.join_key: source 'transactions' has no column 'tx_id'"),
    ("source: fraud_labels", "source: fraud_label", "label.source: unknown source 'fraud_label'"),
    ("threshold: 0.5", "threshold: 1.5", "threshold:"),
    ("spine: transactions", "spine: transaction", "spine: unknown source 'transaction' (did you mean"),
    ("card_key: customer_id", "card_key: customr_id",
     "card_key: spine 'transactions' has no column 'customr_id' (did you mean 'customer_id'?)"),
])
def test_model_problems_name_file_line_and_field(project_copy: Path, old: str, new: str, expected: str):
    problems = _problems(project_copy, old, new)
    assert any(MODEL in p and expected in p for p in problems), problems
    line = next(i for i, text in enumerate((project_copy / MODEL).read_text().splitlines(), 1)
                if new.strip() in text)
    assert any(f"{MODEL}:{line}:" in p for p in problems), problems


def test_single_features_and_groups_do_not_repeat(project_copy: Path):
    path = project_copy / MODEL
    path.write_text(path.read_text().replace("  - device_sharing\n",
                                             "  - device_sharing\n  - customer_spending__tx_count_7d\n"))
    project = load_project(project_copy)
    names = [f.qualified for f in project.model_inputs(project.models["card_fraud"])[0]]
    assert names.count("customer_spending__tx_count_7d") == 1
