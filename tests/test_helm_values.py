"""`helm-values/` against the Dagster chart's own values schemas, and the RBAC manifest against Kubernetes.

The schemas are the chart's published `values.schema.json` files, kept beside the repository in
`shared/reference/dagster-helm/` (see SOURCE.md there). They are read with JSON Schema draft 2020-12 on
purpose: it applies keywords next to a `$ref` (e.g. `type: object` beside a Kubernetes definition), the
stricter of the two readings. Their `$ref`s to kubernetesjsonschema.dev cannot be fetched offline and are
resolved to accept-all schemas; the chart's own definitions are checked strictly.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from dagctl_dagster.defs.tags import LOCK_TAG

REPO = Path(__file__).resolve().parents[1]
HELM_VALUES = REPO / "helm-values"
SCHEMAS = REPO.parent / "shared" / "reference" / "dagster-helm"
REMOTE = "https://kubernetesjsonschema.dev/"
KUBERNETES_VERSION = "1.34.0"


def _load_schema(name: str) -> dict[str, Any]:
    path = SCHEMAS / name
    if not path.is_file():
        pytest.fail(f"{path} is missing: the chart's values schemas are expected in ../shared beside the repository")
    return json.loads(path.read_text())


def _accept_all_remote_documents(schema: dict[str, Any]) -> Registry:
    """A registry answering every kubernetesjsonschema.dev URI with a document in which each pointer the
    schema uses leads to `{}` (accept all), so nothing is fetched and nothing fails on those references."""
    documents: dict[str, dict[str, Any]] = {}
    for ref in re.findall(r'"\$ref":\s*"([^"]+)"', json.dumps(schema)):
        if not ref.startswith(REMOTE):
            continue
        uri, _, pointer = ref.partition("#")
        node = documents.setdefault(uri, {})
        for part in [p for p in pointer.split("/") if p]:
            node = node.setdefault(part, {})
    return Registry().with_resources(
        (uri, Resource.from_contents(document, default_specification=DRAFT202012))
        for uri, document in documents.items()
    )


def _validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema, registry=_accept_all_remote_documents(schema))


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load((HELM_VALUES / "values.yaml").read_text())


@pytest.fixture(scope="module")
def chart_validator() -> jsonschema.Draft202012Validator:
    return _validator(_load_schema("values.schema.json"))


@pytest.fixture(scope="module")
def subchart_validator() -> jsonschema.Draft202012Validator:
    return _validator(_load_schema("user-deployments.values.schema.json"))


def _errors(validator: jsonschema.Draft202012Validator, instance: dict[str, Any]) -> list[str]:
    return [f"{'.'.join(str(p) for p in error.absolute_path) or '(top)'}: {error.message}"
            for error in validator.iter_errors(instance)]


def test_values_validate_against_the_charts_schema(values: dict, chart_validator: Any) -> None:
    assert _errors(chart_validator, values) == []


def test_user_deployment_values_validate_against_the_subcharts_schema(values: dict, subchart_validator: Any) -> None:
    # Helm hands the subchart the values under its key, plus `global`.
    subchart_values = {**values["dagster-user-deployments"], "global": values["global"]}
    assert _errors(subchart_validator, subchart_values) == []


@pytest.mark.parametrize(("path", "value", "message"), [
    (("dagsterDaemon", "runCoordinater"), {}, "Additional properties are not allowed ('runCoordinater'"),
    (("runLauncher", "type"), "K8sLauncher", "'K8sLauncher' is not one of"),
    (("dagster-user-deployments", "deployments"), [{"name": "dagctl", "image": {"repository": "x"}}],
     "'port' is a required property"),
    (("dagsterWebserver", "nodeSelector"), ["not", "an", "object"], "is not of type 'object'"),
    # `SecretRef` is `{type: object, $ref: <kubernetes>}`: only draft 2019-09+ applies the `type` beside `$ref`.
    (("imagePullSecrets",), ["dagctl-registry"], "'dagctl-registry' is not of type 'object'"),
])
def test_the_schema_check_catches_mistakes(
    values: dict, chart_validator: Any, path: tuple[str, ...], value: Any, message: str
) -> None:
    broken = copy.deepcopy(values)
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert any(message in error for error in _errors(chart_validator, broken)), _errors(chart_validator, broken)


def test_runs_are_launched_as_kubernetes_jobs_by_the_daemon_with_the_plan_lock(values: dict) -> None:
    daemon = values["dagsterDaemon"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert daemon["enabled"] and daemon["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert daemon["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"] == [
        {"key": LOCK_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    ]
    assert daemon["runRetries"]["enabled"] and daemon["runMonitoring"]["enabled"]
    assert daemon["sensors"]["useThreads"] and daemon["schedules"]["useThreads"]


def test_the_code_location_is_dagctls_module_with_its_config_and_secrets(values: dict) -> None:
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    dockerfile_command = re.search(r'^CMD \[(.*)\]$', (REPO / "Dockerfile").read_text(), re.M).group(1)

    assert deployment["dagsterApiGrpcArgs"] == ["--module-name", "dagctl_dagster.defs.location"]
    assert '"--module-name", "dagctl_dagster.defs.location"' in dockerfile_command
    assert (REPO / "dagctl_dagster" / "defs" / "location.py").is_file()
    assert deployment["includeConfigInLaunchedRuns"]["enabled"] is True
    assert {"name": "DAGCTL_CONFIG", "value": "/etc/dagctl/dagctl.yaml"} in deployment["env"]
    assert [secret["name"] for secret in deployment["envSecrets"]] == ["dagctl-git"]


def _rbac() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in yaml.safe_load_all((HELM_VALUES / "rbac.yaml").read_text()) if doc}


@pytest.mark.parametrize("kind", ["ServiceAccount", "Role", "RoleBinding"])
def test_rbac_manifests_are_valid_kubernetes(kind: str) -> None:
    kubernetes_validate.validate(_rbac()[kind], KUBERNETES_VERSION, strict=True)


def test_run_workers_run_as_the_service_account_the_role_is_bound_to(values: dict) -> None:
    rbac = _rbac()
    account = values["runLauncher"]["config"]["k8sRunLauncher"]["runK8sConfig"]["podSpecConfig"]["serviceAccountName"]

    assert rbac["ServiceAccount"]["metadata"]["name"] == account
    assert rbac["RoleBinding"]["subjects"] == [{"kind": "ServiceAccount", "name": account}]
    assert rbac["RoleBinding"]["roleRef"]["name"] == rbac["Role"]["metadata"]["name"]


# Every Kubernetes API call of dagctl's pod ops (defs/kubernetes_steps.py through dagster-k8s's client).
API_CALLS = {
    ("batch", "jobs", "create"),  # create_namespaced_job
    ("batch", "jobs", "list"),  # wait_for_job (list_namespaced_job)
    ("batch", "jobs", "delete"),  # delete_job
    ("batch", "jobs/status", "get"),  # read_namespaced_job_status
    ("", "pods", "create"),  # create_namespaced_pod
    ("", "pods", "list"),  # wait_for_pod, pods of a job (list_namespaced_pod)
    ("", "pods", "get"),  # read_namespaced_pod
    ("", "pods", "delete"),  # delete_namespaced_pod
    ("", "pods/log", "get"),  # read_namespaced_pod_log
    ("", "events", "list"),  # pod debug information (list_namespaced_event)
}


def test_the_role_allows_every_call_the_pod_ops_make_and_nothing_cluster_wide() -> None:
    granted = {(group, resource, verb) for rule in _rbac()["Role"]["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}

    assert API_CALLS <= granted
    assert not any("*" in item for call in granted for item in call)
