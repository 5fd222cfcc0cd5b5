"""dbt on the local backend: dbt started with the approved argv, its JSON events read with dagster-dbt.

Every dbt log line is streamed into the run's logs as it happens, and every model built becomes an asset
materialization (`PlanDbtTranslator` names it `<project>/<environment>/<node name>`). This is the only
module that imports dagster-dbt (and, through it, dbt): it costs about a second of CPU, so the code
location imports it only inside the functions that run dbt (plan execution, dbt schedules), never at load.
A review decision's run never pays for it.
"""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import AssetKey, DagsterExecutionInterruptedError, OpExecutionContext
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings
from dagster_dbt.core.dbt_cli_event import DbtCoreCliEventMessage

from ..core.errors import DagctlStepError
from ..core.steps import StepSpec
from ..runner.step_guard import build_guard_argv
from .local_backend import TAIL_LINES, build_local_step_env, dbt_executable, guarded_step

# Plain-text lines of dbt's output kept for its error block.
ERROR_LINES = 200
# How long a terminated run gives dbt to stop after SIGINT before its process group is killed.
INTERRUPT_GRACE_SECONDS = 10
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_TIMESTAMP = re.compile(r"^\d\d:\d\d:\d\d\s+")


class PlanDbtTranslator(DagsterDbtTranslator):
    """dbt nodes become assets `<project>/<environment>/<node name>`: one warehouse per target."""

    def __init__(self, project: str, environment: str):
        super().__init__(settings=DagsterDbtTranslatorSettings(enable_asset_checks=False))
        self._prefix = [project, environment]

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        return AssetKey([*self._prefix, dbt_resource_props["name"]])


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
