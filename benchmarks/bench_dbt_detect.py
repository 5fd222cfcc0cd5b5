"""Cost of dagctl's dbt `detect` against plain Git and against dbt's own change detection, in one run.

    .venv/bin/python benchmarks/bench_dbt_detect.py [--models 2000] [--commits 1000] [--files 100]
                                                    [--repeat 11] [--dbt-repeat 2] [--quick]

Generates, in a temporary folder, a bare Git repository holding a dbt project on DuckDB: `--models` models
in three layers (staging models select literals, intermediate models `ref` two staging models, marts `ref`
two intermediate models and one staging model), one schema YAML per folder of 20 models (`not_null` and
`unique` on every model's id, `accepted_values` on the first model's `change_number`). On top of the base
commit, `--commits` commits are written with `git fast-import` (seconds, whatever the size); each modifies
one of `--files` chosen files (nine SQL models for one schema YAML), in turn, so every chosen file differs
between base and target. `.dagctl/config.yaml` is not touched: `detect` reads it but the diff holds exactly
the chosen files.

Then it measures, against baselines measured in the same run (medians of `--repeat` runs, interleaved):

1. `detect` (`explain_dbt_plan` on a `GitMirror` already fetched) / `git diff --name-status <base> <target>`
   run in the same mirror, in two states of `detect`'s history cache (`dagctl-history.json` in the mirror):
   - the sensor's steady state, the target line: the range extended by one commit since the last plan. Before
     every timed run the cache is put back as `detect` of `base..target~1` left it (those bytes were saved
     once), so `detect` reads the one new commit's object only (no `git log`). Target: at most 2.0.
   - the range extended by 5 commits, more than `detect` reads one by one: the cache of `base..target~5`
     is put back, and `git log --left-right target...target~5 ^base` lists the new commits (the path of
     longer pushes and of merges). No target.
   - the first plan of the range: the cache file is deleted before every timed run, so `detect` reads every
     commit object of the range (no target: on two CPUs its floor, `git log` and `git diff` together, is
     about 2.0 already).
2. dbt's own way to find the same changes / `detect`: `dbt parse` of the base commit's checkout (the state
   manifest) plus `dbt ls --select state:modified --state <base manifest>` in the target commit's checkout
   (which parses the target), both with `--no-partial-parse`. Checkouts are exported beforehand and not
   timed. Median of `--dbt-repeat` runs. Target: at least 10.
3. Peak memory of `detect`: the peak RSS (VmHWM) of the whole fresh Python process that only imports
   `dagctl_dagster.adapters.dbt`, builds the configs and runs `detect` once; the short-lived git processes
   it starts are separate processes, not counted. Target: under 300 MB.

More lines explain the first ratios (no target): `git log` alone, the history read of a first plan next to
its `git diff` (it reads every commit object for the authors and committers, the longest of detect's reads);
the 5-commit extension's `git log --left-right target...target~5 ^base` alone; the first plan's `git log`
and the `git diff` started together and read, nothing else (the floor of a first plan); and `detect` of a
first plan on a new `GitMirror` each time (a plan run's first detect also starts the `cat-file --batch`
process that the timed runs above reuse).

It also checks the answers: `detect` reports exactly the touched files (and selects exactly them), and
dbt's `state:modified` selection has nodes from every touched file and exactly the touched SQL models.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dagctl_dagster.adapters.dbt import explain_dbt_plan  # noqa: E402
from dagctl_dagster.adapters.git import HISTORY_CACHE_NAME, GitMirror  # noqa: E402
from dagctl_dagster.core.config import ProjectConfig  # noqa: E402
from dagctl_dagster.core.plan import PlanSpec  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
DBT = Path(sys.executable).with_name("dbt")
MODELS_PER_FOLDER = 20
# One schema YAML among the touched files for every nine SQL models.
YAML_SHARE = 10
NOW = datetime(2024, 1, 1, tzinfo=UTC)
FIRST_COMMIT_TIME = 1_700_000_000

# A plan whose range extends the last one by more commits than `detect` reads one by one lists them with
# `git log --left-right` (GitMirror.start_change_read).
FAR_EXTENSION = 5
# What `detect`'s `git log` prints of each commit.
HISTORY_FORMAT = "%ct%x00%an%x00%ae%x00%cn%x00%ce"

TARGET_GIT_RATIO = 2.0
TARGET_DBT_RATIO = 10.0
TARGET_PEAK_MB = 300.0

DBT_PROJECT = """\
name: bench
version: "1.0.0"
config-version: 2
profile: bench
model-paths: ["models"]
models:
  bench:
    +materialized: table
    staging:
      +materialized: view
"""
PROFILES = """\
bench:
  target: prod
  outputs:
    prod:
      type: duckdb
      path: "{path}"
      threads: 1
"""
PROJECT_CONFIG = 'version: "1"\n'

# The probe run in a fresh process for the memory measurement: imports, configs, one `detect`, RSS out.
# It reads VmHWM (the peak RSS of this process image) rather than `ru_maxrss`: Linux carries the RSS of the
# process that forked us over into `ru_maxrss` across exec, so `ru_maxrss` would report the benchmark's own
# size (and `RUSAGE_CHILDREN` would report at least this probe's size, so git's own is left out).
MEMORY_PROBE = """\
import json, re, sys
from datetime import UTC, datetime
from pathlib import Path


def peak_rss_kb():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))


start_kb = peak_rss_kb()
from dagctl_dagster.adapters.dbt import explain_dbt_plan
from dagctl_dagster.adapters.git import GitMirror
from dagctl_dagster.core.config import ProjectConfig

url, mirror_dir, base, target = sys.argv[1:5]
project = ProjectConfig.model_validate(
    {"name": "bench", "framework": "dbt", "repository": url, "environments": [{"name": "prod"}]}
)
imported_kb = peak_rss_kb()
spec = explain_dbt_plan(
    GitMirror(url, Path(mirror_dir)), project, project.environments[0], plan_id="bench-prod-00000000",
    target_commit=target, base_commit=base, base_version="1", triggered_by="sensor", requested_by=None,
    now=datetime(2024, 1, 1, tzinfo=UTC),
)
print(json.dumps({
    "files": len(spec.files),
    "start_kb": start_kb,
    "imported_kb": imported_kb,
    "peak_kb": peak_rss_kb(),
}))
"""


@dataclass(frozen=True)
class BenchRepository:
    """The generated repository: where it is, its two commits and the files changed between them."""

    url: str
    base: str
    previous: str
    far_previous: str
    target: str
    touched: tuple[str, ...]


@dataclass(frozen=True)
class DbtSelection:
    """What `dbt ls --select state:modified` selected: node ids and the files they come from."""

    unique_ids: tuple[str, ...]
    files: frozenset[str]


@dataclass(frozen=True)
class MemoryReport:
    """RSS high-water marks (MB) of the fresh probe process: at start, after imports, after `detect`."""

    start_mb: float
    imported_mb: float
    peak_mb: float


# -- the generated dbt project --------------------------------------------------------------------------------


def build_layout(models: int) -> dict[str, list[str]]:
    """Model names per layer: 40% staging, 35% intermediate, the rest marts."""
    staging = max(1, models * 40 // 100)
    intermediate = max(1, models * 35 // 100)
    marts = max(1, models - staging - intermediate)
    return {
        "staging": [f"stg_{i:05}" for i in range(staging)],
        "intermediate": [f"int_{i:05}" for i in range(intermediate)],
        "marts": [f"mart_{i:05}" for i in range(marts)],
    }


def build_model_sql(layer: str, index: int, layout: dict[str, list[str]], revision: int) -> str:
    """The SQL of one model; `revision` is the number of commits that changed it."""
    if layer == "staging":
        return f"select {index} as id, 'row {index}' as label, {revision} as change_number\n"
    if layer == "intermediate":
        upstream = layout["staging"]
        first, second = upstream[index * 7 % len(upstream)], upstream[(index * 13 + 1) % len(upstream)]
        return (
            "select a.id, a.label, b.label as other_label, "
            f"a.change_number + b.change_number + {revision} as change_number\n"
            f"from {{{{ ref('{first}') }}}} as a\n"
            f"join {{{{ ref('{second}') }}}} as b on a.id = b.id\n"
        )
    upstream = layout["intermediate"]
    first, second = upstream[index * 5 % len(upstream)], upstream[(index * 11 + 3) % len(upstream)]
    staging = layout["staging"][index * 3 % len(layout["staging"])]
    return (
        "select a.id, a.label, count(*) as row_count, "
        f"sum(b.change_number) + {revision} as change_number\n"
        f"from {{{{ ref('{first}') }}}} as a\n"
        f"join {{{{ ref('{second}') }}}} as b on a.id = b.id\n"
        f"join {{{{ ref('{staging}') }}}} as s on a.id = s.id\n"
        "group by 1, 2\n"
    )


def build_schema_yaml(names: Sequence[str], revision: int) -> str:
    """A schema file for one folder; a change adds a value to an `accepted_values` test (a new test node)."""
    lines = ["version: 2", "", "models:"]
    for position, name in enumerate(names):
        lines += [
            f"  - name: {name}",
            f"    description: Generated model {name}.",
            "    columns:",
            "      - name: id",
            "        data_tests:",
            "          - not_null",
            "          - unique",
        ]
        if position == 0:
            values = ", ".join(str(value) for value in range(revision + 1))
            lines += [
                "      - name: change_number",
                "        data_tests:",
                "          - accepted_values:",
                "              arguments:",
                f"                values: [{values}]",
                "              config:",
                "                severity: warn",
            ]
    return "\n".join(lines) + "\n"


def build_project_files(models: int) -> dict[str, Callable[[int], str]]:
    """Every file of the project, as a function from its revision to its content."""
    layout = build_layout(models)
    files: dict[str, Callable[[int], str]] = {
        "dbt_project.yml": lambda revision: DBT_PROJECT,
        ".dagctl/config.yaml": lambda revision: PROJECT_CONFIG,
    }
    for layer, names in layout.items():
        for start in range(0, len(names), MODELS_PER_FOLDER):
            folder = f"models/{layer}/group_{start // MODELS_PER_FOLDER:03}"
            group = names[start : start + MODELS_PER_FOLDER]
            for offset, name in enumerate(group):
                files[f"{folder}/{name}.sql"] = (
                    lambda revision, layer=layer, index=start + offset: build_model_sql(
                        layer, index, layout, revision
                    )
                )
            files[f"{folder}/schema.yml"] = lambda revision, group=group: build_schema_yaml(group, revision)
    return files


def choose_touched_files(paths: Sequence[str], count: int) -> tuple[str, ...]:
    """`count` files spread over the project: one schema YAML for every nine SQL models."""
    sql = [path for path in paths if path.endswith(".sql")]
    yaml = [path for path in paths if path.endswith("schema.yml")]
    yaml_count = min(len(yaml), max(1, count // YAML_SHARE))
    sql_count = count - yaml_count
    if sql_count > len(sql):
        raise SystemExit(f"--files {count} is more than the project has ({len(sql)} models)")

    def spread(items: Sequence[str], wanted: int) -> list[str]:
        return [items[position * len(items) // wanted] for position in range(wanted)]

    return tuple(sorted(spread(sql, sql_count) + spread(yaml, yaml_count)))


def build_fast_import_stream(
    files: dict[str, Callable[[int], str]], touched: Sequence[str], commits: int
) -> bytes:
    """A `git fast-import` stream: the base commit with every file, then `commits` one-file commits."""
    chunks: list[bytes] = []

    def data(text: str) -> None:
        payload = text.encode()
        chunks.append(b"data %d\n" % len(payload) + payload + b"\n")

    def commit(number: int, message: str) -> None:
        stamp = f"Bench <bench@example.com> {FIRST_COMMIT_TIME + number * 60} +0000"
        chunks.append(f"commit refs/heads/main\nauthor {stamp}\ncommitter {stamp}\n".encode())
        data(message)

    commit(0, "Base: generated dbt project")
    for path, content in files.items():
        chunks.append(f"M 100644 inline {path}\n".encode())
        data(content(0))
    revisions = dict.fromkeys(touched, 0)
    for number in range(1, commits + 1):
        path = touched[(number - 1) % len(touched)]
        revisions[path] += 1
        commit(number, f"Change {path} (revision {revisions[path]})")
        chunks.append(f"M 100644 inline {path}\n".encode())
        data(files[path](revisions[path]))
    return b"".join(chunks)


def git(*args: str, git_dir: Path, stdin: bytes | None = None, env: dict[str, str] | None = None) -> str:
    """Run git on a bare repository and return its output."""
    result = subprocess.run(
        ["git", f"--git-dir={git_dir}", *args], input=stdin, capture_output=True, check=False, env=env
    )
    if result.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {result.stderr.decode(errors='replace')}")
    return result.stdout.decode()


def generate_repository(folder: Path, models: int, commits: int, touched_count: int) -> BenchRepository:
    """A bare repository `folder/remote.git` with the base commit and `commits` commits on `main`."""
    if commits < max(touched_count, FAR_EXTENSION):
        raise SystemExit(f"--commits ({commits}) must be at least --files ({touched_count}) and {FAR_EXTENSION}")
    files = build_project_files(models)
    touched = choose_touched_files(sorted(files), touched_count)
    remote = folder / "remote.git"
    subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(remote)], check=True)
    git("fast-import", "--quiet", git_dir=remote, stdin=build_fast_import_stream(files, touched, commits))
    return BenchRepository(
        url=str(remote),
        base=git("rev-parse", f"main~{commits}", git_dir=remote).strip(),
        previous=git("rev-parse", "main~1", git_dir=remote).strip(),
        far_previous=git("rev-parse", f"main~{FAR_EXTENSION}", git_dir=remote).strip(),
        target=git("rev-parse", "main", git_dir=remote).strip(),
        touched=touched,
    )


# -- the three sides --------------------------------------------------------------------------------------


def run_detect(mirror: GitMirror, project: ProjectConfig, repository: BenchRepository,
               target: str | None = None) -> PlanSpec:
    """Our `detect`: the sealed plan of the change from base to target (default the repository's), from Git
    alone."""
    return explain_dbt_plan(
        mirror,
        project,
        project.environments[0],
        plan_id="bench-prod-00000000",
        target_commit=target or repository.target,
        base_commit=repository.base,
        base_version="1",
        triggered_by="sensor",
        requested_by=None,
        now=NOW,
    )


def run_git_diff(mirror_dir: Path, repository: BenchRepository) -> str:
    """The baseline: plain `git diff --name-status` between the same two commits in the same mirror."""
    return git("diff", "--name-status", repository.base, repository.target, git_dir=mirror_dir)


def run_git_log(mirror_dir: Path, repository: BenchRepository) -> str:
    """The history read of a first plan's `detect` alone: the committer time, author and committer of every
    commit from base to target, with the same arguments and the same `GIT_FLUSH=0`."""
    return git("log", "--encoding=UTF-8", f"--format={HISTORY_FORMAT}", f"{repository.base}..{repository.target}",
               "--", git_dir=mirror_dir, env={**os.environ, "GIT_FLUSH": "0"})


def run_git_log_extension(mirror_dir: Path, repository: BenchRepository) -> str:
    """The history read of the 5-commit extension alone: the commits of target that target~5 lacks, and
    the reverse, outside base (what `detect` runs when its cache holds base..target~5)."""
    return git("log", "--encoding=UTF-8", "--left-right", f"--format=%m{HISTORY_FORMAT}",
               f"{repository.target}...{repository.far_previous}", f"^{repository.base}", "--",
               git_dir=mirror_dir, env={**os.environ, "GIT_FLUSH": "0"})


def run_git_log_and_diff(mirror_dir: Path, repository: BenchRepository) -> None:
    """The floor of `detect`: its `git log` and a `git diff` started together, both outputs read."""
    base, target = repository.base, repository.target
    env = {**os.environ, "GIT_FLUSH": "0"}
    processes = [
        subprocess.Popen(["git", f"--git-dir={mirror_dir}", *args], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL)
        for args in (["log", "--encoding=UTF-8", f"--format={HISTORY_FORMAT}", f"{base}..{target}", "--"],
                     ["diff", "--name-status", base, target])
    ]
    for process in processes:
        assert process.stdout is not None
        with process.stdout:
            process.stdout.read()
        if process.wait() != 0:
            raise SystemExit(f"{' '.join(map(str, process.args))} failed")


def run_dbt(args: Sequence[str], project_dir: Path, profiles_dir: Path) -> str:
    """Run the venv's dbt in `project_dir` with a full parse and no telemetry; return its standard output."""
    env = {**os.environ, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    command = [
        str(DBT), *args, "--no-partial-parse", "--project-dir", str(project_dir), "--profiles-dir", str(profiles_dir)
    ]
    result = subprocess.run(command, cwd=project_dir, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}")
    return result.stdout


def run_dbt_state_modified(base_dir: Path, target_dir: Path, profiles_dir: Path) -> DbtSelection:
    """dbt's own way: parse the base checkout for the state manifest, then `dbt ls state:modified` on target."""
    run_dbt(["parse"], base_dir, profiles_dir)
    output = run_dbt(
        [
            "--quiet",
            "ls",
            "--select",
            "state:modified",
            "--state",
            str(base_dir / "target"),
            "--output",
            "json",
            "--output-keys",
            "unique_id original_file_path",
        ],
        target_dir,
        profiles_dir,
    )
    nodes = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return DbtSelection(
        unique_ids=tuple(sorted(node["unique_id"] for node in nodes)),
        files=frozenset(node["original_file_path"] for node in nodes),
    )


def measure_memory(repository: BenchRepository, mirror_dir: Path) -> MemoryReport:
    """Peak RSS of a fresh process that imports our module and runs `detect` once (see MEMORY_PROBE)."""
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, repository.url, str(mirror_dir), repository.base, repository.target],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"memory probe failed:\n{result.stderr[-3000:]}")
    probe = json.loads(result.stdout)
    if probe["files"] != len(repository.touched):
        raise SystemExit(f"memory probe saw {probe['files']} changed files, expected {len(repository.touched)}")
    return MemoryReport(
        start_mb=probe["start_kb"] / 1024,
        imported_mb=probe["imported_kb"] / 1024,
        peak_mb=probe["peak_kb"] / 1024,
    )


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


@dataclass(frozen=True)
class BenchResults:
    """Everything one run measured, and the answers each side gave."""

    repository: BenchRepository
    generation_seconds: float
    detect_runs: tuple[float, ...]
    git_runs: tuple[float, ...]
    steady_detect_runs: tuple[float, ...]
    steady_git_runs: tuple[float, ...]
    far_detect_runs: tuple[float, ...]
    far_git_runs: tuple[float, ...]
    log_runs: tuple[float, ...]
    extension_log_runs: tuple[float, ...]
    floor_runs: tuple[float, ...]
    fresh_detect_runs: tuple[float, ...]
    dbt_runs: tuple[float, ...]
    memory: tuple[MemoryReport, ...]
    spec: PlanSpec
    steady_spec: PlanSpec
    far_spec: PlanSpec
    git_diff_lines: int
    selection: DbtSelection


def measure(root: Path, args: argparse.Namespace) -> BenchResults:
    """Generate the repository in `root`, then time every side and probe the memory of `detect`."""
    progress(f"generating {args.models} models and {args.commits} commits touching {args.files} files")
    started = time.perf_counter()
    repository = generate_repository(root, args.models, args.commits, args.files)
    generation_seconds = time.perf_counter() - started

    mirror_dir = root / "mirror"
    mirror = GitMirror(repository.url, mirror_dir)
    mirror.ensure()
    project = ProjectConfig.model_validate(
        {"name": "bench", "framework": "dbt", "repository": repository.url, "environments": [{"name": "prod"}]}
    )
    base_dir = mirror.export_snapshot(repository.base, root / "checkouts" / "base")
    target_dir = mirror.export_snapshot(repository.target, root / "checkouts" / "target")
    profiles_dir = root / "profiles"
    profiles_dir.mkdir()
    (profiles_dir / "profiles.yml").write_text(PROFILES.format(path=root / "bench.duckdb"))

    # The history cache as the previous plan (base..target~1) leaves it: put back before every steady run.
    cache_file = mirror_dir / HISTORY_CACHE_NAME
    run_detect(mirror, project, repository, target=repository.previous)
    previous_plan_cache = cache_file.read_bytes()
    cache_file.unlink()
    run_detect(mirror, project, repository, target=repository.far_previous)
    far_plan_cache = cache_file.read_bytes()

    def first_plan() -> None:
        cache_file.unlink(missing_ok=True)

    def extended_by_one_commit() -> None:
        cache_file.write_bytes(previous_plan_cache)

    def extended_by_far() -> None:
        cache_file.write_bytes(far_plan_cache)

    def nothing() -> None:
        pass

    # Warm-up (imports, the OS cache of the mirror), then interleaved runs so drift hits both sides alike.
    first_plan()
    spec = run_detect(mirror, project, repository)
    extended_by_one_commit()
    steady_spec = run_detect(mirror, project, repository)
    extended_by_far()
    far_spec = run_detect(mirror, project, repository)
    git_diff_lines = len(run_git_diff(mirror_dir, repository).splitlines())
    progress(f"timing detect (first plan, extended range), git diff, git logs, log + diff, detect on a new "
             f"GitMirror: {args.repeat} runs each")
    runs: dict[str, list[float]] = {name: [] for name in (
        "detect", "git", "steady_detect", "steady_git", "far_detect", "far_git", "log", "extension_log", "floor",
        "fresh_detect")}
    for repetition in range(args.repeat):
        fresh_mirror = GitMirror(repository.url, mirror_dir)
        # (samples, untimed preparation, timed action); each detect line has its own git diff line next to it.
        rounds = [
            ("detect", first_plan, lambda: run_detect(mirror, project, repository)),
            ("git", nothing, lambda: run_git_diff(mirror_dir, repository)),
            ("steady_detect", extended_by_one_commit, lambda: run_detect(mirror, project, repository)),
            ("steady_git", nothing, lambda: run_git_diff(mirror_dir, repository)),
            ("far_detect", extended_by_far, lambda: run_detect(mirror, project, repository)),
            ("far_git", nothing, lambda: run_git_diff(mirror_dir, repository)),
            ("log", nothing, lambda: run_git_log(mirror_dir, repository)),
            ("extension_log", nothing, lambda: run_git_log_extension(mirror_dir, repository)),
            ("floor", nothing, lambda: run_git_log_and_diff(mirror_dir, repository)),
            ("fresh_detect", first_plan, lambda mirror=fresh_mirror: run_detect(mirror, project, repository)),
        ]
        for name, prepare, action in rounds if repetition % 2 == 0 else reversed(rounds):
            prepare()
            runs[name].append(timed(action))

    progress(f"timing dbt parse + dbt ls --select state:modified, {args.dbt_repeat} runs")
    dbt_runs: list[float] = []
    selections: list[DbtSelection] = []
    for _ in range(args.dbt_repeat):
        started = time.perf_counter()
        selections.append(run_dbt_state_modified(base_dir, target_dir, profiles_dir))
        dbt_runs.append(time.perf_counter() - started)

    progress(f"measuring peak memory of detect (first plan of the range) in a fresh process, {args.repeat} runs")
    memory: list[MemoryReport] = []
    for _ in range(args.repeat):
        first_plan()
        memory.append(measure_memory(repository, mirror_dir))
    return BenchResults(
        repository=repository,
        generation_seconds=generation_seconds,
        detect_runs=tuple(runs["detect"]),
        git_runs=tuple(runs["git"]),
        steady_detect_runs=tuple(runs["steady_detect"]),
        steady_git_runs=tuple(runs["steady_git"]),
        far_detect_runs=tuple(runs["far_detect"]),
        far_git_runs=tuple(runs["far_git"]),
        log_runs=tuple(runs["log"]),
        extension_log_runs=tuple(runs["extension_log"]),
        floor_runs=tuple(runs["floor"]),
        fresh_detect_runs=tuple(runs["fresh_detect"]),
        dbt_runs=tuple(dbt_runs),
        memory=tuple(memory),
        spec=spec,
        steady_spec=steady_spec,
        far_spec=far_spec,
        git_diff_lines=git_diff_lines,
        selection=selections[-1],
    )


# -- report -----------------------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"... {message}", file=sys.stderr, flush=True)


def format_seconds(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Median of per-repetition ratios: each repetition times both sides back to back, so it drifts less."""
    return statistics.median(top / bottom for top, bottom in zip(numerators, denominators, strict=True))


def print_report(results: BenchResults, args: argparse.Namespace) -> None:
    """The results table: absolute medians with every run, the three targets, and the correctness checks."""
    repository, spec, selection = results.repository, results.spec, results.selection
    touched = set(repository.touched)
    touched_sql = sum(1 for path in touched if path.endswith(".sql"))
    detect_median = statistics.median(results.detect_runs)
    git_median = statistics.median(results.git_runs)
    dbt_median = statistics.median(results.dbt_runs)
    peak_mb = statistics.median(report.peak_mb for report in results.memory)
    git_ratio = detect_median / git_median
    steady_ratio = statistics.median(results.steady_detect_runs) / statistics.median(results.steady_git_runs)
    dbt_ratio = dbt_median / detect_median
    width = 62

    print(
        f"dbt detect benchmark: {args.models} models, {args.commits} commits touching {len(touched)} files "
        f"({touched_sql} SQL, {len(touched) - touched_sql} YAML); base {repository.base[:12]} -> target "
        f"{repository.target[:12]}; generated in {results.generation_seconds:.1f} s; load average "
        f"{os.getloadavg()[0]:.1f}"
    )
    print()
    print(f"{'measurement':<{width}} {'median':>10}  runs")
    for label, runs in (
        ("git diff --name-status base target (next to the first plan)", results.git_runs),
        ("detect, first plan of the range (no history cache)", results.detect_runs),
        ("git diff --name-status base target (next to the extended one)", results.steady_git_runs),
        ("detect, range extended by one commit since the last plan", results.steady_detect_runs),
        ("git diff --name-status base target (next to the 5-commit one)", results.far_git_runs),
        ("detect, range extended by 5 commits (git log --left-right)", results.far_detect_runs),
        ("  git log of a first plan's history read, alone", results.log_runs),
        ("  git log --left-right target...target~5 ^base, alone", results.extension_log_runs),
        ("  first plan's git log and git diff together, only", results.floor_runs),
        ("  detect, first plan, on a new GitMirror (starts cat-file)", results.fresh_detect_runs),
        ("dbt parse base + dbt ls state:modified target", results.dbt_runs),
    ):
        print(f"{label:<{width}} {format_seconds(statistics.median(runs)):>10}  "
              f"{', '.join(map(format_seconds, runs))}")
    print(
        f"{'detect peak RSS, fresh process, first plan':<{width}} {peak_mb:>7.1f} MB  "
        f"{', '.join(f'{report.peak_mb:.1f}' for report in results.memory)}"
    )
    print(
        f"  (whole Python process, VmHWM: {statistics.median(r.start_mb for r in results.memory):.1f} MB at "
        f"interpreter start, {statistics.median(r.imported_mb for r in results.memory):.1f} MB after imports; "
        "git children apart)"
    )
    print()
    print(f"{'target':<{width}} {'value':>10}  {'goal':<10} result")
    rows = (
        ("detect / git diff, range extended by one commit", steady_ratio, TARGET_GIT_RATIO),
        ("  (the same, median of paired runs)", paired_ratio(results.steady_detect_runs, results.steady_git_runs),
         None),
        ("  (range extended by 5 commits, git log --left-right)",
         statistics.median(results.far_detect_runs) / statistics.median(results.far_git_runs), None),
        ("  (first plan of the range, no history cache: no target)", git_ratio, None),
        ("  (first plan, median of paired runs)", paired_ratio(results.detect_runs, results.git_runs), None),
        ("  (its floor on two CPUs: its git log + git diff together)",
         statistics.median(results.floor_runs) / git_median, None),
    )
    for label, value, goal in rows:
        print(f"{label:<{width}} {value:>10.2f}" + (f"  {f'<= {goal}':<10} {verdict(value <= goal)}" if goal else ""))
    for label, value, goal, passed in (
        ("dbt state:modified / detect (first plan)", f"{dbt_ratio:.0f}x", f">= {TARGET_DBT_RATIO}",
         dbt_ratio >= TARGET_DBT_RATIO),
        ("detect peak RSS (MB)", f"{peak_mb:.1f}", f"< {TARGET_PEAK_MB}", peak_mb < TARGET_PEAK_MB),
    ):
        print(f"{label:<{width}} {value:>10}  {goal:<10} {verdict(passed)}")

    detected = {change.path for change in spec.files}
    is_detect_exact = (
        detected == touched
        and len(spec.files) == len(touched)
        and spec.dbt_scope.selection == tuple(f"path:{path}" for path in sorted(touched))
        and results.git_diff_lines == len(touched)
    )
    covered = touched & selection.files
    models = sum(1 for unique_id in selection.unique_ids if unique_id.startswith("model."))
    tests = sum(1 for unique_id in selection.unique_ids if unique_id.startswith("test."))
    print()
    print("correctness")
    print(f"  detect with the history cache of base..target~1 gives the same sealed plan as without it "
          f"({len(spec.authors)} identities, {spec.commits_ahead} commits ahead)  "
          f"{verdict(results.steady_spec == spec)}")
    print(f"  the same with the history cache of base..target~{FAR_EXTENSION}  {verdict(results.far_spec == spec)}")
    print(
        f"  detect: {len(spec.files)} changed files (expected {len(touched)}), scope {spec.dbt_scope.scope.value}, "
        f"{len(spec.dbt_scope.selection)} path: selectors; git diff lists {results.git_diff_lines} files  "
        f"{verdict(is_detect_exact)}"
    )
    print(
        f"  dbt state:modified: {len(selection.unique_ids)} nodes ({models} models, expected {touched_sql}; "
        f"{tests} tests), covering {len(covered)} of the {len(touched)} touched files  "
        f"{verdict(covered == touched and models == touched_sql)}"
    )
    print(
        f"    ({len(selection.files - touched)} other schema files hold tests of changed models, which dbt adds "
        "by its eager indirect selection)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=2000, help="dbt models in the project")
    parser.add_argument("--commits", type=int, default=1000, help="commits between base and target")
    parser.add_argument("--files", type=int, default=100, help="distinct files those commits touch")
    parser.add_argument("--repeat", type=int, default=11, help="runs of detect, git diff and the memory probe")
    parser.add_argument("--dbt-repeat", type=int, default=2, help="runs of dbt parse + dbt ls (slow)")
    parser.add_argument("--quick", action="store_true", help="smoke size: 200 models, 100 commits, 20 files")
    args = parser.parse_args()
    if args.quick:
        args.models, args.commits, args.files, args.repeat, args.dbt_repeat = 200, 100, 20, 3, 1
    with tempfile.TemporaryDirectory(prefix="bench-dbt-detect-") as tmp:
        results = measure(Path(tmp), args)
    print_report(results, args)


if __name__ == "__main__":
    main()
