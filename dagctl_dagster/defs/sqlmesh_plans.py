"""SQLMesh plans: detect through SQLMesh's own plan, execute through the verify-then-apply entrypoint.

Every SQLMesh step is a process of its own whose environment is exactly `build_process_env(step, ...)`: the
allowlist plus what the project and environment declare (`step_env`). SQLMesh loads the project's Python
(config.py, macros, Python models) in each of them, and that code must never see the code location's
secrets (approver keys, the Git token, another environment's passwords).

`detect` exports a snapshot of the pinned commit and runs `python -m dagctl_dagster.runner.sqlmesh_explain`
in it: SQLMesh's plan of the environment against its state database (never a prompt, never an apply).
`execute` runs `python -m dagctl_dagster.runner.sqlmesh_apply` on the same snapshot, which rebuilds the
plan, compares its change-set fingerprint with the approved one and only then applies it: the same command
line locally and in a pod.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from dagster import AssetMaterialization, OpExecutionContext, get_dagster_logger

from ..core.config import EnvironmentConfig, ProjectConfig
from ..core.dbt_changes import build_file_change
from ..core.errors import DagctlPlanError, DagctlStateLockedError, DagctlStepError
from ..core.plan import CommitIdentity, Framework, PlanSpec, seal_plan
from ..core.sqlmesh_plan import SqlmeshChangeSet
from ..core.steps import StepSpec
from .local_backend import run_pipes_step, stream_command_step
from .runtime import PlanRuntime


def build_declared_step(project: ProjectConfig, env: EnvironmentConfig, *, name: str, argv: tuple[str, ...],
                        working_dir: str | None, image: str | None = None,
                        env_vars: dict[str, str] | None = None,
                        labels: dict[str, str] | None = None) -> StepSpec:
    """A step of `env` with the environment its config declares (`project.step_env_for(env)`) and nothing
    else: `DAGCTL_PROJECT`, `DAGCTL_ENVIRONMENT` and `env_vars` on top of the declared plain values."""
    from .execution import build_step_env_fields

    technical = {**(env_vars or {}), "DAGCTL_PROJECT": project.name, "DAGCTL_ENVIRONMENT": env.name}
    return StepSpec(name=name, argv=argv, image=image, working_dir=working_dir, labels=labels or {},
                    **build_step_env_fields(project, env, technical))


def build_sqlmesh_explain_step(project: ProjectConfig, env: EnvironmentConfig, project_dir: Path,
                               output: Path) -> StepSpec:
    """The explain step: SQLMesh's plan of `env` for the project in `project_dir`, written to `output`."""
    argv = ["python", "-m", "dagctl_dagster.runner.sqlmesh_explain", "--project-dir", str(project_dir),
            "--environment", env.sqlmesh_env, "--output", str(output)]
    if project.sqlmesh.gateway:
        argv += ["--gateway", project.sqlmesh.gateway]
    return build_declared_step(project, env, name="explain", argv=tuple(argv), working_dir=str(project_dir),
                               labels={"dagctl/project": project.name, "dagctl/environment": env.name})


def run_sqlmesh_explain(step: StepSpec, output: Path, *, work_dir: Path | None = None) -> SqlmeshChangeSet:
    """Runs the explain step as a guarded process with exactly the step's declared environment, streaming its
    lines into the run's logs, and returns the change set it wrote.

    Raises:
        DagctlPlanError: SQLMesh refused the plan (the message says why and what to do).
        DagctlStateLockedError: A process outside dagctl holds the DuckDB database.
        DagctlStepError: The step failed without a result.
    """
    # Behind the step guard like every step: its own process group, gone with the run worker.
    code, tail = stream_command_step(step, get_dagster_logger("dagctl").info, work_dir=work_dir)
    result: dict[str, Any] = json.loads(output.read_text()) if output.exists() else {}
    outcome = result.get("outcome")
    if outcome == "explained":
        return SqlmeshChangeSet.model_validate(result["change_set"])
    if outcome == "refused":
        raise DagctlPlanError(result["message"])
    if outcome == "locked":
        raise DagctlStateLockedError(result["message"])
    detail = result.get("message") or "\n".join(tail)
    raise DagctlStepError(f"SQLMesh's explain step exited with code {code}: {detail}")


def explain_sqlmesh_spec(
    runtime: PlanRuntime, project: ProjectConfig, env: EnvironmentConfig, *, plan_id: str,
    target_commit: str, base_commit: str | None, triggered_by: str, requested_by: str | None,
    now: datetime,
) -> PlanSpec:
    """The sealed `PlanSpec` of a SQLMesh project at `target_commit` for one environment.

    A commit whose unit tests fail gives a spec whose change set names them (`failed_tests`): `gate`
    records that plan as failed.
    """
    mirror = runtime.mirror(project)
    snapshot = mirror.export_snapshot(
        target_commit, runtime.snapshot_dir(project, target_commit), subdirectory=project.subdirectory)
    with tempfile.TemporaryDirectory(prefix="dagctl-explain-") as folder:
        output = Path(folder) / "change_set.json"
        change_set = run_sqlmesh_explain(build_sqlmesh_explain_step(project, env, snapshot, output), output)
    entries = mirror.diff(base_commit, target_commit, subdirectory=project.subdirectory)
    info = mirror.commit_info(target_commit)
    history = mirror.read_history(base_commit, target_commit)
    return seal_plan(PlanSpec(
        plan_id=plan_id,
        project=project.name,
        environment=env.name,
        framework=Framework.SQLMESH,
        base_commit=base_commit,
        target_commit=target_commit,
        triggered_by=triggered_by,
        author=requested_by or info.author_name,
        authors=tuple(CommitIdentity(name=name, email=email)
                      for name, email in history.identities),
        commit_message=info.message,
        commits_ahead=history.ahead,
        files=tuple(build_file_change(e.path, e.change_type, e.old_path) for e in entries),
        sqlmesh=change_set,
        created_at=now,
    ))


def build_sqlmesh_apply_argv(
    project: ProjectConfig, env: EnvironmentConfig, spec: PlanSpec, workdir: str
) -> tuple[str, ...]:
    """The verify-then-apply command line of an approved SQLMesh plan."""
    assert spec.sqlmesh is not None, "a SQLMesh plan always has a change set"
    argv = ["python", "-m", "dagctl_dagster.runner.sqlmesh_apply", "--project-dir", workdir,
            "--environment", env.sqlmesh_env, "--change-set-fingerprint", spec.sqlmesh.fingerprint,
            "--project", project.name]
    if project.sqlmesh.gateway:
        argv += ["--gateway", project.sqlmesh.gateway]
    return tuple(argv)


def build_sqlmesh_apply_step(project: ProjectConfig, env: EnvironmentConfig, spec: PlanSpec, workdir: str,
                             image: str | None, labels: dict[str, str]) -> StepSpec:
    """The execute step of an approved SQLMesh plan, with the environment `env` declares."""
    return build_declared_step(project, env, name="execute", argv=build_sqlmesh_apply_argv(
        project, env, spec, workdir), working_dir=workdir, image=image, labels=labels)


def run_sqlmesh_apply_step(context: OpExecutionContext, spec: PlanSpec, step: StepSpec,
                           **options: Any) -> Iterator[Any]:
    """Runs the apply step locally (`run_pipes_step(context, step, **options)`); each model's
    materialization carries what the execution evaluated next to what the plan showed at explain, and the
    run's log says both (SQLMesh re-evaluates the backfill when it applies: intervals came due since, or
    another environment built the same snapshots). A failure names what the step's exit code means."""
    assert spec.sqlmesh is not None, "a SQLMesh plan always has a change set"
    planned = {interval.model: interval for interval in spec.sqlmesh.backfills}
    evaluated: set[str] = set()
    try:
        yield from _with_backfill_shown(run_pipes_step(context, step, **options), planned, evaluated)
    except DagctlStepError as error:
        raise DagctlStepError(_apply_failure(spec, error)) from error
    shown = ", ".join(f"{i.model} [{i.start} - {i.end}]" for i in spec.sqlmesh.backfills) or "nothing"
    skipped = sorted(set(planned) - evaluated)
    context.log.info(
        f"The plan showed this backfill at explain: {shown}. Evaluated at execution: "
        f"{', '.join(sorted(evaluated)) or 'nothing'} (see the step's 'Backfilled at execution' line and "
        "each model's materialization for the intervals)."
        + (f" Not evaluated, already built or not due: {', '.join(skipped)}." if skipped else "")
    )


def _with_backfill_shown(events: Iterator[Any], planned: dict[str, Any], evaluated: set[str]) -> Iterator[Any]:
    for event in events:
        model = event.metadata.get("sqlmesh_model") if isinstance(event, AssetMaterialization) else None
        if model is None:
            yield event
            continue
        name = getattr(model, "value", model)
        evaluated.add(name)
        shown = planned.get(name)
        yield AssetMaterialization(asset_key=event.asset_key, description=event.description, metadata={
            **event.metadata, "planned_backfill": f"{shown.start} - {shown.end}" if shown else "none"})


# What each exit code of `runner.sqlmesh_apply` means, for the plan's failure reason (the step's own
# message, naming files and processes, is in the run's log).
_APPLY_EXITS = {
    1: "applying failed: a model or an audit failed, or the warehouse is unreachable (SQLMesh's message is in "
       "the run's log). Fix the model and push a new commit, or retry the plan if the failure was transient",
    2: "SQLMesh refused the plan (uncategorized changes, or it cannot load the project or build the plan); "
       "nothing was applied. Fix the project and push a new commit",
    3: "the plan is stale: another plan reached the SQLMesh environment, or the files differ from the approved "
       "commit; nothing was applied. Explain the change again and have the new plan approved",
    4: "a process outside dagctl holds DuckDB's single-writer lock on SQLMesh's database (the run's log names "
       "the file and the process); nothing was applied. Stop or wait for that process, then retry the plan "
       "(`dagctl plans retry {plan_id}`); to let environments work side by side, keep SQLMesh's state in "
       "Postgres (docs/sqlmesh.md)",
}


def _apply_failure(spec: PlanSpec, error: DagctlStepError) -> str:
    code = re.search(r"failed with code (\d+)", str(error))
    meaning = _APPLY_EXITS.get(int(code.group(1))) if code else None
    if meaning is None:
        return str(error)
    return f"SQLMesh's apply step exited with code {code.group(1)}: {meaning.format(plan_id=spec.plan_id)}"
