"""RoleSessionName rules and the credential cache (CONTRACTS.md §4), with STS stubbed at the botocore layer."""

from __future__ import annotations

import re
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import aws
from pipeline.aws import StaticCredentials
from pipeline.credentials import CredentialBroker, account_of, session_name
from pipeline.errors import DeliveryError

# AWS's RoleSessionName pattern is [\w+=,.@-]*, 2 to 64 characters; AWS's \w is ASCII.
SESSION_NAME_RE = re.compile(r"[A-Za-z0-9_+=,.@-]{2,64}")
CENTRAL = "arn:aws:iam::123456789012:role/CentralLogDistributionRole"

any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=300)


@settings(max_examples=300, deadline=None)
@given(purpose=st.sampled_from(["central", "logdist", "replay"]), subject=any_text)
def test_session_name_is_always_valid(purpose: str, subject: str) -> None:
    name = session_name(purpose, subject)
    assert SESSION_NAME_RE.fullmatch(name), name
    assert session_name(purpose, subject) == name  # stable: no timestamp


@settings(max_examples=200, deadline=None)
@given(prefix=st.text(min_size=60, max_size=100), a=any_text, b=any_text)
def test_distinct_subjects_sharing_a_long_prefix_get_distinct_names(prefix: str, a: str, b: str) -> None:
    if a == b:
        return
    assert session_name("logdist", prefix + a) != session_name("logdist", prefix + b)


@pytest.mark.parametrize(
    "tenant",
    [
        "acme",
        "a" * 63,
        "z" * 63 + "-with-a-timestamp-20240101T000000Z",
        "tenant with spaces/and:colons",
        "ünïcödé-日本",
    ],
)
def test_session_name_examples(tenant: str) -> None:
    name = session_name("logdist", tenant)
    assert SESSION_NAME_RE.fullmatch(name), name
    assert name.startswith("logdist-")


def test_readable_tenant_id_stays_visible() -> None:
    assert session_name("logdist", "acme").startswith("logdist-acme-")


def test_account_of() -> None:
    assert account_of(CENTRAL) == "123456789012"
    for bad in ["", "not-an-arn", "arn:aws:iam::abc:role/x"]:
        with pytest.raises(ValueError):
            account_of(bad)


def test_broker_external_id_is_the_central_account() -> None:
    assert CredentialBroker(CENTRAL).external_id == "123456789012"


# ---------------------------------------------------------------------------------------------------------
# Central hop: cache and refresh, with a real STS client stubbed by botocore's Stubber
# ---------------------------------------------------------------------------------------------------------


class Clock:
    def __init__(self, t: datetime) -> None:
        self.t = t

    def __call__(self) -> datetime:
        return self.t


NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def creds(n: int, expiration: datetime | str) -> dict[str, Any]:
    return {
        "Credentials": {
            "AccessKeyId": f"ASIA{n:016d}",
            "SecretAccessKey": "s" * 40,
            "SessionToken": f"token-{n}",
            "Expiration": expiration,
        }
    }


def expected_params() -> dict[str, Any]:
    return {"RoleArn": CENTRAL, "RoleSessionName": ANY, "DurationSeconds": 3600}


@pytest.fixture
def sts() -> Any:
    return boto3.client("sts", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")


def test_central_credentials_are_cached_until_the_refresh_margin(sts: Any) -> None:
    clock = Clock(NOW)
    broker = CredentialBroker(CENTRAL, refresh_margin=timedelta(minutes=10), clock=clock, base_sts=sts)
    with Stubber(sts) as stub:
        stub.add_response("assume_role", creds(1, NOW + timedelta(hours=1)), expected_params())
        first = broker.central()
        for _ in range(50):
            assert broker.central() is first
        clock.t = NOW + timedelta(minutes=49, seconds=59)  # 10 min 1 s left: still fresh
        assert broker.central() is first
        stub.assert_no_pending_responses()

        stub.add_response("assume_role", creds(2, NOW + timedelta(hours=2)), expected_params())
        clock.t = NOW + timedelta(minutes=50)  # exactly at the margin: refresh
        second = broker.central()
        assert second is not first
        assert second.access_key_id == "ASIA0000000000000002"
        assert second.expiration == NOW + timedelta(hours=2)
        stub.assert_no_pending_responses()
    assert broker.sts_calls == 2


def test_expired_credentials_are_never_served(sts: Any) -> None:
    clock = Clock(NOW)
    broker = CredentialBroker(CENTRAL, clock=clock, base_sts=sts)
    with Stubber(sts) as stub:
        stub.add_response("assume_role", creds(1, NOW + timedelta(hours=1)), expected_params())
        stub.add_response("assume_role", creds(2, NOW + timedelta(hours=3)), expected_params())
        broker.central()
        clock.t = NOW + timedelta(hours=2)
        assert broker.central().access_key_id.endswith("2")
        stub.assert_no_pending_responses()


def test_assume_role_request_shape(sts: Any) -> None:
    seen: list[dict[str, Any]] = []
    sts.meta.events.register("provide-client-params.sts.AssumeRole", lambda params, **_: seen.append(dict(params)))
    broker = CredentialBroker(CENTRAL, clock=Clock(NOW), base_sts=sts)
    with Stubber(sts) as stub:
        stub.add_response("assume_role", creds(1, NOW + timedelta(hours=1)))
        broker.central()
    [params] = seen
    assert params["RoleArn"] == CENTRAL
    assert params["DurationSeconds"] <= 3600  # chained sessions last at most an hour
    assert SESSION_NAME_RE.fullmatch(params["RoleSessionName"])
    assert "ExternalId" not in params  # the first hop is the processor's own account


def test_assume_role_failure_is_a_recoverable_delivery_error(sts: Any) -> None:
    broker = CredentialBroker(CENTRAL, clock=Clock(NOW), base_sts=sts)
    with Stubber(sts) as stub:
        stub.add_client_error("assume_role", "AccessDenied", "not authorized", http_status_code=403)
        with pytest.raises(DeliveryError) as info:
            broker.central()
    assert info.value.recoverable is True
    assert "AccessDenied" in info.value.reason and CENTRAL in info.value.reason
    assert "s" * 40 not in str(info.value)


def test_credentials_repr_hides_secrets(sts: Any) -> None:
    broker = CredentialBroker(CENTRAL, clock=Clock(NOW), base_sts=sts)
    with Stubber(sts) as stub:
        stub.add_response("assume_role", creds(1, NOW + timedelta(hours=1)))
        c = broker.central()
    assert "s" * 40 not in repr(c) and "token-1" not in repr(c)


def test_central_hop_is_assumed_once_under_concurrency(sts: Any) -> None:
    # Make the STS round trip slow so that every thread misses the cache at the same time.
    sts.meta.events.register("before-call.sts.AssumeRole", lambda **_: time.sleep(0.2))
    broker = CredentialBroker(CENTRAL, clock=Clock(NOW), base_sts=sts)
    results: list[Any] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(20)

    def worker() -> None:
        barrier.wait()
        try:
            results.append(broker.central())
        except BaseException as exc:
            errors.append(exc)

    with Stubber(sts) as stub:
        stub.add_response("assume_role", creds(1, NOW + timedelta(hours=1)))
        threads = [threading.Thread(target=worker) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    assert len(results) == 20 and all(r is results[0] for r in results)
    assert broker.sts_calls == 1


# ---------------------------------------------------------------------------------------------------------
# Tenant hop: ExternalId per delivery, cache keyed by role and ExternalId
# ---------------------------------------------------------------------------------------------------------

TENANT_ROLE = "arn:aws:iam::111111111111:role/logging/CustomerLogDistribution-acme"


class FakeSts:
    """Both hops' AssumeRole, recorded; every answer is a new set of credentials valid for an hour."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def assume_role(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return creds(len(self.calls), NOW + timedelta(hours=1))


@pytest.fixture
def hops(monkeypatch: pytest.MonkeyPatch) -> tuple[CredentialBroker, FakeSts, list[tuple[str, Any]]]:
    """A broker whose STS (both hops) is FakeSts, and whose tenant clients are recorded, not built."""
    from pipeline import credentials as module

    sts = FakeSts()
    built: list[tuple[str, Any]] = []

    def client(service: str, region: str | None = None, credentials: Any = None, config: Any = None) -> Any:
        if service == "sts":
            return sts
        built.append((service, credentials))
        return object()

    monkeypatch.setattr(module.aws, "client", client)
    return CredentialBroker(CENTRAL, clock=Clock(NOW), base_sts=sts), sts, built


def tenant_calls(sts: FakeSts) -> list[dict[str, Any]]:
    return [c for c in sts.calls if c["RoleArn"] != CENTRAL]


def test_the_tenant_hop_uses_the_central_account_as_external_id_by_default(hops: Any) -> None:
    broker, sts, _ = hops
    broker.tenant("acme", TENANT_ROLE)
    [call] = tenant_calls(sts)
    assert call["ExternalId"] == "123456789012"
    assert call["RoleArn"] == TENANT_ROLE
    assert SESSION_NAME_RE.fullmatch(call["RoleSessionName"]) and call["DurationSeconds"] <= 3600
    # None and the central account id are the same thing: no second STS call.
    broker.tenant("acme", TENANT_ROLE, None)
    broker.tenant("acme", TENANT_ROLE, "123456789012")
    assert len(tenant_calls(sts)) == 1


def test_a_deliverys_own_external_id_is_cached_apart(hops: Any) -> None:
    broker, sts, _ = hops
    default = broker.tenant("acme", TENANT_ROLE)
    own = broker.tenant("acme", TENANT_ROLE, "tenant-acme-7f3a")
    assert own is not default
    assert [c["ExternalId"] for c in tenant_calls(sts)] == ["123456789012", "tenant-acme-7f3a"]
    for _ in range(5):
        assert broker.tenant("acme", TENANT_ROLE, "tenant-acme-7f3a") is own
        assert broker.tenant("acme", TENANT_ROLE) is default
    assert len(tenant_calls(sts)) == 2
    assert len([c for c in sts.calls if c["RoleArn"] == CENTRAL]) == 1  # the first hop is shared


def test_invalidate_drops_only_that_role_and_external_id(hops: Any) -> None:
    broker, sts, _ = hops
    default = broker.tenant("acme", TENANT_ROLE)
    own = broker.tenant("acme", TENANT_ROLE, "tenant-acme-7f3a")
    broker.invalidate(TENANT_ROLE, "tenant-acme-7f3a")
    assert broker.tenant("acme", TENANT_ROLE) is default
    fresh = broker.tenant("acme", TENANT_ROLE, "tenant-acme-7f3a")
    assert fresh is not own
    assert [c["ExternalId"] for c in tenant_calls(sts)][-1] == "tenant-acme-7f3a"
    broker.invalidate(TENANT_ROLE)  # None: the default ExternalId's credentials
    assert broker.tenant("acme", TENANT_ROLE) is not default
    assert broker.tenant("acme", TENANT_ROLE, "tenant-acme-7f3a") is fresh


def test_clients_are_cached_per_role_external_id_and_region(hops: Any) -> None:
    broker, _, built = hops
    a = broker.client("s3", "acme", TENANT_ROLE, "us-east-1")
    assert broker.client("s3", "acme", TENANT_ROLE, "us-east-1", None) is a
    b = broker.client("s3", "acme", TENANT_ROLE, "us-east-1", "tenant-acme-7f3a")
    c = broker.client("s3", "acme", TENANT_ROLE, "eu-west-1")
    d = broker.client("logs", "acme", TENANT_ROLE, "us-east-1")
    assert len({id(x) for x in (a, b, c, d)}) == 4
    assert len(built) == 4
    # Each is built on the credentials of its own ExternalId.
    assert built[1][1] is broker.tenant("acme", TENANT_ROLE, "tenant-acme-7f3a")
    assert built[0][1] is broker.tenant("acme", TENANT_ROLE)
    # Refreshed credentials (after invalidate) get a new client.
    broker.invalidate(TENANT_ROLE, "tenant-acme-7f3a")
    assert broker.client("s3", "acme", TENANT_ROLE, "us-east-1", "tenant-acme-7f3a") is not b
    assert broker.client("s3", "acme", TENANT_ROLE, "us-east-1") is a


def test_clients_on_assumed_credentials_sign_with_their_own_keys_when_built_at_once() -> None:
    """aws.client builds every client from one Session (its service models read once); the credentials belong
    to each client, never to the Session, even when many threads build clients at the same moment."""
    creds = [
        StaticCredentials(f"ASIA{i:016d}", f"secret-{i}", f"token-{i}", datetime.now(UTC) + timedelta(hours=1))
        for i in range(16)
    ]
    barrier = threading.Barrier(len(creds))
    clients: dict[int, Any] = {}

    def build(i: int) -> None:
        barrier.wait()
        clients[i] = aws.client(("s3", "logs", "sts", "dynamodb")[i % 4], "eu-west-1", credentials=creds[i])

    threads = [threading.Thread(target=build, args=(i,)) for i in range(len(creds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(clients) == list(range(len(creds)))  # every thread built its client (none raised)
    for i, c in clients.items():
        signed = c._request_signer._credentials.get_frozen_credentials()
        assert (signed.access_key, signed.secret_key, signed.token) == (f"ASIA{i:016d}", f"secret-{i}", f"token-{i}")
        assert c.meta.region_name == "eu-west-1"
    # A client of the process's own credentials is not one of theirs.
    own: Any = aws.client("s3", "eu-west-1")
    assert own._request_signer._credentials is None or own._request_signer._credentials.access_key not in {
        c.access_key_id for c in creds
    }
