"""The environment of SQLMesh's steps (explain, apply, recurring): the allowlist and what the deployment
config declares for the project and the environment, nothing else of the code location's environment."""

from datetime import UTC, datetime
from pathlib import Path

from dagctl_dagster.core.config import parse_deployment_config
from dagctl_dagster.core.plan import Framework, PlanSpec, seal_plan
from dagctl_dagster.core.sqlmesh_plan import SqlmeshChangeSet
from dagctl_dagster.core.steps import SecretRef, build_process_env
from dagctl_dagster.defs.execution import SNAPSHOT_PREFIX, build_execute_steps
from dagctl_dagster.defs.runtime import PlanRuntime
from dagctl_dagster.defs.sqlmesh_plans import build_sqlmesh_explain_step

# What the code location's process holds: the allowlisted basics, the declared variables, and secrets that
# no SQLMesh step of `prod` declared (approver key, Git token, dev's password).
CODE_LOCATION_ENV = {
    "PATH": "/usr/bin", "HOME": "/home/dagster", "LANG": "C.UTF-8",
    "DAGCTL_WAREHOUSE_DIR": "/data/warehouse", "SQLMESH_STATE_PASSWORD": "state-secret",
    "DAGCTL_APPROVER_SECRET_ALICE": "approver-secret", "DAGCTL_GIT_TOKEN": "git-token",
    "DEV_WAREHOUSE_PASSWORD": "dev-secret",
}
EXPECTED_PROD_ENV = {
    "PATH": "/usr/bin", "HOME": "/home/dagster", "LANG": "C.UTF-8",
    "DAGCTL_WAREHOUSE_DIR": "/data/warehouse", "SQLMESH_STATE_PASSWORD": "state-secret",
    "SQLMESH__DISABLE_ANONYMIZED_ANALYTICS": "1", "SQLMESH_THREADS": "4",
    "DAGCTL_PROJECT": "shop", "DAGCTL_ENVIRONMENT": "prod",
}


def make_runtime(tmp_path: Path) -> PlanRuntime:
    config = parse_deployment_config("""
projects:
  - name: shop
    framework: sqlmesh
    repository: https://git.acme.io/analytics.git
    step_env:
      env: {SQLMESH__DISABLE_ANONYMIZED_ANALYTICS: "1"}
      pass_env: [DAGCTL_WAREHOUSE_DIR]
    environments:
      - name: prod
        step_env:
          env: {SQLMESH_THREADS: "4"}
          secret_env: [{env: SQLMESH_STATE_PASSWORD, secret: sqlmesh-state, key: password}]
      - name: dev
        step_env:
          pass_env: [DEV_WAREHOUSE_PASSWORD]
""", source="dagctl.yaml")
    return PlanRuntime(deployment=config, storage_dir=tmp_path / "data", config_dir=tmp_path)


def make_spec() -> PlanSpec:
    return seal_plan(PlanSpec(
        plan_id="shop-prod-0123abcd", project="shop", environment="prod", framework=Framework.SQLMESH,
        base_commit="b" * 40, target_commit="a" * 40, triggered_by="sensor", author="carol",
        created_at=datetime(2025, 1, 6, tzinfo=UTC),
        sqlmesh=SqlmeshChangeSet(environment="prod", base_plan_id="p1", has_changes=True)))


def test_the_apply_step_gets_what_prod_declares_and_no_other_secret(tmp_path):
    runtime = make_runtime(tmp_path)
    project = runtime.deployment.projects[0]

    [step] = build_execute_steps(runtime, project, make_spec(), f"{SNAPSHOT_PREFIX}{tmp_path}/snap#tree")

    assert step.secret_env == (SecretRef(env="SQLMESH_STATE_PASSWORD", secret="sqlmesh-state", key="password"),)
    assert build_process_env(step, CODE_LOCATION_ENV) == EXPECTED_PROD_ENV


def test_the_explain_step_gets_what_its_environment_declares_and_no_other_secret(tmp_path):
    project = make_runtime(tmp_path).deployment.projects[0]

    prod = build_sqlmesh_explain_step(project, project.get_environment("prod"), tmp_path, tmp_path / "out.json")
    dev = build_sqlmesh_explain_step(project, project.get_environment("dev"), tmp_path, tmp_path / "out.json")

    assert prod.argv == ("python", "-m", "dagctl_dagster.runner.sqlmesh_explain", "--project-dir", str(tmp_path),
                         "--environment", "prod", "--output", str(tmp_path / "out.json"))
    assert build_process_env(prod, CODE_LOCATION_ENV) == EXPECTED_PROD_ENV
    assert build_process_env(dev, CODE_LOCATION_ENV) == {
        "PATH": "/usr/bin", "HOME": "/home/dagster", "LANG": "C.UTF-8", "DAGCTL_WAREHOUSE_DIR": "/data/warehouse",
        "DEV_WAREHOUSE_PASSWORD": "dev-secret", "SQLMESH__DISABLE_ANONYMIZED_ANALYTICS": "1",
        "DAGCTL_PROJECT": "shop", "DAGCTL_ENVIRONMENT": "dev",
    }
