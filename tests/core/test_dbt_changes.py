"""dbt change sets: categorizing changed files, deciding the scope, and the exact dbt command lines."""

from __future__ import annotations

import pytest

from dagctl_dagster.core.dbt_changes import (
    MAX_SELECTED_FILES,
    NO_EMPTY_SELECTION,
    ChangeType,
    DbtScope,
    FileCategory,
    FileChange,
    Scope,
    build_dbt_commands,
    build_dbt_scope,
    build_file_change,
    build_path_selector,
    categorize_path,
    get_unselectable_reason,
)

SELECTIVE_REASON = "only models, tests, seeds or snapshots changed: builds the {} changed file(s)"
DOWNSTREAM_REASON = SELECTIVE_REASON + " and their downstream nodes"
REBUILD_ONLY_REASON = "nothing dbt builds changed: the image is rebuilt, no dbt command runs"


@pytest.mark.parametrize(
    ("path", "category"),
    [
        ("models/staging/stg_orders.sql", FileCategory.MODEL),
        ("models/marts/customers.py", FileCategory.MODEL),
        ("models/top_level.sql", FileCategory.MODEL),
        ("models/staging/schema.yml", FileCategory.TEST),
        ("models/marts/_properties.yaml", FileCategory.TEST),
        ("models/docs.md", FileCategory.OTHER),
        ("tests/assert_positive_order_amount.sql", FileCategory.TEST),
        ("tests/fixtures/orders.csv", FileCategory.TEST),
        ("tests/generic/not_negative.sql", FileCategory.MACRO),
        ("macros/cents_to_dollars.sql", FileCategory.MACRO),
        ("macros/schema.yml", FileCategory.MACRO),
        ("seeds/raw_orders.csv", FileCategory.SEED),
        ("seeds/properties.yml", FileCategory.SEED),
        ("snapshots/orders_snapshot.sql", FileCategory.SNAPSHOT),
        ("analyses/revenue_by_month.sql", FileCategory.ANALYSIS),
        ("dbt_project.yml", FileCategory.CONFIGURATION),
        ("profiles.yml", FileCategory.CONFIGURATION),
        ("packages.yml", FileCategory.CONFIGURATION),
        ("dependencies.yml", FileCategory.CONFIGURATION),
        ("selectors.yml", FileCategory.CONFIGURATION),
        ("config/dbt_project.yml", FileCategory.OTHER),
        ("Dockerfile", FileCategory.INFRASTRUCTURE),
        (".dockerignore", FileCategory.INFRASTRUCTURE),
        ("requirements.txt", FileCategory.INFRASTRUCTURE),
        ("requirements-dev.txt", FileCategory.INFRASTRUCTURE),
        ("pyproject.toml", FileCategory.INFRASTRUCTURE),
        ("uv.lock", FileCategory.INFRASTRUCTURE),
        (".dagctl/config.yaml", FileCategory.INFRASTRUCTURE),
        ("docker/Dockerfile", FileCategory.INFRASTRUCTURE),
        ("README.md", FileCategory.OTHER),
        ("scripts/load.py", FileCategory.OTHER),
    ],
)
def test_categorize_path_gives_the_category_of_each_kind_of_file(path: str, category: FileCategory) -> None:
    assert categorize_path(path) is category


def test_build_file_change_fills_in_the_category_of_the_new_path_of_a_rename() -> None:
    change = build_file_change("models/marts/orders.sql", "renamed", old_path="models/orders.sql")

    assert change == FileChange(
        path="models/marts/orders.sql",
        change_type=ChangeType.RENAMED,
        category=FileCategory.MODEL,
        old_path="models/orders.sql",
    )
    assert not change.is_removal


def test_build_file_change_marks_a_deletion_as_a_removal() -> None:
    change = build_file_change("seeds/raw_orders.csv", ChangeType.DELETED)

    assert change == FileChange(
        path="seeds/raw_orders.csv", change_type=ChangeType.DELETED, category=FileCategory.SEED
    )
    assert change.is_removal


def test_build_file_change_refuses_an_unknown_change_type() -> None:
    with pytest.raises(ValueError, match="'unmerged' is not a valid ChangeType"):
        build_file_change("models/a.sql", "unmerged")


# Each row: the changed files as (path, change type[, old path]), whether the environment has a previous
# deployment, whether downstream nodes are included, and the whole expected scope.
SCOPE_CASES = {
    "selective_when_only_models_changed": (
        [("models/staging/stg_orders.sql", "modified"), ("models/marts/customers.sql", "added")],
        True,
        False,
        DbtScope(
            scope=Scope.SELECTIVE,
            reason=SELECTIVE_REASON.format(2),
            selection=("path:models/marts/customers.sql", "path:models/staging/stg_orders.sql"),
        ),
    ),
    "selective_when_only_yaml_under_models_changed": (
        [("models/staging/schema.yml", "modified")],
        True,
        False,
        DbtScope(
            scope=Scope.SELECTIVE,
            reason=SELECTIVE_REASON.format(1),
            selection=("path:models/staging/schema.yml",),
        ),
    ),
    "selective_covers_tests_seeds_and_snapshots": (
        [
            ("snapshots/orders_snapshot.sql", "modified"),
            ("tests/assert_positive_order_amount.sql", "added"),
            ("seeds/raw_orders.csv", "modified"),
            ("models/marts/orders.py", "modified"),
        ],
        True,
        False,
        DbtScope(
            scope=Scope.SELECTIVE,
            reason=SELECTIVE_REASON.format(4),
            selection=(
                "path:models/marts/orders.py",
                "path:seeds/raw_orders.csv",
                "path:snapshots/orders_snapshot.sql",
                "path:tests/assert_positive_order_amount.sql",
            ),
        ),
    ),
    "selective_ignores_analyses_infrastructure_and_other_files_next_to_models": (
        [
            ("models/staging/stg_orders.sql", "modified"),
            ("analyses/revenue_by_month.sql", "modified"),
            ("Dockerfile", "modified"),
            ("README.md", "modified"),
        ],
        True,
        False,
        DbtScope(
            scope=Scope.SELECTIVE,
            reason=SELECTIVE_REASON.format(1),
            selection=("path:models/staging/stg_orders.sql",),
        ),
    ),
    "selective_with_downstream_when_the_environment_includes_downstream": (
        [("models/staging/stg_orders.sql", "modified"), ("models/staging/schema.yml", "modified")],
        True,
        True,
        DbtScope(
            scope=Scope.SELECTIVE,
            reason=DOWNSTREAM_REASON.format(2),
            selection=("path:models/staging/schema.yml+", "path:models/staging/stg_orders.sql+"),
        ),
    ),
    "selective_lists_a_deleted_model_as_removed_and_selects_the_rest": (
        [("models/staging/stg_orders.sql", "modified"), ("models/legacy/old_orders.sql", "deleted")],
        True,
        False,
        DbtScope(
            scope=Scope.SELECTIVE,
            reason=SELECTIVE_REASON.format(1),
            selection=("path:models/staging/stg_orders.sql",),
            removed=("models/legacy/old_orders.sql",),
        ),
    ),
    "selective_selects_the_new_path_of_a_renamed_model_and_removes_the_old": (
        [("models/marts/orders.sql", "renamed", "models/orders.sql")],
        True,
        False,
        DbtScope(
            scope=Scope.SELECTIVE,
            reason=SELECTIVE_REASON.format(1),
            selection=("path:models/marts/orders.sql",),
            removed=("models/orders.sql",),
        ),
    ),
    "selective_renamed_test_is_selected_and_not_removed": (
        [("tests/assert_b.sql", "renamed", "tests/assert_a.sql")],
        True,
        False,
        DbtScope(
            scope=Scope.SELECTIVE, reason=SELECTIVE_REASON.format(1), selection=("path:tests/assert_b.sql",)
        ),
    ),
    "all_when_a_macro_changed": (
        [("macros/cents_to_dollars.sql", "modified"), ("models/staging/stg_orders.sql", "modified")],
        True,
        False,
        DbtScope(scope=Scope.ALL, reason="macro changed: any node may be affected, full build"),
    ),
    "all_when_a_macro_was_deleted": (
        [("macros/cents_to_dollars.sql", "deleted")],
        True,
        False,
        DbtScope(scope=Scope.ALL, reason="macro changed: any node may be affected, full build"),
    ),
    "all_when_a_macro_was_renamed_out_of_macros": (
        [("archive/cents_to_dollars.sql", "renamed", "macros/cents_to_dollars.sql")],
        True,
        False,
        DbtScope(scope=Scope.ALL, reason="macro changed: any node may be affected, full build"),
    ),
    "all_when_a_generic_test_changed": (
        [("tests/generic/not_negative.sql", "added")],
        True,
        False,
        DbtScope(scope=Scope.ALL, reason="macro changed: any node may be affected, full build"),
    ),
    "all_when_the_configuration_changed": (
        [("dbt_project.yml", "modified")],
        True,
        False,
        DbtScope(scope=Scope.ALL, reason="configuration changed: any node may be affected, full build"),
    ),
    "all_names_both_when_configuration_and_macros_changed": (
        [("packages.yml", "modified"), ("macros/a.sql", "added"), ("models/b.sql", "deleted")],
        True,
        True,
        DbtScope(
            scope=Scope.ALL,
            reason="configuration and macro changed: any node may be affected, full build",
            removed=("models/b.sql",),
        ),
    ),
    "all_on_first_deployment_whatever_changed": (
        [("models/staging/stg_orders.sql", "modified"), ("Dockerfile", "modified")],
        False,
        True,
        DbtScope(scope=Scope.ALL, reason="first deployment of this environment: full build"),
    ),
    "all_on_first_deployment_with_no_changed_files": (
        [],
        False,
        False,
        DbtScope(scope=Scope.ALL, reason="first deployment of this environment: full build"),
    ),
    "build_only_when_only_infrastructure_changed": (
        [("Dockerfile", "modified"), ("requirements.txt", "modified"), (".dagctl/config.yaml", "modified")],
        True,
        False,
        DbtScope(scope=Scope.BUILD_ONLY, reason=REBUILD_ONLY_REASON),
    ),
    "build_only_when_only_analyses_and_docs_changed": (
        [("analyses/revenue_by_month.sql", "modified"), ("models/docs.md", "added")],
        True,
        True,
        DbtScope(scope=Scope.BUILD_ONLY, reason=REBUILD_ONLY_REASON),
    ),
    "build_only_when_a_singular_test_was_deleted": (
        [("tests/assert_positive_order_amount.sql", "deleted")],
        True,
        False,
        DbtScope(scope=Scope.BUILD_ONLY, reason=REBUILD_ONLY_REASON),
    ),
    "build_only_when_only_nodes_were_deleted": (
        [
            ("models/legacy/old_orders.sql", "deleted"),
            ("seeds/raw_old.csv", "deleted"),
            ("Dockerfile", "modified"),
        ],
        True,
        False,
        DbtScope(
            scope=Scope.BUILD_ONLY,
            reason="only removals: nothing to select, the image is rebuilt",
            removed=("models/legacy/old_orders.sql", "seeds/raw_old.csv"),
        ),
    ),
    "build_only_when_a_model_was_renamed_out_of_models": (
        [("archive/old_orders.sql", "renamed", "models/old_orders.sql")],
        True,
        False,
        DbtScope(
            scope=Scope.BUILD_ONLY,
            reason="only removals: nothing to select, the image is rebuilt",
            removed=("models/old_orders.sql",),
        ),
    ),
    "build_only_when_no_file_changed": (
        [],
        True,
        False,
        DbtScope(scope=Scope.BUILD_ONLY, reason="no file changed: the image is rebuilt, no dbt command runs"),
    ),
}


@pytest.mark.parametrize(
    ("changes", "has_base", "include_downstream", "expected"),
    list(SCOPE_CASES.values()),
    ids=list(SCOPE_CASES),
)
def test_build_dbt_scope_decides_scope_selection_and_removals(
    changes: list[tuple[str, ...]], has_base: bool, include_downstream: bool, expected: DbtScope
) -> None:
    files = [build_file_change(*change) for change in changes]

    scope = build_dbt_scope(files, has_base=has_base, include_downstream=include_downstream)

    assert scope == expected
    assert scope.requires_dbt is (expected.scope is not Scope.BUILD_ONLY)


def test_selection_is_the_same_whatever_the_order_of_the_diff() -> None:
    files = [build_file_change(path, "modified") for path in ("models/b.sql", "models/a.sql", "seeds/c.csv")]

    forward = build_dbt_scope(files, has_base=True)
    backward = build_dbt_scope(list(reversed(files)), has_base=True)

    assert forward == backward
    assert forward.selection == ("path:models/a.sql", "path:models/b.sql", "path:seeds/c.csv")


SELECTIVE = DbtScope(
    scope=Scope.SELECTIVE,
    reason=SELECTIVE_REASON.format(2),
    selection=("path:models/a.sql", "path:models/schema.yml"),
)
ALL = DbtScope(scope=Scope.ALL, reason="macro changed: any node may be affected, full build")
BUILD_ONLY = DbtScope(scope=Scope.BUILD_ONLY, reason=REBUILD_ONLY_REASON)


@pytest.mark.parametrize(
    ("commands", "scope", "expected"),
    [
        pytest.param(
            [("dbt", "build")],
            SELECTIVE,
            (
                (
                    "dbt", "build", "--target", "prod",
                    *NO_EMPTY_SELECTION, "--select", "path:models/a.sql", "path:models/schema.yml",
                ),
            ),
            id="selective_build_selects_exactly_the_changed_files",
        ),
        pytest.param(
            [("dbt", "seed"), ("dbt", "build", "--fail-fast")],
            SELECTIVE,
            (
                (
                    "dbt", "seed", "--target", "prod",
                    *NO_EMPTY_SELECTION, "--select", "path:models/a.sql", "path:models/schema.yml",
                ),
                (
                    "dbt", "build", "--fail-fast", "--target", "prod",
                    *NO_EMPTY_SELECTION, "--select", "path:models/a.sql", "path:models/schema.yml",
                ),
            ),
            id="selective_applies_the_selection_to_every_command",
        ),
        pytest.param(
            [("dbt", "seed"), ("dbt", "build")],
            ALL,
            (("dbt", "seed", "--target", "prod"), ("dbt", "build", "--target", "prod")),
            id="all_runs_every_command_without_a_selection",
        ),
        pytest.param([("dbt", "build")], BUILD_ONLY, (), id="build_only_runs_no_dbt_command"),
    ],
)
def test_build_dbt_commands_gives_the_exact_argv_lists(
    commands: list[tuple[str, ...]], scope: DbtScope, expected: tuple[tuple[str, ...], ...]
) -> None:
    assert build_dbt_commands(commands, scope, target="prod") == expected


def test_build_dbt_commands_uses_the_environment_target() -> None:
    assert build_dbt_commands([("dbt", "build")], ALL, target="prod_eu") == (
        ("dbt", "build", "--target", "prod_eu"),
    )


@pytest.mark.parametrize(
    ("path", "selector"),
    [
        ("models/a.sql", "path:models/a.sql"),
        ("models/**/*.sql", "path:models/[*][*]/[*].sql"),
        ("models/what?.sql", "path:models/what[?].sql"),
        ("models/[x]y.sql", "path:models/[[]x]y.sql"),
        ("models/c++/a+.sql", "path:models/c[+][+]/a[+].sql"),
        ("tests/ends_with+", "path:tests/ends_with[+]"),
        ("models/@at.sql", "path:models/[@]at.sql"),
        ("models/café.sql", "path:models/café.sql"),
    ],
)
def test_build_path_selector_escapes_what_dbt_would_interpret(path: str, selector: str) -> None:
    assert get_unselectable_reason(path) is None
    assert build_path_selector(path) == selector


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("models/my model.sql", "it contains whitespace"),
        ("models/line\nbreak.sql", "it contains whitespace"),
        ("models/tab\t.sql", "it contains whitespace"),
        ("models/a,b.sql", "it contains a comma"),
        ("models/caf\\xe9.sql", "it contains a backslash, a control character or a byte that is not UTF-8"),
        ("models/bell\x07.sql", "it contains a backslash, a control character or a byte that is not UTF-8"),
    ],
)
def test_names_without_an_exact_escape_are_unselectable(path: str, reason: str) -> None:
    assert get_unselectable_reason(path) == reason


def test_an_unselectable_changed_file_makes_a_full_build_that_names_it() -> None:
    changes = [build_file_change("models/ok.sql", "modified"), build_file_change("models/my model.sql", "added"),
               build_file_change("models/a,b.sql", "added")]

    assert build_dbt_scope(changes, has_base=True) == DbtScope(
        scope=Scope.ALL,
        reason="dbt's path: selector cannot select 'models/a,b.sql' exactly, it contains a comma "
        "(and 1 more such file(s)): full build",
    )


def test_an_unselectable_file_dbt_does_not_build_keeps_the_plan_build_only() -> None:
    scope = build_dbt_scope([build_file_change("docs/read me.md", "added")], has_base=True)
    assert (scope.scope, scope.reason) == (Scope.BUILD_ONLY, REBUILD_ONLY_REASON)


def test_glob_file_names_are_selected_exactly_with_downstream() -> None:
    scope = build_dbt_scope([build_file_change("models/**/*.sql", "added")], has_base=True,
                            include_downstream=True)
    assert (scope.scope, scope.selection) == (Scope.SELECTIVE, ("path:models/[*][*]/[*].sql+",))


def test_too_many_changed_files_make_a_full_build() -> None:
    changes = [build_file_change(f"models/m{index}.sql", "added") for index in range(MAX_SELECTED_FILES + 1)]
    assert build_dbt_scope(changes, has_base=True) == DbtScope(
        scope=Scope.ALL, reason=f"{MAX_SELECTED_FILES + 1} files to select, more than {MAX_SELECTED_FILES}: "
        "full build")


def test_a_deployed_commit_gone_from_the_repository_makes_a_full_build() -> None:
    changes = [build_file_change("models/a.sql", "added")]
    assert build_dbt_scope(changes, has_base=True, is_base_gone=True) == DbtScope(
        scope=Scope.ALL, reason="the deployed commit is no longer in the repository: full build")
