"""SQLMesh plans and schedules on a real Git remote, a real Dagster instance and real SQLMesh on DuckDB.

One module-scoped world: the example project `examples/sqlmesh_shop` with a protected `prod`, a second
environment `hotfix` that deploys to the same SQLMesh environment (so one plan can move the other's base),
and schedules for `sqlmesh run` and `sqlmesh janitor` on prod. The tests run in order on that world. Steps
get only the allowlist and what the config declares (`pass_env: [DAGCTL_WAREHOUSE_DIR]`).
"""

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from dagster import (
    DagsterRunStatus,
    RunRequest,
    SkipReason,
    build_schedule_context,
    build_sensor_context,
    instance_for_test,
)
from fixtures.git_repos import REPO_ROOT, make_repo

from dagctl_dagster.core.config import parse_deployment_config
from dagctl_dagster.core.lifecycle import PlanStatus
from dagctl_dagster.defs.definitions import build_definitions
from dagctl_dagster.defs.runtime import PlanRuntime
from dagctl_dagster.defs.store import plan_asset_key, read_plan_states

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

    def summary(self, plan_id: str) -> str:
        """The markdown summary of the plan's latest event (what the asset page and `plans show` print)."""
        latest = (-1, "")
        for fetch in (self.instance.fetch_materializations, self.instance.fetch_observations):
            for record in fetch(plan_asset_key("shop", plan_id.split("-")[1]), limit=1000).records:
                entry = record.event_log_entry.asset_materialization or record.event_log_entry.asset_observation
                if entry.partition == plan_id and record.storage_id > latest[0]:  # not index checkpoints
                    latest = (record.storage_id, entry.metadata["summary"].value)
        return latest[1]

    def plan_metadata(self, plan_id: str) -> dict:
        """The metadata of the plan's latest materialization."""
        records = self.instance.fetch_materializations(plan_asset_key("shop", plan_id.split("-")[1]),
                                                       limit=1000).records
        return max((r for r in records if r.asset_materialization.metadata["plan_id"].value == plan_id),
                   key=lambda r: r.storage_id).asset_materialization.metadata

    def run_recurring(self, config: dict, tags=None):
        return self.defs.get_job_def("shop_recurring_job").execute_in_process(
            run_config={"ops": {"run_recurring": {"config": config}}}, instance=self.instance,
            tags=tags or {}, raise_on_error=False)

    def logs(self, result) -> list[str]:
        return [entry.user_message for entry in self.instance.all_logs(result.run_id)]

    def query(self, sql: str):
        with duckdb.connect(str(self.warehouse / "sqlmesh_shop.duckdb"), read_only=True) as con:
            return con.execute(sql).fetchall()


def failure_message(result) -> str:
    """The message of the step that failed, as the run's page shows it."""
    data = next(event.step_failure_data for event in result.all_events if event.is_step_failure)
    return data.user_failure_data.description if data.user_failure_data else data.error.message


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

    summary = world.summary(plan.plan_id)
    assert "Commits: `none (first deployment)` -> " in summary and "ahead)" not in summary
    assert "re-evaluated when the plan executes" in summary
    assert f"SQLMesh change-set fingerprint `{plan.spec.sqlmesh.fingerprint[:16]}`" in summary
    assert f"fingerprint `{plan.spec.fingerprint[:16]}`" in summary
    assert world.plan_metadata(plan.plan_id)["sqlmesh_change_set_fingerprint"].value == (
        plan.spec.sqlmesh.fingerprint)

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
    # What the execution backfilled, next to what the plan showed.
    orders = next(event.materialization.metadata for event in result.get_asset_materialization_events()
                  if event.asset_key.path == ["sqlmesh", "shop", "shop__orders"])
    shown = next(i for i in plan.spec.sqlmesh.backfills if i.model == "shop.orders")
    assert orders["planned_backfill"].value == f"{shown.start} - {shown.end}"
    assert (orders["backfilled_from"].value, orders["backfilled_to"].value) == (shown.start, shown.end)
    logged = world.logs(result)
    assert any(line.startswith("Backfilled at execution: shop.category_revenue [") for line in logged)
    assert any(line.startswith("The plan showed this backfill at explain: shop.category_revenue [")
               for line in logged)
    assert not any("Creating physical tables failed" in line for line in logged)


def test_a_plan_with_nothing_to_do_completes_without_approval(world):
    result = world.run_plan("prod")

    plan = world.states("prod")[-1]
    assert result.success
    assert (plan.spec.sqlmesh.has_changes, plan.status, plan.reason) == (
        False, PlanStatus.COMPLETED, "nothing to do: no changes")
    summary = world.summary(plan.plan_id)
    assert "(0 ahead)" in summary  # a real base: the count is said, even when zero
    assert "Approvals" not in summary and "Still needed" not in summary and "To approve" not in summary


def test_schedules_run_on_the_deployed_commit(world):
    deployed = next(s for s in reversed(world.states("prod")) if s.status is PlanStatus.COMPLETED)
    janitor = world.schedule("shop_janitor_schedule")
    request = world.schedule("shop_hourly_schedule")

    assert janitor.run_config["ops"]["run_recurring"]["config"] == {"schedule": "janitor"}
    assert "dagctl/deployed-commit" not in request.tags  # resolved when the run starts
    result = world.defs.get_job_def("shop_recurring_job").execute_in_process(
        run_config=request.run_config, instance=world.instance, tags=request.tags, raise_on_error=False)
    assert result.success
    assert world.instance.get_run_by_id(result.run_id).tags["dagctl/deployed-commit"] == (
        deployed.spec.target_commit)
    assert any(line.startswith(f"schedule hourly: running `python -m dagctl_dagster.runner.sqlmesh_recurring "
                               f"run --environment prod --project-dir ") and
               line.endswith(f"` on deployed commit {deployed.spec.target_commit[:12]} (plan {deployed.plan_id})")
               for line in world.logs(result))


@pytest.mark.parametrize(("status", "said"), [(DagsterRunStatus.NOT_STARTED, "queued"),
                                              (DagsterRunStatus.STARTED, "running")])
def test_a_schedule_skips_a_tick_while_its_last_run_is_queued_or_running(world, status, said):
    recurring = world.defs.resolve_job_def("shop_recurring_job")
    earlier = world.instance.create_run_for_job(
        job_def=recurring, run_config={"ops": {"run_recurring": {"config": {"schedule": "hourly"}}}},
        tags={"dagctl/schedule": "shop.hourly"}, status=status)
    try:
        hourly = world.schedule("shop_hourly_schedule")
        janitor = world.schedule("shop_janitor_schedule")
    finally:
        world.instance.delete_run(earlier.run_id)

    assert isinstance(hourly, SkipReason)
    assert hourly.skip_message == (
        f"run {earlier.run_id} of schedule hourly is still {said}: this tick is skipped so that runs do not "
        "pile up (the next tick runs if it has finished)")
    assert isinstance(janitor, RunRequest), "another schedule of the same project is not held back"
    assert isinstance(world.schedule("shop_hourly_schedule"), RunRequest)


@pytest.mark.parametrize(("config", "asked"), [
    ({"environment": "hotfix", "command": "sqlmesh_run"}, "environment 'hotfix' and command 'sqlmesh_run'"),
    ({"schedule": "nightly"}, "schedule 'nightly'"),
])
def test_a_hand_launch_of_anything_but_a_configured_schedule_is_refused(world, config, asked):
    result = world.run_recurring(config)

    assert not result.success
    assert failure_message(result) == (
        f"project 'shop' has no configured schedule for {asked}: its recurring job runs only the schedules "
        "of the deployment config. Configured: hourly (sqlmesh_run on prod); janitor (sqlmesh_janitor on "
        "prod). Launch with `ops: run_recurring: config: schedule: <name>`, or add a schedule to the "
        "deployment config; nothing was run")
    assert not any("running `" in line or "Janitor" in line for line in world.logs(result))
    assert "dagctl/deployed-commit" not in world.instance.get_run_by_id(result.run_id).tags


def test_a_hand_launch_must_match_the_schedule_it_names(world):
    result = world.run_recurring({"schedule": "hourly", "environment": "hotfix"})

    assert not result.success
    assert failure_message(result).startswith(
        "schedule 'hourly' of project 'shop' does not run environment 'hotfix' (the schedule's is 'prod').")


def test_a_hand_launch_of_a_configured_schedule_runs_on_the_deployed_commit(world):
    deployed = next(s for s in reversed(world.states("prod")) if s.status is PlanStatus.COMPLETED)

    result = world.run_recurring({"schedule": "janitor"})

    assert result.success
    assert world.instance.get_run_by_id(result.run_id).tags["dagctl/deployed-commit"] == (
        deployed.spec.target_commit)
    assert "Janitor finished." in world.logs(result)


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


def test_a_queued_schedule_run_names_the_commit_deployed_when_it_starts(world):
    request = world.schedule("shop_hourly_schedule")  # queued while prod is at its first deployment
    # The hotfix environment deployed the head to SQLMesh's prod: prod's plan of the head has nothing to do
    # and completes at once, so prod's deployed commit moves while the schedule's run waits.
    assert world.run_plan("prod").success
    moved = world.states("prod")[-1]
    assert (moved.status, moved.spec.target_commit) == (PlanStatus.COMPLETED, world.repo.head)

    result = world.defs.get_job_def("shop_recurring_job").execute_in_process(
        run_config=request.run_config, instance=world.instance, tags=request.tags, raise_on_error=False)

    assert result.success
    assert world.instance.get_run_by_id(result.run_id).tags["dagctl/deployed-commit"] == world.repo.head
    assert any(line.endswith(f"on deployed commit {world.repo.head[:12]} (plan {moved.plan_id})")
               for line in world.logs(result))


BROKEN_REVENUE = ("SUM(orders.quantity * orders.unit_price) AS revenue",
                  "SUM(orders.quantity * orders.unit_price) * 2 AS revenue")


def test_a_change_that_breaks_a_unit_test_is_a_failed_plan_with_sqlmesh_report_then_the_fix_plans(world):
    good = world.repo.read("models/daily_revenue.sql")
    world.repo.commit("Double the revenue", {"models/daily_revenue.sql": good.replace(*BROKEN_REVENUE)})

    result = world.run_plan("hotfix")

    failed = world.states("hotfix")[-1]
    test = "tests/test_daily_revenue.yaml::test_daily_revenue_sums_all_products"
    assert not result.success
    assert (failed.status, failed.spec.target_commit) == (PlanStatus.FAILED, world.repo.head)
    assert failed.reason == (f"SQLMesh unit tests failed: {test}; fix them and push a new commit (SQLMesh's "
                             "report is in the plan's summary and in this run's log)")
    assert failure_message(result) == f"plan {failed.plan_id} failed at explain: {failed.reason}"
    summary = world.summary(failed.plan_id)
    assert f"**Unit tests failed (1):** `{test}`" in summary
    assert "│   0   │           28.2           │         56.4          │" in summary  # SQLMesh's row diff
    metadata = world.plan_metadata(failed.plan_id)
    assert metadata["sqlmesh_failed_tests"].value == [test]
    assert "56.4" in metadata["sqlmesh_test_output"].value
    assert any("FAIL: test_daily_revenue_sums_all_products" in line for line in world.logs(result))
    assert "built" not in [entry.what.split(":")[0] for entry in failed.history]
    # A retry cannot make it execute: gate refuses a plan whose tests failed.
    retry = {"ops": {"review": {"config": {"plan_id": failed.plan_id, "decision": "retry", "actor": "alice"}}}}
    assert world.defs.get_job_def("dagctl_review_job").execute_in_process(
        run_config=retry, instance=world.instance, raise_on_error=False).success
    [request] = [r for r in world.tick("dagctl_approval_sensor").run_requests
                 if r.tags.get("dagctl/plan-id") == failed.plan_id]
    retried = world.run_plan("hotfix", plan_id=failed.plan_id, tags=request.tags)
    assert not retried.success
    assert failure_message(retried) == f"plan {failed.plan_id} failed at explain: {failed.reason}"
    assert "built" not in [entry.what.split(":")[0] for entry in world.states("hotfix")[-1].history]

    world.repo.commit("Fix the revenue", {"models/daily_revenue.sql": good})
    assert world.run_plan("hotfix").success
    fixed = world.states("hotfix")[-1]
    assert (fixed.status, fixed.spec.target_commit, fixed.spec.sqlmesh.failed_tests) == (
        PlanStatus.COMPLETED, world.repo.head, ())


SECRETS = {"DAGCTL_APPROVER_SECRET_ALICE": "planted-approver-secret", "DAGCTL_GIT_TOKEN": "planted-git-token",
           "WAREHOUSE_PASSWORD": "planted-password"}
# A macro module of the project: SQLMesh imports it whenever it loads the project, and it writes down which
# of the code location's secrets it can read, and which dagctl process it runs in.
SPY_MACRO = """import json, os, sys

from sqlmesh import macro

_seen = {name: os.environ.get(name) for name in %r}
_seen["DAGCTL_WAREHOUSE_DIR"] = os.environ.get("DAGCTL_WAREHOUSE_DIR")
_out = os.path.join(os.environ["DAGCTL_WAREHOUSE_DIR"], "seen-%%d.json" %% os.getpid())
with open(_out, "w") as handle:
    json.dump({"argv": sys.argv, "seen": _seen}, handle)


@macro()
def spy_marker(evaluator):
    return 1
""" % (sorted(SECRETS),)


def test_sqlmesh_project_code_at_explain_sees_none_of_the_code_location_secrets(world, monkeypatch):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    world.repo.commit("A macro module", {"macros/spy.py": SPY_MACRO})

    result = world.run_plan("hotfix")

    assert result.success
    seen = [json.loads(path.read_text()) for path in world.warehouse.glob("seen-*.json")]
    explain = [entry["seen"] for entry in seen if entry["argv"][0].endswith("runner/sqlmesh_explain.py")]
    assert explain, seen
    for entry in explain:
        assert entry == {**dict.fromkeys(SECRETS), "DAGCTL_WAREHOUSE_DIR": str(world.warehouse)}
    # Nothing planted reached the run's logs either.
    logged = "\n".join(world.logs(result))
    assert not [value for value in SECRETS.values() if value in logged]


def test_a_database_held_by_another_process_fails_detect_saying_so_and_what_to_do(world):
    plans_before = len(world.states("hotfix"))
    state = world.warehouse / "sqlmesh_shop_state.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
         "sys.stdin.read()", str(state)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        result = world.run_plan("hotfix")
    finally:
        holder.communicate("")

    message = failure_message(result)
    assert not result.success
    assert message.startswith(f'SQLMesh cannot open its DuckDB database: IO Error: Could not set lock on file "{state}"')
    assert f"(PID {holder.pid})" in message and "`dagctl plans retry <plan id>`" in message
    assert len(world.states("hotfix")) == plans_before


def test_a_model_that_fails_at_apply_fails_the_plan_with_what_happened(world):
    orders = world.repo.read("models/orders.sql")
    world.repo.commit("Unparseable price", {"models/orders.sql": orders.replace(
        "products.price AS unit_price", "CAST('n/a' AS DECIMAL) AS unit_price", 1)})

    result = world.run_plan("hotfix")

    failed = world.states("hotfix")[-1]
    assert not result.success
    assert failed.status is PlanStatus.FAILED
    assert failed.reason == (
        "SQLMesh's apply step exited with code 1: applying failed: a model or an audit failed, or the warehouse "
        "is unreachable (SQLMesh's message is in the run's log). Fix the model and push a new commit, or retry "
        "the plan if the failure was transient")
    assert any(line.startswith('FAILED shop.orders: Conversion Error: Could not convert string "n/a"')
               for line in world.logs(result))
    world.repo.commit("Price back", {"models/orders.sql": orders})
