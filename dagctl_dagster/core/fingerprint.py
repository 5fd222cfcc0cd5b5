"""Fingerprints: what was approved, reduced to one hash.

A plan's fingerprint is the SHA-256 of the canonical JSON of everything that decides what will run (commits,
scope, selection, command lines, changed files, SQLMesh snapshots and categories, the base). It is recorded
at `detect`, approvals are bound to it, and `execute` recomputes and compares it: if anything differs, the
plan is not what was approved.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping


def compute_fingerprint(material: Mapping[str, object]) -> str:
    """SHA-256 (hex) of `material` as canonical JSON (sorted keys, no whitespace).

    Example: `compute_fingerprint({"target": "abc", "scope": "all"})` is the same on every machine.
    """
    canonical = json.dumps(material, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
