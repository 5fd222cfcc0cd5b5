"""Session-wide test settings shared by every test folder.

Telemetry of Dagster, dbt and SQLMesh is switched off for the whole session: this machine has no network
beyond package registries, and tests must not reach for it.

The dbt parse servers the session starts (`runner.dbt_parse_server`) belong to a scope of this session only,
and are stopped at its end: no process outlives the tests.
"""

import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from fixtures.postgres import PostgresServer, PostgresUnavailable, start_postgres

TELEMETRY_OFF = {
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    "DO_NOT_TRACK": "1",
    "SQLMESH__DISABLE_ANONYMIZED_ANALYTICS": "1",
}
os.environ.update(TELEMETRY_OFF)
PARSE_SERVER_SCOPE = f"test{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session", autouse=True)
def dbt_parse_server_scope() -> Iterator[str]:
    """The scope of this session's dbt parse servers (in every server name the session's steps use);
    its servers are stopped when the session ends."""
    from dagctl_dagster.runner.dbt_parse_server import SCOPE_VARIABLE, stop_servers

    os.environ[SCOPE_VARIABLE] = PARSE_SERVER_SCOPE
    yield PARSE_SERVER_SCOPE
    stop_servers(PARSE_SERVER_SCOPE)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One throwaway PostgreSQL server for the whole session (tests/fixtures/postgres.py); the tests that
    use it skip, with one line saying how to enable them, where no server can be started."""
    stack = ExitStack()
    try:
        server = stack.enter_context(start_postgres())
    except PostgresUnavailable as reason:
        pytest.skip(str(reason))
    with stack:
        yield server
