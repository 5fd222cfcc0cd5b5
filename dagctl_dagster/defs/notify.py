"""Webhook notifications: a JSON event when a plan needs approval, completes or fails.

Best effort by design: a webhook that is down is logged as a warning and never fails a plan.
"""

from __future__ import annotations

from ..core.config import EnvironmentConfig
from ..core.lifecycle import EventKind, PlanEvent, PlanState, PlanStatus

NOTIFIED = {
    PlanStatus.PENDING: "plan.needs_approval",
    PlanStatus.COMPLETED: "plan.completed",
    PlanStatus.FAILED: "plan.failed",
}
TIMEOUT_SECONDS = 5


def build_payload(state: PlanState, event: PlanEvent) -> dict[str, object]:
    spec = state.spec
    return {
        "event": NOTIFIED[state.status],
        "plan_id": spec.plan_id,
        "project": spec.project,
        "environment": spec.environment,
        "status": state.status.value,
        "reason": event.reason,
        "actor": event.actor,
        "at": event.at.isoformat(),
        "target_commit": spec.target_commit,
        "fingerprint": spec.fingerprint,
    }


def notify_transition(env: EnvironmentConfig, state: PlanState, event: PlanEvent, *, log) -> None:
    if not env.webhook_url or event.kind is not EventKind.STATUS or event.status not in NOTIFIED:
        return
    import requests  # loaded only when a webhook is called: the code location's import stays light

    try:
        response = requests.post(env.webhook_url, json=build_payload(state, event), timeout=TIMEOUT_SECONDS)
        response.raise_for_status()
    except requests.RequestException as exc:
        log.warning(f"webhook of environment '{env.name}' failed for plan {state.plan_id}: {exc}")
