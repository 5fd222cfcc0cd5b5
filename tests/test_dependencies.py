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


def test_postgres_storage_of_dagster_and_sqlmesh_is_installed_from_wheels_only():
    # The image's run workers need dagster-postgres (the Helm chart's instance); SQLMesh's state
    # connection needs psycopg2, provided by psycopg2-binary: the source package `psycopg2` (a C build)
    # is overridden away in pyproject.toml, so no compiler is needed anywhere.
    code = ("import importlib.metadata as m, dagster_postgres, psycopg2, sqlmesh.core.config.connection\n"
            "print(m.version('psycopg2-binary'))\n"
            "try:\n    m.version('psycopg2')\nexcept m.PackageNotFoundError:\n    print('no psycopg2 source package')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:] == ["no psycopg2 source package"]
