"""The SQLMesh step entrypoints besides apply: explain and the recurring commands, run in-process on the
example project (real SQLMesh on DuckDB), and what each does when another process holds the database."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagctl_dagster.adapters.sqlmesh import explain_sqlmesh_plan
from dagctl_dagster.runner import sqlmesh_apply, sqlmesh_explain, sqlmesh_recurring

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sqlmesh_shop"


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "warehouse"
    folder.mkdir()
    monkeypatch.setenv("DAGCTL_WAREHOUSE_DIR", str(folder))
    return folder


@pytest.fixture
def project(tmp_path: Path, warehouse: Path) -> Path:
    return Path(shutil.copytree(EXAMPLE, tmp_path / "project"))


@pytest.fixture
def held_state(warehouse: Path) -> Iterator[Path]:
    """The state database held by a process that is not a dagctl step (DuckDB's write lock)."""
    state = warehouse / "sqlmesh_shop_state.duckdb"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import duckdb, sys; c = duckdb.connect(sys.argv[1]); print('held', flush=True); "
         "sys.stdin.read()", str(state)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    yield state
    holder.communicate("")


def test_explain_writes_the_change_set_and_prints_progress(
    project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "result.json"

    code = sqlmesh_explain.main(["--project-dir", str(project), "--environment", "prod", "--output", str(output)])

    result = json.loads(output.read_text())
    assert (code, result["outcome"]) == (sqlmesh_explain.EXIT_EXPLAINED, "explained")
    assert sorted(c["name"] for c in result["change_set"]["changes"]) == [
        "shop.category_revenue", "shop.daily_revenue", "shop.orders", "shop.products"]
    assert "Unit tests: 1 passed." in capsys.readouterr().out


def test_explain_of_a_held_database_exits_4_and_says_so(
    project: Path, tmp_path: Path, held_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / "result.json"

    code = sqlmesh_explain.main(["--project-dir", str(project), "--environment", "prod", "--output", str(output)])

    result = json.loads(output.read_text())
    err = capsys.readouterr().err
    assert (code, result["outcome"]) == (sqlmesh_explain.EXIT_LOCKED, "locked")
    assert result["message"].startswith(
        f'SQLMesh cannot open its DuckDB database: IO Error: Could not set lock on file "{held_state}"')
    assert err.count("\n") == 1 and "dagctl plans retry" in err


def test_apply_of_a_held_database_exits_4_and_applies_nothing(
    project: Path, held_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = sqlmesh_apply.main(["--project-dir", str(project), "--environment", "prod",
                               "--change-set-fingerprint", "0" * 64])

    err = capsys.readouterr().err
    assert code == sqlmesh_apply.EXIT_LOCKED
    assert err.startswith("SQLMesh cannot open its DuckDB database: IO Error: Could not set lock on file")


def test_recurring_run_and_janitor_on_a_deployment(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sqlmesh_apply.main(["--project-dir", str(project), "--environment", "prod", "--change-set-fingerprint",
                        explain_sqlmesh_plan(project, "prod").fingerprint])
    capsys.readouterr()

    run = sqlmesh_recurring.main(["run", "--environment", "prod", "--project-dir", str(project)])
    janitor = sqlmesh_recurring.main(["janitor", "--project-dir", str(project)])

    assert (run, janitor) == (sqlmesh_recurring.EXIT_DONE, sqlmesh_recurring.EXIT_DONE)
    assert capsys.readouterr().out.splitlines()[-1] == "Janitor finished."


def test_recurring_run_of_a_held_database_exits_4(
    project: Path, held_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = sqlmesh_recurring.main(["run", "--environment", "prod", "--project-dir", str(project)])

    assert code == sqlmesh_recurring.EXIT_LOCKED
    assert "holds DuckDB's single-writer lock" in capsys.readouterr().err


def test_explain_without_a_variable_the_project_reads_says_which_setting_to_declare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    project = Path(shutil.copytree(EXAMPLE, tmp_path / "project"))
    monkeypatch.delenv("DAGCTL_WAREHOUSE_DIR", raising=False)
    output = tmp_path / "result.json"

    code = sqlmesh_explain.main(["--project-dir", str(project), "--environment", "prod", "--output", str(output)])

    message = json.loads(output.read_text())["message"]
    assert code == sqlmesh_explain.EXIT_FAILED
    assert message.startswith("SQLMesh failed while explaining environment 'prod': IOException: IO Error: "
                              'Cannot open file "')
    assert "None/sqlmesh_shop" in message and "(step_env: pass_env or env)" in message
    assert "Traceback" in capsys.readouterr().out
