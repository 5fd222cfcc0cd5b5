"""SQLMesh plans and schedules on a real Git remote, a real Dagster instance and real SQLMesh on DuckDB.

One module-scoped world: the example project `examples/sqlmesh_shop` with a protected `prod`, a second
environment `hotfix` that deploys to the same SQLMesh environment (so one plan can move the other's base),
and schedules for `sqlmesh run` and `sqlmesh janitor` on prod.
"""

from pathlib import Path

import duckdb
import pytest
from dagster import RunRequest, SkipReason, build_schedule_context, build_sensor_context, instance_for_test
from fixtures.git_repos import REPO_ROOT, make_repo

from dagctl_dagster.core.config import parse_deployment_config
from dagctl_dagster.core.lifecycle import PlanStatus
from dagctl_dagster.defs.definitions import build_definitions
from dagctl_dagster.defs.runtime import PlanRuntime
from dagctl_dagster.defs.store import read_plan_states

SHOP = REPO_ROOT / "examples" / "sqlmesh_shop"
MODELS = ("shop.products", "shop.orders", "shop.daily_revenue", "shop.category_revenue")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sqlmesh_plans")
    warehouse = tmp / "warehouse"
    warehouse.mkdir()
    patch = pytest.MonkeyPatch()
    patch.setenv("DAGCTL_WAREHOUSE_DIR", str(warehouse))
    repo = make_repo(tmp / "repo", SHOP, message="Shop, first version")
    config = parse_deployment_config(f"""
projects:
  - name: shop
    framework: sqlmesh
    repository: {repo.url}
    step_env: {{pass_env: [DAGCTL_WAREHOUSE_DIR]}}
    environments:
      - {{name: prod, protected: true, approvers: [alice]}}
      - {{name: hotfix, sqlmesh_environment: prod}}
    schedules:
      - {{name: hourly, environment: prod, cron: "0 * * * *", command: sqlmesh_run}}
      - {{name: janitor, environment: prod, cron: "30 4 * * *", command: sqlmesh_janitor}}
""", source="test-dagctl.yaml")
    runtime = PlanRuntime(deployment=config, storage_dir=tmp / "data", config_dir=tmp)
    defs = build_definitions(runtime)
    with instance_for_test() as instance:
        yield World(repo=repo, defs=defs, instance=instance, warehouse=warehouse)
    patch.undo()


class World:
    def __init__(self, repo, defs, instance, warehouse: Path):
        self.repo, self.defs, self.instance, self.warehouse = repo, defs, instance, warehouse

    def run_plan(self, environment: str, *, plan_id: str = "", tags=None):
        config = {"ops": {"detect": {"config": {"environment": environment, "plan_id": plan_id}}}}
        return self.defs.get_job_def("shop_plan_job").execute_in_process(
            run_config=config, instance=self.instance, tags=tags or {}, raise_on_error=False)

    def states(self, environment: str):
        states = read_plan_states(self.instance, "shop", environment).values()
        return sorted(states, key=lambda state: state.spec.created_at)

    def approve(self, plan_id: str, actor: str):
        config = {"ops": {"review": {"config": {"plan_id": plan_id, "decision": "approve", "actor": actor}}}}
        return self.defs.get_job_def("dagctl_review_job").execute_in_process(
            run_config=config, instance=self.instance, raise_on_error=False)

    def tick(self, name: str):
        return self.defs.get_sensor_def(name)(build_sensor_context(instance=self.instance, definitions=self.defs))

    def schedule(self, name: str):
        return self.defs.get_schedule_def(name)(build_schedule_context(instance=self.instance))

    def query(self, sql: str):
        with duckdb.connect(str(self.warehouse / "sqlmesh_shop.duckdb"), read_only=True) as con:
            return con.execute(sql).fetchall()


def failure_message(result) -> str:
    return next(event.event_specific_data.error.message for event in result.all_events if event.is_step_failure)


def test_schedule_skips_until_the_environment_has_a_deployment(world):
    result = world.schedule("shop_hourly_schedule")

    assert isinstance(result, SkipReason)
    assert result.skip_message == ("shop/prod has no deployment yet (no completed plan): sqlmesh_run only "
                                   "runs reviewed commits")


def test_protected_prod_waits_for_approval_then_applies_exactly_the_plan(world):
    assert world.run_plan("prod").success
    [plan] = world.states("prod")
    assert plan.status is PlanStatus.PENDING
    changes = {change.name: change.kind for change in plan.spec.sqlmesh.changes}
    assert changes == {name: "added" for name in MODELS}
    assert plan.spec.sqlmesh.backfills, "a first plan backfills the incremental model"

    assert world.approve(plan.plan_id, "alice").success
    [request] = world.tick("dagctl_approval_sensor").run_requests
    assert request.run_key == f"{plan.plan_id}:execute"
    result = world.run_plan("prod", plan_id=plan.plan_id, tags=request.tags)

    assert result.success
    assert world.states("prod")[0].status is PlanStatus.COMPLETED
    models = {event.asset_key.path[-1] for event in result.get_asset_materialization_events()
              if event.asset_key.path[0] == "sqlmesh"}
    assert models == {"shop__products", "shop__orders", "shop__daily_revenue", "shop__category_revenue"}
    assert world.query("select count(*) from shop.category_revenue")[0][0] > 0


def test_a_plan_with_nothing_to_do_completes_without_approval(world):
    result = world.run_plan("prod")

    plan = world.states("prod")[-1]
    assert result.success
    assert (plan.spec.sqlmesh.has_changes, plan.status, plan.reason) == (
        False, PlanStatus.COMPLETED, "nothing to do: no changes")


def test_schedules_run_on_the_deployed_commit(world):
    deployed = next(s for s in reversed(world.states("prod")) if s.status is PlanStatus.COMPLETED)
    janitor = world.schedule("shop_janitor_schedule")
    request = world.schedule("shop_hourly_schedule")

    assert janitor.run_config["ops"]["run_recurring"]["config"] == {"environment": "prod",
                                                                     "command": "sqlmesh_janitor"}
    assert request.tags["dagctl/deployed-commit"] == deployed.spec.target_commit
    result = world.defs.get_job_def("shop_recurring_job").execute_in_process(
        run_config=request.run_config, instance=world.instance, tags=request.tags, raise_on_error=False)
    assert result.success
    logged = [entry.user_message for entry in world.instance.all_logs(result.run_id)]
    assert any(f"running `sqlmesh run prod` on deployed commit {deployed.spec.target_commit[:12]}" in line
               for line in logged)


def test_a_plan_whose_environment_moved_is_discarded_as_stale_before_applying(world):
    world.repo.commit("Count items per category", {"models/category_revenue.sql": world.repo.read(
        "models/category_revenue.sql").replace("AS revenue", "AS revenue,\n  SUM(orders.quantity) AS items", 1)})
    assert world.run_plan("prod").success
    pending = world.states("prod")[-1]
    assert pending.status is PlanStatus.PENDING
    assert world.approve(pending.plan_id, "alice").success
    # Meanwhile the unprotected hotfix environment deploys the same commit to the same SQLMesh environment.
    assert world.run_plan("hotfix").success
    assert world.states("hotfix")[-1].status is PlanStatus.COMPLETED
    columns_before = world.query("describe shop.category_revenue")

    [request] = world.tick("dagctl_approval_sensor").run_requests
    result = world.run_plan("prod", plan_id=pending.plan_id, tags=request.tags)

    stale = world.states("prod")[-1]
    assert not result.success
    assert (stale.plan_id, stale.status, stale.auto_discarded) == (pending.plan_id, PlanStatus.REJECTED, True)
    assert stale.reason == ("stale: the change set recomputed on the pinned commits differs from the "
                            "approved fingerprint")
    assert "was discarded as stale" in failure_message(result)
    assert "built" not in [entry.what.split(":")[0] for entry in stale.history]
    assert world.query("describe shop.category_revenue") == columns_before
