"""The selection a plan approves is exactly what real dbt builds, whatever the changed files are called.

dbt's `path:` selector reads its value as a glob (`*`, `?`, `[`) and its arguments as lists (spaces,
commas); `+` and `@` are graph operators. A real dbt project on DuckDB gets files with each of these
characters plus decoys that an unescaped glob would also match; the command line of the plan is run as it is,
and the nodes in dbt's `run_results.json` must be exactly the changed files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.git_repos import DBT_PROFILES, JAFFLE_DBT

from dagctl_dagster.core.dbt_changes import Scope, build_dbt_commands, build_dbt_scope, build_file_change

DBT = str(Path(sys.executable).with_name("dbt"))
CHANGED = ["models/odd/star*.sql", "models/odd/what?.sql", "models/odd/[br]ackets].sql", "models/odd/plus+.sql",
           "models/odd/@at.sql", "models/odd/**/*.sql"]
# Files an unescaped selection of CHANGED would also match: none of them may be built.
DECOYS = ["models/odd/starX.sql", "models/odd/whatX.sql", "models/odd/backets].sql", "models/odd/deep/x.sql"]


@pytest.fixture(scope="module")
def odd_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("odd_names")
    project = root / "project"
    shutil.copytree(JAFFLE_DBT, project, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    for index, path in enumerate(CHANGED + DECOYS):
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        # An alias keeps the warehouse relation name plain whatever the file is called.
        (project / path).write_text(f"{{{{ config(alias='odd_{index}') }}}}\nselect {index} as x\n")
    (project / "models/odd/no_nodes.yml").write_text("version: 2\n")
    (root / "warehouse").mkdir()
    return project


def run_dbt(project: Path, argv: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DBT_PROFILES_DIR": str(DBT_PROFILES), "DAGCTL_WAREHOUSE_DIR": str(project.parent / "warehouse"),
           "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    return subprocess.run([DBT, *argv[1:]], cwd=project, env=env, capture_output=True, text=True, check=False)


def built_nodes(project: Path) -> set[str]:
    results = json.loads((project / "target" / "run_results.json").read_text())["results"]
    return {result["unique_id"] for result in results if result["status"] == "success"}


def node_id(path: str) -> str:
    return f"model.jaffle.{Path(path).stem}"


def test_dbt_builds_exactly_the_changed_files_whatever_their_names(odd_project: Path) -> None:
    scope = build_dbt_scope([build_file_change(path, "added") for path in CHANGED], has_base=True)
    [argv] = build_dbt_commands([("dbt", "build")], scope, target="dev")

    result = run_dbt(odd_project, argv)

    assert result.returncode == 0, result.stdout[-3000:]
    assert scope.scope is Scope.SELECTIVE
    assert built_nodes(odd_project) == {node_id(path) for path in CHANGED}


def test_a_selected_file_that_holds_no_node_fails_dbt_naming_it(odd_project: Path) -> None:
    changes = [build_file_change("models/odd/star*.sql", "modified"),
               build_file_change("models/odd/no_nodes.yml", "added")]
    [argv] = build_dbt_commands([("dbt", "build")], build_dbt_scope(changes, has_base=True), target="dev")

    result = run_dbt(odd_project, argv)

    assert result.returncode != 0
    assert "The selection criterion 'path:models/odd/no_nodes.yml' does not match any enabled nodes" in (
        result.stdout)
