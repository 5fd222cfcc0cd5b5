"""The Kubernetes backend's steps, run from the plan job's ops through dagster-k8s.

- `build_image_with_kaniko`: the dbt image of a plan's commit, built by a Kaniko Job; returns
  `registry/repository@sha256:...`, read from the Kaniko container's termination message.
- `run_step_in_pod`: one `StepSpec` as a pod, with a dagster-pipes session (dagster-k8s's pod body and pod
  log message reader), so the asset materializations the pod reports reach Dagster.
- `parse_dbt_in_pod`: dbt's parse of a plan's pinned commit (inside `detect`) as such a pod, on the runner
  image, its result and graph sent back as pipes messages (`runner.dbt_parse_pod`).

Both stream the container's output into the run's log while it runs, fail with a `DagctlStepError` naming
the pod's reason and its last log lines, and delete what they created unless it failed and the backend
keeps failed jobs (`keep_failed_jobs`). A job or pod that timed out or never started is always deleted, so
nothing runs after the step was given up. The cluster is reached through a dagster-k8s
`DagsterKubernetesClient` (`api_client`): its BatchV1Api/CoreV1Api objects, sleeper and clock are injected
by tests, built from the backend's credentials otherwise.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import kubernetes
import urllib3
from dagster import (
    AssetMaterialization,
    MaterializeResult,
    OpExecutionContext,
    PipesEnvContextInjector,
    open_pipes_session,
)
from dagster_k8s.client import (
    DagsterK8sAPIRetryLimitExceeded,
    DagsterK8sError,
    DagsterK8sUnrecoverableAPIError,
    DagsterKubernetesClient,
    PatchedApiClient,
    WaitForPodState,
)
from dagster_k8s.pipes import PipesK8sPodLogsMessageReader, build_pod_body
from dagster_pipes import PIPES_PROTOCOL_VERSION_FIELD

from ..adapters.kubernetes.client import (
    describe_pod,
    get_container_status,
    get_failed_container,
    has_container_started,
    iter_log_lines,
    load_kubernetes_config,
    read_image_digest,
    split_timestamp,
)
from ..adapters.kubernetes.specs import (
    GIT_CONTAINERS,
    KANIKO_CONTAINER,
    LABEL_PLAN_ID,
    STEP_CONTAINER,
    GitCheckout,
    build_image_tags,
    build_kaniko_job,
    build_resource_name,
    build_runner_argv,
    build_step_pod,
    to_label_value,
)
from ..core.config import EnvironmentConfig, ProjectConfig
from ..core.errors import DagctlStepError
from ..core.kubernetes_config import KubernetesBackendConfig
from ..core.plan import PlanSpec
from ..core.steps import StepSpec
from ..runner.dbt_parse_pod import read_parse_messages
from .runtime import PlanRuntime

# Log lines of the failing container kept in a step error.
TAIL_LINES = 20
# What the Kubernetes API raises through dagster-k8s's helpers (the client's own retries included).
K8S_ERRORS = (
    DagsterK8sError,
    DagsterK8sAPIRetryLimitExceeded,
    DagsterK8sUnrecoverableAPIError,
    kubernetes.client.ApiException,
    urllib3.exceptions.HTTPError,
)


def build_image_with_kaniko(
    context: OpExecutionContext,
    *,
    project: ProjectConfig,
    backend: KubernetesBackendConfig,
    commit: str,
    version: str,
    plan_id: str,
    environment: str,
    api_client: DagsterKubernetesClient | None = None,
) -> str:
    """Builds and pushes the image of `commit` with a Kaniko Job; returns `<image>@sha256:<digest>`.

    The tags `<version>-<short sha>` and `<full sha>` are pushed too, but `execute` must use the digest.

    Example (in the plan job's build op):
        image = build_image_with_kaniko(context, project=project, backend=backend, commit=spec.target_commit,
                                        version=spec.version_new, plan_id=spec.plan_id,
                                        environment=spec.environment)
    """
    backend = backend.for_builds()  # Kaniko needs root: its jobs may have a namespace of their own
    client = api_client or _production_client(context, backend)
    namespace = backend.namespace
    job_name = build_resource_name("dagctl-build", plan_id, _run_suffix(context))
    manifest = build_kaniko_job(project=project, backend=backend, commit=commit, version=version,
                                plan_id=plan_id, environment=environment, job_name=job_name)
    image = backend.image_repository(project.name)
    tags = build_image_tags(image, version=version, commit=commit)
    context.log.info(f"Kaniko job {namespace}/{job_name}: building {', '.join(tags)} from commit {commit}")
    _create(lambda: client.create_namespaced_job_with_retries(manifest, namespace), f"job {namespace}/{job_name}")

    run = _PodRun(context, client, backend, what=f"Kaniko build of {tags[0]}", container=KANIKO_CONTAINER)
    try:
        pods = client.wait_for_job_to_have_pods(
            job_name, namespace, wait_timeout=backend.timeout_seconds,
            wait_time_between_attempts=backend.poll_interval_seconds, start_time=run.started,
        )
        run.pod_name = pods[0].metadata.name
        run.wait_until_started()
        run.log_init_containers((*GIT_CONTAINERS, "dockerfile"))
        follower = _LogFollower(client.core_api, run.pod_name, namespace, KANIKO_CONTAINER,
                                on_line=lambda text: context.log.info(f"[kaniko] {text}"))
        run.follow(follower)
        run.wait_until_terminated()
        run.catch_up(follower)
        digest = read_image_digest(run.read_pod(), KANIKO_CONTAINER)
    except K8S_ERRORS as exc:
        raise run.failure(exc) from exc
    finally:
        run.clean_up(f"job {namespace}/{job_name}", lambda: client.delete_job(job_name, namespace))
    context.log.info(f"pushed {image}@{digest}")
    return f"{image}@{digest}"


def run_step_in_pod(
    context: OpExecutionContext,
    *,
    step: StepSpec,
    backend: KubernetesBackendConfig,
    api_client: DagsterKubernetesClient | None = None,
    checkout: GitCheckout | None = None,
    fail_on_config_error: bool = False,
    claims: dict[str, str] | None = None,
) -> list[Any]:
    """Runs `step` as a pod and waits for it; what it reports over dagster-pipes is logged to the run.

    The container's output is streamed into the run's log; asset materializations reported from inside
    the pod (the dbt runner reports one per model built) become `AssetMaterialization` events of this op,
    and the custom messages it reported are returned (the parse pod's result and graph).
    With a `checkout`, the pinned commit is fetched into the pod first and the step runs in its project
    folder (`checkout.project_dir`). Raises `DagctlStepError` with the pod's reason and last log lines;
    with `fail_on_config_error`, at once when the container cannot be configured (a secret or key its
    environment names does not exist), where dagster-k8s would wait for it until the timeout.

    Example (in the plan job's execute op):
        run_step_in_pod(context, step=step, backend=backend)
    """
    client = api_client or _production_client(context, backend)
    namespace = backend.namespace
    pod_name = build_resource_name("dagctl", step.labels.get(LABEL_PLAN_ID, ""), step.name,
                                   _run_suffix(context))
    manifest = build_step_pod(resolve_pass_env(step, os.environ), backend, pod_name=pod_name, checkout=checkout,
                              claims=claims)
    reader = _RunLogMessageReader(on_line=lambda text: context.log.info(f"[{step.name}] {text}"))
    run = _PodRun(context, client, backend, what=f"step '{step.name}'", container=STEP_CONTAINER)
    run.pod_name = pod_name
    failure: DagctlStepError | None = None
    with open_pipes_session(
        context=context, context_injector=PipesEnvContextInjector(), message_reader=reader,
        extras={"labels": dict(step.labels), "step": step.name},
    ) as session:
        body = build_pod_body(
            pod_name=pod_name, image=None, command=None, env_vars=session.get_bootstrap_env_vars(),
            base_pod_meta=manifest["metadata"], base_pod_spec=manifest["spec"],
        )
        context.log.info(f"pod {namespace}/{pod_name}: {' '.join(build_runner_argv(step.argv))}")
        _create(lambda: client.core_api.create_namespaced_pod(namespace, body), f"pod {namespace}/{pod_name}")
        run.restart_clock()
        try:
            if fail_on_config_error:
                run.wait_until_configured()
            run.wait_until_started()
            if checkout is not None:
                run.log_init_containers(GIT_CONTAINERS)
            follower = reader.follower(client.core_api, pod_name, namespace)
            run.follow(follower)
            run.wait_until_terminated()
            run.catch_up(follower)
        except K8S_ERRORS as exc:
            failure = run.failure(exc, notes=_outcome_notes(session.get_custom_messages()))
        finally:
            run.clean_up(f"pod {namespace}/{pod_name}",
                         lambda: client.core_api.delete_namespaced_pod(pod_name, namespace))
    _log_reported_results(context, session.get_reported_results())
    if failure is not None:
        raise failure
    return list(session.get_custom_messages())


# Where the parse pod writes dbt's target folder and its result: the pod's workspace volume (an emptyDir).
PARSE_DIR = "/workspace/dbt-parse"
# Where `parse_cache_claim` is mounted in the parse pod; each project keeps its parse state in a folder there.
PARSE_CACHE_DIR = "/dagctl/parse-cache"


def build_dbt_parse_pod_step(project: ProjectConfig, env: EnvironmentConfig, spec: PlanSpec,
                             backend: KubernetesBackendConfig, checkout: GitCheckout, *,
                             compare: bool = False) -> StepSpec:
    """The parse step of a dbt plan as its pod runs it: `runner.dbt_parse_pod` on the runner image, in the
    checkout of the pinned commit, with the environment's declared step environment (its secrets become
    `secretKeyRef`s of the pod) and the plan's labels.

    Before approval no image of the commit exists (Kaniko builds it in `build`), so the parse runs on the
    runner image, which holds dbt and the adapters it was built with: a project on another adapter needs a
    runner image with that adapter (docs/kubernetes.md). `profiles.yml` comes from the project folder, or
    from `dbt_profiles_secret`, as for `execute`. With `parse_cache_claim`, the parse state of the project's
    last plans and its dbt packages are kept on that claim (`--cache-dir`), so dbt parses partially;
    without it, the pod keeps no files between plans and dbt parses cold. With the claim and `compare` (the
    run worker wants dbt's state comparison), the pod pins the deployed commit's manifest for the plan on
    the claim and compares with it (`--plan-id`, `--base-commit`): the run worker cannot read the claim.
    """
    from .execution import plan_labels
    from .sqlmesh_plans import build_declared_step

    target_path = f"{PARSE_DIR}/target"
    argv = ("python", "-P", "-m", "dagctl_dagster.runner.dbt_parse_pod", "--project-dir", checkout.project_dir,
            "--target-path", target_path, "--target", env.dbt_target, "--output", f"{PARSE_DIR}/result.json",
            *(("--cache-dir", f"{PARSE_CACHE_DIR}/{project.name}", "--commit", spec.target_commit)
              if backend.parse_cache_claim else ()),
            *(("--plan-id", spec.plan_id, "--base-commit", spec.base_commit)
              if backend.parse_cache_claim and compare and spec.base_commit else ()))
    return build_declared_step(
        project, env, name="parse", argv=argv, working_dir=checkout.project_dir, image=backend.runner_image,
        env_vars={"DBT_PROFILES_DIR": checkout.project_dir, "DBT_LOG_PATH": target_path,
                  "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},
        labels=plan_labels(spec))


def parse_dbt_in_pod(
    runtime: PlanRuntime,
    *,
    project: ProjectConfig,
    env: EnvironmentConfig,
    spec: PlanSpec,
    backend: KubernetesBackendConfig,
    compare: bool = False,
) -> tuple[dict[str, Any], Any | None]:
    """dbt's parse of `spec`'s pinned commit in a pod; returns the parse result and the graph (`DbtGraph`,
    `None` unless dbt parsed), as `defs.dbt_impact` resolves the plan's impact on them. With `compare` and
    `parse_cache_claim`, the result also has dbt's `modified` nodes and `base_manifest_sha256`, the hash
    of the manifest the pod pinned for the plan on the claim (`None`: none is kept there).

    The pod is a step pod like `execute`'s (restricted, labels, timeouts, log following, deleted unless it
    failed in its container and failed pods are kept); it may take at most `parse_timeout_seconds`, and a
    secret its environment names that does not exist fails it at once. A pod that fails, times out or never
    starts (a missing secret, an image that cannot be pulled) is an environment problem: the plan is explained from Git and says why its impact is unavailable.

    Runs in the current op (`detect`), with the cluster client `runtime.kubernetes_client` gives, if any.

    Example (inside `detect`):
        result, graph = parse_dbt_in_pod(runtime, project=project, env=env, spec=spec, backend=backend)
    """
    from .execution import build_checkout

    context = OpExecutionContext.get()
    api_client = runtime.kubernetes_client() if runtime.kubernetes_client is not None else None
    checkout = build_checkout(runtime, project, spec)
    step = build_dbt_parse_pod_step(project, env, spec, backend, checkout, compare=compare)
    bounded = backend.model_copy(update={"timeout_seconds": min(backend.timeout_seconds,
                                                                backend.parse_timeout_seconds)})
    try:
        messages = run_step_in_pod(
            context, step=step, backend=bounded, api_client=api_client, checkout=checkout, fail_on_config_error=True,
            claims={PARSE_CACHE_DIR: backend.parse_cache_claim} if backend.parse_cache_claim else None)
    except DagctlStepError as error:
        return {"outcome": "environment_error", "message": f"dbt's parse pod: {error}"}, None
    result, graph = read_parse_messages(messages)
    if result.get("outcome") == "parsed":
        context.log.info(f"dbt parsed commit {spec.target_commit[:12]} in a pod: {result.get('mode')}, "
                         f"{result.get('seconds')}s, {len(graph.nodes)} nodes " + (
                             f"(parse state kept on the claim {backend.parse_cache_claim})"
                             if backend.parse_cache_claim else
                             "(the Kubernetes backend keeps no parse state between plans: see parse_cache_claim)"))
    return result, graph


def resolve_pass_env(step: StepSpec, environ: Mapping[str, str]) -> StepSpec:
    """The step as its pod runs it: the `pass_env` variables copied now from the launching process's
    environment (a pod cannot read it), skipped when unset. A pod's environment is then exactly the
    step's `env`, its secret references (`secretKeyRef`) and the backend's declared secrets: nothing of
    the code location's own environment, not even the local allowlist (the image has its own PATH).
    """
    passed = {name: environ[name] for name in step.pass_env if name in environ}
    return step.model_copy(update={"env": {**passed, **step.env}, "pass_env": ()})


def delete_run_pods(backend: KubernetesBackendConfig, *, plan_id: str, run_id: str,
                    api_client: DagsterKubernetesClient | None = None) -> list[str]:
    """Deletes, without grace, the step pods that run `run_id` of plan `plan_id` created; returns their names.

    A run worker that died cannot delete its pods itself (`run_step_in_pod` does on every other end): the
    run failure sensor calls this before it records the plan failed. Pods are found by the plan's label and
    the run id that ends each pod's name.

    Example: `delete_run_pods(backend, plan_id="jaffle-prod-3f2a9c1d", run_id=run.run_id)`.
    """
    client = api_client or _production_client(None, backend)
    pods = client.core_api.list_namespaced_pod(
        backend.namespace, label_selector=f"{LABEL_PLAN_ID}={to_label_value(plan_id)}")
    names = [pod.metadata.name for pod in pods.items if f"-{run_id[:8]}" in pod.metadata.name]
    for name in names:
        client.core_api.delete_namespaced_pod(name, backend.namespace, grace_period_seconds=0)
    return names


def _production_client(context: OpExecutionContext | None,
                       backend: KubernetesBackendConfig) -> DagsterKubernetesClient:
    load_kubernetes_config(backend)
    return DagsterKubernetesClient(
        batch_api=kubernetes.client.BatchV1Api(api_client=PatchedApiClient()),
        core_api=kubernetes.client.CoreV1Api(api_client=PatchedApiClient()),
        logger=context.log.debug if context is not None else (lambda *_: None),
        sleeper=time.sleep,
        timer=time.time,
    )


def _create(create: Callable[[], Any], what: str) -> None:
    try:
        create()
    except K8S_ERRORS as exc:
        raise DagctlStepError(
            f"could not create {what}: {exc}; check the backend's namespace and the run worker's RBAC "
            "(helm-values/rbac.yaml)"
        ) from exc


def _run_suffix(context: OpExecutionContext) -> str:
    """Unique per run and per op retry, so a kept failed pod never blocks the next attempt's name."""
    retry = context.retry_number
    return f"{context.run_id[:8]}-r{retry}" if retry else context.run_id[:8]


def _as_pipes_message(text: str) -> dict[str, Any] | None:
    if not text.startswith("{"):
        return None
    try:
        message = json.loads(text)
    except ValueError:
        return None
    return message if isinstance(message, dict) and PIPES_PROTOCOL_VERSION_FIELD in message else None


class _LogFollower:
    """Streams one container's log lines to `on_line`, then reads what a broken stream missed.

    `follow` keeps the request open while the container runs. `catch_up`, called once the container has
    terminated, reads the whole log again and passes on only the lines after the last one seen, so an
    interrupted stream loses nothing and an intact one repeats nothing. Several lines may share one
    timestamp (the CRI log writer of CRI-O and podman stamps every line of one read alike): lines are
    told apart by their timestamp and their position among the lines with that timestamp.
    """

    def __init__(self, core_api: Any, pod_name: str, namespace: str, container: str,
                 on_line: Callable[[str], None]):
        self._core_api = core_api
        self._request = {"name": pod_name, "namespace": namespace, "container": container}
        self._on_line = on_line
        self._last_stamp = ""
        self._seen_at_last_stamp = 0  # lines passed on that carry `_last_stamp`

    def follow(self, request_timeout: float) -> None:
        self._consume(follow=True, _request_timeout=request_timeout)

    def catch_up(self) -> None:
        self._consume(follow=False)

    def _consume(self, **options: Any) -> None:
        response = self._core_api.read_namespaced_pod_log(
            **self._request, timestamps=True, _preload_content=False, **options
        )
        position: dict[str, int] = {}  # lines read so far in this request, per timestamp
        try:
            for line in iter_log_lines(response):
                stamp, text = split_timestamp(line)
                if stamp:
                    position[stamp] = position.get(stamp, 0) + 1
                    if self._last_stamp and (stamp < self._last_stamp or (
                            stamp == self._last_stamp and position[stamp] <= self._seen_at_last_stamp)):
                        continue  # passed on already (a catch-up re-reads the whole log)
                    if stamp == self._last_stamp:
                        self._seen_at_last_stamp += 1
                    else:
                        self._last_stamp, self._seen_at_last_stamp = stamp, 1
                self._on_line(text)
        finally:
            release = getattr(response, "release_conn", None)
            if release is not None:
                release()


class _RunLogMessageReader(PipesK8sPodLogsMessageReader):
    """dagster-k8s's pod log message reader, with the container's other output sent to the run's log.

    The upstream reader forwards non-pipes lines to the process's stdout, which a Helm deployment without a
    compute log manager never shows; here each becomes a run log entry, visible in the run's event log.
    Its `read_messages` (the pipes session's message parameters: write to stderr, read from the pod log)
    is the upstream one.
    """

    def __init__(self, on_line: Callable[[str], None]):
        super().__init__()
        self._on_output = on_line
        self._handler_in_use = None

    @contextmanager
    def read_messages(self, handler) -> Iterator[Mapping[str, Any]]:
        self._handler_in_use = handler
        try:
            with super().read_messages(handler) as params:
                yield params
        finally:
            self._handler_in_use = None

    def follower(self, core_api: Any, pod_name: str, namespace: str) -> _LogFollower:
        """Follows the step container's log: pipes messages to the session, other lines to the run log."""
        return _LogFollower(core_api, pod_name, namespace, STEP_CONTAINER, on_line=self._dispatch)

    def _dispatch(self, text: str) -> None:
        message = _as_pipes_message(text)
        if message is not None and self._handler_in_use is not None:
            self._handler_in_use.handle_message(message)
        else:
            self._on_output(text)


# Waiting reasons of a container that is still being created (its init containers may be running).
_CREATING = (None, "ContainerCreating", "PodInitializing")


class _PodRun:
    """The life of one pod (a build job's or a step's): waits, log streaming, failure report, clean-up."""

    def __init__(self, context: OpExecutionContext, client: DagsterKubernetesClient,
                 backend: KubernetesBackendConfig, *, what: str, container: str):
        self.context = context
        self.client = client
        self.backend = backend
        self.what = what
        self.container = container
        self.pod_name: str | None = None
        self.started = client.timer()
        self.failed = False
        self.keep = False  # failed in a container: worth keeping for `kubectl logs`

    def restart_clock(self) -> None:
        self.started = self.client.timer()

    def _wait(self, state: WaitForPodState) -> None:
        assert self.pod_name is not None
        self.client.wait_for_pod(
            self.pod_name, self.backend.namespace, wait_for_state=state,
            pod_launch_timeout=self.backend.timeout_seconds, wait_timeout=self.backend.timeout_seconds,
            wait_time_between_attempts=self.backend.poll_interval_seconds, start_time=self.started,
        )

    def wait_until_started(self) -> None:
        """Until the main container runs or has run; a container that failed fast still has logs to show."""
        try:
            self._wait(WaitForPodState.Ready)
        except DagsterK8sError:
            if not has_container_started(self.read_pod(), self.container):
                raise

    def wait_until_configured(self) -> None:
        """Until the main container is past creation; a `CreateContainerConfigError` (a missing secret or
        key) raises at once. Any other state (running, an image pull error, a timeout) is left to
        `wait_until_started`, which reports it."""
        while self.client.timer() - self.started <= self.backend.timeout_seconds:
            pod = self.read_pod()
            if pod is None:
                return
            status = get_container_status(pod, self.container)
            waiting = status.state.waiting if status is not None and status.state is not None else None
            if waiting is not None and waiting.reason == "CreateContainerConfigError":
                raise DagsterK8sError(f"container '{self.container}' cannot be created: {waiting.message}")
            if status is not None and (waiting is None or waiting.reason not in _CREATING):
                return
            self.client.sleeper(self.backend.poll_interval_seconds)

    def wait_until_terminated(self) -> None:
        self._wait(WaitForPodState.Terminated)

    def follow(self, follower: _LogFollower) -> None:
        """Streams the main container's log; a broken stream is only a warning (`catch_up` fills the gap)."""
        remaining = max(self.backend.timeout_seconds - (self.client.timer() - self.started), 1.0)
        try:
            follower.follow(request_timeout=remaining)
        except (kubernetes.client.ApiException, urllib3.exceptions.HTTPError) as exc:
            self.context.log.warning(f"{self.what}: log stream interrupted ({exc}); catching up at the end")

    def catch_up(self, follower: _LogFollower) -> None:
        """Reads what the stream missed, once the container is done; never fails a finished step."""
        try:
            follower.catch_up()
        except (kubernetes.client.ApiException, urllib3.exceptions.HTTPError) as exc:
            self.context.log.warning(f"{self.what}: could not re-read the log ({exc})")

    def log_init_containers(self, names: tuple[str, ...]) -> None:
        """The (short) output of init containers that ran: the fetched commit, the chosen Dockerfile."""
        pod = self.read_pod()
        for name in names:
            if not has_container_started(pod, name):
                continue
            for line in self._logs(name).splitlines():
                self.context.log.info(f"[{name}] {line}")

    def read_pod(self) -> Any | None:
        if self.pod_name is None:
            return None
        try:
            return self.client.core_api.read_namespaced_pod(self.pod_name, self.backend.namespace)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _logs(self, container: str, tail_lines: int | None = None) -> str:
        assert self.pod_name is not None
        try:
            options = {"tail_lines": tail_lines} if tail_lines else {}
            return self.client.retrieve_pod_logs(self.pod_name, self.backend.namespace,
                                                 container_name=container, **options)
        except (kubernetes.client.ApiException, urllib3.exceptions.HTTPError) as exc:
            return f"(logs unavailable: {exc.reason if hasattr(exc, 'reason') else exc})"

    def failure(self, error: BaseException, notes: str = "") -> DagctlStepError:
        """The step error: what failed or timed out, the pod's reason, the failing container's last lines."""
        self.failed = True
        timed_out = self.client.timer() - self.started > self.backend.timeout_seconds
        try:
            pod = self.read_pod()
        except K8S_ERRORS:
            pod = None
        head = (f"{self.what} timed out after {self.backend.timeout_seconds}s" if timed_out
                else f"{self.what} failed")
        if self.pod_name is None:
            return DagctlStepError(f"{head}: its pod was never created ({error})")
        message = f"{head} (pod {self.backend.namespace}/{self.pod_name}): {describe_pod(pod)}"
        if notes:
            message += f"; {notes}"
        container = get_failed_container(pod) or self.container
        if pod is not None and has_container_started(pod, container):
            lines = [line for line in self._logs(container, TAIL_LINES * 3).splitlines()
                     if _as_pipes_message(line) is None][-TAIL_LINES:]
            if lines:
                message += f"\nlast {len(lines)} log lines of '{container}':\n" + "\n".join(lines)
        elif pod is None:
            message += f" ({str(error).splitlines()[0][:300]})"
        self.keep = not timed_out and pod is not None and get_failed_container(pod) is not None
        return DagctlStepError(message)

    def clean_up(self, what: str, delete: Callable[[], Any]) -> None:
        """Deletes `what` unless it failed in a container and the backend keeps failed jobs for debugging."""
        if self.failed and self.keep and self.backend.keep_failed_jobs:
            self.context.log.warning(
                f"kept {what} for debugging (keep_failed_jobs): kubectl -n {self.backend.namespace} "
                f"logs {self.pod_name} --all-containers"
            )
            return
        try:
            delete()
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                self.context.log.warning(f"could not delete {what}: {exc.reason}")


def _outcome_notes(messages: Any) -> str:
    """The last outcome a runner reported (`{"outcome": ..., "message": ...}`), for the step error."""
    for payload in reversed(list(messages)):
        if isinstance(payload, dict) and payload.get("message"):
            return f"{payload.get('outcome', 'outcome')}: {payload['message']}"
    return ""


def _log_reported_results(context: OpExecutionContext, results: Any) -> None:
    """Materializations reported from the pod become events of this op (it declares no assets itself)."""
    for result in results:
        if isinstance(result, MaterializeResult) and result.asset_key is not None:
            context.log_event(AssetMaterialization(asset_key=result.asset_key, metadata=result.metadata))
        else:
            context.log.debug(f"ignored a pipes result of type {type(result).__name__}")
