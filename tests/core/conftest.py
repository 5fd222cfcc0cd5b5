"""Factories for the pure `core` tests: plans, environments, approvals and lifecycle events.

Each factory builds a complete, valid value from defaults that read like a small story (project `jaffle`,
environment `prod`, a plan by dave changing one staging model, approvers alice and bob), and takes keyword
overrides for what a test is about. Times are fixed: `at(minutes)` is minutes after a fixed instant, so no
test depends on the clock.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from dagctl_dagster.core.config import EnvironmentConfig
from dagctl_dagster.core.dbt_changes import build_dbt_commands, build_dbt_scope, build_file_change
from dagctl_dagster.core.lifecycle import (
    Approval,
    Decision,
    EventKind,
    PlanEvent,
    PlanStatus,
    build_created_event,
    build_status_event,
)
from dagctl_dagster.core.plan import Framework, PlanSpec, seal_plan

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
BASE_COMMIT = "a" * 40
TARGET_COMMIT = "b" * 40
PLAN_ID = "jaffle-prod-3f2a9c1d"


@pytest.fixture
def at() -> Callable[[float], datetime]:
    """`at(30)` is 30 minutes after the fixed instant every factory uses."""

    def build(minutes: float = 0) -> datetime:
        return T0 + timedelta(minutes=minutes)

    return build


@pytest.fixture
def make_env() -> Callable[..., EnvironmentConfig]:
    """A protected `prod` environment approved by one of alice or bob; overrides by field name."""

    def build(**overrides: object) -> EnvironmentConfig:
        fields: dict[str, object] = {
            "name": "prod",
            "protected": True,
            "approvers": ("alice", "bob"),
            "required_approvals": 1,
        }
        fields.update(overrides)
        return EnvironmentConfig.model_validate(fields)

    return build


@pytest.fixture
def make_spec() -> Callable[..., PlanSpec]:
    """A sealed dbt plan by dave that modifies one staging model; overrides by field name.

    `files` given as `(path, change_type)` or `(path, change_type, old_path)` tuples are turned into
    `FileChange`s, and the scope and commands follow the files unless overridden too.
    """

    def build(**overrides: object) -> PlanSpec:
        files = tuple(
            build_file_change(*change) if isinstance(change, tuple) else change
            for change in overrides.pop("files", (("models/staging/stg_orders.sql", "modified"),))
        )
        base_commit = overrides.get("base_commit", BASE_COMMIT)
        scope = overrides.pop("dbt_scope", None) or build_dbt_scope(files, has_base=base_commit is not None)
        fields: dict[str, object] = {
            "plan_id": PLAN_ID,
            "project": "jaffle",
            "environment": "prod",
            "framework": Framework.DBT,
            "base_commit": BASE_COMMIT,
            "target_commit": TARGET_COMMIT,
            "version_old": "1",
            "version_new": "2",
            "triggered_by": "sensor",
            "author": "dave",
            "commit_message": "Round order amounts",
            "commits_ahead": 1,
            "files": files,
            "dbt_scope": scope,
            "commands": build_dbt_commands([("dbt", "build")], scope, target="prod"),
            "created_at": T0,
        }
        fields.update(overrides)
        return seal_plan(PlanSpec.model_validate(fields))

    return build


@pytest.fixture
def make_approval(make_spec: Callable[..., PlanSpec]) -> Callable[..., Approval]:
    """alice's unverified approval of the default plan, 10 minutes after it was created."""
    fingerprint = make_spec().fingerprint

    def build(**overrides: object) -> Approval:
        fields: dict[str, object] = {
            "actor": "alice",
            "at": T0 + timedelta(minutes=10),
            "comment": "looks good",
            "fingerprint": fingerprint,
            "verified": False,
        }
        fields.update(overrides)
        return Approval.model_validate(fields)

    return build


@pytest.fixture
def created(make_spec: Callable[..., PlanSpec]) -> Callable[..., PlanEvent]:
    """The `created` event of a plan built by `make_spec(**overrides)`."""

    def build(run_id: str | None = "run-explain", **overrides: object) -> PlanEvent:
        return build_created_event(make_spec(**overrides), run_id=run_id)

    return build


@pytest.fixture
def status() -> Callable[..., PlanEvent]:
    """A status event of the default plan: `status("running", minutes=20, run_id="run-1")`."""

    def build(
        new_status: PlanStatus | str,
        *,
        minutes: float = 0,
        plan_id: str = PLAN_ID,
        actor: str = "dagctl",
        **overrides: object,
    ) -> PlanEvent:
        return build_status_event(
            plan_id, PlanStatus(new_status), actor=actor, at=T0 + timedelta(minutes=minutes), **overrides
        )

    return build


@pytest.fixture
def decision(make_spec: Callable[..., PlanSpec]) -> Callable[..., PlanEvent]:
    """A reviewer's decision on the default plan: `decision("approve", actor="alice", minutes=5)`."""
    fingerprint = make_spec().fingerprint

    def build(
        new_decision: Decision | str,
        *,
        actor: str = "alice",
        minutes: float = 0,
        plan_id: str = PLAN_ID,
        **overrides: object,
    ) -> PlanEvent:
        fields: dict[str, object] = {
            "plan_id": plan_id,
            "kind": EventKind.DECISION,
            "decision": Decision(new_decision),
            "actor": actor,
            "at": T0 + timedelta(minutes=minutes),
            "fingerprint": fingerprint,
        }
        fields.update(overrides)
        return PlanEvent.model_validate(fields)

    return build
