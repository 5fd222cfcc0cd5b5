"""The review job: approvals, rejections, cancellations and retries, launched from the launchpad.

Each decision is one run of `dagctl_review_job` with config naming the plan, the decision, the actor and a
comment (plus, in verifiable mode, the approval code). The decision is checked against the plan's state
and the environment's policy, then recorded on the plan's asset. A refused decision fails the run with a
message saying why and records nothing. Execution is not started here: the approval sensor launches it
once the policy is met, so a hundred approvals still give one execution.
"""


import os
from typing import Literal

from dagster import Config, Failure, OpExecutionContext, in_process_executor, job, op
from pydantic import Field

from ..core.errors import DagctlError, DagctlPolicyError
from ..core.lifecycle import (
    Decision,
    EventKind,
    PlanEvent,
    PlanStatus,
    build_status_event,
    check_decision_state,
)
from ..core.policy import check_approval
from ..core.summary import REVIEW_JOB_NAME
from .runtime import PlanRuntime, project_env
from .store import get_plan_state

REFUSAL_KIND_KEY = "dagctl/refusal"


class ReviewConfig(Config):
    """Launchpad config of a decision on a plan."""

    plan_id: str = Field(description="The plan, e.g. jaffle-prod-3f2a9c1d.")
    decision: Literal["approve", "reject", "cancel", "retry"] = Field(description="What you decide.")
    actor: str = Field(description="Your name, as listed in the environment's approvers.")
    comment: str = Field(default="", description="Why (shown in the plan's history).")
    code: str = Field(
        default="", description="Approval code (verifiable mode): `dagctl plans approve` computes it."
    )


def build_review_job(runtime: PlanRuntime):
    @op(name="review")
    def review(context: OpExecutionContext, config: ReviewConfig) -> None:
        """Checks and records one decision on a plan."""
        try:
            _decide(context, config)
        except DagctlError as exc:
            kind = "policy" if isinstance(exc, DagctlPolicyError) else "state"
            context.log.error(f"refused ({kind}): {exc}")
            raise Failure(description=str(exc), metadata={REFUSAL_KIND_KEY: kind}) from exc

    def _decide(context: OpExecutionContext, config: ReviewConfig) -> None:
        state = get_plan_state(context.instance, config.plan_id)
        project, env = project_env(runtime, config.plan_id)
        decision = Decision(config.decision)
        actor = config.actor.strip()
        check_decision_state(state, decision)
        verified = False
        if decision is Decision.APPROVE:
            verified = check_approval(env, state.spec, state.approvals, actor=actor, code=config.code or None,
                                      get_secret=os.environ.get, now=runtime.clock())
        now = runtime.clock()
        runtime.record(context, PlanEvent(
            plan_id=state.plan_id, kind=EventKind.DECISION, decision=decision, actor=actor, at=now,
            comment=config.comment, reason=config.comment or f"{decision.value} by {actor}",
            fingerprint=state.spec.fingerprint, verified=verified, run_id=context.run_id,
        ))
        final = {Decision.REJECT: PlanStatus.REJECTED, Decision.CANCEL: PlanStatus.CANCELLED}.get(decision)
        if final is not None:
            runtime.record(context, build_status_event(
                state, final, actor=actor, at=now, run_id=context.run_id,
                reason=config.comment or f"{final.value} by {actor}"))
        context.log.info(f"{actor}: {decision.value} recorded on plan {state.plan_id}")

    # One op: running it in the run worker itself saves a second process start (and code location load)
    # per decision, which is most of the time a `dagctl plans approve` waits.
    @job(name=REVIEW_JOB_NAME, description="Approve, reject, cancel or retry a plan.",
         tags={"dagctl/review": "true"}, executor_def=in_process_executor)
    def review_job():
        review()

    return review_job
