"""dbt plans end to end on a real Git remote, a real Dagster instance and real dbt runs on DuckDB.

One module-scoped deployment: the sensor plans version 1 (first deployment, scope `all`), then each test
pushes a change and follows it through the sensor and the plan job.
"""

from pathlib import Path

import duckdb
import pytest
from dagster import AssetKey, DagsterInstance, SkipReason, build_sensor_context, instance_for_test

from fixtures.git_repos import DBT_PROFILES, GitRepo, make_repo

from dagctl_dagster.core.config import parse_deployment_config
from dagctl_dagster.core.dbt_changes import NO_EMPTY_SELECTION
from dagctl_dagster.core.lifecycle import PlanStatus
from dagctl_dagster.defs.definitions import build_definitions
from dagctl_dagster.defs.runtime import PlanRuntime
from dagctl_dagster.defs.store import read_plan_states

def build_deployment(tmp: Path, remote: GitRepo):
    config = parse_deployment_config(f"""
projects:
  - name: jaffle
    framework: dbt
    repository: {remote.url}
    dbt: {{profiles_dir: {DBT_PROFILES}}}
    step_env: {{pass_env: [DAGCTL_WAREHOUSE_DIR]}}
    environments:
      - {{name: dev}}
""", source="test-dagctl.yaml")
    runtime = PlanRuntime(deployment=config, storage_dir=tmp / "data", config_dir=tmp)
    return runtime, build_definitions(runtime)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dbt_plans")
    warehouse = tmp / "warehouse"
    warehouse.mkdir()
    mp = pytest.MonkeyPatch()
    mp.setenv("DAGCTL_WAREHOUSE_DIR", str(warehouse))
    remote = make_repo(tmp / "repo")
    runtime, defs = build_deployment(tmp, remote)
    with instance_for_test() as instance:
        first = run_sensor_plans(defs, instance)
        assert len(first) == 1 and first[0].success
        yield {"remote": remote, "defs": defs, "instance": instance, "warehouse": warehouse,
               "runtime": runtime, "tmp": tmp}
    mp.undo()


def evaluate_sensor(defs, instance: DagsterInstance, name: str = "jaffle_plan_sensor"):
    return defs.get_sensor_def(name)(build_sensor_context(instance=instance, definitions=defs))


def run_sensor_plans(defs, instance: DagsterInstance):
    """Evaluates the plan sensor and runs what it requests, as the daemon would."""
    result = evaluate_sensor(defs, instance)
    results = []
    for request in getattr(result, "run_requests", None) or []:
        job = defs.get_job_def("jaffle_plan_job")
        results.append(job.execute_in_process(
            run_config=request.run_config, instance=instance, tags=request.tags, raise_on_error=False))
    return results


def dev_states(instance):
    return sorted(read_plan_states(instance, "jaffle", "dev").values(), key=lambda s: s.spec.created_at)


def query(warehouse: Path, sql: str):
    with duckdb.connect(str(warehouse / "jaffle_dev.duckdb"), read_only=True) as con:
        return con.execute(sql).fetchall()


def materialized_models(result) -> set[str]:
    return {event.asset_key.path[-1] for event in result.get_asset_materialization_events()
            if event.asset_key.path[0] == "jaffle"}


def test_first_deployment_builds_everything(deployment):
    first = dev_states(deployment["instance"])[0]
    assert first.status is PlanStatus.COMPLETED
    assert first.spec.dbt_scope.scope == "all"
    assert first.spec.commands == (("dbt", "build", "--target", "dev"),)
    assert query(deployment["warehouse"], "select count(*), sum(order_count) from customers") == [(10, 15)]


def test_no_version_change_requests_no_plan(deployment):
    result = evaluate_sensor(deployment["defs"], deployment["instance"])
    assert isinstance(result, SkipReason)
    assert "jaffle/dev: up to date" in result.skip_message


def test_version_bump_with_model_change_runs_only_the_changed_model(deployment):
    remote = deployment["remote"]
    customers = remote.read("models/marts/customers.sql").replace(
        "    c.first_name,", "    c.first_name,\n    upper(c.first_name) as first_name_upper,", 1)
    commit = remote.commit("Add first_name_upper", {
        "models/marts/customers.sql": customers, ".dagctl/config.yaml": 'version: "2"\n'})

    [result] = run_sensor_plans(deployment["defs"], deployment["instance"])

    assert result.success
    plan = dev_states(deployment["instance"])[-1]
    assert (plan.status, plan.spec.target_commit, plan.spec.version_old, plan.spec.version_new) == (
        PlanStatus.COMPLETED, commit, "1", "2")
    assert plan.spec.dbt_scope.selection == ("path:models/marts/customers.sql",)
    assert plan.spec.commands == (
        ("dbt", "build", "--target", "dev", *NO_EMPTY_SELECTION, "--select", "path:models/marts/customers.sql"),)
    assert materialized_models(result) == {"customers"}
    assert query(deployment["warehouse"], "select first_name_upper from customers where customer_id = 1") \
        == [("ADA",)]


def test_version_bump_with_only_a_dockerfile_change_is_build_only(deployment):
    remote = deployment["remote"]
    remote.commit("Pin the base image", {
        "Dockerfile": remote.read("Dockerfile") + "\n# pinned\n", ".dagctl/config.yaml": 'version: "3"\n'})

    [result] = run_sensor_plans(deployment["defs"], deployment["instance"])

    plan = dev_states(deployment["instance"])[-1]
    assert result.success
    assert (plan.status, plan.spec.dbt_scope.scope, plan.spec.commands) == (
        PlanStatus.COMPLETED, "build_only", ())
    assert [entry.what.split(":")[0] for entry in plan.history] == [
        "status", "status", "status", "built", "status"]
    assert materialized_models(result) == set()


def test_plan_records_its_change_set_as_asset_metadata(deployment):
    plan = dev_states(deployment["instance"])[-1]
    record = deployment["instance"].fetch_materializations(
        AssetKey(["dagctl", "jaffle", "dev"]), limit=1).records[0]
    metadata = record.asset_materialization.metadata
    assert metadata["plan_id"].value == plan.plan_id
    assert metadata["fingerprint"].value == plan.spec.fingerprint
    assert metadata["version_old"].value == "2" and metadata["version_new"].value == "3"
    assert metadata["scope"].value == "build_only"
    assert [row.data for row in metadata["files"].value.records] == [
        {"path": ".dagctl/config.yaml", "category": "infrastructure", "change": "modified", "old_path": ""},
        {"path": "Dockerfile", "category": "infrastructure", "change": "modified", "old_path": ""},
    ]
    assert f"Plan `{plan.plan_id}`" in metadata["summary"].value


def test_a_failing_model_fails_the_plan_with_dbts_message(deployment):
    remote = deployment["remote"]
    broken = remote.read("models/marts/customers.sql").replace("c.first_name,", "c.no_such_column,", 1)
    remote.commit("Break customers", {"models/marts/customers.sql": broken, ".dagctl/config.yaml": 'version: "4"\n'})

    [result] = run_sensor_plans(deployment["defs"], deployment["instance"])

    plan = dev_states(deployment["instance"])[-1]
    failure = next(e.event_specific_data.error.message for e in result.all_events if e.is_step_failure)
    assert not result.success
    assert plan.status is PlanStatus.FAILED
    assert plan.reason.startswith(f"`dbt build --target dev {' '.join(NO_EMPTY_SELECTION)} --select "
                                  "path:models/marts/customers.sql` failed: model.jaffle.customers: ")
    assert "no_such_column" in plan.reason
    assert f"plan {plan.plan_id} failed: " in failure and "no_such_column" in failure
