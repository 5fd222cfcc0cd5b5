"""A deployed dbt project on a real Dagster instance, for tests of the whole approval workflow.

Running dbt costs tens of seconds, so it runs once per session: `deployed_template` pushes the example
project (`examples/jaffle_dbt`, committed by carol) to a real Git remote and deploys it to environment
`prod` (the first plan, scope `all`, runs `dbt seed` on DuckDB). Each test then gets `deployed`, its own
copy of that world (remote, Dagster instance folder, Git mirror and snapshots) under `tmp_path`: the same
history and commit shas, nothing shared. Tests change files dbt does not build (the Dockerfile, the
requirements, plus the version bump in `.dagctl/config.yaml`), so the plans they execute are `build_only`:
`build` writes a snapshot and no dbt command runs. (A plan that changes a model is never executed here.)

`deployed.configure(...)` sets the policy of `prod` (the plan job, review job and sensors are rebuilt from
that config over the same instance), and the methods drive the workflow the way the daemon and a reviewer
would: `commit_change`, `launch_plan`, `decide`, `tick`, `launch`. Time is a `ManualClock` injected into the
runtime; it only moves when a test calls `advance`.

The instance's storage is SQLite by default. Tests that matter most in production also run on PostgreSQL
(`@ON_SQLITE_AND_POSTGRES`): run, event-log and schedule storage from `examples/dagster-postgres.yaml` on
the session's throwaway server, one database per test copied from a deployed template database.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    Definitions,
    ExecuteInProcessResult,
    RunRequest,
    RunsFilter,
    SensorResult,
    SkipReason,
    build_sensor_context,
    instance_for_test,
)
from fixtures.git_repos import DBT_PROFILES, GitRepo, make_repo, run_git
from fixtures.postgres import PostgresServer, load_postgres_instance_config

from dagctl_dagster.core.config import parse_deployment_config
from dagctl_dagster.core.lifecycle import PlanState, PlanStatus, build_status_event
from dagctl_dagster.core.plan import build_plan_id
from dagctl_dagster.core.policy import SYSTEM_ACTOR
from dagctl_dagster.defs.definitions import build_definitions
from dagctl_dagster.defs.runtime import PlanRuntime
from dagctl_dagster.defs.sensors import plan_run_config
from dagctl_dagster.defs.store import plan_asset_key, read_plan_states
from dagctl_dagster.defs.tags import PLAN_ID_TAG, PROJECT_TAG, TRIGGER_TAG, plan_run_tags

PROJECT = "jaffle"
ENV = "prod"
PLAN_JOB = f"{PROJECT}_plan_job"
REVIEW_JOB = "dagctl_review_job"
APPROVAL_SENSOR = "dagctl_approval_sensor"
PLAN_SENSOR = f"{PROJECT}_plan_sensor"
RUN_KEY_TAG = "dagster/run_key"
DEPLOYED_AT = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
T0 = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)
BUILD_ONLY_REASON = "build only: nothing dbt builds changed: the image is rebuilt, no dbt command runs"
NOTHING_READY = SkipReason("no plan is ready to run")
# The default policy of `prod` in tests: protected, alice or bob approves.
PROTECTED = {"protected": True, "approvers": ["alice", "bob"]}


# Runs a test on both instance storages: `@ON_SQLITE_AND_POSTGRES def test_...(deployed)`.
ON_SQLITE_AND_POSTGRES = pytest.mark.parametrize("instance_storage", ["sqlite", "postgres"], indirect=True)
TEMPLATE_DATABASE = "dagctl_deployed_template"


def instance_overrides(home: Path) -> dict[str, Any]:
    """One SQLite database for the whole event log: Dagster's default keeps one per run, and creating it
    costs more than the run of a review decision itself."""
    return {"event_log_storage": {"module": "dagster._core.storage.event_log",
                                  "class": "ConsolidatedSqliteEventLogStorage",
                                  "config": {"base_dir": str(home / "history")}}}


def open_instance(home: Path, server: PostgresServer | None = None, database: str = "",
                  patch: pytest.MonkeyPatch | None = None) -> AbstractContextManager[DagsterInstance]:
    """A real instance with its local files in `home`: SQLite, or (with `server`) PostgreSQL storage from
    `examples/dagster-postgres.yaml` on `database`, whose DAGSTER_PG_* variables `patch` sets."""
    if server is None:
        return instance_for_test(instance_overrides(home), temp_dir=str(home))
    for name, value in server.environ(database).items():
        patch.setenv(name, value)
    return instance_for_test(load_postgres_instance_config(), temp_dir=str(home))


class ManualClock:
    """The runtime's clock: fixed until a test moves it."""

    def __init__(self, now: datetime):
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> datetime:
        self.now += timedelta(**delta)
        return self.now


def build_config_text(repo_url: str, storage_dir: Path, prod: Mapping[str, Any], *,
                      dbt_commands: Sequence[str] = ("dbt seed",),
                      extra_projects: Sequence[Mapping[str, Any]] = (),
                      people: Sequence[Mapping[str, Any]] = ()) -> str:
    """A deployment config: project `jaffle` (dbt) with environment `prod` set to `prod`."""
    return yaml.safe_dump({
        **({"people": list(people)} if people else {}),
        "storage_dir": str(storage_dir),
        "projects": [
            {"name": PROJECT, "framework": "dbt", "repository": repo_url,
             "dbt": {"profiles_dir": str(DBT_PROFILES), "commands": list(dbt_commands)},
             "step_env": {"pass_env": ["DAGCTL_WAREHOUSE_DIR"]},
             "environments": [{"name": ENV, **prod}]},
            *extra_projects,
        ],
    }, sort_keys=False)


def failure_message(result: ExecuteInProcessResult) -> str:
    """The message of the one step that failed in a run (what the run's page shows)."""
    [event] = result.get_step_failure_events()
    data = event.step_failure_data
    return data.user_failure_data.description if data.user_failure_data else data.error.message


def failed_step(result: ExecuteInProcessResult) -> str:
    [step] = result.get_failed_step_keys()
    return step


def warehouse_materializations(result: ExecuteInProcessResult) -> list[str]:
    """dbt nodes a run materialized (plan assets `dagctl/...` left out)."""
    return sorted(event.asset_key.to_user_string() for event in result.get_asset_materialization_events()
                  if event.asset_key.path[0] != "dagctl")


def run_requests(result: SensorResult | SkipReason | None) -> list[RunRequest]:
    return list(result.run_requests or []) if isinstance(result, SensorResult) else []


def started_steps(result: ExecuteInProcessResult) -> list[str]:
    return [event.step_key for event in result.all_events if event.event_type_value == "STEP_START"]


def statuses(state: PlanState) -> list[str]:
    """What happened to a plan, in order, without times or paths:
    `["status: explaining", "status: pending", "decision: approve", ..., "built", "status: completed"]`."""
    return ["built" if entry.what.startswith("built:") else entry.what for entry in state.history]


@dataclass
class Deployment:
    """One project (`jaffle`) deployed to `prod` on a real instance, with helpers that drive its plans."""

    root: Path
    repo: GitRepo
    instance: DagsterInstance
    clock: ManualClock
    deployed_plan_id: str = ""
    runtime: PlanRuntime = field(init=False)
    defs: Definitions = field(init=False)
    versions: int = field(default=1, init=False)

    @property
    def storage_dir(self) -> Path:
        return self.root / "data"

    @property
    def config_path(self) -> Path:
        return self.root / "dagctl.yaml"

    def configure(self, *, dbt_commands: Sequence[str] = ("dbt seed",),
                  extra_projects: Sequence[Mapping[str, Any]] = (),
                  people: Sequence[Mapping[str, Any]] = (), **prod: Any) -> Definitions:
        """(Re)builds the code location with `prod`'s settings, e.g. `configure(protected=True)`."""
        text = build_config_text(self.repo.url, self.storage_dir, prod, dbt_commands=dbt_commands,
                                 extra_projects=extra_projects, people=people)
        self.config_path.write_text(text)
        config = parse_deployment_config(text, source=str(self.config_path))
        self.runtime = PlanRuntime(deployment=config, storage_dir=self.storage_dir, config_dir=self.root,
                                   clock=self.clock)
        self.defs = build_definitions(self.runtime)
        return self.defs

    # -- Git ------------------------------------------------------------------------------------------

    def commit_change(self, path: str = "Dockerfile", text: str | None = None, *, author: str = "dave") -> str:
        """Pushes a change of `path` (default: one more line in the Dockerfile, so the plan is
        `build_only`) with the next version in `.dagctl/config.yaml`; returns the commit."""
        self.versions += 1
        if text is None:
            text = self.repo.read(path) + f"# change {self.versions}\n"
        return self.repo.commit_change(path, text, version=str(self.versions), author=author)

    def gc_mirror(self) -> None:
        """Fetches the mirror and drops unreachable commits, as `git gc` does after a force-push."""
        mirror = self.runtime.mirror(self.runtime.deployment.get_project(PROJECT))
        mirror.fetch()
        git_dir = f"--git-dir={mirror.mirror_dir}"
        run_git(git_dir, "reflog", "expire", "--expire=now", "--all")
        run_git(git_dir, "gc", "-q", "--prune=now")

    # -- runs -----------------------------------------------------------------------------------------

    def launch_plan(self, environment: str = ENV, *, project: str = PROJECT, requested_by: str = "",
                    commit: str = "", plan_id: str = "") -> ExecuteInProcessResult:
        """Launches the plan job by hand, as from the launchpad (`plan_id` set: a hand-written execution)."""
        config = {"environment": environment, "commit": commit, "requested_by": requested_by,
                  "plan_id": plan_id}
        return self.defs.resolve_job_def(f"{project}_plan_job").execute_in_process(
            run_config={"ops": {"detect": {"config": config}}}, instance=self.instance,
            raise_on_error=False)

    def explain(self, environment: str = ENV, **kwargs: Any) -> PlanState:
        """Launches a new plan by hand and returns it as recorded."""
        result = self.launch_plan(environment, **kwargs)
        assert result.success, failure_message(result)
        return self.state(build_plan_id(kwargs.get("project", PROJECT), environment, result.run_id))

    def decide(self, plan_id: str, decision: str, actor: str, *, comment: str = "",
               signature: str = "", decision_id: str = "") -> ExecuteInProcessResult:
        """A reviewer's decision: one run of the review job, as launched from the launchpad."""
        config = {"plan_id": plan_id, "decision": decision, "actor": actor, "comment": comment,
                  "signature": signature, "decision_id": decision_id}
        return self.defs.resolve_job_def(REVIEW_JOB).execute_in_process(
            run_config={"ops": {"review": {"config": config}}}, instance=self.instance, raise_on_error=False)

    def approve(self, plan_id: str, *actors: str) -> None:
        for actor in actors:
            result = self.decide(plan_id, "approve", actor)
            assert result.success, failure_message(result)

    def tick(self, sensor: str = APPROVAL_SENSOR) -> SensorResult | SkipReason:
        """One evaluation of a sensor, as one daemon tick."""
        context = build_sensor_context(instance=self.instance, definitions=self.defs)
        return self.defs.resolve_sensor_def(sensor)(context)

    def launch(self, request: RunRequest) -> ExecuteInProcessResult:
        """Runs what a sensor requested, with its run key tag, as the daemon would."""
        job_name = request.job_name or f"{request.tags[PROJECT_TAG]}_plan_job"
        return self.defs.resolve_job_def(job_name).execute_in_process(
            run_config=request.run_config, instance=self.instance, raise_on_error=False,
            tags={**request.tags, RUN_KEY_TAG: request.run_key})

    def launch_new(self, requests: Sequence[RunRequest]) -> list[ExecuteInProcessResult]:
        """Runs the requests whose run key has no run yet: the daemon's run key deduplication."""
        results = []
        for request in requests:
            if not self.instance.get_run_records(RunsFilter(tags={RUN_KEY_TAG: request.run_key})):
                results.append(self.launch(request))
        return results

    def execute_approved(self, plan_id: str) -> ExecuteInProcessResult:
        """Ticks the approval sensor and runs its one request for `plan_id`."""
        [request] = [r for r in run_requests(self.tick()) if r.tags.get(PLAN_ID_TAG) == plan_id]
        return self.launch(request)

    def start_execution_run(self, plan_id: str) -> DagsterRun:
        """Creates the execution run of an approved plan and records the plan `running` in it, as `gate`
        does, but runs no step: what the event log holds when the run worker dies right after `gate`."""
        run = self.instance.create_run_for_job(
            job_def=self.defs.resolve_job_def(PLAN_JOB), run_config=plan_run_config(ENV, plan_id=plan_id),
            tags={**plan_run_tags(PROJECT, ENV, plan_id), TRIGGER_TAG: "approval"},
            status=DagsterRunStatus.STARTED)
        self.runtime.record(self.instance, build_status_event(
            self.state(plan_id), PlanStatus.RUNNING, actor=SYSTEM_ACTOR, at=self.clock(), run_id=run.run_id,
            reason="executing"))
        return run

    # -- reads ----------------------------------------------------------------------------------------

    def state(self, plan_id: str) -> PlanState:
        return read_plan_states(self.instance, PROJECT, ENV)[plan_id]

    def statuses(self, plan_id: str) -> list[str]:
        return statuses(self.state(plan_id))

    def snapshots(self) -> set[str]:
        folder = self.storage_dir / "snapshots" / PROJECT
        return {path.name for path in folder.iterdir()} if folder.is_dir() else set()

    def summary(self, plan_id: str) -> str:
        """The markdown summary recorded with the plan's latest event (what the asset page shows)."""
        key = plan_asset_key(PROJECT, ENV)
        latest: tuple[int, str] = (-1, "")
        for fetch in (self.instance.fetch_materializations, self.instance.fetch_observations):
            for record in fetch(key, limit=1000, ascending=False).records:
                event = record.event_log_entry
                entry = event.asset_materialization or event.asset_observation
                if entry.partition == plan_id and record.storage_id > latest[0]:  # not index checkpoints
                    latest = (record.storage_id, entry.metadata["summary"].value)
        return latest[1]

    # -- faults ---------------------------------------------------------------------------------------

    def block_builds(self) -> None:
        """Makes every `build` of the project fail fast: its snapshot folder becomes a plain file."""
        folder = self.storage_dir / "snapshots" / PROJECT
        folder.rename(folder.with_name(f"{PROJECT}.aside"))
        folder.write_text("not a folder\n")

    def unblock_builds(self) -> None:
        folder = self.storage_dir / "snapshots" / PROJECT
        folder.unlink()
        folder.with_name(f"{PROJECT}.aside").rename(folder)


@dataclass(frozen=True)
class DeployedTemplate:
    root: Path
    repo: GitRepo
    deployed: PlanState


def build_deployed_template(root: Path, server: PostgresServer | None = None) -> DeployedTemplate:
    """jaffle deployed to an unprotected `prod` by a first plan that runs dbt (on `server`: in the
    template database)."""
    repo = make_repo(root / "repo")
    warehouse = root / "warehouse"
    warehouse.mkdir()
    (root / "home").mkdir()
    if server is not None:
        server.create_database(TEMPLATE_DATABASE)
    with pytest.MonkeyPatch.context() as patch, open_instance(
        root / "home", server, TEMPLATE_DATABASE, patch
    ) as instance:
        patch.setenv("DAGCTL_WAREHOUSE_DIR", str(warehouse))
        deployment = Deployment(root=root, repo=repo, instance=instance, clock=ManualClock(DEPLOYED_AT))
        deployment.configure(protected=False)
        result = deployment.launch_plan()
        assert result.success, failure_message(result)
        deployed = deployment.state(build_plan_id(PROJECT, ENV, result.run_id))
    assert (deployed.status, deployed.spec.dbt_scope.scope, deployed.spec.commands) == (
        PlanStatus.COMPLETED, "all", (("dbt", "seed", "--target", "prod"),))
    assert warehouse_materializations(result) == ["jaffle/prod/raw_customers", "jaffle/prod/raw_orders"]
    return DeployedTemplate(root=root, repo=repo, deployed=deployed)


@pytest.fixture(scope="session")
def deployed_template(tmp_path_factory) -> DeployedTemplate:
    """Once per session: jaffle deployed to an unprotected `prod` by a first plan that runs dbt."""
    return build_deployed_template(tmp_path_factory.mktemp("deployed_template"))


@pytest.fixture(scope="session")
def deployed_template_postgres(tmp_path_factory, postgres_server: PostgresServer) -> DeployedTemplate:
    """The same, on PostgreSQL: the template database that each PostgreSQL test copies."""
    return build_deployed_template(tmp_path_factory.mktemp("deployed_template_postgres"), postgres_server)


@pytest.fixture
def instance_storage(request) -> str:
    """`sqlite` (the default) or `postgres` (tests marked `@ON_SQLITE_AND_POSTGRES`)."""
    return getattr(request, "param", "sqlite")


@pytest.fixture
def deployed(request, instance_storage: str, tmp_path: Path, monkeypatch) -> Iterator[Deployment]:
    """This test's own copy of the deployed project, `prod` protected (alice or bob approves)."""
    server: PostgresServer | None = None
    database = ""
    if instance_storage == "postgres":
        server = request.getfixturevalue("postgres_server")
        template = request.getfixturevalue("deployed_template_postgres")
        database = server.create_database(f"dagctl_test_{uuid.uuid4().hex[:12]}", template=TEMPLATE_DATABASE)
    else:
        template = request.getfixturevalue("deployed_template")
    repo = template.repo.copy_to(tmp_path / "repo")
    shutil.copytree(template.root / "home", tmp_path / "home")
    shutil.copytree(template.root / "data", tmp_path / "data", ignore=shutil.ignore_patterns("runs"))
    (tmp_path / "warehouse").mkdir()
    monkeypatch.setenv("DAGCTL_WAREHOUSE_DIR", str(tmp_path / "warehouse"))
    try:
        with open_instance(tmp_path / "home", server, database, monkeypatch) as instance:
            deployment = Deployment(root=tmp_path, repo=repo, instance=instance, clock=ManualClock(T0),
                                    deployed_plan_id=template.deployed.plan_id)
            deployment.configure(**PROTECTED)
            yield deployment
    finally:
        if server is not None:
            server.drop_database(database)


def assert_nothing_ran(deployed: Deployment, plan_id: str, snapshots_before: set[str],
                       result: ExecuteInProcessResult | None = None) -> None:
    """No side effect for the plan: never running, nothing built, no new snapshot, no dbt node, and (for
    the refused run) neither `build` nor `execute` started."""
    history = deployed.statuses(plan_id)
    assert "built" not in history and "status: running" not in history, history
    assert deployed.snapshots() == snapshots_before
    if result is not None:
        assert not {"build", "execute"} & set(started_steps(result))
        assert warehouse_materializations(result) == []
