"""The pod ops (`build_image_with_kaniko`, `run_step_in_pod`) in real Dagster runs, against a faked cluster.

Only the Kubernetes API objects are fake (`FakeCluster` stands in for BatchV1Api and CoreV1Api under a real
dagster-k8s `DagsterKubernetesClient`); the clock moves only when the code sleeps. Each scenario is a
real job run (`execute_in_process` on a test instance), so what a user sees is what is asserted: the run
log, the asset materializations, the step failure's message, and what is left in the cluster.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance, instance_for_test, job, op
from k8s_testing import (
    COMMIT,
    DIGEST,
    PLAN_ID,
    ContainerScript,
    FakeClock,
    FakeCluster,
    assert_valid_manifest,
    materialization_line,
    pipes_line,
)

from dagctl_dagster.adapters.kubernetes.client import load_kubernetes_config
from dagctl_dagster.core.config import ProjectConfig
from dagctl_dagster.core.errors import DagctlConfigError
from dagctl_dagster.core.kubernetes_config import KubernetesBackendConfig
from dagctl_dagster.core.steps import StepSpec
from dagctl_dagster.defs.kubernetes_steps import build_image_with_kaniko, run_step_in_pod

Factory = Callable[..., Any]
IMAGE = "ghcr.io/acme/jaffle"


class RunOutcome:
    """A finished run: its result and everything the instance recorded for it."""

    def __init__(self, result: Any, records: list[Any]):
        self.result = result
        self.logs = [record.user_message for record in records]
        self.materialized = [record.dagster_event.asset_key for record in records
                             if record.dagster_event and record.dagster_event.is_step_materialization]

    @property
    def error(self) -> str:
        failure = self.result.failure_data_for_node("step")
        assert failure is not None, "the step did not fail"
        error = failure.error.cause or failure.error
        return error.message.strip()

    def logged(self, text: str) -> bool:
        return any(text in line for line in self.logs)


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def run_op(instance: DagsterInstance) -> Callable[[Callable[..., Any]], RunOutcome]:
    """Runs a function of the op context as the only op of a job; returns what the run recorded."""

    def run(body: Callable[..., Any]) -> RunOutcome:
        @op
        def step(context):  # noqa: ANN001 - Dagster refuses a string annotation for `context`
            return body(context)

        @job
        def plan() -> None:
            step()

        result = plan.execute_in_process(instance=instance, raise_on_error=False)
        return RunOutcome(result, list(instance.all_logs(result.run_id)))

    return run


def kaniko_containers(*, kaniko_exit: int = 0, kaniko_message: str | None = DIGEST, fetch_exit: int = 0,
                      kaniko_ends_at: float | None = 30.0) -> list[ContainerScript]:
    return [
        ContainerScript("git-init", init=True, starts_at=1, ends_at=2),
        ContainerScript("git-fetch", init=True, starts_at=2, ends_at=4, exit_code=fetch_exit,
                        lines=["git@github.com: Permission denied (publickey).",
                               "fatal: Could not read from remote repository."] if fetch_exit else []),
        ContainerScript("git-checkout", init=True, starts_at=4, ends_at=5),
        ContainerScript("dockerfile", init=True, starts_at=5, ends_at=6, lines=["building with Dockerfile"]),
        ContainerScript("kaniko", starts_at=8, ends_at=kaniko_ends_at, exit_code=kaniko_exit, message=kaniko_message,
                        lines=["INFO[0000] Retrieving image manifest ghcr.io/acme/dagctl-dagster:0.1.0",
                               "INFO[0012] RUN dbt deps",
                               *([f"INFO[0020] Pushed {IMAGE}@{DIGEST}"] if kaniko_exit == 0 else
                                 ["error building image: error building stage: RUN dbt deps: exit status 2"])]),
    ]


def build(run_op: Callable, project: ProjectConfig, cluster: FakeCluster) -> RunOutcome:
    return run_op(lambda context: build_image_with_kaniko(
        context, project=project, backend=project.backend, commit=COMMIT, version="3", plan_id=PLAN_ID,
        environment="prod", api_client=cluster.client(),
    ))


# --- Kaniko builds ---------------------------------------------------------------------------------------


def test_build_returns_the_pushed_digest_streams_logs_and_deletes_the_job(
    run_op: Callable, make_project: Factory) -> None:
    project = make_project()
    cluster = FakeCluster(FakeClock(), kaniko_containers())
    outcome = build(run_op, project, cluster)

    assert outcome.result.success
    assert outcome.result.output_for_node("step") == f"{IMAGE}@{DIGEST}"
    assert len(cluster.created_jobs) == 1
    assert_valid_manifest(cluster.created_jobs[0])
    assert outcome.logged("[kaniko] INFO[0012] RUN dbt deps")
    assert outcome.logged("[dockerfile] building with Dockerfile")
    assert sum("[kaniko] INFO[0020] Pushed" in line for line in outcome.logs) == 1  # followed, then caught up
    job_name = cluster.created_jobs[0]["metadata"]["name"]
    assert cluster.deleted == [("job", job_name), ("pod", f"{job_name}-x7k2p")]


def test_failed_build_reports_the_reason_and_last_lines_and_keeps_the_job(
    run_op: Callable, make_project: Factory) -> None:
    cluster = FakeCluster(FakeClock(), kaniko_containers(kaniko_exit=1, kaniko_message="error building image"))
    outcome = build(run_op, make_project(), cluster)

    assert not outcome.result.success
    assert f"Kaniko build of {IMAGE}:3-{COMMIT[:12]} failed" in outcome.error
    assert "pod phase Failed; " in outcome.error
    assert "container 'kaniko' terminated: Error, exit code 1: error building image" in outcome.error
    assert "last 3 log lines of 'kaniko':\n" in outcome.error
    assert outcome.error.endswith("RUN dbt deps: exit status 2")
    assert cluster.deleted == []
    assert outcome.logged("kept job analytics/dagctl-build-")


def test_failed_build_is_deleted_when_failed_jobs_are_not_kept(
    run_op: Callable, make_backend: Factory, make_project: Factory) -> None:
    cluster = FakeCluster(FakeClock(), kaniko_containers(kaniko_exit=1))
    outcome = build(run_op, make_project(backend=make_backend(keep_failed_jobs=False)), cluster)

    assert not outcome.result.success
    assert [kind for kind, _ in cluster.deleted] == ["job", "pod"]


def test_failed_checkout_names_the_init_container_and_its_output(
    run_op: Callable, make_project: Factory) -> None:
    cluster = FakeCluster(FakeClock(), kaniko_containers(fetch_exit=128))
    outcome = build(run_op, make_project(), cluster)

    assert "init container 'git-fetch' terminated: Error, exit code 128" in outcome.error
    assert "last 2 log lines of 'git-fetch':\ngit@github.com: Permission denied (publickey)." in outcome.error
    assert not any(request["container"] == "kaniko" for request in cluster.log_requests)


def test_build_that_never_gets_scheduled_times_out_and_is_deleted(
    run_op: Callable, make_backend: Factory, make_project: Factory) -> None:
    clock = FakeClock()
    cluster = FakeCluster(clock, kaniko_containers(), scheduled=False)
    outcome = build(run_op, make_project(backend=make_backend(timeout_seconds=60, poll_interval_seconds=5)), cluster)

    assert "timed out after 60s" in outcome.error
    assert "pod phase Pending" in outcome.error
    assert 60 < clock.slept <= 70
    assert [kind for kind, _ in cluster.deleted] == ["job", "pod"]  # kept jobs are only ones that failed


def test_build_without_a_digest_in_the_termination_message_fails(
    run_op: Callable, make_project: Factory) -> None:
    outcome = build(run_op, make_project(), FakeCluster(FakeClock(), kaniko_containers(kaniko_message="")))

    assert "Kaniko finished without reporting the pushed image digest" in outcome.error


# --- step pods -------------------------------------------------------------------------------------------

DBT_OUTPUT = ["Running with dbt=1.11.2", "1 of 2 OK created sql view model main.stg_orders",
              "2 of 2 OK created sql table model main.orders"]


def step_container(lines: list[str], *, exit_code: int = 0, ends_at: float | None = 20.0,
                   waiting: str | None = None) -> list[ContainerScript]:
    return [ContainerScript("dagctl-step", starts_at=3, ends_at=ends_at, exit_code=exit_code, lines=lines,
                            waiting=waiting, message="dbt failed" if exit_code else None)]


def pipes_run(*models: str) -> list[str]:
    return [pipes_line("opened", {"extras": {}}), DBT_OUTPUT[0],
            *[materialization_line(f"jaffle/prod/{model}", f"model.jaffle.{model}") for model in models],
            *DBT_OUTPUT[1:1 + len(models)]]


def execute(run_op: Callable, step: StepSpec, backend: KubernetesBackendConfig, cluster: FakeCluster) -> RunOutcome:
    return run_op(lambda context: run_step_in_pod(context, step=step, backend=backend, api_client=cluster.client()))


def test_step_reports_each_model_as_a_materialization_and_streams_output(
    run_op: Callable, make_backend: Factory, make_step: Factory) -> None:
    lines = [*pipes_run("stg_orders", "orders"), pipes_line("closed", {})]
    cluster = FakeCluster(FakeClock(), step_container(lines))
    outcome = execute(run_op, make_step(), make_backend(), cluster)

    assert outcome.result.success
    assert outcome.materialized == [AssetKey(["jaffle", "prod", "stg_orders"]), AssetKey(["jaffle", "prod", "orders"])]
    assert outcome.logged("[execute-0] 2 of 2 OK created sql table model main.orders")
    assert not outcome.logged("__dagster_pipes_version")  # pipes messages are handled, not echoed
    assert cluster.deleted == [("pod", cluster.created_pods[0]["metadata"]["name"])]


def test_the_pod_sent_is_a_valid_pod_with_the_pipes_bootstrap_and_plan_labels(
    run_op: Callable, make_backend: Factory, make_step: Factory
) -> None:
    backend = make_backend(resources={"requests": {"cpu": "1"}}, env_from_secrets=["warehouse"],
                           secret_env=[{"env": "DBT_PASSWORD", "secret": "warehouse", "key": "password"}])
    cluster = FakeCluster(FakeClock(), step_container([pipes_line("opened", {"extras": {}})]))
    execute(run_op, make_step(), backend, cluster)

    pod = cluster.created_pods[0]
    assert_valid_manifest(pod)
    main = pod["spec"]["containers"][0]
    assert main["command"][:4] == ["python", "-P", "-m", "dagctl_dagster.runner.dbt_pipes"]
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES", "DBT_PASSWORD"} <= {e["name"] for e in main["env"]}
    assert {key: pod["metadata"]["labels"][key] for key in ("dagctl/project", "dagctl/environment", "dagctl/plan-id")} \
        == {"dagctl/project": "jaffle", "dagctl/environment": "prod", "dagctl/plan-id": PLAN_ID}


def test_failed_step_keeps_partial_results_reports_reason_and_last_lines(
    run_op: Callable, make_backend: Factory, make_step: Factory) -> None:
    lines = [*pipes_run("stg_orders"), "Database Error in model orders (models/marts/orders.sql)",
             "  Binder Error: column amount_cents not found", pipes_line("closed", {})]
    cluster = FakeCluster(FakeClock(), step_container(lines, exit_code=1))
    outcome = execute(run_op, make_step(), make_backend(), cluster)

    assert not outcome.result.success
    assert outcome.materialized == [AssetKey(["jaffle", "prod", "stg_orders"])]
    assert "step 'execute-0' failed (pod analytics/dagctl-jaffle-prod-3f2a9c1d-execute-0-" in outcome.error
    assert "container 'dagctl-step' terminated: Error, exit code 1: dbt failed" in outcome.error
    assert "log lines of 'dagctl-step':\nRunning with dbt=1.11.2\n" in outcome.error
    assert outcome.error.endswith("Binder Error: column amount_cents not found")
    assert "__dagster_pipes_version" not in outcome.error
    assert cluster.deleted == []


def test_step_whose_image_cannot_be_pulled_fails_with_the_reason_and_is_deleted(
    run_op: Callable, make_backend: Factory, make_step: Factory
) -> None:
    cluster = FakeCluster(FakeClock(), step_container([], waiting="ErrImagePull"))
    outcome = execute(run_op, make_step(), make_backend(), cluster)

    assert "container 'dagctl-step' waiting: ErrImagePull" in outcome.error
    assert "log lines" not in outcome.error
    assert [kind for kind, _ in cluster.deleted] == ["pod"]


def test_step_running_past_its_timeout_is_stopped_and_deleted(
    run_op: Callable, make_backend: Factory, make_step: Factory) -> None:
    clock = FakeClock()
    cluster = FakeCluster(clock, step_container(pipes_run("stg_orders"), ends_at=None))
    outcome = execute(run_op, make_step(), make_backend(timeout_seconds=120, poll_interval_seconds=10), cluster)

    assert "step 'execute-0' timed out after 120s" in outcome.error
    assert "container 'dagctl-step' running" in outcome.error
    assert outcome.materialized == [AssetKey(["jaffle", "prod", "stg_orders"])]
    assert 120 < clock.slept <= 130
    assert [kind for kind, _ in cluster.deleted] == ["pod"]


def test_a_broken_log_stream_is_caught_up_without_losing_or_repeating_anything(
    run_op: Callable, make_backend: Factory, make_step: Factory
) -> None:
    lines = [*pipes_run("stg_orders", "orders"), pipes_line("closed", {})]
    cluster = FakeCluster(FakeClock(), step_container(lines), break_follow_after=2)
    outcome = execute(run_op, make_step(), make_backend(), cluster)

    assert outcome.result.success
    assert outcome.logged("log stream interrupted")
    assert outcome.materialized == [AssetKey(["jaffle", "prod", "stg_orders"]), AssetKey(["jaffle", "prod", "orders"])]
    assert sum("[execute-0] Running with dbt=1.11.2" in line for line in outcome.logs) == 1
    assert outcome.logged("[execute-0] 2 of 2 OK created sql table model main.orders")


def test_a_broken_log_stream_of_lines_sharing_one_timestamp_is_caught_up_without_loss(
    run_op: Callable, make_backend: Factory, make_step: Factory
) -> None:
    lines = [*pipes_run("stg_orders", "orders"), pipes_line("closed", {})]
    container = step_container(lines)[0]
    container.same_stamp = True
    cluster = FakeCluster(FakeClock(), [container], break_follow_after=2)
    outcome = execute(run_op, make_step(), make_backend(), cluster)

    assert outcome.result.success
    assert outcome.materialized == [AssetKey(["jaffle", "prod", "stg_orders"]), AssetKey(["jaffle", "prod", "orders"])]
    assert sum("[execute-0] Running with dbt=1.11.2" in line for line in outcome.logs) == 1
    assert outcome.logged("[execute-0] 2 of 2 OK created sql table model main.orders")


def test_sqlmesh_step_failure_carries_the_runner_outcome(
    run_op: Callable, make_backend: Factory, make_step: Factory) -> None:
    lines = [pipes_line("opened", {"extras": {}}),
             pipes_line("report_custom_message",
                        {"payload": {"outcome": "stale", "message": "another plan was applied"}}),
             "plan is stale: nothing was applied"]
    step = make_step(argv=("python", "-m", "dagctl_dagster.runner.sqlmesh_apply", "--project-dir", "/app"), image=None)
    outcome = execute(run_op, step, make_backend(), FakeCluster(FakeClock(), step_container(lines, exit_code=3)))

    assert "exit code 3" in outcome.error
    assert "stale: another plan was applied" in outcome.error


# --- cluster credentials ----------------------------------------------------------------------------------


def test_missing_kubeconfig_is_a_config_error_naming_the_fields(make_backend: Factory, tmp_path: Any) -> None:
    backend = make_backend(load_incluster_config=False, kubeconfig_file=str(tmp_path / "nope"))
    with pytest.raises(DagctlConfigError, match=r"cannot load cluster credentials from kubeconfig .*/nope"):
        load_kubernetes_config(backend)
