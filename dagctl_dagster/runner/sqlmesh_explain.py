"""The `explain` step of a SQLMesh plan: SQLMesh's own plan of an environment, as a change set. Never applies.

    python -m dagctl_dagster.runner.sqlmesh_explain --project-dir DIR --environment ENV --output FILE \\
        [--gateway G]

It runs as its own process, started with the step environment (`core.steps.build_process_env`) and never
inside the run worker: SQLMesh loads the project's Python (config.py, macros, Python models) and runs its
unit tests, and that code must see only what the deployment config gives the project's steps.

SQLMesh's progress lines (and, when unit tests fail, SQLMesh's own report of them) go to stdout. The result
is written to FILE as JSON: `{"outcome": "explained", "change_set": {...}}` (failing unit tests included:
they are part of the change set), or `{"outcome": "refused" | "locked" | "failed", "message": "..."}`.

Exit codes (a refusal or a failure also writes one line to stderr):
    0  explained
    1  failed unexpectedly inside dagctl or SQLMesh
    2  refused (SQLMesh cannot load the project or build the plan, uncategorized changes)
    4  a process outside dagctl holds the DuckDB database (DuckDB allows one writer)
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Sequence
from pathlib import Path

from ..adapters.sqlmesh import explain_sqlmesh_plan
from ..core.errors import DagctlError, DagctlPlanError, DagctlStateLockedError

EXIT_EXPLAINED = 0
EXIT_FAILED = 1
EXIT_REFUSED = 2
EXIT_LOCKED = 4


def _print(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Explain and write the result file; returns the exit code (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m dagctl_dagster.runner.sqlmesh_explain",
        description="SQLMesh's plan of an environment as a dagctl change set (never applies).",
    )
    parser.add_argument("--project-dir", required=True, type=Path, help="SQLMesh project folder.")
    parser.add_argument("--environment", required=True, help="SQLMesh environment.")
    parser.add_argument("--output", required=True, type=Path, help="Where to write the JSON result.")
    parser.add_argument("--gateway", default=None, help="SQLMesh gateway (default: the project's).")
    args = parser.parse_args(argv)
    try:
        change_set = explain_sqlmesh_plan(args.project_dir, args.environment, gateway=args.gateway, log=_print)
        code, result = EXIT_EXPLAINED, {"outcome": "explained", "change_set": change_set.model_dump(mode="json")}
    except DagctlPlanError as error:
        code, result = EXIT_REFUSED, {"outcome": "refused", "message": str(error)}
    except DagctlStateLockedError as error:
        code, result = EXIT_LOCKED, {"outcome": "locked", "message": str(error)}
    except DagctlError as error:
        code, result = EXIT_FAILED, {"outcome": "failed", "message": str(error)}
    except Exception as error:  # the step's boundary: SQLMesh's or DuckDB's own error, said in one line
        traceback.print_exc(file=sys.stdout)
        message = (f"SQLMesh failed while explaining environment '{args.environment}': "
                   f"{type(error).__name__}: {error}. If a path in it looks wrong (e.g. it contains 'None'), "
                   "the project reads a variable its steps do not get: declare it in the deployment config "
                   "(step_env: pass_env or env).")
        code, result = EXIT_FAILED, {"outcome": "failed", "message": message}
    args.output.write_text(json.dumps(result))
    if code != EXIT_EXPLAINED:
        sys.stderr.write(" ".join(result["message"].split()) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
