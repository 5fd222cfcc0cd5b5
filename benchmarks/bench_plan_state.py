"""Benchmark: plan state reads with 10, 1,000 and 10,000 plans of history (issue 12).

Writes a randomized history (about six events per plan, realistic specs: `tests/fixtures/plan_histories.py`)
through the product's own store function (`record_runless`) into a real SQLite instance, growing the same
history from one size to the next, and after each size measures (median of `--repeat` runs):

- `plan sensor tick`: the real `jaffle_plan_sensor` evaluated on a no-change tick (the Git head's version
  is the newest plan's), against a real Git remote; and a plain `git ls-remote` of that remote;
- `gate state read`: what `gate` reads for one plan (its state, and the environment's index twice: the
  busy check and the stale check);
- `review decision`: a decision's state read plus `PlanRuntime.record` (summary, policy, the event);
- `plans list --limit 20`: the GraphQL client against Dagster's schema in-process (no webserver).

Then prints each at the largest size divided by the smallest (target <= 1.5), the tick divided by
`git ls-remote` (target <= 1.5), the peak Python memory of a sensor tick at the largest size (tracemalloc,
target < 200 MB), and the CPU time of importing the code location divided by `import dagster`.

Run: `.venv/bin/python benchmarks/bench_plan_state.py [--sizes 10,1000,10000] [--dir /dev/shm]`.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from dagster import build_sensor_context, instance_for_test  # noqa: E402
from fixtures.git_repos import make_repo  # noqa: E402
from fixtures.graphql_in_process import in_process_client  # noqa: E402
from fixtures.plan_histories import iter_history  # noqa: E402

from dagctl_dagster.core.config import load_deployment_config  # noqa: E402
from dagctl_dagster.core.lifecycle import Decision, EventKind, PlanEvent  # noqa: E402
from dagctl_dagster.defs.definitions import build_definitions  # noqa: E402
from dagctl_dagster.defs.runtime import PlanRuntime  # noqa: E402
from dagctl_dagster.defs.store import get_plan_state, read_plan_index, record_runless  # noqa: E402

CONFIG = """storage_dir: {storage}
projects:
  - name: jaffle
    framework: dbt
    repository: {repo}
    environments:
      - name: prod
        protected: true
        approvers: [alice, bob]
"""


def _median(action: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _import_cpu(module: str) -> float:
    """CPU seconds of importing `module` in a fresh interpreter (the code location loads the example)."""
    code = f"import time; t = time.process_time(); import {module}; print(time.process_time() - t)"
    env = {**os.environ, "DAGCTL_CONFIG": str(ROOT / "examples" / "dagctl.yaml")}
    runs = [float(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                                 cwd=ROOT, env=env).stdout.split()[-1]) for _ in range(3)]
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,10000", help="plan counts, ascending, comma separated")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", default=None, help="where the instance and repository live (e.g. /dev/shm)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    rng = random.Random(2026)
    history = iter_history(rng, plans=sizes[-1])
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp, instance_for_test(temp_dir=tmp) as instance:
        root = Path(tmp)
        repo = make_repo(root / "repo")
        config_path = root / "dagctl.yaml"
        config_path.write_text(CONFIG.format(storage=root / "data", repo=repo.url))
        runtime = PlanRuntime(deployment=load_deployment_config(config_path), storage_dir=root / "data",
                              config_dir=root, clock=lambda: datetime.now(UTC))
        defs = build_definitions(runtime)
        sensor = defs.resolve_sensor_def("jaffle_plan_sensor")
        written = plans = 0
        for size in sizes:
            start = time.perf_counter()
            for event in history:
                if event.kind is EventKind.CREATED:
                    if plans == size:
                        pending_created = event
                        break
                    plans += 1
                record_runless(instance, event, project="jaffle", environment="prod")
                written += 1
            else:
                pending_created = None
            write_s = time.perf_counter() - start
            index = read_plan_index(instance, "jaffle", "prod")  # a sensor would have checkpointed all along
            newest = index.newest
            repo.commit(f"version {newest.spec.version_new}",
                        {".dagctl/config.yaml": f"version: '{newest.spec.version_new}'\n"})

            def tick():
                result = sensor(build_sensor_context(instance=instance, definitions=defs))
                assert "up to date" in str(result), result

            def gate_read():
                get_plan_state(instance, newest.plan_id)
                read_plan_index(instance, "jaffle", "prod")
                read_plan_index(instance, "jaffle", "prod")

            def decision():
                state = get_plan_state(instance, newest.plan_id)
                runtime.record(instance, PlanEvent(
                    plan_id=state.plan_id, kind=EventKind.DECISION, decision=Decision.APPROVE, actor="carol",
                    at=datetime.now(UTC), comment="benchmark", fingerprint=state.spec.fingerprint))

            tick()  # the mirror's first fetch
            with in_process_client(instance) as (client, _):
                client.list_plans(limit=20)  # schema warm-up
                results[size] = {
                    "plan sensor tick": _median(tick, args.repeat),
                    "git ls-remote": _median(lambda: subprocess.run(
                        ["git", "ls-remote", repo.url, "refs/heads/main"], check=True, capture_output=True),
                        args.repeat),
                    "gate state read": _median(gate_read, args.repeat),
                    "review decision": _median(decision, args.repeat),
                    "plans list --limit 20": _median(lambda: client.list_plans(limit=20), args.repeat),
                }
            print(f"{size:>6} plans ({written} events, written in {write_s:.0f} s): " + ", ".join(
                f"{name} {seconds * 1000:.1f} ms" for name, seconds in results[size].items()), flush=True)
            if pending_created is not None:
                record_runless(instance, pending_created, project="jaffle", environment="prod")
                written += 1
                plans += 1
        tracemalloc.start()
        tick()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    large = results[sizes[-1]]
    for base in sizes[:-1]:
        # At 10 plans `plans list --limit 20` shows 10 plans, at 10,000 it shows 20: the later sizes compare
        # like with like.
        print(f"\nratios {sizes[-1]} vs {base} plans (target <= 1.5):")
        for name, seconds in results[base].items():
            print(f"  {name}: {large[name] / seconds:.2f}")
    print(f"plan sensor tick / git ls-remote at {sizes[-1]} plans (target <= 1.5): "
          f"{large['plan sensor tick'] / large['git ls-remote']:.2f}")
    print(f"peak Python memory of a sensor tick at {sizes[-1]} plans (target < 200 MB): {peak / 2**20:.1f} MB")
    location, dagster = _import_cpu("dagctl_dagster.defs.location"), _import_cpu("dagster")
    print(f"CPU of importing the code location / import dagster (target <= 1.5): {location:.2f} s / "
          f"{dagster:.2f} s = {location / dagster:.2f}")


if __name__ == "__main__":
    main()
