"""The tenant API's deployable parts: the CloudFormation stack (Lambda behind an HTTP API, the keys in
Secrets Manager, nonces in the core stack's table) and the Kubernetes Deployment in k8s/consumer (HTTPS with
the service-ca certificate, the key file mounted from a Secret, probes, non-root, resources, reachable only
from the control plane and monitoring)."""

from __future__ import annotations

import json
from typing import Any

from infra_helpers import TEMPLATES, Resolver, load_template, split_image, template_params
from test_infra_k8s import find, render
from test_infra_security import RAY_POD_LABELS, peers, reachable_from

from pipeline.api.keys import parse_keys

PARAMS = {
    "EcrImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/log-tenant-api:1",
    "TenantConfigTableName": "tenants",
    "ApiNonceTableName": "nonces",
    "LogsKeyArn": "arn:aws:kms:us-east-1:123456789012:key/k-1",
    "CentralLogDistributionRoleArn": "arn:aws:iam::123456789012:role/CentralLogDistributionRole",
}


def resolved() -> tuple[dict[str, Any], Resolver]:
    template = load_template(TEMPLATES["tenant-api"])
    return template, Resolver(template, template_params(template, PARAMS))


def test_the_function_reads_its_key_from_the_stack_secret_and_never_holds_it() -> None:
    template, resolve = resolved()
    fn = resolve(template["Resources"]["TenantApiFunction"]["Properties"])
    env = fn["Environment"]["Variables"]
    assert env["TENANT_API_KEY_SECRET_ARN"] == "<ApiKeySecret>"
    assert "TENANT_API_KEY" not in env
    assert env["TENANT_CONFIG_TABLE"] == "tenants"
    assert env["API_NONCE_TABLE"] == "nonces"
    assert fn["ImageConfig"]["Command"] == ["pipeline.api.lambda_handler.handler"]
    secret = template["Resources"]["ApiKeySecret"]["Properties"]
    assert "SecretString" not in secret and secret["GenerateSecretString"]["PasswordLength"] >= 32
    # The generated secret is a key document the API reads: one admin key, its secret generated.
    generated = secret["GenerateSecretString"]
    doc = {**json.loads(generated["SecretStringTemplate"]), generated["GenerateStringKey"]: "x" * 48}
    assert parse_keys(json.dumps(doc), "stack").ids == ["admin-1"]


def test_the_role_reads_only_its_secret_writes_only_the_tenant_table_and_puts_nonces() -> None:
    template, resolve = resolved()
    (policy,) = resolve(template["Resources"]["TenantApiRole"]["Properties"]["Policies"])
    grants = {s["Sid"]: s for s in policy["PolicyDocument"]["Statement"]}
    assert grants["ApiKey"]["Action"] == "secretsmanager:GetSecretValue"
    assert grants["ApiKey"]["Resource"] == "<ApiKeySecret>"
    assert grants["TenantTable"]["Resource"].endswith(":table/tenants")
    # Nonces: a conditional put, nothing else (never read, never deleted by the API).
    assert grants["Nonces"]["Action"] == "dynamodb:PutItem"
    assert grants["Nonces"]["Resource"].endswith(":table/nonces")
    assert grants["PreflightFirstHop"] == {"Sid": "PreflightFirstHop", "Effect": "Allow", "Action": "sts:AssumeRole",
                                           "Resource": PARAMS["CentralLogDistributionRoleArn"]}  # fmt: skip
    actions = {a for s in grants.values() for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    assert not any(a.endswith("*") for a in actions)
    assert not {"s3:PutObject", "logs:CreateLogGroup"} & actions  # the preflight writes with the tenant's role


def test_the_http_api_proxies_every_route_to_the_function() -> None:
    template, resolve = resolved()
    res = template["Resources"]
    assert resolve(res["DefaultRoute"]["Properties"])["RouteKey"] == "$default"
    assert resolve(res["LambdaIntegration"]["Properties"])["PayloadFormatVersion"] == "2.0"
    # The service authenticates every request itself (HMAC); an authorizer would need the key too.
    assert "AuthorizationType" not in res["DefaultRoute"]["Properties"]


def test_the_deployment_is_probed_non_root_with_resources_and_reachable_only_from_named_peers() -> None:
    objs = render("consumer")
    dep = find(objs, "Deployment", "tenant-api")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert pod["serviceAccountName"] == "tenant-api"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and "memory" in c["resources"]["limits"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": 8080, "scheme": "HTTPS"}
    assert c["command"] == ["log-tenants"] and c["args"][0] == "serve"  # the image's console script
    assert {p["containerPort"] for p in c["ports"]} == {8080}
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert reachable_from(objs, "log-delivery", labels, 8080) == {"tenant-control-plane"}
    # The consumer's pods do not take API calls, and the API's pods are not the consumer's.
    consumer = find(objs, "Deployment", "log-consumer")["spec"]["template"]["metadata"]["labels"]
    assert consumer != labels


def test_the_deployment_serves_https_with_the_service_ca_certificate_and_reads_its_keys_from_a_file() -> None:
    objs = render("consumer")
    pod = find(objs, "Deployment", "tenant-api")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    args = c["args"]
    # TLS: the certificate OpenShift's service-ca writes into the Secret the Service names.
    service = find(objs, "Service", "tenant-api")
    tls_secret = service["metadata"]["annotations"]["service.beta.openshift.io/serving-cert-secret-name"]
    assert volumes["tls"]["secret"]["secretName"] == tls_secret
    tls_dir = mounts["tls"]["mountPath"]
    assert args[args.index("--tls-cert") + 1] == f"{tls_dir}/tls.crt"
    assert args[args.index("--tls-key") + 1] == f"{tls_dir}/tls.key"
    assert "--plain-http" not in args
    # The keys: a file from a Secret volume, never an environment variable.
    env = {e["name"]: e for e in c["env"]}
    assert not any("valueFrom" in e for e in c["env"]), "no secret reaches the environment"
    assert "TENANT_API_KEY" not in env and "TENANT_API_KEY_SECRET_ARN" not in env
    keys = volumes["keys"]["secret"]
    assert keys["secretName"] == "tenant-api-keys"
    assert env["TENANT_API_KEYS_FILE"]["value"] == f"{mounts['keys']['mountPath']}/{keys['items'][0]['path']}"
    for name in ("keys", "tls"):
        assert mounts[name]["readOnly"] is True
        assert volumes[name]["secret"]["defaultMode"] == 0o440  # the pod's fsGroup reads it, no one else
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsGroup"]
    # Every replica remembers nonces in the one table.
    (ref,) = c["envFrom"]
    configmap = find(objs, "ConfigMap", ref["configMapRef"]["name"])  # kustomize's hashed name
    assert configmap["data"]["API_NONCE_TABLE"].endswith("-tenant-api-nonces")


def test_the_deployment_runs_the_api_image_and_reaches_the_ray_head_s_jobs_api_with_the_token_from_a_file() -> None:
    """Redelivery requests (POST /tenants/{id}/replays) are Ray jobs: without RAY_ADDRESS, the token and a way
    through both namespaces' policies the in-cluster API answers 503 (or times out) for every one."""
    objs = render("consumer")
    pod = find(objs, "Deployment", "tenant-api")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert split_image(c["image"])[0] == "log-tenant-api"  # the image with the api extra
    (ref,) = c["envFrom"]
    config = find(objs, "ConfigMap", ref["configMapRef"]["name"])["data"]
    assert config["REPLAY_REQUEST_TABLE"].endswith("-replay-requests")
    # The head Service KubeRay creates for k8s/kuberay's RayCluster: <name>-head-svc, the dashboard's port.
    kuberay = render("kuberay")
    cluster = find(kuberay, "RayCluster")
    ns = cluster["metadata"]["namespace"]
    assert config["RAY_ADDRESS"] == f"http://{cluster['metadata']['name']}-head-svc.{ns}.svc:8265"
    head_ports = {p["name"]: p["containerPort"] for p in cluster["spec"]["headGroupSpec"]["template"]["spec"]
                  ["containers"][0]["ports"]}  # fmt: skip
    assert head_ports["dashboard"] == 8265
    # The token: a file from its own Secret (the replay namespace's cannot be mounted here), never the env.
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["RAY_AUTH_MODE"] == "token" and "RAY_AUTH_TOKEN" not in env
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    token = volumes["ray-token"]["secret"]
    assert token["secretName"] == "tenant-api-ray-token" and token["defaultMode"] == 0o440
    assert token["items"] == [{"key": "auth_token", "path": "auth_token"}]  # the key log-replay-ray-token has
    assert env["RAY_AUTH_TOKEN_PATH"] == f"{mounts['ray-token']['mountPath']}/auth_token"
    assert mounts["ray-token"]["readOnly"] is True
    # The replay namespace admits the API's pods, and only those of its namespace, to the head's 8265.
    labels = find(objs, "Deployment", "tenant-api")["spec"]["template"]["metadata"]["labels"]
    api_ns = find(objs, "Namespace")["metadata"]["name"]
    from_api = [p for p in peers(kuberay, ns, RAY_POD_LABELS["head"], 8265) if "namespaceSelector" in p
                and p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] == api_ns]  # fmt: skip
    assert from_api == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": api_ns}},
         "podSelector": {"matchLabels": labels}}
    ]  # fmt: skip
    assert api_ns not in reachable_from(kuberay, ns, RAY_POD_LABELS["head"], 6379), "the GCS stays the cluster's"
    # And the API's own egress lets it out to exactly there (plus DNS and AWS's HTTPS endpoints).
    (egress,) = [o for o in objs if o["kind"] == "NetworkPolicy" and "Egress" in o["spec"]["policyTypes"]]
    assert egress["spec"]["podSelector"] == {"matchLabels": labels}
    rules = egress["spec"]["egress"]
    to_ray = [r for r in rules if r.get("to")]
    assert to_ray == [
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                 "podSelector": {"matchLabels": {"ray.io/node-type": "head"}}}],
         "ports": [{"protocol": "TCP", "port": 8265}]}
    ]  # fmt: skip
    open_ports = {(p["protocol"], p["port"]) for r in rules if not r.get("to") for p in r["ports"]}
    assert open_ports == {("UDP", 53), ("TCP", 53), ("UDP", 5353), ("TCP", 5353), ("TCP", 443)}
