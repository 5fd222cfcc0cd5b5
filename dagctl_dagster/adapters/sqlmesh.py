"""SQLMesh plans through SQLMesh's Python API: explain, verify-then-apply, run and janitor.

Everything goes through `sqlmesh.Context`: the plan is built with `Context.plan_builder(...).build()` and
applied with `Context.apply(plan)`. SQLMesh's console is replaced by `_ProgressConsole`, which never
prompts: it turns SQLMesh's progress callbacks into log lines and per-model events. Side effects:

- `explain_sqlmesh_plan` never applies anything and never writes to the warehouse. It reads the state
  database (and, on an empty one, lets SQLMesh create its state tables), runs the project's unit tests on
  SQLMesh's test connection (an in-memory DuckDB by default) and writes SQLMesh's model cache (`.cache`)
  in the project folder.
- `apply_sqlmesh_plan` rebuilds the plan on the same files and compares fingerprints before anything is
  written: a stale plan is refused with nothing applied.

The project folder is a snapshot of one commit (a fresh folder per commit), so the warehouse and the state
database must live elsewhere: the project's own `config.yaml` names them, typically through
`{{ env_var('...') }}`, and any setting can be overridden with `SQLMESH__...` environment variables, e.g.
a Postgres state database in production:

    SQLMESH__GATEWAYS__DUCKDB__STATE_CONNECTION__TYPE=postgres
    SQLMESH__GATEWAYS__DUCKDB__STATE_CONNECTION__HOST=state-db.internal
    SQLMESH__GATEWAYS__DUCKDB__STATE_CONNECTION__DATABASE=sqlmesh_state
    SQLMESH__GATEWAYS__DUCKDB__STATE_CONNECTION__USER=sqlmesh
    SQLMESH__GATEWAYS__DUCKDB__STATE_CONNECTION__PASSWORD=...   # from a secret

DuckDB state is fine for the demo and for tests; it allows one writer at a time and lives on one disk, so a
cluster needs Postgres (see docs/sqlmesh.md). Every call here holds an exclusive lock per DuckDB file of the
gateway (`<file>.dagctl-lock`) while SQLMesh works, so calls that share a database, from any environment
and any process on the machine, take turns instead of failing on DuckDB's lock. Telemetry is always
switched off.

SQLMesh's console is process-global: these functions install theirs for the duration of a call, so run
them one at a time per process (Dagster runs each step in its own process).
"""

from __future__ import annotations

import fcntl
import io
import os
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime
from difflib import unified_diff
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console as RichConsole
from sqlmesh.core import analytics
from sqlmesh.core.config import Config
from sqlmesh.core.config.loader import load_configs
from sqlmesh.core.console import Console, NoopConsole, TerminalConsole, get_console, set_console
from sqlmesh.core.context import Context
from sqlmesh.core.environment import EnvironmentNamingInfo
from sqlmesh.core.snapshot.definition import model_display_name
from sqlmesh.utils.date import make_inclusive, to_ds, to_ts
from sqlmesh.utils.errors import ConflictingPlanError, NoChangesPlanError, SQLMeshError

from ..core.errors import (
    DagctlError,
    DagctlPlanError,
    DagctlStalePlanError,
    DagctlStateLockedError,
    DagctlStepError,
)
from ..core.sqlmesh_plan import BackfillInterval, BackfillMode, ModelChange, SqlmeshChangeSet

if TYPE_CHECKING:
    from sqlmesh.core.context_diff import ContextDiff
    from sqlmesh.core.node import IntervalUnit
    from sqlmesh.core.plan import Plan
    from sqlmesh.core.snapshot import Snapshot
    from sqlmesh.core.test.result import ModelTextTestResult

LogFn = Callable[[str], None]
ExecutionTime = datetime | str | None

_PROD_NAMING = EnvironmentNamingInfo()
_QUOTED_PART = re.compile(r'"((?:[^"]|"")*)"')


def _ignore(_: str) -> None:
    return None


def explain_sqlmesh_plan(
    project_dir: Path,
    environment: str,
    *,
    gateway: str | None = None,
    execution_time: ExecutionTime = None,
    log: LogFn = _ignore,
) -> SqlmeshChangeSet:
    """SQLMesh's plan of `environment` for the project in `project_dir`, as a change set. Never applies.

    Args:
        project_dir: The SQLMesh project folder (a snapshot of the target commit).
        environment: The SQLMesh environment: `prod`, `dev`, ...
        gateway: The SQLMesh gateway; default: the project's `default_gateway`.
        execution_time: "Now" for SQLMesh (tests pin it); default: the current time.
        log: Receives SQLMesh's warnings and status lines.

    A commit whose unit tests fail gives no plan: the change set then has no changes and names the failed
    tests (`failed_tests`) with SQLMesh's own report of them, row diffs included (`test_output`).

    Raises:
        DagctlPlanError: SQLMesh cannot build the plan (invalid project, unreachable state database) or
            some directly modified models are uncategorized.
        DagctlStateLockedError: A process outside dagctl holds the DuckDB state database.

    Example:
        change_set = explain_sqlmesh_plan(Path("/snapshots/abc123"), "prod")
        change_set.fingerprint  # recorded at detect, passed to apply_sqlmesh_plan at execute
    """
    console = _ProgressConsole(log)
    with _sqlmesh_context(
        project_dir, gateway, console, purpose=f"explain {environment}", log=log
    ) as context:
        try:
            plan = _build_plan(context, environment, execution_time, validate=True)
        except DagctlPlanError:
            if console.test_result is None or console.test_result.wasSuccessful():
                raise
            env = context.state_reader.get_environment(environment)
            return SqlmeshChangeSet(
                environment=environment,
                base_plan_id=env.plan_id if env else None,
                has_changes=False,
                failed_tests=_failed_test_names(console.test_result, project_dir),
                test_output=console.test_output,
            )
        change_set = _build_change_set(context, environment, plan)
    _ensure_categorized(change_set)
    return change_set


def apply_sqlmesh_plan(
    project_dir: Path,
    environment: str,
    *,
    expected_fingerprint: str,
    gateway: str | None = None,
    execution_time: ExecutionTime = None,
    log: LogFn = _ignore,
    on_model_evaluated: Callable[[BackfillInterval], None] = _ignore,
) -> SqlmeshChangeSet:
    """Rebuild the plan, check it is the approved one, then apply it (single phase).

    The plan is rebuilt on the same files and its fingerprint compared with `expected_fingerprint` (the
    `SqlmeshChangeSet.fingerprint` recorded at `detect`) before anything is written. Unit tests and the
    linter are not run again: they ran at `detect` on the same commit. If another plan reaches the
    environment while this one is being applied, SQLMesh refuses to update the environment record and
    this raises `DagctlStalePlanError` too (physical tables it created are left to the janitor).

    Args:
        project_dir: The SQLMesh project folder (a snapshot of the approved commit).
        environment: The SQLMesh environment.
        expected_fingerprint: The approved change set's fingerprint.
        gateway: The SQLMesh gateway; default: the project's `default_gateway`.
        execution_time: "Now" for SQLMesh (tests pin it); default: the current time.
        log: Receives one progress line per step and per evaluated batch.
        on_model_evaluated: Called once per model whose intervals were all evaluated, with what was
            evaluated (the model, its first and last interval, the mode).

    Returns:
        The change set that was applied (the rebuilt one, equal in fingerprint to the approved one).

    Raises:
        DagctlStalePlanError: The fingerprint differs or the environment moved; nothing was applied.
        DagctlPlanError: SQLMesh cannot build the plan, or it has uncategorized changes.
        DagctlStepError: Applying failed (a model or an audit failed, the warehouse is unreachable).

    Example:
        apply_sqlmesh_plan(Path("/snapshots/abc123"), "prod", expected_fingerprint=spec.sqlmesh.fingerprint,
                           log=context.log.info, on_model_evaluated=report_materialization)
    """
    console = _ProgressConsole(log, on_model_evaluated)
    with _sqlmesh_context(
        project_dir, gateway, console, purpose=f"apply {environment}", log=log
    ) as context:
        plan = _build_plan(context, environment, execution_time, validate=False)
        change_set = _build_change_set(context, environment, plan)
        if change_set.fingerprint != expected_fingerprint:
            raise DagctlStalePlanError(_stale_message(change_set, expected_fingerprint))
        _ensure_categorized(change_set)
        if plan is None or not change_set.has_changes:
            log(f"Nothing to apply: environment '{environment}' already matches this commit.")
            return change_set
        log(
            f"Applying SQLMesh plan {plan.plan_id} to environment '{environment}': "
            f"{len(change_set.changes)} model change(s), "
            f"{len({b.model for b in change_set.backfills})} model(s) to backfill."
        )
        try:
            context.apply(plan)
        except ConflictingPlanError as error:
            raise DagctlStalePlanError(
                f"The SQLMesh plan for environment '{environment}' is stale: another plan was applied "
                f"to it while this one was running, so SQLMesh left the environment unchanged ({error}). "
                "Explain the plan again and have it approved."
            ) from error
        except SQLMeshError as error:
            detail = "; ".join(console.failures) or str(error)
            raise DagctlStepError(
                f"Applying the SQLMesh plan to environment '{environment}' failed: {detail}. "
                "Fix the model and push a new commit, or retry the plan if the failure was transient."
            ) from error
        log(f"Backfilled at execution: {_describe_backfill(console.evaluated)}.")
        log(f"Applied SQLMesh plan {plan.plan_id} to environment '{environment}'.")
    return change_set


def _describe_backfill(intervals: list[BackfillInterval] | tuple[BackfillInterval, ...]) -> str:
    if not intervals:
        return "nothing"
    return ", ".join(
        f"{i.model} [{i.start}{'' if i.start == i.end else ' - ' + i.end}]"
        for i in sorted(intervals, key=lambda i: i.model)
    )


def run_sqlmesh(
    project_dir: Path,
    environment: str,
    *,
    gateway: str | None = None,
    execution_time: ExecutionTime = None,
    log: LogFn = _ignore,
    on_model_evaluated: Callable[[BackfillInterval], None] = _ignore,
) -> None:
    """`sqlmesh run <environment>`: evaluate the intervals that are due for what is deployed.

    It evaluates the models the environment holds in state (only the project's macros and config come
    from `project_dir`), so run it on the environment's deployed commit, never on a branch head.

    Raises:
        DagctlStepError: The environment does not exist, or a model or an audit failed.
    """
    console = _ProgressConsole(log, on_model_evaluated)
    with _sqlmesh_context(
        project_dir, gateway, console, DagctlStepError, purpose=f"sqlmesh run {environment}", log=log
    ) as context:
        try:
            status = context.run(environment, execution_time=execution_time)
        except SQLMeshError as error:
            raise DagctlStepError(f"sqlmesh run {environment} failed: {error}") from error
    if status.is_failure:
        raise DagctlStepError(
            f"sqlmesh run {environment} failed: some models or audits failed (see the log lines above)."
        )


def run_sqlmesh_janitor(project_dir: Path, *, gateway: str | None = None, log: LogFn = _ignore) -> None:
    """`sqlmesh janitor`: drop expired environments and the tables no environment uses any more.

    Raises:
        DagctlStepError: The janitor failed.
    """
    with _sqlmesh_context(
        project_dir, gateway, _ProgressConsole(log), DagctlStepError, purpose="sqlmesh janitor", log=log
    ) as context:
        try:
            context.run_janitor(ignore_ttl=False)
        except SQLMeshError as error:
            raise DagctlStepError(f"sqlmesh janitor failed: {error}") from error
    log("Janitor finished.")


@contextmanager
def _sqlmesh_context(
    project_dir: Path,
    gateway: str | None,
    console: Console,
    error_type: type[DagctlError] = DagctlPlanError,
    *,
    purpose: str,
    log: LogFn = _ignore,
) -> Iterator[Context]:
    """SQLMesh's context of the project, holding the lock of every DuckDB file its gateway uses.

    DuckDB allows one writer per file, and SQLMesh opens its files for writing: two SQLMesh processes on
    one DuckDB state database (dev planning while prod applies) fail with DuckDB's "Conflicting lock".
    So every call takes an exclusive lock per DuckDB file of the gateway (warehouse and state), across
    environments, and waits for it: steps that share a state database run one after the other. A file
    held by a process outside dagctl still fails, as `DagctlStateLockedError` saying what to do.
    """
    analytics.disable_analytics()
    previous = get_console()
    # Installed globally before the Context exists, so loading warnings reach it as well.
    set_console(console)
    context: Context | None = None
    try:
        with ExitStack() as locks:
            try:
                configs = load_configs(None, Config, [project_dir])
                for path in _duckdb_files(configs, gateway):
                    locks.enter_context(_file_lock(path, purpose, log))
                context = Context(paths=str(project_dir), gateway=gateway, config=configs)
            except SQLMeshError as error:
                _raise_if_locked(error)
                raise error_type(f"SQLMesh cannot load the project in {project_dir}: {error}") from error
            except Exception as error:  # DuckDB's own errors are not SQLMesh's
                _raise_if_locked(error)
                raise
            try:
                yield context
            except Exception as error:
                _raise_if_locked(error)
                raise
            finally:
                context.close()
    finally:
        set_console(previous)


_LOCK_CONFLICT = "Could not set lock on file"


def _raise_if_locked(error: BaseException) -> None:
    """Turns DuckDB's lock conflict, wherever it is in the chain of causes, into what it is."""
    seen: BaseException | None = error
    while seen is not None:
        if _LOCK_CONFLICT in str(seen):
            detail = str(seen).split(". See also")[0]
            raise DagctlStateLockedError(
                f"SQLMesh cannot open its DuckDB database: {detail}. A process outside dagctl (a "
                "`sqlmesh` command, a notebook, `sqlmesh ui`) holds DuckDB's single-writer lock on it "
                "(dagctl's own steps wait for each other). Stop or wait for that process, then retry: "
                "`dagctl plans retry <plan id>` for a failed plan; a schedule runs again at its next "
                "tick. To let environments work side by side, keep SQLMesh's state in Postgres "
                "(docs/sqlmesh.md)."
            ) from error
        seen = seen.__cause__ or seen.__context__


def _duckdb_files(configs: dict[Path, Config], gateway: str | None) -> list[Path]:
    """The DuckDB files of the gateway's warehouse and state connections, sorted (the lock order)."""
    files: set[Path] = set()
    for config in configs.values():
        connections = [config.get_connection(gateway), config.get_state_connection(gateway)]
        for connection in connections:
            if connection is None or connection.type_ != "duckdb":
                continue
            targets = [getattr(connection, "database", None)]
            targets += [getattr(c, "path", c) for c in (getattr(connection, "catalogs", None) or {}).values()]
            for target in targets:
                if isinstance(target, str) and target and target != ":memory:" and "://" not in target \
                        and not target.startswith("md:"):
                    files.add(Path(target).absolute())
    return sorted(files)


@contextmanager
def _file_lock(database: Path, purpose: str, log: LogFn) -> Iterator[None]:
    """An exclusive lock on `<database>.dagctl-lock`, waited for; its file names the holder."""
    if not database.parent.is_dir():
        yield  # DuckDB will say the folder is missing
        return
    lock_path = database.with_name(f"{database.name}.dagctl-lock")
    with open(lock_path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another step"
            log(f"Waiting for {database}: {holder} is using it (DuckDB allows one writer at a time, so "
                "SQLMesh steps that share this database run one after the other).")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            handle.truncate(0)
            handle.write(f"{purpose} (pid {os.getpid()})\n")
            handle.flush()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _build_plan(
    context: Context, environment: str, execution_time: ExecutionTime, *, validate: bool
) -> Plan | None:
    """SQLMesh's plan, or None when there is nothing to plan (a new environment without changes)."""
    try:
        return context.plan_builder(
            environment,
            execution_time=execution_time,
            skip_tests=not validate,
            skip_linter=not validate,
        ).build()
    except NoChangesPlanError:
        return None
    except SQLMeshError as error:
        raise DagctlPlanError(
            f"SQLMesh cannot build the plan for environment '{environment}': {error}"
        ) from error


def _display(fqn: str, default_catalog: str | None, dialect: str | None = None) -> str:
    """A model's readable name: its fully qualified name without quotes and without the default catalog.

    SQLMesh's `model_display_name` parses the name with sqlglot, a noticeable cost for every model of a
    large plan; SQLMesh's fully qualified names are quoted identifiers joined by dots, so they are split
    directly and only unusual names take SQLMesh's path.
    """
    parts = [part.replace('""', '"') for part in _QUOTED_PART.findall(fqn)]
    if not parts or ".".join(f'"{part.replace(chr(34), chr(34) * 2)}"' for part in parts) != fqn:
        return model_display_name(fqn, _PROD_NAMING, default_catalog, dialect)
    if len(parts) == 3 and parts[0] == default_catalog:
        parts = parts[1:]
    return ".".join(parts)


def _category(snapshot: Snapshot) -> str | None:
    return snapshot.change_category.name.lower() if snapshot.change_category else None


def _build_change_set(context: Context, environment: str, plan: Plan | None) -> SqlmeshChangeSet:
    if plan is None:
        env = context.state_reader.get_environment(environment)
        return SqlmeshChangeSet(
            environment=environment, base_plan_id=env.plan_id if env else None, has_changes=False
        )

    diff = plan.context_diff
    catalog = context.default_catalog
    names = {s_id: _display(s_id.name, catalog, context.default_dialect) for s_id in plan.snapshots}
    parents_of: dict[str, set[str]] = defaultdict(set)
    for direct_id, indirect_ids in plan.indirectly_modified.items():
        for indirect_id in indirect_ids:
            parents_of[indirect_id.name].add(names[direct_id])

    changes: list[ModelChange] = []
    for s_id in sorted(diff.added, key=lambda s: names[s]):
        snapshot = plan.snapshots[s_id]
        changes.append(
            ModelChange(
                name=names[s_id],
                kind="added",
                category=_category(snapshot),
                forward_only=snapshot.is_forward_only,
            )
        )
    for s_id, table_info in sorted(diff.removed_snapshots.items(), key=lambda item: item[0].name):
        changes.append(
            ModelChange(name=_display(table_info.name, catalog, context.default_dialect), kind="removed")
        )
    modified = sorted(
        ((current.snapshot_id, current) for current, _ in diff.modified_snapshots.values()),
        key=lambda item: names[item[0]],
    )
    for s_id, snapshot in modified:
        # Modified but not because of a directly modified parent: its own metadata changed. (Checked this
        # way because `Plan.metadata_updated` compares every modified snapshot again.)
        direct = s_id in plan.directly_modified or s_id.name not in parents_of
        changes.append(
            ModelChange(
                name=names[s_id],
                kind="directly_modified" if direct else "indirectly_modified",
                category=_category(snapshot),
                forward_only=snapshot.is_forward_only,
                parents=() if direct else tuple(sorted(parents_of.get(s_id.name, ()))),
                diff=_model_diff(diff, s_id.name, names[s_id], environment) if direct else None,
            )
        )

    backfills = _backfills(plan, names)
    return SqlmeshChangeSet(
        environment=environment,
        base_plan_id=diff.previous_plan_id,
        # What `Context.apply` checks before doing anything, without computing missing intervals twice.
        has_changes=diff.has_changes
        or bool(backfills)
        or bool(plan.restatements)
        or plan.has_unmodified_unpromoted,
        changes=tuple(changes),
        backfills=backfills,
        snapshots=tuple(
            sorted(
                (names[s_id], s_id.identifier, _category(snapshot))
                for s_id, snapshot in plan.snapshots.items()
            )
        ),
        uncategorized=tuple(sorted(names[snapshot.snapshot_id] for snapshot in plan.uncategorized)),
    )


def _definition_lines(node: Any) -> list[str]:
    return [
        line
        for expression in node.render_definition(render_query=False)
        for line in expression.sql(pretty=True, comments=True, dialect=node.dialect).split("\n")
    ]


def _model_diff(diff: ContextDiff, fqn: str, name: str, environment: str) -> str | None:
    """SQLMesh's unified diff of a modified model, with named sides.

    SQLMesh diffs definitions without comments, and a model's description is rendered as a comment: a
    description-only change would show an empty diff. Then the definitions are diffed with comments.
    """
    # Every real line of a unified diff starts with a marker (" ", "+", "-", "@"): empty lines are noise.
    lines = [line for line in diff.text_diff(fqn).split("\n") if line]
    if not lines:
        new, old = diff.modified_snapshots[fqn]
        if not (new.is_model and old.is_model):
            return None
        lines = list(unified_diff(_definition_lines(old.node), _definition_lines(new.node), lineterm=""))
    if not lines:
        return None
    named = {"--- ": f"--- {name} ({environment})", "+++ ": f"+++ {name} (this plan)"}
    return "\n".join(named.get(line, line) for line in lines)


def _readable_range(start: int, end: int, unit: IntervalUnit | None) -> tuple[str, str]:
    """`[start, end)` in epoch milliseconds as inclusive ISO dates (date-times below daily)."""
    first, last = make_inclusive(start, end)
    if unit is None or unit.is_date_granularity:
        return to_ds(first), to_ds(last)
    # `to_ts` may carry a time zone suffix: seconds precision is what a reviewer reads.
    return to_ts(first)[:19], to_ts(last)[:19]


def _backfill_mode(snapshot: Snapshot) -> BackfillMode:
    if snapshot.is_incremental:
        return "incremental"
    return "recreate_view" if snapshot.is_view else "full_refresh"


def _backfills(plan: Plan, names: dict[Any, str]) -> tuple[BackfillInterval, ...]:
    if plan.skip_backfill or plan.empty_backfill:
        return ()
    backfills = []
    for missing in plan.missing_intervals:
        snapshot = plan.snapshots[missing.snapshot_id]
        for start, end in missing.merged_intervals:
            first, last = _readable_range(start, end, snapshot.node.interval_unit)
            backfills.append(
                BackfillInterval(
                    model=names[missing.snapshot_id], start=first, end=last, mode=_backfill_mode(snapshot)
                )
            )
    return tuple(sorted(backfills, key=lambda b: (b.model, b.start)))


def _failed_test_names(result: ModelTextTestResult, project_dir: Path) -> tuple[str, ...]:
    """`tests/test_full_model.yaml::test_full_model` for every failed or erroring unit test."""
    names = []
    for test in result.get_fail_and_error_tests():
        path = Path(test.path) if test.path else None
        if path is not None and path.is_absolute() and path.is_relative_to(project_dir.absolute()):
            path = path.relative_to(project_dir.absolute())
        names.append(f"{path}::{test.test_name}" if path else test.test_name)
    return tuple(sorted(names))


def _ensure_categorized(change_set: SqlmeshChangeSet) -> None:
    if change_set.uncategorized:
        models = ", ".join(change_set.uncategorized)
        raise DagctlPlanError(
            f"SQLMesh cannot categorize the changes of {len(change_set.uncategorized)} model(s) in "
            f"environment '{change_set.environment}': {models}. Plans are built without prompts, so "
            "every change needs a category: turn automatic categorization on in the project's "
            "config.yaml (`plan: {auto_categorize_changes: {sql: full, python: full, seed: full, "
            "external: full}}`), or make the change explicit (e.g. `forward_only true` in the model), "
            "and push a new commit."
        )


def _stale_message(change_set: SqlmeshChangeSet, expected_fingerprint: str) -> str:
    environment = change_set.environment
    where = (
        f"Environment '{environment}' is now at SQLMesh plan {change_set.base_plan_id}"
        if change_set.base_plan_id
        else f"Environment '{environment}' does not exist"
    )
    return (
        f"The SQLMesh plan for environment '{environment}' is stale: SQLMesh now plans a different change "
        f"(fingerprint {change_set.fingerprint[:12]}, approved {expected_fingerprint[:12]}). {where}: "
        "another plan changed it since the approval, or the project's files differ from the approved "
        "commit. Nothing was applied; explain the plan again and have it approved."
    )


class _ProgressConsole(NoopConsole):
    """SQLMesh's console without prompts: progress as log lines, and one event per evaluated model.

    The scheduler evaluates batches on worker threads, so the counters are guarded by a lock; a model is
    reported once all of its batches succeeded.
    """

    def __init__(
        self, log: LogFn, on_model_evaluated: Callable[[BackfillInterval], None] = _ignore
    ) -> None:
        self._log = log
        self._on_model_evaluated = on_model_evaluated
        self._lock = threading.Lock()
        self._default_catalog: str | None = None
        self._batches_left: dict[str, int] = {}
        self._ranges: dict[str, tuple[str, str]] = {}
        self._failed: set[str] = set()
        self._audit_only = False
        self._creating = False
        self.failures: list[str] = []
        """One `model: first line of the error` entry per failed model."""
        self.evaluated: list[BackfillInterval] = []
        """What was actually evaluated, one entry per model whose batches all succeeded."""
        self.test_result: ModelTextTestResult | None = None
        self.test_output = ""
        """SQLMesh's own report of the unit tests (failures with their row diffs), as plain text."""

    def _name(self, fqn: str) -> str:
        return _display(fqn, self._default_catalog, getattr(self, "dialect", None))

    def start_plan_evaluation(self, plan: Any) -> None:
        self._log(f"Evaluating SQLMesh plan {plan.plan_id}.")

    def start_creation_progress(
        self, snapshots: list[Any], environment_naming_info: Any, default_catalog: str | None
    ) -> None:
        self._default_catalog = default_catalog
        self._creating = True
        self._log(f"Creating physical tables for {len(snapshots)} model(s).")

    def stop_creation_progress(self, success: bool = True) -> None:
        # With nothing to create SQLMesh never starts this progress, logs its "skip" message and then
        # stops it with success=False: that is not a failure, and was already said.
        if not self._creating:
            return
        self._creating = False
        self._log("Physical tables created." if success else "Creating physical tables failed.")

    def log_test_results(self, result: ModelTextTestResult, target_dialect: str) -> None:
        self.test_result = result
        if result.wasSuccessful():
            if result.testsRun:
                self._log(f"Unit tests: {result.testsRun} passed.")
            return
        buffer = io.StringIO()
        rich = RichConsole(file=buffer, width=120, color_system=None, force_terminal=False)
        TerminalConsole(console=rich, dialect=target_dialect).log_test_results(result, target_dialect)
        self.test_output = "\n".join(line.rstrip() for line in buffer.getvalue().strip("\n").split("\n"))
        for line in self.test_output.split("\n"):
            self._log(line)

    def start_evaluation_progress(
        self,
        batched_intervals: dict[Any, Any],
        environment_naming_info: Any,
        default_catalog: str | None,
        audit_only: bool = False,
    ) -> None:
        with self._lock:
            self._default_catalog = default_catalog
            self._audit_only = audit_only
            self._batches_left = {
                snapshot.name: len(intervals) for snapshot, intervals in batched_intervals.items()
            }
            self._ranges = {}
            self._failed = set()
        batches = sum(self._batches_left.values())
        what = "Auditing" if audit_only else "Evaluating"
        self._log(f"{what} {len(self._batches_left)} model(s) in {batches} batch(es).")

    def update_snapshot_evaluation_progress(
        self,
        snapshot: Any,
        interval: Any,
        batch_idx: int,
        duration_ms: int | None,
        num_audits_passed: int,
        num_audits_failed: int,
        audit_only: bool = False,
        execution_stats: Any = None,
        auto_restatement_triggers: Any = None,
    ) -> None:
        name = self._name(snapshot.name)
        first, last = _readable_range(*interval, snapshot.node.interval_unit)
        period = first if first == last else f"{first} - {last}"
        audits = ""
        if num_audits_passed or num_audits_failed:
            audits = f", audits {num_audits_passed} passed" + (
                f" / {num_audits_failed} failed" if num_audits_failed else ""
            )
        with self._lock:
            if duration_ms is None:
                self._failed.add(snapshot.name)
                self._log(f"{name} [{period}] failed")
                return
            self._log(f"{name} [{period}] evaluated in {duration_ms} ms{audits}")
            earliest, latest = self._ranges.get(snapshot.name, (first, last))
            self._ranges[snapshot.name] = (min(earliest, first), max(latest, last))
            left = self._batches_left.get(snapshot.name, 1) - 1
            self._batches_left[snapshot.name] = left
            if left == 0 and snapshot.name not in self._failed and not (audit_only or self._audit_only):
                start, end = self._ranges[snapshot.name]
                evaluated = BackfillInterval(model=name, start=start, end=end, mode=_backfill_mode(snapshot))
                self.evaluated.append(evaluated)
                self._on_model_evaluated(evaluated)

    def stop_evaluation_progress(self, success: bool = True) -> None:
        self._log("Evaluation finished." if success else "Evaluation failed.")

    def start_promotion_progress(
        self, snapshots: list[Any], environment_naming_info: Any, default_catalog: str | None
    ) -> None:
        self._log(
            f"Updating the virtual layer of environment '{environment_naming_info.name}' "
            f"({len(snapshots)} view(s))."
        )

    def stop_promotion_progress(self, success: bool = True) -> None:
        self._log("Virtual layer updated." if success else "Updating the virtual layer failed.")

    def start_cleanup(self, ignore_ttl: bool) -> bool:
        self._log("Janitor: removing expired environments and unused tables.")
        return True

    def update_cleanup_progress(self, object_name: str) -> None:
        self._log(f"Janitor: removed {object_name}")

    def log_status_update(self, message: str) -> None:
        self._log(message)

    def log_success(self, message: str) -> None:
        self._log(message.strip())

    def log_error(self, message: str, *args: Any, **kwargs: Any) -> None:
        self._log(f"ERROR: {message}")

    def log_warning(self, short_message: str, long_message: str | None = None) -> None:
        self._log(f"WARNING: {long_message or short_message}")

    def log_skipped_models(self, snapshot_names: set[str]) -> None:
        if snapshot_names:
            skipped = ", ".join(sorted(self._name(name) for name in snapshot_names))
            self._log(f"Skipped because an upstream model failed: {skipped}")

    def log_failed_models(self, errors: list[Any]) -> None:
        for error in errors:
            name = self._name(error.node.snapshot_name)
            cause = str(error.__cause__ or error).strip()
            self.failures.append(f"{name}: {cause.splitlines()[0] if cause else 'failed'}")
            self._log(f"FAILED {name}: {cause}")
