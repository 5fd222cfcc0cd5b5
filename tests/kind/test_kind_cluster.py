"""End to end on a real cluster: a Kaniko build of a dbt project, then `dbt build` in a pod, through Dagster.

Opt in with `pytest -m kind`. It needs a kind cluster with a local registry, set up as docs/kubernetes.md
describes ("A kind cluster for the opt-in suite"), and:

- `KUBECONFIG`: a kubeconfig whose current context is the kind cluster (`kind-...`);
- `DAGCTL_KIND_RUNNER_IMAGE`: this repository's Dockerfile, built and pushed to the local registry, named
  as the cluster sees it (e.g. `kind-registry:5000/dagctl-dagster:dev`);
- `DAGCTL_KIND_REGISTRY` (default `kind-registry:5000`): where Kaniko pushes, plain HTTP.

The test serves a Git repository with the example jaffle project from a `git daemon` pod in a fresh
namespace, builds its image with Kaniko at the pinned commit (default dbt Dockerfile), runs
`dbt build` in that image by digest, and checks the digest and the per-model materializations. The
namespace is deleted afterwards. Nothing is faked.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
GIT_PORT = 9418


def _why_not_runnable() -> str | None:
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        return "KUBECONFIG is not set: the kind suite needs a kind cluster with a local registry (docs/kubernetes.md)"
    import kubernetes

    try:
        _, current = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig.split(os.pathsep)[0])
    except (kubernetes.config.ConfigException, OSError) as exc:
        return f"KUBECONFIG={kubeconfig} cannot be read: {exc}"
    if not current or not current["name"].startswith("kind-"):
        return f"the current context of KUBECONFIG is not a kind cluster ({current and current['name']})"
    if not os.environ.get("DAGCTL_KIND_RUNNER_IMAGE"):
        return ("DAGCTL_KIND_RUNNER_IMAGE is not set: build the Dockerfile, push it to the kind registry and "
                "name it as the cluster sees it, e.g. kind-registry:5000/dagctl-dagster:dev")
    return None


SKIP_REASON = _why_not_runnable()
pytestmark = [
    pytest.mark.kind,
    pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or ""),
    pytest.mark.timeout(1800),
]


def _git(directory: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "e2e", "GIT_AUTHOR_EMAIL": "e2e@example.com",
           "GIT_COMMITTER_NAME": "e2e", "GIT_COMMITTER_EMAIL": "e2e@example.com", "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", *args], cwd=directory, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def _jaffle_bundle(tmp_path: Path) -> tuple[bytes, str]:
    """The example project (without its own Dockerfile: the default dbt Dockerfile is used) as a git bundle."""
    project = tmp_path / "jaffle"
    shutil.copytree(EXAMPLES / "jaffle_dbt", project,
                    ignore=shutil.ignore_patterns("target", "logs", "*.duckdb*", "Dockerfile", "requirements.txt"))
    shutil.copy(EXAMPLES / "dbt_profiles" / "profiles.yml", project / "profiles.yml")
    _git(project, "init", "--quiet", "--initial-branch=main")
    _git(project, "add", ".")
    _git(project, "commit", "--quiet", "-m", "jaffle for the kind suite")
    commit = _git(project, "rev-parse", "HEAD")
    _git(project, "bundle", "create", str(tmp_path / "jaffle.bundle"), "--all")
    return (tmp_path / "jaffle.bundle").read_bytes(), commit


@pytest.fixture(scope="module")
def namespace() -> Iterator[str]:
    import kubernetes

    kubernetes.config.load_kube_config()
    core = kubernetes.client.CoreV1Api()
    name = f"dagctl-e2e-{uuid.uuid4().hex[:6]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture(scope="module")
def git_server(namespace: str, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A `git daemon` pod serving the jaffle repository; returns its URL and the pinned commit."""
    import kubernetes

    core = kubernetes.client.CoreV1Api()
    bundle, commit = _jaffle_bundle(tmp_path_factory.mktemp("git"))
    core.create_namespaced_config_map(namespace, {
        "metadata": {"name": "jaffle-bundle"},
        "binaryData": {"jaffle.bundle": base64.b64encode(bundle).decode()},
    })
    labels = {"app": "git"}
    core.create_namespaced_pod(namespace, {
        "metadata": {"name": "git", "labels": labels},
        "spec": {
            "initContainers": [{"name": "unbundle", "image": "alpine/git:v2.52.0",
                                "command": ["git", "clone", "--bare", "/bundle/jaffle.bundle", "/srv/git/jaffle.git"],
                                "volumeMounts": [{"name": "bundle", "mountPath": "/bundle"},
                                                 {"name": "srv", "mountPath": "/srv/git"}]}],
            "containers": [{"name": "daemon", "image": "alpine/git:v2.52.0",
                            "command": ["git", "daemon", "--reuseaddr", "--export-all", "--base-path=/srv/git",
                                        f"--port={GIT_PORT}", "/srv/git"],
                            "ports": [{"containerPort": GIT_PORT}],
                            "readinessProbe": {"tcpSocket": {"port": GIT_PORT}, "periodSeconds": 2},
                            "volumeMounts": [{"name": "srv", "mountPath": "/srv/git"}]}],
            "volumes": [{"name": "bundle", "configMap": {"name": "jaffle-bundle"}},
                        {"name": "srv", "emptyDir": {}}],
        },
    })
    core.create_namespaced_service(namespace, {
        "metadata": {"name": "git"},
        "spec": {"selector": labels, "ports": [{"port": GIT_PORT, "targetPort": GIT_PORT}]},
    })
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        pod = core.read_namespaced_pod("git", namespace)
        if any(status.ready for status in pod.status.container_statuses or []):
            return f"git://git.{namespace}.svc.cluster.local/jaffle.git", commit
        time.sleep(2)
    pytest.fail(f"the git server pod did not become ready: {pod.status}")


def test_kaniko_build_then_dbt_build_in_the_built_image(namespace: str, git_server: tuple[str, str]) -> None:
    from dagster import In, instance_for_test, job, op

    from dagctl_dagster.adapters.kubernetes.specs import build_plan_labels
    from dagctl_dagster.core.config import parse_deployment_config
    from dagctl_dagster.core.steps import StepSpec
    from dagctl_dagster.defs.kubernetes_steps import build_image_with_kaniko, run_step_in_pod

    repository, commit = git_server
    registry = os.environ.get("DAGCTL_KIND_REGISTRY", "kind-registry:5000")
    config = parse_deployment_config(f"""
projects:
  - name: jaffle
    framework: dbt
    repository: {repository}
    environments: [{{name: dev}}]
    backend:
      type: kubernetes
      namespace: {namespace}
      runner_image: {os.environ["DAGCTL_KIND_RUNNER_IMAGE"]}
      registry: {registry}
      repository: dagctl-e2e/jaffle
      insecure_registry: true
      keep_failed_jobs: false
      timeout_seconds: 1200
      poll_interval_seconds: 2
      load_incluster_config: false
      kubeconfig_file: {os.environ["KUBECONFIG"].split(os.pathsep)[0]}
""", source="kind-e2e.yaml")
    project = config.projects[0]
    backend = project.backend

    @op
    def build(context):  # noqa: ANN001 - Dagster refuses a string annotation for `context`
        return build_image_with_kaniko(context, project=project, backend=backend, commit=commit, version="1",
                                       plan_id="jaffle-dev-e2e", environment="dev")

    @op(ins={"image": In(str)})
    def execute(context, image):  # noqa: ANN001
        step = StepSpec(
            name="execute-0", argv=("dbt", "build", "--target", "dev"), image=image, working_dir="/app",
            env={"DAGCTL_PROJECT": "jaffle", "DAGCTL_ENVIRONMENT": "dev", "DBT_PROFILES_DIR": "/app",
                 "DAGCTL_WAREHOUSE_DIR": "/tmp"},
            labels=build_plan_labels("jaffle", "dev", "jaffle-dev-e2e"),
        )
        run_step_in_pod(context, step=step, backend=backend)

    @job
    def plan() -> None:
        execute(build())

    with instance_for_test() as instance:
        result = plan.execute_in_process(instance=instance, raise_on_error=False)
        records = list(instance.all_logs(result.run_id))

    assert result.success, "\n".join(record.user_message for record in records)
    image = result.output_for_node("build")
    assert re.fullmatch(rf"{re.escape(registry)}/dagctl-e2e/jaffle@sha256:[0-9a-f]{{64}}", image)
    materialized = {tuple(record.dagster_event.asset_key.path) for record in records
                    if record.dagster_event and record.dagster_event.is_step_materialization}
    models = {("jaffle", "dev", name) for name in ("stg_orders", "orders", "customers")}
    assert models <= materialized
    assert any("[kaniko]" in record.user_message for record in records)
    assert any("[execute-0]" in record.user_message and "Completed successfully" in record.user_message
               for record in records)
