"""Failures and retries: a failed plan runs again at most three times, on the same pinned plan, through a
reviewer's retry decision or Dagster's own re-execution; a dead run worker still leaves the plan `failed`.

Failures are made cheap: `deployed.block_builds()` turns the project's snapshot folder into a plain file,
so `build` fails at once (as on a full disk) and no dbt command is involved.
"""

import pytest
from conftest import (
    BUILD_ONLY_REASON,
    NOTHING_READY,
    ON_SQLITE_AND_POSTGRES,
    PLAN_JOB,
    PROJECT,
    failed_step,
    failure_message,
    run_requests,
    statuses,
)
from dagster import (
    DagsterRun,
    ReexecutionOptions,
    RunRequest,
    build_run_status_sensor_context,
    execute_job,
    reconstructable,
)

from dagctl_dagster.core.lifecycle import PlanStatus
from dagctl_dagster.defs.definitions import load_definitions



def plan_job_from_config():
    """The plan job as the code location loads it from `DAGCTL_CONFIG`: what Dagster re-executes."""
    return load_definitions().resolve_job_def(PLAN_JOB)


@pytest.fixture
def reexecutable(deployed, monkeypatch):
    """`deployed` whose plan runs can be launched and re-executed the way Dagster does: from the job
    reconstructed from the code location, with step outputs kept on disk for the re-execution."""
    monkeypatch.setenv("DAGCTL_CONFIG", str(deployed.config_path))
    monkeypatch.delenv("DAGCTL_STORAGE_DIR", raising=False)
    # Dagster keeps the last reconstructed job per process; each test has its own config and storage.
    job = type(reconstructable(plan_job_from_config))
    job.get_definition.cache_clear()
    job.get_repository_definition.cache_clear()
    return deployed


def launch_reexecutable(deployed, request: RunRequest):
    return execute_job(reconstructable(plan_job_from_config), deployed.instance,
                       run_config=request.run_config, tags=request.tags)


def reexecute_from_failure(deployed, run_id: str):
    """Dagster's "re-execute from failure" of a plan run (the launchpad button)."""
    return execute_job(reconstructable(plan_job_from_config), deployed.instance,
                       reexecution_options=ReexecutionOptions.from_failure(run_id, deployed.instance))


def build_failure(deployed) -> str:
    return f"FileExistsError: [Errno 17] File exists: '{deployed.storage_dir / 'snapshots' / PROJECT}'"


def approved_plan(deployed) -> tuple[str, RunRequest]:
    deployed.commit_change(author="dave")
    plan_id = deployed.explain().plan_id
    deployed.approve(plan_id, "alice")
    [request] = run_requests(deployed.tick())
    return plan_id, request


@ON_SQLITE_AND_POSTGRES
def test_failed_plan_is_retried_up_to_three_times_then_further_retries_are_refused(reexecutable):
    deployed = reexecutable
    plan_id, request = approved_plan(deployed)
    deployed.block_builds()
    first = deployed.launch(request)
    assert (failed_step(first), failure_message(first)) == (
        "build", f"plan {plan_id} failed: {build_failure(deployed)}")
    assert deployed.tick() == NOTHING_READY  # failed, but nobody asked for a retry

    runs = [first]
    for attempt in (1, 2, 3):
        assert deployed.decide(plan_id, "retry", "bob", comment=f"attempt {attempt}").success
        [retry] = run_requests(deployed.tick())
        assert retry.run_key == f"{plan_id}:retry:{attempt}"
        runs.append(launch_reexecutable(deployed, retry) if attempt == 3 else deployed.launch(retry))
        retried = deployed.state(plan_id)
        assert (retried.status, retried.retries) == (PlanStatus.FAILED, attempt)
    refused = deployed.decide(plan_id, "retry", "bob")
    reexecution = reexecute_from_failure(deployed, runs[-1].run_id)

    plan = deployed.state(plan_id)
    assert [run.success for run in runs] == [False] * 4
    assert failure_message(refused) == (
        f"cannot retry plan {plan_id}: it already used all 3 retries; create a new plan instead")
    assert deployed.tick() == NOTHING_READY
    assert (reexecution.success, failed_step(reexecution), failure_message(reexecution)) == (
        False, "build", f"plan {plan_id} has failed and used all 3 retries; create a new plan to try again; "
        "nothing was built or executed")
    assert (plan.status, plan.retries, plan.retries_left, plan.executions) == (PlanStatus.FAILED, 3, 0, 4)
    assert [entry.reason for entry in plan.history if entry.what == "status: running"] == [
        "executing", "executing (retry 1 of 3)", "executing (retry 2 of 3)", "executing (retry 3 of 3)"]
    assert "Retries used: 3 of 3" in deployed.summary(plan_id)


def test_failed_plan_launched_again_without_a_retry_decision_stops_at_gate(deployed):
    plan_id, request = approved_plan(deployed)
    deployed.block_builds()
    deployed.launch(request)
    before = deployed.state(plan_id)
    deployed.unblock_builds()
    snapshots = deployed.snapshots()

    result = deployed.launch_plan(plan_id=plan_id)

    assert (failed_step(result), failure_message(result)) == (
        "gate", f"plan {plan_id} failed ({build_failure(deployed)}); to run it again, an approver records a "
        f"retry decision (dagctl plans retry {plan_id}); nothing was built or executed")
    assert deployed.state(plan_id) == before
    assert deployed.snapshots() == snapshots


def test_failure_the_plan_recorded_itself_is_not_recorded_twice_by_the_run_failure_sensor(deployed):
    plan_id, request = approved_plan(deployed)
    deployed.block_builds()
    failed = deployed.launch(request)
    before = deployed.state(plan_id)

    evaluate_run_status_sensor(deployed, "dagctl_run_failure_sensor", failed.dagster_run,
                               failed.get_run_failure_event())

    assert deployed.state(plan_id) == before


def evaluate_run_status_sensor(deployed, name: str, run: DagsterRun, event) -> None:
    context = build_run_status_sensor_context(
        sensor_name=name, dagster_event=event, dagster_instance=deployed.instance,
        dagster_run=deployed.instance.get_run_by_id(run.run_id))
    deployed.defs.resolve_sensor_def(name)(context)


@pytest.mark.parametrize(("sensor", "report", "what"), [
    ("dagctl_run_failure_sensor", "report_run_failed", "failed"),
    ("dagctl_run_canceled_sensor", "report_run_canceled", "was cancelled"),
], ids=["worker-died", "run-cancelled"])
def test_run_that_ends_without_the_plan_recording_it_marks_the_plan_failed_and_a_retry_succeeds(
        deployed, sensor, report, what):
    plan_id, _ = approved_plan(deployed)
    run = deployed.start_execution_run(plan_id)
    # What run monitoring (or a user's "terminate") reports once the run worker is gone.
    ended = getattr(deployed.instance, report)(deployed.instance.get_run_by_id(run.run_id))

    evaluate_run_status_sensor(deployed, sensor, run, ended)
    evaluate_run_status_sensor(deployed, sensor, run, ended)  # a second tick changes nothing

    failed = deployed.state(plan_id)
    assert (failed.status, failed.reason, failed.history[-1].run_id) == (
        PlanStatus.FAILED, f"run {run.run_id[:8]} {what} before the plan finished (e.g. the run worker died)",
        run.run_id)
    assert statuses(failed)[-2:] == ["status: running", "status: failed"]
    assert deployed.decide(plan_id, "retry", "alice").success
    [retry] = run_requests(deployed.tick())
    assert retry.run_key == f"{plan_id}:retry:1"
    result = deployed.launch(retry)
    plan = deployed.state(plan_id)
    assert result.success, failure_message(result)
    assert (plan.status, plan.retries, plan.executions) == (PlanStatus.COMPLETED, 1, 2)
    assert plan.run_ids[-2:] == (run.run_id, result.run_id)


def test_dagster_reexecution_of_a_failed_plan_run_counts_as_a_retry(reexecutable):
    deployed = reexecutable
    plan_id, request = approved_plan(deployed)
    deployed.block_builds()
    failed = launch_reexecutable(deployed, request)
    deployed.unblock_builds()
    unasked = reexecute_from_failure(deployed, failed.run_id)
    assert deployed.decide(plan_id, "retry", "bob").success

    reexecution = reexecute_from_failure(deployed, failed.run_id)

    plan = deployed.state(plan_id)
    # Dagster's re-execution button is a retry like any other: without a retry decision by an approver it
    # stops before building anything.
    assert (failed_step(unasked), failure_message(unasked)) == (
        "build", f"plan {plan_id} failed ({build_failure(deployed)}); to run it again, an approver records a "
        f"retry decision (dagctl plans retry {plan_id}); nothing was built or executed")
    assert (failed.success, reexecution.success) == (False, True)
    assert reexecution.dagster_run.parent_run_id == failed.run_id
    assert (plan.status, plan.retries, plan.executions) == (PlanStatus.COMPLETED, 1, 2)
    assert [(what, entry.reason) for what, entry in zip(statuses(plan), plan.history, strict=True)][-6:] == [
        ("status: running", "executing"),
        ("status: failed", build_failure(deployed)),
        ("decision: retry", "retry by bob"),
        ("status: running", "executing (retry 1 of 3)"),
        ("built", "artifact built"),
        ("status: completed", BUILD_ONLY_REASON),
    ]
    assert plan.run_ids[-2:] == (failed.run_id, reexecution.run_id)


def test_dagster_reexecution_of_a_plan_whose_base_moved_is_discarded_as_stale(reexecutable):
    deployed = reexecutable
    deployed_commit = deployed.repo.head
    plan_id, request = approved_plan(deployed)
    deployed.block_builds()
    failed = launch_reexecutable(deployed, request)
    deployed.unblock_builds()
    # A newer plan is deployed meanwhile (the failed one has started, so it is not superseded).
    newer_commit = deployed.commit_change(author="dave")
    newer = deployed.explain().plan_id
    deployed.approve(newer, "alice")
    assert deployed.execute_approved(newer).success
    assert deployed.decide(plan_id, "retry", "bob").success
    snapshots = deployed.snapshots()

    reexecution = reexecute_from_failure(deployed, failed.run_id)

    stale = (f"the environment moved: its deployed commit is {newer_commit[:12]}, the plan was made against "
             f"{deployed_commit[:12]}")
    plan = deployed.state(plan_id)
    assert (failed_step(reexecution), failure_message(reexecution)) == (
        "build", f"plan {plan_id} was discarded as stale: {stale}; nothing was built or executed. "
        "Create a new plan.")
    assert (plan.status, plan.auto_discarded, plan.reason, plan.retries) == (
        PlanStatus.REJECTED, True, f"stale: {stale}", 0)
    assert "built" not in statuses(plan)
    assert deployed.snapshots() == snapshots
