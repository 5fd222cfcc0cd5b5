"""What `dagctl` does when something is wrong: one line on stderr, never a traceback, and an exit code a
CI job can branch on (2 usage error or unknown plan, 4 unreachable server)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_unreachable_server_exits_4_with_one_line(run_dagctl_offline, closed_url, expect_error) -> None:
    result = run_dagctl_offline("plans", "list")

    expect_error(result, 4, "cannot reach the Dagster webserver", closed_url)


def test_unreachable_server_given_with_url_option_exits_4(run_dagctl_offline, closed_url, expect_error) -> None:
    result = run_dagctl_offline("plans", "wait", "jaffle-prod-3f2a9c1d", "--json", "--url", closed_url)

    expect_error(result, 4, closed_url)
    assert result.stdout == "", f"nothing is printed on stdout on error: {result}"


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["plans"], "required: COMMAND"),
        (["plans", "lst"], "invalid choice: 'lst'"),
        (["plans", "approve", "jaffle-prod-3f2a9c1d"], "--as"),
        (["plans", "create", "jaffle"], "--env"),
        (["plans", "list", "--status", "happy"], "invalid choice: 'happy'"),
        (["plans", "wait", "jaffle-prod-3f2a9c1d", "--timeout", "soon"], "'soon' is not a number of seconds"),
        (["plans", "reject", "jaffle-prod-3f2a9c1d", "--as", "bob", "--code", "x"], "unrecognized arguments"),
        (["plans", "list", "--header", "no-colon"], "not of the form 'Name: value'"),
        (["plans", "show", "not-a-plan-id-at-all"], "<project>-<environment>-<8 hex>"),
    ],
    ids=["no-command", "unknown-command", "approve-without-actor", "create-without-env", "unknown-status",
         "timeout-not-a-number", "code-on-reject", "malformed-header", "malformed-plan-id"],
)
def test_malformed_arguments_exit_2_before_any_request(run_dagctl_offline, expect_error, argv, fragment) -> None:
    # The URL points at a closed port: reaching for the server would exit 4, not 2.
    result = run_dagctl_offline(*argv)

    expect_error(result, 2, fragment)


def test_unknown_plan_id_exits_2_for_show_wait_logs_and_approve(run_dagctl, expect_error) -> None:
    unknown = "jaffle-prod-00000000"

    for argv in (["show", unknown], ["wait", unknown, "--timeout", "5"], ["logs", unknown],
                 ["approve", unknown, "--as", "alice"]):
        result = run_dagctl("plans", *argv, timeout=120)

        expect_error(result, 2, f"unknown plan '{unknown}'")


def test_unknown_project_or_environment_exits_2_listing_what_exists(run_dagctl, expect_error) -> None:
    no_project = run_dagctl("plans", "create", "shop", "--env", "prod")
    no_env = run_dagctl("plans", "create", "jaffle", "--env", "staging")

    expect_error(no_project, 2, "unknown project 'shop'", "projects: jaffle")
    expect_error(no_env, 2, "no environment 'staging'", "environments: dev, prod")
