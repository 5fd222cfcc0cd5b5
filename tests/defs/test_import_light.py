"""Importing the code location loads Dagster and our own code, not the frameworks the steps use.

Every plan, decision and execution is a run, and every run process imports the code location: dbt (through
dagster-dbt), SQLMesh, GitPython and the Kubernetes client are imported only inside the functions that use
them. Checked in a fresh interpreter (this test session has long imported all of them), with a deployment
that has every kind of project: dbt and SQLMesh, on the local and on the Kubernetes backend, with schedules.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

# Top-level packages the code location must not import when it loads.
HEAVY = ("dagster_dbt", "dbt", "dbt_common", "sqlmesh", "kubernetes", "dagster_k8s", "git", "sqlalchemy")

CONFIG = """
storage_dir: data
projects:
  - name: jaffle
    framework: dbt
    repository: https://git.acme.io/analytics.git
    environments:
      - name: dev
      - name: prod
        protected: true
        webhook_url: https://hooks.acme.io/dagctl
    schedules:
      - {name: nightly_build, environment: dev, cron: "0 3 * * *", command: dbt_build}
  - name: jaffle_k8s
    framework: dbt
    repository: https://git.acme.io/analytics.git
    backend: {type: kubernetes, namespace: data, runner_image: "ghcr.io/acme/dagctl-runner:1.0",
              registry: ghcr.io/acme}
    environments:
      - name: prod
        protected: true
  - name: shop
    framework: sqlmesh
    repository: https://git.acme.io/shop.git
    environments:
      - name: dev
    schedules:
      - {name: hourly_run, environment: dev, cron: "0 * * * *", command: sqlmesh_run}
  - name: shop_k8s
    framework: sqlmesh
    repository: https://git.acme.io/shop.git
    backend: {type: kubernetes, namespace: data, runner_image: "ghcr.io/acme/dagctl-runner:1.0"}
    environments:
      - name: prod
        protected: true
"""

PROBE = """
import json, sys
from dagctl_dagster.defs.location import defs
repository = defs.get_repository_def()
print(json.dumps({
    "loaded": sorted({name.split(".")[0] for name in sys.modules}),
    "jobs": sorted(job.name for job in repository.get_all_jobs()),
    "sensors": sorted(sensor.name for sensor in repository.sensor_defs),
    "schedules": sorted(schedule.name for schedule in repository.schedule_defs),
}))
"""


def load_location(config_path: Path) -> dict[str, list[str]]:
    """What a fresh interpreter has loaded after importing the code location, and what it defines."""
    env = {**os.environ, "DAGCTL_CONFIG": str(config_path)}
    env.pop("DAGCTL_STORAGE_DIR", None)
    probe = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=config_path.parent,
                           capture_output=True, text=True, timeout=300, check=False)
    assert probe.returncode == 0, probe.stderr
    return json.loads(probe.stdout.splitlines()[-1])


def test_the_code_location_loads_no_framework_for_dbt_sqlmesh_and_kubernetes_projects(tmp_path: Path) -> None:
    config_path = tmp_path / "dagctl.yaml"
    config_path.write_text(CONFIG)

    report = load_location(config_path)

    assert [name for name in HEAVY if name in report["loaded"]] == []
    assert "dagster" in report["loaded"]
    assert {"jaffle_plan_job", "jaffle_k8s_plan_job", "shop_plan_job", "shop_k8s_plan_job",
            "jaffle_recurring_job", "shop_recurring_job", "dagctl_review_job"} <= set(report["jobs"])
    assert {"jaffle_plan_sensor", "jaffle_k8s_plan_sensor", "shop_plan_sensor", "shop_k8s_plan_sensor",
            "dagctl_approval_sensor"} <= set(report["sensors"])
    assert report["schedules"] == ["jaffle_nightly_build_schedule", "shop_hourly_run_schedule"]
