"""The tenant API (CONTRACTS.md §9) over real HTTP: uvicorn on a loopback port, the tenant table in the moto
server. Requests are signed with the contract's recipe written out in tests/support/tenant_api.py. Every test
works on tenants of its own in a table of the module's own, read back with plain DynamoDB calls.
"""

from __future__ import annotations

import io
import json
import logging
import re
import ssl
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from boto3.dynamodb.types import TypeDeserializer

from devstack.provision import LocalEnvironment, create_nonce_table, create_tenant_table
from pipeline.admin.preflight import Preflight
from pipeline.admin.store import TenantStore
from pipeline.api.app import create_app
from pipeline.api.auth import ApiKey, KeyRing, KeyScope
from pipeline.api.nonces import DynamoNonces
from pipeline.logs import JsonFormatter
from tests.support.tenant_api import ApiClient, contract_headers, self_signed_certificate, serving

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
        "clusters": ["prod-1"],
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
    assert all(a["actor"] == "api:ops-1" for a in mine)  # the key id, never the key


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


# --- Replay, scopes, the canonical string under two servers, TLS, strictness before authentication ---------


def test_a_replayed_request_is_refused(api: Api) -> None:
    t = onboarded(api)
    api.client.put(f"/tenants/{t}/deliveries/cloudwatch", cloudwatch(t))
    captured = api.client.prepare("GET", f"/tenants/{t}/deliveries")
    assert api.client.send(captured).status_code == 200
    again = api.client.send(captured)
    assert again.status_code == 401 and again.content == b'{"error":"unauthorized"}'
    # The nonce is in the table, by (key id, nonce), with a TTL past the window on both sides.
    item = api.env.client("dynamodb").get_item(
        TableName=api.nonces, Key={"nonce": {"S": f"ops-1/{captured.headers['X-Nonce']}"}}, ConsistentRead=True
    )["Item"]
    assert int(item["expires_at"]["N"]) >= time.time() + 2 * 300


def test_a_captured_delete_replayed_after_the_delivery_was_recreated_is_refused(api: Api) -> None:
    t = onboarded(api)
    path = f"/tenants/{t}/deliveries/cloudwatch"
    assert api.client.put(path, cloudwatch(t)).status_code == 201
    delete = api.client.prepare("DELETE", path)
    assert api.client.send(delete).status_code == 204
    assert api.client.put(path, cloudwatch(t, log_group_name="/logs/again")).status_code == 201
    assert api.client.send(delete).status_code == 401
    stored = api.stored(t, "cloudwatch")
    assert stored is not None and stored["log_group_name"] == "/logs/again"


def test_a_captured_put_replayed_after_a_fix_does_not_roll_it_back(api: Api) -> None:
    t = onboarded(api)
    path = f"/tenants/{t}/deliveries/cloudwatch"
    put = api.client.prepare("PUT", path, cloudwatch(t, log_group_name="/logs/typo"))
    assert api.client.send(put).status_code == 201
    assert api.client.patch(path, {"log_group_name": f"/logs/{t}"}).status_code == 200
    assert api.client.send(put).status_code == 401
    stored = api.stored(t, "cloudwatch")
    assert stored is not None and stored["log_group_name"] == f"/logs/{t}"


def test_changing_host_content_type_or_if_match_breaks_the_signature(api: Api) -> None:
    t = onboarded(api)
    path = f"/tenants/{t}/deliveries/cloudwatch"
    etag = api.client.put(path, cloudwatch(t)).headers["etag"]
    changes: dict[str, dict[str, str]] = {
        "Host": {"Host": "api.example"},
        "Content-Type": {"Content-Type": "application/json; charset=utf-8"},
        "If-Match": {"If-Match": '"another"'},
    }
    for name, change in changes.items():
        # Each one a fresh signed request: the nonce is not what refuses it.
        req = api.client.prepare("PATCH", path, {"enabled": False}, headers={"If-Match": etag})
        req.headers.update(change)
        assert api.client.send(req).status_code == 401, name
    # Unchanged, the same kind of request goes through.
    assert api.client.patch(path, {"enabled": False}, headers={"If-Match": etag}).status_code == 200
    # A header the signature covers, sent twice, is refused: which copy was signed is not for a route to guess.
    req = api.client.prepare("GET", path)
    r = httpx.request("GET", api.client.base_url + path, timeout=30,
                      headers=[*req.headers.items(), ("X-Nonce", req.headers["X-Nonce"])])  # fmt: skip
    assert r.status_code == 401


def test_a_read_key_reads_and_cannot_write_and_two_admin_keys_are_live(api: Api) -> None:
    t = onboarded(api)
    path = f"/tenants/{t}/deliveries/cloudwatch"
    assert api.client.put(path, cloudwatch(t)).status_code == 201
    assert api.next_client.patch(path, {"enabled": False}).status_code == 200  # the rotation's new key
    assert api.reader.get(path).status_code == 200
    assert api.reader.get(f"/tenants/{t}/deliveries").status_code == 200
    for r in [
        api.reader.put(path, cloudwatch(t, log_group_name="/logs/reader")),
        api.reader.patch(path, {"enabled": True}),
        api.reader.delete(path),
        api.reader.post(f"{path}/validate"),  # the preflight writes into the tenant's account
        api.reader.put(f"/tenants/{t}/deliveries/s3", {"type": "s3"}),
    ]:
        assert (r.status_code, r.content) == (403, b'{"error":"forbidden"}')
    stored = api.stored(t, "cloudwatch")
    assert stored is not None and stored["enabled"] is False and stored["log_group_name"] == f"/logs/{t}"
    assert api.stored(t, "s3") is None
    audit = [json.loads(line) for line in api.log.getvalue().splitlines() if '"audit"' in line]
    # The profile and the delivery by the first key, the change by the second.
    assert [a["actor"] for a in audit if a["tenant_id"] == t] == ["api:ops-1", "api:ops-1", "api:ops-2"]


def _api_gateway_event(signed: Any, raw_path: str, host: str) -> dict[str, Any]:
    """What API Gateway (HTTP API, payload 2.0) hands the Lambda: the path decoded, the query as sent."""
    from urllib.parse import unquote

    path, _, query = raw_path.partition("?")
    body = signed.content.decode()
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query,
        "headers": {k.lower(): v for k, v in {**signed.headers, "Host": host}.items()},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "api",
            "domainName": host,
            "http": {
                "method": signed.method,
                "path": unquote(path),
                "protocol": "HTTP/1.1",
                "sourceIp": "192.0.2.1",
                "userAgent": "test",
            },
            "requestId": uuid.uuid4().hex,
            "stage": "$default",
            "time": "04/Dec/2026:12:00:00 +0000",
            "timeEpoch": int(time.time() * 1000),
        },
        "body": body,
        "isBase64Encoded": False,
    }


def test_the_same_signed_request_passes_under_uvicorn_and_under_mangum(api: Api) -> None:
    from mangum import Mangum

    from pipeline.api.nonces import MemoryNonces

    t = onboarded(api)
    # Percent-encoded characters the routes see decoded ("cloud%77atch" is "cloudwatch"), an encoded
    # segment character ("%7E" is "~") and a query in no order: what a client signs is what it sends.
    sent = f"/tenants/{t}/deliveries/cloud%77atch?z=1&a=%7E&a=b+c"
    # Two servers over one table, each remembering its own nonces: the one request goes to both.
    store = TenantStore(api.table, api.env.client("dynamodb"), actor="api:test")
    host = "tenant-api.example.com"
    lambda_app = create_app(KEYS, store, None, nonces=MemoryNonces())
    handler = Mangum(lambda_app, lifespan="off")
    client = ApiClient(api.client.base_url, KEY, "ops-1")
    with serving(create_app(KEYS, store, None, nonces=MemoryNonces())) as url:
        uv = ApiClient(url, KEY, "ops-1")
        for method, body in [("PUT", cloudwatch(t)), ("GET", None)]:
            # Signed once, for the Host both servers are reached by (a proxy's name, sent as the Host header).
            signed = client.prepare(method, sent, body, headers={"Host": host})
            over_http = uv.send(signed)
            assert over_http.status_code in (200, 201), over_http.text
            answer = handler(_api_gateway_event(signed, sent, host), None)
            assert answer["statusCode"] == 200, answer
            assert json.loads(answer["body"])["log_group_name"] == f"/logs/{t}"
            # Under Lambda a replay is refused as well.
            assert handler(_api_gateway_event(signed, sent, host), None)["statusCode"] == 401


def test_the_api_serves_https_with_a_mounted_certificate(api: Api, tmp_path: Any) -> None:
    cert, key = self_signed_certificate(tmp_path)
    store = TenantStore(api.table, api.env.client("dynamodb"), actor="api:test")
    with serving(create_app(KEYS, store, None), ssl_certfile=cert, ssl_keyfile=key) as url:
        assert url.startswith("https://")
        client = ApiClient(url, KEY, "ops-1", verify=ssl.create_default_context(cafile=cert))  # that one only
        t = onboarded(api)
        assert client.put(f"/tenants/{t}/deliveries/cloudwatch", cloudwatch(t)).status_code == 201
        assert client.get(f"/tenants/{t}/deliveries/cloudwatch").status_code == 200
        # Plain HTTP to the same port gets no answer from the API.
        with pytest.raises(httpx.HTTPError):
            httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5)


def test_deep_or_duplicate_key_bodies_answer_400_never_500(api: Api) -> None:
    t = onboarded(api)
    path = f"/tenants/{t}/deliveries/cloudwatch"
    item = json.dumps(cloudwatch(t))
    cases = {
        "100k nested arrays": b"[" * 100_000 + b"]" * 100_000,
        "33 nested objects": b'{"a":' * 33 + b"1" + b"}" * 33,
        "unclosed nesting": b"{" * 100_000,
        "duplicate type": item[:-1].encode() + b', "type": "s3"}',
        "duplicate nested key": b'{"type": "cloudwatch", "desired_logs": [{"a": 1, "a": 2}]}',
        "NaN": b'{"type": NaN}',
        "4,301 digits": b'{"enabled": ' + b"1" * 4301 + b"}",
        "not UTF-8": b'{"type": "\xff\xfe"}',
    }
    for case, raw in cases.items():
        r = api.client.put(path, None, raw=raw)
        assert r.status_code == 400, (case, r.status_code, r.text[:200])
        assert set(r.json()["fields"]) == {"body"}, case
    # A type that is no string (found by tests/faults/test_api_strictness.py): named, not a 500.
    for odd in ([], {}, 1, True):
        r = api.client.put(path, {"type": odd})
        assert r.status_code == 400 and "type" in r.json()["fields"], (odd, r.text)
    # Brackets inside strings (escaped quotes too) are text, not nesting.
    r = api.client.put(path, None, raw=b'{"x": "\\"' + b"[" * 100 + b'"}')
    assert r.status_code == 400 and "body" not in r.json()["fields"], r.text
    assert api.stored(t, "cloudwatch") is None
    # 32 levels are not refused for their depth (a delivery then says what is wrong with it).
    r = api.client.put(path, None, raw=b'{"desired_logs": ' + b"[" * 31 + b"]" * 31 + b"}")
    assert r.status_code == 400 and "body" not in r.json()["fields"]
    # Over the limit: 413, before the signature is even looked at.
    assert api.client.put(path, None, raw=b" " * (256 * 1024 + 1), signed=False).status_code == 413


def test_the_lambda_handler_reads_its_keys_from_the_secret_and_its_nonces_from_the_table(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the stack deploys: pipeline.api.lambda_handler, configured by the environment alone."""
    from pipeline.api import lambda_handler

    doc = {"keys": [{"id": "ops-1", "secret": KEY, "scope": "admin"}]}
    arn = api.env.client("secretsmanager").create_secret(Name=f"api-{uuid.uuid4().hex[:6]}",
                                                         SecretString=json.dumps(doc))["ARN"]  # fmt: skip
    for name, value in {**api.env.env, "TENANT_CONFIG_TABLE": api.table, "API_NONCE_TABLE": api.nonces,
                        "TENANT_API_KEY_SECRET_ARN": arn}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("TENANT_API_KEY", raising=False)
    monkeypatch.setattr(lambda_handler, "_handler", None)
    t = onboarded(api)
    api.client.put(f"/tenants/{t}/deliveries/cloudwatch", cloudwatch(t))
    host = "abc123.execute-api.us-east-1.amazonaws.com"
    signed = api.client.prepare("GET", f"/tenants/{t}/deliveries/cloudwatch", headers={"Host": host})
    answer = lambda_handler.handler(_api_gateway_event(signed, signed.path, host), None)
    assert answer["statusCode"] == 200, answer
    assert lambda_handler.handler(_api_gateway_event(signed, signed.path, host), None)["statusCode"] == 401
    item = api.env.client("dynamodb").get_item(
        TableName=api.nonces, Key={"nonce": {"S": f"ops-1/{signed.headers['X-Nonce']}"}}, ConsistentRead=True
    )
    assert "Item" in item


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


def test_hostile_delivery_options_answer_400_naming_the_field_in_the_validators_words(api: Api) -> None:
    """CONTRACTS.md §3's delivery options: the same refusals, in the same words, as the CLI and the delivery path."""
    t = onboarded(api)
    path = f"/tenants/{t}/deliveries/cloudwatch"
    s3 = {**cloudwatch(t), "type": "s3", "bucket_name": "acme-logs"}
    del s3["log_group_name"]
    cases = [
        (cloudwatch(t, include=["(a)\\1"]), "include", "backreferences and lookaround"),
        (cloudwatch(t, exclude=["(?<=x)y"]), "exclude", "unbounded"),
        (cloudwatch(t, include="x" * 600), "include", "longer than 512 characters"),
        (cloudwatch(t, include=[1, 2]), "include", "must be a list of regular expressions"),
        (cloudwatch(t, groups=["Databases"]), "groups", "unknown group 'Databases'"),
        (cloudwatch(t, retention_days=8), "retention_days", "is not a retention CloudWatch accepts"),
        (cloudwatch(t, retention_days="seven"), "retention_days", "is not a retention CloudWatch accepts"),
        (cloudwatch(t, retention_days=True), "retention_days", "is not a retention CloudWatch accepts"),
        (cloudwatch(t, format="parquet"), "format", "only s3 deliveries have a format"),
        ({**s3, "retention_days": 7}, "retention_days", "only cloudwatch deliveries have a retention"),
        ({**s3, "format": "csv"}, "format", "'csv' is not a format: choose original or parquet"),
    ]
    for body, field, words in cases:
        r = api.client.put(path, body)
        assert r.status_code == 400, (body, r.text)
        assert words in r.json()["fields"][field], r.json()
    assert api.stored(t, "cloudwatch") is None
    # The good ones are stored as given, with the groups in the table's spelling.
    good = cloudwatch(t, include=["ERROR|WARN"], exclude=["healthz"], retention_days=14, groups=["api"])
    r = api.client.put(path, good)
    assert r.status_code == 201, r.text
    stored = api.stored(t, "cloudwatch")
    assert stored is not None and stored["groups"] == ["API"] and stored["retention_days"] == 14
    got = api.client.get(path)
    assert got.status_code == 200 and got.json()["retention_days"] == 14 and got.json()["include"] == ["ERROR|WARN"]
