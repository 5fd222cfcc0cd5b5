"""Per-commit snapshots are deleted once no plan needs them: kept for plans that are pending, approved or
running and for the deployed plan; deleted for the rest at the next local `build`."""

from conftest import run_requests

from dagctl_dagster.core.lifecycle import PlanStatus
from dagctl_dagster.defs.execution import clean_snapshots


def test_build_deletes_the_snapshots_of_finished_plans_and_keeps_pending_running_and_deployed(deployed):
    first_deployed = deployed.repo.head
    assert deployed.snapshots() == {first_deployed}
    rejected_commit = deployed.commit_change(author="dave")
    rejected = deployed.explain().plan_id
    assert deployed.decide(rejected, "reject", "alice").success
    executed_commit = deployed.commit_change(author="dave")
    executed = deployed.explain().plan_id
    # Snapshots made earlier for these commits (e.g. by a failed attempt), and one no plan names yet
    # (a plan being explained right now may be writing it).
    folder = deployed.storage_dir / "snapshots" / "jaffle"
    for name in (rejected_commit, executed_commit, "f" * 40):
        (folder / name).mkdir()

    deployed.approve(executed, "alice")
    [request] = run_requests(deployed.tick())
    result = deployed.launch(request)

    assert result.success and deployed.state(executed).status is PlanStatus.COMPLETED
    # The previous deployment is kept while the new plan runs; the rejected plan's snapshot is gone.
    assert deployed.snapshots() == {first_deployed, executed_commit, "f" * 40}
    logs = [record.user_message for record in deployed.instance.all_logs(result.run_id)]
    assert f"removed 1 snapshot(s) no plan needs any more: {rejected_commit[:12]}" in logs

    pending_commit = deployed.commit_change(author="dave")
    pending = deployed.explain().plan_id
    (folder / pending_commit).mkdir()
    project = deployed.runtime.deployment.get_project("jaffle")

    removed = clean_snapshots(deployed.instance, deployed.runtime, project)

    assert deployed.state(pending).status is PlanStatus.PENDING
    # The first deployment is no longer deployed: its snapshot goes; the pending plan's stays.
    assert removed == [first_deployed]
    assert deployed.snapshots() == {executed_commit, pending_commit, "f" * 40}
