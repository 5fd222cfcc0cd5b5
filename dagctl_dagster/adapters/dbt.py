"""dbt plans from Git alone: the change set of a dbt project between two commits.

`explain_dbt_plan` never parses the dbt project and never touches the warehouse: it reads the project's
`.dagctl/config.yaml` at the target commit, diffs the two commits in the project's mirror, categorizes the
files, decides the scope and writes down the exact dbt command lines.

What it records is bounded: the commit subject and the author are cut with a marker, and at most
`MAX_LISTED_FILES` changed files are listed (the scope is decided from all of them), so one commit can never
flood the event log.
"""

from __future__ import annotations

from datetime import datetime

from ..core.config import PROJECT_CONFIG_PATH, EnvironmentConfig, ProjectConfig, parse_project_repo_config
from ..core.dbt_changes import build_dbt_commands, build_dbt_scope, build_file_change
from ..core.errors import DagctlGitError
from ..core.plan import CommitIdentity, Framework, PlanSpec, seal_plan
from .git import GitMirror, PendingChange

MAX_LISTED_FILES = 2000
MAX_MESSAGE_CHARS = 500
MAX_AUTHOR_CHARS = 200


def bound_text(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, with a marker saying how much was left out.

    Example: `bound_text("x" * 600, 500)` ends with `"... [100 more characters]"`.
    """
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... [{len(text) - limit} more characters]"


def _project_path(project: ProjectConfig, path: str) -> str:
    return f"{project.subdirectory}/{path}" if project.subdirectory else path


def read_project_version(mirror: GitMirror, project: ProjectConfig, commit: str) -> str:
    """The `version` of `.dagctl/config.yaml` at `commit`; `DagctlProjectConfigError` names what is wrong."""
    path = _project_path(project, PROJECT_CONFIG_PATH)
    text = mirror.read_file(commit, path)
    if text is None:
        _check_subdirectory(mirror, project, commit)
    return parse_project_repo_config(text, path=path, commit=commit).version


def _check_subdirectory(mirror: GitMirror, project: ProjectConfig, commit: str) -> None:
    """Raises `DagctlGitError` saying the project folder does not exist at `commit`, if it does not."""
    if project.subdirectory:
        mirror.tree_id(commit, project.subdirectory)


def _start_change_read(mirror: GitMirror, project: ProjectConfig, base_commit: str | None,
                       target_commit: str, config_path: str) -> tuple[PendingChange, bool]:
    """The change from `base_commit`, or from nothing when the base is gone (history rewritten): returns
    the read (its history still being read) and whether the base was gone."""
    try:
        return mirror.start_change_read(base_commit, target_commit, subdirectory=project.subdirectory,
                                        file_path=config_path), False
    except DagctlGitError:
        if base_commit is None or mirror.has_commit(base_commit) or not mirror.has_commit(target_commit):
            raise
    return mirror.start_change_read(None, target_commit, subdirectory=project.subdirectory,
                                    file_path=config_path), True


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
    change, is_base_gone = _start_change_read(mirror, project, base_commit, target_commit, config_path)
    with change:
        # Everything up to the identities is done while `git log` still walks the history.
        if change.file_text is None:
            _check_subdirectory(mirror, project, target_commit)
        version = parse_project_repo_config(change.file_text, path=config_path, commit=target_commit).version
        files = tuple(build_file_change(e.path, e.change_type, e.old_path) for e in change.entries)
        scope = build_dbt_scope(files, has_base=base_commit is not None, is_base_gone=is_base_gone,
                                include_downstream=env.include_downstream)
        if len(files) > MAX_LISTED_FILES:
            scope = scope.model_copy(update={
                "reason": f"{scope.reason} ({len(files)} files changed, the first {MAX_LISTED_FILES} are listed)"})
            files = files[:MAX_LISTED_FILES]
        commands = build_dbt_commands(project.dbt.commands, scope, target=env.dbt_target)
        history = change.history()
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
        author=bound_text(requested_by or change.info.author_name, MAX_AUTHOR_CHARS),
        authors=tuple(CommitIdentity(name=bound_text(name, MAX_AUTHOR_CHARS),
                                     email=bound_text(email, MAX_AUTHOR_CHARS))
                      for name, email in history.identities),
        commit_message=bound_text(change.info.message, MAX_MESSAGE_CHARS),
        commits_ahead=history.ahead,
        files=files,
        dbt_scope=scope,
        commands=commands,
        created_at=now,
    ))
