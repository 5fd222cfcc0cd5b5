"""Kubernetes manifests for the Kubernetes backend, built from values alone (no cluster, no Dagster).

Two shapes:
- the **build job** of a dbt plan: init containers fetch exactly the pinned commit (argv only, credentials
  from a secret), one more picks the Dockerfile (the project's, or the default dbt Dockerfile we ship),
  and Kaniko builds and pushes `<image>:<version>-<12-character sha>` and `<image>:<full sha>`, writing
  the pushed digest to its termination message;
- the **step pod** of a `StepSpec` (dbt or SQLMesh execute): the step's argv as the container command
  (never a shell string), its environment and secret references, the plan labels.

Pod Security: step pods meet the "restricted" Pod Security Standard (non-root uid, no privilege
escalation, every capability dropped, the runtime's default seccomp profile; writable paths are volumes).
The Kaniko container needs root, so the build job meets "baseline" only; its helper containers are
restricted all the same (docs/kubernetes.md: run builds in a namespace of their own).

Every builder returns a complete manifest (`apiVersion`, `kind`, camelCase keys) that can be validated
against the Kubernetes OpenAPI schema and sent as is. Builders never mutate their inputs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from ...core.config import ProjectConfig
from ...core.errors import DagctlConfigError, DagctlStepError
from ...core.kubernetes_config import KubernetesBackendConfig, is_image_reference, is_label_value
from ...core.steps import SecretRef, StepSpec

Manifest = dict[str, Any]

LABEL_PROJECT = "dagctl/project"
LABEL_ENVIRONMENT = "dagctl/environment"
LABEL_PLAN_ID = "dagctl/plan-id"
LABEL_STEP = "dagctl/step"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
PLAN_LABELS = (LABEL_PROJECT, LABEL_ENVIRONMENT, LABEL_PLAN_ID)

KANIKO_CONTAINER = "kaniko"
DOCKERFILE_CONTAINER = "dockerfile"
STEP_CONTAINER = "dagctl-step"  # first container of a step pod: the one dagster-pipes talks to
GIT_CONTAINERS = ("git-init", "git-fetch", "git-checkout")

WORKSPACE_DIR = "/workspace"
REPO_DIR = f"{WORKSPACE_DIR}/repo"
BUILD_DIR = "/dagctl/build"
BUILD_DOCKERFILE = f"{BUILD_DIR}/Dockerfile"
GIT_SSH_DIR = "/etc/dagctl/git-ssh"
DOCKER_CONFIG_DIR = "/kaniko/.docker"
DBT_PROFILES_MOUNT = "/etc/dagctl/dbt-profiles"
GIT_TOKEN_ENV = "DAGCTL_GIT_TOKEN"

# dbt steps run through our in-image entrypoint, which reports every model built over dagster-pipes.
DBT_RUNNER = ("python", "-P", "-m", "dagctl_dagster.runner.dbt_pipes")
DOCKERFILE_SELECTOR = ("python", "-P", "-m", "dagctl_dagster.adapters.kubernetes.dockerfile")

_COMMIT = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_NAME_CHARS = re.compile(r"[^a-z0-9-]+")
_LABEL_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
_TAG_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")
SHORT_SHA = 12


@dataclass(frozen=True)
class GitCheckout:
    """A project folder at one pinned commit, fetched into a pod by init containers.

    Example: `GitCheckout("git@github.com:acme/analytics.git", "3f2a...", subdirectory="jaffle")`.
    """

    repository: str
    commit: str
    subdirectory: str | None = None

    def __post_init__(self) -> None:
        if not _COMMIT.match(self.commit):
            raise DagctlStepError(
                f"'{self.commit}' is not a full commit id: builds and steps run exactly one pinned commit"
            )

    @property
    def project_dir(self) -> str:
        """Where the project folder is inside the pod, e.g. `/workspace/repo/jaffle`."""
        return f"{REPO_DIR}/{self.subdirectory}" if self.subdirectory else REPO_DIR


def to_label_value(text: str) -> str:
    """`text` made acceptable as a label value: invalid characters become '-', at most 63 characters.

    Example: `to_label_value("my_project_")` -> `"my_project"`.
    """
    value = _LABEL_CHARS.sub("-", text)[:63]
    value = value.strip("-_.")
    return value if is_label_value(value) else ""


def build_resource_name(*parts: str, max_length: int = 63) -> str:
    """A DNS-1123 name from `parts`, e.g. `build_resource_name("dagctl", "jaffle-prod-3f2a", "execute_0")`.

    When the name is too long, the longest leading part is shortened first: the last part (what the caller
    made unique, e.g. the run id) is always kept whole.
    """
    cleaned = [_NAME_CHARS.sub("-", part.lower()).strip("-") for part in parts]
    cleaned = [part for part in cleaned if part]

    def joined() -> str:
        return "-".join(cleaned)

    while len(joined()) > max_length and len(cleaned) > 1:
        longest = max(range(len(cleaned) - 1), key=lambda index: len(cleaned[index]))
        excess = len(joined()) - max_length
        shortened = cleaned[longest][: max(len(cleaned[longest]) - excess, 1)].strip("-")
        if shortened == cleaned[longest]:
            break
        cleaned[longest] = shortened
    return joined()[:max_length].strip("-") or "dagctl"


def build_plan_labels(project: str, environment: str, plan_id: str) -> dict[str, str]:
    """The labels that tie a pod to its plan; also what `StepSpec.labels` should hold."""
    return {LABEL_PROJECT: project, LABEL_ENVIRONMENT: environment, LABEL_PLAN_ID: plan_id}


def build_runner_argv(argv: tuple[str, ...]) -> tuple[str, ...]:
    """The container command of a step: dbt command lines run through our dagster-pipes entrypoint.

    Example: `("dbt", "build", "--target", "prod")` ->
    `("python", "-m", "dagctl_dagster.runner.dbt_pipes", "dbt", "build", "--target", "prod")`; any other
    argv (e.g. SQLMesh's verify-then-apply entrypoint) is returned unchanged.
    """
    if argv[:1] == ("dbt",):
        return (*DBT_RUNNER, *argv)
    return argv


def build_image_tags(image: str, *, version: str, commit: str) -> tuple[str, str]:
    """The two tags pushed for a build: `<image>:<version>-<short sha>` and `<image>:<full sha>`."""
    version_tag = _TAG_CHARS.sub("-", version).lstrip(".-") or "v"
    version_tag = f"{version_tag[: 127 - SHORT_SHA]}-{commit[:SHORT_SHA]}"
    return f"{image}:{version_tag}", f"{image}:{commit}"


def _labels(backend: KubernetesBackendConfig, plan_labels: dict[str, str], step: str) -> dict[str, str]:
    missing = [key for key in PLAN_LABELS if key not in plan_labels]
    if missing:
        raise DagctlStepError(f"step '{step}' lacks the plan labels {missing}; use build_plan_labels()")
    return {
        **backend.labels,
        **{key: to_label_value(value) for key, value in plan_labels.items()},
        LABEL_STEP: to_label_value(step),
        LABEL_MANAGED_BY: "dagctl",
    }


def _token_helper(username: str) -> str:
    """A git credential helper that answers with the token read from the environment when git runs it.

    The token is never part of the manifest, of argv or of a file (as in `adapters.git`). `$DAGCTL_GIT_TOKEN`
    is expanded by the shell git starts, not by Kubernetes (which only expands `$(NAME)`).
    """
    return (f'!f() {{ test "$1" = get || return 0; echo username={username}; '
            f'echo "password=${GIT_TOKEN_ENV}"; }}; f')


def _check_token_repository(checkout: GitCheckout) -> None:
    parts = urlsplit(checkout.repository)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise DagctlConfigError(
            f"backend.git_token_secret needs an https:// repository URL, got '{checkout.repository}'; "
            "use git_ssh_secret for ssh repositories"
        )


def build_checkout_containers(checkout: GitCheckout, backend: KubernetesBackendConfig) -> list[Manifest]:
    """Init containers that fetch exactly `checkout.commit` into `/workspace/repo`, one git command each.

    `git fetch <url> <sha>` asks the server for that one commit (protocol v2 allows any reachable commit),
    and `git checkout <sha>` fails unless exactly that commit arrived: no branch is ever resolved.
    """
    env: list[Manifest] = [{"name": "GIT_TERMINAL_PROMPT", "value": "0"}]
    mounts = [{"name": "workspace", "mountPath": WORKSPACE_DIR}]
    if backend.git_ssh_secret:
        env.append({
            "name": "GIT_SSH_COMMAND",
            "value": f"ssh -i {GIT_SSH_DIR}/ssh-privatekey -o IdentitiesOnly=yes "
                     f"-o UserKnownHostsFile={GIT_SSH_DIR}/known_hosts -o StrictHostKeyChecking=yes",
        })
        mounts.append({"name": "git-ssh", "mountPath": GIT_SSH_DIR, "readOnly": True})
    if backend.git_token_secret:
        _check_token_repository(checkout)
        env += [
            {"name": GIT_TOKEN_ENV, "valueFrom": {
                "secretKeyRef": {"name": backend.git_token_secret, "key": "token"}}},
            # An empty helper first switches off helpers configured in the image (none may store the token).
            {"name": "GIT_CONFIG_COUNT", "value": "2"},
            {"name": "GIT_CONFIG_KEY_0", "value": "credential.helper"},
            {"name": "GIT_CONFIG_VALUE_0", "value": ""},
            {"name": "GIT_CONFIG_KEY_1", "value": "credential.helper"},
            {"name": "GIT_CONFIG_VALUE_1", "value": _token_helper(backend.git_token_username)},
        ]
    commands = {
        "git-init": ["git", "init", "--quiet", REPO_DIR],
        "git-fetch": ["git", "-C", REPO_DIR, "fetch", "--quiet", "--depth=1", "--no-tags",
                      checkout.repository, checkout.commit],
        "git-checkout": ["git", "-C", REPO_DIR, "-c", "advice.detachedHead=false", "checkout", "--quiet",
                         "--detach", checkout.commit],
    }
    return [
        {"name": name, "image": backend.git_image, "command": commands[name], "env": env,
         "volumeMounts": mounts if name == "git-fetch" else mounts[:1],
         "securityContext": build_container_security_context(backend)}
        for name in GIT_CONTAINERS
    ]


def _checkout_volumes(backend: KubernetesBackendConfig) -> list[Manifest]:
    volumes: list[Manifest] = [{"name": "workspace", "emptyDir": {}}]
    if backend.git_ssh_secret:
        volumes.append({"name": "git-ssh", "secret": {
            "secretName": backend.git_ssh_secret, "defaultMode": 0o400,
            "items": [{"key": "ssh-privatekey", "path": "ssh-privatekey"},
                      {"key": "known_hosts", "path": "known_hosts"}],
        }})
    return volumes


def build_container_security_context(backend: KubernetesBackendConfig) -> Manifest:
    """The security context of a container that runs as the unprivileged user: what the "restricted" Pod
    Security Standard asks of every container (a fresh value each call: manifests share nothing)."""
    return {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}, "runAsNonRoot": True,
            "runAsUser": backend.run_as_user, "runAsGroup": backend.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"}}


def build_pod_security_context(backend: KubernetesBackendConfig, *, non_root: bool = True) -> Manifest:
    """The pod's security context: the runtime's default seccomp profile and, for pods where no container
    needs root, the unprivileged user (fsGroup makes the volumes writable for it)."""
    context: Manifest = {"seccompProfile": {"type": "RuntimeDefault"}}
    if non_root:
        context.update({"runAsNonRoot": True, "runAsUser": backend.run_as_user,
                        "runAsGroup": backend.run_as_user, "fsGroup": backend.run_as_user})
    return context


def _pod_spec_base(backend: KubernetesBackendConfig, *, non_root: bool = True) -> Manifest:
    spec: Manifest = {"restartPolicy": "Never", "activeDeadlineSeconds": backend.timeout_seconds,
                      "securityContext": build_pod_security_context(backend, non_root=non_root)}
    if backend.service_account:
        spec["serviceAccountName"] = backend.service_account
    if backend.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": name} for name in backend.image_pull_secrets]
    return spec


def build_kaniko_job(
    *,
    project: ProjectConfig,
    backend: KubernetesBackendConfig,
    commit: str,
    version: str,
    plan_id: str,
    environment: str,
    job_name: str,
) -> Manifest:
    """The Job that builds and pushes the image of `commit` for a dbt plan.

    The digest Kaniko pushed is written to `/dev/termination-log` (`--digest-file`), so it comes back as the
    `kaniko` container's termination message; on failure the message falls back to the last log lines.

    Example:
        build_kaniko_job(project=project, backend=backend, commit=sha, version="3", plan_id="p1",
                         environment="prod", job_name="dagctl-build-p1")
    """
    backend = backend.for_builds()
    checkout = GitCheckout(project.repository, commit, project.subdirectory)
    image = backend.image_repository(project.name)
    version_tag, sha_tag = build_image_tags(image, version=version, commit=commit)
    labels = _labels(backend, build_plan_labels(project.name, environment, plan_id), "build")

    selector = [*DOCKERFILE_SELECTOR, "--context", checkout.project_dir, "--output", BUILD_DOCKERFILE]
    if backend.dockerfile:
        selector += ["--dockerfile", backend.dockerfile]
    args = [
        f"--context=dir://{checkout.project_dir}",
        f"--dockerfile={BUILD_DOCKERFILE}",
        f"--destination={version_tag}",
        f"--destination={sha_tag}",
        "--cache=true",
        f"--cache-repo={backend.layer_cache_repository(project.name)}",
        "--digest-file=/dev/termination-log",
        f"--build-arg=BASE_IMAGE={backend.runner_image}",
        f"--label=org.opencontainers.image.revision={commit}",
        f"--label=org.opencontainers.image.version={version}",
    ]
    if backend.insecure_registry and backend.registry_host:
        args += [f"--insecure-registry={backend.registry_host}",
                 f"--skip-tls-verify-registry={backend.registry_host}"]
    args += list(backend.kaniko_extra_args)

    kaniko: Manifest = {
        "name": KANIKO_CONTAINER,
        "image": backend.kaniko_image,
        "args": args,
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": "workspace", "mountPath": WORKSPACE_DIR},
                         {"name": "build", "mountPath": BUILD_DIR}],
    }
    volumes = [*_checkout_volumes(backend), {"name": "build", "emptyDir": {}}]
    if backend.docker_config_secret:
        kaniko["volumeMounts"].append({"name": "docker-config", "mountPath": DOCKER_CONFIG_DIR,
                                       "readOnly": True})
        volumes.append({"name": "docker-config", "secret": {
            "secretName": backend.docker_config_secret,
            "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
        }})
    if backend.build_resources:
        kaniko["resources"] = backend.build_resources.to_manifest()

    dockerfile = {
        "name": DOCKERFILE_CONTAINER,
        "image": backend.runner_image,
        "command": selector,
        "volumeMounts": [{"name": "workspace", "mountPath": WORKSPACE_DIR, "readOnly": True},
                         {"name": "build", "mountPath": BUILD_DIR}],
        "securityContext": build_container_security_context(backend),
    }
    pod_spec = {
        # Kaniko unpacks image layers as root: the one container of dagctl that is not "restricted".
        **_pod_spec_base(backend, non_root=False),
        "initContainers": [*build_checkout_containers(checkout, backend), dockerfile],
        "containers": [kaniko],
        "volumes": volumes,
    }
    job_spec: Manifest = {
        "backoffLimit": 0,
        "activeDeadlineSeconds": backend.timeout_seconds,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if backend.job_ttl_seconds is not None:
        job_spec["ttlSecondsAfterFinished"] = backend.job_ttl_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name, "namespace": backend.namespace, "labels": labels},
        "spec": job_spec,
    }


def _secret_env(refs: tuple[SecretRef, ...]) -> list[Manifest]:
    return [{"name": ref.env, "valueFrom": {"secretKeyRef": {"name": ref.secret, "key": ref.key}}}
            for ref in refs]


def build_step_pod(
    step: StepSpec,
    backend: KubernetesBackendConfig,
    *,
    pod_name: str,
    checkout: GitCheckout | None = None,
    claims: dict[str, str] | None = None,
) -> Manifest:
    """The Pod that runs one step: `step.argv` as the container command, never through a shell.

    The image is `step.image` (the built image's digest for dbt) or the backend's runner image. With a
    `checkout`, init containers fetch the pinned commit first and the step runs in its project folder.
    `claims` mounts PersistentVolumeClaims into the step container: `{mount path: claim name}`.

    Example:
        build_step_pod(StepSpec(name="execute-0", argv=("dbt", "build"), image="reg/jaffle@sha256:...",
                                labels=build_plan_labels("jaffle", "prod", "p1")),
                       backend, pod_name="dagctl-p1-execute-0")
    """
    image = step.image or backend.runner_image
    if not is_image_reference(image):
        raise DagctlStepError(f"step '{step.name}': '{image}' is not a valid image reference")
    env = [{"name": key, "value": value} for key, value in step.env.items()]
    env += _secret_env(backend.secret_env + step.secret_env)
    container: Manifest = {"name": STEP_CONTAINER, "image": image, "command": list(build_runner_argv(step.argv)),
                           "terminationMessagePolicy": "FallbackToLogsOnError",
                           "securityContext": build_container_security_context(backend)}
    env_from = [{"secretRef": {"name": name}} for name in backend.env_from_secrets]
    env_from += [{"configMapRef": {"name": name}} for name in backend.env_from_config_maps]
    if env_from:
        container["envFrom"] = env_from
    if backend.resources:
        container["resources"] = backend.resources.to_manifest()

    spec = _pod_spec_base(backend)
    mounts: list[Manifest] = []
    volumes: list[Manifest] = []
    working_dir = step.working_dir
    if checkout is not None:
        spec["initContainers"] = build_checkout_containers(checkout, backend)
        volumes += _checkout_volumes(backend)
        mounts.append({"name": "workspace", "mountPath": WORKSPACE_DIR})
        working_dir = checkout.project_dir
    for index, (path, claim) in enumerate(sorted((claims or {}).items())):
        volumes.append({"name": f"claim-{index}", "persistentVolumeClaim": {"claimName": claim}})
        mounts.append({"name": f"claim-{index}", "mountPath": path})
    if backend.dbt_profiles_secret:
        volumes.append({"name": "dbt-profiles", "secret": {
            "secretName": backend.dbt_profiles_secret, "items": [{"key": "profiles.yml", "path": "profiles.yml"}],
        }})
        mounts.append({"name": "dbt-profiles", "mountPath": DBT_PROFILES_MOUNT, "readOnly": True})
        # The mounted profiles win over a DBT_PROFILES_DIR the step names (e.g. the image's folder).
        env = [item for item in env if item["name"] != "DBT_PROFILES_DIR"]
        env.append({"name": "DBT_PROFILES_DIR", "value": DBT_PROFILES_MOUNT})
    if env:
        container["env"] = env
    if working_dir:
        container["workingDir"] = working_dir
    if mounts:
        container["volumeMounts"] = mounts
    if volumes:
        spec["volumes"] = volumes
    spec["containers"] = [container]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": pod_name, "namespace": backend.namespace,
                     "labels": _labels(backend, step.labels, step.name)},
        "spec": spec,
    }
