"""The SQLMesh `execute` entrypoint, run in-process on the example project as it is (real clock).

Dagster Pipes is exercised through its own protocol: the context is passed in DAGSTER_PIPES_CONTEXT and the
messages are written to a file, as a Dagster pipes client would arrange, without a Dagster instance.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dagster_pipes import encode_param

from dagctl_dagster.adapters.sqlmesh import explain_sqlmesh_plan
from dagctl_dagster.runner.sqlmesh_apply import EXIT_APPLIED, EXIT_STALE, main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sqlmesh_shop"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    warehouse = tmp_path / "warehouse"
    warehouse.mkdir()
    monkeypatch.setenv("DAGCTL_WAREHOUSE_DIR", str(warehouse))
    return Path(shutil.copytree(EXAMPLE, tmp_path / "project"))


def pipes_messages(monkeypatch: pytest.MonkeyPatch, path: Path) -> None:
    context = {
        "asset_keys": None,
        "code_version_by_asset_key": None,
        "provenance_by_asset_key": None,
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "run-1",
        "job_name": "sqlmesh_shop_plan_job",
        "retry_number": 0,
        "extras": {},
    }
    monkeypatch.setenv("DAGSTER_PIPES_CONTEXT", encode_param({"data": context}))
    monkeypatch.setenv("DAGSTER_PIPES_MESSAGES", encode_param({"path": str(path)}))


def test_pipes_apply_reports_one_materialization_per_model(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    change_set = explain_sqlmesh_plan(project, "prod")
    messages_file = tmp_path / "messages.jsonl"
    pipes_messages(monkeypatch, messages_file)
    monkeypatch.setenv("DAGCTL_PROJECT", "shop")

    code = main(
        ["--project-dir", str(project), "--environment", "prod", "--change-set-fingerprint", change_set.fingerprint]
    )

    messages = [json.loads(line) for line in messages_file.read_text().splitlines()]
    materialized = sorted(
        (m["params"]["asset_key"], m["params"]["metadata"]["sqlmesh_model"]["raw_value"])
        for m in messages
        if m["method"] == "report_asset_materialization"
    )
    assert code == EXIT_APPLIED
    assert materialized == [
        ("sqlmesh/shop/shop__category_revenue", "shop.category_revenue"),
        ("sqlmesh/shop/shop__daily_revenue", "shop.daily_revenue"),
        ("sqlmesh/shop/shop__orders", "shop.orders"),
        ("sqlmesh/shop/shop__products", "shop.products"),
    ]
    assert [m["params"] for m in messages if m["method"] == "report_custom_message"] == [
        {"payload": {"outcome": "applied", "message": "SQLMesh plan applied in environment 'prod'."}}
    ]
    assert any(
        m["method"] == "log" and m["params"]["message"].startswith("shop.orders [") for m in messages
    )


def test_stale_fingerprint_exits_3_with_one_line(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--project-dir", str(project), "--environment", "prod", "--change-set-fingerprint", "0" * 64])

    err = capsys.readouterr().err
    assert code == EXIT_STALE
    assert err.count("\n") == 1
    assert err.startswith("The SQLMesh plan for environment 'prod' is stale: ")
