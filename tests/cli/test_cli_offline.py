"""`dagctl` where no webserver answers properly: config checks offline, bad URLs, a server that hangs."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fixtures.silent_server import serve_silently

from dagctl_dagster.cli.main import run as run_cli

REPO_ROOT = Path(__file__).resolve().parents[2]


def dagctl(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = run_cli(list(argv), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def test_config_check_accepts_the_example_config() -> None:
    code, out, err = dagctl("config", "check", str(REPO_ROOT / "examples" / "dagctl.yaml"))

    assert (code, err) == (0, "")
    assert out.startswith(f"{REPO_ROOT / 'examples' / 'dagctl.yaml'}: valid (2 project(s), ")


def test_config_check_rejects_an_invalid_config_with_the_file_and_the_field(tmp_path) -> None:
    config = tmp_path / "dagctl.yaml"
    config.write_text(yaml.safe_dump({
        "people": [{"name": "alice", "emails": ["alice@acme.io"]}],
        "projects": [{"name": "jaffle", "framework": "dbt", "repository": "/srv/jaffle.git",
                      "environments": [{"name": "prod", "protected": True, "approvers": ["alice", "bob"]}]}],
    }))

    code, out, err = dagctl("config", "check", str(config))

    assert (code, out) == (2, "")
    assert err == (f"dagctl: error: {config}: projects.0.environments.0.approvers: bob not listed under "
                   "`people:` (people: alice)\n")


def test_config_check_of_a_missing_file_is_a_usage_error(tmp_path) -> None:
    code, _, err = dagctl("config", "check", str(tmp_path / "nope.yaml"))

    assert code == 2
    assert err.startswith(f"dagctl: error: {tmp_path / 'nope.yaml'}: cannot read the deployment config")


@pytest.mark.parametrize("url", ["htp://127.0.0.1:3000", "htp:", "ftp://dagster.example.com", "http://"])
def test_url_that_is_not_http_is_a_usage_error(url: str) -> None:
    code, _, err = dagctl("--url", url, "plans", "list")

    assert code == 2
    assert err == (f"dagctl: error: '{url}' is not a valid webserver URL: use http:// or https:// and a host, "
                   "e.g. http://127.0.0.1:3000 (--url or DAGCTL_URL)\n")


@pytest.fixture
def hanging_server() -> Iterator[str]:
    """A webserver address that accepts connections and never answers."""
    with serve_silently() as port:
        yield f"http://127.0.0.1:{port}"

def test_plans_wait_timeout_holds_against_a_server_that_never_answers(hanging_server: str) -> None:
    # Without the deadline, the request would wait for the client's 30 s request timeout and end as
    # "cannot reach the webserver" (exit 4); with it, `--timeout 2` ends as a timeout (exit 5).
    code, out, err = dagctl("--url", hanging_server, "plans", "wait", "jaffle-prod-3f2a9c1d", "--timeout", "2")

    assert (code, out) == (5, "")
    assert err.startswith("dagctl: error: plan jaffle-prod-3f2a9c1d is still not recorded yet after 2s "
                          f"(timed out: the Dagster webserver at {hanging_server} did not answer within the time "
                          "left (2s))")
