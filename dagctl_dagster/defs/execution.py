"""`build` and `execute` on the configured backend.

Both phases are expressed as `StepSpec` values first (the same argv everywhere), then handed to the
backend: the local backend (snapshots on disk, dbt through dagster-dbt, other steps as dagster-pipes
subprocesses) or the Kubernetes backend (Kaniko and pods through dagster-k8s). Every step's environment
is what the deployment config declares for its environment (`build_step_env_fields`), nothing else.
Each local `build` also deletes the snapshots no plan needs any more (`clean_snapshots`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, OpExecutionContext

from ..core.config import EnvironmentConfig, KubernetesBackendConfig, ProjectConfig
from ..core.errors import DagctlStepError
from ..core.lifecycle import EventKind, PlanEvent, PlanStatus, get_last_completed
from ..core.plan import Framework, PlanSpec, build_plan_id
from ..core.policy import SYSTEM_ACTOR
from ..core.steps import StepSpec
from .local_backend import run_pipes_step, stop_run_steps
from .runtime import PlanRuntime, project_env
from .store import get_plan_state, read_plan_states

SNAPSHOT_PREFIX = "snapshot:"


def plan_labels(spec: PlanSpec) -> dict[str, str]:
    return {"dagctl/project": spec.project, "dagctl/environment": spec.environment,
            "dagctl/plan-id": spec.plan_id}


def build_artifact(context: OpExecutionContext, runtime: PlanRuntime, project: ProjectConfig,
                   spec: PlanSpec) -> str:
    """Builds and records the plan's artifact: `snapshot:<path>#<tree id>` locally, `image@sha256:...`."""
    env = project.get_environment(spec.environment)
    backend = project.backend_for(env)
    if isinstance(backend, KubernetesBackendConfig) and spec.framework is Framework.DBT:
        from .kubernetes_steps import build_image_with_kaniko

        artifact = build_image_with_kaniko(
            context, project=project, backend=backend, commit=spec.target_commit,
            version=spec.version_new or "0", plan_id=spec.plan_id, environment=spec.environment,
        )
    elif isinstance(backend, KubernetesBackendConfig):
        # SQLMesh builds no image: its pod runs the runner image on a checkout of the pinned commit.
        artifact = f"{backend.runner_image}#{spec.target_commit}"
    else:
        mirror = runtime.mirror(project)
        snapshot = mirror.export_snapshot(
            spec.target_commit, runtime.snapshot_dir(project, spec.target_commit),
            subdirectory=project.subdirectory,
        )
        tree = mirror.tree_id(spec.target_commit, project.subdirectory)
        context.log.info(f"snapshot of {spec.target_commit[:12]} at {snapshot} (content hash {tree})")
        artifact = f"{SNAPSHOT_PREFIX}{snapshot}#{tree}"
        removed = clean_snapshots(context.instance, runtime, project)
        if removed:
            context.log.info(f"removed {len(removed)} snapshot(s) no plan needs any more: "
                             + ", ".join(commit[:12] for commit in removed))
    runtime.record(context, PlanEvent(
        plan_id=spec.plan_id, kind=EventKind.BUILT, at=runtime.clock(), actor=SYSTEM_ACTOR,
        artifact=artifact, run_id=context.run_id, reason="artifact built"))
    return artifact


# Plans whose snapshot stays on disk: they may still be explained, built or executed.
SNAPSHOT_KEEPING_STATUSES = frozenset({
    PlanStatus.EXPLAINING, PlanStatus.PENDING, PlanStatus.APPROVED, PlanStatus.RUNNING})


def clean_snapshots(instance: DagsterInstance, runtime: PlanRuntime, project: ProjectConfig) -> list[str]:
    """Deletes the project's snapshots (`storage_dir/snapshots/<project>/<commit>`) that no plan needs.

    Kept: the target commits of plans that are explaining, pending, approved or running, and of each
    environment's deployed plan (its last completed one, which schedules run on). Deleted: the snapshots
    of commits whose plans are all finished otherwise (completed and since replaced, failed, rejected,
    cancelled; a retry exports its snapshot again). A folder that is no recorded plan's commit is left
    alone: a plan being explained right now may be writing it. Returns the deleted commits.

    Example: called by `build` on the local backend, after the plan's own snapshot is made.
    """
    kept: set[str] = set()
    known: set[str] = set()
    for env in project.environments:
        states = list(read_plan_states(instance, project.name, env.name).values())
        known |= {state.spec.target_commit for state in states}
        kept |= {state.spec.target_commit for state in states if state.status in SNAPSHOT_KEEPING_STATUSES}
        deployed = get_last_completed(states)
        if deployed is not None:
            kept.add(deployed.spec.target_commit)
    folder = runtime.snapshot_dir(project, "-").parent
    removed = []
    for snapshot in sorted(folder.iterdir()) if folder.is_dir() else []:
        if snapshot.name in known and snapshot.name not in kept:
            shutil.rmtree(snapshot, ignore_errors=True)
            removed.append(snapshot.name)
    return removed


def stop_run_steps_of(runtime: PlanRuntime, plan_id: str, run_id: str) -> list[str]:
    """Stops what a dead run of `plan_id` left running: its local step processes, or its step pods.

    Returns the names of what was still running. The run failure sensor calls it before it records the
    plan `failed`, so a failed plan never has work still running behind it.
    """
    project, env = project_env(runtime, plan_id)
    backend = project.backend_for(env)
    if isinstance(backend, KubernetesBackendConfig):
        from .kubernetes_steps import delete_run_pods

        return delete_run_pods(backend, plan_id=plan_id, run_id=run_id, api_client=_cluster_client(runtime))
    return stop_run_steps(runtime.run_dir(run_id))


def stop_explain_pods_of(runtime: PlanRuntime, project: ProjectConfig, run_id: str) -> list[str]:
    """Deletes the dbt parse pods a dead explaining run of `project` left (its plan was never recorded, so
    only the run id knows it: an explaining run's plan id is derived from it); returns their names. Local
    parse processes die with their run worker (the step guard), so only the Kubernetes backend has any."""
    stopped: list[str] = []
    for env in project.environments:
        backend = project.backend_for(env)
        if isinstance(backend, KubernetesBackendConfig):
            from .kubernetes_steps import delete_run_pods

            stopped += delete_run_pods(backend, plan_id=build_plan_id(project.name, env.name, run_id),
                                       run_id=run_id, api_client=_cluster_client(runtime))
    return stopped


def _cluster_client(runtime: PlanRuntime):
    return runtime.kubernetes_client() if runtime.kubernetes_client is not None else None


def snapshot_path(artifact: str) -> Path:
    if not artifact.startswith(SNAPSHOT_PREFIX):
        raise DagctlStepError(f"artifact '{artifact}' is not a local snapshot")
    return Path(artifact[len(SNAPSHOT_PREFIX):].split("#", 1)[0])


def build_checkout(runtime: PlanRuntime, project: ProjectConfig, spec: PlanSpec):
    """The pinned commit fetched into a pod by init containers (SQLMesh in a cluster has no image)."""
    from ..adapters.kubernetes.specs import GitCheckout

    return GitCheckout(runtime.repository_url(project), spec.target_commit, project.subdirectory)


def build_step_env_fields(project: ProjectConfig, env: EnvironmentConfig,
                          technical: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The `env`, `pass_env` and `secret_env` of a `StepSpec` of environment `env`: what the deployment
    config declares for it (`project.step_env_for(env)`), plus `technical` variables of our own
    (`DAGCTL_PROJECT`, `DBT_PROFILES_DIR`...), which win over a declared value of the same name.

    Every step of every backend (explain, execute, schedules) builds its spec this way: a step gets
    nothing else, and a dev step never sees what only prod declares.

    Example: `StepSpec(name="recurring", argv=argv, **build_step_env_fields(project, env, {"A": "1"}))`.
    """
    declared = project.step_env_for(env)
    return {"env": {**declared.env, **(technical or {})}, "pass_env": declared.pass_env,
            "secret_env": declared.secret_env}


def build_execute_steps(runtime: PlanRuntime, project: ProjectConfig, spec: PlanSpec,
                        artifact: str) -> list[StepSpec]:
    """The steps `execute` runs: one per dbt command, or SQLMesh's verify-then-apply entrypoint."""
    env = project.get_environment(spec.environment)
    backend = project.backend_for(env)
    in_cluster = isinstance(backend, KubernetesBackendConfig)
    if not in_cluster:
        workdir = str(snapshot_path(artifact))
    elif spec.framework is Framework.DBT:
        workdir = "/app"  # the built image holds the project there
    else:
        workdir = build_checkout(runtime, project, spec).project_dir
    image = artifact if in_cluster and spec.framework is Framework.DBT else (
        backend.runner_image if in_cluster else None)
    base_env = {"DAGCTL_PROJECT": project.name, "DAGCTL_ENVIRONMENT": env.name}
    if spec.framework is Framework.DBT:
        profiles = "/app" if in_cluster else str(runtime.profiles_dir(project, Path(workdir)))
        fields = build_step_env_fields(project, env, {**base_env, "DBT_PROFILES_DIR": profiles})
        return [
            StepSpec(name=f"execute-{index}", argv=argv, image=image, working_dir=workdir,
                     labels=plan_labels(spec), **fields)
            for index, argv in enumerate(spec.commands)
        ]
    from .sqlmesh_plans import build_sqlmesh_apply_step

    return [build_sqlmesh_apply_step(project, env, spec, workdir, image, plan_labels(spec))]


def execute_plan(context: OpExecutionContext, runtime: PlanRuntime, project: ProjectConfig,
                 spec: PlanSpec, artifact: str) -> Iterator[Any]:
    """Runs the plan's steps on its backend, yielding the Dagster events they produce."""
    env = project.get_environment(spec.environment)
    backend = project.backend_for(env)
    if spec.framework is Framework.DBT and get_plan_state(context.instance, spec.plan_id).retries:
        # dbt's `retry` would resume from the failed attempt's run_results.json, but an attempt killed
        # with its run worker never writes one: every attempt runs the whole approved selection.
        context.log.warning(f"retry of plan {spec.plan_id}: dbt runs every node of the approved commands "
                            "again, including those the failed attempt already built")
    for step in build_execute_steps(runtime, project, spec, artifact):
        context.log.info(f"running {step.name}: {' '.join(step.argv)}")
        if isinstance(backend, KubernetesBackendConfig):
            from .kubernetes_steps import run_step_in_pod

            checkout = build_checkout(runtime, project, spec) if spec.framework is Framework.SQLMESH else None
            run_step_in_pod(context, step=step, backend=backend, checkout=checkout)
        elif step.argv[0] == "dbt":
            from .dbt_steps import PlanDbtTranslator, run_dbt_step  # dagster-dbt: loaded only to run dbt

            yield from run_dbt_step(
                context, step, translator=PlanDbtTranslator(project.name, env.name),
                target_path=runtime.run_dir(context.run_id) / step.name,
            )
        elif spec.framework is Framework.SQLMESH:
            from .sqlmesh_plans import run_sqlmesh_apply_step

            yield from run_sqlmesh_apply_step(context, spec, step,
                                              work_dir=runtime.run_dir(context.run_id) / step.name)
        else:
            yield from run_pipes_step(context, step, work_dir=runtime.run_dir(context.run_id) / step.name)
