"""The configuration every entrypoint shares (CONTRACTS.md §7), read once into one typed object.

Nothing reads the environment at import time: entrypoints build a Settings and pass it down, so tests
and Ray workers get their configuration explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace

from pipeline.errors import ConfigError


@dataclass(frozen=True)
class Settings:
    bucket: str = ""
    tenant_table: str = ""
    ledger_table: str = ""
    central_role_arn: str = ""
    queue_url: str = ""
    region: str = "us-east-1"
    tenant_cache_ttl_s: float = 60.0
    ledger_retention_days: float = 0.0  # 0: ledger items carry no expiry (the table's TTL never removes them)
    api_nonce_table: str = ""  # the tenant API's nonces (pipeline/api/nonces.py)
    status_table: str = ""  # each delivery's status (pipeline/status.py); empty: no status is kept
    replay_table: str = ""  # redelivery requests (pipeline/replay/requests.py)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            bucket=env.get("S3_BUCKET_NAME", ""),
            tenant_table=env.get("TENANT_CONFIG_TABLE", ""),
            ledger_table=env.get("DELIVERY_LEDGER_TABLE", ""),
            central_role_arn=env.get("CENTRAL_LOG_DISTRIBUTION_ROLE_ARN", ""),
            queue_url=env.get("SQS_QUEUE_URL", ""),
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
            ledger_retention_days=_days(env.get("LEDGER_RETENTION_DAYS", "")),
            api_nonce_table=env.get("API_NONCE_TABLE", ""),
            status_table=env.get("DELIVERY_STATUS_TABLE", ""),
            replay_table=env.get("REPLAY_REQUEST_TABLE", ""),
        )

    @property
    def ledger_retention_s(self) -> float:
        return self.ledger_retention_days * 86400

    def with_overrides(
        self,
        *,
        bucket: str | None = None,
        tenant_table: str | None = None,
        ledger_table: str | None = None,
        queue_url: str | None = None,
    ) -> Settings:
        """The settings with the commands' options applied; an option left as None keeps the environment's."""
        return replace(
            self,
            bucket=self.bucket if bucket is None else bucket,
            tenant_table=self.tenant_table if tenant_table is None else tenant_table,
            ledger_table=self.ledger_table if ledger_table is None else ledger_table,
            queue_url=self.queue_url if queue_url is None else queue_url,
        )

    def require(self, *names: str) -> None:
        """Fail early, naming the env var, instead of deep inside a worker."""
        env_names = {
            "bucket": "S3_BUCKET_NAME",
            "tenant_table": "TENANT_CONFIG_TABLE",
            "ledger_table": "DELIVERY_LEDGER_TABLE",
            "central_role_arn": "CENTRAL_LOG_DISTRIBUTION_ROLE_ARN",
            "queue_url": "SQS_QUEUE_URL",
            "api_nonce_table": "API_NONCE_TABLE",
            "status_table": "DELIVERY_STATUS_TABLE",
            "replay_table": "REPLAY_REQUEST_TABLE",
        }
        missing = [env_names.get(n, n) for n in names if not getattr(self, n)]
        if missing:
            raise ConfigError("missing required setting(s): " + ", ".join(missing))


def _days(value: str) -> float:
    try:
        days = float(value or 0)
    except ValueError as exc:
        raise ConfigError(f"LEDGER_RETENTION_DAYS must be a number of days, not {value!r}") from exc
    if days < 0:
        raise ConfigError("LEDGER_RETENTION_DAYS must not be negative")
    return days
