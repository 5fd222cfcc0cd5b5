"""The whole plan lifecycle on a real instance: sensor -> explain -> approvals -> approval sensor -> execute.

Every plan executed here changes only files dbt does not build (and bumps the version), so it is
`build_only`: `build` writes a snapshot of the target commit and no dbt command runs.
"""

import pytest
from conftest import (
    BUILD_ONLY_REASON,
    ENV,
    NOTHING_READY,
    ON_SQLITE_AND_POSTGRES,
    PLAN_JOB,
    PLAN_SENSOR,
    PROJECT,
    failure_message,
    run_requests,
    started_steps,
    statuses,
)
from dagster import RunRequest, SkipReason
from fixtures.git_repos import make_repo

from dagctl_dagster.core.lifecycle import PlanStatus
from dagctl_dagster.core.plan import build_plan_id



@ON_SQLITE_AND_POSTGRES
def test_protected_plan_waits_for_approval_then_the_approval_sensor_executes_it(deployed):
    deployed_commit = deployed.repo.head
    snapshots_before = deployed.snapshots()
    commit = deployed.commit_change("Dockerfile", author="dave")

    [plan_request] = run_requests(deployed.tick(PLAN_SENSOR))
    explain = deployed.launch(plan_request)

    plan_id = build_plan_id(PROJECT, ENV, explain.run_id)
    plan = deployed.state(plan_id)
    assert explain.success and started_steps(explain) == ["detect", "gate"]
    assert (plan.status, plan.reason, plan.spec.author, plan.spec.triggered_by, plan.spec.base_commit,
            plan.spec.target_commit, plan.spec.dbt_scope.scope) == (
        PlanStatus.PENDING, "awaiting approval: 1 more approval(s) from alice, bob", "dave", "sensor",
        deployed_commit, commit, "build_only")
    assert deployed.tick() == NOTHING_READY

    approval = deployed.decide(plan_id, "approve", "alice", comment="base image pin is fine")
    assert approval.success
    [execution_request] = run_requests(deployed.tick())
    assert (execution_request.run_key, execution_request.job_name, execution_request.run_config) == (
        f"{plan_id}:execute", PLAN_JOB,
        {"ops": {"detect": {"config": {"environment": ENV, "commit": "", "plan_id": plan_id}}}})

    execution = deployed.launch(execution_request)

    plan = deployed.state(plan_id)
    assert execution.success, failure_message(execution)
    assert started_steps(execution) == ["detect", "gate", "build"]
    assert (plan.status, plan.reason, plan.executions, plan.retries) == (
        PlanStatus.COMPLETED, BUILD_ONLY_REASON, 1, 0)
    assert [(entry.actor, what) for entry, what in zip(plan.history, statuses(plan), strict=True)] == [
        ("dave", "status: explaining"),
        ("dagctl", "status: pending"),
        ("alice", "decision: approve"),
        ("dagctl", "status: approved"),
        ("dagctl", "status: running"),
        ("dagctl", "built"),
        ("dagctl", "status: completed"),
    ]
    assert plan.history[2].reason == "base image pin is fine"
    assert plan.history[3].reason == "policy met: approved by alice"
    assert plan.run_ids == (explain.run_id, execution.run_id)
    assert deployed.snapshots() == snapshots_before | {commit}
    assert deployed.tick() == NOTHING_READY
    assert deployed.tick(PLAN_SENSOR) == SkipReason("jaffle/prod: up to date")


def test_unprotected_plan_executes_in_the_run_that_explains_it(deployed):
    deployed.configure(protected=False)
    commit = deployed.commit_change("requirements.txt", "dbt-duckdb==1.11.1\nrequests\n", author="dave")

    [plan_request] = run_requests(deployed.tick(PLAN_SENSOR))
    result = deployed.launch(plan_request)

    plan = deployed.state(build_plan_id(PROJECT, ENV, result.run_id))
    assert result.success and started_steps(result) == ["detect", "gate", "build"]
    assert (plan.status, plan.spec.target_commit, plan.spec.dbt_scope.scope) == (
        PlanStatus.COMPLETED, commit, "build_only")
    assert statuses(plan) == [
        "status: explaining", "status: approved", "status: running", "built", "status: completed"]
    assert plan.history[1].reason == "environment 'prod' is not protected"
    assert plan.run_ids == (result.run_id,)
    assert deployed.tick() == NOTHING_READY


def approvals_block(summary: str) -> list[str]:
    """The summary's lines from `**Approvals:** ...` up to the retries line."""
    lines = summary.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("**Approvals:**"))
    end = next(i for i, line in enumerate(lines) if line.startswith("Retries used:"))
    return lines[start:end]


def test_summary_shows_who_approved_who_still_must_and_the_launchpad_config(deployed):
    deployed.configure(protected=True, approvers=["alice", "bob", "erin"], required_approvals=2)
    deployed.commit_change(author="dave")
    plan = deployed.explain()
    assert approvals_block(deployed.summary(plan.plan_id)) == [
        "**Approvals:** 0 counted, 2 required",
        "",
        "- none yet",
        "",
        "**Still needed:** 2 more approval(s) from alice, bob, erin",
        "",
        "**To approve**, launch `dagctl_review_job` from the launchpad with:",
        "",
        "```yaml",
        "ops:",
        "  review:",
        "    config:",
        f"      plan_id: {plan.plan_id}",
        "      decision: approve",
        "      actor: <your name>",
        '      comment: ""',
        "```",
        f"or run `dagctl plans approve {plan.plan_id} --as <your name>`.",
        "",
    ]

    deployed.clock.advance(minutes=5)
    deployed.approve(plan.plan_id, "alice")

    summary = deployed.summary(plan.plan_id)
    assert summary.splitlines()[0] == (
        f"### Plan `{plan.plan_id}`: **pending** "
        "(awaiting approval: 2 more approval(s) from alice, bob, erin)")
    assert approvals_block(summary)[:5] == [
        "**Approvals:** 1 counted, 2 required",
        "",
        "- alice at 2025-01-06 09:05 UTC, not verified (self-asserted)",
        "",
        "**Still needed:** 1 more approval(s) from bob, erin",
    ]
    assert f"      plan_id: {plan.plan_id}" in approvals_block(summary)

    deployed.approve(plan.plan_id, "erin")
    assert approvals_block(deployed.summary(plan.plan_id)) == [
        "**Approvals:** 2 counted, 2 required",
        "",
        "- alice at 2025-01-06 09:05 UTC, not verified (self-asserted)",
        "- erin at 2025-01-06 09:05 UTC, not verified (self-asserted)",
        "",
        "**To approve**, launch `dagctl_review_job` from the launchpad with:",
        "",
        "```yaml",
        "ops:",
        "  review:",
        "    config:",
        f"      plan_id: {plan.plan_id}",
        "      decision: approve",
        "      actor: <your name>",
        '      comment: ""',
        "```",
        f"or run `dagctl plans approve {plan.plan_id} --as <your name>`.",
        "",
    ]


def test_reject_records_the_reviewer_and_the_reason_and_nothing_runs(deployed):
    deployed.commit_change(author="dave")
    plan = deployed.explain()

    result = deployed.decide(plan.plan_id, "reject", "bob", comment="pin the image digest, not a tag")

    rejected = deployed.state(plan.plan_id)
    assert result.success
    assert (rejected.status, rejected.reason, rejected.auto_discarded) == (
        PlanStatus.REJECTED, "pin the image digest, not a tag", False)
    assert [(entry.actor, entry.what, entry.reason) for entry in rejected.history[-2:]] == [
        ("bob", "decision: reject", "pin the image digest, not a tag"),
        ("bob", "status: rejected", "pin the image digest, not a tag"),
    ]
    assert deployed.tick() == NOTHING_READY


def test_cancel_by_the_author_ends_the_plan(deployed):
    deployed.commit_change(author="dave")
    plan = deployed.explain()

    result = deployed.decide(plan.plan_id, "cancel", "dave")

    cancelled = deployed.state(plan.plan_id)
    assert result.success
    assert (cancelled.status, cancelled.reason, statuses(cancelled)[-2:]) == (
        PlanStatus.CANCELLED, "cancelled by dave", ["decision: cancel", "status: cancelled"])
    assert deployed.tick() == NOTHING_READY


def completed_plan(deployed):
    deployed.configure(protected=False)
    plan = deployed.explain()
    deployed.configure(protected=True, approvers=["alice", "bob"])
    return plan.plan_id


def running_plan(deployed):
    plan = deployed.explain()
    deployed.approve(plan.plan_id, "alice")
    run_requests(deployed.tick())  # records `approved`; the run it requests starts below
    deployed.start_execution_run(plan.plan_id)
    return plan.plan_id


def pending_plan(deployed):
    return deployed.explain().plan_id


def rejected_plan(deployed):
    plan_id = deployed.explain().plan_id
    assert deployed.decide(plan_id, "reject", "bob", comment="not now").success
    return plan_id


@pytest.mark.parametrize(("make_plan", "decision", "actor", "message"), [
    (completed_plan, "approve", "alice",
     "cannot approve plan {id}: it is completed (only pending plans can be approved)"),
    (running_plan, "reject", "bob",
     "cannot reject plan {id}: it is running (only pending or approved plans that have not started can be "
     "rejected)"),
    (pending_plan, "retry", "alice",
     "cannot retry plan {id}: it is pending (only failed plans can be retried)"),
    (rejected_plan, "approve", "alice",
     "cannot approve plan {id}: it is rejected (only pending plans can be approved)"),
    (completed_plan, "cancel", "alice",
     "cannot cancel plan {id}: it is completed (only plans that are pending, approved or failed can be "
     "cancelled)"),
], ids=["approve-completed", "reject-running", "retry-pending", "approve-rejected", "cancel-completed"])
def test_decision_that_does_not_fit_the_plan_status_is_refused_and_records_nothing(
        deployed, make_plan, decision, actor, message):
    deployed.commit_change(author="dave")
    plan_id = make_plan(deployed)
    before = deployed.state(plan_id)

    result = deployed.decide(plan_id, decision, actor)

    assert not result.success
    assert failure_message(result) == message.format(id=plan_id)
    assert deployed.state(plan_id) == before


@pytest.mark.parametrize(("config_text", "problem"), [
    ('version: "2\n',
     'invalid YAML: while scanning a quoted scalar   in "<unicode string>", line 1, column 10:'
     '     version: "2              ^ found unexpected end of stream'
     '   in "<unicode string>", line 2, column 1:          ^'),
    ("version: 2\n", "version: Input should be a valid string"),
    ('version: "2"\nowner: data-team\n', "owner: Extra inputs are not permitted"),
], ids=["yaml-error", "non-string-version", "unknown-key"])
def test_bad_project_config_is_a_skip_reason_and_other_projects_still_plan(deployed, tmp_path, config_text,
                                                                          problem):
    finance = make_repo(tmp_path / "finance")
    deployed.configure(protected=True, approvers=["alice"], extra_projects=[{
        "name": "finance", "framework": "dbt", "repository": finance.url,
        "environments": [{"name": "prod", "protected": True, "approvers": ["alice"]}]}])
    broken = deployed.repo.commit(".dagctl/config.yaml", {".dagctl/config.yaml": config_text}, author="dave")

    skipped = deployed.tick(PLAN_SENSOR)
    other = deployed.tick("finance_plan_sensor")

    assert skipped == SkipReason(f"jaffle/prod: .dagctl/config.yaml at commit {broken[:12]}: {problem}")
    assert run_requests(other) == [RunRequest(
        run_key=f"finance:prod:1:{finance.head}",
        run_config={"ops": {"detect": {"config": {"environment": "prod", "commit": finance.head,
                                                  "plan_id": ""}}}},
        tags={"dagctl/project": "finance", "dagctl/environment": "prod", "dagctl/lock": "finance.prod",
              "dagctl/trigger": "sensor", "dagctl/request": f"finance:prod:1:{finance.head}"})]
    deployed_plan = deployed.state(deployed.deployed_plan_id)
    assert (deployed_plan.status, deployed_plan.spec.version_new) == (PlanStatus.COMPLETED, "1")
