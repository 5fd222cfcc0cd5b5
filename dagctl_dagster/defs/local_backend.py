"""The local backend: steps run as processes on the machine running Dagster (the embedded default).

dbt steps run through dagster-dbt's `DbtCliResource`, which gives structured dbt events: every dbt log
line is streamed into the run's logs as it happens, and every model built becomes an asset
materialization. Other steps (SQLMesh's verify-then-apply entrypoint) run as dagster-pipes subprocesses,
so the events they report reach Dagster the same way they do from a Kubernetes pod.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
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
from dagster_dbt import DagsterDbtTranslator, DagsterDbtTranslatorSettings, DbtCliResource

from ..core.errors import DagctlStepError
from ..core.steps import StepSpec

# Output of the last lines of a failed dbt run kept in the error message.
TAIL_LINES = 20


class PlanDbtTranslator(DagsterDbtTranslator):
    """dbt nodes become assets `<project>/<environment>/<node name>`: one warehouse per target."""

    def __init__(self, project: str, environment: str):
        super().__init__(settings=DagsterDbtTranslatorSettings(enable_asset_checks=False))
        self._prefix = [project, environment]

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> AssetKey:
        return AssetKey([*self._prefix, dbt_resource_props["name"]])


def resolve_secret_env(step: StepSpec) -> dict[str, str]:
    """Secret-backed variables read from this process's environment (never written anywhere)."""
    resolved = {}
    for ref in step.secret_env:
        value = os.environ.get(ref.env)
        if value is None:
            raise DagctlStepError(
                f"step '{step.name}' needs environment variable {ref.env} (secret {ref.secret}/{ref.key} "
                "in a cluster); set it in the environment of the Dagster code location"
            )
        resolved[ref.env] = value
    return resolved


def run_dbt_step(
    context: OpExecutionContext, step: StepSpec, *, translator: DagsterDbtTranslator, target_path: Path
) -> Iterator[Any]:
    """Runs one dbt command line of a plan in its snapshot, yielding Dagster events as dbt emits them.

    Raises `DagctlStepError` with dbt's own error message when dbt fails.
    """
    if step.argv[:1] != ("dbt",) or step.working_dir is None:
        raise DagctlStepError(f"step '{step.name}' is not a dbt command in a project folder: {step.argv}")
    # DbtCliResource passes this process's environment to dbt and has no parameter for more: set the
    # step's variables (profiles folder, secrets) for the duration of the step only.
    env_backup = dict(os.environ)
    os.environ.update({**step.env, **resolve_secret_env(step)})
    try:
        dbt = DbtCliResource(project_dir=step.working_dir, dbt_executable=dbt_executable(),
                             profiles_dir=step.env.get("DBT_PROFILES_DIR"))
        invocation = dbt.cli(list(step.argv[1:]), dagster_dbt_translator=translator,
                             target_path=target_path, raise_on_error=False)
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
    finally:
        os.environ.clear()
        os.environ.update(env_backup)


def resolve_executable(name: str) -> str:
    """`python`, `dbt`, `sqlmesh` from the code location's own environment (a virtualenv works without
    activating it); in a pod, the image's own executables run the same argv."""
    if name == "python":
        return sys.executable
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def dbt_executable() -> str:
    return resolve_executable("dbt")


def run_command_step(context: OpExecutionContext, step: StepSpec) -> None:
    """Runs a plain command, streaming each output line into the run's logs as it is printed.

    Raises `DagctlStepError` with the exit code and the last lines when the command fails.
    """
    argv = [resolve_executable(step.argv[0]), *step.argv[1:]]
    env = {**os.environ, **step.env, **resolve_secret_env(step)}
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with subprocess.Popen(argv, cwd=step.working_dir, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, bufsize=1) as process:
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


def run_pipes_step(context: OpExecutionContext, step: StepSpec) -> Iterator[Any]:
    """Runs a non-dbt step (e.g. SQLMesh's verify-then-apply) as a dagster-pipes subprocess."""
    client = PipesSubprocessClient(cwd=step.working_dir)
    argv = [resolve_executable(step.argv[0]), *step.argv[1:]]
    try:
        results = client.run(
            command=argv, context=context,
            extras={"labels": step.labels}, env={**step.env, **resolve_secret_env(step)},
        )
        for result in results.get_results():
            # Outside an asset, a step's reported results are plain materializations.
            if isinstance(result, MaterializeResult) and result.asset_key is not None:
                yield AssetMaterialization(asset_key=result.asset_key, metadata=result.metadata)
    except DagctlStepError:
        raise
    except Exception as exc:  # dagster raises its own failure types for a non-zero exit
        raise DagctlStepError(f"step '{step.name}' failed: {exc}") from exc
