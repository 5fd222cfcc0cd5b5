"""Session-wide test settings shared by every test folder.

Telemetry of Dagster, dbt and SQLMesh is switched off for the whole session: this machine has no network
beyond package registries, and tests must not reach for it.
"""

import os

TELEMETRY_OFF = {
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
    "DO_NOT_TRACK": "1",
    "SQLMESH__DISABLE_ANONYMIZED_ANALYTICS": "1",
}
os.environ.update(TELEMETRY_OFF)
