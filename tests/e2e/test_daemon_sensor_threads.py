"""A hung Git remote does not hold back another project's plans under a live `dagster-daemon`.

The repository's `dagster.yaml` sets `sensors: use_threads: true`. This test starts a real daemon with two
projects: `stuck`, whose remote accepts connections and never answers (its `git ls-remote` hangs for the
whole test: `git_timeout_seconds` and the daemon's gRPC timeout are both longer than the test), and `jaffle`,
a normal remote. While the stuck project's first tick has started and not ended, the daemon must already have
requested jaffle's plan. A daemon that evaluated sensors one after another would wait on the stuck tick first.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from contextlib import ExitStack

import pytest
from conftest import REPO_ROOT, VENV_BIN, _process_env, build_jaffle_repository, process_group
from dagster import DagsterInstance, RunsFilter
from dagster._core.scheduler.instigation import TickStatus
from fixtures.silent_server import serve_silently

CONFIG = """\
storage_dir: {storage}
projects:
  - name: stuck
    framework: dbt
    repository: http://127.0.0.1:{port}/stuck.git
    sensor_interval_seconds: 5
    git_timeout_seconds: 900
    environments: [{{name: dev}}]
  - name: jaffle
    framework: dbt
    repository: {repository}
    sensor_interval_seconds: 5
    dbt:
      profiles_dir: {profiles}
    environments: [{{name: dev}}]
"""
DEADLINE_SECONDS = 240.0


def sensor_ticks(instance: DagsterInstance, sensor_name: str):
    states = [s for s in instance.all_instigator_state() if s.name == sensor_name]
    return [tick for state in states for tick in instance.get_ticks(state.instigator_origin_id, state.selector_id)]


def test_a_hung_remote_does_not_delay_another_projects_plan(tmp_path):
    repository = build_jaffle_repository(tmp_path / "jaffle")
    home, warehouse, logs = tmp_path / "home", tmp_path / "warehouse", tmp_path / "logs"
    for folder in (home, warehouse, logs):
        folder.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    with ExitStack() as stack:
        port = stack.enter_context(serve_silently())
        config = tmp_path / "dagctl.yaml"
        config.write_text(CONFIG.format(storage=tmp_path / "storage", port=port, repository=repository,
                                        profiles=REPO_ROOT / "examples" / "dbt_profiles"))
        env = {**_process_env(home, config, warehouse), "DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS": "900"}
        subprocess.run([str(VENV_BIN / "dagster"), "instance", "migrate"], env=env, cwd=REPO_ROOT, check=True,
                       capture_output=True, timeout=300)
        daemon = stack.enter_context(process_group(
            [str(VENV_BIN / "dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
            env=env, log=logs / "daemon.log"))
        instance = stack.enter_context(DagsterInstance.from_config(str(home)))

        deadline = time.monotonic() + DEADLINE_SECONDS
        jaffle_runs = []
        while not jaffle_runs:
            if daemon.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no plan run for jaffle (daemon exit code {daemon.poll()}):\n"
                            f"{(logs / 'daemon.log').read_text()[-4000:]}")
            jaffle_runs = instance.get_runs(RunsFilter(job_name="jaffle_plan_job"))
            time.sleep(0.5)  # polling the instance: the daemon is another process
        stuck_ticks = sensor_ticks(instance, "stuck_plan_sensor")
        run_created = instance.get_run_record_by_id(jaffle_runs[-1].run_id).create_timestamp.timestamp()

    assert stuck_ticks, "the stuck project's sensor had started a tick"
    first = min(stuck_ticks, key=lambda tick: tick.timestamp)
    assert first.timestamp < run_created
    assert first.status is TickStatus.STARTED  # still waiting on the hung remote when jaffle's plan was requested
