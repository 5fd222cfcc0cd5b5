"""dbt impact: what a plan's dbt commands run and what they affect, from dbt's own project graph.

`detect` decides a dbt plan's scope from Git alone (`dbt_changes`). The impact adds what only dbt's parse of
the target commit knows: the exact nodes a `selective` selection resolves to (dbt's `path:` method, graph
`+` and eager indirect selection of tests, the same result as `dbt ls`), the node counts of a full build, and
the nodes downstream of the changed ones that the selection leaves out, with their distance (exposures,
semantic models and metrics included). A parse that fails because of the project (a deleted model still
referenced, broken YAML or Jinja) fails the plan at explain; one that fails because of where it ran (the
adapter is not installed, a profile variable is missing) leaves the plan explained from Git, saying why
its impact is unavailable.

The graph (`DbtGraph`) is the part of dbt's `manifest.json` this needs, read by `adapters.dbt_manifest`;
everything here is pure.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from collections import deque
from collections.abc import Iterable, Sequence
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from .dbt_changes import DbtScope, FileCategory, FileChange, Scope, categorize_path

# The resource types `dbt build` runs.
EXECUTABLE_TYPES = frozenset({"model", "seed", "snapshot", "test", "unit_test"})
# Tests run with the nodes they test (dbt's eager indirect selection).
TEST_TYPES = frozenset({"test", "unit_test"})
# Downstream nodes a reviewer is told about by name: they are read by people, not rebuilt.
MARKED_TYPES = frozenset({"exposure", "semantic_model", "metric", "saved_query"})
# The order counts are said in: what runs first, then what people read.
_TYPE_ORDER = ("model", "seed", "snapshot", "test", "unit_test", "exposure", "semantic_model", "metric",
               "saved_query")
# What a reviewer is told is affected downstream: what would need a rebuild, and what people read (analyses,
# compiled only, and tests, which run with their nodes, are left out).
DOWNSTREAM_TYPES = (EXECUTABLE_TYPES - TEST_TYPES) | MARKED_TYPES
# A change set listed only in part (adapters.dbt.MAX_LISTED_FILES) is never narrowed: its categories are not
# all known.
MAX_STATE_FILES = 2000
# A plan lists at most this many selected and downstream nodes (counts cover all of them).
MAX_LISTED_NODES = 1000


class ParseMode(StrEnum):
    COLD = "cold"
    PARTIAL = "partial"


class ImpactStatus(StrEnum):
    RESOLVED = "resolved"
    UNAVAILABLE = "unavailable"
    PROJECT_ERROR = "project_error"


class DbtGraphNode(BaseModel):
    """One node of dbt's graph: a model, test, seed, snapshot, exposure, metric..."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unique_id: str
    resource_type: str
    name: str
    path: str = Field(description="dbt's original_file_path, relative to the project folder.")
    patch_path: str | None = Field(default=None, description="The YAML file that describes it, if any.")
    fqn: tuple[str, ...] = Field(default=(), description="dbt's fully qualified name (package, folders, name).")
    parents: tuple[str, ...] = ()
    test_name: str | None = Field(default=None, description="A generic test's test (test_metadata.name).")
    column_name: str | None = Field(default=None, description="The column a generic test is attached to.")
    file_key_name: str | None = Field(default=None, description="A generic test's YAML entry: 'models.orders'.")


class DbtGraph(BaseModel):
    """The nodes of a dbt manifest and their edges; `children` is derived from the parents."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    nodes: dict[str, DbtGraphNode]

    def children(self) -> dict[str, list[str]]:
        children: dict[str, list[str]] = {unique_id: [] for unique_id in self.nodes}
        for node in self.nodes.values():
            for parent in node.parents:
                if parent in children:
                    children[parent].append(node.unique_id)
        return children

    def content_hash(self) -> str:
        """SHA-256 of the graph's content: equal for equal projects, whatever dbt's run metadata."""
        material = [node.model_dump(mode="json") for _, node in sorted(self.nodes.items())]
        return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


class DbtNode(BaseModel):
    """A node a plan runs or affects, as the reviewer sees it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    unique_id: str
    resource_type: str
    path: str
    distance: int = Field(default=0, description="Edges from the nearest changed node (downstream nodes).")

    @property
    def name(self) -> str:
        return self.unique_id.split(".")[2] if self.unique_id.count(".") >= 2 else self.unique_id


class DbtParseInfo(BaseModel):
    """How dbt parsed the target commit: from scratch or from the last plan's partial-parse file."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: ParseMode
    seconds: float


class DbtImpact(BaseModel):
    """What a dbt plan runs and affects, resolved on dbt's parse of the target commit."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    status: ImpactStatus
    reason: str = Field(default="", description="Why the impact is unavailable, or dbt's parse error.")
    parse: DbtParseInfo | None = None
    graph_hash: str = ""
    base_manifest_hash: str | None = None
    selected: tuple[DbtNode, ...] = Field(default=(), description="The nodes a selective plan runs.")
    counts: dict[str, int] = Field(default_factory=dict, description="Nodes run, by resource type.")
    downstream: tuple[DbtNode, ...] = Field(default=(), description="Affected, not run, with distance.")
    downstream_counts: dict[str, int] = Field(default_factory=dict)
    includes_downstream: bool = False

    @property
    def is_resolved(self) -> bool:
        return self.status is ImpactStatus.RESOLVED

    def fingerprint_material(self) -> dict[str, object]:
        """What the approval covers: the resolved nodes and the base manifest; never how long dbt took."""
        return {
            "status": self.status.value,
            "selected": sorted(node.unique_id for node in self.selected),
            "counts": dict(sorted(self.counts.items())),
            "downstream": sorted(node.unique_id for node in self.downstream),
            "base_manifest_hash": self.base_manifest_hash,
            "project_error": self.reason if self.status is ImpactStatus.PROJECT_ERROR else None,
        }


def unescape_path_selector(criterion: str) -> tuple[str, bool]:
    """The file a `path:` criterion of `dbt_changes.build_path_selector` names, and whether it has `+`.

    Example: `unescape_path_selector("path:models/a[*].sql+")` is `("models/a*.sql", True)`.
    """
    if not criterion.startswith("path:"):
        raise ValueError(f"not a path: criterion: {criterion!r}")
    value = criterion[len("path:"):]
    downstream = value.endswith("+") and not value.endswith("[+]")
    if downstream:
        value = value[:-1]
    out, index = [], 0
    while index < len(value):
        if value[index] == "[" and index + 2 < len(value) and value[index + 2] == "]":
            out.append(value[index + 1])
            index += 3
        else:
            out.append(value[index])
            index += 1
    return "".join(out), downstream


def build_fqn_selector(fqn: Sequence[str]) -> str:
    """The dbt selection criterion of one node by its fully qualified name (names are identifiers: no
    escaping needed). Example: `build_fqn_selector(["jaffle", "marts", "orders"])` is
    `"fqn:jaffle.marts.orders"`."""
    return "fqn:" + ".".join(fqn)


class _PathIndex:
    """dbt's `path:` method over a graph, indexed once: the node's file, its YAML patch file, or a folder
    above its file."""

    def __init__(self, graph: DbtGraph):
        self.by_file: dict[str, set[str]] = {}
        for uid, node in graph.nodes.items():
            self.by_file.setdefault(node.path, set()).add(uid)
            if node.patch_path:
                self.by_file.setdefault(node.patch_path.split("://", 1)[-1], set()).add(uid)
        self.paths = sorted((node.path, uid) for uid, node in graph.nodes.items())

    def match(self, path: str) -> set[str]:
        matched = set(self.by_file.get(path, ()))
        folder = path.rstrip("/") + "/"
        for index in range(bisect.bisect_left(self.paths, (folder, "")), len(self.paths)):
            if not self.paths[index][0].startswith(folder):
                break
            matched.add(self.paths[index][1])
        return matched


def _match_criterion(graph: DbtGraph, index: _PathIndex, criterion: str) -> tuple[set[str], bool]:
    """The nodes one criterion of ours (`path:` or `fqn:`) names, and whether it ends with `+`."""
    if criterion.startswith("fqn:"):
        value = criterion[len("fqn:"):]
        parts = tuple(value.rstrip("+").split("."))
        matched = {uid for uid, node in graph.nodes.items() if node.fqn[:len(parts)] == parts}
        return matched, value.endswith("+")
    path, downstream = unescape_path_selector(criterion)
    return index.match(path), downstream


def _descendants(start: Iterable[str], children: dict[str, list[str]]) -> dict[str, int]:
    """Every node below `start`, with its distance from the nearest start node (start nodes excluded)."""
    distance: dict[str, int] = {}
    seen = set(start)
    queue = deque((unique_id, 0) for unique_id in seen)
    while queue:
        unique_id, depth = queue.popleft()
        for child in children.get(unique_id, ()):
            if child not in seen:
                seen.add(child)
                distance[child] = depth + 1
                queue.append((child, depth + 1))
    return distance


def resolve_path_selection(graph: DbtGraph, selection: Sequence[str]) -> tuple[set[str], set[str]]:
    """The unique ids `--select <selection>` runs (as `dbt ls`/`dbt build` resolve it), and the directly
    changed ones among them (before `+` and indirect test selection). Criteria are ours: `path:` (see
    `dbt_changes.build_path_selector`) or `fqn:` (`build_fqn_selector`)."""
    children = graph.children()
    index = _PathIndex(graph)
    direct: set[str] = set()
    selected: set[str] = set()
    for criterion in selection:
        matched, downstream = _match_criterion(graph, index, criterion)
        direct |= matched
        selected |= matched
        if downstream:
            selected |= set(_descendants(matched, children))
    # Eager indirect selection: a test runs when any node it tests is selected.
    selected |= {uid for uid, node in graph.nodes.items()
                 if node.resource_type in TEST_TYPES and any(p in selected for p in node.parents)}
    executable = {uid for uid in selected if graph.nodes[uid].resource_type in EXECUTABLE_TYPES}
    return executable, direct & executable


def _as_nodes(graph: DbtGraph, ids: Iterable[str], distance: dict[str, int] | None = None
              ) -> tuple[DbtNode, ...]:
    nodes = [DbtNode(unique_id=uid, resource_type=graph.nodes[uid].resource_type, path=graph.nodes[uid].path,
                     distance=(distance or {}).get(uid, 0)) for uid in ids]
    return tuple(sorted(nodes, key=lambda n: (n.distance, n.resource_type, n.unique_id)))


def _count(nodes: Iterable[DbtGraphNode]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.resource_type] = counts.get(node.resource_type, 0) + 1
    return dict(sorted(counts.items()))


def build_selective_impact(graph: DbtGraph, selection: Sequence[str], *, parse: DbtParseInfo | None,
                           includes_downstream: bool = False) -> DbtImpact:
    """The impact of a `selective` plan: its nodes, and what lies downstream of them unselected.

    Example: a change of `models/staging/stg_orders.sql` selects that model and its tests; `orders` (1)
    and `customers` (2) are downstream.
    """
    selected, direct = resolve_path_selection(graph, selection)
    below = _descendants(direct, graph.children())
    downstream = {uid: depth for uid, depth in below.items()
                  if uid not in selected and graph.nodes[uid].resource_type in DOWNSTREAM_TYPES}
    return DbtImpact(
        status=ImpactStatus.RESOLVED, parse=parse, graph_hash=graph.content_hash(),
        selected=_as_nodes(graph, selected)[:MAX_LISTED_NODES],
        counts=_count(graph.nodes[uid] for uid in selected),
        downstream=_as_nodes(graph, downstream, downstream)[:MAX_LISTED_NODES],
        downstream_counts=_count(graph.nodes[uid] for uid in downstream),
        includes_downstream=includes_downstream,
    )


def build_full_impact(graph: DbtGraph, *, parse: DbtParseInfo | None) -> DbtImpact:
    """The impact of a full build: how many nodes of each type it runs."""
    return DbtImpact(status=ImpactStatus.RESOLVED, parse=parse, graph_hash=graph.content_hash(),
                     counts=_count(n for n in graph.nodes.values() if n.resource_type in EXECUTABLE_TYPES))


def describe_impact_drift(approved: DbtImpact | None, recomputed: DbtImpact | None) -> str | None:
    """What differs between the approved impact and the one resolved again at execute, or `None`.

    Example: `"dbt resolves other nodes than were approved: downstream now also model.p.new"`.
    """
    if approved is None or recomputed is None:
        return None if approved == recomputed else "dbt's impact was not resolved the same way at execute"
    if approved.fingerprint_material() == recomputed.fingerprint_material():
        return None
    parts = []
    for label, before, after in (("selected", approved.selected, recomputed.selected),
                                 ("downstream", approved.downstream, recomputed.downstream)):
        was, now = {n.unique_id for n in before}, {n.unique_id for n in after}
        if now - was:
            parts.append(f"{label} now also {', '.join(sorted(now - was)[:10])}")
        if was - now:
            parts.append(f"{label} no longer {', '.join(sorted(was - now)[:10])}")
    if approved.status is not recomputed.status:
        parts.append(f"the parse is now {recomputed.status.value}: {recomputed.reason}")
    if approved.base_manifest_hash != recomputed.base_manifest_hash:
        parts.append("the base manifest differs")
    return "dbt resolves other nodes than were approved: " + ("; ".join(parts) or "node counts differ")


def render_impact_line(impact: DbtImpact) -> str:
    """One sentence for the summary: "runs 3 models, 5 tests; affects 12 downstream models, 1 exposure
    (weekly_revenue)"."""
    reason = " ".join(line.strip() for line in impact.reason.splitlines())
    if impact.status is ImpactStatus.UNAVAILABLE:
        return f"impact unavailable: {reason}"
    if impact.status is ImpactStatus.PROJECT_ERROR:
        return f"dbt cannot parse the target commit: {reason}"
    runs = _render_counts(impact.counts) or "no node"
    line = f"runs {runs}"
    if impact.includes_downstream:
        line += " (downstream nodes included)"
    if impact.downstream_counts:
        marked = [node.name for node in impact.downstream if node.resource_type in MARKED_TYPES]
        line += f"; affects {_render_counts(impact.downstream_counts, downstream=True)}"
        if marked:
            line += f" ({', '.join(marked[:10])}{', ...' if len(marked) > 10 else ''})"
    elif impact.selected:
        line += "; nothing downstream is left out"
    return line


def _render_counts(counts: dict[str, int], *, downstream: bool = False) -> str:
    parts = []
    order = {resource_type: index for index, resource_type in enumerate(_TYPE_ORDER)}
    for resource_type, count in sorted(counts.items(), key=lambda item: (order.get(item[0], 99), item[0])):
        label = resource_type.replace("_", " ")
        if count != 1:
            label = label[:-1] + "ies" if label.endswith("y") else label + ("es" if label.endswith("s") else "s")
        parts.append(f"{count} {'downstream ' if downstream and not parts else ''}{label}")
    return ", ".join(parts)


def is_state_comparable(files: Sequence[FileChange], scope: DbtScope, *, has_base_manifest: bool) -> bool:
    """Whether dbt's own state comparison (`state:modified` against the deployed commit's manifest) may
    narrow a full build: macros changed, no configuration file did (vars in `dbt_project.yml`, packages,
    profiles: dbt's comparison cannot decide those), and the deployed commit's manifest is kept."""
    categories = {change.category for change in files} | {
        categorize_path(change.old_path) for change in files if change.old_path}
    return (has_base_manifest and scope.scope is Scope.ALL and FileCategory.MACRO in categories
            and FileCategory.CONFIGURATION not in categories and len(files) < MAX_STATE_FILES)


def build_state_scope(scope: DbtScope, modified: Sequence[Sequence[str]], graph: DbtGraph, *,
                      base_commit: str) -> DbtScope:
    """The scope dbt's state comparison chose: exactly the `modified` nodes (their fqns), by name.

    A modified test of a modified node is left out of the selection: it runs with its node (eager indirect
    selection) and the resolved nodes are the same.

    Example: a macro used by one model gives `selection == ("fqn:jaffle.marts.orders",)`.
    """
    rule = (f"macros changed; dbt's state comparison (state:modified) with the manifest of the deployed "
            f"commit {base_commit[:12]}")
    wanted = {tuple(fqn) for fqn in modified}
    ids = {uid for uid, node in graph.nodes.items() if node.fqn in wanted}
    kept = {uid for uid in ids if graph.nodes[uid].resource_type not in TEST_TYPES
            or not any(parent in ids for parent in graph.nodes[uid].parents)}
    if not kept:
        return DbtScope(scope=Scope.BUILD_ONLY, removed=scope.removed,
                        reason=f"{rule} finds no modified node: no dbt command runs, the image is rebuilt")
    selection = tuple(sorted({build_fqn_selector(graph.nodes[uid].fqn) for uid in kept}))
    return DbtScope(scope=Scope.SELECTIVE, selection=selection, removed=scope.removed,
                    reason=f"{rule} selects the {len(selection)} modified node(s) (their tests run with them)")
