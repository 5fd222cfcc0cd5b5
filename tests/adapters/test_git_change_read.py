"""`detect`'s concurrent read of a change: the history (commit count, authors and committers) read by a `git log`
that runs while the caller works on the diff, exact on merges and long histories, and no process left behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from fixtures.git_repos import make_repo

from dagctl_dagster.adapters.git import CommitHistory, GitMirror
from dagctl_dagster.core.errors import DagctlGitError


def _git_children() -> list[str]:
    """This process's git children, live or exited and not reaped (zombies have no command line), apart from
    the persistent `cat-file --batch` GitPython keeps."""
    children = Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()
    found = []
    for pid in children:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except FileNotFoundError:
            continue  # reaped meanwhile
        if name == "git" and "cat-file" not in command:
            found.append(command or f"pid {pid}, exited and not reaped")
    return found


def _commit_as(repo, message: str, *, author: str, committer: str, at: int) -> str:
    """A commit on the current branch of the working clone with distinct author and committer, made at `at`
    (seconds since the epoch)."""
    env = {**os.environ, "GIT_AUTHOR_NAME": author, "GIT_AUTHOR_EMAIL": f"{author}@example.com",
           "GIT_COMMITTER_NAME": committer, "GIT_COMMITTER_EMAIL": f"{committer}@example.com",
           "GIT_AUTHOR_DATE": f"@{at} +0000", "GIT_COMMITTER_DATE": f"@{at} +0000"}
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", message], cwd=repo.work, env=env, check=True)
    return repo.git("rev-parse", "HEAD")


def test_identities_of_a_merge_include_every_commit_of_the_merged_branch(tmp_path):
    repo = make_repo(tmp_path / "repo")
    base = repo.head
    repo.git("checkout", "-q", "-b", "feature")
    _commit_as(repo, "Feature work", author="bob", committer="erin", at=1_700_000_100)
    _commit_as(repo, "More feature work", author="frank", committer="bob", at=1_700_000_200)
    repo.git("checkout", "-q", "main")
    _commit_as(repo, "Hotfix on main", author="ann", committer="ann", at=1_700_000_300)
    env = {**os.environ, "GIT_AUTHOR_NAME": "dave", "GIT_AUTHOR_EMAIL": "dave@example.com",
           "GIT_COMMITTER_NAME": "gina", "GIT_COMMITTER_EMAIL": "gina@example.com",
           "GIT_AUTHOR_DATE": "@1700000400 +0000", "GIT_COMMITTER_DATE": "@1700000400 +0000"}
    subprocess.run(["git", "merge", "-q", "--no-ff", "-m", "Merge feature", "feature"], cwd=repo.work, env=env,
                   check=True)
    repo.git("push", "-q", "origin", "HEAD:main")
    mirror = GitMirror(repo.url, tmp_path / "mirror.git")
    mirror.ensure()

    with mirror.start_change_read(base, repo.head, file_path=".dagctl/config.yaml") as change:
        history = change.history()

    assert history.ahead == 4  # the merge, the hotfix and both feature commits
    # The canonical order: by the newest commit carrying the identity (the merge, the hotfix, then frank's
    # commit, where bob is the committer, then bob's own, committed by erin), ties by name.
    assert history.identities == [(name, f"{name}@example.com")
                                  for name in ("dave", "gina", "ann", "bob", "frank", "erin")]
    assert history.identities == mirror.read_history(base, repo.head).identities


def test_history_longer_than_a_pipe_holds_is_read_whole_after_the_callers_own_work(tmp_path):
    bare = tmp_path / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    commits = 3000  # about 200 KB of `git log` output, more than a pipe buffers while the caller works
    stream = []
    for number in range(commits + 1):
        person = f"dev{number % 7}"
        stamp = f"{person} <{person}@example.com> {1_700_000_000 + number} +0000"
        stream.append(f"commit refs/heads/main\nauthor {stamp}\ncommitter Bot <bot@example.com> "
                      f"{1_700_000_000 + number} +0000\ndata 2\nc\n")
        stream.append(f"M 100644 inline file.txt\ndata {len(str(number)) + 1}\n{number}\n\n")
    subprocess.run(["git", f"--git-dir={bare}", "fast-import", "--quiet"], input="".join(stream).encode(),
                   check=True)
    base = subprocess.run(["git", f"--git-dir={bare}", "rev-parse", f"main~{commits}"], capture_output=True,
                          text=True, check=True).stdout.strip()
    head = subprocess.run(["git", f"--git-dir={bare}", "rev-parse", "main"], capture_output=True, text=True,
                          check=True).stdout.strip()
    mirror = GitMirror(str(bare), tmp_path / "mirror.git")
    mirror.ensure()

    with mirror.start_change_read(base, head, file_path="file.txt") as change:
        assert change.file_text == f"{commits}\n"
        history = change.history()

    # Newest first: commit 3000 is dev4's (3000 % 7), committed by Bot (a tie, broken by name: "Bot" sorts
    # first), then dev3's, dev2's...
    people = [f"dev{(commits - age) % 7}" for age in range(7)]
    assert history == CommitHistory(
        ahead=commits,
        identities=[("Bot", "bot@example.com")] + [(person, f"{person}@example.com") for person in people],
    )


def test_a_change_read_whose_history_is_never_asked_for_leaves_no_git_log_running(tmp_path):
    repo = make_repo(tmp_path / "repo")
    base = repo.head
    repo.commit("Change", {"a.txt": "1\n"}, author="ann")
    mirror = GitMirror(repo.url, tmp_path / "mirror.git")
    mirror.ensure()

    change = mirror.start_change_read(base, repo.head, file_path=".dagctl/config.yaml")
    with pytest.raises(RuntimeError, match="the caller failed"):
        with change:
            raise RuntimeError("the caller failed before asking for the history")

    assert _git_children() == []  # while `change` is still referenced (garbage collection would reap it)


def test_a_change_read_of_an_unknown_base_names_it_and_leaves_no_git_running(tmp_path):
    repo = make_repo(tmp_path / "repo")
    mirror = GitMirror(repo.url, tmp_path / "mirror.git")
    mirror.ensure()
    unknown = "0123456789abcdef0123456789abcdef01234567"

    with pytest.raises(DagctlGitError, match=f"Commit or branch '{unknown}' is not in the mirror"):
        mirror.start_change_read(unknown, repo.head, file_path=".dagctl/config.yaml")

    assert _git_children() == []


def test_small_fetches_stay_packed_in_the_mirror(tmp_path):
    repo = make_repo(tmp_path / "repo")
    mirror = GitMirror(repo.url, tmp_path / "mirror.git")
    mirror.ensure()
    for number in range(3):
        repo.commit(f"Change {number}", {"a.txt": f"{number}\n"}, author="ann")
        mirror.refresh_branch("main")

    counts = dict(line.split(": ") for line in subprocess.run(
        ["git", f"--git-dir={mirror.mirror_dir}", "count-objects", "-v"], capture_output=True, text=True,
        check=True).stdout.splitlines())

    # `git log` reads packed commits 3.5 times faster than loose ones; git unpacks small fetches by default.
    assert (counts["count"], counts["packs"]) == ("0", "4")
    assert mirror.read_history(f"{repo.head}~3", repo.head).ahead == 3


@pytest.mark.parametrize(
    ("file_path", "expected"),
    [
        ("dbt project/.dagctl/config.yaml", 'version: "7"\n'),  # spaces in the path
        ("dbt project/missing 12 file.yaml", None),  # a missing file whose name looks like a size
        ("dbt project/models", None),  # a directory is not a file
    ],
)
def test_the_file_read_with_the_change_is_the_file_at_the_target(tmp_path, file_path, expected):
    repo = make_repo(tmp_path / "repo")
    base = repo.head
    repo.commit("Project in a folder", {"dbt project/.dagctl/config.yaml": 'version: "7"\n',
                                         "dbt project/models/a.sql": "select 1\n"})
    mirror = GitMirror(repo.url, tmp_path / "mirror.git")
    mirror.ensure()

    read = mirror.read_change(base, repo.head, subdirectory="dbt project", file_path=file_path)

    assert read.file_text == mirror.read_file(repo.head, file_path) == expected
    assert read.info == mirror.commit_info(repo.head)
    assert [entry.path for entry in read.entries] == [".dagctl/config.yaml", "models/a.sql"]
