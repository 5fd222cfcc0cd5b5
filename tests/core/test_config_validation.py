"""Deployment config checks that keep bad input out: credentials in URLs, cron expressions, file encoding,
and the bound on a project's `version`."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagctl_dagster.core.config import (
    MAX_VERSION_CHARS,
    get_cron_problem,
    load_deployment_config,
    parse_deployment_config,
    parse_project_repo_config,
)
from dagctl_dagster.core.errors import DagctlConfigError, DagctlProjectConfigError

CREDENTIALS_MESSAGE = (
    "dagctl.yaml: projects.0.repository: Value error, the URL holds credentials (user:password@ or a token): "
    "remove them from the config and set DAGCTL_GIT_TOKEN (https) or DAGCTL_GIT_SSH_KEY (ssh) in the code "
    "location's environment"
)


def _config(repository: str = "/srv/jaffle", schedules: str = "[]") -> str:
    return (f"projects: [{{name: jaffle, framework: dbt, repository: '{repository}', "
            f"environments: [{{name: prod}}], schedules: {schedules}}}]")


@pytest.mark.parametrize("url", [
    "https://alice:s3cret-pw@github.com/acme/jaffle.git",
    "https://ghp_plantedtoken123@github.com/acme/jaffle.git",
    "http://x-access-token:tok@127.0.0.1:8080/jaffle.git",
    "ssh://git:s3cret-pw@github.com/acme/jaffle.git",
])
def test_credentials_in_the_repository_url_are_refused_without_repeating_them(url: str) -> None:
    with pytest.raises(DagctlConfigError) as raised:
        parse_deployment_config(_config(url), source="dagctl.yaml")

    assert str(raised.value) == CREDENTIALS_MESSAGE
    assert "s3cret" not in str(raised.value) and "token123" not in str(raised.value)


@pytest.mark.parametrize("url", [
    "https://github.com/acme/jaffle.git",
    "ssh://git@github.com/acme/jaffle.git",
    "git@github.com:acme/jaffle.git",
    "/srv/git/jaffle.git",
    "./repos/jaffle",
])
def test_repository_urls_without_credentials_are_accepted(url: str) -> None:
    config = parse_deployment_config(_config(url), source="dagctl.yaml")
    assert config.projects[0].repository == url


@pytest.mark.parametrize(("cron", "problem"), [
    ("0 25 * * *", "hour: 25 is not a number from 0 to 23"),
    ("61 * * * *", "minute: 61 is not a number from 0 to 59"),
    ("0 3 * *", "expected 5 fields (minute hour day-of-month month day-of-week, e.g. '0 3 * * *') or one of "
                "@annually, @daily, @hourly, @midnight, @monthly, @weekly, @yearly, got 4"),
    ("0 3 * * mon-sun", "day of week: the range mon-sun goes backwards"),
    ("*/0 * * * *", "minute: a step of 0 never repeats"),
    ("0 0 30 feb *", "day of month: February never has that day"),
    ("every day", "expected 5 fields (minute hour day-of-month month day-of-week, e.g. '0 3 * * *') or one of "
                  "@annually, @daily, @hourly, @midnight, @monthly, @weekly, @yearly, got 2"),
    ("0 3 L * *", "day of month: L is not a number from 1 to 31"),
])
def test_a_bad_cron_is_refused_with_its_field_path(cron: str, problem: str) -> None:
    schedules = f"[{{name: nightly, environment: prod, cron: '{cron}', command: dbt_build}}]"
    with pytest.raises(DagctlConfigError) as raised:
        parse_deployment_config(_config(schedules=schedules), source="dagctl.yaml")

    assert str(raised.value) == (
        f"dagctl.yaml: projects.0.schedules.0.cron: Value error, invalid cron expression '{cron}': {problem}")


@pytest.mark.parametrize("cron", ["0 3 * * *", "*/15 8-18 * * 1-5", "0 0 1 jan,jul *", "30 2 * * sun",
                                  "0 0 29 2 *", "@daily", "0,30 * * * 7"])
def test_good_crons_are_accepted(cron: str) -> None:
    assert get_cron_problem(cron) is None


def test_every_cron_the_checker_accepts_is_one_dagster_accepts() -> None:
    # The pure check may be stricter than Dagster's own (wrapping ranges, `L`), never looser.
    from dagster._utils.schedules import is_valid_cron_string

    cases = ["0 3 * * *", "*/15 8-18 * * 1-5", "0 0 1 jan,jul *", "30 2 * * sun", "0 0 29 2 *", "@daily",
             "0 25 * * *", "0 0 30 2 *", "*/0 * * * *", "0 3 * *", "0 0 * * 7", "0 0 31 * *"]
    accepted = [cron for cron in cases if get_cron_problem(cron) is None]
    assert accepted == [cron for cron in accepted if is_valid_cron_string(cron)]
    assert [cron for cron in cases if is_valid_cron_string(cron) and cron not in accepted] == []


def test_a_deployment_config_that_is_not_utf8_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "dagctl.yaml"
    path.write_bytes(b"projects:\n  - name: caf\xe9\n")

    with pytest.raises(DagctlConfigError) as raised:
        load_deployment_config(path)

    assert str(raised.value) == f"{path}: not UTF-8 text (byte 0xe9 on line 2); save it as UTF-8"


def test_a_huge_version_is_refused_naming_the_file_the_commit_and_the_limit() -> None:
    text = f"version: '{'9' * 10_000_000}'"
    with pytest.raises(DagctlProjectConfigError) as raised:
        parse_project_repo_config(text, path=".dagctl/config.yaml", commit="0123456789abcdef" * 2)

    assert str(raised.value) == (f".dagctl/config.yaml at commit 0123456789ab: version: String should have at "
                                 f"most {MAX_VERSION_CHARS} characters")


def test_the_git_timeout_defaults_to_a_minute_and_is_bounded() -> None:
    config = parse_deployment_config(_config(), source="dagctl.yaml")
    assert config.projects[0].git_timeout_seconds == 60
    with pytest.raises(DagctlConfigError) as raised:
        parse_deployment_config(_config().replace("schedules: []", "schedules: [], git_timeout_seconds: 0"),
                                source="dagctl.yaml")
    assert str(raised.value) == (
        "dagctl.yaml: projects.0.git_timeout_seconds: Input should be greater than or equal to 1")
