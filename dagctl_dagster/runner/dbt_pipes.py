"""The `execute` step of a dbt plan inside a pod: run one dbt command line, report what it built.

    python -m dagctl_dagster.runner.dbt_pipes dbt build --select path:models/staging --target prod

The dbt argv is run as a subprocess exactly as given (never through a shell), its output streamed to
stdout line by line, and the process exits with dbt's own exit code. Opened through dagster-pipes (the
Kubernetes backend sets `DAGSTER_PIPES_CONTEXT`), every node dbt built successfully - models, seeds and
snapshots, read from `run_results.json` - is reported as an asset materialization with the key
`[<project>, <environment>, <node name>]`, the same keys the local backend's dagster-dbt translator gives
(`PlanDbtTranslator`), so a model has one asset whichever backend ran it. The project and environment
come from `DAGCTL_PROJECT` / `DAGCTL_ENVIRONMENT`, else from the plan labels in the pipes extras.

Without Dagster Pipes (no `DAGSTER_PIPES_CONTEXT`), it simply runs dbt. Only the standard library and
dagster-pipes are imported, so the entrypoint starts fast in a dbt image.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster_pipes import PipesContext, PipesEnvVarParamsLoader, open_dagster_pipes

EXIT_USAGE = 2
EXIT_NOT_FOUND = 127
REPORTED_RESOURCE_TYPES = ("model", "seed", "snapshot")
PROJECT_ENV = "DAGCTL_PROJECT"
ENVIRONMENT_ENV = "DAGCTL_ENVIRONMENT"


def _target_path(argv: Sequence[str], env: Mapping[str, str]) -> tuple[Path, dict[str, str]]:
    """Where dbt writes `run_results.json`, and the environment that makes it so.

    A `--target-path` in the argv or DBT_TARGET_PATH is respected; otherwise dbt gets a fresh temporary
    folder through DBT_TARGET_PATH, so results of an earlier run are never mistaken for this one's.
    """
    for index, arg in enumerate(argv):
        if arg == "--target-path" and index + 1 < len(argv):
            return Path(argv[index + 1]), dict(env)
        if arg.startswith("--target-path="):
            return Path(arg.split("=", 1)[1]), dict(env)
    if env.get("DBT_TARGET_PATH"):
        return Path(env["DBT_TARGET_PATH"]), dict(env)
    fresh = Path(tempfile.mkdtemp(prefix="dagctl-dbt-target-"))
    return fresh, {**env, "DBT_TARGET_PATH": str(fresh)}


def run_dbt(argv: Sequence[str], env: Mapping[str, str]) -> int:
    """Runs the dbt argv, copying its output to stdout as it comes; returns its exit code."""
    try:
        process = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=dict(env),
            text=True, bufsize=1, errors="replace",
        )
    except FileNotFoundError:
        sys.stderr.write(f"dagctl: '{argv[0]}' was not found on PATH\n")
        return EXIT_NOT_FOUND
    assert process.stdout is not None
    for line in process.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
    return process.wait()


def _node_names(target_path: Path) -> dict[str, str]:
    """unique_id -> node name, from the manifest dbt wrote next to the run results."""
    try:
        manifest = json.loads((target_path / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return {unique_id: node.get("name", "") for unique_id, node in manifest.get("nodes", {}).items()}


def read_built_nodes(target_path: Path) -> list[dict[str, Any]]:
    """The nodes dbt built successfully in this run: unique_id, name, timing and rows affected.

    Example: `[{"unique_id": "model.jaffle.orders", "name": "orders", "resource_type": "model", ...}]`;
    empty when dbt wrote no run results (it failed before running anything).
    """
    try:
        results = json.loads((target_path / "run_results.json").read_text()).get("results", [])
    except (OSError, ValueError):
        return []
    names = _node_names(target_path)
    built = []
    for result in results:
        unique_id = result.get("unique_id", "")
        resource_type = unique_id.split(".", 1)[0]
        if resource_type not in REPORTED_RESOURCE_TYPES or result.get("status") != "success":
            continue
        rows = (result.get("adapter_response") or {}).get("rows_affected")
        built.append({
            "unique_id": unique_id,
            "name": names.get(unique_id) or unique_id.split(".")[2],
            "resource_type": resource_type,
            "execution_time": float(result.get("execution_time") or 0.0),
            "rows_affected": rows if isinstance(rows, int) else None,
        })
    return built


def _plan_names(pipes: PipesContext, env: Mapping[str, str]) -> tuple[str, str]:
    labels = pipes.extras.get("labels") or {}
    project = env.get(PROJECT_ENV) or labels.get("dagctl/project")
    environment = env.get(ENVIRONMENT_ENV) or labels.get("dagctl/environment")
    if not project or not environment:
        raise ValueError(
            f"set {PROJECT_ENV} and {ENVIRONMENT_ENV} (or pass the plan labels in the pipes extras): "
            "they name the assets of the models built"
        )
    return project, environment


def report_built_nodes(pipes: PipesContext, project: str, environment: str, nodes: list[dict[str, Any]]) -> None:
    """One asset materialization per node, key `[project, environment, node name]`."""
    for node in nodes:
        metadata: dict[str, Any] = {
            "unique_id": node["unique_id"],
            "resource_type": node["resource_type"],
            "execution_time_seconds": node["execution_time"],
        }
        if node["rows_affected"] is not None:
            metadata["dagster/row_count"] = node["rows_affected"]
        # Asset key strings are '/'-joined parts; dbt names and our project names contain no '/'.
        pipes.report_asset_materialization(
            asset_key="/".join((project, environment, node["name"])), metadata=metadata,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "dbt":
        sys.stderr.write("usage: python -m dagctl_dagster.runner.dbt_pipes dbt <command> [args...]\n")
        return EXIT_USAGE
    target_path, env = _target_path(args, os.environ)
    if not PipesEnvVarParamsLoader().is_dagster_pipes_process():
        return run_dbt(args, env)
    with open_dagster_pipes() as pipes:
        try:
            project, environment = _plan_names(pipes, env)
        except ValueError as exc:
            pipes.log.error(str(exc))
            return EXIT_USAGE
        pipes.log.info(f"running {' '.join(args)}")
        code = run_dbt(args, env)
        nodes = read_built_nodes(target_path)
        report_built_nodes(pipes, project, environment, nodes)
        summary = f"dbt exited with code {code}; {len(nodes)} node(s) built"
        (pipes.log.info if code == 0 else pipes.log.error)(summary)
    return code


if __name__ == "__main__":
    sys.exit(main())
