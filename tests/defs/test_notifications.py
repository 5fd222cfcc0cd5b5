"""Webhook notifications against a real HTTP server on loopback: a JSON event when a plan needs approval,
completes or fails; a webhook that is down or broken never fails a plan."""

import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import BUILD_ONLY_REASON, PROJECT, run_requests

from dagctl_dagster.core.lifecycle import PlanStatus
from dagctl_dagster.core.plan import build_plan_id

@dataclass
class Webhook:
    """A webhook receiver on 127.0.0.1: every JSON body it was sent, in order."""

    url: str
    received: list[dict] = field(default_factory=list)
    status: int = 204


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            hook.received.append({"path": self.path, "content_type": self.headers["Content-Type"],
                                  "body": json.loads(body)})
            self.send_response(hook.status)
            self.end_headers()

        def log_message(self, *args):
            pass  # keep the test output to the test's own

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_port}/hooks/dagctl"
    yield hook
    server.shutdown()
    server.server_close()
    thread.join()


def closed_port_url() -> str:
    """A loopback URL nobody listens on: the port was free a moment ago and is closed again."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/dagctl"


def expected_event(plan, event: str, status: str, reason: str) -> dict:
    return {"path": "/hooks/dagctl", "content_type": "application/json", "body": {
        "event": event, "plan_id": plan.plan_id, "project": PROJECT, "environment": "prod", "status": status,
        "reason": reason, "actor": "dagctl", "at": "2025-01-06T09:00:00+00:00",
        "target_commit": plan.spec.target_commit, "fingerprint": plan.spec.fingerprint}}


def test_webhook_receives_needs_approval_then_completed(deployed, webhook):
    deployed.configure(protected=True, approvers=["alice", "bob"], webhook_url=webhook.url)
    deployed.commit_change(author="dave")

    plan = deployed.explain()
    after_explain = list(webhook.received)
    deployed.approve(plan.plan_id, "alice")
    execution = deployed.execute_approved(plan.plan_id)

    assert execution.success
    assert after_explain == [expected_event(
        plan, "plan.needs_approval", "pending", "awaiting approval: 1 more approval(s) from alice, bob")]
    assert webhook.received == [
        *after_explain, expected_event(plan, "plan.completed", "completed", BUILD_ONLY_REASON)]


def test_webhook_receives_failed_when_the_build_fails(deployed, webhook):
    deployed.configure(protected=False, webhook_url=webhook.url)
    deployed.commit_change(author="dave")
    deployed.block_builds()

    result = deployed.launch_plan()

    plan = deployed.state(build_plan_id(PROJECT, "prod", result.run_id))
    assert (result.success, plan.status) == (False, PlanStatus.FAILED)
    assert webhook.received == [expected_event(plan, "plan.failed", "failed", plan.reason)]
    assert plan.reason == (
        f"FileExistsError: [Errno 17] File exists: '{deployed.storage_dir / 'snapshots' / PROJECT}'")


@pytest.mark.parametrize("broken", ["down", "answers-500"])
def test_webhook_that_is_down_or_failing_does_not_fail_the_plan(deployed, webhook, broken):
    url = closed_port_url() if broken == "down" else webhook.url
    webhook.status = 500
    deployed.configure(protected=True, approvers=["alice", "bob"], webhook_url=url)
    deployed.commit_change(author="dave")

    explain = deployed.launch_plan()
    plan_id = build_plan_id(PROJECT, "prod", explain.run_id)
    deployed.approve(plan_id, "alice")
    [request] = run_requests(deployed.tick())
    execution = deployed.launch(request)

    warnings = [entry.user_message for run in (explain, execution)
                for entry in deployed.instance.all_logs(run.run_id)
                if entry.user_message.startswith("webhook of environment 'prod' failed")]
    assert (explain.success, execution.success) == (True, True)
    assert deployed.state(plan_id).status is PlanStatus.COMPLETED
    assert [warning.split(": ", 1)[0] for warning in warnings] == [
        f"webhook of environment 'prod' failed for plan {plan_id}"] * 2
    assert len(webhook.received) == (2 if broken == "answers-500" else 0)
