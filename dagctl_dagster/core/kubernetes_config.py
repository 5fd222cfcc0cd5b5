"""Kubernetes backend configuration: where and how a project's steps run in a cluster.

With `backend: {type: kubernetes, ...}` a dbt plan's `build` is a Kaniko job that builds an image of the
pinned commit and pushes it to `registry`, and `execute` (dbt or SQLMesh) is a pod in `namespace`, as is
dbt's parse of the pinned commit in `detect` (on `runner_image`). Every
name, image reference and label is checked here with the rules Kubernetes and the container registries
apply, so a value the cluster would reject fails when the deployment config is loaded, with its field
path, and not halfway through a plan. Secret values never appear in this config: only the names of the
Kubernetes secrets (and keys) that hold them.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from .steps import SecretRef

# Kaniko executor image. GoogleContainerTools/kaniko was archived in June 2025; this is the community fork
# osscontainertools/kaniko (also published as docker.io/martizih/kaniko), which keeps dependencies and CVE
# fixes current and publishes images. Chainguard's fork ships images only to its customers.
DEFAULT_KANIKO_IMAGE = "ghcr.io/osscontainertools/kaniko:v1.28.0"
# Image of the init containers that fetch the pinned commit (its entrypoint and PATH provide `git`, `ssh`).
DEFAULT_GIT_IMAGE = "alpine/git:v2.52.0"

# --- Kubernetes and OCI naming rules -------------------------------------------------------------------
# DNS-1123 label (namespaces) and subdomain (secrets, config maps, service accounts), as in
# k8s.io/apimachinery/pkg/util/validation.
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# Label names and values (qualified names): at most 63 characters, alphanumeric at both ends.
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
# Environment variable names accepted by the API server (and by every shell-less exec).
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
# Resource quantities ("500m", "2Gi", "1e3") and resource names ("cpu", "nvidia.com/gpu").
_QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?\d+)?$")

# Image references, following the grammar of github.com/distribution/reference (what containerd and the
# kubelet parse): [domain[:port]/]path[:tag][@digest], path components lowercase.
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_TAG = r"[\w][\w.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE_REFERENCE = re.compile(rf"^(?P<name>{_NAME})(?::(?P<tag>{_TAG}))?(?:@(?P<digest>{_DIGEST}))?$")
_IMAGE_NAME = re.compile(rf"^{_NAME}$")
_REPOSITORY = re.compile(rf"^{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*$")
_MAX_IMAGE_NAME = 255

RESERVED_LABEL_PREFIX = "dagctl/"


def is_image_reference(value: str) -> bool:
    """Whether `value` is an image reference a container runtime can pull, e.g. `ghcr.io/acme/dbt:1.2`."""
    match = _IMAGE_REFERENCE.match(value)
    return bool(match) and len(match.group("name")) <= _MAX_IMAGE_NAME


def is_image_name(value: str) -> bool:
    """Whether `value` is an image name without tag or digest, e.g. `kind-registry:5000/dbt/jaffle`."""
    return bool(_IMAGE_NAME.match(value)) and len(value) <= _MAX_IMAGE_NAME


def is_label_value(value: str) -> bool:
    """Whether Kubernetes accepts `value` as a label value (empty is allowed)."""
    return value == "" or (len(value) <= 63 and bool(_LABEL_NAME.match(value)))


def _check_image_reference(value: str) -> str:
    if not is_image_reference(value):
        raise ValueError(
            f"'{value}' is not a valid image reference: use [registry[:port]/]path[:tag][@sha256:...] "
            "with a lowercase path, e.g. ghcr.io/acme/dagctl-dagster:0.1.0"
        )
    return value


def _check_registry(value: str) -> str:
    value = value.rstrip("/")
    if not is_image_name(f"{value}/x"):
        raise ValueError(
            f"'{value}' is not a valid registry: use host[:port][/path], e.g. ghcr.io/acme or "
            "kind-registry:5000"
        )
    return value


def _check_repository(value: str) -> str:
    if not _REPOSITORY.match(value):
        raise ValueError(
            f"'{value}' is not a valid image repository: lowercase letters, digits and separators "
            "(. _ __ -), components joined by '/', e.g. dbt/jaffle"
        )
    return value


def _check_dns_label(value: str) -> str:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        raise ValueError(
            f"'{value}' is not a valid Kubernetes name: at most 63 lowercase letters, digits or '-', "
            "starting and ending with a letter or digit"
        )
    return value


def _check_dns_subdomain(value: str) -> str:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        raise ValueError(
            f"'{value}' is not a valid Kubernetes object name: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return value


def _check_qualified_name(value: str, what: str) -> str:
    """Kubernetes' qualified names (label keys, resource names): `[dns-subdomain/]name`."""
    prefix, _, name = value.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        raise ValueError(f"'{value}' is not a valid {what}: prefix '{prefix}' must be a DNS subdomain")
    if len(name) > 63 or not _LABEL_NAME.match(name):
        raise ValueError(
            f"'{value}' is not a valid {what}: the name part must be at most 63 characters, "
            "alphanumeric at both ends, with '-', '_' or '.' in between"
        )
    return value


def _check_resource_name(value: str) -> str:
    return _check_qualified_name(value, "resource name")


def _check_label_key(value: str) -> str:
    _check_qualified_name(value, "label key")
    if value.startswith(RESERVED_LABEL_PREFIX):
        raise ValueError(f"'{value}': labels starting with '{RESERVED_LABEL_PREFIX}' are set by dagctl")
    return value


def _check_label_value(value: str) -> str:
    if not is_label_value(value):
        raise ValueError(
            f"'{value}' is not a valid label value: at most 63 characters, alphanumeric at both ends, "
            "with '-', '_' or '.' in between"
        )
    return value


def _check_quantity(value: str) -> str:
    if not _QUANTITY.match(value):
        raise ValueError(f"'{value}' is not a Kubernetes quantity, e.g. 500m, 2, 512Mi or 4Gi")
    return value


def _check_relative_path(value: str) -> str:
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"'{value}' must be a path inside the project folder, e.g. docker/Dockerfile")
    return value


def _number_as_text(value: object) -> object:
    """YAML reads `cpu: 1` or `version: 2` as numbers; Kubernetes wants the text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


ImageReference = Annotated[str, AfterValidator(_check_image_reference)]
DnsLabel = Annotated[str, AfterValidator(_check_dns_label)]
ObjectName = Annotated[str, AfterValidator(_check_dns_subdomain)]
LabelKey = Annotated[str, AfterValidator(_check_label_key)]
LabelValue = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_check_label_value)]
ResourceName = Annotated[str, AfterValidator(_check_resource_name)]
Quantity = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_check_quantity)]


class ContainerResources(BaseModel):
    """Requests and limits of one container, as in a pod spec.

    Example: `{requests: {cpu: 500m, memory: 1Gi}, limits: {memory: 2Gi}}`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    requests: dict[ResourceName, Quantity] = Field(default_factory=dict, description="Guaranteed amounts.")
    limits: dict[ResourceName, Quantity] = Field(default_factory=dict, description="Upper bounds.")

    def to_manifest(self) -> dict[str, dict[str, str]]:
        return {key: dict(value) for key, value in (("requests", self.requests), ("limits", self.limits))
                if value}


class KubernetesBackendConfig(BaseModel):
    """Steps run as pods launched through dagster-k8s: Kaniko builds the dbt image, dbt and SQLMesh run in pods.

    Example (deployment config):
        backend:
          type: kubernetes
          namespace: analytics
          runner_image: ghcr.io/acme/dagctl-dagster:0.1.0
          registry: ghcr.io/acme
          repository: dbt/jaffle
          git_ssh_secret: dagctl-git-ssh
          docker_config_secret: dagctl-registry
          env_from_secrets: [warehouse-credentials]
          resources: {requests: {cpu: "1", memory: 2Gi}}
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["kubernetes"] = "kubernetes"
    namespace: DnsLabel = Field(default="default", description="Namespace of the build jobs and step pods.")
    build_namespace: DnsLabel | None = Field(
        default=None,
        description="Namespace of the Kaniko build jobs (default: `namespace`). Kaniko runs as root, so its "
        "Job meets only the 'baseline' Pod Security Standard: give it a namespace of its own and keep "
        "`namespace` (step pods) at 'restricted' (docs/kubernetes.md).",
    )
    run_as_user: int = Field(
        default=1000,
        description="Unprivileged uid (and gid, fsGroup) of step pods and of the build's helper containers: "
        "the runner image's user. Pods run as non-root under the 'restricted' Pod Security Standard.",
    )
    service_account: ObjectName | None = Field(
        default=None, description="Service account of the build and step pods (default: the namespace's)."
    )
    runner_image: ImageReference = Field(
        description="Image with dagctl-dagster, dbt and SQLMesh (our Dockerfile): runs SQLMesh steps, "
        "prepares Kaniko builds, and is the base image (build-arg BASE_IMAGE) of dbt project images.",
    )
    registry: str | None = Field(
        default=None,
        description="Registry (and optional path) the dbt images are pushed to, e.g. ghcr.io/acme. "
        "Required for dbt projects.",
    )
    repository: str | None = Field(
        default=None, description="Repository of the dbt images under `registry` (default: the project name)."
    )
    cache_repository: str | None = Field(
        default=None, description="Kaniko layer cache repository (default: <registry>/<repository>/cache)."
    )
    kaniko_image: ImageReference = Field(
        default=DEFAULT_KANIKO_IMAGE, description="Kaniko executor image (default: the maintained fork)."
    )
    git_image: ImageReference = Field(
        default=DEFAULT_GIT_IMAGE, description="Image of the init containers that fetch the pinned commit."
    )
    dockerfile: str | None = Field(
        default=None,
        description="Dockerfile path inside the project folder. Default: the project's `Dockerfile` "
        "when it has one, else the default dbt Dockerfile shipped with dagctl.",
    )
    insecure_registry: bool = Field(
        default=False, description="Push to and pull from `registry` over plain HTTP (local kind registry)."
    )
    kaniko_extra_args: tuple[str, ...] = Field(
        default=(), description="Extra Kaniko flags, e.g. ['--snapshot-mode=redo']."
    )
    resources: ContainerResources | None = Field(default=None, description="Resources of step pods.")
    build_resources: ContainerResources | None = Field(
        default=None, description="Resources of the Kaniko container."
    )
    labels: dict[LabelKey, LabelValue] = Field(
        default_factory=dict, description="Extra labels on every job and pod (dagctl/* are set by dagctl)."
    )
    env_from_secrets: tuple[ObjectName, ...] = Field(
        default=(), description="Secrets whose keys all become environment variables of step pods."
    )
    env_from_config_maps: tuple[ObjectName, ...] = Field(
        default=(), description="Config maps whose keys all become environment variables of step pods."
    )
    secret_env: tuple[SecretRef, ...] = Field(
        default=(), description="Single environment variables of step pods taken from secret keys."
    )
    image_pull_secrets: tuple[ObjectName, ...] = Field(
        default=(), description="Secrets to pull the runner, Kaniko and dbt images."
    )
    dbt_profiles_secret: ObjectName | None = Field(
        default=None,
        description="Secret with a `profiles.yml` key, mounted into dbt pods as DBT_PROFILES_DIR "
        "(default: the profiles the step names, e.g. inside the image).",
    )
    git_ssh_secret: ObjectName | None = Field(
        default=None,
        description="Secret with keys `ssh-privatekey` and `known_hosts` to fetch an ssh:// repository.",
    )
    git_token_secret: ObjectName | None = Field(
        default=None, description="Secret with key `token` to fetch an https:// repository."
    )
    git_token_username: str = Field(
        default="x-access-token", pattern=r"^[A-Za-z0-9._-]+$",
        description="User name sent with the token (GitHub: x-access-token, GitLab: oauth2).",
    )
    docker_config_secret: ObjectName | None = Field(
        default=None,
        description="Secret of type kubernetes.io/dockerconfigjson with push access to `registry`.",
    )
    timeout_seconds: int = Field(
        default=3600, ge=1, description="Longest a build or a step may take, pending time included."
    )
    parse_cache_claim: ObjectName | None = Field(
        default=None,
        description="PersistentVolumeClaim mounted into dbt's parse pods: keeps each project's last parses "
        "(manifest, partial-parse file) and dbt packages, so the next plan's parse is partial. "
        "ReadWriteMany when parse pods may run on several nodes at once. Default: none, every parse is cold.",
    )
    parse_timeout_seconds: int = Field(
        default=600, ge=1,
        description="Longest dbt's parse pod (in `detect`, before approval) may take, pending time included "
        "(at most `timeout_seconds`). A parse pod that does not finish in time (e.g. waiting for a secret "
        "that does not exist) leaves the plan explained from Git with its impact unavailable.",
    )
    poll_interval_seconds: float = Field(default=5.0, gt=0, description="Seconds between status polls.")
    keep_failed_jobs: bool = Field(
        default=True,
        description="Keep jobs and pods whose container failed, for `kubectl logs`; successful ones, and "
        "ones that timed out or never started, are always deleted.",
    )
    job_ttl_seconds: int | None = Field(
        default=86400, ge=0, description="Kubernetes removes finished (kept) build jobs after this long."
    )
    load_incluster_config: bool | None = Field(
        default=None,
        description="Use the pod's service account (true) or a kubeconfig (false); default: in-cluster "
        "when KUBERNETES_SERVICE_HOST is set.",
    )
    kubeconfig_file: str | None = Field(default=None, description="Kubeconfig path when not in-cluster.")
    kube_context: str | None = Field(default=None, description="Kubeconfig context when not in-cluster.")

    @field_validator("registry")
    @classmethod
    def _registry_is_valid(cls, value: str | None) -> str | None:
        return None if value is None else _check_registry(value)

    @field_validator("repository")
    @classmethod
    def _repository_is_valid(cls, value: str | None) -> str | None:
        return None if value is None else _check_repository(value)

    @field_validator("cache_repository")
    @classmethod
    def _cache_is_image_name(cls, value: str | None) -> str | None:
        if value is not None and not is_image_name(value):
            raise ValueError(f"'{value}' is not a valid image name, e.g. ghcr.io/acme/dbt/jaffle/cache")
        return value

    @field_validator("dockerfile")
    @classmethod
    def _dockerfile_inside_project(cls, value: str | None) -> str | None:
        return None if value is None else _check_relative_path(value)

    @field_validator("kaniko_extra_args")
    @classmethod
    def _flags_only(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arg in value:
            if not arg.startswith("--"):
                raise ValueError(f"'{arg}' is not a Kaniko flag: write each as --name=value")
        return value

    @field_validator("secret_env")
    @classmethod
    def _secret_refs_are_valid(cls, value: tuple[SecretRef, ...]) -> tuple[SecretRef, ...]:
        for ref in value:
            if not _ENV_NAME.match(ref.env):
                raise ValueError(f"'{ref.env}' is not a valid environment variable name")
            _check_dns_subdomain(ref.secret)
            if not _SECRET_KEY.match(ref.key):
                raise ValueError(f"'{ref.key}' is not a valid secret key: letters, digits, '-', '_', '.'")
        return value

    @field_validator("run_as_user")
    @classmethod
    def _not_root(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"{value} is root or invalid: step pods run as an unprivileged uid under the "
                             "'restricted' Pod Security Standard; use the image's user (default 1000)")
        return value

    @model_validator(mode="after")
    def _check_combinations(self) -> KubernetesBackendConfig:
        if self.git_ssh_secret and self.git_token_secret:
            raise ValueError("set either git_ssh_secret or git_token_secret, not both")
        if self.load_incluster_config and (self.kubeconfig_file or self.kube_context):
            raise ValueError("kubeconfig_file and kube_context apply only when load_incluster_config is false")
        if self.repository and not self.registry:
            raise ValueError("repository needs a registry, e.g. registry: ghcr.io/acme")
        return self

    def check_framework(self, framework: str) -> None:
        """Raises ValueError when this backend cannot serve `framework` (e.g. dbt without a registry)."""
        if framework == "dbt" and not self.registry:
            raise ValueError(
                "backend.registry is required for a dbt project on the kubernetes backend: Kaniko pushes "
                "the image of each plan's commit there (e.g. registry: ghcr.io/acme)"
            )

    def image_repository(self, project_name: str) -> str:
        """Where a project's dbt images go: `<registry>/<repository>`.

        Example: registry `ghcr.io/acme`, no repository, project `jaffle_shop` -> `ghcr.io/acme/jaffle-shop`.
        """
        if not self.registry:
            raise ValueError("backend.registry is required to build images")
        repository = self.repository or re.sub(r"[^a-z0-9]+", "-", project_name.lower()).strip("-")
        name = f"{self.registry}/{repository}"
        if not is_image_name(name):
            raise ValueError(f"'{name}' is not a valid image name")
        return name

    def layer_cache_repository(self, project_name: str) -> str:
        """Kaniko's `--cache-repo`: `cache_repository`, else `<image repository>/cache`."""
        return self.cache_repository or f"{self.image_repository(project_name)}/cache"

    def for_builds(self) -> KubernetesBackendConfig:
        """This backend with `namespace` set to where Kaniko build jobs run (`build_namespace`)."""
        return self.model_copy(update={"namespace": self.build_namespace}) if self.build_namespace else self

    @property
    def registry_host(self) -> str | None:
        """The host[:port] part of `registry`, e.g. `kind-registry:5000`."""
        return self.registry.split("/", 1)[0] if self.registry else None
