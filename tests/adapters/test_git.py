"""The Git mirror against real repositories: a "remote" made with `git init` in `tmp_path`, mirrored locally.

Credentials are checked end to end: a loopback HTTP server that demands Basic authentication records what git
sends, and `GIT_TRACE` records every command line git runs, so "the token never reaches argv" is observed, not
assumed.
"""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dagctl_dagster.adapters.git import (
    ChangeRead,
    CommitInfo,
    DiffEntry,
    GitMirror,
    git_environment,
    redact_url,
)
from dagctl_dagster.core.errors import DagctlGitError

AUTHOR_DATE = "2024-05-01T12:00:00+02:00"


@pytest.fixture(autouse=True)
def isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No user or system git config, no credentials from the machine, a fixed author and date."""
    empty_config = tmp_path / "empty.gitconfig"
    empty_config.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty_config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("DAGCTL_GIT_TOKEN", "DAGCTL_GIT_SSH_KEY", "GIT_CONFIG_COUNT", "GIT_DIR", "GIT_SSH_COMMAND"):
        monkeypatch.delenv(name, raising=False)
    identity = {
        "GIT_AUTHOR_NAME": "Ann Analyst",
        "GIT_AUTHOR_EMAIL": "ann@example.com",
        "GIT_COMMITTER_NAME": "Ann Analyst",
        "GIT_COMMITTER_EMAIL": "ann@example.com",
        "GIT_AUTHOR_DATE": AUTHOR_DATE,
        "GIT_COMMITTER_DATE": AUTHOR_DATE,
    }
    for name, value in identity.items():
        monkeypatch.setenv(name, value)


def run_git(directory: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=directory, check=True, capture_output=True, text=True)
    return result.stdout.strip()


class RemoteRepository:
    """A working repository standing in for the remote; each `commit` changes files and returns the sha."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True)
        run_git(path, "init", "--quiet", "--initial-branch=main")

    def commit(self, files: dict[str, str | None], message: str = "Change files") -> str:
        """Write (or with `None`, delete) `files`, commit everything, return the new sha."""
        for name, content in files.items():
            file = self.path / name
            if content is None:
                file.unlink()
            else:
                file.parent.mkdir(parents=True, exist_ok=True)
                file.write_text(content)
        run_git(self.path, "add", "--all")
        run_git(self.path, "commit", "--quiet", "--allow-empty", "-m", message)
        return self.head()

    def rename(self, old: str, new: str, message: str = "Rename") -> str:
        (self.path / new).parent.mkdir(parents=True, exist_ok=True)
        run_git(self.path, "mv", old, new)
        run_git(self.path, "commit", "--quiet", "-m", message)
        return self.head()

    def head(self, ref: str = "HEAD") -> str:
        return run_git(self.path, "rev-parse", ref)


@pytest.fixture
def remote(tmp_path: Path) -> RemoteRepository:
    repository = RemoteRepository(tmp_path / "remote")
    repository.commit(
        {
            "README.md": "# analytics\n",
            "dbt/dbt_project.yml": "name: shop\n",
            "dbt/models/orders.sql": "select 1 as id\n",
            "dbt/models/customers.sql": "select 2 as id\n",
        },
        message="Initial project\n\nWith a body that is not part of the subject.",
    )
    return repository


@pytest.fixture
def mirror(remote: RemoteRepository, tmp_path: Path) -> GitMirror:
    return GitMirror(str(remote.path), tmp_path / "mirrors" / "analytics.git")


@pytest.fixture
def fetched_mirror(mirror: GitMirror) -> GitMirror:
    mirror.refresh_branch("main")
    return mirror


def object_files(mirror: GitMirror) -> set[Path]:
    """The mirror's object and pack files (not objects/info: the commit-graph is rewritten on each fetch)."""
    objects = mirror.mirror_dir / "objects"
    return {path for path in objects.rglob("*") if path.is_file() and objects / "info" not in path.parents}


# -- creating and refreshing the mirror ---------------------------------------------------------------------


def test_ensure_creates_a_bare_mirror_once(mirror: GitMirror, remote: RemoteRepository) -> None:
    assert not mirror.exists()

    mirror.ensure()
    marker = mirror.mirror_dir / "marker"
    marker.write_text("left by the first ensure")
    inode = mirror.mirror_dir.stat().st_ino
    mirror.ensure()

    assert run_git(mirror.mirror_dir, "rev-parse", "--is-bare-repository") == "true"
    assert mirror.resolve("main") == remote.head()
    assert marker.exists() and mirror.mirror_dir.stat().st_ino == inode
    assert sorted(path.name for path in mirror.mirror_dir.parent.iterdir()) == ["analytics.git", "analytics.git.lock"]


def test_refresh_branch_fetches_only_when_the_remote_head_moved(
    mirror: GitMirror, remote: RemoteRepository
) -> None:
    first = mirror.refresh_branch("main")
    fetch_head = mirror.mirror_dir / "FETCH_HEAD"
    fetch_head.unlink()  # Every fetch writes FETCH_HEAD: its absence proves that no fetch ran.

    assert mirror.refresh_branch("main") == first
    assert not fetch_head.exists()

    objects_before, inode = object_files(mirror), mirror.mirror_dir.stat().st_ino
    second = remote.commit({"dbt/models/orders.sql": "select 3 as id\n"})
    assert mirror.remote_head("main") == second
    assert mirror.resolve("main") == first  # remote_head only asks, it does not fetch.

    assert mirror.refresh_branch("main") == second
    assert fetch_head.exists()
    # Incremental: the same repository, every object of the first fetch kept, only new ones added.
    assert mirror.mirror_dir.stat().st_ino == inode
    assert objects_before < object_files(mirror)


def test_fetch_follows_new_and_deleted_branches(mirror: GitMirror, remote: RemoteRepository) -> None:
    run_git(remote.path, "branch", "feature")
    mirror.refresh_branch("main")
    assert mirror.resolve("feature") == remote.head()

    run_git(remote.path, "branch", "--delete", "feature")
    mirror.fetch()

    with pytest.raises(DagctlGitError, match="'feature'"):
        mirror.resolve("feature")


def test_refresh_of_a_missing_branch_names_the_branch_and_the_repository(mirror: GitMirror) -> None:
    with pytest.raises(DagctlGitError) as raised:
        mirror.refresh_branch("release")

    assert "Branch 'release' does not exist" in str(raised.value)
    assert str(mirror.url) in str(raised.value)


def test_fetch_before_ensure_says_to_call_ensure(mirror: GitMirror) -> None:
    with pytest.raises(DagctlGitError, match=r"does not exist in .*call ensure\(\)"):
        mirror.fetch()


# -- reading commits and files ------------------------------------------------------------------------------


def test_resolve_accepts_a_branch_a_full_sha_and_a_short_sha(
    fetched_mirror: GitMirror, remote: RemoteRepository
) -> None:
    sha = remote.head()

    assert fetched_mirror.resolve("main") == sha
    assert fetched_mirror.resolve(sha) == sha
    assert fetched_mirror.resolve(sha[:8]) == sha


def test_resolve_of_an_unknown_commit_names_the_commit_and_the_repository(fetched_mirror: GitMirror) -> None:
    with pytest.raises(DagctlGitError) as raised:
        fetched_mirror.resolve("0123456789abcdef0123456789abcdef01234567")

    message = str(raised.value)
    assert "'0123456789abcdef0123456789abcdef01234567'" in message
    assert fetched_mirror.url in message


def test_a_ref_that_looks_like_an_option_is_refused(fetched_mirror: GitMirror) -> None:
    with pytest.raises(DagctlGitError, match="Invalid commit name"):
        fetched_mirror.resolve("--upload-pack=touch /tmp/x")
    with pytest.raises(DagctlGitError, match="Invalid branch name"):
        fetched_mirror.remote_head("-x")


def test_has_commit_is_true_only_for_commits_in_the_mirror(mirror: GitMirror, remote: RemoteRepository) -> None:
    sha = remote.head()
    assert not mirror.has_commit(sha)  # No mirror yet.

    mirror.refresh_branch("main")

    assert mirror.has_commit(sha)
    assert mirror.has_commit(sha[:10])
    assert not mirror.has_commit("0123456789abcdef0123456789abcdef01234567")


def test_read_file_returns_the_text_at_the_commit_or_none_when_absent(
    fetched_mirror: GitMirror, remote: RemoteRepository
) -> None:
    first = remote.head()
    second = remote.commit({"dbt/models/orders.sql": "select 3 as id\n"})
    fetched_mirror.fetch()

    assert fetched_mirror.read_file(first, "dbt/models/orders.sql") == "select 1 as id\n"
    assert fetched_mirror.read_file(second, "dbt/models/orders.sql") == "select 3 as id\n"
    assert fetched_mirror.read_file("main", "dbt/models/missing.sql") is None
    assert fetched_mirror.read_file("main", "dbt/models") is None  # A directory is not a file.


def test_read_file_at_an_unknown_commit_is_an_error(fetched_mirror: GitMirror) -> None:
    with pytest.raises(DagctlGitError, match="'feature'"):
        fetched_mirror.read_file("feature", "README.md")


def test_commit_info_has_subject_author_and_utc_author_date(
    fetched_mirror: GitMirror, remote: RemoteRepository
) -> None:
    sha = remote.head()

    assert fetched_mirror.commit_info("main") == CommitInfo(
        sha=sha,
        short_sha=sha[:12],
        message="Initial project",
        author="Ann Analyst <ann@example.com>",
        author_name="Ann Analyst",
        authored_at=datetime(2024, 5, 1, 10, 0, tzinfo=UTC),
    )


def test_read_history_counts_commits_of_target_missing_from_base(
    mirror: GitMirror, remote: RemoteRepository
) -> None:
    base = remote.head()
    remote.commit({"README.md": "# one\n"})
    remote.commit({"README.md": "# two\n"})
    mirror.refresh_branch("main")

    assert mirror.read_history(base, "main").ahead == 2
    assert mirror.read_history("main", base).ahead == 0
    assert mirror.read_history(base, base).ahead == 0


# -- diffs ----------------------------------------------------------------------------------------------------


def test_diff_reports_added_modified_deleted_and_renamed_files_sorted_by_path(
    mirror: GitMirror, remote: RemoteRepository
) -> None:
    base = remote.head()
    remote.commit(
        {
            "dbt/models/orders.sql": "select 3 as id\n",
            "dbt/macros/cents.sql": "{% macro cents() %}100{% endmacro %}\n",
            "README.md": None,
        }
    )
    target = remote.rename("dbt/models/customers.sql", "dbt/models/marts/customers.sql")
    mirror.refresh_branch("main")

    assert mirror.diff(base, target) == [
        DiffEntry(change_type="deleted", path="README.md", old_path=None),
        DiffEntry(change_type="added", path="dbt/macros/cents.sql", old_path=None),
        DiffEntry(change_type="renamed", path="dbt/models/marts/customers.sql", old_path="dbt/models/customers.sql"),
        DiffEntry(change_type="modified", path="dbt/models/orders.sql", old_path=None),
    ]


def test_diff_in_a_subdirectory_lists_only_its_files_relative_to_it(
    mirror: GitMirror, remote: RemoteRepository
) -> None:
    base = remote.head()
    remote.commit({"README.md": "# changed outside\n", "dbt/seeds/countries.csv": "code\nFR\n"})
    target = remote.rename("dbt/models/customers.sql", "dbt/models/dim_customers.sql")
    mirror.refresh_branch("main")

    assert mirror.diff(base, target, subdirectory="dbt/") == [
        DiffEntry(change_type="renamed", path="models/dim_customers.sql", old_path="models/customers.sql"),
        DiffEntry(change_type="added", path="seeds/countries.csv", old_path=None),
    ]


def test_diff_without_a_base_lists_every_file_as_added(fetched_mirror: GitMirror) -> None:
    assert fetched_mirror.diff(None, "main", subdirectory="dbt") == [
        DiffEntry(change_type="added", path="dbt_project.yml"),
        DiffEntry(change_type="added", path="models/customers.sql"),
        DiffEntry(change_type="added", path="models/orders.sql"),
    ]


def test_diff_with_an_unknown_base_names_it(fetched_mirror: GitMirror) -> None:
    with pytest.raises(DagctlGitError, match="'deadbeef'"):
        fetched_mirror.diff("deadbeef", "main")


def test_tree_id_of_a_subdirectory_ignores_changes_outside_it(
    mirror: GitMirror, remote: RemoteRepository
) -> None:
    base = remote.head()
    outside = remote.commit({"README.md": "# changed outside\n"})
    inside = remote.commit({"dbt/models/orders.sql": "select 3 as id\n"})
    mirror.refresh_branch("main")

    assert mirror.tree_id(base, "dbt") == mirror.tree_id(outside, "dbt") != mirror.tree_id(inside, "dbt")
    assert mirror.tree_id(base) != mirror.tree_id(outside)
    assert mirror.tree_id(base) == run_git(remote.path, "rev-parse", f"{base}^{{tree}}")


def test_tree_id_of_a_missing_subdirectory_names_it(fetched_mirror: GitMirror) -> None:
    with pytest.raises(DagctlGitError, match="Directory 'sqlmesh' does not exist at commit"):
        fetched_mirror.tree_id("main", "sqlmesh")
    with pytest.raises(DagctlGitError, match="Directory 'README.md' does not exist"):
        fetched_mirror.tree_id("main", "README.md")  # A file is not a directory.


def test_a_nested_subdirectory_scopes_tree_id_diff_and_snapshot(
    mirror: GitMirror, remote: RemoteRepository, tmp_path: Path
) -> None:
    base = remote.head()
    target = remote.commit({"dbt/models/staging/stg_orders.sql": "select 4 as id\n"})
    mirror.refresh_branch("main")

    assert mirror.tree_id(target, "dbt/models") == run_git(remote.path, "rev-parse", f"{target}:dbt/models")
    assert mirror.diff(base, target, subdirectory="dbt/models") == [
        DiffEntry(change_type="added", path="staging/stg_orders.sql"),
    ]
    snapshot = mirror.export_snapshot(target, tmp_path / "models", subdirectory="dbt/models")
    assert sorted(path.name for path in snapshot.iterdir()) == ["customers.sql", "orders.sql", "staging"]


# -- snapshots ------------------------------------------------------------------------------------------------


def test_export_snapshot_writes_the_commit_files_without_git_metadata(
    fetched_mirror: GitMirror, tmp_path: Path
) -> None:
    destination = tmp_path / "snapshots" / "full"

    assert fetched_mirror.export_snapshot("main", destination) == destination

    files = sorted(str(path.relative_to(destination)) for path in destination.rglob("*") if path.is_file())
    assert files == ["README.md", "dbt/dbt_project.yml", "dbt/models/customers.sql", "dbt/models/orders.sql"]
    assert (destination / "dbt/models/orders.sql").read_text() == "select 1 as id\n"
    assert os.listdir(destination.parent) == ["full"]  # No temporary directory left behind.


def test_export_snapshot_of_a_subdirectory_makes_it_the_root(fetched_mirror: GitMirror, tmp_path: Path) -> None:
    destination = fetched_mirror.export_snapshot("main", tmp_path / "project", subdirectory="dbt")

    assert sorted(path.name for path in destination.iterdir()) == ["dbt_project.yml", "models"]
    assert (destination / "dbt_project.yml").read_text() == "name: shop\n"


def test_export_snapshot_reuses_an_existing_destination(
    fetched_mirror: GitMirror, remote: RemoteRepository, tmp_path: Path
) -> None:
    destination = fetched_mirror.export_snapshot("main", tmp_path / "snapshot", subdirectory="dbt")
    remote.commit({"dbt/models/orders.sql": "select 3 as id\n"})
    fetched_mirror.fetch()

    assert fetched_mirror.export_snapshot("main", destination, subdirectory="dbt") == destination
    assert (destination / "models/orders.sql").read_text() == "select 1 as id\n"


def test_export_snapshot_of_a_missing_subdirectory_writes_nothing(
    fetched_mirror: GitMirror, tmp_path: Path
) -> None:
    with pytest.raises(DagctlGitError, match="'sqlmesh'"):
        fetched_mirror.export_snapshot("main", tmp_path / "snapshots" / "x", subdirectory="sqlmesh")

    assert not (tmp_path / "snapshots").exists() or os.listdir(tmp_path / "snapshots") == []


# -- credentials ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("https://x-access-token:s3cret@github.com/acme/dbt.git", "https://github.com/acme/dbt.git"),
        ("https://ghp_token@github.com/acme/dbt.git", "https://github.com/acme/dbt.git"),
        ("https://user:p@ss@host:8443/repo.git", "https://host:8443/repo.git"),
        ("ssh://git@github.com/acme/dbt.git", "ssh://git@github.com/acme/dbt.git"),
        ("ssh://git:pw@github.com/acme/dbt.git", "ssh://github.com/acme/dbt.git"),
        ("git@github.com:acme/dbt.git", "git@github.com:acme/dbt.git"),
        ("/srv/git/dbt.git", "/srv/git/dbt.git"),
        (
            "fatal: unable to access 'https://u:pw@127.0.0.1:1/r.git/': Failed",
            "fatal: unable to access 'https://127.0.0.1:1/r.git/': Failed",
        ),
    ],
)
def test_redact_url_strips_credentials(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


def test_git_environment_never_prompts_and_adds_nothing_without_credentials() -> None:
    env = git_environment({"PATH": "/usr/bin"})

    assert env == {"PATH": "/usr/bin", "GIT_TERMINAL_PROMPT": "0"}


def test_git_environment_uses_the_ssh_key_from_the_environment() -> None:
    env = git_environment({"DAGCTL_GIT_SSH_KEY": "/keys/deploy key"})

    assert env["GIT_SSH_COMMAND"] == (
        "ssh -i '/keys/deploy key' -o IdentitiesOnly=yes -o StrictHostKeyChecking=accept-new"
    )


def test_git_environment_passes_the_token_only_through_its_own_variable() -> None:
    token = "tok-7f3a9c"

    env = git_environment({"DAGCTL_GIT_TOKEN": token, "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "a.b"})

    assert [name for name, value in env.items() if token in value] == ["DAGCTL_GIT_TOKEN"]
    assert env["GIT_CONFIG_COUNT"] == "3"  # Appended after the configuration already passed this way.
    assert env["GIT_CONFIG_KEY_0"] == "a.b"
    assert (env["GIT_CONFIG_KEY_1"], env["GIT_CONFIG_VALUE_1"]) == ("credential.helper", "")
    assert env["GIT_CONFIG_KEY_2"] == "credential.helper"
    assert "$DAGCTL_GIT_TOKEN" in env["GIT_CONFIG_VALUE_2"]
    assert env["GIT_TERMINAL_PROMPT"] == "0"


class _BasicAuthRequired(BaseHTTPRequestHandler):
    """Answers every request with 401 and records the Authorization headers it was sent."""

    authorizations: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (the name http.server dispatches to)
        self.authorizations.append(self.headers.get("Authorization", ""))
        self.send_response(401)
        self.send_header("WWW-Authenticate", 'Basic realm="git"')
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (signature of the base class)
        """Silence the default logging to stderr."""


@pytest.fixture
def auth_server() -> Iterator[tuple[str, list[str]]]:
    authorizations: list[str] = []
    handler = type("Handler", (_BasicAuthRequired,), {"authorizations": authorizations})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/acme/dbt.git", authorizations
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_token_is_sent_by_the_credential_helper_and_never_appears_in_argv_or_errors(
    auth_server: tuple[str, list[str]], tmp_path: Path
) -> None:
    url, authorizations = auth_server
    token = "tok-7f3a9c-do-not-leak"
    trace = tmp_path / "git-trace.log"
    env = {**git_environment({**os.environ, "DAGCTL_GIT_TOKEN": token}), "GIT_TRACE": str(trace)}
    mirror = GitMirror(url, tmp_path / "mirror.git", env=env)

    with pytest.raises(DagctlGitError) as raised:
        mirror.remote_head("main")

    expected = "Basic " + base64.b64encode(f"x-access-token:{token}".encode()).decode()
    assert expected in authorizations
    trace_text = trace.read_text()
    assert "run_command" in trace_text  # The helper ran, and GIT_TRACE logged its command line...
    assert token not in trace_text  # ...which never held the token.
    assert token not in str(raised.value)
    assert url in str(raised.value)


def test_credentials_in_the_url_and_token_never_appear_in_errors_of_an_unreachable_remote(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DAGCTL_GIT_TOKEN", "tok-7f3a9c-do-not-leak")
    mirror = GitMirror("https://user:secret-pw@127.0.0.1:1/repo.git", tmp_path / "mirrors" / "repo.git")

    for attempt in (lambda: mirror.remote_head("main"), mirror.ensure, lambda: mirror.refresh_branch("main")):
        with pytest.raises(DagctlGitError) as raised:
            attempt()
        message = str(raised.value)
        assert "secret-pw" not in message
        assert "tok-7f3a9c" not in message
        assert "https://127.0.0.1:1/repo.git" in message

    assert "secret-pw" not in repr(mirror)
    assert os.listdir(tmp_path / "mirrors") == ["repo.git.lock"]  # A failed ensure leaves no half mirror.


def test_read_change_in_one_round_trip_equals_the_individual_reads(
    mirror: GitMirror, remote: RemoteRepository
) -> None:
    base = remote.head()
    remote.commit({"dbt/models/orders.sql": "select 3 as id\n", "dbt/.dagctl/config.yaml": 'version: "2"\n'})
    target = remote.commit({"dbt/seeds/countries.csv": "code\nFR\n"}, message="Add countries\n\nBody.")
    mirror.refresh_branch("main")

    read = mirror.read_change(base, target, subdirectory="dbt", file_path="dbt/.dagctl/config.yaml")

    assert read == ChangeRead(
        entries=mirror.diff(base, target, subdirectory="dbt"),
        info=mirror.commit_info(target),
        file_text=mirror.read_file(target, "dbt/.dagctl/config.yaml"),
        ahead=mirror.read_history(base, target).ahead,
        identities=mirror.read_history(base, target).identities,
    )
    assert (read.file_text, read.ahead, read.info.message) == ('version: "2"\n', 2, "Add countries")


def test_read_change_without_a_base_or_the_file_lists_everything_and_no_file(
    fetched_mirror: GitMirror, remote: RemoteRepository
) -> None:
    read = fetched_mirror.read_change(None, remote.head(), file_path=".dagctl/config.yaml")

    assert (read.file_text, read.ahead) == (None, 0)
    assert [entry.change_type for entry in read.entries] == ["added"] * 4


def test_read_change_needs_full_shas(fetched_mirror: GitMirror) -> None:
    with pytest.raises(DagctlGitError, match="read_change needs full commit shas, got 'main'"):
        fetched_mirror.read_change(None, "main", file_path="x")
