"""dbt plans show their impact: dbt's parse of the pinned commit inside `detect`, on the deployed world.

Each test pushes one change to the deployed jaffle project (`prod` protected, so nothing executes unless a
test approves it) and reads the plan `detect` recorded. dbt parses for real on DuckDB's profile (a parse
never opens the warehouse) and `dbt ls` is the reference for the resolved selection.
"""

from __future__ import annotations

import json
import shutil
import os
import subprocess
import sys
from pathlib import Path

from dagster import AssetKey
from fixtures.git_repos import DBT_PROFILES

from dagctl_dagster.adapters.dbt_manifest import read_dbt_graph, read_parsed_graph
from dagctl_dagster.core.dbt_impact import ImpactStatus, ParseMode, render_impact_line, resolve_path_selection
from dagctl_dagster.core.lifecycle import PlanStatus
from dagctl_dagster.core.plan import build_plan_id
from dagctl_dagster.defs.local_backend import dbt_executable

from conftest import ENV, PROJECT, failed_step, failure_message, started_steps

STG_ORDERS = "models/staging/stg_orders.sql"
STG_ORDERS_TESTS = {
    "test.jaffle.accepted_values_stg_orders_status__placed__shipped__completed__returned.7511f2d274",
    "test.jaffle.not_null_stg_orders_customer_id.af79d5e4b5",
    "test.jaffle.not_null_stg_orders_order_id.81cfe2fe64",
    "test.jaffle.unique_stg_orders_order_id.e3b841c71a",
}


def dbt_env() -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
            "DAGCTL_WAREHOUSE_DIR": os.environ["DAGCTL_WAREHOUSE_DIR"], "DBT_PROFILES_DIR": str(DBT_PROFILES),
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}


def dbt_ls(project_dir: Path, selection: list[str], target_path: Path) -> set[str]:
    """What dbt itself lists for `--select selection` among the nodes `dbt build` runs."""
    out = subprocess.run(
        [dbt_executable(), "ls", "--quiet", "--target", "prod", "--target-path", str(target_path),
         "--resource-types", "model", "seed", "snapshot", "test", "unit_test",
         "--output", "json", "--output-keys", "unique_id", "--select", *selection],
        cwd=project_dir, env=dbt_env(), check=True, capture_output=True, text=True).stdout
    return {json.loads(line)["unique_id"] for line in out.splitlines() if line.startswith("{")}


def log_messages(deployed, result) -> str:
    """Every line of the run's log, as the run's page shows it."""
    return "\n".join(entry.user_message for entry in deployed.instance.all_logs(result.run_id))


def change_stg_orders(deployed) -> str:
    return deployed.commit_change(STG_ORDERS, deployed.repo.read(STG_ORDERS) + "-- reviewed\n")


def test_model_change_lists_the_model_its_tests_and_its_downstream_models(deployed, deployed_template,
                                                                         tmp_path, monkeypatch):
    # The profile as the deployed plan's parse rendered it (dbt parses from scratch when the profile changes).
    monkeypatch.setenv("DAGCTL_WAREHOUSE_DIR", str(deployed_template.root / "warehouse"))
    commit = change_stg_orders(deployed)
    state = deployed.explain()
    impact = state.spec.dbt_impact
    assert state.status is PlanStatus.PENDING and impact.status is ImpactStatus.RESOLVED
    assert {n.unique_id for n in impact.selected} == {"model.jaffle.stg_orders", *STG_ORDERS_TESTS}
    assert [(n.unique_id, n.distance) for n in impact.downstream] == [
        ("model.jaffle.orders", 1), ("model.jaffle.customers", 2)]
    # The deployed plan's parse was kept: this one parsed only what changed.
    assert impact.parse.mode is ParseMode.PARTIAL
    summary = deployed.summary(state.plan_id)
    assert "**Impact:** runs 1 model, 4 tests; affects 2 downstream models (dbt parse: partial" in summary
    assert "| `model.jaffle.orders` | model | `models/marts/orders.sql` | 1 |" in summary
    [record] = deployed.instance.fetch_materializations(AssetKey(["dagctl", PROJECT, ENV]), limit=1,
                                                        ascending=False).records
    metadata = record.asset_materialization.metadata
    assert metadata["impact"].value == "runs 1 model, 4 tests; affects 2 downstream models"
    assert [(r.data["unique_id"], r.data["distance"]) for r in metadata["impacted_nodes"].value.records] == [
        ("model.jaffle.orders", 1), ("model.jaffle.customers", 2)]
    assert len(metadata["selected_nodes"].value.records) == 5

    # The resolved selection is what dbt itself lists, with and without `+`.
    snapshot = deployed.runtime.snapshot_dir(deployed.runtime.deployment.get_project(PROJECT), commit)
    selection = list(state.spec.dbt_scope.selection)
    assert dbt_ls(snapshot, selection, tmp_path / "ls") == {n.unique_id for n in impact.selected}
    graph = read_dbt_graph(tmp_path / "ls" / "manifest.json")
    with_downstream = [f"{criterion}+" for criterion in selection]
    assert dbt_ls(snapshot, with_downstream, tmp_path / "ls") == resolve_path_selection(graph, with_downstream)[0]

    # The partial parse gives the same graph as a cold one.
    cold = tmp_path / "cold"
    subprocess.run([sys.executable, "-m", "dagctl_dagster.runner.dbt_parse", "--project-dir", str(snapshot),
                    "--target-path", str(cold), "--target", "prod", "--output", str(tmp_path / "cold.json")],
                   env=dbt_env(), check=True)
    assert json.loads((tmp_path / "cold.json").read_text())["mode"] == "cold"
    assert read_parsed_graph(cold).content_hash() == impact.graph_hash
    # And dbt's own manifest of a cold parse (the one `dbt ls` wrote) has that graph too.
    assert graph.content_hash() == impact.graph_hash


def test_execute_refuses_when_the_resolved_nodes_differ_from_the_approved_ones(deployed):
    commit = change_stg_orders(deployed)
    plan_id = deployed.explain().plan_id
    deployed.approve(plan_id, "alice")
    # Someone adds a model to the pinned snapshot by hand: dbt now resolves another downstream.
    snapshot = deployed.runtime.snapshot_dir(deployed.runtime.deployment.get_project(PROJECT), commit)
    (snapshot / "models/marts/orders_by_status.sql").write_text(
        "select status, count(*) as n from {{ ref('stg_orders') }} group by status\n")
    result = deployed.execute_approved(plan_id)
    assert failed_step(result) == "gate"
    assert "differs from the approved fingerprint" in failure_message(result)
    logs = log_messages(deployed, result)
    # The re-parse starts from the plan's own partial-parse file and sees the hand-added file.
    assert (f"dbt parse of {commit[:12]}: partial (from the partial-parse file of this commit; 1 file(s) "
            "changed)") in logs
    assert "dbt resolves other nodes than were approved: downstream now also model.jaffle.orders_by_status" in logs
    assert not {"build", "execute"} & set(started_steps(result))
    assert deployed.state(plan_id).status is PlanStatus.REJECTED


def test_deleted_model_still_referenced_fails_the_plan_at_explain(deployed):
    (deployed.repo.work / STG_ORDERS).unlink()
    deployed.repo.commit("Drop stg_orders", {".dagctl/config.yaml": 'version: "2"\n'}, author="dave")
    result = deployed.launch_plan()
    assert failed_step(result) == "gate"
    state = deployed.state(build_plan_id(PROJECT, ENV, result.run_id))
    assert state.status is PlanStatus.FAILED
    assert ("Model 'model.jaffle.orders' (models/marts/orders.sql) depends on a node named 'stg_orders' "
            "which was not found") in state.reason
    assert state.reason.startswith(f"dbt cannot parse the project at {state.spec.short_target} (fix the "
                                   "project and push a new commit):\nCompilation Error\n")


def test_missing_profile_variable_leaves_the_plan_explained_from_git(deployed, monkeypatch):
    monkeypatch.delenv("DAGCTL_WAREHOUSE_DIR")
    change_stg_orders(deployed)
    state = deployed.explain()
    impact = state.spec.dbt_impact
    assert state.status is PlanStatus.PENDING and state.spec.dbt_scope.scope == "selective"
    assert impact.status is ImpactStatus.UNAVAILABLE
    assert "Env var required but not provided: 'DAGCTL_WAREHOUSE_DIR'" in impact.reason
    assert ("**Impact:** impact unavailable: Parsing Error Env var required but not provided: "
            "'DAGCTL_WAREHOUSE_DIR'") in deployed.summary(state.plan_id)


MACRO = "macros/cents_to_dollars.sql"


def change_macro(deployed) -> str:
    return deployed.commit_change(MACRO, deployed.repo.read(MACRO).replace("decimal(18, 4)", "decimal(20, 4)"))


def test_macro_used_by_one_model_selects_that_model_with_the_deployed_manifest(deployed):
    change_macro(deployed)
    state = deployed.explain()
    scope, impact = state.spec.dbt_scope, state.spec.dbt_impact
    assert (scope.scope, scope.selection) == ("selective", ("fqn:jaffle.marts.orders",))
    assert scope.reason.startswith("macros changed; dbt's state comparison (state:modified) with the manifest "
                                   f"of the deployed commit {state.spec.base_commit[:12]}")
    assert state.spec.commands[0][-2:] == ("--select", "fqn:jaffle.marts.orders")
    assert impact.base_manifest_hash and [n.unique_id for n in impact.downstream] == ["model.jaffle.customers"]
    assert {n.unique_id for n in impact.selected if n.resource_type == "model"} == {"model.jaffle.orders"}
    # The deployed commit's parse kept its partial-parse file only; its manifest, written from that file for
    # this comparison, is kept now for the next plan with the same base.
    assert (deployed.storage_dir / "dbt_parse" / PROJECT / state.spec.base_commit / "manifest.json").exists()


def test_macro_change_without_the_deployed_manifest_is_a_full_build(deployed):
    shutil.rmtree(deployed.storage_dir / "dbt_parse" / PROJECT)
    change_macro(deployed)
    state = deployed.explain()
    assert state.spec.dbt_scope.scope == "all"
    assert "no manifest of the deployed commit" in state.spec.dbt_scope.reason
    assert state.spec.dbt_impact.counts == {"model": 4, "seed": 2, "test": 17}


def test_a_parse_failing_for_an_environment_reason_leaves_the_pinned_base_for_the_next_parse(deployed, monkeypatch):
    monkeypatch.delenv("DAGCTL_WAREHOUSE_DIR")
    change_macro(deployed)
    state = deployed.explain()
    pinned = deployed.storage_dir / "dbt_state" / PROJECT / state.plan_id
    assert state.spec.dbt_impact.status is ImpactStatus.UNAVAILABLE
    assert state.spec.dbt_scope.reason.endswith("(dbt's state comparison cannot narrow it: dbt did not parse)")
    # Still the deployed commit's partial-parse file, not "no manifest": a later parse writes the manifest.
    assert sorted(path.name for path in pinned.iterdir()) == ["base_commit", "partial_parse.msgpack"]


def test_a_deployed_manifest_kept_only_after_explain_leaves_the_approved_scope_alone(deployed):
    cache = deployed.storage_dir / "dbt_parse" / PROJECT
    saved = deployed.root / "parse_cache_kept_elsewhere"
    shutil.move(cache, saved)
    change_macro(deployed)
    state = deployed.explain()
    assert state.spec.dbt_scope.scope == "all"
    # Before execution the deployed commit's manifest is kept again (another environment's plan parsed it).
    shutil.copytree(saved, cache, dirs_exist_ok=True)
    deployed.approve(state.plan_id, "alice")

    result = deployed.execute_approved(state.plan_id)

    assert result.success, failure_message(result)
    assert deployed.state(state.plan_id).status is PlanStatus.COMPLETED


STAGING_SCHEMA = "models/staging/schema.yml"
NOT_NULL_STATUS = "test.jaffle.not_null_stg_orders_status.2b01eecbd6"


def add_not_null_to_status(deployed) -> str:
    text = deployed.repo.read(STAGING_SCHEMA).replace(
        "      - name: status\n        data_tests:\n",
        "      - name: status\n        data_tests:\n          - not_null\n")
    return deployed.commit_change(STAGING_SCHEMA, text)


def test_yaml_only_test_change_selects_that_test_by_dbt_state_comparison_and_executes_it(
        deployed, deployed_template, tmp_path, monkeypatch):
    monkeypatch.setenv("DAGCTL_WAREHOUSE_DIR", str(deployed_template.root / "warehouse"))
    commit = add_not_null_to_status(deployed)
    state = deployed.explain()
    scope, impact = state.spec.dbt_scope, state.spec.dbt_impact
    assert (scope.scope, scope.selection) == ("selective", ("fqn:jaffle.staging.not_null_stg_orders_status",))
    assert scope.reason == (
        f"only data tests changed in {STAGING_SCHEMA}; by dbt's state comparison (state:modified) with the "
        f"manifest of the deployed commit {state.spec.base_commit[:12]}, the 1 added or edited test(s) run")
    assert state.spec.commands[0][-2:] == ("--select", "fqn:jaffle.staging.not_null_stg_orders_status")
    assert [n.unique_id for n in impact.selected] == [NOT_NULL_STATUS]
    assert impact.base_manifest_hash and impact.downstream == ()
    assert render_impact_line(impact) == "runs 1 test; nothing downstream is left out"

    # Execute re-parses the pinned commit from its own partial-parse file: dbt finds nothing changed.
    deployed.approve(state.plan_id, "alice")
    result = deployed.execute_approved(state.plan_id)
    assert result.success, failure_message(result)
    assert (f"dbt parse of {commit[:12]}: partial (from the partial-parse file of this commit; 0 file(s) "
            "changed)") in log_messages(deployed, result)

    # The resolved selection is what dbt itself lists for the same arguments.
    snapshot = deployed.runtime.snapshot_dir(deployed.runtime.deployment.get_project(PROJECT), commit)
    assert dbt_ls(snapshot, list(scope.selection), tmp_path / "ls") == {NOT_NULL_STATUS}


def test_yaml_only_test_change_without_the_deployed_manifest_is_decided_from_the_yaml_diff(deployed):
    shutil.rmtree(deployed.storage_dir / "dbt_parse" / PROJECT)
    add_not_null_to_status(deployed)
    state = deployed.explain()
    scope = state.spec.dbt_scope
    assert (scope.scope, scope.selection) == ("selective", ("fqn:jaffle.staging.not_null_stg_orders_status",))
    assert scope.reason == (f"only data tests changed in {STAGING_SCHEMA}; by the YAML diff and the target's "
                            "test nodes, the 1 added or edited test(s) run")
    assert [n.unique_id for n in state.spec.dbt_impact.selected] == [NOT_NULL_STATUS]
    assert state.spec.dbt_impact.base_manifest_hash is None


def test_test_edited_with_a_model_description_keeps_the_path_rule(deployed):
    text = (deployed.repo.read(STAGING_SCHEMA)
            .replace('"completed", "returned"]', '"completed", "returned", "pending"]')
            .replace("One row per order, renamed", "One row per order (any status), renamed"))
    deployed.commit_change(STAGING_SCHEMA, text)
    state = deployed.explain()
    scope = state.spec.dbt_scope
    assert (scope.scope, scope.selection) == ("selective", ("path:models/staging/schema.yml",))
    assert scope.reason.startswith("only models, tests, seeds or snapshots changed")
    # dbt's path: rule: the models the YAML describes and, by eager indirect selection, all their tests.
    assert state.spec.dbt_impact.counts == {"model": 2, "test": 7}


def test_removed_test_plans_nothing_to_run_and_says_so(deployed):
    text = deployed.repo.read(STAGING_SCHEMA).replace("          - not_null\n          - unique\n",
                                                      "          - not_null\n", 1)
    deployed.commit_change(STAGING_SCHEMA, text)
    state = deployed.explain()
    scope = state.spec.dbt_scope
    assert (scope.scope, scope.selection, state.spec.commands) == ("build_only", (), ())
    assert scope.reason == (
        f"only data tests changed in {STAGING_SCHEMA}; by dbt's state comparison (state:modified) with the "
        f"manifest of the deployed commit {state.spec.base_commit[:12]}, the 0 added or edited test(s) run; "
        "1 removed test(s) run nothing: no dbt command runs, the image is rebuilt")
    assert scope.reason in deployed.summary(state.plan_id)
