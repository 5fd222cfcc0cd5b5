"""A step's pod gets exactly its declared environment, nothing of the code location's; a dead run's pods
are deleted.

The execute steps of a dbt plan on the Kubernetes backend are built from a deployment config with
`step_env`, then run by `run_step_in_pod` in a real Dagster run against a cluster faked at the client
boundary; the pod the run created is read back from the fake cluster.
"""

from datetime import UTC, datetime
from pathlib import Path

from adapters.kubernetes.k8s_testing import (
    ContainerScript,
    FakeClock,
    FakeCluster,
    assert_valid_manifest,
    pipes_line,
)
from dagster import instance_for_test, job, op
from dagster._core.storage.dagster_run import DagsterRun
from kubernetes.client import V1ObjectMeta, V1Pod

from dagctl_dagster.core.config import parse_deployment_config
from dagctl_dagster.core.dbt_changes import build_dbt_scope, build_file_change
from dagctl_dagster.core.plan import Framework, PlanSpec, build_plan_id, seal_plan
from dagctl_dagster.defs.execution import build_execute_steps
from dagctl_dagster.defs.kubernetes_steps import delete_run_pods, run_step_in_pod
from dagctl_dagster.defs.runtime import PlanRuntime
from dagctl_dagster.defs.sensors import mark_dead_run

DIGEST = "ghcr.io/acme/jaffle@sha256:" + "c" * 64
CONFIG = """
projects:
  - name: jaffle
    framework: dbt
    repository: https://git.acme.io/analytics.git
    backend: {type: kubernetes, namespace: data, runner_image: "ghcr.io/acme/dagctl-runner:1.0",
              registry: ghcr.io/acme}
    step_env:
      env: {DBT_THREADS: "4"}
      pass_env: [DBT_WAREHOUSE_HOST, NOT_SET_ANYWHERE]
    environments:
      - name: dev
        step_env: {env: {DEV_ONLY: "1"}}
      - name: prod
        step_env:
          secret_env: [{env: PROD_PASSWORD, secret: warehouse-prod, key: password}]
"""
CODE_LOCATION = {
    "DBT_WAREHOUSE_HOST": "warehouse.internal", "DAGCTL_GIT_TOKEN": "git-token",
    "DAGCTL_APPROVER_SECRET_ALICE": "approver-secret", "PROD_PASSWORD": "prod-password",
    "AWS_SECRET_ACCESS_KEY": "aws-secret",
}


def pod_env(tmp_path: Path, environment: str, monkeypatch) -> dict[str, object]:
    """The environment of the step container of the pod `execute-0` of a plan for `environment`."""
    for name, value in CODE_LOCATION.items():
        monkeypatch.setenv(name, value)
    runtime = PlanRuntime(deployment=parse_deployment_config(CONFIG, source="dagctl.yaml"),
                          storage_dir=tmp_path / "data", config_dir=tmp_path)
    project = runtime.deployment.projects[0]
    files = (build_file_change("models/orders.sql", "modified"),)
    spec = seal_plan(PlanSpec(
        plan_id=f"jaffle-{environment}-0123abcd", project="jaffle", environment=environment,
        framework=Framework.DBT, base_commit="b" * 40, target_commit="a" * 40, triggered_by="sensor",
        author="carol", files=files, dbt_scope=build_dbt_scope(files, has_base=True),
        created_at=datetime(2025, 1, 6, tzinfo=UTC),
        commands=(("dbt", "build", "--target", environment, "--select", "path:models/orders.sql"),)))
    [step] = build_execute_steps(runtime, project, spec, DIGEST)
    cluster = FakeCluster(FakeClock(), [ContainerScript("dagctl-step", starts_at=3, ends_at=20,
                                                        lines=[pipes_line("opened", {"extras": {}})])])

    @op
    def execute(context):
        run_step_in_pod(context, step=step, backend=project.backend, api_client=cluster.client())

    @job
    def plan():
        execute()

    with instance_for_test() as instance:
        assert plan.execute_in_process(instance=instance).success
    [pod] = cluster.created_pods
    assert_valid_manifest(pod)
    [container] = pod["spec"]["containers"]
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


def test_a_dev_pod_gets_only_its_declared_variables(tmp_path, monkeypatch):
    env = pod_env(tmp_path, "dev", monkeypatch)

    assert set(env) == {"DAGCTL_PROJECT", "DAGCTL_ENVIRONMENT", "DBT_PROFILES_DIR", "DBT_THREADS",
                        "DBT_WAREHOUSE_HOST", "DEV_ONLY", "DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"}
    assert (env["DBT_WAREHOUSE_HOST"], env["DEV_ONLY"], env["DAGCTL_ENVIRONMENT"]) == (
        "warehouse.internal", "1", "dev")
    assert not {value for value in env.values() if isinstance(value, str)} & {
        "git-token", "approver-secret", "prod-password", "aws-secret"}


def test_a_prod_pod_gets_its_secret_as_a_secret_reference_never_as_a_value(tmp_path, monkeypatch):
    env = pod_env(tmp_path, "prod", monkeypatch)

    assert set(env) == {"DAGCTL_PROJECT", "DAGCTL_ENVIRONMENT", "DBT_PROFILES_DIR", "DBT_THREADS",
                        "DBT_WAREHOUSE_HOST", "PROD_PASSWORD", "DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"}
    assert env["PROD_PASSWORD"] == {"secretKeyRef": {"name": "warehouse-prod", "key": "password"}}


def test_the_pods_of_a_dead_run_are_deleted_and_no_other_runs(tmp_path):
    runtime = PlanRuntime(deployment=parse_deployment_config(CONFIG, source="dagctl.yaml"),
                          storage_dir=tmp_path / "data", config_dir=tmp_path)
    backend = runtime.deployment.projects[0].backend
    cluster = FakeCluster(FakeClock(), [ContainerScript("dagctl-step", ends_at=None)])
    name = "dagctl-jaffle-prod-0123abcd-execute-0-5e1f0c2a"
    cluster.create_namespaced_pod("data", V1Pod(metadata=V1ObjectMeta(
        name=name, labels={"dagctl/plan-id": "jaffle-prod-0123abcd"})))

    other_run = delete_run_pods(backend, plan_id="jaffle-prod-0123abcd", run_id="7d3b9a01-aaaa",
                                api_client=cluster.client())
    dead_run = delete_run_pods(backend, plan_id="jaffle-prod-0123abcd", run_id="5e1f0c2a-bbbb",
                               api_client=cluster.client())

    assert (other_run, dead_run, cluster.deleted) == ([], [name], [("pod", name)])


def test_a_dead_explaining_runs_parse_pod_is_deleted_by_the_failure_sensors_path(tmp_path):
    runtime = PlanRuntime(deployment=parse_deployment_config(CONFIG, source="dagctl.yaml"),
                          storage_dir=tmp_path / "data", config_dir=tmp_path)
    cluster = FakeCluster(FakeClock(), [ContainerScript("dagctl-step", ends_at=None)])
    runtime.kubernetes_client = cluster.client
    run_id = "5e1f0c2a-bbbb-4000-8000-000000000000"
    plan_id = build_plan_id("jaffle", "prod", run_id)  # what the explaining run would have recorded
    parse_pod = f"dagctl-{plan_id}-parse-0-{run_id[:8]}"
    cluster.create_namespaced_pod("data", V1Pod(metadata=V1ObjectMeta(
        name=parse_pod, labels={"dagctl/plan-id": plan_id, "dagctl/step": "parse"})))

    with instance_for_test() as instance:
        review = mark_dead_run(runtime, instance, DagsterRun(job_name="dagctl_review_job", run_id=run_id),
                               "failed")
        deleted_by_review = list(cluster.deleted)
        explain = mark_dead_run(runtime, instance, DagsterRun(job_name="jaffle_plan_job", run_id=run_id), "failed")

    assert (review, deleted_by_review) == (False, [])  # not a plan job: it explains nothing
    assert (explain, cluster.deleted) == (False, [("pod", parse_pod)])  # no plan recorded; its pod deleted
