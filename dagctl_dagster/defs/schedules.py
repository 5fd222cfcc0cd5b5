"""Schedules: recurring framework commands on what an environment has deployed.

The recurring job of a project runs only what the deployment config declares: a launch names one of the
project's configured schedules (`schedule` in its run config), and that schedule's environment and command
are what runs. Anything else (a hand launch naming an environment or a command, or a schedule that is not
configured) is refused before any command runs. The command (`dbt build`, `sqlmesh run <env>`,
`sqlmesh janitor`) only ever runs the commit of the environment's last completed plan, resolved when the
run starts (and tagged `dagctl/deployed-commit` then), never an unreviewed branch head. With no deployment
yet, the schedule skips and says why. A schedule also skips a tick while a run of it is still queued or
running, so a slow run never piles up others. Recurring runs carry the same per-environment lock tag as
plan executions, so they never overlap one.
"""

from dagster import (
    Config,
    DagsterRunStatus,
    DefaultScheduleStatus,
    Failure,
    OpExecutionContext,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    job,
    op,
    schedule,
)
from pydantic import Field

from ..core.config import EnvironmentConfig, KubernetesBackendConfig, ProjectConfig, ScheduleConfig
from ..core.errors import DagctlError
from ..core.lifecycle import PlanState
from ..core.steps import StepSpec
from .local_backend import run_command_step
from .runtime import PlanRuntime
from .sqlmesh_plans import build_declared_step
from .store import read_plan_index
from .tags import plan_run_tags

SCHEDULE_TAG = "dagctl/schedule"
DEPLOYED_COMMIT_TAG = "dagctl/deployed-commit"
_ACTIVE = [DagsterRunStatus.QUEUED, DagsterRunStatus.NOT_STARTED, DagsterRunStatus.STARTING,
           DagsterRunStatus.STARTED]


class RecurringConfig(Config):
    """Which configured schedule to run (launchpad: `ops: run_recurring: config: schedule: nightly`)."""

    schedule: str = Field(default="", description="Name of a schedule of this project in the deployment "
                                                  "config; its environment and command are what runs.")
    environment: str = Field(default="", description="Optional: must be the schedule's environment.")
    command: str = Field(default="", description="Optional: must be the schedule's command.")


def build_recurring_argv(project: ProjectConfig, env: EnvironmentConfig, command: str,
                         project_dir: str) -> tuple[str, ...]:
    gateway = ("--gateway", project.sqlmesh.gateway) if project.sqlmesh.gateway else ()
    runner = ("python", "-m", "dagctl_dagster.runner.sqlmesh_recurring")
    argvs = {
        "dbt_build": ("dbt", "build", "--target", env.dbt_target),
        "sqlmesh_run": (*runner, "run", "--environment", env.sqlmesh_env, "--project-dir", project_dir, *gateway),
        "sqlmesh_janitor": (*runner, "janitor", "--project-dir", project_dir, *gateway),
    }
    if command not in argvs:
        raise DagctlError(f"unknown recurring command '{command}' (known: {', '.join(argvs)})")
    return argvs[command]


def get_deployed(instance, project: ProjectConfig, env: EnvironmentConfig) -> PlanState | None:
    return read_plan_index(instance, project.name, env.name).last_completed


def get_configured_schedule(project: ProjectConfig, config: RecurringConfig) -> ScheduleConfig:
    """The configured schedule a launch names, or a refusal that lists the configured ones."""
    configured = "; ".join(f"{s.name} ({s.command} on {s.environment})" for s in project.schedules) or "none"
    found = next((s for s in project.schedules if s.name == config.schedule), None)
    if found is None:
        asked = (f"schedule '{config.schedule}'" if config.schedule else
                 f"environment '{config.environment or '-'}' and command '{config.command or '-'}'")
        raise DagctlError(
            f"project '{project.name}' has no configured schedule for {asked}: its recurring job runs only "
            f"the schedules of the deployment config. Configured: {configured}. Launch with "
            "`ops: run_recurring: config: schedule: <name>`, or add a schedule to the deployment config; "
            "nothing was run")
    mismatched = [f"{field} '{asked}' (the schedule's is '{own}')"
                  for field, asked, own in (("environment", config.environment, found.environment),
                                            ("command", config.command, found.command))
                  if asked and asked != own]
    if mismatched:
        raise DagctlError(f"schedule '{found.name}' of project '{project.name}' does not run "
                          f"{' and '.join(mismatched)}. Configured: {configured}; nothing was run")
    return found


RECURRING_JOB_SUFFIX = "_recurring_job"


def build_recurring_op(runtime: PlanRuntime):
    """The op of every project's recurring job; it finds its project from the job's name."""

    @op(name="run_recurring", out={})
    def run_recurring(context: OpExecutionContext, config: RecurringConfig):
        """Runs a configured schedule's command on its environment's deployed commit."""
        try:
            project = runtime.deployment.get_project(context.job_name.removesuffix(RECURRING_JOB_SUFFIX))
            configured = get_configured_schedule(project, config)
            env = project.get_environment(configured.environment)
            # Resolved now, when the run starts: a plan may have deployed another commit while it was queued.
            deployed = get_deployed(context.instance, project, env)
            if deployed is None:
                raise DagctlError(f"environment '{env.name}' of project '{project.name}' has no completed "
                                  "plan yet: nothing reviewed to run")
            step = _step(project, env, deployed, configured.command)
        except DagctlError as exc:
            context.log.error(str(exc))
            raise Failure(description=str(exc)) from exc
        commit = deployed.spec.target_commit
        context.instance.add_run_tags(context.run_id, {DEPLOYED_COMMIT_TAG: commit})
        context.log.info(f"schedule {configured.name}: running `{' '.join(step.argv)}` on deployed commit "
                         f"{commit[:12]} (plan {deployed.plan_id})")
        backend = project.backend_for(env)
        if isinstance(backend, KubernetesBackendConfig):
            from .kubernetes_steps import run_step_in_pod

            checkout = None
            if project.framework == "sqlmesh":
                from ..adapters.kubernetes.specs import GitCheckout

                checkout = GitCheckout(runtime.repository_url(project), commit, project.subdirectory)
            run_step_in_pod(context, step=step, backend=backend, checkout=checkout)
        elif step.argv[0] == "dbt":
            from .dbt_steps import PlanDbtTranslator, run_dbt_step  # dagster-dbt: loaded only to run dbt

            yield from run_dbt_step(context, step, translator=PlanDbtTranslator(project.name, env.name),
                                    target_path=runtime.run_dir(context.run_id) / "recurring")
        else:
            run_command_step(context, step, work_dir=runtime.run_dir(context.run_id) / "recurring")

    def _step(project: ProjectConfig, env: EnvironmentConfig, deployed: PlanState, command: str) -> StepSpec:
        backend = project.backend_for(env)
        labels = {"dagctl/project": project.name, "dagctl/environment": env.name,
                  "dagctl/plan-id": deployed.plan_id}
        if isinstance(backend, KubernetesBackendConfig):
            if project.framework == "dbt":
                return build_declared_step(project, env, name="recurring",
                                           argv=build_recurring_argv(project, env, command, "/app"),
                                           image=deployed.artifact, working_dir="/app",
                                           env_vars={"DBT_PROFILES_DIR": "/app"}, labels=labels)
            from ..adapters.kubernetes.specs import GitCheckout

            checkout = GitCheckout(runtime.repository_url(project), deployed.spec.target_commit,
                                   project.subdirectory)
            return build_declared_step(project, env, name="recurring", image=backend.runner_image,
                                       argv=build_recurring_argv(project, env, command, checkout.project_dir),
                                       working_dir=checkout.project_dir, labels=labels)
        snapshot = runtime.mirror(project).export_snapshot(
            deployed.spec.target_commit, runtime.snapshot_dir(project, deployed.spec.target_commit),
            subdirectory=project.subdirectory)
        profiles = str(runtime.profiles_dir(project, snapshot))
        return build_declared_step(project, env, name="recurring",
                                   argv=build_recurring_argv(project, env, command, str(snapshot)),
                                   working_dir=str(snapshot), env_vars={"DBT_PROFILES_DIR": profiles},
                                   labels=labels)

    return run_recurring


def build_recurring_job(project: ProjectConfig, run_recurring):
    @job(name=f"{project.name}{RECURRING_JOB_SUFFIX}", tags=plan_run_tags(project.name),
         description=f"Recurring commands of '{project.name}' on what its environments have deployed.")
    def recurring_job():
        run_recurring()

    return recurring_job


def build_schedule(runtime: PlanRuntime, project: ProjectConfig, config: ScheduleConfig, recurring_job):
    env = project.get_environment(config.environment)
    schedule_tag = f"{project.name}.{config.name}"

    @schedule(name=f"{project.name}_{config.name}_schedule", cron_schedule=config.cron, job=recurring_job,
              default_status=DefaultScheduleStatus.RUNNING,
              description=f"{config.command} on the deployed commit of {project.name}/{env.name}.")
    def recurring_schedule(context: ScheduleEvaluationContext):
        deployed = get_deployed(context.instance, project, env)
        if deployed is None:
            return SkipReason(f"{project.name}/{env.name} has no deployment yet (no completed plan): "
                              f"{config.command} only runs reviewed commits")
        active = context.instance.get_run_records(
            RunsFilter(job_name=recurring_job.name, statuses=_ACTIVE, tags={SCHEDULE_TAG: schedule_tag}), limit=1)
        if active:
            run = active[0].dagster_run
            state = "running" if run.status in (DagsterRunStatus.STARTING, DagsterRunStatus.STARTED) else "queued"
            return SkipReason(f"run {run.run_id} of schedule {config.name} is still {state}: "
                              "this tick is skipped so that runs do not pile up (the next tick runs if it "
                              "has finished)")
        # No deployed commit tag here: the run resolves it when it starts and tags it then.
        return RunRequest(
            run_config={"ops": {"run_recurring": {"config": {"schedule": config.name}}}},
            tags={**plan_run_tags(project.name, env.name), SCHEDULE_TAG: schedule_tag},
        )

    return recurring_schedule
