"""`people:` in the deployment config, and who a plan's authors are."""

from __future__ import annotations

import pytest
import yaml

from dagctl_dagster.core.config import PersonConfig, parse_deployment_config
from dagctl_dagster.core.errors import DagctlConfigError
from dagctl_dagster.core.people import get_plan_authors
from dagctl_dagster.core.plan import CommitIdentity

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFMJiXySHbuxX1wpRaFtgIKOn4D4XfG3K4tmVdjGtDKh alice@laptop"


def config_text(people: list | None, **prod: object) -> str:
    data: dict = {"projects": [{"name": "jaffle", "framework": "dbt", "repository": "/srv/jaffle.git",
                                "environments": [{"name": "dev"}, {"name": "prod", "protected": True, **prod}]}]}
    if people is not None:
        data = {"people": people, **data}
    return yaml.safe_dump(data, sort_keys=False)


ALICE = {"name": "alice", "emails": ["alice@acme.io"], "keys": [KEY]}
BOB = {"name": "bob", "emails": ["bob@acme.io"]}


def test_people_with_emails_and_keys_load_and_approvers_name_them() -> None:
    config = parse_deployment_config(
        config_text([ALICE, BOB], approvers=["alice", "bob"], verify_approvals=False), source="dagctl.yaml")

    assert config.people == (PersonConfig(name="alice", emails=("alice@acme.io",), keys=(KEY,)),
                             PersonConfig(name="bob", emails=("bob@acme.io",)))
    assert config.get_person("bob") == config.people[1]


@pytest.mark.parametrize(
    ("people", "prod", "message"),
    [
        ([ALICE, BOB], {"approvers": ["alice", "carol"]},
         "projects.0.environments.1.approvers: carol not listed under `people:` (people: alice, bob)"),
        ([ALICE, BOB], {"approvers": ["alice"], "path_rules": [{"paths": ["models/**"], "approvers": ["priya"]}]},
         "projects.0.environments.1.path_rules.0.approvers: priya not listed under `people:` (people: alice, bob)"),
        (None, {"approvers": ["alice"], "verify_approvals": True},
         "projects.0.environments.1.verify_approvals: no person has `keys`, so no approval could ever be "
         "verified: list the approvers under `people:` with their OpenSSH public keys"),
        ([ALICE, BOB], {"approvers": ["alice", "bob"], "verify_approvals": True},
         "projects.0.environments.1.approvers: bob listed under `people:` without `keys`, so their approvals "
         "could never be verified (verify_approvals): add their OpenSSH public keys"),
        ([ALICE, {**BOB, "keys": ["ssh-ed25519"]}], {},
         "people.1.keys: Value error, 'ssh-ed25519' is not an OpenSSH public key: use one line of a .pub file"),
        ([ALICE, {**BOB, "emails": ["bob"]}], {}, "people.1.emails: Value error, 'bob' is not an email address"),
        ([ALICE, {"name": "alice"}], {}, "people: Value error, people's names must be unique, repeated: ['alice']"),
        ([ALICE, {**BOB, "emails": ["ALICE@acme.io"]}], {},
         "people: Value error, an email belongs to one person only, listed more than once: ['alice@acme.io']"),
    ],
    ids=["unknown-approver", "unknown-path-rule-approver", "verify-without-people", "verify-keyless-approver",
         "bad-key", "bad-email", "duplicate-name", "shared-email"],
)
def test_bad_people_config_names_the_file_and_the_field(people, prod, message) -> None:
    with pytest.raises(DagctlConfigError) as raised:
        parse_deployment_config(config_text(people, **prod), source="dagctl.yaml")

    assert str(raised.value).startswith(f"dagctl.yaml: {message}")


def test_approvers_stay_free_names_without_a_people_section() -> None:
    config = parse_deployment_config(config_text(None, approvers=["alice", "bob"]), source="dagctl.yaml")

    assert config.projects[0].get_environment("prod").approvers == ("alice", "bob")


def test_plan_authors_are_resolved_to_people_by_email_and_unknown_emails_are_listed(make_spec) -> None:
    people = (PersonConfig(name="alice", emails=("alice@acme.io",)), PersonConfig(name="bob", emails=("bob@acme.io",)))
    spec = make_spec(authors=(CommitIdentity(name="Alice A.", email="Alice@acme.io"),
                              CommitIdentity(name="GitHub", email="noreply@github.com"),
                              CommitIdentity(name="bob", email="bob@acme.io")))

    authors = get_plan_authors(spec, people)

    assert (authors.people, authors.unknown) == (
        ("alice", "bob"), (CommitIdentity(name="GitHub", email="noreply@github.com"),))
    assert authors.render() == "alice, bob; unknown: GitHub <noreply@github.com>"


def test_manual_plan_counts_its_requester_among_its_authors(make_spec) -> None:
    spec = make_spec(author="erin", triggered_by="manual",
                     authors=(CommitIdentity(name="dave", email="dave@acme.io"),))

    assert get_plan_authors(spec, ()).render() == "erin; unknown: dave <dave@acme.io>"
