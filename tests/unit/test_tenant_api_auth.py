"""Request signing (CONTRACTS.md §9) and the one field table behind the API models."""

from __future__ import annotations

import pytest

from pipeline.admin.schema import DeliveryBody, DeliveryOut
from pipeline.api import auth
from pipeline.api.nonces import NONCE_TTL_S, MemoryNonces
from pipeline.tenants import FIELDS, TYPE_REQUIRED, DeliveryType, delivery_item, parse_delivery
from tests.support.tenant_api import contract_headers

KEY = "a-pre-shared-key-of-some-length"
NOW = 1_700_000_000
RING = auth.KeyRing([auth.ApiKey("ops", KEY, auth.KeyScope.ADMIN), auth.ApiKey("dash", "r" * 20, auth.KeyScope.READ)])
TARGET = "/tenants/acme/deliveries/cw?x=1"
NONCE = "0123456789abcdef"
EMPTY = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_the_worked_example_of_the_contract_byte_for_byte() -> None:
    """CONTRACTS.md §9: key `k`, id `local`, GET /tenants/acme/deliveries, no query, X-Timestamp 1700000000,
    X-Nonce 0123456789abcdef, Host api.example, no Content-Type, no If-Match, empty body."""
    expected_string = (
        "GET\n/tenants/acme/deliveries\n\n1700000000\n0123456789abcdef\napi.example\n\n\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    expected_auth = "HMAC-SHA256 local:d0db35395c169a154d39be6a991f064eabda2c4aadf455c501804e60fb5ea3d4"
    assert (
        auth.string_to_sign("GET", "/tenants/acme/deliveries", "", "1700000000", NONCE, "api.example", "", "", EMPTY)
        == expected_string
    )
    assert auth.mac("k", expected_string) == expected_auth.rsplit(":", 1)[1]
    # The client side (the demo's and any Python caller's signer) ...
    signed = auth.sign("k", "GET", "/tenants/acme/deliveries", host="api.example", now=NOW, nonce=NONCE)
    assert signed == {"X-Timestamp": "1700000000", "X-Nonce": NONCE, "X-Body-SHA256": EMPTY,
                      "Authorization": expected_auth}  # fmt: skip
    # ... the tests' own recipe, written from the contract ...
    assert contract_headers("k", "GET", "/tenants/acme/deliveries", b"", NOW, host="api.example", nonce=NONCE) == signed
    # ... and the server, which accepts exactly that.
    headers = {k.lower(): v for k, v in signed.items()} | {"host": "api.example"}
    ring = auth.KeyRing.single("k")
    verified = auth.verify(ring, "GET", "/tenants/acme/deliveries", "", headers, b"", clock=lambda: NOW)
    assert verified is not None and verified.key.key_id == "local" and verified.nonce == NONCE


def signed_headers(**overrides: str) -> dict[str, str]:
    h = auth.sign(RING.get("ops") or KEY, "PUT", TARGET, b"{}", host="api.example", content_type="application/json",
                  if_match='"v1"', now=NOW, nonce=NONCE)  # fmt: skip
    out = {k.lower(): v for k, v in h.items()} | {"host": "API.example", "content-type": "application/json",
                                                   "if-match": '"v1"'}  # fmt: skip
    out.update(overrides)
    return out


def check(headers: dict[str, str], method: str = "PUT", target: str = TARGET, body: bytes = b"{}",
          skew: float = 0) -> auth.Verified | None:  # fmt: skip
    path, _, query = target.partition("?")
    return auth.verify(RING, method, auth.canonical_path(path), auth.canonical_query(query), headers, body,
                       clock=lambda: NOW + skew)  # fmt: skip


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_a_signature_within_the_window_verifies(skew: int) -> None:
    verified = check(signed_headers(), skew=skew)
    assert verified is not None and verified.key.key_id == "ops" and verified.timestamp == NOW


@pytest.mark.parametrize(
    ("changes", "method", "target", "body", "skew"),
    [
        ({}, "PUT", TARGET, b"{}", 301),
        ({}, "PUT", TARGET, b"{}", -301),
        ({}, "GET", TARGET, b"{}", 0),
        ({}, "PUT", "/tenants/acme/deliveries/cw?x=2", b"{}", 0),
        ({}, "PUT", "/tenants/acme/deliveries/cw?x=1&y=", b"{}", 0),
        ({}, "PUT", "/tenants/acme/deliveries/cx?x=1", b"{}", 0),
        ({}, "PUT", TARGET, b"{ }", 0),
        ({"host": "api.example:443"}, "PUT", TARGET, b"{}", 0),
        ({"content-type": "application/json; charset=utf-8"}, "PUT", TARGET, b"{}", 0),
        ({"if-match": '"v2"'}, "PUT", TARGET, b"{}", 0),
        ({"if-match": ""}, "PUT", TARGET, b"{}", 0),
        ({"x-nonce": "0123456789abcdeF"}, "PUT", TARGET, b"{}", 0),
        ({"x-timestamp": "soon"}, "PUT", TARGET, b"{}", 0),
        ({"x-timestamp": "²"}, "PUT", TARGET, b"{}", 0),
        ({"x-timestamp": "１７００００００００"}, "PUT", TARGET, b"{}", 0),
        ({"x-timestamp": "1" * 400}, "PUT", TARGET, b"{}", 0),
        ({"x-timestamp": "0001700000000"}, "PUT", TARGET, b"{}", 0),  # 13 digits, the same number
        ({"x-timestamp": "+1700000000"}, "PUT", TARGET, b"{}", 0),
        ({"x-timestamp": " 1700000000"}, "PUT", TARGET, b"{}", 0),
        ({"x-nonce": "0123456789abcde"}, "PUT", TARGET, b"{}", 0),  # 15
        ({"x-nonce": "a" * 129}, "PUT", TARGET, b"{}", 0),
        ({"x-nonce": "0123456789abcdef/"}, "PUT", TARGET, b"{}", 0),
        ({"x-nonce": "０123456789abcdef"}, "PUT", TARGET, b"{}", 0),
        ({"authorization": "HMAC-SHA256"}, "PUT", TARGET, b"{}", 0),
        ({"authorization": "HMAC-SHA256 ops"}, "PUT", TARGET, b"{}", 0),
        ({"x-body-sha256": ""}, "PUT", TARGET, b"{}", 0),
        ({"host": ""}, "PUT", TARGET, b"{}", 0),
    ],
)  # fmt: skip
def test_anything_else_does_not(changes: dict[str, str], method: str, target: str, body: bytes, skew: int) -> None:
    assert check(signed_headers(**changes), method, target, body, skew) is None


def test_another_key_or_an_unknown_key_id_does_not_verify() -> None:
    good = signed_headers()
    assert check(good) is not None
    assert check({**good, "authorization": good["authorization"].replace("ops:", "dash:")}) is None
    assert check({**good, "authorization": good["authorization"].replace("ops:", "nobody:")}) is None
    other = auth.sign("another-key-entirely", "PUT", TARGET, b"{}", host="api.example", now=NOW, nonce=NONCE)
    assert check({**good, "authorization": other["Authorization"].replace("local:", "ops:")}) is None


def test_a_read_key_may_only_get() -> None:
    read, admin = RING.get("dash"), RING.get("ops")
    assert read is not None and admin is not None
    assert read.allows("GET") and not any(read.allows(m) for m in ("PUT", "PATCH", "DELETE", "POST", "HEAD"))
    assert all(admin.allows(m) for m in ("GET", "PUT", "PATCH", "DELETE", "POST"))
    assert KEY not in repr(admin)


def test_a_signed_header_sent_twice_is_refused() -> None:
    pairs = [(b"host", b"a"), (b"x-nonce", b"0123456789abcdef"), (b"x-nonce", b"0123456789abcdeg")]
    assert auth.header_map(pairs) is None
    assert auth.header_map([(b"Accept", b"a"), (b"accept", b"b"), (b"Host", b"H")]) == {"accept": "b", "host": "H"}


@pytest.mark.parametrize(
    ("raw", "decoded", "canonical"),
    [
        ("/tenants/acme/deliveries", "/tenants/acme/deliveries", "/tenants/acme/deliveries"),
        ("/tenants/acme/cloud%77atch", "/tenants/acme/cloudwatch", "/tenants/acme/cloudwatch"),
        ("/t/a%2Fb", "/t/a/b", "/t/a/b"),  # an encoded '/' is a separator once decoded, under both
        ("/t/%7Ex.y_z-", "/t/~x.y_z-", "/t/~x.y_z-"),
        ("/t/a b", "/t/a b", "/t/a%20b"),
        ("/t/%C3%A9", "/t/\u00e9", "/t/%C3%A9"),
        ("/t/%2541", "/t/%41", "/t/%2541"),  # decoded once only
        ("/t/a+b", "/t/a+b", "/t/a%2Bb"),
        ("/t/%zz", "/t/%zz", "/t/%25zz"),
    ],
)  # fmt: skip
def test_the_canonical_path_is_the_same_from_the_raw_and_the_decoded_path(
    raw: str, decoded: str, canonical: str
) -> None:
    assert auth.canonical_path(raw.encode()) == canonical  # uvicorn's raw_path
    assert auth.canonical_path(decoded, decoded=True) == canonical  # Mangum's path, decoded by API Gateway


def test_the_canonical_query_decodes_once_encodes_and_sorts() -> None:
    assert auth.canonical_query(b"") == ""
    assert auth.canonical_query(b"limit=3&next=a%2Bb") == "limit=3&next=a%2Bb"
    assert auth.canonical_query(b"z=1&a=%7E&a=b+c&&b") == "a=b%2Bc&a=~&b=&z=1"
    assert auth.canonical_query(b"n=%E2%9C%93&m=%zz") == "m=%25zz&n=%E2%9C%93"


def test_memory_nonces_refuse_a_reuse_forget_after_the_ttl_and_fail_closed_when_full() -> None:
    now = [0.0]
    nonces = MemoryNonces(clock=lambda: now[0], max_entries=3)
    assert nonces.remember("ops", NONCE) and not nonces.remember("ops", NONCE)
    assert nonces.remember("dash", NONCE)  # per key id
    now[0] = NONCE_TTL_S - 1
    assert not nonces.remember("ops", NONCE)
    assert NONCE_TTL_S > 2 * auth.WINDOW_S  # a timestamp 300 s ahead is still acceptable 600 s from now
    assert nonces.remember("ops", "b" * 16) and len(nonces) == 3
    assert not nonces.remember("ops", "c" * 16)  # full: refused, never evicting one that could be replayed
    now[0] = NONCE_TTL_S + 1
    assert nonces.remember("ops", NONCE) and len(nonces) == 2


def test_the_models_and_the_validator_share_one_field_table() -> None:
    names = [f.name for f in FIELDS]
    assert list(DeliveryOut.model_fields) == names
    assert set(DeliveryBody.model_fields) == {f.name for f in FIELDS if not f.managed}
    assert TYPE_REQUIRED == {DeliveryType.CLOUDWATCH: ("log_group_name",), DeliveryType.S3: ("bucket_name",)}
    # Every field delivery_item writes is one the table (and so the OpenAPI document) describes.
    item = {"tenant_id": "acme", "delivery_id": "s3", "type": "s3", "target_region": "us-east-1",
            "log_distribution_role_arn": "arn:aws:iam::111111111111:role/CustomerLogDistribution-acme",
            "bucket_name": "acme-logs", "kms_key_arn": "arn:aws:kms:us-east-1:111111111111:key/k",
            "desired_logs": ["a"], "clusters": ["c"], "external_id": "xid",
            "created_at": "2024-01-01T00:00:00Z"}  # fmt: skip
    assert set(delivery_item(parse_delivery(item, strict=True))) <= set(names)
    schema = DeliveryBody.model_json_schema()
    assert schema["additionalProperties"] is False
    assert (
        schema["properties"]["target_region"]["pattern"]
        == next(f for f in FIELDS if f.name == "target_region").pattern.pattern
    )  # type: ignore[union-attr]
