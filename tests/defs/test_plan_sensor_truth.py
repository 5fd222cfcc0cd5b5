"""The plan sensor on a real instance: a plan only when the version changes against the newest plan, runs
that died before planning are requested again (bounded), a rewritten history plans a full build, and one
broken or hung project never stops the others."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, RunsFilter, SkipReason
from fixtures.git_repos import REPO_ROOT, run_git
from fixtures.silent_server import serve_silently

from conftest import ENV, PLAN_JOB, PLAN_SENSOR, PROTECTED, PROJECT, failure_message, run_requests
from dagctl_dagster.core.lifecycle import PlanStatus
from dagctl_dagster.core.plan import build_plan_id
from dagctl_dagster.defs.sensors import MAX_PLAN_ATTEMPTS, REQUEST_TAG

UP_TO_DATE = SkipReason(f"{PROJECT}/{ENV}: up to date")


def plan_from_sensor(deployed):
    """One sensor tick that requests one plan, and its run, as the daemon would; returns the plan."""
    [request] = run_requests(deployed.tick(PLAN_SENSOR))
    [result] = deployed.launch_new([request])
    assert result.success, failure_message(result)
    return deployed.state(build_plan_id(PROJECT, ENV, result.run_id))


def push_without_bump(deployed) -> str:
    return deployed.repo.commit_change("Dockerfile", deployed.repo.read("Dockerfile") + "# unreviewed\n")


def test_a_push_without_a_bump_while_a_plan_is_pending_requests_no_plan(deployed):
    deployed.commit_change()
    pending = plan_from_sensor(deployed)
    push_without_bump(deployed)

    assert pending.status is PlanStatus.PENDING
    assert deployed.tick(PLAN_SENSOR) == UP_TO_DATE
    assert deployed.state(pending.plan_id).status is PlanStatus.PENDING  # not superseded


def test_a_push_without_a_bump_after_a_rejection_plans_again(deployed):
    deployed.commit_change()
    rejected = plan_from_sensor(deployed)
    assert deployed.decide(rejected.plan_id, "reject", "alice", comment="not like this").success
    assert deployed.tick(PLAN_SENSOR) == SkipReason(  # the same commit is not planned twice
        f"{PROJECT}/{ENV}: {deployed.repo.head[:12]} was planned already (plan {rejected.plan_id}, rejected): "
        "push a new commit to plan it again")
    head = push_without_bump(deployed)

    replanned = plan_from_sensor(deployed)

    assert (replanned.spec.target_commit, replanned.spec.version_new, replanned.status) == (
        head, rejected.spec.version_new, PlanStatus.PENDING)


def test_a_push_without_a_bump_after_a_completed_plan_requests_no_plan(deployed):
    deployed.configure(protected=False)
    deployed.commit_change()
    completed = plan_from_sensor(deployed)
    push_without_bump(deployed)

    assert completed.status is PlanStatus.COMPLETED
    assert deployed.tick(PLAN_SENSOR) == UP_TO_DATE


def test_the_newest_plan_counts_even_when_an_older_one_completed_at_the_same_time(deployed):
    # The test clock stands still: both plans are created at the same instant, the later one counts.
    deployed.configure(protected=False)
    deployed.commit_change()
    completed = plan_from_sensor(deployed)
    deployed.configure(**PROTECTED)
    deployed.commit_change()
    pending = plan_from_sensor(deployed)
    push_without_bump(deployed)

    assert completed.spec.created_at == pending.spec.created_at
    assert (completed.status, pending.status, pending.spec.version_new) == (
        PlanStatus.COMPLETED, PlanStatus.PENDING, "3")
    assert deployed.tick(PLAN_SENSOR) == UP_TO_DATE


def fail_before_detect(deployed, request) -> None:
    """What a launch timeout leaves: the requested run exists with its tags and failed, no step ran."""
    run = deployed.instance.create_run_for_job(
        job_def=deployed.defs.resolve_job_def(PLAN_JOB), run_config=request.run_config,
        tags={**request.tags, "dagster/run_key": request.run_key})
    deployed.instance.report_run_failed(run)


def test_a_plan_whose_runs_never_started_is_requested_again_three_times_then_the_sensor_says_why(deployed):
    deployed.commit_change()
    keys = []
    for _ in range(MAX_PLAN_ATTEMPTS):
        [request] = run_requests(deployed.tick(PLAN_SENSOR))
        keys.append(request.run_key)
        fail_before_detect(deployed, request)

    final = deployed.tick(PLAN_SENSOR)

    base = f"{PROJECT}:{ENV}:2:{deployed.repo.head}"
    assert keys == [base, f"{base}:attempt:2", f"{base}:attempt:3"]
    assert len(deployed.instance.get_run_records(RunsFilter(tags={REQUEST_TAG: base}))) == 3
    assert isinstance(final, SkipReason)
    assert final.skip_message.startswith(
        f"{PROJECT}/{ENV}: the plan of {deployed.repo.head[:12]} was requested 3 times and each run ended "
        "before it recorded a plan (last: run ")
    assert final.skip_message.endswith(
        "see its logs); not requested again: push a new commit or launch the plan job by hand")


def test_a_run_that_started_late_after_a_failed_attempt_still_plans_once(deployed):
    deployed.commit_change()
    [first] = run_requests(deployed.tick(PLAN_SENSOR))
    fail_before_detect(deployed, first)
    [second] = run_requests(deployed.tick(PLAN_SENSOR))

    queued = deployed.instance.create_run_for_job(
        job_def=deployed.defs.resolve_job_def(PLAN_JOB), run_config=second.run_config,
        tags={**second.tags, "dagster/run_key": second.run_key})
    while_queued = deployed.tick(PLAN_SENSOR)
    deployed.instance.delete_run(queued.run_id)  # the queue drops it; the daemon launches `second`
    plan = deployed.state(build_plan_id(PROJECT, ENV, deployed.launch(second).run_id))

    assert while_queued == SkipReason(
        f"{PROJECT}/{ENV}: the plan of {deployed.repo.head[:12]} is being made (run {queued.run_id[:8]} is "
        "NOT_STARTED)")
    assert plan.status is PlanStatus.PENDING
    assert deployed.tick(PLAN_SENSOR) == UP_TO_DATE


def test_after_a_force_push_that_removed_the_deployed_commit_the_plan_is_a_full_build(deployed):
    deployed_commit = deployed.state(deployed.deployed_plan_id).spec.target_commit
    repo = deployed.repo
    repo.git("checkout", "-q", "--orphan", "rewritten")
    (repo.work / ".dagctl" / "config.yaml").write_text('version: "2"\n')
    repo.git("add", "-A")
    repo.git("commit", "-q", "-m", "History rewritten")
    repo.git("push", "-q", "--force", "origin", "HEAD:main")
    run_git(f"--git-dir={repo.bare}", "reflog", "expire", "--expire=now", "--all")
    run_git(f"--git-dir={repo.bare}", "gc", "-q", "--prune=now")
    # The mirror is rebuilt from the rewritten remote (a new machine, a lost volume).
    shutil.rmtree(deployed.storage_dir / "mirrors")
    deployed.configure(**PROTECTED)

    plan = plan_from_sensor(deployed)
    deployed.approve(plan.plan_id, "alice")
    executed = deployed.execute_approved(plan.plan_id)

    assert (plan.spec.base_commit, plan.spec.dbt_scope.scope, plan.spec.dbt_scope.reason) == (
        deployed_commit, "all", "the deployed commit is no longer in the repository: full build")
    assert plan.spec.commands == (("dbt", "seed", "--target", "prod"),)
    assert executed.success, failure_message(executed)
    assert deployed.state(plan.plan_id).status is PlanStatus.COMPLETED


def test_a_missing_subdirectory_is_reported_as_a_missing_folder_at_the_commit(deployed):
    other = {"name": "other", "framework": "dbt", "repository": deployed.repo.url, "subdirectory": "analytics",
             "environments": [{"name": "dev"}]}
    deployed.configure(extra_projects=[other], **PROTECTED)

    result = deployed.tick("other_plan_sensor")

    assert result == SkipReason(
        f"other/dev: Directory 'analytics' does not exist at commit {deployed.repo.head[:12]} of "
        f"{deployed.repo.url}: fix the project's subdirectory in the deployment config, or check the commit.")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung Git server)."""
    with serve_silently() as port:
        yield port

def test_a_hung_remote_times_out_and_the_other_project_still_plans(deployed, silent_port: int):
    url = f"http://127.0.0.1:{silent_port}/acme/hung.git"
    hung = {"name": "hung", "framework": "dbt", "repository": url, "git_timeout_seconds": 1,
            "environments": [{"name": "dev"}]}
    deployed.configure(extra_projects=[hung], **PROTECTED)
    deployed.commit_change()

    hung_result = deployed.tick("hung_plan_sensor")
    plan = plan_from_sensor(deployed)

    assert isinstance(hung_result, SkipReason)
    assert hung_result.skip_message.startswith(f"hung/dev: Cannot fetch branches from {url}: no answer within 1s")
    assert plan.status is PlanStatus.PENDING


def test_the_shipped_instance_evaluates_sensors_in_parallel_threads(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    settings = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings))

    with DagsterInstance.from_config(str(home)) as instance:
        assert instance.get_settings("sensors") == {"use_threads": True, "num_workers": 8}
        assert instance.get_settings("code_servers") == {"local_startup_timeout": 180}
