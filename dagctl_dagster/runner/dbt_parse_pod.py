"""The `parse` step of a dbt plan inside a pod: dbt's parse of the pinned commit, reported over dagster-pipes.

    python -m dagctl_dagster.runner.dbt_parse_pod --project-dir DIR --target-path DIR --target T --output FILE \
        [--cache-dir DIR --commit SHA [--plan-id ID --base-commit SHA]]

The same options as `runner.dbt_parse` (which does the parsing, unchanged). With `--cache-dir` (the
backend's `parse_cache_claim`), the project's parse state is kept there as `adapters.dbt_manifest.
DbtParseCache` keeps it locally (this commit's own partial-parse file, else the newest, seeds this parse;
this commit's is stored after it) and dbt packages under `dbt_packages/`.

With `--plan-id` and `--base-commit` too (the run worker wants dbt's state comparison: a macro change, or
YAMLs whose only change is in their data tests), the pod pins the base commit's kept manifest for the plan
on the claim (`dbt_state/<plan id>/`, `adapters.dbt_manifest.pin_manifest`: the run worker pins in its
storage the same way on the local backend), passes that folder to `runner.dbt_parse` as `--state` when it
holds a manifest or the partial-parse file the parse writes it from (then `settle_pin` keeps the manifest
only, and the claim's cache keeps it for the next plan with that base), and adds `"base_manifest_sha256"`
to the result: the pinned manifest's hash, or `null` when "no manifest" is pinned. The first parse of a
plan pins; the re-parse at execute finds the same pin.

The pod has no file the run worker can read, so what the plan needs comes back as dagster-pipes custom
messages in the pod's log:

- `{"dagctl": "dbt_graph", "index": i, "data": "..."}`: the compact graph (`core.dbt_impact.DbtGraph`, what
  `adapters.dbt_manifest.read_parsed_graph` reads after a parse), as JSON rows, zlib-compressed,
  base64-encoded and cut into chunks of `CHUNK_CHARS`;
- then `{"dagctl": "dbt_parse", "result": {...}, "graph": {"chunks": n, "sha256": "..."} | null}`: the
  parse result (`outcome`, `mode`, `seconds`, `modified`, `message`, as `runner.dbt_parse` writes it, and
  `base_manifest_sha256`) and how to check the graph. It comes last: a run worker that reads it has read
  every chunk before it.

Why the graph and not the resolved impact: resolving (the `path:` selection, dbt's state comparison
narrowing a macro change, downstream distances, the fingerprint's material) stays in one place, the run
worker's `defs.dbt_impact`, the same code for both backends and for the re-resolution at execute. The
graph of a 2,000-model project is about 1-2 MB of JSON but repeats itself (paths, fqns, parent ids):
compressed it is a tenth of that, a few dozen log lines. Each line stays far below the 8 KiB (podman's
conmon) and 16 KiB (containerd, CRI-O) at which container runtimes split a log line into partial records,
so no runtime or log reader ever has to join one.

Never connects to the warehouse. Exit code 0 when a result was reported (the outcome says how it went).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .dbt_parse import GRAPH_FIELDS as _ROW  # the graph file's columns: one list for both transports

CHUNK_CHARS = 3500
GRAPH_MESSAGE = "dbt_graph"
RESULT_MESSAGE = "dbt_parse"
# The result's field for the manifest pinned on the claim (its sha256, or None when none is pinned).
BASE_MANIFEST_SHA256 = "base_manifest_sha256"


def build_parse_messages(result: dict[str, Any], graph: Any | None) -> Iterator[dict[str, Any]]:
    """The custom-message payloads of a parse: the graph's chunks, then the result.

    Example: `list(build_parse_messages({"outcome": "project_error", "message": "..."}, None))` is one
    result message with `"graph": None`.
    """
    summary = None
    if graph is not None:
        rows = [[getattr(node, key) for key in _ROW] for _, node in sorted(graph.nodes.items())]
        packed = base64.b64encode(zlib.compress(json.dumps(rows, separators=(",", ":")).encode(), 6)).decode()
        chunks = [packed[start:start + CHUNK_CHARS] for start in range(0, len(packed), CHUNK_CHARS)] or [""]
        for index, chunk in enumerate(chunks):
            yield {"dagctl": GRAPH_MESSAGE, "index": index, "data": chunk}
        summary = {"chunks": len(chunks), "sha256": hashlib.sha256(packed.encode()).hexdigest()}
    yield {"dagctl": RESULT_MESSAGE, "result": result, "graph": summary}


def read_parse_messages(payloads: Iterable[Any]) -> tuple[dict[str, Any], Any | None]:
    """The parse result and the graph (`DbtGraph`, or `None` when dbt did not parse) from the payloads
    `build_parse_messages` sent; a missing result or an incomplete graph is an environment error.
    """
    from ..core.dbt_impact import DbtGraph, DbtGraphNode

    chunks: dict[int, str] = {}
    message: dict[str, Any] | None = None
    for payload in payloads:
        if not isinstance(payload, dict):
            continue
        if payload.get("dagctl") == GRAPH_MESSAGE:
            chunks[int(payload["index"])] = str(payload["data"])
        elif payload.get("dagctl") == RESULT_MESSAGE:
            message = payload
    if message is None:
        return {"outcome": "environment_error",
                "message": "the parse pod reported no result (its log names what went wrong)"}, None
    result, summary = dict(message["result"]), message.get("graph")
    if result.get("outcome") != "parsed":
        return result, None
    if not summary:
        return {"outcome": "environment_error", "message": "the parse pod parsed but sent no graph"}, None
    count = int(summary["chunks"])
    packed = "".join(chunks.get(index, "") for index in range(count))
    if len([index for index in range(count) if index in chunks]) != count or (
            hashlib.sha256(packed.encode()).hexdigest() != summary["sha256"]):
        return {"outcome": "environment_error",
                "message": f"the parse pod's graph arrived incomplete ({len(chunks)} of {count} parts, or "
                           "altered): its log was cut; retry the plan"}, None
    rows = json.loads(zlib.decompress(base64.b64decode(packed)))
    nodes = {row[0]: DbtGraphNode.model_validate(dict(zip(_ROW, row, strict=True))) for row in rows}
    return result, DbtGraph(nodes=nodes)


def _keep_going(action: Any, pipes: Any, what: str) -> None:
    """The parse cache only makes parses faster: a cache that cannot be read or written is a warning."""
    try:
        action()
    except OSError as error:
        pipes.log.warning(f"could not {what} the parse cache: {error}; dbt parses without it")


def _pin_base_manifest(pipes: Any, cache_dir: Path, cache: Any, plan_id: str, base_commit: str) -> Path | None:
    """Pins the base commit's kept manifest (or its partial-parse file, which the parse writes the manifest
    from) for the plan on the claim; the pinned folder, `None` when "no manifest" is pinned or the claim
    could not be used (the plan is then not narrowed, and the run log says why)."""
    from ..adapters.dbt_manifest import pin_manifest

    try:
        return pin_manifest(cache_dir / "dbt_state" / plan_id, cache, base_commit)
    except OSError as error:
        pipes.log.warning(f"could not pin the base manifest of plan {plan_id} on the parse cache: {error}; "
                          "dbt's state comparison does not narrow the plan")
        return None


def _report_pin(pipes: Any, cache_dir: Path, cache: Any, plan_id: str, base_commit: str, *,
                parsed: bool) -> dict[str, Any]:
    """After the parse: `{BASE_MANIFEST_SHA256: <the pinned manifest's sha256, or None when "no manifest" is
    pinned>}`, or nothing when the claim could not be used. A parse that failed (before it could write the
    manifest from a pinned partial-parse file) leaves the pin as it was."""
    from ..adapters.dbt_manifest import settle_pin

    try:
        folder = cache_dir / "dbt_state" / plan_id
        if not folder.is_dir():
            return {}
        digest = settle_pin(folder, cache, base_commit, parsed=parsed)
    except OSError as error:
        pipes.log.warning(f"could not read the base manifest pinned for plan {plan_id}: {error}; dbt's state "
                          "comparison does not narrow the plan")
        return {}
    pipes.log.info(f"state comparison of plan {plan_id}: " + (
        f"the manifest of commit {base_commit[:12]} pinned on the claim (sha256 {digest[:12]})" if digest
        else f"no manifest of commit {base_commit[:12]} is pinned on the claim (none was kept when the plan "
             "was first parsed, or it could not be written)"))
    return {BASE_MANIFEST_SHA256: digest}


def main(argv: Sequence[str] | None = None) -> int:
    from dagster_pipes import open_dagster_pipes

    from ..adapters.dbt_manifest import DbtParseCache, read_parsed_graph
    from . import dbt_parse

    parser = argparse.ArgumentParser(prog="python -m dagctl_dagster.runner.dbt_parse_pod", add_help=False,
                                     allow_abbrev=False)
    parser.add_argument("--target-path", required=True, type=Path)
    parser.add_argument("--target", required=True)
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--cache-dir", default=None, type=Path)
    parser.add_argument("--commit", default=None)
    parser.add_argument("--plan-id", default=None)
    parser.add_argument("--base-commit", default=None)
    known, rest = parser.parse_known_args(argv)
    parse_argv = ["--target-path", str(known.target_path), "--target", known.target, "--output", str(known.output),
                  *rest]
    cache = DbtParseCache(known.cache_dir / "dbt_parse") if known.cache_dir and known.commit else None
    compare = cache is not None and bool(known.plan_id and known.base_commit)
    pinned: Path | None = None
    with open_dagster_pipes() as pipes:
        known.output.parent.mkdir(parents=True, exist_ok=True)
        if cache is not None:
            parse_argv += ["--packages-cache", str(known.cache_dir / "dbt_packages")]
            _keep_going(lambda: cache.seed(known.target_path, target=known.target, commit=known.commit), pipes, "read")
            if compare:
                pinned = _pin_base_manifest(pipes, known.cache_dir, cache, known.plan_id, known.base_commit)
                if pinned is not None:
                    parse_argv += ["--state", str(pinned)]
        dbt_parse.main(parse_argv)
        if known.output.exists():
            result = json.loads(known.output.read_text())
        else:
            result = {"outcome": "environment_error", "message": "dbt's parse wrote no result"}
        if compare:
            result.update(_report_pin(pipes, known.cache_dir, cache, known.plan_id, known.base_commit,
                                      parsed=result.get("outcome") == "parsed"))
        graph = None
        if result.get("outcome") == "parsed":
            graph = read_parsed_graph(known.target_path)
            if cache is not None:
                _keep_going(lambda: cache.store(known.commit, known.target_path, target=known.target), pipes,
                            "write")
        for payload in build_parse_messages(result, graph):
            pipes.report_custom_message(payload)
        pipes.log.info(f"dbt parse: {result.get('outcome')}"
                       + (f", {len(graph.nodes)} nodes" if graph is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
