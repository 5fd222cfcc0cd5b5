"""The parse cache seeds a parse with the plan's own commit's partial-parse file first (execute's re-parse)."""

from __future__ import annotations

import hashlib
import os

from dagctl_dagster.adapters import dbt_manifest
from dagctl_dagster.adapters.dbt_manifest import (
    MANIFEST,
    PARTIAL_PARSE,
    TARGET_FILE,
    DbtParseCache,
    pin_manifest,
    settle_pin,
)


def store(cache: DbtParseCache, tmp_path, commit: str, *, target: str, mtime: int) -> None:
    parsed = tmp_path / f"parsed-{commit}"
    parsed.mkdir()
    (parsed / PARTIAL_PARSE).write_text(commit)
    cache.store(commit, parsed, target=target)
    os.utime(cache.folder / commit / TARGET_FILE, ns=(mtime, mtime))


def test_seed_prefers_the_commits_own_file_then_the_newest_of_the_same_target(tmp_path):
    cache = DbtParseCache(tmp_path / "cache")
    store(cache, tmp_path, "a" * 40, target="prod", mtime=1)
    store(cache, tmp_path, "b" * 40, target="prod", mtime=2)
    store(cache, tmp_path, "c" * 40, target="dev", mtime=3)

    assert cache.seed(tmp_path / "t1", target="prod", commit="a" * 40) == "a" * 40
    assert (tmp_path / "t1" / PARTIAL_PARSE).read_text() == "a" * 40
    assert cache.seed(tmp_path / "t2", target="prod", commit="d" * 40) == "b" * 40
    # Another target's file for the same commit is not its own (dbt would parse from scratch).
    assert cache.seed(tmp_path / "t3", target="prod", commit="c" * 40) == "b" * 40
    assert DbtParseCache(tmp_path / "empty").seed(tmp_path / "t4", target="prod", commit="a" * 40) is None


def test_a_project_keeps_its_newest_pinned_manifests_only(tmp_path, monkeypatch):
    monkeypatch.setattr(dbt_manifest, "KEEP_PINS", 2)
    cache = DbtParseCache(tmp_path / "cache")
    store(cache, tmp_path, "a" * 40, target="prod", mtime=1)
    pins = tmp_path / "dbt_state"
    for number, plan_id in enumerate(("jaffle-prod-1", "jaffle-prod-2"), start=1):
        pin_manifest(pins / plan_id, cache, "a" * 40)
        os.utime(pins / plan_id, ns=(number, number))

    assert pin_manifest(pins / "jaffle-prod-3", cache, "a" * 40) == pins / "jaffle-prod-3"
    assert sorted(path.name for path in pins.iterdir()) == ["jaffle-prod-2", "jaffle-prod-3"]
    assert (pins / "jaffle-prod-3" / PARTIAL_PARSE).read_text() == "a" * 40  # the manifest is written from it


def test_seed_skips_another_commits_file_parsed_on_a_snapshot_exported_in_the_same_second(tmp_path):
    # dbt takes a schema YAML with its saved modification time as unchanged without reading it: seeded from
    # a snapshot with the same times, dbt would miss every YAML change between the two commits.
    cache = DbtParseCache(tmp_path / "cache")
    snapshots = {}
    for commit, mtime in (("a" * 40, 1_000_000_000), ("b" * 40, 1_000_000_000), ("c" * 40, 2_000_000_000)):
        snapshots[commit] = tmp_path / f"snapshot-{commit[0]}"
        snapshots[commit].mkdir()
        (snapshots[commit] / "dbt_project.yml").write_text("name: jaffle\n")
        os.utime(snapshots[commit] / "dbt_project.yml", ns=(mtime, mtime))
    parsed = tmp_path / "parsed"
    parsed.mkdir()
    (parsed / PARTIAL_PARSE).write_text("a")
    cache.store("a" * 40, parsed, target="prod", snapshot=snapshots["a" * 40])

    assert cache.seed(tmp_path / "t1", target="prod", commit="b" * 40, snapshot=snapshots["b" * 40]) is None
    assert cache.seed(tmp_path / "t2", target="prod", commit="c" * 40, snapshot=snapshots["c" * 40]) == "a" * 40
    # Its own file, on its own snapshot: the same times are the same files (execute's re-parse).
    assert cache.seed(tmp_path / "t3", target="prod", commit="a" * 40, snapshot=snapshots["a" * 40]) == "a" * 40


def test_settle_pin_keeps_the_written_manifest_hashes_it_and_leaves_a_failed_parse_pinned(tmp_path):
    cache = DbtParseCache(tmp_path / "cache")
    base = "a" * 40
    store(cache, tmp_path, base, target="prod", mtime=1)
    pinned = tmp_path / "pin"
    pinned.mkdir()
    (pinned / PARTIAL_PARSE).write_text("base partial parse")

    # A parse that failed (it may not have written the manifest yet): the pinned file stays for the next one.
    assert settle_pin(pinned, cache, base, parsed=False) is None
    assert (pinned / PARTIAL_PARSE).exists()

    # The parse wrote the manifest from the pinned file: the pin keeps the manifest only, the cache keeps it too.
    (pinned / MANIFEST).write_text('{"nodes": {}}')
    digest = settle_pin(pinned, cache, base, parsed=True)
    assert digest == hashlib.sha256(b'{"nodes": {}}').hexdigest()
    assert not (pinned / PARTIAL_PARSE).exists()
    assert (cache.folder / base / MANIFEST).read_text() == '{"nodes": {}}'
    # Settling again (execute's re-parse) gives the same hash from the same bytes.
    assert settle_pin(pinned, cache, base, parsed=True) == digest

    # The parse could not write it (another dbt version's file): "no manifest" is pinned for good.
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    (unreadable / PARTIAL_PARSE).write_text("written by another dbt")
    assert settle_pin(unreadable, cache, base, parsed=True) is None
    assert list(unreadable.iterdir()) == []
