"""A real Dagster deployment on loopback for the end-to-end tests: webserver and daemon as processes.

The session fixture builds everything in a temporary folder: a Git repository holding the example dbt
project (`examples/jaffle_dbt`, committed by `carol`), a deployment config with environments `dev`
(unprotected) and `prod` (protected, alice and bob must both approve), a `DAGSTER_HOME` with the
repository's `dagster.yaml`, and a DuckDB warehouse folder. It then starts `dagster-webserver` and
`dagster-daemon`, each in its own process group, and waits (with a deadline) until the webserver answers
`/server_info` and the code location's jobs are visible over GraphQL. Both groups are killed at the end of
the session, also when a test or the start-up itself fails.

Tests drive the deployment only from outside, through the `dagctl` command line (`run_dagctl`), the
GraphQL API or a browser, the way a user or a CI job would.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
STARTUP_DEADLINE_SECONDS = 180.0
STOP_GRACE_SECONDS = 15.0
PLAN_AUTHOR = "carol"

DEPLOYMENT_CONFIG = """\
storage_dir: {storage}
projects:
  - name: jaffle
    framework: dbt
    repository: {repository}
    branch: main
    sensor_interval_seconds: 5
    dbt:
      commands: ["dbt build"]
      profiles_dir: {profiles}
    step_env:
      pass_env: [DAGCTL_WAREHOUSE_DIR]   # the profiles' warehouse folder
    environments:
      - name: dev
        target: dev
      - name: prod
        target: prod
        protected: true
        approvers: [alice, bob]
        required_approvals: 2
"""


@dataclass(frozen=True)
class DagsterDeployment:
    """A running webserver and daemon, and the folders they use."""

    url: str
    repository: Path
    home: Path
    log_dir: Path
    env: dict[str, str]

    def read_logs(self) -> str:
        """The tail of both processes' output, for assertion messages."""
        parts = []
        for log in sorted(self.log_dir.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-40:]
            parts.append(f"--- {log.name} (last {len(lines)} lines)\n" + "\n".join(lines))
        return "\n".join(parts)


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def git(repository: Path, *args: str) -> str:
    author = {"GIT_AUTHOR_NAME": PLAN_AUTHOR, "GIT_AUTHOR_EMAIL": f"{PLAN_AUTHOR}@example.com",
              "GIT_COMMITTER_NAME": PLAN_AUTHOR, "GIT_COMMITTER_EMAIL": f"{PLAN_AUTHOR}@example.com"}
    result = subprocess.run(
        ["git", "-C", str(repository), *args], capture_output=True, text=True, check=False, timeout=60,
        env={**os.environ, **author},
    )
    assert result.returncode == 0, f"git {' '.join(args)} failed: {result.stderr}"
    return result.stdout.strip()


def build_jaffle_repository(path: Path) -> Path:
    """A Git repository whose `main` holds the example dbt project at version "1", committed by carol."""
    shutil.copytree(REPO_ROOT / "examples" / "jaffle_dbt", path)
    git(path, "init", "-q", "-b", "main")
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "Jaffle shop: first version")
    return path


def _process_env(home: Path, config: Path, warehouse: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DAGSTER_HOME": str(home),
        "DAGCTL_CONFIG": str(config),
        "DAGCTL_WAREHOUSE_DIR": str(warehouse),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "DBT_SEND_ANONYMOUS_USAGE_STATS": "false",
        "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
    }


@contextmanager
def process_group(argv: list[str], *, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Runs `argv` in its own process group (its run workers included) and kills the group on exit."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            argv, cwd=REPO_ROOT, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield process
    finally:
        _kill_group(process)


def _kill_group(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # The leader is gone; run workers it started may still hold the group.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return


def wait_for_webserver(url: str, processes: list[subprocess.Popen], deadline: float) -> None:
    """Returns once `/server_info` answers and the code location's jobs are served over GraphQL."""
    query = {"query": "{ repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name } } } } }"}
    last_problem = "no answer yet"
    while time.monotonic() < deadline:
        exited = [p.args[0] for p in processes if p.poll() is not None]
        if exited:
            raise RuntimeError(f"{', '.join(map(str, exited))} exited during start-up")
        try:
            if requests.get(f"{url}/server_info", timeout=5).ok:
                answer = requests.post(f"{url}/graphql", json=query, timeout=30).json()
                nodes = answer.get("data", {}).get("repositoriesOrError", {}).get("nodes", [])
                jobs = {job["name"] for node in nodes for job in node["jobs"]}
                if "jaffle_plan_job" in jobs:
                    return
                last_problem = f"code location not loaded yet: {json.dumps(answer)[:300]}"
        except requests.RequestException as exc:
            last_problem = str(exc)
        time.sleep(0.5)
    raise RuntimeError(f"webserver at {url} not ready in time: {last_problem}")


@pytest.fixture(scope="session")
def dagster_deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDeployment]:
    """Starts a real webserver and daemon for a one-project deployment; kills both at the end."""
    root = tmp_path_factory.mktemp("dagster")
    repository = build_jaffle_repository(root / "jaffle")
    home, warehouse, log_dir = root / "dagster_home", root / "warehouse", root / "logs"
    for folder in (home, warehouse, log_dir):
        folder.mkdir()
    shutil.copy(REPO_ROOT / "dagster.yaml", home / "dagster.yaml")
    config = root / "dagctl.yaml"
    config.write_text(DEPLOYMENT_CONFIG.format(
        storage=root / "storage", repository=repository, profiles=REPO_ROOT / "examples" / "dbt_profiles",
    ))
    env = _process_env(home, config, warehouse)
    port = find_free_port()
    url = f"http://127.0.0.1:{port}"
    workspace = str(REPO_ROOT / "workspace.yaml")
    deployment = DagsterDeployment(url=url, repository=repository, home=home, log_dir=log_dir, env=env)
    # Create the SQLite storage once, before two processes race to create the same tables.
    migrate = subprocess.run([str(VENV_BIN / "dagster"), "instance", "migrate"], env=env, cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=300, check=False)
    assert migrate.returncode == 0, f"dagster instance migrate failed: {migrate.stdout}{migrate.stderr}"
    with ExitStack() as stack:
        webserver = stack.enter_context(process_group(
            [str(VENV_BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(port), "-w", workspace],
            env=env, log=log_dir / "webserver.log"))
        daemon = stack.enter_context(process_group(
            [str(VENV_BIN / "dagster-daemon"), "run", "-w", workspace], env=env, log=log_dir / "daemon.log"))
        try:
            wait_for_webserver(url, [webserver, daemon], time.monotonic() + STARTUP_DEADLINE_SECONDS)
        except RuntimeError as exc:
            pytest.fail(f"{exc}\n{deployment.read_logs()}")
        yield deployment


@dataclass(frozen=True)
class DagctlResult:
    """One `dagctl` invocation: its exit code and output."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> object:
        return json.loads(self.stdout)

    def __str__(self) -> str:
        return (f"dagctl {' '.join(self.argv)} -> exit {self.returncode}\n"
                f"stdout:\n{self.stdout[-3000:]}\nstderr:\n{self.stderr[-3000:]}")


RunDagctl = Callable[..., DagctlResult]


DAGCTL = VENV_BIN / "dagctl"


def _client_env(url: str, extra_env: dict[str, str] | None = None) -> dict[str, str]:
    # A client machine: none of the server's DAGCTL_* settings, only where the webserver is.
    env = {key: value for key, value in os.environ.items() if not key.startswith("DAGCTL_")}
    return {**env, "DAGCTL_URL": url, **(extra_env or {})}


def invoke_dagctl(*args: str, url: str, timeout: float = 300.0,
                  extra_env: dict[str, str] | None = None) -> DagctlResult:
    """Runs the installed `dagctl` console script as a subprocess, the way a user or CI job does."""
    completed = subprocess.run(
        [str(DAGCTL), *args], capture_output=True, text=True, env=_client_env(url, extra_env),
        timeout=timeout, check=False,
    )
    return DagctlResult(tuple(args), completed.returncode, completed.stdout, completed.stderr)


@pytest.fixture(scope="session")
def run_dagctl(dagster_deployment: DagsterDeployment) -> RunDagctl:
    """`run_dagctl("plans", "list", "--json")` against the session's webserver (via `DAGCTL_URL`)."""

    def run(*args: str, timeout: float = 300.0, extra_env: dict[str, str] | None = None) -> DagctlResult:
        return invoke_dagctl(*args, url=dagster_deployment.url, timeout=timeout, extra_env=extra_env)

    return run


@pytest.fixture(scope="session")
def start_dagctl(dagster_deployment: DagsterDeployment) -> Callable[..., subprocess.Popen]:
    """`start_dagctl("plans", "logs", plan_id, "--follow")`: a `dagctl` running in the background (text
    pipes); the caller waits for it or kills it."""

    def start(*args: str) -> subprocess.Popen:
        return subprocess.Popen([str(DAGCTL), *args], env=_client_env(dagster_deployment.url),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    return start


@pytest.fixture
def closed_url() -> str:
    """A loopback URL where nothing listens: a port that was free a moment ago."""
    return f"http://127.0.0.1:{find_free_port()}"


@pytest.fixture
def run_dagctl_offline(closed_url: str) -> RunDagctl:
    """`dagctl` with `DAGCTL_URL` at a closed port, for what must fail before (or at) the first request."""

    def run(*args: str, timeout: float = 60.0, extra_env: dict[str, str] | None = None) -> DagctlResult:
        return invoke_dagctl(*args, url=closed_url, timeout=timeout, extra_env=extra_env)

    return run


PollUntil = Callable[..., object]


@pytest.fixture(scope="session")
def poll_until() -> PollUntil:
    """`poll_until(check, timeout=120, describe=...)`: calls `check` until it returns something truthy,
    and fails the test with `describe()` when the deadline passes."""

    def poll(check: Callable[[], object], *, timeout: float, interval: float = 1.0,
             describe: Callable[[], str] = lambda: "") -> object:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                pytest.fail(f"condition not met within {timeout:.0f}s. {describe()}")
            time.sleep(interval)

    return poll


def assert_one_line_error(result: DagctlResult, code: int, *fragments: str) -> None:
    """The CLI's error contract: exit `code`, exactly one line on stderr naming `fragments`, no traceback."""
    assert result.returncode == code, f"expected exit {code}: {result}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr: {result}"
    assert "Traceback" not in result.stderr, f"traceback on stderr: {result}"
    for fragment in fragments:
        assert fragment in lines[0], f"'{fragment}' missing from the error line: {result}"


@pytest.fixture(scope="session")
def expect_error() -> Callable[..., None]:
    """`expect_error(result, 2, "unknown plan")`: see `assert_one_line_error`."""
    return assert_one_line_error
