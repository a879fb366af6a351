"""Tenant table items and a settable clock, shared by the tenant tests (tests/unit/test_tenants.py, pure,
and tests/integration/test_tenant_directory.py, against the local DynamoDB)."""

from __future__ import annotations

from typing import Any

ROLE = "arn:aws:iam::111111111111:role/CustomerLogDistribution-acme"
GOOD: dict[str, Any] = {
    "tenant_id": "acme",
    "delivery_id": "cloudwatch",
    "type": "cloudwatch",
    "log_distribution_role_arn": ROLE,
    "log_group_name": "/logs/acme",
    "target_region": "us-east-1",
}
V1_GOOD: dict[str, Any] = {k: v for k, v in GOOD.items() if k not in ("delivery_id", "type")}
S3_GOOD: dict[str, Any] = {
    "tenant_id": "acme",
    "delivery_id": "s3-archive",
    "type": "s3",
    "log_distribution_role_arn": ROLE,
    "target_region": "eu-west-1",
    "bucket_name": "acme-logs-111111111111",
}

KEY = "prod-1/acme/payment-service/pay-1/20240620-110000-00000000-0000-4000-8000-000000000000.json.gz"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t
