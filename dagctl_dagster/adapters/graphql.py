"""Dagster's GraphQL API: the Python client behind `dagctl` and scripts.

Everything a script does with plans goes through the webserver's `/graphql` endpoint over HTTP, so it
works against any Dagster deployment the caller can reach (a laptop, a cluster behind an auth proxy) with no
access to its database and no Dagster installed. Plan state is read the way the code location reads it:
the events of the plan's asset (`dagctl/<project>/<environment>`) in storage order, folded with
`core.lifecycle.fold_plans`; one plan's events are selected by its partition key (the plan id), so reading
a plan or a page of plans does not download the environment's whole history. Decisions are runs of
`dagctl_review_job`, new plans runs of `<project>_plan_job`, both launched with `launchRun`.

This module never imports Dagster; it only needs `requests` and `dagctl_dagster.core`.

Example:

    client = DagctlClient("http://127.0.0.1:3000")
    created = client.create_plan("jaffle", "prod", requested_by="dave")
    client.decide(created.plan_id, "approve", actor="alice")
    final = client.wait_for_plan(created.plan_id, timeout=1800)
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from pydantic import BaseModel, ConfigDict, ValidationError

from ..core.errors import DagctlError, DagctlPlanError, DagctlStateError
from ..core.lifecycle import Decision, EventKind, PlanEvent, PlanState, PlanStatus, fold_plans
from ..core.plan import build_plan_id
from ..core.plan import split_plan_id as core_split_plan_id
from ..core.signatures import build_decision_message

DEFAULT_URL = "http://127.0.0.1:3000"
URL_ENV = "DAGCTL_URL"
REVIEW_JOB_NAME = "dagctl_review_job"
PLAN_ASSET_PREFIX = "dagctl"
EVENT_METADATA_KEY = "dagctl_event"
SUMMARY_METADATA_KEY = "summary"
POLICY_METADATA_KEY = "policy"
REFUSAL_METADATA_KEY = "dagctl/refusal"
PLAN_ID_TAG = "dagctl/plan-id"
REVIEWED_PLAN_TAG = "dagctl/reviewed-plan"
_STILL_NEEDED = "**Still needed:** "
_PAGE = 500
_WALK_PAGE = 200
INDEX_PARTITION = "__index__"  # the store's index checkpoints: not a plan

# Run statuses after which a run does nothing more.
FINISHED_RUN_STATUSES = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
# Where `plans wait` stops: the plan will not change again without someone deciding something.
WAIT_END_STATUSES = frozenset(
    {PlanStatus.COMPLETED, PlanStatus.FAILED, PlanStatus.REJECTED, PlanStatus.CANCELLED}
)


class DagctlClientError(DagctlError):
    """Root of the errors of the GraphQL client; each message is one line meant for the user."""


class DagctlUnreachableError(DagctlClientError):
    """The webserver cannot be reached (connection refused, timeout, a proxy answering 502/503/504)."""


class DagctlRequestError(DagctlClientError):
    """The webserver answered but refused the request (auth proxy, unknown job, invalid input)."""


class DagctlLaunchError(DagctlRequestError):
    """The webserver could not launch a run (e.g. the code server timed out): worth trying again."""


class DagctlPlanNotFoundError(DagctlClientError):
    """No plan with this id exists, and no run is explaining one."""


class DagctlPlanNotRecordedError(DagctlPlanNotFoundError):
    """The plan's explaining run has not recorded it yet (queued or still running `detect`)."""


class DagctlRefusedError(DagctlClientError):
    """A decision was refused by the environment's policy or by the plan's state.

    `kind` is `policy` (self-approval, not an approver, unverified approval) or `state` (the plan's status
    does not allow it, e.g. approving a completed plan).
    """

    def __init__(self, message: str, *, kind: str):
        super().__init__(message)
        self.kind = kind


class DagctlRunFailedError(DagctlClientError):
    """A run the command depends on failed: a plan that could not be explained, a broken review run."""


class DagctlTimeoutError(DagctlClientError):
    """Waiting for a plan or a run took longer than allowed; the plan itself may still finish."""


def parse_header(text: str) -> tuple[str, str]:
    """`"Authorization: Bearer x"` -> `("Authorization", "Bearer x")`; `DagctlRequestError` if malformed."""
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(ch.isspace() for ch in name.strip()):
        raise DagctlRequestError(f"header '{text}' is not of the form 'Name: value'")
    return name.strip(), value.strip()


def split_plan_id(plan_id: str) -> tuple[str, str]:
    """`jaffle-prod-3f2a9c1d` -> (`jaffle`, `prod`); `DagctlPlanNotFoundError` for anything else."""
    try:
        return core_split_plan_id(plan_id)
    except DagctlPlanError as exc:
        raise DagctlPlanNotFoundError(str(exc)) from exc


def _parse_millis(millis: str | float | None) -> float:
    """Seconds since the epoch of an event's `timestamp` (milliseconds, as a string), 0 if absent."""
    try:
        return float(millis) / 1000 if millis is not None else 0.0
    except ValueError:
        return 0.0


def _parse_time(millis: str | float | None) -> datetime | None:
    if millis in (None, ""):
        return None
    return datetime.fromtimestamp(float(millis) / 1000.0, tz=UTC)


@dataclass(frozen=True)
class RunInfo:
    """A Dagster run, as far as plans are concerned."""

    run_id: str
    job_name: str
    status: str
    created_at: datetime
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_RUN_STATUSES

    def to_json(self) -> dict[str, object]:
        return {"run_id": self.run_id, "job_name": self.job_name, "status": self.status,
                "created_at": self.created_at.isoformat()}


@dataclass(frozen=True)
class LogLine:
    """One event of a run's log: a dbt line, a step starting, a failure..."""

    run_id: str
    at: datetime
    level: str
    step: str | None
    event_type: str | None
    message: str

    def to_json(self) -> dict[str, object]:
        return {"run_id": self.run_id, "at": self.at.isoformat(), "level": self.level, "step": self.step,
                "event_type": self.event_type, "message": self.message}


class PlanView(BaseModel):
    """A plan as the client sees it: the folded state and the summary the server last rendered for it.

    `summary` is the markdown of the plan's asset page (rendered by the code location with the
    environment's policy, which the client does not have); `missing` lists the approvals it still needs.
    """

    model_config = ConfigDict(frozen=True)

    state: PlanState
    summary: str = ""
    policy: Mapping[str, Any] | None = None

    @property
    def plan_id(self) -> str:
        return self.state.plan_id

    @property
    def status(self) -> PlanStatus:
        return self.state.status

    @property
    def missing(self) -> tuple[str, ...]:
        for line in self.summary.splitlines():
            if line.startswith(_STILL_NEEDED):
                return tuple(part.strip() for part in line[len(_STILL_NEEDED):].split(";") if part.strip())
        return ()

    def list_expired_approvals(self, now: datetime | None = None) -> list[tuple[str, datetime]]:
        """`(actor, expired at)` of approvals the server counted when it last rendered the plan that have
        expired since: validity is re-checked at read time (and by `gate` at execution)."""
        now = now or datetime.now(UTC)
        expired = []
        for entry in (self.policy or {}).get("counted", []):
            expires_at = entry.get("expires_at")
            if expires_at and datetime.fromisoformat(expires_at) <= now:
                expired.append((entry["actor"], datetime.fromisoformat(expires_at)))
        return expired

    def describe_next(self, now: datetime | None = None) -> str:
        """What happens next for a pending plan, from the policy the server rendered with its last event:
        `approved by alice (1 of 1): execution will be launched by the approval sensor`, or
        `1 more approval(s) from bob needed`."""
        policy = self.policy or {}
        if self.status not in (PlanStatus.PENDING, PlanStatus.APPROVED) or not policy:
            return ""
        expired = self.list_expired_approvals(now)
        if expired:
            who = ", ".join(f"{actor}'s expired at {at:%Y-%m-%d %H:%M} UTC" for actor, at in expired)
            return (f"approval(s) no longer count ({who}): the plan goes back to pending when it is next "
                    "checked; approve it again")
        if self.status is not PlanStatus.PENDING:
            return ""
        if policy.get("is_satisfied"):
            names = ", ".join(entry["actor"] for entry in policy.get("counted", []))
            counted, required = len(policy.get("counted", [])), policy.get("required", 0)
            return (f"approved by {names} ({counted} of {required}): execution will be launched by the "
                    "approval sensor")
        return "; ".join(policy.get("missing", [])) + " needed"

    @property
    def is_waiting_done(self) -> bool:
        """Whether `wait_for_plan` stops here (a failed plan with a retry requested will run again)."""
        return self.status in WAIT_END_STATUSES and not self.state.retry_requested

    def to_json(self) -> dict[str, object]:
        state = self.state
        spec = state.spec
        return {
            "plan_id": state.plan_id,
            "project": spec.project,
            "environment": spec.environment,
            "status": state.status.value,
            "reason": state.reason,
            "auto_discarded": state.auto_discarded,
            "author": spec.author,
            "triggered_by": spec.triggered_by,
            "base_commit": spec.base_commit,
            "target_commit": spec.target_commit,
            "version_old": spec.version_old,
            "version_new": spec.version_new,
            "created_at": spec.created_at.isoformat(),
            "updated_at": state.updated_at.isoformat(),
            "fingerprint": spec.fingerprint,
            "approvals": [a.model_dump(mode="json") for a in state.approvals],
            "missing_approvals": list(self.missing),
            "next": self.describe_next(),
            "retries": state.retries,
            "retries_left": state.retries_left,
            "retry_requested": state.retry_requested,
            "run_ids": list(state.run_ids),
            "artifact": state.artifact,
            "spec": spec.model_dump(mode="json"),
            "history": [entry.model_dump(mode="json") for entry in state.history],
            "summary": self.summary,
        }


@dataclass(frozen=True)
class CreatedPlan:
    """A plan requested with `create_plan`: its id is known at launch (derived from the run id)."""

    plan_id: str
    run_id: str
    plan: PlanView | None = None

    def to_json(self) -> dict[str, object]:
        return {"plan_id": self.plan_id, "run_id": self.run_id,
                "plan": self.plan.to_json() if self.plan else None}


@dataclass(frozen=True)
class DecisionResult:
    """A recorded decision: the review run that recorded it and the plan afterwards."""

    plan_id: str
    decision: Decision
    actor: str
    run_id: str
    signed: bool
    decision_id: str
    plan: PlanView
    attempts: int = 1

    def to_json(self) -> dict[str, object]:
        return {"plan_id": self.plan_id, "decision": self.decision.value, "actor": self.actor,
                "run_id": self.run_id, "signed": self.signed, "decision_id": self.decision_id,
                "attempts": self.attempts, "plan": self.plan.to_json()}


# --- GraphQL documents -------------------------------------------------------------------------------

_ASSETS_QUERY = """
query DagctlPlanAssets($prefix: [String!]) {
  assetsOrError(prefix: $prefix) {
    __typename
    ... on AssetConnection { nodes { key { path } definition { id } } }
    ... on PythonError { message }
  }
}"""

_EVENTS_QUERY = """
query DagctlPlanEvents($key: AssetKeyInput!, $limit: Int!, $cursor: String, $partitions: [String!]) {
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset {
      assetEventHistory(limit: $limit, cursor: $cursor, partitions: $partitions,
                        eventTypeSelectors: [MATERIALIZATION, OBSERVATION]) {
        cursor
        results {
          __typename
          ... on MaterializationEvent {
            timestamp partition metadataEntries { ...DagctlEntry }
          }
          ... on ObservationEvent {
            timestamp partition metadataEntries { ...DagctlEntry }
          }
        }
      }
    }
  }
}
fragment DagctlEntry on MetadataEntry {
  label
  ... on JsonMetadataEntry { jsonString }
  ... on MarkdownMetadataEntry { mdStr }
}"""


_REPOSITORIES_QUERY = """
query DagctlRepositories {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } jobs { name } } }
    ... on Error { message }
  }
}"""

_LAUNCH_MUTATION = """
mutation DagctlLaunch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on Error { message }
  }
}"""

_RUN_FIELDS = "runId jobName status creationTime tags { key value }"

_RUN_QUERY = f"""
query DagctlRun($runId: ID!) {{
  runOrError(runId: $runId) {{
    __typename
    ... on Run {{ {_RUN_FIELDS} }}
    ... on Error {{ message }}
  }}
}}"""

_RUNS_QUERY = f"""
query DagctlRuns($filter: RunsFilter, $limit: Int) {{
  runsOrError(filter: $filter, limit: $limit) {{
    __typename
    ... on Runs {{ results {{ {_RUN_FIELDS} }} }}
    ... on Error {{ message }}
  }}
}}"""

_LOGS_QUERY = """
query DagctlLogs($runId: ID!, $cursor: String, $limit: Int) {
  logsForRun(runId: $runId, afterCursor: $cursor, limit: $limit) {
    __typename
    ... on EventConnection {
      cursor
      hasMore
      events {
        __typename
        ... on MessageEvent { message timestamp level stepKey eventType }
        ... on ExecutionStepFailureEvent {
          error { message cause { message } }
          failureMetadata { description metadataEntries { label ... on TextMetadataEntry { text } } }
        }
        ... on RunFailureEvent { error { message } }
      }
    }
    ... on Error { message }
  }
}"""

# Every document the client sends, for checking them against a Dagster version's schema.
GRAPHQL_DOCUMENTS = (_ASSETS_QUERY, _EVENTS_QUERY, _REPOSITORIES_QUERY, _LAUNCH_MUTATION, _RUN_QUERY,
                     _RUNS_QUERY, _LOGS_QUERY)


# --- Transport ---------------------------------------------------------------------------------------


class GraphQLTransport:
    """Posts GraphQL documents to `<url>/graphql` and turns every failure into one clear client error.

    Example: `GraphQLTransport("https://dagster.acme.io", headers={"Authorization": "Bearer ..."})`.
    """

    def __init__(self, url: str, *, headers: Mapping[str, str] | None = None, timeout: float = 30.0,
                 session: requests.Session | None = None, monotonic: Callable[[], float] = time.monotonic):
        self.url = check_url(url)
        self.endpoint = f"{self.url}/graphql"
        self.timeout = timeout
        # While set (by `DagctlClient.wait_for_plan`), no request waits past it: a hanging webserver cannot
        # stretch `plans wait --timeout 5` to the per-request timeout.
        self.deadline: float | None = None
        self._monotonic = monotonic
        self._session = session or requests.Session()
        self._session.headers.update(dict(headers or {}))

    def _request_timeout(self) -> float:
        if self.deadline is None:
            return self.timeout
        remaining = self.deadline - self._monotonic()
        if remaining <= 0:
            raise DagctlTimeoutError(f"timed out waiting for the Dagster webserver at {self.url}")
        return min(self.timeout, remaining)

    def execute(self, document: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        timeout = self._request_timeout()
        try:
            response = self._session.post(
                self.endpoint, json={"query": document, "variables": dict(variables or {})},
                timeout=timeout,
            )
        except requests.exceptions.InvalidURL as exc:
            raise DagctlRequestError(f"'{self.url}' is not a valid webserver URL: {exc}") from exc
        except requests.exceptions.MissingSchema as exc:
            raise DagctlRequestError(
                f"'{self.url}' is not a valid webserver URL: it needs a scheme, e.g. http://{self.url}"
            ) from exc
        except requests.Timeout as exc:
            if self.deadline is not None and self._monotonic() >= self.deadline - 0.05:
                raise DagctlTimeoutError(
                    f"timed out: the Dagster webserver at {self.url} did not answer within the time left "
                    f"({timeout:.0f}s)"
                ) from exc
            raise DagctlUnreachableError(
                f"cannot reach the Dagster webserver at {self.url}: {_short_reason(exc)}; "
                f"check --url (or {URL_ENV}) and that the webserver is running"
            ) from exc
        except requests.ConnectionError as exc:
            raise DagctlUnreachableError(
                f"cannot reach the Dagster webserver at {self.url}: {_short_reason(exc)}; "
                f"check --url (or {URL_ENV}) and that the webserver is running"
            ) from exc
        except requests.RequestException as exc:
            raise DagctlUnreachableError(f"request to {self.endpoint} failed: {_short_reason(exc)}") from exc
        if response.status_code in (502, 503, 504):
            raise DagctlUnreachableError(
                f"the Dagster webserver at {self.url} is not available (HTTP {response.status_code} "
                "from a proxy in front of it)"
            )
        if response.status_code in (401, 403):
            raise DagctlRequestError(
                f"{self.endpoint} refused the request (HTTP {response.status_code}): pass the credentials "
                "your auth proxy needs with --header 'Name: value'"
            )
        try:
            payload = response.json()
        except ValueError as exc:
            raise DagctlRequestError(
                f"{self.endpoint} answered HTTP {response.status_code} without JSON: is {self.url} the "
                "Dagster webserver?"
            ) from exc
        errors = payload.get("errors") if isinstance(payload, dict) else None
        if errors:
            message = "; ".join(str(error.get("message", error)) for error in errors)[:500]
            raise DagctlRequestError(f"the Dagster GraphQL API refused the request: {message}")
        if not response.ok or not isinstance(payload, dict) or "data" not in payload:
            raise DagctlRequestError(
                f"{self.endpoint} answered HTTP {response.status_code}: is {self.url} the Dagster webserver?"
            )
        return payload["data"]


def check_url(url: str) -> str:
    """The webserver URL without a trailing slash; `DagctlRequestError` (a usage error) unless it is an
    http(s) URL with a host.

    Example: `check_url("http://127.0.0.1:3000/")` -> `"http://127.0.0.1:3000"`; `check_url("htp:x")` raises.
    """
    if "://" not in url and ":" not in url.split("/")[0]:
        raise DagctlRequestError(
            f"'{url}' is not a valid webserver URL: it needs a scheme, e.g. http://{url}")
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise DagctlRequestError(
            f"'{url}' is not a valid webserver URL: use http:// or https:// and a host, e.g. "
            f"{DEFAULT_URL} (--url or {URL_ENV})")
    return url.rstrip("/")


def _short_reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "timed out", "Name or service not known", "No route to host"):
        if marker in text:
            return marker.lower()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _expect(result: Mapping[str, Any], typename: str, what: str) -> Mapping[str, Any]:
    if result.get("__typename") != typename:
        message = result.get("message") or result.get("__typename")
        raise DagctlRequestError(f"{what}: {message}")
    return result


# --- The client --------------------------------------------------------------------------------------


class DagctlClient:
    """Lists, shows, creates, decides on, waits for and reads the logs of plans over GraphQL.

    `sleep` and `monotonic` are the clock: tests and callers with their own event loop can inject them.

    Example:

        client = DagctlClient(os.environ.get("DAGCTL_URL", DEFAULT_URL), headers={"X-Token": token})
        for plan in client.list_plans(environment="prod", status="pending"):
            print(plan.plan_id, plan.missing)
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        poll_interval: float = 2.0,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.transport = GraphQLTransport(url, headers=headers, timeout=timeout, session=session,
                                          monotonic=monotonic)
        self.poll_interval = poll_interval
        self._sleep = sleep
        self._monotonic = monotonic
        self._repositories: list[Mapping[str, Any]] | None = None

    @property
    def url(self) -> str:
        return self.transport.url

    # Reading plans -----------------------------------------------------------------------------------

    def list_plans(
        self, *, project: str | None = None, environment: str | None = None, status: str | None = None,
        since: datetime | None = None, limit: int | None = None,
    ) -> list[PlanView]:
        """The newest plans matching the filters (created at or after `since`), newest first, at most `limit`.

        Each environment's history is walked newest first reading only partition keys (plan ids) and
        times; only the plans met are read in full, and the walk stops once `limit` matches are known to be
        the newest. So the cost follows `limit`, not the length of the history (a rare `status` walks
        further). Events recorded before plan ids were partition keys are read the old way: in full.
        """
        wanted = PlanStatus(status) if status else None
        plans: list[tuple[float, PlanView]] = []
        for asset_project, asset_env in self.list_plan_assets(project):
            if environment and asset_env != environment:
                continue
            plans += self._walk_plans(asset_project, asset_env, wanted, since, limit)
        plans.sort(key=lambda item: item[0], reverse=True)
        return [plan for _, plan in plans][:limit]

    def _walk_plans(self, project: str, environment: str, wanted: PlanStatus | None, since: datetime | None,
                    limit: int | None) -> list[tuple[float, PlanView]]:
        """`(time of the plan's first event, plan)` of the newest matching plans of one environment.

        Each event is read once: the pages of the walk carry the metadata. A plan met before its `created`
        event (a years-old plan with a late decision) gathers its events page by page until that event
        comes; it costs no request of its own, and when the walk stops it began too early to be shown.
        """
        key = {"path": [PLAN_ASSET_PREFIX, project, environment]}
        matches: list[tuple[float, PlanView]] = []
        complete: set[str] = set()
        gathering: dict[str, list[tuple[Mapping[str, Any], PlanEvent | None]]] = {}  # rows so far, newest first
        cursor: str | None = None
        # About six events per plan: a page of 6 x limit events usually holds the newest `limit` plans.
        walk_page = min(_WALK_PAGE, max(30, 6 * limit)) if limit else _WALK_PAGE
        while True:
            result = self.transport.execute(_EVENTS_QUERY, {"key": key, "limit": walk_page, "cursor": cursor})
            asset = result["assetOrError"]
            if asset.get("__typename") != "Asset":
                return []
            page = asset["assetEventHistory"]
            rows = page["results"]
            if any(not row.get("partition") for row in rows):  # a history older than partition keys
                return self._list_unpartitioned(project, environment, wanted, since)
            created: list[str] = []
            for row in rows:
                if row["partition"] != INDEX_PARTITION and row["partition"] not in complete:
                    event = _parse_row(key, row)
                    gathering.setdefault(row["partition"], []).append((row, event))
                    if event is not None and event.kind is EventKind.CREATED:
                        created.append(row["partition"])
            if created:
                matches += _matching(_build_views(_collect(
                    [pair for plan_id in created for pair in gathering.pop(plan_id)])), wanted, since)
                complete.update(created)
            if len(rows) < walk_page:
                return matches  # the whole history: a plan still gathering was never created
            reached = _parse_millis(rows[-1]["timestamp"])
            if since is not None and reached < since.timestamp():
                return matches
            # A plan not met yet, or still gathering, began before `reached`: it cannot be newer than these.
            if _holds_newest(matches, limit, reached):
                return matches
            cursor = page["cursor"]
            if limit:  # the next page: about six events for each plan still missing
                walk_page = min(_WALK_PAGE, max(30, 6 * (limit - len(matches))))

    def _list_unpartitioned(self, project: str, environment: str, wanted: PlanStatus | None,
                            since: datetime | None) -> list[tuple[float, PlanView]]:
        plans = self._read_asset_plans(project, environment)
        return _matching({plan_id: (plan.state.spec.created_at.timestamp(), plan) for plan_id, plan in plans.items()},
                         wanted, since)

    def _read_plans_by_id(self, key: Mapping[str, Any], plan_ids: list[str]) -> dict[str, tuple[float, PlanView]]:
        """The plans with these ids, each read from its own events, with the time of its first event."""
        return _build_views(_parse_rows(key, self._read_rows(key, partitions=plan_ids)))

    def list_plan_assets(self, project: str | None = None) -> list[tuple[str, str]]:
        """`(project, environment)` of every plan asset the deployment defines or has events for."""
        prefix = [PLAN_ASSET_PREFIX, project] if project else [PLAN_ASSET_PREFIX]
        result = self.transport.execute(_ASSETS_QUERY, {"prefix": prefix})["assetsOrError"]
        nodes = _expect(result, "AssetConnection", "cannot list plan assets")["nodes"]
        keys = [tuple(node["key"]["path"]) for node in nodes]
        return sorted((key[1], key[2]) for key in keys if len(key) == 3 and key[0] == PLAN_ASSET_PREFIX)

    def get_plan(self, plan_id: str) -> PlanView:
        """The plan's current state. Raises `DagctlPlanNotFoundError`, or `DagctlRunFailedError` when the
        run that was to explain it failed before recording it."""
        project, environment = split_plan_id(plan_id)
        key = {"path": [PLAN_ASSET_PREFIX, project, environment]}
        found = self._read_plans_by_id(key, [plan_id]).get(plan_id)  # its own events only
        if found is not None:
            return found[1]
        run = self._find_explaining_run(plan_id, project, environment)
        if run is None:
            raise DagctlPlanNotFoundError(
                f"unknown plan '{plan_id}': no plan with this id was recorded for project '{project}', "
                f"environment '{environment}' (see `dagctl plans list`)"
            )
        if run.is_finished:
            raise DagctlRunFailedError(
                f"plan {plan_id} was never recorded: its explaining run {run.run_id} {_ended(run)}: "
                f"{self._failure_reason(run.run_id)}"
            )
        raise DagctlPlanNotRecordedError(
            f"plan {plan_id} is not recorded yet: its explaining run {run.run_id} is {run.status.lower()}"
        )

    def _read_asset_plans(self, project: str, environment: str) -> dict[str, PlanView]:
        """Every plan of an environment, from its whole history (histories without partition keys)."""
        key = {"path": [PLAN_ASSET_PREFIX, project, environment]}
        return {plan_id: plan for plan_id, (_, plan) in _build_views(_parse_rows(key, self._read_rows(key))).items()}

    def _read_rows(self, key: Mapping[str, Any], *, partitions: list[str] | None = None,
                   cursor: str | None = None) -> list[Mapping[str, Any]]:
        """The asset's events (of these plans only, with `partitions`; older than `cursor`), newest first."""
        rows: list[Mapping[str, Any]] = []
        while True:
            result = self.transport.execute(_EVENTS_QUERY, {"key": key, "limit": _PAGE, "cursor": cursor,
                                                            "partitions": partitions})
            asset = result["assetOrError"]
            if asset.get("__typename") != "Asset":
                return []
            page = asset["assetEventHistory"]
            rows += page["results"]
            if len(page["results"]) < _PAGE:
                return rows
            cursor = page["cursor"]

    def _find_explaining_run(self, plan_id: str, project: str, environment: str) -> RunInfo | None:
        """The plan job run whose id the plan id was derived from, if it has not recorded the plan yet."""
        runs = self.list_runs({"pipelineName": f"{project}_plan_job"}, limit=200)
        for run in runs:
            if PLAN_ID_TAG in run.tags:
                continue  # an execution of a recorded plan, not an explanation
            if build_plan_id(project, environment, run.run_id) == plan_id:
                return run
        return None

    # Runs and logs -----------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunInfo:
        result = self.transport.execute(_RUN_QUERY, {"runId": run_id})["runOrError"]
        return _run_info(_expect(result, "Run", f"cannot read run {run_id}"))

    def list_runs(self, run_filter: Mapping[str, Any], *, limit: int = 100) -> list[RunInfo]:
        result = self.transport.execute(_RUNS_QUERY, {"filter": dict(run_filter), "limit": limit})
        runs = _expect(result["runsOrError"], "Runs", "cannot list runs")["results"]
        return [_run_info(run) for run in runs]

    def list_plan_runs(self, plan: PlanView) -> list[RunInfo]:
        """The runs of a plan, oldest first: the run that explained it, then its executions and retries."""
        runs = {run.run_id: run for run in self.list_runs(
            {"tags": [{"key": PLAN_ID_TAG, "value": plan.plan_id}]})}
        for run_id in plan.state.run_ids:
            if run_id not in runs:
                try:
                    runs[run_id] = self.get_run(run_id)
                except DagctlRequestError:
                    continue  # deleted from the run storage; its events stay in the plan's history
        return sorted(runs.values(), key=lambda run: run.created_at)

    def read_run_logs(self, run_id: str, cursor: str | None = None) -> tuple[list[LogLine], str | None]:
        """The run's log events after `cursor`, and the cursor to continue from."""
        lines: list[LogLine] = []
        while True:
            result = self.transport.execute(_LOGS_QUERY, {"runId": run_id, "cursor": cursor, "limit": 1000})
            connection = _expect(result["logsForRun"], "EventConnection", f"cannot read the logs of run {run_id}")
            for event in connection["events"]:
                message = event.get("message")
                if message is None:
                    continue
                lines.append(LogLine(
                    run_id=run_id, at=_parse_time(event["timestamp"]) or datetime.now(UTC),
                    level=event.get("level") or "INFO", step=event.get("stepKey"),
                    event_type=event.get("eventType"), message=_event_text(event),
                ))
            cursor = connection["cursor"]
            if not connection["hasMore"]:
                return lines, cursor

    def iter_plan_logs(self, plan_id: str, *, follow: bool = False) -> Iterator[LogLine]:
        """The log lines of all runs of a plan, run by run.

        With `follow`, keeps polling (like `tail -f`) until the plan ends where `wait_for_plan` stops
        (completed, failed without a retry requested, rejected, cancelled) and all its runs finished, so
        a pending plan is followed through its approval, execution and retries.
        """
        cursors: dict[str, str | None] = {}
        while True:
            plan = self.get_plan(plan_id)
            runs = self.list_plan_runs(plan)
            is_over = plan.is_waiting_done and all(run.is_finished for run in runs)
            for run in runs:
                lines, cursors[run.run_id] = self.read_run_logs(run.run_id, cursors.get(run.run_id))
                yield from lines
            # `is_over` was read before the logs, so the last lines of a run are never missed.
            if not follow or is_over:
                return
            self._sleep(self.poll_interval)

    def _failure_reason(self, run_id: str) -> str:
        """The first step failure's description (the one-line reason our ops give), else the run's."""
        lines_events = self.transport.execute(_LOGS_QUERY, {"runId": run_id, "cursor": None, "limit": 1000})
        connection = lines_events["logsForRun"]
        if connection.get("__typename") != "EventConnection":
            return "see the run's logs"
        for event in connection["events"]:
            if event.get("__typename") == "ExecutionStepFailureEvent":
                return _step_failure(event)[0]
        for event in connection["events"]:
            if event.get("__typename") == "RunFailureEvent":
                return _first_line((event.get("error") or {}).get("message") or event.get("message", ""))
        return "see the run's logs in the Dagster UI"

    def _step_refusal(self, run_id: str) -> tuple[str, str | None]:
        result = self.transport.execute(_LOGS_QUERY, {"runId": run_id, "cursor": None, "limit": 1000})
        connection = result["logsForRun"]
        if connection.get("__typename") == "EventConnection":
            for event in connection["events"]:
                if event.get("__typename") == "ExecutionStepFailureEvent":
                    return _step_failure(event)
        return self._failure_reason(run_id), None

    # Launching ---------------------------------------------------------------------------------------

    def _selector(self, job_name: str) -> dict[str, str]:
        if self._repositories is None:
            result = self.transport.execute(_REPOSITORIES_QUERY)["repositoriesOrError"]
            self._repositories = list(_expect(result, "RepositoryConnection", "cannot list code locations")["nodes"])
        for repository in self._repositories:
            if any(job["name"] == job_name for job in repository["jobs"]):
                return {"repositoryLocationName": repository["location"]["name"],
                        "repositoryName": repository["name"], "jobName": job_name}
        projects = sorted(job["name"][: -len("_plan_job")] for repository in self._repositories
                          for job in repository["jobs"] if job["name"].endswith("_plan_job"))
        if job_name.endswith("_plan_job"):
            raise DagctlRequestError(
                f"unknown project '{job_name[: -len('_plan_job')]}': {self.url} has no job {job_name} "
                f"(projects: {', '.join(projects) or 'none'})"
            )
        raise DagctlRequestError(
            f"{self.url} serves no job {job_name}: is the dagctl code location loaded there?"
        )

    def launch_run(self, job_name: str, run_config: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        """Launches a run of `job_name` and returns its run id (the run may wait in the queue)."""
        params = {
            "selector": self._selector(job_name),
            "runConfigData": dict(run_config),
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        result = self.transport.execute(_LAUNCH_MUTATION, {"params": params})["launchRun"]
        if result.get("__typename") == "LaunchRunSuccess":
            return result["run"]["runId"]
        if result.get("__typename") == "RunConfigValidationInvalid":
            problems = "; ".join(error["message"] for error in result["errors"])
            raise DagctlRequestError(f"{job_name} refused the run config: {problems}")
        raise DagctlLaunchError(
            f"cannot launch {job_name}: {_first_line(result.get('message') or result.get('__typename'))}"
        )

    def wait_for_run(self, run_id: str, *, timeout: float) -> RunInfo:
        """Polls the run until it finished; `DagctlTimeoutError` after `timeout` seconds."""
        deadline = self._monotonic() + timeout
        while True:
            run = self.get_run(run_id)
            if run.is_finished:
                return run
            if self._monotonic() >= deadline:
                hint = " (queued runs start only while dagster-daemon runs)" if run.status == "QUEUED" else ""
                raise DagctlTimeoutError(
                    f"run {run_id} of {run.job_name} is still {run.status.lower()} after {timeout:.0f}s{hint}"
                )
            self._sleep(self.poll_interval)

    # Creating and deciding ---------------------------------------------------------------------------

    def create_plan(
        self,
        project: str,
        environment: str,
        *,
        commit: str = "",
        requested_by: str = "",
        wait: bool = True,
        timeout: float = 600.0,
    ) -> CreatedPlan:
        """Launches the plan job to explain a new plan of `commit` (default: the branch head).

        The plan id is known as soon as the run is launched. With `wait`, returns once the plan is recorded
        and has left `explaining` (pending for a protected environment, approved or running otherwise), or
        raises `DagctlRunFailedError` with the reason when it could not be explained.
        """
        self._check_environment(project, environment)
        run_config = {"ops": {"detect": {"config": {
            "environment": environment, "commit": commit, "requested_by": requested_by, "plan_id": ""}}}}
        tags = {"dagctl/project": project, "dagctl/environment": environment,
                "dagctl/lock": f"{project}.{environment}", "dagctl/trigger": "manual"}
        run_id = self.launch_run(f"{project}_plan_job", run_config, tags)
        plan_id = build_plan_id(project, environment, run_id)
        if not wait:
            return CreatedPlan(plan_id=plan_id, run_id=run_id)
        deadline = self._monotonic() + timeout
        while True:
            try:
                plan = self.get_plan(plan_id)
                if plan.status is not PlanStatus.EXPLAINING:
                    return CreatedPlan(plan_id=plan_id, run_id=run_id, plan=plan)
                self._check_still_explaining(plan)
            except DagctlPlanNotRecordedError:
                pass
            if self._monotonic() >= deadline:
                raise DagctlTimeoutError(
                    f"plan {plan_id} is still being explained after {timeout:.0f}s (run {run_id})"
                )
            self._sleep(self.poll_interval)

    def _check_environment(self, project: str, environment: str) -> None:
        assets = self.list_plan_assets(project)
        environments = sorted(env for name, env in assets if name == project)
        if environments and environment not in environments:
            raise DagctlRequestError(
                f"project '{project}' has no environment '{environment}' "
                f"(environments: {', '.join(environments)})"
            )

    def decide(
        self,
        plan_id: str,
        decision: Decision | str,
        *,
        actor: str,
        comment: str = "",
        signer: Callable[[str], str] | None = None,
        decision_id: str | None = None,
        timeout: float = 600.0,
        attempts: int = 3,
        on_retry: Callable[[str], None] | None = None,
    ) -> DecisionResult:
        """Records a decision on a plan with a run of the review job and waits for its outcome.

        `signer` (e.g. `adapters.ssh.build_ssh_signer(key_path)`) signs the decision's message
        (`<plan_id>:<fingerprint>` for an approval) for verifiable mode. The decision carries `decision_id`
        (default: a new random id): when the launch fails or the review run dies without a refusal (a code
        server that timed out under load), the same decision is launched again, up to `attempts` times,
        and the server records it at most once. `on_retry` is told why each time.
        Raises `DagctlRefusedError` (policy or state) with the server's one-line reason when refused.
        """
        decision = Decision(decision)
        if not actor.strip():
            raise DagctlRequestError("a decision needs an actor: pass --as NAME")
        decision_id = decision_id or uuid.uuid4().hex
        plan = self.get_plan(plan_id)
        signature = ""
        if signer is not None:
            spec = plan.state.spec
            signature = signer(build_decision_message(plan_id, spec.fingerprint, decision.value,
                                                      plan.state.retries + 1))
        run_config = {"ops": {"review": {"config": {
            "plan_id": plan_id, "decision": decision.value, "actor": actor, "comment": comment,
            "signature": signature, "decision_id": decision_id}}}}
        failure: DagctlClientError | None = None
        for attempt in range(1, attempts + 1):
            if failure is not None and on_retry is not None:
                on_retry(f"{failure}; trying again with the same decision id {decision_id} "
                         f"(attempt {attempt} of {attempts})")
            try:
                run_id = self.launch_run(REVIEW_JOB_NAME, run_config, {REVIEWED_PLAN_TAG: plan_id})
            except (DagctlLaunchError, DagctlUnreachableError) as exc:
                failure = exc
                continue
            run = self.wait_for_run(run_id, timeout=timeout)
            after = self.get_plan(plan_id)
            if run.status == "SUCCESS" or after.state.has_decision(decision_id):
                return DecisionResult(plan_id=plan_id, decision=decision, actor=actor, run_id=run_id,
                                      signed=bool(signature), decision_id=decision_id, plan=after,
                                      attempts=attempt)
            reason, kind = self._step_refusal(run_id)
            if kind in ("policy", "state"):
                raise DagctlRefusedError(f"{decision.value} refused: {reason}", kind=kind)
            failure = DagctlRunFailedError(
                f"the review run {run_id} {_ended(run)} without recording the decision: {reason}")
        assert failure is not None
        raise type(failure)(f"{failure} (gave up after {attempts} attempts; nothing was recorded)")

    # Waiting -----------------------------------------------------------------------------------------

    def _check_still_explaining(self, plan: PlanView) -> None:
        """A plan left `explaining` by a run that ended (it failed after recording the plan) never moves
        again: raise `DagctlRunFailedError` instead of waiting for it."""
        if plan.status is not PlanStatus.EXPLAINING or not plan.state.run_ids:
            return
        run = self.get_run(plan.state.run_ids[0])
        # Read again once the run is known to be over: it may have moved the plan since the first read.
        if run.is_finished and self.get_plan(plan.plan_id).status is PlanStatus.EXPLAINING:
            raise DagctlRunFailedError(
                f"plan {plan.plan_id} stays explaining: its run {run.run_id} {_ended(run)}: "
                f"{self._failure_reason(run.run_id)}"
            )

    def wait_for_plan(
        self,
        plan_id: str,
        *,
        timeout: float | None = None,
        on_change: Callable[[PlanView], None] | None = None,
    ) -> PlanView:
        """Polls the plan until it is completed, failed (no retry requested), rejected or cancelled.

        A plan whose explaining run is still queued is waited for too. `on_change` is called with the plan
        each time its status changes. Raises `DagctlTimeoutError` after `timeout` seconds (none: forever).
        """
        deadline = None if timeout is None else self._monotonic() + timeout
        self.transport.deadline = deadline
        try:
            return self._wait_for_plan(plan_id, deadline, timeout, on_change)
        finally:
            self.transport.deadline = None

    def _wait_for_plan(self, plan_id: str, deadline: float | None, timeout: float | None,
                       on_change: Callable[[PlanView], None] | None) -> PlanView:
        last: PlanStatus | None = None
        while True:
            plan: PlanView | None
            try:
                plan = self.get_plan(plan_id)
            except DagctlPlanNotRecordedError:
                plan = None
            except DagctlTimeoutError as exc:  # the webserver did not answer before the deadline
                where = last.value if last else "not recorded yet"
                raise DagctlTimeoutError(
                    f"plan {plan_id} is still {where} after {timeout:.0f}s ({exc})") from exc
            if plan is not None:
                if plan.status is not last and on_change is not None:
                    on_change(plan)
                last = plan.status
                if plan.is_waiting_done:
                    return plan
                self._check_still_explaining(plan)
            if deadline is not None and self._monotonic() >= deadline:
                where = last.value if last else "not recorded yet"
                raise DagctlTimeoutError(f"plan {plan_id} is still {where} after {timeout:.0f}s")
            pause = self.poll_interval if deadline is None else min(self.poll_interval, deadline - self._monotonic())
            self._sleep(max(pause, 0.0))
            if deadline is not None and self._monotonic() >= deadline:
                raise DagctlTimeoutError(
                    f"plan {plan_id} is still {last.value if last else 'not recorded yet'} after {timeout:.0f}s")


def _parse_row(key: Mapping[str, Any], row: Mapping[str, Any]) -> PlanEvent | None:
    """The plan event a history row carries (`None` for a row without one)."""
    entries = {entry["label"]: entry for entry in row.get("metadataEntries", [])}
    raw = entries.get(EVENT_METADATA_KEY, {}).get("jsonString")
    if not raw:
        return None
    try:
        return PlanEvent.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        # Never skipped: a skipped rejection would make a dead plan look alive.
        raise DagctlStateError(
            f"plan state of {'/'.join(key['path'])} cannot be read: the event recorded at "
            f"{row.get('timestamp')} (plan {row.get('partition') or 'unknown'}) has an unreadable "
            f"'{EVENT_METADATA_KEY}' ({str(exc).splitlines()[0]}); use the dagctl version that wrote "
            "it, or remove the event from the event log") from exc


def _parse_rows(
    key: Mapping[str, Any], rows: list[Mapping[str, Any]],
) -> tuple[list[PlanEvent], dict[str, str], dict[str, Mapping[str, Any]], dict[str, float]]:
    """The plan events of `rows` (newest first, as the history gives them) in recorded order, the latest
    summary and policy recorded per plan, and the time of each plan's first event."""
    return _collect([(row, _parse_row(key, row)) for row in rows])


def _collect(
    parsed_rows: list[tuple[Mapping[str, Any], PlanEvent | None]],
) -> tuple[list[PlanEvent], dict[str, str], dict[str, Mapping[str, Any]], dict[str, float]]:
    """`_parse_rows` of rows parsed already (newest first)."""
    events: list[PlanEvent] = []
    summaries: dict[str, str] = {}
    policies: dict[str, Mapping[str, Any]] = {}
    firsts: dict[str, float] = {}
    for row, event in reversed(parsed_rows):
        if event is None:
            continue
        entries = {entry["label"]: entry for entry in row.get("metadataEntries", [])}
        events.append(event)
        firsts.setdefault(event.plan_id, _parse_millis(row.get("timestamp")))
        summary = entries.get(SUMMARY_METADATA_KEY, {}).get("mdStr")
        if summary:
            summaries[event.plan_id] = summary
        policy = entries.get(POLICY_METADATA_KEY, {}).get("jsonString")
        if policy:
            policies[event.plan_id] = json.loads(policy)
    return events, summaries, policies, firsts


def _matching(views: Mapping[str, tuple[float, PlanView]], wanted: PlanStatus | None,
              since: datetime | None) -> list[tuple[float, PlanView]]:
    """`(time of the first event, plan)` of the views with status `wanted` created at or after `since`."""
    return [(first, plan) for first, plan in views.values()
            if (wanted is None or plan.status is wanted) and (since is None or plan.state.spec.created_at >= since)]


def _holds_newest(matches: list[tuple[float, PlanView]], limit: int | None, reached: float) -> bool:
    """Whether `matches` (sorted here, newest first) hold `limit` plans that began after `reached`."""
    matches.sort(key=lambda item: item[0], reverse=True)
    return bool(limit) and len(matches) >= limit and matches[limit - 1][0] > reached


def _build_views(
    parsed: tuple[list[PlanEvent], dict[str, str], dict[str, Mapping[str, Any]], dict[str, float]],
) -> dict[str, tuple[float, PlanView]]:
    """Each plan of `_parse_rows`'s answer (which holds all its events), with the time of its first event."""
    events, summaries, policies, firsts = parsed
    return {plan_id: (firsts[plan_id], PlanView(state=state, summary=summaries.get(plan_id, ""),
                                                policy=policies.get(plan_id)))
            for plan_id, state in fold_plans(events).items()}


def _run_info(run: Mapping[str, Any]) -> RunInfo:
    return RunInfo(
        run_id=run["runId"], job_name=run["jobName"], status=run["status"],
        created_at=datetime.fromtimestamp(float(run["creationTime"]), tz=UTC),
        tags={tag["key"]: tag["value"] for tag in run.get("tags", [])},
    )


def _ended(run: RunInfo) -> str:
    return {"SUCCESS": "succeeded", "FAILURE": "failed", "CANCELED": "was cancelled"}.get(
        run.status, run.status.lower())


def _first_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    return lines[0] if lines else "no reason given"


def _step_failure(event: Mapping[str, Any]) -> tuple[str, str | None]:
    """The one-line reason of a step failure and its refusal kind (from `dagctl/refusal`), if any."""
    metadata = event.get("failureMetadata") or {}
    kind = None
    for entry in metadata.get("metadataEntries") or []:
        if entry.get("label") == REFUSAL_METADATA_KEY:
            kind = entry.get("text")
    description = metadata.get("description")
    if description:
        return _first_line(description), kind
    # An unexpected exception: Dagster wraps it ("Error occurred while executing op ..."); its cause is
    # the exception the op raised, which says what went wrong.
    error = event.get("error") or {}
    cause = (error.get("cause") or {}).get("message")
    return _first_line(cause or error.get("message") or event.get("message", "")), kind


def _event_text(event: Mapping[str, Any]) -> str:
    if event.get("__typename") == "ExecutionStepFailureEvent":
        return f"{event['message']} {_step_failure(event)[0]}".strip()
    return event["message"]

