"""SQLMesh plans of the example project (examples/sqlmesh_shop) with real SQLMesh on DuckDB.

Each scenario copies the project into a temporary folder (as `detect` gets a fresh snapshot per commit) and
points DAGCTL_WAREHOUSE_DIR at a temporary warehouse folder holding the DuckDB warehouse and state files.
The project's relative start date is pinned and SQLMesh's clock injected, so intervals are exact.
One warehouse with the project deployed to `prod` is shared by the read-only scenarios of this module.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pytest

from dagctl_dagster.adapters.sqlmesh import (
    apply_sqlmesh_plan,
    explain_sqlmesh_plan,
    run_sqlmesh,
    run_sqlmesh_janitor,
)
from dagctl_dagster.core.errors import (
    DagctlPlanError,
    DagctlStalePlanError,
    DagctlStateLockedError,
    DagctlStepError,
)
from dagctl_dagster.core.sqlmesh_plan import BackfillInterval, ModelChange, SqlmeshChangeSet

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sqlmesh_shop"
START = "2024-03-01"
NOW = "2024-03-08"  # SQLMesh's "now": the daily intervals 2024-03-01 .. 2024-03-07 are complete.
MODELS = ("shop.category_revenue", "shop.daily_revenue", "shop.orders", "shop.products")

ORDERS = "models/orders.sql"
NEW_COLUMN = (
    "  products.price AS unit_price\n",
    "  products.price AS unit_price,\n  products.category AS category\n",
)
NEW_QUANTITY = ("1 + ABS(", "2 + ABS(")


@dataclass
class Warehouse:
    """A DuckDB warehouse and SQLMesh state, as the project's config.yaml finds them."""

    dir: Path

    @contextmanager
    def active(self) -> Iterator[None]:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DAGCTL_WAREHOUSE_DIR", str(self.dir))
            yield

    def explain(self, project: Path, environment: str = "prod") -> SqlmeshChangeSet:
        with self.active():
            return explain_sqlmesh_plan(project, environment, execution_time=NOW)

    def apply(
        self, project: Path, fingerprint: str, environment: str = "prod", **callbacks: object
    ) -> SqlmeshChangeSet:
        with self.active():
            return apply_sqlmesh_plan(
                project, environment, expected_fingerprint=fingerprint, execution_time=NOW, **callbacks
            )

    def deploy(self, project: Path, environment: str = "prod") -> SqlmeshChangeSet:
        return self.apply(project, self.explain(project, environment).fingerprint, environment)

    def query(self, sql: str) -> list[tuple]:
        with duckdb.connect(str(self.dir / "sqlmesh_shop.duckdb"), read_only=True) as connection:
            return connection.sql(sql).fetchall()

    def plan_id(self, environment: str) -> str:
        with duckdb.connect(str(self.dir / "sqlmesh_shop_state.duckdb"), read_only=True) as connection:
            rows = connection.sql(
                "SELECT plan_id FROM sqlmesh._environments WHERE name = ?", params=[environment]
            ).fetchall()
        return rows[0][0]

    def contents(self) -> dict[str, object]:
        """Everything a plan application could change: relations, their rows, and the prod plan id."""
        relations = self.query(
            "SELECT table_schema, table_name, table_type FROM information_schema.tables ORDER BY ALL"
        )
        return {
            "relations": relations,
            "rows": {
                f"{schema}.{name}": self.query(f'SELECT * FROM "{schema}"."{name}" ORDER BY ALL')
                for schema, name, _ in relations
            },
            "prod_plan_id": self.plan_id("prod"),
        }


def copy_project(destination: Path, *edits: tuple[str, str, str]) -> Path:
    """The example project in `destination`, start date pinned, with (file, old, new) text edits applied."""
    shutil.copytree(EXAMPLE, destination)
    edit(destination, "config.yaml", "start: 14 days ago", f"start: '{START}'")
    for path, old, new in edits:
        edit(destination, path, old, new)
    return destination


def edit(project: Path, path: str, old: str, new: str) -> None:
    file = project / path
    text = file.read_text()
    assert text.count(old) == 1, f"{old!r} must occur once in {path}"
    file.write_text(text.replace(old, new))


@dataclass
class Deployment:
    warehouse: Warehouse
    first_plan: SqlmeshChangeSet
    applied: SqlmeshChangeSet
    log: list[str] = field(default_factory=list)
    evaluated: list[BackfillInterval] = field(default_factory=list)


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """The example project explained and applied to `prod` in a fresh warehouse."""
    root = tmp_path_factory.mktemp("deployed")
    warehouse = Warehouse(root / "warehouse")
    warehouse.dir.mkdir()
    project = copy_project(root / "project")
    first_plan = warehouse.explain(project)
    log: list[str] = []
    evaluated: list[BackfillInterval] = []
    applied = warehouse.apply(
        project, first_plan.fingerprint, log=log.append, on_model_evaluated=evaluated.append
    )
    return Deployment(warehouse, first_plan, applied, log, evaluated)


@pytest.fixture
def fresh_warehouse(tmp_path: Path) -> Warehouse:
    warehouse = Warehouse(tmp_path / "warehouse")
    warehouse.dir.mkdir()
    return warehouse


def test_first_plan_adds_every_model_and_backfills_from_the_start(deployed: Deployment) -> None:
    first = deployed.first_plan

    assert (first.environment, first.base_plan_id, first.has_changes, first.uncategorized) == (
        "prod", None, True, ()
    )
    assert first.changes == tuple(
        ModelChange(name=name, kind="added", category="breaking") for name in MODELS
    )
    assert first.backfills == (
        BackfillInterval(model="shop.category_revenue", start=START, end="2024-03-07", mode="full_refresh"),
        BackfillInterval(model="shop.daily_revenue", start=START, end="2024-03-07", mode="full_refresh"),
        BackfillInterval(model="shop.orders", start=START, end="2024-03-07", mode="incremental"),
        BackfillInterval(model="shop.products", start=START, end="2024-03-07", mode="full_refresh"),
    )
    assert [(name, category) for name, _, category in first.snapshots] == [
        (name, "breaking") for name in MODELS
    ]


def test_apply_builds_every_model_in_duckdb_and_reports_each_once(deployed: Deployment) -> None:
    warehouse = deployed.warehouse

    assert deployed.applied == deployed.first_plan
    assert sorted(done.model for done in deployed.evaluated) == list(MODELS)
    assert warehouse.query(
        "SELECT table_name, table_type FROM information_schema.tables WHERE table_schema = 'shop' ORDER BY 1"
    ) == [
        ("category_revenue", "VIEW"), ("daily_revenue", "VIEW"), ("orders", "VIEW"), ("products", "VIEW"),
    ]
    assert warehouse.query(
        "SELECT MIN(order_date)::TEXT, MAX(order_date)::TEXT, COUNT(*) FROM shop.orders"
    ) == [
        ("2024-03-01", "2024-03-07", 35)
    ]
    assert warehouse.query("SELECT COUNT(*) FROM shop.daily_revenue WHERE revenue > 0") == [(7,)]
    assert warehouse.query("SELECT category FROM shop.category_revenue ORDER BY 1") == [
        ("accessories",), ("coffee",), ("equipment",), ("tea",)
    ]
    plan_id = warehouse.plan_id("prod")
    assert deployed.log[0] == (
        f"Applying SQLMesh plan {plan_id} to environment 'prod': 4 model change(s), 4 model(s) to backfill."
    )
    assert deployed.log[-1] == f"Applied SQLMesh plan {plan_id} to environment 'prod'."
    assert any(
        line.startswith("shop.orders [2024-03-01 - 2024-03-07] evaluated in ") for line in deployed.log
    )


def test_no_changes_when_the_commit_matches_the_environment(deployed: Deployment, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")

    change_set = deployed.warehouse.explain(project)

    assert change_set == SqlmeshChangeSet(
        environment="prod",
        base_plan_id=deployed.warehouse.plan_id("prod"),
        has_changes=False,
        snapshots=deployed.first_plan.snapshots,
    )


def test_breaking_change_rebuilds_its_indirect_children(deployed: Deployment, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project", (ORDERS, *NEW_QUANTITY))

    change_set = deployed.warehouse.explain(project)

    assert change_set.base_plan_id == deployed.warehouse.plan_id("prod")
    assert change_set.changes == (
        ModelChange(
            name="shop.category_revenue",
            kind="indirectly_modified",
            category="indirect_breaking",
            parents=("shop.orders",),
        ),
        ModelChange(
            name="shop.daily_revenue",
            kind="indirectly_modified",
            category="indirect_breaking",
            parents=("shop.orders",),
        ),
        ModelChange(
            name="shop.orders",
            kind="directly_modified",
            category="breaking",
            diff="--- shop.orders (prod)\n"
            "+++ shop.orders (this plan)\n"
            "@@ -16,7 +16,7 @@\n"
            " SELECT\n"
            "   CAST(days.order_date AS DATE) AS order_date,\n"
            "   products.product_id AS product_id,\n"
            "-  1 + ABS(HASH(products.product_id, CAST(days.order_date AS DATE))) % 5 AS quantity,\n"
            "+  2 + ABS(HASH(products.product_id, CAST(days.order_date AS DATE))) % 5 AS quantity,\n"
            "   products.price AS unit_price\n"
            " FROM RANGE(\n"
            "   CAST(@start_date AS TIMESTAMP),",
        ),
    )
    assert [interval.model for interval in change_set.backfills] == [
        "shop.category_revenue", "shop.daily_revenue", "shop.orders"
    ]


def test_new_column_is_non_breaking_and_backfills_only_its_model(
    deployed: Deployment, tmp_path: Path
) -> None:
    project = copy_project(tmp_path / "project", (ORDERS, *NEW_COLUMN))

    change_set = deployed.warehouse.explain(project)

    assert [(c.name, c.kind, c.category, c.parents) for c in change_set.changes] == [
        ("shop.category_revenue", "indirectly_modified", "indirect_non_breaking", ("shop.orders",)),
        ("shop.daily_revenue", "indirectly_modified", "indirect_non_breaking", ("shop.orders",)),
        ("shop.orders", "directly_modified", "non_breaking", ()),
    ]
    assert change_set.backfills == (
        BackfillInterval(model="shop.orders", start=START, end="2024-03-07", mode="incremental"),
    )


def test_metadata_only_change_needs_no_backfill(deployed: Deployment, tmp_path: Path) -> None:
    project = copy_project(
        tmp_path / "project",
        ("models/daily_revenue.sql", "'Revenue per day, over all products.'", "'Revenue per day.'"),
    )

    change_set = deployed.warehouse.explain(project)

    assert change_set.changes == (
        ModelChange(
            name="shop.daily_revenue",
            kind="directly_modified",
            category="metadata",
            # SQLMesh renders a description as a comment on the definition.
            diff="--- shop.daily_revenue (prod)\n"
            "+++ shop.daily_revenue (this plan)\n"
            "@@ -1,4 +1,4 @@\n"
            "-/* Revenue per day, over all products. */\n"
            "+/* Revenue per day. */\n"
            " MODEL (\n"
            "   name shop.daily_revenue,\n"
            "   start '2024-03-01',",
        ),
    )
    assert (change_set.has_changes, change_set.backfills) == (True, ())


def test_removed_model_is_listed_without_category(deployed: Deployment, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    (project / "models" / "category_revenue.sql").unlink()

    change_set = deployed.warehouse.explain(project)

    assert change_set.changes == (ModelChange(name="shop.category_revenue", kind="removed"),)
    assert [name for name, _, _ in change_set.snapshots] == [
        "shop.daily_revenue", "shop.orders", "shop.products"
    ]
    assert change_set.backfills == ()


def test_dev_environment_is_planned_from_prod(deployed: Deployment, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project", (ORDERS, *NEW_COLUMN))

    change_set = deployed.warehouse.explain(project, "dev")

    assert (change_set.environment, change_set.base_plan_id) == ("dev", None)
    assert [(c.name, c.kind) for c in change_set.changes] == [
        ("shop.category_revenue", "indirectly_modified"),
        ("shop.daily_revenue", "indirectly_modified"),
        ("shop.orders", "directly_modified"),
    ]


def test_same_inputs_give_the_same_fingerprint(deployed: Deployment, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project", (ORDERS, *NEW_QUANTITY))
    other = copy_project(tmp_path / "other", (ORDERS, *NEW_COLUMN))

    first, second = deployed.warehouse.explain(project), deployed.warehouse.explain(project)

    assert first == second
    assert first.fingerprint == second.fingerprint
    assert deployed.warehouse.explain(other).fingerprint != first.fingerprint


def test_uncategorized_changes_fail_the_plan_with_the_fix(deployed: Deployment, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project", (ORDERS, *NEW_QUANTITY))
    with (project / "config.yaml").open("a") as config:
        config.write("\nplan:\n  auto_categorize_changes:\n    sql: 'off'\n")

    with pytest.raises(DagctlPlanError) as raised:
        deployed.warehouse.explain(project)

    assert str(raised.value) == (
        "SQLMesh cannot categorize the changes of 1 model(s) in environment 'prod': shop.orders. Plans are "
        "built without prompts, so every change needs a category: turn automatic categorization on in the "
        "project's config.yaml (`plan: {auto_categorize_changes: {sql: full, python: full, seed: full, "
        "external: full}}`), or make the change explicit (e.g. `forward_only true` in the model), and push "
        "a new commit."
    )


def test_plan_for_other_files_is_refused_as_stale(deployed: Deployment, tmp_path: Path) -> None:
    approved = deployed.warehouse.explain(copy_project(tmp_path / "approved", (ORDERS, *NEW_QUANTITY)))
    before = deployed.warehouse.contents()

    with pytest.raises(DagctlStalePlanError):
        deployed.warehouse.apply(
            copy_project(tmp_path / "other", (ORDERS, *NEW_COLUMN)), approved.fingerprint
        )

    assert deployed.warehouse.contents() == before


def test_stale_plan_is_refused_before_applying_anything(fresh_warehouse: Warehouse, tmp_path: Path) -> None:
    fresh_warehouse.deploy(copy_project(tmp_path / "base"))
    breaking = copy_project(tmp_path / "breaking", (ORDERS, *NEW_QUANTITY))
    approved = fresh_warehouse.explain(breaking)
    fresh_warehouse.deploy(copy_project(tmp_path / "new_column", (ORDERS, *NEW_COLUMN)))
    moved_to = fresh_warehouse.plan_id("prod")
    before = fresh_warehouse.contents()
    log: list[str] = []

    with pytest.raises(DagctlStalePlanError) as raised:
        fresh_warehouse.apply(breaking, approved.fingerprint, log=log.append)

    rebuilt = fresh_warehouse.explain(breaking)
    assert rebuilt.base_plan_id == moved_to != approved.base_plan_id
    assert str(raised.value) == (
        f"The SQLMesh plan for environment 'prod' is stale: SQLMesh now plans a different change "
        f"(fingerprint {rebuilt.fingerprint[:12]}, approved {approved.fingerprint[:12]}). Environment "
        f"'prod' is now at SQLMesh plan {moved_to}: another plan changed it since the approval, or the "
        "project's files differ from the approved commit. Nothing was applied; explain the plan again and "
        "have it approved."
    )
    assert (fresh_warehouse.contents(), log) == (before, [])


def test_nothing_to_apply_when_the_environment_already_matches(deployed: Deployment, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")
    unchanged = deployed.warehouse.explain(project)
    before = deployed.warehouse.contents()
    log: list[str] = []

    applied = deployed.warehouse.apply(project, unchanged.fingerprint, log=log.append)

    assert (applied, log) == (
        unchanged, ["Nothing to apply: environment 'prod' already matches this commit."]
    )
    assert deployed.warehouse.contents() == before


def test_apply_to_a_virtual_environment_leaves_prod_untouched(deployed: Deployment, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project", (ORDERS, *NEW_COLUMN))
    prod_before = deployed.warehouse.query("SELECT * FROM shop.orders ORDER BY ALL")
    evaluated: list[BackfillInterval] = []

    preview = deployed.warehouse.explain(project, "preview")
    deployed.warehouse.apply(project, preview.fingerprint, "preview", on_model_evaluated=evaluated.append)

    assert [done.model for done in evaluated] == ["shop.orders"]
    assert deployed.warehouse.query("SELECT DISTINCT category FROM shop__preview.orders ORDER BY 1") == [
        ("accessories",), ("coffee",), ("equipment",), ("tea",)
    ]
    assert deployed.warehouse.query("SELECT * FROM shop.orders ORDER BY ALL") == prod_before


def test_failing_model_fails_the_apply_and_names_the_model(
    fresh_warehouse: Warehouse, tmp_path: Path
) -> None:
    project = copy_project(
        tmp_path / "project", (ORDERS, "products.price AS unit_price", "CAST('n/a' AS DECIMAL) AS unit_price")
    )
    plan = fresh_warehouse.explain(project)
    log: list[str] = []
    evaluated: list[BackfillInterval] = []

    with pytest.raises(DagctlStepError) as raised:
        fresh_warehouse.apply(project, plan.fingerprint, log=log.append, on_model_evaluated=evaluated.append)

    assert str(raised.value) == (
        "Applying the SQLMesh plan to environment 'prod' failed: shop.orders: Conversion Error: Could not "
        'convert string "n/a" to DECIMAL(18,3). Fix the model and push a new commit, or retry the plan if '
        "the failure was transient."
    )
    assert [done.model for done in evaluated] == ["shop.products"]
    assert log[4:7] == [
        "shop.orders [2024-03-01 - 2024-03-07] failed",
        "Evaluation failed.",
        "Skipped because an upstream model failed: shop.category_revenue, shop.daily_revenue",
    ]
    assert log[7].startswith('FAILED shop.orders: Conversion Error: Could not convert string "n/a"')
    assert fresh_warehouse.query("SELECT * FROM information_schema.tables WHERE table_schema = 'shop'") == []


def test_run_evaluates_the_intervals_due_since_the_deployment(
    fresh_warehouse: Warehouse, tmp_path: Path
) -> None:
    project = copy_project(tmp_path / "project")
    fresh_warehouse.deploy(project)
    log: list[str] = []
    evaluated: list[BackfillInterval] = []

    with fresh_warehouse.active():
        run_sqlmesh(
            project, "prod", execution_time="2024-03-10", log=log.append, on_model_evaluated=evaluated.append
        )
        run_sqlmesh_janitor(project, log=log.append)

    # A seed only changes with its file: `run` leaves it alone.
    assert sorted(done.model for done in evaluated) == ["shop.category_revenue", "shop.daily_revenue", "shop.orders"]
    assert fresh_warehouse.query("SELECT MAX(order_date)::TEXT, COUNT(*) FROM shop.orders") == [
        ("2024-03-09", 45)
    ]
    assert log[-2:] == ["Janitor: removing expired environments and unused tables.", "Janitor finished."]


def test_run_of_a_missing_environment_fails(deployed: Deployment, tmp_path: Path) -> None:
    project = copy_project(tmp_path / "project")

    with deployed.warehouse.active(), pytest.raises(DagctlStepError) as raised:
        run_sqlmesh(project, "staging")

    assert str(raised.value) == "sqlmesh run staging failed: Environment 'staging' was not found."


DAILY_REVENUE = "models/daily_revenue.sql"
DOUBLED_REVENUE = (
    "SUM(orders.quantity * orders.unit_price) AS revenue",
    "SUM(orders.quantity * orders.unit_price) * 2 AS revenue",
)


def test_failing_unit_test_gives_no_plan_but_the_test_and_sqlmesh_row_diff(
    deployed: Deployment, tmp_path: Path
) -> None:
    project = copy_project(tmp_path / "project", (DAILY_REVENUE, *DOUBLED_REVENUE))
    log: list[str] = []

    with deployed.warehouse.active():
        change_set = explain_sqlmesh_plan(project, "prod", execution_time=NOW, log=log.append)

    assert (change_set.has_changes, change_set.changes, change_set.failed_tests) == (
        False, (), ("tests/test_daily_revenue.yaml::test_daily_revenue_sums_all_products",)
    )
    assert change_set.base_plan_id == deployed.warehouse.plan_id("prod")
    output = change_set.test_output or ""
    assert "FAIL: test_daily_revenue_sums_all_products" in output
    # SQLMesh's own row diff: expected 28.2 and 12.5, actual twice that.
    assert [row.split()[1:] for row in output.splitlines() if row.startswith("│")] == [
        ["0", "│", "28.2", "│", "56.4", "│"], ["1", "│", "12.5", "│", "25.0", "│"],
    ]
    assert "FAIL: test_daily_revenue_sums_all_products" in "\n".join(log)


def test_backfill_done_by_another_environment_is_not_redone_and_the_apply_says_so(
    fresh_warehouse: Warehouse, tmp_path: Path
) -> None:
    fresh_warehouse.deploy(copy_project(tmp_path / "base"))
    project = copy_project(tmp_path / "project", (ORDERS, *NEW_COLUMN))
    prod_plan = fresh_warehouse.explain(project, "prod")
    assert [interval.model for interval in prod_plan.backfills] == ["shop.orders"]
    fresh_warehouse.deploy(project, "dev")  # dev builds the same snapshot meanwhile
    log: list[str] = []

    fresh_warehouse.apply(project, prod_plan.fingerprint, "prod", log=log.append)

    assert "SKIP: No physical layer updates to perform" in log
    assert not [line for line in log if "failed" in line.lower()]
    assert log[-2] == "Backfilled at execution: nothing."


def hold_database(path: Path) -> subprocess.Popen[str]:
    """Another process (not a dagctl step) with DuckDB's write lock on `path`, until its stdin closes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
         "sys.stdin.read()", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def test_a_database_held_by_another_process_is_reported_as_a_lock_conflict(
    deployed: Deployment, tmp_path: Path
) -> None:
    state = deployed.warehouse.dir / "sqlmesh_shop_state.duckdb"
    holder = hold_database(state)
    try:
        with pytest.raises(DagctlStateLockedError) as raised:
            deployed.warehouse.explain(copy_project(tmp_path / "project"))
    finally:
        holder.communicate("")

    message = str(raised.value)
    assert message.startswith(f'SQLMesh cannot open its DuckDB database: IO Error: Could not set lock on file "{state}"')
    assert f"(PID {holder.pid})" in message
    assert "`dagctl plans retry <plan id>`" in message and "Postgres" in message


def test_steps_that_share_a_database_wait_for_each_other_across_environments(
    deployed: Deployment, tmp_path: Path
) -> None:
    project = copy_project(tmp_path / "project", (ORDERS, *NEW_COLUMN))
    lock_file = deployed.warehouse.dir / "sqlmesh_shop_state.duckdb.dagctl-lock"
    waiting = threading.Event()
    log: list[str] = []
    result: list[SqlmeshChangeSet] = []

    def record(line: str) -> None:
        log.append(line)
        if line.startswith("Waiting for"):
            waiting.set()

    def explain_dev() -> None:
        with deployed.warehouse.active():
            result.append(explain_sqlmesh_plan(project, "dev", execution_time=NOW, log=record))

    with open(lock_file, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what a prod step of the same project holds while it runs
        held.truncate(0)
        held.write("apply prod (pid 4242)\n")
        held.flush()
        dev = threading.Thread(target=explain_dev)
        dev.start()
        assert waiting.wait(timeout=120), log
        assert dev.is_alive() and result == []
        fcntl.flock(held, fcntl.LOCK_UN)
    dev.join()

    assert log[0] == (
        f"Waiting for {lock_file.with_suffix('')}: apply prod (pid 4242) is using it (DuckDB allows one "
        "writer at a time, so SQLMesh steps that share this database run one after the other)."
    )
    assert [change.name for change in result[0].changes_of("directly_modified")] == ["shop.orders"]


def test_sqlmesh_init_template_with_a_broken_unit_test_names_it_and_the_fix_plans(tmp_path: Path) -> None:
    """SQLMesh's own `init duckdb` template, its `db.db` pointed outside the project as docs/sqlmesh.md says."""
    project = tmp_path / "template"
    project.mkdir()
    sqlmesh = Path(sys.executable).parent / "sqlmesh"
    subprocess.run([str(sqlmesh), "init", "duckdb"], cwd=project, check=True, capture_output=True)
    full_model = project / "models" / "full_model.sql"
    good = full_model.read_text()
    full_model.write_text(good.replace("COUNT(DISTINCT id) AS num_orders", "COUNT(DISTINCT id) + 1 AS num_orders"))

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SQLMESH__GATEWAYS__DUCKDB__CONNECTION__DATABASE", str(tmp_path / "db.db"))
        patch.setenv("SQLMESH__GATEWAYS__DUCKDB__STATE_CONNECTION__TYPE", "duckdb")
        patch.setenv("SQLMESH__GATEWAYS__DUCKDB__STATE_CONNECTION__DATABASE", str(tmp_path / "state.duckdb"))
        broken = explain_sqlmesh_plan(project, "prod")
        full_model.write_text(good)
        fixed = explain_sqlmesh_plan(project, "prod")

    assert (broken.has_changes, broken.failed_tests) == (False, ("tests/test_full_model.yaml::test_example_full_model",))
    assert "FAIL: test_example_full_model" in (broken.test_output or "")
    assert (fixed.has_changes, fixed.failed_tests, len(fixed.changes_of("added"))) == (True, (), 3)
    assert not (project / "db.db").exists()
    assert {"db.db.dagctl-lock", "state.duckdb", "state.duckdb.dagctl-lock"} <= {
        path.name for path in tmp_path.iterdir()
    }
