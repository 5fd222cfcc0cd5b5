"""The step guard: a command gets exactly the variables it is given, and its whole process tree dies with
its launcher. Real processes throughout; deaths are awaited on pidfds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from fixtures.processes import wait_for_exit

from dagctl_dagster.runner.step_guard import build_guard_argv, is_group_alive

# A launcher (a run worker's stand-in) that starts a guarded command and waits for it.
LAUNCHER = """
import subprocess, sys
from dagctl_dagster.runner.step_guard import build_guard_argv
sys.exit(subprocess.call(build_guard_argv(sys.argv[2:], keep=["PATH"], record=sys.argv[1])))
"""


def test_the_command_gets_only_the_kept_variables_and_prefixes() -> None:
    environ = {"PATH": os.environ["PATH"], "DBT_PROFILES_DIR": "/p", "DAGSTER_PIPES_CONTEXT": "ctx",
               "DAGCTL_GIT_TOKEN": "token", "DAGCTL_APPROVER_SECRET_ALICE": "secret"}
    argv = build_guard_argv(["env"], keep=["PATH", "DBT_PROFILES_DIR", "NOT_SET"], keep_prefixes=["DAGSTER_PIPES_"])

    output = subprocess.run(argv, env=environ, capture_output=True, text=True, check=True).stdout

    assert dict(line.split("=", 1) for line in output.splitlines()) == {
        "PATH": os.environ["PATH"], "DBT_PROFILES_DIR": "/p", "DAGSTER_PIPES_CONTEXT": "ctx"}


def test_the_guard_exits_with_the_commands_code_or_128_plus_its_signal() -> None:
    assert subprocess.run(build_guard_argv(["sh", "-c", "exit 3"], keep=["PATH"])).returncode == 3
    assert subprocess.run(build_guard_argv(["sh", "-c", "kill -TERM $$"], keep=["PATH"])).returncode == 143


def test_a_missing_command_exits_127_naming_it() -> None:
    result = subprocess.run(build_guard_argv(["no-such-dbt"], keep=["PATH"]), capture_output=True, text=True)

    assert (result.returncode, result.stderr) == (
        127, "dagctl: cannot start 'no-such-dbt': No such file or directory\n")


def test_a_command_whose_launcher_is_already_gone_never_starts(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    argv = build_guard_argv(["touch", str(marker)], keep=["PATH"], parent=1)  # not our parent

    assert subprocess.run(argv).returncode == 137
    assert not marker.exists()


def test_a_cancellation_is_forwarded_to_the_command(tmp_path: Path) -> None:
    guard = subprocess.Popen(build_guard_argv(["sh", "-c", "echo started; exec sleep 600"], keep=["PATH"]),
                             stdout=subprocess.PIPE, text=True)
    assert guard.stdout.readline() == "started\n"

    guard.send_signal(signal.SIGINT)  # what dagster-dbt and dagster-pipes send when a run is terminated

    assert guard.wait() == 128 + signal.SIGINT


def test_the_whole_process_tree_dies_with_its_launcher(tmp_path: Path) -> None:
    record_file = tmp_path / "record.json"
    # The command leaves a grandchild in the background and waits for it.
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, str(record_file), "sh", "-c", "sleep 600 & echo $!; wait"],
        stdout=subprocess.PIPE, text=True)
    try:
        grandchild = int(launcher.stdout.readline())
        record = json.loads(record_file.read_text())
        assert record["argv"] == ["sh", "-c", "sleep 600 & echo $!; wait"]
        assert os.getpgid(grandchild) == record["pgid"]

        launcher.send_signal(signal.SIGKILL)  # the run worker dies without a chance to clean up
        launcher.wait()

        assert wait_for_exit([record["guard_pid"], record["pgid"], grandchild], timeout=30) == []
        assert not is_group_alive(record["pgid"])
    finally:
        launcher.kill()
