"""SQLMesh change sets: what a SQLMesh plan will do to one environment, as plain values.

SQLMesh is state-based: it compares the models of a commit with the snapshots its state database holds for
an environment, and derives the change itself. `adapters.sqlmesh` asks SQLMesh for that plan and reduces it
to a `SqlmeshChangeSet`: the models added, removed, directly modified (with their change category and
forward-only flag) and indirectly modified (with the directly modified models they depend on), the
intervals to backfill, a text diff per modified model, and every snapshot of the resulting environment.

A change set is bound to two things: the snapshots (ids and categories) the environment will hold, and the
environment's current SQLMesh plan id (the base). Both go into its fingerprint; `execute` rebuilds the plan
on the same commit and refuses to apply it if the fingerprint differs (the plan is stale). Backfill
intervals are informative only: they grow with the clock between `detect` and `execute`, so they are left
out of the fingerprint on purpose.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .fingerprint import compute_fingerprint

ChangeKind = Literal["added", "removed", "directly_modified", "indirectly_modified"]
ChangeCategory = Literal[
    "breaking",
    "non_breaking",
    "forward_only",
    "indirect_breaking",
    "indirect_non_breaking",
    "metadata",
]
BackfillMode = Literal["incremental", "full_refresh", "recreate_view"]

CHANGE_KINDS: tuple[ChangeKind, ...] = ("added", "removed", "directly_modified", "indirectly_modified")
MAX_MODELS_SHOWN = 50
MAX_DIFF_LINES = 200
_ASSET_KEY_PART = re.compile(r"[^A-Za-z0-9_]")


class ModelChange(BaseModel):
    """One model the plan changes.

    Example: `ModelChange(name="shop.daily_revenue", kind="indirectly_modified",
    category="indirect_breaking", parents=("shop.orders",))`: rebuilt because `shop.orders` changed.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Model name as written in the project, e.g. `shop.orders`.")
    kind: ChangeKind = Field(description="How the model changes in the environment.")
    category: ChangeCategory | None = Field(
        default=None, description="SQLMesh's change category; None for removed or uncategorized models."
    )
    forward_only: bool = Field(default=False, description="The change applies going forward only.")
    parents: tuple[str, ...] = Field(
        default=(), description="Indirect changes: the directly modified models this one depends on."
    )
    diff: str | None = Field(default=None, description="Unified text diff of a modified model.")


class BackfillInterval(BaseModel):
    """One contiguous range of intervals SQLMesh will evaluate for a model.

    `start` and `end` are both inclusive and readable: ISO dates for daily (or coarser) models, ISO
    date-times for hourly ones. Example: `BackfillInterval(model="shop.orders", start="2024-03-01",
    end="2024-03-07")` evaluates seven daily intervals.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    start: str = Field(description="First interval, inclusive.")
    end: str = Field(description="Last interval, inclusive.")
    mode: BackfillMode = Field(
        default="incremental",
        description="`incremental`: only these intervals; `full_refresh`: the whole table is rebuilt; "
        "`recreate_view`: a view is recreated.",
    )


SnapshotEntry = tuple[str, str, str | None]


class SqlmeshChangeSet(BaseModel):
    """What a SQLMesh plan will do to one environment, recorded at `detect`.

    Example:
        SqlmeshChangeSet(environment="prod", base_plan_id="8c2f...", has_changes=True,
                         changes=(ModelChange(name="shop.orders", kind="directly_modified",
                                              category="breaking"),),
                         snapshots=(("shop.orders", "3193522528", "breaking"),))
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    environment: str = Field(description="SQLMesh environment: prod, dev, preview...")
    base_plan_id: str | None = Field(
        description="The environment's current SQLMesh plan id; None if the environment does not exist."
    )
    has_changes: bool = Field(description="Applying the plan would change anything at all.")
    changes: tuple[ModelChange, ...] = ()
    backfills: tuple[BackfillInterval, ...] = ()
    snapshots: tuple[SnapshotEntry, ...] = Field(
        default=(),
        description="Every snapshot of the resulting environment: (model, snapshot fingerprint, category).",
    )
    uncategorized: tuple[str, ...] = Field(
        default=(), description="Directly modified models SQLMesh could not categorize."
    )
    failed_tests: tuple[str, ...] = Field(
        default=(),
        description="Unit tests that failed at explain (`tests/x.yaml::test_name`): no plan, nothing applies.",
    )
    test_output: str | None = Field(
        default=None, description="SQLMesh's own report of the failed unit tests, with their row diffs."
    )

    def changes_of(self, kind: ChangeKind) -> tuple[ModelChange, ...]:
        """The changes of one kind, in the recorded order."""
        return tuple(change for change in self.changes if change.kind == kind)

    @property
    def is_new_environment(self) -> bool:
        return self.base_plan_id is None

    def fingerprint_material(self) -> dict[str, object]:
        """What an approval is bound to: the snapshots and categories, the changes, and the base.

        Diffs and backfill intervals are left out: diffs follow from the snapshots, and intervals move with
        the clock between `detect` and `execute` without changing what is deployed.
        """
        return {
            "environment": self.environment,
            "base_plan_id": self.base_plan_id,
            "snapshots": sorted([list(entry) for entry in self.snapshots], key=lambda e: (e[0], e[1])),
            "changes": sorted(
                ([change.name, change.kind, change.category, change.forward_only] for change in self.changes),
                key=lambda e: (e[0], e[1]),
            ),
        }

    @property
    def fingerprint(self) -> str:
        """SHA-256 of `fingerprint_material()`: what `apply_sqlmesh_plan` expects back."""
        return compute_fingerprint(self.fingerprint_material())


def build_sqlmesh_asset_key(project: str, model: str) -> tuple[str, str, str]:
    """The Dagster asset key path of one SQLMesh model: `("sqlmesh", project, "<schema>__<table>")`.

    Dots of the model name become `__` and any other character outside `[A-Za-z0-9_]` becomes `_`, so
    every key has the same depth whether or not the model names a catalog, and each part is a valid
    Dagster name. Example: `build_sqlmesh_asset_key("shop", "shop.orders")` is
    `("sqlmesh", "shop", "shop__orders")`.
    """
    return ("sqlmesh", project, _ASSET_KEY_PART.sub("_", model.replace(".", "__")))


def _fence(text: str, language: str) -> list[str]:
    # A fence longer than any backtick run inside the text keeps the block closed where it should be.
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{language}", text.rstrip("\n"), fence]


def _label(value: str | None) -> str:
    return value.replace("_", " ") if value else "uncategorized"


def _change_row(change: ModelChange) -> str:
    kind = _label(change.kind)
    if change.parents:
        kind += " (from " + ", ".join(f"`{parent}`" for parent in change.parents) + ")"
    category = "" if change.kind == "removed" else _label(change.category)
    if change.forward_only:
        category += ", forward-only"
    return f"| `{change.name}` | {kind} | {category} |"


def _render_diff(change: ModelChange) -> list[str]:
    assert change.diff is not None
    lines = change.diff.rstrip("\n").split("\n")
    shown = "\n".join(lines[:MAX_DIFF_LINES])
    if len(lines) > MAX_DIFF_LINES:
        shown += f"\n... {len(lines) - MAX_DIFF_LINES} more lines"
    return [
        "<details>",
        f"<summary>Diff of <code>{change.name}</code> ({_label(change.category)})</summary>",
        "",
        *_fence(shown, "diff"),
        "",
        "</details>",
    ]


def render_sqlmesh_summary(change_set: SqlmeshChangeSet) -> str:
    """A markdown summary a reviewer reads in ten seconds: counts, changes, backfills, then diffs.

    Example: `render_sqlmesh_summary(change_set)` starts with
    `**SQLMesh plan for `prod`** (base: SQLMesh plan `8c2f...`)` and a line of counts.
    """
    base = (
        f"base: SQLMesh plan `{change_set.base_plan_id}`"
        if change_set.base_plan_id
        else "new environment"
    )
    lines = [f"**SQLMesh plan for `{change_set.environment}`** ({base})", ""]
    if change_set.failed_tests:
        lines += [
            f"**Unit tests failed ({len(change_set.failed_tests)}):** "
            + ", ".join(f"`{name}`" for name in change_set.failed_tests),
            "",
            "SQLMesh builds no plan while tests fail: nothing will be applied. Fix the tests or the "
            "models and push a new commit.",
        ]
        if change_set.test_output:
            lines += ["", *_fence(change_set.test_output, "text")]
        return "\n".join(lines) + "\n"
    if not change_set.has_changes:
        lines.append("No changes: the environment already matches this commit. Nothing will be applied.")
        return "\n".join(lines) + "\n"

    counts = Counter(change.kind for change in change_set.changes)
    summary = [f"{counts[kind]} {_label(kind)}" for kind in CHANGE_KINDS if counts[kind]]
    backfilled_models = len({interval.model for interval in change_set.backfills})
    if backfilled_models:
        summary.append(f"{backfilled_models} model{'s' if backfilled_models != 1 else ''} to backfill")
    else:
        summary.append("nothing to backfill")
    lines.append(" · ".join(summary))

    if change_set.uncategorized:
        lines += ["", "**Uncategorized:** " + ", ".join(f"`{name}`" for name in change_set.uncategorized)]

    if change_set.changes:
        lines += ["", "| model | change | category |", "|---|---|---|"]
        lines += [_change_row(change) for change in change_set.changes[:MAX_MODELS_SHOWN]]
        if len(change_set.changes) > MAX_MODELS_SHOWN:
            lines.append(f"| ... {len(change_set.changes) - MAX_MODELS_SHOWN} more | | |")
    else:
        lines += ["", "No model changes (the environment record itself changes)."]

    if change_set.backfills:
        lines += ["", "**Backfill** (as of explain; re-evaluated when the plan executes, so it covers "
                  "the intervals due then and skips what another environment already built):", "",
                  "| model | from | to | mode |", "|---|---|---|---|"]
        lines += [
            f"| `{interval.model}` | {interval.start} | {interval.end} | {_label(interval.mode)} |"
            for interval in change_set.backfills[:MAX_MODELS_SHOWN]
        ]
        if len(change_set.backfills) > MAX_MODELS_SHOWN:
            lines.append(f"| ... {len(change_set.backfills) - MAX_MODELS_SHOWN} more | | | |")
    else:
        lines += ["", "**Backfill:** none as of explain (re-evaluated when the plan executes)"]

    for change in change_set.changes:
        if change.diff:
            lines += ["", *_render_diff(change)]
    lines += ["", f"SQLMesh change-set fingerprint `{change_set.fingerprint[:16]}` (checked by the apply "
              "step; the plan fingerprint below covers it)"]
    return "\n".join(lines) + "\n"
