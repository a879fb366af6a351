"""Monitoring (k8s/monitoring), the canary (k8s/canary) and the KEDA overlay (k8s/consumer/overlays/keda).

promtool is a Go binary and installs from no registry we use, so the rules are checked here instead: every
PromQL expression of the PrometheusRule and of the Grafana dashboard is parsed by promql-parser (unknown
functions, wrong argument types and unbalanced syntax fail), every metric it names is one the consumer
exports (read from pipeline/consumer/metrics.py) or one of the exporters listed below, every alert has a
`for`, a severity and a runbook section, and the dashboard shows every metric the consumer exports.
"""

from __future__ import annotations

import ast
import copy
import json
import re
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from infra_helpers import REPO, TEMPLATES, load_docs, load_template
from test_infra_k8s import find, render

from pipeline.tenants import deserialize, parse_delivery

METRICS_PY = REPO / "pipeline" / "consumer" / "metrics.py"
DASHBOARD = REPO / "k8s" / "monitoring" / "dashboards" / "log-delivery.json"
RUNBOOK = (REPO / "docs" / "RUNBOOK.md").read_text()
DEPLOY = (REPO / "docs" / "DEPLOY.md").read_text()
CANARY_ITEM = REPO / "k8s" / "canary" / "tenant-item.json"
CANARY_TENANT = "log-canary"

# Metrics the rules and the dashboard may use that the consumer does not export, by who exports them.
EXPORTERS = {
    # prometheus-community cloudwatch_exporter, configured as docs/DEPLOY.md shows (checked below).
    "cloudwatch_exporter": {
        "aws_sqs_approximate_number_of_messages_visible_maximum",
        "aws_sqs_approximate_number_of_messages_not_visible_maximum",
        "aws_sqs_approximate_age_of_oldest_message_maximum",
    },
    "kube-state-metrics": {"kube_job_failed"},
    # kube-state-metrics' custom-resource metrics with the RayJob configuration in docs/DEPLOY.md.
    "kube-state-metrics custom resources": {"kube_customresource_rayjob_status"},
    # Ray's system metrics, scraped by the PodMonitor log-replay-ray.
    "ray": {"ray_node_network_receive_speed", "ray_node_network_send_speed", "ray_actors", "ray_cluster_active_nodes"},
}
EXTERNAL = set().union(*EXPORTERS.values())
# Labels Prometheus adds to every series a PodMonitor scrapes.
TARGET_LABELS = {"namespace", "pod", "container", "endpoint", "job", "instance"}
SEVERITIES = {"warning", "critical"}
DURATION = re.compile(r"(\d+[smhdw])+")


# --- what the consumer exports --------------------------------------------------------------------


def declared_metrics() -> dict[str, tuple[str, set[str]]]:
    """{name: (type, label names)} of every metric pipeline/consumer/metrics.py declares, from its source."""
    out: dict[str, tuple[str, set[str]]] = {}
    for node in ast.walk(ast.parse(METRICS_PY.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args):
            continue
        if node.func.id in ("Counter", "Gauge", "Histogram"):
            name = ast.literal_eval(node.args[0])
            labels: set[str] = set()
            if len(node.args) > 2 and isinstance(node.args[2], ast.List | ast.Tuple):
                labels = set(ast.literal_eval(node.args[2]))
            for kw in node.keywords:
                if kw.arg == "labelnames":
                    labels = set(ast.literal_eval(kw.value))
            out[name] = (node.func.id, labels)
    return out


def exposed_names(name: str, kind: str) -> set[str]:
    """The series names Prometheus stores for one declared metric (prometheus_client's exposition)."""
    if kind == "Counter":
        return {f"{name}_total"}
    if kind == "Histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return {name}


DECLARED = declared_metrics()
CONSUMER = {series: (name, labels) for name, (kind, labels) in DECLARED.items() for series in exposed_names(name, kind)}


def test_the_source_parse_finds_what_the_registry_holds() -> None:
    from pipeline.consumer.metrics import Metrics

    families = {f.name: f.type for f in Metrics().registry.collect()}
    assert {n: k.lower() for n, (k, _) in DECLARED.items()} == families
    assert len(DECLARED) >= 14


# --- PromQL ---------------------------------------------------------------------------------------


def selectors(expr: Any) -> list[Any]:
    """Every VectorSelector in a parsed expression."""
    if isinstance(expr, promql_parser.VectorSelector):
        return [expr]
    if isinstance(expr, promql_parser.MatrixSelector):
        return [expr.vector_selector]
    if isinstance(expr, promql_parser.Call):
        return [s for a in expr.args for s in selectors(a)]
    if isinstance(expr, promql_parser.AggregateExpr):
        return selectors(expr.expr) + (selectors(expr.param) if expr.param is not None else [])
    if isinstance(expr, promql_parser.BinaryExpr):
        return selectors(expr.lhs) + selectors(expr.rhs)
    if isinstance(expr, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr):
        return selectors(expr.expr)
    return []


def matcher_labels(selector: Any) -> set[str]:
    return {m.name for m in selector.matchers.matchers}


def check_expression(expr: str) -> set[str]:
    """Parse one expression; return the metric names it reads. Raise on anything wrong."""
    parsed = promql_parser.parse(expr)
    names = set()
    for s in selectors(parsed):
        assert s.name, f"a selector without a metric name: {expr}"
        names.add(s.name)
        assert s.name in CONSUMER or s.name in EXTERNAL, f"{s.name} is neither the consumer's nor a listed exporter's"
        if s.name in CONSUMER:
            family, labels = CONSUMER[s.name]
            allowed = labels | TARGET_LABELS | ({"le"} if s.name.endswith("_bucket") else set())
            unknown = matcher_labels(s) - allowed
            assert not unknown, f"{family} has no label {unknown}"
    return names


def check_rule(rule: dict[str, Any]) -> set[str]:
    assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
    assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"])
    assert DURATION.fullmatch(rule["for"]), f"{rule['alert']}: `for` is missing or not a duration"
    assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
    annotations = rule["annotations"]
    assert annotations["summary"] and annotations["description"]
    anchor = annotations["runbook"].removeprefix("docs/RUNBOOK.md#")
    assert anchor in runbook_anchors(), f"{rule['alert']}: RUNBOOK.md has no section #{anchor}"
    return check_expression(rule["expr"])


def runbook_anchors() -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    headings = re.findall(r"^#{1,6} (.+)$", RUNBOOK, re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def prometheus_rule() -> dict[str, Any]:
    return find(render("monitoring"), "PrometheusRule")


def alerts() -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in prometheus_rule()["spec"]["groups"] for r in g["rules"]}


@pytest.mark.parametrize("name", sorted(alerts()))
def test_alert_rule_is_valid(name: str) -> None:
    check_rule(alerts()[name])


def test_rule_groups_are_well_formed() -> None:
    rule = prometheus_rule()
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    assert len({g["name"] for g in groups}) == len(groups)
    names = [r["alert"] for g in groups for r in g["rules"]]
    assert len(set(names)) == len(names)


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda r: r.update(expr="rate(logdelivery_objects_total[5m]"), "parenthes"),
        (lambda r: r.update(expr="nosuch(logdelivery_objects_total)"), "unknown function"),
        (lambda r: r.update(expr="rate(logdelivery_objects_total)"), "matrix"),
        (lambda r: r.update(expr="logdelivery_objects_failed_total > 0"), "neither"),
        (lambda r: r.update(expr='logdelivery_objects_total{queue="x"} > 0'), "no label"),
        (lambda r: r.pop("for"), "for"),
        (lambda r: r["labels"].update(severity="page"), "page"),
        (lambda r: r["annotations"].update(runbook="docs/RUNBOOK.md#nowhere"), "nowhere"),
    ],
)  # fmt: skip
def test_the_rule_check_can_fail(mutate: Any, error: str) -> None:
    broken = copy.deepcopy(alerts()["LogDeliveryTenantFailing"])
    mutate(broken)
    with pytest.raises((AssertionError, ValueError, KeyError), match=error):
        check_rule(broken)


def test_the_alerts_cover_what_the_delivery_needs_watched() -> None:
    by_metric: dict[str, set[str]] = {}
    for name, rule in alerts().items():
        for metric in check_expression(rule["expr"]):
            by_metric.setdefault(metric, set()).add(name)
    assert "LogDeliveryDLQNotEmpty" in by_metric["aws_sqs_approximate_number_of_messages_visible_maximum"]
    assert "-delivery-dlq" in alerts()["LogDeliveryDLQNotEmpty"]["expr"]
    assert "LogDeliveryQueueBacklog" in by_metric["aws_sqs_approximate_age_of_oldest_message_maximum"]
    assert "by (tenant)" in alerts()["LogDeliveryTenantFailing"]["expr"]
    assert "LogDeliveryConsumerNotPolling" in by_metric["logdelivery_last_poll_timestamp_seconds"]
    assert {"LogReplayJobFailed", "LogReplayRayJobFailed"} <= by_metric["kube_job_failed"] | by_metric[
        "kube_customresource_rayjob_status"
    ]
    canary = by_metric["logdelivery_last_delivery_timestamp_seconds"]
    assert {"LogDeliveryCanaryLate", "LogDeliveryCanaryMissing"} <= canary
    for name in canary:
        assert f'tenant="{CANARY_TENANT}"' in alerts()[name]["expr"]


def test_the_canary_alert_waits_longer_than_the_collector_batches_and_matches_the_lambda_alarm() -> None:
    parsed = promql_parser.parse(alerts()["LogDeliveryCanaryLate"]["expr"])
    threshold = parsed.rhs.val
    config = yaml.safe_load(
        next(o for o in render("collector-base") if o["kind"] == "ConfigMap" and "vector.yaml" in o.get("data", {}))[
            "data"
        ]["vector.yaml"]
    )
    (sink,) = [s for s in config["sinks"].values() if s["type"] == "aws_s3"]
    assert threshold >= 2 * sink["batch"]["timeout_secs"], "one late object alone must not page"
    params = load_template(TEMPLATES["lambda"])["Parameters"]
    assert params["CanaryLateMinutes"]["Default"] * 60 == threshold


def test_exporters_metric_names_follow_the_exporter_configuration_in_deploy_md() -> None:
    """cloudwatch_exporter names a metric aws_<namespace>_<MetricName in snake case>_<statistic>."""
    names = set()
    for block in re.findall(r"```yaml\n(.*?)```", DEPLOY, re.S):
        doc = yaml.safe_load(block)
        for m in (doc or {}).get("metrics", []) if isinstance(doc, dict) else []:
            if "aws_namespace" in m:
                ns = m["aws_namespace"].split("/")[1].lower()
                snake = re.sub(r"(?<!^)(?=[A-Z])", "_", m["aws_metric_name"]).lower()
                names |= {f"aws_{ns}_{snake}_{s.lower()}" for s in m["aws_statistics"]}
    assert names >= EXPORTERS["cloudwatch_exporter"]
    assert "rayjob_status" in DEPLOY and "CustomResourceStateMetrics" in DEPLOY


# --- the dashboard --------------------------------------------------------------------------------


def dashboard_expressions() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    # Grafana's own variables are not PromQL: give them values a query would have.
    return [e.replace("$__rate_interval", "5m").replace("$tenant", ".*") for e in exprs]


def test_dashboard_loads_and_every_expression_parses() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(set(ids)) == len(ids)
    assert {v["name"] for v in dash["templating"]["list"]} >= {"datasource", "tenant"}
    for expr in dashboard_expressions():
        check_expression(expr)


def test_dashboard_shows_every_metric_the_consumer_exports() -> None:
    used = set().union(*(check_expression(e) for e in dashboard_expressions()))
    missing = {name for name, (kind, _) in DECLARED.items() if not exposed_names(name, kind) & used}
    assert not missing, f"no panel shows {sorted(missing)}"
    # Queue depth and the replay's throughput, from the exporters.
    assert "aws_sqs_approximate_number_of_messages_visible_maximum" in used
    assert "ray_node_network_receive_speed" in used


def test_dashboard_ships_as_a_configmap_for_grafana() -> None:
    cm = find(render("monitoring"), "ConfigMap", "log-delivery-dashboard")
    assert json.loads(cm["data"]["log-delivery.json"]) == json.loads(DASHBOARD.read_text())
    kust = yaml.safe_load((REPO / "k8s" / "monitoring" / "kustomization.yaml").read_text())
    assert kust["generatorOptions"]["labels"] == {"grafana_dashboard": "1"}


# --- scraping -------------------------------------------------------------------------------------


def test_consumer_podmonitor_scrapes_the_consumers_metrics_port() -> None:
    pm = find(render("monitoring"), "PodMonitor", "log-consumer")
    dep = find(render("consumer"), "Deployment", "log-consumer")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items())
    assert pm["metadata"]["namespace"] == dep["metadata"]["namespace"]
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}[endpoint["port"]]
    assert str(port) == {e["name"]: e.get("value") for e in c["env"]}["METRICS_PORT"]
    assert endpoint["path"] == "/metrics"
    # Several samples inside the no-poll alert's window.
    no_poll = promql_parser.parse(alerts()["LogDeliveryConsumerNotPolling"]["expr"]).rhs.val
    assert int(endpoint["interval"].rstrip("s")) * 3 <= no_poll


def test_ray_podmonitor_scrapes_the_ray_pods_metrics_port() -> None:
    from test_infra_security import RAY_HEAD_PORTS, RAY_POD_LABELS

    pm = find(render("monitoring"), "PodMonitor", "log-replay-ray")
    ns = find(render("kuberay"), "Namespace")["metadata"]["name"]
    assert pm["spec"]["namespaceSelector"] == {"matchNames": [ns]}
    for labels in RAY_POD_LABELS.values():
        assert all(labels.get(k) == v for k, v in pm["spec"]["selector"]["matchLabels"].items())
    (endpoint,) = pm["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in RAY_HEAD_PORTS.values()


def test_monitoring_objects_carry_the_label_prometheus_selects() -> None:
    objs = [o for o in render("monitoring") if o["kind"] in ("PodMonitor", "PrometheusRule")]
    assert len(objs) == 3
    assert len({o["metadata"]["labels"]["release"] for o in objs}) == 1


# --- the canary -----------------------------------------------------------------------------------


def test_canary_namespace_is_collected_and_its_tenant_item_delivers_its_application() -> None:
    objs = render("canary")
    ns = find(objs, "Namespace")
    assert ns["metadata"]["name"] == CANARY_TENANT
    assert ns["metadata"]["labels"]["logging.tenant.io/deliver"] == "true"
    dep = find(objs, "Deployment", "log-canary")
    pod = dep["spec"]["template"]
    app = pod["metadata"]["labels"]["app.kubernetes.io/name"]
    item = deserialize(json.loads(CANARY_ITEM.read_text()))
    delivery = parse_delivery(item, strict=True)
    assert item["tenant_id"] == CANARY_TENANT and delivery.enabled
    assert item["desired_logs"] == {app}
    assert dep["spec"]["replicas"] == 1
    (c,) = pod["spec"]["containers"]
    assert "sleep(60)" in c["command"][-1], "one line a minute"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert not c.get("ports"), "the canary serves nothing"


def test_canary_script_runs() -> None:
    c = find(render("canary"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    script = c["command"][-1].replace("time.sleep(60)", "break")
    compile(script, "canary", "exec")


# --- KEDA -----------------------------------------------------------------------------------------

# The aws-sqs-queue trigger's metadata fields (keda.sh/docs, scalers/aws-sqs).
SQS_TRIGGER_FIELDS = {"queueURL", "queueURLFromEnv", "queueLength", "activationQueueLength", "awsRegion",
                      "awsEndpoint", "scaleOnInFlight", "scaleOnDelayed", "identityOwner"}  # fmt: skip


def test_keda_overlay_adds_only_the_scaler_to_the_consumer() -> None:
    base = {(o["kind"], o["metadata"]["name"]) for o in render("consumer")}
    overlay = render("consumer-keda")
    assert {(o["kind"], o["metadata"]["name"]) for o in overlay} - base == {
        ("ScaledObject", "log-consumer"),
        ("TriggerAuthentication", "log-consumer-sqs"),
    }
    assert {o["metadata"].get("namespace") for o in overlay if o["kind"] != "Namespace"} == {"log-delivery"}


def test_keda_scales_the_consumer_on_its_own_queue() -> None:
    objs = render("consumer-keda")
    so = find(objs, "ScaledObject")
    assert so["apiVersion"] == "keda.sh/v1alpha1"
    dep = find(objs, "Deployment", so["spec"]["scaleTargetRef"]["name"])
    assert so["spec"]["minReplicaCount"] >= dep["spec"]["replicas"]
    assert so["spec"]["maxReplicaCount"] > so["spec"]["minReplicaCount"]
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "aws-sqs-queue"
    meta = trigger["metadata"]
    assert set(meta) <= SQS_TRIGGER_FIELDS
    assert all(isinstance(v, str) for v in meta.values()), "KEDA's trigger metadata is a map of strings"
    int(meta["queueLength"])
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    env = find(objs, "ConfigMap", c["envFrom"][0]["configMapRef"]["name"])["data"]
    assert meta["queueURLFromEnv"] in env and "queueURL" not in meta
    assert meta["awsRegion"] == env["AWS_REGION"]
    auth = find(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    identity = auth["spec"]["podIdentity"]
    assert identity["provider"] == "aws"
    assert not {"roleArn", "identityOwner"} <= set(identity), "KEDA refuses both"
    assert "identityOwner" not in meta, "deprecated since KEDA 2.13: the TriggerAuthentication says whose identity"


def test_every_new_manifest_file_is_in_a_kustomization() -> None:
    for d in ("monitoring", "canary"):
        kust = yaml.safe_load((REPO / "k8s" / d / "kustomization.yaml").read_text())
        files = {Path(r).name for r in kust.get("resources", [])}
        on_disk = {p.name for p in (REPO / "k8s" / d).glob("*.yaml")} - {"kustomization.yaml"}
        assert on_disk == files
        for r in kust.get("resources", []):
            assert load_docs(REPO / "k8s" / d / r)


def test_a_tenant_backing_off_for_15_minutes_fires_its_own_alert_and_not_the_failing_one() -> None:
    """The consumer's circuits (pipeline/circuits.py) export a gauge per tenant and delivery type; a tenant
    over its own CloudWatch quota is in back-off, not failing, and the runbook says what to do."""
    rule = alerts()["LogDeliveryTenantBackingOff"]
    assert check_expression(rule["expr"]) == {"logdelivery_destinations_backing_off"}
    assert "by (tenant, delivery_type)" in rule["expr"] and rule["expr"].startswith("max")
    assert rule["for"] == "15m"
    assert CONSUMER["logdelivery_destinations_backing_off"][1] == {"tenant", "delivery_type"}
    assert 'reason!="throttled"' in alerts()["LogDeliveryTenantFailing"]["expr"]
    section = RUNBOOK.split("### LogDeliveryTenantBackingOff", 1)[1].split("\n### ", 1)[0]
    assert "quota" in section and "ThrottlingException" in section and "DLQ" in section
