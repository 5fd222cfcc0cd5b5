"""The Git mirror when things go wrong: a remote that never answers, a full disk, a missing project folder,
file names and authors that are not UTF-8. Real git against real repositories and sockets on loopback."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from fixtures.silent_server import serve_silently

from dagctl_dagster.adapters.git import DiffEntry, GitMirror
from dagctl_dagster.core.errors import DagctlGitError


@pytest.fixture(autouse=True)
def isolated_git(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty_config = tmp_path / "empty.gitconfig"
    empty_config.write_text("")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(empty_config))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("DAGCTL_GIT_TOKEN", "DAGCTL_GIT_SSH_KEY", "GIT_CONFIG_COUNT", "GIT_DIR"):
        monkeypatch.delenv(name, raising=False)
    for name in ("GIT_AUTHOR_NAME", "GIT_COMMITTER_NAME"):
        monkeypatch.setenv(name, "Ann Analyst")
    for name in ("GIT_AUTHOR_EMAIL", "GIT_COMMITTER_EMAIL"):
        monkeypatch.setenv(name, "ann@example.com")


def git(directory: Path, *args: str | bytes) -> str:
    return subprocess.run(["git", *args], cwd=directory, check=True, capture_output=True).stdout.decode().strip()


def make_remote(path: Path, files: dict[bytes, bytes]) -> str:
    """A repository whose files are named by raw bytes (any name a developer's machine can commit)."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    for name, content in files.items():
        file = os.path.join(os.fsencode(path), name)
        os.makedirs(os.path.dirname(file), exist_ok=True)
        with open(file, "wb") as handle:
            handle.write(content)
    git(path, "add", "-A")
    git(path, "commit", "-qm", "Initial")
    return git(path, "rev-parse", "HEAD")


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung Git server)."""
    with serve_silently() as port:
        yield port

@pytest.mark.parametrize("scheme", ["http", "git"])
def test_a_remote_that_never_answers_fails_after_the_timeout_with_a_timeout_hint(
    silent_server: int, tmp_path: Path, scheme: str
) -> None:
    url = f"{scheme}://127.0.0.1:{silent_server}/acme/jaffle.git"
    mirror = GitMirror(url, tmp_path / "mirror.git", network_timeout=1)

    with pytest.raises(DagctlGitError) as raised:
        mirror.refresh_branch("main")

    assert str(raised.value) == (
        f"Cannot fetch branches from {url}: no answer within 1s, git was stopped. Hint: the remote did not "
        "answer within 1s: check that it is up and reachable, or raise the project's git_timeout_seconds if it "
        "is only slow."
    )


def test_a_head_lookup_on_a_remote_that_never_answers_is_killed_after_the_timeout(
    silent_server: int, tmp_path: Path
) -> None:
    # git:// has no low-speed limit of git's own: the timeout alone stops it.
    url = f"git://127.0.0.1:{silent_server}/acme/jaffle.git"
    mirror = GitMirror(url, tmp_path / "mirror.git", network_timeout=1)

    with pytest.raises(DagctlGitError) as raised:
        mirror.start_remote_head("main")()

    assert str(raised.value) == (
        f"Cannot read the head of branch 'main' from {url}: no answer within 1s, git was stopped. Hint: the "
        "remote did not answer within 1s: check that it is up and reachable, or raise the project's "
        "git_timeout_seconds if it is only slow."
    )


def test_an_unknown_host_gets_the_network_hint_not_the_credentials_one(tmp_path: Path) -> None:
    mirror = GitMirror("https://no-such-host.invalid/acme/jaffle.git", tmp_path / "mirror.git")

    with pytest.raises(DagctlGitError) as raised:
        mirror.remote_head("main")

    assert str(raised.value).endswith(
        "Hint: check the host name in the URL and that the network reaches it.")


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB filesystem (tmpfs); the test is skipped where mounting is not allowed."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)],
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_at_fetch_gets_the_disk_hint_not_the_credentials_one(tmp_path: Path, tiny_disk: Path) -> None:
    make_remote(tmp_path / "remote", {b"seeds/big.csv": os.urandom(1024 * 1024)})
    mirror = GitMirror(str(tmp_path / "remote"), tiny_disk / "mirrors" / "jaffle.git")

    with pytest.raises(DagctlGitError) as raised:
        mirror.refresh_branch("main")

    message = str(raised.value)
    assert "No space left on device" in message or "no space left on device" in message.lower()
    assert message.endswith(f"Hint: free disk space (or fix permissions) where the mirrors live, {tiny_disk / 'mirrors'}.")
    assert "credentials" not in message


def test_file_names_that_are_not_utf8_are_escaped_and_serialize_as_utf8(tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    base = make_remote(remote, {b"models/a.sql": b"select 1\n"})
    (remote / "models" / "a.sql").write_text("select 2\n")
    with open(os.path.join(os.fsencode(remote), b"models/caf\xe9.sql"), "wb") as handle:
        handle.write(b"select 3\n")
    git(remote, "add", "-A")
    subprocess.run(["git", "-c", "i18n.commitEncoding=latin-1", "commit", "-q", "-m", b"Caf\xe9 model"],
                   cwd=remote, check=True, env={**os.environ, "GIT_AUTHOR_NAME": b"Jos\xe9".decode("latin-1")})
    head = git(remote, "rev-parse", "HEAD")
    mirror = GitMirror(str(remote), tmp_path / "mirror.git")
    mirror.refresh_branch("main")

    read = mirror.read_change(base, head, file_path=".dagctl/config.yaml")

    expected = [DiffEntry("modified", "models/a.sql"), DiffEntry("added", "models/caf\\xe9.sql")]
    assert sorted(read.entries, key=lambda e: e.path) == expected
    assert mirror.diff(base, head) == read.entries
    # Everything detect reads can be written as UTF-8 JSON (what Dagster's event log stores).
    text = json.dumps([entry.path for entry in read.entries] + [read.info.message, read.info.author],
                      ensure_ascii=False)
    assert text.encode("utf-8").decode("utf-8") == text
