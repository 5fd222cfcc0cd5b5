"""Benchmark: the latency of a review decision (issue 12, "Latency of a decision").

Every decision is a Dagster run, and every run process imports the code location. Two ratios, each against
a baseline measured in the same run:

1. `import`: CPU time (user + sys, `getrusage` in the child) of `import dagctl_dagster.defs.location`
   divided by that of `import dagster`, each the median of `--imports` fresh interpreters, with the example
   config (`examples/dagctl.yaml`) and with a config holding dbt and SQLMesh projects on the local and the
   Kubernetes backend. Target: at most 1.5.
2. `decision`: a real `dagster-webserver` and `dagster-daemon` on 127.0.0.1 (a free port, each in its own
   process group, always stopped; telemetry off), with a workspace of two code locations: the product's
   (a dbt project whose `prod` is protected: two signed approvals of alice and bob) and a minimal one with
   an empty one-op job (`in_process_executor`, as the review job). Pending plans are written beforehand
   through the product's own `PlanRuntime.record`, the way the plan job records them. Then, alternated,
   `--repeat` times each after one warm-up of each:
   - `dagctl plans approve <plan> --as alice --key <alice's key>`: the real CLI as a subprocess, which
     signs with `ssh-keygen -Y sign`, launches the review run and returns once the decision is recorded
     (one approval of two: the plan stays pending, no execution starts);
   - a fresh Python process that launches the empty job through the same GraphQL client
     (`DagctlClient.launch_run`, then `wait_for_run` with the CLI's poll interval) until it finished.
   Target: median wall time of the decision / median of the empty job at most 1.3.

Run: `.venv/bin/python benchmarks/bench_decision.py [--repeat 5] [--imports 7]` (about 3 to 5 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
VENV_BIN = Path(sys.executable).parent
TELEMETRY_OFF = {"DAGSTER_DISABLE_TELEMETRY": "1", "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
                 "SQLMESH__DISABLE_ANONYMIZED_ANALYTICS": "1", "DO_NOT_TRACK": "1"}
os.environ.update(TELEMETRY_OFF)

import requests  # noqa: E402
from dagster import DagsterInstance  # noqa: E402
from e2e.conftest import find_free_port, process_group  # noqa: E402
from fixtures.git_repos import make_repo  # noqa: E402
from fixtures.plan_histories import build_spec  # noqa: E402
from fixtures.ssh_keys import make_key  # noqa: E402

from dagctl_dagster.adapters.graphql import DagctlClient  # noqa: E402
from dagctl_dagster.core.config import load_deployment_config  # noqa: E402
from dagctl_dagster.core.lifecycle import PlanStatus, build_created_event, build_status_event  # noqa: E402
from dagctl_dagster.core.policy import SYSTEM_ACTOR  # noqa: E402
from dagctl_dagster.defs.plan_job import plan_metadata  # noqa: E402
from dagctl_dagster.defs.runtime import PlanRuntime  # noqa: E402

IMPORT_TARGET = 1.5
DECISION_TARGET = 1.3
STARTUP_DEADLINE_SECONDS = 300.0
RUN_TIMEOUT_SECONDS = 600.0
EMPTY_JOB = "bench_empty_job"

DECISION_CONFIG = """\
storage_dir: {storage}
people:
  - {{name: alice, keys: ["{alice}"]}}
  - {{name: bob, keys: ["{bob}"]}}
projects:
  - name: jaffle
    framework: dbt
    repository: {repository}
    branch: main
    sensor_interval_seconds: 30
    environments:
      - name: prod
        protected: true
        approvers: [alice, bob]
        required_approvals: 2
        verify_approvals: true
"""

# The test's deployment (tests/defs/test_import_light.py): every kind of project and backend.
ALL_BACKENDS_CONFIG = """\
storage_dir: {storage}
projects:
  - name: jaffle
    framework: dbt
    repository: https://git.acme.io/analytics.git
    environments: [{{name: dev}}, {{name: prod, protected: true}}]
    schedules: [{{name: nightly_build, environment: dev, cron: "0 3 * * *", command: dbt_build}}]
  - name: jaffle_k8s
    framework: dbt
    repository: https://git.acme.io/analytics.git
    backend: {{type: kubernetes, namespace: data, runner_image: "ghcr.io/acme/dagctl-runner:1.0",
              registry: ghcr.io/acme}}
    environments: [{{name: prod, protected: true}}]
  - name: shop
    framework: sqlmesh
    repository: https://git.acme.io/shop.git
    environments: [{{name: dev}}]
    schedules: [{{name: hourly_run, environment: dev, cron: "0 * * * *", command: sqlmesh_run}}]
  - name: shop_k8s
    framework: sqlmesh
    repository: https://git.acme.io/shop.git
    backend: {{type: kubernetes, namespace: data, runner_image: "ghcr.io/acme/dagctl-runner:1.0"}}
    environments: [{{name: prod, protected: true}}]
"""

EMPTY_LOCATION = f"""\
from dagster import Definitions, in_process_executor, job, op


@op
def noop():
    pass


@job(name="{EMPTY_JOB}", executor_def=in_process_executor)
def empty_job():
    noop()


defs = Definitions(jobs=[empty_job])
"""

WORKSPACE = """\
load_from:
  - python_module:
      module_name: dagctl_dagster.defs.location
      attribute: defs
      location_name: dagctl
  - python_file:
      relative_path: empty_location.py
      attribute: defs
      location_name: empty
"""

# The baseline client: a fresh process, like the CLI, with the CLI's client and poll interval.
LAUNCH_EMPTY = f"""
import sys
from dagctl_dagster.adapters.graphql import DagctlClient
client = DagctlClient(sys.argv[1])
run = client.wait_for_run(client.launch_run("{EMPTY_JOB}", {{}}, {{}}), timeout={RUN_TIMEOUT_SECONDS})
assert run.status == "SUCCESS", run
print(run.run_id)
"""


def import_cpu(module: str, config: Path) -> float:
    """CPU seconds (user + sys) a fresh interpreter spends importing `module`."""
    code = textwrap.dedent(f"""
        import resource
        def cpu():
            r = resource.getrusage(resource.RUSAGE_SELF)
            return r.ru_utime + r.ru_stime
        start = cpu()
        import {module}
        print(cpu() - start)
    """)
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "DAGCTL_CONFIG": str(config)})
    return float(result.stdout.split()[-1])


def measure_imports(configs: dict[str, Path], repeat: int) -> None:
    print(f"import CPU (user+sys), median of {repeat} fresh processes each, alternated:")
    for name, config in configs.items():
        dagster_runs, location_runs = [], []
        for _ in range(repeat):
            dagster_runs.append(import_cpu("dagster", config))
            location_runs.append(import_cpu("dagctl_dagster.defs.location", config))
        dagster, location = statistics.median(dagster_runs), statistics.median(location_runs)
        ratio = location / dagster
        print(f"  {name:<40} location {location:.2f} s / dagster {dagster:.2f} s = {ratio:.2f}  "
              f"(target <= {IMPORT_TARGET})  {'PASS' if ratio <= IMPORT_TARGET else 'FAIL'}", flush=True)


def write_pending_plans(home: Path, config: Path, storage: Path, count: int, repository) -> list[str]:
    """`count` pending plans of jaffle/prod, recorded as the plan job records them; the branch head's
    version is the newest plan's, so the plan sensor finds nothing to do."""
    runtime = PlanRuntime(deployment=load_deployment_config(config), storage_dir=storage,
                          config_dir=config.parent)
    rng = random.Random(12)
    at = datetime.now(UTC) - timedelta(minutes=count)
    plan_ids = []
    with DagsterInstance.from_config(str(home)) as instance:
        for number in range(count):
            plan_id = f"jaffle-prod-{number:08x}"
            spec = build_spec(rng, plan_id, project="jaffle", environment="prod",
                              at=at + timedelta(minutes=number), base=None)
            runtime.record(instance, build_created_event(spec, run_id=None), metadata=plan_metadata(spec))
            runtime.record(instance, build_status_event(
                plan_id, PlanStatus.PENDING, actor=SYSTEM_ACTOR, at=spec.created_at, reason="awaiting approval"),
                metadata=plan_metadata(spec), materialize=True)
            plan_ids.append(plan_id)
    repository.commit(f"version {spec.version_new}", {".dagctl/config.yaml": f"version: '{spec.version_new}'\n"})
    return plan_ids


def wait_until_served(url: str, processes: list[subprocess.Popen], jobs: set[str]) -> None:
    query = {"query": "{ repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name } } } } }"}
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    problem = "no answer yet"
    while time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            raise RuntimeError("the webserver or the daemon exited during start-up")
        try:
            answer = requests.post(f"{url}/graphql", json=query, timeout=30).json()
            nodes = answer.get("data", {}).get("repositoriesOrError", {}).get("nodes") or []
            served = {job["name"] for node in nodes for job in node["jobs"]}
            if jobs <= served:
                return
            problem = f"jobs served so far: {sorted(served)}"
        except (requests.RequestException, ValueError) as exc:
            problem = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"webserver at {url} not ready in time: {problem}")


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_SECONDS + 60,
                            check=False)
    return time.perf_counter() - start, result


def measure_decisions(root: Path, repeat: int) -> None:
    home, storage, logs = root / "dagster_home", root / "storage", root / "logs"
    for folder in (home, storage, logs):
        folder.mkdir(parents=True)
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())  # telemetry: enabled: false
    alice, bob = make_key(root / "keys", "alice"), make_key(root / "keys", "bob")
    repository = make_repo(root / "jaffle")
    config = root / "dagctl.yaml"
    config.write_text(DECISION_CONFIG.format(storage=storage, repository=repository.url, alice=alice.public,
                                             bob=bob.public))
    (root / "empty_location.py").write_text(EMPTY_LOCATION)
    (root / "workspace.yaml").write_text(WORKSPACE)
    plan_ids = write_pending_plans(home, config, storage, repeat + 1, repository)

    server_env = {**os.environ, **TELEMETRY_OFF, "DAGSTER_HOME": str(home), "DAGCTL_CONFIG": str(config),
                  "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONUNBUFFERED": "1"}
    url = f"http://127.0.0.1:{find_free_port()}"
    # A client machine: none of the server's settings, only where the webserver is.
    client_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("DAGCTL_", "DAGSTER_HOME"))},
                  **TELEMETRY_OFF, "DAGCTL_URL": url}
    workspace = str(root / "workspace.yaml")
    start = time.perf_counter()
    with ExitStack() as stack:
        webserver = stack.enter_context(process_group(
            [str(VENV_BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", url.rsplit(":", 1)[1], "-w", workspace],
            env=server_env, log=logs / "webserver.log"))
        daemon = stack.enter_context(process_group(
            [str(VENV_BIN / "dagster-daemon"), "run", "-w", workspace], env=server_env, log=logs / "daemon.log"))
        try:
            wait_until_served(url, [webserver, daemon], {"jaffle_plan_job", "dagctl_review_job", EMPTY_JOB})
        except RuntimeError:
            for log in sorted(logs.glob("*.log")):
                print(f"--- {log.name}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-30:]))
            raise
        print(f"\ndagster-webserver and dagster-daemon at {url}: served after {time.perf_counter() - start:.0f} s",
              flush=True)

        def approve(plan_id: str) -> tuple[float, str]:
            seconds, result = timed([str(VENV_BIN / "dagctl"), "plans", "approve", plan_id, "--as", "alice",
                                     "--key", str(alice.path), "--comment", "benchmark", "--json"], client_env)
            assert result.returncode == 0 and json.loads(result.stdout)["actor"] == "alice", (
                f"approve failed: {result.stdout}{result.stderr}")
            return seconds, json.loads(result.stdout)["run_id"]

        def empty_job() -> tuple[float, str]:
            seconds, result = timed([sys.executable, "-c", LAUNCH_EMPTY, url], client_env)
            assert result.returncode == 0, f"empty job failed: {result.stdout}{result.stderr}"
            return seconds, result.stdout.split()[-1]

        warm_decision, warm_empty = approve(plan_ids[0]), empty_job()
        print(f"warm-up: decision {warm_decision[0]:.2f} s, empty job {warm_empty[0]:.2f} s", flush=True)
        decisions, empties = [], []
        for plan_id in plan_ids[1:]:
            decisions.append(approve(plan_id))
            empties.append(empty_job())
            print(f"  decision {decisions[-1][0]:.2f} s, empty job {empties[-1][0]:.2f} s", flush=True)
        client = DagctlClient(url)
        states = [client.get_plan(plan_id).state for plan_id in plan_ids]
        assert all(s.status is PlanStatus.PENDING and [a.actor for a in s.approvals] == ["alice"] for s in states), (
            "each plan has exactly alice's approval and is still pending")
    print_breakdown(home, {"decision": decisions, "empty job": empties})
    decision, empty = (statistics.median(seconds for seconds, _ in runs) for runs in (decisions, empties))
    ratio = decision / empty
    print(f"decision wall time, median of {repeat}: `dagctl plans approve` {decision:.2f} s / empty one-op job "
          f"{empty:.2f} s = {ratio:.2f}  (target <= {DECISION_TARGET})  {'PASS' if ratio <= DECISION_TARGET else 'FAIL'}")


def print_breakdown(home: Path, sides: dict[str, list[tuple[float, str]]]) -> None:
    """Where each side's time went (medians), from the runs' own records: `to start` (the run created until
    it started: the queue, the launch, the run worker's process start and its code location import), `ops`
    (started until finished), and `client` (the rest: the client's process, its requests, polling)."""
    print("where the time went (medians): to start / ops / client", flush=True)
    with DagsterInstance.from_config(str(home)) as instance:
        for side, runs in sides.items():
            parts = []
            for seconds, run_id in runs:
                record = instance.get_run_record_by_id(run_id)
                created = record.create_timestamp.timestamp()
                parts.append((record.start_time - created, record.end_time - record.start_time,
                              seconds - (record.end_time - created)))
            queued, worker, client = (statistics.median(column) for column in zip(*parts, strict=True))
            print(f"  {side:<10} {queued:6.2f} s / {worker:6.2f} s / {client:6.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--imports", type=int, default=7, help="fresh processes per import measurement")
    parser.add_argument("--repeat", type=int, default=5, help="decisions and empty jobs measured")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="dagctl-bench-decision-") as tmp:
        root = Path(tmp)
        all_backends = root / "all-backends.yaml"
        all_backends.write_text(ALL_BACKENDS_CONFIG.format(storage=root / "all-backends-data"))
        measure_imports({"examples/dagctl.yaml": ROOT / "examples" / "dagctl.yaml",
                         "dbt+SQLMesh, local+Kubernetes backends": all_backends}, args.imports)
        measure_decisions(root / "decision", args.repeat)
    print(f"load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
