"""Configuration: the deployment config (`dagctl.yaml`) and a project's `.dagctl/config.yaml`.

Parsed from text (no file I/O): every error names the file and the field path, and for a project config
the commit as well.
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from dagctl_dagster.core.config import (
    DbtConfig,
    DeploymentConfig,
    EnvironmentConfig,
    LocalBackendConfig,
    PathRule,
    PersonConfig,
    ProjectConfig,
    ProjectRepoConfig,
    ScheduleConfig,
    SqlmeshConfig,
    parse_deployment_config,
    parse_project_repo_config,
)
from dagctl_dagster.core.errors import DagctlConfigError, DagctlError, DagctlProjectConfigError

ALICE_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFMJiXySHbuxX1wpRaFtgIKOn4D4XfG3K4tmVdjGtDKh alice@laptop"
FULL_EXAMPLE = """
storage_dir: /var/lib/dagctl
people:
  - name: alice
    emails: [Alice@Acme.io]
    keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFMJiXySHbuxX1wpRaFtgIKOn4D4XfG3K4tmVdjGtDKh alice@laptop"]
  - name: bob
    keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFMJiXySHbuxX1wpRaFtgIKOn4D4XfG3K4tmVdjGtDKh bob@laptop"]
  - name: carol
    keys: ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFMJiXySHbuxX1wpRaFtgIKOn4D4XfG3K4tmVdjGtDKh carol@laptop"]
projects:
  - name: jaffle
    framework: dbt
    repository: git@github.com:acme/jaffle.git
    branch: release
    subdirectory: /analytics/
    backend: local
    sensor_interval_seconds: 30
    dbt:
      commands: ["dbt seed", ["dbt", "build", "--exclude", "tag:slow"]]
      profiles_dir: profiles
    environments:
      - name: prod
        protected: true
        approvers: [alice, bob, carol]
        required_approvals: 2
        path_rules:
          - paths: ["models/finance/**"]
            approvers: [carol]
        approval_ttl: 24h
        verify_approvals: true
        webhook_url: http://127.0.0.1:8080/hook
      - name: dev
        branch: develop
        target: duckdb_dev
        include_downstream: true
    schedules:
      - name: nightly_build
        environment: prod
        cron: "0 3 * * *"
        command: dbt_build
  - name: warehouse
    framework: sqlmesh
    repository: https://github.com/acme/warehouse.git
    sqlmesh:
      gateway: duckdb
    environments:
      - name: prod
        protected: true
        sqlmesh_environment: production
        allow_self_approval: true
    schedules:
      - name: hourly_run
        environment: prod
        cron: "0 * * * *"
        command: sqlmesh_run
      - name: janitor
        environment: prod
        cron: "0 4 * * *"
        command: sqlmesh_janitor
"""


def test_full_example_parses_into_every_field() -> None:
    config = parse_deployment_config(FULL_EXAMPLE, source="dagctl.yaml")

    assert config == DeploymentConfig(
        storage_dir="/var/lib/dagctl",
        people=(
            PersonConfig(name="alice", emails=("alice@acme.io",), keys=(ALICE_KEY,)),
            PersonConfig(name="bob", keys=(ALICE_KEY.replace("alice@laptop", "bob@laptop"),)),
            PersonConfig(name="carol", keys=(ALICE_KEY.replace("alice@laptop", "carol@laptop"),)),
        ),
        projects=(
            ProjectConfig(
                name="jaffle",
                framework="dbt",
                repository="git@github.com:acme/jaffle.git",
                branch="release",
                subdirectory="analytics",
                backend=LocalBackendConfig(),
                sensor_interval_seconds=30,
                dbt=DbtConfig(
                    commands=(("dbt", "seed"), ("dbt", "build", "--exclude", "tag:slow")),
                    profiles_dir="profiles",
                ),
                environments=(
                    EnvironmentConfig(
                        name="prod",
                        protected=True,
                        approvers=("alice", "bob", "carol"),
                        required_approvals=2,
                        path_rules=(PathRule(paths=("models/finance/**",), approvers=("carol",)),),
                        approval_ttl=timedelta(hours=24),
                        verify_approvals=True,
                        webhook_url="http://127.0.0.1:8080/hook",
                    ),
                    EnvironmentConfig(
                        name="dev", branch="develop", target="duckdb_dev", include_downstream=True
                    ),
                ),
                schedules=(
                    ScheduleConfig(
                        name="nightly_build", environment="prod", cron="0 3 * * *", command="dbt_build"
                    ),
                ),
            ),
            ProjectConfig(
                name="warehouse",
                framework="sqlmesh",
                repository="https://github.com/acme/warehouse.git",
                sqlmesh=SqlmeshConfig(gateway="duckdb"),
                environments=(
                    EnvironmentConfig(
                        name="prod",
                        protected=True,
                        sqlmesh_environment="production",
                        allow_self_approval=True,
                    ),
                ),
                schedules=(
                    ScheduleConfig(
                        name="hourly_run", environment="prod", cron="0 * * * *", command="sqlmesh_run"
                    ),
                    ScheduleConfig(
                        name="janitor", environment="prod", cron="0 4 * * *", command="sqlmesh_janitor"
                    ),
                ),
            ),
        ),
    )


def test_minimal_config_fills_in_the_defaults() -> None:
    text = "projects: [{name: jaffle, framework: dbt, repository: /srv/jaffle, environments: [{name: dev}]}]"

    config = parse_deployment_config(text, source="dagctl.yaml")

    project = config.get_project("jaffle")
    env = project.get_environment("dev")
    assert config.storage_dir == ".dagctl-data"
    assert project.branch == "main"
    assert project.dbt == DbtConfig(commands=(("dbt", "build"),), profiles_dir=None)
    assert project.backend_for(env) == LocalBackendConfig()
    assert project.sensor_interval_seconds == 60
    assert env == EnvironmentConfig(
        name="dev",
        protected=False,
        approvers=(),
        required_approvals=1,
        allow_self_approval=False,
        path_rules=(),
        approval_ttl=None,
        verify_approvals=False,
    )


def test_environment_defaults_its_dbt_target_sqlmesh_environment_and_branch_to_the_project() -> None:
    config = parse_deployment_config(FULL_EXAMPLE, source="dagctl.yaml")
    jaffle = config.get_project("jaffle")
    prod, dev = jaffle.environments

    assert (prod.dbt_target, prod.sqlmesh_env, jaffle.tracked_branch(prod)) == ("prod", "prod", "release")
    assert (dev.dbt_target, dev.sqlmesh_env, jaffle.tracked_branch(dev)) == ("duckdb_dev", "dev", "develop")
    warehouse_prod = config.get_project("warehouse").get_environment("prod")
    assert warehouse_prod.sqlmesh_env == "production"


@pytest.mark.parametrize(
    ("text", "ttl"),
    [
        ("90s", timedelta(seconds=90)),
        ("30m", timedelta(minutes=30)),
        ("24h", timedelta(hours=24)),
        ("7d", timedelta(days=7)),
        (" 2h ", timedelta(hours=2)),
    ],
)
def test_approval_ttl_reads_a_number_and_a_unit(text: str, ttl: timedelta) -> None:
    assert EnvironmentConfig(name="prod", approval_ttl=text).approval_ttl == ttl


def test_get_project_names_the_known_projects_when_the_name_is_unknown() -> None:
    config = parse_deployment_config(FULL_EXAMPLE, source="dagctl.yaml")

    with pytest.raises(DagctlConfigError) as raised:
        config.get_project("shop")

    assert str(raised.value) == "unknown project 'shop' (known: jaffle, warehouse)"


def test_get_environment_names_the_known_environments_when_the_name_is_unknown() -> None:
    project = parse_deployment_config(FULL_EXAMPLE, source="dagctl.yaml").get_project("jaffle")

    with pytest.raises(DagctlConfigError) as raised:
        project.get_environment("staging")

    assert str(raised.value) == "project 'jaffle' has no environment 'staging' (known: prod, dev)"


def _project(**lines: str) -> str:
    """A one-project deployment config whose project keys are replaced or added by `lines`."""
    keys = {
        "name": "jaffle",
        "framework": "dbt",
        "repository": "/srv/jaffle",
        "environments": "[{name: prod}]",
        **lines,
    }
    body = "\n".join(f"    {key}: {value}" for key, value in keys.items())
    return f"projects:\n  - \n{body}\n"


JAFFLE = "projects: [{name: jaffle, framework: dbt, repository: /srv/jaffle, environments: [{name: prod}]}]"

BAD_DEPLOYMENT_CONFIGS = {
    "missing_field": (
        "projects: [{name: jaffle, repository: /srv/jaffle, environments: [{name: prod}]}]",
        "dagctl.yaml: projects.0.framework: Field required",
    ),
    "no_projects": (
        "projects: []",
        "dagctl.yaml: projects: Tuple should have at least 1 item after validation, not 0",
    ),
    "no_environments": (
        _project(environments="[]"),
        "dagctl.yaml: projects.0.environments: Tuple should have at least 1 item after validation, not 0",
    ),
    "unknown_top_level_key": (
        JAFFLE + "\nstorage: /tmp",
        "dagctl.yaml: storage: Extra inputs are not permitted",
    ),
    "unknown_environment_key": (
        _project(environments="[{name: prod, protectd: true}]"),
        "dagctl.yaml: projects.0.environments.0.protectd: Extra inputs are not permitted",
    ),
    "bad_duration": (
        _project(environments="[{name: prod, approval_ttl: 3 weeks}]"),
        "dagctl.yaml: projects.0.environments.0.approval_ttl: Value error, use a number and a unit: "
        "90s, 30m, 24h or 7d",
    ),
    "duplicate_environment_names": (
        _project(environments="[{name: prod}, {name: dev}, {name: prod}]"),
        "dagctl.yaml: projects.0.environments: Value error, environment names must be unique, "
        "repeated: ['prod']",
    ),
    "duplicate_project_names": (
        "projects:\n"
        "  - {name: jaffle, framework: dbt, repository: /a, environments: [{name: prod}]}\n"
        "  - {name: jaffle, framework: sqlmesh, repository: /b, environments: [{name: prod}]}\n",
        "dagctl.yaml: projects: Value error, project names must be unique, repeated: ['jaffle']",
    ),
    "schedule_naming_an_unknown_environment": (
        _project(schedules="[{name: nightly, environment: staging, cron: '0 3 * * *', command: dbt_build}]"),
        "dagctl.yaml: projects.0.schedules: Value error, schedule 'nightly' names environment 'staging', "
        "which is not one of ['prod']",
    ),
    "duplicate_schedule_names": (
        _project(
            schedules="[{name: nightly, environment: prod, cron: '0 3 * * *', command: dbt_build},"
            " {name: nightly, environment: prod, cron: '0 4 * * *', command: dbt_build}]"
        ),
        "dagctl.yaml: projects.0.schedules: Value error, schedule names must be unique, "
        "repeated: ['nightly']",
    ),
    "schedule_command_of_the_other_framework": (
        _project(schedules="[{name: hourly, environment: prod, cron: '0 * * * *', command: sqlmesh_run}]"),
        "dagctl.yaml: projects.0.schedules: Value error, schedule 'hourly' runs sqlmesh_run, "
        "which a dbt project cannot run",
    ),
    "command_not_starting_with_dbt": (
        _project(dbt="{commands: ['dbt build', 'python load.py']}"),
        "dagctl.yaml: projects.0.dbt.commands: Value error, each command must start with 'dbt' and a "
        "sub-command, got ['python', 'load.py']",
    ),
    "command_without_a_sub_command": (
        _project(dbt="{commands: [dbt]}"),
        "dagctl.yaml: projects.0.dbt.commands: Value error, each command must start with 'dbt' and a "
        "sub-command, got ['dbt']",
    ),
    "command_with_unbalanced_quotes": (
        _project(dbt="{commands: [\"dbt build --select 'a\"]}"),
        "dagctl.yaml: projects.0.dbt.commands: Value error, No closing quotation",
    ),
    "environment_name_not_usable_in_dagster_names": (
        _project(environments="[{name: prod-eu}]"),
        "dagctl.yaml: projects.0.environments.0.name: String should match pattern '^[A-Za-z][A-Za-z0-9_]*$'",
    ),
    "zero_required_approvals": (
        _project(environments="[{name: prod, required_approvals: 0}]"),
        "dagctl.yaml: projects.0.environments.0.required_approvals: Input should be greater than or "
        "equal to 1",
    ),
    "more_required_approvals_than_approvers": (
        _project(environments="[{name: prod, approvers: [alice, bob], required_approvals: 3}]"),
        "dagctl.yaml: projects.0.environments.0.required_approvals: Value error, needs 3 distinct "
        "approvals but only 2 approver(s) are listed (alice, bob)",
    ),
    "path_rule_without_approvers": (
        _project(environments="[{name: prod, path_rules: [{paths: ['models/finance/**'], approvers: []}]}]"),
        "dagctl.yaml: projects.0.environments.0.path_rules.0.approvers: Tuple should have at least 1 item "
        "after validation, not 0",
    ),
    "subdirectory_outside_the_repository": (
        _project(subdirectory="../other"),
        "dagctl.yaml: projects.0.subdirectory: Value error, must be a folder inside the repository, "
        "e.g. 'analytics'",
    ),
    "unknown_backend": (
        _project(backend="docker"),
        "dagctl.yaml: projects.0.backend: Input tag 'docker' found using 'type' does not match any of the "
        "expected tags: 'local', 'kubernetes'",
    ),
    "sensor_interval_too_short": (
        _project(sensor_interval_seconds="1"),
        "dagctl.yaml: projects.0.sensor_interval_seconds: Input should be greater than or equal to 5",
    ),
    "not_a_mapping": ("- jaffle\n- warehouse\n", "dagctl.yaml: expected a mapping with a 'projects' list"),
    "empty_file": ("", "dagctl.yaml: expected a mapping with a 'projects' list"),
}


@pytest.mark.parametrize(
    ("text", "message"), list(BAD_DEPLOYMENT_CONFIGS.values()), ids=list(BAD_DEPLOYMENT_CONFIGS)
)
def test_bad_deployment_config_fails_naming_the_file_and_the_field(text: str, message: str) -> None:
    with pytest.raises(DagctlConfigError) as raised:
        parse_deployment_config(text, source="dagctl.yaml")

    assert str(raised.value) == message


def test_deployment_config_reports_every_problem_and_only_real_ones() -> None:
    text = _project(framework="dbtt", environments="[{name: prod, approval_ttl: soon}]")

    with pytest.raises(DagctlConfigError) as raised:
        parse_deployment_config(text, source="/etc/dagctl/dagctl.yaml")

    assert str(raised.value) == (
        "/etc/dagctl/dagctl.yaml: projects.0.framework: Input should be 'dbt' or 'sqlmesh'; "
        "projects.0.environments.0.approval_ttl: Value error, use a number and a unit: 90s, 30m, 24h or 7d"
    )


def test_deployment_config_yaml_syntax_error_names_the_file_and_the_line() -> None:
    with pytest.raises(DagctlConfigError) as raised:
        parse_deployment_config("projects: [\n  {name: jaffle\n", source="dagctl.yaml")

    message = str(raised.value)
    assert message.startswith("dagctl.yaml: invalid YAML: ")
    assert "line 3" in message
    assert "\n" not in message


def test_config_errors_share_the_package_error_root() -> None:
    assert issubclass(DagctlConfigError, DagctlError)
    assert issubclass(DagctlProjectConfigError, DagctlError)


COMMIT = "0123456789abcdef0123456789abcdef01234567"
WHERE = ".dagctl/config.yaml at commit 0123456789ab"


@pytest.mark.parametrize(
    ("text", "version"),
    [('version: "1.10"', "1.10"), ("version: v2\n", "v2"), ("version: '2025-03-01'", "2025-03-01")],
)
def test_project_config_reads_the_version_as_a_string(text: str, version: str) -> None:
    config = parse_project_repo_config(text, path=".dagctl/config.yaml", commit=COMMIT)

    assert config == ProjectRepoConfig(version=version)


BAD_PROJECT_CONFIGS = {
    "missing_file": (
        None,
        f'{WHERE}: file not found; add it with a string field \'version\', e.g. version: "1"',
    ),
    "integer_version": ("version: 2", f"{WHERE}: version: Input should be a valid string"),
    "float_version": ("version: 1.10", f"{WHERE}: version: Input should be a valid string"),
    "empty_version": ("version: ''", f"{WHERE}: version: String should have at least 1 character"),
    "missing_version": (
        "owner: data-team",
        f"{WHERE}: version: Field required; owner: Extra inputs are not permitted",
    ),
    "unknown_key": ("version: '3'\nowner: data-team", f"{WHERE}: owner: Extra inputs are not permitted"),
    "not_a_mapping": ("- version: '3'", f"{WHERE}: expected a mapping with a string field 'version'"),
    "empty_file": ("", f"{WHERE}: expected a mapping with a string field 'version'"),
}


@pytest.mark.parametrize(
    ("text", "message"), list(BAD_PROJECT_CONFIGS.values()), ids=list(BAD_PROJECT_CONFIGS)
)
def test_bad_project_config_fails_naming_the_file_the_commit_and_the_field(
    text: str | None, message: str
) -> None:
    with pytest.raises(DagctlProjectConfigError) as raised:
        parse_project_repo_config(text, path=".dagctl/config.yaml", commit=COMMIT)

    assert str(raised.value) == message


def test_project_config_yaml_syntax_error_names_the_file_the_commit_and_the_line() -> None:
    with pytest.raises(DagctlProjectConfigError) as raised:
        parse_project_repo_config("version: [1\n", path="analytics/.dagctl/config.yaml", commit=COMMIT)

    message = str(raised.value)
    assert message.startswith("analytics/.dagctl/config.yaml at commit 0123456789ab: invalid YAML: ")
    assert "line 2" in message
