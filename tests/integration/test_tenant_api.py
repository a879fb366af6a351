"""The tenant API (CONTRACTS.md §9) over real HTTP: uvicorn on a loopback port, the tenant table in the moto
server. Requests are signed with the contract's recipe written out in tests/support/tenant_api.py. Every test
works on tenants of its own in a table of the module's own, read back with plain DynamoDB calls.
"""

from __future__ import annotations

import io
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer

from devstack.provision import LocalEnvironment, create_tenant_table
from pipeline.admin.preflight import Preflight
from pipeline.admin.store import TenantStore
from pipeline.api.app import create_app
from pipeline.logs import JsonFormatter
from tests.support.tenant_api import ApiClient, contract_headers, serving

pytestmark = pytest.mark.integration

KEY = "k3y-" + uuid.uuid4().hex  # random per run: a test that finds it anywhere found a leak
ROLE = "arn:aws:iam::111111111111:role/CustomerLogDistribution-{}"


def cloudwatch(tenant: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "cloudwatch",
        "log_distribution_role_arn": ROLE.format(tenant),
        "target_region": "us-east-1",
        "log_group_name": f"/logs/{tenant}",
        "clusters": ["prod-1"],
        **extra,
    }


class Api:
    def __init__(self, client: ApiClient, env: LocalEnvironment, table: str, log: io.StringIO) -> None:
        self.client, self.env, self.table, self.log = client, env, table, log

    def stored(self, tenant: str, delivery: str) -> dict[str, Any] | None:
        raw = (
            self.env.client("dynamodb")
            .get_item(
                TableName=self.table,
                Key={"tenant_id": {"S": tenant}, "delivery_id": {"S": delivery}},
                ConsistentRead=True,
            )
            .get("Item")
        )
        de = TypeDeserializer()
        return {k: de.deserialize(v) for k, v in raw.items()} if raw else None


@pytest.fixture(scope="module")
def api(module_aws: LocalEnvironment) -> Iterator[Api]:
    table = f"tenants-api-{uuid.uuid4().hex[:8]}"
    create_tenant_table(module_aws.client("dynamodb"), table)
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    store = TenantStore(table, module_aws.client("dynamodb"), actor="api:test")
    app = create_app(KEY, store, Preflight(module_aws.central_role_arn))
    try:
        with serving(app) as url:
            yield Api(ApiClient(url, KEY), module_aws, table, log)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def onboarded(api: Api, account: str = "111111111111") -> str:
    """A new tenant with a profile (CONTRACTS.md §3): what every delivery of it is checked against."""
    t = tenant()
    r = api.client.put(f"/tenants/{t}", {"accounts": [account]})
    assert r.status_code == 201, r.text
    return t


def test_crud_round_trip(api: Api) -> None:
    t = onboarded(api)
    path = f"/tenants/{t}/deliveries/cloudwatch"
    created = api.client.put(path, cloudwatch(t, desired_logs=["Payment-Service"]))
    assert created.status_code == 201, created.text
    item = created.json()
    assert item["tenant_id"] == t and item["delivery_id"] == "cloudwatch"
    assert item["desired_logs"] == ["payment-service"]  # §3: case-insensitive, stored as the reader reads it
    assert item["enabled"] is True
    assert item["created_at"] == item["updated_at"]
    assert created.headers["etag"]
    # What DynamoDB holds is what the API answered.
    assert api.stored(t, "cloudwatch") == item

    got = api.client.get(path)
    assert got.status_code == 200 and got.json() == item
    assert got.headers["etag"] == created.headers["etag"]
    listed = api.client.get(f"/tenants/{t}/deliveries").json()
    assert listed == {"tenant_id": t, "deliveries": [item], "invalid": []}

    time.sleep(0.01)
    patched = api.client.patch(path, {"enabled": False, "desired_logs": None})
    assert patched.status_code == 200, patched.text
    after = patched.json()
    assert after["enabled"] is False and "desired_logs" not in after
    assert after["created_at"] == item["created_at"] and after["updated_at"] > item["updated_at"]
    assert patched.headers["etag"] != created.headers["etag"]

    replaced = api.client.put(path, cloudwatch(t, log_group_name="/logs/other", tenant_id=t))
    assert replaced.status_code == 200 and replaced.json()["log_group_name"] == "/logs/other"
    assert replaced.json()["created_at"] == item["created_at"]

    s3 = {"type": "s3", "log_distribution_role_arn": ROLE.format(t), "target_region": "eu-west-1",
          "bucket_name": f"{t}-logs", "clusters": []}  # fmt: skip
    assert api.client.put(f"/tenants/{t}/deliveries/s3-archive", s3).json()["bucket_prefix"] == "ROSA/cluster-logs/"
    assert [d["delivery_id"] for d in api.client.get(f"/tenants/{t}/deliveries").json()["deliveries"]] == [
        "cloudwatch",
        "s3-archive",
    ]

    deleted = api.client.delete(path)
    assert deleted.status_code == 204
    assert api.client.get(path).status_code == 404
    assert api.stored(t, "cloudwatch") is None
    assert api.stored(t, "s3-archive") is not None

    # Every change is one audit line naming the actor, the change and before/after, never the key.
    audit = [json.loads(line) for line in api.log.getvalue().splitlines() if '"audit"' in line]
    assert [a["action"] for a in audit if a["tenant_id"] == t and a["delivery_id"] == "_tenant"] == ["created"]
    mine = [a for a in audit if a["tenant_id"] == t and a["delivery_id"] != "_tenant"]
    assert [a["action"] for a in mine] == ["created", "updated", "replaced", "created", "deleted"]
    assert mine[1]["changed"] == ["desired_logs", "enabled"]
    assert mine[1]["before"]["enabled"] is True and mine[1]["after"]["enabled"] is False
    assert all(a["actor"] == "api:test" for a in mine)


def test_pagination_walks_every_tenant_once(api: Api) -> None:
    mine = sorted(onboarded(api) for _ in range(7))
    for t in mine:
        assert api.client.put(f"/tenants/{t}/deliveries/cloudwatch", cloudwatch(t)).status_code == 201
    seen: list[str] = []
    pages = 0
    token: str | None = None
    while True:
        path = "/tenants?limit=3" + (f"&next={token}" if token else "")
        page = api.client.get(path)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["tenants"]) <= 3
        seen += body["tenants"]
        pages += 1
        token = body["next"]
        if token is None:
            break
    assert pages >= 3
    assert len(seen) == len(set(seen)) and seen == sorted(seen)
    assert set(mine) <= set(seen)
    assert api.client.get("/tenants?limit=0").status_code == 400
    assert api.client.get("/tenants?next=%25%25").status_code == 400


def test_a_concurrent_update_is_refused_by_if_match(api: Api) -> None:
    t = onboarded(api)
    path = f"/tenants/{t}/deliveries/cloudwatch"
    etag = api.client.put(path, cloudwatch(t)).headers["etag"]
    # Two operators read the same version; the first write wins, the second is refused, not merged.
    first = api.client.patch(path, {"desired_logs": ["frontend"]}, headers={"If-Match": etag})
    assert first.status_code == 200, first.text
    second = api.client.patch(path, {"enabled": False}, headers={"If-Match": etag})
    assert second.status_code == 412
    put_stale = api.client.put(path, cloudwatch(t, enabled=False), headers={"If-Match": etag})
    assert put_stale.status_code == 412
    assert api.client.delete(path, headers={"If-Match": etag}).status_code == 412
    stored = api.stored(t, "cloudwatch")
    assert stored is not None and stored["enabled"] is True and stored["desired_logs"] == ["frontend"]
    # With the current ETag the change goes through.
    assert api.client.patch(path, {"enabled": False}, headers={"If-Match": first.headers["etag"]}).status_code == 200


def _unsigned_variants(key: str, path: str, body: bytes) -> dict[str, dict[str, str]]:
    good = contract_headers(key, "PUT", path, body)
    now = int(time.time())
    return {
        "wrong key": contract_headers("another-key-of-16+chars", "PUT", path, body),
        # A few seconds past the 300 s window: the server's clock reads a moment later than ours.
        "stale timestamp": contract_headers(key, "PUT", path, body, timestamp=now - 305),
        "future timestamp": contract_headers(key, "PUT", path, body, timestamp=now + 305),
        "body changed after signing": good,  # sent with another body below
        "signature for another path": contract_headers(key, "PUT", path + "x", body),
        "no Authorization": {k: v for k, v in good.items() if k != "Authorization"},
        "no X-Timestamp": {k: v for k, v in good.items() if k != "X-Timestamp"},
        "no X-Body-SHA256": {k: v for k, v in good.items() if k != "X-Body-SHA256"},
        "another scheme": {**good, "Authorization": good["Authorization"].replace("HMAC-SHA256", "Bearer")},
    }


def test_every_bad_signature_answers_401_with_no_detail(api: Api) -> None:
    t = tenant()
    path = f"/tenants/{t}/deliveries/cloudwatch"
    body = json.dumps(cloudwatch(t)).encode()
    answers = {}
    for case, headers in _unsigned_variants(KEY, path, body).items():
        sent = body.replace(b"/logs/", b"/other/") if case == "body changed after signing" else body
        r = api.client.request("PUT", path, raw=sent, headers=headers, signed=False)
        answers[case] = (r.status_code, r.content)
    assert {case: status for case, (status, _) in answers.items()} == dict.fromkeys(answers, 401)
    assert len({content for _, content in answers.values()}) == 1  # the same answer whatever was wrong
    assert api.stored(t, "cloudwatch") is None
    # Reads, unknown paths and the preflight are behind the signature too.
    for method, p in [("GET", "/tenants"), ("GET", f"/tenants/{t}/deliveries"), ("GET", "/nope"),
                      ("POST", f"{path}/validate"), ("DELETE", path)]:  # fmt: skip
        assert api.client.request(method, p, signed=False).status_code == 401
    # Only these two are open.
    assert api.client.get("/healthz", signed=False).json() == {"ok": True}
    assert api.client.get("/openapi.json", signed=False).status_code == 200


def test_a_malformed_item_answers_400_naming_every_bad_field(api: Api) -> None:
    t = onboarded(api)
    path = f"/tenants/{t}/deliveries/cloudwatch"
    bad = {
        "type": "cloudwatch",
        "log_distribution_role_arn": "arn:aws:iam::12:role/x",
        "target_region": "mars",
        "enabled": "perhaps",
        "bucket_name": "not-for-cloudwatch",
        "colour": "blue",
        "tenant_id": "someone-else",
    }
    r = api.client.put(path, bad)
    assert r.status_code == 400
    fields = r.json()["fields"]
    assert set(fields) == {
        "log_distribution_role_arn",
        "target_region",
        "enabled",
        "log_group_name",  # required and missing
        "bucket_name",  # a field of S3 deliveries
        "colour",  # not a §3 field
        "tenant_id",  # does not match the path
        "clusters",  # required for a new delivery
    }
    assert api.stored(t, "cloudwatch") is None
    assert api.client.put(path, raw=b"[1, 2]", body=None).status_code == 400
    assert api.client.put(path, raw=b"{not json", body=None).json()["fields"] == {"body": "not valid JSON"}
    assert api.client.put(f"/tenants/{t}/deliveries/Bad_Id", cloudwatch(t)).json()["fields"].keys() == {"delivery_id"}
    # A PATCH that would make the item invalid is refused whole.
    assert api.client.put(path, cloudwatch(t)).status_code == 201
    r = api.client.patch(path, {"target_region": "nowhere", "log_group_name": None})
    assert r.status_code == 400 and set(r.json()["fields"]) == {"target_region", "log_group_name"}
    stored = api.stored(t, "cloudwatch")
    assert stored is not None and stored["target_region"] == "us-east-1"


def test_an_unknown_tenant_or_delivery_answers_404(api: Api) -> None:
    t = tenant()
    for method, path in [
        ("GET", f"/tenants/{t}/deliveries"),
        ("GET", f"/tenants/{t}/deliveries/cloudwatch"),
        ("DELETE", f"/tenants/{t}/deliveries/cloudwatch"),
        ("POST", f"/tenants/{t}/deliveries/cloudwatch/validate"),
    ]:
        r = api.client.request(method, path)
        assert r.status_code == 404, (method, path)
        assert t in r.json()["error"]
    assert api.client.patch(f"/tenants/{t}/deliveries/cloudwatch", {"enabled": False}).status_code == 404
    assert api.client.get(f"/tenants/{t}").status_code == 404
    api.client.put(f"/tenants/{t}", {"accounts": ["111111111111"]})
    api.client.put(f"/tenants/{t}/deliveries/cloudwatch", cloudwatch(t))
    r = api.client.get(f"/tenants/{t}/deliveries/s3-archive")
    assert r.status_code == 404 and "s3-archive" in r.json()["error"]


def test_validate_runs_the_preflight_of_a_sample_tenant(api: Api) -> None:
    acme = api.env.tenant("acme")
    item = {k: v for k, v in acme.delivery_items()[0].items() if k not in ("tenant_id", "delivery_id")}
    api.client.put("/tenants/acme", {"accounts": [acme.account_id]})
    assert api.client.put("/tenants/acme/deliveries/cloudwatch", {**item, "clusters": ["prod-1"]}).status_code == 201
    r = api.client.post("/tenants/acme/deliveries/cloudwatch/validate")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["ok"] is True
    assert [(s["step"], s["status"]) for s in body["steps"]] == [
        ("central_role", "ok"),
        ("tenant_role", "ok"),
        ("cloudwatch", "ok"),
    ]


def test_the_key_is_in_no_log_error_or_openapi_document(api: Api) -> None:
    t = onboarded(api)
    path = f"/tenants/{t}/deliveries/cloudwatch"
    answers = [
        api.client.put(path, cloudwatch(t)),
        api.client.put(path, {"type": "kinesis"}),
        api.client.get(f"/tenants/{tenant()}/deliveries"),
        api.client.request("PUT", path, raw=b"{}", headers=contract_headers(KEY, "PUT", path, b"x"), signed=False),
        api.client.patch(path, {"enabled": False}, headers={"If-Match": '"stale"'}),
        api.client.get("/openapi.json", signed=False),
    ]
    assert [a.status_code for a in answers] == [201, 400, 404, 401, 412, 200]
    texts = {f"answer {i}": a.text + json.dumps(dict(a.headers)) for i, a in enumerate(answers)}
    texts["logs"] = api.log.getvalue()
    assert '"audit"' in texts["logs"]  # the changes were logged
    for where, text in texts.items():
        assert KEY not in text, where
    doc = answers[-1].json()
    assert doc["components"]["securitySchemes"]["hmac"]["type"] == "apiKey"
    # The request body is described by the §3 field table.
    put_body = doc["paths"]["/tenants/{tenant_id}/deliveries/{delivery_id}"]["put"]["requestBody"]
    props = put_body["content"]["application/json"]["schema"]["properties"]
    assert {"type", "log_distribution_role_arn", "target_region", "log_group_name", "bucket_name"} <= set(props)


# -- tenant profiles and account binding (CONTRACTS.md §3, §9) -----------------------------------------------


def forge(api: Api, item: dict[str, Any]) -> None:
    """An item written straight into the table, past every tool (a dishonest or mistaken writer)."""
    from boto3.dynamodb.types import TypeSerializer

    ser = TypeSerializer()
    api.env.client("dynamodb").put_item(TableName=api.table, Item={k: ser.serialize(v) for k, v in item.items()})


def test_put_tenant_creates_a_profile_with_a_generated_external_id(api: Api) -> None:
    t = tenant()
    created = api.client.put(f"/tenants/{t}", {"accounts": ["111111111111"]})
    assert created.status_code == 201, created.text
    profile = created.json()
    external_id = profile["external_id"]
    assert re.fullmatch(r"[A-Za-z0-9_+=,.@:/-]{32,128}", external_id)
    assert profile["accounts"] == ["111111111111"] and profile["tenant_id"] == t
    assert "delivery_id" not in profile
    assert api.stored(t, "_tenant") == {**profile, "delivery_id": "_tenant"}
    # Another tenant, another id: each customer's role trusts its own.
    assert api.client.put(f"/tenants/{tenant()}", {"accounts": ["111111111111"]}).json()["external_id"] != external_id
    got = api.client.get(f"/tenants/{t}")
    assert got.status_code == 200
    assert got.json() == {"tenant_id": t, "profile": profile, "legacy": False, "profile_error": None,
                          "deliveries": [], "invalid": [], "unbound_clusters": []}  # fmt: skip
    api.client.put(f"/tenants/{t}/deliveries/cloudwatch", cloudwatch(t))
    assert api.client.get(f"/tenants/{t}").json()["deliveries"] == ["cloudwatch"]
    # Accounts can change; the id stays and is never taken from a body.
    more = api.client.put(f"/tenants/{t}", {"accounts": ["111111111111", "222222222222"]})
    assert more.status_code == 200 and more.json()["external_id"] == external_id
    chosen = api.client.put(f"/tenants/{t}", {"accounts": ["111111111111"], "external_id": "x" * 40})
    assert chosen.status_code == 400 and set(chosen.json()["fields"]) == {"external_id"}
    assert (
        api.client.put(f"/tenants/{t}", {"accounts": ["111111111111"], "external_id": external_id}).status_code == 200
    )
    for bad in ({"accounts": []}, {"accounts": ["12345"]}, {}, {"accounts": ["111111111111"], "colour": "x"}):
        r = api.client.put(f"/tenants/{tenant()}", bad)
        assert r.status_code == 400, bad
        assert set(r.json()["fields"]) <= {"accounts", "colour"} and r.json()["fields"]
    # The profile is never a delivery: no delivery route reads, changes or deletes it.
    for method in ("GET", "DELETE"):
        assert api.client.request(method, f"/tenants/{t}/deliveries/_tenant").status_code in (400, 404)
    assert api.client.put(f"/tenants/{t}/deliveries/_tenant", cloudwatch(t)).status_code == 400
    assert api.stored(t, "_tenant") is not None


def test_a_delivery_outside_the_tenants_accounts_or_of_a_legacy_tenant_answers_400_naming_the_field(
    api: Api,
) -> None:
    t = onboarded(api, "111111111111")
    path = f"/tenants/{t}/deliveries/cloudwatch"
    # globex's role and log group, named by another tenant: the confused deputy.
    theirs = "arn:aws:iam::222222222222:role/CustomerLogDistribution-globex"
    r = api.client.put(path, cloudwatch(t, log_distribution_role_arn=theirs, log_group_name="/logs/globex"))
    assert r.status_code == 400
    assert r.json()["fields"] == {
        "log_distribution_role_arn": f"account 222222222222 is not one of the accounts of tenant '{t}' (111111111111)"
    }
    assert api.stored(t, "cloudwatch") is None
    key = "arn:aws:kms:us-east-1:222222222222:key/k"
    s3 = {"type": "s3", "log_distribution_role_arn": ROLE.format(t), "target_region": "us-east-1",
          "bucket_name": "globex-logs", "kms_key_arn": key, "clusters": []}  # fmt: skip
    r = api.client.put(f"/tenants/{t}/deliveries/s3", s3)
    assert r.status_code == 400 and set(r.json()["fields"]) == {"kms_key_arn"}
    # A tenant without a profile (its deliveries written before profiles) takes no new one.
    legacy = tenant()
    forge(api, {"tenant_id": legacy, "delivery_id": "cloudwatch", **cloudwatch(legacy)})
    assert api.client.get(f"/tenants/{legacy}").json()["legacy"] is True
    r = api.client.put(f"/tenants/{legacy}/deliveries/s3", {**s3, "kms_key_arn": None})
    assert r.status_code == 400 and "has no profile" in r.json()["fields"]["tenant_id"]


def test_validate_refuses_a_row_forged_past_the_api(api: Api) -> None:
    t = onboarded(api, "111111111111")
    theirs = "arn:aws:iam::222222222222:role/CustomerLogDistribution-globex"
    forge(api, {"tenant_id": t, "delivery_id": "stolen", **cloudwatch(t, log_distribution_role_arn=theirs)})
    r = api.client.post(f"/tenants/{t}/deliveries/stolen/validate")
    assert r.status_code == 400
    assert "account 222222222222 is not one of the accounts" in r.json()["error"]
    assert api.client.get(f"/tenants/{t}").json()["invalid"][0]["delivery_id"] == "stolen"
