"""What every job, sensor and schedule of a code location shares: the deployment config, the storage
folder (Git mirrors, snapshots, run folders), the clock, and the act of recording a plan event."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dagster import DagsterInstance, MetadataValue, OpExecutionContext

from ..adapters.git import GitMirror
from ..core.config import DeploymentConfig, EnvironmentConfig, ProjectConfig
from ..core.lifecycle import PlanEvent, PlanState, fold_plans
from ..core.plan import split_plan_id
from ..core.policy import PolicyResult, evaluate_policy
from ..core.summary import render_plan_summary
from . import notify
from .store import build_asset_event, find_plan_state


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class PlanRuntime:
    """The deployment a code location serves, with its storage folder and clock.

    Example: `PlanRuntime(deployment=load_deployment_config(path), storage_dir=Path(".dagctl-data"))`.
    """

    deployment: DeploymentConfig
    storage_dir: Path
    config_dir: Path = Path(".")
    clock: Callable[[], datetime] = utc_now
    # The Kubernetes backend's API client for steps run inside `detect` (the parse pod): `None` builds it from
    # the backend's credentials; tests pass one over a faked cluster.
    kubernetes_client: Callable[[], Any] | None = None
    _mirrors: dict[str, GitMirror] = field(default_factory=dict)

    def mirror(self, project: ProjectConfig) -> GitMirror:
        if project.name not in self._mirrors:
            self._mirrors[project.name] = GitMirror(
                self.repository_url(project), self.storage_dir / "mirrors" / f"{project.name}.git",
                network_timeout=project.git_timeout_seconds,
            )
        return self._mirrors[project.name]

    def repository_url(self, project: ProjectConfig) -> str:
        """The repository URL, with a relative local path (`./x`, `../x`) taken from the config's folder."""
        if project.repository.startswith(("./", "../")):
            return str((self.config_dir / project.repository).resolve())
        return project.repository

    def snapshot_dir(self, project: ProjectConfig, commit: str) -> Path:
        return self.storage_dir / "snapshots" / project.name / commit

    def run_dir(self, run_id: str) -> Path:
        return self.storage_dir / "runs" / run_id

    def profiles_dir(self, project: ProjectConfig, snapshot: Path) -> Path:
        if project.dbt.profiles_dir is None:
            return snapshot
        return (self.config_dir / project.dbt.profiles_dir).resolve()

    def evaluate_policy(self, env: EnvironmentConfig, state: PlanState) -> PolicyResult:
        """The environment's policy applied to the plan's approvals now, with the deployment's people."""
        return evaluate_policy(env, state.spec, state.approvals, self.clock(), people=self.deployment.people)

    def record(
        self,
        target: OpExecutionContext | DagsterInstance,
        event: PlanEvent,
        *,
        metadata: Mapping[str, object] | None = None,
        materialize: bool = False,
    ) -> PlanState:
        """Records `event` on its plan's asset, with the plan's refreshed summary, and returns the new state.

        Inside a run the event is logged by the op (it shows in the run's log); elsewhere (sensors) it is
        reported as a runless event. Webhooks are notified of the transitions they subscribe to.
        """
        instance = target if isinstance(target, DagsterInstance) else target.instance
        project_name, env_name = split_plan_id(event.plan_id)
        project = self.deployment.get_project(project_name)
        env = project.get_environment(env_name)
        before = find_plan_state(instance, event.plan_id)
        state = fold_plans([event], {event.plan_id: before} if before else None)[event.plan_id]
        policy = self.evaluate_policy(env, state)
        summary = render_plan_summary(state, policy, people=self.deployment.people,
                                      signed=env.verify_approvals, rendered_at=self.clock())
        asset_event = build_asset_event(
            event, project=project_name, environment=env_name,
            metadata={"status": MetadataValue.text(state.status.value),
                      "summary": MetadataValue.md(summary),
                      "policy": MetadataValue.json(_policy_json(policy, env)),
                      **(metadata or {})},
            materialize=materialize,
        )
        if isinstance(target, DagsterInstance):
            target.report_runless_asset_event(asset_event)
        else:
            target.log_event(asset_event)
        notify.notify_transition(env, state, event, log=_logger(target))
        return state


def _policy_json(policy: PolicyResult, env: EnvironmentConfig) -> dict[str, object]:
    """What `dagctl plans approve` and `plans show` read to say what happens next (the client has no
    config): with `expires_at` per counted approval, the client re-checks expiry when it reads."""
    ttl = env.approval_ttl
    return {"is_required": policy.is_required, "is_satisfied": policy.is_satisfied,
            "required": policy.required, "missing": list(policy.missing),
            "counted": [{"actor": a.actor, "verified": a.verified,
                         "expires_at": (a.at + ttl).isoformat() if ttl is not None else None}
                        for a in policy.counted]}


def _logger(target: OpExecutionContext | DagsterInstance):
    if isinstance(target, DagsterInstance):
        import logging

        return logging.getLogger("dagctl")
    return target.log


def resolve_storage_dir(deployment: DeploymentConfig, config_dir: Path) -> Path:
    """`DAGCTL_STORAGE_DIR` wins; else the config's `storage_dir`, relative to the config file."""
    override = os.environ.get("DAGCTL_STORAGE_DIR")
    path = Path(override) if override else Path(deployment.storage_dir)
    return path if path.is_absolute() else (config_dir / path).resolve()


def project_env(runtime: PlanRuntime, plan_id: str) -> tuple[ProjectConfig, EnvironmentConfig]:
    project_name, env_name = split_plan_id(plan_id)
    project = runtime.deployment.get_project(project_name)
    return project, project.get_environment(env_name)
