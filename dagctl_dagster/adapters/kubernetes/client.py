"""The thin layer over the Kubernetes Python client: loading credentials and reading what pods report.

Everything here works on the client's model objects (`V1Pod` and friends) or on the raw bytes of a log
stream; nothing waits or sleeps. Waiting, retries and timeouts live with dagster-k8s's
`DagsterKubernetesClient`, whose API objects, sleeper and clock the Dagster glue passes in.
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Iterable, Iterator
from typing import Any

import kubernetes

from ...core.errors import DagctlConfigError, DagctlStepError
from ...core.kubernetes_config import KubernetesBackendConfig

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")


def load_kubernetes_config(backend: KubernetesBackendConfig) -> None:
    """Loads in-cluster or kubeconfig credentials for the client, as the backend asks.

    Without an explicit choice, a process inside a cluster (KUBERNETES_SERVICE_HOST set) uses its service
    account, anything else the default kubeconfig; the same rule as dagster-k8s's PipesK8sClient.
    """
    in_cluster = backend.load_incluster_config
    if in_cluster is None:
        in_cluster = bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and not (
            backend.kubeconfig_file or backend.kube_context
        )
    try:
        if in_cluster:
            kubernetes.config.load_incluster_config()
        else:
            kubernetes.config.load_kube_config(config_file=backend.kubeconfig_file, context=backend.kube_context)
    except (kubernetes.config.ConfigException, OSError) as exc:
        where = "the pod's service account" if in_cluster else (
            f"kubeconfig {backend.kubeconfig_file or '(default)'}"
            + (f", context {backend.kube_context}" if backend.kube_context else "")
        )
        raise DagctlConfigError(
            f"kubernetes backend: cannot load cluster credentials from {where}: {exc}; set "
            "backend.load_incluster_config, kubeconfig_file or kube_context"
        ) from exc


def iter_log_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Lines of a log stream delivered in arbitrary byte chunks (UTF-8, invalid bytes replaced)."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    for chunk in chunks:
        pending += decoder.decode(chunk)
        *lines, pending = pending.split("\n")
        yield from (line.rstrip("\r") for line in lines)
    pending += decoder.decode(b"", final=True)
    if pending:
        yield pending.rstrip("\r")


_STAMP = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?Z$")


def split_timestamp(line: str) -> tuple[str, str]:
    """`"2025-03-01T09:00:00.5Z text"` -> `("2025-03-01T09:00:00.500000000Z", "text")`.

    Lines requested with `timestamps=True` start with an RFC 3339 time in UTC. The fraction is padded to
    nine digits, so the returned stamps order like the times they stand for. A line without a stamp
    gives `("", line)`.
    """
    stamp, _, text = line.partition(" ")
    match = _STAMP.match(stamp)
    if not match:
        return "", line
    return f"{match.group(1)}.{(match.group(2) or '').ljust(9, '0')}Z", text


def _statuses(pod: Any) -> list[tuple[str, Any]]:
    status = pod.status
    if status is None:
        return []
    return [("init container", item) for item in status.init_container_statuses or []] + [
        ("container", item) for item in status.container_statuses or []
    ]


def get_container_status(pod: Any, name: str) -> Any | None:
    """The status of container `name` (init or regular) of `pod`, None before it has one."""
    return next((item for _, item in _statuses(pod) if item.name == name), None)


def has_container_started(pod: Any, name: str) -> bool:
    """Whether container `name` ran (running now, or terminated): only then it has logs."""
    status = get_container_status(pod, name)
    return bool(status and status.state and (status.state.running or status.state.terminated))


def get_failed_container(pod: Any) -> str | None:
    """The first container (init containers first) that terminated with a non-zero exit code."""
    for _, status in _statuses(pod):
        terminated = status.state.terminated if status.state else None
        if terminated is not None and terminated.exit_code != 0:
            return status.name
    return None


def describe_pod(pod: Any | None) -> str:
    """Why a pod is where it is, in one line: phase, pod reason, and every container's state.

    Example: `pod phase Failed (DeadlineExceeded: Pod was active on the node longer than ...); container
    'kaniko' terminated: Error, exit code 1: error building image`.
    """
    if pod is None:
        return "the pod no longer exists"
    status = pod.status
    if status is None:
        return "the pod has no status yet"
    parts = [f"pod phase {status.phase or 'Unknown'}" + (
        f" ({status.reason}: {status.message})" if status.reason else "")]
    for kind, item in _statuses(pod):
        state = item.state
        if state is None:
            continue
        if state.terminated is not None:
            term = state.terminated
            if kind == "init container" and term.exit_code == 0:
                continue  # done its job; only the containers that explain the outcome are listed
            text = f"{kind} '{item.name}' terminated: {term.reason or 'unknown reason'}, exit code {term.exit_code}"
            if term.message and term.exit_code != 0:
                text += f": {term.message.strip().splitlines()[-1]}"
            parts.append(text)
        elif state.waiting is not None:
            wait = state.waiting
            parts.append(f"{kind} '{item.name}' waiting: {wait.reason}"
                         + (f" ({wait.message})" if wait.message else ""))
        elif state.running is not None:
            parts.append(f"{kind} '{item.name}' running")
    return "; ".join(parts)


def read_image_digest(pod: Any, container: str) -> str:
    """The image digest Kaniko wrote to its termination message (`--digest-file=/dev/termination-log`)."""
    status = get_container_status(pod, container)
    terminated = status.state.terminated if status and status.state else None
    message = (terminated.message or "").strip() if terminated else ""
    if not _DIGEST.match(message):
        raise DagctlStepError(
            f"Kaniko finished without reporting the pushed image digest (termination message of "
            f"'{container}': {message!r}); check that the executor supports --digest-file"
        )
    return message
