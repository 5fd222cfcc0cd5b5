"""The impact of a dbt plan: dbt's parse of the pinned commit, as a step, inside `detect`.

`detect` first explains a dbt plan from Git alone (`adapters.dbt.explain_dbt_plan`). When dbt has something
to run (or a model was removed, which dbt may still find referenced), `attach_dbt_impact` exports the plan's
snapshot, runs `python -m dagctl_dagster.runner.dbt_parse` in it as a guarded process whose environment is
exactly the environment's declared one (like `execute`), and resolves the plan's selection on the manifest
(`core.dbt_impact`). The impact is part of the sealed spec: the fingerprint covers the resolved nodes, and
`execute` re-parses and re-resolves them (through the same `detect`), so `gate` refuses a plan whose nodes
differ from the approved ones. That re-parse starts from the partial-parse file the explain parse kept for
the same commit, so dbt finds nothing changed (unless someone changed the snapshot): the log says so
("dbt parse of <commit>: partial (from the partial-parse file of this commit; 0 file(s) changed)").

dbt's state comparison with the deployed commit's manifest (pinned per plan) narrows two kinds of plans:
macro changes (`core.dbt_impact.build_state_scope`) and selected YAMLs whose only change is in their data
tests (`core.dbt_test_changes`: exactly the tests added or edited run; without the deployed manifest, the
YAML diff read from Git and the target's test nodes decide).

The parse never connects to the warehouse. On the Kubernetes backend it is a pod like `execute`'s
(`kubernetes_steps.parse_dbt_in_pod`): the step's declared secrets exist only there, and only the runner
image is sure to hold the project's adapter; its result and graph come back as dagster-pipes messages.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema, get_dagster_logger

from ..adapters.dbt_manifest import DbtParseCache, pin_manifest, read_parsed_graph, settle_pin
from ..core.config import EnvironmentConfig, KubernetesBackendConfig, LocalBackendConfig, ProjectConfig
from ..core.dbt_changes import DbtScope, Scope, build_dbt_commands
from ..core.dbt_impact import (
    DbtGraph,
    DbtImpact,
    DbtParseInfo,
    ImpactStatus,
    ParseMode,
    build_full_impact,
    build_selective_impact,
    build_state_scope,
    is_state_comparable,
    render_impact_line,
)
from ..core.dbt_test_changes import (
    YamlTestChange,
    build_test_yaml_scope,
    get_yaml_test_change,
    is_test_yaml_candidate,
)
from ..core.errors import DagctlGitError, DagctlStepError
from ..core.plan import PlanSpec, seal_plan
from ..core.steps import StepSpec
from ..runner.dbt_parse import escape_undecodable
from ..runner.dbt_parse_pod import BASE_MANIFEST_SHA256
from ..runner.dbt_parse_server import get_server_name
from .local_backend import build_local_step_env, stream_command_step
from .runtime import PlanRuntime

# A plan with more selected YAML files than this keeps dbt's `path:` rule for them (two Git reads each).
MAX_TEST_YAMLS = 20


def requires_parse(spec: PlanSpec) -> bool:
    """A plan needs dbt's parse when dbt runs something, or when a node was removed (still referenced?)."""
    scope = spec.dbt_scope
    return scope is not None and (scope.requires_dbt or bool(scope.removed))


def build_dbt_parse_step(runtime: PlanRuntime, project: ProjectConfig, env: EnvironmentConfig, snapshot: Path,
                         target_path: Path, output: Path, *, state: Path | None = None) -> StepSpec:
    """The parse step: `dbt deps` (when the project has packages) and `dbt parse` of the snapshot; with
    `state`, dbt's `state:modified` against the manifest in that folder too. On the local backend the step
    is served by the resident parse server unless its config turns it off (`runner.dbt_parse_server`)."""
    from .sqlmesh_plans import build_declared_step

    backend = project.backend_for(env)
    server = ()
    if isinstance(backend, LocalBackendConfig) and backend.dbt_parse_server:
        server = ("--server", get_server_name(), "--server-idle", str(backend.dbt_parse_server_idle_seconds))
    argv = ("python", "-P", "-m", "dagctl_dagster.runner.dbt_parse", "--project-dir", str(snapshot),
            "--target-path", str(target_path), "--target", env.dbt_target, "--output", str(output),
            "--packages-cache", str(runtime.storage_dir / "dbt_packages" / project.name),
            *(("--state", str(state)) if state is not None else ()), *server)
    return build_declared_step(
        project, env, name="parse", argv=argv, working_dir=str(snapshot),
        env_vars={"DBT_PROFILES_DIR": str(runtime.profiles_dir(project, snapshot)),
                  "DBT_LOG_PATH": str(target_path), "DBT_SEND_ANONYMOUS_USAGE_STATS": "false"},
        labels={"dagctl/project": project.name, "dagctl/environment": env.name})


def run_dbt_parse(step: StepSpec, output: Path, *, work_dir: Path) -> dict[str, Any]:
    """Runs the parse step behind the step guard with exactly its declared environment; returns its result.

    A declared secret missing from the code location is an environment problem like any other.
    """
    try:
        build_local_step_env(step)  # a missing declared secret is reported before anything starts
    except DagctlStepError as error:
        return {"outcome": "environment_error", "message": str(error)}
    log = get_dagster_logger("dagctl")
    code, tail = stream_command_step(step, lambda line: log.info(escape_undecodable(line)), work_dir=work_dir)
    if output.exists():
        return json.loads(output.read_text())
    return {"outcome": "environment_error",
            "message": f"dbt's parse step exited with code {code}: "
                       + " ".join(escape_undecodable(line) for line in tail)}


def pin_base_manifest(runtime: PlanRuntime, project: ProjectConfig, spec: PlanSpec) -> Path | None:
    """The folder holding the deployed commit's manifest for this plan's state comparison, or `None`.

    Pinned per plan (`storage_dir/dbt_state/<project>/<plan id>/manifest.json`) when the plan is explained,
    so the re-resolution at execute compares with the same bytes, whatever the parse cache kept since. When
    no manifest was kept at explain, a folder without one pins that too: a manifest of the deployed commit
    kept later (another environment's plan parsed it) never changes the scope of an approved plan at execute
    (`adapters.dbt_manifest.pin_manifest`, which the parse pod uses on its claim too). When only the deployed
    commit's partial-parse file is kept, it is pinned and the parse step writes the manifest from it
    (`runner.dbt_parse.write_base_manifest`; `settle_pin` then keeps the manifest only).
    """
    return pin_manifest(runtime.storage_dir / "dbt_state" / project.name / spec.plan_id,
                        DbtParseCache(runtime.storage_dir / "dbt_parse" / project.name), spec.base_commit or "-")


def is_pinned_in_pod(project: ProjectConfig, env: EnvironmentConfig) -> bool:
    """Whether the parse pod pins the base manifest itself, on `parse_cache_claim` (where the Kubernetes
    backend keeps the manifests of the project's last plans; the run worker cannot read it)."""
    backend = project.backend_for(env)
    return isinstance(backend, KubernetesBackendConfig) and bool(backend.parse_cache_claim)


def read_test_yaml_changes(runtime: PlanRuntime, project: ProjectConfig, spec: PlanSpec
                           ) -> dict[str, YamlTestChange]:
    """The selected YAMLs of the plan whose only change is in their data tests, read from Git at the
    deployed and the target commit (at most `MAX_TEST_YAMLS`: beyond, each keeps its `path:` rule)."""
    scope = spec.dbt_scope
    candidates = [change for change in spec.files if scope is not None and is_test_yaml_candidate(change, scope)]
    if not candidates or len(candidates) > MAX_TEST_YAMLS or spec.base_commit is None:
        return {}
    mirror = runtime.mirror(project)
    changes: dict[str, YamlTestChange] = {}
    for change in candidates:
        path = f"{project.subdirectory}/{change.path}" if project.subdirectory else change.path
        try:
            found = get_yaml_test_change(change.path, mirror.read_file(spec.base_commit, path),
                                         mirror.read_file(spec.target_commit, path))
        except DagctlGitError:  # not UTF-8 text: that file keeps its path: rule
            continue
        if found is not None:
            changes[change.path] = found
    return changes


def render_parse_line(commit: str, seeded: str | None, result: dict[str, Any]) -> str:
    """The log line of a parse. Example: "dbt parse of 3f2a9c1d0b4e: partial (from the partial-parse file
    of this commit; 0 file(s) changed), 2.1s"."""
    source = ("this commit" if seeded == commit else f"commit {seeded[:12]}") if seeded else None
    how = f"from the partial-parse file of {source}" if source else "no partial-parse file kept"
    if result.get("files_changed") is not None:
        how += f"; {result['files_changed']} file(s) changed"
    return f"dbt parse of {commit[:12]}: {result['mode']} ({how}), {result['seconds']:.1f}s"


def _parse(runtime: PlanRuntime, project: ProjectConfig, env: EnvironmentConfig, spec: PlanSpec,
           state: Path | None, *, compare: bool = False) -> tuple[dict[str, Any], DbtGraph | None]:
    """dbt's parse of the plan's snapshot (its result, and the graph when it parsed): a guarded local process,
    or on the Kubernetes backend a pod of the runner image (there the step's secrets are `secretKeyRef`s of
    the pod, not variables of the run worker; with `parse_cache_claim` and `compare`, the pod pins the base
    manifest on the claim and compares with it itself: docs/kubernetes.md)."""
    backend = project.backend_for(env)
    if isinstance(backend, KubernetesBackendConfig):
        from .kubernetes_steps import parse_dbt_in_pod

        return parse_dbt_in_pod(runtime, project=project, env=env, spec=spec, backend=backend, compare=compare)
    mirror = runtime.mirror(project)
    snapshot = mirror.export_snapshot(spec.target_commit, runtime.snapshot_dir(project, spec.target_commit),
                                      subdirectory=project.subdirectory)
    cache = DbtParseCache(runtime.storage_dir / "dbt_parse" / project.name)
    work = runtime.storage_dir / "dbt_parse" / ".work"
    work.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{spec.plan_id}-", dir=work))
    try:
        target_path = folder / "target"
        seeded = cache.seed(target_path, target=env.dbt_target, commit=spec.target_commit, snapshot=snapshot)
        output = folder / "result.json"
        step = build_dbt_parse_step(runtime, project, env, snapshot, target_path, output, state=state)
        result = run_dbt_parse(step, output, work_dir=folder / "step")
        if result.get("outcome") != "parsed":
            return result, None
        get_dagster_logger("dagctl").info(render_parse_line(spec.target_commit, seeded, result))
        graph = read_parsed_graph(target_path)
        cache.store(spec.target_commit, target_path, target=env.dbt_target, snapshot=snapshot)
        return result, graph
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def build_dbt_impact(runtime: PlanRuntime, project: ProjectConfig, env: EnvironmentConfig,
                     spec: PlanSpec) -> tuple[DbtScope, DbtImpact]:
    """dbt's parse of the plan's target commit, resolved against the plan's scope; the scope is narrowed
    by dbt's state comparison when macros changed and the deployed commit's manifest is kept, and to the
    tests a YAML adds or edits when data tests are all that changed in it."""
    scope = spec.dbt_scope
    assert scope is not None, "a dbt plan always has a scope"
    has_base = spec.base_commit is not None and runtime.mirror(project).has_commit(spec.base_commit)
    test_yamls = read_test_yaml_changes(runtime, project, spec) if has_base else {}
    comparable = has_base and is_state_comparable(spec.files, scope, has_base_manifest=True)
    compare, in_pod = comparable or bool(test_yamls), is_pinned_in_pod(project, env)
    state = pin_base_manifest(runtime, project, spec) if compare and not in_pod else None
    result, graph = _parse(runtime, project, env, spec, state, compare=compare)
    parsed = result.get("outcome") == "parsed"
    # The pinned manifest's hash (`None`: "no manifest" is pinned): of the run worker's pin, or as the parse
    # pod reports its pin on the claim (a pod that ended before it could report leaves it unknown).
    if in_pod:
        pinned, known = result.get(BASE_MANIFEST_SHA256), BASE_MANIFEST_SHA256 in result
    else:
        cache = DbtParseCache(runtime.storage_dir / "dbt_parse" / project.name)
        pinned = settle_pin(state, cache, spec.base_commit or "-", parsed=parsed) if state is not None else None
        known = True
    if comparable and known and pinned is None:
        why = result.get("state_unavailable") or (
            f"no manifest of the deployed commit {spec.base_commit[:12]} is kept" if parsed else "dbt did not parse")
        scope = scope.model_copy(update={"reason": f"{scope.reason} (dbt's state comparison cannot narrow it: "
                                          f"{why})"})
    outcome = result.get("outcome")
    if outcome == "project_error":
        return scope, DbtImpact(status=ImpactStatus.PROJECT_ERROR, reason=result["message"])
    if graph is None:
        return scope, DbtImpact(status=ImpactStatus.UNAVAILABLE,
                                reason=result.get("message", "dbt did not parse"))
    base_hash = pinned if "modified" in result else None
    if base_hash is not None and comparable:
        scope = build_state_scope(scope, result["modified"], graph, base_commit=spec.base_commit or "")
    if test_yamls:
        scope = build_test_yaml_scope(scope, test_yamls, graph, modified=result.get("modified"),
                                      base_commit=spec.base_commit or "")
    parse = DbtParseInfo(mode=ParseMode(result["mode"]), seconds=result["seconds"])
    if scope.scope is Scope.SELECTIVE:
        impact = build_selective_impact(graph, scope.selection, parse=parse,
                                        includes_downstream=env.include_downstream)
    elif scope.scope is Scope.ALL:
        impact = build_full_impact(graph, parse=parse)
    else:
        impact = DbtImpact(status=ImpactStatus.RESOLVED, parse=parse, graph_hash=graph.content_hash())
    return scope, impact.model_copy(update={"base_manifest_hash": base_hash})


def attach_dbt_impact(runtime: PlanRuntime, project: ProjectConfig, env: EnvironmentConfig,
                      spec: PlanSpec) -> PlanSpec:
    """`spec` with its impact (and the scope dbt's state comparison chose), sealed again: the fingerprint
    covers the resolved nodes and the base manifest. Unchanged when no dbt command runs and nothing was
    removed."""
    if not requires_parse(spec):
        return spec
    scope, impact = build_dbt_impact(runtime, project, env, spec)
    get_dagster_logger("dagctl").info(f"plan {spec.plan_id}: {render_impact_line(impact)}")
    update: dict[str, Any] = {"dbt_impact": impact}
    if scope != spec.dbt_scope:
        update |= {"dbt_scope": scope,
                   "commands": build_dbt_commands(project.dbt.commands, scope, target=env.dbt_target)}
    return seal_plan(spec.model_copy(update=update))


def _nodes_table(nodes, *, distance: bool) -> MetadataValue:
    columns = [TableColumn("unique_id"), TableColumn("resource_type"), TableColumn("path")]
    if distance:
        columns.append(TableColumn("distance", "int"))
    records = [TableRecord({"unique_id": n.unique_id, "resource_type": n.resource_type, "path": n.path,
                            **({"distance": n.distance} if distance else {})}) for n in nodes]
    return MetadataValue.table(records, schema=TableSchema(columns=columns))


def impact_metadata(spec: PlanSpec) -> dict[str, Any]:
    """Asset metadata of a dbt plan's impact: the one-line summary, the parse, the node tables."""
    impact = spec.dbt_impact
    if impact is None:
        return {}
    metadata: dict[str, Any] = {"impact": render_impact_line(impact), "impact_status": impact.status.value}
    if impact.parse is not None:
        metadata["dbt_parse"] = f"{impact.parse.mode.value}, {impact.parse.seconds:.1f}s"
    if impact.is_resolved:
        metadata["nodes_run"] = MetadataValue.json(impact.counts)
        metadata["selected_nodes"] = _nodes_table(impact.selected, distance=False)
        metadata["impacted_nodes"] = _nodes_table(impact.downstream, distance=True)
    return metadata
