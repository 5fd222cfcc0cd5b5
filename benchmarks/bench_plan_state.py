"""Benchmark: plan state reads with 10, 1,000 and 10,000 plans of history (issue 12).

Writes a randomized history (about six events per plan, realistic specs: `tests/fixtures/plan_histories.py`)
through the product's own store function (`record_runless`) into a real instance, growing the same history
from one size to the next: Dagster's default SQLite instance, then a dagster-postgres instance
(`examples/dagster-postgres.yaml`) on a throwaway server (`tests/fixtures/postgres.py`; always stopped,
skipped with a message where no server can be started). After each size it measures (median of `--repeat`):

- `plan sensor tick`: the real `jaffle_plan_sensor` on a no-change tick (the Git head's version is the
  newest plan's), evaluated as the daemon evaluates it: with the cursor the previous tick set. The first
  two ticks after the size's new head are not timed (the first fetches the head into the mirror; both
  check in full, the second confirming the first under the same event mark); every timed tick does what
  every later daemon tick does: one `git ls-remote` and one indexed lookup of the plan events' mark.
  Timed alternately with `git ls-remote` of the same remote, so both see the same load.
- `plan sensor tick without cursor`: the same tick with no cursor, a full check (state read, the version
  file at the head), as after any plan event. Not a target; it shows what the cursor saves.
- `gate state read`: what `gate` reads for one plan (its state, and the environment's index twice: the
  busy check and the stale check);
- `review decision`: a decision's state read plus `PlanRuntime.record` (summary, policy, the event);
- `plans list --limit 20` / `--limit 10`: the GraphQL client against Dagster's schema in-process (no
  webserver). At 10 plans, `--limit 20` shows 10 plans and at 10,000 it shows 20, so its 10,000 / 10
  ratio compares twice the plans (and their events); `--limit 10` shows 10 plans at every size. Then
  `--limit 20` again after a late decision on the oldest plan (its first event is the history's first);
- `plans show <the oldest plan>`: the client reading the history's first plan by its partition.

Then prints, per storage, each at the largest size divided by each smaller one (target <= 1.5), the tick
divided by `git ls-remote` (target <= 1.5), the peak Python memory of a sensor tick (with and without
cursor) at the largest size (tracemalloc, target < 200 MB). The CPU of importing the code location is
`bench_decision.py`'s.

Run: `.venv/bin/python benchmarks/bench_plan_state.py [--sizes 10,1000,10000] [--dir /dev/shm]
[--storage both|sqlite|postgres]`. Writing 10,000 plans takes minutes per storage (tens of minutes on a
busy machine).
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from dagster import DagsterInstance, build_sensor_context, instance_for_test  # noqa: E402
from fixtures.git_repos import make_repo  # noqa: E402
from fixtures.graphql_in_process import in_process_client  # noqa: E402
from fixtures.plan_histories import iter_history  # noqa: E402
from fixtures.postgres import (  # noqa: E402
    HOW_TO_ENABLE,
    URL_VARIABLE,
    find_postgres_bin,
    load_postgres_instance_config,
    start_postgres,
)

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


def _paired_medians(first: Callable[[], object], second: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Medians of `first` and `second` timed alternately, so that both see the same load."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for action, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            action()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def measure(instance: DagsterInstance, root: Path, sizes: list[int], repeat: int) -> tuple[dict, float]:
    """Writes the growing history into `instance` and measures each size; returns the results and the peak
    Python memory of a sensor tick at the largest size."""
    history = iter_history(random.Random(2026), plans=sizes[-1])
    results: dict[int, dict[str, float]] = {}
    repo = make_repo(root / "repo")
    config_path = root / "dagctl.yaml"
    config_path.write_text(CONFIG.format(storage=root / "data", repo=repo.url))
    runtime = PlanRuntime(deployment=load_deployment_config(config_path), storage_dir=root / "data",
                          config_dir=root, clock=lambda: datetime.now(UTC))
    defs = build_definitions(runtime)
    sensor = defs.resolve_sensor_def("jaffle_plan_sensor")
    cursor: list[str | None] = [None]
    written = plans = 0
    oldest = None
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
            oldest = oldest or (event if event.kind is EventKind.CREATED else None)
        else:
            pending_created = None
        write_s = time.perf_counter() - start
        index = read_plan_index(instance, "jaffle", "prod")  # a sensor would have checkpointed all along
        newest = index.newest
        repo.commit(f"version {newest.spec.version_new}",
                    {".dagctl/config.yaml": f"version: '{newest.spec.version_new}'\n"})

        def tick():
            # As the daemon ticks: with the cursor the previous tick set.
            context = build_sensor_context(instance=instance, definitions=defs, cursor=cursor[0])
            result = sensor(context)
            cursor[0] = context.cursor
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

        # The new head's first tick fetches it into the mirror and checks in full; the second checks in full
        # again under the same mark (the settle rule); from the third on, a tick is the steady no-change tick.
        for _ in range(3):
            tick()
        ls_remote = lambda: subprocess.run(["git", "ls-remote", repo.url, "refs/heads/main"], check=True,  # noqa: E731
                                           capture_output=True)
        tick_s, ls_remote_s = _paired_medians(tick, ls_remote, repeat)
        full_tick = _median(lambda: sensor(build_sensor_context(instance=instance, definitions=defs)), repeat)
        with in_process_client(instance) as (client, _):
            client.list_plans(limit=20)  # schema warm-up
            show_oldest = _median(lambda: client.get_plan(oldest.plan_id), repeat)
            list_plain = _median(lambda: client.list_plans(limit=20), repeat)
            # A years-old plan gets an event (a late decision): the newest page names it.
            record_runless(instance, PlanEvent(
                plan_id=oldest.plan_id, kind=EventKind.DECISION, decision=Decision.APPROVE, actor="carol",
                at=datetime.now(UTC), comment="late", fingerprint=oldest.spec.fingerprint),
                project="jaffle", environment="prod")
            results[size] = {
                "plan sensor tick": tick_s,
                "git ls-remote": ls_remote_s,
                "plan sensor tick without cursor": full_tick,
                "gate state read": _median(gate_read, repeat),
                "review decision": _median(decision, repeat),
                "plans list --limit 20": list_plain,
                "plans list --limit 10": _median(lambda: client.list_plans(limit=10), repeat),
                "plans list --limit 20 after a late event of the oldest plan":
                    _median(lambda: client.list_plans(limit=20), repeat),
                "plans show <the oldest plan>": show_oldest,
            }
        # The decisions recorded plan events: the next size starts from a moved mark, as after any event.
        print(f"{size:>6} plans ({written} events, written in {write_s:.0f} s): " + ", ".join(
            f"{name} {seconds * 1000:.1f} ms" for name, seconds in results[size].items()), flush=True)
        if pending_created is not None:
            record_runless(instance, pending_created, project="jaffle", environment="prod")
            written += 1
            plans += 1
    for _ in range(3):
        tick()
    tracemalloc.start()
    tick()
    full = sensor(build_sensor_context(instance=instance, definitions=defs))
    assert "up to date" in str(full), full
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return results, peak


def report(label: str, sizes: list[int], results: dict, peak: float) -> None:
    large = results[sizes[-1]]
    for base in sizes[:-1]:
        print(f"\n{label}: ratios {sizes[-1]} vs {base} plans (target <= 1.5):")
        for name, seconds in results[base].items():
            print(f"  {name}: {large[name] / seconds:.2f}")
    print(f"{label}: plan sensor tick / git ls-remote at {sizes[-1]} plans (target <= 1.5): "
          f"{large['plan sensor tick'] / large['git ls-remote']:.2f}")
    print(f"{label}: peak Python memory of a sensor tick (with and without cursor) at {sizes[-1]} plans "
          f"(target < 200 MB): {peak / 2**20:.1f} MB", flush=True)


@contextmanager
def postgres_instance(tmp: Path, server_dir: Path | None) -> Iterator[DagsterInstance]:
    """A dagster-postgres instance (`examples/dagster-postgres.yaml`) on a throwaway server (its data under
    `server_dir`, which the `postgres` user must reach), always stopped."""
    with start_postgres(server_dir) as server:
        database = server.create_database("dagctl_bench_plan_state")
        saved = {name: os.environ.get(name) for name in server.environ(database)}
        os.environ.update(server.environ(database))
        try:
            (tmp / "home").mkdir(exist_ok=True)
            with instance_for_test(load_postgres_instance_config(), temp_dir=str(tmp / "home")) as instance:
                yield instance
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,1000,10000", help="plan counts, ascending, comma separated")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", default=None, help="where the instance and repository live (e.g. /dev/shm)")
    parser.add_argument("--storage", choices=("both", "sqlite", "postgres"), default="both",
                        help="both: SQLite, then PostgreSQL when its server binaries exist (the default)")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.storage in ("both", "sqlite"):
        print("SQLite instance (Dagster's default storage)", flush=True)
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp, instance_for_test(temp_dir=tmp) as instance:
            report("SQLite", sizes, *measure(instance, Path(tmp), sizes, args.repeat))
    if args.storage in ("both", "postgres"):
        if args.storage == "both" and find_postgres_bin() is None and not os.environ.get(URL_VARIABLE):
            print(f"\nPostgreSQL skipped: {HOW_TO_ENABLE}")
        else:
            print("\nPostgreSQL instance (examples/dagster-postgres.yaml, throwaway server)", flush=True)
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp, postgres_instance(
                    Path(tmp), Path(args.dir) if args.dir else None) as instance:
                report("PostgreSQL", sizes, *measure(instance, Path(tmp), sizes, args.repeat))


if __name__ == "__main__":
    main()
