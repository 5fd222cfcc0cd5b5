"""`detect`'s history cache: a plan whose range extends an earlier plan's range (same base) reads only the new
commits, and gets exactly what a read of the whole range gets, on linear histories, merges and force pushes.

Which `git log` ran is observed with `GIT_TRACE`, not assumed; the reference is a read of the whole range in a
mirror that has no cache.
"""

from __future__ import annotations

import json
import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fixtures.git_repos import DEFAULT_AUTHOR, PROJECT_CONFIG, GitRepo, make_repo

from dagctl_dagster.adapters.dbt import explain_dbt_plan
from dagctl_dagster.adapters.git import HISTORY_CACHE_NAME, ChangeRead, GitMirror, git_environment
from dagctl_dagster.core.config import ProjectConfig
from dagctl_dagster.core.plan import PlanSpec

T0 = 1_700_000_000
UNKNOWN_COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _commit(repo: GitRepo, message: str, *, author: str, at: int, committer: str = DEFAULT_AUTHOR) -> str:
    """A commit of the working clone (not pushed) adding a note, by `author` at `at` (epoch seconds)."""
    (repo.work / "notes").mkdir(exist_ok=True)
    (repo.work / "notes" / f"{at}.txt").write_text(f"{message}\n")  # a file of its own: merges never conflict
    env = {**os.environ, "GIT_AUTHOR_NAME": author, "GIT_AUTHOR_EMAIL": f"{author}@example.com",
           "GIT_COMMITTER_NAME": committer, "GIT_COMMITTER_EMAIL": f"{committer}@example.com",
           "GIT_AUTHOR_DATE": f"@{at} +0000", "GIT_COMMITTER_DATE": f"@{at} +0000"}
    subprocess.run(["git", "add", "-A"], cwd=repo.work, env=env, check=True)
    subprocess.run(["git", "commit", "-q", "-m", message], cwd=repo.work, env=env, check=True)
    return repo.head


def _traced_mirror(repo: GitRepo, root: Path) -> tuple[GitMirror, Path]:
    """A fetched mirror whose git processes trace their command lines to the returned file."""
    trace = root / "git-trace.log"
    mirror = GitMirror(repo.url, root / "mirror.git", env=git_environment({**os.environ, "GIT_TRACE": str(trace)}))
    mirror.ensure()
    return mirror, trace


def _logs_run(trace: Path) -> list[str]:
    """The `git log` command lines traced since the last call, which empties the trace."""
    logs = [line.split("built-in: ", 1)[1] for line in trace.read_text().splitlines()
            if "built-in: git log" in line]
    trace.write_text("")
    return logs


def _read(mirror: GitMirror, base: str, target: str) -> ChangeRead:
    return mirror.read_change(base, target, file_path=PROJECT_CONFIG)


def _cold_mirror(repo: GitRepo, root: Path) -> GitMirror:
    """A mirror of its own, current, whose history cache is empty: it reads every range whole."""
    mirror = GitMirror(repo.url, root / "cold-mirror.git")
    if not mirror.exists():
        mirror.ensure()
    mirror.fetch()
    (mirror.mirror_dir / HISTORY_CACHE_NAME).unlink(missing_ok=True)
    return mirror


def _explain(mirror: GitMirror, base: str, target: str) -> PlanSpec:
    project = ProjectConfig.model_validate(
        {"name": "jaffle", "framework": "dbt", "repository": mirror.url, "environments": [{"name": "prod"}]})
    return explain_dbt_plan(mirror, project, project.environments[0], plan_id="jaffle-prod-00000000",
                            target_commit=target, base_commit=base, base_version="1", triggered_by="sensor",
                            requested_by=None, now=datetime(2024, 1, 1, tzinfo=UTC))


def _people(*names: str) -> list[tuple[str, str]]:
    return [(name, f"{name}@example.com") for name in names]


def test_a_range_extended_by_a_few_commits_reads_only_their_objects_and_equals_a_cold_read(tmp_path):
    repo = make_repo(tmp_path / "repo")
    base = repo.head
    for minute, author in enumerate(("ann", "bob", "ann"), 1):
        earlier = _commit(repo, f"Change {minute}", author=author, at=T0 + 60 * minute)
    _commit(repo, "Change 4", author="dave", at=T0 + 240)
    target = _commit(repo, "Change 5", author="bob", at=T0 + 300)
    repo.git("push", "-q", "origin", "HEAD:main")
    mirror, trace = _traced_mirror(repo, tmp_path)
    earlier_spec = _explain(mirror, base, earlier)  # the previous plan of the same base
    _logs_run(trace)

    warm = _read(mirror, base, target)
    logs = _logs_run(trace)
    warm_spec = _explain(mirror, base, target)

    assert logs == []  # the two new commits were read from their objects, the rest from the cache
    cold = _read(_cold_mirror(repo, tmp_path), base, target)
    # bob authored and carol committed the newest commit (a tie broken by name), then dave's, then ann's.
    assert (warm.ahead, warm.identities) == (cold.ahead, cold.identities) == (5, _people("bob", "carol", "dave", "ann"))
    cold_spec = _explain(_cold_mirror(repo, tmp_path), base, target)
    assert warm_spec == cold_spec  # the whole sealed plan: authors and commits ahead included
    assert warm_spec.fingerprint == cold_spec.fingerprint
    assert earlier_spec.commits_ahead == 3


def test_a_range_extended_by_more_commits_than_are_read_as_objects_lists_them_with_git_log(tmp_path):
    repo = make_repo(tmp_path / "repo")
    base = repo.head
    earlier = _commit(repo, "Before", author="ann", at=T0)
    for number in range(1, 6):  # more new commits than `detect` reads one by one
        _commit(repo, f"Change {number}", author=f"dev{number % 3}", at=T0 + 60 * number)
    target = repo.head
    repo.git("push", "-q", "origin", "HEAD:main")
    mirror, trace = _traced_mirror(repo, tmp_path)
    _read(mirror, base, earlier)
    _logs_run(trace)

    warm = _read(mirror, base, target)
    logs = _logs_run(trace)

    assert len(logs) == 1 and "--left-right" in logs[0] and f"{target}...{earlier} ^{base}" in logs[0]
    cold = _read(_cold_mirror(repo, tmp_path), base, target)
    # dev2 wrote the newest commit (5 % 3), dev1 the one before, dev0 the one before that; ann the oldest.
    expected = _people("carol", "dev2", "dev1", "dev0", "ann")
    assert (warm.ahead, warm.identities) == (cold.ahead, cold.identities) == (6, expected)


def test_a_new_commit_with_another_encoding_is_listed_by_git_log(tmp_path):
    repo = make_repo(tmp_path / "repo")
    base = repo.head
    earlier = _commit(repo, "Before", author="ann", at=T0)
    repo.git("push", "-q", "origin", "HEAD:main")
    mirror, trace = _traced_mirror(repo, tmp_path)
    _read(mirror, base, earlier)
    env = {**os.environb, b"GIT_AUTHOR_NAME": b"Jos\xe9", b"GIT_AUTHOR_EMAIL": b"jose@example.com",
           b"GIT_COMMITTER_DATE": b"@%d +0000" % (T0 + 60), b"GIT_AUTHOR_DATE": b"@%d +0000" % (T0 + 60)}
    subprocess.run(["git", "-c", "i18n.commitEncoding=latin-1", "-c", f"user.name={DEFAULT_AUTHOR}",
                    "-c", f"user.email={DEFAULT_AUTHOR}@example.com", "commit", "-q", "--allow-empty", "-m",
                    "Latin-1"], cwd=repo.work, env=env, check=True)
    target = repo.head
    repo.git("push", "-q", "origin", "HEAD:main")
    mirror.fetch()
    _logs_run(trace)

    warm = _read(mirror, base, target)
    logs = _logs_run(trace)

    # Its object holds the name in Latin-1; `git log` gives it in UTF-8, as a read of the whole range does.
    assert len(logs) == 1 and "--left-right" in logs[0]
    cold = _read(_cold_mirror(repo, tmp_path), base, target)
    assert warm.identities == cold.identities
    assert warm.identities[:2] == [("José", "jose@example.com"), ("carol", "carol@example.com")]


def test_an_empty_cached_range_is_never_extended_by_reading_objects(tmp_path):
    repo = make_repo(tmp_path / "repo")
    behind = _commit(repo, "Behind", author="ann", at=T0)
    base = _commit(repo, "Base", author="bob", at=T0 + 60)
    repo.git("push", "-q", "origin", "HEAD:main")
    mirror, trace = _traced_mirror(repo, tmp_path)
    assert _read(mirror, base, behind).ahead == 0  # a range whose target is behind its base: cached, empty

    read = _read(mirror, base, base)  # the base's parent is the cached target, yet base..base is empty

    assert (read.ahead, read.identities) == (0, [])
    assert _read(_cold_mirror(repo, tmp_path), base, base) == read


def test_a_branch_merged_after_the_earlier_plan_gives_the_cold_read_in_the_canonical_order(tmp_path):
    repo = make_repo(tmp_path / "repo")
    base = repo.head
    repo.git("checkout", "-q", "-b", "feature")
    _commit(repo, "Feature work", author="erin", at=T0 + 60)
    _commit(repo, "More feature work", author="frank", at=T0 + 120)
    repo.git("checkout", "-q", "main")
    earlier = _commit(repo, "Main work", author="ann", at=T0 + 180)
    repo.git("push", "-q", "origin", "HEAD:main")
    mirror, trace = _traced_mirror(repo, tmp_path)
    _explain(mirror, base, earlier)  # the previous plan: base..earlier is ann's commit alone
    merge_env = {**os.environ, "GIT_AUTHOR_NAME": "gina", "GIT_AUTHOR_EMAIL": "gina@example.com",
                 "GIT_COMMITTER_NAME": "gina", "GIT_COMMITTER_EMAIL": "gina@example.com",
                 "GIT_AUTHOR_DATE": f"@{T0 + 240} +0000", "GIT_COMMITTER_DATE": f"@{T0 + 240} +0000"}
    subprocess.run(["git", "merge", "-q", "--no-ff", "-m", "Merge feature", "feature"], cwd=repo.work,
                   env=merge_env, check=True)
    target = _commit(repo, "After the merge", author="dave", at=T0 + 300)
    repo.git("push", "-q", "origin", "HEAD:main")
    mirror.fetch()
    _logs_run(trace)

    warm_spec = _explain(mirror, base, target)
    logs = _logs_run(trace)

    assert len(logs) == 1 and f"{target}...{earlier} ^{base}" in logs[0]
    cold_spec = _explain(_cold_mirror(repo, tmp_path), base, target)
    # Newest commit first (git log's history order would put ann's before the feature branch's people).
    expected = _people("carol", "dave", "gina", "ann", "frank", "erin")
    assert [(person.name, person.email) for person in warm_spec.authors] == expected
    assert warm_spec == cold_spec
    assert warm_spec.commits_ahead == 5  # the merge, the two feature commits, ann's, dave's


def test_a_force_pushed_target_that_dropped_cached_commits_is_read_whole(tmp_path):
    repo = make_repo(tmp_path / "repo")
    base = repo.head
    _commit(repo, "Kept", author="ann", at=T0 + 60)
    earlier = _commit(repo, "Dropped later", author="bob", at=T0 + 120)
    repo.git("push", "-q", "origin", "HEAD:main")
    mirror, trace = _traced_mirror(repo, tmp_path)
    _read(mirror, base, earlier)
    repo.git("reset", "-q", "--hard", "HEAD~1")
    target = _commit(repo, "Replacement", author="dave", at=T0 + 180)
    repo.git("push", "-q", "--force", "origin", "HEAD:main")
    mirror.fetch()
    _logs_run(trace)

    warm = _read(mirror, base, target)
    logs = _logs_run(trace)

    # The extension showed bob's commit on the cached side only (`>`), so the whole range was read again.
    assert len(logs) == 2 and "--left-right" in logs[0] and f"{base}..{target}" in logs[1]
    cold = _read(_cold_mirror(repo, tmp_path), base, target)
    assert (warm.ahead, warm.identities) == (cold.ahead, cold.identities) == (2, _people("carol", "dave", "ann"))


def _one_change(tmp_path: Path) -> tuple[str, str, GitMirror, Path]:
    """A repository with one commit by ann on top of its first, pushed; a traced mirror of it: base, target,
    mirror, trace file."""
    repo = make_repo(tmp_path / "repo")
    base = repo.head
    target = _commit(repo, "Change", author="ann", at=T0 + 60)
    repo.git("push", "-q", "origin", "HEAD:main")
    mirror, trace = _traced_mirror(repo, tmp_path)
    return base, target, mirror, trace


def test_a_second_detect_of_the_same_range_runs_no_git_log(tmp_path):
    base, target, mirror, trace = _one_change(tmp_path)
    first = _read(mirror, base, target)
    _logs_run(trace)

    second = _read(mirror, base, target)

    assert _logs_run(trace) == []
    assert second == first
    assert (second.ahead, second.identities) == (1, _people("ann", "carol"))


def _cache_of(base: str, **entry: object) -> bytes:
    """A cache file holding one entry for `base`: a target, `ahead` and identities, overridden by `entry`."""
    fields = {"target": UNKNOWN_COMMIT, "ahead": 7, "identities": [["mallory", "m@example.com", 1]], **entry}
    return json.dumps({"version": 1, "bases": {base: fields}}).encode()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda base, target: b"\x00\xff not json {", id="garbage"),
        pytest.param(lambda base, target: b'["a", "list"]', id="not-an-object"),
        pytest.param(lambda base, target: b'{"version": 1, "bases": []}', id="bases-not-an-object"),
        pytest.param(lambda base, target: _cache_of(base, target=target).replace(b'"version": 1', b'"version": 99'),
                     id="other-version"),
        pytest.param(lambda base, target: _cache_of(base, target=target, ahead="7"), id="ahead-not-a-number"),
        pytest.param(lambda base, target: _cache_of(base, target=target, identities="mallory"),
                     id="identities-not-a-list"),
        pytest.param(lambda base, target: _cache_of(base, target=target, identities=[["mallory", 1]]),
                     id="identity-not-a-triple"),
        pytest.param(lambda base, target: _cache_of(base, target=target[:12]), id="target-not-a-full-sha"),
        pytest.param(lambda base, target: _cache_of(base, target=f"{target}\n"), id="target-with-a-newline"),
    ],
)
def test_a_malformed_cache_file_is_ignored_and_rewritten(tmp_path, content):
    base, target, mirror, trace = _one_change(tmp_path)
    (mirror.mirror_dir / HISTORY_CACHE_NAME).write_bytes(content(base, target))

    read = _read(mirror, base, target)
    logs = _logs_run(trace)
    again = _read(mirror, base, target)

    assert len(logs) == 1 and f"{base}..{target}" in logs[0]  # the whole range
    assert (read.ahead, read.identities) == (1, _people("ann", "carol"))
    assert _logs_run(trace) == []  # rewritten: the second read was a hit
    assert again == read


def test_a_cached_commit_gone_from_the_mirror_means_the_whole_range_is_read(tmp_path):
    base, target, mirror, trace = _one_change(tmp_path)
    (mirror.mirror_dir / HISTORY_CACHE_NAME).write_bytes(_cache_of(base))  # a valid entry, its target unknown

    read = _read(mirror, base, target)

    logs = _logs_run(trace)
    assert len(logs) == 2 and UNKNOWN_COMMIT in logs[0] and f"{base}..{target}" in logs[1]
    assert (read.ahead, read.identities) == (1, _people("ann", "carol"))


def test_the_cache_keeps_the_32_most_recently_written_bases(tmp_path):
    repo = make_repo(tmp_path / "repo")
    bases = [_commit(repo, f"Change {number}", author="ann", at=T0 + 60 * number) for number in range(34)]
    target = bases.pop()
    repo.git("push", "-q", "origin", "HEAD:main")
    mirror, trace = _traced_mirror(repo, tmp_path)
    for base in bases:  # 33 bases: the first one written is dropped
        _read(mirror, base, target)
    _logs_run(trace)

    _read(mirror, bases[1], target)
    kept_logs = _logs_run(trace)
    _read(mirror, bases[0], target)
    dropped_logs = _logs_run(trace)

    assert kept_logs == []
    assert len(dropped_logs) == 1 and f"{bases[0]}..{target}" in dropped_logs[0]


def test_a_cache_that_cannot_be_written_never_fails_detect(tmp_path):
    base, target, mirror, trace = _one_change(tmp_path)
    (mirror.mirror_dir / HISTORY_CACHE_NAME).mkdir()  # neither readable as a file nor replaceable

    read = _read(mirror, base, target)
    again = _read(mirror, base, target)

    assert (read.ahead, read.identities) == (again.ahead, again.identities) == (1, _people("ann", "carol"))
    assert len(_logs_run(trace)) == 2  # nothing was cached
    assert [path.name for path in mirror.mirror_dir.iterdir() if path.name.startswith(".dagctl-history")] == []
