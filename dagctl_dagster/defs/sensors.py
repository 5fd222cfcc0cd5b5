"""Sensors: new plans from Git, executions from approvals, failures from dead runs.

- `<project>_plan_sensor`: dbt projects request a plan when `.dagctl/config.yaml`'s version at the branch
  head differs from the version of the environment's last completed plan; SQLMesh projects when the head
  commit differs from the last completed plan's. Run keys make requests idempotent.
- `dagctl_approval_sensor`: launches the plan job for each plan whose policy is met (run key from the plan
  id: one execution however many approvals or ticks), and for each failed plan a reviewer asked to retry.
- `dagctl_run_failure_sensor`: marks the plan `failed` when its run fails or is cancelled without the op
  recording it (a killed run worker).

Each project is evaluated on its own: one broken project becomes a skip reason, never a crashed tick.
"""

from __future__ import annotations

from dagster import (
    DefaultSensorStatus,
    DagsterRunStatus,
    RunRequest,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_status_sensor,
    sensor,
)

from ..adapters.dbt import read_project_version
from ..core.config import EnvironmentConfig, ProjectConfig
from ..core.errors import DagctlError
from ..core.lifecycle import PlanState, PlanStatus, build_status_event, get_last_completed
from ..core.policy import SYSTEM_ACTOR, evaluate_policy
from .execution import stop_run_steps_of
from .runtime import PlanRuntime
from ..core.plan import split_plan_id
from .store import read_plan_states
from .tags import PLAN_ID_TAG, TRIGGER_TAG, plan_run_tags

# Sensors start running with the code location: plans appear without a click in the UI.
RUNNING = DefaultSensorStatus.RUNNING


def plan_run_config(environment: str, *, commit: str = "", plan_id: str = "") -> dict:
    return {"ops": {"detect": {"config": {"environment": environment, "commit": commit, "plan_id": plan_id}}}}


def build_plan_sensor(runtime: PlanRuntime, project: ProjectConfig, job):
    @sensor(name=f"{project.name}_plan_sensor", job=job,
            minimum_interval_seconds=project.sensor_interval_seconds, default_status=RUNNING,
            description=f"Requests a plan of '{project.name}' when "
            + ("its version changes." if project.framework == "dbt" else "a new commit lands."))
    def plan_sensor(context: SensorEvaluationContext):
        requests, skips = [], []
        mirror = runtime.mirror(project)
        heads: dict[str, str] = {}
        for env in project.environments:
            branch = project.tracked_branch(env)
            try:
                if branch not in heads:
                    heads[branch] = mirror.refresh_branch(branch)
                request = _plan_request(context, project, env, heads[branch])
            except DagctlError as exc:
                skips.append(f"{project.name}/{env.name}: {exc}")
                continue
            if request is None:
                skips.append(f"{project.name}/{env.name}: up to date")
            else:
                requests.append(request)
        if requests:
            return SensorResult(run_requests=requests)
        return SkipReason("; ".join(skips))

    def _plan_request(context, project: ProjectConfig, env: EnvironmentConfig, head: str):
        last = get_last_completed(read_plan_states(context.instance, project.name, env.name).values())
        if project.framework == "dbt":
            version = read_project_version(runtime.mirror(project), project, head)
            if last is not None and last.spec.version_new == version:
                return None
            key = f"{project.name}:{env.name}:{version}:{head}"
        else:
            if last is not None and last.spec.target_commit == head:
                return None
            key = f"{project.name}:{env.name}:{head}"
        return RunRequest(run_key=key, run_config=plan_run_config(env.name, commit=head),
                          tags={**plan_run_tags(project.name, env.name), TRIGGER_TAG: "sensor"})

    return plan_sensor


def build_approval_sensor(runtime: PlanRuntime, jobs):
    @sensor(name="dagctl_approval_sensor", jobs=jobs, minimum_interval_seconds=15, default_status=RUNNING,
            description="Launches approved plans (once each) and plans a reviewer asked to retry.")
    def approval_sensor(context: SensorEvaluationContext):
        requests = []
        for project in runtime.deployment.projects:
            for env in project.environments:
                try:
                    states = read_plan_states(context.instance, project.name, env.name)
                    requests += [r for s in states.values() if (r := _request(context, project, env, s))]
                except DagctlError as exc:
                    context.log.warning(f"{project.name}/{env.name}: {exc}")
        return SensorResult(run_requests=requests) if requests else SkipReason("no plan is ready to run")

    def _request(context, project: ProjectConfig, env: EnvironmentConfig, state: PlanState):
        tags = {**plan_run_tags(project.name, env.name, state.plan_id), TRIGGER_TAG: "approval"}
        config = plan_run_config(env.name, plan_id=state.plan_id)
        job_name = f"{project.name}_plan_job"
        if state.status is PlanStatus.PENDING:
            policy = evaluate_policy(env, state.spec, state.approvals, runtime.clock())
            if not policy.is_satisfied:
                return None
            approvers = ", ".join(a.actor for a in policy.counted)
            runtime.record(context.instance, build_status_event(
                state, PlanStatus.APPROVED, actor=SYSTEM_ACTOR, at=runtime.clock(),
                reason=f"policy met: approved by {approvers}"))
            return RunRequest(run_key=f"{state.plan_id}:execute", job_name=job_name, run_config=config,
                              tags=tags)
        if state.status is PlanStatus.APPROVED and not state.has_started and env.protected:
            return RunRequest(run_key=f"{state.plan_id}:execute", job_name=job_name, run_config=config,
                              tags=tags)
        if state.status is PlanStatus.FAILED and state.retry_requested and state.retries_left:
            return RunRequest(run_key=f"{state.plan_id}:retry:{state.retries + 1}", job_name=job_name,
                              run_config=config, tags=tags)
        return None

    return approval_sensor


def build_run_failure_sensor(runtime: PlanRuntime, jobs):
    @run_status_sensor(name="dagctl_run_failure_sensor", run_status=DagsterRunStatus.FAILURE,
                       monitored_jobs=jobs, minimum_interval_seconds=15, default_status=RUNNING,
                       description="Marks a plan failed when its run died without recording it.")
    def failure_sensor(context: RunStatusSensorContext):
        mark_dead_run(runtime, context.instance, context.dagster_run, "failed")

    @run_status_sensor(name="dagctl_run_canceled_sensor", run_status=DagsterRunStatus.CANCELED,
                       monitored_jobs=jobs, minimum_interval_seconds=15, default_status=RUNNING,
                       description="Marks a plan failed when its run was cancelled while executing.")
    def canceled_sensor(context: RunStatusSensorContext):
        mark_dead_run(runtime, context.instance, context.dagster_run, "was cancelled")

    return [failure_sensor, canceled_sensor]


def plan_id_of_run(run) -> str | None:
    """The plan a run works on: its tag, or (explaining runs) the id derived from the run id."""
    from ..core.plan import build_plan_id
    from .tags import ENVIRONMENT_TAG, PROJECT_TAG

    if PLAN_ID_TAG in run.tags:
        return run.tags[PLAN_ID_TAG]
    project, env = run.tags.get(PROJECT_TAG), run.tags.get(ENVIRONMENT_TAG)
    if not env:
        env = (run.run_config.get("ops", {}).get("detect", {}).get("config", {}).get("environment"))
    return build_plan_id(project, env, run.run_id) if project and env else None


def mark_dead_run(runtime: PlanRuntime, instance, run, what: str) -> bool:
    """Records `failed` for the run's plan if it is still `running` in that run. Returns whether it did."""
    plan_id = plan_id_of_run(run)
    if plan_id is None:
        return False
    try:
        project, env = split_plan_id(plan_id)
        state = read_plan_states(instance, project, env).get(plan_id)
    except DagctlError:
        return False
    if state is None or state.status is not PlanStatus.RUNNING:
        return False
    # `failed` only once nothing of the execution runs: step processes or pods left behind are stopped first.
    stopped = stop_run_steps_of(runtime, plan_id, run.run_id)
    left = f"; its step(s) {', '.join(stopped)} still ran and were killed" if stopped else ""
    runtime.record(instance, build_status_event(
        state, PlanStatus.FAILED, actor=SYSTEM_ACTOR, at=runtime.clock(), run_id=run.run_id,
        reason=f"run {run.run_id[:8]} {what} before the plan finished (e.g. the run worker died){left}"))
    return True
