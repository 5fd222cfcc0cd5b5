"""Pure impact rules: selection resolution, downstream distances, state-comparison scope, the summary line."""

from __future__ import annotations

import pytest

from dagctl_dagster.core.dbt_changes import Scope, build_dbt_scope, build_file_change, build_path_selector
from dagctl_dagster.core.dbt_impact import (
    DbtGraph,
    DbtGraphNode,
    build_selective_impact,
    build_state_scope,
    is_state_comparable,
    render_impact_line,
    resolve_path_selection,
    unescape_path_selector,
)


def node(uid: str, path: str, *parents: str, patch: str | None = None) -> DbtGraphNode:
    kind, package, name = uid.split(".")[:3]
    return DbtGraphNode(unique_id=uid, resource_type=kind, name=name, path=path, patch_path=patch,
                        fqn=(package, name), parents=parents)


GRAPH = DbtGraph(nodes={n.unique_id: n for n in (
    node("model.p.stg", "models/stg.sql"),
    node("model.p.mart", "models/mart.sql", "model.p.stg", patch="p://models/schema.yml"),
    node("model.p.report", "models/report.sql", "model.p.mart"),
    node("test.p.not_null_stg_id", "models/schema.yml", "model.p.stg"),
    node("test.p.not_null_mart_id", "models/schema.yml", "model.p.mart"),
    node("exposure.p.weekly_revenue", "models/exposures.yml", "model.p.report"),
)})


@pytest.mark.parametrize("path", ["models/a*[1]+.sql", "models/plain.sql", "models/x@y?.sql"])
def test_path_selectors_unescape_to_the_file_they_name(path):
    assert unescape_path_selector(build_path_selector(path)) == (path, False)
    assert unescape_path_selector(build_path_selector(path, include_downstream=True)) == (path, True)


def test_model_change_selects_it_and_its_tests_and_lists_downstream_with_distance():
    impact = build_selective_impact(GRAPH, ["path:models/stg.sql"], parse=None)
    assert [n.unique_id for n in impact.selected] == ["model.p.stg", "test.p.not_null_stg_id"]
    assert [(n.unique_id, n.distance) for n in impact.downstream] == [
        ("model.p.mart", 1), ("model.p.report", 2), ("exposure.p.weekly_revenue", 3)]
    assert render_impact_line(impact) == (
        "runs 1 model, 1 test; affects 2 downstream models, 1 exposure (weekly_revenue)")


def test_yaml_file_selects_the_nodes_it_describes_and_their_tests():
    selected, direct = resolve_path_selection(GRAPH, ["path:models/schema.yml"])
    assert selected == {"model.p.mart", "test.p.not_null_stg_id", "test.p.not_null_mart_id"}
    assert direct == selected


def test_include_downstream_puts_downstream_in_the_selection():
    impact = build_selective_impact(GRAPH, ["path:models/stg.sql+"], parse=None, includes_downstream=True)
    assert {n.unique_id for n in impact.selected} == {
        "model.p.stg", "model.p.mart", "model.p.report", "test.p.not_null_stg_id", "test.p.not_null_mart_id"}
    # What dbt cannot run stays affected: the exposure is read by people.
    assert [(n.unique_id, n.distance) for n in impact.downstream] == [("exposure.p.weekly_revenue", 3)]
    assert render_impact_line(impact) == (
        "runs 3 models, 2 tests (downstream nodes included); affects 1 downstream exposure (weekly_revenue)")


@pytest.mark.parametrize(("paths", "comparable"), [
    (["macros/money.sql"], True),
    (["macros/money.sql", "models/stg.sql"], True),
    (["macros/money.sql", "dbt_project.yml"], False),  # vars may have changed: dbt cannot decide
    (["macros/money.sql", "packages.yml"], False),
    (["models/stg.sql"], False),  # already selective
])
def test_state_comparison_narrows_only_macro_changes_without_configuration(paths, comparable):
    files = [build_file_change(path, "modified") for path in paths]
    scope = build_dbt_scope(files, has_base=True)
    assert is_state_comparable(files, scope, has_base_manifest=True) is comparable
    assert is_state_comparable(files, scope, has_base_manifest=False) is False


def test_state_scope_selects_modified_nodes_by_fqn_leaving_their_tests_to_indirect_selection():
    files = [build_file_change("macros/money.sql", "modified")]
    full = build_dbt_scope(files, has_base=True)
    scope = build_state_scope(full, [["p", "mart"], ["p", "not_null_mart_id"]], GRAPH, base_commit="a" * 40)
    assert (scope.scope, scope.selection) == (Scope.SELECTIVE, ("fqn:p.mart",))
    assert resolve_path_selection(GRAPH, scope.selection)[0] == {"model.p.mart", "test.p.not_null_mart_id"}
    assert build_state_scope(full, [], GRAPH, base_commit="a" * 40).scope is Scope.BUILD_ONLY
