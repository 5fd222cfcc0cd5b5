"""Benchmark: plan state reads with 10, 1,000 and 10,000 plans of history (issue 12).

Writes a randomized history (about six events per plan, realistic specs: `tests/fixtures/plan_histories.py`)
through the product's own store function (`record_runless`) into a real instance, growing the same history
from one size to the next: Dagster's default SQLite instance, then a dagster-postgres instance
(`examples/dagster-postgres.yaml`) on a throwaway server (`tests/fixtures/postgres.py`; always stopped,
skipped with a message where no server can be started). Beside it, a second instance of the same storage
holds the baseline: the first 10 plans of the same history, with its own remote, deployment and sensor.
After each size, every line is timed alternately on the large history and on the baseline (medians of
`--repeat`), so that both see the same load on a shared machine:

- `plan sensor tick`: the real `jaffle_plan_sensor` on a no-change tick (the Git head's version is the
  newest plan's), evaluated as the daemon evaluates it: with the cursor the previous tick set. After a new
  head or a plan event three ticks run untimed (the first fetches a new head into the mirror; the first two
  check in full, the second confirming the first under the same event mark); every timed tick does what
  every later daemon tick does: one `git ls-remote` and one indexed lookup of the plan events' mark.
- `git ls-remote`: a plain `git ls-remote` of the large history's remote, timed alternately with its tick.
- `plan sensor tick without cursor`: the same tick with no cursor, a full check (state read, the version
  file at the head), as after any plan event. Not a target; it shows what the cursor saves.
- `gate state read`: what `gate` reads for one plan (its state, and the environment's index twice: the
  busy check and the stale check);
- `review decision`: a decision's state read plus `PlanRuntime.record` (summary, policy, the event);
- `plans list --limit 20` / `--limit 10`: the GraphQL client against Dagster's schema in-process (no
  webserver). The baseline has 10 plans: `--limit 20` shows 10 there and 20 in the large history (twice
  the plans and their events); `--limit 10` shows 10 plans on both sides. Then `--limit 20` again after a
  late decision on each history's oldest plan (its first event is the history's first), and `--limit 10`;
- `plans show <the oldest plan>`: the client reading the history's first plan by its partition.

Then prints, per storage and size, each line divided by its baseline (target <= 1.5 at 10,000 plans), the
tick divided by `git ls-remote` at the largest size (target <= 1.5), and the peak Python memory of a sensor
tick (with and without cursor) at the largest size (tracemalloc, target < 200 MB). The CPU of importing
the code location is `bench_decision.py`'s.

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
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

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

BASELINE = 10  # plans in the baseline history, measured alternately with each size

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


def _paired_medians(first: Callable[[], object], second: Callable[[], object], repeat: int) -> tuple[float, float]:
    """Medians of `first` and `second` timed alternately, so that both see the same load."""
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeat):
        for action, bucket in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            action()
            bucket.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


class World:
    """One instance with its own Git remote, deployment and plan sensor, written a growing history."""

    def __init__(self, instance: DagsterInstance, root: Path):
        self.instance = instance
        root.mkdir(parents=True, exist_ok=True)
        self.history = iter_history(random.Random(2026), plans=10**9)
        self.repo = make_repo(root / "repo")
        config_path = root / "dagctl.yaml"
        config_path.write_text(CONFIG.format(storage=root / "data", repo=self.repo.url))
        self.runtime = PlanRuntime(deployment=load_deployment_config(config_path), storage_dir=root / "data",
                                   config_dir=root, clock=lambda: datetime.now(UTC))
        self.defs = build_definitions(self.runtime)
        self.sensor = self.defs.resolve_sensor_def("jaffle_plan_sensor")
        self.cursor: str | None = None
        self.written = self.plans = 0
        self.oldest: PlanEvent | None = None
        self.next_created: PlanEvent | None = None

    def grow(self, size: int) -> None:
        """Writes the history up to `size` plans, then commits the newest plan's version to the remote."""
        if self.next_created is not None and self.plans < size:
            self._write(self.next_created)
            self.next_created = None
        for event in self.history:
            if event.kind is EventKind.CREATED and self.plans == size:
                self.next_created = event
                break
            self._write(event)
        newest = read_plan_index(self.instance, "jaffle", "prod").newest  # as a sensor checkpoints all along
        self.newest_id = newest.plan_id
        self.repo.commit(f"version {newest.spec.version_new}",
                         {".dagctl/config.yaml": f"version: '{newest.spec.version_new}'\n"})
        self.settle()

    def settle(self) -> None:
        """After a new head or a plan event, the first tick checks in full (and fetches a new head into the
        mirror); the second checks in full again under the same mark (the settle rule); from the third on, a
        tick is the steady no-change tick."""
        for _ in range(3):
            self.tick()

    def _write(self, event: PlanEvent) -> None:
        record_runless(self.instance, event, project="jaffle", environment="prod")
        self.written += 1
        if event.kind is EventKind.CREATED:
            self.plans += 1
            self.oldest = self.oldest or event

    def tick(self) -> None:
        """As the daemon ticks: with the cursor the previous tick set."""
        context = build_sensor_context(instance=self.instance, definitions=self.defs, cursor=self.cursor)
        result = self.sensor(context)
        self.cursor = context.cursor
        assert "up to date" in str(result), result

    def full_tick(self) -> None:
        result = self.sensor(build_sensor_context(instance=self.instance, definitions=self.defs))
        assert "up to date" in str(result), result

    def ls_remote(self) -> None:
        subprocess.run(["git", "ls-remote", self.repo.url, "refs/heads/main"], check=True, capture_output=True)

    def gate_read(self) -> None:
        get_plan_state(self.instance, self.newest_id)
        read_plan_index(self.instance, "jaffle", "prod")
        read_plan_index(self.instance, "jaffle", "prod")

    def decision(self) -> None:
        state = get_plan_state(self.instance, self.newest_id)
        self.runtime.record(self.instance, PlanEvent(
            plan_id=state.plan_id, kind=EventKind.DECISION, decision=Decision.APPROVE, actor="carol",
            at=datetime.now(UTC), comment="benchmark", fingerprint=state.spec.fingerprint))

    def late_decision_on_the_oldest(self) -> None:
        """A years-old plan gets an event (a late decision): the newest page names it."""
        assert self.oldest is not None
        record_runless(self.instance, PlanEvent(
            plan_id=self.oldest.plan_id, kind=EventKind.DECISION, decision=Decision.APPROVE, actor="carol",
            at=datetime.now(UTC), comment="late", fingerprint=self.oldest.spec.fingerprint),
            project="jaffle", environment="prod")


def measure(small: World, large: World, sizes: list[int], repeat: int) -> tuple[dict, float]:
    """Grows `large` through `sizes` and measures each size against `small` (the baseline, `BASELINE` plans)
    timed alternately; returns `{size: {line: (large s, baseline s)}}` and the peak Python memory of a sensor
    tick at the largest size."""
    small.grow(BASELINE)
    results: dict[int, dict[str, tuple[float, float]]] = {}
    for size in sizes:
        start = time.perf_counter()
        large.grow(size)
        write_s = time.perf_counter() - start
        with in_process_client(large.instance) as (client, _), in_process_client(small.instance) as (base, _):
            client.list_plans(limit=20)  # schema warm-up
            base.list_plans(limit=20)
            small.settle()  # the last size's decisions moved its mark
            lines = {
                "plan sensor tick": (large.tick, small.tick),
                "git ls-remote (of the large history's remote)": (large.ls_remote, large.tick),
                "plan sensor tick without cursor": (large.full_tick, small.full_tick),
                "gate state read": (large.gate_read, small.gate_read),
                "review decision": (large.decision, small.decision),
                "plans list --limit 20": (lambda: client.list_plans(limit=20), lambda: base.list_plans(limit=20)),
                "plans list --limit 10": (lambda: client.list_plans(limit=10), lambda: base.list_plans(limit=10)),
                "plans show <the oldest plan>": (lambda: client.get_plan(large.oldest.plan_id),
                                                 lambda: base.get_plan(small.oldest.plan_id)),
            }
            results[size] = {name: _paired_medians(*actions, repeat) for name, actions in lines.items()}
            large.late_decision_on_the_oldest()
            small.late_decision_on_the_oldest()
            for limit in (20, 10):
                results[size][f"plans list --limit {limit} after a late event of the oldest plan"] = _paired_medians(
                    lambda: client.list_plans(limit=limit), lambda: base.list_plans(limit=limit), repeat)
        # The decisions recorded plan events: the next size starts from a moved mark, as after any event.
        print(f"{size:>6} plans ({large.written} events, written in {write_s:.0f} s), against {BASELINE} plans "
              "timed alternately: " + ", ".join(f"{name} {ms(pair[0])} vs {ms(pair[1])}"
                                                for name, pair in results[size].items()), flush=True)
    large.settle()
    tracemalloc.start()
    large.tick()
    large.full_tick()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return results, peak


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def report(label: str, sizes: list[int], results: dict, peak: float) -> None:
    for size in sizes:
        print(f"\n{label}: {size} plans / {BASELINE} plans, timed alternately (target <= 1.5 at 10,000):")
        for name, (large, base) in results[size].items():
            if not name.startswith("git ls-remote"):
                print(f"  {name}: {large / base:.2f}")
    ls_remote, tick = results[sizes[-1]]["git ls-remote (of the large history's remote)"]
    print(f"{label}: plan sensor tick / git ls-remote at {sizes[-1]} plans, timed alternately (target <= 1.5): "
          f"{tick / ls_remote:.2f} ({ms(tick)} vs {ms(ls_remote)})")
    print(f"{label}: peak Python memory of a sensor tick (with and without cursor) at {sizes[-1]} plans "
          f"(target < 200 MB): {peak / 2**20:.1f} MB", flush=True)


@contextmanager
def postgres_instances(tmp: Path, server_dir: Path | None) -> Iterator[tuple[DagsterInstance, DagsterInstance]]:
    """Two dagster-postgres instances (`examples/dagster-postgres.yaml`), each on its own database of one
    throwaway server (its data under `server_dir`, which the `postgres` user must reach), always stopped."""
    with start_postgres(server_dir) as server, ExitStack() as stack:
        instances = []
        for name in ("baseline", "large"):
            environ = server.environ(server.create_database(f"dagctl_bench_plan_state_{name}"))
            saved = {variable: os.environ.get(variable) for variable in environ}
            os.environ.update(environ)  # the instance's config reads them when it is created
            try:
                (tmp / name).mkdir()
                instances.append(stack.enter_context(
                    instance_for_test(load_postgres_instance_config(), temp_dir=str(tmp / name))))
            finally:
                for variable, value in saved.items():
                    if value is None:
                        os.environ.pop(variable, None)
                    else:
                        os.environ[variable] = value
        yield instances[0], instances[1]


@contextmanager
def sqlite_instances(tmp: Path) -> Iterator[tuple[DagsterInstance, DagsterInstance]]:
    for name in ("baseline", "large"):
        (tmp / name).mkdir()
    with instance_for_test(temp_dir=str(tmp / "baseline")) as small, \
            instance_for_test(temp_dir=str(tmp / "large")) as large:
        yield small, large


def run(label: str, instances: Callable[[Path], Any], sizes: list[int], repeat: int, where: str | None) -> None:
    with tempfile.TemporaryDirectory(dir=where) as tmp, instances(Path(tmp)) as (small, large):
        worlds = [World(instance, Path(tmp) / name / "world") for name, instance in (("baseline", small),
                                                                                      ("large", large))]
        report(label, sizes, *measure(*worlds, sizes, repeat))


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
        print("SQLite instances (Dagster's default storage)", flush=True)
        run("SQLite", sqlite_instances, sizes, args.repeat, args.dir)
    if args.storage in ("both", "postgres"):
        if args.storage == "both" and find_postgres_bin() is None and not os.environ.get(URL_VARIABLE):
            print(f"\nPostgreSQL skipped: {HOW_TO_ENABLE}")
        else:
            print("\nPostgreSQL instances (examples/dagster-postgres.yaml, throwaway server)", flush=True)
            server_dir = Path(args.dir) if args.dir else None
            run("PostgreSQL", lambda tmp: postgres_instances(tmp, server_dir), sizes, args.repeat, args.dir)

if __name__ == "__main__":
    main()
