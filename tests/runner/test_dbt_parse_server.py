"""The resident dbt parse server, run as the parse step runs it: `python -m dagctl_dagster.runner.dbt_parse
--server NAME` in a process of its own, on copies of the example project, with real dbt on DuckDB.

Every server name here ends with the session's scope (tests/conftest.py stops those servers at the end).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagctl_dagster.adapters.dbt_manifest import read_parsed_graph
from dagctl_dagster.runner.dbt_parse_server import SCOPE_VARIABLE, build_address, get_server_pid

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FALLBACK = "dbt parse server unavailable, parsing in this process: "
DEADLINE = 120.0


def new_server_name() -> str:
    return f"{uuid.uuid4().hex[:8]}-{os.environ[SCOPE_VARIABLE]}"  # the session's scope (tests/conftest.py)


def step_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment a parse step gets (the allowlist and what it declares)."""
    return {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DAGCTL_WAREHOUSE_DIR": str(tmp_path),
            "DBT_PROFILES_DIR": str(EXAMPLES / "dbt_profiles"), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
            **extra}


def copy_project(tmp_path: Path, name: str) -> Path:
    project = tmp_path / name
    shutil.copytree(EXAMPLES / "jaffle_dbt", project, ignore=shutil.ignore_patterns("target", "logs"))
    return project


def parse_argv(project: Path, target: Path, server: str | None) -> list[str]:
    return [sys.executable, "-m", "dagctl_dagster.runner.dbt_parse", "--project-dir", str(project),
            "--target-path", str(target), "--target", "dev", "--output", str(target.with_suffix(".json")),
            *(["--server", server, "--server-idle", "60"] if server else [])]


def run_parse(project: Path, target: Path, env: dict[str, str], server: str | None = None
              ) -> tuple[dict, subprocess.CompletedProcess]:
    process = subprocess.run(parse_argv(project, target, server), env=env, cwd=project, capture_output=True,
                             text=True, check=True)
    return json.loads(target.with_suffix(".json").read_text()), process


def seeded(target: Path, source: Path) -> Path:
    target.mkdir()
    shutil.copy2(source / "partial_parse.msgpack", target / "partial_parse.msgpack")
    return target


def wait_for_exit(pid: int) -> bool:
    """Whether process `pid` exited within the deadline (its pidfd becomes readable when it does)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        return bool(select.select([fd], [], [], DEADLINE)[0])
    finally:
        os.close(fd)


def without_seconds(result: dict) -> dict:
    return {key: value for key, value in result.items() if key != "seconds"}


def test_a_parse_through_the_server_equals_the_in_process_parse_cold_and_partial(tmp_path):
    project, env, name = copy_project(tmp_path, "jaffle"), step_env(tmp_path), new_server_name()
    plain, _ = run_parse(project, tmp_path / "plain", env)
    served, process = run_parse(project, tmp_path / "served", env, name)
    assert FALLBACK not in process.stderr
    assert without_seconds(served) == without_seconds(plain) == {"outcome": "parsed", "mode": "cold"}
    cold_hash = read_parsed_graph(tmp_path / "plain").content_hash()
    assert read_parsed_graph(tmp_path / "served").content_hash() == cold_hash

    partial, _ = run_parse(project, seeded(tmp_path / "partial", tmp_path / "served"), env, name)
    assert (partial["mode"], partial["files_changed"]) == ("partial", 0)
    assert read_parsed_graph(tmp_path / "partial").content_hash() == cold_hash


def test_no_server_running_starts_one_that_the_next_client_reuses(tmp_path):
    project, env, name = copy_project(tmp_path, "jaffle"), step_env(tmp_path), new_server_name()
    assert get_server_pid(name) is None
    assert run_parse(project, tmp_path / "first", env, name)[0]["outcome"] == "parsed"
    server = get_server_pid(name)
    assert server is not None and os.getsid(server) == server  # its own session: no step's group holds it
    assert run_parse(project, tmp_path / "second", env, name)[0]["outcome"] == "parsed"
    assert get_server_pid(name) == server
    # The long-lived process never got a step's variables: its environment is its own minimal one.
    environ = dict(entry.split("=", 1) for entry in
                   Path(f"/proc/{server}/environ").read_bytes().decode().split("\0") if "=" in entry)
    assert "DBT_PROFILES_DIR" not in environ and "DAGCTL_WAREHOUSE_DIR" not in environ


def test_a_request_does_not_see_the_variables_of_the_request_before(tmp_path):
    """The profile reads `env_var('DAGCTL_WAREHOUSE_DIR')`: set for the first request only."""
    name = new_server_name()
    first, _ = run_parse(copy_project(tmp_path, "one"), tmp_path / "one_target", step_env(tmp_path), name)
    assert first["outcome"] == "parsed"
    env = step_env(tmp_path)
    del env["DAGCTL_WAREHOUSE_DIR"]
    second, process = run_parse(copy_project(tmp_path, "two"), tmp_path / "two_target", env, name)
    assert FALLBACK not in process.stderr
    assert second["outcome"] == "environment_error"
    assert "Env var required but not provided: 'DAGCTL_WAREHOUSE_DIR'" in second["message"]


def test_the_childs_output_reaches_the_clients_stdout(tmp_path):
    project = copy_project(tmp_path, "jaffle")
    (project / "models" / "printing.sql").write_text('{{ print("printed while dbt parses") }}\nselect 1 as id\n')
    result, process = run_parse(project, tmp_path / "target", step_env(tmp_path), new_server_name())
    assert result["outcome"] == "parsed"
    assert "printed while dbt parses" in process.stdout


def build_blocking_git_project(tmp_path: Path) -> tuple[Path, Path, Path]:
    """The example project with a git package, and a folder holding a `git` that tells its pid through a FIFO
    (returned third) and blocks: `dbt deps` hangs in it until it is killed."""
    tools, fifo = tmp_path / "tools", tmp_path / "git.pid"
    tools.mkdir()
    os.mkfifo(fifo)
    (tools / "git").write_text(f'#!/bin/sh\necho $$ > "{fifo}"\nexec sleep 600\n')
    (tools / "git").chmod(0o755)
    project = copy_project(tmp_path, "jaffle")
    (project / "packages.yml").write_text('packages:\n  - git: "https://example.invalid/money.git"\n'
                                          '    revision: main\n')
    return project, tools, fifo


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_stopping_the_client_stops_the_parse_it_asked_for(tmp_path, sig):
    """A `git` on the request's PATH that dbt deps runs and that blocks: it tells its pid through a FIFO.
    SIGINT is what the step guard forwards when a run is cancelled; SIGKILL, what it sends when the run
    worker dies."""
    project, tools, fifo = build_blocking_git_project(tmp_path)
    env = step_env(tmp_path, PATH=f"{tools}:{os.environ['PATH']}")
    name = new_server_name()
    client = subprocess.Popen(parse_argv(project, tmp_path / "target", name), env=env, cwd=project,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with open(fifo) as told:  # blocks until the fake git runs
            git = int(told.read())
        child = int(Path(f"/proc/{git}/stat").read_text().rsplit(")", 1)[1].split()[1])
        server = get_server_pid(name)
        assert child not in (client.pid, server)
    finally:
        client.send_signal(sig)
        client.wait()
    assert wait_for_exit(child) and wait_for_exit(git)
    assert get_server_pid(name) == server  # the server keeps serving
    assert FALLBACK not in client.stderr.read()


def test_a_child_that_dies_without_an_exit_code_leaves_the_parse_to_the_client(tmp_path):
    """The blocking `git` again: its parent, the server's child, is killed; the client parses itself (and runs
    dbt deps, so the fake git a second time, now the client's own child)."""
    project, tools, fifo = build_blocking_git_project(tmp_path)
    name = new_server_name()
    client = subprocess.Popen(parse_argv(project, tmp_path / "target", name), cwd=project,
                              env=step_env(tmp_path, PATH=f"{tools}:{os.environ['PATH']}"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        with open(fifo) as told:
            served_git = int(told.read())
        child = int(Path(f"/proc/{served_git}/stat").read_text().rsplit(")", 1)[1].split()[1])
        os.killpg(child, signal.SIGKILL)  # the child and its git
        with open(fifo) as told:  # the client's own parse reached dbt deps
            own_git = int(told.read())
        assert int(Path(f"/proc/{own_git}/stat").read_text().rsplit(")", 1)[1].split()[1]) == client.pid
    finally:
        os.killpg(client.pid, signal.SIGKILL)  # the client and its own git
        client.wait()
    assert (f"{FALLBACK}the dbt parse server {name} ended the parse without an exit code"
            in client.stderr.read())


def test_a_name_held_by_another_uid_is_never_sent_anything_and_the_parse_runs_in_process(tmp_path):
    if os.getuid() != 0 or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root (to listen as another uid) and /usr/bin/python3")
    name = new_server_name()
    squatter = subprocess.Popen(
        ["/usr/bin/python3", "-c", "import socket, sys\n"
         f"s = socket.socket(socket.AF_UNIX); s.bind({build_address(name)!r}); s.listen(); print('ready', flush=True)\n"
         "c, _ = s.accept(); data = b''\n"
         "while chunk := c.recv(4096): data += chunk\n"
         "print(len(data), flush=True)"],
        user=65534, cwd="/", stdout=subprocess.PIPE, text=True)
    try:
        assert squatter.stdout.readline() == "ready\n"
        result, process = run_parse(copy_project(tmp_path, "jaffle"), tmp_path / "target", step_env(tmp_path), name)
        assert result["outcome"] == "parsed"
        assert f"{FALLBACK}the socket of dbt parse server {name} belongs to process {squatter.pid} of uid 65534" \
            in process.stderr
        assert squatter.stdout.readline() == "0\n"  # it received nothing: no argv, no environment
    finally:
        squatter.kill()
        squatter.wait()


def test_the_server_closes_a_connection_from_another_uid_without_reading_it(tmp_path):
    if os.getuid() != 0 or not Path("/usr/bin/python3").exists():
        pytest.skip("needs root (to connect as another uid) and /usr/bin/python3")
    name = new_server_name()
    assert run_parse(copy_project(tmp_path, "jaffle"), tmp_path / "target", step_env(tmp_path), name)[0][
        "outcome"] == "parsed"
    stranger = subprocess.run(
        ["/usr/bin/python3", "-c", "import socket\n"
         f"s = socket.socket(socket.AF_UNIX); s.connect({build_address(name)!r})\n"
         "try:\n    s.sendall(b'{}' * 1000); print(repr(s.recv(4096)))\n"
         "except OSError as error:\n    print(type(error).__name__)"],
        user=65534, cwd="/", capture_output=True, text=True, timeout=DEADLINE)
    # Closed at once, its request unread: closed before it was sent (a broken pipe), or with it unread (a reset:
    # the kernel drops unread data); never an answer.
    assert stranger.stdout in ("ConnectionResetError\n", "BrokenPipeError\n"), stranger.stderr
    assert run_parse(copy_project(tmp_path, "again"), tmp_path / "again_target", step_env(tmp_path), name)[0][
        "outcome"] == "parsed"


def test_a_server_that_refuses_connections_leaves_the_parse_in_process_with_the_reason(tmp_path):
    """The name is bound by a socket that never listens: connecting is refused, and the server the client
    starts finds the name taken."""
    name = new_server_name()
    with socket.socket(socket.AF_UNIX) as bound:
        bound.bind(build_address(name))
        result, process = run_parse(copy_project(tmp_path, "jaffle"), tmp_path / "target", step_env(tmp_path),
                                    name)
    assert result["outcome"] == "parsed"
    assert f"{FALLBACK}[Errno 111] Connection refused" in process.stderr


@contextlib.contextmanager
def ready_server(name: str, idle_seconds: float) -> Iterator[subprocess.Popen]:
    """A server started by hand, once it said `ready`; killed (if still alive) on leaving."""
    ready_r, ready_w = os.pipe()
    server = subprocess.Popen([sys.executable, "-m", "dagctl_dagster.runner.dbt_parse_server", "--name", name,
                               "--idle-seconds", str(idle_seconds), "--ready-fd", str(ready_w)], pass_fds=(ready_w,))
    os.close(ready_w)
    try:
        assert os.read(ready_r, 16) == b"ready"
        yield server
    finally:
        os.close(ready_r)
        server.kill()
        server.wait()


def test_an_idle_server_exits(tmp_path):
    name = new_server_name()
    with ready_server(name, 0.5) as server:
        assert server.wait(timeout=DEADLINE) == 0
    assert get_server_pid(name) is None


def test_sigterm_stops_a_server(tmp_path):
    name = new_server_name()
    with ready_server(name, 600) as server:
        assert get_server_pid(name) == server.pid
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=DEADLINE) == -signal.SIGTERM
    assert get_server_pid(name) is None
