"""Cost of a dbt plan's impact (dbt parse in its own step, then our resolution) against dbt's own, in one run.

    .venv/bin/python benchmarks/bench_dbt_impact.py [--models 2000] [--commits 1000] [--files 100] [--quick]
        [--no-compiled-bytecode]

Uses the generated repository of `bench_dbt_detect.py` (same project, same history: `--commits` commits
touching `--files` files between base and target). Exports the base and target checkouts, then measures:

1. Warm impact / dbt's own: our impact (the `parse` step as a plan runs it on the local backend: the
   process `python -m dagctl_dagster.runner.dbt_parse --server NAME`, served by the resident parse server
   (`runner.dbt_parse_server`, started once before the timed lines: its start-up is its own line), then
   reading the manifest and resolving the plan's `path:` selection with its downstream nodes) with a
   warm cache (the base commit's `partial_parse.msgpack`, as the last plan leaves it), divided by
   `dbt parse` + `dbt ls --select <the same selection, each with +>` with the same warm cache. Target: <= 1.2.
2. Warm impact / cold impact (no partial-parse file). Target: <= 0.3. The same parse step as a plain process
   (`dbt_parse_server: false`) is measured beside it, cold and warm, and so is dbt's own `dbt parse`, cold
   and with the same warm cache: its warm / cold ratio is the floor of a plain process.
3. A macro used by 5 models is changed: the nodes the plan runs (dbt's `state:modified` against the
   previous commit's manifest, our exact fqn selection, tests included by eager indirect selection) divided
   by the nodes a full `dbt build` runs. Target: <= 0.01. The parse step is given the previous commit's
   partial-parse file as the plan pins it (parses keep no manifest.json) and writes the base manifest from
   it: that parse is timed with and without that writing.
4. Peak memory (VmHWM) of the plain parse step process, and the resident server's memory (VmRSS), reported
   (the git-only `detect` is unchanged: see `bench_dbt_detect.py` for its targets).

Every process runs with compiled bytecode, as in the runner image (`UV_COMPILE_BYTECODE=1`) and in a local
step (its environment has no `PYTHONDONTWRITEBYTECODE`): it is kept in a `PYTHONPYCACHEPREFIX` folder of
the run, compiled before the first measurement. `--no-compiled-bytecode` measures with none (an empty
`PYTHONPYCACHEPREFIX` and `PYTHONDONTWRITEBYTECODE=1`: each process compiles what it imports, whatever
`.pyc` files `.venv` holds).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_dbt_detect import NOW, PROFILES, generate_repository  # noqa: E402

from dagctl_dagster.adapters.dbt import explain_dbt_plan  # noqa: E402
from dagctl_dagster.adapters.dbt_manifest import (  # noqa: E402
    MANIFEST,
    PARTIAL_PARSE,
    get_snapshot_time,
    read_dbt_graph,
    read_parsed_graph,
)
from dagctl_dagster.adapters.git import GitMirror  # noqa: E402
from dagctl_dagster.core.config import ProjectConfig  # noqa: E402
from dagctl_dagster.core.dbt_impact import (  # noqa: E402
    EXECUTABLE_TYPES,
    build_selective_impact,
    build_state_scope,
    resolve_path_selection,
)
from dagctl_dagster.runner.dbt_parse_server import get_server_pid, start_server  # noqa: E402

DBT = Path(sys.executable).with_name("dbt")
TARGET_DBT_RATIO = 1.2
TARGET_WARM_RATIO = 0.3
TARGET_MACRO_RATIO = 0.01
MACRO_MODELS = 5
# Runs the parse step and writes its peak RSS next to its result.
PROBE = """\
import os, re, runpy, sys
from pathlib import Path
sys.argv = ["dbt_parse", *sys.argv[2:]]
try:
    runpy.run_module("dagctl_dagster.runner.dbt_parse", run_name="__main__")
except SystemExit:
    pass
Path(os.environ["BENCH_RSS_FILE"]).write_text(
    re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
"""


def read_rss(pid: int | None) -> float:
    """Resident memory (VmRSS, MB) of process `pid`."""
    status = Path(f"/proc/{pid}/status").read_text() if pid else ""
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    return int(found.group(1)) / 1024 if found else float("nan")


def progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


# Where the processes keep their compiled bytecode, and whether they write it (--no-compiled-bytecode: an
# empty folder they never write to, so every process compiles what it imports).
BYTECODE: dict[str, str | bool] = {"prefix": "", "compiled": True}
# What the parse step and dbt import: compiled once before the measurements.
IMPORTS = ("import dbt.cli.main, dbt.adapters.duckdb, dbt.parser.manifest, dbt.task.list, "
           "dagctl_dagster.runner.dbt_parse")


def dbt_env(profiles: Path) -> dict[str, str]:
    env = {**os.environ, "DBT_PROFILES_DIR": str(profiles), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    if not BYTECODE["compiled"]:
        return {**env, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": str(BYTECODE["prefix"])}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return {**env, "PYTHONPYCACHEPREFIX": str(BYTECODE["prefix"])}


def fresh_target(work: Path, name: str, seed: Path | None) -> Path:
    target = work / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    if seed is not None:
        shutil.copy2(seed, target / PARTIAL_PARSE)
    return target


# The resident parse server's name for this run (`--server NAME` of the parse step), set by `measure`.
SERVER: dict[str, str | int | None] = {"name": None, "pid": None}


def run_parse_step(project: Path, target: Path, profiles: Path, *, state: Path | None = None,
                   served: bool = True) -> tuple[dict, float | None]:
    """The parse step as a plan runs it on the local backend: its own process, served by the resident parse
    server (`served`), or a plain process; returns its result and, for a plain process, its peak RSS (MB)."""
    output, rss = target / "result.json", target / "rss"
    common = ["--project-dir", str(project), "--target-path", str(target), "--target", "prod", "--output",
              str(output), *(["--state", str(state)] if state else [])]
    if served:
        argv = [sys.executable, "-P", "-m", "dagctl_dagster.runner.dbt_parse", *common,
                "--server", str(SERVER["name"]), "--server-idle", "600"]
    else:
        argv = [sys.executable, "-c", PROBE, "-", *common]
    process = subprocess.run(argv, env={**dbt_env(profiles), "BENCH_RSS_FILE": str(rss)}, check=True,
                             capture_output=True, text=True)
    if "dbt parse server unavailable" in process.stderr:
        raise SystemExit(f"the parse step did not use the server: {process.stderr.strip()}")
    result = json.loads(output.read_text())
    if result.get("outcome") != "parsed":
        raise SystemExit(f"parse step failed: {result}")
    return result, None if served else int(rss.read_text()) / 1024


def our_impact(project: Path, target: Path, profiles: Path, selection: tuple[str, ...], *, served: bool = True):
    result, rss = run_parse_step(project, target, profiles, served=served)
    impact = build_selective_impact(read_parsed_graph(target), selection, parse=None)
    return result, rss, impact


def dbt_own(project: Path, target: Path, profiles: Path, selection: tuple[str, ...]) -> set[str]:
    """dbt's own: `dbt parse`, then `dbt ls --select <selection>+`, with the same partial-parse file."""
    common = ["--project-dir", str(project), "--target-path", str(target), "--target", "prod"]
    subprocess.run([str(DBT), "--quiet", "parse", *common], env=dbt_env(profiles), check=True)
    out = subprocess.run([str(DBT), "--quiet", "ls", *common, "--select", *(f"{c}+" for c in selection),
                          "--output", "json", "--output-keys", "unique_id"],
                         env=dbt_env(profiles), check=True, capture_output=True, text=True).stdout
    return {json.loads(line)["unique_id"] for line in out.splitlines() if line.startswith("{")}


def dbt_parse_only(project: Path, target: Path, profiles: Path) -> None:
    """dbt's own `dbt parse` CLI, alone: the floor of our parse step (cold without a partial-parse file)."""
    subprocess.run([str(DBT), "--quiet", "parse", "--project-dir", str(project), "--target-path", str(target),
                    "--target", "prod"], env=dbt_env(profiles), check=True)


# CPU seconds (user + system, this process and its children) of each timed action, by label: steadier than
# wall time on a machine shared with other work.
CPU: dict[str, float] = {}


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime + server_children_cpu()


def server_children_cpu() -> float:
    """CPU seconds of the parses the server's children ran (user + system), once it has reaped them all: a
    served parse is not a child of this process."""
    pid = SERVER["pid"]
    if not pid:
        return 0.0
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}/task/{pid}/children").read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.01)  # the client returns on the child's exit code, just before the child exits
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")  # cutime + cstime


def timed(label: str, action):
    started, started_cpu = time.perf_counter(), cpu_seconds()
    value = action()
    CPU[label] = cpu_seconds() - started_cpu
    return time.perf_counter() - started, value


def add_macro(checkout: Path, body: str, models: list[str]) -> None:
    (checkout / "macros").mkdir(exist_ok=True)
    (checkout / "macros" / "bench_macro.sql").write_text(
        "{% macro bench_macro() %}" + body + "{% endmacro %}\n")
    for path in models:
        text = (checkout / path).read_text()
        if "bench_macro" not in text:
            (checkout / path).write_text(text + "\n-- {{ bench_macro() }}\n")


def measure(root: Path, args: argparse.Namespace) -> None:
    progress(f"generating {args.models} models and {args.commits} commits touching {args.files} files")
    repository = generate_repository(root, args.models, args.commits, args.files)
    mirror = GitMirror(repository.url, root / "mirror")
    mirror.ensure()
    project = ProjectConfig.model_validate(
        {"name": "bench", "framework": "dbt", "repository": repository.url, "environments": [{"name": "prod"}]})
    spec = explain_dbt_plan(mirror, project, project.environments[0], plan_id="bench-prod-00000000",
                            target_commit=repository.target, base_commit=repository.base, base_version="1",
                            triggered_by="sensor", requested_by=None, now=NOW)
    selection = spec.dbt_scope.selection
    base = mirror.export_snapshot(repository.base, root / "checkouts" / "base")
    profiles = root / "profiles"
    profiles.mkdir()
    (profiles / "profiles.yml").write_text(PROFILES.format(path=root / "bench.duckdb"))
    work = root / "work"

    BYTECODE.update(prefix=str(root / "pycache"), compiled=not args.no_compiled_bytecode)
    if BYTECODE["compiled"]:
        subprocess.run([sys.executable, "-c", IMPORTS], env=dbt_env(profiles), check=True)
    progress("starting the resident parse server")
    SERVER["name"] = f"bench-{uuid.uuid4().hex[:8]}"
    server_s, _ = timed("server", lambda: start_server(str(SERVER["name"]), 600, dbt_env(profiles)))
    SERVER["pid"] = get_server_pid(str(SERVER["name"]))
    progress("parsing the base commit (the last plan's parse: its partial-parse file is the warm cache)")
    base_target = fresh_target(work, "base", None)
    run_parse_step(base, base_target, profiles)
    warm_cache = base_target / PARTIAL_PARSE
    # The target's snapshot is exported by the next plan, as in production: after the base's parse. (dbt takes
    # a schema YAML whose modification time it saved as unchanged: two exports in the same second would make
    # the partial parse miss the YAML changes, and the parse cache never seeds across them.)
    target = mirror.export_snapshot(repository.target, root / "checkouts" / "target")
    if get_snapshot_time(target) == get_snapshot_time(base):
        raise SystemExit("the target's snapshot has the base's modification time: dbt would skip its YAMLs")

    progress("cold impact (no partial-parse file)")
    cold_s, (cold_result, cold_rss, cold_impact) = timed(
        "cold", lambda: our_impact(target, fresh_target(work, "cold", None), profiles, selection))
    progress("warm impact, then dbt parse + dbt ls with the same warm cache")
    warm_s, (warm_result, warm_rss, warm_impact) = timed(
        "warm", lambda: our_impact(target, fresh_target(work, "warm", warm_cache), profiles, selection))
    dbt_s, dbt_ids = timed("dbt", lambda: dbt_own(target, fresh_target(work, "dbt", warm_cache), profiles,
                                                  selection))
    progress("the same parse step as a plain process (no server), cold then warm")
    plain_cold_s, (_, cold_rss, _) = timed("plain_cold", lambda: our_impact(
        target, fresh_target(work, "plain_cold", None), profiles, selection, served=False))
    plain_warm_s, (_, warm_rss, _) = timed("plain_warm", lambda: our_impact(
        target, fresh_target(work, "plain_warm", warm_cache), profiles, selection, served=False))
    progress("dbt parse alone, cold then warm (dbt's own floor of the warm / cold ratio)")
    dbt_cold_s, _ = timed("dbt_cold", lambda: dbt_parse_only(target, fresh_target(work, "dbt_cold", None),
                                                              profiles))
    dbt_warm_s, _ = timed("dbt_warm", lambda: dbt_parse_only(target, fresh_target(work, "dbt_warm", warm_cache),
                                                              profiles))
    warm_graph = read_parsed_graph(work / "warm")
    # The partial parse's graph is the cold parse's, and the graph of dbt's own manifest.json (`dbt parse`).
    same_graph = (warm_graph.content_hash() == read_parsed_graph(work / "cold").content_hash()
                  == read_parsed_graph(work / "plain_cold").content_hash()
                  == read_parsed_graph(work / "plain_warm").content_hash()
                  == read_dbt_graph(work / "dbt" / MANIFEST).content_hash())
    ours_with_downstream = resolve_path_selection(warm_graph,
                                                  [f"{c}+" for c in selection])[0]
    executable_dbt = {uid for uid in dbt_ids if uid.split(".")[0] in EXECUTABLE_TYPES}

    progress(f"a macro used by {MACRO_MODELS} models: state:modified against the previous manifest")
    staging = sorted(str(p.relative_to(target)) for p in (target / "models").rglob("*.sql")
                     if "staging" in str(p))[:MACRO_MODELS]
    macro_base = root / "checkouts" / "macro_base"
    shutil.copytree(target, macro_base)
    add_macro(macro_base, "1", staging)
    macro_base_target = fresh_target(work, "macro_base", work / "warm" / PARTIAL_PARSE)
    run_parse_step(macro_base, macro_base_target, profiles)
    state = work / "state"
    state.mkdir()
    shutil.copy2(macro_base_target / PARTIAL_PARSE, state / PARTIAL_PARSE)  # as `pin_base_manifest` pins it
    macro_target = root / "checkouts" / "macro_target"
    shutil.copytree(macro_base, macro_target)
    add_macro(macro_target, "2", staging)
    macro_target_path = fresh_target(work, "macro_target", macro_base_target / PARTIAL_PARSE)
    macro_s, (macro_result, _) = timed("macro", lambda: run_parse_step(macro_target, macro_target_path,
                                                                        profiles, state=state))
    progress("the same parse with the base manifest already written (kept by the first plan of that base)")
    again_s, (again_result, _) = timed("again", lambda: run_parse_step(
        macro_target, fresh_target(work, "macro_again", macro_base_target / PARTIAL_PARSE), profiles,
        state=state))
    if again_result["modified"] != macro_result["modified"]:
        raise SystemExit("state:modified differs with the base manifest written earlier")
    graph = read_parsed_graph(macro_target_path)
    scope = build_state_scope(spec.dbt_scope, macro_result["modified"], graph, base_commit=repository.target)
    run_nodes = resolve_path_selection(graph, scope.selection)[0]
    full = [n for n in graph.nodes.values() if n.resource_type in EXECUTABLE_TYPES]

    dbt_ratio, warm_ratio, macro_ratio = warm_s / dbt_s, warm_s / cold_s, len(run_nodes) / len(full)
    same = ours_with_downstream == executable_dbt
    print(f"dbt impact benchmark: {args.models} models, {args.commits} commits touching {args.files} files "
          f"({len(selection)} path: criteria)")
    server_rss = read_rss(SERVER["pid"])
    print(f"parse server start-up (imports dbt, once) {server_s:8.2f} s  (resident: {server_rss:.1f} MB RSS)")
    print(f"cold impact (parse step + resolution)     {cold_s:8.2f} s  ({cold_result['mode']} parse, served)")
    print(f"warm impact                               {warm_s:8.2f} s  ({warm_result['mode']} parse, served)")
    print(f"plain process (no server), cold / warm    {plain_cold_s:8.2f} / {plain_warm_s:.2f} s  "
          f"(warm / cold: {plain_warm_s / plain_cold_s:.4f})")
    print(f"dbt parse + dbt ls <selection>+, warm     {dbt_s:8.2f} s")
    print(f"dbt parse alone, cold / warm              {dbt_cold_s:8.2f} / {dbt_warm_s:.2f} s  "
          f"(dbt's own warm / cold: {dbt_warm_s / dbt_cold_s:.4f})")
    print(f"CPU s (user+sys): cold {CPU['cold']:.2f}, warm {CPU['warm']:.2f} (served; warm / cold "
          f"{CPU['warm'] / CPU['cold']:.4f}), plain process cold {CPU['plain_cold']:.2f}, "
          f"warm {CPU['plain_warm']:.2f}, "
          f"dbt parse + ls {CPU['dbt']:.2f}, dbt parse cold / warm {CPU['dbt_cold']:.2f} / {CPU['dbt_warm']:.2f}; "
          f"plain warm / cold {CPU['plain_warm'] / CPU['plain_cold']:.4f}, "
          f"plain warm / dbt parse + ls {CPU['plain_warm'] / CPU['dbt']:.4f}")
    print(f"plain parse step peak RSS (cold / warm)   {cold_rss:8.1f} / {warm_rss:.1f} MB")
    print(f"selected {len(warm_impact.selected)} nodes, {len(warm_impact.downstream)} downstream; "
          f"selection+ equals dbt ls: {same}")
    print(f"macro in {MACRO_MODELS} models: runs {len(run_nodes)} of {len(full)} nodes "
          f"({len(scope.selection)} fqn criteria)")
    print(f"macro plan's parse step, writing / with the base manifest  {macro_s:6.2f} / {again_s:.2f} s")
    print("bytecode: " + ("compiled (as in the runner image)" if BYTECODE["compiled"] else
                          "none (each process compiles what it imports)"))
    print()
    for label, value, target_value in (("warm impact / dbt parse + ls", dbt_ratio, TARGET_DBT_RATIO),
                                       ("warm / cold impact", warm_ratio, TARGET_WARM_RATIO),
                                       ("macro: nodes run / full build", macro_ratio, TARGET_MACRO_RATIO)):
        print(f"{label:40s} {value:8.4f}  <= {target_value:<6} {'PASS' if value <= target_value else 'FAIL'}")
    if not same or not same_graph or cold_impact.counts != warm_impact.counts:
        raise SystemExit("answers differ: our resolution is not dbt's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=2000)
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="200 models, 100 commits, 20 files")
    parser.add_argument("--no-compiled-bytecode", action="store_true",
                        help="every process compiles what it imports (no .pyc), as this sandbox runs")
    args = parser.parse_args()
    if args.quick:
        args.models, args.commits, args.files = 200, 100, 20
    with tempfile.TemporaryDirectory(prefix="bench-dbt-impact-") as folder:
        try:
            measure(Path(folder), args)
        finally:
            pid = get_server_pid(str(SERVER["name"])) if SERVER["name"] else None
            if pid is not None:
                os.kill(pid, signal.SIGTERM)


if __name__ == "__main__":
    main()
