"""YAML-only data test changes: a properties file whose only change is in its data tests runs those tests.

dbt's `path:` selector on a properties YAML selects every node the file describes and, by eager indirect
selection, all their tests: adding one `not_null` to a column would rebuild the model. When the Git diff of a
YAML changes nothing but its tests (`data_tests:` / `tests:` of a model, seed, snapshot or source, of its
columns, of a source table and its columns), the plan selects exactly the tests the change adds or modifies,
by their fqn, and nothing for a removed test. Two rules choose them, and the plan says which:

- dbt's own state comparison, when the deployed commit's manifest is kept: the tests of that YAML that
  `state:modified` lists (an edited test gets a new unique id or a changed config: dbt lists it);
- otherwise the YAML diff and the target's manifest: each test entry added or edited (its new version) is
  matched to the target's test nodes of that file on the same node, source table and column, of the same
  generic test (`test_metadata.name`). Tests of the same kind on the same column are selected together.

Anything else that changed in the YAML (a description, a column, a config, a versioned model's tests, unit
tests) keeps today's rule for that file: dbt's `state:modified` treats even a description change as a
modification when docs are persisted, and the node's own build is then what a reviewer expects. A test entry
that matches no node of the target (disabled, or named in a way this cannot follow) keeps today's rule too.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict

from .dbt_changes import ChangeType, DbtScope, FileChange, Scope, build_path_selector
from .dbt_impact import TEST_TYPES, DbtGraph, build_fqn_selector

TEST_KEYS = ("data_tests", "tests")
# Top-level sections whose entries (and their columns) carry data tests; sources also per table.
_NODE_SECTIONS = ("models", "seeds", "snapshots")
_YAML_SUFFIXES = (".yml", ".yaml")

# Where a test entry is attached: (section, node or source name, source table, column); "" when absent.
Carrier = tuple[str, str, str, str]


class YamlTestEntry(BaseModel):
    """One data test entry a YAML adds or edits (its new version), where it is attached."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    carrier: Carrier
    test_name: str


class YamlTestChange(BaseModel):
    """What a YAML whose only change is in its data tests adds, edits and removes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str
    changed: tuple[YamlTestEntry, ...] = ()
    removed: int = 0


def is_test_yaml_candidate(change: FileChange, scope: DbtScope) -> bool:
    """A modified properties YAML that a selective plan selects with `path:` (a candidate for narrowing)."""
    return (scope.scope is Scope.SELECTIVE and change.change_type is ChangeType.MODIFIED
            and change.path.endswith(_YAML_SUFFIXES)
            and _criterion_of(change.path, scope.selection) is not None)


def _criterion_of(path: str, selection: Sequence[str]) -> str | None:
    for downstream in (False, True):
        criterion = build_path_selector(path, include_downstream=downstream)
        if criterion in selection:
            return criterion
    return None


def get_test_name(entry: Any) -> str | None:
    """The generic test an entry of `data_tests:` names (dbt's rule), without its package; `None` when
    the entry is not one dbt accepts.

    Example: `get_test_name({"dbt_utils.expression_is_true": {"expression": "a > 0"}})` is
    `"expression_is_true"`.
    """
    if isinstance(entry, str):
        name = entry
    elif isinstance(entry, dict) and isinstance(entry.get("test_name"), str):
        name = entry["test_name"]
    elif isinstance(entry, dict) and len(entry) == 1 and isinstance(next(iter(entry)), str):
        name = next(iter(entry))
    else:
        return None
    return name.rsplit(".", 1)[-1]


def _strip_tests(item: Any, carrier: Carrier, found: dict[Carrier, list[Any]]) -> Any:
    """`item` (a node, source, table or column entry) without its test keys; the tests go to `found`."""
    if not isinstance(item, dict):
        return item
    stripped = {key: value for key, value in item.items() if key not in TEST_KEYS}
    for key in TEST_KEYS:
        if key in item:
            entries = item[key] if isinstance(item[key], list) else [item[key]]
            found.setdefault(carrier, []).extend(entries)
    return stripped


def _named(item: Any) -> str:
    return str(item.get("name", "")) if isinstance(item, dict) else ""


def _columns(item: Any, carrier: Carrier, found: dict[Carrier, list[Any]]) -> Any:
    stripped = _strip_tests(item, carrier, found)
    if isinstance(stripped, dict) and isinstance(stripped.get("columns"), list):
        stripped["columns"] = [_strip_tests(column, (*carrier[:3], _named(column)), found)
                               for column in stripped["columns"]]
    return stripped


def split_yaml_tests(text: str | None) -> tuple[Any, dict[Carrier, list[Any]]]:
    """A properties YAML without its data tests, and its test entries by where they are attached.

    Raises `yaml.YAMLError` for a file that is not YAML.
    """
    document = yaml.safe_load(text) if text else None
    found: dict[Carrier, list[Any]] = {}
    if not isinstance(document, dict):
        return document, found
    rest = dict(document)
    for section in _NODE_SECTIONS:
        if isinstance(rest.get(section), list):
            rest[section] = [_columns(item, (section, _named(item), "", ""), found) for item in rest[section]]
    if isinstance(rest.get("sources"), list):
        sources = []
        for source in rest["sources"]:
            stripped = _strip_tests(source, ("sources", _named(source), "", ""), found)
            if isinstance(stripped, dict) and isinstance(stripped.get("tables"), list):
                stripped["tables"] = [_columns(table, ("sources", _named(source), _named(table), ""), found)
                                      for table in stripped["tables"]]
            sources.append(stripped)
        rest["sources"] = sources
    return rest, found


def _canonical(entry: Any) -> str:
    return json.dumps(entry, sort_keys=True, default=str)


def get_yaml_test_change(path: str, old_text: str | None, new_text: str | None) -> YamlTestChange | None:
    """What the change of a properties YAML does to its data tests, or `None` when anything else in it
    changed (or either version is not YAML, or a test entry is not one dbt accepts): today's rule then.

    Example: adding `- not_null` to a column gives `changed == (YamlTestEntry(carrier=("models",
    "stg_orders", "", "status"), test_name="not_null"),)` and `removed == 0`.
    """
    try:
        old_rest, old_tests = split_yaml_tests(old_text)
        new_rest, new_tests = split_yaml_tests(new_text)
    except yaml.YAMLError:
        return None
    if old_rest != new_rest:
        return None
    changed: list[YamlTestEntry] = []
    removed = 0
    for carrier in sorted(set(old_tests) | set(new_tests)):
        before = Counter(_canonical(entry) for entry in old_tests.get(carrier, []))
        after = Counter(_canonical(entry) for entry in new_tests.get(carrier, []))
        added_names, removed_names = [], []
        for entries, out in ((after - before, added_names), (before - after, removed_names)):
            for text in entries.elements():
                name = get_test_name(json.loads(text))
                if name is None:
                    return None
                out.append(name)
        changed += [YamlTestEntry(carrier=carrier, test_name=name) for name in sorted(set(added_names))]
        removed += sum(1 for name in removed_names if name not in added_names)
    return YamlTestChange(path=path, changed=tuple(changed), removed=removed)


def _matches(graph: DbtGraph, uid: str, path: str, entry: YamlTestEntry) -> bool:
    node = graph.nodes[uid]
    section, name, table, column = entry.carrier
    if node.path != path or node.test_name != entry.test_name or node.file_key_name != f"{section}.{name}":
        return False
    if column and node.column_name != column:
        return False
    return not table or any(parent.startswith("source.") and parent.split(".")[2:] == [name, table]
                            for parent in node.parents)


def select_changed_tests(graph: DbtGraph, change: YamlTestChange) -> set[str] | None:
    """The target's test nodes of the YAML that its added or edited entries define, or `None` when an
    entry matches no node (disabled, or not followed here)."""
    tests = [uid for uid, node in graph.nodes.items() if node.resource_type in TEST_TYPES]
    selected: set[str] = set()
    for entry in change.changed:
        matched = {uid for uid in tests if _matches(graph, uid, change.path, entry)}
        if not matched:
            return None
        selected |= matched
    return selected


def build_test_yaml_scope(scope: DbtScope, changes: Mapping[str, YamlTestChange], graph: DbtGraph, *,
                          modified: Sequence[Sequence[str]] | None, base_commit: str = "") -> DbtScope:
    """`scope` with the `path:` criterion of each test-only YAML replaced by the fqns of the tests it adds
    or edits. `modified`: what dbt's `state:modified` lists against the deployed commit's manifest (the
    preferred rule), or `None` without that manifest (the YAML diff and the target's test nodes decide).

    Example: adding a `not_null` to `stg_orders.status` in `models/staging/schema.yml` gives
    `selection == ("fqn:jaffle.staging.not_null_stg_orders_status",)`.
    """
    if scope.scope is not Scope.SELECTIVE or not changes:
        return scope
    wanted = {tuple(fqn) for fqn in modified} if modified is not None else None
    selection = list(scope.selection)
    tests: set[str] = set()
    narrowed: list[YamlTestChange] = []
    kept: list[str] = []
    for path, change in sorted(changes.items()):
        if wanted is not None:
            found: set[str] | None = {uid for uid, node in graph.nodes.items() if node.path == path
                                      and node.resource_type in TEST_TYPES and node.fqn in wanted}
        else:
            found = select_changed_tests(graph, change)
        criterion = _criterion_of(path, selection)
        if found is None or criterion is None:
            kept.append(path)
            continue
        selection.remove(criterion)
        tests |= found
        narrowed.append(change)
    if not narrowed:
        return scope
    others = len(selection)
    selection += sorted({build_fqn_selector(graph.nodes[uid].fqn) for uid in tests} - set(selection))
    rule = (f"dbt's state comparison (state:modified) with the manifest of the deployed commit {base_commit[:12]}"
            if wanted is not None else "the YAML diff and the target's test nodes")
    removed = sum(change.removed for change in narrowed)
    files = ", ".join(change.path for change in narrowed)
    reason = (f"only data tests changed in {files}; by {rule}, the {len(tests)} added or edited test(s) run"
              + (f"; {removed} removed test(s) run nothing" if removed else ""))
    if kept:
        reason += f"; {', '.join(kept)} keep(s) the path: rule (a test entry matches no test node)"
    if others:
        reason += f"; builds the {others} other changed file(s)"
    if not selection:
        return DbtScope(scope=Scope.BUILD_ONLY, removed=scope.removed,
                        reason=f"{reason}: no dbt command runs, the image is rebuilt")
    return DbtScope(scope=Scope.SELECTIVE, selection=tuple(selection), removed=scope.removed, reason=reason)
