"""The local backend: steps run as processes on the machine running Dagster (the embedded default).

dbt runs through `dbt_steps` (dagster-dbt reads its JSON events; imported only where dbt runs). Other
steps (SQLMesh's verify-then-apply entrypoint) run as dagster-pipes subprocesses, so the events they
report reach Dagster the same way they do from a Kubernetes pod.

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
    AssetMaterialization,
    MaterializeResult,
    OpExecutionContext,
    PipesSubprocessClient,
)

from ..core.errors import DagctlStepError
from ..core.steps import StepSpec, build_process_env
from ..runner.step_guard import build_guard_argv, get_start_time, is_group_alive, is_running, kill_group

# Output of the last lines of a failed command kept in the error message.
TAIL_LINES = 20
# The guard's record of a step (argv, process group), in the step's folder of the run's folder.
STEP_RECORD = "dagctl-step.json"
# Variables dagster-pipes sets for its own protocol (context and messages channels).
PIPES_PREFIXES = ("DAGSTER_PIPES_",)


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
