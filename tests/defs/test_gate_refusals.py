"""`gate` is the last check before side effects: what it refuses is never built nor executed.

A plan run launched by hand with a made-up `plan_id` (the launchpad lets anyone do it) must stop at `gate`
unless the event log says the plan is approved and still valid; stale and superseded plans are discarded
with the reason.
"""

import pytest
from conftest import (
    BUILD_ONLY_REASON,
    NOTHING_READY,
    ON_SQLITE_AND_POSTGRES,
    assert_nothing_ran,
    failed_step,
    failure_message,
    run_requests,
    started_steps,
    statuses,
)

from dagctl_dagster.core.lifecycle import PlanStatus
from dagctl_dagster.core.plan import build_plan_id

NOT_ADMITTED = (
    "only an approved plan, or a failed one being retried, can execute; nothing was built or executed")


def pending_plan(deployed):
    return deployed.explain().plan_id


def rejected_plan(deployed):
    plan_id = deployed.explain().plan_id
    assert deployed.decide(plan_id, "reject", "bob", comment="wrong base image").success
    return plan_id


def cancelled_after_approval(deployed):
    plan_id = deployed.explain().plan_id
    deployed.approve(plan_id, "alice")
    assert len(run_requests(deployed.tick())) == 1
    assert deployed.decide(plan_id, "cancel", "dave").success
    return plan_id


def executed_plan(deployed):
    plan_id = deployed.explain().plan_id
    deployed.approve(plan_id, "alice")
    assert deployed.execute_approved(plan_id).success
    return plan_id


@pytest.mark.parametrize(("make_plan", "message"), [
    (pending_plan,
     "plan {id} is pending (awaiting approval: 1 more approval(s) from alice, bob): " + NOT_ADMITTED),
    (rejected_plan, "plan {id} is rejected (wrong base image): " + NOT_ADMITTED),
    (cancelled_after_approval, "plan {id} is cancelled (cancelled by dave): " + NOT_ADMITTED),
    (executed_plan, f"plan {{id}} is completed ({BUILD_ONLY_REASON}): " + NOT_ADMITTED),
], ids=["unapproved", "rejected", "cancelled", "already-executed"])
def test_hand_written_run_config_naming_a_plan_that_may_not_execute_stops_at_gate(
        deployed, make_plan, message):
    deployed.commit_change(author="dave")
    plan_id = make_plan(deployed)
    before, snapshots = deployed.state(plan_id), deployed.snapshots()

    result = deployed.launch_plan(plan_id=plan_id)

    assert (result.success, failed_step(result), failure_message(result)) == (
        False, "gate", message.format(id=plan_id))
    assert deployed.state(plan_id) == before
    assert deployed.snapshots() == snapshots
    assert not {"build", "execute"} & set(started_steps(result))


def test_hand_written_run_config_naming_an_unknown_plan_stops_at_detect(deployed):
    snapshots = deployed.snapshots()

    result = deployed.launch_plan(plan_id="jaffle-prod-0badc0de")

    assert (result.success, failed_step(result), failure_message(result)) == (
        False, "detect", "unknown plan 'jaffle-prod-0badc0de': no plan with this id was recorded for project "
        "'jaffle', environment 'prod'")
    assert deployed.snapshots() == snapshots


def test_approved_plan_whose_policy_was_tightened_before_it_ran_returns_to_pending_keeping_valid_approvals(
    deployed,
):
    deployed.commit_change(author="dave")
    plan_id = deployed.explain().plan_id
    deployed.approve(plan_id, "alice")
    [request] = run_requests(deployed.tick())
    deployed.configure(protected=True, approvers=["alice", "bob"], required_approvals=2)
    snapshots = deployed.snapshots()

    result = deployed.launch(request)

    reason = "re-checked at execution: still needs 1 more approval(s) from bob"
    assert (result.success, failed_step(result), failure_message(result)) == (
        False, "gate", f"plan {plan_id} is pending again: {reason}; nothing was built or executed")
    assert (deployed.state(plan_id).status, deployed.state(plan_id).reason) == (PlanStatus.PENDING, reason)
    assert_nothing_ran(deployed, plan_id, snapshots, result)
    deployed.approve(plan_id, "bob")  # alice's approval is still valid under the tightened policy: it counts
    [again] = run_requests(deployed.tick())
    assert (again.run_key, deployed.state(plan_id).status) == (f"{plan_id}:execute:2", PlanStatus.APPROVED)


@ON_SQLITE_AND_POSTGRES
def test_plan_whose_base_moved_is_discarded_as_stale_before_build(deployed):
    deployed_commit = deployed.repo.head
    # Plan `first` fails in build, so it has started and a newer plan does not discard it.
    first_commit = deployed.commit_change(author="dave")
    first = deployed.explain().plan_id
    deployed.approve(first, "alice")
    deployed.block_builds()
    assert not deployed.execute_approved(first).success
    second_commit = deployed.commit_change(author="dave")
    second = deployed.explain().plan_id
    assert deployed.state(first).status is PlanStatus.FAILED
    # `first` is retried and deployed: the environment moves under `second`.
    deployed.unblock_builds()
    assert deployed.decide(first, "retry", "alice").success
    assert deployed.execute_approved(first).success
    deployed.approve(second, "alice")
    snapshots = deployed.snapshots()

    result = deployed.execute_approved(second)

    stale = (f"the environment moved: its deployed commit is {first_commit[:12]}, the plan was made against "
             f"{deployed_commit[:12]}")
    plan = deployed.state(second)
    assert (result.success, failed_step(result), failure_message(result)) == (
        False, "gate", f"plan {second} was discarded as stale: {stale}; nothing was built or executed. "
        "Create a new plan.")
    assert (plan.status, plan.auto_discarded, plan.reason, plan.history[-1].actor) == (
        PlanStatus.REJECTED, True, f"stale: {stale}", "dagctl")
    assert second_commit not in snapshots
    assert_nothing_ran(deployed, second, snapshots, result)


def test_plan_whose_target_commit_was_removed_from_the_repository_is_discarded_as_stale(deployed):
    target = deployed.commit_change(author="dave")
    plan_id = deployed.explain().plan_id
    deployed.approve(plan_id, "alice")
    assert deployed.repo.drop_last_commit() == target
    deployed.gc_mirror()
    snapshots = deployed.snapshots()

    result = deployed.execute_approved(plan_id)

    stale = f"target commit {target[:12]} no longer exists in the repository"
    plan = deployed.state(plan_id)
    assert (result.success, failed_step(result), failure_message(result)) == (
        False, "gate", f"plan {plan_id} was discarded as stale: {stale}; nothing was built or executed. "
        "Create a new plan.")
    assert (plan.status, plan.auto_discarded, plan.reason) == (PlanStatus.REJECTED, True, f"stale: {stale}")
    assert_nothing_ran(deployed, plan_id, snapshots, result)


def test_newer_plan_discards_older_unstarted_plans_with_the_reason(deployed):
    deployed.commit_change(author="dave")
    older = deployed.explain().plan_id
    deployed.approve(older, "alice")
    deployed.commit_change(author="dave")

    newer = deployed.launch_plan()
    newer_id = build_plan_id("jaffle", "prod", newer.run_id)

    plan = deployed.state(older)
    assert newer.success
    assert (plan.status, plan.auto_discarded, plan.reason) == (
        PlanStatus.REJECTED, True, f"superseded by plan {newer_id}")
    assert [(entry.actor, entry.what, entry.run_id) for entry in plan.history[-1:]] == [
        ("dagctl", "status: rejected", newer.run_id)]
    assert deployed.state(newer_id).status is PlanStatus.PENDING
    assert deployed.tick() == NOTHING_READY
    refused = deployed.decide(older, "approve", "bob")
    assert failure_message(refused) == (
        f"cannot approve plan {older}: it is rejected (only pending plans can be approved)")


def test_second_plan_cannot_execute_while_another_plan_of_the_environment_runs(deployed):
    deployed.commit_change(author="dave")
    running = deployed.explain().plan_id
    deployed.approve(running, "alice")
    assert len(run_requests(deployed.tick())) == 1
    deployed.start_execution_run(running)
    deployed.commit_change(author="dave")
    waiting = deployed.explain().plan_id
    deployed.approve(waiting, "alice")
    snapshots = deployed.snapshots()

    result = deployed.execute_approved(waiting)

    assert (result.success, failed_step(result), failure_message(result)) == (
        False, "gate", f"plan {waiting} cannot execute now: plan {running} is running in jaffle/prod "
        "(one execution at a time per environment); nothing was built or executed")
    assert deployed.state(waiting).status is PlanStatus.APPROVED
    assert statuses(deployed.state(running))[-1] == "status: running"
    assert_nothing_ran(deployed, waiting, snapshots, result)
