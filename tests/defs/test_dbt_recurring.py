"""The recurring job of a dbt project: only configured schedules run, on the deployed commit (real dbt).

The SQLMesh side is in `test_sqlmesh_plans.py`; the op is shared, and these tests check that a dbt project's
recurring job refuses a launch without a configured schedule before any command and that a configured one
runs `dbt build` on what `prod` has deployed.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb
import yaml
from conftest import ENV, PROJECT, Deployment, failure_message, warehouse_materializations
from dagster import build_schedule_context

from dagctl_dagster.core.config import parse_deployment_config
from dagctl_dagster.defs.definitions import build_definitions
from dagctl_dagster.defs.runtime import PlanRuntime

RECURRING_JOB = f"{PROJECT}_recurring_job"
NIGHTLY = {"name": "nightly", "environment": ENV, "cron": "0 3 * * *", "command": "dbt_build"}


def configure_schedules(deployed: Deployment) -> None:
    """`deployed` with a nightly `dbt build` schedule on prod added to its deployment config."""
    config = yaml.safe_load(deployed.config_path.read_text())
    config["projects"][0]["schedules"] = [NIGHTLY]
    text = yaml.safe_dump(config, sort_keys=False)
    deployed.config_path.write_text(text)
    deployed.runtime = PlanRuntime(deployment=parse_deployment_config(text, source=str(deployed.config_path)),
                                   storage_dir=deployed.storage_dir, config_dir=deployed.root, clock=deployed.clock)
    deployed.defs = build_definitions(deployed.runtime)


def run_recurring(deployed: Deployment, config: dict):
    return deployed.defs.get_job_def(RECURRING_JOB).execute_in_process(
        run_config={"ops": {"run_recurring": {"config": config}}}, instance=deployed.instance,
        raise_on_error=False)


def logs(deployed: Deployment, run_id: str) -> list[str]:
    return [entry.user_message for entry in deployed.instance.all_logs(run_id)]


def test_a_dbt_projects_recurring_job_refuses_anything_but_a_configured_schedule(deployed):
    configure_schedules(deployed)

    result = run_recurring(deployed, {"environment": ENV, "command": "dbt_build"})

    assert not result.success
    assert failure_message(result) == (
        "project 'jaffle' has no configured schedule for environment 'prod' and command 'dbt_build': its "
        "recurring job runs only the schedules of the deployment config. Configured: nightly (dbt_build on "
        "prod). Launch with `ops: run_recurring: config: schedule: <name>`, or add a schedule to the "
        "deployment config; nothing was run")
    assert not any("running `" in line for line in logs(deployed, result.run_id))
    assert warehouse_materializations(result) == []


def test_a_dbt_schedule_runs_dbt_build_on_the_deployed_commit(deployed):
    configure_schedules(deployed)
    request = deployed.defs.get_schedule_def(f"{PROJECT}_nightly_schedule")(
        build_schedule_context(instance=deployed.instance))
    deployed_commit = deployed.state(deployed.deployed_plan_id).spec.target_commit
    deployed.commit_change("seeds/raw_customers.csv", "id,first_name\n1,Ann\n")  # pushed, not deployed

    result = deployed.defs.get_job_def(RECURRING_JOB).execute_in_process(
        run_config=request.run_config, instance=deployed.instance, tags=request.tags, raise_on_error=False)

    assert result.success, failure_message(result)
    assert request.run_config["ops"]["run_recurring"]["config"] == {"schedule": "nightly"}
    assert deployed.instance.get_run_by_id(result.run_id).tags["dagctl/deployed-commit"] == deployed_commit
    assert f"schedule nightly: running `dbt build --target prod` on deployed commit {deployed_commit[:12]} " \
           f"(plan {deployed.deployed_plan_id})" in logs(deployed, result.run_id)
    assert {"jaffle/prod/raw_customers", "jaffle/prod/raw_orders"} <= set(warehouse_materializations(result))
    deployed_rows = deployed.repo.git("show", f"{deployed_commit}:seeds/raw_customers.csv").strip().count("\n")
    warehouse = Path(os.environ["DAGCTL_WAREHOUSE_DIR"]) / "jaffle_prod.duckdb"
    with duckdb.connect(str(warehouse), read_only=True) as connection:
        (rows,) = connection.execute("select count(*) from raw_customers").fetchone()
    assert rows == deployed_rows > 1  # the deployed seed, not the one pushed since
