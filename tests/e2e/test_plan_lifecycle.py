"""A protected plan's whole life against a real webserver and daemon, driven the way users drive it.

The sensor creates a plan for version "1" of the jaffle project (committed by carol) in `dev` and `prod`.
`dev` is unprotected and executes by itself; `prod` waits for two of alice and bob.

The tests run in this file's order, which pytest keeps: the web UI check reads the prod plan while it is
still pending, the lifecycle test then approves and executes it, and the last test reviews a manual plan
made afterwards. Each test also works on its own (`-k`), since each waits for the state it needs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
# Deadlines, not expected durations: on a loaded 2-core machine one plan run (explain, or a dbt build)
# takes from 20 s to a few minutes.
PLAN_DEADLINE_SECONDS = 420
UI_TIMEOUT_MS = 90_000


@pytest.fixture(scope="session")
def sensor_prod_plan(dagster_deployment, run_dagctl, poll_until) -> dict:
    """The prod plan the sensor created for version "1", once explained (`plans list --json`)."""
    last: list[object] = []

    def explained_sensor_plan() -> dict | None:
        result = run_dagctl("plans", "list", "--project", "jaffle", "--env", "prod", "--json")
        assert result.returncode == 0, f"plans list failed: {result}"
        last[:] = [result.stdout[-2000:]]
        plans = [plan for plan in result.json() if plan["triggered_by"] == "sensor"]
        return plans[-1] if plans and plans[-1]["status"] != "explaining" else None

    return poll_until(explained_sensor_plan, timeout=PLAN_DEADLINE_SECONDS, interval=2,
                      describe=lambda: f"no explained sensor plan for prod; last list: {last}\n"
                      f"{dagster_deployment.read_logs()}")


@pytest.mark.skipif(not CHROMIUM.exists(), reason=f"web UI check needs Debian's chromium at {CHROMIUM} "
                    "(scripts/test-deps.sh installs it); no browser is downloaded")
def test_pending_plan_change_set_and_review_launchpad_visible_in_dagster_ui(
    dagster_deployment, sensor_prod_plan, tmp_path
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    plan_id = sensor_prod_plan["plan_id"]
    assert sensor_prod_plan["status"] == "pending", (
        f"the web UI check needs the sensor's prod plan still pending: {sensor_prod_plan['status']}")

    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1200})
            page.set_default_timeout(UI_TIMEOUT_MS)

            # The asset page: its latest materialization is the explained plan, with its change set.
            page.goto(f"{dagster_deployment.url}/assets/dagctl/jaffle/prod")
            page.get_by_text(plan_id).first.wait_for()
            changed_file = page.get_by_text("models/marts/customers.sql").first
            changed_file.wait_for()
            page.get_by_text("first deployment of this environment: full build").first.wait_for()
            changed_file.scroll_into_view_if_needed()
            page.screenshot(path=tmp_path / "asset-overview.png")
            overview = page.inner_text("body")

            # The events tab: the plan is pending; its summary says who must approve and how.
            page.goto(f"{dagster_deployment.url}/assets/dagctl/jaffle/prod?view=events")
            page.get_by_text("awaiting approval").first.wait_for()
            page.get_by_text("[Show Markdown]").first.click()
            summary = page.get_by_role("dialog")
            summary.get_by_text("Still needed").wait_for()
            page.screenshot(path=tmp_path / "plan-summary.png")
            summary_text = summary.inner_text()
            page.keyboard.press("Escape")

            # The review job's launchpad asks for exactly the approval config.
            page.goto(f"{dagster_deployment.url}/locations/dagctl/jobs/dagctl_review_job/playground")
            scaffold = page.get_by_role("button", name="Scaffold missing config")
            page.get_by_text("Missing required config").first.wait_for()
            scaffold.click()
            missing = page.get_by_role("dialog")
            missing.get_by_text("ops.review.config.plan_id").wait_for()
            missing_text = missing.inner_text()
            missing.get_by_role("button", name="Confirm").click()
            editor = page.locator(".CodeMirror").first
            editor.get_by_text("plan_id").wait_for()
            page.screenshot(path=tmp_path / "review-launchpad.png")
            launchpad_config = editor.inner_text()
        finally:
            browser.close()

    for expected in ("target_commit", "scope", "all", '"build"', "carol"):
        assert expected in overview, f"'{expected}' not on the asset page; see {tmp_path}/asset-overview.png"
    for expected in (f"Plan {plan_id}: pending", "2 more approval(s) from alice, bob",
                     "decision: approve", f"plan_id: {plan_id}", "models/marts/customers.sql"):
        assert expected in summary_text, f"'{expected}' not in the summary: {summary_text}"
    for field in ("actor", "decision", "plan_id"):
        assert f"ops.review.config.{field}" in missing_text, f"launchpad does not ask for {field}: {missing_text}"
        assert f"{field}:" in launchpad_config, f"scaffolded config lacks {field}: {launchpad_config}"
    assert "approve|reject|cancel|retry" in launchpad_config, f"decisions not offered: {launchpad_config}"


def test_protected_sensor_plan_refused_for_its_author_then_approved_twice_and_completed(
    sensor_prod_plan, run_dagctl, start_dagctl, expect_error
) -> None:
    plan_id = sensor_prod_plan["plan_id"]
    assert sensor_prod_plan["author"] == "carol", f"the commit author is the plan's author: {sensor_prod_plan}"

    shown = run_dagctl("plans", "show", plan_id)
    assert shown.returncode == 0, str(shown)
    for expected in (f"Plan `{plan_id}`: **pending**", "**Scope:** `all`", "`models/marts/customers.sql`",
                     "**Still needed:** 2 more approval(s) from alice, bob", "History:", "status: pending"):
        assert expected in shown.stdout, f"'{expected}' missing from plans show: {shown}"

    self_approval = run_dagctl("plans", "approve", plan_id, "--as", "carol")
    expect_error(self_approval, 3, "carol cannot approve plan", "one of its authors")

    by_alice = run_dagctl("plans", "approve", plan_id, "--as", "alice", "--comment", "numbers checked")
    assert by_alice.returncode == 0, str(by_alice)
    assert "alice: approve recorded" in by_alice.stdout, str(by_alice)
    assert "1 more approval(s) from bob needed" in by_alice.stdout, str(by_alice)

    # Follow the plan's logs from now on, as someone watching the deployment would.
    follow = start_dagctl("plans", "logs", plan_id, "--follow")
    try:
        by_bob = run_dagctl("plans", "approve", plan_id, "--as", "bob", "--json")
        assert by_bob.returncode == 0, str(by_bob)
        decision = by_bob.json()
        assert (decision["decision"], decision["actor"]) == ("approve", "bob"), str(by_bob)
        assert [a["actor"] for a in decision["plan"]["approvals"]] == ["alice", "bob"], str(by_bob)

        waited = run_dagctl("plans", "wait", plan_id, "--timeout", str(PLAN_DEADLINE_SECONDS),
                            timeout=PLAN_DEADLINE_SECONDS + 60)
        assert waited.returncode == 0, f"plans wait must exit 0 for a completed plan: {waited}"
        assert f"plan {plan_id}: completed" in waited.stdout, str(waited)
        followed_out, followed_err = follow.communicate(timeout=120)
    finally:
        follow.kill()
    assert follow.returncode == 0, f"logs --follow: exit {follow.returncode}: {followed_err}"
    assert "PASS=" in followed_out, f"dbt's summary line not followed live: {followed_out[-3000:]}"

    final = run_dagctl("plans", "show", plan_id, "--json").json()
    assert final["status"] == "completed", str(final)
    whats = [entry["what"] for entry in final["history"]]
    assert [what for what in whats if what.startswith("status:")] == [
        "status: explaining", "status: pending", "status: approved", "status: running", "status: completed",
    ], str(final["history"])
    assert whats.count("decision: approve") == 2, f"carol's refused approval is not recorded: {whats}"
    assert {run["status"] for run in final["runs"]} == {"SUCCESS"}, str(final["runs"])
    assert len(final["runs"]) == 2, f"one explaining and one executing run: {final['runs']}"

    logs = run_dagctl("plans", "logs", plan_id)
    assert logs.returncode == 0, str(logs)
    for expected in ("changed file(s)", "running execute-0: dbt build --target prod", "PASS="):
        assert expected in logs.stdout, f"'{expected}' missing from plans logs: {logs.stdout[-3000:]}"

    listed = run_dagctl("plans", "list", "--env", "prod", "--status", "completed")
    assert listed.returncode == 0, str(listed)
    assert listed.stdout.splitlines()[0].split()[:3] == ["PLAN", "STATUS", "TARGET"], str(listed)
    assert plan_id in listed.stdout, str(listed)


def test_manual_plan_rejected_by_a_reviewer_makes_wait_exit_1(sensor_prod_plan, run_dagctl) -> None:
    created = run_dagctl("plans", "create", "jaffle", "--env", "prod", "--as", "dave", "--json",
                         timeout=PLAN_DEADLINE_SECONDS + 60)
    assert created.returncode == 0, str(created)
    plan = created.json()["plan"]
    plan_id = plan["plan_id"]
    assert (plan["status"], plan["author"], plan["triggered_by"]) == ("pending", "dave", "manual"), str(plan)

    rejected = run_dagctl("plans", "reject", plan_id, "--as", "alice", "--comment", "not this week")
    assert rejected.returncode == 0, str(rejected)
    assert f"plan {plan_id}: rejected (not this week)" in rejected.stdout, str(rejected)

    waited = run_dagctl("plans", "wait", plan_id, "--timeout", "60", "--json")
    assert waited.returncode == 1, f"plans wait must exit 1 for a rejected plan: {waited}"
    assert waited.json()["status"] == "rejected", str(waited)
