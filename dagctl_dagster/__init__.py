"""dagctl-dagster: reviewed plans for dbt and SQLMesh projects, inside Dagster.

The public Python API is the GraphQL client that scripts and the `dagctl` command line use:

    from dagctl_dagster import DagctlClient

    client = DagctlClient("http://127.0.0.1:3000")
    plan = client.wait_for_plan("jaffle-prod-3f2a9c1d", timeout=1800)

The client is loaded on first use, so importing `dagctl_dagster.core` (or the Dagster code location) does
not load `requests` or the client.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .adapters.graphql import CreatedPlan as CreatedPlan
    from .adapters.graphql import DagctlClient as DagctlClient
    from .adapters.graphql import DagctlClientError as DagctlClientError
    from .adapters.graphql import DagctlPlanNotFoundError as DagctlPlanNotFoundError
    from .adapters.graphql import DagctlPlanNotRecordedError as DagctlPlanNotRecordedError
    from .adapters.graphql import DagctlRefusedError as DagctlRefusedError
    from .adapters.graphql import DagctlRequestError as DagctlRequestError
    from .adapters.graphql import DagctlRunFailedError as DagctlRunFailedError
    from .adapters.graphql import DagctlTimeoutError as DagctlTimeoutError
    from .adapters.graphql import DagctlUnreachableError as DagctlUnreachableError
    from .adapters.graphql import DecisionResult as DecisionResult
    from .adapters.graphql import LogLine as LogLine
    from .adapters.graphql import PlanView as PlanView
    from .adapters.graphql import RunInfo as RunInfo
    from .core.errors import DagctlError as DagctlError

_CLIENT_API = frozenset({
    "CreatedPlan", "DagctlClient", "DagctlClientError", "DagctlPlanNotFoundError", "DagctlPlanNotRecordedError",
    "DagctlRefusedError", "DagctlRequestError", "DagctlRunFailedError", "DagctlTimeoutError",
    "DagctlUnreachableError", "DecisionResult", "LogLine", "PlanView", "RunInfo",
})

__all__ = sorted([*_CLIENT_API, "DagctlError"])


def __getattr__(name: str) -> object:
    # Lazy re-exports (PEP 562): `core` stays importable without loading any other layer of the package.
    if name in _CLIENT_API:
        return getattr(import_module(".adapters.graphql", __name__), name)
    if name == "DagctlError":
        return import_module(".core.errors", __name__).DagctlError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
