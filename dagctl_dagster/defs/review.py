"""The review job: approvals, rejections, cancellations and retries, launched from the launchpad.

Each decision is one run of `dagctl_review_job` with config naming the plan, the decision, the actor and a
comment (plus, in verifiable mode, the actor's OpenSSH signature). The decision is checked against the
plan's state and the environment's policy, then recorded on the plan's asset. A refused decision fails the
run with a message saying why and records nothing. Execution is not started here: the approval sensor
launches it once the policy is met, so a hundred approvals still give one execution.

A decision may carry a client-supplied `decision_id`: a second run with an id already recorded on the plan
succeeds without recording anything, so a client can retry a launch that timed out without deciding twice.
"""


from typing import Literal

from dagster import Config, Failure, OpExecutionContext, in_process_executor, job, op
from pydantic import Field

from ..core.errors import DagctlError, DagctlPolicyError, DagctlTransitionError
from ..core.lifecycle import (
    Decision,
    EventKind,
    PlanEvent,
    PlanStatus,
    build_status_event,
    check_decision_state,
)
from ..core.policy import check_approval, check_retry
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
    signature: str = Field(
        default="", description="Verifiable mode: your OpenSSH signature of '<plan_id>:<fingerprint>' "
        "(`ssh-keygen -Y sign -n dagctl -f KEY`, armored, pasted whole); `dagctl plans approve --key` signs.",
    )
    decision_id: str = Field(
        default="", description="Optional id chosen by the client: a decision with an id already recorded "
        "on the plan is not recorded again (safe retries of a launch that timed out).",
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
        decision_id = config.decision_id.strip()
        recorded = state.get_decision(decision_id)
        if recorded is not None:
            if (recorded.actor, recorded.what) != (actor, f"decision: {decision.value}"):
                raise DagctlTransitionError(
                    f"decision id '{decision_id}' is already used on plan {state.plan_id} by {recorded.actor}'s "
                    f"{recorded.what.removeprefix('decision: ')}: use a new id for a different decision")
            context.log.info(f"decision {decision_id} is already recorded on plan {state.plan_id}: "
                             "nothing recorded again")
            return
        check_decision_state(state, decision)
        people = runtime.deployment.people
        signature = config.signature.strip()
        verified = False
        if decision is Decision.APPROVE:
            verified = check_approval(env, state.spec, state.approvals, actor=actor, signature=signature,
                                      people=people, now=runtime.clock())
        elif decision is Decision.RETRY:
            verified = check_retry(env, state.spec, actor=actor, signature=signature,
                                   attempt=state.retries + 1, people=people)
        now = runtime.clock()
        runtime.record(context, PlanEvent(
            plan_id=state.plan_id, kind=EventKind.DECISION, decision=decision, actor=actor, at=now,
            comment=config.comment, reason=config.comment or f"{decision.value} by {actor}",
            fingerprint=state.spec.fingerprint, verified=verified, signature=signature,
            decision_id=decision_id, run_id=context.run_id,
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
