"""The plan lifecycle folded from events: statuses, history, retries, and refused transitions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest

from dagctl_dagster.core.errors import DagctlTransitionError
from dagctl_dagster.core.lifecycle import (
    MAX_RETRIES,
    Approval,
    Decision,
    HistoryEntry,
    PlanEvent,
    PlanState,
    PlanStatus,
    check_decision_state,
    check_transition,
    fold_plans,
    get_last_completed,
    list_superseded,
)
from dagctl_dagster.core.plan import PlanSpec

Factory = Callable[..., PlanEvent]
Clock = Callable[[float], datetime]


def fold_one(events: list[PlanEvent]) -> PlanState:
    """The state of the only plan in `events`."""
    (state,) = fold_plans(events).values()
    return state


@pytest.fixture
def approved_events(created: Factory, status: Factory, decision: Factory) -> list[PlanEvent]:
    """A protected plan explained, waiting, approved by alice, and marked approved (minutes 0 to 6)."""
    return [
        created(),
        status("pending", minutes=1, reason="environment prod is protected", run_id="run-explain"),
        decision("approve", actor="alice", minutes=5, comment="looks good"),
        status("approved", minutes=6, reason="policy met"),
    ]


def failures(status: Factory, count: int, *, start: int = 10) -> list[PlanEvent]:
    """`count` executions of the default plan, each failing: running, failed, running, failed..."""
    events = []
    for attempt in range(count):
        minute = start + 10 * attempt
        events.append(status("running", minutes=minute, run_id=f"run-exec-{attempt}"))
        events.append(
            status("failed", minutes=minute + 5, reason="dbt build failed", run_id=f"run-exec-{attempt}")
        )
    return events


def test_fold_of_a_full_lifecycle_gives_status_history_approvals_and_runs(
    approved_events: list[PlanEvent], status: Factory, make_spec: Callable[..., PlanSpec], at: Clock
) -> None:
    events = [
        *approved_events,
        status("running", minutes=7, run_id="run-exec"),
        status("completed", minutes=20, reason="dbt build succeeded", run_id="run-exec"),
    ]

    state = fold_one(events)

    spec = make_spec()
    assert state == PlanState(
        spec=spec,
        status=PlanStatus.COMPLETED,
        reason="dbt build succeeded",
        approvals=(
            Approval(
                actor="alice", at=at(5), comment="looks good", fingerprint=spec.fingerprint, verified=False
            ),
        ),
        history=(
            HistoryEntry(at=at(0), actor="dave", what="status: explaining", reason="explained by sensor",
                         run_id="run-explain"),
            HistoryEntry(at=at(1), actor="dagctl", what="status: pending",
                         reason="environment prod is protected", run_id="run-explain"),
            HistoryEntry(at=at(5), actor="alice", what="decision: approve"),
            HistoryEntry(at=at(6), actor="dagctl", what="status: approved", reason="policy met"),
            HistoryEntry(at=at(7), actor="dagctl", what="status: running", run_id="run-exec"),
            HistoryEntry(at=at(20), actor="dagctl", what="status: completed", reason="dbt build succeeded",
                         run_id="run-exec"),
        ),
        retries=0,
        executions=1,
        run_ids=("run-explain", "run-exec"),
    )
    assert state.is_terminal
    assert state.has_started
    assert state.updated_at == at(20)


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ([], PlanStatus.EXPLAINING),
        (["pending"], PlanStatus.PENDING),
        (["pending", "approved"], PlanStatus.APPROVED),
        (["approved", "running"], PlanStatus.RUNNING),
        (["approved", "running", "failed"], PlanStatus.FAILED),
        (["pending", "cancelled"], PlanStatus.CANCELLED),
        (["pending", "rejected"], PlanStatus.REJECTED),
        (["completed"], PlanStatus.COMPLETED),
    ],
    ids=[
        "explaining", "pending", "approved", "running", "failed", "cancelled", "rejected",
        "build_only_completed",
    ],
)
def test_fold_follows_each_allowed_transition(
    created: Factory, status: Factory, statuses: list[str], expected: PlanStatus
) -> None:
    events = [created(), *(status(name, minutes=minute + 1) for minute, name in enumerate(statuses))]

    assert fold_one(events).status is expected


def test_newly_explained_plan_has_not_started_and_is_not_terminal(created: Factory, at: Clock) -> None:
    state = fold_one([created()])

    assert (state.status, state.is_terminal, state.has_started, state.retries_left) == (
        PlanStatus.EXPLAINING, False, False, MAX_RETRIES,
    )
    assert state.updated_at == at(0)


def test_failed_plan_retried_counts_each_retry(approved_events: list[PlanEvent], status: Factory) -> None:
    state = fold_one([*approved_events, *failures(status, 2)])

    assert (state.status, state.executions, state.retries, state.retries_left) == (PlanStatus.FAILED, 2, 1, 2)
    assert state.run_ids == ("run-explain", "run-exec-0", "run-exec-1")
    check_decision_state(state, Decision.RETRY)
    check_transition(state, PlanStatus.RUNNING)


def test_fourth_retry_is_refused_once_three_were_used(
    approved_events: list[PlanEvent], status: Factory
) -> None:
    state = fold_one([*approved_events, *failures(status, 1 + MAX_RETRIES)])

    assert (state.status, state.executions, state.retries, state.retries_left) == (PlanStatus.FAILED, 4, 3, 0)
    with pytest.raises(DagctlTransitionError) as by_decision:
        check_decision_state(state, Decision.RETRY)
    assert str(by_decision.value) == (
        "cannot retry plan jaffle-prod-3f2a9c1d: it already used all 3 retries; create a new plan instead"
    )
    with pytest.raises(DagctlTransitionError) as by_transition:
        check_transition(state, PlanStatus.RUNNING)
    assert str(by_transition.value) == (
        "plan jaffle-prod-3f2a9c1d has failed and used all 3 retries; create a new plan to try again"
    )


def test_plan_out_of_retries_can_still_be_cancelled(
    approved_events: list[PlanEvent], status: Factory
) -> None:
    state = fold_one([*approved_events, *failures(status, 1 + MAX_RETRIES)])

    check_decision_state(state, Decision.CANCEL)
    check_transition(state, PlanStatus.CANCELLED)


# Each row: the statuses the plan went through, the refused decision, and the message.
REFUSED_DECISIONS = {
    "approving_a_completed_plan": (
        ["approved", "running", "completed"],
        Decision.APPROVE,
        "cannot approve plan jaffle-prod-3f2a9c1d: it is completed (only pending plans can be approved)",
    ),
    "approving_an_approved_plan": (
        ["pending", "approved"],
        Decision.APPROVE,
        "cannot approve plan jaffle-prod-3f2a9c1d: it is approved (only pending plans can be approved)",
    ),
    "rejecting_a_running_plan": (
        ["approved", "running"],
        Decision.REJECT,
        "cannot reject plan jaffle-prod-3f2a9c1d: it is running "
        "(only pending or approved plans that have not started can be rejected)",
    ),
    "retrying_a_plan_that_has_not_failed": (
        ["pending"],
        Decision.RETRY,
        "cannot retry plan jaffle-prod-3f2a9c1d: it is pending (only failed plans can be retried)",
    ),
    "retrying_a_completed_plan": (
        ["approved", "running", "completed"],
        Decision.RETRY,
        "cannot retry plan jaffle-prod-3f2a9c1d: it is completed (only failed plans can be retried)",
    ),
    "cancelling_a_running_plan": (
        ["approved", "running"],
        Decision.CANCEL,
        "cannot cancel plan jaffle-prod-3f2a9c1d: it is running "
        "(only plans that are pending, approved or failed can be cancelled)",
    ),
    "approving_a_rejected_plan": (
        ["pending", "rejected"],
        Decision.APPROVE,
        "cannot approve plan jaffle-prod-3f2a9c1d: it is rejected (only pending plans can be approved)",
    ),
}


@pytest.mark.parametrize(
    ("statuses", "refused", "message"), list(REFUSED_DECISIONS.values()), ids=list(REFUSED_DECISIONS)
)
def test_decision_that_does_not_fit_the_status_is_refused_saying_why(
    created: Factory, status: Factory, statuses: list[str], refused: Decision, message: str
) -> None:
    state = fold_one([created(), *(status(name, minutes=minute + 1) for minute, name in enumerate(statuses))])

    with pytest.raises(DagctlTransitionError) as raised:
        check_decision_state(state, refused)

    assert str(raised.value) == message


@pytest.mark.parametrize(
    ("statuses", "allowed"),
    [
        (["pending"], Decision.APPROVE),
        (["pending"], Decision.REJECT),
        (["pending", "approved"], Decision.REJECT),
        (["pending", "approved"], Decision.CANCEL),
        (["approved", "running", "failed"], Decision.RETRY),
        (["approved", "running", "failed"], Decision.CANCEL),
    ],
)
def test_decision_that_fits_the_status_is_accepted(
    created: Factory, status: Factory, statuses: list[str], allowed: Decision
) -> None:
    state = fold_one([created(), *(status(name, minutes=minute + 1) for minute, name in enumerate(statuses))])

    check_decision_state(state, allowed)


@pytest.mark.parametrize(
    ("statuses", "refused", "message"),
    [
        (
            ["approved", "running", "completed"],
            PlanStatus.RUNNING,
            "plan jaffle-prod-3f2a9c1d is completed: done; it cannot become running",
        ),
        (
            ["pending"],
            PlanStatus.RUNNING,
            "plan jaffle-prod-3f2a9c1d is pending: done; it cannot become running",
        ),
        (
            ["approved", "running"],
            PlanStatus.APPROVED,
            "plan jaffle-prod-3f2a9c1d is running: done; it cannot become approved",
        ),
        (
            ["pending", "cancelled"],
            PlanStatus.PENDING,
            "plan jaffle-prod-3f2a9c1d is cancelled: done; it cannot become pending",
        ),
    ],
    ids=[
        "completed_to_running", "pending_to_running_without_approval", "running_to_approved",
        "cancelled_to_pending",
    ],
)
def test_invalid_transition_is_refused_with_the_status_and_its_reason(
    created: Factory, status: Factory, statuses: list[str], refused: PlanStatus, message: str
) -> None:
    events = [
        created(), *(status(name, minutes=minute + 1, reason="done") for minute, name in enumerate(statuses))
    ]
    state = fold_one(events)

    with pytest.raises(DagctlTransitionError) as raised:
        check_transition(state, refused)

    assert str(raised.value) == message


def test_invalid_transition_message_leaves_out_an_empty_reason(created: Factory) -> None:
    state = fold_one([created()])

    with pytest.raises(DagctlTransitionError) as raised:
        check_transition(state, PlanStatus.CANCELLED)

    assert str(raised.value) == "plan jaffle-prod-3f2a9c1d is explaining; it cannot become cancelled"


def test_fold_ignores_a_status_event_that_does_not_apply(
    approved_events: list[PlanEvent], status: Factory
) -> None:
    completed = [*approved_events, status("running", minutes=7), status("completed", minutes=8)]

    state = fold_one([*completed, status("running", minutes=9, run_id="run-forged")])

    assert state == fold_one(completed)


def test_fold_ignores_events_of_plans_it_has_not_seen_created(
    created: Factory, status: Factory, decision: Factory
) -> None:
    ghost = "jaffle-prod-00000000"
    events = [
        status("pending", minutes=1, plan_id=ghost),
        decision("approve", minutes=2, plan_id=ghost),
        created(),
        status("approved", minutes=3, plan_id=ghost),
    ]

    states = fold_plans(events)

    assert list(states) == ["jaffle-prod-3f2a9c1d"]
    assert states["jaffle-prod-3f2a9c1d"] == fold_one([created()])


def test_fold_keeps_the_first_created_event_of_a_plan(created: Factory, status: Factory) -> None:
    first = created()
    duplicate = created(run_id="run-explain-again", author="mallory", target_commit="c" * 40)

    state = fold_one([first, status("pending", minutes=1), duplicate])

    assert state.spec == first.spec
    assert state.status is PlanStatus.PENDING
    assert state.run_ids == ("run-explain",)


def test_auto_discarded_plan_carries_the_reason(created: Factory, status: Factory) -> None:
    reason = "superseded by jaffle-prod-4b5c6d7e (version 3)"
    events = [
        created(),
        status("pending", minutes=1),
        status("rejected", minutes=2, reason=reason, auto_discarded=True),
    ]

    state = fold_one(events)

    assert (state.status, state.auto_discarded, state.reason, state.is_terminal) == (
        PlanStatus.REJECTED, True, reason, True,
    )


def test_plan_rejected_by_a_reviewer_is_not_auto_discarded(created: Factory, status: Factory) -> None:
    events = [
        created(),
        status("pending", minutes=1),
        status("rejected", minutes=2, actor="bob", reason="wrong logic"),
    ]

    state = fold_one(events)

    assert (state.status, state.auto_discarded, state.reason) == (PlanStatus.REJECTED, False, "wrong logic")


def test_list_superseded_gives_the_unstarted_plans_of_the_same_project_and_environment(
    created: Factory, status: Factory
) -> None:
    def plan(plan_id: str, *statuses: str, environment: str = "prod") -> list[PlanEvent]:
        return [
            created(plan_id=plan_id, environment=environment),
            *(status(name, minutes=minute + 1, plan_id=plan_id) for minute, name in enumerate(statuses)),
        ]

    states = fold_plans([
        *plan("p-explaining"),
        *plan("p-pending", "pending"),
        *plan("p-approved", "pending", "approved"),
        *plan("p-running", "approved", "running"),
        *plan("p-failed", "approved", "running", "failed"),
        *plan("p-completed", "approved", "running", "completed"),
        *plan("p-rejected", "pending", "rejected"),
        *plan("p-dev-pending", "pending", environment="dev"),
        *plan("p-newer", "pending"),
    ])
    newer = states["p-newer"].spec

    superseded = list_superseded(list(states.values()), newer)

    assert [state.plan_id for state in superseded] == ["p-explaining", "p-pending", "p-approved"]


def test_get_last_completed_is_the_plan_that_completed_last(created: Factory, status: Factory) -> None:
    states = fold_plans([
        created(plan_id="p-first"),
        created(plan_id="p-second"),
        created(plan_id="p-failed"),
        status("completed", minutes=30, plan_id="p-second"),
        status("completed", minutes=10, plan_id="p-first"),
        status("approved", minutes=40, plan_id="p-failed"),
        status("running", minutes=41, plan_id="p-failed"),
        status("failed", minutes=42, plan_id="p-failed"),
    ])

    last = get_last_completed(states.values())

    assert last == states["p-second"]


def test_get_last_completed_is_not_moved_by_a_later_decision_on_an_older_plan(
    created: Factory, status: Factory, decision: Factory
) -> None:
    states = fold_plans([
        created(plan_id="p-old"),
        status("completed", minutes=10, plan_id="p-old"),
        created(plan_id="p-new"),
        status("completed", minutes=20, plan_id="p-new"),
        decision("approve", actor="alice", minutes=30, plan_id="p-old"),
    ])

    assert get_last_completed(states.values()) == states["p-new"]


def test_get_last_completed_is_none_before_any_deployment(created: Factory, status: Factory) -> None:
    states = fold_plans([created(), status("pending", minutes=1)])

    assert get_last_completed(states.values()) is None
