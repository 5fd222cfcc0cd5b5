"""The plan job of a project: `detect` -> `gate` -> `build` -> `execute`.

A plan is a run of this job. Launched without `plan_id` (by the sensor or by hand) it explains a new plan;
for a protected environment it stops after `gate` with the plan `pending`. Launched with `plan_id` (by the
approval sensor) it executes that recorded plan, after `gate` has re-checked everything from the event log:
a hand-written run config can never skip approval.
"""


from collections.abc import Iterator
from typing import Any, NamedTuple

from dagster import (
    Config,
    Failure,
    In,
    MetadataValue,
    OpDefinition,
    OpExecutionContext,
    Out,
    Output,
    TableColumn,
    TableRecord,
    TableSchema,
    in_process_executor,
    job,
    op,
)
from pydantic import BaseModel, ConfigDict, Field

from ..adapters.dbt import explain_dbt_plan
from ..core.config import EnvironmentConfig, ProjectConfig
from ..core.dbt_impact import DbtImpact, ImpactStatus, describe_impact_drift
from ..core.errors import DagctlError
from ..core.lifecycle import (
    PlanState,
    PlanStatus,
    build_created_event,
    build_status_event,
    check_transition,
    list_superseded,
)
from ..core.plan import Framework, PlanSpec, build_plan_id, seal_plan
from ..core.policy import SYSTEM_ACTOR, check_retry
from .dbt_impact import attach_dbt_impact, impact_metadata
from .execution import build_artifact, execute_plan
from .runtime import PlanRuntime
from .store import get_plan_state, read_plan_index
from .tags import TRIGGER_TAG, plan_run_tags


class PlanConfig(Config):
    """Launchpad config of a plan run. Set `environment` (and optionally `commit`) to create a plan."""

    environment: str = Field(description="Environment to plan for, e.g. prod or dev.")
    commit: str = Field(default="", description="Commit or branch to plan (default: the branch head).")
    requested_by: str = Field(default="", description="Who asks for this plan (its author).")
    plan_id: str = Field(
        default="", description="Set by the approval sensor: execute this recorded, approved plan."
    )


class Detected(BaseModel):
    """What `detect` hands to `gate`: the recorded plan and the fingerprint recomputed now."""

    model_config = ConfigDict(frozen=True)

    spec: PlanSpec
    recomputed_fingerprint: str
    is_execution: bool


def _files_table(spec: PlanSpec) -> MetadataValue:
    schema = TableSchema(columns=[TableColumn("path"), TableColumn("category"), TableColumn("change"),
                                  TableColumn("old_path")])
    records = [TableRecord({"path": c.path, "category": c.category.value, "change": c.change_type.value,
                            "old_path": c.old_path or ""}) for c in spec.files]
    return MetadataValue.table(records, schema=schema)


def plan_metadata(spec: PlanSpec) -> dict[str, Any]:
    """Asset metadata of a newly explained plan: every field a reviewer or script needs."""
    metadata: dict[str, Any] = {
        "project": spec.project,
        "environment": spec.environment,
        "target_commit": spec.target_commit,
        "target_commit_short": spec.target_commit[:12],
        "base_commit": spec.base_commit or "",
        "commit_message": spec.commit_message,
        "author": spec.author,
        "commits_ahead": spec.commits_ahead,
        "triggered_by": spec.triggered_by,
        "fingerprint": spec.fingerprint,
        "files": _files_table(spec),
        "plan": MetadataValue.json(spec.model_dump(mode="json")),
    }
    if spec.version_new is not None:
        metadata["version_old"] = spec.version_old or ""
        metadata["version_new"] = spec.version_new
    if spec.dbt_scope is not None:
        metadata["scope"] = spec.dbt_scope.scope.value
        metadata["scope_reason"] = spec.dbt_scope.reason
        metadata["commands"] = MetadataValue.json([list(argv) for argv in spec.commands])
        metadata.update(impact_metadata(spec))
    if spec.sqlmesh is not None:
        metadata["has_changes"] = spec.sqlmesh.has_changes
        metadata["sqlmesh_base_plan_id"] = spec.sqlmesh.base_plan_id or ""
        metadata["sqlmesh_changes"] = MetadataValue.json(
            [change.model_dump(mode="json", exclude={"diff"}) for change in spec.sqlmesh.changes])
        metadata["sqlmesh_backfills"] = MetadataValue.json(
            [interval.model_dump(mode="json") for interval in spec.sqlmesh.backfills])
        metadata["sqlmesh_change_set_fingerprint"] = spec.sqlmesh.fingerprint
        if spec.sqlmesh.failed_tests:
            metadata["sqlmesh_failed_tests"] = MetadataValue.json(list(spec.sqlmesh.failed_tests))
            metadata["sqlmesh_test_output"] = MetadataValue.text(spec.sqlmesh.test_output or "")
    return metadata


def _explain(runtime: PlanRuntime, project: ProjectConfig, env: EnvironmentConfig, *, plan_id: str,
             target: str, base_commit: str | None, base_version: str | None, triggered_by: str,
             requested_by: str | None, created_at=None, approved_impact: DbtImpact | None = None) -> PlanSpec:
    """The sealed spec of a plan. `approved_impact`: at execution, the impact of a dbt plan approved while its
    impact was unavailable; the plan is then recomputed from Git as it was approved, with that impact."""
    if project.framework == Framework.DBT:
        spec = explain_dbt_plan(
            runtime.mirror(project), project, env, plan_id=plan_id, target_commit=target,
            base_commit=base_commit, base_version=base_version, triggered_by=triggered_by,
            requested_by=requested_by, now=created_at or runtime.clock(),
        )
        if approved_impact is not None and approved_impact.status is ImpactStatus.UNAVAILABLE:
            return seal_plan(spec.model_copy(update={"dbt_impact": approved_impact}))
        return attach_dbt_impact(runtime, project, env, spec)
    from .sqlmesh_plans import explain_sqlmesh_spec

    return explain_sqlmesh_spec(
        runtime, project, env, plan_id=plan_id, target_commit=target, base_commit=base_commit,
        triggered_by=triggered_by, requested_by=requested_by, now=created_at or runtime.clock(),
    )


def _fail(context: OpExecutionContext, message: str) -> Failure:
    context.log.error(message)
    return Failure(description=message)


PLAN_JOB_SUFFIX = "_plan_job"


class PlanOps(NamedTuple):
    detect: OpDefinition
    gate: OpDefinition
    build: OpDefinition
    execute: OpDefinition


def build_plan_ops(runtime: PlanRuntime) -> PlanOps:
    """The four ops, shared by every project's plan job: op names must be unique in a code location, and
    one definition per name keeps the launchpad config (`ops: detect: config: ...`) the same everywhere.
    Each op finds its project from the name of the job it runs in."""

    def project_of(context: OpExecutionContext) -> ProjectConfig:
        return runtime.deployment.get_project(context.job_name.removesuffix(PLAN_JOB_SUFFIX))

    @op(name="detect", out=Out(Detected))
    def detect(context: OpExecutionContext, config: PlanConfig) -> Detected:
        """Finds the change set (new plan) or recomputes it on the pinned commits (execution)."""
        try:
            project = project_of(context)
            env = project.get_environment(config.environment)
            if config.plan_id:
                return _redetect(context, project, env, config.plan_id)
            return _detect_new(context, project, env, config)
        except DagctlError as exc:
            raise _fail(context, str(exc)) from exc

    def _detect_new(context: OpExecutionContext, project: ProjectConfig, env: EnvironmentConfig,
                    config: PlanConfig) -> Detected:
        mirror = runtime.mirror(project)
        mirror.ensure()
        branch = project.tracked_branch(env)
        head = mirror.refresh_branch(branch)
        target = mirror.resolve(config.commit) if config.commit else head
        index = read_plan_index(context.instance, project.name, env.name)
        base = index.last_completed
        spec = _explain(
            runtime, project, env, plan_id=build_plan_id(project.name, env.name, context.run_id),
            target=target, base_commit=base.spec.target_commit if base else None,
            base_version=base.spec.version_new if base else None,
            triggered_by=context.run.tags.get(TRIGGER_TAG, "manual"),
            requested_by=config.requested_by or None,
        )
        context.log.info(f"plan {spec.plan_id}: {len(spec.files)} changed file(s), fingerprint {spec.fingerprint[:16]}")
        runtime.record(context, build_created_event(spec, run_id=context.run_id), metadata=plan_metadata(spec))
        for old in list_superseded(index.open, spec):
            runtime.record(context, build_status_event(
                old, PlanStatus.REJECTED, actor=SYSTEM_ACTOR, at=runtime.clock(), auto_discarded=True,
                reason=f"superseded by plan {spec.plan_id}", run_id=context.run_id,
            ))
        return Detected(spec=spec, recomputed_fingerprint=spec.fingerprint, is_execution=False)

    def _redetect(context: OpExecutionContext, project: ProjectConfig, env: EnvironmentConfig,
                  plan_id: str) -> Detected:
        state = get_plan_state(context.instance, plan_id)
        spec = state.spec
        if (spec.project, spec.environment) != (project.name, env.name):
            raise DagctlError(
                f"plan {plan_id} belongs to {spec.project}/{spec.environment}, not to "
                f"{project.name}/{env.name}: launch {spec.project}_plan_job with environment "
                f"{spec.environment}"
            )
        mirror = runtime.mirror(project)
        mirror.ensure()
        recomputed = _explain(
            runtime, project, env, plan_id=plan_id, target=spec.target_commit,
            base_commit=spec.base_commit, base_version=spec.version_old, triggered_by=spec.triggered_by,
            requested_by=spec.author, created_at=spec.created_at, approved_impact=spec.dbt_impact,
        ) if mirror.has_commit(spec.target_commit) else None
        drift = describe_impact_drift(spec.dbt_impact, recomputed.dbt_impact) if recomputed else None
        if drift:
            context.log.warning(f"plan {plan_id}: {drift}")
        return Detected(spec=spec, recomputed_fingerprint=recomputed.fingerprint if recomputed else "",
                        is_execution=True)

    @op(name="gate", ins={"detected": In(Detected)}, out=Out(PlanSpec, is_required=False))
    def gate(context: OpExecutionContext, detected: Detected) -> Iterator[Output]:
        """Holds protected plans for approval; re-checks everything before a plan may execute."""
        spec = detected.spec
        project = project_of(context)
        env = project.get_environment(spec.environment)
        state = get_plan_state(context.instance, spec.plan_id)
        reason = spec.explain_failure
        if reason:  # no plan exists for this commit: it is failed at explain and never executes
            if not detected.is_execution:
                runtime.record(context, build_status_event(
                    state, PlanStatus.FAILED, actor=SYSTEM_ACTOR, at=runtime.clock(), reason=reason,
                    run_id=context.run_id), metadata=plan_metadata(spec), materialize=True)
            raise _fail(context, f"plan {spec.plan_id} failed at explain: {reason}")
        if not detected.is_execution:
            # The plan's materialization: its change set with the status a reviewer acts on.
            materialized = {"metadata": plan_metadata(spec), "materialize": True}
            if not spec.has_changes:
                runtime.record(context, build_status_event(
                    state, PlanStatus.COMPLETED, actor=SYSTEM_ACTOR, at=runtime.clock(),
                    reason="nothing to do: no changes", run_id=context.run_id), **materialized)
                return
            if env.protected:
                policy = runtime.evaluate_policy(env, state)
                runtime.record(context, build_status_event(
                    state, PlanStatus.PENDING, actor=SYSTEM_ACTOR, at=runtime.clock(), run_id=context.run_id,
                    reason="awaiting approval: " + "; ".join(policy.missing)), **materialized)
                context.log.info(f"plan {spec.plan_id} is pending approval for protected '{env.name}'")
                return
            state = runtime.record(context, build_status_event(
                state, PlanStatus.APPROVED, actor=SYSTEM_ACTOR, at=runtime.clock(), run_id=context.run_id,
                reason=f"environment '{env.name}' is not protected"), **materialized)
        admit_execution(context, runtime, project, state, detected.recomputed_fingerprint)
        yield Output(spec)

    @op(name="build", ins={"spec": In(PlanSpec)}, out=Out(str, is_required=False))
    def build(context: OpExecutionContext, spec: PlanSpec) -> Iterator[Output]:
        """Builds the artifact of the pinned commit (a snapshot locally, an image on Kubernetes)."""
        project = project_of(context)
        artifact = yield from _guarded(context, project, spec,
                                       lambda: build_artifact(context, runtime, project, spec))
        if spec.dbt_scope is not None and not spec.dbt_scope.requires_dbt:
            runtime.record(context, build_status_event(
                spec.plan_id, PlanStatus.COMPLETED, actor=SYSTEM_ACTOR, at=runtime.clock(),
                reason=f"build only: {spec.dbt_scope.reason}", run_id=context.run_id))
            return
        yield Output(artifact)

    @op(name="execute", ins={"spec": In(PlanSpec), "artifact": In(str)})
    def execute(context: OpExecutionContext, spec: PlanSpec, artifact: str) -> Iterator[Any]:
        """Runs exactly the approved command lines on the built artifact."""
        project = project_of(context)
        yield from _guarded(context, project, spec,
                            lambda: execute_plan(context, runtime, project, spec, artifact))
        runtime.record(context, build_status_event(
            spec.plan_id, PlanStatus.COMPLETED, actor=SYSTEM_ACTOR, at=runtime.clock(),
            reason="executed", run_id=context.run_id))
        yield Output(None)

    def _guarded(context: OpExecutionContext, project: ProjectConfig, spec: PlanSpec, work):
        """Admits re-executions (they count as retries) and records a failure before re-raising it."""
        state = get_plan_state(context.instance, spec.plan_id)
        if not (state.status is PlanStatus.RUNNING and context.run_id in state.run_ids):
            if state.status is PlanStatus.FAILED and context.run.parent_run_id:
                admit_execution(context, runtime, project, state, state.spec.fingerprint)
            else:
                raise _fail(context, f"plan {spec.plan_id} is {state.status.value}; this run was not "
                                     "admitted by gate, nothing was built or executed")
        try:
            result = work()
            if isinstance(result, Iterator):
                result = yield from result
            return result
        except Exception as exc:
            message = str(exc) if isinstance(exc, DagctlError) else f"{type(exc).__name__}: {exc}"
            runtime.record(context, build_status_event(
                spec.plan_id, PlanStatus.FAILED, actor=SYSTEM_ACTOR, at=runtime.clock(),
                reason=message[:2000], run_id=context.run_id))
            raise _fail(context, f"plan {spec.plan_id} failed: {message}") from exc

    return PlanOps(detect=detect, gate=gate, build=build, execute=execute)


def build_plan_job(project: ProjectConfig, ops: PlanOps):
    """The plan job of one project. Example: `build_plan_job(project, ops).name == "jaffle_plan_job"`."""

    # In-process: the ops run one after the other anyway, and each step subprocess of the default executor
    # would load the code location again (seconds each); dbt and SQLMesh still run as their own processes.
    @job(name=f"{project.name}{PLAN_JOB_SUFFIX}", tags=plan_run_tags(project.name),
         description=f"Plans of {project.framework} project '{project.name}': detect, gate, build, execute.",
         executor_def=in_process_executor)
    def plan_job():
        spec = ops.gate(ops.detect())
        ops.execute(spec, ops.build(spec))

    return plan_job


def admit_execution(
    context: OpExecutionContext, runtime: PlanRuntime, project: ProjectConfig, state: PlanState,
    recomputed_fingerprint: str,
) -> PlanState:
    """The last check before side effects. Records `running`, or refuses with the reason.

    Refuses: a plan that is not approved (or failed with retries left), whose policy is not met from the
    event log, whose change set no longer matches its fingerprint, or whose base has moved (stale, which
    also discards it).
    """
    spec = state.spec
    env = project.get_environment(spec.environment)
    now = runtime.clock()
    if state.status not in (PlanStatus.APPROVED, PlanStatus.FAILED):
        reason = f" ({state.reason})" if state.reason else ""
        raise _fail(context, f"plan {spec.plan_id} is {state.status.value}{reason}: only an approved plan, "
                             "or a failed one being retried, can execute; nothing was built or executed")
    try:
        check_transition(state, PlanStatus.RUNNING)
    except DagctlError as exc:
        raise _fail(context, f"{exc}; nothing was built or executed") from exc
    if state.status is PlanStatus.FAILED:
        # A retry (the approval sensor's, or Dagster's own re-execution of the failed run) needs a retry
        # decision by someone the policy lets retry, checked again here from the event log.
        request = state.retry_request
        if request is None:
            raise _fail(context, f"plan {spec.plan_id} failed ({state.reason}); to run it again, an approver "
                                 f"records a retry decision (dagctl plans retry {spec.plan_id}); nothing was "
                                 "built or executed")
        try:
            check_retry(env, spec, actor=request.actor, signature=request.signature,
                        attempt=state.retries + 1, people=runtime.deployment.people)
        except DagctlError as exc:
            raise _fail(context, f"{exc}; nothing was built or executed") from exc
    policy = runtime.evaluate_policy(env, state)
    if not policy.is_satisfied and state.status is PlanStatus.APPROVED:
        # The policy changed under an approved plan (an approval expired while the run was queued, the
        # policy was tightened): back to pending, where a new approval can execute it. Approvals stay
        # recorded; the policy counts those still valid and ignores expired ones.
        ignored = "".join(f"; {a.actor}'s approval does not count: {why}" for a, why in policy.ignored)
        reason = f"re-checked at execution: still needs {'; '.join(policy.missing)}{ignored}"
        runtime.record(context, build_status_event(
            state, PlanStatus.PENDING, actor=SYSTEM_ACTOR, at=now, run_id=context.run_id, reason=reason))
        raise _fail(context, f"plan {spec.plan_id} is pending again: {reason}; nothing was built or executed")
    if not policy.is_satisfied:
        raise _fail(context, f"plan {spec.plan_id} is not approved: still needs {'; '.join(policy.missing)}; "
                             "nothing was built or executed")
    stale = _stale_reason(context, runtime, project, state, recomputed_fingerprint)
    if stale:
        runtime.record(context, build_status_event(
            state, PlanStatus.REJECTED, actor=SYSTEM_ACTOR, at=now, auto_discarded=True,
            reason=f"stale: {stale}", run_id=context.run_id))
        raise _fail(context, f"plan {spec.plan_id} was discarded as stale: {stale}; nothing was built "
                             "or executed. Create a new plan.")
    # The queued run coordinator's `dagctl/lock` limit is the first guard; this one holds without it.
    busy = [s.plan_id for s in read_plan_index(context.instance, project.name, spec.environment).open
            if s.status is PlanStatus.RUNNING and s.plan_id != spec.plan_id]
    if busy:
        raise _fail(context, f"plan {spec.plan_id} cannot execute now: plan {busy[0]} is running in "
                             f"{project.name}/{spec.environment} (one execution at a time per environment); "
                             "nothing was built or executed")
    retry = f" (retry {state.retries + 1} of 3)" if state.status is PlanStatus.FAILED else ""
    return runtime.record(context, build_status_event(
        state, PlanStatus.RUNNING, actor=SYSTEM_ACTOR, at=now, run_id=context.run_id,
        reason=f"executing{retry}"))


def _stale_reason(context: OpExecutionContext, runtime: PlanRuntime, project: ProjectConfig,
                  state: PlanState, recomputed_fingerprint: str) -> str | None:
    spec = state.spec
    last = read_plan_index(context.instance, project.name, spec.environment).last_completed
    deployed = last.spec.target_commit if last else None
    if deployed != spec.base_commit:
        return (f"the environment moved: its deployed commit is {deployed[:12] if deployed else 'none'}, "
                f"the plan was made against {spec.base_commit[:12] if spec.base_commit else 'none'}")
    if not runtime.mirror(project).has_commit(spec.target_commit):
        return f"target commit {spec.target_commit[:12]} no longer exists in the repository"
    if recomputed_fingerprint != spec.fingerprint:
        return "the change set recomputed on the pinned commits differs from the approved fingerprint"
    return None
