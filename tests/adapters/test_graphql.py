"""The GraphQL client on its own: Dagster's API is faked at the HTTP session, the only boundary it has.

Each fake answer has the shape the real webserver gives (the end-to-end tests in `tests/e2e` run the same
client against a real one); the clock is injected, so waiting and timeouts take no time.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from dagctl_dagster.adapters.graphql import (
    GRAPHQL_DOCUMENTS,
    DagctlClient,
    DagctlPlanNotFoundError,
    DagctlRefusedError,
    DagctlRequestError,
    DagctlRunFailedError,
    DagctlTimeoutError,
    DagctlUnreachableError,
    parse_header,
)
from dagctl_dagster.cli.main import run as run_cli
from dagctl_dagster.core.lifecycle import (
    Decision,
    EventKind,
    PlanEvent,
    PlanStatus,
    build_created_event,
    build_status_event,
)
from dagctl_dagster.core.plan import Framework, PlanSpec, seal_plan
from dagctl_dagster.adapters.ssh import build_ssh_signer
from dagctl_dagster.core.signatures import verify_signature
from fixtures.ssh_keys import make_key

T0 = datetime(2025, 3, 1, 9, 0, tzinfo=UTC)
PLAN_ID = "jaffle-prod-3f2a9c1d"
RUN_ID = "3f2a9c1d-0000-4000-8000-000000000000"
REVIEW_RUN_ID = "aaaaaaaa-0000-4000-8000-000000000000"
SUMMARY = "### Plan\n**Approvals:**\n- none yet\n**Still needed:** 2 more approval(s) from alice, bob\n"


class FakeResponse:
    def __init__(self, payload: object, status: int = 200):
        self.status_code = status
        self.ok = status < 400
        self._payload = payload

    def json(self) -> object:
        if isinstance(self._payload, str):
            raise ValueError("not JSON")
        return self._payload


class FakeDagster:
    """A `requests.Session` stand-in answering each GraphQL operation (by name) with a handler."""

    def __init__(self) -> None:
        self.headers: dict[str, str] = {}
        self.handlers: dict[str, Callable[[dict], object]] = {}
        self.calls: list[tuple[str, dict]] = []

    def on(self, operation: str, handler: Callable[[dict], object] | object) -> None:
        self.handlers[operation] = handler if callable(handler) else (lambda _variables: handler)

    def post(self, url: str, json: dict, timeout: float) -> FakeResponse:  # noqa: A002 - requests' name
        operation = re.search(r"(?:query|mutation)\s+(\w+)", json["query"]).group(1)
        self.calls.append((operation, json["variables"]))
        answer = self.handlers[operation](json["variables"])
        return answer if isinstance(answer, FakeResponse) else FakeResponse({"data": answer})


def make_spec(**overrides: object) -> PlanSpec:
    fields: dict[str, object] = {
        "plan_id": PLAN_ID, "project": "jaffle", "environment": "prod", "framework": Framework.DBT,
        "base_commit": "a" * 40, "target_commit": "b" * 40, "version_old": "1", "version_new": "2",
        "triggered_by": "sensor", "author": "carol", "created_at": T0,
    }
    fields.update(overrides)
    return seal_plan(PlanSpec.model_validate(fields))


def history_entry(event: PlanEvent, summary: str = SUMMARY) -> dict:
    kind = "MaterializationEvent" if event.kind is EventKind.CREATED else "ObservationEvent"
    return {"__typename": kind, "timestamp": str(event.at.timestamp() * 1000), "metadataEntries": [
        {"label": "dagctl_event", "jsonString": json.dumps(event.model_dump(mode="json"))},
        {"label": "summary", "mdStr": summary},
    ]}


def asset_history(*events: PlanEvent) -> dict:
    """`assetOrError` as the webserver answers it: newest event first."""
    results = [history_entry(event) for event in reversed(events)]
    return {"assetOrError": {"__typename": "Asset", "definition": {"id": "x"},
                             "assetEventHistory": {"cursor": "c", "results": results}}}


@pytest.fixture
def pending_plan_events() -> list[PlanEvent]:
    spec = make_spec()
    return [build_created_event(spec, run_id=RUN_ID),
            build_status_event(PLAN_ID, PlanStatus.PENDING, actor="dagctl", at=T0 + timedelta(minutes=1),
                               reason="awaiting approval", run_id=RUN_ID)]


@pytest.fixture
def dagster(pending_plan_events: list[PlanEvent]) -> FakeDagster:
    fake = FakeDagster()
    fake.on("DagctlPlanAssets", {"assetsOrError": {"__typename": "AssetConnection", "nodes": [
        {"key": {"path": ["dagctl", "jaffle", "prod"]}, "definition": {"id": "x"}}]}})
    fake.on("DagctlPlanEvents", asset_history(*pending_plan_events))
    fake.on("DagctlRuns", {"runsOrError": {"__typename": "Runs", "results": []}})
    fake.on("DagctlRepositories", {"repositoriesOrError": {"__typename": "RepositoryConnection", "nodes": [
        {"name": "__repository__", "location": {"name": "dagctl"},
         "jobs": [{"name": "jaffle_plan_job"}, {"name": "dagctl_review_job"}]}]}})
    return fake


@pytest.fixture
def make_client(dagster: FakeDagster) -> Callable[..., DagctlClient]:
    def build(**overrides: object) -> DagctlClient:
        clock = {"now": 0.0}

        def sleep(seconds: float) -> None:
            clock["now"] += seconds

        options = {"session": dagster, "sleep": sleep, "monotonic": lambda: clock["now"], **overrides}
        return DagctlClient("http://dagster.test", **options)

    return build


def review_run(status: str, failure: dict | None = None) -> Callable[[FakeDagster], None]:
    def install(fake: FakeDagster) -> None:
        fake.on("DagctlLaunch", {"launchRun": {"__typename": "LaunchRunSuccess",
                                              "run": {"runId": REVIEW_RUN_ID, "status": "QUEUED"}}})
        fake.on("DagctlRun", {"runOrError": {"__typename": "Run", "runId": REVIEW_RUN_ID,
                                             "jobName": "dagctl_review_job", "status": status,
                                             "creationTime": T0.timestamp(), "tags": []}})
        events = [failure] if failure else []
        fake.on("DagctlLogs", {"logsForRun": {"__typename": "EventConnection", "cursor": "1",
                                              "hasMore": False, "events": events}})

    return install


def refusal(kind: str, description: str) -> dict:
    return {"__typename": "ExecutionStepFailureEvent", "message": "Execution of step \"review\" failed.",
            "timestamp": "0", "level": "ERROR", "stepKey": "review", "eventType": "STEP_FAILURE",
            "error": {"message": f"dagster._core.definitions.events.Failure: {description}\n  File ..."},
            "failureMetadata": {"description": description, "metadataEntries": [
                {"label": "dagctl/refusal", "text": kind}]}}


def test_plans_are_folded_in_recorded_order_from_the_newest_first_history(make_client) -> None:
    [plan] = make_client().list_plans(environment="prod")

    assert (plan.plan_id, plan.status, plan.missing) == (
        PLAN_ID, PlanStatus.PENDING, ("2 more approval(s) from alice, bob",))
    assert [entry.what for entry in plan.state.history] == ["status: explaining", "status: pending"]


def test_filters_leave_out_other_environments_and_statuses(make_client, dagster) -> None:
    dagster.on("DagctlPlanAssets", {"assetsOrError": {"__typename": "AssetConnection", "nodes": [
        {"key": {"path": ["dagctl", "jaffle", "dev"]}, "definition": None},
        {"key": {"path": ["dagctl", "jaffle", "prod"]}, "definition": None}]}})
    client = make_client()

    assert [p.plan_id for p in client.list_plans(environment="dev", status="pending")] == [PLAN_ID]
    assert {variables["key"]["path"][2] for name, variables in dagster.calls
            if name == "DagctlPlanEvents"} == {"dev"}
    assert client.list_plans(status="completed") == []


def test_unknown_plan_without_an_explaining_run_is_not_found(make_client) -> None:
    with pytest.raises(DagctlPlanNotFoundError, match="unknown plan 'jaffle-prod-00000000'"):
        make_client().get_plan("jaffle-prod-00000000")


def test_plan_whose_explaining_run_crashed_names_the_exception_not_dagsters_wrapper(
    make_client, dagster
) -> None:
    crashed_run_id = "0badc0de-0000-4000-8000-000000000000"
    dagster.on("DagctlRuns", {"runsOrError": {"__typename": "Runs", "results": [
        {"runId": crashed_run_id, "jobName": "jaffle_plan_job", "status": "FAILURE",
         "creationTime": T0.timestamp(), "tags": [{"key": "dagctl/environment", "value": "prod"}]}]}})
    dagster.on("DagctlLogs", {"logsForRun": {"__typename": "EventConnection", "cursor": "1", "hasMore": False,
                                             "events": [{
        "__typename": "ExecutionStepFailureEvent", "message": "Execution of step \"detect\" failed.",
        "timestamp": "0", "level": "ERROR", "stepKey": "detect", "eventType": "STEP_FAILURE",
        "failureMetadata": None,
        "error": {"message": "dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred "
                             "while executing op \"detect\":\n",
                  "cause": {"message": "OSError: [Errno 28] No space left on device\n"}}}]}})

    with pytest.raises(DagctlRunFailedError, match=r"jaffle-prod-0badc0de was never recorded: its explaining run "
                       r"\S+ failed: OSError: \[Errno 28\] No space left on device$"):
        make_client().get_plan("jaffle-prod-0badc0de")


def test_refused_self_approval_raises_a_policy_refusal_with_the_servers_reason(make_client, dagster) -> None:
    review_run("FAILURE", refusal("policy", "carol cannot approve plan jaffle-prod-3f2a9c1d: it is "
                                            "their own plan"))(dagster)

    with pytest.raises(DagctlRefusedError, match="approve refused: carol cannot approve") as refused:
        make_client().decide(PLAN_ID, Decision.APPROVE, actor="carol")

    assert refused.value.kind == "policy"


def test_approval_is_signed_with_the_approvers_own_key_and_carries_a_decision_id(
    make_client, dagster, tmp_path
) -> None:
    review_run("SUCCESS")(dagster)
    spec = make_spec()
    alice = make_key(tmp_path, "alice")

    result = make_client().decide(PLAN_ID, "approve", actor="alice", signer=build_ssh_signer(alice.path),
                                  decision_id="ci-42")

    [launch] = [variables for name, variables in dagster.calls if name == "DagctlLaunch"]
    config = launch["params"]["runConfigData"]["ops"]["review"]["config"]
    signature = config.pop("signature")
    assert config == {"plan_id": PLAN_ID, "decision": "approve", "actor": "alice", "comment": "",
                      "decision_id": "ci-42"}
    assert verify_signature(signature, f"{PLAN_ID}:{spec.fingerprint}", (alice.public,)) == alice.public
    assert launch["params"]["selector"] == {"repositoryLocationName": "dagctl",
                                            "repositoryName": "__repository__", "jobName": "dagctl_review_job"}
    assert (result.signed, result.decision_id, result.attempts) == (True, "ci-42", 1)


def test_review_launch_that_timed_out_is_retried_with_the_same_decision_id(make_client, dagster) -> None:
    review_run("SUCCESS")(dagster)
    answers = iter([
        {"launchRun": {"__typename": "PythonError", "message": "grpc DEADLINE_EXCEEDED: Deadline Exceeded\n..."}},
        {"launchRun": {"__typename": "LaunchRunSuccess", "run": {"runId": REVIEW_RUN_ID, "status": "QUEUED"}}},
    ])
    dagster.on("DagctlLaunch", lambda variables: next(answers))
    told: list[str] = []

    result = make_client().decide(PLAN_ID, "approve", actor="alice", on_retry=told.append)

    launches = [variables["params"]["runConfigData"]["ops"]["review"]["config"]["decision_id"]
                for name, variables in dagster.calls if name == "DagctlLaunch"]
    assert len(launches) == 2 and launches[0] == launches[1] == result.decision_id
    assert result.attempts == 2
    assert told == [f"cannot launch dagctl_review_job: grpc DEADLINE_EXCEEDED: Deadline Exceeded; trying again "
                    f"with the same decision id {result.decision_id} (attempt 2 of 3)"]


def test_review_run_that_keeps_dying_without_a_refusal_is_given_up_after_three_attempts(make_client, dagster) -> None:
    review_run("FAILURE")(dagster)

    with pytest.raises(DagctlRunFailedError, match=r"gave up after 3 attempts; nothing was recorded\)$"):
        make_client().decide(PLAN_ID, "approve", actor="alice")

    assert [name for name, _ in dagster.calls].count("DagctlLaunch") == 3


def test_waiting_for_a_pending_plan_times_out_on_the_injected_clock(make_client) -> None:
    seen: list[PlanStatus] = []

    with pytest.raises(DagctlTimeoutError, match="still pending after 30s"):
        make_client(poll_interval=5).wait_for_plan(PLAN_ID, timeout=30, on_change=lambda p: seen.append(p.status))

    assert seen == [PlanStatus.PENDING]


def test_closed_port_is_unreachable() -> None:
    with pytest.raises(DagctlUnreachableError, match="cannot reach the Dagster webserver"):
        DagctlClient("http://127.0.0.1:9", timeout=5).list_plans()


@pytest.mark.parametrize(("status", "error"), [(401, DagctlRequestError), (502, DagctlUnreachableError)])
def test_auth_proxy_refusal_is_a_request_error_and_a_dead_upstream_unreachable(status, error, dagster) -> None:
    dagster.on("DagctlPlanAssets", FakeResponse("<html>proxy</html>", status=status))

    with pytest.raises(error):
        DagctlClient("http://dagster.test", session=dagster).list_plans()


def test_header_must_be_name_colon_value() -> None:
    assert parse_header("Authorization: Bearer a:b") == ("Authorization", "Bearer a:b")
    with pytest.raises(DagctlRequestError, match="'Name: value'"):
        parse_header("Authorization Bearer")


@pytest.mark.parametrize(
    ("install", "argv", "code"),
    [
        (review_run("SUCCESS"), ["plans", "approve", PLAN_ID, "--as", "alice"], 0),
        (review_run("FAILURE", refusal("state", "cannot approve: it is completed")),
         ["plans", "approve", PLAN_ID, "--as", "alice"], 3),
        (review_run("FAILURE"), ["plans", "reject", PLAN_ID, "--as", "alice"], 1),
        (lambda fake: None, ["plans", "wait", PLAN_ID, "--timeout", "10"], 5),
        (lambda fake: None, ["plans", "show", "jaffle-prod-00000000"], 2),
    ],
    ids=["approved", "state-refusal", "review-run-broke", "wait-timeout", "unknown-plan"],
)
def test_cli_exit_codes(install, argv, code, dagster, make_client) -> None:
    install(dagster)
    out, err = io.StringIO(), io.StringIO()

    returned = run_cli(argv, out=out, err=err, client_factory=lambda args: make_client())

    assert returned == code, f"stdout: {out.getvalue()} stderr: {err.getvalue()}"
    if code not in (0, 5):
        # One line per message, the error last (a review run that died is retried first, said on its line).
        lines = err.getvalue().strip().splitlines()
        assert lines[-1].startswith("dagctl: error: ") and all(line.startswith("dagctl: ") for line in lines)


def test_client_and_cli_load_no_dagster_so_they_run_where_dagster_is_not_installed() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, dagctl_dagster.cli.main; "
         "print(sorted({m.split('.')[0] for m in sys.modules} & {'dagster', 'dagster_graphql', 'git', 'dbt'}))"],
        capture_output=True, text=True, timeout=120, check=False,
    )

    assert (probe.returncode, probe.stdout.strip()) == (0, "[]"), probe.stderr


def test_every_document_is_valid_against_the_installed_dagster_graphql_schema() -> None:
    # Fake answers cannot tell a renamed field; the real schema can (e.g. after a Dagster upgrade).
    from dagster_graphql.schema import create_schema
    from graphql import parse, validate

    schema = create_schema().graphql_schema
    problems = {document.split("(")[0].split("{")[0].strip(): [str(e) for e in validate(schema, parse(document))]
                for document in GRAPHQL_DOCUMENTS}

    assert problems == {name: [] for name in problems}


def with_policy(event: PlanEvent, policy: dict) -> dict:
    entry = history_entry(event)
    entry["metadataEntries"].append({"label": "policy", "jsonString": json.dumps(policy)})
    return entry


@pytest.mark.parametrize(("policy", "next_line"), [
    ({"is_required": True, "is_satisfied": True, "required": 1, "missing": [],
      "counted": [{"actor": "alice", "verified": True}]},
     "approved by alice (1 of 1): execution will be launched by the approval sensor"),
    ({"is_required": True, "is_satisfied": False, "required": 2, "missing": ["1 more approval(s) from bob"],
      "counted": [{"actor": "alice", "verified": False}]},
     "1 more approval(s) from bob needed"),
], ids=["policy-met", "one-more-needed"])
def test_approve_says_what_happens_next(make_client, dagster, pending_plan_events, policy, next_line) -> None:
    review_run("SUCCESS")(dagster)
    approval = PlanEvent(plan_id=PLAN_ID, kind=EventKind.DECISION, decision=Decision.APPROVE, actor="alice",
                         at=T0 + timedelta(minutes=5), fingerprint=make_spec().fingerprint)
    history = asset_history(*pending_plan_events)
    history["assetOrError"]["assetEventHistory"]["results"].insert(0, with_policy(approval, policy))
    dagster.on("DagctlPlanEvents", history)
    out, err = io.StringIO(), io.StringIO()

    code = run_cli(["plans", "approve", PLAN_ID, "--as", "alice"], out=out, err=err,
                   client_factory=lambda args: make_client())

    assert code == 0, err.getvalue()
    assert out.getvalue().splitlines() == [
        f"alice: approve recorded on plan {PLAN_ID} (not signed: self-asserted)",
        f"plan {PLAN_ID}: pending (awaiting approval)", next_line]


def test_approve_with_wait_follows_the_plan_to_its_end(make_client, dagster, pending_plan_events) -> None:
    review_run("SUCCESS")(dagster)
    executed = [build_status_event(PLAN_ID, status, actor="dagctl", at=T0 + timedelta(minutes=9), reason=reason)
                for status, reason in ((PlanStatus.APPROVED, "policy met"), (PlanStatus.RUNNING, "executing"),
                                       (PlanStatus.COMPLETED, "executed"))]
    reads = []

    def history(variables: dict) -> dict:  # pending while the decision is recorded, then executed
        reads.append(variables)
        return asset_history(*pending_plan_events, *(executed if len(reads) > 2 else []))

    dagster.on("DagctlPlanEvents", history)
    out, err = io.StringIO(), io.StringIO()

    code = run_cli(["plans", "approve", PLAN_ID, "--as", "alice", "--wait"], out=out, err=err,
                   client_factory=lambda args: make_client())

    assert code == 0, err.getvalue()
    assert out.getvalue().splitlines()[-1] == f"plan {PLAN_ID}: completed (executed)"


def test_approve_with_key_signs_through_ssh_keygen(make_client, dagster, tmp_path) -> None:
    review_run("SUCCESS")(dagster)
    alice = make_key(tmp_path, "alice")
    out, err = io.StringIO(), io.StringIO()

    code = run_cli(["plans", "approve", PLAN_ID, "--as", "alice", "--key", str(alice.path)], out=out, err=err,
                   client_factory=lambda args: make_client())

    [launch] = [variables for name, variables in dagster.calls if name == "DagctlLaunch"]
    signature = launch["params"]["runConfigData"]["ops"]["review"]["config"]["signature"]
    assert code == 0, err.getvalue()
    assert out.getvalue().splitlines()[0] == f"alice: approve recorded on plan {PLAN_ID}, signed"
    assert verify_signature(signature, f"{PLAN_ID}:{make_spec().fingerprint}", (alice.public,)) == alice.public


def test_approve_with_a_missing_key_file_is_a_usage_error_and_launches_nothing(make_client, dagster, tmp_path):
    out, err = io.StringIO(), io.StringIO()

    code = run_cli(["plans", "approve", PLAN_ID, "--as", "alice", "--key", str(tmp_path / "nope")], out=out,
                   err=err, client_factory=lambda args: make_client())

    assert (code, err.getvalue()) == (2, f"dagctl: error: --key {tmp_path / 'nope'}: no such key file\n")
    assert "DagctlLaunch" not in [name for name, _ in dagster.calls]
