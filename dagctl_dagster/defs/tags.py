"""Run tags of plan runs: who they belong to, and the per-environment execution lock.

`dagster.yaml` limits runs with the same `dagctl/lock` value to one at a time (queued run coordinator's
tag concurrency limits), so at most one plan executes per project and environment; `gate` checks again.
"""

PROJECT_TAG = "dagctl/project"
ENVIRONMENT_TAG = "dagctl/environment"
PLAN_ID_TAG = "dagctl/plan-id"
LOCK_TAG = "dagctl/lock"
TRIGGER_TAG = "dagctl/trigger"


def plan_run_tags(project: str, environment: str | None = None, plan_id: str | None = None) -> dict[str, str]:
    tags = {PROJECT_TAG: project}
    if environment:
        tags[ENVIRONMENT_TAG] = environment
        tags[LOCK_TAG] = f"{project}.{environment}"
    if plan_id:
        tags[PLAN_ID_TAG] = plan_id
    return tags
