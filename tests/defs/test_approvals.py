"""Approval policies on a real instance: who may approve, how many, for which paths, for how long, with
which proof; and that however many approvals and sensor ticks there are, a plan executes once."""

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import (
    BUILD_ONLY_REASON,
    ENV,
    NOTHING_READY,
    ON_SQLITE_AND_POSTGRES,
    PLAN_JOB,
    PLAN_SENSOR,
    assert_nothing_ran,
    failed_step,
    failure_message,
    run_requests,
    statuses,
)
from dagster import RunRequest
from fixtures.ssh_keys import SshKey, make_key

from dagctl_dagster.core.dbt_changes import NO_EMPTY_SELECTION
from dagctl_dagster.core.lifecycle import Decision, EventKind, PlanEvent, PlanStatus
from dagctl_dagster.core.plan import build_plan_id
from dagctl_dagster.defs.store import record_runless
from dagctl_dagster.defs.tags import plan_run_tags



def execution_request(plan_id: str) -> RunRequest:
    """What the approval sensor requests once a plan's policy is met."""
    return RunRequest(
        run_key=f"{plan_id}:execute", job_name=PLAN_JOB,
        run_config={"ops": {"detect": {"config": {"environment": ENV, "commit": "", "plan_id": plan_id}}}},
        tags={**plan_run_tags("jaffle", ENV, plan_id), "dagctl/trigger": "approval"})


def test_two_of_three_needs_two_distinct_approvers_and_counts_each_once(deployed):
    deployed.configure(protected=True, approvers=["alice", "bob", "erin"], required_approvals=2)
    deployed.commit_change(author="dave")
    plan_id = deployed.explain().plan_id
    deployed.approve(plan_id, "alice")

    again = deployed.decide(plan_id, "approve", "alice")

    assert failure_message(again) == f"alice has already approved plan {plan_id}"
    assert [approval.actor for approval in deployed.state(plan_id).approvals] == ["alice"]
    assert deployed.tick() == NOTHING_READY
    deployed.approve(plan_id, "erin")
    assert run_requests(deployed.tick()) == [execution_request(plan_id)]
    assert deployed.state(plan_id).reason == "policy met: approved by alice, erin"


def test_commit_author_cannot_approve_the_plan_the_sensor_made_of_their_commit(deployed):
    deployed.configure(protected=True, approvers=["alice", "dave"])
    deployed.commit_change(author="dave")
    [request] = run_requests(deployed.tick(PLAN_SENSOR))
    plan_id = build_plan_id("jaffle", ENV, deployed.launch(request).run_id)

    refused = deployed.decide(plan_id, "approve", "dave")

    assert failure_message(refused) == (
        f"dave cannot approve plan {plan_id}: they are one of its authors and environment 'prod' does not "
        "allow self-approval; ask another approver")
    assert deployed.state(plan_id).approvals == ()
    assert deployed.tick() == NOTHING_READY


def test_requester_and_commit_authors_are_all_authors_of_a_manual_plan(deployed):
    deployed.configure(protected=True, approvers=["erin", "dave", "frank"])
    deployed.commit_change(author="dave")
    plan = deployed.explain(requested_by="erin")

    refused = [failure_message(deployed.decide(plan.plan_id, "approve", actor)) for actor in ("erin", "dave")]
    approved = deployed.decide(plan.plan_id, "approve", "frank")

    assert (plan.spec.author, plan.spec.triggered_by) == ("erin", "manual")
    assert refused == [
        f"{actor} cannot approve plan {plan.plan_id}: they are one of its authors and environment 'prod' does "
        "not allow self-approval; ask another approver" for actor in ("erin", "dave")]
    assert approved.success
    assert run_requests(deployed.tick()) == [execution_request(plan.plan_id)]


def test_author_may_approve_when_the_environment_allows_self_approval(deployed):
    deployed.configure(protected=True, approvers=["dave"], allow_self_approval=True)
    deployed.commit_change(author="dave")
    plan_id = deployed.explain().plan_id

    deployed.approve(plan_id, "dave")

    assert run_requests(deployed.tick()) == [execution_request(plan_id)]


def test_approver_not_listed_for_the_environment_is_refused(deployed):
    deployed.commit_change(author="dave")
    plan_id = deployed.explain().plan_id

    refused = deployed.decide(plan_id, "approve", "mallory")

    assert failure_message(refused) == (
        "mallory is not an approver of environment 'prod' (approvers: alice, bob)")
    assert deployed.state(plan_id).approvals == ()
    assert deployed.tick() == NOTHING_READY


def test_path_rule_requires_its_approver_only_when_the_plan_touches_its_paths(deployed):
    deployed.configure(protected=True, approvers=["alice", "bob"],
                       path_rules=[{"paths": ["requirements.txt"], "approvers": ["priya"]}])
    deployed.commit_change("requirements.txt", "dbt-duckdb==1.11.1\nrequests==2.32.3\n", author="dave")
    touching = deployed.explain().plan_id
    deployed.approve(touching, "alice")

    assert deployed.tick() == NOTHING_READY
    assert "**Still needed:** an approval from one of priya (changes touch requirements.txt)" in (
        deployed.summary(touching).splitlines())
    deployed.approve(touching, "priya")
    [request] = run_requests(deployed.tick())
    assert request == execution_request(touching)
    assert deployed.launch(request).success

    # Deployed: the next plan's change set starts from it and no longer touches requirements.txt.
    deployed.commit_change("Dockerfile", author="dave")
    other = deployed.explain().plan_id
    refused = deployed.decide(other, "approve", "priya")
    deployed.approve(other, "bob")
    assert failure_message(refused) == (
        "priya is not an approver of environment 'prod' (approvers: alice, bob)")
    assert run_requests(deployed.tick()) == [execution_request(other)]


def test_path_rule_approver_does_not_replace_an_environment_approver(deployed):
    deployed.configure(protected=True, approvers=["alice", "bob"],
                       path_rules=[{"paths": ["requirements.txt"], "approvers": ["priya"]}])
    deployed.commit_change("requirements.txt", "dbt-duckdb==1.11.1\nrequests==2.32.3\n", author="dave")
    plan_id = deployed.explain().plan_id

    deployed.approve(plan_id, "priya")

    assert deployed.tick() == NOTHING_READY
    assert "**Still needed:** 1 more approval(s) from alice, bob" in deployed.summary(plan_id).splitlines()


def test_expired_approval_no_longer_counts_and_its_approver_may_approve_again(deployed):
    deployed.configure(protected=True, approvers=["alice", "bob"], approval_ttl="1h")
    deployed.commit_change(author="dave")
    plan_id = deployed.explain().plan_id
    deployed.approve(plan_id, "alice")
    deployed.clock.advance(minutes=61)

    assert deployed.tick() == NOTHING_READY
    deployed.approve(plan_id, "alice")
    assert run_requests(deployed.tick()) == [execution_request(plan_id)]
    approved_at = [approval.at.strftime("%H:%M") for approval in deployed.state(plan_id).approvals]
    assert approved_at == ["09:00", "10:01"]


def test_approval_that_expires_while_the_run_is_queued_sends_the_plan_back_to_pending_until_approved_again(
    deployed,
):
    deployed.configure(protected=True, approvers=["alice", "bob"], approval_ttl="30m")
    deployed.commit_change(author="dave")
    plan_id = deployed.explain().plan_id
    deployed.approve(plan_id, "alice")
    [request] = run_requests(deployed.tick())
    deployed.clock.advance(minutes=45)  # the run waited in the queue
    snapshots = deployed.snapshots()

    result = deployed.launch(request)

    reason = ("re-checked at execution: still needs 1 more approval(s) from alice, bob; alice's approval does "
              "not count: expired (approvals count for 0:30:00)")
    assert (failed_step(result), failure_message(result)) == (
        "gate", f"plan {plan_id} is pending again: {reason}; nothing was built or executed")
    assert (deployed.state(plan_id).status, deployed.state(plan_id).reason) == (PlanStatus.PENDING, reason)
    assert deployed.summary(plan_id).splitlines()[-1].endswith(
        f"| rendered {deployed.clock():%Y-%m-%d %H:%M} UTC, approvals re-checked at execution")
    assert_nothing_ran(deployed, plan_id, snapshots, result)
    deployed.approve(plan_id, "alice")  # the expired approval does not count, so alice may approve again
    [again] = deployed.launch_new(run_requests(deployed.tick()))
    assert again.success, failure_message(again)
    assert deployed.state(plan_id).status is PlanStatus.COMPLETED


def test_approvals_do_not_carry_over_to_a_newer_plan(deployed):
    deployed.commit_change(author="dave")
    approved = deployed.explain().plan_id
    deployed.approve(approved, "alice")
    deployed.commit_change(author="dave")

    newer = deployed.explain()

    assert newer.approvals == ()
    assert deployed.state(approved).status is PlanStatus.REJECTED
    assert deployed.tick() == NOTHING_READY


def test_change_set_recomputed_differently_at_execution_is_discarded_before_build(deployed):
    customers = deployed.repo.read("models/marts/customers.sql") + "\n-- reviewed\n"
    deployed.commit_change("models/marts/customers.sql", customers, author="dave")
    plan = deployed.explain()
    deployed.approve(plan.plan_id, "alice")
    [request] = run_requests(deployed.tick())
    # The platform team changes the dbt commands after the approval: the plan would no longer run what
    # was approved.
    deployed.configure(protected=True, approvers=["alice", "bob"], dbt_commands=["dbt build"])
    snapshots = deployed.snapshots()

    result = deployed.launch(request)

    assert plan.spec.commands == (
        ("dbt", "seed", "--target", "prod", *NO_EMPTY_SELECTION, "--select", "path:models/marts/customers.sql"),)
    assert (failed_step(result), failure_message(result)) == (
        "gate", f"plan {plan.plan_id} was discarded as stale: the change set recomputed on the pinned "
        "commits differs from the approved fingerprint; nothing was built or executed. Create a new plan.")
    assert deployed.state(plan.plan_id).status is PlanStatus.REJECTED
    assert_nothing_ran(deployed, plan.plan_id, snapshots, result)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, SshKey]:
    """Real OpenSSH keys of alice and bob, and one of mallory's that no config lists."""
    folder = tmp_path_factory.mktemp("keys")
    return {name: make_key(folder, name) for name in ("alice", "bob", "mallory")}


def people_with_keys(keys: dict[str, SshKey]) -> list[dict]:
    return [{"name": "alice", "emails": ["alice@example.com"], "keys": [keys["alice"].public]},
            {"name": "bob", "emails": ["bob@example.com"], "keys": [keys["bob"].public]},
            {"name": "dave", "emails": ["dave@example.com"]}]


@pytest.fixture
def verifiable(deployed, keys):
    """`prod` in verifiable mode: alice's and bob's public keys are in the config; no secret anywhere."""
    deployed.configure(protected=True, approvers=["alice", "bob"], verify_approvals=True,
                       people=people_with_keys(keys))
    return deployed


def test_verifiable_mode_counts_an_approval_signed_with_the_approvers_key_as_verified(verifiable, keys):
    verifiable.commit_change(author="dave")
    plan = verifiable.explain()
    signature = keys["alice"].sign(f"{plan.plan_id}:{plan.spec.fingerprint}")

    approval = verifiable.decide(plan.plan_id, "approve", "alice", signature=signature)

    assert approval.success
    assert [(a.actor, a.verified) for a in verifiable.state(plan.plan_id).approvals] == [("alice", True)]
    assert "- alice at 2025-01-06 09:00 UTC, verified (signed)" in verifiable.summary(plan.plan_id).splitlines()
    execution = verifiable.execute_approved(plan.plan_id)
    assert execution.success
    assert verifiable.state(plan.plan_id).status is PlanStatus.COMPLETED


@pytest.mark.parametrize(("signer", "message"), [
    (None, ""),
    ("mallory", "{plan}:{fingerprint}"),
    ("bob", "{plan}:{fingerprint}"),
    ("alice", "{older_plan}:{fingerprint}"),
    ("alice", "{plan}:{older_fingerprint}"),
], ids=["unsigned", "another-key", "another-approvers-key", "another-plan", "older-fingerprint"])
def test_verifiable_mode_refuses_a_signature_that_is_not_alices_of_this_plan(verifiable, keys, signer, message):
    verifiable.commit_change(author="dave")
    older = verifiable.explain()
    verifiable.commit_change(author="dave")
    plan = verifiable.explain()
    text = message.format(plan=plan.plan_id, fingerprint=plan.spec.fingerprint, older_plan=older.plan_id,
                          older_fingerprint=older.spec.fingerprint)
    signature = keys[signer].sign(text) if signer else ""

    refused = verifiable.decide(plan.plan_id, "approve", "alice", signature=signature)

    why = "no signature was given" if signer is None else (
        "the signature is not by one of alice's keys for this message")
    assert failure_message(refused) == (
        f"approve of plan {plan.plan_id} by alice is not verified: environment 'prod' requires a signature of "
        f"'{plan.plan_id}:{plan.spec.fingerprint}' by one of alice's keys ({why}); sign with "
        f"`dagctl plans approve {plan.plan_id} --as alice --key ~/.ssh/id_ed25519`")
    assert verifiable.state(plan.plan_id).approvals == ()
    assert verifiable.tick() == NOTHING_READY


def test_no_approver_secret_exists_anywhere_in_the_product():
    # Approvals are proven with private keys that never reach the code location: there is no shared
    # secret a step could read and print.
    root = Path(__file__).resolve().parents[2]
    needles = ("DAGCTL_APPROVER_SECRET", "compute_approval_code", "approver_secret_env", "HMAC")
    hits = [f"{path.relative_to(root)}: {needle}"
            for folder in ("dagctl_dagster", "docs", "examples", "scripts", "helm-values")
            for path in sorted((root / folder).rglob("*")) if path.is_file() and path.suffix != ".pyc"
            for needle in needles if needle in path.read_text(errors="replace")]
    hits += [f"README.md: {needle}" for needle in needles if needle in (root / "README.md").read_text()]

    assert hits == []


def test_self_asserted_approval_does_not_count_once_verification_is_required(deployed, keys):
    deployed.commit_change(author="dave")
    plan_id = deployed.explain().plan_id
    deployed.approve(plan_id, "alice")
    deployed.configure(protected=True, approvers=["alice", "bob"], verify_approvals=True,
                       people=people_with_keys(keys))
    snapshots = deployed.snapshots()

    assert deployed.tick() == NOTHING_READY
    forged = deployed.launch(execution_request(plan_id))

    assert (failed_step(forged), failure_message(forged)) == (
        "gate", f"plan {plan_id} is pending (awaiting approval: 1 more approval(s) from alice, bob): only an "
        "approved plan, or a failed one being retried, can execute; nothing was built or executed")
    assert_nothing_ran(deployed, plan_id, snapshots, forged)


APPROVERS = [f"reviewer{number:03}" for number in range(1, 101)]


def record_approval(deployed, plan_id: str, fingerprint: str, actor: str) -> None:
    """Records the event of an accepted approval, as the review job writes it (a hundred review runs
    would cost half a minute; the review job's own checks are tested above)."""
    record_runless(deployed.instance, PlanEvent(
        plan_id=plan_id, kind=EventKind.DECISION, decision=Decision.APPROVE, actor=actor, at=deployed.clock(),
        reason=f"approve by {actor}", fingerprint=fingerprint), project="jaffle", environment=ENV)


@ON_SQLITE_AND_POSTGRES
def test_a_hundred_approvals_and_repeated_ticks_give_exactly_one_execution(deployed):
    deployed.configure(protected=True, approvers=APPROVERS, required_approvals=2)
    deployed.commit_change(author="dave")
    plan = deployed.explain()
    plan_id = plan.plan_id
    snapshots = deployed.snapshots()
    deployed.approve(plan_id, *APPROVERS[:3])
    for reviewer in APPROVERS[3:]:
        record_approval(deployed, plan_id, plan.spec.fingerprint, reviewer)

    # The first two ticks run at the same time (a slow tick and the next one), then two more follow.
    with ThreadPoolExecutor(max_workers=2) as pool:
        requests = [request for result in pool.map(lambda _: deployed.tick(), range(2))
                    for request in run_requests(result)]
    requests += run_requests(deployed.tick()) + run_requests(deployed.tick())
    executions = deployed.launch_new(requests)
    requests += run_requests(deployed.tick())
    late = deployed.decide(plan_id, "approve", "reviewer100")
    again = deployed.launch(requests[0])  # the same request launched once more, bypassing its run key

    plan = deployed.state(plan_id)
    assert requests == [execution_request(plan_id)] * 4
    assert [result.success for result in executions] == [True]
    assert (plan.status, plan.executions, len(plan.approvals)) == (PlanStatus.COMPLETED, 1, 100)
    assert failure_message(late) == (
        f"cannot approve plan {plan_id}: it is completed (only pending plans can be approved)")
    assert (failed_step(again), failure_message(again)) == (
        "gate", f"plan {plan_id} is completed ({BUILD_ONLY_REASON}): only an approved plan, or a failed one "
        "being retried, can execute; nothing was built or executed")
    assert len(deployed.snapshots() - snapshots) == 1
    assert statuses(plan)[-5:] == [
        "decision: approve", "status: approved", "status: running", "built", "status: completed"]
