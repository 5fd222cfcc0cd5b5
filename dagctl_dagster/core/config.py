"""Configuration: the deployment config (`dagctl.yaml`) and a project's `.dagctl/config.yaml`.

The deployment config is written by the platform team: which projects exist, where their Git repositories
are, which environments they deploy to, who approves what, and where steps run. It never holds secrets:
Git credentials and warehouse passwords come from the environment (or Kubernetes secrets); approvers prove
their decisions with their own private keys, and the config lists only their public keys (`people:`).

The project config lives in the project's own repository and holds the `version` whose change starts a
dbt plan. Both are validated with pydantic; every error names the file and the field path.
"""

from __future__ import annotations

import re
import shlex
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from pydantic_core import PydanticCustomError

from .errors import DagctlConfigError, DagctlProjectConfigError, DagctlSignatureError
from .kubernetes_config import KubernetesBackendConfig
from .signatures import parse_public_key
from .steps import StepEnvConfig

DEFAULT_CONFIG_PATH = "dagctl.yaml"
PROJECT_CONFIG_PATH = ".dagctl/config.yaml"

# Project and environment names become parts of Dagster job, sensor and asset names.
_NAME = r"^[A-Za-z][A-Za-z0-9_]*$"
_DURATION = re.compile(r"^(\d+)([smhd])$")
_DURATION_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


# `scheme://userinfo@`: credentials in a repository URL (the user alone is fine for ssh: `ssh://git@host`).
_URL_USERINFO = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<userinfo>[^/?#\s]*)@")
MAX_VERSION_CHARS = 100

# Cron fields: name, lowest, highest, names accepted in place of numbers.
_CRON_FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    ("day of week", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)
_CRON_MACROS = frozenset({"@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly", "@annually"})
_CRON_ITEM = re.compile(r"^(?:(?P<all>\*)|(?P<low>\w+)(?:-(?P<high>\w+))?)(?:/(?P<step>\d+))?$")


def get_cron_problem(cron: str) -> str | None:
    """What is wrong with a 5-field cron expression, or `None` (a pure check, no scheduler needed).

    Stricter than Dagster's check (no `L`, `#` or wrapping ranges), never looser.

    Example: `get_cron_problem("0 25 * * *")` is `"hour: 25 is not a number from 0 to 23"`.
    """
    text = cron.strip()
    if text.lower() in _CRON_MACROS:
        return None
    fields = text.split()
    if len(fields) != 5:
        return (f"expected 5 fields (minute hour day-of-month month day-of-week, e.g. '0 3 * * *') or one of "
                f"{', '.join(sorted(_CRON_MACROS))}, got {len(fields)}")
    values: list[set[int]] = []
    for field, (name, low, high, names) in zip(fields, _CRON_FIELDS):
        seen: set[int] = set()
        for item in field.split(","):
            match = _CRON_ITEM.match(item)
            if match is None:
                return f"{name}: '{item}' is not a number, a range (1-5), '*' or a step (*/15)"
            numbers = []
            for part in (match.group("low"), match.group("high")):
                if part is None:
                    continue
                number = (names.index(part.lower()) + (1 if name == "month" else 0) if part.lower() in names
                          else int(part) if part.isdigit() else None)
                if number is None or not low <= number <= high:
                    return f"{name}: {part} is not a number from {low} to {high}"
                numbers.append(number)
            if match.group("step") is not None and int(match.group("step")) == 0:
                return f"{name}: a step of 0 never repeats"
            if len(numbers) == 2 and numbers[0] > numbers[1]:
                return f"{name}: the range {item} goes backwards"
            seen.update(range(numbers[0], numbers[-1] + 1) if numbers else range(low, high + 1))
        values.append(seen)
    days, months = values[2], values[3]
    if months == {2} and days <= {30, 31}:
        return "day of month: February never has that day"
    return None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PathRule(_Strict):
    """Extra approvers required when a plan touches some paths.

    Example: `{paths: ["models/finance/**"], approvers: [carol]}`: a plan that changes a finance model also
    needs an approval from carol.
    """

    paths: tuple[str, ...] = Field(min_length=1, description="Glob patterns relative to the project.")
    approvers: tuple[str, ...] = Field(min_length=1, description="One of these must approve as well.")


class LocalBackendConfig(_Strict):
    """Steps run as subprocesses on the machine running Dagster (the embedded default)."""

    type: Literal["local"] = "local"
    dbt_parse_server: bool = Field(
        default=True,
        description="dbt's parse step is served by a resident process that has imported dbt once and forks a "
        "child per parse (`runner.dbt_parse_server`): a warm parse without dbt's start-up. False: every parse "
        "is a plain process.",
    )
    dbt_parse_server_idle_seconds: int = Field(
        default=600, ge=1, description="The parse server exits after this many seconds without a parse."
    )


BackendConfig = Annotated[
    LocalBackendConfig | KubernetesBackendConfig, Field(discriminator="type")
]


class EnvironmentConfig(_Strict):
    """A named target of a project and its approval policy."""

    name: str = Field(pattern=_NAME, description="Environment name: prod, dev, preview...")
    protected: bool = Field(default=False, description="Nothing executes here without approval.")
    branch: str | None = Field(default=None, description="Branch it tracks (default: the project's).")
    target: str | None = Field(default=None, description="dbt target (default: the environment name).")
    sqlmesh_environment: str | None = Field(
        default=None, description="SQLMesh environment (default: the environment name)."
    )
    include_downstream: bool = Field(
        default=False, description="dbt selective scope also builds downstream nodes (`path:...+`)."
    )
    approvers: tuple[str, ...] = Field(
        default=(), description="Who may approve; empty means anyone (discouraged for protected envs)."
    )
    required_approvals: int = Field(default=1, ge=1, description="Distinct approvals needed.")
    allow_self_approval: bool = Field(
        default=False, description="Whether a plan's author may approve their own plan."
    )
    path_rules: tuple[PathRule, ...] = Field(default=(), description="Extra approvers per path.")
    approval_ttl: timedelta | None = Field(
        default=None, description="How long an approval counts (`30m`, `24h`, `7d`); none: forever."
    )
    verify_approvals: bool = Field(
        default=False,
        description="An approval (or retry) counts only with a valid OpenSSH signature by one of the "
        "approver's public keys listed under `people:`.",
    )
    webhook_url: str | None = Field(
        default=None, description="Receives a JSON event when a plan needs approval, completes or fails."
    )
    backend: BackendConfig | None = Field(
        default=None, description="Where this environment's steps run (default: the project's backend)."
    )
    step_env: StepEnvConfig = Field(
        default_factory=StepEnvConfig,
        description="Environment of this environment's steps, on top of the project's `step_env`.",
    )

    @field_validator("approval_ttl", mode="before")
    @classmethod
    def _parse_duration(cls, value: object) -> object:
        if isinstance(value, str):
            match = _DURATION.match(value.strip())
            if not match:
                raise ValueError("use a number and a unit: 90s, 30m, 24h or 7d")
            return timedelta(**{_DURATION_UNITS[match.group(2)]: int(match.group(1))})
        return value

    @field_validator("required_approvals")
    @classmethod
    def _enough_approvers(cls, value: int, info: ValidationInfo) -> int:
        # A policy that needs more distinct approvers than it lists can never be met: plans would wait
        # forever, so it is refused at load.
        approvers = info.data.get("approvers") or ()
        if approvers and value > len(set(approvers)):
            raise ValueError(
                f"needs {value} distinct approvals but only {len(set(approvers))} approver(s) are listed "
                f"({', '.join(approvers)})"
            )
        return value

    @property
    def dbt_target(self) -> str:
        return self.target or self.name

    @property
    def sqlmesh_env(self) -> str:
        return self.sqlmesh_environment or self.name


class DbtConfig(_Strict):
    """How dbt runs for a project."""

    commands: tuple[tuple[str, ...], ...] = Field(
        default=(("dbt", "build"),),
        description='dbt commands run at execute, as strings ("dbt build") or argv lists.',
    )
    profiles_dir: str | None = Field(
        default=None,
        description="Folder holding profiles.yml, absolute or relative to the deployment config "
        "(default: the project folder itself).",
    )

    @field_validator("commands", mode="before")
    @classmethod
    def _split_commands(cls, value: object) -> object:
        if isinstance(value, (list, tuple)):
            return tuple(shlex.split(item) if isinstance(item, str) else item for item in value)
        return value

    @field_validator("commands")
    @classmethod
    def _commands_are_dbt(cls, value: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
        for argv in value:
            if len(argv) < 2 or argv[0] != "dbt":
                raise ValueError(f"each command must start with 'dbt' and a sub-command, got {list(argv)}")
        return value


class SqlmeshConfig(_Strict):
    """How SQLMesh runs for a project."""

    gateway: str | None = Field(default=None, description="SQLMesh gateway (default: the project's).")


class ScheduleConfig(_Strict):
    """A recurring framework command on what an environment has deployed."""

    name: str = Field(pattern=_NAME, description="Schedule name, unique in the project.")
    environment: str = Field(description="Environment whose deployed commit it runs.")
    cron: str = Field(description="Cron expression, e.g. '0 * * * *'.")
    command: Literal["dbt_build", "sqlmesh_run", "sqlmesh_janitor"] = Field(
        description="What to run."
    )

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        problem = get_cron_problem(value)
        if problem:
            raise ValueError(f"invalid cron expression '{value}': {problem}")
        return value


class ProjectConfig(_Strict):
    """One Git repository holding a dbt or SQLMesh project."""

    name: str = Field(pattern=_NAME, description="Project name, used in job and asset names.")
    framework: Literal["dbt", "sqlmesh"]
    repository: str = Field(min_length=1, description="Any URL git accepts: https, ssh, a path.")
    branch: str = Field(default="main", description="Branch the sensor tracks.")
    subdirectory: str | None = Field(default=None, description="Project folder inside the repo.")
    environments: tuple[EnvironmentConfig, ...] = Field(min_length=1)
    backend: BackendConfig = Field(default_factory=LocalBackendConfig)
    dbt: DbtConfig = Field(default_factory=DbtConfig)
    sqlmesh: SqlmeshConfig = Field(default_factory=SqlmeshConfig)
    sensor_interval_seconds: int = Field(default=60, ge=5, description="Seconds between sensor ticks.")
    git_timeout_seconds: int = Field(
        default=60, ge=1, le=3600,
        description="Longest a Git network call (ls-remote, fetch) may take, and how long a transfer may stay "
        "below 1 KB/s, before it fails: one hung remote never holds a sensor for long. Raise it if the first "
        "clone of a large repository needs longer.",
    )
    schedules: tuple[ScheduleConfig, ...] = ()
    step_env: StepEnvConfig = Field(
        default_factory=StepEnvConfig,
        description="Environment of every step (explain, execute, schedules) of every environment. Steps "
        "inherit nothing else from the code location but a small allowlist (PATH, HOME, locale, telemetry).",
    )

    @field_validator("backend", mode="before")
    @classmethod
    def _backend_shorthand(cls, value: object) -> object:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("repository")
    @classmethod
    def _no_credentials(cls, value: str) -> str:
        # The message never repeats the URL: it holds the secret.
        match = _URL_USERINFO.match(value.strip())
        if match:
            userinfo, scheme = match.group("userinfo"), match.group("scheme").lower()
            if ":" in userinfo or scheme in ("http", "https"):
                raise ValueError(
                    "the URL holds credentials (user:password@ or a token): remove them from the config and "
                    "set DAGCTL_GIT_TOKEN (https) or DAGCTL_GIT_SSH_KEY (ssh) in the code location's environment"
                )
        return value

    @field_validator("subdirectory")
    @classmethod
    def _relative_subdirectory(cls, value: str | None) -> str | None:
        if value is None:
            return None
        cleaned = value.strip("/")
        if not cleaned or ".." in Path(cleaned).parts:
            raise ValueError("must be a folder inside the repository, e.g. 'analytics'")
        return cleaned

    # Name checks are field validators, not one model validator, so each error's path names the field
    # (`projects.0.environments`, `projects.0.schedules`) rather than just the project.
    @field_validator("environments")
    @classmethod
    def _unique_environments(cls, value: tuple[EnvironmentConfig, ...]) -> tuple[EnvironmentConfig, ...]:
        names = [env.name for env in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"environment names must be unique, repeated: {duplicates}")
        return value

    @field_validator("schedules")
    @classmethod
    def _check_schedules(
        cls, value: tuple[ScheduleConfig, ...], info: ValidationInfo
    ) -> tuple[ScheduleConfig, ...]:
        schedule_names = [schedule.name for schedule in value]
        duplicates = sorted({name for name in schedule_names if schedule_names.count(name) > 1})
        if duplicates:
            raise ValueError(f"schedule names must be unique, repeated: {duplicates}")
        framework = info.data.get("framework")
        environments = info.data.get("environments")
        for schedule in value:
            if framework and not schedule.command.startswith(f"{framework}_"):
                raise ValueError(
                    f"schedule '{schedule.name}' runs {schedule.command}, which a {framework} project "
                    "cannot run"
                )
            if environments is None:
                continue  # the environments themselves are invalid and reported on their own
            names = [env.name for env in environments]
            if schedule.environment not in names:
                raise ValueError(
                    f"schedule '{schedule.name}' names environment '{schedule.environment}', "
                    f"which is not one of {names}"
                )
        return value

    @model_validator(mode="after")
    def _check_backends(self) -> ProjectConfig:
        for backend in [self.backend, *(env.backend for env in self.environments)]:
            if isinstance(backend, KubernetesBackendConfig):
                backend.check_framework(self.framework)
        return self

    def get_environment(self, name: str) -> EnvironmentConfig:
        for env in self.environments:
            if env.name == name:
                return env
        known = ", ".join(env.name for env in self.environments)
        raise DagctlConfigError(
            f"project '{self.name}' has no environment '{name}' (known: {known})"
        )

    def tracked_branch(self, env: EnvironmentConfig) -> str:
        return env.branch or self.branch

    def backend_for(self, env: EnvironmentConfig) -> LocalBackendConfig | KubernetesBackendConfig:
        return env.backend or self.backend

    def step_env_for(self, env: EnvironmentConfig) -> StepEnvConfig:
        """The declared step environment of `env`: the project's, with the environment's on top."""
        return self.step_env.merged(env.step_env)


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class PersonConfig(_Strict):
    """Someone who commits, approves or both: one name, the emails their commits carry, their public keys.

    Example: `{name: alice, emails: [alice@acme.io, 1234+alice@users.noreply.github.com],
    keys: ["ssh-ed25519 AAAAC3Nza... alice@laptop"]}`.
    """

    name: str = Field(min_length=1, description="What approver lists, path rules and `--as` name.")
    emails: tuple[str, ...] = Field(default=(), description="Author and committer emails of their commits.")
    keys: tuple[str, ...] = Field(
        default=(), description="OpenSSH public keys (`ssh-ed25519 AAAA... comment`) their decisions are "
        "signed with (`ssh-keygen -Y sign -n dagctl`).",
    )

    @field_validator("emails")
    @classmethod
    def _check_emails(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for email in value:
            if not _EMAIL.match(email):
                raise ValueError(f"'{email}' is not an email address")
        return tuple(email.lower() for email in value)

    @field_validator("keys")
    @classmethod
    def _check_keys(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for line in value:
            try:
                parse_public_key(line)
            except DagctlSignatureError as exc:
                raise ValueError(str(exc)) from exc
        return tuple(line.strip() for line in value)


class DeploymentConfig(_Strict):
    """The whole deployment: every project this Dagster code location manages."""

    people: tuple[PersonConfig, ...] = Field(
        default=(), description="Who commits and approves. When set, approver lists must name these people.",
    )
    projects: tuple[ProjectConfig, ...] = Field(min_length=1)
    storage_dir: str = Field(
        default=".dagctl-data",
        description="Where Git mirrors and snapshots live, relative to the config file or absolute.",
    )

    @field_validator("projects")
    @classmethod
    def _unique_projects(cls, value: tuple[ProjectConfig, ...]) -> tuple[ProjectConfig, ...]:
        names = [project.name for project in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"project names must be unique, repeated: {duplicates}")
        return value

    @field_validator("people")
    @classmethod
    def _unique_people(cls, value: tuple[PersonConfig, ...]) -> tuple[PersonConfig, ...]:
        names = [person.name for person in value]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"people's names must be unique, repeated: {duplicates}")
        emails = [email for person in value for email in person.emails]
        shared = sorted({email for email in emails if emails.count(email) > 1})
        if shared:
            raise ValueError(f"an email belongs to one person only, listed more than once: {shared}")
        return value

    @model_validator(mode="after")
    def _approvers_are_people(self) -> DeploymentConfig:
        # Checked once the whole file is read (people and projects), but reported at the field that names
        # the unknown person, e.g. `projects.0.environments.1.approvers`.
        known = {person.name: person for person in self.people}
        for p, project in enumerate(self.projects):
            for e, env in enumerate(project.environments):
                where = f"projects.{p}.environments.{e}"
                if env.verify_approvals and not any(person.keys for person in self.people):
                    raise PydanticCustomError(
                        "dagctl_field", "{where}.verify_approvals: no person has `keys`, so no approval "
                        "could ever be verified: list the approvers under `people:` with their OpenSSH "
                        "public keys", {"where": where})
                lists = [("approvers", env.approvers)]
                lists += [(f"path_rules.{r}.approvers", rule.approvers) for r, rule in enumerate(env.path_rules)]
                for field, names in lists:
                    unknown = [name for name in names if name not in known]
                    if unknown and (self.people or env.verify_approvals):
                        raise PydanticCustomError(
                            "dagctl_field", "{where}.{field}: {unknown} not listed under `people:` ({known})",
                            {"where": where, "field": field, "unknown": ", ".join(unknown),
                             "known": "people: " + ", ".join(known) if known else "no people are listed"})
                    keyless = [name for name in names if name in known and not known[name].keys]
                    if env.verify_approvals and keyless:
                        raise PydanticCustomError(
                            "dagctl_field", "{where}.{field}: {keyless} listed under `people:` without "
                            "`keys`, so their approvals could never be verified (verify_approvals): add "
                            "their OpenSSH public keys",
                            {"where": where, "field": field, "keyless": ", ".join(keyless)})
        return self

    def get_person(self, name: str) -> PersonConfig | None:
        return next((person for person in self.people if person.name == name), None)

    def get_project(self, name: str) -> ProjectConfig:
        for project in self.projects:
            if project.name == name:
                return project
        known = ", ".join(project.name for project in self.projects)
        raise DagctlConfigError(f"unknown project '{name}' (known: {known})")


class ProjectRepoConfig(_Strict):
    """The project's own `.dagctl/config.yaml`."""

    version: StrictStr = Field(
        min_length=1, max_length=MAX_VERSION_CHARS, description="Bump it to request a dbt plan."
    )


def format_validation_error(error: ValidationError) -> str:
    """One line per problem, each with its field path, e.g. `projects.0.environments: too short`."""
    problems = error.errors()
    locations = [tuple(problem["loc"]) for problem in problems]
    lines = []
    for problem in problems:
        loc = tuple(problem["loc"])
        # pydantic also reports a variadic tuple whose items failed as "too short" (its length is
        # counted after validation); the items' own errors say what is wrong, so that echo is dropped.
        if problem["type"] == "too_short" and any(
            len(other) > len(loc) and other[: len(loc)] == loc for other in locations
        ):
            continue
        if problem["type"] == "dagctl_field":  # the message starts with its own field path
            lines.append(problem["msg"])
            continue
        path = ".".join(str(part) for part in loc) or "(top level)"
        lines.append(f"{path}: {problem['msg']}")
    return "; ".join(lines)


def _load_yaml(text: str, source: str, error_type: type[Exception]) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error_type(f"{source}: invalid YAML: {exc}".replace("\n", " ")) from exc


def parse_deployment_config(text: str, *, source: str) -> DeploymentConfig:
    """Parses and validates a deployment config; `source` names the file in errors."""
    data = _load_yaml(text, source, DagctlConfigError)
    if not isinstance(data, dict):
        raise DagctlConfigError(f"{source}: expected a mapping with a 'projects' list")
    try:
        return DeploymentConfig.model_validate(data)
    except ValidationError as exc:
        raise DagctlConfigError(f"{source}: {format_validation_error(exc)}") from exc


def load_deployment_config(path: str | Path) -> DeploymentConfig:
    """Reads the deployment config from `path`.

    Example: `load_deployment_config("dagctl.yaml").get_project("jaffle")`.
    """
    file = Path(path)
    try:
        text = file.read_bytes().decode("utf-8")
    except OSError as exc:
        raise DagctlConfigError(
            f"{file}: cannot read the deployment config ({exc.strerror}); "
            "set DAGCTL_CONFIG to its path"
        ) from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise DagctlConfigError(
            f"{file}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    return parse_deployment_config(text, source=str(file))


def parse_project_repo_config(text: str | None, *, path: str, commit: str) -> ProjectRepoConfig:
    """Validates `.dagctl/config.yaml` read at `commit`; errors name the file, the commit and the field."""
    where = f"{path} at commit {commit[:12]}"
    if text is None:
        raise DagctlProjectConfigError(
            f"{where}: file not found; add it with a string field 'version', e.g. version: \"1\""
        )
    data = _load_yaml(text, where, DagctlProjectConfigError)
    if not isinstance(data, dict):
        raise DagctlProjectConfigError(f"{where}: expected a mapping with a string field 'version'")
    try:
        return ProjectRepoConfig.model_validate(data)
    except ValidationError as exc:
        raise DagctlProjectConfigError(f"{where}: {format_validation_error(exc)}") from exc
