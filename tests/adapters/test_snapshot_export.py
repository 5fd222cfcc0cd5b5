"""Snapshots are extracted with tarfile's "data" rules, also on Python releases without the filter.

Python 3.11.4 added `extractall(filter="data")`; Debian 12's Python is 3.11.2. Each test runs twice: with
the filter as this interpreter has it, and with the filter hidden, as on such an older interpreter.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path

import pytest
from fixtures.git_repos import make_repo

from dagctl_dagster.adapters.git import GitMirror
from dagctl_dagster.core.errors import DagctlGitError


@pytest.fixture(params=["filter", "no filter"])
def python_tarfile(request, monkeypatch) -> str:
    if request.param == "no filter":
        monkeypatch.delattr(tarfile, "data_filter", raising=False)
    return request.param


def test_a_snapshot_has_the_commits_files_links_and_modes(tmp_path: Path, python_tarfile: str) -> None:
    repo = make_repo(tmp_path / "repo")
    os.symlink("dbt_project.yml", repo.work / "project_link.yml")
    (repo.work / "run.sh").write_text("#!/bin/sh\n")
    (repo.work / "run.sh").chmod(0o755)
    commit = repo.commit("A link and a script")
    mirror = GitMirror(repo.url, tmp_path / "mirror.git")
    mirror.ensure()

    snapshot = mirror.export_snapshot(commit, tmp_path / "snapshots" / commit)

    assert (snapshot / "project_link.yml").is_symlink()
    assert (snapshot / "project_link.yml").read_text() == (repo.work / "dbt_project.yml").read_text()
    assert stat.S_IMODE((snapshot / "run.sh").stat().st_mode) & 0o111
    assert (snapshot / "models").is_dir() and not (snapshot / ".git").exists()


def test_a_link_leading_outside_the_snapshot_is_refused(tmp_path: Path, python_tarfile: str) -> None:
    repo = make_repo(tmp_path / "repo")
    os.symlink("../../../../etc/passwd", repo.work / "models" / "secrets.sql")
    commit = repo.commit("A link outside")
    mirror = GitMirror(repo.url, tmp_path / "mirror.git")
    mirror.ensure()

    with pytest.raises(DagctlGitError) as raised:
        mirror.export_snapshot(commit, tmp_path / "snapshots" / commit)

    message = str(raised.value)
    assert message.startswith(f"Cannot export commit '{commit}' of ")
    assert "models/secrets.sql" in message and "outside" in message
    assert message.endswith("Check free disk space, and that the repository has no links pointing outside the "
                            "project.")
    assert not (tmp_path / "snapshots" / commit).exists()
