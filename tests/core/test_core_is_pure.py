"""`core` stays framework-neutral: importing it loads no Dagster, Git, Kubernetes, dbt or SQLMesh code.

Checked in a fresh interpreter, since this test session itself may already have imported those packages.
"""

from __future__ import annotations

import json
import subprocess
import sys

FORBIDDEN = ("dagster", "git", "kubernetes", "dbt", "sqlmesh")

PROBE = """
import importlib, json, pkgutil, sys
import dagctl_dagster.core as core
names = sorted(m.name for m in pkgutil.iter_modules(core.__path__, "dagctl_dagster.core."))
for name in names:
    importlib.import_module(name)
loaded = sorted({module.split(".")[0] for module in sys.modules})
ours = sorted(
    m for m in sys.modules if m.startswith("dagctl_dagster.") and not m.startswith("dagctl_dagster.core")
)
print(json.dumps({"core": names, "loaded": loaded, "ours": ours}))
"""


def test_importing_every_core_module_loads_no_framework_and_no_other_layer() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=False
    )
    assert probe.returncode == 0, probe.stderr
    report = json.loads(probe.stdout)

    forbidden = [
        name for name in report["loaded"]
        if any(name == prefix or name.startswith(f"{prefix}_") for prefix in FORBIDDEN)
    ]
    assert {"dagctl_dagster.core.dbt_changes", "dagctl_dagster.core.lifecycle"} <= set(report["core"])
    assert forbidden == []
    assert report["ours"] == []
