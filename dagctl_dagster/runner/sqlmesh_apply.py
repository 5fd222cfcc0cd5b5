"""The `execute` step of a SQLMesh plan: verify the approved plan, then apply it.

    python -m dagctl_dagster.runner.sqlmesh_apply --project-dir DIR --environment ENV \\
        --change-set-fingerprint FP [--gateway G] [--project NAME]

`DIR` is the project folder at the approved commit, `FP` the approved SQLMesh change set's fingerprint
(`SqlmeshChangeSet.fingerprint`, shown in the plan's summary as the "SQLMesh change-set fingerprint"; the
plan's own fingerprint covers it and the commits, which this step cannot see). The plan is rebuilt and
compared before anything is written (see `apply_sqlmesh_plan`). The same command line runs as a local
subprocess and in a Kubernetes pod.

Launched through Dagster Pipes (`DAGSTER_PIPES_CONTEXT` is set), progress lines go to the run's logs, each
evaluated model is reported as an asset materialization with the key
`build_sqlmesh_asset_key(project, model)` = `["sqlmesh", <project>, "<schema>__<table>"]` (the project from
`--project` or the `DAGCTL_PROJECT` environment variable) and the intervals actually evaluated, and the outcome is reported as a custom message
`{"outcome": ..., "message": ...}`. Otherwise progress lines go to stdout.

Exit codes (a refusal or a failure also writes one line to stderr):
    0  applied, or nothing to apply
    1  applying failed (a model or an audit failed, the warehouse is unreachable)
    2  the plan was refused (uncategorized changes, SQLMesh cannot load the project or build the plan)
    3  the plan is stale (another plan was applied, or the files differ): nothing was applied
    4  a process outside dagctl holds the DuckDB database (DuckDB allows one writer): nothing was applied
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dagster_pipes import PipesContext, PipesEnvVarParamsLoader, open_dagster_pipes

from ..adapters.sqlmesh import apply_sqlmesh_plan
from ..core.errors import DagctlError, DagctlPlanError, DagctlStalePlanError, DagctlStateLockedError
from ..core.sqlmesh_plan import BackfillInterval, build_sqlmesh_asset_key

EXIT_APPLIED = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_STALE = 3
EXIT_LOCKED = 4

_logger = logging.getLogger("dagctl.sqlmesh_apply")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dagctl_dagster.runner.sqlmesh_apply",
        description="Verify an approved SQLMesh plan against the current state, then apply it.",
    )
    parser.add_argument("--project-dir", required=True, type=Path, help="SQLMesh project folder.")
    parser.add_argument("--environment", required=True, help="SQLMesh environment.")
    parser.add_argument(
        "--change-set-fingerprint", required=True, help="Fingerprint of the approved SQLMesh change set."
    )
    parser.add_argument("--gateway", default=None, help="SQLMesh gateway (default: the project's).")
    parser.add_argument(
        "--project",
        default=os.environ.get("DAGCTL_PROJECT"),
        help="dagctl project name, used in asset keys (default: $DAGCTL_PROJECT).",
    )
    return parser.parse_args(argv)


def _run(
    args: argparse.Namespace,
    log: Callable[[str], None],
    on_model_evaluated: Callable[[BackfillInterval], None],
) -> tuple[int, str, str]:
    """Apply and classify the outcome: (exit code, outcome, message)."""
    try:
        change_set = apply_sqlmesh_plan(
            args.project_dir,
            args.environment,
            expected_fingerprint=args.change_set_fingerprint,
            gateway=args.gateway,
            log=log,
            on_model_evaluated=on_model_evaluated,
        )
    except DagctlStalePlanError as error:
        return EXIT_STALE, "stale", str(error)
    except DagctlPlanError as error:
        return EXIT_REFUSED, "refused", str(error)
    except DagctlStateLockedError as error:
        return EXIT_LOCKED, "locked", str(error)
    except DagctlError as error:
        return EXIT_FAILED, "failed", str(error)
    outcome = "applied" if change_set.has_changes else "unchanged"
    return EXIT_APPLIED, outcome, f"SQLMesh plan {outcome} in environment '{args.environment}'."


def _run_in_pipes(args: argparse.Namespace, pipes: PipesContext) -> tuple[int, str, str]:
    if not args.project:
        return EXIT_REFUSED, "refused", "Set DAGCTL_PROJECT (or --project): asset keys name the project."

    def report(evaluated: BackfillInterval) -> None:
        pipes.report_asset_materialization(
            asset_key="/".join(build_sqlmesh_asset_key(args.project, evaluated.model)),
            metadata={
                "sqlmesh_model": evaluated.model,
                "environment": args.environment,
                "change_set_fingerprint": args.change_set_fingerprint,
                "backfilled_from": evaluated.start,
                "backfilled_to": evaluated.end,
                "backfill_mode": evaluated.mode,
            },
        )

    code, outcome, message = _run(args, pipes.log.info, report)
    pipes.report_custom_message({"outcome": outcome, "message": message})
    if code != EXIT_APPLIED:
        pipes.log.error(message)
    return code, outcome, message


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (see the module docstring)."""
    args = _parse_args(argv)
    params_loader = PipesEnvVarParamsLoader()
    if params_loader.is_dagster_pipes_process():
        with open_dagster_pipes(params_loader=params_loader) as pipes:
            code, _, message = _run_in_pipes(args, pipes)
    else:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _logger.addHandler(handler)
        _logger.setLevel(logging.INFO)
        _logger.propagate = False
        try:
            code, _, message = _run(args, _logger.info, lambda done: _logger.info(f"Evaluated {done.model}"))
        finally:
            _logger.removeHandler(handler)
    if code != EXIT_APPLIED:
        sys.stderr.write(" ".join(message.split()) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
