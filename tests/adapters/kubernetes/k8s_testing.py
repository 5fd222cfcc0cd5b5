"""Shared pieces of the Kubernetes backend tests: story constants, offline manifest validation, and a fake
cluster at the client boundary."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kubernetes
import kubernetes_validate
import pytest
import urllib3
from dagster_k8s.client import DagsterKubernetesClient
from kubernetes.client import (
    V1Container,
    V1ContainerState,
    V1ContainerStateRunning,
    V1ContainerStateTerminated,
    V1ContainerStateWaiting,
    V1ContainerStatus,
    V1ObjectMeta,
    V1Pod,
    V1PodList,
    V1PodSpec,
    V1PodStatus,
)

# A recent Kubernetes release (kubernetes-validate 1.37.0 ships the schemas of 1.25 to 1.37, offline).
KUBERNETES_VERSION = "1.34.0"
COMMIT = "3f2a9c1d7b5e4a0c9d8e7f6a5b4c3d2e1f0a9b8c"
PLAN_ID = "jaffle-prod-3f2a9c1d"
DIGEST = "sha256:" + "ab" * 32
RUNNER_IMAGE = "ghcr.io/acme/dagctl-dagster:0.1.0"


def assert_valid_manifest(manifest: dict[str, Any]) -> None:
    """Validates against the strict schema (unknown fields rejected) and fails with the schema's message."""
    try:
        kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{manifest['kind']} is not valid for Kubernetes {KUBERNETES_VERSION}: {exc.message} "
                    f"at {'.'.join(str(part) for part in exc.path)}")


# --- a fake cluster at the client boundary ----------------------------------------------------------------
# dagster-k8s's own unit tests fake `BatchV1Api`/`CoreV1Api` under a real `DagsterKubernetesClient`, with the
# sleeper and the clock injected; so do these. Time only moves when the code under test sleeps (or follows
# a log until its container ends), so waiting and timeouts are exercised without real sleeps.

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)


class FakeClock:
    """`time()` for the client's timer, `sleep()` for its sleeper: sleeping moves the clock, nothing else."""

    def __init__(self, now: float = 1_740_819_600.0):
        self.now = now
        self.slept = 0.0

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
        self.slept += seconds


@dataclass
class ContainerScript:
    """One container's life, in seconds after the pod was created.

    `waiting` (e.g. "ErrImagePull") keeps it waiting forever; `ends_at=None` keeps it running forever.
    """

    name: str
    init: bool = False
    starts_at: float = 1.0
    ends_at: float | None = 2.0
    exit_code: int = 0
    message: str | None = None
    waiting: str | None = None
    lines: list[str] = field(default_factory=list)
    # The CRI log writer (CRI-O, podman) stamps every line of one read alike: all lines share one stamp.
    same_stamp: bool = False

    def state(self, elapsed: float, has_pending_init: bool) -> tuple[V1ContainerState, bool]:
        if self.waiting:
            return V1ContainerState(waiting=V1ContainerStateWaiting(reason=self.waiting,
                                                                    message=f"{self.waiting}: ghcr.io/x")), False
        if elapsed < self.starts_at or (has_pending_init and not self.init):
            reason = "PodInitializing" if has_pending_init and not self.init else "ContainerCreating"
            return V1ContainerState(waiting=V1ContainerStateWaiting(reason=reason)), False
        if self.ends_at is None or elapsed < self.ends_at:
            return V1ContainerState(running=V1ContainerStateRunning(started_at=T0)), not self.init
        reason = "Completed" if self.exit_code == 0 else "Error"
        return V1ContainerState(terminated=V1ContainerStateTerminated(
            exit_code=self.exit_code, reason=reason, message=self.message)), False

    def has_started(self, elapsed: float) -> bool:
        return not self.waiting and elapsed >= self.starts_at

    def stamped_lines(self) -> list[str]:
        return [f"{(T0 + timedelta(seconds=self.starts_at, microseconds=0 if self.same_stamp else index)).strftime('%Y-%m-%dT%H:%M:%S.%f')}"
                f"000Z {line}" for index, line in enumerate(self.lines)]


class FakeLogResponse:
    """What `read_namespaced_pod_log(..., _preload_content=False)` returns: bytes in odd-sized chunks."""

    def __init__(self, text: str, break_after_lines: int | None = None):
        self.data = text.encode()
        self._break_after = break_after_lines
        self.released = False

    def __iter__(self):
        if self._break_after is not None:
            head = "".join(line + "\n" for line in self.data.decode().splitlines()[: self._break_after])
            yield head.encode()
            raise urllib3.exceptions.ProtocolError("Connection broken: IncompleteRead")
        for start in range(0, len(self.data), 7):
            yield self.data[start:start + 7]

    def release_conn(self) -> None:
        self.released = True


class FakeCluster:
    """CoreV1Api and BatchV1Api in one: at most one pod, created directly or by a Job, living by a script."""

    def __init__(self, clock: FakeClock, containers: list[ContainerScript], *, scheduled: bool = True,
                 pod_reason: str | None = None, break_follow_after: int | None = None):
        self.clock = clock
        self.containers = containers
        self.scheduled = scheduled
        self.pod_reason = pod_reason
        self.break_follow_after = break_follow_after
        self.created_pods: list[dict] = []
        self.created_jobs: list[dict] = []
        self.deleted: list[tuple[str, str]] = []
        self.log_requests: list[dict] = []
        self.pod_name: str | None = None
        self.created_at = 0.0

    # -- BatchV1Api
    def create_namespaced_job(self, namespace: str, body: dict, **_: object) -> None:
        self.created_jobs.append(body)
        self.pod_name = f"{body['metadata']['name']}-x7k2p"
        self.created_at = self.clock.now

    def delete_namespaced_job(self, name: str, namespace: str, **_: object) -> None:
        self.deleted.append(("job", name))

    # -- CoreV1Api
    def create_namespaced_pod(self, namespace: str, body: V1Pod) -> None:
        manifest = kubernetes.client.ApiClient().sanitize_for_serialization(body)
        self.created_pods.append({"apiVersion": "v1", "kind": "Pod", **manifest})
        self.pod_name = body.metadata.name
        self.created_at = self.clock.now

    def delete_namespaced_pod(self, name: str, namespace: str, **_: object) -> None:
        self.deleted.append(("pod", name))
        if name == self.pod_name:
            self.pod_name = None

    def _pod(self) -> V1Pod | None:
        if self.pod_name is None or ("pod", self.pod_name) in self.deleted:
            return None
        elapsed = self.clock.now - self.created_at
        init = [c for c in self.containers if c.init]
        main = [c for c in self.containers if not c.init]
        statuses: dict[str, list[V1ContainerStatus]] = {"init": [], "main": []}
        if self.scheduled:
            pending_init = False
            for script in init:
                state, ready = script.state(elapsed, False)
                statuses["init"].append(V1ContainerStatus(name=script.name, image="x", image_id="x",
                                                          ready=ready, restart_count=0, state=state))
                pending_init = pending_init or state.terminated is None
                if state.terminated is None or state.terminated.exit_code != 0:
                    break
            for script in main:
                state, ready = script.state(elapsed, pending_init)
                statuses["main"].append(V1ContainerStatus(name=script.name, image="x", image_id="x",
                                                          ready=ready, restart_count=0, state=state))
        terminated = [s.state.terminated for s in statuses["main"] if s.state.terminated]
        phase = ("Pending" if len(terminated) < len(main) and not any(s.state.running for s in statuses["main"])
                 else "Running")
        if statuses["main"] and len(terminated) == len(main):
            phase = "Succeeded" if all(t.exit_code == 0 for t in terminated) else "Failed"
        return V1Pod(
            metadata=V1ObjectMeta(name=self.pod_name),
            spec=V1PodSpec(restart_policy="Never",
                           init_containers=[V1Container(name=c.name, image="x") for c in init] or None,
                           containers=[V1Container(name=c.name, image="x") for c in main]),
            status=V1PodStatus(phase=phase, reason=self.pod_reason,
                               message="Pod was active on the node longer than the specified deadline"
                               if self.pod_reason else None,
                               init_container_statuses=statuses["init"] or None,
                               container_statuses=statuses["main"] or None),
        )

    def list_namespaced_pod(self, namespace: str, **_: object) -> V1PodList:
        pod = self._pod()
        return V1PodList(items=[pod] if pod else [])

    def read_namespaced_pod(self, name: str, namespace: str, **_: object) -> V1Pod:
        pod = self._pod()
        if pod is None:
            raise kubernetes.client.ApiException(status=404, reason="Not Found")
        return pod

    def list_namespaced_event(self, namespace: str, **_: object):
        return kubernetes.client.CoreV1EventList(items=[])

    def read_namespaced_pod_log(self, name: str, namespace: str, container: str | None = None,
                                follow: bool = False, timestamps: bool = False, tail_lines: int | None = None,
                                **_: object) -> FakeLogResponse:
        self.log_requests.append({"container": container, "follow": follow})
        script = next(c for c in self.containers if c.name == container)
        if not script.has_started(self.clock.now - self.created_at):
            raise kubernetes.client.ApiException(status=400, reason="container is waiting to start")
        if follow and script.ends_at is not None:  # a followed log ends when its container does
            self.clock.now = max(self.clock.now, self.created_at + script.ends_at)
        lines = script.stamped_lines() if timestamps else list(script.lines)
        if tail_lines:
            lines = lines[-tail_lines:]
        text = "".join(line + "\n" for line in lines)
        return FakeLogResponse(text, self.break_follow_after if follow else None)

    def client(self) -> DagsterKubernetesClient:
        return DagsterKubernetesClient(batch_api=self, core_api=self, logger=lambda *_: None,
                                       sleeper=self.clock.sleep, timer=self.clock.time)


class PlayedCluster(FakeCluster):
    """A fake cluster whose pods run for real: each pod created is played at once (`play_pod`), and the
    output of its main container becomes that container's log, which the code under test then follows.

    `claims` and `secrets` give the folders a PersistentVolumeClaim and a secret volume stand for (by claim
    and secret name); `environ` completes each container's environment (PATH, HOME: the image's own).
    """

    def __init__(self, root: Path, *, claims: dict[str, Path] | None = None,
                 secrets: dict[str, Path] | None = None, environ: dict[str, str] | None = None):
        init = [ContainerScript(name, init=True, starts_at=1 + index, ends_at=2 + index)
                for index, name in enumerate(("git-init", "git-fetch", "git-checkout"))]
        super().__init__(FakeClock(), [*init, ContainerScript("dagctl-step", starts_at=5, ends_at=30)])
        self.root = root
        self.claims = claims or {}
        self.secrets = secrets or {}
        self.environ = environ or {}

    def create_namespaced_pod(self, namespace: str, body: V1Pod) -> None:
        super().create_namespaced_pod(namespace, body)
        code, lines = play_pod(self.created_pods[-1], Path(tempfile.mkdtemp(dir=self.root)),
                               claims=self.claims, secrets=self.secrets, environ=self.environ)
        self.containers[-1].lines, self.containers[-1].exit_code = lines, code


def play_pod(pod: dict[str, Any], scratch: Path, *, claims: dict[str, Path], secrets: dict[str, Path],
             environ: dict[str, str]) -> tuple[int, list[str]]:
    """Runs a pod manifest's containers as local processes, init containers first (one that fails fails
    the test); returns the main container's exit code and output (stdout and stderr, as a container log
    interleaves them).

    Each container sees only its own volume mounts: every argument, working directory and variable value
    under a mount path is moved to the folder that volume stands for (an `emptyDir` a new folder in
    `scratch`, a claim or a secret the folder given for its name), so a path the pod does not mount is not
    there. Variables from `secretKeyRef` are left out, `python` is this interpreter (the runner image's).
    """
    folders: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes", []):
        if "emptyDir" in volume:
            folders[volume["name"]] = scratch / volume["name"]
            folders[volume["name"]].mkdir()
        elif "persistentVolumeClaim" in volume:
            folders[volume["name"]] = claims[volume["persistentVolumeClaim"]["claimName"]]
        elif "secret" in volume:
            folders[volume["name"]] = secrets[volume["secret"]["secretName"]]
    done = None
    for container in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
        if done is not None and done.returncode != 0:
            pytest.fail(f"init container of {pod['metadata']['name']} failed: {done.stdout[-2000:]}")
        mounts = {mount["mountPath"]: folders[mount["name"]] for mount in container.get("volumeMounts", [])}
        argv = [_localize(arg, mounts) for arg in container["command"]]
        if argv[0] == "python":
            argv[0] = sys.executable
        env = {**environ, **{item["name"]: _localize(item["value"], mounts) for item in container.get("env", [])
                             if "value" in item}}
        done = subprocess.run(argv, env=env, cwd=_localize(container.get("workingDir", str(scratch)), mounts),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return done.returncode, done.stdout.splitlines()


def _localize(value: str, mounts: dict[str, Path]) -> str:
    """`value` with a leading mount path replaced by the folder mounted there (the longest path wins)."""
    for path in sorted(mounts, key=len, reverse=True):
        if value == path or value.startswith(path + "/"):
            return str(mounts[path]) + value[len(path):]
    return value


def pipes_line(method: str, params: dict) -> str:
    """One dagster-pipes message as the pod writes it to its log."""
    return json.dumps({"__dagster_pipes_version": "0.1", "method": method, "params": params})


def materialization_line(asset_key: str, unique_id: str) -> str:
    return pipes_line("report_asset_materialization", {
        "asset_key": asset_key, "data_version": None,
        "metadata": {"unique_id": {"raw_value": unique_id, "type": "text"}},
    })
