"""Request signing (CONTRACTS.md §9) and the one field table behind the API models."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from pipeline.admin.schema import DeliveryBody, DeliveryOut
from pipeline.api import auth
from pipeline.tenants import FIELDS, TYPE_REQUIRED, DeliveryType, delivery_item, parse_delivery

KEY = "a-pre-shared-key-of-some-length"
NOW = 1_700_000_000


def headers(**overrides: str) -> dict[str, str]:
    h = {k.lower(): v for k, v in auth.sign(KEY, "PUT", "/tenants/acme/deliveries/cw?x=1", b"{}", now=NOW).items()}
    h.update(overrides)
    return h


def test_sign_follows_the_contract_recipe() -> None:
    digest = hashlib.sha256(b"{}").hexdigest()
    message = f"PUT\n/tenants/acme/deliveries/cw?x=1\n{NOW}\n{digest}".encode()
    expected = hmac.new(KEY.encode(), message, hashlib.sha256).hexdigest()
    assert headers() == {"x-timestamp": str(NOW), "x-body-sha256": digest, "authorization": f"HMAC-SHA256 {expected}"}


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_a_signature_within_the_window_verifies(skew: int) -> None:
    assert auth.verify(KEY, "PUT", "/tenants/acme/deliveries/cw?x=1", headers(), b"{}", clock=lambda: NOW + skew)


@pytest.mark.parametrize(
    ("method", "path", "body", "changes", "skew"),
    [
        ("PUT", "/tenants/acme/deliveries/cw?x=1", b"{}", {}, 301),
        ("PUT", "/tenants/acme/deliveries/cw?x=1", b"{}", {}, -301),
        ("GET", "/tenants/acme/deliveries/cw?x=1", b"{}", {}, 0),
        ("PUT", "/tenants/acme/deliveries/cw?x=2", b"{}", {}, 0),
        ("PUT", "/tenants/acme/deliveries/cw?x=1", b"{ }", {}, 0),
        ("PUT", "/tenants/acme/deliveries/cw?x=1", b"{}", {"x-timestamp": "soon"}, 0),
        ("PUT", "/tenants/acme/deliveries/cw?x=1", b"{}", {"authorization": "HMAC-SHA256"}, 0),
        ("PUT", "/tenants/acme/deliveries/cw?x=1", b"{}", {"x-body-sha256": ""}, 0),
    ],
)  # fmt: skip
def test_anything_else_does_not(method: str, path: str, body: bytes, changes: dict[str, str], skew: int) -> None:
    assert not auth.verify(KEY, method, path, headers(**changes), body, clock=lambda: NOW + skew)
    assert not auth.verify("another-key-entirely", "PUT", "/tenants/acme/deliveries/cw?x=1", headers(), b"{}",
                           clock=lambda: NOW)  # fmt: skip


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
