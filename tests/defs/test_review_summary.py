"""What a reviewer reads on the plan's asset page: who the authors are, who can still approve, and no
approval section where none is needed."""

from __future__ import annotations

from conftest import run_requests


def test_unprotected_plan_summary_shows_no_approvals_section(deployed):
    deployed.configure(protected=False)
    deployed.commit_change(author="dave")

    plan = deployed.explain()

    summary = deployed.summary(plan.plan_id)
    assert plan.status.value == "completed"
    assert "Approvals" not in summary and "none yet" not in summary


def test_pending_summary_lists_every_author_and_names_only_approvers_whose_approval_would_count(deployed):
    deployed.configure(protected=True, approvers=["alice", "bob", "dave"], required_approvals=2, people=[
        {"name": "alice", "emails": ["alice@example.com"]},
        {"name": "bob", "emails": ["bob@example.com"]},
        {"name": "dave", "emails": ["dave@example.com"]},
    ])
    deployed.commit_change(author="dave")

    plan = deployed.explain()

    lines = deployed.summary(plan.plan_id).splitlines()
    # dave wrote the commit; carol (the fixture's Git identity) committed it and is no listed person. Both
    # carry the same (newest) commit: the tie is broken by name.
    assert [(i.name, i.email) for i in plan.spec.authors] == [
        ("carol", "carol@example.com"), ("dave", "dave@example.com")]
    assert any(line.startswith("Commits: ") and "| by dave; unknown: carol <carol@example.com> |" in line
               for line in lines), lines
    assert "**Approvals:** 0 counted, 2 required" in lines
    assert "**Still needed:** 2 more approval(s) from alice, bob" in lines
    deployed.approve(plan.plan_id, "alice", "bob")
    assert run_requests(deployed.tick())
