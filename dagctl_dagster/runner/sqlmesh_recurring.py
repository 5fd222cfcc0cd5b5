"""Recurring SQLMesh commands of a schedule: `sqlmesh run <env>` and `sqlmesh janitor`, through dagctl.

    python -m dagctl_dagster.runner.sqlmesh_recurring run --environment ENV --project-dir DIR [--gateway G]
    python -m dagctl_dagster.runner.sqlmesh_recurring janitor --project-dir DIR [--gateway G]

The same commands as SQLMesh's CLI, but through `adapters.sqlmesh`, so they take the same per-database lock
as explain and apply (a DuckDB state database is never opened by two steps at once) and report a database
held by another process as such. Progress lines go to stdout.

Exit codes (a failure also writes one line to stderr):
    0  done
    1  failed (a model or an audit failed, the environment does not exist, the warehouse is unreachable)
    4  a process outside dagctl holds the DuckDB database (DuckDB allows one writer): nothing ran
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from ..adapters.sqlmesh import run_sqlmesh, run_sqlmesh_janitor
from ..core.errors import DagctlError, DagctlStateLockedError

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_LOCKED = 4


def _print(line: str) -> None:
    print(line, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; returns the exit code (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="python -m dagctl_dagster.runner.sqlmesh_recurring",
        description="sqlmesh run / sqlmesh janitor on a deployed commit, with dagctl's database lock.",
    )
    parser.add_argument("command", choices=["run", "janitor"])
    parser.add_argument("--project-dir", required=True, type=Path, help="SQLMesh project folder.")
    parser.add_argument("--environment", default=None, help="SQLMesh environment (run only).")
    parser.add_argument("--gateway", default=None, help="SQLMesh gateway (default: the project's).")
    args = parser.parse_args(argv)
    if args.command == "run" and not args.environment:
        parser.error("run needs --environment")
    try:
        if args.command == "run":
            run_sqlmesh(args.project_dir, args.environment, gateway=args.gateway, log=_print,
                        on_model_evaluated=lambda done: _print(f"Evaluated {done.model}"))
        else:
            run_sqlmesh_janitor(args.project_dir, gateway=args.gateway, log=_print)
    except DagctlError as error:
        sys.stderr.write(" ".join(str(error).split()) + "\n")
        return EXIT_LOCKED if isinstance(error, DagctlStateLockedError) else EXIT_FAILED
    return EXIT_DONE


if __name__ == "__main__":
    sys.exit(main())
