"""Kubernetes backend configuration (placeholder: the Kubernetes issue gives it its real content)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class KubernetesBackendConfig(BaseModel):
    """Steps run as pods launched through dagster-k8s."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["kubernetes"] = "kubernetes"
    namespace: str = "default"

    def check_framework(self, framework: str) -> None:
        """Raises ValueError when this backend cannot serve `framework` (e.g. dbt without a registry)."""
