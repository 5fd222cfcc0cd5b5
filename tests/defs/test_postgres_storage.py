"""Production storage on a real PostgreSQL server: Dagster's instance as the Helm chart configures it, and
SQLMesh's state database.

The lifecycle tests that matter most run on both instance storages (`@ON_SQLITE_AND_POSTGRES` in
test_lifecycle_flow, test_approvals, test_gate_refusals, test_retries); this module checks that the
PostgreSQL variant is what it claims, and runs a SQLMesh plan whose state lives in PostgreSQL.
"""

from pathlib import Path

import duckdb
import psycopg2
import pytest
import yaml
from conftest import ON_SQLITE_AND_POSTGRES
from dagster import instance_for_test
from fixtures.git_repos import REPO_ROOT, make_repo
from fixtures.postgres import (
    POSTGRES_INSTANCE_EXAMPLE,
    PostgresUnavailable,
    load_postgres_instance_config,
    start_postgres,
)

from dagctl_dagster.core.config import parse_deployment_config
from dagctl_dagster.core.lifecycle import PlanStatus
from dagctl_dagster.defs.definitions import build_definitions
from dagctl_dagster.defs.runtime import PlanRuntime
from dagctl_dagster.defs.store import read_plan_states

SHOP = REPO_ROOT / "examples" / "sqlmesh_shop"
STATE_PREFIX = "SQLMESH__GATEWAYS__DUCKDB__STATE_CONNECTION__"


@ON_SQLITE_AND_POSTGRES
def test_postgres_variant_keeps_runs_events_and_schedules_in_postgres(deployed, instance_storage):
    storages = {type(deployed.instance.run_storage).__name__,
                type(deployed.instance.event_log_storage).__name__,
                type(deployed.instance.schedule_storage).__name__}
    # The deployed template's first plan is in the copied database.
    plans = read_plan_states(deployed.instance, "jaffle", "prod")

    assert storages == ({"PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"}
                        if instance_storage == "postgres" else
                        {"SqliteRunStorage", "ConsolidatedSqliteEventLogStorage", "SqliteScheduleStorage"})
    assert plans[deployed.deployed_plan_id].status is PlanStatus.COMPLETED


def test_postgres_instance_example_limits_executions_like_the_demo_instance():
    example = load_postgres_instance_config()
    demo = yaml.safe_load((REPO_ROOT / "dagster.yaml").read_text())

    assert example["run_coordinator"] == demo["run_coordinator"]
    assert example["run_monitoring"] == demo["run_monitoring"]
    assert {example[key]["class"] for key in ("run_storage", "event_log_storage", "schedule_storage")} == {
        "PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"}
    assert "password: {env: DAGSTER_PG_PASSWORD}" in POSTGRES_INSTANCE_EXAMPLE.read_text()


def test_sqlmesh_plan_and_apply_with_its_state_in_postgres(postgres_server, tmp_path: Path, monkeypatch):
    # The example project's DuckDB state connection, pointed at PostgreSQL the way its config.yaml
    # documents: SQLMESH__GATEWAYS__DUCKDB__STATE_CONNECTION__* variables. The warehouse stays DuckDB.
    database = postgres_server.create_database("dagctl_sqlmesh_state")
    state = {"TYPE": "postgres", "HOST": postgres_server.host, "PORT": str(postgres_server.port),
             "USER": postgres_server.user, "PASSWORD": postgres_server.password, "DATABASE": database}
    for name, value in state.items():
        monkeypatch.setenv(STATE_PREFIX + name, value)
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    monkeypatch.setenv("DAGCTL_WAREHOUSE_DIR", str(warehouse))
    repo = make_repo(tmp_path / "repo", SHOP, message="Shop, first version")
    passed = [STATE_PREFIX + name for name in state] + ["DAGCTL_WAREHOUSE_DIR"]
    config = parse_deployment_config(f"""
projects:
  - name: shop
    framework: sqlmesh
    repository: {repo.url}
    step_env: {{pass_env: {passed}}}
    environments:
      - {{name: prod}}
""", source="test-dagctl.yaml")
    defs = build_definitions(PlanRuntime(deployment=config, storage_dir=tmp_path / "data", config_dir=tmp_path))

    with instance_for_test() as instance:
        result = defs.get_job_def("shop_plan_job").execute_in_process(
            run_config={"ops": {"detect": {"config": {"environment": "prod"}}}}, instance=instance,
            raise_on_error=False)
        [plan] = read_plan_states(instance, "shop", "prod").values()

    assert result.success
    assert plan.status is PlanStatus.COMPLETED
    with psycopg2.connect(postgres_server.url(database)) as connection, connection.cursor() as cursor:
        cursor.execute("select name from sqlmesh._environments")
        assert cursor.fetchall() == [("prod",)]
        cursor.execute("select count(*) from sqlmesh._snapshots")
        assert cursor.fetchone()[0] == 4
    with duckdb.connect(str(warehouse / "sqlmesh_shop.duckdb"), read_only=True) as warehouse_db:
        assert warehouse_db.execute("select count(*) from shop.category_revenue").fetchone()[0] > 0
    assert not (warehouse / "sqlmesh_shop_state.duckdb").exists()
    postgres_server.drop_database(database)


def test_without_postgresql_the_postgres_tests_skip_saying_how_to_enable_them(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGCTL_TEST_POSTGRES_URL", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(PostgresUnavailable) as unavailable, start_postgres(
            debian_initdb=str(tmp_path / "no-postgresql" / "*" / "bin" / "initdb")):
        pass

    assert str(unavailable.value) == (
        "PostgreSQL tests skipped: install Debian's postgresql (`make test` does it as root) or set "
        "DAGCTL_TEST_POSTGRES_URL=postgresql://user:password@host:port/postgres")
