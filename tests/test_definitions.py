"""The definition language rejects bad input with precise problems: file, line, field, the wrong value and a
did-you-mean. Each test copies the reference ``definitions/`` into a temporary project, breaks one thing and
asserts the exact Problem that ``load_project`` reports."""

from __future__ import annotations

import shutil
from pathlib import Path

import jsonschema
import pytest
import yaml
from jsonschema.exceptions import best_match

from trellis.errors import DefinitionError, Problem
from trellis.spec import AGGREGATIONS, json_schema, load_project

REPO = Path(__file__).resolve().parents[1]
ENTITIES = "definitions/entities/entities.yaml"
TRANSACTIONS = "definitions/sources/transactions.yaml"
LABELS = "definitions/sources/fraud_labels.yaml"
SPENDING = "definitions/features/customer_spending.yaml"
DEVICES = "definitions/features/device_sharing.yaml"
TERMINALS = "definitions/features/terminal_risk.yaml"
CONTEXT = "definitions/features/transaction_context.yaml"

# Snippets of the reference definitions that the tests edit.
AVG_AMOUNT = "  - name: avg_amount\n    agg: mean\n    column: tx_amount\n"
STD_COLUMN = "    column: tx_amount\n    windows: [7d, 30d]\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "definitions", tmp_path / "definitions")
    # The reference sources without their `simulated:` line: these tests edit the sources' columns, which a
    # simulated source must also keep as the simulator writes them (tests/test_own_data.py checks that).
    for rel in (TRANSACTIONS, LABELS):
        path = tmp_path / rel
        path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                                if not line.startswith("simulated:")))
    return tmp_path


def edit(root: Path, rel: str, old: str, new: str) -> None:
    """Replace one occurrence of ``old`` in a copied definition file (it must occur exactly once)."""
    path = root / rel
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in {rel}"
    path.write_text(text.replace(old, new))


def line_of(root: Path, rel: str, needle: str) -> int:
    """1-based line of the (unique) line containing ``needle`` in the edited file."""
    hits = [i for i, line in enumerate((root / rel).read_text().splitlines(), 1) if needle in line]
    assert len(hits) == 1, f"{needle!r} is on lines {hits} of {rel}"
    return hits[0]


def problems(root: Path) -> list[Problem]:
    with pytest.raises(DefinitionError) as info:
        load_project(root)
    found = info.value.problems
    assert found, "DefinitionError without problems"
    return found


def only_problem(root: Path) -> Problem:
    found = problems(root)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


def expect(problem: Problem, file: str, line: int, field: str, *fragments: str) -> None:
    assert (problem.file, problem.line, problem.field) == (Path(file), line, field), str(problem)
    for fragment in fragments:
        assert fragment in problem.message, f"{fragment!r} not in {problem.message!r}"


# ---------------------------------------------------------------------------------------------------
# The reference project


def test_reference_definitions_load():
    project = load_project(REPO)
    assert set(project.entities) == {"customer", "terminal", "device"}
    assert set(project.sources) == {"transactions", "fraud_labels"}
    assert set(project.feature_groups) == {"customer_spending", "device_sharing", "terminal_risk"}
    assert set(project.request_features) == {"transaction_context"}
    features = project.all_features()
    assert features["customer_spending__avg_amount_30d"].dtype == "float64"
    assert features["terminal_risk__fraud_risk_7d"].delay.days == 7


def test_loading_and_fingerprinting_warn_about_nothing():
    """Every command loads and fingerprints the definitions: a warning there is printed by every one of them
    (a ``not_before`` serialised as a string into a datetime field warned on each ``model_dump_json``)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", module="sqlglot")
        project = load_project(REPO)
        assert len(project.fingerprint()) == 16
    assert project.sources["transactions"].not_before.isoformat() == "2000-01-01T00:00:00"


def test_problem_and_error_format(root):
    edit(root, SPENDING, "entity: customer", "entity: custmer")
    edit(root, DEVICES, "source: transactions", "source: transaction")
    with pytest.raises(DefinitionError) as info:
        load_project(root)
    assert str(info.value).splitlines() == [
        f"{SPENDING}:5: entity: unknown entity 'custmer' (did you mean 'customer'?)",
        f"{DEVICES}:6: source: unknown source 'transaction' (did you mean 'transactions'?)",
    ]


# ---------------------------------------------------------------------------------------------------
# Malformed YAML: the line, and a hint at the usual cause


def test_yaml_bad_indentation(root):
    edit(root, SPENDING, "\nowner: fraud", "\n  owner: fraud")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "owner:"), "",
           "malformed YAML", "mapping values are not allowed here", "indentation")


def test_yaml_bad_indentation_in_a_list_item(root):
    edit(root, SPENDING, AVG_AMOUNT, "  - name: avg_amount\n      agg: mean\n    column: tx_amount\n")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "agg: mean"), "", "malformed YAML", "indentation")


def test_yaml_tab(root):
    edit(root, SPENDING, "    agg: mean\n", "\tagg: mean\n")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "agg: mean"), "",
           "malformed YAML", r"'\t'", "spaces, not tabs")


def test_yaml_unclosed_bracket(root):
    edit(root, SPENDING, "windows: [7d, 30d]", "windows: [7d, 30d")
    opened = line_of(root, SPENDING, "windows: [7d, 30d")
    # PyYAML notices on the next line; the message points back at the '['.
    expect(only_problem(root), SPENDING, opened + 1, "",
           "malformed YAML", "expected ',' or ']'", f"flow sequence started on line {opened}")


def test_yaml_duplicate_key(root):
    edit(root, SPENDING, "online: true\n", "online: true\nonline: false\n")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "online: false"), "online",
           "duplicate key 'online'", f"already set on line {line_of(root, SPENDING, 'online: true')}")


def test_yaml_unknown_tag_is_a_problem_not_a_crash(root):
    edit(root, SPENDING, "online: true", "online: !maybe true")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "online:"), "", "malformed YAML", "'!maybe'")


def test_empty_file(root):
    (root / "definitions/features/empty.yaml").write_text("# nothing yet\n")
    problem = only_problem(root)
    assert (problem.file, problem.field) == (Path("definitions/features/empty.yaml"), "")
    assert "empty file" in problem.message


def test_not_a_mapping(root):
    (root / "definitions/features/scalar.yaml").write_text("just some text\n")
    expect(only_problem(root), "definitions/features/scalar.yaml", 1, "",
           "expected a mapping with a 'kind'", "got 'just some text'")


# ---------------------------------------------------------------------------------------------------
# Shape: kinds, fields, values


def test_missing_kind(root):
    edit(root, SPENDING, "kind: feature_group\n", "")
    expect(only_problem(root), SPENDING, 1, "kind",
           "missing 'kind'", "entity, source, feature_group, request_features")


def test_missing_kind_in_a_list_file(root):
    edit(root, ENTITIES, "- kind: entity\n  name: terminal", "- name: terminal")
    expect(only_problem(root), ENTITIES, line_of(root, ENTITIES, "name: terminal"), "kind", "missing 'kind'")


def test_unknown_kind(root):
    edit(root, SPENDING, "kind: feature_group", "kind: feature_grup")
    expect(only_problem(root), SPENDING, 1, "kind",
           "unknown kind 'feature_grup'", "(did you mean 'feature_group'?)",
           "expected one of entity, source, feature_group, request_features")


def test_unknown_field_in_a_feature(root):
    edit(root, SPENDING, "    windows: [7d, 30d]", "    windws: [7d, 30d]")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "windws"), "features.2.windws",
           "unknown field 'windws'", "(did you mean 'windows'?)")


def test_unknown_top_level_field(root):
    edit(root, TRANSACTIONS, "event_time: tx_datetime", "event_tme: tx_datetime")
    found = problems(root)
    # The typo is an unknown field, and the real one is then missing: both reported, both precise.
    assert len(found) == 2, "\n".join(map(str, found))
    expect(found[0], TRANSACTIONS, 1, "event_time", "missing required field 'event_time'")
    expect(found[1], TRANSACTIONS, line_of(root, TRANSACTIONS, "event_tme"), "event_tme",
           "unknown field 'event_tme'", "(did you mean 'event_time'?)")


def test_unknown_field_without_a_close_name_lists_the_allowed_ones(root):
    edit(root, TRANSACTIONS, "  device_id: {type: int64,", "  device_id: {type: int64, nullable: true,")
    expect(only_problem(root), TRANSACTIONS, line_of(root, TRANSACTIONS, "device_id"), "columns.device_id.nullable",
           "unknown field 'nullable'", "allowed fields: type, description, pii, scale, checks")


def test_scale_on_a_column_that_is_not_float64(root):
    edit(root, TRANSACTIONS, "  device_id: {type: int64,", "  device_id: {type: int64, scale: 2,")
    expect(only_problem(root), TRANSACTIONS, line_of(root, TRANSACTIONS, "device_id"), "columns.device_id",
           "scale 2 is for float64 columns; this column is int64")


@pytest.mark.parametrize(
    ("wrong", "hint"),
    [
        ("avg", "(did you mean 'mean'?)"),  # a synonym difflib cannot see
        ("coutn", "(did you mean 'count'?)"),
        ("percentile", ""),
    ],
)
def test_unknown_aggregation(root, wrong, hint):
    edit(root, SPENDING, "agg: mean", f"agg: {wrong}")
    problem = only_problem(root)
    expect(problem, SPENDING, line_of(root, SPENDING, f"agg: {wrong}"), "features.1.agg",
           f"unknown aggregation {wrong!r}", f"expected one of {', '.join(AGGREGATIONS)}", hint)
    if not hint:
        assert "did you mean" not in problem.message


def test_unknown_column_type(root):
    edit(root, TRANSACTIONS, "device_id: {type: int64,", "device_id: {type: integer,")
    expect(only_problem(root), TRANSACTIONS, line_of(root, TRANSACTIONS, "device_id"), "columns.device_id.type",
           "unknown type 'integer'", "(did you mean 'int64'?)", "expected one of int64, int32, float64")


def test_wrong_scalar_type(root):
    edit(root, SPENDING, "online: true", "online: maybe")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "online:"), "online",
           "expected true or false", "got 'maybe'")


def test_missing_required_field_in_a_feature(root):
    edit(root, SPENDING, AVG_AMOUNT, "  - name: avg_amount\n    column: tx_amount\n")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "name: avg_amount"), "features.1.agg",
           "missing required field 'agg'")


def test_feature_group_without_features(root):
    text = (root / DEVICES).read_text()
    (root / DEVICES).write_text(text[: text.index("features:")] + "features: []\n")
    expect(only_problem(root), DEVICES, line_of(root, DEVICES, "features:"), "features", "at least 1 feature")


# ---------------------------------------------------------------------------------------------------
# Windows and delays


@pytest.mark.parametrize(
    ("windows", "field", "fragments"),
    [
        ("[7days, 30d]", "features.2.windows.0",
         ("invalid window '7days'", "a whole number followed by s, m, h, d or w", "(did you mean '7d'?)")),
        ("[7d, 1 hour]", "features.2.windows.1", ("invalid window '1 hour'", "(did you mean '1h'?)")),
        ("[0d, 30d]", "features.2.windows.0", ("invalid window '0d'", "must be positive")),
        ("[7d, -1d]", "features.2.windows.1", ("invalid window '-1d'", "must not be negative")),
        ("[7, 30d]", "features.2.windows.0", ("invalid window 7", "like '7d'")),
        ("[7d, 30d, 7d]", "features.2.windows", ("window '7d' is listed twice", "[7d, 30d, 7d]")),
    ],
)
def test_bad_window(root, windows, field, fragments):
    edit(root, SPENDING, "windows: [7d, 30d]", f"windows: {windows}")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, f"windows: {windows}"), field, *fragments)


def test_bad_window_in_a_block_list_points_at_its_own_line(root):
    edit(root, SPENDING, "windows: [7d, 30d]", "windows:\n      - 7d\n      - 30days")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "- 30days"), "features.2.windows.1",
           "invalid window '30days'", "(did you mean '30d'?)")


def test_bad_group_delay(root):
    edit(root, TERMINALS, "delay: 7d", "delay: 7 days")
    expect(only_problem(root), TERMINALS, line_of(root, TERMINALS, "delay:"), "delay",
           "invalid delay '7 days'", "(did you mean '7d'?)")


def test_bad_feature_delay(root):
    edit(root, SPENDING, STD_COLUMN, STD_COLUMN + "    delay: soon\n")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "delay: soon"), "features.2.delay",
           "invalid delay 'soon'", "a whole number followed by s, m, h, d or w")


def test_negative_delay(root):
    edit(root, TERMINALS, "delay: 7d", "delay: -7d")
    expect(only_problem(root), TERMINALS, line_of(root, TERMINALS, "delay:"), "delay",
           "invalid delay '-7d'", "must not be negative")


# ---------------------------------------------------------------------------------------------------
# References between definitions


@pytest.mark.parametrize(
    ("rel", "old", "new", "field", "fragments"),
    [
        (SPENDING, "entity: customer", "entity: custmer", "entity",
         ("unknown entity 'custmer'", "(did you mean 'customer'?)")),
        (SPENDING, "source: transactions", "source: transaction", "source",
         ("unknown source 'transaction'", "(did you mean 'transactions'?)")),
        (TERMINALS, "spine: transactions", "spine: transactons", "spine",
         ("unknown source 'transactons'", "(did you mean 'transactions'?)")),
    ],
)
def test_unknown_reference(root, rel, old, new, field, fragments):
    edit(root, rel, old, new)
    expect(only_problem(root), rel, line_of(root, rel, new), field, *fragments)


def test_unknown_reference_without_a_close_name(root):
    edit(root, SPENDING, "entity: customer", "entity: merchant")
    problem = only_problem(root)
    expect(problem, SPENDING, 5, "entity", "unknown entity 'merchant'")
    assert "did you mean" not in problem.message


def test_key_column_missing_in_the_source(root):
    edit(root, SPENDING, "source: transactions\n", "source: transactions\nkey_column: cust_id\n")
    # Reported once, although the source is also the spine.
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "key_column"), "key_column",
           "source 'transactions' has no key column 'cust_id' for entity 'customer'",
           "(did you mean 'customer_id'?)")


def test_entity_join_key_missing_in_the_source(root):
    edit(root, ENTITIES, "join_key: device_id", "join_key: device_key")
    expect(only_problem(root), DEVICES, line_of(root, DEVICES, "entity: device"), "entity",
           "source 'transactions' has no key column 'device_key' for entity 'device'",
           "(did you mean 'device_id'?)")


def test_entity_key_type_mismatch(root):
    edit(root, ENTITIES, "join_key: customer_id\n  key_type: int64", "join_key: customer_id\n  key_type: string")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "entity: customer"), "entity",
           "key type mismatch", "transactions.customer_id is int64", "entity 'customer' has key_type string")


def test_key_type_mismatch_in_the_spine(root):
    edit(root, TRANSACTIONS, "terminal_id: {type: int64, checks: {ge: 0}}", "terminal_id: {type: string}")
    expect(only_problem(root), TERMINALS, line_of(root, TERMINALS, "entity: terminal"), "entity",
           "spine column transactions.terminal_id is string", "entity 'terminal' has key_type int64")


# ---------------------------------------------------------------------------------------------------
# Aggregation inputs


def test_unknown_column_in_an_aggregation(root):
    edit(root, SPENDING, STD_COLUMN, STD_COLUMN.replace("tx_amount", "tx_amout"))
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "tx_amout"), "features.2.column",
           "unknown column 'tx_amout' in source 'transactions'", "(did you mean 'tx_amount'?)")


def test_unknown_column_in_an_order_statistic_is_a_problem_not_a_crash(root):
    # max/min/first/last take their output type from the column: an unknown one used to crash the loader.
    edit(root, SPENDING, "    agg: max\n    column: tx_amount", "    agg: max\n    column: tx_amout")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "tx_amout"), "features.3.column",
           "unknown column 'tx_amout'", "(did you mean 'tx_amount'?)")


@pytest.mark.parametrize(
    ("agg", "column", "column_type"),
    [("mean", "tx_datetime", "timestamp"), ("sum", "merchant", "string"), ("std", "merchant", "string")],
)
def test_numeric_aggregation_on_a_non_numeric_column(root, agg, column, column_type):
    edit(root, TRANSACTIONS, "  device_id: {type: int64, checks: {ge: 0}}\n",
         "  device_id: {type: int64, checks: {ge: 0}}\n  merchant: {type: string}\n")
    edit(root, SPENDING, AVG_AMOUNT, f"  - name: avg_amount\n    agg: {agg}\n    column: {column}\n")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, f"column: {column}"), "features.1.column",
           f"aggregation {agg!r} needs a numeric column", f"transactions.{column} is {column_type}")


def test_both_column_and_expr(root):
    edit(root, SPENDING, STD_COLUMN, "    column: tx_amount\n    expr: tx_amount * 2\n    windows: [7d, 30d]\n")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "expr:"), "features.2.expr",
           "feature 'std_amount' gives both 'column' ('tx_amount') and 'expr'", "give only one")


def test_mean_without_a_column(root):
    edit(root, SPENDING, AVG_AMOUNT, "  - name: avg_amount\n    agg: mean\n")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "agg: mean"), "features.1.agg",
           "aggregation 'mean' of feature 'avg_amount' needs a 'column' or an 'expr'", "only 'count'")


def test_two_features_producing_the_same_column(root):
    edit(root, SPENDING, "  - name: max_amount\n", "  - name: avg_amount\n")
    found = problems(root)
    # avg_amount windows [1d, 7d, 30d] appear twice; each clash names both features.
    assert [p.message.split("'")[1] for p in found] == ["avg_amount_1d", "avg_amount_7d", "avg_amount_30d"]
    line = line_of(root, SPENDING, "agg: max") - 1
    for problem in found:
        expect(problem, SPENDING, line, "features.3.name", "is produced twice", "features[1] and features[3]")


# ---------------------------------------------------------------------------------------------------
# SQL snippets: filters, row expressions, request features


@pytest.mark.parametrize(
    ("sql", "fragments"),
    [
        ("tx_amount > ", ("SQL syntax error in 'tx_amount > '", "at column 11", "'>' is missing an operand")),
        ("(tx_amount > 1", ("SQL syntax error", "expected ')'")),
        ("tx_amount > 'abc", ("SQL syntax error", "unterminated string")),
        ("tx_amout > 100", ("unknown column 'tx_amout'", "(did you mean 'tx_amount'?)")),
        ("tx_amount * 2", ("'tx_amount * 2' must be a boolean condition, but it is float64",)),
        ("tx_amount + 'abc' > 0", ("type error in \"tx_amount + 'abc' > 0\"", "'+' needs a number",
                                   "'abc' is string")),
        ("hour(tx_amount) < 6", ("type error", "hour() needs a timestamp, but tx_amount is float64")),
        ("tx_amount in ('a', 'b')", ("type error", "cannot compare", "tx_amount is float64", "'a' is string")),
        ("foo(tx_amount) > 1", ("unsupported function or operator 'foo'", "supported functions: abs, cast")),
        ("1; drop table x", ("expected one SQL expression, got 2 statements", "without ';'")),
        ("drop table raw.transactions", ("expected an expression, not a DROP statement",)),
        ("tx_amount in (select 1)", ("subqueries are not supported",)),
        ("sum(tx_amount) > 100", ("aggregate function 'sum'", "evaluated per row")),
        ("   ", ("empty SQL expression",)),
    ],
)
def test_bad_filter(root, sql, fragments):
    edit(root, SPENDING, "online: true\n", f'online: true\nfilter: "{sql}"\n')
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "filter:"), "filter", *fragments)


def test_valid_filter_loads(root):
    edit(root, SPENDING, "online: true\n",
         "online: true\nfilter: \"tx_amount > 0 and hour(tx_datetime) between 6 and 22 and device_id is not null\"\n")
    assert load_project(root).feature_groups["customer_spending"].filter is not None


def test_type_error_in_an_aggregation_expr(root):
    edit(root, SPENDING, STD_COLUMN, "    expr: \"tx_amount + 'abc'\"\n    windows: [7d, 30d]\n")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "expr:"), "features.2.expr",
           "'+' needs a number, but 'abc' is string")


def test_non_numeric_expr_for_a_numeric_aggregation(root):
    edit(root, SPENDING, STD_COLUMN, "    expr: \"cast(customer_id as varchar)\"\n    windows: [7d, 30d]\n")
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "expr:"), "features.2.expr",
           "must be numeric, but it is string")


def test_type_error_in_a_request_feature(root):
    edit(root, CONTEXT, "hour(tx_datetime)", "hour(tx_amount)")
    expect(only_problem(root), CONTEXT, line_of(root, CONTEXT, "hour("), "features.1.expr",
           "type error in 'hour(tx_amount) < 6'", "hour() needs a timestamp, but tx_amount is float64")


@pytest.mark.parametrize(
    "wrong",
    [
        "customer_spending__avg_amout_30d",  # a typo in a qualified name
        "avg_amount_30d",  # the feature without its group
    ],
)
def test_request_feature_refers_to_an_unknown_feature(root, wrong):
    edit(root, CONTEXT, "customer_spending__avg_amount_30d", wrong)
    expect(only_problem(root), CONTEXT, line_of(root, CONTEXT, wrong), "features.2.expr",
           f"unknown request field or feature {wrong!r}", "(did you mean 'customer_spending__avg_amount_30d'?)")


def test_request_feature_refers_to_an_ambiguous_short_name(root):
    edit(root, CONTEXT, "customer_spending__avg_amount_30d", "tx_count_7d")
    expect(only_problem(root), CONTEXT, line_of(root, CONTEXT, "tx_count_7d"), "features.2.expr",
           "unknown request field or feature 'tx_count_7d'",
           "'customer_spending__tx_count_7d' or 'device_sharing__tx_count_7d' or 'terminal_risk__tx_count_7d'")


# ---------------------------------------------------------------------------------------------------
# Names


def test_duplicate_name_in_two_files(root):
    edit(root, TERMINALS, "name: terminal_risk", "name: customer_spending")
    problem = only_problem(root)
    expect(problem, TERMINALS, 2, "name", "duplicate name 'customer_spending'",
           f"already used by the feature_group defined at {SPENDING}:2")
    assert SPENDING in str(problem) and TERMINALS in str(problem)


def test_duplicate_name_across_kinds(root):
    edit(root, ENTITIES, "name: device", "name: transactions")
    expect(only_problem(root), TRANSACTIONS, 2, "name", "duplicate name 'transactions'",
           f"the entity defined at {ENTITIES}:{line_of(root, ENTITIES, 'name: transactions')}")


def test_duplicate_request_feature(root):
    edit(root, CONTEXT, "  - name: is_night", "  - name: is_weekend")
    expect(only_problem(root), CONTEXT, line_of(root, CONTEXT, "expr: \"hour(") - 1, "features.1.name",
           "duplicate request feature 'is_weekend'")


@pytest.mark.parametrize(
    ("rel", "old", "new", "field", "fragments"),
    [
        (SPENDING, "name: customer_spending", "name: CustomerSpending", "name",
         ("name 'CustomerSpending' must be snake_case", "(did you mean 'customer_spending'?)")),
        (SPENDING, "name: tx_count", "name: tx-count", "features.0.name",
         ("name 'tx-count' must be snake_case", "(did you mean 'tx_count'?)")),
        (TRANSACTIONS, "  tx_amount: {type", "  TxAmount: {type", "columns.TxAmount",
         ("column name 'TxAmount' must be snake_case", "(did you mean 'tx_amount'?)")),
        (ENTITIES, "name: device", "name: 2fa_device", "name", ("name '2fa_device' must be snake_case",)),
    ],
)
def test_name_not_snake_case(root, rel, old, new, field, fragments):
    edit(root, rel, old, new)
    problem = only_problem(root)
    expect(problem, rel, line_of(root, rel, new.strip()), field, *fragments)
    if len(fragments) == 1:
        assert "did you mean" not in problem.message  # no suggestion that drops characters ('fa_device')


# ---------------------------------------------------------------------------------------------------
# Sources


def test_source_with_table_and_path(root):
    edit(root, TRANSACTIONS, "table: raw.transactions\n", "table: raw.transactions\npath: data/tx.parquet\n")
    expect(only_problem(root), TRANSACTIONS, line_of(root, TRANSACTIONS, "path:"), "path",
           "give either 'table' or 'path', not both", "'raw.transactions'", "'data/tx.parquet'")


def test_source_with_neither_table_nor_path(root):
    edit(root, TRANSACTIONS, "table: raw.transactions\n", "")
    expect(only_problem(root), TRANSACTIONS, 1, "table", "missing 'table' or 'path'")


def test_source_path_must_be_parquet_or_csv(root):
    edit(root, TRANSACTIONS, "table: raw.transactions\n", "path: data/tx.json\n")
    expect(only_problem(root), TRANSACTIONS, line_of(root, TRANSACTIONS, "path:"), "path",
           "'data/tx.json' must be a .parquet or .csv file")


def test_event_time_column_missing(root):
    edit(root, TRANSACTIONS, "event_time: tx_datetime", "event_time: tx_datetme")
    expect(only_problem(root), TRANSACTIONS, line_of(root, TRANSACTIONS, "event_time"), "event_time",
           "unknown column 'tx_datetme' in source 'transactions'", "(did you mean 'tx_datetime'?)")


def test_event_time_not_a_timestamp(root):
    edit(root, TRANSACTIONS, "event_time: tx_datetime", "event_time: tx_amount")
    expect(only_problem(root), TRANSACTIONS, line_of(root, TRANSACTIONS, "event_time"), "event_time",
           "column 'tx_amount' must be a timestamp, not float64")


def test_available_at_not_a_timestamp(root):
    edit(root, LABELS, "available_at: {type: timestamp}", "available_at: {type: string}")
    expect(only_problem(root), LABELS, line_of(root, LABELS, "available_at: available_at"), "available_at",
           "column 'available_at' must be a timestamp, not string")


# ---------------------------------------------------------------------------------------------------
# Everything wrong is reported in one load


def test_several_shape_problems_in_several_files(root):
    edit(root, SPENDING, "agg: mean", "agg: avg")
    edit(root, SPENDING, "windows: [7d, 30d]", "windows: [7days, 30d]")
    edit(root, DEVICES, "kind: feature_group", "kind: feature_grup")
    edit(root, TERMINALS, "    windows: [1d, 7d, 30d]\n    description: Share",
         "    windws: [1d, 7d, 30d]\n    description: Share")
    (root / "definitions/features/broken.yaml").write_text("kind: entity\nname: [unclosed\n")
    found = problems(root)
    assert sorted((str(p.file), p.field) for p in found) == sorted([
        ("definitions/features/broken.yaml", ""),
        (DEVICES, "kind"),
        (SPENDING, "features.1.agg"),
        (SPENDING, "features.2.windows.0"),
        (TERMINALS, "features.1.windws"),
    ])


def test_several_cross_check_problems_across_sources_groups_and_requests(root):
    edit(root, TRANSACTIONS, "event_time: tx_datetime", "event_time: tx_datetme")
    edit(root, SPENDING, "entity: customer", "entity: custmer")
    edit(root, SPENDING, STD_COLUMN, STD_COLUMN.replace("tx_amount", "tx_amout"))
    edit(root, DEVICES, "column: customer_id", "column: customer")
    edit(root, TERMINALS, "online: true\n", "online: true\nfilter: \"tx_fraud + 'x' > 0\"\n")
    edit(root, CONTEXT, "hour(tx_datetime)", "hour(tx_amount)")
    found = problems(root)
    assert [(str(p.file), p.field) for p in found] == [
        (TRANSACTIONS, "event_time"),
        (SPENDING, "entity"),
        (SPENDING, "features.2.column"),
        (DEVICES, "features.0.column"),
        (TERMINALS, "filter"),
        (CONTEXT, "features.1.expr"),
    ], "\n".join(map(str, found))


def test_request_features_using_a_broken_group_are_not_double_reported(root):
    # avg_amount's column is wrong; the request feature that reads customer_spending__avg_amount_30d is not
    # also reported as using an unknown feature.
    edit(root, SPENDING, AVG_AMOUNT, AVG_AMOUNT.replace("column: tx_amount", "column: tx_amout"))
    expect(only_problem(root), SPENDING, line_of(root, SPENDING, "tx_amout"), "features.1.column",
           "unknown column 'tx_amout'")


# ---------------------------------------------------------------------------------------------------
# JSON Schema for editors


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_json_schema_accepts_every_reference_definition(validator):
    files = sorted((REPO / "definitions").rglob("*.yaml"))
    assert len(files) >= 7
    for path in files:
        errors = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert errors == [], f"{path.relative_to(REPO)}: {errors}"


@pytest.mark.parametrize(
    ("rel", "change", "where", "fragment"),
    [
        (SPENDING, lambda d: d["features"][0].update(agg="avg"), ["features", 0, "agg"], "'avg' is not one of"),
        (SPENDING, lambda d: d["features"][0].update(windws=["7d"]), ["features", 0], "'windws' was unexpected"),
        (SPENDING, lambda d: d["features"][0].update(windows=["7days"]), ["features", 0, "windows", 0],
         "does not match"),
        (SPENDING, lambda d: d.update(name="CustomerSpending"), ["name"], "does not match"),
        (TRANSACTIONS, lambda d: d["columns"].update(TxAmount={"type": "float64"}), ["columns"], "'TxAmount'"),
        (ENTITIES, lambda d: d[1].update(kind="entty"), [1, "kind"], "'entty' is not one of"),
        (ENTITIES, lambda d: d[0].pop("join_key"), [0], "'join_key' is a required property"),
    ],
)
def test_json_schema_rejects_a_bad_definition(validator, rel, change, where, fragment):
    data = yaml.safe_load((REPO / rel).read_text())
    change(data)
    error = best_match(validator.iter_errors(data))
    assert error is not None
    assert list(error.absolute_path) == where, error.message
    assert fragment in error.message
