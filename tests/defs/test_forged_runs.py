"""The forged-run attack of issue 13, replayed on a real instance with a real dbt execution.

The attack: launch the plan job with a forged `dagctl/plan-id` tag naming an approved plan (and a bogus
environment), cancel it while the plan's real execution runs, let the run failure/cancel sensors react,
then have `mallory` (no approver) ask for a retry. Before the fix the plan became `failed` mid-execution,
the retry was accepted and dbt ran twice for one plan. Now plan status changes only come from the run id
recorded on the plan's own events, and a retry is a decision only an approver may take.

The real execution is held in the middle of `dbt build` by a Python model that waits for a file the test
writes (both sides poll a file on disk: the only event two processes share here).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psutil
import pytest
from conftest import (
    ENV,
    NOTHING_READY,
    PLAN_JOB,
    PROJECT,
    failure_message,
    run_requests,
    statuses,
)
from dagster import AssetKey, RunsFilter, build_run_status_sensor_context

from dagctl_dagster.core.dbt_changes import NO_EMPTY_SELECTION
from dagctl_dagster.core.lifecycle import PlanStatus
from dagctl_dagster.defs.sensors import plan_run_config
from dagctl_dagster.defs.tags import PLAN_ID_TAG, plan_run_tags

WAIT_SECONDS = 120

HELD_MODEL = '''
import os
import time


def model(dbt, session):
    open({started!r}, "w").close()
    deadline = time.time() + {wait}
    while not os.path.exists({release!r}) and time.time() < deadline:
        time.sleep(0.05)
    return session.sql("select 1 as id")
'''


def wait_for_file(path: Path, worker: threading.Thread) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while not path.exists():
        assert worker.is_alive(), "the execution ended before dbt reached the held model"
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def evaluate(deployed, sensor: str, run, event) -> None:
    context = build_run_status_sensor_context(
        sensor_name=sensor, dagster_event=event, dagster_instance=deployed.instance,
        dagster_run=deployed.instance.get_run_by_id(run.run_id))
    deployed.defs.resolve_sensor_def(sensor)(context)


def runs_that_built(deployed, *asset_path: str) -> set[str]:
    records = deployed.instance.fetch_materializations(AssetKey(list(asset_path)), limit=100).records
    return {record.event_log_entry.run_id for record in records}


@pytest.fixture
def no_leftover_log_tails(tmp_path):
    """Stops the `tail -F` processes Dagster's compute log capture starts for the run executed in a thread
    below (its capture is not torn down there), so the test leaves no process behind."""
    yield
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == "tail" and any(str(tmp_path) in part for part in child.cmdline()):
                child.kill()
        except psutil.NoSuchProcess:
            continue


def test_forged_tag_run_cancelled_during_the_real_execution_changes_nothing_and_mallory_cannot_retry(
        deployed, tmp_path, no_leftover_log_tails):
    started, release = tmp_path / "started", tmp_path / "release"
    deployed.configure(protected=True, approvers=["alice", "bob"], dbt_commands=["dbt build"])
    model = HELD_MODEL.format(started=str(started), release=str(release), wait=WAIT_SECONDS)
    deployed.commit_change("models/zz_held.py", model, author="dave")
    plan = deployed.explain()
    plan_id = plan.plan_id
    assert plan.spec.commands == (("dbt", "build", "--target", "prod", *NO_EMPTY_SELECTION, "--select",
                                   "path:models/zz_held.py"),)
    deployed.approve(plan_id, "alice")
    [request] = run_requests(deployed.tick())

    results = []
    worker = threading.Thread(target=lambda: results.append(deployed.launch(request)))
    worker.start()
    try:
        wait_for_file(started, worker)
        assert deployed.state(plan_id).status is PlanStatus.RUNNING

        # The attacker's runs: the plan job with the plan's id in a forged tag and a bogus environment.
        forged_tags = {**plan_run_tags(PROJECT, "bogus", plan_id), "dagctl/trigger": "approval"}
        failed = deployed.defs.resolve_job_def(PLAN_JOB).execute_in_process(
            run_config=plan_run_config("bogus", plan_id=plan_id), instance=deployed.instance,
            tags=forged_tags, raise_on_error=False)
        cancelled = deployed.instance.create_run_for_job(
            job_def=deployed.defs.resolve_job_def(PLAN_JOB), run_config=plan_run_config("bogus", plan_id=plan_id),
            tags=forged_tags)
        ended = deployed.instance.report_run_canceled(deployed.instance.get_run_by_id(cancelled.run_id))
        evaluate(deployed, "dagctl_run_failure_sensor", failed.dagster_run, failed.get_run_failure_event())
        evaluate(deployed, "dagctl_run_canceled_sensor", cancelled, ended)
        during = deployed.state(plan_id)
        mallory = deployed.decide(plan_id, "retry", "mallory")
        ticks = [deployed.tick(), deployed.tick()]
    finally:
        release.touch()
        worker.join(WAIT_SECONDS)

    [execution] = results
    final = deployed.state(plan_id)
    plan_runs = deployed.instance.get_runs(RunsFilter(job_name=PLAN_JOB, tags={PLAN_ID_TAG: plan_id}))
    assert not failed.success
    assert failure_message(failed).startswith("project 'jaffle' has no environment 'bogus'")
    assert (during.status, during.retry_requested) == (PlanStatus.RUNNING, False)
    assert failure_message(mallory) == (
        f"cannot retry plan {plan_id}: it is running (only failed plans can be retried)")
    assert ticks == [NOTHING_READY, NOTHING_READY]
    assert execution.success, failure_message(execution)
    assert (final.status, final.executions, final.retries) == (PlanStatus.COMPLETED, 1, 0)
    assert "status: failed" not in statuses(final)
    assert failed.run_id not in final.run_ids and cancelled.run_id not in final.run_ids
    # Three runs carry the plan's id (the real one and two forged), exactly one of them ran dbt.
    assert len(plan_runs) == 3
    assert runs_that_built(deployed, PROJECT, ENV, "zz_held") == {execution.run_id}


def test_retry_of_a_failed_plan_is_refused_to_a_non_approver_and_taken_from_an_approver(deployed):
    deployed.commit_change(author="dave")
    plan_id = deployed.explain().plan_id
    deployed.approve(plan_id, "alice")
    [request] = run_requests(deployed.tick())
    deployed.block_builds()
    assert not deployed.launch(request).success
    deployed.unblock_builds()

    mallory = deployed.decide(plan_id, "retry", "mallory")
    assert deployed.tick() == NOTHING_READY
    bob = deployed.decide(plan_id, "retry", "bob")
    [retry] = run_requests(deployed.tick())

    assert failure_message(mallory) == (
        f"mallory cannot retry plan {plan_id}: only approvers of environment 'prod' may (alice, bob)")
    assert bob.success
    assert deployed.launch(retry).success
    assert deployed.state(plan_id).status is PlanStatus.COMPLETED


def test_a_retry_recorded_by_a_non_approver_outside_the_review_job_is_refused_at_gate(deployed):
    # A decision event written straight into the event log (e.g. a forged runless asset event) is checked
    # again by `gate` against the policy: it cannot start an execution.
    from dagctl_dagster.core.lifecycle import Decision, EventKind, PlanEvent
    from dagctl_dagster.defs.store import record_runless

    deployed.commit_change(author="dave")
    plan_id = deployed.explain().plan_id
    deployed.approve(plan_id, "alice")
    [request] = run_requests(deployed.tick())
    deployed.block_builds()
    deployed.launch(request)
    deployed.unblock_builds()
    state = deployed.state(plan_id)
    record_runless(deployed.instance, PlanEvent(
        plan_id=plan_id, kind=EventKind.DECISION, decision=Decision.RETRY, actor="mallory", at=deployed.clock(),
        fingerprint=state.spec.fingerprint), project=PROJECT, environment=ENV)
    snapshots = deployed.snapshots()

    [retry] = run_requests(deployed.tick())
    result = deployed.launch(retry)

    assert failure_message(result) == (
        f"mallory cannot retry plan {plan_id}: only approvers of environment 'prod' may (alice, bob); nothing "
        "was built or executed")
    assert deployed.state(plan_id).status is PlanStatus.FAILED
    assert deployed.snapshots() == snapshots


@pytest.mark.parametrize("decision", ["approve", "reject"])
def test_a_decision_launched_twice_with_the_same_id_is_recorded_once(deployed, decision):
    deployed.commit_change(author="dave")
    plan_id = deployed.explain().plan_id

    first = deployed.decide(plan_id, decision, "alice", decision_id="cli-7f3a")
    again = deployed.decide(plan_id, decision, "alice", decision_id="cli-7f3a")

    state = deployed.state(plan_id)
    assert (first.success, again.success) == (True, True)
    assert [entry.what for entry in state.history].count(f"decision: {decision}") == 1
    assert [entry.decision_id for entry in state.history if entry.what.startswith("decision")] == ["cli-7f3a"]


def test_a_decision_id_already_used_for_another_decision_is_refused(deployed):
    deployed.commit_change(author="dave")
    plan_id = deployed.explain().plan_id
    assert deployed.decide(plan_id, "approve", "alice", decision_id="cli-7f3a").success

    other = deployed.decide(plan_id, "reject", "bob", decision_id="cli-7f3a")

    assert failure_message(other) == (
        f"decision id 'cli-7f3a' is already used on plan {plan_id} by alice's approve: use a new id for a "
        "different decision")
    assert deployed.state(plan_id).status is PlanStatus.PENDING
