"""`detect` tells the truth whatever the files, commits and URLs hold: glob characters select exactly the
changed file, names that are not UTF-8 never reach the event log undecodable, user-controlled fields are
bounded, and a Git token never lands in storage. Real Git, a real instance and real dbt on DuckDB."""

from __future__ import annotations

import base64
import json
import os
import shutil
import sqlite3
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from dagster import AssetKey
from fixtures.git_repos import run_git

from conftest import (
    ENV,
    PLAN_SENSOR,
    PROJECT,
    build_config_text,
    failure_message,
    run_requests,
    warehouse_materializations,
)
from dagctl_dagster.adapters.dbt import MAX_LISTED_FILES
from dagctl_dagster.core.config import parse_deployment_config
from dagctl_dagster.core.lifecycle import PlanStatus
from dagctl_dagster.core.plan import build_plan_id
from dagctl_dagster.defs.definitions import build_definitions
from dagctl_dagster.defs.runtime import PlanRuntime


def plan_from_sensor(deployed):
    [request] = run_requests(deployed.tick(PLAN_SENSOR))
    [result] = deployed.launch_new([request])
    return deployed.state(build_plan_id(PROJECT, ENV, result.run_id)), result


def test_a_file_named_like_a_glob_builds_only_itself(deployed):
    deployed.configure(protected=False, dbt_commands=["dbt build"])
    # The red team's file: unescaped, `path:models/**/*.sql` selects every model of the project.
    deployed.repo.commit("Add a model with a glob name", {
        "models/**/*.sql": "{{ config(alias='glob_named') }}\nselect 1 as x\n",
        ".dagctl/config.yaml": 'version: "2"\n'})

    plan, result = plan_from_sensor(deployed)

    assert result.success, failure_message(result)
    assert (plan.spec.dbt_scope.scope, plan.spec.dbt_scope.selection) == (
        "selective", ("path:models/[*][*]/[*].sql",))
    assert warehouse_materializations(result) == ["jaffle/prod/*"]
    assert deployed.state(plan.plan_id).status is PlanStatus.COMPLETED


def event_log_rows(home: Path) -> list[bytes]:
    rows = []
    for database in home.rglob("*.db"):
        with sqlite3.connect(database) as connection:
            connection.text_factory = bytes
            tables = {name for (name,) in connection.execute("select name from sqlite_master where type='table'")}
            if b"event_logs" in tables:
                rows += [row for (row,) in connection.execute("select event from event_logs")]
    return rows


def test_a_file_name_that_is_not_utf8_is_escaped_and_the_event_log_stays_readable(deployed):
    with open(os.path.join(os.fsencode(deployed.repo.work), b"models/caf\xe9.sql"), "wb") as handle:
        handle.write(b"select 1 as x\n")
    deployed.repo.commit("Add caf\xe9", {".dagctl/config.yaml": 'version: "2"\n'})

    plan, result = plan_from_sensor(deployed)

    assert result.success, failure_message(result)
    assert [change.path for change in plan.spec.files] == [".dagctl/config.yaml", "models/caf\\xe9.sql"]
    assert (plan.spec.dbt_scope.scope, plan.spec.dbt_scope.reason) == (
        "all", "dbt's path: selector cannot select 'models/caf\\\\xe9.sql' exactly, it contains a backslash, a "
        "control character or a byte that is not UTF-8: full build")
    assert plan.status is PlanStatus.PENDING
    rows = event_log_rows(deployed.root / "home")
    assert rows and all(b"\\udc" not in row.lower() for row in rows)
    for row in rows:  # every event decodes strictly, as the webserver and GraphQL read it
        json.loads(row.decode("utf-8"))
    [record] = deployed.instance.fetch_materializations(AssetKey(["dagctl", PROJECT, ENV]), limit=1,
                                                        ascending=False).records
    metadata = record.asset_materialization.metadata
    json.dumps({key: str(value) for key, value in metadata.items()}, ensure_ascii=False).encode("utf-8")


def test_user_controlled_fields_are_bounded_before_they_reach_the_event_log(deployed):
    files = {f"docs/page_{index:04}.md": f"page {index}\n" for index in range(MAX_LISTED_FILES + 500)}
    deployed.repo.commit("x" * 5000, {**files, ".dagctl/config.yaml": 'version: "2"\n'},
                         author="m" * 1000)

    plan, result = plan_from_sensor(deployed)

    assert result.success, failure_message(result)
    assert len(plan.spec.files) == MAX_LISTED_FILES
    assert plan.spec.dbt_scope.reason.endswith(
        f"({MAX_LISTED_FILES + 501} files changed, the first {MAX_LISTED_FILES} are listed)")
    assert plan.spec.commit_message == "x" * 500 + "... [4500 more characters]"
    assert plan.spec.author == "m" * 200 + "... [800 more characters]"


def test_a_huge_version_is_refused_at_the_sensor_with_a_short_reason(deployed):
    deployed.repo.commit("Huge version", {".dagctl/config.yaml": f"version: '{'9' * 1_000_000}'\n"})

    result = deployed.tick(PLAN_SENSOR)

    assert result.skip_message == (
        f"{PROJECT}/{ENV}: .dagctl/config.yaml at commit {deployed.repo.head[:12]}: version: String should have "
        "at most 100 characters")


TOKEN = "tok-planted-7f3a9c-do-not-leak"


@pytest.fixture
def token_protected_remote(deployed) -> Iterator[tuple[str, list[str]]]:
    """The deployed remote served over dumb HTTP, readable only with Basic auth carrying TOKEN."""
    expected = "Basic " + base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()
    seen: list[str] = []

    class Handler(SimpleHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            seen.append(self.headers.get("Authorization", ""))
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(deployed.repo.bare.parent)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/{deployed.repo.bare.name}", seen
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_git_token_is_used_and_never_written_to_storage_logs_or_metadata(
    deployed, token_protected_remote, monkeypatch
):
    url, seen = token_protected_remote
    monkeypatch.setenv("DAGCTL_GIT_TOKEN", TOKEN)
    seeds = deployed.repo.read("seeds/raw_customers.csv") + "101,Tia,Token,2018-01-01\n"
    deployed.repo.commit("One more customer", {"seeds/raw_customers.csv": seeds,
                                               ".dagctl/config.yaml": 'version: "2"\n'})
    run_git(f"--git-dir={deployed.repo.bare}", "update-server-info")  # what a dumb HTTP server serves
    text = build_config_text(url, deployed.storage_dir, {"protected": False})
    deployed.config_path.write_text(text)
    shutil.rmtree(deployed.storage_dir / "mirrors")  # cloned again, through the token
    deployed.runtime = PlanRuntime(deployment=parse_deployment_config(text, source=str(deployed.config_path)),
                                   storage_dir=deployed.storage_dir, config_dir=deployed.root,
                                   clock=deployed.clock)
    deployed.defs = build_definitions(deployed.runtime)

    plan, result = plan_from_sensor(deployed)

    assert result.success, failure_message(result)
    assert deployed.state(plan.plan_id).status is PlanStatus.COMPLETED
    assert warehouse_materializations(result) == ["jaffle/prod/raw_customers"]
    assert any(header.startswith("Basic ") for header in seen)  # the token was really used
    secret = TOKEN.encode()
    leaks = [str(path) for path in deployed.root.rglob("*") if path.is_file() and secret in path.read_bytes()]
    assert leaks == []
    key = AssetKey(["dagctl", PROJECT, ENV])
    records = [*deployed.instance.fetch_materializations(key, limit=1000).records,
               *deployed.instance.fetch_observations(key, limit=1000).records]
    assert records and not [r for r in records if TOKEN in repr(r.event_log_entry)]
    [asset] = [spec for spec in deployed.defs.resolve_all_asset_specs() if spec.key == key]
    assert asset.metadata["repository"] == url


def test_a_selected_file_that_holds_no_node_fails_the_plan_naming_it(deployed):
    deployed.configure(protected=False, dbt_commands=["dbt build"])
    deployed.repo.commit("Properties without a node", {"models/staging/empty.yml": "version: 2\n",
                                                       ".dagctl/config.yaml": 'version: "2"\n'})

    plan, result = plan_from_sensor(deployed)

    assert not result.success
    failed = deployed.state(plan.plan_id)
    assert (failed.status, plan.spec.dbt_scope.selection) == (PlanStatus.FAILED, ("path:models/staging/empty.yml",))
    assert "The selection criterion 'path:models/staging/empty.yml' does not match any enabled nodes" in (
        failed.reason)
    assert warehouse_materializations(result) == []


# A space in a folder, not in the model's name: dbt refuses a model named with a space at parse, and the
# plan then fails at explain, like every project error (tests/defs/test_dbt_impact.py).
@pytest.mark.parametrize("name", ["models/my folder/model.sql", "models/two\nlines.sql", "models/a,b.sql"])
def test_a_file_name_without_an_exact_selection_plans_a_full_build_naming_it(deployed, name):
    deployed.repo.commit("Odd name", {name: "select 1 as x\n", ".dagctl/config.yaml": 'version: "2"\n'})

    plan, result = plan_from_sensor(deployed)

    assert result.success, failure_message(result)
    assert (plan.status, plan.spec.dbt_scope.scope, plan.spec.commands) == (
        PlanStatus.PENDING, "all", (("dbt", "seed", "--target", "prod"),))
    assert plan.spec.dbt_scope.reason.startswith(f"dbt's path: selector cannot select {name!r} exactly, ")
