"""dbt's parse on the Kubernetes backend is a pod of the runner image, and what it reports becomes the plan's
impact, the same as the local parse's.

The pod's log is real: `python -m dagctl_dagster.runner.dbt_parse_pod` runs once (module fixture) on the
pinned commit of the example project, as a dagster-pipes process of a real Dagster run, and its output is
what the faked cluster (at the client boundary, `FakeCluster`) serves as the pod's log. `detect`'s
`attach_dbt_impact` then runs in real Dagster runs against that cluster and against the local backend.

dbt's state comparison with `parse_cache_claim` is shown on a cluster that plays each pod it is given
(`PlayedCluster`): the pod the run worker generates runs for real (its git init containers, then the
runner, with the claim a folder), so what is tested is the pod's own command line and mounts.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, PipesEnvContextInjector, instance_for_test, job, op, open_pipes_session
from dagster_k8s.pipes import PipesK8sPodLogsMessageReader
from fixtures.git_repos import DBT_PROFILES, GitRepo, make_repo, run_git
from k8s_testing import (
    RUNNER_IMAGE,
    ContainerScript,
    FakeClock,
    FakeCluster,
    PlayedCluster,
    assert_valid_manifest,
    pipes_line,
)
from pod_security import pod_security_violations

from dagctl_dagster.adapters.dbt import explain_dbt_plan
from dagctl_dagster.core.config import parse_deployment_config
from dagctl_dagster.core.dbt_impact import ImpactStatus, ParseMode
from dagctl_dagster.core.plan import PlanSpec, seal_plan
from dagctl_dagster.defs.dbt_impact import attach_dbt_impact
from dagctl_dagster.defs.runtime import PlanRuntime
from dagctl_dagster.runner.dbt_parse_pod import build_parse_messages

STG_ORDERS = "models/staging/stg_orders.sql"
SECRET_VALUE = "s3cret-prod-password"
CONFIG = """
projects:
  - name: jaffle
    framework: dbt
    repository: {repository}
    backend: {backend}
    dbt: {{profiles_dir: {profiles}}}
    step_env:
      env: {{DAGCTL_WAREHOUSE_DIR: {warehouse}}}
    environments:
      - name: prod
        protected: true
        step_env:
          secret_env: [{{env: DBT_PASSWORD, secret: warehouse-prod, key: password}}]
"""
KUBERNETES = ("{type: kubernetes, namespace: analytics, runner_image: '" + RUNNER_IMAGE + "', registry: ghcr.io/acme, "
              "dbt_profiles_secret: dbt-profiles, parse_timeout_seconds: 300}")


@dataclass(frozen=True)
class World:
    """The example project with one model changed (`target`) after its first commit (`base`)."""

    root: Path
    repo: GitRepo
    base: str
    target: str
    warehouse: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("parse-pod")
    repo = make_repo(root / "repo")
    base = repo.head
    target = repo.commit_change(STG_ORDERS, repo.read(STG_ORDERS) + "-- reviewed\n", version="2")
    warehouse = root / "warehouse"
    warehouse.mkdir()
    return World(root, repo, base, target, warehouse)


def build_runtime(world: World, backend: str, storage: Path) -> PlanRuntime:
    text = CONFIG.format(repository=world.repo.url, backend=backend, profiles=DBT_PROFILES, warehouse=world.warehouse)
    return PlanRuntime(deployment=parse_deployment_config(text, source="dagctl.yaml"), storage_dir=storage,
                       config_dir=world.root)


def explain(runtime: PlanRuntime, world: World, *, plan_id: str = "jaffle-prod-0123abcd",
            target: str | None = None, base: str | None | bool = True) -> PlanSpec:
    """The Git-only plan of `world` (from `base` to `target`: by default its own; `base=None`: the first
    deployment)."""
    project = runtime.deployment.projects[0]
    runtime.mirror(project).ensure()
    return explain_dbt_plan(runtime.mirror(project), project, project.environments[0],
                            plan_id=plan_id, target_commit=target or world.target,
                            base_commit=world.base if base is True else base, base_version="1",
                            triggered_by="sensor", requested_by=None, now=datetime(2025, 3, 1, tzinfo=UTC))


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def run_in_op(instance: DagsterInstance) -> Callable[[Callable[[Any], Any]], tuple[Any, list[str]]]:
    """Runs `body(context)` as the only op of a real run; returns its output and the run's log."""

    def run(body: Callable[[Any], Any]) -> tuple[Any, list[str]]:
        @op
        def detect(context):
            return body(context)

        @job
        def plan():
            detect()

        result = plan.execute_in_process(instance=instance)
        return result.output_for_node("detect"), [entry.user_message for entry in instance.all_logs(result.run_id)]

    return run


@pytest.fixture(scope="module")
def pod_log(world: World, instance: DagsterInstance) -> list[str]:
    """What the parse pod of the target commit writes to its log: the pod runner, run as a dagster-pipes
    process of a real run (messages on stderr, as the pod log reader asks), on a checkout of the commit."""
    checkout = world.root / "checkout"
    run_git("clone", "-q", world.repo.url, str(checkout))
    run_git("checkout", "-q", "--detach", world.target, cwd=checkout)

    def parse(context) -> list[str]:
        with open_pipes_session(context=context, context_injector=PipesEnvContextInjector(),
                                message_reader=PipesK8sPodLogsMessageReader()) as session:
            env = {"PATH": os.environ["PATH"], "HOME": str(world.root), "DBT_PROFILES_DIR": str(DBT_PROFILES),
                   "DAGCTL_WAREHOUSE_DIR": str(world.warehouse), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
                   **session.get_bootstrap_env_vars()}
            out = subprocess.run(
                [sys.executable, "-m", "dagctl_dagster.runner.dbt_parse_pod", "--project-dir", str(checkout),
                 "--target-path", str(world.root / "pod-target"), "--target", "prod",
                 "--output", str(world.root / "pod" / "result.json")],
                env=env, cwd=checkout, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=True)
        return out.stdout.splitlines()

    @op
    def detect(context):
        return parse(context)

    @job
    def plan():
        detect()

    return plan.execute_in_process(instance=instance).output_for_node("detect")


def parse_pod(lines: list[str], *, exit_code: int = 0, waiting: str | None = None,
              ends_at: float | None = 30) -> FakeCluster:
    """A cluster whose pod fetches the commit (three init containers), then writes `lines` and exits."""
    init = [ContainerScript(name, init=True, starts_at=1 + index, ends_at=2 + index)
            for index, name in enumerate(("git-init", "git-fetch", "git-checkout"))]
    return FakeCluster(FakeClock(), [*init, ContainerScript("dagctl-step", starts_at=5, ends_at=ends_at, lines=lines,
                                                            exit_code=exit_code, waiting=waiting)])


def impact_in_pod(run_in_op: Callable, world: World, tmp_path: Path, cluster: FakeCluster
                  ) -> tuple[PlanSpec, list[str]]:
    runtime = build_runtime(world, KUBERNETES, tmp_path / "k8s")
    runtime.kubernetes_client = cluster.client
    project = runtime.deployment.projects[0]
    spec = explain(runtime, world)
    return run_in_op(lambda context: attach_dbt_impact(runtime, project, project.environments[0], spec))


def test_the_parse_pod_reports_the_same_impact_as_the_local_parse(run_in_op, world, pod_log, tmp_path, monkeypatch):
    monkeypatch.setenv("DBT_PASSWORD", SECRET_VALUE)  # the local backend reads the declared secret here
    local = build_runtime(world, "local", tmp_path / "local")
    project = local.deployment.projects[0]
    local_spec, _ = run_in_op(lambda context: attach_dbt_impact(local, project, project.environments[0],
                                                                explain(local, world)))
    cluster = parse_pod(pod_log)

    spec, logs = impact_in_pod(run_in_op, world, tmp_path, cluster)

    impact = spec.dbt_impact
    assert impact.status is ImpactStatus.RESOLVED
    assert {node.unique_id for node in impact.selected} >= {"model.jaffle.stg_orders"}
    assert impact.fingerprint_material() == local_spec.dbt_impact.fingerprint_material()
    assert (impact.selected, impact.downstream, impact.counts) == (
        local_spec.dbt_impact.selected, local_spec.dbt_impact.downstream, local_spec.dbt_impact.counts)
    assert impact.graph_hash == local_spec.dbt_impact.graph_hash
    assert spec.fingerprint == local_spec.fingerprint
    assert impact.parse.mode is ParseMode.COLD
    assert any("in a pod: cold" in line and "keeps no parse state" in line for line in logs)
    assert not any("__dagster_pipes_version" in line for line in logs)  # messages are read, not echoed
    assert cluster.deleted == [("pod", cluster.created_pods[0]["metadata"]["name"])]


def test_the_parse_pod_is_a_restricted_runner_image_pod_with_its_secrets_as_references(
        run_in_op, world, pod_log, tmp_path, monkeypatch):
    monkeypatch.setenv("DBT_PASSWORD", SECRET_VALUE)  # present in the run worker: must not reach the pod
    cluster = parse_pod(pod_log)
    impact_in_pod(run_in_op, world, tmp_path, cluster)

    [pod] = cluster.created_pods
    assert_valid_manifest(pod)
    assert pod_security_violations(pod["spec"], "restricted") == []
    assert SECRET_VALUE not in str(pod)
    [container] = pod["spec"]["containers"]
    env = {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}
    assert env["DBT_PASSWORD"] == {"secretKeyRef": {"name": "warehouse-prod", "key": "password"}}
    assert (env["DAGCTL_WAREHOUSE_DIR"], env["DBT_PROFILES_DIR"]) == (
        str(world.warehouse), "/etc/dagctl/dbt-profiles")
    assert {"DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"} <= set(env)
    assert container["image"] == RUNNER_IMAGE
    assert container["command"] == [
        "python", "-P", "-m", "dagctl_dagster.runner.dbt_parse_pod", "--project-dir", "/workspace/repo",
        "--target-path", "/workspace/dbt-parse/target", "--target", "prod",
        "--output", "/workspace/dbt-parse/result.json"]
    assert container["workingDir"] == "/workspace/repo"
    fetch = next(c for c in pod["spec"]["initContainers"] if c["name"] == "git-fetch")
    assert fetch["command"][-2:] == [world.repo.url, world.target]
    assert pod["metadata"]["labels"]["dagctl/plan-id"] == "jaffle-prod-0123abcd"
    assert pod["metadata"]["labels"]["dagctl/step"] == "parse"
    assert pod["spec"]["activeDeadlineSeconds"] == 300  # parse_timeout_seconds


def pod_lines(result: dict[str, Any]) -> list[str]:
    """A parse pod's log for a parse that did not get a graph: its output, then its result message."""
    return [pipes_line("opened", {"extras": {}}), "Running with dbt=1.11.2",
            *(pipes_line("report_custom_message", {"payload": payload})
              for payload in build_parse_messages(result, None)),
            pipes_line("closed", {})]


def test_a_project_error_in_the_pod_fails_the_plan_at_explain_with_dbts_message(run_in_op, world, tmp_path):
    message = ("Compilation Error\n  Model 'model.jaffle.orders' (models/marts/orders.sql) depends on a node "
               "named 'stg_payments' which was not found")
    cluster = parse_pod(pod_lines({"outcome": "project_error", "message": message}))

    spec, _ = impact_in_pod(run_in_op, world, tmp_path, cluster)

    assert spec.dbt_impact.status is ImpactStatus.PROJECT_ERROR
    assert spec.dbt_impact.reason == message
    assert [kind for kind, _ in cluster.deleted] == ["pod"]


def test_an_environment_error_in_the_pod_leaves_the_impact_unavailable_with_the_reason(run_in_op, world, tmp_path):
    message = "Env var required but not provided: 'DBT_PASSWORD'"
    spec, _ = impact_in_pod(run_in_op, world, tmp_path, parse_pod(pod_lines({"outcome": "environment_error",
                                                                  "message": message})))

    assert spec.dbt_impact.status is ImpactStatus.UNAVAILABLE
    assert spec.dbt_impact.reason == message
    assert spec.dbt_scope.scope.value == "selective"  # explained from Git all the same


def test_a_parse_pod_that_never_starts_is_an_environment_problem_and_is_deleted(run_in_op, world, tmp_path):
    cluster = parse_pod([], waiting="ErrImagePull")

    spec, _ = impact_in_pod(run_in_op, world, tmp_path, cluster)

    assert spec.dbt_impact.status is ImpactStatus.UNAVAILABLE
    assert spec.dbt_impact.reason.startswith("dbt's parse pod: step 'parse' failed (pod analytics/dagctl-jaffle-prod-")
    assert "container 'dagctl-step' waiting: ErrImagePull" in spec.dbt_impact.reason
    assert [kind for kind, _ in cluster.deleted] == ["pod"]


def test_a_parse_pod_whose_secret_does_not_exist_gives_up_at_once(run_in_op, world, tmp_path):
    cluster = parse_pod([], waiting="CreateContainerConfigError")

    spec, _ = impact_in_pod(run_in_op, world, tmp_path, cluster)

    assert spec.dbt_impact.status is ImpactStatus.UNAVAILABLE
    assert "container 'dagctl-step' waiting: CreateContainerConfigError" in spec.dbt_impact.reason
    assert cluster.clock.slept < 300  # not the parse timeout: dagster-k8s alone would wait for the secret
    assert [kind for kind, _ in cluster.deleted] == ["pod"]


def test_a_parse_pod_waiting_past_the_parse_timeout_is_stopped_and_deleted(run_in_op, world, tmp_path):
    clock_cluster = parse_pod([], ends_at=None)

    spec, _ = impact_in_pod(run_in_op, world, tmp_path, clock_cluster)

    assert "step 'parse' timed out after 300s" in spec.dbt_impact.reason
    assert 300 < clock_cluster.clock.slept <= 310
    assert [kind for kind, _ in clock_cluster.deleted] == ["pod"]


def is_graph_part(line: str, index: int) -> bool:
    try:
        payload = json.loads(line)["params"]["payload"]
    except (ValueError, KeyError, TypeError):
        return False
    return payload.get("dagctl") == "dbt_graph" and payload["index"] == index


def test_a_cut_log_leaves_the_impact_unavailable_not_wrong(run_in_op, world, pod_log, tmp_path):
    cut = [line for line in pod_log if not is_graph_part(line, 0)]
    assert len(cut) == len(pod_log) - 1

    spec, _ = impact_in_pod(run_in_op, world, tmp_path, parse_pod(cut))

    assert spec.dbt_impact.status is ImpactStatus.UNAVAILABLE
    assert "graph arrived incomplete" in spec.dbt_impact.reason


def test_a_parse_pod_that_crashed_before_reporting_is_an_environment_problem(run_in_op, world, tmp_path):
    lines = [pipes_line("opened", {"extras": {}}), "Traceback (most recent call last):", "MemoryError"]
    cluster = parse_pod(lines, exit_code=137)
    spec, logs = impact_in_pod(run_in_op, world, tmp_path, cluster)

    assert spec.dbt_impact.status is ImpactStatus.UNAVAILABLE
    assert "exit code 137" in spec.dbt_impact.reason and "MemoryError" in spec.dbt_impact.reason
    assert cluster.deleted == []  # failed in its container: kept for `kubectl logs` (keep_failed_jobs)
    assert any("kept pod analytics/dagctl-jaffle-prod-" in line for line in logs)


def test_with_a_parse_cache_claim_the_parse_pod_mounts_it_and_keeps_the_project_state_there(
        run_in_op, world, pod_log, tmp_path):
    runtime = build_runtime(world, KUBERNETES.replace("}", ", parse_cache_claim: dagctl-parse-cache}"), tmp_path)
    cluster = parse_pod(pod_log)
    runtime.kubernetes_client = cluster.client
    project = runtime.deployment.projects[0]
    _, logs = run_in_op(lambda context: attach_dbt_impact(runtime, project, project.environments[0],
                                                          explain(runtime, world)))

    [pod] = cluster.created_pods
    assert_valid_manifest(pod)
    assert pod_security_violations(pod["spec"], "restricted") == []
    assert {"name": "claim-0", "persistentVolumeClaim": {"claimName": "dagctl-parse-cache"}} in pod["spec"]["volumes"]
    [container] = pod["spec"]["containers"]
    assert {"name": "claim-0", "mountPath": "/dagctl/parse-cache"} in container["volumeMounts"]
    assert container["command"][-4:] == ["--cache-dir", "/dagctl/parse-cache/jaffle", "--commit", world.target]
    assert any("parse state kept on the claim dagctl-parse-cache" in line for line in logs)


def test_the_parse_pod_runner_parses_partially_from_its_cache_folder(world, tmp_path):
    """What the pod does with the claim: the second parse of a commit starts from the first's state."""
    checkout = tmp_path / "checkout"
    run_git("clone", "-q", world.repo.url, str(checkout))
    run_git("checkout", "-q", "--detach", world.target, cwd=checkout)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DBT_PROFILES_DIR": str(DBT_PROFILES),
           "DAGCTL_WAREHOUSE_DIR": str(world.warehouse), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}

    def parse(pod: str) -> dict[str, Any]:  # each pod starts with an empty target folder
        output = tmp_path / pod / "result.json"
        subprocess.run([sys.executable, "-m", "dagctl_dagster.runner.dbt_parse_pod", "--project-dir", str(checkout),
                        "--target-path", str(tmp_path / pod / "target"), "--target", "prod", "--output", str(output),
                        "--cache-dir", str(tmp_path / "claim" / "jaffle"), "--commit", world.target],
                       env=env, cwd=checkout, check=True, capture_output=True)
        return json.loads(output.read_text())

    first, second = parse("pod-1"), parse("pod-2")

    assert (first["outcome"], first["mode"]) == ("parsed", "cold")
    assert (second["outcome"], second["mode"]) == ("parsed", "partial")
    assert (tmp_path / "claim" / "jaffle" / "dbt_parse" / world.target / "partial_parse.msgpack").exists()


# --- dbt's state comparison in the parse pod, on the claim ---------------------------------------------------

MACRO = "macros/cents_to_dollars.sql"
CLAIM = "dagctl-parse-cache"
MACRO_PLAN, EARLY_PLAN = "jaffle-prod-5a1e0c2b", "jaffle-prod-0e1a2b3c"


@pytest.fixture(scope="module")
def macro_world(tmp_path_factory) -> World:
    """The example project whose macro `cents_to_dollars` (used by the model `orders` only) changed."""
    root = tmp_path_factory.mktemp("parse-pod-state")
    repo = make_repo(root / "repo")
    base = repo.head
    target = repo.commit_change(MACRO, repo.read(MACRO).replace("decimal(18, 4)", "decimal(20, 4)"), version="2")
    (root / "warehouse").mkdir()
    return World(root, repo, base, target, root / "warehouse")


def played_cluster(world: World, claim: Path | None = None) -> PlayedCluster:
    """Each parse pod runs for real: the claim is `claim`, the profiles secret the example profiles."""
    return PlayedCluster(world.root, claims={CLAIM: claim} if claim else {}, secrets={"dbt-profiles": DBT_PROFILES},
                         environ={"PATH": os.environ["PATH"], "HOME": str(world.root)})


@dataclass(frozen=True)
class ClaimStory:
    """The macro change explained on Kubernetes with `parse_cache_claim`, in this order:
    `early` (plan `EARLY_PLAN`, before any manifest of the deployed commit was on the claim), the deployed
    commit's own plan (keeps its manifest on the claim), `plan` (plan `MACRO_PLAN`), `early_again` (the
    re-parse of `early` at execute, the deployed manifest now kept), `again` (the re-parse of `plan` at
    execute, after the claim dropped the deployed commit's entry, as it drops all but the last 3)."""

    early: PlanSpec
    plan: PlanSpec
    early_again: PlanSpec
    again: PlanSpec
    logs: list[str]
    claim: Path
    storage: Path
    base_manifest_sha256: str
    kept_manifest_sha256: str
    cluster: PlayedCluster


@pytest.fixture(scope="module")
def claim_story(macro_world: World, instance: DagsterInstance) -> ClaimStory:
    world = macro_world
    claim = world.root / "claim"
    claim.mkdir()
    runtime = build_runtime(world, KUBERNETES.replace("}", f", parse_cache_claim: {CLAIM}}}"), world.root / "storage")
    cluster = played_cluster(world, claim)
    runtime.kubernetes_client = cluster.client
    project = runtime.deployment.projects[0]
    logs: list[str] = []

    def detect(spec: PlanSpec) -> PlanSpec:
        @op(name="detect")
        def detect_op(context):
            return attach_dbt_impact(runtime, project, project.environments[0], spec)

        @job(name="plan")
        def plan_job():
            detect_op()

        result = plan_job.execute_in_process(instance=instance)
        logs.extend(entry.user_message for entry in instance.all_logs(result.run_id))
        return result.output_for_node("detect")

    early = detect(explain(runtime, world, plan_id=EARLY_PLAN))
    detect(explain(runtime, world, plan_id="jaffle-prod-d0d0d0d0", target=world.base, base=None))
    kept = claim / "jaffle" / "dbt_parse" / world.base
    plan = detect(explain(runtime, world, plan_id=MACRO_PLAN))  # writes the manifest from the kept parse file
    pinned = claim / "jaffle" / "dbt_state" / MACRO_PLAN / "manifest.json"
    base_manifest_sha256 = hashlib.sha256(pinned.read_bytes()).hexdigest()
    kept_manifest_sha256 = hashlib.sha256((kept / "manifest.json").read_bytes()).hexdigest()
    early_again = detect(explain(runtime, world, plan_id=EARLY_PLAN))
    shutil.rmtree(kept)
    again = detect(explain(runtime, world, plan_id=MACRO_PLAN))
    return ClaimStory(early, plan, early_again, again, logs, claim, world.root / "storage", base_manifest_sha256,
                      kept_manifest_sha256, cluster)


def test_with_a_claim_a_macro_used_by_one_model_narrows_to_that_model_in_the_pod(claim_story, macro_world):
    plan = claim_story.plan
    scope, impact = plan.dbt_scope, plan.dbt_impact
    assert (scope.scope, scope.selection) == ("selective", ("fqn:jaffle.marts.orders",))
    assert scope.reason.startswith("macros changed; dbt's state comparison (state:modified) with the manifest "
                                   f"of the deployed commit {macro_world.base[:12]}")
    assert plan.commands[0][-2:] == ("--select", "fqn:jaffle.marts.orders")
    assert {n.unique_id for n in impact.selected if n.resource_type == "model"} == {"model.jaffle.orders"}
    assert [n.unique_id for n in impact.downstream] == ["model.jaffle.customers"]
    assert any(f"state comparison of plan {MACRO_PLAN}: the manifest of commit {macro_world.base[:12]} "
               "pinned on the claim" in line for line in claim_story.logs)


def test_the_parse_pod_is_given_the_plan_and_the_deployed_commit_to_compare_with(claim_story, macro_world):
    pods = claim_story.cluster.created_pods
    assert len(pods) == 5
    [_, deploy, macro, *_] = pods
    for pod in (deploy, macro):
        assert_valid_manifest(pod)
        assert pod_security_violations(pod["spec"], "restricted") == []
    [container] = macro["spec"]["containers"]
    assert container["command"][-8:] == ["--cache-dir", "/dagctl/parse-cache/jaffle", "--commit", macro_world.target,
                                         "--plan-id", MACRO_PLAN, "--base-commit", macro_world.base]
    assert "--plan-id" not in deploy["spec"]["containers"][0]["command"]  # a first deployment compares nothing
    assert not (claim_story.storage / "dbt_state").exists()  # the run worker pinned nothing: the pod did


def test_the_manifest_pinned_on_the_claim_is_recorded_in_the_fingerprint(claim_story):
    impact = claim_story.plan.dbt_impact
    pinned = claim_story.claim / "jaffle" / "dbt_state" / MACRO_PLAN / "manifest.json"
    assert impact.base_manifest_hash == claim_story.base_manifest_sha256
    assert hashlib.sha256(pinned.read_bytes()).hexdigest() == claim_story.base_manifest_sha256
    # Written in the pod from the deployed commit's partial-parse file, and kept for the next plan.
    assert claim_story.kept_manifest_sha256 == claim_story.base_manifest_sha256
    assert not (pinned.parent / "partial_parse.msgpack").exists()
    drifted = impact.model_copy(update={"base_manifest_hash": "0" * 64})
    assert seal_plan(claim_story.plan.model_copy(update={"dbt_impact": drifted})).fingerprint != (
        claim_story.plan.fingerprint)


def test_the_reparse_at_execute_compares_with_the_manifest_pinned_at_explain(claim_story, macro_world):
    assert not (claim_story.claim / "jaffle" / "dbt_parse" / macro_world.base).exists()  # dropped meanwhile
    again = claim_story.again
    assert again.dbt_impact.base_manifest_hash == claim_story.base_manifest_sha256
    assert again.dbt_scope == claim_story.plan.dbt_scope
    assert again.fingerprint == claim_story.plan.fingerprint  # gate lets it execute


def test_a_plan_explained_before_the_deployed_manifest_was_kept_stays_a_full_build(claim_story, macro_world):
    early, again = claim_story.early, claim_story.early_again
    assert early.dbt_scope.scope == "all"
    assert early.dbt_scope.reason.endswith(f"(dbt's state comparison cannot narrow it: no manifest of the deployed "
                                           f"commit {macro_world.base[:12]} is kept)")
    assert early.dbt_impact.base_manifest_hash is None
    assert not (claim_story.claim / "jaffle" / "dbt_state" / EARLY_PLAN / "manifest.json").exists()
    assert sum(f"state comparison of plan {EARLY_PLAN}: no manifest of commit {macro_world.base[:12]} is pinned "
               "on the claim" in line for line in claim_story.logs) == 2
    # Re-parsed at execute while the deployed commit's manifest is on the claim: the approved scope holds.
    assert (again.dbt_scope, again.fingerprint) == (early.dbt_scope, early.fingerprint)


def test_without_a_claim_the_reason_says_no_manifest_of_the_deployed_commit_is_kept(
        run_in_op, macro_world, tmp_path):
    runtime = build_runtime(macro_world, KUBERNETES, tmp_path)
    cluster = played_cluster(macro_world)
    runtime.kubernetes_client = cluster.client
    project = runtime.deployment.projects[0]

    spec, _ = run_in_op(lambda context: attach_dbt_impact(runtime, project, project.environments[0],
                                                          explain(runtime, macro_world, plan_id=MACRO_PLAN)))

    assert spec.dbt_scope.scope == "all"
    assert spec.dbt_scope.reason.endswith(f"(dbt's state comparison cannot narrow it: no manifest of the deployed "
                                          f"commit {macro_world.base[:12]} is kept)")
    assert (spec.dbt_impact.status, spec.dbt_impact.base_manifest_hash) == (ImpactStatus.RESOLVED, None)
    assert spec.dbt_impact.counts == {"model": 4, "seed": 2, "test": 17}
    [pod] = cluster.created_pods
    assert not {"--cache-dir", "--plan-id", "--base-commit"} & set(pod["spec"]["containers"][0]["command"])
