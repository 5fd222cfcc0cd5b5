"""The reviewer's view of a plan: a markdown summary readable in ten seconds.

Rendered from the folded plan state and the policy result, so it always shows the current status, who
approved, who still must, whether approvals were verified, and the launchpad config to paste to approve.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from datetime import datetime

from .config import PersonConfig
from .dbt_changes import Scope
from .dbt_impact import DbtImpact, render_impact_line
from .lifecycle import PlanState, PlanStatus
from .people import get_plan_authors
from .plan import PlanSpec
from .policy import PolicyResult
from .signatures import build_decision_message
from .sqlmesh_plan import render_sqlmesh_summary

REVIEW_JOB_NAME = "dagctl_review_job"
MAX_FILES_SHOWN = 50
MAX_NODES_SHOWN = 30


def render_review_config(plan_id: str, decision: str = "approve", *, signed: bool = False) -> str:
    """The launchpad run config of the review job for one decision."""
    signature = ("      signature: |\n        <paste the output of ssh-keygen -Y sign, "
                 "-----BEGIN SSH SIGNATURE----- included>\n") if signed else ""
    return (
        "ops:\n  review:\n    config:\n"
        f"      plan_id: {plan_id}\n      decision: {decision}\n"
        "      actor: <your name>\n      comment: \"\"\n" + signature
    )


def _render_change_set(spec: PlanSpec) -> list[str]:
    lines: list[str] = []
    if spec.dbt_scope is not None:
        scope = spec.dbt_scope
        lines += ["", f"**Scope:** `{scope.scope.value}`: {scope.reason}"]
        if scope.scope is Scope.SELECTIVE:
            lines += ["", f"**Selection:** `{' '.join(scope.selection)}`"]
        if scope.removed:
            lines += ["", (
                "**Removed:** " + ", ".join(f"`{path}`" for path in scope.removed)
                + " (dbt does not drop the relations of removed models: drop them by hand)"
            )]
    if spec.dbt_impact is not None:
        lines += _render_dbt_impact(spec.dbt_impact)
    if spec.sqlmesh is not None:
        lines += ["", render_sqlmesh_summary(spec.sqlmesh)]
    if spec.commands:
        lines += ["", "**Commands:**", ""]
        lines += [f"- `{shlex.join(argv)}`" for argv in spec.commands]
    elif spec.framework == "dbt":
        lines += ["", "**Commands:** none (no dbt command runs)"]
    if spec.files:
        lines += ["", f"**Changed files ({len(spec.files)}):**", "", "| file | category | change |",
                  "|---|---|---|"]
        for change in spec.files[:MAX_FILES_SHOWN]:
            moved = f" (from `{change.old_path}`)" if change.old_path else ""
            lines.append(f"| `{change.path}`{moved} | {change.category.value} | "
                         f"{change.change_type.value} |")
        if len(spec.files) > MAX_FILES_SHOWN:
            lines.append(f"| ... {len(spec.files) - MAX_FILES_SHOWN} more (see the files table) | | |")
    return lines


def _render_dbt_impact(impact: DbtImpact) -> list[str]:
    parse = f" (dbt parse: {impact.parse.mode.value}, {impact.parse.seconds:.1f}s)" if impact.parse else ""
    lines = ["", f"**Impact:** {render_impact_line(impact)}{parse}"]
    for title, nodes, with_distance in (("Selected nodes", impact.selected, False),
                                         ("Downstream, not run", impact.downstream, True)):
        if not nodes:
            continue
        lines += ["", f"**{title} ({len(nodes)}):**", "",
                  "| node | type | path |" + (" distance |" if with_distance else ""),
                  "|---|---|---|" + ("---|" if with_distance else "")]
        for node in nodes[:MAX_NODES_SHOWN]:
            lines.append(f"| `{node.unique_id}` | {node.resource_type} | `{node.path}` |"
                         + (f" {node.distance} |" if with_distance else ""))
        if len(nodes) > MAX_NODES_SHOWN:
            lines.append(f"| ... {len(nodes) - MAX_NODES_SHOWN} more (see the plan's node tables) | | |"
                         + (" |" if with_distance else ""))
    return lines


def _render_approvals(state: PlanState, policy: PolicyResult | None, *, signed: bool) -> list[str]:
    # An unprotected environment, a no-op or a failed explain needs no approval: nothing to show or miss.
    if policy is None or not policy.is_required or not state.spec.has_changes:
        return []
    lines = ["", f"**Approvals:** {len(policy.counted)} counted, {policy.required} required", ""]
    if not policy.counted and not policy.ignored:
        lines.append("- none yet")
    for approval in policy.counted:
        check = "verified (signed)" if approval.verified else "not verified (self-asserted)"
        lines.append(f"- {approval.actor} at {approval.at:%Y-%m-%d %H:%M} UTC, {check}")
    for approval, reason in policy.ignored:
        lines.append(f"- ~~{approval.actor}~~: does not count, {reason}")
    if policy.missing:
        lines += ["", "**Still needed:** " + "; ".join(policy.missing)]
    if state.status is PlanStatus.PENDING:
        message = build_decision_message(state.plan_id, state.spec.fingerprint)
        key = " --key ~/.ssh/id_ed25519" if signed else ""
        lines += ["", "**To approve**, launch `dagctl_review_job` from the launchpad with:", "",
                  "```yaml", render_review_config(state.plan_id, signed=signed).rstrip(), "```",
                  f"or run `dagctl plans approve {state.plan_id} --as <your name>{key}`."]
        if signed:
            lines += ["", "Approvals must be signed: the signature to paste is the output of", "",
                      f"`printf '%s' '{message}' | ssh-keygen -Y sign -n dagctl -f ~/.ssh/id_ed25519`"]
    return lines


def render_plan_summary(
    state: PlanState, policy: PolicyResult | None = None, *, people: Sequence[PersonConfig] = (),
    signed: bool = False, rendered_at: datetime | None = None,
) -> str:
    """Markdown for the plan's asset page and for `dagctl plans show`."""
    spec = state.spec
    version = ""
    if spec.version_new is not None:
        version = f" | version `{spec.version_old or '-'}` -> `{spec.version_new}`"
    reason = f" ({state.reason})" if state.reason else ""
    base = spec.base_commit[:12] if spec.base_commit else "none (first deployment)"
    lines = [
        f"### Plan `{spec.plan_id}`: **{state.status.value}**{reason}",
        "",
        f"{spec.project} -> **{spec.environment}** | {spec.framework.value}{version}",
        "",
        f"Commits: `{base}` -> `{spec.short_target}`"
        f"{f' ({spec.commits_ahead} ahead)' if spec.base_commit else ''} | "
        f"by {get_plan_authors(spec, people).render() if spec.authors else spec.author} | "
        f"triggered by {spec.triggered_by}",
        "",
        f"> {spec.commit_message}" if spec.commit_message else "",
        *_render_change_set(spec),
        *_render_approvals(state, policy, signed=signed),
        "",
        f"Retries used: {state.retries} of 3 | fingerprint `{spec.fingerprint[:16]}`"
        # Approvals can expire after this: the summary is not re-rendered then, `gate` re-checks them.
        + (f" | rendered {rendered_at:%Y-%m-%d %H:%M} UTC, approvals re-checked at execution"
           if rendered_at is not None else ""),
    ]
    return "\n".join(lines)
