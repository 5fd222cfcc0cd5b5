"""A dbt plan's parse step on the local backend is served by the resident parse server, unless the backend's
config turns it off (`dbt_parse_server: false`): on the deployed world, with real dbt on DuckDB.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import pytest

from dagctl_dagster.core.dbt_impact import ImpactStatus, ParseMode
from dagctl_dagster.core.plan import build_plan_id
from dagctl_dagster.defs.dbt_impact import build_dbt_parse_step, run_dbt_parse
from dagctl_dagster.runner.dbt_parse_server import SCOPE_VARIABLE, get_server_name, get_server_pid, stop_servers

from conftest import ENV, PROJECT

STG_ORDERS = "models/staging/stg_orders.sql"
EXAMPLE_PROJECT = Path(__file__).resolve().parents[2] / "examples" / "jaffle_dbt"


@pytest.fixture
def own_scope(monkeypatch) -> str:
    """A scope of this test's own: the server the plan starts is this test's, stopped at its end."""
    scope = f"plan{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv(SCOPE_VARIABLE, scope)
    yield scope
    stop_servers(scope)


def parse_argv(deployed, **backend) -> tuple[str, ...]:
    deployed.configure(backend={"type": "local", **backend})
    project = deployed.runtime.deployment.get_project(PROJECT)
    env = next(e for e in project.environments if e.name == ENV)
    step = build_dbt_parse_step(deployed.runtime, project, env, Path("/snapshot"), Path("/target"),
                                Path("/result.json"))
    return step.argv


def test_the_parse_step_names_the_server_of_this_code_unless_the_backend_turns_it_off(deployed):
    argv = parse_argv(deployed, dbt_parse_server_idle_seconds=30)
    assert argv[-4:] == ("--server", get_server_name(), "--server-idle", "30")
    assert "--server" not in parse_argv(deployed, dbt_parse_server=False)


def test_a_plans_parse_starts_the_server_and_is_served_by_it(deployed, deployed_template, own_scope, monkeypatch):
    # The profile as the deployed plan's parse rendered it (dbt parses from scratch when the profile changes).
    monkeypatch.setenv("DAGCTL_WAREHOUSE_DIR", str(deployed_template.root / "warehouse"))
    name = get_server_name()
    assert name.endswith(f"-{own_scope}") and get_server_pid(name) is None
    deployed.commit_change(STG_ORDERS, deployed.repo.read(STG_ORDERS) + "-- reviewed\n")
    result = deployed.launch_plan()
    logs = "\n".join(entry.user_message for entry in deployed.instance.all_logs(result.run_id))
    assert "dbt parse server unavailable" not in logs
    impact = deployed.state(build_plan_id(PROJECT, ENV, result.run_id)).spec.dbt_impact
    assert impact.status is ImpactStatus.RESOLVED and impact.parse.mode is ParseMode.PARTIAL
    server = get_server_pid(name)
    assert server is not None and os.getsid(server) == server


@pytest.mark.parametrize("served", [True, False], ids=["served", "plain process"])
def test_a_python_module_in_the_project_never_runs_in_the_parse_step(deployed, deployed_template, own_scope,
                                                                    monkeypatch, tmp_path, served):
    """The parse runs before any approval: a module committed next to dbt_project.yml that shadows one the
    parse step imports (`json`, dbt's `agate`) must not run (Python puts the working directory first on the
    module path of `python -m`, unless `-P`)."""
    monkeypatch.setenv("DAGCTL_WAREHOUSE_DIR", str(deployed_template.root / "warehouse"))
    deployed.configure(backend={"type": "local", "dbt_parse_server": served})
    project = deployed.runtime.deployment.get_project(PROJECT)
    env = next(e for e in project.environments if e.name == ENV)
    snapshot, ran = tmp_path / "snapshot", tmp_path / "project code ran"
    shutil.copytree(EXAMPLE_PROJECT, snapshot, ignore=shutil.ignore_patterns("target", "logs", "dbt_packages"))
    for module in ("json", "agate"):
        (snapshot / f"{module}.py").write_text(f"import pathlib\npathlib.Path({str(ran)!r}).write_text('{module}')\n")
    step = build_dbt_parse_step(deployed.runtime, project, env, snapshot, tmp_path / "target", tmp_path / "out.json")

    result = run_dbt_parse(step, tmp_path / "out.json", work_dir=tmp_path / "step")

    assert not ran.exists(), f"{ran.read_text()}.py of the project ran in the parse step"
    assert result["outcome"] == "parsed", result
