"""The pinned dependency set works together in one process."""

import subprocess
import sys


def test_sqlmesh_and_dagster_dbt_import_in_one_process():
    # dagster-dbt asks for sqlglot[rs]; its compiled sqlglotc makes SQLMesh fail at import ("interpreted
    # classes cannot inherit from compiled", SQLMesh issue 5792). pyproject.toml overrides it: both must load.
    code = "import dagster_dbt, sqlmesh, sqlglot; print(sqlglot.__version__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "30.8.0"


def test_compiled_sqlglot_is_not_installed():
    result = subprocess.run([sys.executable, "-c", "import sqlglotc"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "No module named 'sqlglotc'" in result.stderr
