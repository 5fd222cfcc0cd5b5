"""Steps get only what they are given, and dbt runs exactly the approved argv.

A generated dbt project on a real Git remote, a real Dagster instance and real dbt runs on DuckDB: 50 tiny
models (`m00` ... `m49`) and `env_probe`, a model whose columns are what project code can read from its
environment with `env_var(...)`. The code location's environment holds what an attacker wants (the Git
token, an approver's secret, the Git SSH key path, prod's warehouse password); the deployment config
declares what steps get (`step_env`): the warehouse folder for every step, one plain value for `dev`, and
the password as a secret for `prod` only.

One module-scoped deployment: `dev` is deployed once (scope `all`); each test then pushes its change.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml
from dagster import DagsterInstance, Definitions, ExecuteInProcessResult, build_sensor_context, instance_for_test
from fixtures.git_repos import DBT_PROFILES, GitRepo, make_repo

from dagctl_dagster.core.config import parse_deployment_config
from dagctl_dagster.core.dbt_changes import NO_EMPTY_SELECTION
from dagctl_dagster.core.lifecycle import PlanState, PlanStatus
from dagctl_dagster.core.plan import build_plan_id
from dagctl_dagster.defs.definitions import build_definitions
from dagctl_dagster.defs.local_backend import STEP_RECORD
from dagctl_dagster.defs.runtime import PlanRuntime
from dagctl_dagster.defs.store import read_plan_states

PROJECT = "probe"
MODELS = 50
# What the code location holds and no step may read (each is an env_var() column of `env_probe`).
CODE_LOCATION_SECRETS = {
    "DAGCTL_GIT_TOKEN": "ghp-git-token-value",
    "DAGCTL_APPROVER_SECRET_ALICE": "alice-approver-secret",
    "DAGCTL_GIT_SSH_KEY": "/run/secrets/deploy-key",
    "AWS_SECRET_ACCESS_KEY": "aws-secret-value",
}
PROD_PASSWORD = "prod-warehouse-password"
PROBED = ["DAGCTL_GIT_TOKEN", "DAGCTL_APPROVER_SECRET_ALICE", "DAGCTL_GIT_SSH_KEY", "AWS_SECRET_ACCESS_KEY",
          "PROD_PASSWORD", "DEV_ONLY", "DAGCTL_PROJECT"]
ENV_PROBE = "select\n" + ",\n".join(
    f"    '{{{{ env_var('{name}', 'unset') }}}}' as {name.lower()}" for name in PROBED) + "\n"


def write_project(root: Path) -> Path:
    """The generated dbt project (profile `jaffle` of examples/dbt_profiles: one DuckDB file per target)."""
    root.mkdir(parents=True)
    (root / "dbt_project.yml").write_text(
        "name: probe\nversion: '1.0.0'\nconfig-version: 2\nprofile: jaffle\nmodel-paths: [models]\n"
        "models:\n  probe:\n    +materialized: view\n")
    (root / "models").mkdir()
    for index in range(MODELS):
        (root / "models" / f"m{index:02}.sql").write_text(f"select {index} as n\n")
    (root / "models" / "env_probe.sql").write_text(ENV_PROBE)
    (root / ".dagctl").mkdir()
    (root / ".dagctl" / "config.yaml").write_text('version: "1"\n')
    return root


class ProbeDeployment:
    """Project `probe` with environments `dev` and `prod` (both unprotected) on one instance."""

    def __init__(self, root: Path, repo: GitRepo, instance: DagsterInstance):
        self.root, self.repo, self.instance = root, repo, instance
        self.warehouse = root / "warehouse"
        self.versions = 1
        self.first_dev: ExecuteInProcessResult | None = None
        self.patch: pytest.MonkeyPatch | None = None
        config = parse_deployment_config(yaml.safe_dump({
            "storage_dir": str(root / "data"),
            "projects": [{
                "name": PROJECT, "framework": "dbt", "repository": repo.url,
                "dbt": {"profiles_dir": str(DBT_PROFILES), "commands": ["dbt build"]},
                "step_env": {"pass_env": ["DAGCTL_WAREHOUSE_DIR"]},
                "environments": [
                    {"name": "dev", "step_env": {"env": {"DEV_ONLY": "dev-value"}}},
                    {"name": "prod", "step_env": {"secret_env": [
                        {"env": "PROD_PASSWORD", "secret": "warehouse-prod", "key": "password"}]}},
                ],
            }],
        }), source="test-dagctl.yaml")
        self.runtime = PlanRuntime(deployment=config, storage_dir=root / "data", config_dir=root)
        self.defs: Definitions = build_definitions(self.runtime)

    def launch_plan(self, environment: str) -> tuple[ExecuteInProcessResult, PlanState]:
        config = {"environment": environment, "commit": "", "requested_by": "", "plan_id": ""}
        result = self.defs.resolve_job_def(f"{PROJECT}_plan_job").execute_in_process(
            run_config={"ops": {"detect": {"config": config}}}, instance=self.instance, raise_on_error=False)
        plan_id = build_plan_id(PROJECT, environment, result.run_id)
        return result, read_plan_states(self.instance, PROJECT, environment)[plan_id]

    def change_models(self, count: int) -> list[str]:
        """Pushes a change of models m00 ... m<count-1> with the next version; returns their paths."""
        self.versions += 1
        paths = [f"models/m{index:02}.sql" for index in range(count)]
        files = {path: self.repo.read(path) + f"-- change {self.versions}\n" for path in paths}
        self.repo.commit(f"Change {count} models", {**files, ".dagctl/config.yaml": f'version: "{self.versions}"\n'})
        return paths

    def probe(self, environment: str) -> dict[str, str]:
        with duckdb.connect(str(self.warehouse / f"jaffle_{environment}.duckdb"), read_only=True) as con:
            cursor = con.execute("select * from env_probe")
            names = [column[0].upper() for column in cursor.description]
            return dict(zip(names, cursor.fetchone(), strict=True))

    def step_dir(self, result: ExecuteInProcessResult, step: str = "execute-0") -> Path:
        return self.runtime.run_dir(result.run_id) / step

    def logs(self, result: ExecuteInProcessResult) -> str:
        return "\n".join(record.user_message for record in self.instance.all_logs(result.run_id))


@pytest.fixture(scope="module")
def probe(tmp_path_factory) -> Iterator[ProbeDeployment]:
    root = tmp_path_factory.mktemp("step_environment")
    repo = make_repo(root / "repo", write_project(root / "source"))
    (root / "home").mkdir()
    with pytest.MonkeyPatch.context() as patch, instance_for_test(temp_dir=str(root / "home")) as instance:
        deployment = ProbeDeployment(root, repo, instance)
        deployment.warehouse.mkdir()
        patch.setenv("DAGCTL_WAREHOUSE_DIR", str(deployment.warehouse))
        for name, value in {**CODE_LOCATION_SECRETS, "PROD_PASSWORD": PROD_PASSWORD}.items():
            patch.setenv(name, value)
        result, plan = deployment.launch_plan("dev")
        assert result.success and plan.status is PlanStatus.COMPLETED, plan.reason
        deployment.first_dev = result
        deployment.patch = patch
        yield deployment


def built_models(result: ExecuteInProcessResult) -> set[str]:
    return {event.asset_key.path[-1] for event in result.get_asset_materialization_events()
            if event.asset_key.path[0] == PROJECT}


def test_a_dev_step_reads_none_of_the_code_locations_secrets_nor_prods(probe: ProbeDeployment) -> None:
    assert probe.probe("dev") == {
        "DAGCTL_GIT_TOKEN": "unset", "DAGCTL_APPROVER_SECRET_ALICE": "unset", "DAGCTL_GIT_SSH_KEY": "unset",
        "AWS_SECRET_ACCESS_KEY": "unset", "PROD_PASSWORD": "unset", "DEV_ONLY": "dev-value",
        "DAGCTL_PROJECT": PROJECT,
    }
    logs = probe.logs(probe.first_dev)
    assert not [value for value in (*CODE_LOCATION_SECRETS.values(), PROD_PASSWORD) if value in logs]


def test_a_prod_step_gets_its_declared_secret_and_fails_naming_it_when_it_is_missing(
        probe: ProbeDeployment) -> None:
    probe.patch.delenv("PROD_PASSWORD")
    result, plan = probe.launch_plan("prod")

    assert not result.success and plan.status is PlanStatus.FAILED
    assert plan.reason == ("step 'execute-0' needs environment variable PROD_PASSWORD (secret "
                           "warehouse-prod/password in a cluster); set it in the environment of the Dagster "
                           "code location")

    probe.patch.setenv("PROD_PASSWORD", PROD_PASSWORD)
    review = {"plan_id": plan.plan_id, "decision": "retry", "actor": "alice", "comment": ""}
    assert probe.defs.resolve_job_def("dagctl_review_job").execute_in_process(
        run_config={"ops": {"review": {"config": review}}}, instance=probe.instance).success
    sensor = probe.defs.resolve_sensor_def("dagctl_approval_sensor")
    [request] = sensor(build_sensor_context(instance=probe.instance, definitions=probe.defs)).run_requests
    retry = probe.defs.resolve_job_def(f"{PROJECT}_plan_job").execute_in_process(
        run_config=request.run_config, tags=request.tags, instance=probe.instance)

    assert read_plan_states(probe.instance, PROJECT, "prod")[plan.plan_id].status is PlanStatus.COMPLETED
    assert (f"retry of plan {plan.plan_id}: dbt runs every node of the approved commands again, including "
            "those the failed attempt already built") in probe.logs(retry)
    seen = probe.probe("prod")
    assert (seen["PROD_PASSWORD"], seen["DEV_ONLY"], seen["DAGCTL_GIT_TOKEN"]) == (PROD_PASSWORD, "unset", "unset")
    assert PROD_PASSWORD not in probe.logs(retry)


@pytest.mark.parametrize("changed", [2, 3, 50])
def test_dbt_is_started_with_exactly_the_approved_argv_and_builds_exactly_the_selection(
        probe: ProbeDeployment, changed: int) -> None:
    paths = probe.change_models(changed)

    result, plan = probe.launch_plan("dev")

    selection = tuple(f"path:{path}" for path in paths)
    approved = ("dbt", "build", "--target", "dev", *NO_EMPTY_SELECTION, "--select", *selection)
    assert (plan.status, plan.spec.dbt_scope.selection, plan.spec.commands) == (
        PlanStatus.COMPLETED, selection, (approved,)), plan.reason
    record: dict[str, Any] = json.loads((probe.step_dir(result) / STEP_RECORD).read_text())
    assert Path(record["argv"][0]).name == "dbt" and tuple(record["argv"][1:]) == approved[1:]
    run_results = json.loads((probe.step_dir(result) / "run_results.json").read_text())
    assert run_results["args"]["select"] == list(selection)
    built = {result["unique_id"] for result in run_results["results"]}
    assert built == {f"model.probe.m{index:02}" for index in range(changed)}
    assert built_models(result) == {f"m{index:02}" for index in range(changed)}


def test_a_broken_dbt_project_yml_fails_the_plan_with_dbts_whole_error_block(probe: ProbeDeployment) -> None:
    original = probe.repo.read("dbt_project.yml")
    probe.versions += 1
    probe.repo.commit("Break dbt_project.yml", {
        "dbt_project.yml": original + "   broken: [\n", ".dagctl/config.yaml": f'version: "{probe.versions}"\n'})
    try:
        result, plan = probe.launch_plan("dev")
    finally:
        probe.repo.commit("Fix dbt_project.yml", {"dbt_project.yml": original})

    assert not result.success and plan.status is PlanStatus.FAILED
    # dbt's parse of the commit fails it at explain, before any approval (tests/defs/test_dbt_impact.py).
    lines = plan.reason.splitlines()
    assert lines[:3] == [f"dbt cannot parse the project at {plan.spec.short_target} (fix the project and push a "
                         "new commit):", "Runtime Error", "  Syntax error near line 9"]
    assert "  9  |    broken: [" in lines  # the offending line, as dbt shows it
    assert "  did not find expected key" in lines
    assert lines[-1] == '    in "<unicode string>", line 9, column 4'
