"""The parse step's runner, run as a plan runs it: a project with a package, `dbt_packages/` cached by hash.

`python -m dagctl_dagster.runner.dbt_parse` on a copy of the example project that depends on a package in
a Git repository on disk (`dbt deps` clones it, no network): the first plan runs `dbt deps` and keeps `dbt_packages/` under the hash of the packages file; the
next plan of the same packages (a fresh snapshot) gets them from the cache, and dbt parses partially.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from fixtures.git_repos import run_git

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_parse(project: Path, target: Path, cache: Path, tmp_path: Path) -> dict:
    output = tmp_path / f"{project.name}.json"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DAGCTL_WAREHOUSE_DIR": str(tmp_path),
           "DBT_PROFILES_DIR": str(EXAMPLES / "dbt_profiles"), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    subprocess.run([sys.executable, "-m", "dagctl_dagster.runner.dbt_parse", "--project-dir", str(project),
                    "--target-path", str(target), "--target", "dev", "--output", str(output),
                    "--packages-cache", str(cache)], env=env, check=True)
    return json.loads(output.read_text())


def make_package_repo(root: Path) -> Path:
    package = root / "money"
    (package / "macros").mkdir(parents=True)
    (package / "dbt_project.yml").write_text('name: money\nversion: "1.0.0"\nconfig-version: 2\n')
    (package / "macros" / "to_euros.sql").write_text("{% macro to_euros(x) %}{{ x }} * 0.9{% endmacro %}\n")
    run_git("init", "-q", "-b", "main", cwd=package)
    run_git("add", "-A", cwd=package)
    run_git("commit", "-q", "-m", "money", cwd=package)
    return package


def snapshot_with_package(root: Path, package: Path) -> Path:
    project = root / "jaffle"
    shutil.copytree(EXAMPLES / "jaffle_dbt", project)
    (project / "packages.yml").write_text(
        f'packages:\n  - git: "file://{package}"\n    revision: main\n')
    return project


def test_packages_are_installed_once_per_packages_hash_and_the_next_parse_is_partial(tmp_path):
    cache = tmp_path / "cache"
    package = make_package_repo(tmp_path / "packages")
    first = snapshot_with_package(tmp_path / "plan1", package)
    assert run_parse(first, tmp_path / "t1", cache, tmp_path)["outcome"] == "parsed"
    [cached] = cache.iterdir()
    assert (cached / "dbt_packages" / "money" / "macros" / "to_euros.sql").exists()

    # The package's repository is gone: only the cache can give the next plan its packages.
    shutil.rmtree(package)
    second = snapshot_with_package(tmp_path / "plan2", package)
    (tmp_path / "t2").mkdir()
    shutil.copy2(tmp_path / "t1" / "partial_parse.msgpack", tmp_path / "t2" / "partial_parse.msgpack")
    result = run_parse(second, tmp_path / "t2", cache, tmp_path)
    assert (result["outcome"], result["mode"]) == ("parsed", "partial")
    assert (second / "dbt_packages" / "money" / "macros" / "to_euros.sql").exists()
    assert [path.name for path in cache.iterdir()] == [cached.name]
    # dbt's parse state holds the package's macro (msgpack keeps its strings as UTF-8 bytes).
    assert b"macro.money.to_euros" in (tmp_path / "t2" / "partial_parse.msgpack").read_bytes()
    assert not (tmp_path / "t2" / "manifest.json").exists()


def test_the_base_manifest_written_from_a_partial_parse_file_is_the_one_dbt_parse_writes(tmp_path):
    """A commit's manifest.json, needed only as the base of a state comparison, is written then from its
    kept partial-parse file: the same manifest `dbt parse` writes (but for the format of one timestamp)."""
    project = tmp_path / "jaffle"
    shutil.copytree(EXAMPLES / "jaffle_dbt", project)
    reference = tmp_path / "reference"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DAGCTL_WAREHOUSE_DIR": str(tmp_path),
           "DBT_PROFILES_DIR": str(EXAMPLES / "dbt_profiles"), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"}
    subprocess.run([str(Path(sys.executable).with_name("dbt")), "--quiet", "parse", "--project-dir", str(project),
                    "--target-path", str(reference), "--target", "dev"], env=env, check=True)
    state, target = tmp_path / "state", tmp_path / "target"
    for folder in (state, target):
        folder.mkdir()
        shutil.copy2(reference / "partial_parse.msgpack", folder / "partial_parse.msgpack")
    output = tmp_path / "result.json"
    subprocess.run([sys.executable, "-m", "dagctl_dagster.runner.dbt_parse", "--project-dir", str(project),
                    "--target-path", str(target), "--target", "dev", "--output", str(output),
                    "--state", str(state)], env=env, check=True)

    result = json.loads(output.read_text())
    assert (result["outcome"], result["mode"], result["modified"]) == ("parsed", "partial", [])
    written, parsed = (json.loads((folder / "manifest.json").read_text()) for folder in (state, reference))
    for manifest in (written, parsed):  # "...Z" from dbt parse, "...+00:00" read back: the same instant
        manifest["metadata"].pop("invocation_started_at")
    assert written == parsed

    # A partial-parse file this dbt cannot read: no comparison, and the result says why.
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / "partial_parse.msgpack").write_bytes(b"not msgpack")
    subprocess.run([sys.executable, "-m", "dagctl_dagster.runner.dbt_parse", "--project-dir", str(project),
                    "--target-path", str(target), "--target", "dev", "--output", str(output),
                    "--state", str(unreadable)], env=env, check=True)
    result = json.loads(output.read_text())
    assert result["outcome"] == "parsed" and "modified" not in result
    assert result["state_unavailable"].startswith("the base commit's partial_parse.msgpack cannot be read by dbt ")
    assert not (unreadable / "manifest.json").exists()
