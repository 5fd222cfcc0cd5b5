"""The guard in front of every local step process: a declared environment, and no life after its launcher.

    python -m dagctl_dagster.runner.step_guard --parent PID --keep NAME ... [--keep-prefix P ...]
        [--record FILE] -- COMMAND [ARGS...]

The guard runs COMMAND with exactly the variables named by `--keep` (and those starting with a
`--keep-prefix`, e.g. `DAGSTER_PIPES_`) from the environment it was given, and nothing else: a launcher
that cannot choose its child's environment (dagster-pipes' subprocess client adds the whole environment of
the run worker) still cannot hand the code location's secrets to project code. COMMAND runs in its own
process group, so the step's whole process tree can be killed at once:

- when the launcher dies (even by SIGKILL), the kernel signals the guard (Linux `PR_SET_PDEATHSIG`), which
  kills COMMAND's process group and exits: nothing of the step outlives the run worker;
- SIGINT and SIGTERM are forwarded to the process group (dagster-dbt forwards a run's cancellation as
  SIGINT; dbt then stops cleanly);
- when COMMAND exits, whatever it left running in its group is killed.

`--record FILE` writes `{"argv": [...], "pgid": N, "guard_pid": N, ...start times}` before COMMAND starts:
the exact argv the step was started with, and the group a supervisor checks (`is_group_alive`) before it
declares the step over (the start times tell a reused pid from the step's own). The guard exits with
COMMAND's exit code (128 + N when a signal N ended it). It imports only the standard library and writes
nothing to stdout, so COMMAND's output (dbt's JSON log lines) passes through untouched.

One step's work runs outside COMMAND's group: a dbt parse served by the resident parse server
(`runner.dbt_parse_server`) runs in a child of that server. COMMAND is then the server's client, and the
child kills its own group as soon as the client's connection closes, however the client ended.

Linux only (`prctl`, `/proc`). The launcher must start the guard from a thread that lives as long as the
step (the kernel signals the guard when that thread ends): the backends wait for their steps in the
thread that started them.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import signal
import sys
from collections.abc import Sequence

PR_SET_PDEATHSIG = 1
EXIT_LAUNCHER_GONE = 137
EXIT_NOT_FOUND = 127


def _set_parent_death_signal(sig: int) -> None:
    """Asks Linux to send `sig` to this process when the thread that started it exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def get_start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot), or None if there is no such process: with
    the pid, it names one process for good, where a pid alone may be reused by another."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as file:
            return file.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def is_running(pid: int, start_time: str | None) -> bool:
    """Whether the process that started at `start_time` as `pid` still runs (not a zombie)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as file:
            fields = file.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return len(fields) > 19 and fields[19] == start_time and fields[0] != "Z"


def kill_group(pgid: int, sig: int = signal.SIGKILL) -> None:
    """Signals every process of the group; a group that is already gone is fine."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def is_group_alive(pgid: int) -> bool:
    """Whether a process of the group still runs (a zombie, which runs nothing, does not count)."""
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs: ask the kernel, zombies included
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        return True
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # After the command name: state, ppid, pgrp, ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def build_guard_argv(argv: Sequence[str], *, keep: Sequence[str], keep_prefixes: Sequence[str] = (),
                     record: str | None = None, parent: int | None = None) -> list[str]:
    """The command line that runs `argv` behind the guard, for the launcher process `parent` (default: us).

    Example: `build_guard_argv(["dbt", "build"], keep=["PATH", "HOME"])` ->
    `[python, "-P", "-m", "dagctl_dagster.runner.step_guard", "--parent", "4242", "--keep", "PATH", "--keep",
    "HOME", "--", "dbt", "build"]`.
    """
    guard = [sys.executable, "-P", "-m", "dagctl_dagster.runner.step_guard",
             "--parent", str(parent if parent is not None else os.getpid())]
    for name in sorted(keep):
        guard += ["--keep", name]
    for prefix in keep_prefixes:
        guard += ["--keep-prefix", prefix]
    if record:
        guard += ["--record", record]
    return [*guard, "--", *argv]


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dagctl_dagster.runner.step_guard")
    parser.add_argument("--parent", type=int, required=True, help="pid of the launcher this step dies with")
    parser.add_argument("--keep", action="append", default=[], help="variable passed to the command")
    parser.add_argument("--keep-prefix", action="append", default=[], help="prefix of variables passed")
    parser.add_argument("--record", help="file that receives the started argv and process group")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(list(argv))
    if args.command[:1] == ["--"]:
        args.command = args.command[1:]
    if not args.command:
        parser.error("give the command after '--'")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    keep, prefixes = set(args.keep), tuple(args.keep_prefix)
    environ = {name: value for name, value in os.environ.items() if name in keep or name.startswith(prefixes)}
    # SIGTERM at the launcher's death; checked right after, in case it died before prctl took effect.
    _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != args.parent:
        return EXIT_LAUNCHER_GONE
    child = _Child()

    def on_signal(signum: int, _frame) -> None:
        if os.getppid() != args.parent:  # the launcher died: nothing of the step may outlive it
            if child.pid:
                kill_group(child.pid)
            os._exit(EXIT_LAUNCHER_GONE)
        if child.pid:
            kill_group(child.pid, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    release, hold = os.pipe()
    pid = os.fork()
    if pid == 0:
        _exec_child(args.command, environ, release, hold)
    with contextlib.suppress(OSError):  # also here: the child may not have run yet
        os.setpgid(pid, pid)
    child.pid = pid
    os.close(release)
    try:
        if args.record:
            with open(args.record, "w", encoding="utf-8") as file:
                json.dump({"argv": args.command, "pgid": child.pid, "guard_pid": os.getpid(),
                           "pgid_start": get_start_time(child.pid), "guard_start": get_start_time(os.getpid())},
                          file)
    finally:
        os.close(hold)  # the command starts now
    code = child.wait()
    kill_group(child.pid)  # what the command left behind in its group
    return code


class _Child:
    pid = 0

    def wait(self) -> int:
        """The command's exit code, 128 + N if signal N ended it (interrupted waits are resumed)."""
        _, status = os.waitpid(self.pid, 0)
        return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _exec_child(command: Sequence[str], environ: dict[str, str], release: int, hold: int) -> None:
    """In the forked child: its own process group, killed if the guard dies (even by SIGKILL), held until
    the guard has recorded it (a started command is always on record), then replaced by the command."""
    try:
        os.close(hold)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        os.setpgid(0, 0)
        _set_parent_death_signal(signal.SIGKILL)
        os.read(release, 1)
        os.close(release)
        os.execvpe(command[0], list(command), environ)
    except OSError as exc:
        os.write(2, f"dagctl: cannot start '{command[0]}': {exc.strerror}\n".encode())
    finally:
        os._exit(EXIT_NOT_FOUND)


if __name__ == "__main__":
    sys.exit(main())
