"""The tenant API (CONTRACTS.md §9) over real HTTP: uvicorn on a loopback port, the tenant table in the moto
server. Requests are signed with the contract's recipe written out in tests/support/tenant_api.py. Every test
works on tenants of its own in a table of the module's own, read back with plain DynamoDB calls.
"""

from __future__ import annotations

import io
import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from boto3.dynamodb.types import TypeDeserializer

from devstack.provision import LocalEnvironment, create_nonce_table, create_tenant_table
from pipeline.admin.preflight import Preflight
from pipeline.admin.store import TenantStore
from pipeline.api.app import create_app
from pipeline.api.auth import ApiKey, KeyRing, KeyScope
from pipeline.api.nonces import DynamoNonces
from pipeline.logs import JsonFormatter
from tests.support.tenant_api import ApiClient, contract_headers, serving

pytestmark = pytest.mark.integration

KEY = "k3y-" + uuid.uuid4().hex  # random per run: a test that finds it anywhere found a leak
# The key a rotation brings in, live beside KEY, and a read-only key.
NEXT_KEY = "n3xt-" + uuid.uuid4().hex
READ_KEY = "r3ad-" + uuid.uuid4().hex
KEYS = KeyRing([ApiKey("ops-1", KEY, KeyScope.ADMIN), ApiKey("ops-2", NEXT_KEY, KeyScope.ADMIN),
                ApiKey("dashboard", READ_KEY, KeyScope.READ)])  # fmt: skip
ROLE = "arn:aws:iam::111111111111:role/CustomerLogDistribution-{}"


def cloudwatch(tenant: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": "cloudwatch",
        "log_distribution_role_arn": ROLE.format(tenant),
        "target_region": "us-east-1",
        "log_group_name": f"/logs/{tenant}",
        **extra,
    }


class Api:
    def __init__(self, client: ApiClient, env: LocalEnvironment, table: str, log: io.StringIO, nonces: str) -> None:
        self.client, self.env, self.table, self.log, self.nonces = client, env, table, log, nonces
        self.next_client = ApiClient(client.base_url, NEXT_KEY, "ops-2")
        self.reader = ApiClient(client.base_url, READ_KEY, "dashboard")

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
    nonce_table = f"nonces-api-{uuid.uuid4().hex[:8]}"
    create_nonce_table(module_aws.client("dynamodb"), nonce_table)
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.INFO)
    store = TenantStore(table, module_aws.client("dynamodb"), actor="api:test")
    nonces = DynamoNonces(nonce_table, module_aws.client("dynamodb"))
    app = create_app(KEYS, store, Preflight(module_aws.central_role_arn), nonces=nonces)
    try:
        with serving(app) as url:
            yield Api(ApiClient(url, KEY, "ops-1"), module_aws, table, log, nonce_table)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def test_crud_round_trip(api: Api) -> None:
    t = tenant()
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
          "bucket_name": f"{t}-logs"}  # fmt: skip
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
    mine = [a for a in audit if a["tenant_id"] == t]
    assert [a["action"] for a in mine] == ["created", "updated", "replaced", "created", "deleted"]
    assert mine[1]["changed"] == ["desired_logs", "enabled"]
    assert mine[1]["before"]["enabled"] is True and mine[1]["after"]["enabled"] is False
    assert all(a["actor"] == "api:ops-1" for a in mine)  # the key id, never the key


def test_pagination_walks_every_tenant_once(api: Api) -> None:
    mine = sorted(tenant() for _ in range(7))
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
    t = tenant()
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


def _unsigned_variants(client: ApiClient, path: str, body: bytes) -> dict[str, dict[str, Any]]:
    def signed(**kw: Any) -> dict[str, str]:
        kw.setdefault("key_id", client.key_id)
        kw.setdefault("host", client.host)
        kw.setdefault("content_type", "application/json")
        return contract_headers(kw.pop("key", client.key), "PUT", kw.pop("path", path), body, **kw)

    good = signed()
    now = int(time.time())
    return {
        "wrong key": signed(key="another-key-of-16+chars"),
        "unknown key id": signed(key_id="nobody"),
        "another key's id": signed(key_id="ops-2"),
        # A few seconds past the 300 s window: the server's clock reads a moment later than ours.
        "stale timestamp": signed(timestamp=now - 305),
        "future timestamp": signed(timestamp=now + 305),
        "body changed after signing": good,  # sent with another body below
        "signature for another path": signed(path=path + "x"),
        "signed for another host": signed(host="api.example"),
        "signed for another content type": signed(content_type="text/plain"),
        "signed with an If-Match not sent": signed(if_match='"v1"'),
        "no Authorization": {k: v for k, v in good.items() if k != "Authorization"},
        "no X-Timestamp": {k: v for k, v in good.items() if k != "X-Timestamp"},
        "no X-Nonce": {k: v for k, v in good.items() if k != "X-Nonce"},
        "no X-Body-SHA256": {k: v for k, v in good.items() if k != "X-Body-SHA256"},
        "another scheme": {**good, "Authorization": good["Authorization"].replace("HMAC-SHA256", "Bearer")},
        "no key id": {**good, "Authorization": good["Authorization"].replace("ops-1:", "")},
        "short nonce": signed(nonce="0123456789abcde"),
        "nonce outside the alphabet": signed(nonce="0123456789abcdef+"),
        # Sent as UTF-8 bytes (httpx would refuse a str outside ASCII): isdigit() says True to both.
        "superscript timestamp": {**good, "X-Timestamp": "²".encode()},
        "400-digit timestamp": {**good, "X-Timestamp": "1" * 400},
        "fullwidth digits": {**good, "X-Timestamp": "１７００００００００".encode()},
        "13-digit timestamp": {**good, "X-Timestamp": "0" + str(now) + "0"},
        "negative timestamp": {**good, "X-Timestamp": "-" + str(now)},
    }


def test_every_bad_signature_answers_401_with_no_detail(api: Api) -> None:
    t = tenant()
    path = f"/tenants/{t}/deliveries/cloudwatch"
    body = json.dumps(cloudwatch(t)).encode()
    answers = {}
    for case, headers in _unsigned_variants(api.client, path, body).items():
        sent = body.replace(b"/logs/", b"/other/") if case == "body changed after signing" else body
        r = api.client.request("PUT", path, raw=sent, headers=headers, signed=False)
        answers[case] = (r.status_code, r.content)
    assert {case: status for case, (status, _) in answers.items()} == dict.fromkeys(answers, 401)
    assert len(answers) == 23
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
    t = tenant()
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
    api.client.put(f"/tenants/{t}/deliveries/cloudwatch", cloudwatch(t))
    r = api.client.get(f"/tenants/{t}/deliveries/s3-archive")
    assert r.status_code == 404 and "s3-archive" in r.json()["error"]


def test_validate_runs_the_preflight_of_a_sample_tenant(api: Api) -> None:
    acme = api.env.tenant("acme")
    item = {k: v for k, v in acme.delivery_items()[0].items() if k not in ("tenant_id", "delivery_id")}
    api.client.put("/tenants/acme/deliveries/cloudwatch", item)
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
    t = tenant()
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
