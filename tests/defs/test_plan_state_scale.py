"""Plan state at scale: the narrow reads (one plan, the environment's index) against the full fold.

Histories are written through the product's own store function (`record_runless`) into a real Dagster
instance; the reads under test record their own index checkpoints as they would in a sensor.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from conftest import instance_overrides
from dagster import AssetObservation, AssetRecordsFilter, JsonMetadataValue, instance_for_test
from fixtures.plan_histories import iter_history

from dagctl_dagster.core.errors import DagctlStateError
from dagctl_dagster.core.lifecycle import (
    PlanIndex,
    PlanState,
    PlanStatus,
    build_plan_index,
    build_status_event,
    fold_plans,
    get_last_completed,
    get_newest_plan,
    is_open,
)
from dagctl_dagster.defs.store import (
    EVENT_METADATA_KEY,
    INDEX_PARTITION,
    audit_environment,
    find_plan_state,
    plan_asset_key,
    read_plan_index,
    read_plan_states,
    record_runless,
)


@pytest.fixture
def instance(tmp_path: Path):
    with instance_for_test(instance_overrides(tmp_path), temp_dir=str(tmp_path)) as instance:
        yield instance


def _checkpoints(instance) -> int:
    records = instance.fetch_observations(AssetRecordsFilter(
        asset_key=plan_asset_key("jaffle", "prod"), asset_partitions=[INDEX_PARTITION]), limit=1000)
    return len(records.records)


def unrecorded(value):
    """`value` (plan states, in lists, dicts or an index) without the storage ids the store adds on reading:
    the reference fold runs over the events as written, which carry none."""
    if isinstance(value, PlanState):
        return value.model_copy(update={"created_id": None})
    if isinstance(value, PlanIndex):
        return value.model_copy(update={"plans": unrecorded(value.plans)})
    if isinstance(value, dict):
        return {key: unrecorded(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(unrecorded(item) for item in value)
    return value


def test_narrow_reads_equal_the_full_fold_over_a_randomized_history_of_thousands_of_events(instance):
    events = list(iter_history(random.Random(12), plans=350))
    others = list(iter_history(random.Random(13), plans=5, environment="dev"))
    statuses = {e.status for e in events if e.status}
    # Thousands of events, and every transition happens somewhere.
    assert len(events) > 2000 and statuses == set(PlanStatus) - {PlanStatus.EXPLAINING}
    compared, folded = 0, {}

    for number, event in enumerate(events, start=1):
        record_runless(instance, event, project="jaffle", environment="prod")
        folded = fold_plans([event], folded)  # the reference fold of everything written so far
        if others and number % 300 == 0:
            record_runless(instance, others.pop(0), project="jaffle", environment="dev")
        # A sensor tick: reads (and maybe checkpoints) every 89 events, and right after each rejection or
        # cancellation, when the newest standing plan may be an older one (a parked failed plan).
        if number % 89 == 0 or number == len(events) or event.status in (
                PlanStatus.REJECTED, PlanStatus.CANCELLED):
            index = read_plan_index(instance, "jaffle", "prod")
            # What sensors and gate read, against the reference functions over the full fold.
            assert unrecorded((index.open, index.last_completed, index.newest)) == (
                sorted((s for s in folded.values() if is_open(s)), key=lambda s: (s.spec.created_at, s.plan_id)),
                get_last_completed(folded.values()), get_newest_plan(folded.values()))
            assert unrecorded(index) == build_plan_index(folded.values())
            compared += 1

    states = read_plan_states(instance, "jaffle", "prod")
    assert unrecorded(states) == folded
    assert {plan_id: find_plan_state(instance, plan_id) for plan_id in states} == states
    assert audit_environment(instance, "jaffle", "prod") == []
    assert audit_environment(instance, "jaffle", "dev") == []
    assert (compared > len(events) // 89, _checkpoints(instance) >= 10) == (True, True)


def test_an_unreadable_event_fails_reads_of_its_environment_naming_it_while_others_keep_working(instance):
    for environment in ("prod", "dev"):
        for event in iter_history(random.Random(5), plans=3, environment=environment):
            record_runless(instance, event, project="jaffle", environment=environment)
    plan_id = next(iter(read_plan_states(instance, "jaffle", "prod")))
    at = find_plan_state(instance, plan_id).updated_at
    bad = build_status_event(plan_id, PlanStatus.REJECTED, actor="bob", at=at)
    payload = {**bad.model_dump(mode="json"), "status": "thrown-away"}  # a status this version does not know
    instance.report_runless_asset_event(AssetObservation(
        asset_key=plan_asset_key("jaffle", "prod"), partition=plan_id,
        metadata={EVENT_METADATA_KEY: JsonMetadataValue(payload)}))
    [record] = instance.fetch_observations(plan_asset_key("jaffle", "prod"), limit=1, ascending=False).records

    for read in (lambda: read_plan_index(instance, "jaffle", "prod"), lambda: find_plan_state(instance, plan_id),
                 lambda: read_plan_states(instance, "jaffle", "prod")):
        with pytest.raises(DagctlStateError) as raised:
            read()
        assert str(raised.value).startswith(
            f"plan state of dagctl/jaffle/prod cannot be read: the event with storage id {record.storage_id} "
            f"has an unreadable '{EVENT_METADATA_KEY}' (1 validation error for PlanEvent)")
        assert "Run the dagctl version that wrote it, or remove the event from the event log" in str(raised.value)
    assert read_plan_index(instance, "jaffle", "dev") == build_plan_index(
        read_plan_states(instance, "jaffle", "dev").values())


def test_sensors_report_an_unreadable_event_with_its_storage_id_instead_of_skipping_it(deployed):
    key = plan_asset_key("jaffle", "prod")
    deployed.instance.report_runless_asset_event(AssetObservation(
        asset_key=key, partition=deployed.deployed_plan_id,
        metadata={EVENT_METADATA_KEY: JsonMetadataValue({"plan_id": deployed.deployed_plan_id, "kind": "gone"})}))
    [record] = deployed.instance.fetch_observations(key, limit=1, ascending=False).records
    named = f"the event with storage id {record.storage_id} has an unreadable '{EVENT_METADATA_KEY}'"

    approval, plan = deployed.tick(), deployed.tick("jaffle_plan_sensor")

    assert approval.skip_message.startswith("no plan is ready to run; jaffle/prod: plan state of dagctl/jaffle/prod")
    assert named in approval.skip_message
    assert named in plan.skip_message and plan.skip_message.startswith("jaffle/prod: plan state of")


def test_a_plan_recorded_before_plan_ids_were_partition_keys_is_still_found_and_indexed(instance):
    events = list(iter_history(random.Random(9), plans=4))
    key = plan_asset_key("jaffle", "prod")
    for event in events:  # as the previous version recorded them: no partition key
        instance.report_runless_asset_event(AssetObservation(
            asset_key=key, metadata={EVENT_METADATA_KEY: JsonMetadataValue(event.model_dump(mode="json"))}))
    folded = fold_plans(events)

    assert unrecorded({plan_id: find_plan_state(instance, plan_id) for plan_id in folded}) == folded
    assert unrecorded(read_plan_index(instance, "jaffle", "prod")) == build_plan_index(folded.values())
