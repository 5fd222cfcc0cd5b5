"""The authors and committers of the commits a plan deploys, read from a real mirror."""

from __future__ import annotations

import os

from fixtures.git_repos import make_repo

from dagctl_dagster.adapters.git import GitMirror, git_environment


def test_every_author_and_committer_between_base_and_target_is_listed_once(tmp_path, monkeypatch):
    repo = make_repo(tmp_path / "repo")
    base = repo.head
    for minute, (message, author) in enumerate((("First", "ann"), ("Second", "bob"), ("Third", "ann")), 1):
        monkeypatch.setenv("GIT_COMMITTER_DATE", f"@{1_700_000_000 + 60 * minute} +0000")
        repo.commit(message, {"a.txt": f"{minute}\n"}, author=author)
    mirror = GitMirror(repo.url, tmp_path / "mirror.git")
    mirror.ensure()

    identities = mirror.read_history(base, repo.head).identities
    first_deployment = mirror.read_history(None, repo.head).identities

    # carol is the committer of every commit (the fixture's Git identity). Newest commit first (ann and carol
    # both carry the third), ties by name.
    assert identities == [("ann", "ann@example.com"), ("carol", "carol@example.com"), ("bob", "bob@example.com")]
    assert first_deployment == [("ann", "ann@example.com"), ("carol", "carol@example.com")]


def test_detects_read_lists_the_same_identities_and_counts_the_commits(tmp_path):
    repo = make_repo(tmp_path / "repo")
    base = repo.head
    repo.commit("First", {"a.txt": "1\n"}, author="ann")
    repo.commit("Second", {"a.txt": "2\n"}, author="ann")
    mirror = GitMirror(repo.url, tmp_path / "mirror.git")
    mirror.ensure()

    read = mirror.read_change(base, repo.head, file_path="a.txt")

    # ann authored and carol committed both commits: a tie, broken by name.
    assert read.identities == mirror.read_history(base, repo.head).identities == [
        ("ann", "ann@example.com"), ("carol", "carol@example.com")]
    counted = int(repo.git("rev-list", "--count", f"{base}..HEAD"))
    assert read.ahead == mirror.read_history(base, repo.head).ahead == counted == 2


def test_identities_are_read_in_utf8_whatever_the_log_output_encoding_configured(tmp_path):
    repo = make_repo(tmp_path / "repo")
    base = repo.head
    repo.commit("By José", {"a.txt": "1\n"}, author="José")
    latin1_log = {**os.environ, "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "i18n.logOutputEncoding",
                  "GIT_CONFIG_VALUE_0": "ISO-8859-1"}
    mirror = GitMirror(repo.url, tmp_path / "mirror.git", env=git_environment(latin1_log))
    mirror.ensure()

    # The commit objects are UTF-8, as `detect` reads new commits without `git log`: both must agree.
    assert ("José", "José@example.com") in mirror.read_history(base, repo.head).identities
    assert ("José", "José@example.com") in mirror.read_change(base, repo.head, file_path="a.txt").identities
