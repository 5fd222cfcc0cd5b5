"""The `parse` step of a dbt plan: dbt's own parse of the pinned commit. Never connects to the warehouse.

    python -m dagctl_dagster.runner.dbt_parse --project-dir DIR --target-path DIR --target T --output FILE \\
        [--packages-cache DIR] [--state DIR] [--server NAME [--server-idle SECONDS]]

It runs as its own process with the step environment (`core.steps.build_process_env`): dbt renders the
project's Jinja and its profile, and that must see only what the deployment config gives the project's
steps. With a `partial_parse.msgpack` in the target path (the last plan's, copied there by the caller),
dbt parses only the files that changed.

When the project has packages, `dbt deps` runs first; `dbt_packages/` is kept in `--packages-cache` under
the hash of `package-lock.yml` (or of the packages file when there is no lock), so a plan with unchanged
packages reuses it.

The result is written to FILE as JSON: `{"outcome": "parsed", "mode": "cold"|"partial", "seconds": S}`
(a partial parse also says `"files_changed": N`, the files dbt found added, changed or deleted; with
`--state`, also `"modified": [fqn, ...]`: what `dbt ls --select state:modified --state DIR` lists), or
`{"outcome": "project_error" | "environment_error", "message": "..."}`. A project error is the project's
fault (a missing ref, broken YAML or Jinja): the plan fails. An environment error is the fault of where the
parse ran (the adapter is not installed, a variable the profile or project reads is not set): the plan is
explained from Git, without its impact. Exit code 0 when a result was written.

dbt writes its `partial_parse.msgpack` (the next plan's parse starts from it), not `manifest.json`: the graph
the impact needs is written to `dagctl_graph.json` from dbt's in-memory manifest, and a commit's
`manifest.json` is needed only as the base of a later plan's state comparison. Writing it took a third of a
partial parse of a 2,000-model project, so it is written then, once per base commit: with `--state DIR`
holding the base's `partial_parse.msgpack` and no `manifest.json`, dbt's own `Manifest` read back from that
file (the manifest dbt parsed for the base commit) writes `DIR/manifest.json` before the comparison. When it
cannot (the file was written by another dbt version), the result says why in `"state_unavailable"` and
carries no `"modified"`.

With `--server NAME` (the local backend's default, `dbt_parse_server` in its config), this process does not
import dbt: the resident parse server (`runner.dbt_parse_server`, started when none answers, exiting after
`--server-idle` seconds without a request), which imported dbt once, forks a child that parses with this
process's argv, environment, working directory, stdout and stderr, and this process exits with the child's
exit code. When the server path fails, it parses itself and says why on stderr in one line.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import re
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path

EXECUTABLE_TYPES = ("model", "seed", "snapshot", "test", "unit_test")
# The graph of the parse, read from dbt's in-memory manifest: what the plan's impact needs, without the
# run worker reading the whole manifest.json back (`adapters.dbt_manifest.read_parsed_graph`).
GRAPH_FILE = "dagctl_graph.json"
GRAPH_SECTIONS = ("nodes", "sources", "exposures", "metrics", "semantic_models", "saved_queries", "unit_tests")
GRAPH_FIELDS = ("unique_id", "resource_type", "name", "path", "patch_path", "fqn", "parents", "test_name",
                "column_name", "file_key_name")
PACKAGE_FILES = ("package-lock.yml", "packages.yml", "dependencies.yml")
MANIFEST = "manifest.json"
PARTIAL_PARSE = "partial_parse.msgpack"
# CPython's cyclic collector runs a young pass every 700 net allocations, and every 100th pass rescans
# everything: dbt allocates millions of objects reading its partial-parse file back, so with the defaults
# a third of a warm parse of a 2,000-model project was collection (3.6 s -> 2.4 s warm, 12.3 s -> 11.3 s
# cold, peak memory 251 -> 253 MB). A parse is one short process: collect less often.
GC_THRESHOLDS = (20_000, 10, 10)


def _classify(error: BaseException | None) -> str:
    """`project_error` for dbt's own errors about the project; `environment_error` for what depends on
    where dbt runs (profile, adapter, variables) and for a crash inside dbt, which says nothing about the
    project."""
    from dbt.exceptions import DbtProfileError, DbtRuntimeError, EnvVarMissingError

    if not isinstance(error, DbtRuntimeError) or isinstance(error, (DbtProfileError, EnvVarMissingError)):
        return "environment_error"
    if "Could not find adapter type" in str(error):
        return "environment_error"
    return "project_error"


def _message(error: BaseException | None) -> str:
    """dbt's message, its lines as dbt shows them. A byte of a file name that is not UTF-8 is written `\\xNN` (as Git
    adapters write it), never as the lone surrogate Python decoded it to."""
    if error is None:
        return "dbt failed without a message"
    text = str(error) if isinstance(error, Exception) and type(error).__module__.startswith("dbt") else (
        f"dbt failed unexpectedly: {type(error).__name__}: {error}")
    # dbt's block as dbt prints it (the file, the problem, the offending lines), without trailing blanks.
    return "\n".join(line.rstrip() for line in escape_undecodable(text).strip().splitlines())[:2000]


def escape_undecodable(text: str) -> str:
    """`text` with each byte that was not UTF-8 written `\\xNN`, whether Python kept it as a lone surrogate
    or wrote that surrogate out as `\\udcNN` (in an exception's message): the event log stays UTF-8.

    Example: `escape_undecodable("caf\\udce9")` is `"caf\\\\xe9"`.
    """
    text = re.sub(r"\\udc([89a-f][0-9a-f])", r"\\x\1", text)
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


def _packages_hash(project_dir: Path) -> str | None:
    for name in PACKAGE_FILES:
        path = project_dir / name
        if path.exists():
            return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return None


def _has_local_packages(project_dir: Path) -> bool:
    """A `local:` package is part of the commit itself: its hash says nothing of its content."""
    return any("local:" in (project_dir / name).read_text(errors="replace")
               for name in PACKAGE_FILES if (project_dir / name).exists())


def _install_packages(runner, project_dir: Path, cache: Path | None, target: str) -> BaseException | None:
    digest = _packages_hash(project_dir)
    if digest is None:
        return None
    if _has_local_packages(project_dir):
        cache = None
    cached = cache / digest / "dbt_packages" if cache else None
    if cached is not None and cached.is_dir():
        shutil.copytree(cached, project_dir / "dbt_packages", dirs_exist_ok=True)
        return None
    result = runner.invoke(["deps", "--project-dir", str(project_dir), "--target", target, "--quiet"])
    if not result.success:
        return result.exception or RuntimeError("dbt deps failed")
    if cached is not None and (project_dir / "dbt_packages").is_dir():
        staging = cached.parent.with_name(f".{digest}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(project_dir / "dbt_packages", staging / "dbt_packages")
        if cached.parent.exists():  # another plan cached the same packages first
            shutil.rmtree(staging)
        else:
            staging.rename(cached.parent)
    return None


def write_graph(manifest, path: Path) -> None:
    """Writes the graph of dbt's in-memory `Manifest` (enabled nodes, their parents: dbt's `parent_map`)
    as rows of `GRAPH_FIELDS`."""
    rows = []
    for section in GRAPH_SECTIONS:
        for unique_id, node in (getattr(manifest, section, None) or {}).items():
            depends_on = getattr(node, "depends_on", None)
            metadata = getattr(node, "test_metadata", None)
            kind = node.resource_type
            rows.append([unique_id, getattr(kind, "value", kind), node.name, node.original_file_path or "",
                         getattr(node, "patch_path", None), list(node.fqn or ()),
                         sorted(set(getattr(depends_on, "nodes", None) or ())),
                         getattr(metadata, "name", None), getattr(node, "column_name", None),
                         getattr(node, "file_key_name", None)])
    path.write_text(json.dumps({"fields": GRAPH_FIELDS, "rows": rows}))


def write_base_manifest(state: Path) -> str | None:
    """Writes `state/manifest.json` from the base commit's `state/partial_parse.msgpack`, with dbt's own
    reader of that file and its own writer of `manifest.json` (the bytes `dbt parse` would have written for
    that commit, but for the format of `invocation_started_at`); returns why it could not, else `None`.
    Runs after this process's `dbt parse`, whose flags the writer reads."""
    from dbt.contracts.graph.manifest import Manifest
    from dbt.parser.manifest import extended_mashumuro_decoder
    from dbt.version import __version__

    source = state / PARTIAL_PARSE
    if not source.exists():
        return f"no manifest.json or {PARTIAL_PARSE} in {state}"
    try:
        manifest = Manifest.from_msgpack(source.read_bytes(), decoder=extended_mashumuro_decoder)
    except Exception as error:  # dbt's reader of its own file: any failure means "not readable here"
        return f"the base commit's {PARTIAL_PARSE} cannot be read by dbt {__version__}: {_message(error)}"
    if manifest.metadata.dbt_version != __version__:
        return (f"the base commit's {PARTIAL_PARSE} was written by dbt {manifest.metadata.dbt_version}, "
                f"not by this dbt {__version__}")
    staging = state / f".{MANIFEST}.partial"
    manifest.write(str(staging))
    staging.rename(state / MANIFEST)
    return None


def parse_project(project_dir: Path, target_path: Path, target: str, packages_cache: Path | None,
                  state: Path | None = None) -> dict[str, object]:
    """Runs `dbt deps` (if needed) and `dbt parse`, then with `state` dbt's `ls --select state:modified`
    against the manifest in that folder; returns the result (see the module docstring)."""
    from dbt.cli.main import dbtRunner

    partial: list[int] = []  # files dbt found changed since the partial-parse file, when it used one

    def on_event(event) -> None:
        if event.info.name == "PartialParsingEnabled":
            partial.append(event.data.added + event.data.changed + event.data.deleted)
        elif event.info.name == "UnableToPartialParse":  # before, or after an error: dbt parses everything
            partial.clear()

    runner = dbtRunner(callbacks=[on_event])
    started = time.monotonic()
    error = _install_packages(runner, project_dir, packages_cache, target)
    if error is not None:
        return {"outcome": "environment_error", "message": f"dbt deps failed: {_message(error)}"}
    result = runner.invoke(["parse", "--project-dir", str(project_dir), "--target-path", str(target_path),
                            "--target", target, "--quiet", "--no-write-json"])
    if not result.success:
        return {"outcome": _classify(result.exception), "message": _message(result.exception)}
    write_graph(result.result, target_path / GRAPH_FILE)
    parsed: dict[str, object] = {"outcome": "parsed", "mode": "partial" if partial else "cold",
                                 "seconds": round(time.monotonic() - started, 3)}
    if partial:
        parsed["files_changed"] = partial[-1]
    if state is not None and not (state / MANIFEST).exists():
        problem = write_base_manifest(state)
        if problem is not None:
            parsed["state_unavailable"] = problem
            return parsed
    if state is not None:
        # On the manifest just parsed (no second parse); the listed nodes come back as the result, printed
        # nowhere (the step's log would otherwise hold one line per modified node).
        listed = dbtRunner(manifest=result.result).invoke([
            "ls", "--project-dir", str(project_dir), "--target-path", str(target_path), "--target", target,
            "--state", str(state), "--select", "state:modified", "--resource-types", *EXECUTABLE_TYPES,
            "--output", "json", "--output-keys", "fqn", "--log-level", "none"])
        if not listed.success:
            return {"outcome": "environment_error",
                    "message": f"dbt's state comparison failed: {_message(listed.exception)}"}
        parsed["modified"] = sorted(json.loads(line)["fqn"] for line in listed.result or ())
    return parsed


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    server = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    server.add_argument("--server", default=None)
    server.add_argument("--server-idle", default=600.0, type=float)
    through, argv = server.parse_known_args(argv)
    if through.server:
        from .dbt_parse_server import run_through_server

        try:
            code, why = run_through_server(through.server, through.server_idle, argv)
        except KeyboardInterrupt:  # the run was cancelled: leaving closes the connection, the child stops
            return 130
        if code is not None:
            return code
        print(f"dbt parse server unavailable, parsing in this process: {why}", file=sys.stderr, flush=True)
    gc.set_threshold(*GC_THRESHOLDS)
    parser = argparse.ArgumentParser(prog="python -m dagctl_dagster.runner.dbt_parse",
                                     description="dbt's parse of a project (never connects to the warehouse).")
    parser.add_argument("--project-dir", required=True, type=Path)
    parser.add_argument("--target-path", required=True, type=Path)
    parser.add_argument("--target", required=True)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--packages-cache", default=None, type=Path)
    parser.add_argument("--state", default=None, type=Path,
                        help="Folder holding a base manifest.json (or the base's partial_parse.msgpack, from which "
                             "manifest.json is written there): also list the nodes state:modified selects.")
    args = parser.parse_args(argv)
    try:
        result = parse_project(args.project_dir, args.target_path, args.target, args.packages_cache, args.state)
    except Exception as error:  # the step's boundary: dbt's own error, in one line
        result = {"outcome": "environment_error", "message": f"{type(error).__name__}: {_message(error)}"}
    args.output.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
