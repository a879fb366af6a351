"""Double-hop credentials (CONTRACTS.md §4): own credentials → central role → tenant role with ExternalId.

The ExternalId is the tenant profile's (`Delivery.hop_external_id`); for a legacy tenant without a
profile, the delivery's own, else the central account id. Credentials are cached per (role, ExternalId)
and refreshed ahead of expiry: a rotation that promotes a tenant's next id assumes the role afresh.
Chained role sessions last at most one hour and STS quotas cannot be raised, so a busy worker makes one
STS round trip per tenant per hour, not one per object. Clients built on those credentials are cached with them.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws
from pipeline.aws import StaticCredentials
from pipeline.classify import Action, classify_error, describe
from pipeline.errors import DeliveryError

if TYPE_CHECKING:
    from mypy_boto3_sts import STSClient

SESSION_NAME_MAX = 64
_SESSION_NAME_BAD = re.compile(r"[^\w+=,.@-]", re.ASCII)  # AWS's \w is ASCII only
ROLE_SESSION_SECONDS = 3600  # the most a chained session may last
REFRESH_MARGIN = timedelta(minutes=10)


def session_name(purpose: str, subject: str) -> str:
    """A RoleSessionName that is always valid: `[\\w+=,.@-]`, at most 64 characters, stable per subject.

    A digest of the full subject keeps two long tenant ids that share a prefix apart, without the
    timestamp that once pushed names past 64 characters.
    """
    digest = hashlib.sha256(subject.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    clean = _SESSION_NAME_BAD.sub("-", f"{purpose}-{subject}")
    room = SESSION_NAME_MAX - len(digest) - 1
    return f"{clean[:room]}-{digest}"


def account_of(role_arn: str) -> str:
    parts = role_arn.split(":")
    if len(parts) < 6 or not parts[4].isdigit():
        raise ValueError(f"not an IAM role ARN: {role_arn!r}")
    return parts[4]


def _role_key(role_arn: str, external_id: str) -> str:
    # Two deliveries may share a role with different ExternalIds: the trust policy decides per id.
    return f"{role_arn}#{external_id}"


class CredentialBroker:
    """Assumes and caches the central role, then each tenant's role with ExternalId."""

    def __init__(
        self,
        central_role_arn: str,
        *,
        refresh_margin: timedelta = REFRESH_MARGIN,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        base_sts: STSClient | None = None,
    ) -> None:
        self.central_role_arn = central_role_arn
        # The ExternalId of a legacy tenant's delivery that names none of its own: the central account id
        # (CONTRACTS.md §4). A tenant with a profile always sends the profile's.
        self.external_id = account_of(central_role_arn)
        self._margin = refresh_margin
        self._clock = clock
        self._base_sts = base_sts
        self._creds: dict[str, StaticCredentials] = {}
        self._clients: dict[tuple[str, str, str], tuple[StaticCredentials, Any]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.sts_calls = 0

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _fresh(self, creds: StaticCredentials) -> bool:
        return creds.expiration - self._margin > self._clock()

    def _cached(self, role_arn: str, assume: Callable[[], StaticCredentials]) -> StaticCredentials:
        creds = self._creds.get(role_arn)
        if creds is not None and self._fresh(creds):
            return creds
        with self._lock_for(role_arn):  # one STS call per role even when many threads miss at once
            creds = self._creds.get(role_arn)
            if creds is None or not self._fresh(creds):
                creds = self._creds[role_arn] = assume()
            return creds

    def central(self) -> StaticCredentials:
        def assume() -> StaticCredentials:
            sts = self._base_sts or aws.client("sts")
            return self._assume(sts, self.central_role_arn, session_name("central", "log-distribution"), None)

        return self._cached(self.central_role_arn, assume)

    def tenant(self, tenant_id: str, role_arn: str, external_id: str | None = None) -> StaticCredentials:
        """The tenant role's credentials; `external_id` None means the default, the central account id."""
        external_id = external_id or self.external_id

        def assume() -> StaticCredentials:
            sts = aws.client("sts", credentials=self.central())
            return self._assume(sts, role_arn, session_name("logdist", tenant_id), external_id)

        return self._cached(_role_key(role_arn, external_id), assume)

    def client(
        self,
        service: str,
        tenant_id: str,
        role_arn: str,
        region: str,
        external_id: str | None = None,
        config: Config | None = None,
    ) -> Any:
        """A client in the tenant's account, rebuilt only when its credentials were refreshed.

        One caller per service passes `config` (a sink that owns its retries), so it is not part of the key.
        """
        creds = self.tenant(tenant_id, role_arn, external_id)
        key = (service, _role_key(role_arn, external_id or self.external_id), region)
        hit = self._clients.get(key)
        if hit is not None and hit[0] is creds:
            return hit[1]
        # Building a client costs a few ms of CPU and its own connection pool: when a pool of threads misses
        # at once, build it once, not once per thread.
        with self._lock_for(f"client:{':'.join(key)}"):
            hit = self._clients.get(key)
            if hit is not None and hit[0] is creds:
                return hit[1]
            c = aws.client(service, region=region, credentials=creds, config=config)
            self._clients[key] = (creds, c)
            return c

    def invalidate(self, role_arn: str, external_id: str | None = None) -> None:
        """Forget a role's credentials, e.g. after the service said they expired."""
        self._creds.pop(_role_key(role_arn, external_id or self.external_id), None)

    def _assume(self, sts: STSClient, role_arn: str, name: str, external_id: str | None) -> StaticCredentials:
        self.sts_calls += 1
        try:
            return assume_role(sts, role_arn, name, external_id)
        except (ClientError, BotoCoreError) as exc:
            # botocore's standard retries have already waited out what STS calls transient.
            action = classify_error("sts", exc)
            code = describe(exc)
            # The tenant's role is part of its destination: its code lets the consumer's circuit back off on it.
            raise DeliveryError(
                f"cannot assume {role_arn}: {code}", recoverable=action is not Action.FAIL, code=code
            ) from exc


def assume_role(
    sts: STSClient, role_arn: str, name: str, external_id: str | None, duration_s: int = ROLE_SESSION_SECONDS
) -> StaticCredentials:
    """One AssumeRole call; STS's errors are raised as botocore raises them."""
    kwargs: dict[str, Any] = {"RoleArn": role_arn, "RoleSessionName": name, "DurationSeconds": duration_s}
    if external_id:
        kwargs["ExternalId"] = external_id
    c = sts.assume_role(**kwargs)["Credentials"]
    expiration = c["Expiration"]
    if isinstance(expiration, str):
        expiration = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
    if expiration.tzinfo is None:
        expiration = expiration.replace(tzinfo=UTC)
    return StaticCredentials(c["AccessKeyId"], c["SecretAccessKey"], c["SessionToken"], expiration)
