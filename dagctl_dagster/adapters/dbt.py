"""dbt plans from Git alone: the change set of a dbt project between two commits.

`explain_dbt_plan` never parses the dbt project and never touches the warehouse: it reads the project's
`.dagctl/config.yaml` at the target commit, diffs the two commits in the project's mirror, categorizes the
files, decides the scope and writes down the exact dbt command lines.
"""

from __future__ import annotations

from datetime import datetime

from ..core.config import PROJECT_CONFIG_PATH, EnvironmentConfig, ProjectConfig, parse_project_repo_config
from ..core.dbt_changes import build_dbt_commands, build_dbt_scope, build_file_change
from ..core.plan import CommitIdentity, Framework, PlanSpec, seal_plan
from .git import GitMirror


def _project_path(project: ProjectConfig, path: str) -> str:
    return f"{project.subdirectory}/{path}" if project.subdirectory else path


def read_project_version(mirror: GitMirror, project: ProjectConfig, commit: str) -> str:
    """The `version` of `.dagctl/config.yaml` at `commit`; `DagctlProjectConfigError` names what is wrong."""
    path = _project_path(project, PROJECT_CONFIG_PATH)
    return parse_project_repo_config(mirror.read_file(commit, path), path=path, commit=commit).version


def explain_dbt_plan(
    mirror: GitMirror,
    project: ProjectConfig,
    env: EnvironmentConfig,
    *,
    plan_id: str,
    target_commit: str,
    base_commit: str | None,
    base_version: str | None,
    triggered_by: str,
    requested_by: str | None,
    now: datetime,
) -> PlanSpec:
    """The sealed `PlanSpec` of a dbt change from `base_commit` (None: first deployment) to `target_commit`.

    Example:
        spec = explain_dbt_plan(mirror, project, env, plan_id="jaffle-prod-3f2a9c1d",
                                target_commit=head, base_commit=None, base_version=None,
                                triggered_by="sensor", requested_by=None, now=now)
    """
    config_path = _project_path(project, PROJECT_CONFIG_PATH)
    list_authors = mirror.start_listing_commit_identities(base_commit, target_commit)  # alongside the reads
    read = mirror.read_change(base_commit, target_commit, subdirectory=project.subdirectory,
                              file_path=config_path)
    version = parse_project_repo_config(read.file_text, path=config_path, commit=target_commit).version
    files = tuple(build_file_change(e.path, e.change_type, e.old_path) for e in read.entries)
    scope = build_dbt_scope(files, has_base=base_commit is not None,
                            include_downstream=env.include_downstream)
    info, ahead = read.info, read.ahead
    return seal_plan(PlanSpec(
        plan_id=plan_id,
        project=project.name,
        environment=env.name,
        framework=Framework.DBT,
        base_commit=base_commit,
        target_commit=target_commit,
        version_old=base_version,
        version_new=version,
        triggered_by=triggered_by,
        author=requested_by or info.author_name,
        authors=tuple(CommitIdentity(name=name, email=email) for name, email in list_authors()),
        commit_message=info.message,
        commits_ahead=ahead,
        files=files,
        dbt_scope=scope,
        commands=build_dbt_commands(project.dbt.commands, scope, target=env.dbt_target),
        created_at=now,
    ))
