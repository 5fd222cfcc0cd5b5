"""The in-pod dbt entrypoint, run for real: the example jaffle project on DuckDB, in `tmp_path`.

The runner is started as the pod starts it (`python -m dagctl_dagster.runner.dbt_pipes dbt ...`) with a
dagster-pipes context and a message file in its environment, exactly what dagster-k8s injects (there the
messages go to the pod log instead of a file). One dbt build with a broken mart model shows the whole
contract: output streamed, every node built reported with its asset key, dbt's exit code returned.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dagster_pipes import encode_env_var

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
RUNNER = [sys.executable, "-m", "dagctl_dagster.runner.dbt_pipes"]


@pytest.fixture
def jaffle(tmp_path: Path) -> Path:
    """The example dbt project with `orders` broken: seeds and staging build, `orders` fails, `customers` skips."""
    project = tmp_path / "jaffle"
    shutil.copytree(EXAMPLES / "jaffle_dbt", project, ignore=shutil.ignore_patterns("target", "logs", "*.duckdb*"))
    (project / "models" / "marts" / "orders.sql").write_text("select no_such_column from {{ ref('stg_orders') }}\n")
    return project


def pipes_env(tmp_path: Path, messages: Path, **extra: str) -> dict[str, str]:
    context = {
        "asset_keys": None, "code_version_by_asset_key": None, "provenance_by_asset_key": None,
        "partition_key": None, "partition_key_range": None, "partition_time_window": None,
        "run_id": "run-1", "job_name": "plan", "retry_number": 0,
        "extras": {"labels": {"dagctl/project": "jaffle", "dagctl/environment": "dev", "dagctl/plan-id": "p1"}},
    }
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "DAGSTER_PIPES_CONTEXT": encode_env_var({"data": context}),
        "DAGSTER_PIPES_MESSAGES": encode_env_var({"path": str(messages)}),
        "DBT_PROFILES_DIR": str(EXAMPLES / "dbt_profiles"),
        "DAGCTL_WAREHOUSE_DIR": str(tmp_path),
        **extra,
    }


def read_messages(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_dbt_build_reports_every_node_built_and_exits_with_dbts_code(jaffle: Path, tmp_path: Path) -> None:
    """The project name comes from DAGCTL_PROJECT (it wins over the labels), the environment from the labels."""
    messages = tmp_path / "messages.jsonl"
    process = subprocess.run([*RUNNER, "dbt", "build", "--target", "dev"], cwd=jaffle, capture_output=True,
                             text=True, env=pipes_env(tmp_path, messages, DAGCTL_PROJECT="shop"), timeout=180)

    assert process.returncode == 1, process.stderr
    assert "Completed with 1 error" in process.stdout
    reported = {m["params"]["asset_key"]: m["params"]["metadata"] for m in read_messages(messages)
                if m["method"] == "report_asset_materialization"}
    assert sorted(reported) == ["shop/dev/raw_customers", "shop/dev/raw_orders",
                                "shop/dev/stg_customers", "shop/dev/stg_orders"]
    assert reported["shop/dev/stg_orders"]["unique_id"]["raw_value"] == "model.jaffle.stg_orders"
    assert reported["shop/dev/raw_orders"]["resource_type"]["raw_value"] == "seed"
    logs = [m["params"]["message"] for m in read_messages(messages) if m["method"] == "log"]
    assert logs == ["running dbt build --target dev", "dbt exited with code 1; 4 node(s) built"]
    methods = [m["method"] for m in read_messages(messages)]
    assert (methods[0], methods[-1]) == ("opened", "closed")


def test_anything_but_a_dbt_command_line_is_refused(tmp_path: Path) -> None:
    process = subprocess.run([*RUNNER, "rm", "-rf", "/"], capture_output=True, text=True, timeout=60,
                             env=pipes_env(tmp_path, tmp_path / "messages.jsonl"))

    assert process.returncode == 2
    assert "usage: python -m dagctl_dagster.runner.dbt_pipes dbt <command>" in process.stderr
