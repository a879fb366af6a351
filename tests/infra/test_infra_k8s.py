"""Kubernetes manifests: kustomizations render, every object validates against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields fail), RayCluster/RayJob against the vendored KubeRay CRD
fields, the SCC against the vendored OpenShift schema; plus the properties the deployment relies on."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from infra_helpers import REPO, TEMPLATES, configmap_refs, load_docs, load_template, render_kustomization

K8S_VERSION = "1.33.0"
HERE = Path(__file__).parent
KUBERAY = json.loads((HERE / "kuberay_v1_schema.json").read_text())
SCC = json.loads((HERE / "scc_v1_schema.json").read_text())
KUSTOMIZATIONS = {
    "collector-base": REPO / "collector" / "vector" / "base",
    "collector-openshift": REPO / "collector" / "vector" / "overlays" / "openshift",
    "consumer": REPO / "k8s" / "consumer",
    "kuberay": REPO / "k8s" / "kuberay",
    "consumer-keda": REPO / "k8s" / "consumer" / "overlays" / "keda",
    "canary": REPO / "k8s" / "canary",
    "monitoring": REPO / "k8s" / "monitoring",
}
# Custom resources of operators whose CRDs are not vendored here: tests/infra/test_infra_monitoring.py
# checks their fields instead.
UNVALIDATED_KINDS = {"PrometheusRule", "PodMonitor", "ScaledObject", "TriggerAuthentication"}
# Kustomizations without a workload of their own.
WITHOUT_PODS = {"monitoring"}
ADHOC_RAYJOB = REPO / "k8s" / "kuberay" / "rayjob.yaml"


def render(name: str) -> list[dict[str, Any]]:
    return render_kustomization(KUSTOMIZATIONS[name])


def find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def ray_pod_templates(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj["spec"]["rayClusterSpec"] if obj["kind"] == "RayJob" else obj["spec"]
    return [spec["headGroupSpec"]["template"]] + [w["template"] for w in spec.get("workerGroupSpecs", [])]


def backfill_rayjob(objs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(find(objs, "ConfigMap", "replay-job-templates")["data"]["rayjob-backfill.yaml"])


def validate(obj: dict[str, Any]) -> None:
    """Validate one object with the schema for its kind; raise on any error."""
    kind = obj["kind"]
    if kind in ("RayCluster", "RayJob"):
        jsonschema.validate(obj, KUBERAY[kind])
        for template in ray_pod_templates(obj):
            pod_template = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"}, "template": template}
            kubernetes_validate.validate(pod_template, K8S_VERSION, strict=True)
    elif kind == "SecurityContextConstraints":
        jsonschema.validate(obj, SCC)
    elif kind in UNVALIDATED_KINDS:
        return
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def all_objects() -> list[tuple[str, dict[str, Any]]]:
    out = [(name, obj) for name in KUSTOMIZATIONS for obj in render(name)]
    out += [("rayjob.yaml", obj) for obj in load_docs(ADHOC_RAYJOB)]
    out.append(("rayjob-backfill.yaml", backfill_rayjob(render("kuberay"))))
    return out


@pytest.mark.parametrize(("source", "obj"), all_objects(), ids=lambda v: v if isinstance(v, str) else v["kind"])
def test_manifest_validates_against_its_schema(source: str, obj: dict[str, Any]) -> None:
    validate(obj)


def test_every_manifest_file_is_rendered_or_validated() -> None:
    """No manifest sits outside a kustomization (and so outside these checks) by accident."""
    used: set[Path] = {ADHOC_RAYJOB, REPO / "k8s" / "kuberay" / "rayjob-backfill.yaml"}
    for d in KUSTOMIZATIONS.values():
        kust = yaml.safe_load((d / "kustomization.yaml").read_text())
        used |= {(d / r).resolve() for r in kust.get("resources", [])}
        used |= {(d / p["path"]).resolve() for p in kust.get("patches", [])}
        used |= {(d / f).resolve() for g in kust.get("configMapGenerator", []) for f in g.get("files", [])}
        used.add((d / "kustomization.yaml").resolve())
        used |= {(d / c / "kustomization.yaml").resolve() for c in kust.get("components", [])}
    on_disk = {p.resolve() for root in ("k8s", "collector") for p in (REPO / root).rglob("*.yaml")}
    on_disk.discard((REPO / "collector" / "vector" / "vector-local-test.yaml").resolve())
    assert on_disk - used == set()


def head_container(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize(
    ("kind", "mutate", "error"),
    [
        ("RayJob", lambda o: o["spec"].update(shutdownAfterJobFinish=True), "shutdownAfterJobFinish"),
        ("RayCluster", lambda o: o["spec"]["workerGroupSpecs"][0].pop("maxReplicas"), "maxReplicas"),
        ("RayCluster", lambda o: head_container(o).update(imag="x"), "imag"),
        ("CronJob", lambda o: o["spec"].update(schedul="x"), "schedul"),
        ("SecurityContextConstraints", lambda o: o.pop("volumes"), "volumes"),
    ],
)  # fmt: skip
def test_validation_rejects_unknown_or_missing_fields(kind: str, mutate: Any, error: str) -> None:
    objs = [o for _, o in all_objects() if o["kind"] == kind]
    broken = copy.deepcopy(objs[0])
    mutate(broken)
    with pytest.raises((jsonschema.ValidationError, kubernetes_validate.ValidationError), match=error):
        validate(broken)


@pytest.mark.parametrize("name", sorted(set(KUSTOMIZATIONS) - WITHOUT_PODS))
def test_references_resolve_within_the_rendered_output(name: str) -> None:
    objs = render(name)
    configmaps = {o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"}
    accounts = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
    pods = []
    for o in objs:
        if o["kind"] in ("Deployment", "DaemonSet"):
            pods.append(o["spec"]["template"]["spec"])
        elif o["kind"] == "CronJob":
            pods.append(o["spec"]["jobTemplate"]["spec"]["template"]["spec"])
        elif o["kind"] == "RayCluster":
            pods += [t["spec"] for t in ray_pod_templates(o)]
    if name == "kuberay":
        pods += [t["spec"] for t in ray_pod_templates(backfill_rayjob(objs))]
        pods += [t["spec"] for o in load_docs(ADHOC_RAYJOB) for t in ray_pod_templates(o)]
    assert pods
    for pod in pods:
        assert pod["serviceAccountName"] in accounts
        for ref in configmap_refs(pod):
            assert ref["name"] in configmaps, f"{name}: ConfigMap {ref['name']} is not rendered"


def test_collector_daemonset_mounts_the_config_and_keeps_data_dir_on_the_host() -> None:
    objs = render("collector-base")
    ds = find(objs, "DaemonSet", "vector-logs")
    pod = ds["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    (config_cm,) = [o for o in objs if o["kind"] == "ConfigMap" and "vector.yaml" in o.get("data", {})]
    config = yaml.safe_load(config_cm["data"]["vector.yaml"])
    data_mount = mounts[config["data_dir"]]
    assert volumes[data_mount["name"]]["hostPath"]["path"] == config["data_dir"]
    assert not data_mount.get("readOnly")
    assert mounts["/var/log"]["readOnly"] is True
    config_path = c["args"][c["args"].index("--config") + 1]
    assert volumes[mounts[str(Path(config_path).parent)]["name"]]["configMap"]["name"] == config_cm["metadata"]["name"]
    env_cm = find(objs, "ConfigMap", c["envFrom"][0]["configMapRef"]["name"])
    needed = set(re.findall(r"\$\{([A-Z_]+)(?::\?[^}]*)?\}", config_cm["data"]["vector.yaml"]))
    provided = set(env_cm["data"]) | {e["name"] for e in c["env"]}
    assert needed <= provided, f"the config needs {needed - provided} with no value and no default"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False


def test_openshift_overlay_adds_an_scc_that_only_the_collector_uses() -> None:
    objs = render("collector-openshift")
    scc = find(objs, "SecurityContextConstraints")
    assert scc["allowHostDirVolumePlugin"] is True
    assert scc["allowPrivilegedContainer"] is False
    assert "hostPath" in scc["volumes"]
    role = find(objs, "ClusterRole", "vector-logs-scc")
    assert role["rules"] == [
        {
            "apiGroups": ["security.openshift.io"],
            "resources": ["securitycontextconstraints"],
            "resourceNames": [scc["metadata"]["name"]],
            "verbs": ["use"],
        }
    ]
    binding = find(objs, "ClusterRoleBinding", "vector-logs-scc")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "vector-logs", "namespace": "logging"}]
    (c,) = find(objs, "DaemonSet")["spec"]["template"]["spec"]["containers"]
    assert c["securityContext"]["seLinuxOptions"] == {"type": "spc_t"}
    assert c["securityContext"]["readOnlyRootFilesystem"] is True, "the patch must merge, not replace"
    assert c["volumeMounts"], "the patch must merge, not replace"
    base_kinds = sorted((o["kind"], o["metadata"]["name"]) for o in render("collector-base"))
    assert set(base_kinds) < {(o["kind"], o["metadata"]["name"]) for o in objs}


def test_consumer_deployment() -> None:
    objs = render("consumer")
    dep = find(objs, "Deployment", "log-consumer")
    pod_meta, pod = dep["spec"]["template"]["metadata"], dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"])
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": 8080}
    assert {"containerPort": 8080, "name": "http"} in c["ports"]
    # 60 s grace: the consumer drains for 45 s and still has time to exit before SIGKILL.
    assert pod["terminationGracePeriodSeconds"] == 60
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert float(env["DRAIN_TIMEOUT_SECONDS"]) == 45  # jobs.consumer --drain-timeout
    assert env["METRICS_PORT"] == "8080"
    assert pod_meta["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }
    assert c["args"] == ["--mode", "sqs"]
    env_cm = find(objs, "ConfigMap", c["envFrom"][0]["configMapRef"]["name"])["data"]
    assert set(env_cm) == {
        "AWS_REGION",
        "S3_BUCKET_NAME",
        "TENANT_CONFIG_TABLE",
        "DELIVERY_LEDGER_TABLE",
        "DELIVERY_STATUS_TABLE",
        "CENTRAL_LOG_DISTRIBUTION_ROLE_ARN",
        "SQS_QUEUE_URL",
        "LEDGER_RETENTION_DAYS",
    }
    assert find(objs, "PodDisruptionBudget")["spec"]["selector"] == dep["spec"]["selector"]


@pytest.mark.parametrize(
    ("kustomization", "account", "template", "role", "ns_param", "sa_param"),
    [
        ("collector-base", "vector-logs", "cluster", "VectorRole", "VectorNamespace", "VectorServiceAccount"),
        ("consumer", "log-consumer", "cluster", "ProcessorRole", "ProcessorNamespace", "ProcessorServiceAccount"),
        ("consumer", "tenant-api", "cluster", "TenantApiRole", "ProcessorNamespace", "TenantApiServiceAccount"),
        ("kuberay", "log-replay", "replay", "ReplayRole", "ReplayNamespace", "ReplayServiceAccount"),
    ],
)  # fmt: skip
def test_service_accounts_match_their_irsa_roles(
    kustomization: str, account: str, template: str, role: str, ns_param: str, sa_param: str
) -> None:
    """The namespace/name the IRSA trust names by default is the service account the manifests create,
    and its role annotation has the role name the template builds (<project>-<cluster>-<kind>)."""
    sa = find(render(kustomization), "ServiceAccount", account)
    cfn = load_template(TEMPLATES[template])
    assert cfn["Parameters"][ns_param]["Default"] == sa["metadata"]["namespace"]
    assert cfn["Parameters"][sa_param]["Default"] == sa["metadata"]["name"]
    role_name_pattern = cfn["Resources"][role]["Properties"]["RoleName"]["Fn::Sub"]
    regex = re.escape(role_name_pattern).replace(r"\$\{ProjectName\}", "multi-tenant-logging")
    regex = regex.replace(r"\$\{ClusterName\}", "[a-z0-9-]+")
    arn = sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(rf"arn:aws:iam::\d{{12}}:role/{regex}", arn), arn


def test_raycluster_autoscales_workers_between_min_and_max() -> None:
    rc = find(render("kuberay"), "RayCluster")
    spec = rc["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    (workers,) = spec["workerGroupSpecs"]
    assert 0 <= workers["minReplicas"] <= workers.get("replicas", 0) <= workers["maxReplicas"]
    assert workers["maxReplicas"] > workers["minReplicas"]


def ray_version_of_image() -> str:
    text = (REPO / "containers" / "Containerfile.ray").read_text()
    (version,) = re.findall(r"^ARG RAY_VERSION=(\S+)$", text, re.MULTILINE)
    assert re.search(r"^FROM \S*rayproject/ray:\$\{RAY_VERSION\}", text, re.MULTILINE)
    return version


@pytest.mark.parametrize("which", ["adhoc", "backfill"])
def test_rayjobs_run_the_replay_and_clean_up(which: str) -> None:
    objs = render("kuberay")
    job = load_docs(ADHOC_RAYJOB)[0] if which == "adhoc" else backfill_rayjob(objs)
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["ttlSecondsAfterFinished"] > 0
    argv = shlex.split(spec["entrypoint"])
    assert argv[0] == "log-replay"  # the console script the Ray image installs with the package
    assert argv[argv.index("--since") + 1] == "26h" and argv[argv.index("--until") + 1] == "1h"
    # A one-off replay names its tenant; the scheduled backfill covers every enabled tenant in the table.
    assert ("--tenant" if which == "adhoc" else "--all-tenants") in argv
    assert "generateName" in job["metadata"], "created repeatedly: the name must be generated"
    # Same cluster shape as the long-lived RayCluster, and the Ray version of the image.
    rc = find(objs, "RayCluster")["spec"]
    assert spec["rayClusterSpec"] == rc
    assert rc["rayVersion"] == ray_version_of_image()


def test_backfill_cronjob_creates_the_rayjob_template() -> None:
    objs = render("kuberay")
    cron = find(objs, "CronJob")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"][0] == "create"
    (filename,) = [a.split("=", 1)[1] for a in c["args"] if a.startswith("--filename=")]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volume = {v["name"]: v for v in pod["volumes"]}[mounts[str(Path(filename).parent)]]
    cm = find(objs, "ConfigMap", volume["configMap"]["name"])
    assert backfill_rayjob(objs)["kind"] == "RayJob"
    assert Path(filename).name in cm["data"]
    # The launcher may create RayJobs in its namespace, and that is all.
    role = find(objs, "Role", "replay-launcher")
    assert role["rules"] == [{"apiGroups": ["ray.io"], "resources": ["rayjobs"], "verbs": ["create"]}]
    binding = find(objs, "RoleBinding", "replay-launcher")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]
    launcher = find(objs, "ServiceAccount", pod["serviceAccountName"])
    assert "annotations" not in launcher["metadata"], "the launcher needs no AWS role"


def _quantity_mib(q: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "Ti": 1024 * 1024}
    for suffix, factor in units.items():
        if q.endswith(suffix):
            return float(q[: -len(suffix)]) * factor
    return float(q) / 1048576


@pytest.mark.parametrize("which", ["raycluster", "rayjob", "backfill"])
def test_replay_workers_are_what_the_cluster_can_grow_to(which: str) -> None:
    """The head's REPLAY_WORKERS (the driver's --workers) is the worker group's maxReplicas times the workers
    one worker pod holds, by the CPU and memory each worker asks Ray for."""
    from pipeline.memory import DEFAULT_BUDGET_MIB
    from pipeline.replay.workers import worker_options

    objs = render("kuberay")
    obj = {
        "raycluster": lambda: find(objs, "RayCluster"),
        "rayjob": lambda: load_docs(ADHOC_RAYJOB)[0],
        "backfill": lambda: backfill_rayjob(objs),
    }[which]()
    spec = obj["spec"]["rayClusterSpec"] if obj["kind"] == "RayJob" else obj["spec"]
    head = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = int({e["name"]: e["value"] for e in head.get("env", [])}["REPLAY_WORKERS"])
    assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    opts = worker_options(DEFAULT_BUDGET_MIB)
    per_pod_total = 0
    for group in spec["workerGroupSpecs"]:
        requests = group["template"]["spec"]["containers"][0]["resources"]["requests"]
        by_cpu = int(float(requests["cpu"]) // opts["num_cpus"])
        # Ray keeps about 30 % of a node's memory for its object store.
        by_memory = int(_quantity_mib(requests["memory"]) * 0.7 // (opts["memory"] / 1048576))
        per_pod_total += group["maxReplicas"] * min(by_cpu, by_memory)
    assert workers == per_pod_total


def test_backfill_writes_its_report_to_the_reports_prefix_of_the_central_bucket() -> None:
    job = backfill_rayjob(render("kuberay"))
    args = shlex.split(job["spec"]["entrypoint"])
    assert args[args.index("--report") + 1] == "s3://{bucket}/reports/"
