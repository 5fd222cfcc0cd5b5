"""Overhead of dagctl's SQLMesh plans over SQLMesh itself, measured in one run on the same project.

    .venv/bin/python benchmarks/bench_sqlmesh.py [--models 200] [--repetitions 5]

Generates a SQLMesh project (DuckDB) with a seed, an incremental root and branches of chained models that
fan out from the root (incremental, full and view models in turn), deploys it to `prod`, then changes the
root (a breaking change: every other model is indirectly modified and rebuilt) and measures, alternating
the two sides in each repetition:

- `detect`: `explain_sqlmesh_plan` against SQLMesh's own plan construction (`Context(...)` then
  `plan_builder("prod").build()`), both loading the project from scratch. Target: ratio <= 1.15.
- `execute`: `apply_sqlmesh_plan` (rebuild, fingerprint check, apply, progress callbacks) against
  SQLMesh's own plan construction and `Context.apply(plan)`, each on a fresh copy of the deployed
  warehouse. Target: ratio <= 1.10.

Prints, for wall-clock and CPU time, the medians and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("SQLMESH__DISABLE_ANONYMIZED_ANALYTICS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlmesh.core import analytics  # noqa: E402
from sqlmesh.core.context import Context  # noqa: E402

from dagctl_dagster.adapters.sqlmesh import apply_sqlmesh_plan, explain_sqlmesh_plan  # noqa: E402

CONFIG = """\
gateways:
  duckdb:
    connection:
      type: duckdb
      database: "{{ env_var('DAGCTL_WAREHOUSE_DIR') }}/bench.duckdb"
    state_connection:
      type: duckdb
      database: "{{ env_var('DAGCTL_WAREHOUSE_DIR') }}/bench_state.duckdb"
default_gateway: duckdb
model_defaults:
  dialect: duckdb
  start: 7 days ago
  cron: '@daily'
disable_anonymized_analytics: true
"""
SEED = """\
MODEL (name bench.seed_items, kind SEED (path '../seeds/items.csv'),
       columns (item_id INTEGER, weight INTEGER));
"""
ROOT = """\
MODEL (name bench.events, kind INCREMENTAL_BY_TIME_RANGE (time_column event_date));

SELECT days.event_date::DATE AS event_date, items.item_id AS item_id, items.weight * {factor} AS amount
FROM RANGE(@start_date::TIMESTAMP, @end_date::TIMESTAMP + INTERVAL 1 DAY, INTERVAL 1 DAY) AS days(event_date)
CROSS JOIN bench.seed_items AS items
WHERE days.event_date::DATE BETWEEN @start_date AND @end_date
"""
KINDS = ("INCREMENTAL_BY_TIME_RANGE (time_column event_date)", "FULL", "VIEW")
CHAIN = """\
MODEL (name bench.{name}, kind {kind});

SELECT event_date, item_id, amount + {step} AS amount
FROM bench.{parent}
{where}
"""


def generate_project(folder: Path, models: int, branches: int) -> None:
    """A seed, an incremental root, and `models - 2` chained models in `branches` branches off the root."""
    (folder / "models").mkdir(parents=True)
    (folder / "seeds").mkdir()
    (folder / "config.yaml").write_text(CONFIG)
    (folder / "seeds" / "items.csv").write_text(
        "item_id,weight\n" + "".join(f"{i},{i % 7 + 1}\n" for i in range(1, 21))
    )
    (folder / "models" / "seed_items.sql").write_text(SEED)
    (folder / "models" / "events.sql").write_text(ROOT.format(factor=1))
    for index in range(models - 2):
        branch, depth = index % branches, index // branches
        kind = KINDS[index % len(KINDS)]
        incremental = kind.startswith("INCREMENTAL")
        name = f"b{branch:02}_m{depth:03}"
        (folder / "models" / f"{name}.sql").write_text(
            CHAIN.format(
                name=name,
                kind=kind,
                step=depth + 1,
                parent="events" if depth == 0 else f"b{branch:02}_m{depth - 1:03}",
                where="WHERE event_date BETWEEN @start_date AND @end_date" if incremental else "",
            )
        )


def sqlmesh_plan(project: Path) -> None:
    """SQLMesh's own plan construction, as `sqlmesh plan` does it before showing or applying anything."""
    context = Context(paths=str(project))
    try:
        context.plan_builder("prod").build()
    finally:
        context.close()


def sqlmesh_apply(project: Path) -> None:
    """SQLMesh's own plan and apply, with the same builder options `apply_sqlmesh_plan` uses."""
    context = Context(paths=str(project))
    try:
        context.apply(context.plan_builder("prod", skip_tests=True, skip_linter=True).build())
    finally:
        context.close()


Sample = tuple[float, float]


def timed(action: Callable[[], object]) -> Sample:
    """Wall-clock and CPU seconds (all threads of this process, DuckDB's included) of one call."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    action()
    return time.perf_counter() - wall, time.process_time() - cpu


def use_warehouse(folder: Path) -> None:
    os.environ["DAGCTL_WAREHOUSE_DIR"] = str(folder)


def report(label: str, ours: list[Sample], theirs: list[Sample], target: float) -> None:
    """Medians and their ratio, for wall-clock time and for CPU time.

    CPU time is the steadier of the two on a shared machine: other processes slow the wall clock of both
    sides unevenly, but hardly change the work each side does.
    """
    print(f"{label} (target <= {target}):")
    for index, clock in enumerate(("wall", "cpu")):
        mine = [sample[index] for sample in ours]
        sqlmesh = [sample[index] for sample in theirs]
        ratio = statistics.median(mine) / statistics.median(sqlmesh)
        verdict = "ok" if ratio <= target else "ABOVE TARGET"
        print(
            f"  {clock:4}: dagctl median {statistics.median(mine):6.2f} s, SQLMesh median "
            f"{statistics.median(sqlmesh):6.2f} s, ratio {ratio:.3f} {verdict}"
            f"   [dagctl {' '.join(f'{t:.2f}' for t in mine)}"
            f" | SQLMesh {' '.join(f'{t:.2f}' for t in sqlmesh)}]"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--branches", type=int, default=9)
    parser.add_argument("--repetitions", type=int, default=5, help="Explain repetitions.")
    parser.add_argument("--apply-repetitions", type=int, default=5)
    args = parser.parse_args()
    analytics.disable_analytics()

    with tempfile.TemporaryDirectory(prefix="bench-sqlmesh-") as tmp:
        root = Path(tmp)
        base, changed = root / "commit_a", root / "commit_b"
        generate_project(base, args.models, args.branches)
        shutil.copytree(base, changed)
        (changed / "models" / "events.sql").write_text(ROOT.format(factor=2))

        deployed = root / "deployed"
        deployed.mkdir()
        use_warehouse(deployed)
        started = time.perf_counter()
        apply_sqlmesh_plan(base, "prod", expected_fingerprint=explain_sqlmesh_plan(base, "prod").fingerprint)
        deployment = time.perf_counter() - started
        print(f"{args.models} models, {args.branches} branches; initial deployment {deployment:.1f} s")

        # Warm-up: imports, SQLMesh's model cache of commit B, DuckDB.
        change_set = explain_sqlmesh_plan(changed, "prod")
        sqlmesh_plan(changed)
        print(
            f"commit B: {len(change_set.changes_of('directly_modified'))} directly and "
            f"{len(change_set.changes_of('indirectly_modified'))} indirectly modified, "
            f"{len({b.model for b in change_set.backfills})} models to backfill"
        )

        explain_ours: list[Sample] = []
        explain_theirs: list[Sample] = []
        for repetition in range(args.repetitions):
            pair = [
                (explain_ours, lambda: explain_sqlmesh_plan(changed, "prod")),
                (explain_theirs, lambda: sqlmesh_plan(changed)),
            ]
            for samples, action in pair if repetition % 2 == 0 else reversed(pair):
                samples.append(timed(action))
        report(
            "detect  (explain_sqlmesh_plan / SQLMesh plan construction)", explain_ours, explain_theirs, 1.15
        )

        apply_ours: list[Sample] = []
        apply_theirs: list[Sample] = []
        evaluated: list[str] = []
        for repetition in range(args.apply_repetitions):
            pair = [
                (
                    apply_ours,
                    lambda: apply_sqlmesh_plan(
                        changed,
                        "prod",
                        expected_fingerprint=change_set.fingerprint,
                        log=lambda line: None,
                        on_model_evaluated=evaluated.append,
                    ),
                ),
                (apply_theirs, lambda: sqlmesh_apply(changed)),
            ]
            for index, (samples, action) in enumerate(pair if repetition % 2 == 0 else reversed(pair)):
                warehouse = root / f"apply_{repetition}_{index}"
                shutil.copytree(deployed, warehouse)
                use_warehouse(warehouse)
                samples.append(timed(action))
        report("execute (apply_sqlmesh_plan / SQLMesh apply)", apply_ours, apply_theirs, 1.10)
        print(f"  models reported as evaluated per dagctl apply: {len(evaluated) // args.apply_repetitions}")


if __name__ == "__main__":
    main()
