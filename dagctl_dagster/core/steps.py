"""Steps: the unit of work a backend runs.

A plan's `build` and `execute` phases are expressed as `StepSpec` values: an image, an argv list (never a
shell string), plain environment variables and references to secrets. A backend turns the same spec into
a local subprocess (the embedded default) or a Kubernetes pod, so both run exactly the same command line.
Secret values never appear in a spec: only the name of the environment variable to set and where its value
comes from (an environment variable of the launching process locally, a Kubernetes secret in a cluster).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SecretRef(BaseModel):
    """An environment variable whose value comes from a secret.

    Example: `SecretRef(env="DBT_PASSWORD", secret="warehouse", key="password")` sets `DBT_PASSWORD` from
    key `password` of Kubernetes secret `warehouse`; the local backend reads it from the launching
    process's own `DBT_PASSWORD`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    env: str = Field(description="Name of the environment variable set in the step.")
    secret: str = Field(description="Kubernetes secret name holding the value.")
    key: str = Field(description="Key inside the Kubernetes secret.")


class StepSpec(BaseModel):
    """One command to run for a plan, independent of where it runs.

    Example:
        StepSpec(name="execute", image="ghcr.io/acme/dbt@sha256:...", argv=("dbt", "build"),
                 working_dir="/app", env={"DBT_PROFILES_DIR": "/app"}, labels={"dagctl/plan-id": "p1"})
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="Step name: build, execute, ...")
    argv: tuple[str, ...] = Field(description="The command line, as an argv list.")
    image: str | None = Field(default=None, description="Container image (Kubernetes backend).")
    working_dir: str | None = Field(default=None, description="Working directory of the command.")
    env: dict[str, str] = Field(default_factory=dict, description="Plain environment variables.")
    secret_env: tuple[SecretRef, ...] = Field(default=(), description="Environment from secrets.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels identifying the plan.")
