"""Factories for the Kubernetes backend tests: a backend, a project and a step.

Defaults read like one story: project `jaffle` (dbt) deployed to `prod` by plan `jaffle-prod-3f2a9c1d` at a
pinned commit, images pushed to `ghcr.io/acme`, pods in namespace `analytics`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from k8s_testing import DIGEST, PLAN_ID, RUNNER_IMAGE

from dagctl_dagster.adapters.kubernetes.specs import build_plan_labels
from dagctl_dagster.core.config import ProjectConfig
from dagctl_dagster.core.kubernetes_config import KubernetesBackendConfig
from dagctl_dagster.core.steps import StepSpec


@pytest.fixture
def make_backend() -> Callable[..., KubernetesBackendConfig]:
    def build(**overrides: Any) -> KubernetesBackendConfig:
        fields: dict[str, Any] = {
            "namespace": "analytics", "runner_image": RUNNER_IMAGE, "registry": "ghcr.io/acme",
        }
        fields.update(overrides)
        return KubernetesBackendConfig.model_validate(fields)

    return build


@pytest.fixture
def make_project(make_backend: Callable[..., KubernetesBackendConfig]) -> Callable[..., ProjectConfig]:
    def build(backend: KubernetesBackendConfig | None = None, **overrides: Any) -> ProjectConfig:
        fields: dict[str, Any] = {
            "name": "jaffle", "framework": "dbt", "repository": "git@github.com:acme/analytics.git",
            "environments": [{"name": "prod"}], "backend": backend or make_backend(),
        }
        fields.update(overrides)
        return ProjectConfig.model_validate(fields)

    return build


@pytest.fixture
def make_step() -> Callable[..., StepSpec]:
    """The first dbt command of plan `jaffle-prod-3f2a9c1d`, in the built image (by digest)."""

    def build(**overrides: Any) -> StepSpec:
        fields: dict[str, Any] = {
            "name": "execute-0",
            "argv": ("dbt", "build", "--select", "path:models/staging", "--target", "prod"),
            "image": f"ghcr.io/acme/jaffle@{DIGEST}",
            "working_dir": "/app",
            "env": {"DAGCTL_PROJECT": "jaffle", "DAGCTL_ENVIRONMENT": "prod", "DBT_PROFILES_DIR": "/app"},
            "labels": build_plan_labels("jaffle", "prod", PLAN_ID),
        }
        fields.update(overrides)
        return StepSpec.model_validate(fields)

    return build
