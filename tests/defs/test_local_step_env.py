"""Local steps that are not dbt (SQLMesh's apply as a dagster-pipes process, recurring commands) get
exactly their declared environment, though dagster-pipes' client hands them the whole run worker's."""

import json

import pytest
from dagster import instance_for_test, job, op

from dagctl_dagster.core.errors import DagctlStepError
from dagctl_dagster.core.steps import STEP_ENV_ALLOWLIST, SecretRef, StepSpec
from dagctl_dagster.defs.local_backend import run_command_step, run_pipes_step

REPORT_ENV = """
import json, os
from dagster_pipes import open_dagster_pipes
with open_dagster_pipes() as pipes:
    pipes.log.info("environment: " + json.dumps(sorted(os.environ)))
"""
CODE_LOCATION = {"DAGCTL_GIT_TOKEN": "token", "DAGCTL_APPROVER_SECRET_ALICE": "secret",
                 "WAREHOUSE_DIR": "/data", "PROD_PASSWORD": "password"}


def run_in_op(body):
    @op
    def step(context):
        result = body(context)
        if result is not None:
            list(result)

    @job
    def recurring():
        step()

    with instance_for_test() as instance:
        result = recurring.execute_in_process(instance=instance, raise_on_error=False)
        return result, [record.user_message for record in instance.all_logs(result.run_id)]


@pytest.fixture
def code_location(monkeypatch):
    for name, value in CODE_LOCATION.items():
        monkeypatch.setenv(name, value)


def declared_step(argv, **fields):
    return StepSpec(name="execute", argv=argv, env={"DAGCTL_PROJECT": "shop"}, pass_env=("WAREHOUSE_DIR",),
                    **fields)


def test_a_pipes_step_sees_only_the_allowlist_its_declared_variables_and_the_pipes_protocol(
        code_location, tmp_path):
    step = declared_step(("python", "-c", REPORT_ENV), secret_env=(SecretRef(env="PROD_PASSWORD", secret="w",
                                                                            key="p"),))

    result, logs = run_in_op(lambda context: run_pipes_step(context, step, work_dir=tmp_path / "execute"))

    assert result.success
    [line] = [line for line in logs if line.startswith("environment: ")]
    names = set(json.loads(line.removeprefix("environment: ")))
    assert names - STEP_ENV_ALLOWLIST == {"DAGCTL_PROJECT", "WAREHOUSE_DIR", "PROD_PASSWORD",
                                          "DAGSTER_PIPES_CONTEXT", "DAGSTER_PIPES_MESSAGES"}
    record = json.loads((tmp_path / "execute" / "dagctl-step.json").read_text())
    assert record["argv"][1:] == ["-c", REPORT_ENV]


def test_a_recurring_command_sees_only_the_allowlist_and_its_declared_variables(code_location, tmp_path):
    step = declared_step(("env",))

    result, logs = run_in_op(lambda context: run_command_step(context, step, work_dir=tmp_path / "recurring"))

    assert result.success
    names = {line.split("=", 1)[0] for line in logs if "=" in line and line.split("=", 1)[0].isupper()}
    assert names - STEP_ENV_ALLOWLIST == {"DAGCTL_PROJECT", "WAREHOUSE_DIR"}


def test_a_missing_declared_secret_fails_the_step_before_anything_starts(tmp_path):
    step = declared_step(("env",), secret_env=(SecretRef(env="NOT_SET_HERE", secret="w", key="p"),))

    with pytest.raises(DagctlStepError, match="step 'execute' needs environment variable NOT_SET_HERE"):
        run_command_step(None, step, work_dir=tmp_path / "recurring")
    assert not (tmp_path / "recurring" / "dagctl-step.json").exists()
