"""Nothing of a step outlives its run: a killed run worker takes its dbt process tree with it, and a dead
run's plan is recorded `failed` only once nothing of its execution still runs.

The worker is a real process (a Python interpreter running `run_dbt_step` in an op context) running real
dbt on DuckDB; it is killed with SIGKILL, as the kernel's OOM killer or a node loss would. The deaths are
awaited on pidfds (no polling, no sleeps).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import run_requests
from dagster import build_run_status_sensor_context
from fixtures.git_repos import DBT_PROFILES
from fixtures.processes import read_fifo_line, wait_for_exit

from dagctl_dagster.core.lifecycle import PlanStatus
from dagctl_dagster.defs.local_backend import STEP_RECORD, stop_run_steps
from dagctl_dagster.runner.step_guard import build_guard_argv, is_group_alive

# A model that announces it started (on a FIFO the test reads), then runs for two minutes.
SLOW_MODEL = '''
import os, pathlib, time

def model(dbt, session):
    dbt.config(materialized="table")
    folder = pathlib.Path(os.environ["DAGCTL_WAREHOUSE_DIR"])
    with open(folder / "started.fifo", "w") as fifo:
        fifo.write(f"{os.getpid()}\\n")
    time.sleep(120)
    (folder / "slow.finished").write_text("the model ran to its end")
    return session.sql("select 1 as n")
'''
WORKER = '''
import sys
from pathlib import Path
from dagster import build_op_context
from dagctl_dagster.core.steps import StepSpec
from dagctl_dagster.defs.dbt_steps import PlanDbtTranslator, run_dbt_step

project, profiles, target = sys.argv[1:4]
step = StepSpec(name="execute-0", argv=("dbt", "build", "--target", "dev"), working_dir=project,
                env={"DBT_PROFILES_DIR": profiles}, pass_env=("DAGCTL_WAREHOUSE_DIR",))
for _ in run_dbt_step(build_op_context(), step, translator=PlanDbtTranslator("slow", "dev"),
                      target_path=Path(target)):
    pass
'''


def test_a_run_worker_killed_mid_dbt_build_leaves_no_step_process_running(tmp_path: Path) -> None:
    project = tmp_path / "slow"
    (project / "models").mkdir(parents=True)
    (project / "dbt_project.yml").write_text(
        "name: slow\nversion: '1.0.0'\nconfig-version: 2\nprofile: jaffle\nmodel-paths: [models]\n")
    (project / "models" / "slow.py").write_text(SLOW_MODEL)
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    os.mkfifo(warehouse / "started.fifo")
    step_dir = tmp_path / "runs" / "r1" / "execute-0"
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(project), str(DBT_PROFILES), str(step_dir)],
        env={**os.environ, "DAGCTL_WAREHOUSE_DIR": str(warehouse)},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        model_pid = int(read_fifo_line(warehouse / "started.fifo", timeout=180) or 0)
        assert model_pid, "the slow model never started"
        record = json.loads((step_dir / STEP_RECORD).read_text())
        assert record["pgid"] == model_pid  # dbt runs the Python model in its own process, the group leader

        worker.send_signal(signal.SIGKILL)
        worker.wait()

        assert wait_for_exit([record["guard_pid"], model_pid], timeout=60) == []
        assert not is_group_alive(record["pgid"])
        assert stop_run_steps(tmp_path / "runs" / "r1") == []
        assert not (warehouse / "slow.finished").exists()
    finally:
        worker.kill()


def test_a_dead_runs_plan_is_failed_only_once_its_leftover_step_processes_are_killed(deployed) -> None:
    deployed.commit_change()
    plan_id = deployed.explain().plan_id
    deployed.approve(plan_id, "alice")
    assert run_requests(deployed.tick())  # the plan is approved; its execution run is made by hand below
    run = deployed.start_execution_run(plan_id)
    # A step process of that run still running (its launcher, this test, is alive: the guard stays).
    step_dir = deployed.runtime.run_dir(run.run_id) / "execute-0"
    step_dir.mkdir(parents=True)
    guard = subprocess.Popen(build_guard_argv(["sh", "-c", "echo started; exec sleep 600"], keep=["PATH"],
                                              record=str(step_dir / STEP_RECORD)), stdout=subprocess.PIPE, text=True)
    try:
        assert guard.stdout.readline() == "started\n"  # the guard records a command before it starts it
        record = json.loads((step_dir / STEP_RECORD).read_text())
        ended = deployed.instance.report_run_failed(deployed.instance.get_run_by_id(run.run_id))

        deployed.defs.resolve_sensor_def("dagctl_run_failure_sensor")(build_run_status_sensor_context(
            sensor_name="dagctl_run_failure_sensor", dagster_event=ended, dagster_instance=deployed.instance,
            dagster_run=deployed.instance.get_run_by_id(run.run_id)))

        assert not is_group_alive(record["pgid"])
        guard.wait()
        plan = deployed.state(plan_id)
        assert (plan.status, plan.reason) == (PlanStatus.FAILED, (
            f"run {run.run_id[:8]} failed before the plan finished (e.g. the run worker died); its step(s) "
            "execute-0 still ran and were killed"))
    finally:
        guard.kill()
        guard.wait()



def test_a_record_whose_pids_now_belong_to_other_processes_kills_nothing(tmp_path: Path) -> None:
    # A process group that is not the step's: same ids as in the (old) record, another start time.
    other = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        step_dir = tmp_path / "runs" / "r1" / "execute-0"
        step_dir.mkdir(parents=True)
        (step_dir / STEP_RECORD).write_text(json.dumps({
            "argv": ["dbt", "build"], "pgid": other.pid, "guard_pid": other.pid,
            "pgid_start": "1", "guard_start": "1"}))

        assert stop_run_steps(tmp_path / "runs" / "r1") == []
        assert other.poll() is None and is_group_alive(other.pid)
    finally:
        other.kill()
        other.wait()
