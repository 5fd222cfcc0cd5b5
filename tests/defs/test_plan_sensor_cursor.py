"""The plan sensor as the daemon runs it: each tick gets the cursor the previous one set.

A tick where neither the branch head nor the environment's plan events moved reuses the remembered decision
(one `git ls-remote` and one indexed lookup); any plan event or a new head brings a full check, so the
newest standing plan and the re-requests of runs that died before planning stay exactly as without a cursor.
"""

from __future__ import annotations

import json

import pytest
from dagster import SkipReason, build_sensor_context

from conftest import (
    ENV,
    ON_SQLITE_AND_POSTGRES,
    PLAN_JOB,
    PLAN_SENSOR,
    PROJECT,
    failure_message,
    open_instance,
    run_requests,
)
from dagctl_dagster.core.plan import build_plan_id
from dagctl_dagster.defs.sensors import MAX_PLAN_ATTEMPTS
from dagctl_dagster.defs.store import MARK_CONNECTION_NAME, get_plan_event_marks, read_plan_event_marks_by_records

UP_TO_DATE = SkipReason(f"{PROJECT}/{ENV}: up to date")


class Daemon:
    """Ticks the plan sensor with the cursor of its previous tick, as the sensor daemon does."""

    def __init__(self, deployed):
        self.deployed, self.cursor = deployed, None

    def tick(self):
        context = build_sensor_context(instance=self.deployed.instance, definitions=self.deployed.defs,
                                       cursor=self.cursor)
        result = self.deployed.defs.resolve_sensor_def(PLAN_SENSOR)(context)
        self.cursor = context.cursor
        return result

    def remembered(self) -> dict:
        return json.loads(self.cursor or "{}").get(ENV, {})


def plan_from(daemon: Daemon):
    [request] = run_requests(daemon.tick())
    [result] = daemon.deployed.launch_new([request])
    assert result.success, failure_message(result)
    return daemon.deployed.state(build_plan_id(PROJECT, ENV, result.run_id))


def push_without_bump(deployed) -> str:
    return deployed.repo.commit_change("Dockerfile", deployed.repo.read("Dockerfile") + "# unreviewed\n")


@ON_SQLITE_AND_POSTGRES
def test_an_unchanged_head_reuses_the_decision_until_a_rejection_makes_an_older_plan_the_newest(deployed):
    daemon = Daemon(deployed)
    deployed.commit_change()
    pending = plan_from(daemon)
    head = push_without_bump(deployed)

    checks = [daemon.tick() for _ in range(2)]
    settled = daemon.remembered()
    reused = daemon.tick()
    mark = get_plan_event_marks(deployed.instance, PROJECT, [ENV])[ENV]

    assert checks == [UP_TO_DATE, UP_TO_DATE] and reused == UP_TO_DATE
    assert (settled["commit"], settled["mark"], settled["settled"], settled["why"]) == (
        head, mark, True, "up to date")
    assert daemon.remembered() == settled  # the third tick read nothing but the head and the mark
    # The SQL lookup of the mark is the newest plan event Dagster's own record API finds.
    assert get_plan_event_marks(deployed.instance, PROJECT, [ENV, "dev"]) == read_plan_event_marks_by_records(
        deployed.instance, PROJECT, [ENV, "dev"]) == {ENV: mark, "dev": 0}

    assert deployed.decide(pending.plan_id, "reject", "alice", comment="not like this").success
    [request] = run_requests(daemon.tick())  # the deployed plan (version 1) is the newest standing one again

    assert request.run_key == f"{PROJECT}:{ENV}:{pending.spec.version_new}:{head}"
    assert daemon.remembered() == {}


@pytest.mark.parametrize("instance_storage", ["postgres"], indirect=True)
def test_on_postgresql_the_mark_lookup_keeps_one_named_connection_across_ticks_and_survives_losing_it(
        deployed, postgres_server, tmp_path, monkeypatch):
    # Each daemon tick evaluates the sensor on a new instance, whose storage opens a connection per query.
    database = deployed.instance.event_log_storage.postgres_url.rsplit("/", 1)[1]
    held = (f"SELECT pid FROM pg_stat_activity WHERE datname = '{database}' "
            f"AND application_name = '{MARK_CONNECTION_NAME}'")
    expected = read_plan_event_marks_by_records(deployed.instance, PROJECT, [ENV])
    (tmp_path / "other").mkdir()
    with open_instance(tmp_path / "other", postgres_server, database, monkeypatch) as other:
        marks = [get_plan_event_marks(instance, PROJECT, [ENV]) for instance in (deployed.instance, other)]
    [[pid]] = postgres_server.fetch(held)

    postgres_server.execute(f"SELECT pg_terminate_backend({pid})")  # a restart, a proxy's idle timeout
    after = get_plan_event_marks(deployed.instance, PROJECT, [ENV])

    assert marks == [expected, expected] and after == expected
    assert [pid] != postgres_server.fetch(held) and len(postgres_server.fetch(held)) == 1


def test_a_new_head_is_checked_in_full_even_with_a_settled_decision(deployed):
    daemon = Daemon(deployed)
    deployed.commit_change()
    plan_from(daemon)
    for _ in range(3):
        assert daemon.tick() == UP_TO_DATE
    head = deployed.commit_change()

    [request] = run_requests(daemon.tick())

    assert request.run_key == f"{PROJECT}:{ENV}:3:{head}"


def test_runs_that_died_before_planning_are_requested_again_then_stopped_with_the_cursor_carried(deployed):
    daemon = Daemon(deployed)
    deployed.commit_change()
    keys = []
    for _ in range(MAX_PLAN_ATTEMPTS):
        [request] = run_requests(daemon.tick())
        keys.append(request.run_key)
        run = deployed.instance.create_run_for_job(
            job_def=deployed.defs.resolve_job_def(PLAN_JOB), run_config=request.run_config,
            tags={**request.tags, "dagster/run_key": request.run_key})
        deployed.instance.report_run_failed(run)

    finals = [daemon.tick() for _ in range(3)]

    base = f"{PROJECT}:{ENV}:2:{deployed.repo.head}"
    assert keys == [base, f"{base}:attempt:2", f"{base}:attempt:3"]
    assert all(final.skip_message.startswith(
        f"{PROJECT}/{ENV}: the plan of {deployed.repo.head[:12]} was requested 3 times") for final in finals)
    assert daemon.remembered() == {}  # a decision that depends on runs is checked in full every tick


def test_a_cursor_of_another_version_is_ignored(deployed):
    daemon = Daemon(deployed)
    daemon.cursor = "not json"
    deployed.commit_change()

    [request] = run_requests(daemon.tick())

    assert request.run_key == f"{PROJECT}:{ENV}:2:{deployed.repo.head}"
