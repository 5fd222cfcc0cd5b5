"""Sensors: new plans from Git, executions from approvals, failures from dead runs.

- `<project>_plan_sensor`: dbt projects request a plan when `.dagctl/config.yaml`'s version at the branch
  head differs from the version of the environment's newest plan (pending, approved, running, completed or
  failed: a rejected or cancelled plan does not count); SQLMesh projects when the head commit differs from
  the last completed plan's. Run keys make requests idempotent. A request whose run failed before `detect`
  recorded a plan (e.g. the run never started) is requested again, at most `MAX_PLAN_ATTEMPTS` times.
  A tick where neither the branch head nor the environment's plan events moved reuses the decision the
  cursor remembers ("up to date", "planned already"): it costs one `git ls-remote` and one indexed lookup.
  Each project has its own sensor: with `sensors: use_threads: true` in `dagster.yaml` the daemon evaluates
  them in parallel, so one hung remote (bounded by `git_timeout_seconds`) never delays the others.
- `dagctl_approval_sensor`: launches the plan job for each plan whose policy is met (run key from the plan
  id and how many times it became approved: one execution however many approvals or ticks, and a new one
  after `gate` sent the plan back to pending), and for each failed plan a reviewer asked to retry. It reads
  only the environment's open plans (`read_plan_index`).
- `dagctl_run_failure_sensor` / `dagctl_run_canceled_sensor`: mark a plan `failed` when the run that is
  executing it fails or is cancelled without the op recording it (a killed run worker). The plan is found
  from the run id recorded on its own events, never from run tags, which anyone launching a run can set:
  only the run that moved the plan to `running` can fail it.

Each project is evaluated on its own: one broken project becomes a skip reason, never a crashed tick.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

from dagster import (
    DefaultSensorStatus,
    DagsterRunStatus,
    RunRequest,
    RunsFilter,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    get_dagster_logger,
    run_status_sensor,
    sensor,
)

from ..adapters.dbt import read_project_version
from ..core.config import EnvironmentConfig, ProjectConfig
from ..core.errors import DagctlError
from ..core.lifecycle import PlanState, PlanStatus, build_status_event
from ..core.plan import build_plan_id
from ..core.policy import SYSTEM_ACTOR
from .execution import stop_explain_pods_of, stop_run_steps_of
from .runtime import PlanRuntime
from .store import find_plan_state, get_plan_event_marks, read_plan_index
from .tags import TRIGGER_TAG, plan_run_tags

# Sensors start running with the code location: plans appear without a click in the UI.
RUNNING = DefaultSensorStatus.RUNNING
# Every run a plan sensor requests for one (environment, version, head) carries the same request key.
REQUEST_TAG = "dagctl/request"
MAX_PLAN_ATTEMPTS = 3
_DEAD = (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)


def execution_run_key(state: PlanState, *, approvals: int = 0) -> str:
    """One execution request per time the plan was approved: a plan `gate` sent back to pending (an approval
    expired while the run was queued) gets a new key when it is approved again. `approvals` counts an
    approval being recorded now."""
    count = approvals + sum(1 for entry in state.history if entry.what == f"status: {PlanStatus.APPROVED.value}")
    return f"{state.plan_id}:execute" if count <= 1 else f"{state.plan_id}:execute:{count}"


def plan_run_config(environment: str, *, commit: str = "", plan_id: str = "") -> dict:
    return {"ops": {"detect": {"config": {"environment": environment, "commit": commit, "plan_id": plan_id}}}}


def _plan_basis(runtime: PlanRuntime, project: ProjectConfig, env: EnvironmentConfig) -> str:
    """What a remembered decision was made under (repository, branch, folder, framework): a digest, since the
    cursor is shown in the UI and the URL may carry credentials."""
    parts = [runtime.repository_url(project), project.tracked_branch(env), project.subdirectory or "",
             project.framework]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _collect(asked: Callable[[], str] | DagctlError) -> str | DagctlError:
    if isinstance(asked, DagctlError):
        return asked
    try:
        return asked()
    except DagctlError as exc:
        return exc


def _read_memory(cursor: str | None) -> dict[str, dict]:
    try:
        memory = json.loads(cursor) if cursor else {}
    except ValueError:
        return {}  # a cursor of another version: every environment is checked in full once
    return memory if isinstance(memory, dict) else {}


def build_plan_sensor(runtime: PlanRuntime, project: ProjectConfig, job):
    @sensor(name=f"{project.name}_plan_sensor", job=job,
            minimum_interval_seconds=project.sensor_interval_seconds, default_status=RUNNING,
            description=f"Requests a plan of '{project.name}' when "
            + ("its version changes." if project.framework == "dbt" else "a new commit lands."))
    def plan_sensor(context: SensorEvaluationContext):
        # The no-change tick costs one `git ls-remote` and one indexed lookup: the cursor remembers, per
        # environment, the head and the plan events' mark (`get_plan_event_marks`) a decision that needs no
        # run ("up to date", "planned already") was made under. The same head and the same mark give the
        # same decision, so nothing else is read. The mark is read before anything else, so an event
        # recorded during the tick moves it for the next one; and a decision is only reused once a second
        # full check under the same mark confirmed it (`settled`), so an event whose transaction commits
        # after a higher storage id (PostgreSQL) is still seen. Anything else is checked in full every tick.
        memory, remembered = _read_memory(context.cursor), {}
        mirror = runtime.mirror(project)
        # Each branch's `git ls-remote` runs while the plan events' marks are read.
        asking: dict[str, Callable[[], str] | DagctlError] = {}
        for branch in dict.fromkeys(project.tracked_branch(env) for env in project.environments):
            try:
                mirror.ensure()
                asking[branch] = mirror.start_remote_head(branch)
            except DagctlError as exc:
                asking[branch] = exc
        marks = get_plan_event_marks(context.instance, project.name, [env.name for env in project.environments])
        requests, skips = [], []
        remote_heads: dict[str, str | DagctlError] = {}
        heads: dict[str, str] = {}
        for env in project.environments:
            branch = project.tracked_branch(env)
            try:
                if branch not in remote_heads:
                    remote_heads[branch] = _collect(asking[branch])
                if isinstance(remote_heads[branch], DagctlError):
                    raise remote_heads[branch]
                basis, kept = _plan_basis(runtime, project, env), memory.get(env.name)
                current = isinstance(kept, dict) and (kept.get("commit"), kept.get("mark"), kept.get("basis")) == (
                    remote_heads[branch], marks[env.name], basis)
                if current and kept.get("settled") and isinstance(kept.get("why"), str):
                    remembered[env.name] = kept
                    skips.append(f"{project.name}/{env.name}: {kept['why']}")
                    continue
                if branch not in heads:
                    heads[branch] = mirror.refresh_branch(branch, remote=remote_heads[branch])
                request, why, is_stable = _plan_request(context, project, env, heads[branch])
            except DagctlError as exc:
                skips.append(f"{project.name}/{env.name}: {exc}")
                continue
            if request is None:
                skips.append(f"{project.name}/{env.name}: {why}")
            else:
                requests.append(request)
            if is_stable and heads[branch] == remote_heads[branch]:
                remembered[env.name] = {"commit": heads[branch], "mark": marks[env.name], "basis": basis,
                                        "why": why, "settled": bool(current)}
        cursor = json.dumps(remembered, sort_keys=True)
        if cursor != (context.cursor or "{}"):
            context.update_cursor(cursor)
        if requests:
            return SensorResult(run_requests=requests)
        return SkipReason("; ".join(skips))

    def _plan_request(context, project: ProjectConfig, env: EnvironmentConfig,
                      head: str) -> tuple[RunRequest | None, str, bool]:
        """The request for `head` (or None and why not), and whether that answer can only change with the
        head or the environment's plan events (no run is involved: it may be remembered)."""
        index = read_plan_index(context.instance, project.name, env.name)
        if project.framework == "dbt":
            version = read_project_version(runtime.mirror(project), project, head)
            newest = index.newest
            if newest is not None and newest.spec.version_new == version:
                return None, "up to date", True
            key = f"{project.name}:{env.name}:{version}:{head}"
        else:
            last = index.last_completed
            if last is not None and last.spec.target_commit == head:
                return None, "up to date", True
            key = f"{project.name}:{env.name}:{head}"
        # Runs already requested for this key: one that is queued, running, or that recorded a plan is
        # enough. Runs that died before `detect` recorded anything (a launch timeout, a crashed worker)
        # would otherwise leave the change unplanned until the next commit: they are requested again.
        runs = [record.dagster_run for record in
                context.instance.get_run_records(RunsFilter(tags={REQUEST_TAG: key}))]
        active = [run for run in runs if not run.is_finished]
        if active:
            return None, (f"the plan of {head[:12]} is being made (run {active[0].run_id[:8]} is "
                          f"{active[0].status.value})"), False
        planned = [state for run in runs if (state := find_plan_state(
            context.instance, build_plan_id(project.name, env.name, run.run_id))) is not None]
        if planned:
            return None, (f"{head[:12]} was planned already (plan {planned[0].plan_id}, {planned[0].status.value}): "
                          "push a new commit to plan it again"), True
        unplanned = [run for run in runs if run.status in _DEAD]
        if len(unplanned) >= MAX_PLAN_ATTEMPTS:
            return None, (f"the plan of {head[:12]} was requested {len(unplanned)} times and each run ended "
                          f"before it recorded a plan (last: run {unplanned[0].run_id[:8]}, see its logs); "
                          "not requested again: push a new commit or launch the plan job by hand"), False
        attempt = len(unplanned) + 1
        return RunRequest(
            run_key=key if attempt == 1 else f"{key}:attempt:{attempt}",
            run_config=plan_run_config(env.name, commit=head),
            tags={**plan_run_tags(project.name, env.name), TRIGGER_TAG: "sensor", REQUEST_TAG: key},
        ), "", False

    return plan_sensor


def build_approval_sensor(runtime: PlanRuntime, jobs):
    @sensor(name="dagctl_approval_sensor", jobs=jobs, minimum_interval_seconds=15, default_status=RUNNING,
            description="Launches approved plans (once each) and plans a reviewer asked to retry.")
    def approval_sensor(context: SensorEvaluationContext):
        requests, errors = [], []
        for project in runtime.deployment.projects:
            for env in project.environments:
                try:
                    index = read_plan_index(context.instance, project.name, env.name)
                    requests += [r for s in index.open if (r := _request(context, project, env, s))]
                except DagctlError as exc:  # this environment only: the others are still served
                    context.log.error(f"{project.name}/{env.name}: {exc}")
                    errors.append(f"{project.name}/{env.name}: {exc}")
        if requests:
            return SensorResult(run_requests=requests)
        return SkipReason("; ".join(["no plan is ready to run", *errors]))

    def _request(context, project: ProjectConfig, env: EnvironmentConfig, state: PlanState):
        tags = {**plan_run_tags(project.name, env.name, state.plan_id), TRIGGER_TAG: "approval"}
        config = plan_run_config(env.name, plan_id=state.plan_id)
        job_name = f"{project.name}_plan_job"
        if state.status is PlanStatus.PENDING:
            policy = runtime.evaluate_policy(env, state)
            if not policy.is_satisfied:
                return None
            approvers = ", ".join(a.actor for a in policy.counted)
            runtime.record(context.instance, build_status_event(
                state, PlanStatus.APPROVED, actor=SYSTEM_ACTOR, at=runtime.clock(),
                reason=f"policy met: approved by {approvers}"))
            return RunRequest(run_key=execution_run_key(state, approvals=1), job_name=job_name,
                              run_config=config, tags=tags)
        if state.status is PlanStatus.APPROVED and not state.has_started and env.protected:
            return RunRequest(run_key=execution_run_key(state), job_name=job_name, run_config=config,
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


def find_executing_plan(runtime: PlanRuntime, instance, run) -> PlanState | None:
    """The plan `run` is executing: the running plan whose latest `running` transition was recorded by this
    run. The run's job names the project (a run cannot choose its job); tags are not read at all."""
    project_name = run.job_name.removesuffix("_plan_job")
    try:
        project = runtime.deployment.get_project(project_name)
    except DagctlError:
        return None
    for env in project.environments:
        for state in read_plan_index(instance, project.name, env.name).open:
            if state.status is PlanStatus.RUNNING and state.execution_run_id == run.run_id:
                return state
    return None


def _stop_explain_pods(runtime: PlanRuntime, run) -> None:
    """A dead run that executed no plan may have been explaining one: its dbt parse pods are deleted."""
    try:
        project = runtime.deployment.get_project(run.job_name.removesuffix("_plan_job"))
    except DagctlError:
        return
    stopped = stop_explain_pods_of(runtime, project, run.run_id)
    if stopped:
        get_dagster_logger("dagctl").info(f"run {run.run_id[:8]} died while explaining: deleted its parse "
                                          f"pod(s) {', '.join(stopped)}")


def mark_dead_run(runtime: PlanRuntime, instance, run, what: str) -> bool:
    """Records `failed` for the plan this run is executing, if any. Returns whether it did."""
    state = find_executing_plan(runtime, instance, run)
    if state is None:
        _stop_explain_pods(runtime, run)
        return False
    # `failed` only once nothing of the execution runs: step processes or pods left behind are stopped first.
    stopped = stop_run_steps_of(runtime, state.plan_id, run.run_id)
    left = f"; its step(s) {', '.join(stopped)} still ran and were killed" if stopped else ""
    runtime.record(instance, build_status_event(
        state, PlanStatus.FAILED, actor=SYSTEM_ACTOR, at=runtime.clock(), run_id=run.run_id,
        reason=f"run {run.run_id[:8]} {what} before the plan finished (e.g. the run worker died){left}"))
    return True
