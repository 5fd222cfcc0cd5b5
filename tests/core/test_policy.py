"""Approval policy: who must approve a plan, which approvals count, signed approvals, identities, retries."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from dagctl_dagster.core.config import EnvironmentConfig, PathRule
from dagctl_dagster.core.errors import DagctlPolicyError
from dagctl_dagster.core.lifecycle import Approval
from dagctl_dagster.core.plan import PlanSpec
from dagctl_dagster.core.config import PersonConfig
from dagctl_dagster.core.plan import CommitIdentity
from dagctl_dagster.core.policy import PolicyResult, check_approval, check_retry, evaluate_policy
from dagctl_dagster.core.signatures import build_decision_message
from fixtures.ssh_keys import SshKey, make_key

EnvFactory = Callable[..., EnvironmentConfig]
SpecFactory = Callable[..., PlanSpec]
ApprovalFactory = Callable[..., Approval]
Clock = Callable[[float], datetime]

FINANCE_RULE = PathRule(paths=("models/finance/**",), approvers=("carol",))
NOBODY: tuple[PersonConfig, ...] = ()


def test_unprotected_environment_is_satisfied_without_approvals(
    make_env: EnvFactory, make_spec: SpecFactory, at: Clock
) -> None:
    result = evaluate_policy(make_env(protected=False, required_approvals=2), make_spec(), [], at(60), people=NOBODY)

    assert result == PolicyResult(is_satisfied=True, is_required=False)


def test_protected_environment_without_approvals_names_what_is_missing(
    make_env: EnvFactory, make_spec: SpecFactory, at: Clock
) -> None:
    result = evaluate_policy(make_env(), make_spec(), [], at(60), people=NOBODY)

    assert result == PolicyResult(required=1, is_satisfied=False, missing=("1 more approval(s) from alice, bob",))


def test_one_listed_approver_satisfies_the_default_policy(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    approval = make_approval(actor="bob")

    result = evaluate_policy(make_env(), make_spec(), [approval], at(60), people=NOBODY)

    assert result == PolicyResult(required=1, is_satisfied=True, counted=(approval,))


def test_n_of_m_counts_the_same_approver_only_once(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(approvers=("alice", "bob", "carol"), required_approvals=2)
    first, again = make_approval(at=at(10)), make_approval(at=at(12), comment="really")

    result = evaluate_policy(env, make_spec(), [first, again], at(60), people=NOBODY)

    assert result == PolicyResult(
        required=2,
        is_satisfied=False, counted=(again,), missing=("1 more approval(s) from bob, carol",)
    )


def test_n_of_m_is_satisfied_by_distinct_approvers(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(approvers=("alice", "bob", "carol"), required_approvals=2)
    alice, carol = make_approval(actor="alice"), make_approval(actor="carol")

    result = evaluate_policy(env, make_spec(), [alice, carol], at(60), people=NOBODY)

    assert result == PolicyResult(required=2, is_satisfied=True, counted=(alice, carol))


def test_self_approval_is_refused_naming_the_rule(
    make_env: EnvFactory, make_spec: SpecFactory
) -> None:
    env = make_env(approvers=("alice", "dave"))

    with pytest.raises(DagctlPolicyError) as raised:
        check_approval(env, make_spec(author="dave"), [], actor="dave", signature="", people=NOBODY)

    assert str(raised.value) == (
        "dave cannot approve plan jaffle-prod-3f2a9c1d: they are one of its authors and environment 'prod' "
        "does not allow self-approval; ask another approver"
    )


def test_self_approval_does_not_count(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(approvers=("alice", "dave"))
    own = make_approval(actor="dave")

    result = evaluate_policy(env, make_spec(author="dave"), [own], at(60), people=NOBODY)

    assert result == PolicyResult(
        required=1,
        is_satisfied=False,
        ignored=((own, "an author of the plan cannot approve it"),),
        # dave is not named: his approval would not count.
        missing=("1 more approval(s) from alice",),
    )


def test_self_approval_counts_when_the_environment_allows_it(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(approvers=("alice", "dave"), allow_self_approval=True)
    spec = make_spec(author="dave")
    own = make_approval(actor="dave")

    verified = check_approval(env, spec, [], actor="dave", signature="", people=NOBODY)
    result = evaluate_policy(env, spec, [own], at(60), people=NOBODY)

    assert verified is False
    assert result == PolicyResult(required=1, is_satisfied=True, counted=(own,))


def test_approver_who_is_not_listed_is_refused(make_env: EnvFactory, make_spec: SpecFactory) -> None:
    with pytest.raises(DagctlPolicyError) as raised:
        check_approval(make_env(), make_spec(), [], actor="mallory", signature="", people=NOBODY)

    assert str(raised.value) == "mallory is not an approver of environment 'prod' (approvers: alice, bob)"


def test_approval_by_someone_not_listed_does_not_count(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    mallory = make_approval(actor="mallory")

    result = evaluate_policy(make_env(), make_spec(), [mallory], at(60), people=NOBODY)

    assert result == PolicyResult(
        required=1,
        is_satisfied=False,
        ignored=((mallory, "not an approver of this environment"),),
        missing=("1 more approval(s) from alice, bob",),
    )


def test_empty_approvers_list_lets_anyone_but_the_author_approve(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(approvers=(), required_approvals=2)
    mallory, eve = make_approval(actor="mallory"), make_approval(actor="eve")

    verified = check_approval(env, make_spec(), [], actor="mallory", signature="", people=NOBODY)
    one = evaluate_policy(env, make_spec(), [mallory], at(60), people=NOBODY)
    two = evaluate_policy(env, make_spec(), [mallory, eve], at(60), people=NOBODY)

    assert verified is False
    assert one == PolicyResult(required=2, is_satisfied=False, counted=(mallory,), missing=("1 more approval(s)",))
    assert two == PolicyResult(required=2, is_satisfied=True, counted=(mallory, eve))


def test_empty_actor_is_refused(make_env: EnvFactory, make_spec: SpecFactory) -> None:
    with pytest.raises(DagctlPolicyError) as raised:
        check_approval(make_env(approvers=()), make_spec(), [], actor="  ", signature="", people=NOBODY)

    assert str(raised.value) == "plan jaffle-prod-3f2a9c1d: an approval needs an actor name"


def test_approving_twice_as_the_same_person_is_refused(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory
) -> None:
    with pytest.raises(DagctlPolicyError) as raised:
        check_approval(
            make_env(), make_spec(), [make_approval()], actor="alice", signature="", people=NOBODY
        )

    assert str(raised.value) == "alice has already approved plan jaffle-prod-3f2a9c1d"


FINANCE_FILES = (("models/finance/revenue.sql", "modified"), ("models/staging/stg_orders.sql", "modified"))


def test_path_rule_requires_an_extra_approver_and_names_them(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(path_rules=(FINANCE_RULE,))
    spec = make_spec(files=FINANCE_FILES)
    alice = make_approval(actor="alice", fingerprint=spec.fingerprint)

    result = evaluate_policy(env, spec, [alice], at(60), people=NOBODY)

    assert result == PolicyResult(
        required=1,
        is_satisfied=False,
        counted=(alice,),
        missing=("an approval from one of carol (changes touch models/finance/**)",),
    )


def test_path_rule_is_satisfied_by_its_approver_on_top_of_the_usual_approval(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(path_rules=(FINANCE_RULE,))
    spec = make_spec(files=FINANCE_FILES)
    carol_approves = check_approval(env, spec, [], actor="carol", signature="", people=NOBODY)
    alice = make_approval(actor="alice", fingerprint=spec.fingerprint)
    carol = make_approval(actor="carol", fingerprint=spec.fingerprint)

    carol_alone = evaluate_policy(env, spec, [carol], at(60), people=NOBODY)
    both = evaluate_policy(env, spec, [alice, carol], at(60), people=NOBODY)

    assert carol_approves is False
    assert carol_alone == PolicyResult(
        required=1,
        is_satisfied=False, counted=(carol,), missing=("1 more approval(s) from alice, bob",)
    )
    assert both == PolicyResult(required=1, is_satisfied=True, counted=(alice, carol))


def test_path_rule_applies_to_the_old_path_of_a_rename(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(path_rules=(FINANCE_RULE,))
    spec = make_spec(files=(("models/marts/revenue.sql", "renamed", "models/finance/revenue.sql"),))
    alice = make_approval(actor="alice", fingerprint=spec.fingerprint)

    result = evaluate_policy(env, spec, [alice], at(60), people=NOBODY)

    assert result.missing == ("an approval from one of carol (changes touch models/finance/**)",)


def test_path_rule_approver_is_not_an_approver_of_plans_outside_its_paths(
    make_env: EnvFactory, make_spec: SpecFactory
) -> None:
    env = make_env(path_rules=(FINANCE_RULE,))

    with pytest.raises(DagctlPolicyError) as raised:
        check_approval(env, make_spec(), [], actor="carol", signature="", people=NOBODY)

    assert str(raised.value) == "carol is not an approver of environment 'prod' (approvers: alice, bob)"


def test_approval_older_than_the_ttl_no_longer_counts(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(approval_ttl="24h")
    approval = make_approval(at=at(10))

    fresh = evaluate_policy(env, make_spec(), [approval], at(10) + timedelta(hours=24), people=NOBODY)
    expired = evaluate_policy(env, make_spec(), [approval], at(10) + timedelta(hours=24, seconds=1), people=NOBODY)

    assert fresh == PolicyResult(required=1, is_satisfied=True, counted=(approval,))
    assert expired == PolicyResult(
        required=1,
        is_satisfied=False,
        ignored=((approval, "expired (approvals count for 1 day, 0:00:00)"),),
        missing=("1 more approval(s) from alice, bob",),
    )


def test_approver_whose_approval_expired_may_approve_again(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(approval_ttl="1h")
    spec = make_spec()
    expired, renewed = make_approval(at=at(10)), make_approval(at=at(200))

    verified = check_approval(
        env, spec, [expired], actor="alice", signature="", people=NOBODY, now=at(200)
    )
    result = evaluate_policy(env, spec, [expired, renewed], at(210), people=NOBODY)

    assert verified is False
    assert result == PolicyResult(required=1, is_satisfied=True, counted=(renewed,))


def test_approval_of_a_different_change_set_does_not_count(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    approved_spec = make_spec()
    changed_spec = make_spec(target_commit="c" * 40)
    approval = make_approval(fingerprint=approved_spec.fingerprint)

    result = evaluate_policy(make_env(), changed_spec, [approval], at(60), people=NOBODY)

    assert changed_spec.fingerprint != approved_spec.fingerprint
    assert result == PolicyResult(
        required=1,
        is_satisfied=False,
        ignored=((approval, "approved a different change set (fingerprint mismatch)"),),
        missing=("1 more approval(s) from alice, bob",),
    )


def test_approver_of_a_different_change_set_may_approve_the_new_one(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory
) -> None:
    old = make_approval(fingerprint=make_spec().fingerprint)
    changed_spec = make_spec(target_commit="c" * 40)

    verified = check_approval(
        make_env(), changed_spec, [old], actor="alice", signature="", people=NOBODY
    )

    assert verified is False




# --- Signed approvals (verify_approvals) and identities ------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, SshKey]:
    """Real OpenSSH keys: alice's, bob's, and a second key of alice's that the config does not list."""
    folder = tmp_path_factory.mktemp("keys")
    return {name: make_key(folder, name) for name in ("alice", "bob", "alice_other")}


@pytest.fixture
def people(keys: dict[str, SshKey]) -> tuple[PersonConfig, ...]:
    return (
        PersonConfig(name="alice", emails=("alice@acme.io",), keys=(keys["alice"].public,)),
        PersonConfig(name="bob", emails=("bob@acme.io",), keys=(keys["bob"].public,)),
        PersonConfig(name="dave", emails=("dave@acme.io", "dave@home.example"), keys=()),
    )


def test_verifiable_mode_counts_an_approval_signed_by_the_approvers_key(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock, keys, people
) -> None:
    spec = make_spec()
    signature = keys["alice"].sign(f"{spec.plan_id}:{spec.fingerprint}")
    env = make_env(verify_approvals=True)

    verified = check_approval(env, spec, [], actor="alice", signature=signature, people=people)
    result = evaluate_policy(env, spec, [make_approval(signature=signature)], at(60), people=people)

    assert verified is True
    assert result == PolicyResult(required=1, is_satisfied=True,
                                  counted=(make_approval(signature=signature, verified=True),))


@pytest.mark.parametrize(
    ("signer", "message", "namespace", "why"),
    [
        ("alice_other", "{plan}:{fp}", "dagctl", "the signature is not by one of alice's keys for this message"),
        ("bob", "{plan}:{fp}", "dagctl", "the signature is not by one of alice's keys for this message"),
        ("alice", "jaffle-prod-00000000:{fp}", "dagctl", "the signature is not by one of alice's keys for this message"),
        ("alice", "{plan}:{old}", "dagctl", "the signature is not by one of alice's keys for this message"),
        ("alice", "{plan}:{fp}", "git", "the signature is not by one of alice's keys for this message"),
        (None, "", "", "no signature was given"),
    ],
    ids=["another-key", "another-persons-key", "another-plan", "older-fingerprint", "other-namespace", "unsigned"],
)
def test_verifiable_mode_refuses_a_signature_that_is_not_the_approvers_of_this_plan_and_fingerprint(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock, keys, people,
    signer, message, namespace, why,
) -> None:
    spec = make_spec()
    old = make_spec(target_commit="c" * 40).fingerprint
    text = message.format(plan=spec.plan_id, fp=spec.fingerprint, old=old)
    signature = keys[signer].sign(text, namespace) if signer else ""
    env = make_env(verify_approvals=True)

    with pytest.raises(DagctlPolicyError) as raised:
        check_approval(env, spec, [], actor="alice", signature=signature, people=people)
    # The same signature recorded by other means (a forged event) does not count either.
    result = evaluate_policy(env, spec, [make_approval(signature=signature, verified=True)], at(60), people=people)

    assert str(raised.value) == (
        f"approve of plan {spec.plan_id} by alice is not verified: environment 'prod' requires a signature of "
        f"'{spec.plan_id}:{spec.fingerprint}' by one of alice's keys ({why}); sign with "
        f"`dagctl plans approve {spec.plan_id} --as alice --key ~/.ssh/id_ed25519`")
    assert (result.is_satisfied, result.counted, [reason for _, reason in result.ignored]) == (
        False, (), ["not verified (verifiable mode needs the approver's signature)"])


def test_signed_approval_is_reported_verified_where_signatures_are_optional(
    make_env: EnvFactory, make_spec: SpecFactory, keys, people
) -> None:
    spec = make_spec()
    signature = keys["alice"].sign(build_decision_message(spec.plan_id, spec.fingerprint))

    assert check_approval(make_env(), spec, [], actor="alice", signature=signature, people=people) is True
    assert check_approval(make_env(), spec, [], actor="alice", signature="", people=people) is False


def test_any_commit_author_or_committer_is_an_author_whatever_name_they_approve_with(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock, people
) -> None:
    # dave committed as "Dave D." from his home address; bob committed a fix on top.
    spec = make_spec(author="Dave D.", authors=(CommitIdentity(name="Dave D.", email="DAVE@home.example"),
                                                CommitIdentity(name="Bob", email="bob@acme.io")))
    env = make_env(approvers=("alice", "bob", "dave"), required_approvals=1)

    refusals = []
    for actor in ("dave", "bob"):
        with pytest.raises(DagctlPolicyError) as raised:
            check_approval(env, spec, [], actor=actor, signature="", people=people)
        refusals.append(str(raised.value))
    result = evaluate_policy(env, spec, [], at(60), people=people)

    assert refusals == [
        f"{actor} cannot approve plan {spec.plan_id}: they are one of its authors and environment 'prod' does "
        "not allow self-approval; ask another approver" for actor in ("dave", "bob")]
    assert result.missing == ("1 more approval(s) from alice",)


def test_unknown_commit_identity_is_matched_by_its_git_name_or_email_in_unverified_mode(
    make_env: EnvFactory, make_spec: SpecFactory
) -> None:
    spec = make_spec(author="erin", authors=(CommitIdentity(name="erin", email="erin@contractor.io"),))
    env = make_env(approvers=(), required_approvals=1)

    for actor in ("erin", "erin@contractor.io"):
        with pytest.raises(DagctlPolicyError, match="they are one of its authors"):
            check_approval(env, spec, [], actor=actor, signature="", people=NOBODY)
    assert check_approval(env, spec, [], actor="alice", signature="", people=NOBODY) is False


def test_still_needed_says_so_when_only_authors_are_left_to_approve(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock, people
) -> None:
    spec = make_spec(authors=(CommitIdentity(name="bob", email="bob@acme.io"),))
    env = make_env(approvers=("alice", "bob"), required_approvals=2)

    result = evaluate_policy(env, spec, [make_approval(actor="alice")], at(60), people=people)

    assert result.missing == ("1 more approval(s), but only 0 approver(s) can still give one (the plan's "
                              "authors cannot): add approvers to environment 'prod'",)


def test_retry_is_refused_to_someone_who_is_not_an_approver(make_env: EnvFactory, make_spec: SpecFactory) -> None:
    with pytest.raises(DagctlPolicyError) as raised:
        check_retry(make_env(), make_spec(), actor="mallory", signature="", attempt=1, people=NOBODY)

    assert str(raised.value) == (
        "mallory cannot retry plan jaffle-prod-3f2a9c1d: only approvers of environment 'prod' may (alice, bob)")


def test_author_may_retry_their_own_plan(make_env: EnvFactory, make_spec: SpecFactory) -> None:
    spec = make_spec(author="alice")

    assert check_retry(make_env(), spec, actor="alice", signature="", attempt=1, people=NOBODY) is False


def test_signed_retry_is_bound_to_its_attempt(
    make_env: EnvFactory, make_spec: SpecFactory, keys, people
) -> None:
    spec = make_spec()
    env = make_env(verify_approvals=True)
    first = keys["bob"].sign(build_decision_message(spec.plan_id, spec.fingerprint, "retry", 1))
    approval = keys["bob"].sign(build_decision_message(spec.plan_id, spec.fingerprint))

    assert check_retry(env, spec, actor="bob", signature=first, attempt=1, people=people) is True
    for replayed, attempt in ((first, 2), (approval, 1)):
        with pytest.raises(DagctlPolicyError, match="retry of plan .* by bob is not verified"):
            check_retry(env, spec, actor="bob", signature=replayed, attempt=attempt, people=people)
