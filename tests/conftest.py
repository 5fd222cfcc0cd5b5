"""Session-wide test settings shared by every test folder.

Telemetry of Dagster, dbt and SQLMesh is switched off for the whole session: this machine has no network
beyond package registries, and tests must not reach for it.
"""

import os
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
