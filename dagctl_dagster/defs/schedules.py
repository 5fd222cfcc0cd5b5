"""Schedules: recurring framework commands on what an environment has deployed.

A schedule from the deployment config (`dbt build`, `sqlmesh run <env>`, `sqlmesh janitor`) only ever runs
the commit of the environment's last completed plan (dbt in a pod: its built image), never an unreviewed
branch head. With no deployment yet, the schedule skips and says why. Recurring runs carry the same
per-environment lock tag as plan executions, so they never overlap one.
"""

from dagster import (
    Config,
    DefaultScheduleStatus,
    Failure,
    OpExecutionContext,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    job,
    op,
    schedule,
)
from pydantic import Field

from ..core.config import EnvironmentConfig, KubernetesBackendConfig, ProjectConfig, ScheduleConfig
from ..core.errors import DagctlError
from ..core.lifecycle import PlanState, get_last_completed
from ..core.steps import StepSpec
from .execution import build_step_env_fields
from .local_backend import PlanDbtTranslator, run_command_step, run_dbt_step
from .runtime import PlanRuntime
from .store import read_plan_states
from .tags import plan_run_tags


class RecurringConfig(Config):
    """Which environment's deployment to run a recurring command on."""

    environment: str = Field(description="Environment whose deployed commit the command runs on.")
    command: str = Field(description="dbt_build, sqlmesh_run or sqlmesh_janitor.")


def build_recurring_argv(project: ProjectConfig, env: EnvironmentConfig, command: str) -> tuple[str, ...]:
    gateway = ("--gateway", project.sqlmesh.gateway) if project.sqlmesh.gateway else ()
    argvs = {
        "dbt_build": ("dbt", "build", "--target", env.dbt_target),
        "sqlmesh_run": ("sqlmesh", *gateway, "run", env.sqlmesh_env),
        "sqlmesh_janitor": ("sqlmesh", *gateway, "janitor"),
    }
    if command not in argvs:
        raise DagctlError(f"unknown recurring command '{command}' (known: {', '.join(argvs)})")
    return argvs[command]


def get_deployed(instance, project: ProjectConfig, env: EnvironmentConfig) -> PlanState | None:
    return get_last_completed(read_plan_states(instance, project.name, env.name).values())


RECURRING_JOB_SUFFIX = "_recurring_job"


def build_recurring_op(runtime: PlanRuntime):
    """The op of every project's recurring job; it finds its project from the job's name."""

    @op(name="run_recurring", out={})
    def run_recurring(context: OpExecutionContext, config: RecurringConfig):
        """Runs the command on the environment's deployed commit."""
        try:
            project = runtime.deployment.get_project(context.job_name.removesuffix(RECURRING_JOB_SUFFIX))
            env = project.get_environment(config.environment)
            deployed = get_deployed(context.instance, project, env)
            if deployed is None:
                raise DagctlError(f"environment '{env.name}' of project '{project.name}' has no completed "
                                  "plan yet: nothing reviewed to run")
            step = _step(context, project, env, deployed, build_recurring_argv(project, env, config.command))
        except DagctlError as exc:
            raise Failure(description=str(exc)) from exc
        context.log.info(f"running `{' '.join(step.argv)}` on deployed commit "
                         f"{deployed.spec.target_commit[:12]} (plan {deployed.plan_id})")
        backend = project.backend_for(env)
        if isinstance(backend, KubernetesBackendConfig):
            from .kubernetes_steps import run_step_in_pod

            checkout = None
            if project.framework == "sqlmesh":
                from ..adapters.kubernetes.specs import GitCheckout

                checkout = GitCheckout(runtime.repository_url(project), deployed.spec.target_commit,
                                       project.subdirectory)
            run_step_in_pod(context, step=step, backend=backend, checkout=checkout)
        elif step.argv[0] == "dbt":
            yield from run_dbt_step(context, step, translator=PlanDbtTranslator(project.name, env.name),
                                    target_path=runtime.run_dir(context.run_id) / "recurring")
        else:
            run_command_step(context, step, work_dir=runtime.run_dir(context.run_id) / "recurring")

    def _step(context, project: ProjectConfig, env: EnvironmentConfig, deployed: PlanState,
              argv: tuple[str, ...]) -> StepSpec:
        backend = project.backend_for(env)
        labels = {"dagctl/project": project.name, "dagctl/environment": env.name,
                  "dagctl/plan-id": deployed.plan_id}
        base_env = {"DAGCTL_PROJECT": project.name, "DAGCTL_ENVIRONMENT": env.name}
        if isinstance(backend, KubernetesBackendConfig):
            if project.framework == "dbt":
                return StepSpec(name="recurring", argv=argv, image=deployed.artifact, working_dir="/app",
                                labels=labels,
                                **build_step_env_fields(project, env, {**base_env, "DBT_PROFILES_DIR": "/app"}))
            from ..adapters.kubernetes.specs import GitCheckout

            checkout = GitCheckout(runtime.repository_url(project), deployed.spec.target_commit,
                                   project.subdirectory)
            return StepSpec(name="recurring", argv=argv, image=backend.runner_image,
                            working_dir=checkout.project_dir, labels=labels,
                            **build_step_env_fields(project, env, base_env))
        snapshot = runtime.mirror(project).export_snapshot(
            deployed.spec.target_commit, runtime.snapshot_dir(project, deployed.spec.target_commit),
            subdirectory=project.subdirectory)
        profiles = str(runtime.profiles_dir(project, snapshot))
        return StepSpec(name="recurring", argv=argv, working_dir=str(snapshot), labels=labels,
                        **build_step_env_fields(project, env, {**base_env, "DBT_PROFILES_DIR": profiles}))

    return run_recurring


def build_recurring_job(project: ProjectConfig, run_recurring):
    @job(name=f"{project.name}{RECURRING_JOB_SUFFIX}", tags=plan_run_tags(project.name),
         description=f"Recurring commands of '{project.name}' on what its environments have deployed.")
    def recurring_job():
        run_recurring()

    return recurring_job


def build_schedule(runtime: PlanRuntime, project: ProjectConfig, config: ScheduleConfig, recurring_job):
    env = project.get_environment(config.environment)

    @schedule(name=f"{project.name}_{config.name}_schedule", cron_schedule=config.cron, job=recurring_job,
              default_status=DefaultScheduleStatus.RUNNING,
              description=f"{config.command} on the deployed commit of {project.name}/{env.name}.")
    def recurring_schedule(context: ScheduleEvaluationContext):
        deployed = get_deployed(context.instance, project, env)
        if deployed is None:
            return SkipReason(f"{project.name}/{env.name} has no deployment yet (no completed plan): "
                              f"{config.command} only runs reviewed commits")
        return RunRequest(
            run_config={"ops": {"run_recurring": {"config": {"environment": env.name,
                                                             "command": config.command}}}},
            tags={**plan_run_tags(project.name, env.name), "dagctl/deployed-commit": deployed.spec.target_commit},
        )

    return recurring_schedule
