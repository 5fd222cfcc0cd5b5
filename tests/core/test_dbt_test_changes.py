"""Pure rules of YAML-only data test changes: the YAML diff, the tests it selects, the narrowed scope."""

from __future__ import annotations

import pytest

from dagctl_dagster.core.dbt_changes import Scope, build_dbt_scope, build_file_change
from dagctl_dagster.core.dbt_impact import DbtGraph, DbtGraphNode, resolve_path_selection
from dagctl_dagster.core.dbt_test_changes import (
    YamlTestEntry,
    build_test_yaml_scope,
    get_test_name,
    get_yaml_test_change,
    is_test_yaml_candidate,
    select_changed_tests,
)

SCHEMA = "models/schema.yml"
BEFORE = """\
version: 2
models:
  - name: orders
    description: One row per order.
    columns:
      - name: order_id
        data_tests: [not_null, unique]
      - name: status
        data_tests:
          - accepted_values:
              arguments: {values: [placed, shipped]}
sources:
  - name: raw
    tables:
      - name: payments
        columns:
          - name: id
            tests: [unique]
"""


def edit(old: str, new: str, text: str = BEFORE) -> str:
    assert old in text
    return text.replace(old, new)


ADD_NOT_NULL = edit("              arguments: {values: [placed, shipped]}\n",
                    "              arguments: {values: [placed, shipped]}\n          - not_null\n")


def test_adding_a_column_test_is_a_test_only_change_naming_where_it_is_attached():
    change = get_yaml_test_change(SCHEMA, BEFORE, ADD_NOT_NULL)
    assert change is not None and change.removed == 0
    assert change.changed == (YamlTestEntry(carrier=("models", "orders", "", "status"), test_name="not_null"),)


def test_editing_a_generic_test_argument_changes_that_test_only():
    text = edit("values: [placed, shipped]", "values: [placed, shipped, returned]")
    change = get_yaml_test_change(SCHEMA, BEFORE, text)
    assert change.changed == (YamlTestEntry(carrier=("models", "orders", "", "status"),
                                              test_name="accepted_values"),)
    assert change.removed == 0  # replaced, not removed


def test_removing_a_test_changes_nothing_to_run_and_counts_the_removal():
    change = get_yaml_test_change(SCHEMA, BEFORE, edit("data_tests: [not_null, unique]", "data_tests: [unique]"))
    assert (change.changed, change.removed) == ((), 1)


def test_source_table_column_tests_are_attached_to_their_table():
    change = get_yaml_test_change(SCHEMA, BEFORE, edit("tests: [unique]", "tests: [unique, not_null]"))
    assert change.changed == (YamlTestEntry(carrier=("sources", "raw", "payments", "id"), test_name="not_null"),)


@pytest.mark.parametrize("new", [
    edit("One row per order.", "One row per order, placed or shipped."),  # a description
    edit("      - name: status\n", "      - name: status\n        description: Where it is.\n"),
    edit("version: 2\n", "version: 2\nexposures: [{name: weekly, type: dashboard, owner: {name: x}}]\n"),
    "models: [unclosed\n",  # not YAML
    edit("data_tests: [not_null, unique]", "data_tests: [not_null, unique, {a: 1, b: 2}]"),  # not a test dbt takes
])
def test_any_other_change_keeps_the_path_rule(new):
    assert get_yaml_test_change(SCHEMA, BEFORE, new) is None


@pytest.mark.parametrize(("entry", "name"), [
    ("not_null", "not_null"),
    ("dbt_utils.at_least_one", "at_least_one"),
    ({"accepted_values": {"values": [1]}}, "accepted_values"),
    ({"test_name": "unique", "name": "custom_unique", "config": {"where": "1=1"}}, "unique"),
    ({"a": 1, "b": 2}, None),
])
def test_test_names_follow_dbt(entry, name):
    assert get_test_name(entry) == name


def make_test_node(uid: str, test_name: str, column: str | None, key: str, *parents: str) -> DbtGraphNode:
    name = uid.split(".")[2]
    return DbtGraphNode(unique_id=uid, resource_type="test", name=name, path=SCHEMA, fqn=("p", name),
                        parents=parents, test_name=test_name, column_name=column, file_key_name=key)


GRAPH = DbtGraph(nodes={n.unique_id: n for n in (
    DbtGraphNode(unique_id="model.p.orders", resource_type="model", name="orders", path="models/orders.sql",
                 patch_path=f"p://{SCHEMA}", fqn=("p", "orders")),
    DbtGraphNode(unique_id="source.p.raw.payments", resource_type="source", name="payments", path=SCHEMA,
                 fqn=("p", "raw", "payments")),
    make_test_node("test.p.not_null_orders_order_id.1", "not_null", "order_id", "models.orders", "model.p.orders"),
    make_test_node("test.p.unique_orders_order_id.2", "unique", "order_id", "models.orders", "model.p.orders"),
    make_test_node("test.p.not_null_orders_status.3", "not_null", "status", "models.orders", "model.p.orders"),
    make_test_node("test.p.accepted_values_orders_status.4", "accepted_values", "status", "models.orders",
              "model.p.orders"),
    make_test_node("test.p.unique_raw_payments_id.5", "unique", "id", "sources.raw", "source.p.raw.payments"),
)})


def selective(*paths: str):
    files = [build_file_change(path, "modified") for path in paths]
    return files, build_dbt_scope(files, has_base=True)


def test_the_yaml_diff_selects_the_added_test_only():
    files, scope = selective(SCHEMA)
    assert is_test_yaml_candidate(files[0], scope)
    change = get_yaml_test_change(SCHEMA, BEFORE, ADD_NOT_NULL)
    assert select_changed_tests(GRAPH, change) == {"test.p.not_null_orders_status.3"}
    narrowed = build_test_yaml_scope(scope, {SCHEMA: change}, GRAPH, modified=None)
    assert (narrowed.scope, narrowed.selection) == (Scope.SELECTIVE, ("fqn:p.not_null_orders_status",))
    assert narrowed.reason == (f"only data tests changed in {SCHEMA}; by the YAML diff and the target's test "
                               "nodes, the 1 added or edited test(s) run")
    # The model it tests is not rebuilt (the path: rule would have run it and all its tests).
    assert resolve_path_selection(GRAPH, narrowed.selection)[0] == {"test.p.not_null_orders_status.3"}
    assert "model.p.orders" in resolve_path_selection(GRAPH, scope.selection)[0]


def test_an_entry_matching_no_test_node_keeps_the_path_rule():
    text = edit("tests: [unique]", "tests: [unique, not_null]")  # no such node in GRAPH (disabled, say)
    change = get_yaml_test_change(SCHEMA, BEFORE, text)
    assert select_changed_tests(GRAPH, change) is None
    _, scope = selective(SCHEMA)
    assert build_test_yaml_scope(scope, {SCHEMA: change}, GRAPH, modified=None) == scope


def test_dbt_state_comparison_chooses_the_tests_when_the_deployed_manifest_is_kept():
    _, scope = selective(SCHEMA, "models/orders.sql")
    change = get_yaml_test_change(SCHEMA, BEFORE, ADD_NOT_NULL)
    narrowed = build_test_yaml_scope(scope, {SCHEMA: change}, GRAPH, base_commit="b" * 40,
                                     modified=[["p", "orders"], ["p", "unique_raw_payments_id"]])
    # The model's own file keeps its path: criterion; of the YAML, only what dbt lists as modified runs.
    assert narrowed.selection == ("path:models/orders.sql", "fqn:p.unique_raw_payments_id")
    assert narrowed.reason.startswith(f"only data tests changed in {SCHEMA}; by dbt's state comparison "
                                      f"(state:modified) with the manifest of the deployed commit {'b' * 12}")
    assert narrowed.reason.endswith("; builds the 1 other changed file(s)")


def test_a_removed_test_plans_nothing_to_run_and_says_so():
    _, scope = selective(SCHEMA)
    change = get_yaml_test_change(SCHEMA, BEFORE, edit("data_tests: [not_null, unique]", "data_tests: [unique]"))
    narrowed = build_test_yaml_scope(scope, {SCHEMA: change}, GRAPH, modified=None)
    assert (narrowed.scope, narrowed.selection) == (Scope.BUILD_ONLY, ())
    assert narrowed.reason == (f"only data tests changed in {SCHEMA}; by the YAML diff and the target's test "
                               "nodes, the 0 added or edited test(s) run; 1 removed test(s) run nothing: no "
                               "dbt command runs, the image is rebuilt")


def test_only_modified_selected_yamls_are_candidates():
    _, scope = selective("models/orders.sql")
    assert not is_test_yaml_candidate(build_file_change(SCHEMA, "modified"), scope)
    files, scope = selective(SCHEMA)
    assert not is_test_yaml_candidate(build_file_change(SCHEMA, "added"), scope)


def test_a_singular_test_file_selects_that_test_only():
    # Already so with the path: rule (`dbt ls --select path:tests/assert_positive_order_amount.sql` on the
    # example project lists only that test): the test runs, not the model it reads.
    _, scope = selective("tests/assert_positive.sql")
    graph = DbtGraph(nodes={n.unique_id: n for n in (
        DbtGraphNode(unique_id="model.p.orders", resource_type="model", name="orders", path="models/orders.sql"),
        DbtGraphNode(unique_id="test.p.assert_positive", resource_type="test", name="assert_positive",
                     path="tests/assert_positive.sql", parents=("model.p.orders",)),
    )})
    assert scope.selection == ("path:tests/assert_positive.sql",)
    assert resolve_path_selection(graph, scope.selection)[0] == {"test.p.assert_positive"}
