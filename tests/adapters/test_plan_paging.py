"""`dagctl plans list` pages: the client walks plan ids newest first and reads only the plans it shows.

A real instance holds a randomized history written through the store; the client runs its real GraphQL
documents against Dagster's schema in-process.
"""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime

import pytest
from dagster import instance_for_test
from fixtures.graphql_in_process import in_process_client
from fixtures.plan_histories import iter_history

from dagctl_dagster.adapters.graphql import PlanView
from dagctl_dagster.cli.main import format_plan
from dagctl_dagster.cli.main import run as run_cli
from dagctl_dagster.core.lifecycle import Decision, EventKind, PlanEvent, PlanStatus, fold_plans
from dagctl_dagster.defs.store import read_plan_index, record_runless

PLANS = 80
EVENTS = list(iter_history(random.Random(7), plans=PLANS))


@pytest.fixture(scope="module")
def history():
    with instance_for_test() as instance:
        for event in EVENTS:
            record_runless(instance, event, project="jaffle", environment="prod")
        read_plan_index(instance, "jaffle", "prod")  # as a sensor would: records an index checkpoint
        yield instance, fold_plans(EVENTS)


def _newest_first(states):
    return [s.plan_id for s in reversed(list(states.values()))]  # recorded (creation) order, reversed


def test_list_gives_the_newest_plans_first_and_reads_only_those_it_walks_past(history):
    instance, states = history
    with in_process_client(instance) as (client, session):
        plans = client.list_plans(limit=5)

    assert [p.plan_id for p in plans] == _newest_first(states)[:5]
    assert [p.state for p in plans] == [states[p.plan_id] for p in plans]
    pages = [v for v, _ in session.calls if "limit" in v]
    assert [v.get("partitions") for v in pages] == [None] * len(pages)  # only the walk's pages
    assert sum(v["limit"] for v in pages) < len(EVENTS) // 2  # never the whole history


def test_a_late_event_of_an_old_plan_costs_nothing_when_newer_plans_fill_the_page():
    # Years-old plans receive events (a late approval, a retry): their older events are read only when they
    # could be among the plans shown, so one page of newest events serves the list whatever the history.
    events = list(iter_history(random.Random(11), plans=30))
    oldest = events[0].plan_id
    late = PlanEvent(plan_id=oldest, kind=EventKind.DECISION, decision=Decision.APPROVE, actor="carol",
                     at=datetime.now(UTC), comment="late", fingerprint=events[0].spec.fingerprint)
    states = fold_plans([*events, late])
    with instance_for_test() as instance:
        for event in [*events, late]:
            record_runless(instance, event, project="jaffle", environment="prod")
        with in_process_client(instance) as (client, session):
            newest = client.list_plans(limit=3)
            walks = len(session.calls)
            everything = client.list_plans(limit=100)

    assert [p.plan_id for p in newest] == _newest_first(states)[:3]
    assert walks == 2  # the plan assets, then one page of events: the old plan was not read
    assert [p.plan_id for p in everything] == _newest_first(states)  # when it can be shown, it is read whole
    assert next(p for p in everything if p.plan_id == oldest).state == states[oldest]


def test_status_and_since_filters_match_the_full_fold(history):
    instance, states = history
    since = list(states.values())[PLANS // 2].spec.created_at
    with in_process_client(instance) as (client, session):
        failed = client.list_plans(environment="prod", status="failed", limit=3)
        recent = client.list_plans(since=since, limit=1000)

    assert [p.plan_id for p in failed] == [
        pid for pid in _newest_first(states) if states[pid].status.value == "failed"][:3]
    assert [p.plan_id for p in recent] == [
        pid for pid in _newest_first(states) if states[pid].spec.created_at >= since]
    # Plans created before a page of the walk and still changing in it are read whole (their older events
    # come with the walk's next pages).
    assert [p.state for p in recent + failed] == [states[p.plan_id] for p in recent + failed]


def test_get_plan_reads_one_plan_by_its_partition(history):
    instance, states = history
    plan_id = list(states)[3]
    with in_process_client(instance) as (client, session):
        plan = client.get_plan(plan_id)

    assert plan.state == states[plan_id]
    assert [v.get("partitions") for v, _ in session.calls] == [[plan_id]]


@pytest.mark.parametrize(("option", "message"), [
    (["--limit", "0"], "argument --limit: '0' is not a positive whole number, e.g. --limit 50"),
    (["--since", "yesterday"], "argument --since: 'yesterday' is not an ISO date or time, e.g. --since "
                               "2026-11-30 or --since 2026-11-30T14:00"),
])
def test_bad_paging_options_are_refused_with_an_example(option, message, capsys):
    with pytest.raises(SystemExit):
        run_cli(["plans", "list", *option], out=io.StringIO(), err=io.StringIO())
    assert message in capsys.readouterr().err


def test_approval_counted_when_the_summary_was_rendered_but_expired_since_is_shown_expired_at_read_time(history):
    _, states = history
    state = next(s for s in states.values() if s.status.value == "completed")
    pending = state.model_copy(update={"status": PlanStatus.PENDING})
    policy = {"is_required": True, "is_satisfied": True, "required": 1, "missing": [], "counted": [
        {"actor": "alice", "verified": False, "expires_at": "2026-11-30T10:00:00+00:00"}]}
    plan = PlanView(state=pending, summary="### Plan\n**Approvals:** 1 counted, 1 required", policy=policy)

    before, after = datetime(2026, 11, 30, 9, 59, tzinfo=UTC), datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    assert plan.describe_next(before).startswith("approved by alice (1 of 1)")
    assert plan.describe_next(after) == (
        "approval(s) no longer count (alice's expired at 2026-11-30 10:00 UTC): the plan goes back to "
        "pending when it is next checked; approve it again")
    assert "Re-checked now: alice's approval expired at 2026-11-30 10:00 UTC and no longer counts" in (
        format_plan(plan, []))
