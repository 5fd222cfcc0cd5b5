"""Plan events in Dagster's event log: the only place plan state lives.

Each project and environment has one asset, `dagctl/<project>/<environment>`. A plan is materialized when
`gate` decides what happens to it (pending approval, approved, or nothing to do): that materialization's
metadata is the change set a reviewer reads, with the status it has then. Every other event (the explained
plan itself, later transitions, decisions) is an observation of the asset. Each event carries the
`PlanEvent` as JSON under `dagctl_event`, and the plan id as its partition key.

Why reads do not grow with history (a design choice, issue 12):
- One plan: its events are selected by partition key. Dagster indexes (asset key, event type, partition,
  id) on SQLite and PostgreSQL, so `get_plan_state` reads only that plan's events. The asset spec does not
  declare a `DynamicPartitionsDefinition`: registering each plan as a partition would add a write per plan
  and a partition list of every plan ever made to the UI, and nothing here needs it (runless and in-run
  events on an unpartitioned asset keep their partition key as written).
- The plans an environment's sensors and `gate` act on (open plans, the deployed plan, the newest plan):
  a `PlanIndex` checkpoint, recorded as an observation of the same asset under the reserved partition
  `__index__`, with the storage id of the last event it covers. A read takes the latest checkpoint
  (one indexed descending fetch) and folds the events after it (a tail, by storage id); a plan the tail
  names but the checkpoint lacks is read by its partition. When the tail reaches `CHECKPOINT_EVERY`
  events, the reader records a new checkpoint. Events stay the only truth: a checkpoint is derived data,
  any writer may record one, concurrent checkpoints are each correct, and a lost or unreadable one only
  makes the next read longer. The newest `SETTLE_EVENTS` events are never checkpointed, so an event whose
  transaction commits a little after a higher storage id (PostgreSQL) is still read.
- Whether anything changed at all: `get_plan_event_marks`, the newest storage id of the environment's plan
  events (two max() lookups on the (asset, event type, id) index). The plan sensor remembers it in its cursor
  and reads nothing else while it and the branch head stay put. On PostgreSQL the lookup uses one connection
  the code server keeps open, not a new one per tick (`_mark_connection`).
- `read_plan_states` (the full fold) stays as the reference, and `audit_environment` compares both.

An event whose payload cannot be parsed makes reads of its environment fail with `DagctlStateError`
naming its storage id: skipping a `rejected` event would make a dead plan look alive. Other environments
read other events and keep working.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping
from typing import Any

from dagster import (
    AssetKey,
    AssetMaterialization,
    AssetObservation,
    AssetRecordsFilter,
    DagsterInstance,
    JsonMetadataValue,
    MetadataValue,
)
from pydantic import ValidationError

from ..core.errors import DagctlPlanError, DagctlStateError
from ..core.lifecycle import PlanEvent, PlanIndex, PlanState, build_plan_index, fold_plans, update_plan_index
from ..core.plan import split_plan_id

EVENT_METADATA_KEY = "dagctl_event"
INDEX_METADATA_KEY = "dagctl_index"
INDEX_PARTITION = "__index__"
PLAN_GROUP = "dagctl_plans"
CHECKPOINT_EVERY = 64
SETTLE_EVENTS = 8
_INDEX_VERSION = 1
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
        return AssetMaterialization(asset_key=key, metadata=payload, description=event.reason,
                                    partition=event.plan_id)
    return AssetObservation(asset_key=key, metadata=payload, description=event.reason, partition=event.plan_id)


def record_runless(
    instance: DagsterInstance, event: PlanEvent, *, project: str, environment: str,
    metadata: Mapping[str, object] | None = None,
) -> None:
    """Records an event from outside a run (sensors, the review job's sensor-side checks)."""
    instance.report_runless_asset_event(
        build_asset_event(event, project=project, environment=environment, metadata=metadata)
    )


def _fetch(instance: DagsterInstance, records_filter: AssetRecordsFilter) -> list[tuple[int, object]]:
    """(storage id, entry) of every materialization and observation matching the filter, in order."""
    rows = []
    for fetch in (instance.fetch_materializations, instance.fetch_observations):
        cursor = None
        while True:
            result = fetch(records_filter, limit=_PAGE, cursor=cursor, ascending=True)
            for record in result.records:
                entry = record.event_log_entry
                rows.append((record.storage_id, entry.asset_materialization or entry.asset_observation))
            if not result.has_more:
                break
            cursor = result.cursor
    rows.sort(key=lambda row: row[0])
    return rows


def _parse_events(rows: Iterable[tuple[int, object]], key: AssetKey) -> list[tuple[int, PlanEvent]]:
    events = []
    for storage_id, entry in rows:
        if getattr(entry, "partition", None) == INDEX_PARTITION:
            continue
        value = entry.metadata.get(EVENT_METADATA_KEY) if entry is not None else None
        if value is None:
            continue  # not a dagctl event (e.g. reported by hand in the UI): it carries no plan state
        try:
            if not isinstance(value, JsonMetadataValue):
                raise ValueError(f"'{EVENT_METADATA_KEY}' is {type(value).__name__}, not JSON")
            event = PlanEvent.model_validate(value.data)
            events.append((storage_id, event.model_copy(update={"recorded_id": storage_id})))
        except (ValueError, ValidationError) as exc:
            first = str(exc).splitlines()[0]
            raise DagctlStateError(
                f"plan state of {key.to_user_string()} cannot be read: the event with storage id {storage_id} "
                f"has an unreadable '{EVENT_METADATA_KEY}' ({first}). It was written by another dagctl version "
                "or edited by hand; it is not skipped, since a skipped rejection would make a dead plan look "
                "alive. Run the dagctl version that wrote it, or remove the event from the event log; "
                "other environments are not affected"
            ) from exc
    return events


def read_events(instance: DagsterInstance, project: str, environment: str) -> list[PlanEvent]:
    """Every plan event of a project and environment, in recorded order (the audit's input)."""
    key = plan_asset_key(project, environment)
    return [event for _, event in _parse_events(_fetch(instance, AssetRecordsFilter(asset_key=key)), key)]


def read_plan_states(instance: DagsterInstance, project: str, environment: str) -> dict[str, PlanState]:
    """Every plan of an environment folded from its whole history: the reference, and the audit's."""
    return fold_plans(read_events(instance, project, environment))


def _read_plan_events(instance: DagsterInstance, plan_id: str, *, before: int | None = None) -> list[PlanEvent]:
    project, environment = split_plan_id(plan_id)
    key = plan_asset_key(project, environment)
    records_filter = AssetRecordsFilter(asset_key=key, asset_partitions=[plan_id], before_storage_id=before)
    return [event for _, event in _parse_events(_fetch(instance, records_filter), key)]


def _has_unpartitioned_events(instance: DagsterInstance, key: AssetKey) -> bool:
    """Whether the history starts with events recorded before plan ids were partition keys."""
    for fetch in (instance.fetch_materializations, instance.fetch_observations):
        for record in fetch(AssetRecordsFilter(asset_key=key), limit=1, ascending=True).records:
            entry = record.event_log_entry.asset_materialization or record.event_log_entry.asset_observation
            if entry is not None and entry.partition is None:
                return True
    return False


def find_plan_state(instance: DagsterInstance, plan_id: str) -> PlanState | None:
    """The folded state of one plan, read from its own events only; None if it was never recorded.

    In a history that began before plan ids were partition keys, a plan not found by its partition is
    looked for in the whole history (the old cost, only for such plans).
    """
    state = fold_plans(_read_plan_events(instance, plan_id)).get(plan_id)
    if state is None and _has_unpartitioned_events(instance, plan_asset_key(*split_plan_id(plan_id))):
        return read_plan_states(instance, *split_plan_id(plan_id)).get(plan_id)
    return state


def get_plan_state(instance: DagsterInstance, plan_id: str) -> PlanState:
    """The folded state of one plan; `DagctlPlanError` if it does not exist."""
    state = find_plan_state(instance, plan_id)
    if state is None:
        project, environment = split_plan_id(plan_id)
        raise DagctlPlanError(
            f"unknown plan '{plan_id}': no plan with this id was recorded for project '{project}', "
            f"environment '{environment}'"
        )
    return state


def _latest_checkpoint(instance: DagsterInstance, key: AssetKey) -> tuple[int | None, PlanIndex]:
    result = instance.fetch_observations(
        AssetRecordsFilter(asset_key=key, asset_partitions=[INDEX_PARTITION]), limit=1, ascending=False)
    for record in result.records:
        value = record.event_log_entry.asset_observation.metadata.get(INDEX_METADATA_KEY)
        data = value.data if isinstance(value, JsonMetadataValue) else None
        # A checkpoint is derived data: one this version cannot read is rebuilt from the events.
        if isinstance(data, dict) and data.get("version") == _INDEX_VERSION:
            try:
                return data["cursor"], PlanIndex.model_validate(data["index"])
            except (KeyError, ValidationError):
                pass
    return None, PlanIndex()


def _advance(instance: DagsterInstance, index: PlanIndex, cursor: int | None,
             events: list[PlanEvent]) -> PlanIndex:
    """`index` (covering events up to `cursor`) after `events`."""
    before = {plan_id: index.plans.get(plan_id) for plan_id in dict.fromkeys(e.plan_id for e in events)}
    for plan_id, state in before.items():
        if state is None and cursor is not None:  # a parked plan the tail names: read it by its partition
            before[plan_id] = fold_plans(_read_plan_events(instance, plan_id, before=cursor + 1)).get(plan_id)
    states = fold_plans(events, {plan_id: state for plan_id, state in before.items() if state is not None})
    return update_plan_index(index, (states[plan_id] for plan_id in before if plan_id in states))


def read_plan_index(instance: DagsterInstance, project: str, environment: str) -> PlanIndex:
    """The open, deployed and newest plans of an environment, at a cost that does not grow with history.

    May record a new checkpoint of the index (an observation of the plan asset).
    """
    key = plan_asset_key(project, environment)
    cursor, index = _latest_checkpoint(instance, key)
    tail = _parse_events(_fetch(instance, AssetRecordsFilter(asset_key=key, after_storage_id=cursor)), key)
    if len(tail) < CHECKPOINT_EVERY:
        return _advance(instance, index, cursor, [event for _, event in tail])
    settled, recent = tail[:-SETTLE_EVENTS], tail[-SETTLE_EVENTS:]
    index = _advance(instance, index, cursor, [event for _, event in settled])
    cursor = settled[-1][0]
    instance.report_runless_asset_event(AssetObservation(
        asset_key=key, partition=INDEX_PARTITION,
        description=f"dagctl index checkpoint: {len(index.plans)} plan(s), events up to {cursor}",
        metadata={INDEX_METADATA_KEY: JsonMetadataValue(
            {"version": _INDEX_VERSION, "cursor": cursor, "index": index.model_dump(mode="json")})},
    ))
    return _advance(instance, index, cursor, [event for _, event in recent])


# The newest storage id of an asset's plan events: two max() lookups on Dagster's (asset_key, event type, id)
# index, as plain SQL so that nothing is compiled per call (Dagster's SQLite storage opens a new engine for
# each connection, so SQLAlchemy's compiled-statement cache never hits).
_MARK_SQL = (
    "SELECT (SELECT max(id) FROM event_logs WHERE asset_key = :key AND dagster_event_type = "
    "'ASSET_MATERIALIZATION'), (SELECT max(id) FROM event_logs WHERE asset_key = :key AND "
    "dagster_event_type = 'ASSET_OBSERVATION')"
)


def get_plan_event_marks(instance: DagsterInstance, project: str, environments: Iterable[str]) -> dict[str, int]:
    """Per environment, the storage id of the newest event of its plan asset (0 if none): a mark that moves
    whenever anything is recorded for the environment's plans (events, decisions, index checkpoints).

    Costs one indexed lookup per environment whatever the history's length: the plan sensor compares it with
    the mark it remembered to know that no plan state changed since its last full check.
    """
    keys = {environment: plan_asset_key(project, environment).to_string() for environment in environments}
    storage = instance.event_log_storage
    if hasattr(storage, "index_connection"):  # the SQL storages (SQLite, PostgreSQL, MySQL)
        from sqlalchemy import text  # here: importing SQLAlchemy costs every run process 0.4 s of CPU

        with _mark_connection(storage) as conn:
            return {environment: max((v or 0) for v in conn.execute(text(_MARK_SQL), {"key": key}).fetchone())
                    for environment, key in keys.items()}
    return read_plan_event_marks_by_records(instance, project, keys)


MARK_CONNECTION_NAME = "dagctl plan sensor"
_held_engines: dict[str, Any] = {}
_held_lock = threading.Lock()


def _mark_connection(storage: Any) -> Any:
    """A connection for the mark lookup.

    Dagster's PostgreSQL event log opens a new server connection for every query (`NullPool`, so that
    short-lived processes hold none), and each sensor evaluation builds a new instance. The plan sensor
    looks the mark up every tick, so its code server keeps one connection per database open for it (as
    Dagster's webserver does for its own reads), checked before each use and named
    `MARK_CONNECTION_NAME` in `pg_stat_activity`. Other storages, and PostgreSQL with a token provider
    (short-lived credentials), use Dagster's connection.
    """
    url = getattr(storage, "postgres_url", None)
    # Only where Dagster's storage says it uses no token provider (an attribute a Dagster upgrade may rename:
    # then Dagster's connection too).
    if not isinstance(url, str) or getattr(storage, "_token_provider", "unknown") is not None:
        return storage.index_connection()
    with _held_lock:
        engine = _held_engines.get(url)
        if engine is None:
            from sqlalchemy import create_engine

            engine = _held_engines[url] = create_engine(
                url, isolation_level="AUTOCOMMIT", pool_size=1, max_overflow=4, pool_pre_ping=True,
                pool_recycle=600, connect_args={"application_name": MARK_CONNECTION_NAME})
    return engine.connect()


def read_plan_event_marks_by_records(instance: DagsterInstance, project: str,
                                     environments: Iterable[str]) -> dict[str, int]:
    """`get_plan_event_marks` through Dagster's public record API (two newest-first fetches of one record per
    environment): for storages without SQL, and the reference the SQL lookup is tested against."""
    marks = {}
    for environment in environments:
        records_filter = AssetRecordsFilter(asset_key=plan_asset_key(project, environment))
        marks[environment] = max((record.storage_id for fetch in (instance.fetch_materializations,
                                                                  instance.fetch_observations)
                                  for record in fetch(records_filter, limit=1, ascending=False).records),
                                 default=0)
    return marks


def audit_environment(instance: DagsterInstance, project: str, environment: str) -> list[str]:
    """Differences between the narrow reads and the full fold of an environment (empty: they agree)."""
    states = read_plan_states(instance, project, environment)
    problems = []
    if read_plan_index(instance, project, environment) != build_plan_index(states.values()):
        problems.append(f"the index of {project}/{environment} differs from the full fold")
    problems += [f"plan {plan_id}: its own events fold to a different state than the full history"
                 for plan_id, state in states.items() if find_plan_state(instance, plan_id) != state]
    return problems
