"""A resident process that has imported dbt, forking one child per parse: dbt's parse without its start-up.

    python -m dagctl_dagster.runner.dbt_parse_server --name NAME --idle-seconds N [--ready-fd FD]
    python -m dagctl_dagster.runner.dbt_parse_server --stop [--scope SCOPE]

A plain parse step spends a third of a warm parse importing dbt. The server imports dbt and
`runner.dbt_parse` once, and never runs dbt itself: dbt leaves threads behind, and a
process with threads cannot fork safely (the copies of their held locks deadlock the child): the server
checks that it has no thread but its own before every fork, else the client parses itself. For every
request it forks first, so the parse runs in a child that starts with dbt already imported:

- The server listens on a Unix socket in the abstract namespace (`build_address`: no file, no stale path),
  checks the connecting process's uid (`SO_PEERCRED`; another uid is closed at once) and forks. It never
  reads a request: the step's variables (its secrets) never enter the long-lived process, which runs with
  a minimal environment of its own (`build_server_env`).
- The child leaves the server's session, receives the request (argv, environment, working directory) and
  the client's stdout and stderr, takes that environment as its whole environment, runs
  `dbt_parse.main(argv)` and sends its exit code back. A watchdog thread waits on the connection: when the
  client goes away (its run was cancelled, its guard killed it), the child kills its own process group.
- The client is the parse step itself (`dbt_parse --server NAME`, `run_through_server`): it checks that the
  server runs as its own uid too (a squatter on the name is never sent anything), starts a server when none
  answers, and parses in its own process, saying why on stderr, whenever the server path fails.

A server exits after `--idle-seconds` without a request (its children are on their own by then) and on
SIGTERM. Its name (`get_server_name`) is a hash of what its code is made of (the interpreter, our runner
modules, dbt's version and the site-packages holding dbt): edited code or a new install gets a new server,
and the old one idles out. Linux only (`SO_PEERCRED`, abstract sockets, `/proc/net/unix`).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import gc
import hashlib
import importlib
import json
import os
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path

ADDRESS_PREFIX = "dagctl-dbt-parse"
SCOPE_VARIABLE = "DAGCTL_DBT_PARSE_SERVER_SCOPE"
# What the server imports before it serves: everything a parse needs that does not depend on the project.
DBT_MODULES = ("dbt.cli.main", "dbt.parser.manifest", "dbt.task.list")
# The server's own environment, from its starter's: never a step's variables.
SERVER_ENV_NAMES = ("PATH", "HOME", "LANG", "LANGUAGE", "TMPDIR", "PYTHONPATH")
READY_TIMEOUT = 120.0
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_LENGTH = struct.Struct("!I")


def get_server_name(environ: Mapping[str, str] | None = None) -> str:
    """The name of the server that runs this code: a short hash of the interpreter, our runner modules, dbt's
    version file and the site-packages folder holding dbt (its modification time changes when packages are
    installed), then the scope in `DAGCTL_DBT_PARSE_SERVER_SCOPE` when set.

    Example: `get_server_name()` -> `"3f2a9c1d0b4e5f60"`; with the scope `t1`, `"3f2a9c1d0b4e5f60-t1"`.
    """
    environ = os.environ if environ is None else environ
    here = Path(__file__).resolve().parent
    parts = [sys.executable, sys.version]
    dbt_version = next((Path(entry) / "dbt" / "version.py" for entry in sys.path
                        if entry and (Path(entry) / "dbt" / "version.py").is_file()), None)
    for path in (here / "dbt_parse.py", here / "dbt_parse_server.py", dbt_version,
                 dbt_version.parent.parent if dbt_version else None):
        with contextlib.suppress(OSError, TypeError):
            stat = os.stat(path)
            parts.append(f"{path}:{stat.st_mtime_ns}:{stat.st_size}")
    name = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    scope = re.sub(r"[^A-Za-z0-9_.-]", "_", environ.get(SCOPE_VARIABLE, ""))[:40]
    return f"{name}-{scope}" if scope else name


def build_address(name: str) -> str:
    """The server's socket in the abstract namespace, per uid. Example: `"\\0dagctl-dbt-parse-1000-<name>"`."""
    return f"\0{ADDRESS_PREFIX}-{os.getuid()}-{name}"


def build_server_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The server's whole environment: what any process needs to run Python, never a step's variables."""
    env = {key: value for key, value in environ.items()
           if key in SERVER_ENV_NAMES or key.startswith("LC_")}
    return {**env, "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}


def get_peer(sock: socket.socket) -> tuple[int, int]:
    """`(pid, uid)` of the process at the other end of a connected Unix socket (for a client: the process
    that listens)."""
    pid, uid, _ = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid


def connect(name: str) -> socket.socket:
    """A connection to server `name`, checked to run as our uid. Raises `ConnectionError` (refused: no
    server) or `PermissionError` (another uid holds the name)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(build_address(name))
        pid, uid = get_peer(sock)
        if uid != os.getuid():
            raise PermissionError(f"the socket of dbt parse server {name} belongs to process {pid} of uid {uid}")
    except BaseException:
        sock.close()
        raise
    return sock


def get_server_pid(name: str) -> int | None:
    """The pid of the server listening as `name`, or `None` when none does."""
    try:
        with connect(name) as sock:
            return get_peer(sock)[0]
    except OSError:
        return None


def list_server_names(scope: str | None = None) -> list[str]:
    """The names of this uid's servers (those of `scope` only, when given), from `/proc/net/unix`."""
    prefix = f"@{ADDRESS_PREFIX}-{os.getuid()}-"
    names = set()
    with contextlib.suppress(OSError), open("/proc/net/unix", encoding="utf-8", errors="replace") as table:
        for line in table:
            path = line.split()[-1] if len(line.split()) >= 8 else ""
            if path.startswith(prefix):
                names.add(path[len(prefix):])
    return sorted(n for n in names if scope is None or n.endswith(f"-{scope}"))


def stop_servers(scope: str | None = None) -> list[int]:
    """Sends SIGTERM to this uid's servers (of `scope` only, when given) and waits until they exit; returns
    their pids."""
    stopped = []
    for name in list_server_names(scope):
        pid = get_server_pid(name)
        if pid is None:
            continue
        try:
            waiter = os.pidfd_open(pid)
        except OSError:
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        select.select([waiter], [], [], 30)
        os.close(waiter)
        stopped.append(pid)
    return stopped


# ---- the server ---------------------------------------------------------------------------------------


def _import_dbt() -> None:
    """dbt's modules a parse needs, and ours. Not the adapter plugins: importing dbt-duckdb imports duckdb,
    which starts a native thread, and a process with another thread cannot fork safely (the child would also
    abort at exit, destroying a copy of that thread's C++ object); a child imports its adapter in 0.07 s."""
    for module in (*DBT_MODULES, "dagctl_dagster.runner.dbt_parse"):
        importlib.import_module(module)


def count_threads() -> int:
    """The threads of this process, native ones included (`threading.active_count` sees only Python's)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _tell(fd: int | None, message: str) -> None:
    if fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(fd, message.encode())
        os.close(fd)


def serve(name: str, idle_seconds: float, ready_fd: int | None = None) -> int:
    """Binds `name`, imports dbt, says `ready` on `ready_fd` and serves until idle or SIGTERM.

    The socket is bound first: of two servers started at once for the same name, the second finds it taken
    and exits at once (it says `taken`), and clients that connect while dbt imports wait in the backlog.
    """
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(build_address(name))
    except OSError:
        _tell(ready_fd, "taken")
        return 0
    listener.listen(64)
    _import_dbt()
    # What the imports made stays out of every collection: the children's collector never walks (and so
    # never copies) those pages.
    gc.collect()
    gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a child's exit wakes the loop through the wakeup fd
    children: set[int] = set()
    _tell(ready_fd, "ready")
    last = time.monotonic()
    while True:
        while children:  # reap what ended
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                children.clear()
                break
            if pid == 0:
                break
            children.discard(pid)
            last = time.monotonic()
        remaining = last + idle_seconds - time.monotonic()
        if remaining <= 0 and not children:
            return 0
        readable, _, _ = select.select([listener, wake_r], [], [], max(remaining, 0) if not children else None)
        if wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 512)
        if listener not in readable:
            continue
        conn, _ = listener.accept()
        last = time.monotonic()
        with conn:
            if get_peer(conn)[1] != os.getuid():
                continue
            threads = count_threads()
            if threads != 1:  # a fork would copy the locks other threads hold
                _send(conn, {"refused": f"the dbt parse server runs {threads} threads and cannot fork safely"})
                continue
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                code = 70  # the child failed before it could answer: the client parses itself
                try:
                    listener.close()
                    os.close(wake_r)
                    os.close(wake_w)
                    code = _serve_child(conn)
                    # What a plain parse process runs at exit (multiprocessing's clean-up of the semaphores
                    # dbt made), without the seconds of tearing down every object of dbt's manifest.
                    atexit._run_exitfuncs()
                except BaseException:
                    traceback.print_exc()
                finally:
                    os._exit(code)
            children.add(pid)


def _send(conn: socket.socket, message: dict) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(message).encode() + b"\n")


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the client closed the connection")
        data += chunk
    return data


def _watch(conn: socket.socket, done: threading.Event) -> None:
    """Blocks until the client goes away, then, unless the parse is over, kills this child's process group
    (dbt and what it started)."""
    with contextlib.suppress(OSError):
        while conn.recv(4096):
            pass
    if not done.is_set():
        os.killpg(os.getpgrp(), signal.SIGKILL)


def _serve_child(conn: socket.socket) -> int:
    """The forked child: one request; returns the exit code it sent to the client."""
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)
    os.setsid()
    try:
        header, fds, _, _ = socket.recv_fds(conn, _LENGTH.size, 2)
        if len(fds) != 2:
            raise ConnectionError("the request came without its stdout and stderr")
        header += _recv_exact(conn, _LENGTH.size - len(header))
        request = json.loads(_recv_exact(conn, _LENGTH.unpack(header)[0]))
    except (OSError, ValueError):
        os._exit(0)  # nothing to answer: the client left, or was only asking for the server's pid
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for target, fd in zip((1, 2), fds):
        os.dup2(fd, target)
        os.close(fd)
    os.close(null)
    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    done = threading.Event()
    threading.Thread(target=_watch, args=(conn, done), daemon=True).start()
    from dagctl_dagster.runner import dbt_parse

    sys.argv = ["dbt_parse", *request["argv"]]
    try:
        code = dbt_parse.main(request["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    done.set()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    _send(conn, {"exit": code})
    return code


# ---- the client ---------------------------------------------------------------------------------------


def start_server(name: str, idle_seconds: float, environ: Mapping[str, str]) -> str:
    """Starts server `name` in its own session with its minimal environment; returns once it is `ready` (or
    says its name was `taken` by another server). Raises `OSError` when it ends or stays silent for
    `READY_TIMEOUT` seconds."""
    ready_r, ready_w = os.pipe()
    try:
        argv = [sys.executable, "-P", "-m", "dagctl_dagster.runner.dbt_parse_server", "--name", name,
                "--idle-seconds", str(idle_seconds), "--ready-fd", str(ready_w)]
        subprocess.Popen(argv, env=build_server_env(environ), cwd="/", start_new_session=True,
                         pass_fds=(ready_w,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        os.close(ready_w)
        ready_w = -1
        readable, _, _ = select.select([ready_r], [], [], READY_TIMEOUT)
        said = os.read(ready_r, 16).decode(errors="replace") if readable else ""
    finally:
        os.close(ready_r)
        if ready_w >= 0:
            os.close(ready_w)
    if said not in ("ready", "taken"):
        raise OSError(f"the dbt parse server {name} did not start"
                      + ("" if readable else f" within {READY_TIMEOUT:.0f}s"))
    return said


def run_through_server(name: str, idle_seconds: float, argv: Sequence[str]) -> tuple[int | None, str]:
    """Has server `name` (started when none answers) parse with `argv`, this process's environment, working
    directory, stdout and stderr. Returns `(exit code, "")`, or `(None, why)` when the server path failed
    and the caller must parse itself."""
    try:
        try:
            sock = connect(name)
        except (ConnectionRefusedError, FileNotFoundError):
            start_server(name, idle_seconds, os.environ)
            sock = connect(name)
    except OSError as error:
        return None, str(error) or type(error).__name__
    with sock:
        body = json.dumps({"argv": list(argv), "env": dict(os.environ), "cwd": os.getcwd()}).encode()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            socket.send_fds(sock, [_LENGTH.pack(len(body))], [1, 2])
            sock.sendall(body)
            reply = b""
            while not reply.endswith(b"\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                reply += chunk
        except OSError as error:
            return None, f"the dbt parse server {name} failed: {error}"
    try:
        answer = json.loads(reply)
        return (None, answer["refused"]) if "refused" in answer else (int(answer["exit"]), "")
    except (ValueError, KeyError, TypeError):
        return None, f"the dbt parse server {name} ended the parse without an exit code"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dagctl_dagster.runner.dbt_parse_server",
                                     description="A resident process forking one child per dbt parse.")
    parser.add_argument("--name", help="the server's name (get_server_name)")
    parser.add_argument("--idle-seconds", type=float, default=600.0, help="exit after this long without a request")
    parser.add_argument("--ready-fd", type=int, default=None, help="file descriptor that receives `ready`")
    parser.add_argument("--stop", action="store_true", help="stop this uid's servers (of --scope, if given)")
    parser.add_argument("--scope", default=None, help="with --stop: only the servers of this scope")
    args = parser.parse_args(argv)
    if args.stop:
        for pid in stop_servers(args.scope):
            print(f"stopped dbt parse server {pid}", file=sys.stderr)
        return 0
    if not args.name:
        parser.error("give --name (or --stop)")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the server holds nothing to clean up
    code = serve(args.name, args.idle_seconds, args.ready_fd)
    os._exit(code)  # the socket goes with the process; tearing dbt's modules down would take seconds


if __name__ == "__main__":
    raise SystemExit(main())
