"""SQLMesh change sets as values: fingerprint material, asset keys and the reviewer's summary. No I/O."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from dagctl_dagster.core.fingerprint import compute_fingerprint
from dagctl_dagster.core.sqlmesh_plan import (
    MAX_MODELS_SHOWN,
    BackfillInterval,
    ModelChange,
    SqlmeshChangeSet,
    build_sqlmesh_asset_key,
    render_sqlmesh_summary,
)

BASE = "8c2f0e51d1a24b6f9e1c2d3a4b5c6d7e"
ORDERS_DIFF = (
    "--- shop.orders (prod)\n+++ shop.orders (this plan)\n@@ -1,2 +1,2 @@\n"
    "-  1 + ABS(x) AS quantity\n+  2 + ABS(x) AS quantity"
)


@pytest.fixture
def make_change() -> Callable[..., ModelChange]:
    def make(**overrides: object) -> ModelChange:
        values: dict[str, object] = {
            "name": "shop.orders", "kind": "directly_modified", "category": "breaking"
        }
        return ModelChange(**{**values, **overrides})

    return make


@pytest.fixture
def make_change_set(make_change: Callable[..., ModelChange]) -> Callable[..., SqlmeshChangeSet]:
    """A breaking change of `shop.orders` with one indirect child, in prod."""

    def make(**overrides: object) -> SqlmeshChangeSet:
        values: dict[str, object] = {
            "environment": "prod",
            "base_plan_id": BASE,
            "has_changes": True,
            "changes": (
                make_change(
                    name="shop.daily_revenue",
                    kind="indirectly_modified",
                    category="indirect_breaking",
                    parents=("shop.orders",),
                ),
                make_change(diff=ORDERS_DIFF),
            ),
            "backfills": (
                BackfillInterval(model="shop.daily_revenue", start="2024-03-01", end="2024-03-07",
                                 mode="full_refresh"),
                BackfillInterval(model="shop.orders", start="2024-03-01", end="2024-03-07"),
            ),
            "snapshots": (
                ("shop.daily_revenue", "1731152732", "indirect_breaking"),
                ("shop.orders", "3500708481", "breaking"),
                ("shop.products", "2476511098", "breaking"),
            ),
        }
        return SqlmeshChangeSet(**{**values, **overrides})

    return make


def test_fingerprint_material_is_snapshots_changes_and_base(make_change_set) -> None:
    change_set = make_change_set()

    assert change_set.fingerprint_material() == {
        "environment": "prod",
        "base_plan_id": BASE,
        "snapshots": [
            ["shop.daily_revenue", "1731152732", "indirect_breaking"],
            ["shop.orders", "3500708481", "breaking"],
            ["shop.products", "2476511098", "breaking"],
        ],
        "changes": [
            ["shop.daily_revenue", "indirectly_modified", "indirect_breaking", False],
            ["shop.orders", "directly_modified", "breaking", False],
        ],
    }
    assert change_set.fingerprint == compute_fingerprint(change_set.fingerprint_material())


def test_fingerprint_ignores_backfill_intervals_diffs_and_order(make_change_set, make_change) -> None:
    change_set = make_change_set()
    daily_revenue, _ = change_set.changes
    later = make_change_set(
        backfills=(BackfillInterval(model="shop.orders", start="2024-03-01", end="2024-03-09"),),
        changes=(make_change(diff=None), daily_revenue),
        snapshots=tuple(reversed(change_set.snapshots)),
    )

    assert later.fingerprint == change_set.fingerprint


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"base_plan_id": "another-plan"}, id="environment moved"),
        pytest.param({"base_plan_id": None}, id="environment gone"),
        pytest.param({"environment": "dev"}, id="other environment"),
        pytest.param(
            {"snapshots": (("shop.orders", "3500708481", "non_breaking"),)}, id="other category"
        ),
        pytest.param({"snapshots": (("shop.orders", "9999999999", "breaking"),)}, id="other snapshot"),
        pytest.param({"changes": ()}, id="other changes"),
    ],
)
def test_fingerprint_changes_with_what_was_approved(make_change_set, overrides: dict) -> None:
    assert make_change_set(**overrides).fingerprint != make_change_set().fingerprint


def test_changes_of_one_kind_keep_their_order(make_change_set, make_change) -> None:
    change_set = make_change_set(
        changes=(
            make_change(name="b", kind="added"), make_change(name="x"), make_change(name="a", kind="added")
        )
    )

    assert [c.name for c in change_set.changes_of("added")] == ["b", "a"]
    assert change_set.changes_of("removed") == ()


@pytest.mark.parametrize(
    ("project", "model", "key"),
    [
        ("shop", "shop.orders", ("sqlmesh", "shop", "shop__orders")),
        ("shop", "warehouse.shop.orders", ("sqlmesh", "shop", "warehouse__shop__orders")),
        ("shop", '"my-db".shop.orders', ("sqlmesh", "shop", "_my_db___shop__orders")),
    ],
)
def test_asset_key_flattens_the_model_name(project: str, model: str, key: tuple[str, ...]) -> None:
    assert build_sqlmesh_asset_key(project, model) == key


def test_summary_of_a_breaking_change(make_change_set) -> None:
    change_set = make_change_set()

    assert render_sqlmesh_summary(change_set) == (
        f"**SQLMesh plan for `prod`** (base: SQLMesh plan `{BASE}`)\n"
        "\n"
        "1 directly modified · 1 indirectly modified · 2 models to backfill\n"
        "\n"
        "| model | change | category |\n"
        "|---|---|---|\n"
        "| `shop.daily_revenue` | indirectly modified (from `shop.orders`) | indirect breaking |\n"
        "| `shop.orders` | directly modified | breaking |\n"
        "\n"
        "**Backfill** (as of explain; re-evaluated when the plan executes, so it covers the intervals due "
        "then and skips what another environment already built):\n"
        "\n"
        "| model | from | to | mode |\n"
        "|---|---|---|---|\n"
        "| `shop.daily_revenue` | 2024-03-01 | 2024-03-07 | full refresh |\n"
        "| `shop.orders` | 2024-03-01 | 2024-03-07 | incremental |\n"
        "\n"
        "<details>\n"
        "<summary>Diff of <code>shop.orders</code> (breaking)</summary>\n"
        "\n"
        "```diff\n"
        f"{ORDERS_DIFF}\n"
        "```\n"
        "\n"
        "</details>\n"
        "\n"
        f"SQLMesh change-set fingerprint `{change_set.fingerprint[:16]}` (checked by the apply step; the plan "
        "fingerprint below covers it)\n"
    )


def test_summary_without_changes(make_change_set) -> None:
    assert render_sqlmesh_summary(make_change_set(has_changes=False, changes=(), backfills=())) == (
        f"**SQLMesh plan for `prod`** (base: SQLMesh plan `{BASE}`)\n"
        "\n"
        "No changes: the environment already matches this commit. Nothing will be applied.\n"
    )


def test_summary_of_a_new_environment_with_removal_and_forward_only_change(
    make_change_set, make_change
) -> None:
    change_set = make_change_set(
        base_plan_id=None,
        changes=(
            make_change(name="shop.legacy", kind="removed", category=None),
            make_change(name="shop.orders", category="non_breaking", forward_only=True),
        ),
        backfills=(),
    )

    assert render_sqlmesh_summary(change_set) == (
        "**SQLMesh plan for `prod`** (new environment)\n"
        "\n"
        "1 removed · 1 directly modified · nothing to backfill\n"
        "\n"
        "| model | change | category |\n"
        "|---|---|---|\n"
        "| `shop.legacy` | removed |  |\n"
        "| `shop.orders` | directly modified | non breaking, forward-only |\n"
        "\n"
        "**Backfill:** none as of explain (re-evaluated when the plan executes)\n"
        "\n"
        f"SQLMesh change-set fingerprint `{change_set.fingerprint[:16]}` (checked by the apply step; the plan "
        "fingerprint below covers it)\n"
    )


def test_summary_lists_uncategorized_models(make_change_set, make_change) -> None:
    change_set = make_change_set(
        changes=(make_change(category=None),), backfills=(), uncategorized=("shop.orders",)
    )

    assert render_sqlmesh_summary(change_set).splitlines()[2:8] == [
        "1 directly modified · nothing to backfill",
        "",
        "**Uncategorized:** `shop.orders`",
        "",
        "| model | change | category |",
        "|---|---|---|",
    ]


def test_summary_truncates_long_lists(make_change_set, make_change) -> None:
    changes = tuple(make_change(name=f"shop.m{i:03}", kind="added") for i in range(MAX_MODELS_SHOWN + 7))

    lines = render_sqlmesh_summary(make_change_set(changes=changes, backfills=())).splitlines()

    assert lines[2] == f"{MAX_MODELS_SHOWN + 7} added · nothing to backfill"
    assert lines[6 + MAX_MODELS_SHOWN - 1] == f"| `shop.m{MAX_MODELS_SHOWN - 1:03}` | added | breaking |"
    assert lines[6 + MAX_MODELS_SHOWN] == "| ... 7 more | | |"


def test_summary_fences_diffs_that_contain_backticks(make_change_set, make_change) -> None:
    diff = "@@ -1 +1 @@\n-SELECT 1 AS ```a```\n+SELECT 2 AS ```a```"

    summary = render_sqlmesh_summary(make_change_set(changes=(make_change(diff=diff),), backfills=()))

    assert f"````diff\n{diff}\n````" in summary


def test_summary_of_failed_unit_tests_shows_their_names_and_sqlmesh_report(make_change_set) -> None:
    report = "FAIL: test_daily_revenue\n│ 0 │ 28.2 │ 56.4 │"
    change_set = make_change_set(has_changes=False, changes=(), backfills=(),
                                 failed_tests=("tests/test_daily_revenue.yaml::test_daily_revenue",),
                                 test_output=report)

    assert render_sqlmesh_summary(change_set) == (
        f"**SQLMesh plan for `prod`** (base: SQLMesh plan `{BASE}`)\n"
        "\n"
        "**Unit tests failed (1):** `tests/test_daily_revenue.yaml::test_daily_revenue`\n"
        "\n"
        "SQLMesh builds no plan while tests fail: nothing will be applied. Fix the tests or the models and "
        "push a new commit.\n"
        "\n"
        "```text\n"
        f"{report}\n"
        "```\n"
    )
