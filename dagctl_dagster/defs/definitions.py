"""The Definitions object of a dagctl code location, built from the deployment config.

`workspace.yaml` loads `dagctl_dagster.defs.definitions:defs`, which reads the file named by
`DAGCTL_CONFIG` (default `dagctl.yaml` in the working directory). A config error stops the code location
from loading, and Dagster shows our message (file and field path) as the location's error.
"""

from __future__ import annotations

import os
from pathlib import Path

from dagster import AssetSpec, Definitions

from ..adapters.git import redact_url
from ..core.config import DEFAULT_CONFIG_PATH, DeploymentConfig, load_deployment_config
from .plan_job import build_plan_job, build_plan_ops
from .review import build_review_job
from .runtime import PlanRuntime, resolve_storage_dir
from .schedules import build_recurring_job, build_recurring_op, build_schedule
from .sensors import build_approval_sensor, build_plan_sensor, build_run_failure_sensor
from .store import PLAN_GROUP, plan_asset_key


def build_definitions(runtime: PlanRuntime) -> Definitions:
    """Jobs, sensors and plan assets for every project of the deployment.

    Example: `build_definitions(PlanRuntime(deployment=config, storage_dir=tmp_path))`.
    """
    ops = build_plan_ops(runtime)
    plan_jobs = {project.name: build_plan_job(project, ops) for project in runtime.deployment.projects}
    review_job = build_review_job(runtime)
    sensors = [build_plan_sensor(runtime, project, plan_jobs[project.name])
               for project in runtime.deployment.projects]
    sensors.append(build_approval_sensor(runtime, list(plan_jobs.values())))
    sensors += build_run_failure_sensor(runtime, list(plan_jobs.values()))
    assets = [
        AssetSpec(
            key=plan_asset_key(project.name, env.name), group_name=PLAN_GROUP,
            description=f"Plans of {project.framework} project '{project.name}' for environment "
            f"'{env.name}'{' (protected)' if env.protected else ''}: each materialization is a plan, "
            "each observation a transition or decision.",
            metadata={"repository": redact_url(project.repository), "branch": project.tracked_branch(env)},
        )
        for project in runtime.deployment.projects
        for env in project.environments
    ]
    recurring_jobs, schedules = [], []
    recurring_op = build_recurring_op(runtime)
    for project in runtime.deployment.projects:
        if project.schedules:
            recurring = build_recurring_job(project, recurring_op)
            recurring_jobs.append(recurring)
            schedules += [build_schedule(runtime, project, s, recurring) for s in project.schedules]
    return Definitions(assets=assets, jobs=[*plan_jobs.values(), review_job, *recurring_jobs],
                       sensors=sensors, schedules=schedules)


def build_runtime_from_config(path: str | Path) -> PlanRuntime:
    config_path = Path(path).resolve()
    deployment: DeploymentConfig = load_deployment_config(config_path)
    return PlanRuntime(deployment=deployment, config_dir=config_path.parent,
                       storage_dir=resolve_storage_dir(deployment, config_path.parent))


def load_definitions() -> Definitions:
    return build_definitions(build_runtime_from_config(os.environ.get("DAGCTL_CONFIG", DEFAULT_CONFIG_PATH)))
