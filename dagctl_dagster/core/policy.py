"""Approval policy: who must approve a plan before it may execute in an environment.

An environment's policy (in the deployment config) names its approvers, how many distinct approvals it
needs, whether authors may approve their own plans, extra approvers for sensitive paths, and how long an
approval counts. Approvals are bound to the plan's fingerprint: an approval of a different change set never
counts. In verifiable mode each approval carries an HMAC code derived from the approver's secret, the plan
id and the fingerprint, so a self-asserted actor name alone cannot approve.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from datetime import datetime
from fnmatch import fnmatch

from pydantic import BaseModel, ConfigDict

from .config import EnvironmentConfig, PathRule
from .errors import DagctlPolicyError
from .lifecycle import Approval
from .plan import PlanSpec

SYSTEM_ACTOR = "dagctl"
APPROVER_SECRET_PREFIX = "DAGCTL_APPROVER_SECRET_"


class PolicyResult(BaseModel):
    """Whether a plan's approvals meet its environment's policy, and what is still missing."""

    model_config = ConfigDict(frozen=True)

    is_satisfied: bool
    counted: tuple[Approval, ...] = ()
    ignored: tuple[tuple[Approval, str], ...] = ()
    missing: tuple[str, ...] = ()


def approver_secret_env(actor: str) -> str:
    """The environment variable holding an approver's secret: `DAGCTL_APPROVER_SECRET_ALICE`."""
    cleaned = "".join(ch if ch.isalnum() else "_" for ch in actor.upper())
    return f"{APPROVER_SECRET_PREFIX}{cleaned}"


def compute_approval_code(secret: str, plan_id: str, fingerprint: str) -> str:
    """The HMAC-SHA256 code an approver sends with an approval in verifiable mode.

    Example: `compute_approval_code(os.environ["DAGCTL_APPROVER_SECRET_ALICE"], plan_id, fingerprint)`.
    """
    message = f"{plan_id}:{fingerprint}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def is_valid_approval_code(secret: str | None, plan_id: str, fingerprint: str, code: str | None) -> bool:
    if not secret or not code:
        return False
    return hmac.compare_digest(compute_approval_code(secret, plan_id, fingerprint), code)


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


def _ignore_reason(
    env: EnvironmentConfig, spec: PlanSpec, approval: Approval, now: datetime
) -> str | None:
    if approval.fingerprint != spec.fingerprint:
        return "approved a different change set (fingerprint mismatch)"
    if approval.actor == spec.author and not env.allow_self_approval:
        return "the plan's author cannot approve it"
    if not is_allowed_approver(env, spec, approval.actor):
        return "not an approver of this environment"
    if env.approval_ttl is not None and now - approval.at > env.approval_ttl:
        return f"expired (approvals count for {env.approval_ttl})"
    if env.verify_approvals and not approval.verified:
        return "not verified (verifiable mode needs an approval code)"
    return None


def evaluate_policy(
    env: EnvironmentConfig, spec: PlanSpec, approvals: Sequence[Approval], now: datetime
) -> PolicyResult:
    """Checks recorded approvals against the environment's policy at time `now`.

    Unprotected environments are always satisfied. Each approver counts once (their latest approval).
    """
    if not env.protected:
        return PolicyResult(is_satisfied=True)
    latest: dict[str, Approval] = {}
    for approval in approvals:
        latest[approval.actor] = approval
    counted, ignored = [], []
    for approval in latest.values():
        reason = _ignore_reason(env, spec, approval, now)
        if reason:
            ignored.append((approval, reason))
        else:
            counted.append(approval)
    actors = {approval.actor for approval in counted}
    missing = []
    base_actors = {a for a in actors if not env.approvers or a in env.approvers}
    if len(base_actors) < env.required_approvals:
        # Name only those whose approval would still count: an approver who already approved cannot again.
        remaining = [name for name in env.approvers if name not in actors]
        who = f" from {', '.join(remaining)}" if remaining else ""
        needed = env.required_approvals - len(base_actors)
        missing.append(f"{needed} more approval(s){who}")
    for rule in get_matching_rules(env, spec):
        if not actors & set(rule.approvers):
            missing.append(
                f"an approval from one of {', '.join(rule.approvers)} "
                f"(changes touch {', '.join(rule.paths)})"
            )
    return PolicyResult(
        is_satisfied=not missing, counted=tuple(counted), ignored=tuple(ignored), missing=tuple(missing)
    )


def check_approval(
    env: EnvironmentConfig,
    spec: PlanSpec,
    approvals: Sequence[Approval],
    *,
    actor: str,
    code: str | None,
    get_secret: Callable[[str], str | None],
    now: datetime | None = None,
) -> bool:
    """Refuses an approval the policy would never count; returns whether it is verified.

    Raises `DagctlPolicyError` for: an empty actor, self-approval, an actor who is not an approver, a
    second approval by the same actor, and (in verifiable mode) a missing or wrong code. With `now`, an
    approval that expired (`approval_ttl`) is not a duplicate: its approver may approve again.
    """
    if not actor.strip():
        raise DagctlPolicyError(f"plan {spec.plan_id}: an approval needs an actor name")
    if actor == spec.author and not env.allow_self_approval:
        raise DagctlPolicyError(
            f"{actor} cannot approve plan {spec.plan_id}: it is their own plan and environment "
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
    verified = is_valid_approval_code(get_secret(approver_secret_env(actor)), spec.plan_id,
                                      spec.fingerprint, code)
    if env.verify_approvals and not verified:
        raise DagctlPolicyError(
            f"approval of plan {spec.plan_id} by {actor} is not verified: environment '{env.name}' "
            f"requires an approval code computed from {approver_secret_env(actor)} "
            "(`dagctl plans approve` computes it)"
        )
    return verified
