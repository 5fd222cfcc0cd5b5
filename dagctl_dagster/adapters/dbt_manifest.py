"""dbt's manifest: the graph of a parsed project, and the parse state kept between plans.

`read_dbt_graph` turns dbt's `manifest.json` into the `core.dbt_impact.DbtGraph` the impact is computed on.
`DbtParseCache` keeps, per project, dbt's `partial_parse.msgpack` of the last few parsed commits
(`storage_dir/dbt_parse/<project>/<commit>/`), so the next plan's parse starts from the newest one and dbt
re-parses only the files that changed; and a commit's `manifest.json` once a plan's state comparison had it
written from that file (`runner.dbt_parse.write_base_manifest`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..core.dbt_impact import DbtGraph, DbtGraphNode

MANIFEST = "manifest.json"
GRAPH_FILE = "dagctl_graph.json"  # runner.dbt_parse.GRAPH_FILE (the runner imports nothing of ours)
PARTIAL_PARSE = "partial_parse.msgpack"
TARGET_FILE = "dbt_target"
KEEP_PINS = 50  # pinned state folders kept per project (`prune_pins`)
PINNED_FROM = "base_commit"  # in a pinned state folder: the commit its manifest is (or would have been) of
SNAPSHOT_TIME_FILE = "snapshot_mtime"
# Sections of the manifest whose entries are graph nodes.
_SECTIONS = ("nodes", "sources", "exposures", "metrics", "semantic_models", "saved_queries", "unit_tests")


def read_dbt_graph(manifest_path: Path) -> DbtGraph:
    """The graph of a `manifest.json` written by dbt (enabled nodes only: disabled ones run nowhere).

    Example: `read_dbt_graph(target / "manifest.json").nodes["model.jaffle.orders"].parents`.
    """
    manifest = json.loads(manifest_path.read_text())
    parent_map: dict[str, list[str]] = manifest.get("parent_map") or {}
    nodes = {}
    for section in _SECTIONS:
        for unique_id, node in (manifest.get(section) or {}).items():
            parents = parent_map.get(unique_id)
            if parents is None:
                parents = (node.get("depends_on") or {}).get("nodes") or []
            nodes[unique_id] = DbtGraphNode.model_construct(
                unique_id=unique_id, resource_type=node.get("resource_type", section.rstrip("s")),
                name=node.get("name", unique_id), path=node.get("original_file_path") or "",
                patch_path=node.get("patch_path"), fqn=tuple(node.get("fqn") or ()),
                parents=tuple(sorted(set(parents))), test_name=(node.get("test_metadata") or {}).get("name"),
                column_name=node.get("column_name"), file_key_name=node.get("file_key_name"))
    return DbtGraph.model_construct(nodes=nodes)


def read_parsed_graph(target_path: Path) -> DbtGraph:
    """The graph of a parse step's target path: the compact graph the step wrote from dbt's in-memory
    manifest (`runner.dbt_parse.GRAPH_FILE`), else dbt's `manifest.json`."""
    graph_file = target_path / GRAPH_FILE
    if not graph_file.exists():
        return read_dbt_graph(target_path / MANIFEST)
    document = json.loads(graph_file.read_text())
    fields = document["fields"]
    nodes = {}
    for row in document["rows"]:
        values = dict(zip(fields, row, strict=True))
        values["fqn"], values["parents"] = tuple(values["fqn"]), tuple(values["parents"])
        nodes[values["unique_id"]] = DbtGraphNode.model_construct(**values)
    return DbtGraph.model_construct(nodes=nodes)


def _read_target(entry: Path) -> str | None:
    try:
        return (entry / TARGET_FILE).read_text()
    except OSError:
        return None


def _read_snapshot_time(entry: Path) -> str | None:
    try:
        return (entry / SNAPSHOT_TIME_FILE).read_text()
    except OSError:
        return None


def get_snapshot_time(snapshot: Path | None) -> str | None:
    """The modification time (ns) of a snapshot's `dbt_project.yml`: Git exports every file of a snapshot
    with the same one, the time it was exported (`git archive` of a tree)."""
    try:
        return str((snapshot / "dbt_project.yml").stat().st_mtime_ns) if snapshot is not None else None
    except OSError:
        return None


class DbtParseCache:
    """The parse state (manifest, partial-parse file) of a project's last `keep` parsed commits.

    Example:
        cache = DbtParseCache(storage_dir / "dbt_parse" / "jaffle")
        cache.seed(target_path, commit=c)  # c's own or the newest partial-parse file, before dbt parses
        cache.store(c, target_path)        # after a successful parse
    """

    def __init__(self, folder: Path, *, keep: int = 3):
        self.folder = folder
        self.keep = keep

    def _entries(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        # Newest parse first: the target file is written once, when the parse is stored (a manifest written
        # later for a state comparison does not make an old commit new).
        entries = [path for path in self.folder.iterdir()
                   if not path.name.startswith(".") and (path / TARGET_FILE).exists()]
        return sorted(entries, key=lambda path: (path / TARGET_FILE).stat().st_mtime_ns, reverse=True)

    def manifest_of(self, commit: str) -> Path | None:
        """The kept manifest of `commit`, else its kept partial-parse file (from which the parse step writes
        the manifest: `runner.dbt_parse.write_base_manifest`), else `None`."""
        for name in (MANIFEST, PARTIAL_PARSE):
            path = self.folder / commit / name
            if path.exists():
                return path
        return None

    def keep_manifest(self, commit: str, manifest: Path) -> None:
        """Keeps `manifest` (written from `commit`'s partial-parse file) as `commit`'s, if `commit` is still
        kept and has none, so the next plan with the same base does not write it again."""
        entry = self.folder / commit
        if not entry.is_dir() or (entry / MANIFEST).exists():
            return
        staging: Path | None = None
        try:  # another plan may keep the same manifest, or drop the entry, at the same time: both are fine
            handle, name = tempfile.mkstemp(prefix=f".{MANIFEST}.", dir=entry)
            os.close(handle)
            staging = Path(name)
            shutil.copy2(manifest, staging)
            os.replace(staging, entry / MANIFEST)
        except OSError:
            if staging is not None:
                staging.unlink(missing_ok=True)

    def seed(self, target_path: Path, *, target: str = "", commit: str = "", snapshot: Path | None = None
             ) -> str | None:
        """Copies a kept partial-parse file into `target_path` before dbt parses: `commit`'s own when it is
        kept (dbt then finds nothing changed: the re-parse at execute), else the newest one parsed for the
        same dbt `target` (dbt parses from scratch when the profile differs), else the newest; returns the
        commit it came from, or `None` when none is kept.

        Never another commit's file parsed on a snapshot with the same modification time as `snapshot`: dbt
        takes a schema YAML whose modification time is the one it saved as unchanged, without reading it,
        so two snapshots exported in the same second would hide every YAML change between them.
        """
        mtime = get_snapshot_time(snapshot)
        entries = [entry for entry in self._entries() if entry.name == commit or mtime is None
                   or _read_snapshot_time(entry) != mtime]
        own = [entry for entry in entries if entry.name == commit and _read_target(entry) == target]
        same = [entry for entry in entries if _read_target(entry) == target and entry not in own]
        for entry in [*own, *same, *(entry for entry in entries if entry not in own and entry not in same)]:
            if (entry / PARTIAL_PARSE).exists():
                target_path.mkdir(parents=True, exist_ok=True)
                shutil.copy2(entry / PARTIAL_PARSE, target_path / PARTIAL_PARSE)
                return entry.name
        return None

    def store(self, commit: str, target_path: Path, *, target: str = "", snapshot: Path | None = None) -> None:
        """Keeps the partial-parse file (and a manifest, if any) dbt wrote to `target_path` (parsing
        `snapshot` for dbt `target`) as `commit`'s, and drops the oldest beyond `keep`."""
        staging = self.folder / f".{commit}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        mtime = get_snapshot_time(snapshot)
        if mtime is not None:
            (staging / SNAPSHOT_TIME_FILE).write_text(mtime)
        (staging / TARGET_FILE).write_text(target)
        for name in (MANIFEST, PARTIAL_PARSE):
            if (target_path / name).exists():
                shutil.copy2(target_path / name, staging / name)
        shutil.rmtree(self.folder / commit, ignore_errors=True)
        staging.rename(self.folder / commit)
        for old in self._entries()[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)


def pin_manifest(pinned: Path, cache: DbtParseCache, base_commit: str) -> Path | None:
    """The folder `pinned` holding the manifest `cache` keeps of `base_commit`, pinned there the first time;
    `None` when no manifest is pinned.

    The first call decides for good: it copies the kept manifest into `pinned` (or the kept partial-parse file,
    from which the parse step writes the manifest: see `settle_pin`), or pins "no manifest" (a folder
    without either) when none is kept. Every later call returns what the first pinned, whatever the cache
    keeps since, so dbt's state comparison of one plan always sees the same bytes (a manifest of the base
    commit kept later never changes the scope of an approved plan). The folder appears complete or not at
    all (renamed into place), so a parse that reads it never sees half a copy. Used by the run worker
    (`defs.dbt_impact.pin_base_manifest`) and by the parse pod on its claim (`runner.dbt_parse_pod`).

    Example: `pin_manifest(storage / "dbt_state" / "jaffle" / plan_id, cache, base_commit)`.
    """
    if not pinned.is_dir():
        staging = pinned.with_name(f".{pinned.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        (staging / PINNED_FROM).write_text(base_commit)  # never empty: a rename onto it fails
        base = cache.manifest_of(base_commit)
        if base is not None:  # its manifest, or the partial-parse file the parse step writes it from
            shutil.copy2(base, staging / base.name)
        try:
            staging.rename(pinned)
        except OSError:  # pinned meanwhile by another parse of the same plan: its pin holds
            shutil.rmtree(staging, ignore_errors=True)
        else:
            prune_pins(pinned.parent)
    return pinned if (pinned / MANIFEST).exists() or (pinned / PARTIAL_PARSE).exists() else None


def settle_pin(pinned: Path, cache: DbtParseCache, base_commit: str, *, parsed: bool) -> str | None:
    """After the parse step with `--state pinned`: the sha256 of the pinned manifest (`None` when none is
    pinned), as the plan's fingerprint records it.

    When the parse wrote the manifest from the pinned partial-parse file (`runner.dbt_parse.
    write_base_manifest`), the pin keeps only the manifest (or pins "no manifest" for good, if it could not
    be written), and the cache keeps that manifest for the next plan with the same base. A parse that failed
    (`parsed` false: it may not have got that far) leaves the pin as it was, for the next parse.
    """
    partial = pinned / PARTIAL_PARSE
    if parsed and partial.exists():
        partial.unlink()
        if (pinned / MANIFEST).exists():
            cache.keep_manifest(base_commit, pinned / MANIFEST)
    manifest = pinned / MANIFEST
    return hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.exists() else None


def prune_pins(folder: Path) -> None:
    """Deletes all but the `KEEP_PINS` newest pinned state folders of a project (a manifest each).

    A plan whose pin was deleted (one older than `KEEP_PINS` newer plans of the project that wanted a state
    comparison) is pinned again if it ever executes: with other bytes, `gate` refuses it as drifted, so a
    deleted pin can block an old plan but never change what an approved plan runs.
    """
    pins = [path for path in folder.iterdir() if path.is_dir() and not path.name.startswith(".")]
    pins.sort(key=lambda path: path.stat().st_mtime_ns, reverse=True)
    for old in pins[KEEP_PINS:]:
        shutil.rmtree(old, ignore_errors=True)
