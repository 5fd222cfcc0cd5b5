"""Approval policy: who must approve a plan before it may execute in an environment, and who may retry it.

An environment's policy (in the deployment config) names its approvers (people, see `core.people`), how
many distinct approvals it needs, whether a plan's authors may approve it, extra approvers for sensitive
paths, and how long an approval counts. Approvals are bound to the plan's fingerprint: an approval of a
different change set never counts. With `verify_approvals`, an approval counts only with a valid OpenSSH
signature of `<plan_id>:<fingerprint>` by one of the approver's public keys (`core.signatures`); the
signature is stored with the decision and checked again every time the policy is evaluated, so a recorded
`verified` flag alone never counts. A retry is a decision too: only the environment's approvers may ask for
one (its authors included), signed in verifiable mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from fnmatch import fnmatch

from pydantic import BaseModel, ConfigDict

from .config import EnvironmentConfig, PathRule, PersonConfig
from .errors import DagctlPolicyError
from .lifecycle import Approval
from .people import is_plan_author
from .plan import PlanSpec
from .signatures import build_decision_message, verify_signature

SYSTEM_ACTOR = "dagctl"


class PolicyResult(BaseModel):
    """Whether a plan's approvals meet its environment's policy, and what is still missing.

    `counted` approvals carry `verified` as checked now (a valid signature by one of the approver's keys).
    `is_required` is False for an unprotected environment, which needs no approval at all.
    """

    model_config = ConfigDict(frozen=True)

    is_satisfied: bool
    counted: tuple[Approval, ...] = ()
    ignored: tuple[tuple[Approval, str], ...] = ()
    missing: tuple[str, ...] = ()
    is_required: bool = True
    required: int = 0


def is_signed_by(
    people: Sequence[PersonConfig], actor: str, signature: str, message: str
) -> bool:
    """Whether `signature` is a valid `dagctl` signature of `message` by one of `actor`'s public keys."""
    person = next((p for p in people if p.name == actor), None)
    if person is None or not person.keys or not signature:
        return False
    return verify_signature(signature, message, person.keys) is not None


def is_approval_verified(approval: Approval, spec: PlanSpec, people: Sequence[PersonConfig]) -> bool:
    """Whether an approval carries the approver's signature of this plan and this fingerprint."""
    return approval.fingerprint == spec.fingerprint and is_signed_by(
        people, approval.actor, approval.signature, build_decision_message(spec.plan_id, spec.fingerprint))


def get_matching_rules(env: EnvironmentConfig, spec: PlanSpec) -> tuple[PathRule, ...]:
    """The path rules a plan triggers: those with a pattern matching a touched path."""
    paths = spec.touched_paths
    return tuple(
        rule for rule in env.path_rules
        if any(fnmatch(path, pattern) for path in paths for pattern in rule.paths)
    )


def is_allowed_approver(env: EnvironmentConfig, spec: PlanSpec, actor: str) -> bool:
    extra = {name for rule in get_matching_rules(env, spec) for name in rule.approvers}
    return not env.approvers or actor in env.approvers or actor in extra


def _is_self(env: EnvironmentConfig, spec: PlanSpec, people: Sequence[PersonConfig], actor: str) -> bool:
    return not env.allow_self_approval and is_plan_author(spec, people, actor)


def _ignore_reason(
    env: EnvironmentConfig, spec: PlanSpec, approval: Approval, now: datetime,
    people: Sequence[PersonConfig],
) -> str | None:
    if approval.fingerprint != spec.fingerprint:
        return "approved a different change set (fingerprint mismatch)"
    if _is_self(env, spec, people, approval.actor):
        return "an author of the plan cannot approve it"
    if not is_allowed_approver(env, spec, approval.actor):
        return "not an approver of this environment"
    if env.approval_ttl is not None and now - approval.at > env.approval_ttl:
        return f"expired (approvals count for {env.approval_ttl})"
    if env.verify_approvals and not approval.verified:
        return "not verified (verifiable mode needs the approver's signature)"
    return None


def _could_approve(env: EnvironmentConfig, spec: PlanSpec, people: Sequence[PersonConfig], name: str) -> bool:
    """Whether `name`'s approval would count if they gave it now (not an author, has a key if needed)."""
    if _is_self(env, spec, people, name):
        return False
    if env.verify_approvals:
        return any(person.name == name and person.keys for person in people)
    return True


def evaluate_policy(
    env: EnvironmentConfig, spec: PlanSpec, approvals: Sequence[Approval], now: datetime, *,
    people: Sequence[PersonConfig],
) -> PolicyResult:
    """Checks recorded approvals against the environment's policy at time `now`.

    Unprotected environments are always satisfied. Each approver counts once (their latest approval).
    "Still needed" names only people whose approval would count: not those who already approved, not the
    plan's authors (unless self-approval is allowed), and in verifiable mode only people with keys.
    """
    if not env.protected:
        return PolicyResult(is_satisfied=True, is_required=False)
    latest: dict[str, Approval] = {}
    for approval in approvals:
        latest[approval.actor] = approval
    counted, ignored = [], []
    for approval in latest.values():
        approval = approval.model_copy(update={"verified": is_approval_verified(approval, spec, people)})
        reason = _ignore_reason(env, spec, approval, now, people)
        if reason:
            ignored.append((approval, reason))
        else:
            counted.append(approval)
    actors = {approval.actor for approval in counted}
    missing = []
    base_actors = {a for a in actors if not env.approvers or a in env.approvers}
    if len(base_actors) < env.required_approvals:
        remaining = [name for name in env.approvers
                     if name not in actors and _could_approve(env, spec, people, name)]
        needed = env.required_approvals - len(base_actors)
        if env.approvers and len(remaining) < needed:
            who = f" from {', '.join(remaining)}" if remaining else ""
            missing.append(f"{needed} more approval(s){who}, but only {len(remaining)} approver(s) can still "
                           f"give one (the plan's authors cannot): add approvers to environment '{env.name}'")
        else:
            who = f" from {', '.join(remaining)}" if remaining else ""
            missing.append(f"{needed} more approval(s){who}")
    for rule in get_matching_rules(env, spec):
        if not actors & set(rule.approvers):
            able = [name for name in rule.approvers if _could_approve(env, spec, people, name)]
            missing.append(
                f"an approval from one of {', '.join(able) or 'nobody who can give it'} "
                f"(changes touch {', '.join(rule.paths)})"
            )
    return PolicyResult(
        is_satisfied=not missing, counted=tuple(counted), ignored=tuple(ignored), missing=tuple(missing),
        required=env.required_approvals,
    )


def _check_signature(
    env: EnvironmentConfig, spec: PlanSpec, people: Sequence[PersonConfig], *, actor: str, signature: str,
    message: str, what: str,
) -> bool:
    verified = is_signed_by(people, actor, signature, message)
    if env.verify_approvals and not verified:
        person = next((p for p in people if p.name == actor), None)
        why = ("no signature was given" if not signature
               else f"the signature is not by one of {actor}'s keys for this message" if person and person.keys
               else f"{actor} has no public key under `people:`")
        raise DagctlPolicyError(
            f"{what} of plan {spec.plan_id} by {actor} is not verified: environment '{env.name}' requires "
            f"a signature of '{message}' by one of {actor}'s keys ({why}); sign with "
            f"`dagctl plans {what} {spec.plan_id} --as {actor} --key ~/.ssh/id_ed25519`"
        )
    return verified


def check_approval(
    env: EnvironmentConfig,
    spec: PlanSpec,
    approvals: Sequence[Approval],
    *,
    actor: str,
    signature: str,
    people: Sequence[PersonConfig],
    now: datetime | None = None,
) -> bool:
    """Refuses an approval the policy would never count; returns whether it is verified (signed).

    Raises `DagctlPolicyError` for: an empty actor, an author of the plan approving it, an actor who is not
    an approver, a second approval by the same actor, and (in verifiable mode) a missing or invalid
    signature. With `now`, an approval that expired (`approval_ttl`) is not a duplicate.
    """
    if not actor.strip():
        raise DagctlPolicyError(f"plan {spec.plan_id}: an approval needs an actor name")
    if _is_self(env, spec, people, actor):
        raise DagctlPolicyError(
            f"{actor} cannot approve plan {spec.plan_id}: they are one of its authors and environment "
            f"'{env.name}' does not allow self-approval; ask another approver"
        )
    if not is_allowed_approver(env, spec, actor):
        allowed = sorted({*env.approvers, *(a for r in get_matching_rules(env, spec) for a in r.approvers)})
        raise DagctlPolicyError(
            f"{actor} is not an approver of environment '{env.name}' (approvers: {', '.join(allowed)})"
        )
    if any(
        a.actor == actor
        and a.fingerprint == spec.fingerprint
        and not (now is not None and env.approval_ttl is not None and now - a.at > env.approval_ttl)
        for a in approvals
    ):
        raise DagctlPolicyError(f"{actor} has already approved plan {spec.plan_id}")
    return _check_signature(env, spec, people, actor=actor, signature=signature,
                            message=build_decision_message(spec.plan_id, spec.fingerprint), what="approve")


def check_retry(
    env: EnvironmentConfig, spec: PlanSpec, *, actor: str, signature: str, attempt: int,
    people: Sequence[PersonConfig],
) -> bool:
    """Refuses a retry by someone who may not ask for one; returns whether it is verified (signed).

    Only the environment's approvers (path-rule approvers of the plan included) may retry; the plan's
    authors may retry their own plan. In verifiable mode the retry carries a signature of
    `retry <attempt>:<plan_id>:<fingerprint>`. Raises `DagctlPolicyError` saying who may.
    """
    if not actor.strip():
        raise DagctlPolicyError(f"plan {spec.plan_id}: a retry needs an actor name")
    if not is_allowed_approver(env, spec, actor):
        allowed = sorted({*env.approvers, *(a for r in get_matching_rules(env, spec) for a in r.approvers)})
        raise DagctlPolicyError(
            f"{actor} cannot retry plan {spec.plan_id}: only approvers of environment '{env.name}' may "
            f"({', '.join(allowed)})"
        )
    return _check_signature(env, spec, people, actor=actor, signature=signature, what="retry",
                            message=build_decision_message(spec.plan_id, spec.fingerprint, "retry", attempt))
