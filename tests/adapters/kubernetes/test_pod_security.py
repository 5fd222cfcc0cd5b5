"""Every pod dagctl generates meets the "restricted" Pod Security Standard; Kaniko's build job is the one
documented exception ("baseline": Kaniko needs root) and runs in its own namespace when configured.

Checked on what is actually sent: step pods wrapped by dagster-k8s's pipes pod body (as the backend sends
them), the run-worker Job dagster-k8s builds from helm-values' runK8sConfig, and the code location's pod
settings from helm-values. `make test-image` runs the step pods under podman with these settings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job
from dagster_k8s.pipes import build_pod_body
from k8s_testing import COMMIT, PLAN_ID, RUNNER_IMAGE
from kubernetes.client import ApiClient
from pod_security import pod_security_violations

from dagctl_dagster.adapters.kubernetes.specs import GitCheckout, build_kaniko_job, build_step_pod
from dagctl_dagster.core.config import parse_deployment_config
from dagctl_dagster.core.errors import DagctlConfigError
from dagctl_dagster.core.steps import SecretRef

Factory = Callable[..., Any]
HELM_VALUES = Path(__file__).resolve().parents[3] / "helm-values" / "values.yaml"
SQLMESH_ARGV = ("python", "-m", "dagctl_dagster.runner.sqlmesh_apply", "--project-dir", "/app",
                "--environment", "prod", "--change-set-fingerprint", "f" * 64)
PIPES_ENV = {"DAGSTER_PIPES_CONTEXT": "e30=", "DAGSTER_PIPES_MESSAGES": "e30="}

STEP_SHAPES = {
    "dbt in the built image": ({}, {}, False),
    "dbt with ssh checkout, profiles secret, secrets and resources": (
        {"git_ssh_secret": "git-ssh", "dbt_profiles_secret": "dbt-profiles",
         "secret_env": [{"env": "DBT_PASSWORD", "secret": "warehouse", "key": "password"}],
         "env_from_secrets": ["warehouse"], "resources": {"requests": {"cpu": "1"}}},
        {}, True),
    "sqlmesh apply with token checkout": (
        {"git_token_secret": "git-token"},
        {"argv": SQLMESH_ARGV, "image": None, "secret_env": (SecretRef(env="PG", secret="state", key="pw"),)},
        True),
}


def sent_pod_spec(manifest: dict[str, Any]) -> dict[str, Any]:
    """The pod spec as the backend sends it: dagster-k8s's pipes pod body around our manifest."""
    body = build_pod_body(pod_name=manifest["metadata"]["name"], image=None, command=None, env_vars=PIPES_ENV,
                          base_pod_meta=manifest["metadata"], base_pod_spec=manifest["spec"])
    return ApiClient().sanitize_for_serialization(body)["spec"]


@pytest.mark.parametrize("shape", STEP_SHAPES)
def test_step_pods_meet_the_restricted_pod_security_standard(shape, make_backend: Factory, make_step: Factory):
    backend_fields, step_fields, with_checkout = STEP_SHAPES[shape]
    backend = make_backend(**backend_fields)
    repository = "https://github.com/acme/analytics.git" if "git_token_secret" in backend_fields else (
        "git@github.com:acme/analytics.git")
    checkout = GitCheckout(repository, COMMIT) if with_checkout else None
    pod = build_step_pod(make_step(**step_fields), backend, pod_name=f"dagctl-{PLAN_ID}-execute-0",
                         checkout=checkout)
    spec = sent_pod_spec(pod)

    assert pod_security_violations(spec, "restricted") == []
    assert spec["securityContext"]["runAsUser"] == 1000
    assert [c["securityContext"]["runAsUser"] for c in [*spec.get("initContainers", []), *spec["containers"]]] == (
        [1000] * (4 if with_checkout else 1))


def test_step_pods_run_as_the_configured_uid(make_backend: Factory, make_step: Factory):
    pod = build_step_pod(make_step(), make_backend(run_as_user=2001), pod_name="dagctl-p1-execute-0")

    assert pod["spec"]["securityContext"]["runAsUser"] == 2001
    assert pod_security_violations(sent_pod_spec(pod), "restricted") == []


def test_root_uid_for_step_pods_is_refused_at_config_load_with_the_field_path():
    text = f"""
projects:
  - name: shop
    framework: sqlmesh
    repository: git@github.com:acme/shop.git
    environments: [{{name: prod}}]
    backend: {{type: kubernetes, runner_image: "{RUNNER_IMAGE}", run_as_user: 0}}
"""
    with pytest.raises(DagctlConfigError) as raised:
        parse_deployment_config(text, source="d.yaml")

    assert ("d.yaml: projects.0.backend.kubernetes.run_as_user: Value error, 0 is root or invalid: step pods run "
            "as an unprivileged uid under the 'restricted' Pod Security Standard; use the image's user "
            "(default 1000)") in str(raised.value)


def test_kaniko_job_is_baseline_only_because_of_kaniko_itself(make_project: Factory, make_backend: Factory):
    project = make_project(make_backend(git_ssh_secret="git-ssh", docker_config_secret="registry"))
    job = build_kaniko_job(project=project, backend=project.backend, commit=COMMIT, version="3",
                           plan_id=PLAN_ID, environment="prod", job_name=f"dagctl-build-{PLAN_ID}")
    spec = job["spec"]["template"]["spec"]

    assert pod_security_violations(spec, "baseline") == []
    # Only the Kaniko container itself falls short of "restricted": it runs as root and keeps its
    # capabilities. The git and Dockerfile containers are restricted.
    assert pod_security_violations(spec, "restricted") == [
        "container kaniko: allowPrivilegeEscalation is not false",
        "container kaniko: runAsNonRoot is not true",
        "container kaniko: capabilities do not drop ALL",
    ]


def test_kaniko_job_runs_in_the_build_namespace_and_steps_stay_in_the_backend_namespace(
        make_project: Factory, make_backend: Factory, make_step: Factory):
    backend = make_backend(build_namespace="analytics-builds")
    project = make_project(backend)
    job = build_kaniko_job(project=project, backend=backend, commit=COMMIT, version="3", plan_id=PLAN_ID,
                           environment="prod", job_name="dagctl-build-p1")
    pod = build_step_pod(make_step(), backend, pod_name="dagctl-p1-execute-0")

    assert (job["metadata"]["namespace"], pod["metadata"]["namespace"]) == ("analytics-builds", "analytics")
    assert make_backend().for_builds().namespace == "analytics"


def helm_values() -> dict[str, Any]:
    return yaml.safe_load(HELM_VALUES.read_text())


def test_run_workers_from_the_helm_values_meet_the_restricted_standard():
    # The Job dagster-k8s's K8sRunLauncher builds for a run worker, with helm-values' runK8sConfig.
    run_k8s_config = helm_values()["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]
    user_config = UserDefinedDagsterK8sConfig(pod_spec_config=run_k8s_config["podSpecConfig"],
                                              container_config=run_k8s_config["containerConfig"])
    job = construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image=RUNNER_IMAGE, dagster_home="/opt/dagster/dagster_home",
                            instance_config_map="dagster-instance"),
        args=["dagster", "api", "execute_run", "{}"], job_name="dagster-run-1", user_defined_k8s_config=user_config)
    spec = ApiClient().sanitize_for_serialization(job)["spec"]["template"]["spec"]

    assert pod_security_violations(spec, "restricted") == []


def test_code_location_pod_settings_meet_the_restricted_standard():
    [deployment] = helm_values()["dagster-user-deployments"]["deployments"]
    spec = {"securityContext": deployment["podSecurityContext"], "volumes": deployment["volumes"],
            "containers": [{"name": deployment["name"], "securityContext": deployment["securityContext"]}]}

    assert pod_security_violations(spec, "restricted") == []


def test_the_check_names_what_breaks_the_restricted_standard():
    spec = {"hostNetwork": True, "volumes": [{"name": "host", "hostPath": {"path": "/"}}],
            "securityContext": {"runAsUser": 0},
            "containers": [{"name": "step", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}

    assert pod_security_violations(spec, "restricted") == [
        "host namespaces: hostNetwork=true",
        "hostPath volume host",
        "container step: adds capabilities ['SYS_ADMIN']",
        "volume host: type not allowed",
        "pod: runAsUser 0",
        "container step: allowPrivilegeEscalation is not false",
        "container step: runAsNonRoot is not true",
        "container step: seccompProfile is not RuntimeDefault or Localhost",
        "container step: capabilities do not drop ALL",
        "container step: adds capabilities other than NET_BIND_SERVICE",
    ]
