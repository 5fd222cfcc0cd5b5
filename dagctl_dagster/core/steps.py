"""Steps: the unit of work a backend runs.

A plan's `build` and `execute` phases are expressed as `StepSpec` values: an image, an argv list (never a
shell string), plain environment variables and references to secrets. A backend turns the same spec into
a local subprocess (the embedded default) or a Kubernetes pod, so both run exactly the same command line.
Secret values never appear in a spec: only the name of the environment variable to set and where its value
comes from (an environment variable of the launching process locally, a Kubernetes secret in a cluster).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .errors import DagctlStepError

# What a step process inherits from the process that starts it (the code location or run worker): only
# what every tool needs to run, plus the telemetry switches. Nothing else: the approvers' keys, the Git
# token, another environment's warehouse password never reach project code. A step gets more only by
# declaring it (`env`, `pass_env`, `secret_env` of the project and environment in the deployment config).
STEP_ENV_ALLOWLIST: frozenset[str] = frozenset({
    "PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "LC_MESSAGES", "TZ", "TMPDIR", "USER",
    "LOGNAME", "SSL_CERT_FILE", "SSL_CERT_DIR",
    # Telemetry switches of Dagster, dbt and SQLMesh (see the README's Telemetry section).
    "DAGSTER_DISABLE_TELEMETRY", "DBT_SEND_ANONYMOUS_USAGE_STATS", "SQLMESH__DISABLE_ANONYMIZED_ANALYTICS",
    "DO_NOT_TRACK",
})
_ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"


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
    pass_env: tuple[str, ...] = Field(
        default=(), description="Variables passed through from the launching process's environment."
    )
    secret_env: tuple[SecretRef, ...] = Field(default=(), description="Environment from secrets.")
    labels: dict[str, str] = Field(default_factory=dict, description="Labels identifying the plan.")


def build_process_env(step: StepSpec, parent: Mapping[str, str]) -> dict[str, str]:
    """The complete environment of a step's local process: nothing is inherited beyond this.

    `parent` is the launching process's environment (`os.environ`). From it the step gets the
    allowlist (`STEP_ENV_ALLOWLIST`), the variables it passes through (`pass_env`, skipped when unset)
    and its secret references (`secret_env`, read from the variable of the same name; missing is an
    error). Then its plain `env` values. Pass the result as the whole `env=` of the process.

    Example: `subprocess.run(step.argv, env=build_process_env(step, os.environ))`.
    """
    environ = {name: parent[name] for name in STEP_ENV_ALLOWLIST if name in parent}
    environ.update({name: parent[name] for name in step.pass_env if name in parent})
    for ref in step.secret_env:
        value = parent.get(ref.env)
        if value is None:
            raise DagctlStepError(
                f"step '{step.name}' needs environment variable {ref.env} (secret {ref.secret}/{ref.key} "
                "in a cluster); set it in the environment of the Dagster code location"
            )
        environ[ref.env] = value
    environ.update(step.env)
    return environ


class StepEnvConfig(BaseModel):
    """What a project's or environment's steps get in their environment, besides the allowlist.

    Example (deployment config, under a project or an environment):

        env: {DBT_THREADS: "4"}             # plain values
        pass_env: [DAGCTL_WAREHOUSE_DIR]    # copied from the code location's environment (not secrets)
        secret_env:                         # secrets: a Kubernetes secret in a cluster, locally the
          - {env: DBT_PASSWORD, secret: warehouse-prod, key: password}   # variable of the same name
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    env: dict[str, str] = Field(default_factory=dict, description="Plain variables set in every step.")
    pass_env: tuple[str, ...] = Field(
        default=(), description="Variables copied from the code location's environment (no secrets)."
    )
    secret_env: tuple[SecretRef, ...] = Field(default=(), description="Variables set from secrets.")

    @field_validator("pass_env")
    @classmethod
    def _valid_names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [name for name in value if not re.match(_ENV_NAME, name)]
        if bad:
            raise ValueError(f"not environment variable names: {bad}")
        return value

    def merged(self, other: StepEnvConfig) -> StepEnvConfig:
        """This config with `other` (an environment's) on top."""
        names = {ref.env for ref in other.secret_env}
        return StepEnvConfig(
            env={**self.env, **other.env},
            pass_env=tuple(dict.fromkeys((*self.pass_env, *other.pass_env))),
            secret_env=(*(ref for ref in self.secret_env if ref.env not in names), *other.secret_env),
        )
