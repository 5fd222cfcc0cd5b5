"""Plan events in Dagster's event log: the only place plan state lives.

Each project and environment has one asset, `dagctl/<project>/<environment>`. A plan is materialized when
`gate` decides what happens to it (pending approval, approved, or nothing to do): that materialization's
metadata is the change set a reviewer reads, with the status it has then. Every other event (the explained
plan itself, later transitions, decisions) is an observation of the asset. Each event carries the `PlanEvent` as JSON under `dagctl_event`, so the
state of every plan can be folded back from the event log alone.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    DagsterInstance,
    JsonMetadataValue,
    MetadataValue,
)

from ..core.errors import DagctlPlanError
from ..core.lifecycle import PlanEvent, PlanState, fold_plans
from ..core.plan import split_plan_id

EVENT_METADATA_KEY = "dagctl_event"
PLAN_GROUP = "dagctl_plans"
_PAGE = 1000


def plan_asset_key(project: str, environment: str) -> AssetKey:
    return AssetKey(["dagctl", project, environment])


def build_asset_event(
    event: PlanEvent, *, project: str, environment: str, metadata: Mapping[str, object] | None = None,
    materialize: bool = False,
) -> AssetMaterialization | AssetObservation:
    """The Dagster event that records `event`: a materialization of the plan asset, or an observation."""
    payload = {
        EVENT_METADATA_KEY: JsonMetadataValue(event.model_dump(mode="json")),
        "plan_id": MetadataValue.text(event.plan_id),
        **(metadata or {}),
    }
    key = plan_asset_key(project, environment)
    if materialize:
        return AssetMaterialization(asset_key=key, metadata=payload, description=event.reason)
    return AssetObservation(asset_key=key, metadata=payload, description=event.reason)


def record_runless(
    instance: DagsterInstance, event: PlanEvent, *, project: str, environment: str,
    metadata: Mapping[str, object] | None = None,
) -> None:
    """Records an event from outside a run (sensors, the review job's sensor-side checks)."""
    instance.report_runless_asset_event(
        build_asset_event(event, project=project, environment=environment, metadata=metadata)
    )


def _iter_records(instance: DagsterInstance, key: AssetKey, fetch_name: str) -> Iterator[tuple[int, dict]]:
    fetch = getattr(instance, fetch_name)
    cursor = None
    while True:
        result = fetch(key, limit=_PAGE, cursor=cursor, ascending=True)
        for record in result.records:
            entry = record.event_log_entry.asset_materialization or record.event_log_entry.asset_observation
            value = entry.metadata.get(EVENT_METADATA_KEY) if entry else None
            if isinstance(value, JsonMetadataValue) and isinstance(value.data, dict):
                yield record.storage_id, value.data
        if not result.has_more:
            return
        cursor = result.cursor


def read_events(instance: DagsterInstance, project: str, environment: str) -> list[PlanEvent]:
    """Every plan event of a project and environment, in recorded order."""
    key = plan_asset_key(project, environment)
    rows = [*_iter_records(instance, key, "fetch_materializations"),
            *_iter_records(instance, key, "fetch_observations")]
    rows.sort(key=lambda row: row[0])
    events = []
    for _, data in rows:
        try:
            events.append(PlanEvent.model_validate(data))
        except ValueError:
            # An event written by an incompatible version: skip it rather than hide the whole history.
            continue
    return events


def read_plan_states(instance: DagsterInstance, project: str, environment: str) -> dict[str, PlanState]:
    return fold_plans(read_events(instance, project, environment))


def get_plan_state(instance: DagsterInstance, plan_id: str) -> PlanState:
    """The folded state of one plan; `DagctlPlanError` if it does not exist."""
    project, environment = split_plan_id(plan_id)
    state = read_plan_states(instance, project, environment).get(plan_id)
    if state is None:
        raise DagctlPlanError(
            f"unknown plan '{plan_id}': no plan with this id was recorded for project '{project}', "
            f"environment '{environment}'"
        )
    return state
