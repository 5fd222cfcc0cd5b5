"""Approval policy: who must approve a plan, which approvals count, and verifiable (HMAC) approvals."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from dagctl_dagster.core.config import EnvironmentConfig, PathRule
from dagctl_dagster.core.errors import DagctlPolicyError
from dagctl_dagster.core.lifecycle import Approval
from dagctl_dagster.core.plan import PlanSpec
from dagctl_dagster.core.policy import (
    PolicyResult,
    approver_secret_env,
    check_approval,
    compute_approval_code,
    evaluate_policy,
)

EnvFactory = Callable[..., EnvironmentConfig]
SpecFactory = Callable[..., PlanSpec]
ApprovalFactory = Callable[..., Approval]
Clock = Callable[[float], datetime]

FINANCE_RULE = PathRule(paths=("models/finance/**",), approvers=("carol",))
SECRETS = {"DAGCTL_APPROVER_SECRET_ALICE": "alice-s3cret"}


def no_secrets(name: str) -> str | None:
    return None


def test_unprotected_environment_is_satisfied_without_approvals(
    make_env: EnvFactory, make_spec: SpecFactory, at: Clock
) -> None:
    result = evaluate_policy(make_env(protected=False, required_approvals=2), make_spec(), [], at(60))

    assert result == PolicyResult(is_satisfied=True)


def test_protected_environment_without_approvals_names_what_is_missing(
    make_env: EnvFactory, make_spec: SpecFactory, at: Clock
) -> None:
    result = evaluate_policy(make_env(), make_spec(), [], at(60))

    assert result == PolicyResult(is_satisfied=False, missing=("1 more approval(s) from alice, bob",))


def test_one_listed_approver_satisfies_the_default_policy(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    approval = make_approval(actor="bob")

    result = evaluate_policy(make_env(), make_spec(), [approval], at(60))

    assert result == PolicyResult(is_satisfied=True, counted=(approval,))


def test_n_of_m_counts_the_same_approver_only_once(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(approvers=("alice", "bob", "carol"), required_approvals=2)
    first, again = make_approval(at=at(10)), make_approval(at=at(12), comment="really")

    result = evaluate_policy(env, make_spec(), [first, again], at(60))

    assert result == PolicyResult(
        is_satisfied=False, counted=(again,), missing=("1 more approval(s) from bob, carol",)
    )


def test_n_of_m_is_satisfied_by_distinct_approvers(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(approvers=("alice", "bob", "carol"), required_approvals=2)
    alice, carol = make_approval(actor="alice"), make_approval(actor="carol")

    result = evaluate_policy(env, make_spec(), [alice, carol], at(60))

    assert result == PolicyResult(is_satisfied=True, counted=(alice, carol))


def test_self_approval_is_refused_naming_the_rule(
    make_env: EnvFactory, make_spec: SpecFactory
) -> None:
    env = make_env(approvers=("alice", "dave"))

    with pytest.raises(DagctlPolicyError) as raised:
        check_approval(env, make_spec(author="dave"), [], actor="dave", code=None, get_secret=no_secrets)

    assert str(raised.value) == (
        "dave cannot approve plan jaffle-prod-3f2a9c1d: it is their own plan and environment 'prod' "
        "does not allow self-approval; ask another approver"
    )


def test_self_approval_does_not_count(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(approvers=("alice", "dave"))
    own = make_approval(actor="dave")

    result = evaluate_policy(env, make_spec(author="dave"), [own], at(60))

    assert result == PolicyResult(
        is_satisfied=False,
        ignored=((own, "the plan's author cannot approve it"),),
        missing=("1 more approval(s) from alice, dave",),
    )


def test_self_approval_counts_when_the_environment_allows_it(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(approvers=("alice", "dave"), allow_self_approval=True)
    spec = make_spec(author="dave")
    own = make_approval(actor="dave")

    verified = check_approval(env, spec, [], actor="dave", code=None, get_secret=no_secrets)
    result = evaluate_policy(env, spec, [own], at(60))

    assert verified is False
    assert result == PolicyResult(is_satisfied=True, counted=(own,))


def test_approver_who_is_not_listed_is_refused(make_env: EnvFactory, make_spec: SpecFactory) -> None:
    with pytest.raises(DagctlPolicyError) as raised:
        check_approval(make_env(), make_spec(), [], actor="mallory", code=None, get_secret=no_secrets)

    assert str(raised.value) == "mallory is not an approver of environment 'prod' (approvers: alice, bob)"


def test_approval_by_someone_not_listed_does_not_count(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    mallory = make_approval(actor="mallory")

    result = evaluate_policy(make_env(), make_spec(), [mallory], at(60))

    assert result == PolicyResult(
        is_satisfied=False,
        ignored=((mallory, "not an approver of this environment"),),
        missing=("1 more approval(s) from alice, bob",),
    )


def test_empty_approvers_list_lets_anyone_but_the_author_approve(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(approvers=(), required_approvals=2)
    mallory, eve = make_approval(actor="mallory"), make_approval(actor="eve")

    verified = check_approval(env, make_spec(), [], actor="mallory", code=None, get_secret=no_secrets)
    one = evaluate_policy(env, make_spec(), [mallory], at(60))
    two = evaluate_policy(env, make_spec(), [mallory, eve], at(60))

    assert verified is False
    assert one == PolicyResult(is_satisfied=False, counted=(mallory,), missing=("1 more approval(s)",))
    assert two == PolicyResult(is_satisfied=True, counted=(mallory, eve))


def test_empty_actor_is_refused(make_env: EnvFactory, make_spec: SpecFactory) -> None:
    with pytest.raises(DagctlPolicyError) as raised:
        check_approval(make_env(approvers=()), make_spec(), [], actor="  ", code=None, get_secret=no_secrets)

    assert str(raised.value) == "plan jaffle-prod-3f2a9c1d: an approval needs an actor name"


def test_approving_twice_as_the_same_person_is_refused(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory
) -> None:
    with pytest.raises(DagctlPolicyError) as raised:
        check_approval(
            make_env(), make_spec(), [make_approval()], actor="alice", code=None, get_secret=no_secrets
        )

    assert str(raised.value) == "alice has already approved plan jaffle-prod-3f2a9c1d"


FINANCE_FILES = (("models/finance/revenue.sql", "modified"), ("models/staging/stg_orders.sql", "modified"))


def test_path_rule_requires_an_extra_approver_and_names_them(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(path_rules=(FINANCE_RULE,))
    spec = make_spec(files=FINANCE_FILES)
    alice = make_approval(actor="alice", fingerprint=spec.fingerprint)

    result = evaluate_policy(env, spec, [alice], at(60))

    assert result == PolicyResult(
        is_satisfied=False,
        counted=(alice,),
        missing=("an approval from one of carol (changes touch models/finance/**)",),
    )


def test_path_rule_is_satisfied_by_its_approver_on_top_of_the_usual_approval(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(path_rules=(FINANCE_RULE,))
    spec = make_spec(files=FINANCE_FILES)
    carol_approves = check_approval(env, spec, [], actor="carol", code=None, get_secret=no_secrets)
    alice = make_approval(actor="alice", fingerprint=spec.fingerprint)
    carol = make_approval(actor="carol", fingerprint=spec.fingerprint)

    carol_alone = evaluate_policy(env, spec, [carol], at(60))
    both = evaluate_policy(env, spec, [alice, carol], at(60))

    assert carol_approves is False
    assert carol_alone == PolicyResult(
        is_satisfied=False, counted=(carol,), missing=("1 more approval(s) from alice, bob",)
    )
    assert both == PolicyResult(is_satisfied=True, counted=(alice, carol))


def test_path_rule_applies_to_the_old_path_of_a_rename(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(path_rules=(FINANCE_RULE,))
    spec = make_spec(files=(("models/marts/revenue.sql", "renamed", "models/finance/revenue.sql"),))
    alice = make_approval(actor="alice", fingerprint=spec.fingerprint)

    result = evaluate_policy(env, spec, [alice], at(60))

    assert result.missing == ("an approval from one of carol (changes touch models/finance/**)",)


def test_path_rule_approver_is_not_an_approver_of_plans_outside_its_paths(
    make_env: EnvFactory, make_spec: SpecFactory
) -> None:
    env = make_env(path_rules=(FINANCE_RULE,))

    with pytest.raises(DagctlPolicyError) as raised:
        check_approval(env, make_spec(), [], actor="carol", code=None, get_secret=no_secrets)

    assert str(raised.value) == "carol is not an approver of environment 'prod' (approvers: alice, bob)"


def test_approval_older_than_the_ttl_no_longer_counts(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    env = make_env(approval_ttl="24h")
    approval = make_approval(at=at(10))

    fresh = evaluate_policy(env, make_spec(), [approval], at(10) + timedelta(hours=24))
    expired = evaluate_policy(env, make_spec(), [approval], at(10) + timedelta(hours=24, seconds=1))

    assert fresh == PolicyResult(is_satisfied=True, counted=(approval,))
    assert expired == PolicyResult(
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
        env, spec, [expired], actor="alice", code=None, get_secret=no_secrets, now=at(200)
    )
    result = evaluate_policy(env, spec, [expired, renewed], at(210))

    assert verified is False
    assert result == PolicyResult(is_satisfied=True, counted=(renewed,))


def test_approval_of_a_different_change_set_does_not_count(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    approved_spec = make_spec()
    changed_spec = make_spec(target_commit="c" * 40)
    approval = make_approval(fingerprint=approved_spec.fingerprint)

    result = evaluate_policy(make_env(), changed_spec, [approval], at(60))

    assert changed_spec.fingerprint != approved_spec.fingerprint
    assert result == PolicyResult(
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
        make_env(), changed_spec, [old], actor="alice", code=None, get_secret=no_secrets
    )

    assert verified is False


def test_verifiable_mode_accepts_the_right_code(make_env: EnvFactory, make_spec: SpecFactory) -> None:
    spec = make_spec()
    code = compute_approval_code("alice-s3cret", spec.plan_id, spec.fingerprint)

    verified = check_approval(
        make_env(verify_approvals=True), spec, [], actor="alice", code=code, get_secret=SECRETS.get
    )

    assert verified is True


@pytest.mark.parametrize(
    ("code", "secrets"),
    [
        (None, SECRETS),
        ("0" * 64, SECRETS),
        ("code-for-another-plan", SECRETS),
        ("anything", {}),
    ],
    ids=["missing_code", "wrong_code", "garbage_code", "no_secret_configured"],
)
def test_verifiable_mode_refuses_a_missing_or_wrong_code_naming_the_secret_variable(
    make_env: EnvFactory, make_spec: SpecFactory, code: str | None, secrets: dict[str, str]
) -> None:
    with pytest.raises(DagctlPolicyError) as raised:
        check_approval(
            make_env(verify_approvals=True), make_spec(), [], actor="alice", code=code, get_secret=secrets.get
        )

    assert str(raised.value) == (
        "approval of plan jaffle-prod-3f2a9c1d by alice is not verified: environment 'prod' requires an "
        "approval code computed from DAGCTL_APPROVER_SECRET_ALICE (`dagctl plans approve` computes it)"
    )


def test_verifiable_mode_refuses_a_code_computed_for_another_change_set(
    make_env: EnvFactory, make_spec: SpecFactory
) -> None:
    spec = make_spec()
    other_fingerprint = make_spec(target_commit="c" * 40).fingerprint
    stale_code = compute_approval_code("alice-s3cret", spec.plan_id, other_fingerprint)

    with pytest.raises(DagctlPolicyError, match="is not verified"):
        check_approval(
            make_env(verify_approvals=True), spec, [], actor="alice", code=stale_code, get_secret=SECRETS.get
        )


def test_right_code_is_reported_verified_even_when_the_environment_does_not_require_it(
    make_env: EnvFactory, make_spec: SpecFactory
) -> None:
    spec = make_spec()
    code = compute_approval_code("alice-s3cret", spec.plan_id, spec.fingerprint)

    assert check_approval(make_env(), spec, [], actor="alice", code=code, get_secret=SECRETS.get) is True


def test_verifiable_mode_ignores_unverified_approvals(
    make_env: EnvFactory, make_spec: SpecFactory, make_approval: ApprovalFactory, at: Clock
) -> None:
    unverified, verified = make_approval(actor="alice"), make_approval(actor="bob", verified=True)
    env = make_env(verify_approvals=True, required_approvals=2)

    result = evaluate_policy(env, make_spec(), [unverified, verified], at(60))

    assert result == PolicyResult(
        is_satisfied=False,
        counted=(verified,),
        ignored=((unverified, "not verified (verifiable mode needs an approval code)"),),
        missing=("1 more approval(s) from alice",),
    )


def test_compute_approval_code_is_a_stable_hmac_of_plan_and_fingerprint() -> None:
    code = compute_approval_code("s3cret", "jaffle-prod-3f2a9c1d", "f" * 64)

    assert code == "d214478c147666a2a3c6686b70b9cc7c9466e8869acdb28c28cefdc923b8fda5"
    assert compute_approval_code("s3cret", "jaffle-prod-3f2a9c1d", "f" * 64) == code
    assert compute_approval_code("s3cret", "jaffle-prod-00000000", "f" * 64) != code
    assert compute_approval_code("s3cret", "jaffle-prod-3f2a9c1d", "e" * 64) != code
    assert compute_approval_code("other", "jaffle-prod-3f2a9c1d", "f" * 64) != code


@pytest.mark.parametrize(
    ("actor", "variable"),
    [
        ("alice", "DAGCTL_APPROVER_SECRET_ALICE"),
        ("Alice", "DAGCTL_APPROVER_SECRET_ALICE"),
        ("alice.smith@acme.com", "DAGCTL_APPROVER_SECRET_ALICE_SMITH_ACME_COM"),
        ("bob-2", "DAGCTL_APPROVER_SECRET_BOB_2"),
    ],
)
def test_approver_secret_env_is_an_environment_variable_name(actor: str, variable: str) -> None:
    assert approver_secret_env(actor) == variable
