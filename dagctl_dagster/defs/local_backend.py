"""The local backend: steps run as processes on the machine running Dagster (the embedded default).

dbt steps are parsed by dagster-dbt (`DbtCliInvocation`), which gives structured dbt events: every dbt
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
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from dagster import (
    AssetKey,
    AssetMaterialization,
    MaterializeResult,
    OpExecutionContext,
    PipesSubprocessClient,
)
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliInvocation
from packaging.version import Version

from ..core.errors import DagctlStepError
from ..core.steps import StepSpec, build_process_env
from ..runner.step_guard import build_guard_argv, is_group_alive, kill_group

# Output of the last lines of a failed dbt run kept in the error message.
TAIL_LINES = 20
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

    Returns whether anything of it was still running. Safe to call for a step that ended or never started.
    """
    record = read_step_record(work_dir)
    if record is None:
        return False
    alive = is_group_alive(record["pgid"]) or _is_running(record["guard_pid"])
    kill_group(record["pgid"])
    if _is_running(record["guard_pid"]):
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
        pgid = (read_step_record(record.parent) or {}).get("pgid")
        while pgid and is_group_alive(pgid):
            if time.monotonic() > deadline:
                raise DagctlStepError(f"step '{record.parent.name}' (process group {pgid}) still runs after "
                                      f"SIGKILL; stop it by hand: kill -9 -- -{pgid}")
            time.sleep(0.05)
    return stopped


def _is_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@contextlib.contextmanager
def _guarded_step(work_dir: Path | None):
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
    that make dbt write JSON logs and its artifacts to `target_path`, behind the step guard. dagster-dbt
    parses its events. Raises `DagctlStepError` with dbt's own error message when dbt fails.
    """
    if step.argv[:1] != ("dbt",) or step.working_dir is None:
        raise DagctlStepError(f"step '{step.name}' is not a dbt command in a project folder: {step.argv}")
    env = {**build_local_step_env(step), **dbt_technical_env(target_path, Path(step.working_dir))}
    with _guarded_step(target_path) as record:
        invocation = DbtCliInvocation.run(
            args=build_guard_argv([dbt_executable(), *step.argv[1:]], keep=env, record=str(record)),
            env=env, manifest={}, dagster_dbt_translator=translator, project_dir=Path(step.working_dir),
            target_path=target_path, raise_on_error=False, context=None, adapter=None,
            cli_version=_dbt_version(),
        )
        manifest: dict[str, Any] | None = None
        for event in invocation.stream_raw_events():
            _log_line(context, event.raw_event)
            if not event.is_result_event:
                continue
            # dbt writes manifest.json once it has parsed the project, before the first node runs: read
            # it then, instead of paying for a separate `dbt parse`.
            manifest = manifest or json.loads((target_path / "manifest.json").read_text())
            yield from event.to_default_asset_events(
                manifest=manifest, dagster_dbt_translator=translator, target_path=target_path,
            )
        if not invocation.is_successful():
            raise DagctlStepError(f"`{' '.join(step.argv)}` failed: {_error_text(invocation)}")


def dbt_technical_env(target_path: Path, project_dir: Path) -> dict[str, str]:
    """What dagster-dbt needs dbt to do: JSON log lines on stdout, artifacts and logs in `target_path`."""
    return {"DBT_LOG_FORMAT": "json", "DBT_TARGET_PATH": str(target_path), "DBT_LOG_PATH": str(target_path),
            "DBT_PROJECT_DIR": str(project_dir), "PYTHONUNBUFFERED": "1", "DAGSTER_DBT_CLI": "true",
            "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}


@functools.cache
def _dbt_version() -> Version:
    from dbt.version import __version__

    return Version(__version__)


def resolve_executable(name: str) -> str:
    """`python`, `dbt`, `sqlmesh` from the code location's own environment (a virtualenv works without
    activating it); in a pod, the image's own executables run the same argv."""
    if name == "python":
        return sys.executable
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def dbt_executable() -> str:
    return resolve_executable("dbt")


def run_command_step(context: OpExecutionContext, step: StepSpec, *, work_dir: Path | None = None) -> None:
    """Runs a plain command behind the step guard, streaming each output line into the run's logs.

    `work_dir` is the step's own folder in the run's folder (`PlanRuntime.run_dir(run_id) / step.name`),
    where `stop_run_steps` finds it; without one, a temporary folder.
    Raises `DagctlStepError` with the exit code and the last lines when the command fails.
    """
    env = build_local_step_env(step)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with _guarded_step(work_dir) as record:
        argv = build_guard_argv([resolve_executable(step.argv[0]), *step.argv[1:]], keep=env, record=str(record))
        with subprocess.Popen(argv, cwd=step.working_dir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace") as process:
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip()
                tail.append(line)
                context.log.info(line)
    if process.returncode != 0:
        last = "\n".join(tail)
        raise DagctlStepError(
            f"`{' '.join(step.argv)}` exited with code {process.returncode}; last lines:\n{last}")


def _log_line(context: OpExecutionContext, raw_event: Mapping[str, Any]) -> None:
    info = raw_event.get("info", {})
    message = info.get("msg", "")
    if not message:
        return
    if info.get("level") in ("error", "warn"):
        context.log.warning(message)
    else:
        context.log.info(message)


def _error_text(invocation) -> str:
    """dbt's own messages for the nodes that failed (from run_results.json), else its last error line."""
    results_file = Path(invocation.target_path) / "run_results.json"
    results = json.loads(results_file.read_text()).get("results", []) if results_file.exists() else []
    failed = [f"{r.get('unique_id')}: {r.get('message')}" for r in results if r.get("status") in ("error", "fail")]
    if failed:
        return "; ".join(failed)
    error = invocation.get_error()
    return str(error).strip().splitlines()[-1] if error else "see the run's logs"


def run_pipes_step(context: OpExecutionContext, step: StepSpec, *, work_dir: Path | None = None
                   ) -> Iterator[Any]:
    """Runs a non-dbt step (e.g. SQLMesh's verify-then-apply) as a dagster-pipes subprocess.

    dagster-pipes' client hands its whole environment to the process: the step guard keeps only the step's
    own variables and the pipes protocol's. `work_dir` as for `run_command_step`.
    """
    client = PipesSubprocessClient(cwd=step.working_dir)
    env = build_local_step_env(step)
    with _guarded_step(work_dir) as record:
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
