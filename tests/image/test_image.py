"""The image built from the committed Dockerfile, run the way a cluster runs it, under podman.

Run by `make test-image` (scripts/test-image.sh builds the image and sets up podman, then runs
`pytest -m image tests/image`). What is real here: the image, its non-root user and its tools, the code
location answering Dagster's gRPC health check, the dbt project image built on top of it with the
Dockerfile a Kaniko build would use, and the pods the product's own builders generate (`build_step_pod`
wrapped by dagster-k8s's pipes pod body, with the "restricted" security settings), run by
`podman kube play`. Their dagster-pipes messages are read back by dagster-k8s's own pod-log message reader
into asset materializations of a real Dagster run. The Kubernetes API is replaced by podman, and only in
the copy of each manifest that podman plays (`adapt_for_podman`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import AssetMaterialization, PipesEnvContextInjector, instance_for_test, job, op, open_pipes_session
from dagster_k8s.pipes import PipesK8sPodLogsMessageReader, build_pod_body
from kubernetes.client import ApiClient

from dagctl_dagster.adapters.kubernetes.specs import (
    STEP_CONTAINER,
    GitCheckout,
    build_plan_labels,
    build_step_pod,
)
from dagctl_dagster.adapters.dbt_manifest import read_parsed_graph
from dagctl_dagster.adapters.sqlmesh import explain_sqlmesh_plan
from dagctl_dagster.core.config import ProjectConfig
from dagctl_dagster.core.dbt_changes import DbtScope, Scope
from dagctl_dagster.core.dbt_impact import build_selective_impact, build_state_scope
from dagctl_dagster.core.kubernetes_config import KubernetesBackendConfig
from dagctl_dagster.core.plan import PlanSpec
from dagctl_dagster.core.steps import StepSpec
from dagctl_dagster.defs.kubernetes_steps import PARSE_CACHE_DIR, build_dbt_parse_pod_step
from dagctl_dagster.runner.dbt_parse_pod import read_parse_messages

pytestmark = pytest.mark.image

ROOT = Path(__file__).resolve().parents[2]
IMAGE = os.environ.get("DAGCTL_TEST_IMAGE", "")
WORK = Path(os.environ.get("DAGCTL_IMAGE_TEST_DIR", ROOT / ".image-test"))
BUILD_MOUNTS = os.environ.get("DAGCTL_IMAGE_BUILD_MOUNTS", "").split()
PROJECT_IMAGE = "localhost/jaffle-dbt:test"
JAFFLE_NODES = {"raw_customers", "raw_orders", "stg_customers", "stg_orders", "customers", "orders"}
SHOP_MODELS = {"shop__products", "shop__orders", "shop__daily_revenue", "shop__category_revenue"}

if not IMAGE:
    pytest.skip("image tests run through `make test-image` (it builds the image first)", allow_module_level=True)


def podman(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"podman {' '.join(args[:3])} failed ({result.returncode}): {result.stderr[-3000:]}")
    return result


def run_in_image(*argv: str, image: str = IMAGE) -> str:
    return podman("run", "--rm", image, *argv).stdout.strip()


# -- the image itself -----------------------------------------------------------------------------------


def test_image_runs_as_its_unprivileged_user():
    configured = podman("image", "inspect", "--format", "{{.Config.User}}", IMAGE).stdout.strip()

    assert configured == "dagctl"
    assert run_in_image("id", "-u") == "1000"
    assert run_in_image("sh", "-c", "touch /usr/bin/x 2>&1 || echo refused").endswith("refused")


def test_image_has_dbt_sqlmesh_and_the_production_packages():
    dbt = run_in_image("dbt", "--version")
    sqlmesh = run_in_image("sqlmesh", "--version")
    imports = run_in_image("python", "-c", "import dagctl_dagster, dagster_postgres, dagster_k8s, psycopg2; "
                                           "print('imports ok')")

    assert "installed: 1.11." in dbt and "duckdb: 1.11.1" in dbt
    assert sqlmesh == "0.236.4"
    assert imports == "imports ok"


def test_code_location_starts_from_the_image_with_a_mounted_config_and_is_healthy(tmp_path):
    # As the Helm chart runs it: the image's default command, dagctl.yaml mounted read-only.
    (tmp_path / "dagctl.yaml").write_text((ROOT / "examples" / "dagctl.yaml").read_text())
    os.chmod(tmp_path, 0o755)  # readable by the image's user, as a mounted ConfigMap is
    name = "dagctl-test-code-location"
    podman("rm", "-f", name, check=False)
    podman("run", "-d", "--name", name, "-v", f"{tmp_path}:/etc/dagctl:ro",
           "-e", "DAGCTL_CONFIG=/etc/dagctl/dagctl.yaml", "-e", "DAGCTL_STORAGE_DIR=/tmp/dagctl", IMAGE)
    try:
        deadline = time.monotonic() + 180
        while True:  # the server loads the definitions first; the health check is what a probe asks
            check = podman("exec", name, "dagster", "api", "grpc-health-check", "--port", "3030", check=False)
            running = podman("inspect", "--format", "{{.State.Running}}", name).stdout.strip() == "true"
            if check.returncode == 0 or not running or time.monotonic() > deadline:
                break
            time.sleep(2)
        logs = podman("logs", name).stderr
    finally:
        podman("rm", "-f", name, check=False)

    assert check.returncode == 0, f"health check: {check.stdout}{check.stderr}\nserver log:\n{logs[-3000:]}"


# -- the dbt project image ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project_image(tmp_path_factory) -> str:
    """The jaffle dbt project image, built the way the Kaniko job builds it: the Dockerfile chosen by the
    build's `dockerfile` container (run from our image, as uid 1000), BASE_IMAGE set to our image."""
    context = tmp_path_factory.mktemp("jaffle") / "project"
    shutil.copytree(ROOT / "examples" / "jaffle_dbt", context)
    output = context.parent / "build"
    output.mkdir()
    os.chmod(output, 0o777)
    podman("run", "--rm", "-v", f"{context}:/workspace/repo:ro", "-v", f"{output}:/dagctl/build", IMAGE,
           "python", "-P", "-m", "dagctl_dagster.adapters.kubernetes.dockerfile", "--context", "/workspace/repo",
           "--output", "/dagctl/build/Dockerfile")
    mounts = [arg for mount in BUILD_MOUNTS for arg in ("-v", mount)]
    podman("build", "-q", "--pull=never", *mounts, "--build-arg", f"BASE_IMAGE={IMAGE}", "-t", PROJECT_IMAGE,
           "-f", str(output / "Dockerfile"), str(context))
    return PROJECT_IMAGE


def test_dbt_project_image_builds_on_our_image(project_image):
    assert run_in_image("id", "-u", image=project_image) == "1000"
    assert run_in_image("ls", "/app/dbt_project.yml", image=project_image) == "/app/dbt_project.yml"


# -- pods the product generates, played by podman -------------------------------------------------------


def nanoseconds(stamp: str) -> int:
    """podman's `2026-12-01T23:12:37.6399731+01:00` (Go's RFC3339Nano: trailing zeros trimmed) in ns."""
    seconds, fraction_and_zone = stamp.split(".", 1) if "." in stamp else (stamp[:-6], stamp[-6:])
    fraction, zone = fraction_and_zone[:-6], fraction_and_zone[-6:]
    return int(datetime.fromisoformat(seconds + zone).timestamp()) * 10**9 + int(fraction.ljust(9, "0"))


def api_server_time(ns: int) -> str:
    """The kubelet's timestamp format: nine fraction digits, UTC (`2026-12-01T22:12:37.639973100Z`)."""
    return f"{datetime.fromtimestamp(ns // 10**9, UTC).strftime('%Y-%m-%dT%H:%M:%S')}.{ns % 10**9:09d}Z"


class PodmanPodLogs:
    """The one Kubernetes API call dagster-k8s's log reader makes, answered from the container's log file.

    podman writes the CRI log format the kubelet reads (`<RFC 3339 time> <stream> <P|F> <text>`; a line
    written in pieces is split into partial `P` records, per stream). Like the kubelet this joins the
    partial records and answers `<time> <line>` in the API server's format. podman's conmon stamps all
    lines of one read with the same time, where containerd stamps each line: a line whose time is not
    after the previous one's gets the previous time + 1 ns, so the lines stay distinct as on containerd.
    """

    def read_namespaced_pod_log(self, name: str, namespace: str, **_: Any) -> Iterator[bytes]:
        container = f"{name}-{STEP_CONTAINER}"
        log_file = podman("inspect", "--format", "{{.HostConfig.LogConfig.Path}}", container).stdout.strip()
        pending: dict[str, tuple[int, list[str]]] = {}
        last = 0
        for record in Path(log_file).read_text().splitlines():
            time_, stream, tag, text = (record.split(" ", 3) + [""])[:4]
            stamp, parts = pending.pop(stream, (nanoseconds(time_), []))
            parts.append(text)
            if tag != "F":
                pending[stream] = (stamp, parts)
                continue
            last = max(stamp, last + 1)
            yield f"{api_server_time(last)} {''.join(parts)}\n".encode()


def adapt_for_podman(pod: dict[str, Any], secret_folders: dict[str, str], shared_folders: list[str]) -> dict[str, Any]:
    """A copy of `pod` that podman 4.3 plays: secret and claim volumes named in `secret_folders` become host
    folders (podman cannot read Kubernetes secrets, nor bind a PersistentVolumeClaim), and each of
    `shared_folders` is mounted at the same path in the step container (the example projects' DuckDB files,
    which production keeps in databases)."""
    copy = json.loads(json.dumps(pod))
    spec = copy["spec"]
    for volume in spec.get("volumes", []):
        if volume["name"] in secret_folders:
            volume.pop("secret", None)
            volume.pop("persistentVolumeClaim", None)
            volume["hostPath"] = {"path": secret_folders[volume["name"]], "type": "Directory"}
    step = spec["containers"][0]
    for index, folder in enumerate(shared_folders):
        spec.setdefault("volumes", []).append({"name": f"shared-{index}", "hostPath": {"path": folder}})
        step.setdefault("volumeMounts", []).append({"name": f"shared-{index}", "mountPath": folder})
    return copy


def play_step_pod(manifest: dict[str, Any], step: StepSpec, tmp_path: Path, secret_folders: dict[str, str],
                  shared_folders: list[str] = ()) -> tuple[list[str], int, dict[str, Any], list[Any]]:
    """Runs `manifest` as the backend does (pipes session, dagster-k8s pod body) under `podman kube play`;
    returns the materialized asset keys of the Dagster run, the step's exit code, its inspect data and the
    custom messages it reported."""
    name = manifest["metadata"]["name"]
    namespace = manifest["metadata"]["namespace"]
    outcome: dict[str, Any] = {}

    @op
    def execute(context):
        reader = PipesK8sPodLogsMessageReader()
        with open_pipes_session(context=context, context_injector=PipesEnvContextInjector(),
                                message_reader=reader,
                                extras={"labels": dict(step.labels), "step": step.name}) as session:
            body = build_pod_body(pod_name=name, image=None, command=None,
                                  env_vars=session.get_bootstrap_env_vars(),
                                  base_pod_meta=manifest["metadata"], base_pod_spec=manifest["spec"])
            sent = {"apiVersion": "v1", "kind": "Pod", **ApiClient().sanitize_for_serialization(body)}
            path = tmp_path / f"{name}.yaml"
            path.write_text(yaml.safe_dump(adapt_for_podman(sent, secret_folders, list(shared_folders))))
            podman("pod", "rm", "-f", name, check=False)
            podman("kube", "play", "--network", "host", str(path))
            container = f"{name}-{STEP_CONTAINER}"
            outcome["exit"] = int(podman("wait", container).stdout.strip())
            outcome["inspect"] = json.loads(podman("inspect", container).stdout)[0]
            reader.consume_pod_logs(context, PodmanPodLogs(), name, namespace)
        for result in session.get_results():
            context.log_event(AssetMaterialization(asset_key=result.asset_key, metadata=result.metadata))
        outcome["messages"] = list(session.get_custom_messages())

    @job
    def step_job():
        execute()

    try:
        with instance_for_test() as instance:
            result = step_job.execute_in_process(instance=instance, raise_on_error=False)
    finally:
        logs = podman("logs", f"{name}-{STEP_CONTAINER}", check=False)
        podman("pod", "rm", "-f", name, check=False)
    assert result.success, logs.stdout[-3000:] + logs.stderr[-3000:]
    keys = sorted(event.asset_key.to_user_string() for event in result.get_asset_materialization_events())
    return keys, outcome["exit"], outcome["inspect"], outcome["messages"]


def assert_ran_restricted(inspect: dict[str, Any]) -> None:
    """The step container ran with the pod's "restricted" settings: uid 1000 (podman does not enforce
    runAsNonRoot, so the uid is checked here), no capabilities, no privilege escalation."""
    assert inspect["Config"]["User"].split(":")[0] == "1000"
    assert not inspect.get("EffectiveCaps") and "CAP_SETUID" in inspect["HostConfig"]["CapDrop"]
    assert "no-new-privileges" in inspect["HostConfig"]["SecurityOpt"]


def backend(**fields: Any) -> KubernetesBackendConfig:
    return KubernetesBackendConfig.model_validate(
        {"namespace": "analytics", "runner_image": IMAGE, "registry": "localhost", "git_image": IMAGE, **fields})


def test_dbt_execution_pod_builds_the_project_and_reports_each_model(project_image, tmp_path):
    profiles = tmp_path / "profiles"
    shutil.copytree(ROOT / "examples" / "dbt_profiles", profiles)
    step = StepSpec(name="execute-0", argv=("dbt", "build", "--target", "prod"), image=project_image,
                    working_dir="/app", labels=build_plan_labels("jaffle", "prod", "jaffle-prod-0001"),
                    env={"DAGCTL_PROJECT": "jaffle", "DAGCTL_ENVIRONMENT": "prod", "DAGCTL_WAREHOUSE_DIR": "/tmp"})
    manifest = build_step_pod(step, backend(dbt_profiles_secret="dbt-profiles"), pod_name="dagctl-test-dbt")

    keys, exit_code, inspect, _ = play_step_pod(manifest, step, tmp_path, {"dbt-profiles": str(profiles)})

    assert exit_code == 0
    assert_ran_restricted(inspect)
    assert keys == sorted(f"jaffle/prod/{node}" for node in JAFFLE_NODES)


@pytest.fixture
def git_daemon(tmp_path) -> Iterator[tuple[str, str, Path]]:
    """The SQLMesh example project in a bare repository served by `git daemon` on loopback; yields the
    repository URL, its head commit and a working copy of that commit."""
    yield from serve_project(tmp_path, ROOT / "examples" / "sqlmesh_shop", "shop")


@pytest.fixture
def jaffle_daemon(tmp_path) -> Iterator[tuple[str, str, Path]]:
    """The same for the example dbt project."""
    yield from serve_project(tmp_path, ROOT / "examples" / "jaffle_dbt", "jaffle")


def serve_project(tmp_path: Path, source: Path, name: str) -> Iterator[tuple[str, str, Path]]:
    work = tmp_path / name
    shutil.copytree(source, work, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    git = ["git", "-c", "user.name=carol", "-c", "user.email=carol@example.com"]
    subprocess.run([*git, "init", "-q", "-b", "main", str(work)], check=True)
    subprocess.run([*git, "-C", str(work), "add", "-A"], check=True)
    subprocess.run([*git, "-C", str(work), "commit", "-qm", "Shop"], check=True)
    served = tmp_path / "served"
    served.mkdir()
    subprocess.run(["git", "clone", "-q", "--bare", str(work), str(served / f"{name}.git")], check=True)
    commit = subprocess.run(["git", "-C", str(work), "rev-parse", "HEAD"], check=True, capture_output=True,
                            text=True).stdout.strip()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all", "--listen=127.0.0.1",
                               f"--port={port}", f"--base-path={served}", str(served)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run(["git", "ls-remote", f"git://127.0.0.1:{port}/{name}.git"],
                             capture_output=True).returncode != 0:
            assert time.monotonic() < deadline and daemon.poll() is None, "git daemon did not start"
            time.sleep(0.2)
        yield f"git://127.0.0.1:{port}/{name}.git", commit, work
    finally:
        os.killpg(daemon.pid, signal.SIGKILL)  # `git daemon` runs `git-daemon` as a child: stop both
        daemon.wait(timeout=30)


def test_sqlmesh_apply_pod_checks_out_the_pinned_commit_verifies_and_applies(git_daemon, tmp_path, monkeypatch):
    repository, commit, work = git_daemon
    # The warehouse and SQLMesh's state: one folder, at the same path on the host (where `detect` explains
    # the plan) and in the pod (where it is applied).
    warehouse = WORK / "warehouse"
    shutil.rmtree(warehouse, ignore_errors=True)
    warehouse.mkdir(parents=True)
    os.chmod(warehouse, 0o777)
    monkeypatch.setenv("DAGCTL_WAREHOUSE_DIR", str(warehouse))
    change_set = explain_sqlmesh_plan(work, "prod")  # what `detect` records: the approved fingerprint
    for path in warehouse.iterdir():
        os.chmod(path, 0o666)
    checkout = GitCheckout(repository, commit)
    step = StepSpec(
        name="execute-0",
        argv=("python", "-m", "dagctl_dagster.runner.sqlmesh_apply", "--project-dir", checkout.project_dir,
              "--environment", "prod", "--change-set-fingerprint", change_set.fingerprint, "--project", "shop"),
        labels=build_plan_labels("shop", "prod", "shop-prod-0001"),
        env={"DAGCTL_PROJECT": "shop", "DAGCTL_ENVIRONMENT": "prod", "DAGCTL_WAREHOUSE_DIR": str(warehouse),
             "HOME": "/tmp"})
    manifest = build_step_pod(step, backend(), pod_name="dagctl-test-sqlmesh", checkout=checkout)

    keys, exit_code, inspect, _ = play_step_pod(manifest, step, tmp_path, {}, [str(warehouse)])

    assert exit_code == 0
    assert_ran_restricted(inspect)
    assert keys == sorted(f"sqlmesh/shop/{model}" for model in SHOP_MODELS)


def test_dbt_parse_pod_reports_the_impact_the_local_parse_finds(jaffle_daemon, tmp_path):
    """The parse pod of a dbt plan on the Kubernetes backend, as `kubernetes_steps` generates it (runner
    image, checkout of the pinned commit, restricted, profiles from `dbt_profiles_secret`, `parse_cache_claim`
    mounted), played by podman: the graph and result it sends back over pipes give the impact dbt's local
    parse gives, and dbt's state comparison in the pod against the deployed commit's manifest kept on the
    claim (the local parse's, with the macro `cents_to_dollars` as that commit had it) finds `orders`."""
    repository, commit, work = jaffle_daemon
    profiles = tmp_path / "profiles"
    shutil.copytree(ROOT / "examples" / "dbt_profiles", profiles)
    local_target = tmp_path / "local-target"
    environ = {"DBT_PROFILES_DIR": str(profiles), "DAGCTL_WAREHOUSE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-m", "dagctl_dagster.runner.dbt_parse", "--project-dir", str(work),
                    "--target-path", str(local_target), "--target", "prod", "--output", str(tmp_path / "local.json")],
                   env={**os.environ, **environ}, check=True, timeout=600)
    assert json.loads((tmp_path / "local.json").read_text())["outcome"] == "parsed"
    deployed, claim = "d" * 40, tmp_path / "claim"
    # The deployed commit's manifest as the parse step writes it for a state comparison (from the partial-parse
    # file: plain parses write none), with the macro's SQL changed.
    state = tmp_path / "state"
    state.mkdir()
    shutil.copy2(local_target / "partial_parse.msgpack", state)
    subprocess.run([sys.executable, "-m", "dagctl_dagster.runner.dbt_parse", "--project-dir", str(work),
                    "--target-path", str(tmp_path / "state-target"), "--target", "prod", "--output",
                    str(tmp_path / "state.json"), "--state", str(state)],
                   env={**os.environ, **environ}, check=True, timeout=600)
    kept = json.loads((state / "manifest.json").read_text())
    macro = kept["macros"]["macro.jaffle.cents_to_dollars"]
    macro["macro_sql"] = macro["macro_sql"].replace("decimal(18, 4)", "decimal(20, 4)")
    (claim / "jaffle" / "dbt_parse" / deployed).mkdir(parents=True)
    (claim / "jaffle" / "dbt_parse" / deployed / "manifest.json").write_text(json.dumps(kept))
    for folder in (claim, claim / "jaffle", claim / "jaffle" / "dbt_parse", claim / "jaffle" / "dbt_parse" / deployed):
        os.chmod(folder, 0o777)  # writable by the image's user, as the pod's fsGroup makes a claim
    project = ProjectConfig.model_validate({
        "name": "jaffle", "framework": "dbt", "repository": repository, "environments": [{"name": "prod"}],
        "step_env": {"env": {"DAGCTL_WAREHOUSE_DIR": "/tmp"}},
        "backend": {"type": "kubernetes", "namespace": "analytics", "runner_image": IMAGE, "registry": "localhost",
                    "git_image": IMAGE, "dbt_profiles_secret": "dbt-profiles", "parse_cache_claim": "parse-cache"}})
    spec = PlanSpec.model_construct(plan_id="jaffle-prod-0001", project="jaffle", environment="prod",
                                    target_commit=commit, base_commit=deployed)
    checkout = GitCheckout(repository, commit)
    step = build_dbt_parse_pod_step(project, project.environments[0], spec, project.backend, checkout, compare=True)
    manifest = build_step_pod(step, project.backend, pod_name="dagctl-test-dbt-parse", checkout=checkout,
                              claims={PARSE_CACHE_DIR: "parse-cache"})

    _, exit_code, inspect, messages = play_step_pod(manifest, step, tmp_path, {"dbt-profiles": str(profiles),
                                                                               "claim-0": str(claim)})
    result, graph = read_parse_messages(messages)

    assert exit_code == 0
    assert_ran_restricted(inspect)
    assert (result["outcome"], result["mode"]) == ("parsed", "cold"), result
    local = read_parsed_graph(local_target)
    assert graph.content_hash() == local.content_hash()
    selection = ("path:models/staging/stg_orders.sql",)
    assert build_selective_impact(graph, selection, parse=None) == build_selective_impact(local, selection, parse=None)
    assert {node.unique_id for node in build_selective_impact(graph, selection, parse=None).downstream} == {
        "model.jaffle.orders", "model.jaffle.customers"}
    pinned = claim / "jaffle" / "dbt_state" / "jaffle-prod-0001" / "manifest.json"
    assert result["base_manifest_sha256"] == hashlib.sha256(pinned.read_bytes()).hexdigest()
    narrowed = build_state_scope(DbtScope(scope=Scope.ALL, reason="macros changed"), result["modified"], graph,
                                 base_commit=deployed)
    assert narrowed.selection == ("fqn:jaffle.marts.orders",)
    assert (claim / "jaffle" / "dbt_parse" / commit / "partial_parse.msgpack").exists()
