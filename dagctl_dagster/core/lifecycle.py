"""The plan lifecycle, folded from events.

Every transition of a plan is an event (`PlanEvent`) with its actor, time and reason, recorded in Dagster's
event log on the plan's asset. Nothing else holds state: `fold_plans` turns the events of one project and
environment into `PlanState` values, and that is what the UI summary, the sensors, `gate` and the CLI read.

    explaining -> pending -> approved -> running -> completed | failed
    side exits: rejected (by a reviewer, or auto-discarded with the reason), cancelled
    failed -> running again on retry (at most `MAX_RETRIES` times, same pinned plan)
    approved -> pending again when `gate` finds the policy no longer met (an approval expired while the
    run was queued, the policy was tightened): a new approval can then execute it

`fold_plans` over every event is the reference. Reads that must not grow with history use a `PlanIndex`:
the plans the sensors and `gate` act on (open plans, the deployed plan, the newest plan), kept up to date
from the events after a checkpoint by `update_plan_index`; `build_plan_index` over the full fold gives the
same value (the store's audit compares them).

`check_*` functions refuse invalid transitions with a message that says why; the fold itself is lenient
(an event that does not apply is ignored) so one bad record can never hide the rest of the history.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from .errors import DagctlTransitionError
from .plan import PlanSpec

MAX_RETRIES = 3


class PlanStatus(StrEnum):
    EXPLAINING = "explaining"
    PENDING = "pending"
    APPROVED = "approved"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"
    CANCEL = "cancel"
    RETRY = "retry"


class EventKind(StrEnum):
    CREATED = "created"
    STATUS = "status"
    DECISION = "decision"
    BUILT = "built"


# Which statuses each status may move to.
TRANSITIONS: dict[PlanStatus, frozenset[PlanStatus]] = {
    PlanStatus.EXPLAINING: frozenset({PlanStatus.PENDING, PlanStatus.APPROVED, PlanStatus.REJECTED,
                                      PlanStatus.COMPLETED, PlanStatus.FAILED}),
    PlanStatus.PENDING: frozenset({PlanStatus.APPROVED, PlanStatus.REJECTED, PlanStatus.CANCELLED}),
    PlanStatus.APPROVED: frozenset({PlanStatus.RUNNING, PlanStatus.PENDING, PlanStatus.REJECTED,
                                    PlanStatus.CANCELLED}),
    PlanStatus.RUNNING: frozenset({PlanStatus.COMPLETED, PlanStatus.FAILED, PlanStatus.REJECTED}),
    PlanStatus.FAILED: frozenset({PlanStatus.RUNNING, PlanStatus.CANCELLED, PlanStatus.REJECTED}),
    PlanStatus.COMPLETED: frozenset(),
    PlanStatus.REJECTED: frozenset(),
    PlanStatus.CANCELLED: frozenset(),
}
UNSTARTED = frozenset({PlanStatus.EXPLAINING, PlanStatus.PENDING, PlanStatus.APPROVED})


class PlanEvent(BaseModel):
    """One recorded fact about a plan.

    Example: `PlanEvent(plan_id="jaffle-prod-3f2a9c1d", kind="decision", decision="approve", actor="alice",
    at=now, fingerprint=spec.fingerprint)`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan_id: str
    kind: EventKind
    at: datetime
    actor: str
    reason: str = ""
    status: PlanStatus | None = None
    decision: Decision | None = None
    comment: str = ""
    fingerprint: str | None = None
    verified: bool = False
    signature: str = ""
    decision_id: str = ""
    auto_discarded: bool = False
    run_id: str | None = None
    artifact: str | None = None
    spec: PlanSpec | None = None
    # Where the event log stored it (its storage id), set by the store when it reads the event; never
    # written. It orders plans created at the same instant by when they were recorded.
    recorded_id: int | None = Field(default=None, exclude=True)


class Approval(BaseModel):
    """An approval (or retry) decision as recorded; whether it counts, and whether its signature is valid,
    is the policy's call (`verified` as recorded is only what the review job saw)."""

    model_config = ConfigDict(frozen=True)

    actor: str
    at: datetime
    comment: str
    fingerprint: str | None
    verified: bool
    signature: str = ""


class HistoryEntry(BaseModel):
    model_config = ConfigDict(frozen=True)

    at: datetime
    actor: str
    what: str
    reason: str = ""
    run_id: str | None = None
    decision_id: str = ""


class PlanState(BaseModel):
    """A plan as it stands after folding its events."""

    model_config = ConfigDict(frozen=True)

    spec: PlanSpec
    status: PlanStatus
    reason: str = ""
    auto_discarded: bool = False
    approvals: tuple[Approval, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    retries: int = 0
    executions: int = 0
    run_ids: tuple[str, ...] = ()
    artifact: str | None = None
    retry_requested: bool = False
    retry_request: Approval | None = None
    created_id: int | None = Field(
        default=None, description="Storage id of the plan's `created` event (None: not recorded yet).")

    @property
    def plan_id(self) -> str:
        return self.spec.plan_id

    @property
    def execution_run_id(self) -> str | None:
        """The run that moved the plan to `running` most recently: the only run whose end can fail it."""
        running = f"status: {PlanStatus.RUNNING.value}"
        return next((entry.run_id for entry in reversed(self.history) if entry.what == running), None)

    def get_decision(self, decision_id: str) -> HistoryEntry | None:
        """The recorded decision with this client-supplied id, if any (retried launches are idempotent)."""
        if not decision_id:
            return None
        return next((entry for entry in self.history if entry.decision_id == decision_id), None)

    def has_decision(self, decision_id: str) -> bool:
        return self.get_decision(decision_id) is not None

    @property
    def is_terminal(self) -> bool:
        return self.status in (PlanStatus.COMPLETED, PlanStatus.REJECTED, PlanStatus.CANCELLED)

    @property
    def has_started(self) -> bool:
        return self.executions > 0

    @property
    def retries_left(self) -> int:
        return max(0, MAX_RETRIES - self.retries)

    @property
    def updated_at(self) -> datetime:
        return self.history[-1].at if self.history else self.spec.created_at


def build_status_event(
    state_or_id: PlanState | str,
    status: PlanStatus,
    *,
    actor: str,
    at: datetime,
    reason: str = "",
    run_id: str | None = None,
    auto_discarded: bool = False,
) -> PlanEvent:
    """A status transition event (the caller checks it with `check_transition` first)."""
    plan_id = state_or_id.plan_id if isinstance(state_or_id, PlanState) else state_or_id
    return PlanEvent(
        plan_id=plan_id, kind=EventKind.STATUS, status=status, actor=actor, at=at, reason=reason,
        run_id=run_id, auto_discarded=auto_discarded,
    )


def build_created_event(spec: PlanSpec, *, run_id: str | None) -> PlanEvent:
    return PlanEvent(
        plan_id=spec.plan_id, kind=EventKind.CREATED, at=spec.created_at, actor=spec.author,
        reason=f"explained by {spec.triggered_by}", run_id=run_id, spec=spec,
        fingerprint=spec.fingerprint,
    )


def _apply(state: PlanState, event: PlanEvent) -> PlanState:
    entry = HistoryEntry(at=event.at, actor=event.actor, what="", reason=event.reason, run_id=event.run_id,
                         decision_id=event.decision_id)
    if event.kind is EventKind.BUILT:
        what = f"built: {event.artifact}"
        return state.model_copy(update={"artifact": event.artifact,
                                        "history": (*state.history, entry.model_copy(update={"what": what}))})
    if event.kind is EventKind.DECISION and event.decision is not None:
        entry = entry.model_copy(update={"what": f"decision: {event.decision.value}"})
        update: dict[str, object] = {"history": (*state.history, entry)}
        record = Approval(actor=event.actor, at=event.at, comment=event.comment, fingerprint=event.fingerprint,
                          verified=event.verified, signature=event.signature)
        if event.decision is Decision.APPROVE:
            update["approvals"] = (*state.approvals, record)
        if event.decision is Decision.RETRY and state.status is PlanStatus.FAILED:
            update["retry_requested"] = True
            update["retry_request"] = record
        return state.model_copy(update=update)
    if event.kind is not EventKind.STATUS or event.status is None:
        return state
    if event.status not in TRANSITIONS[state.status]:
        return state
    update = {
        "status": event.status,
        "reason": event.reason,
        "auto_discarded": event.auto_discarded,
        "history": (*state.history, entry.model_copy(update={"what": f"status: {event.status.value}"})),
    }
    update["retry_requested"] = False
    update["retry_request"] = None
    if event.status is PlanStatus.RUNNING:
        update["executions"] = state.executions + 1
        if state.status is PlanStatus.FAILED:
            update["retries"] = state.retries + 1
    if event.run_id and event.run_id not in state.run_ids:
        update["run_ids"] = (*state.run_ids, event.run_id)
    return state.model_copy(update=update)


def fold_plans(
    events: Iterable[PlanEvent], states: Mapping[str, PlanState] | None = None
) -> dict[str, PlanState]:
    """Folds events (in recorded order) into the state of each plan, keyed by plan id.

    `states` are the plans as they stood before `events` (default: none). Each plan folds on its own, so
    folding one plan's events gives the same state as folding the whole history. Events of a plan whose
    `created` event is missing are ignored: without the explained plan there is nothing to approve or run.
    """
    states = dict(states or {})
    for event in events:
        if event.kind is EventKind.CREATED and event.spec is not None:
            if event.plan_id in states:
                continue
            created = HistoryEntry(at=event.at, actor=event.actor, what="status: explaining",
                                   reason=event.reason, run_id=event.run_id)
            states[event.plan_id] = PlanState(
                spec=event.spec, status=PlanStatus.EXPLAINING, history=(created,),
                run_ids=(event.run_id,) if event.run_id else (), created_id=event.recorded_id,
            )
        elif event.plan_id in states:
            states[event.plan_id] = _apply(states[event.plan_id], event)
    return states


def check_transition(state: PlanState, status: PlanStatus) -> None:
    """Raises `DagctlTransitionError` saying why `state` cannot move to `status`."""
    if status in TRANSITIONS[state.status]:
        if status is PlanStatus.RUNNING and state.status is PlanStatus.FAILED and state.retries_left == 0:
            raise DagctlTransitionError(
                f"plan {state.plan_id} has failed and used all {MAX_RETRIES} retries; "
                "create a new plan to try again"
            )
        return
    reason = f": {state.reason}" if state.reason else ""
    raise DagctlTransitionError(
        f"plan {state.plan_id} is {state.status.value}{reason}; it cannot become {status.value}"
    )


_DECISION_ALLOWED: dict[Decision, frozenset[PlanStatus]] = {
    Decision.APPROVE: frozenset({PlanStatus.PENDING}),
    Decision.REJECT: frozenset({PlanStatus.PENDING, PlanStatus.APPROVED}),
    Decision.CANCEL: frozenset({PlanStatus.PENDING, PlanStatus.APPROVED, PlanStatus.FAILED}),
    Decision.RETRY: frozenset({PlanStatus.FAILED}),
}
_DECISION_HINT = {
    Decision.APPROVE: "only pending plans can be approved",
    Decision.REJECT: "only pending or approved plans that have not started can be rejected",
    Decision.CANCEL: "only plans that are pending, approved or failed can be cancelled",
    Decision.RETRY: "only failed plans can be retried",
}


def check_decision_state(state: PlanState, decision: Decision) -> None:
    """Raises `DagctlTransitionError` when a reviewer's decision does not fit the plan's status."""
    if state.status not in _DECISION_ALLOWED[decision]:
        raise DagctlTransitionError(
            f"cannot {decision.value} plan {state.plan_id}: it is {state.status.value} "
            f"({_DECISION_HINT[decision]})"
        )
    if decision is Decision.RETRY and state.retries_left == 0:
        raise DagctlTransitionError(
            f"cannot retry plan {state.plan_id}: it already used all {MAX_RETRIES} retries; "
            "create a new plan instead"
        )


def list_superseded(states: Sequence[PlanState], newer: PlanSpec) -> list[PlanState]:
    """Plans of the same project and environment that a newer plan discards: those not yet started."""
    return [
        state for state in states
        if state.plan_id != newer.plan_id
        and state.spec.project == newer.project
        and state.spec.environment == newer.environment
        and state.status in UNSTARTED
        and not state.has_started
    ]


def _created_key(state: PlanState) -> tuple[datetime, int, str]:
    # On equal creation times, the plan recorded later (a plan not recorded yet is the latest).
    recorded = sys.maxsize if state.created_id is None else state.created_id
    return state.spec.created_at, recorded, state.plan_id


def _completed_key(state: PlanState) -> tuple[datetime, datetime, str]:
    completed_what = f"status: {PlanStatus.COMPLETED.value}"
    completed_at = max(
        (entry.at for entry in state.history if entry.what == completed_what), default=state.updated_at
    )
    return completed_at, *_created_key(state)


def get_last_completed(states: Iterable[PlanState]) -> PlanState | None:
    """The environment's deployed plan: the most recently completed one.

    Plans are ordered by when they completed, not by their latest event: a decision or note recorded on an
    old completed plan afterwards must not make it the deployed plan again (and so the base of the next).
    On equal times the plan created later wins (then the one recorded later: the order never depends on
    the order plans are read in).
    """
    return max((s for s in states if s.status is PlanStatus.COMPLETED), key=_completed_key, default=None)


_NOT_STANDING = (PlanStatus.REJECTED, PlanStatus.CANCELLED)


def get_newest_plan(states: Iterable[PlanState]) -> PlanState | None:
    """The environment's newest plan that still stands: rejected and cancelled plans do not count.

    Newest by creation time; on equal times the one recorded later.
    """
    return max((s for s in states if s.status not in _NOT_STANDING), key=_created_key, default=None)


def is_open(state: PlanState) -> bool:
    """Whether a sensor or `gate` may act on the plan: not yet finished, or failed with a retry requested.

    A failed plan nobody asked to retry is parked: it is read again only when an event names it.
    """
    if state.status is PlanStatus.FAILED:
        return state.retry_requested
    return state.status in (*UNSTARTED, PlanStatus.RUNNING)


class PlanIndex(BaseModel):
    """The plans of one project and environment that reads need, without the rest of the history.

    Members: every open plan (`is_open`), the deployed plan (`last_completed`), the completed plan created
    last, and every unfinished plan created after it. The newest standing plan is always a member: a
    completed plan never leaves the standing set, so the newest one is either that completed plan or
    an unfinished plan created after it. Example: `build_plan_index(fold_plans(events).values()).open`.
    """

    model_config = ConfigDict(frozen=True)

    plans: dict[str, PlanState] = {}
    last_completed_id: str | None = None
    newest_completed_id: str | None = None

    @property
    def open(self) -> list[PlanState]:
        """Open plans, oldest first."""
        return sorted((s for s in self.plans.values() if is_open(s)), key=_created_key)

    @property
    def last_completed(self) -> PlanState | None:
        return self.plans.get(self.last_completed_id) if self.last_completed_id else None

    @property
    def newest(self) -> PlanState | None:
        return get_newest_plan(self.plans.values())


def update_plan_index(index: PlanIndex, changed: Iterable[PlanState]) -> PlanIndex:
    """`index` after the plans in `changed` took their new states (plans not in `changed` are unchanged).

    Plans that are not members stay out unless they change: membership only shrinks for plans that do not
    change (the newest completed plan only moves forward), so the result equals `build_plan_index` over
    every plan.
    """
    plans = {**index.plans, **{state.plan_id: state for state in changed}}
    completed = [s for s in plans.values() if s.status is PlanStatus.COMPLETED]
    last = get_last_completed(completed)
    newest_completed = max(completed, key=_created_key, default=None)
    floor = _created_key(newest_completed) if newest_completed else None
    keep = {s.plan_id for s in (last, newest_completed) if s is not None}
    members = {
        plan_id: state for plan_id, state in plans.items()
        if plan_id in keep or is_open(state)
        or (not state.is_terminal and (floor is None or _created_key(state) > floor))
    }
    return PlanIndex(plans=members, last_completed_id=last.plan_id if last else None,
                     newest_completed_id=newest_completed.plan_id if newest_completed else None)


def build_plan_index(states: Iterable[PlanState]) -> PlanIndex:
    """The index of a full fold: the reference `update_plan_index` is checked against."""
    return update_plan_index(PlanIndex(), states)
