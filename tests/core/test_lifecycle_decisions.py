"""What the fold keeps for the checks of issue 13: the run executing a plan, the pending retry request and
client-supplied decision ids."""

from __future__ import annotations

from dagctl_dagster.core.lifecycle import fold_plans

PLAN_ID = "jaffle-prod-3f2a9c1d"


def test_execution_run_is_the_run_that_last_moved_the_plan_to_running(created, status, decision) -> None:
    events = [created(), status("approved", minutes=1), status("running", minutes=2, run_id="run-1"),
              status("failed", minutes=3, run_id="run-1"), decision("retry", actor="bob", minutes=4,
                                                                      signature="sig", decision_id="d-1")]
    failed = fold_plans(events)[PLAN_ID]
    running = fold_plans([*events, status("running", minutes=5, run_id="run-2")])[PLAN_ID]

    assert (failed.execution_run_id, failed.retry_requested) == ("run-1", True)
    assert (failed.retry_request.actor, failed.retry_request.signature) == ("bob", "sig")
    assert failed.get_decision("d-1").what == "decision: retry"
    assert (running.execution_run_id, running.retry_request, running.retries) == ("run-2", None, 1)


def test_a_retry_decision_on_a_plan_that_has_not_failed_requests_nothing(created, status, decision) -> None:
    state = fold_plans([created(), status("approved", minutes=1), status("running", minutes=2, run_id="r"),
                        decision("retry", actor="mallory", minutes=3)])[PLAN_ID]

    assert (state.retry_requested, state.retry_request, state.get_decision("")) == (False, None, None)
