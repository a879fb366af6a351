"""Security properties of every manifest (docs/SECURITY.md): who can reach what, and Ray's token.

- Every namespace the project creates has a default-deny ingress NetworkPolicy.
- Nothing listens beyond loopback unless a NetworkPolicy limits who reaches it: for every port a pod
  serves (declared ports, Vector's API and exporter, Ray's own ports), the peers the policies let in are
  named here, and nothing else (no rule open to everyone, no IP block).
- Vector's API is on loopback and probed from inside the container; end-to-end acknowledgements are on.
- Ray token authentication is on for the RayCluster and both RayJobs, from a Secret, and nothing turns it
  off; the submitter pod runs as the replay service account, non-root, with seccomp.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from infra_helpers import load_docs
from test_infra_k8s import ADHOC_RAYJOB, KUSTOMIZATIONS, backfill_rayjob, find, render, validate

MONITORING = {"monitoring"}
OPENSHIFT_MONITORING = {"openshift-monitoring", "openshift-user-workload-monitoring"}
OPERATOR = {"kuberay-system"}
# The tenant API's namespace: its pods (and only they, test_infra_tenant_api.py) submit redelivery jobs.
TENANT_API = {"log-delivery"}
# The labels KubeRay puts on the pods it creates for a RayCluster (head and workers).
RAY_POD_LABELS = {"head": {"ray.io/is-ray-node": "yes", "ray.io/node-type": "head"},
                  "worker": {"ray.io/is-ray-node": "yes", "ray.io/node-type": "worker"}}  # fmt: skip
RAY_HEAD_PORTS = {6379: "gcs", 8265: "dashboard", 10001: "client", 8080: "metrics"}
TOKEN_SECRET = "log-replay-ray-token"
# Kustomizations that only add objects to namespaces another kustomization creates (and guards).
NAMESPACES_FROM = {"monitoring": "consumer"}


def policies(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == "NetworkPolicy"]


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels selectors are checked here: {selector}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def peers(objs: list[dict[str, Any]], namespace: str, labels: dict[str, str], port: int) -> list[dict[str, Any]]:
    """Who the NetworkPolicies of `namespace` let reach `port` of a pod with `labels`: the `from` entries of
    every ingress rule that applies, {"everyone": True} for a rule with no `from`."""
    out: list[dict[str, Any]] = []
    for p in policies(objs):
        spec = p["spec"]
        if p["metadata"]["namespace"] != namespace or "Ingress" not in spec.get("policyTypes", ["Ingress"]):
            continue
        if not selects(spec["podSelector"], labels):
            continue
        for rule in spec.get("ingress", []):
            ports = {pp["port"] for pp in rule.get("ports", [])}
            if ports and port not in ports:
                continue
            out.extend(rule.get("from") or [{"everyone": True}])
    return out


def peer_namespaces(peer: dict[str, Any], own: str) -> set[str]:
    """The namespaces a `from` entry admits: its own for a bare podSelector, else the named ones."""
    assert "everyone" not in peer, "an ingress rule without `from` admits everyone"
    assert "ipBlock" not in peer, "an IP block admits whatever sits behind it"
    if "namespaceSelector" not in peer:
        return {own}
    names = peer["namespaceSelector"].get("matchLabels", {}).get("kubernetes.io/metadata.name")
    assert names, f"a namespaceSelector must name its namespace: {peer}"
    return {names}


def reachable_from(objs: list[dict[str, Any]], namespace: str, labels: dict[str, str], port: int) -> set[str]:
    return {ns for peer in peers(objs, namespace, labels, port) for ns in peer_namespaces(peer, namespace)}


def default_deny(objs: list[dict[str, Any]], namespace: str) -> bool:
    return any(
        p["metadata"]["namespace"] == namespace
        and p["spec"]["podSelector"] == {}
        and "Ingress" in p["spec"]["policyTypes"]
        and not p["spec"].get("ingress")
        for p in policies(objs)
    )


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_every_namespace_has_default_deny_ingress(name: str) -> None:
    objs = render(name) + (render(NAMESPACES_FROM[name]) if name in NAMESPACES_FROM else [])
    namespaces = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
    assert namespaces
    for ns in namespaces:
        assert default_deny(objs, ns), f"{name}: namespace {ns} has no default-deny ingress NetworkPolicy"
    # Every namespaced object lands in a namespace the kustomization creates (so the policy covers it).
    assert {o["metadata"]["namespace"] for o in objs if "namespace" in o["metadata"]} <= namespaces


def test_default_deny_check_can_fail() -> None:
    objs = [o for o in render("consumer") if o["metadata"]["name"] != "default-deny-ingress"]
    assert not default_deny(objs, "log-delivery")


def vector(objs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, str]]:
    ds = find(objs, "DaemonSet", "vector-logs")
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap" and "vector.yaml" in o.get("data", {})]
    return ds, yaml.safe_load(cm["data"]["vector.yaml"]), ds["spec"]["template"]["metadata"]["labels"]


@pytest.mark.parametrize(("name", "monitoring"), [("collector-base", MONITORING),
                                                  ("collector-openshift", OPENSHIFT_MONITORING)])  # fmt: skip
def test_collector_api_stays_on_loopback_and_only_monitoring_scrapes_metrics(name: str, monitoring: set[str]) -> None:
    objs = render(name)
    ds, config, labels = vector(objs)
    ns = ds["metadata"]["namespace"]
    api = config.get("api", {})
    assert not api.get("enabled") or api["address"].startswith("127.0.0.1:"), "Vector's API has no authentication"
    api_port = int(api.get("address", "127.0.0.1:8686").rsplit(":", 1)[1])
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    assert api_port not in {p["containerPort"] for p in c.get("ports", [])}
    assert not ds["spec"]["template"]["spec"].get("hostNetwork"), "on the host network, loopback is the node's"
    for probe in ("livenessProbe", "readinessProbe"):
        assert "exec" in c[probe], f"{probe}: the kubelet cannot reach a loopback API over HTTP"
        assert f"127.0.0.1/{api_port}" in " ".join(c[probe]["exec"]["command"])
    assert reachable_from(objs, ns, labels, api_port) == set()
    # Everything else that listens (the Prometheus exporter, any declared port) is reachable only from monitoring.
    listening = {int(s["address"].rsplit(":", 1)[1]) for s in config["sinks"].values() if "address" in s}
    listening |= {p["containerPort"] for p in c.get("ports", [])}
    assert listening == {9598}
    assert reachable_from(objs, ns, labels, 9598) == monitoring
    (sink,) = [s for s in config["sinks"].values() if s["type"] == "aws_s3"]
    assert sink["acknowledgements"] == {"enabled": True}


def test_consumer_metrics_port_is_reachable_only_from_monitoring() -> None:
    objs = render("consumer")
    dep = find(objs, "Deployment", "log-consumer")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    ports = {p["containerPort"] for p in c["ports"]}
    assert ports == {8080}  # /metrics and /healthz (METRICS_PORT); the consumer serves nothing else
    assert reachable_from(objs, "log-delivery", labels, 8080) == MONITORING


def ray_objects() -> list[tuple[str, dict[str, Any]]]:
    objs = render("kuberay")
    return [("raycluster", find(objs, "RayCluster")), ("adhoc", load_docs(ADHOC_RAYJOB)[0]),
            ("backfill", backfill_rayjob(objs))]  # fmt: skip


def cluster_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["rayClusterSpec"] if obj["kind"] == "RayJob" else obj["spec"]


@pytest.mark.parametrize(("which", "obj"), ray_objects(), ids=lambda v: v if isinstance(v, str) else "")
def test_ray_token_authentication_is_on_from_a_secret(which: str, obj: dict[str, Any]) -> None:
    spec = cluster_spec(obj)
    assert spec["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}
    major, minor, *_ = (int(x) for x in spec["rayVersion"].split("."))
    assert (major, minor) >= (2, 52), "token authentication needs Ray 2.52 or newer"
    templates = [spec["headGroupSpec"]["template"]] + [w["template"] for w in spec["workerGroupSpecs"]]
    if obj["kind"] == "RayJob":
        templates.append(obj["spec"]["submitterPodTemplate"])
    for t in templates:
        for c in t["spec"]["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            assert "RAY_AUTH_MODE" not in env and "RAY_AUTH_TOKEN" not in env, "KubeRay sets both from authOptions"


@pytest.mark.parametrize(("which", "obj"), ray_objects()[1:], ids=lambda v: v if isinstance(v, str) else "")
def test_rayjob_submitter_runs_as_the_replay_account_non_root_with_seccomp(which: str, obj: dict[str, Any]) -> None:
    assert obj["spec"]["submissionMode"] == "K8sJobMode"
    template = obj["spec"]["submitterPodTemplate"]
    pod = template["spec"]
    head = obj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert pod["serviceAccountName"] == head["serviceAccountName"] == "log-replay"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "submitter"}, "template": template})


@pytest.mark.parametrize(("which", "obj"), ray_objects(), ids=lambda v: v if isinstance(v, str) else "")
def test_ray_dashboard_and_gcs_are_reachable_only_from_the_replay_namespace(which: str, obj: dict[str, Any]) -> None:
    objs = render("kuberay")
    ns = find(objs, "Namespace")["metadata"]["name"]
    spec = cluster_spec(obj)
    # The dashboard listens on the pod network (the submitter and the operator need it): policies must hold.
    assert spec["headGroupSpec"]["rayStartParams"].get("dashboard-host") == "0.0.0.0"
    head_ports = {p["containerPort"] for c in spec["headGroupSpec"]["template"]["spec"]["containers"]
                  for p in c.get("ports", [])}  # fmt: skip
    assert head_ports <= set(RAY_HEAD_PORTS)
    for port, what in RAY_HEAD_PORTS.items():
        allowed = {ns}
        if what == "dashboard":
            # The KubeRay operator follows RayJobs through the Jobs API, the tenant API submits requests there,
            # each with the token.
            allowed |= OPERATOR | TENANT_API
        if what == "metrics":
            allowed |= MONITORING
        assert reachable_from(objs, ns, RAY_POD_LABELS["head"], port) == allowed, what
    # Workers: Ray's ports from the namespace; the operator never talks to them.
    assert reachable_from(objs, ns, RAY_POD_LABELS["worker"], 12345) == {ns}
    # Any other pod in the namespace (the backfill launcher) takes no connection at all.
    assert reachable_from(objs, ns, {"app.kubernetes.io/name": "log-replay-backfill"}, 8265) == set()


def test_the_reachability_check_sees_an_open_rule() -> None:
    objs = render("consumer")
    wide = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "open", "namespace": "log-delivery"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"], "ingress": [{}]}}  # fmt: skip
    with pytest.raises(AssertionError, match="admits everyone"):
        reachable_from([*objs, wide], "log-delivery", {"app.kubernetes.io/name": "log-consumer"}, 8080)
