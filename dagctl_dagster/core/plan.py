"""Plans: one proposed change of one project in one environment.

A `PlanSpec` is what `detect` found, frozen at that moment: the pinned commits, the change set, the exact
commands, and the fingerprint of all of it. It never changes afterwards; everything that happens to a plan
later (approvals, runs, failures) is an event folded on top of it (see `lifecycle`).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from .dbt_changes import DbtScope, FileChange
from .dbt_impact import DbtImpact, ImpactStatus
from .errors import DagctlPlanError
from .fingerprint import compute_fingerprint
from .sqlmesh_plan import SqlmeshChangeSet


class Framework(StrEnum):
    DBT = "dbt"
    SQLMESH = "sqlmesh"


class CommitIdentity(BaseModel):
    """A name and email from a commit's author or committer line, as Git recorded it (self-asserted)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    email: str


class PlanSpec(BaseModel):
    """The explained plan, as recorded by `detect`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    plan_id: str
    project: str
    environment: str
    framework: Framework
    base_commit: str | None = Field(description="Target commit of the environment's last completed plan.")
    target_commit: str
    version_old: str | None = None
    version_new: str | None = None
    triggered_by: str = Field(description="`sensor` or `manual`.")
    author: str = Field(description="Commit author (sensor plans) or requesting actor (manual plans).")
    authors: tuple[CommitIdentity, ...] = Field(
        default=(), description="Author and committer of every commit from base to target (the target "
        "alone on a first deployment); the people behind them may not approve the plan.",
    )
    commit_message: str = ""
    commits_ahead: int = 0
    files: tuple[FileChange, ...] = ()
    dbt_scope: DbtScope | None = None
    dbt_impact: DbtImpact | None = Field(
        default=None, description="dbt's parse of the target: the nodes run and affected (none: not parsed).")
    commands: tuple[tuple[str, ...], ...] = ()
    sqlmesh: SqlmeshChangeSet | None = None
    created_at: datetime
    fingerprint: str = ""

    @property
    def short_target(self) -> str:
        return self.target_commit[:12]

    @property
    def touched_paths(self) -> tuple[str, ...]:
        paths = []
        for change in self.files:
            paths.append(change.path)
            if change.old_path:
                paths.append(change.old_path)
        return tuple(paths)

    @property
    def explain_failure(self) -> str | None:
        """Why this plan failed at explain and can never execute (failing SQLMesh unit tests, a dbt project
        that does not parse at the target), or `None`."""
        if self.sqlmesh is not None and self.sqlmesh.failed_tests:
            return (f"SQLMesh unit tests failed: {', '.join(self.sqlmesh.failed_tests)}; fix them and push a new "
                    "commit (SQLMesh's report is in the plan's summary and in this run's log)")
        if self.dbt_impact is not None and self.dbt_impact.status is ImpactStatus.PROJECT_ERROR:
            return (f"dbt cannot parse the project at {self.short_target} (fix the project and push a new "
                    f"commit):\n{self.dbt_impact.reason}")
        return None

    @property
    def has_changes(self) -> bool:
        if self.sqlmesh is not None:
            return self.sqlmesh.has_changes
        return True


def fingerprint_material(spec: PlanSpec) -> dict[str, object]:
    """Everything that decides what a plan runs; ids, times and the requester are left out."""
    material: dict[str, object] = {
        "project": spec.project,
        "environment": spec.environment,
        "framework": spec.framework.value,
        "base_commit": spec.base_commit,
        "target_commit": spec.target_commit,
        "version_new": spec.version_new,
        "files": [change.model_dump(mode="json") for change in spec.files],
        "dbt_scope": spec.dbt_scope.model_dump(mode="json") if spec.dbt_scope else None,
        "commands": [list(argv) for argv in spec.commands],
        "sqlmesh": spec.sqlmesh.fingerprint_material() if spec.sqlmesh else None,
    }
    if spec.dbt_impact is not None:  # absent, not null: plans recorded before impacts keep their fingerprint
        material["dbt_impact"] = spec.dbt_impact.fingerprint_material()
    return material


def seal_plan(spec: PlanSpec) -> PlanSpec:
    """The same plan with its fingerprint filled in."""
    return spec.model_copy(update={"fingerprint": compute_fingerprint(fingerprint_material(spec))})


def build_plan_id(project: str, environment: str, run_id: str) -> str:
    """A stable, readable plan id derived from the explaining run: `jaffle-prod-3f2a9c1d`."""
    return f"{project}-{environment}-{run_id.replace('-', '')[:8]}"


def split_plan_id(plan_id: str) -> tuple[str, str]:
    """`jaffle-prod-3f2a9c1d` -> (`jaffle`, `prod`): project and environment names never contain `-`.

    Raises `DagctlPlanError` for anything that is not a plan id.
    """
    parts = plan_id.split("-")
    if len(parts) != 3 or not all(parts):
        raise DagctlPlanError(
            f"'{plan_id}' is not a plan id; plan ids look like <project>-<environment>-<8 hex>, "
            "e.g. jaffle-prod-3f2a9c1d (see the plan's asset page or `dagctl plans list`)"
        )
    return parts[0], parts[1]
