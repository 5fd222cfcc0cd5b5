"""SQLMesh plans: detect through SQLMesh's own plan, execute through the verify-then-apply entrypoint.

`detect` exports a snapshot of the pinned commit and asks SQLMesh (Python API, never a prompt, never an
apply) for the environment's plan against its state database. `execute` runs
`python -m dagctl_dagster.runner.sqlmesh_apply` on the same snapshot, which rebuilds the plan, compares its
fingerprint with the approved one and only then applies it: the same command line locally and in a pod.
"""

from __future__ import annotations

from datetime import datetime

from ..adapters.sqlmesh import explain_sqlmesh_plan
from ..core.config import EnvironmentConfig, ProjectConfig
from ..core.dbt_changes import build_file_change
from ..core.plan import CommitIdentity, Framework, PlanSpec, seal_plan
from .runtime import PlanRuntime


def explain_sqlmesh_spec(
    runtime: PlanRuntime, project: ProjectConfig, env: EnvironmentConfig, *, plan_id: str,
    target_commit: str, base_commit: str | None, triggered_by: str, requested_by: str | None,
    now: datetime,
) -> PlanSpec:
    """The sealed `PlanSpec` of a SQLMesh project at `target_commit` for one environment."""
    mirror = runtime.mirror(project)
    snapshot = mirror.export_snapshot(
        target_commit, runtime.snapshot_dir(project, target_commit), subdirectory=project.subdirectory)
    change_set = explain_sqlmesh_plan(snapshot, env.sqlmesh_env, gateway=project.sqlmesh.gateway)
    entries = mirror.diff(base_commit, target_commit, subdirectory=project.subdirectory)
    info = mirror.commit_info(target_commit)
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
                      for name, email in mirror.list_commit_identities(base_commit, target_commit)),
        commit_message=info.message,
        commits_ahead=mirror.commits_ahead(base_commit, target_commit) if base_commit else 0,
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
            "--environment", env.sqlmesh_env, "--fingerprint", spec.sqlmesh.fingerprint,
            "--project", project.name]
    if project.sqlmesh.gateway:
        argv += ["--gateway", project.sqlmesh.gateway]
    return tuple(argv)
