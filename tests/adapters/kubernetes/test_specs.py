"""The Kubernetes manifests we generate, and the backend config that shapes them.

Every Job and Pod shape (Kaniko with SSH, token or no credentials; dbt and SQLMesh steps with and without
resources, secrets and a checkout) is validated against the Kubernetes OpenAPI schema, offline. The init
containers' git command lines are run for real against a repository in `tmp_path`, and the token credential
helper is asked by git itself, so "exactly the pinned commit" and "the token never enters the manifest" are
observed. Config errors are checked through `parse_deployment_config`, as a user meets them.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from dagster_k8s.pipes import build_pod_body
from k8s_testing import COMMIT, DIGEST, PLAN_ID, RUNNER_IMAGE, assert_valid_manifest
from kubernetes.client import ApiClient

from dagctl_dagster.adapters.kubernetes.dockerfile import main as select_dockerfile_main
from dagctl_dagster.adapters.kubernetes.dockerfile import read_default_dockerfile, select_dockerfile
from dagctl_dagster.adapters.kubernetes.specs import (
    BUILD_DOCKERFILE,
    DBT_RUNNER,
    GIT_TOKEN_ENV,
    REPO_DIR,
    WORKSPACE_DIR,
    GitCheckout,
    build_checkout_containers,
    build_image_tags,
    build_kaniko_job,
    build_plan_labels,
    build_resource_name,
    build_step_pod,
    to_label_value,
)
from dagctl_dagster.core.config import ProjectConfig, parse_deployment_config
from dagctl_dagster.core.errors import DagctlConfigError, DagctlStepError
from dagctl_dagster.core.kubernetes_config import DEFAULT_KANIKO_IMAGE, KubernetesBackendConfig
from dagctl_dagster.core.steps import SecretRef, StepSpec


Factory = Callable[..., Any]
RESOURCES = {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi"}}
SQLMESH_ARGV = ("python", "-m", "dagctl_dagster.runner.sqlmesh_apply", "--project-dir", "/app",
                "--environment", "prod", "--change-set-fingerprint", "f" * 64)


def kaniko_job(project: ProjectConfig, **overrides: Any) -> dict[str, Any]:
    options = {"project": project, "backend": project.backend, "commit": COMMIT, "version": "3",
               "plan_id": PLAN_ID, "environment": "prod", "job_name": f"dagctl-build-{PLAN_ID}"}
    options.update(overrides)
    return build_kaniko_job(**options)


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec.get("initContainers", []) + pod_spec["containers"] if c["name"] == name)


def env_of(item: dict[str, Any]) -> dict[str, Any]:
    return {entry["name"]: entry.get("value", entry.get("valueFrom")) for entry in item.get("env", [])}


# --- every shape is valid Kubernetes -------------------------------------------------------------------

BUILD_SHAPES = {
    "kaniko_anonymous_minimal": ({}, {}),
    "kaniko_ssh_credentials": ({"git_ssh_secret": "dagctl-git-ssh", "docker_config_secret": "dagctl-registry"}, {}),
    "kaniko_token_credentials": (
        {"git_token_secret": "dagctl-git-token", "docker_config_secret": "dagctl-registry"},
        {"repository": "https://github.com/acme/analytics.git"},
    ),
    "kaniko_everything": (
        {"git_ssh_secret": "dagctl-git-ssh", "docker_config_secret": "dagctl-registry",
         "build_resources": RESOURCES, "labels": {"team": "data"}, "service_account": "dagctl-builder",
         "image_pull_secrets": ["ghcr-pull"], "insecure_registry": True, "dockerfile": "docker/Dockerfile",
         "kaniko_extra_args": ["--snapshot-mode=redo"], "job_ttl_seconds": None},
        {"subdirectory": "jaffle"},
    ),
}


@pytest.mark.parametrize(("backend_fields", "project_fields"), list(BUILD_SHAPES.values()), ids=list(BUILD_SHAPES))
def test_every_kaniko_job_shape_is_a_valid_job(
    make_backend: Factory, make_project: Factory, backend_fields: dict, project_fields: dict
) -> None:
    project = make_project(backend=make_backend(**backend_fields), **project_fields)
    assert_valid_manifest(kaniko_job(project))


STEP_SHAPES = {
    "dbt_minimal": ({}, {}, None),
    "dbt_with_resources_and_secrets": (
        {"resources": RESOURCES, "env_from_secrets": ["warehouse"], "env_from_config_maps": ["warehouse-settings"],
         "secret_env": [{"env": "DBT_PASSWORD", "secret": "warehouse", "key": "password"}],
         "image_pull_secrets": ["ghcr-pull"], "service_account": "dagctl-steps", "labels": {"team": "data"},
         "dbt_profiles_secret": "dbt-profiles"},
        {"secret_env": [SecretRef(env="DBT_TOKEN", secret="warehouse", key="token")]},
        None,
    ),
    "sqlmesh_minimal": ({}, {"argv": SQLMESH_ARGV, "image": None}, None),
    "sqlmesh_with_checkout_and_ssh": (
        {"git_ssh_secret": "dagctl-git-ssh", "resources": RESOURCES, "env_from_secrets": ["warehouse"]},
        {"argv": SQLMESH_ARGV, "image": None, "working_dir": None},
        GitCheckout("git@github.com:acme/analytics.git", COMMIT, "sqlmesh"),
    ),
    "sqlmesh_with_checkout_and_token": (
        {"git_token_secret": "dagctl-git-token"},
        {"argv": SQLMESH_ARGV, "image": None},
        GitCheckout("https://github.com/acme/analytics.git", COMMIT),
    ),
}


@pytest.mark.parametrize(("backend_fields", "step_fields", "checkout"), list(STEP_SHAPES.values()),
                         ids=list(STEP_SHAPES))
def test_every_step_pod_shape_is_a_valid_pod(
    make_backend: Factory, make_step: Factory, backend_fields: dict, step_fields: dict, checkout: GitCheckout | None
) -> None:
    pod = build_step_pod(make_step(**step_fields), make_backend(**backend_fields), pod_name="dagctl-p1-execute-0",
                         checkout=checkout)
    assert_valid_manifest(pod)
    # What is sent: dagster-k8s's pipes pod body around our manifest, with the pipes bootstrap variables.
    sent = build_pod_body(pod_name="dagctl-p1-execute-0", image=None, command=None,
                          env_vars={"DAGSTER_PIPES_CONTEXT": "e30=", "DAGSTER_PIPES_MESSAGES": "e30="},
                          base_pod_meta=pod["metadata"], base_pod_spec=pod["spec"])
    assert_valid_manifest({"apiVersion": "v1", "kind": "Pod", **ApiClient().sanitize_for_serialization(sent)})


def test_the_schema_check_itself_rejects_a_broken_manifest(make_project: Factory) -> None:
    job = kaniko_job(make_project())
    job["spec"]["template"]["spec"]["containers"][0]["image_pull_policy"] = "Always"  # snake_case: unknown field
    with pytest.raises(pytest.fail.Exception, match="image_pull_policy"):
        assert_valid_manifest(job)


# --- the Kaniko job -------------------------------------------------------------------------------------


def test_kaniko_pushes_version_and_commit_tags_with_cache_and_reports_the_digest(make_project: Factory) -> None:
    job = kaniko_job(make_project())
    kaniko = container(job["spec"]["template"]["spec"], "kaniko")

    assert kaniko["image"] == DEFAULT_KANIKO_IMAGE
    assert kaniko["args"] == [
        f"--context=dir://{REPO_DIR}",
        f"--dockerfile={BUILD_DOCKERFILE}",
        f"--destination=ghcr.io/acme/jaffle:3-{COMMIT[:12]}",
        f"--destination=ghcr.io/acme/jaffle:{COMMIT}",
        "--cache=true",
        "--cache-repo=ghcr.io/acme/jaffle/cache",
        "--digest-file=/dev/termination-log",
        f"--build-arg=BASE_IMAGE={RUNNER_IMAGE}",
        f"--label=org.opencontainers.image.revision={COMMIT}",
        "--label=org.opencontainers.image.version=3",
    ]
    assert kaniko["terminationMessagePath"] == "/dev/termination-log"
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert job["metadata"]["labels"] == job["spec"]["template"]["metadata"]["labels"] == {
        "dagctl/project": "jaffle", "dagctl/environment": "prod", "dagctl/plan-id": PLAN_ID,
        "dagctl/step": "build", "app.kubernetes.io/managed-by": "dagctl",
    }


def test_kaniko_uses_the_registry_credentials_secret_as_its_docker_config(
    make_backend: Factory, make_project: Factory
) -> None:
    job = kaniko_job(make_project(backend=make_backend(docker_config_secret="dagctl-registry",
                                                       repository="dbt/jaffle", insecure_registry=True)))
    pod = job["spec"]["template"]["spec"]
    kaniko = container(pod, "kaniko")

    assert {"name": "docker-config", "mountPath": "/kaniko/.docker", "readOnly": True} in kaniko["volumeMounts"]
    assert {"name": "docker-config", "secret": {
        "secretName": "dagctl-registry", "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
    }} in pod["volumes"]
    assert "--destination=ghcr.io/acme/dbt/jaffle:" + COMMIT in kaniko["args"]
    assert kaniko["args"][-2:] == ["--insecure-registry=ghcr.io", "--skip-tls-verify-registry=ghcr.io"]


def test_dockerfile_is_chosen_in_the_pod_by_the_runner_image(make_backend: Factory, make_project: Factory) -> None:
    default = container(kaniko_job(make_project())["spec"]["template"]["spec"], "dockerfile")
    configured = container(
        kaniko_job(make_project(backend=make_backend(dockerfile="docker/dbt.Dockerfile"), subdirectory="jaffle"))
        ["spec"]["template"]["spec"], "dockerfile")

    assert default["image"] == RUNNER_IMAGE
    assert default["command"] == ["python", "-P", "-m", "dagctl_dagster.adapters.kubernetes.dockerfile",
                                  "--context", REPO_DIR, "--output", BUILD_DOCKERFILE]
    assert configured["command"][-4:] == ["--output", BUILD_DOCKERFILE, "--dockerfile", "docker/dbt.Dockerfile"]
    assert configured["command"][5] == f"{REPO_DIR}/jaffle"


def test_ssh_credentials_are_a_read_only_key_and_known_hosts(make_backend: Factory, make_project: Factory) -> None:
    pod = kaniko_job(make_project(backend=make_backend(git_ssh_secret="dagctl-git-ssh")))["spec"]["template"]["spec"]
    fetch = container(pod, "git-fetch")

    assert "-o StrictHostKeyChecking=yes" in env_of(fetch)["GIT_SSH_COMMAND"]
    assert {"name": "git-ssh", "mountPath": "/etc/dagctl/git-ssh", "readOnly": True} in fetch["volumeMounts"]
    ssh_volume = next(v for v in pod["volumes"] if v["name"] == "git-ssh")
    assert ssh_volume["secret"]["defaultMode"] == 0o400
    assert [item["key"] for item in ssh_volume["secret"]["items"]] == ["ssh-privatekey", "known_hosts"]


def test_token_credentials_come_from_the_secret_and_never_appear_in_the_manifest(
    make_backend: Factory, make_project: Factory
) -> None:
    project = make_project(backend=make_backend(git_token_secret="dagctl-git-token"),
                           repository="https://github.com/acme/analytics.git")
    fetch = container(kaniko_job(project)["spec"]["template"]["spec"], "git-fetch")

    assert env_of(fetch)[GIT_TOKEN_ENV] == {"secretKeyRef": {"name": "dagctl-git-token", "key": "token"}}
    assert fetch["command"][-2:] == ["https://github.com/acme/analytics.git", COMMIT]
    assert "$(" not in json.dumps(fetch)  # nothing for Kubernetes to expand into argv


def test_token_credentials_need_an_https_repository(make_backend: Factory, make_project: Factory) -> None:
    project = make_project(backend=make_backend(git_token_secret="dagctl-git-token"))  # an ssh URL
    with pytest.raises(DagctlConfigError, match="git_token_secret needs an https:// repository URL"):
        kaniko_job(project)


def test_a_build_needs_a_full_commit_id(make_project: Factory) -> None:
    with pytest.raises(DagctlStepError, match="'main' is not a full commit id"):
        kaniko_job(make_project(), commit="main")


# --- the git commands, run for real ---------------------------------------------------------------------


def _git(directory: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=directory, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def remote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, str, str]:
    """A repository with two commits; returns its path, the first (pinned) commit and the branch head."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "empty.gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name, value in {"GIT_AUTHOR_NAME": "Ann", "GIT_AUTHOR_EMAIL": "ann@example.com",
                        "GIT_COMMITTER_NAME": "Ann", "GIT_COMMITTER_EMAIL": "ann@example.com"}.items():
        monkeypatch.setenv(name, value)
    (tmp_path / "empty.gitconfig").write_text("")
    repo = tmp_path / "remote"
    repo.mkdir()
    _git(repo, "init", "--quiet", "--initial-branch=main")
    (repo / "dbt_project.yml").write_text("name: jaffle\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "pinned")
    pinned = _git(repo, "rev-parse", "HEAD")
    (repo / "dbt_project.yml").write_text("name: jaffle_v2\n")
    _git(repo, "commit", "--quiet", "-am", "newer")
    return repo, pinned, _git(repo, "rev-parse", "HEAD")


def test_init_containers_fetch_exactly_the_pinned_commit_not_the_branch_head(
    make_backend: Factory, remote: tuple[Path, str, str], tmp_path: Path
) -> None:
    repo, pinned, head = remote
    workspace = tmp_path / "workspace"
    checkout = GitCheckout(f"file://{repo}", pinned)
    for init in build_checkout_containers(checkout, make_backend()):
        argv = [arg.replace(WORKSPACE_DIR, str(workspace)) for arg in init["command"]]
        env = {**os.environ, **{k: v for k, v in env_of(init).items() if isinstance(v, str)}}
        subprocess.run(argv, check=True, capture_output=True, env=env)

    checked_out = workspace / "repo"
    assert _git(checked_out, "rev-parse", "HEAD") == pinned != head
    assert (checked_out / "dbt_project.yml").read_text() == "name: jaffle\n"


def test_the_token_helper_answers_git_with_the_secret_from_the_environment(
    make_backend: Factory, remote: tuple[Path, str, str]
) -> None:
    checkout = GitCheckout("https://git.example.com/acme/analytics.git", remote[1])
    fetch = build_checkout_containers(checkout, make_backend(git_token_secret="dagctl-git-token",
                                                             git_token_username="oauth2"))[1]
    env = {**os.environ, **{k: v for k, v in env_of(fetch).items() if isinstance(v, str)},
           GIT_TOKEN_ENV: "s3cret-token"}
    answer = subprocess.run(["git", "credential", "fill"], input="protocol=https\nhost=git.example.com\n\n",
                            capture_output=True, text=True, env=env, check=True).stdout

    assert "username=oauth2\npassword=s3cret-token\n" in answer


# --- the step pod ---------------------------------------------------------------------------------------


def test_dbt_step_runs_its_argv_through_the_pipes_runner_without_a_shell(
    make_backend: Factory, make_step: Factory
) -> None:
    step = make_step()
    pod = build_step_pod(step, make_backend(), pod_name="dagctl-p1-execute-0")
    main = pod["spec"]["containers"][0]

    assert main["name"] == "dagctl-step"
    assert main["command"] == [*DBT_RUNNER, *step.argv]
    assert "args" not in main
    assert main["image"] == step.image
    assert main["workingDir"] == "/app"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["activeDeadlineSeconds"] == 3600
    assert pod["metadata"]["labels"]["dagctl/plan-id"] == PLAN_ID
    assert pod["metadata"]["labels"]["dagctl/step"] == "execute-0"


def test_sqlmesh_step_runs_its_own_entrypoint_in_the_runner_image(make_backend: Factory, make_step: Factory) -> None:
    pod = build_step_pod(make_step(argv=SQLMESH_ARGV, image=None), make_backend(), pod_name="dagctl-p1-execute")
    main = pod["spec"]["containers"][0]

    assert main["command"] == list(SQLMESH_ARGV)
    assert main["image"] == RUNNER_IMAGE


def test_step_environment_secrets_and_profiles(make_backend: Factory, make_step: Factory) -> None:
    backend = make_backend(env_from_secrets=["warehouse"], env_from_config_maps=["settings"],
                           secret_env=[{"env": "DBT_PASSWORD", "secret": "warehouse", "key": "password"}],
                           dbt_profiles_secret="dbt-profiles", resources=RESOURCES)
    step = make_step(secret_env=[SecretRef(env="DBT_TOKEN", secret="tokens", key="dbt")])
    main = build_step_pod(step, backend, pod_name="p")["spec"]["containers"][0]

    assert env_of(main) == {
        "DAGCTL_PROJECT": "jaffle", "DAGCTL_ENVIRONMENT": "prod",
        "DBT_PASSWORD": {"secretKeyRef": {"name": "warehouse", "key": "password"}},
        "DBT_TOKEN": {"secretKeyRef": {"name": "tokens", "key": "dbt"}},
        "DBT_PROFILES_DIR": "/etc/dagctl/dbt-profiles",
    }
    assert main["envFrom"] == [{"secretRef": {"name": "warehouse"}}, {"configMapRef": {"name": "settings"}}]
    assert main["resources"] == RESOURCES


def test_step_with_checkout_runs_in_the_fetched_project_folder(make_backend: Factory, make_step: Factory) -> None:
    checkout = GitCheckout("git@github.com:acme/analytics.git", COMMIT, "sqlmesh")
    pod = build_step_pod(make_step(argv=SQLMESH_ARGV, image=None), make_backend(git_ssh_secret="git-ssh"),
                         pod_name="p", checkout=checkout)

    assert [c["name"] for c in pod["spec"]["initContainers"]] == ["git-init", "git-fetch", "git-checkout"]
    assert pod["spec"]["containers"][0]["workingDir"] == checkout.project_dir == f"{REPO_DIR}/sqlmesh"


def test_plan_label_values_are_made_valid_and_required(make_backend: Factory, make_step: Factory) -> None:
    step = make_step(labels=build_plan_labels("jaffle_", "prod", "x" * 80))
    labels = build_step_pod(step, make_backend(), pod_name="p")["metadata"]["labels"]

    assert labels["dagctl/project"] == "jaffle"
    assert labels["dagctl/plan-id"] == "x" * 63
    with pytest.raises(DagctlStepError, match=r"lacks the plan labels \['dagctl/environment'"):
        build_step_pod(make_step(labels={"dagctl/project": "jaffle"}), make_backend(), pod_name="p")


def test_a_step_with_an_invalid_image_fails_before_reaching_the_cluster(
    make_backend: Factory, make_step: Factory
) -> None:
    with pytest.raises(DagctlStepError, match="'ghcr.io/Acme/Jaffle' is not a valid image reference"):
        build_step_pod(make_step(image="ghcr.io/Acme/Jaffle"), make_backend(), pod_name="p")


# --- names ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("parts", "expected"), [
    (("dagctl", "jaffle-prod-3f2a9c1d", "execute_0", "abcd1234"), "dagctl-jaffle-prod-3f2a9c1d-execute-0-abcd1234"),
    (("dagctl-build", "Plan.With.Dots", "abcd1234-r2"), "dagctl-build-plan-with-dots-abcd1234-r2"),
    (("dagctl", "p" * 80, "execute", "abcd1234"), "dagctl-" + "p" * 39 + "-execute-abcd1234"),
])
def test_resource_names_are_dns_labels_that_keep_their_unique_tail(parts: tuple[str, ...], expected: str) -> None:
    assert build_resource_name(*parts) == expected
    assert len(expected) <= 63


@pytest.mark.parametrize(("version", "tag"), [
    ("3", f"3-{COMMIT[:12]}"), ("1.4.0", f"1.4.0-{COMMIT[:12]}"), ("v2 beta/1", f"v2-beta-1-{COMMIT[:12]}"),
    (".hidden", f"hidden-{COMMIT[:12]}"),
])
def test_version_tags_are_valid_docker_tags(version: str, tag: str) -> None:
    tags = build_image_tags("reg/jaffle", version=version, commit=COMMIT)
    assert tags == (f"reg/jaffle:{tag}", f"reg/jaffle:{COMMIT}")


def test_label_values_are_trimmed_to_what_kubernetes_accepts() -> None:
    assert to_label_value("_jaffle shop_") == "jaffle-shop"
    assert to_label_value("a" * 70) == "a" * 63


# --- the Dockerfile selector (runs in the build pod) ----------------------------------------------------


def test_project_dockerfile_wins_over_the_default(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM python:3.11-slim\n")
    assert select_dockerfile(tmp_path, None) == ("FROM python:3.11-slim\n", "Dockerfile")


def test_default_dbt_dockerfile_builds_on_the_runner_image(tmp_path: Path) -> None:
    text, source = select_dockerfile(tmp_path, None)
    assert source == "the default dbt Dockerfile"
    assert text == read_default_dockerfile()
    assert "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\n" in text
    assert "WORKDIR /app" in text


def test_configured_dockerfile_must_exist_at_the_commit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "out" / "Dockerfile"
    assert select_dockerfile_main(["--context", str(tmp_path), "--output", str(output),
                                   "--dockerfile", "docker/Dockerfile"]) == 1
    assert "backend.dockerfile 'docker/Dockerfile' does not exist" in capsys.readouterr().err
    assert not output.exists()

    (tmp_path / "docker").mkdir()
    (tmp_path / "docker" / "Dockerfile").write_text("FROM scratch\n")
    assert select_dockerfile_main(["--context", str(tmp_path), "--output", str(output),
                                   "--dockerfile", "docker/Dockerfile"]) == 0
    assert output.read_text() == "FROM scratch\n"


# --- config errors, as the user meets them ---------------------------------------------------------------

PROJECT = """\
projects:
  - name: jaffle
    framework: {framework}
    repository: git@github.com:acme/analytics.git
    environments: [{{name: prod}}]
    backend:
      type: kubernetes
      runner_image: ghcr.io/acme/dagctl-dagster:0.1.0
{backend}
"""


def _config(backend: str = "      registry: ghcr.io/acme", framework: str = "dbt") -> str:
    return PROJECT.format(framework=framework, backend=backend)


BAD_BACKENDS = {
    "dbt_without_registry": (
        _config(backend=""),
        "d.yaml: projects.0: Value error, backend.registry is required for a dbt project on the kubernetes backend",
    ),
    "bad_runner_image": (
        _config(backend="      registry: ghcr.io/acme\n      runner_image: ghcr.io/Acme/Runner:1"),
        "d.yaml: projects.0.backend.kubernetes.runner_image: Value error, 'ghcr.io/Acme/Runner:1' is not a valid "
        "image reference",
    ),
    "bad_kaniko_image": (
        _config(backend="      registry: ghcr.io/acme\n      kaniko_image: 'kaniko executor'"),
        "d.yaml: projects.0.backend.kubernetes.kaniko_image: Value error, 'kaniko executor' is not a valid image",
    ),
    "bad_label_value": (
        _config(backend="      registry: ghcr.io/acme\n      labels: {team: 'data team!'}"),
        "d.yaml: projects.0.backend.kubernetes.labels.team: Value error, 'data team!' is not a valid label value",
    ),
    "label_value_too_long": (
        _config(backend=f"      registry: ghcr.io/acme\n      labels: {{team: {'a' * 64}}}"),
        "d.yaml: projects.0.backend.kubernetes.labels.team: Value error",
    ),
    "bad_label_key": (
        _config(backend="      registry: ghcr.io/acme\n      labels: {'-team': data}"),
        "d.yaml: projects.0.backend.kubernetes.labels.-team.[key]: Value error, '-team' is not a valid label key",
    ),
    "reserved_label_key": (
        _config(backend="      registry: ghcr.io/acme\n      labels: {'dagctl/plan-id': x}"),
        "labels starting with 'dagctl/' are set by dagctl",
    ),
    "bad_namespace": (
        _config(backend="      registry: ghcr.io/acme\n      namespace: Analytics"),
        "d.yaml: projects.0.backend.kubernetes.namespace: Value error, 'Analytics' is not a valid Kubernetes name",
    ),
    "bad_registry": (
        _config(backend="      registry: 'ghcr.io/Acme Corp'"),
        "d.yaml: projects.0.backend.kubernetes.registry: Value error, 'ghcr.io/Acme Corp' is not a valid registry",
    ),
    "bad_quantity": (
        _config(backend="      registry: ghcr.io/acme\n      resources: {requests: {memory: 2GB}}"),
        "d.yaml: projects.0.backend.kubernetes.resources.requests.memory: Value error, '2GB' is not a Kubernetes "
        "quantity",
    ),
    "both_git_credentials": (
        _config(backend="      registry: ghcr.io/acme\n      git_ssh_secret: a\n      git_token_secret: b"),
        "d.yaml: projects.0.backend.kubernetes: Value error, set either git_ssh_secret or git_token_secret",
    ),
    "bad_secret_env_name": (
        _config(backend="      registry: ghcr.io/acme\n      secret_env: [{env: 'DBT PASSWORD', secret: w, key: p}]"),
        "d.yaml: projects.0.backend.kubernetes.secret_env: Value error, 'DBT PASSWORD' is not a valid environment",
    ),
    "dockerfile_outside_project": (
        _config(backend="      registry: ghcr.io/acme\n      dockerfile: ../Dockerfile"),
        "d.yaml: projects.0.backend.kubernetes.dockerfile: Value error, '../Dockerfile' must be a path inside",
    ),
    "no_runner_image": (
        _config(backend="      registry: ghcr.io/acme").replace(f"      runner_image: {RUNNER_IMAGE}\n", ""),
        "d.yaml: projects.0.backend.kubernetes.runner_image: Field required",
    ),
}


@pytest.mark.parametrize(("text", "message"), list(BAD_BACKENDS.values()), ids=list(BAD_BACKENDS))
def test_bad_kubernetes_backend_fails_at_config_load_with_the_field_path(text: str, message: str) -> None:
    with pytest.raises(DagctlConfigError) as raised:
        parse_deployment_config(text, source="d.yaml")
    assert message in str(raised.value)


def test_environment_backend_without_registry_is_refused_too() -> None:
    text = _config().replace(
        "environments: [{name: prod}]",
        "environments: [{name: prod, backend: {type: kubernetes, runner_image: 'ghcr.io/acme/r:1'}}]",
    )
    with pytest.raises(DagctlConfigError, match="backend.registry is required for a dbt project"):
        parse_deployment_config(text, source="d.yaml")


def test_valid_kubernetes_backends_load() -> None:
    numbers = ("      registry: ghcr.io/acme\n      resources: {requests: {cpu: 1, memory: 2Gi}}\n"
               "      labels: {tier: 2}")
    dbt = parse_deployment_config(_config(backend=numbers), source="d.yaml").projects[0].backend
    sqlmesh = parse_deployment_config(_config(backend="", framework="sqlmesh"), source="d.yaml").projects[0].backend

    assert isinstance(dbt, KubernetesBackendConfig)
    assert dbt.image_repository("jaffle_shop") == "ghcr.io/acme/jaffle-shop"
    assert dbt.resources.requests == {"cpu": "1", "memory": "2Gi"} and dbt.labels == {"tier": "2"}
    assert isinstance(sqlmesh, KubernetesBackendConfig) and sqlmesh.registry is None


@pytest.mark.parametrize("image", [
    "alpine", "alpine/git:v2.52.0", "ghcr.io/acme/dbt/jaffle:3-abc", f"kind-registry:5000/jaffle@{DIGEST}",
    "localhost:5001/x/y:latest", "[::1]:5000/img:1",
])
def test_image_references_kubernetes_pulls_are_accepted(make_backend: Factory, image: str) -> None:
    assert make_backend(runner_image=image).runner_image == image

