"""The Helm chart renders (Helm's own engine), every object passes a schema of its kind, and
it holds what docs/deployment.md promises: per service a Deployment probed on /healthz and
/readyz at the port PAYSTREAM_HTTP_PORT serves, resources, a PodDisruptionBudget and a
NetworkPolicy; KEDA on each consumer's lag metric; an HPA for the gateway; a migration hook."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
import yaml

from paystream.contracts.topology import SERVICES, consumers_of
from paystream.platform.config import Settings
from paystream.platform.observability import Metrics
from tests.deploy.manifests import CHART, NAMESPACE, ROOT, TEST_VALUES, Rendered, problems, render

# Read directly, not through Settings: the keyring JSON (platform/crypto.py); and the one
# variable the chart defines only to build PAYSTREAM_DATABASE_URL from a Secret with $(...).
NOT_SETTINGS = {"PAYSTREAM_KEYRING", "PAYSTREAM_DB_PASSWORD"}


@pytest.fixture(scope="module")
def rendered() -> list[Rendered]:
    return render()


def of_kind(rendered: list[Rendered], kind: str) -> dict[str, dict[str, Any]]:
    return {r.name: r.obj for r in rendered if r.kind == kind}


def component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def test_every_rendered_object_passes_a_schema_of_its_kind(rendered: list[Rendered]) -> None:
    found = [p for r in rendered for p in problems(r.obj)]
    assert not found, "\n".join(found)
    kinds = {r.kind for r in rendered}
    assert {"Deployment", "ScaledObject", "Cluster", "PrometheusRule", "Job"} <= kinds


def test_a_misspelt_field_of_a_built_in_kind_is_refused(rendered: list[Rendered]) -> None:
    deployment = copy.deepcopy(next(r.obj for r in rendered if r.kind == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    assert problems(deployment)


@pytest.mark.parametrize("kind,breaks", [
    ("ScaledObject", lambda o: o["spec"].pop("triggers")),
    ("ScaledObject", lambda o: o["spec"]["triggers"][0].update(metricType="Average")),
    ("Cluster", lambda o: o["spec"].update(instance=3)),
    ("Cluster", lambda o: o["spec"].update(instances="three")),
    ("PrometheusRule", lambda o: o["spec"]["groups"][0]["rules"][0].update({"for": "5 minutes"})),
])
def test_a_broken_custom_object_is_refused_by_its_vendored_schema(
    rendered: list[Rendered], kind: str, breaks: Any
) -> None:
    obj = copy.deepcopy(next(r.obj for r in rendered if r.kind == kind))
    assert not problems(obj)
    breaks(obj)
    assert problems(obj)


def test_a_kind_no_schema_checks_is_a_problem_not_a_pass() -> None:
    unknown = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    assert "checked by no schema" in " ".join(problems(unknown))


def test_helm_lint_finds_no_error() -> None:
    import helm_python as helm

    report = helm.lint(str(CHART), values=TEST_VALUES, namespace=NAMESPACE)
    assert not report["errors"], report
    # Severity 4 is an error; 2 (warning) is the NATS chart not fetched into charts/ here.
    serious = [m for m in report["messages"] if m["severity"] >= 3]
    assert not serious, serious


def test_every_service_has_a_deployment_service_pdb_and_network_policy(rendered: list[Rendered]) -> None:
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"):
        components = {component(o) for o in of_kind(rendered, kind).values() if "app.kubernetes.io/component" in
                      o["metadata"]["labels"]}
        assert components == set(SERVICES), kind


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container["env"]}


def test_probes_ask_healthz_and_readyz_on_the_port_the_service_listens_on(rendered: list[Rendered]) -> None:
    for deployment in of_kind(rendered, "Deployment").values():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        port = {p["name"]: p["containerPort"] for p in container["ports"]}
        listens = int(_env(container)["PAYSTREAM_HTTP_PORT"]["value"])
        assert port["http"] == listens
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        # The gateway's readiness (and metrics) answer only on its operations port.
        ready_on = "ops" if component(deployment) == "gateway" else "http"
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": ready_on}
        if ready_on == "ops":
            assert port["ops"] == int(_env(container)["PAYSTREAM_OPERATIONS_PORT"]["value"]) != listens
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            assert annotations["prometheus.io/port"] == str(port["ops"])
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert container["args"] == ["serve", component(deployment)]
        assert container["securityContext"]["runAsNonRoot"] is True


def test_every_paystream_variable_is_a_setting_the_code_reads(rendered: list[Rendered]) -> None:
    fields = {f"PAYSTREAM_{name.upper()}" for name in Settings.model_fields}
    for r in rendered:
        if r.kind not in ("Deployment", "Job"):
            continue
        for container in r.obj["spec"]["template"]["spec"]["containers"]:
            names = set(_env(container))
            unknown = {n for n in names if n.startswith("PAYSTREAM_")} - fields - NOT_SETTINGS
            assert not unknown, f"{r.kind} {r.name}: {unknown}"


def test_service_urls_name_the_services_of_this_release(rendered: list[Rendered]) -> None:
    import json

    services = of_kind(rendered, "Service")
    for deployment in of_kind(rendered, "Deployment").values():
        urls = json.loads(_env(deployment["spec"]["template"]["spec"]["containers"][0])
                          ["PAYSTREAM_SERVICE_URLS"]["value"])
        assert set(urls) == set(SERVICES)
        for name, url in urls.items():
            host, port = re.fullmatch(r"http://([^:]+):(\d+)", url).groups()  # type: ignore[union-attr]
            assert services[host]["spec"]["ports"][0]["port"] == int(port)
            assert component(services[host]) == name


def test_keda_scales_each_consumer_on_the_lag_of_exactly_its_durables(rendered: list[Rendered]) -> None:
    lag = "paystream_consumer_lag"
    assert lag in {m.name for m in Metrics("x").registry.collect()}
    scaled = {component(o): o for o in of_kind(rendered, "ScaledObject").values()}
    consuming = {name for name in SERVICES if consumers_of(name)}
    assert set(scaled) == consuming
    for name, obj in scaled.items():
        queries = [t["metadata"]["query"] for t in obj["spec"]["triggers"]]
        named = {re.search(r'consumer="([^"]+)"', q).group(1) for q in queries}  # type: ignore[union-attr]
        assert named == {c.durable for c in consumers_of(name)}, name
        assert all(q.startswith(f"max({lag}{{") and f'namespace="{NAMESPACE}"' in q for q in queries)
        assert obj["spec"]["maxReplicaCount"] <= Settings().partitions
        assert obj["spec"]["scaleTargetRef"]["name"].endswith(f"-{name}")


def test_the_gateway_scales_by_hpa_and_alone_takes_traffic_from_anywhere(rendered: list[Rendered]) -> None:
    hpas = of_kind(rendered, "HorizontalPodAutoscaler")
    assert [component(o) for o in hpas.values()] == ["gateway"]
    for policy in of_kind(rendered, "NetworkPolicy").values():
        if "app.kubernetes.io/component" not in policy["metadata"]["labels"]:
            assert policy["spec"].get("ingress") is None  # the default deny
            continue
        open_rules = [rule for rule in policy["spec"]["ingress"] if "from" not in rule]
        assert bool(open_rules) == (component(policy) == "gateway"), component(policy)
        # What is open to anyone is the API port alone, never the operations port.
        assert all(rule["ports"] == [{"port": "http", "protocol": "TCP"}] for rule in open_rules)


def test_the_migration_job_is_a_hook_before_every_upgrade(rendered: list[Rendered]) -> None:
    (job,) = of_kind(rendered, "Job").values()
    hooks = job["metadata"]["annotations"]["helm.sh/hook"].split(",")
    assert "pre-upgrade" in hooks and "post-install" in hooks
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["migrate"]
    assert {"PAYSTREAM_ADMIN_DATABASE_URL", "PAYSTREAM_ROLE_PASSWORDS"} <= set(_env(container))


def test_secrets_are_required_not_defaulted() -> None:
    import helm_python as helm

    values = copy.deepcopy(TEST_VALUES)
    values["secrets"]["values"]["internalToken"] = ""
    with pytest.raises(helm.HelmError, match="internalToken"):
        render(values)


def test_the_prometheus_rule_is_docs_alerts_yml() -> None:
    chart_copy = CHART / "files" / "alerts.yml"
    assert chart_copy.read_text() == (ROOT / "docs" / "alerts.yml").read_text(), \
        "deploy/helm/paystream/files/alerts.yml differs from docs/alerts.yml: copy it again"


def test_the_cnpg_cluster_and_the_job_reach_the_same_database(rendered: list[Rendered]) -> None:
    (cluster,) = of_kind(rendered, "Cluster").values()
    secret = of_kind(rendered, "Secret")
    admin_url = next(s["stringData"]["admin-database-url"] for s in secret.values()
                     if "admin-database-url" in s.get("stringData", {}))
    assert f"@{cluster['metadata']['name']}-rw:5432/{cluster['spec']['bootstrap']['initdb']['database']}" in admin_url
    assert cluster["spec"]["superuserSecret"]["name"] in secret


def test_the_chart_values_name_each_service_consumers_as_the_topology_does() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert set(values["services"]) == set(SERVICES)
    for name, svc in values["services"].items():
        assert svc.get("consumers", []) == [c.durable for c in consumers_of(name)], name
    assert values["partitions"] == Settings().partitions


def test_the_chart_declares_nats_as_a_dependency() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (nats,) = [d for d in chart["dependencies"] if d["name"] == "nats"]
    assert nats["repository"].startswith("https://nats-io.github.io/")
    assert nats["condition"] == "nats.enabled"
