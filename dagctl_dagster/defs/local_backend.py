"""The local backend: steps run as processes on the machine running Dagster (the embedded default).

dbt's JSON log lines are read with dagster-dbt's event class, which gives structured dbt events: every dbt
log line is streamed into the run's logs as it happens, and every model built becomes an asset
materialization. Other steps (SQLMesh's verify-then-apply entrypoint) run as dagster-pipes subprocesses,
so the events they report reach Dagster the same way they do from a Kubernetes pod.

Every step process starts behind the step guard (`dagctl_dagster.runner.step_guard`): its environment is
exactly `build_process_env(step, os.environ)` (the allowlist and what the deployment config declares for
the step) plus the few variables dagster-dbt or dagster-pipes set for their own protocol; it runs in its
own process group, killed when the run worker dies; and it records the argv it started (`stop_run_steps`
uses that record to make sure nothing of a dead run still runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetMaterialization,
    DagsterExecutionInterruptedError,
    MaterializeResult,
    OpExecutionContext,
    PipesSubprocessClient,
)
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings
from dagster_dbt.core.dbt_cli_event import DbtCoreCliEventMessage

from ..core.errors import DagctlStepError
from ..core.steps import StepSpec, build_process_env
from ..runner.step_guard import build_guard_argv, get_start_time, is_group_alive, is_running, kill_group

# Output of the last lines of a failed dbt run kept in the error message.
TAIL_LINES = 20
# Plain-text lines of dbt's output kept for its error block.
ERROR_LINES = 200
# How long a terminated run gives dbt to stop after SIGINT before its process group is killed.
INTERRUPT_GRACE_SECONDS = 10
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TIMESTAMP = re.compile(r"^\d\d:\d\d:\d\d\s+")
# The guard's record of a step (argv, process group), in the step's folder of the run's folder.
STEP_RECORD = "dagctl-step.json"
# Variables dagster-pipes sets for its own protocol (context and messages channels).
PIPES_PREFIXES = ("DAGSTER_PIPES_",)


class PlanDbtTranslator(DagsterDbtTranslator):
    """dbt nodes become assets `<project>/<environment>/<node name>`: one warehouse per target."""

    def __init__(self, project: str, environment: str):
        super().__init__(settings=DagsterDbtTranslatorSettings(enable_asset_checks=False))
        self._prefix = [project, environment]

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        return AssetKey([*self._prefix, dbt_resource_props["name"]])


def build_local_step_env(step: StepSpec) -> dict[str, str]:
    """The whole environment of a step's local process: the allowlist and what the step declares.

    Nothing else of the code location's environment (the Git token, approvers' keys, another environment's
    passwords) reaches project code. Raises `DagctlStepError` when a declared secret is missing.
    """
    return build_process_env(step, os.environ)


def step_record_path(work_dir: Path) -> Path:
    """Where the guard of the step working in `work_dir` records its argv and process group."""
    return work_dir / STEP_RECORD


def read_step_record(work_dir: Path) -> dict[str, Any] | None:
    """`{"argv": [...], "pgid": N, "guard_pid": N}` of the step that worked in `work_dir`, if it started."""
    try:
        return json.loads(step_record_path(work_dir).read_text())
    except (OSError, ValueError):
        return None


def stop_step(work_dir: Path) -> bool:
    """Kills what is left of the step that worked in `work_dir` (its guard and process group).

    Returns whether anything of it was still running. Safe to call for a step that ended or never started;
    a pid the system has since given to another process is left alone (start times are compared).
    """
    record = read_step_record(work_dir)
    if record is None:
        return False
    group = _own_group(record)
    guard_alive = is_running(record["guard_pid"], record.get("guard_start"))
    alive = guard_alive or (group is not None and is_group_alive(group))
    if group is not None:
        kill_group(group)
    if guard_alive:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(record["guard_pid"], signal.SIGKILL)
    return alive


def stop_run_steps(run_dir: Path, *, timeout: float = 30.0) -> list[str]:
    """Kills every local step process a run left behind and waits until none is left.

    `run_dir` is the run's folder (`PlanRuntime.run_dir(run_id)`). Returns the names of the steps that were
    still running. Call it before recording that a dead run's plan failed: the plan is `failed` only once
    nothing of its execution runs. Raises `DagctlStepError` if a process survives SIGKILL for `timeout`.
    """
    stopped = []
    records = sorted(run_dir.glob(f"**/{STEP_RECORD}")) if run_dir.is_dir() else []
    for record in records:
        if stop_step(record.parent):
            stopped.append(record.parent.name)
    deadline = time.monotonic() + timeout
    for record in records:
        group = _own_group(read_step_record(record.parent) or {})
        while group is not None and is_group_alive(group):
            if time.monotonic() > deadline:
                raise DagctlStepError(f"step '{record.parent.name}' (process group {group}) still runs after "
                                      f"SIGKILL; stop it by hand: kill -9 -- -{group}")
            time.sleep(0.05)
    return stopped


def _own_group(record: Mapping[str, Any]) -> int | None:
    """The step's process group, unless its id now belongs to a group another process leads."""
    pgid = record.get("pgid")
    if not pgid:
        return None
    leader_start = get_start_time(pgid)
    return pgid if leader_start is None or leader_start == record.get("pgid_start") else None


@contextlib.contextmanager
def guarded_step(work_dir: Path | None):
    """Whatever way the step ends (done, failed, interrupted), nothing of it keeps running."""
    work_dir = work_dir or Path(tempfile.mkdtemp(prefix="dagctl-step-"))
    work_dir.mkdir(parents=True, exist_ok=True)
    step_record_path(work_dir).unlink(missing_ok=True)
    try:
        yield step_record_path(work_dir)
    finally:
        stop_step(work_dir)


def run_dbt_step(
    context: OpExecutionContext, step: StepSpec, *, translator: DagsterDbtTranslator, target_path: Path
) -> Iterator[Any]:
    """Runs one dbt command line of a plan in its snapshot, yielding Dagster events as dbt emits them.

    dbt is started with exactly the step's argv (its `--select` values untouched: dagster-dbt's resource
    would rewrite them) and exactly the step's environment (`build_local_step_env`) plus the variables
    that make dbt write JSON log lines and its artifacts to `target_path`, behind the step guard; its
    events are read with dagster-dbt's event class. Lines dbt prints as plain text (its errors before it
    has read its project) go to the run's log too. Raises `DagctlStepError` with dbt's own error message
    when dbt fails.
    """
    if step.argv[:1] != ("dbt",) or step.working_dir is None:
        raise DagctlStepError(f"step '{step.name}' is not a dbt command in a project folder: {step.argv}")
    env = {**build_local_step_env(step), **dbt_technical_env(target_path, Path(step.working_dir))}
    output = _DbtOutput()
    with guarded_step(target_path) as record:
        argv = build_guard_argv([dbt_executable(), *step.argv[1:]], keep=env, record=str(record))
        with subprocess.Popen(argv, cwd=step.working_dir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT) as process:
            assert process.stdout is not None
            results = _ResultEvents(target_path, translator)
            try:
                for event in output.read(context, process.stdout):
                    if event.is_result_event:
                        yield from results.add(event)
            except DagsterExecutionInterruptedError:
                # The run was terminated: dbt stops its queries on SIGINT; the guard forwards it.
                process.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=INTERRUPT_GRACE_SECONDS)
                raise
        yield from results.flush()
    if process.returncode != 0:
        raise DagctlStepError(f"`{' '.join(step.argv)}` failed: {output.error_text(target_path)}")


class _ResultEvents:
    """dbt's node results as Dagster events, as soon as dbt's manifest can be read.

    dbt writes manifest.json once it has parsed the project, before the first node runs (read then,
    instead of paying for a separate `dbt parse`), and writes it again at its end: a result that arrives
    while the file is being rewritten waits for the next one, or for dbt's exit (`flush`).
    """

    def __init__(self, target_path: Path, translator: DagsterDbtTranslator):
        self._target_path = target_path
        self._translator = translator
        self._manifest: dict[str, Any] | None = None
        self._waiting: list[DbtCoreCliEventMessage] = []

    def add(self, event: DbtCoreCliEventMessage) -> Iterator[Any]:
        self._waiting.append(event)
        if self._manifest is None:
            with contextlib.suppress(OSError, ValueError):
                self._manifest = json.loads((self._target_path / "manifest.json").read_text())
        if self._manifest is not None:
            yield from self.flush()

    def flush(self) -> Iterator[Any]:
        if self._waiting and self._manifest is None:
            self._manifest = json.loads((self._target_path / "manifest.json").read_text())
        waiting, self._waiting = self._waiting, []
        for event in waiting:
            yield from event.to_default_asset_events(
                manifest=self._manifest, dagster_dbt_translator=self._translator, target_path=self._target_path)


class _DbtOutput:
    """dbt's output: JSON log lines become dagster-dbt events, plain lines are kept for the error text."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.plain: deque[str] = deque(maxlen=ERROR_LINES)

    def read(self, context: OpExecutionContext, stdout) -> Iterator[DbtCoreCliEventMessage]:
        for raw_line in stdout:
            line = raw_line.decode("utf-8", errors="replace").rstrip()
            try:
                raw_event = json.loads(line)
                info = raw_event["info"]
            except (ValueError, KeyError, TypeError):
                line = _ANSI.sub("", line)
                if line.strip():
                    self.plain.append(line)
                    context.log.info(line)
                continue
            message = info.get("msg", "")
            if info.get("level") == "error" and message:
                self.errors.append(message)
            if message:
                (context.log.warning if info.get("level") in ("error", "warn") else context.log.info)(message)
            yield DbtCoreCliEventMessage(raw_event=raw_event, event_history_metadata={})

    def error_text(self, target_path: Path) -> str:
        """dbt's messages for the nodes that failed (run_results.json), else its whole error block."""
        results_file = target_path / "run_results.json"
        results = json.loads(results_file.read_text()).get("results", []) if results_file.exists() else []
        failed = [f"{r.get('unique_id')}: {r.get('message')}" for r in results
                  if r.get("status") in ("error", "fail")]
        if failed:
            return "; ".join(failed)
        if self.errors:
            return "\n".join(self.errors)
        return _error_block(list(self.plain)) or "dbt printed no error; see the run's logs"


def _error_block(lines: list[str]) -> str:
    """The block dbt prints after `Encountered an error:` (file, problem, the lines around it), without
    its timestamps, up to dbt's next timestamped line."""
    starts = [index for index, line in enumerate(lines) if "Encountered an error" in line]
    if not starts:
        return "\n".join(lines[-TAIL_LINES:])
    block = [_TIMESTAMP.sub("", lines[starts[-1]])]
    for line in lines[starts[-1] + 1:]:
        if _TIMESTAMP.match(line):
            break
        block.append(line)
    return "\n".join(block).strip()


def dbt_technical_env(target_path: Path, project_dir: Path) -> dict[str, str]:
    """What dagster-dbt needs dbt to do: JSON log lines on stdout, artifacts and logs in `target_path`."""
    return {"DBT_LOG_FORMAT": "json", "DBT_TARGET_PATH": str(target_path), "DBT_LOG_PATH": str(target_path),
            "DBT_PROJECT_DIR": str(project_dir), "PYTHONUNBUFFERED": "1", "DAGSTER_DBT_CLI": "true",
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}


def resolve_executable(name: str) -> str:
    """`python`, `dbt`, `sqlmesh` from the code location's own environment (a virtualenv works without
    activating it); in a pod, the image's own executables run the same argv."""
    if name == "python":
        return sys.executable
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def dbt_executable() -> str:
    return resolve_executable("dbt")


def stream_command_step(step: StepSpec, on_line: Callable[[str], None], *, work_dir: Path | None = None
                        ) -> tuple[int, list[str]]:
    """Runs a plain command behind the step guard, passing each output line to `on_line` as it is printed.

    `work_dir` is the step's own folder in the run's folder (`PlanRuntime.run_dir(run_id) / step.name`),
    where `stop_run_steps` finds it; without one, a temporary folder. Returns the exit code and the last
    `TAIL_LINES` lines.
    """
    env = build_local_step_env(step)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with guarded_step(work_dir) as record:
        argv = build_guard_argv([resolve_executable(step.argv[0]), *step.argv[1:]], keep=env, record=str(record))
        with subprocess.Popen(argv, cwd=step.working_dir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace") as process:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip()
                tail.append(line)
                on_line(line)
    return process.returncode, list(tail)


def run_command_step(context: OpExecutionContext, step: StepSpec, *, work_dir: Path | None = None) -> None:
    """Runs a plain command behind the step guard, streaming each output line into the run's logs.

    Raises `DagctlStepError` with the exit code and the last lines when the command fails.
    """
    code, tail = stream_command_step(step, lambda line: context.log.info(line), work_dir=work_dir)
    if code != 0:
        last = "\n".join(tail)
        raise DagctlStepError(f"`{' '.join(step.argv)}` exited with code {code}; last lines:\n{last}")


def run_pipes_step(context: OpExecutionContext, step: StepSpec, *, work_dir: Path | None = None
                   ) -> Iterator[Any]:
    """Runs a non-dbt step (e.g. SQLMesh's verify-then-apply) as a dagster-pipes subprocess.

    dagster-pipes' client hands its whole environment to the process: the step guard keeps only the step's
    own variables and the pipes protocol's. `work_dir` as for `run_command_step`.
    """
    client = PipesSubprocessClient(cwd=step.working_dir)
    env = build_local_step_env(step)
    with guarded_step(work_dir) as record:
        argv = build_guard_argv([resolve_executable(step.argv[0]), *step.argv[1:]], keep=env,
                                keep_prefixes=PIPES_PREFIXES, record=str(record))
        try:
            results = client.run(command=argv, context=context, extras={"labels": step.labels}, env=env)
            for result in results.get_results():
                # Outside an asset, a step's reported results are plain materializations.
                if isinstance(result, MaterializeResult) and result.asset_key is not None:
                    yield AssetMaterialization(asset_key=result.asset_key, metadata=result.metadata)
        except DagctlStepError:
            raise
        except Exception as exc:  # dagster raises its own failure types for a non-zero exit
            raise DagctlStepError(f"step '{step.name}' failed: {exc}") from exc
