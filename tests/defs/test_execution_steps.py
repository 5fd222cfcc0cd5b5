"""The steps `execute` hands to a backend: the same approved argv locally and in a pod."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from adapters.kubernetes.k8s_testing import assert_valid_manifest

from dagctl_dagster.adapters.kubernetes.specs import build_step_pod
from dagctl_dagster.core.config import parse_deployment_config
from dagctl_dagster.core.errors import DagctlStepError
from dagctl_dagster.core.dbt_changes import build_dbt_scope, build_file_change
from dagctl_dagster.core.plan import Framework, PlanSpec, seal_plan
from dagctl_dagster.core.sqlmesh_plan import SqlmeshChangeSet
from dagctl_dagster.defs.execution import build_checkout, build_execute_steps
from dagctl_dagster.defs.runtime import PlanRuntime

TARGET = "a" * 40
LABELS = {"dagctl/project": "shop", "dagctl/environment": "prod", "dagctl/plan-id": "shop-prod-0123abcd"}
KUBERNETES = """
    backend:
      type: kubernetes
      namespace: data
      runner_image: ghcr.io/acme/dagctl-runner:1.0
      registry: registry.acme.io
      repository: analytics/shop
"""


def make_runtime(tmp_path: Path, framework: str, backend: str = "") -> PlanRuntime:
    config = parse_deployment_config(f"""
projects:
  - name: shop
    framework: {framework}
    repository: https://git.acme.io/analytics.git
    subdirectory: shop
    dbt: {{profiles_dir: profiles}}
    environments: [{{name: prod}}]
{backend}""", source="dagctl.yaml")
    return PlanRuntime(deployment=config, storage_dir=tmp_path / "data", config_dir=tmp_path)


def make_spec(framework: Framework) -> PlanSpec:
    files = (build_file_change("models/orders.sql", "modified"),)
    scope = build_dbt_scope(files, has_base=True) if framework is Framework.DBT else None
    return seal_plan(PlanSpec(
        plan_id="shop-prod-0123abcd", project="shop", environment="prod", framework=framework,
        base_commit="b" * 40, target_commit=TARGET, triggered_by="sensor", author="carol", files=files,
        dbt_scope=scope, created_at=datetime(2025, 1, 6, tzinfo=UTC),
        commands=(("dbt", "build", "--target", "prod", "--select", "path:models/orders.sql"),)
        if scope else (),
        sqlmesh=SqlmeshChangeSet(environment="prod", base_plan_id="p1", has_changes=True)
        if framework is Framework.SQLMESH else None,
    ))


def test_local_dbt_step_runs_the_approved_argv_in_the_snapshot(tmp_path):
    runtime = make_runtime(tmp_path, "dbt")
    spec = make_spec(Framework.DBT)

    [step] = build_execute_steps(runtime, runtime.deployment.projects[0], spec, f"snapshot:{tmp_path}/snap#t1")

    assert (step.argv, step.image, step.working_dir, step.labels) == (
        spec.commands[0], None, f"{tmp_path}/snap", LABELS)
    assert step.env == {"DAGCTL_PROJECT": "shop", "DAGCTL_ENVIRONMENT": "prod",
                        "DBT_PROFILES_DIR": str(tmp_path / "profiles")}


def test_dbt_step_in_a_pod_runs_the_same_argv_on_the_built_image_digest(tmp_path):
    runtime = make_runtime(tmp_path, "dbt", KUBERNETES)
    spec = make_spec(Framework.DBT)
    digest = "registry.acme.io/analytics/shop@sha256:" + "c" * 64

    [step] = build_execute_steps(runtime, runtime.deployment.projects[0], spec, digest)

    assert (step.argv, step.image, step.working_dir) == (spec.commands[0], digest, "/app")
    pod = build_step_pod(step, runtime.deployment.projects[0].backend, pod_name="dagctl-step-1")
    assert_valid_manifest(pod)


def test_sqlmesh_step_in_a_pod_verifies_then_applies_on_a_checkout_of_the_pinned_commit(tmp_path):
    runtime = make_runtime(tmp_path, "sqlmesh", KUBERNETES)
    project = runtime.deployment.projects[0]
    spec = make_spec(Framework.SQLMESH)

    [step] = build_execute_steps(runtime, project, spec, f"ghcr.io/acme/dagctl-runner:1.0#{TARGET}")

    checkout = build_checkout(runtime, project, spec)
    assert (checkout.commit, checkout.subdirectory, step.image) == (TARGET, "shop", project.backend.runner_image)
    assert step.argv == ("python", "-m", "dagctl_dagster.runner.sqlmesh_apply", "--project-dir",
                         checkout.project_dir, "--environment", "prod", "--change-set-fingerprint",
                         spec.sqlmesh.fingerprint, "--project", "shop")
    assert step.working_dir == checkout.project_dir
    pod = build_step_pod(step, project.backend, pod_name="dagctl-step-2", checkout=checkout)
    assert_valid_manifest(pod)


def test_an_artifact_that_is_not_a_snapshot_is_refused_on_the_local_backend(tmp_path):
    runtime = make_runtime(tmp_path, "dbt")

    with pytest.raises(DagctlStepError, match="artifact 'registry.acme.io/x@sha256:1' is not a local snapshot"):
        build_execute_steps(runtime, runtime.deployment.projects[0], make_spec(Framework.DBT),
                            "registry.acme.io/x@sha256:1")
