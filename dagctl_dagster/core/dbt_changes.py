"""dbt change sets: which files changed, what that means for dbt, and the exact commands to run.

A dbt plan is explained from a Git diff alone, without parsing the dbt project: each changed file gets a
category (model, test, macro, ...), the categories decide the scope (`all`, `selective` or `build_only`), and a
`selective` scope selects exactly the changed files with dbt's `path:` selector, which also covers YAML files
(tests and properties defined in them). That keeps `detect` close to the cost of `git diff` itself.

dbt reads a `path:` value as a glob (`*`, `?`, `[`) and a selection argument as a list (spaces and commas
separate criteria), so each path is escaped to match itself only (`models/a*.sql` -> `path:models/a[*].sql`).
A name no escape can make exact (whitespace, a comma, a byte that is not UTF-8) makes the plan a full build
that says why. Selective commands also turn dbt's "criterion matches no node" warning into an error: a plan
never completes as executed while dbt built nothing of what it says.
"""

from __future__ import annotations

import re

from collections.abc import Iterable, Sequence
from enum import StrEnum
from fnmatch import fnmatch

from pydantic import BaseModel, ConfigDict, Field


class FileCategory(StrEnum):
    MODEL = "model"
    TEST = "test"
    MACRO = "macro"
    SEED = "seed"
    SNAPSHOT = "snapshot"
    ANALYSIS = "analysis"
    CONFIGURATION = "configuration"
    INFRASTRUCTURE = "infrastructure"
    OTHER = "other"


class ChangeType(StrEnum):
    ADDED = "added"
    MODIFIED = "modified"
    DELETED = "deleted"
    RENAMED = "renamed"
    COPIED = "copied"
    TYPE_CHANGED = "type_changed"


class Scope(StrEnum):
    ALL = "all"
    SELECTIVE = "selective"
    BUILD_ONLY = "build_only"


CONFIGURATION_FILES = frozenset(
    {"dbt_project.yml", "profiles.yml", "packages.yml", "dependencies.yml", "selectors.yml"}
)
INFRASTRUCTURE_NAMES = frozenset({"Dockerfile", ".dockerignore", "requirements.txt", "pyproject.toml", "uv.lock"})
_YAML = (".yml", ".yaml")
# Categories whose files dbt builds and `path:` can select.
SELECTABLE = frozenset({FileCategory.MODEL, FileCategory.TEST, FileCategory.SEED, FileCategory.SNAPSHOT})
# Categories that can change any node: only a full build is safe.
GLOBAL = frozenset({FileCategory.MACRO, FileCategory.CONFIGURATION})
# Above this many changed files a selection is no longer worth reviewing file by file (and makes a huge argv).
MAX_SELECTED_FILES = 500
# Glob characters of dbt's `path:` (Python's `Path.glob`) and graph operators (`+`, `@`): each becomes a
# one-character class, which matches exactly that character. A translation table: detect escapes the path
# of every changed file, in one pass each.
_ESCAPE_TABLE = str.maketrans({character: f"[{character}]" for character in "*?[+@"})
# A selective dbt command fails when one of its criteria selects no node (a deleted YAML, a disabled model),
# naming the criterion, instead of building the rest and reporting success.
NO_EMPTY_SELECTION = ("--warn-error-options", '{"error":["NoNodesForSelectionCriteria"]}')


class FileChange(BaseModel):
    """One changed file, with its path relative to the dbt project folder."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    change_type: ChangeType
    category: FileCategory
    old_path: str | None = None

    @property
    def is_removal(self) -> bool:
        return self.change_type is ChangeType.DELETED


class DbtScope(BaseModel):
    """What dbt will do for a change set: the scope, why, and the exact selection."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scope: Scope
    reason: str
    selection: tuple[str, ...] = ()
    removed: tuple[str, ...] = Field(
        default=(), description="Deleted or renamed-away models, seeds and snapshots: not selectable."
    )

    @property
    def requires_dbt(self) -> bool:
        return self.scope is not Scope.BUILD_ONLY


def categorize_path(path: str) -> FileCategory:
    """The category of a file, from its path relative to the dbt project folder.

    Example: `categorize_path("models/marts/customers.sql")` is `FileCategory.MODEL`.
    """
    # Plain string splitting: `detect` categorizes every changed file, and pathlib costs more than the diff.
    parts = path.strip("/").split("/")
    name = parts[-1]
    top = parts[0] if len(parts) > 1 else ""
    suffix = name[name.rfind("."):] if name.rfind(".") > 0 else ""
    if len(parts) == 1 and name in CONFIGURATION_FILES:
        return FileCategory.CONFIGURATION
    if top == ".dagctl" or name in INFRASTRUCTURE_NAMES or fnmatch(name, "requirements*.txt"):
        return FileCategory.INFRASTRUCTURE
    if top == "models":
        if suffix in (".sql", ".py"):
            return FileCategory.MODEL
        return FileCategory.TEST if suffix in _YAML else FileCategory.OTHER
    if top == "tests":
        # Generic tests under tests/generic are macros: any node may use them.
        return FileCategory.MACRO if parts[1] == "generic" else FileCategory.TEST
    return {
        "macros": FileCategory.MACRO,
        "seeds": FileCategory.SEED,
        "snapshots": FileCategory.SNAPSHOT,
        "analyses": FileCategory.ANALYSIS,
    }.get(top, FileCategory.OTHER)


_WHITESPACE = re.compile(r"\s")  # what `str.isspace` calls whitespace, as one scan


def get_unselectable_reason(path: str) -> str | None:
    """Why dbt's `path:` selector cannot name `path` exactly, or `None` when `build_path_selector` can.

    Whitespace and commas split dbt's selection arguments and have no escape. A backslash marks a byte
    that is not UTF-8 (Git adapters write such bytes as `\\xNN`), which dbt cannot be given.

    Example: `get_unselectable_reason("models/my model.sql")` is `"it contains whitespace"`.
    """
    if _WHITESPACE.search(path):
        return "it contains whitespace"
    if "," in path:
        return "it contains a comma"
    if "\\" in path or not path.isprintable():
        return "it contains a backslash, a control character or a byte that is not UTF-8"
    return None


def build_path_selector(path: str, *, include_downstream: bool = False) -> str:
    """The dbt selection criterion that selects exactly the file `path` (see `get_unselectable_reason`).

    Example: `build_path_selector("models/a*[1]+.sql")` is `"path:models/a[*][[]1][+].sql"`.
    """
    escaped = path.translate(_ESCAPE_TABLE)
    return f"path:{escaped}{'+' if include_downstream else ''}"


def build_file_change(
    path: str, change_type: ChangeType | str, old_path: str | None = None
) -> FileChange:
    """A `FileChange` with its category filled in."""
    # Every field is already typed here: skip validation, which dominates detect on large change sets.
    return FileChange.model_construct(
        path=path, change_type=ChangeType(change_type), category=categorize_path(path), old_path=old_path
    )


def build_dbt_scope(
    changes: Sequence[FileChange], *, has_base: bool, include_downstream: bool = False,
    is_base_gone: bool = False,
) -> DbtScope:
    """Decides the scope of a dbt plan from its changed files.

    `is_base_gone`: the environment's deployed commit no longer exists (a force-push rewrote the history),
    so `changes` are every file of the target and only a full build is truthful.

    Example:
        >>> build_dbt_scope([build_file_change("models/a.sql", "modified")], has_base=True).selection
        ('path:models/a.sql',)
    """
    removed = _removed_nodes(changes)
    if is_base_gone:
        return DbtScope(scope=Scope.ALL, reason="the deployed commit is no longer in the repository: full build")
    if not has_base:
        return DbtScope(
            scope=Scope.ALL, reason="first deployment of this environment: full build", removed=removed
        )
    # A macro renamed out of `macros/` is gone for every node, like a deleted one: a rename counts with the
    # category it had before as well as the one it has now.
    categories = {c.category for c in changes} | {
        categorize_path(c.old_path) for c in changes if c.change_type is ChangeType.RENAMED and c.old_path
    }
    global_changes = sorted(category.value for category in categories & GLOBAL)
    if global_changes:
        return DbtScope(
            scope=Scope.ALL,
            reason=f"{' and '.join(global_changes)} changed: any node may be affected, full build",
            removed=removed,
        )
    selected = [change.path for change in sorted(changes, key=lambda c: c.path)
                if change.category in SELECTABLE and not change.is_removal]
    unselectable = [(path, reason) for path in selected if (reason := get_unselectable_reason(path))]
    if unselectable:
        path, why = unselectable[0]
        others = f" (and {len(unselectable) - 1} more such file(s))" if len(unselectable) > 1 else ""
        return DbtScope(
            scope=Scope.ALL, removed=removed,
            reason=f"dbt's path: selector cannot select {path!r} exactly, {why}{others}: full build",
        )
    if len(selected) > MAX_SELECTED_FILES:
        return DbtScope(
            scope=Scope.ALL, removed=removed,
            reason=f"{len(selected)} files to select, more than {MAX_SELECTED_FILES}: full build",
        )
    selection = tuple(build_path_selector(path, include_downstream=include_downstream) for path in selected)
    if selection:
        downstream = " and their downstream nodes" if include_downstream else ""
        return DbtScope(
            scope=Scope.SELECTIVE,
            reason=f"only models, tests, seeds or snapshots changed: builds the {len(selection)} "
            f"changed file(s){downstream}",
            selection=selection,
            removed=removed,
        )
    if removed:
        reason = "only removals: nothing to select, the image is rebuilt"
    elif changes:
        reason = "nothing dbt builds changed: the image is rebuilt, no dbt command runs"
    else:
        reason = "no file changed: the image is rebuilt, no dbt command runs"
    return DbtScope(scope=Scope.BUILD_ONLY, reason=reason, removed=removed)


def _removed_nodes(changes: Iterable[FileChange]) -> tuple[str, ...]:
    removed = []
    for change in changes:
        if change.is_removal and change.category in SELECTABLE - {FileCategory.TEST}:
            removed.append(change.path)
        elif change.change_type is ChangeType.RENAMED and change.old_path:
            if categorize_path(change.old_path) in SELECTABLE - {FileCategory.TEST}:
                removed.append(change.old_path)
    return tuple(sorted(removed))


def build_dbt_commands(
    commands: Sequence[Sequence[str]], scope: DbtScope, *, target: str
) -> tuple[tuple[str, ...], ...]:
    """The exact dbt command lines a plan runs (argv lists), or none for `build_only`.

    The profiles folder is not part of the command line: each backend points `DBT_PROFILES_DIR` at its
    own copy, so the approved command line is the same locally and in a pod.

    A selective command fails, naming the criterion, when one of its criteria selects no node
    (`NO_EMPTY_SELECTION`).

    Example: `(("dbt", "build", "--target", "prod", "--warn-error-options",
    '{"error":["NoNodesForSelectionCriteria"]}', "--select", "path:models/a.sql"),)`.
    """
    if not scope.requires_dbt:
        return ()
    built = []
    for argv in commands:
        line = [*argv, "--target", target]
        if scope.scope is Scope.SELECTIVE:
            line += [*NO_EMPTY_SELECTION, "--select", *scope.selection]
        built.append(tuple(line))
    return tuple(built)
