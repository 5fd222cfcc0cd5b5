"""`dagctl`: plans from the command line and from CI jobs, over Dagster's GraphQL API.

A thin layer over `DagctlClient`: it parses arguments, calls the client, prints a table (or JSON with
`--json`) and turns the outcome into an exit code a pipeline can branch on:

    0  success (for `plans wait`: the plan completed)
    1  the plan failed or was rejected or cancelled (`plans wait`), or a run the command needed failed
    2  usage or configuration error: bad arguments, unknown or malformed plan id, unknown project or
       environment, a webserver that refuses the request (e.g. missing auth headers)
    3  the decision was refused by the environment's policy (self-approval, not an approver, unsigned
       approval in verifiable mode) or by the plan's state (approving a completed plan, retrying one that
       has not failed)
    4  the webserver cannot be reached
    5  `plans wait` (or waiting for a review run) timed out; the plan may still finish later

Every error is one line on stderr, never a traceback (set DAGCTL_DEBUG=1 to see one).

`dagctl config check FILE` validates a deployment config offline (0 valid, 2 invalid with the file and
field): a code location whose dagctl.yaml is invalid does not load, so check a change before deploying it.

Example: `dagctl --url https://dagster.acme.io plans approve jaffle-prod-3f2a9c1d --as alice --key KEY`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import NoReturn, TextIO

from ..adapters.graphql import (
    DEFAULT_URL,
    URL_ENV,
    DagctlClient,
    DagctlClientError,
    DagctlPlanNotFoundError,
    DagctlRefusedError,
    DagctlRequestError,
    DagctlRunFailedError,
    DagctlTimeoutError,
    DagctlUnreachableError,
    LogLine,
    PlanView,
    RunInfo,
    parse_header,
)
from ..adapters.ssh import build_ssh_signer
from ..core.config import load_deployment_config
from ..core.errors import DagctlError
from ..core.lifecycle import Decision, PlanStatus
from ..core.summary import render_plan_summary

EXIT_OK = 0
EXIT_PLAN_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4
EXIT_TIMEOUT = 5

DEFAULT_WAIT_TIMEOUT = 3600.0
DEFAULT_RUN_TIMEOUT = 600.0
DEBUG_ENV = "DAGCTL_DEBUG"


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# --- Arguments ---------------------------------------------------------------------------------------


def _add_connection_options(parser: argparse.ArgumentParser, *, top_level: bool) -> None:
    # Each option is accepted before or after the sub-command (`dagctl --json plans list` and
    # `dagctl plans list --json`); on sub-commands the default is SUPPRESS so it never overrides a value
    # given earlier on the line.
    default = (lambda value: value) if top_level else (lambda value: argparse.SUPPRESS)
    group = parser.add_argument_group("connection and output")
    group.add_argument("--url", default=default(None),
                       help=f"Dagster webserver URL (default: ${URL_ENV}, else {DEFAULT_URL})")
    group.add_argument("--header", action="append", default=default([]), metavar="'NAME: VALUE'",
                       help="HTTP header for an auth proxy in front of the webserver; repeatable")
    group.add_argument("--json", action="store_true", default=default(False),
                       help="print JSON for machines instead of tables")


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be 0 or more seconds")
    return value


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="dagctl", description="Reviewed plans of dbt and SQLMesh projects in Dagster, from the "
        "command line. Exit codes: 0 ok, 1 plan failed/rejected, 2 usage or config error, 3 refused by "
        "policy or state, 4 server unreachable, 5 timed out.",
    )
    _add_connection_options(parser, top_level=True)
    groups = parser.add_subparsers(dest="group", required=True, metavar="{plans,config}")
    plans = groups.add_parser("plans", help="list, show, create, review, wait for and read plans")
    commands = plans.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config = groups.add_parser("config", help="check a deployment config before deploying it")
    config_commands = config.add_subparsers(dest="command", required=True, metavar="COMMAND")
    check = config_commands.add_parser(
        "check", help="Validate a deployment config (dagctl.yaml) offline: exit 0 if valid, 2 with the file "
        "and field if not. An invalid config stops the code location, so check before deploying.",
        description="Validate a deployment config offline, without Dagster or a webserver.")
    check.add_argument("file", metavar="FILE")
    check.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        _add_connection_options(sub, top_level=False)
        return sub

    listing = command("list", "List plans, newest first.")
    listing.add_argument("--project", help="only plans of this project")
    listing.add_argument("--env", help="only plans for this environment")
    listing.add_argument("--status", choices=[status.value for status in PlanStatus],
                         help="only plans with this status")
    listing.add_argument("--limit", type=_positive_int, default=20,
                         help="at most this many plans, newest first (default 20)")
    listing.add_argument("--since", type=_since, metavar="WHEN",
                         help="only plans created at or after WHEN: an ISO date or time (UTC unless it "
                         "names a zone), e.g. 2026-11-30 or 2026-11-30T14:00")

    show = command("show", "Show a plan: change set, scope, approvals present and missing, history.")
    show.add_argument("plan_id", metavar="ID")

    create = command("create", "Explain a new plan of a project for an environment.")
    create.add_argument("project", metavar="PROJECT")
    create.add_argument("--env", required=True, help="environment, e.g. prod")
    create.add_argument("--commit", default="", help="commit or branch to plan (default: the branch head)")
    create.add_argument("--as", dest="actor", default="", metavar="ACTOR",
                        help="who asks for the plan (its author; cannot approve it)")
    create.add_argument("--no-wait", action="store_true",
                        help="return once the run is launched, without waiting for the plan to be recorded")
    create.add_argument("--timeout", type=_positive_seconds, default=DEFAULT_RUN_TIMEOUT, metavar="SECONDS",
                        help=f"how long to wait for the plan to be recorded (default {DEFAULT_RUN_TIMEOUT:.0f})")

    for decision, help_text in (
        (Decision.APPROVE, "Approve a pending plan."),
        (Decision.REJECT, "Reject a plan that has not started."),
        (Decision.CANCEL, "Cancel a pending, approved or failed plan."),
        (Decision.RETRY, "Retry a failed plan (at most 3 times, without new approvals)."),
    ):
        sub = command(decision.value, help_text + " Waits for the decision to be recorded.")
        sub.add_argument("plan_id", metavar="ID")
        sub.add_argument("--as", dest="actor", required=True, metavar="ACTOR", help="your name")
        sub.add_argument("--comment", default="", help="why (shown in the plan's history)")
        if decision in (Decision.APPROVE, Decision.RETRY):
            sub.add_argument("--key", default=None, metavar="PATH",
                             help="sign the decision with this OpenSSH key (ssh-keygen -Y sign -n dagctl); "
                                  "required where the environment has verify_approvals")
        sub.add_argument("--decision-id", default=None, metavar="ID",
                         help="id of this decision (default: random); a decision with an id already "
                              "recorded is not recorded again, so a script can safely run it twice")
        sub.add_argument("--timeout", type=_positive_seconds, default=DEFAULT_RUN_TIMEOUT, metavar="SECONDS",
                         help=f"how long to wait for the review run (default {DEFAULT_RUN_TIMEOUT:.0f})")
        if decision in (Decision.APPROVE, Decision.RETRY):
            sub.add_argument("--wait", action="store_true",
                             help="then wait like `plans wait` until the plan is completed (exit 0), failed, "
                                  "rejected or cancelled (exit 1)")
            sub.add_argument("--wait-timeout", type=_positive_seconds, default=DEFAULT_WAIT_TIMEOUT,
                             metavar="SECONDS", help=f"with --wait: exit 5 after this long (default "
                             f"{DEFAULT_WAIT_TIMEOUT:.0f}; 0 waits forever)")
        sub.set_defaults(decision=decision)

    wait = command("wait", "Wait until a plan is completed (exit 0), failed, rejected or cancelled (exit 1).")
    wait.add_argument("plan_id", metavar="ID")
    wait.add_argument("--timeout", type=_positive_seconds, default=DEFAULT_WAIT_TIMEOUT, metavar="SECONDS",
                      help=f"give up after this long with exit code 5 (default {DEFAULT_WAIT_TIMEOUT:.0f}; "
                           "0 waits forever)")
    wait.add_argument("--interval", type=_positive_seconds, default=2.0, metavar="SECONDS",
                      help="seconds between two polls (default 2)")

    logs = command("logs", "Print the run logs of a plan's runs (explain, build, execute).")
    logs.add_argument("plan_id", metavar="ID")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing until the plan is completed, failed, rejected or cancelled "
                           "(where `plans wait` stops) and its runs have finished")
    return parser


def build_client(args: argparse.Namespace) -> DagctlClient:
    """The GraphQL client of the command line's connection options (`DagctlRequestError` for a bad URL)."""
    url = args.url or os.environ.get(URL_ENV) or DEFAULT_URL
    headers = dict(parse_header(text) for text in args.header)
    interval = getattr(args, "interval", None)
    return DagctlClient(url, headers=headers, **({"poll_interval": interval} if interval else {}))


# --- Output ------------------------------------------------------------------------------------------


def format_table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _shorten(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def format_plan_table(plans: Sequence[PlanView]) -> str:
    rows = [("PLAN", "STATUS", "TARGET", "VERSION", "AUTHOR", "CREATED (UTC)", "REASON")]
    for plan in plans:
        spec = plan.state.spec
        version = f"{spec.version_old or '-'} -> {spec.version_new}" if spec.version_new else "-"
        rows.append((plan.plan_id, plan.status.value, spec.target_commit[:12], version, spec.author,
                     f"{spec.created_at:%Y-%m-%d %H:%M}", _shorten(plan.state.reason)))
    return format_table(rows)


def format_plan(plan: PlanView, runs: Sequence[RunInfo]) -> str:
    """`plans show`: the server's summary (it knows the policy), then the full history and the runs."""
    state = plan.state
    if plan.summary.strip():
        lines = [plan.summary.strip(), ""]
        expired = plan.list_expired_approvals()
        if expired:  # the summary was rendered before these expired: re-checked now
            lines += [f"Re-checked now: {actor}'s approval expired at {at:%Y-%m-%d %H:%M} UTC and no longer "
                      "counts" for actor, at in expired] + [""]
    else:  # recorded by a version that wrote no summary: what the client can tell from the events
        lines = [render_plan_summary(state), "", "Approvals recorded:"]
        lines += [f"  {a.actor} at {a.at:%Y-%m-%d %H:%M:%S} UTC, "
                  f"{'signed' if a.signature else 'not signed (self-asserted)'}" for a in state.approvals]
        lines += ["  none"] if not state.approvals else []
        lines.append("")
    history = [("AT (UTC)", "ACTOR", "WHAT", "REASON")]
    history += [(f"{entry.at:%Y-%m-%d %H:%M:%S}", entry.actor, entry.what, _shorten(entry.reason, 80))
                for entry in state.history]
    lines += ["History:", format_table(history)]
    if runs:
        table = [("RUN", "JOB", "STATUS", "CREATED (UTC)")]
        table += [(run.run_id, run.job_name, run.status, f"{run.created_at:%Y-%m-%d %H:%M:%S}") for run in runs]
        lines += ["", "Runs:", format_table(table)]
    return "\n".join(lines)


def describe_status(plan: PlanView) -> str:
    """`jaffle-prod-3f2a9c1d: pending (awaiting approval: 2 more approval(s) from alice, bob)`."""
    reason = f" ({plan.state.reason})" if plan.state.reason else ""
    return f"{plan.plan_id}: {plan.status.value}{reason}"


def format_log_line(line: LogLine) -> str:
    where = f" {line.step}" if line.step else ""
    return f"{line.at:%H:%M:%S} {line.level:<7} [{line.run_id[:8]}{where}] {line.message}"


# --- Commands ----------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a positive whole number, e.g. --limit 50")
    return int(text)


def _since(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"'{text}' is not an ISO date or time, e.g. --since 2026-11-30 or --since 2026-11-30T14:00") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


class Command:
    """One invocation: the parsed arguments, the client and where output goes."""

    def __init__(self, args: argparse.Namespace, client: DagctlClient, out: TextIO, err: TextIO):
        self.args, self.client, self.out, self.err = args, client, out, err

    def emit(self, data: object, text: str) -> None:
        print(json.dumps(data, indent=2) if self.args.json else text, file=self.out)

    def list_plans(self) -> int:
        plans = self.client.list_plans(project=self.args.project, environment=self.args.env,
                                       status=self.args.status, since=self.args.since, limit=self.args.limit)
        self.emit([plan.to_json() for plan in plans],
                  format_plan_table(plans) if plans else "no plans match")
        return EXIT_OK

    def show_plan(self) -> int:
        plan = self.client.get_plan(self.args.plan_id)
        runs = self.client.list_plan_runs(plan)
        self.emit({**plan.to_json(), "runs": [run.to_json() for run in runs]}, format_plan(plan, runs))
        return EXIT_OK

    def create_plan(self) -> int:
        created = self.client.create_plan(
            self.args.project, self.args.env, commit=self.args.commit, requested_by=self.args.actor,
            wait=not self.args.no_wait, timeout=self.args.timeout,
        )
        status = describe_status(created.plan) if created.plan else f"{created.plan_id}: launched"
        self.emit(created.to_json(),
                  f"plan {status}\nrun {created.run_id}: {self.client.url}/runs/{created.run_id}")
        return EXIT_OK

    def decide(self) -> int:
        decision: Decision = self.args.decision
        key = getattr(self.args, "key", None)

        def report_retry(message: str) -> None:
            print(f"dagctl: {' '.join(message.split())}", file=self.err, flush=True)

        result = self.client.decide(
            self.args.plan_id, decision, actor=self.args.actor, comment=self.args.comment,
            signer=build_ssh_signer(key) if key else None, decision_id=self.args.decision_id,
            timeout=self.args.timeout, on_retry=report_retry,
        )
        signed = ""
        if decision in (Decision.APPROVE, Decision.RETRY):
            signed = ", signed" if result.signed else " (not signed: self-asserted)"
        text = [f"{result.actor}: {decision.value} recorded on plan {result.plan_id}{signed}",
                f"plan {describe_status(result.plan)}"]
        next_step = result.plan.describe_next()
        if next_step:
            text.append(next_step)
        elif decision is Decision.RETRY and result.plan.status is PlanStatus.FAILED:
            text.append("the approval sensor will launch the retry; gate checks it like any execution")
        self.emit(result.to_json(), "\n".join(text))
        if not getattr(self.args, "wait", False):
            return EXIT_OK
        return self._wait(self.args.plan_id, self.args.wait_timeout)

    def _wait(self, plan_id: str, timeout: float) -> int:
        def report(plan: PlanView) -> None:
            print(f"plan {describe_status(plan)}", file=self.err, flush=True)

        plan = self.client.wait_for_plan(plan_id, timeout=timeout or None, on_change=report)
        self.emit(plan.to_json(), f"plan {describe_status(plan)}")
        return EXIT_OK if plan.status is PlanStatus.COMPLETED else EXIT_PLAN_FAILED

    def check_config(self) -> int:
        config = load_deployment_config(self.args.file)
        environments = sum(len(project.environments) for project in config.projects)
        self.emit({"file": self.args.file, "valid": True, "projects": [p.name for p in config.projects],
                   "people": [person.name for person in config.people]},
                  f"{self.args.file}: valid ({len(config.projects)} project(s), {environments} environment(s), "
                  f"{len(config.people)} people)")
        return EXIT_OK

    def wait_for_plan(self) -> int:
        return self._wait(self.args.plan_id, self.args.timeout)

    def print_logs(self) -> int:
        for line in self.client.iter_plan_logs(self.args.plan_id, follow=self.args.follow):
            print(json.dumps(line.to_json()) if self.args.json else format_log_line(line), file=self.out,
                  flush=True)
        return EXIT_OK


def exit_code_of(error: DagctlError) -> int:
    """The exit code of an error (see the module docstring)."""
    table: list[tuple[type[DagctlError], int]] = [
        (DagctlUnreachableError, EXIT_UNREACHABLE),
        (DagctlRefusedError, EXIT_REFUSED),
        (DagctlTimeoutError, EXIT_TIMEOUT),
        (DagctlRunFailedError, EXIT_PLAN_FAILED),
        (DagctlPlanNotFoundError, EXIT_USAGE),
        (DagctlRequestError, EXIT_USAGE),
    ]
    for error_type, code in table:
        if isinstance(error, error_type):
            return code
    return EXIT_USAGE if not isinstance(error, DagctlClientError) else EXIT_PLAN_FAILED


def run(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None,
        client_factory: Callable[[argparse.Namespace], DagctlClient] = build_client) -> int:
    """Runs `dagctl` with `argv` and returns its exit code (what `main` exits with)."""
    out, err = out or sys.stdout, err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.group == "config":  # offline: no webserver, no client
            return Command(args, None, out, err).check_config()  # type: ignore[arg-type]
        client = client_factory(args)
        command = Command(args, client, out, err)
        handler = {"list": command.list_plans, "show": command.show_plan, "create": command.create_plan,
                   "wait": command.wait_for_plan, "logs": command.print_logs}.get(args.command, command.decide)
        return handler()
    except DagctlError as exc:
        print(f"dagctl: error: {' '.join(str(exc).split())}", file=err)
        return exit_code_of(exc)
    except KeyboardInterrupt:
        print("dagctl: interrupted", file=err)
        return 130
    except BrokenPipeError:
        # `dagctl plans logs ID | head`: the reader left; nothing more to say.
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter quiet at exit
        return EXIT_OK
    except Exception as exc:  # the promise is one line, never a traceback
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc(file=err)
        reason = " ".join(str(exc).split())
        print(f"dagctl: internal error: {type(exc).__name__}: {reason} (set {DEBUG_ENV}=1 for details)",
              file=err)
        return EXIT_PLAN_FAILED


def main() -> NoReturn:
    sys.exit(run())


if __name__ == "__main__":
    main()
