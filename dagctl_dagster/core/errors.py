"""One error root for the package.

Every error we raise is a `DagctlError`; its message names the file, field or plan that is wrong and what
to do about it, so it can be shown to a user as it is (sensor skip reasons, CLI errors, failed steps).
"""


class DagctlError(Exception):
    """Root of every error raised by dagctl-dagster."""


class DagctlConfigError(DagctlError):
    """The deployment config (`dagctl.yaml`) is missing or invalid."""


class DagctlProjectConfigError(DagctlError):
    """A project's `.dagctl/config.yaml` at some commit is missing or invalid."""


class DagctlGitError(DagctlError):
    """A Git operation failed (unreachable remote, unknown commit, missing branch)."""


class DagctlPlanError(DagctlError):
    """A plan cannot proceed (unknown plan, stale base, fingerprint mismatch)."""


class DagctlStateError(DagctlError):
    """Plan state cannot be read: an event in the event log cannot be parsed (never skipped)."""


class DagctlStalePlanError(DagctlPlanError):
    """The approved plan no longer matches what would run (its base moved); nothing was applied."""


class DagctlTransitionError(DagctlPlanError):
    """A lifecycle transition was refused (approving a completed plan, retrying a running one...)."""


class DagctlPolicyError(DagctlTransitionError):
    """The environment's approval policy refused a decision (self-approval, not an approver...)."""


class DagctlStepError(DagctlError):
    """A build or execution step failed (non-zero exit, pod failure, timeout)."""


class DagctlSignatureError(DagctlError):
    """A public key or a signature cannot be read (not an OpenSSH key line, a truncated blob)."""


class DagctlStateLockedError(DagctlStepError):
    """A process outside dagctl holds DuckDB's single-writer lock on SQLMesh's database; nothing was done."""
