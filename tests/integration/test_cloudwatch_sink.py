"""The native CloudWatch Logs sink (CONTRACTS.md §5): retries, create-on-missing, rejected-event accounting.

The sink gets its logs client from a real CredentialBroker (double hop against the embedded STS); the
tests put botocore's Stubber on that very client, so every PutLogEvents/Create* call the sink makes is
checked in order, and any call not queued (a Describe*, an extra retry) fails the test.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from botocore.exceptions import ConnectionClosedError
from botocore.stub import Stubber

from devstack.provision import LocalEnvironment
from pipeline.credentials import CredentialBroker
from pipeline.errors import DeliveryError
from pipeline.sinks.cloudwatch import sink as cloudwatch
from pipeline.sinks.cloudwatch.sink import CloudWatchSink, RetryPolicy
from pipeline.tenants import Delivery, DeliveryType

NOW = 1_717_200_000_000
GROUP = "/logs/acme"


@pytest.fixture(scope="module")
def env(module_aws: LocalEnvironment) -> LocalEnvironment:
    return module_aws


@pytest.fixture(scope="module")
def broker(env: LocalEnvironment) -> CredentialBroker:
    return CredentialBroker(env.central_role_arn)


def cloudwatch_delivery(env: LocalEnvironment, tenant_id: str) -> Delivery:
    t = env.tenant(tenant_id)
    return Delivery(
        tenant_id=t.tenant_id,
        delivery_id="cloudwatch",
        type=DeliveryType.CLOUDWATCH,
        role_arn=t.role_arn,
        region=t.region,
        log_group=t.log_group,
    )


@pytest.fixture
def dest(env: LocalEnvironment) -> Delivery:
    return cloudwatch_delivery(env, "acme")


class Calls:
    """Every logs operation the client is asked to make, by name, stubbed or not.

    The sink hands PutLogEvents a body it serialized itself (swapped in at signing time), so the stubbed
    parameters are rebuilt from that body: the Stubber's expected parameters then check what would really
    have gone over the wire.
    """

    def __init__(self, client: Any) -> None:
        self.names: list[str] = []
        # provide-client-params comes before the Stubber's own before-parameter-build check.
        client.meta.events.register("provide-client-params.logs", self._record)

    def _record(self, model: Any, params: dict[str, Any], **_: Any) -> None:
        self.names.append(model.name)
        body = getattr(cloudwatch._preset, "body", None)
        if model.name == "PutLogEvents" and body is not None:
            params.update(orjson.loads(body))


@dataclass
class Stubbed:
    broker: CredentialBroker
    stub: Stubber
    calls: Calls


@pytest.fixture
def cw(broker: CredentialBroker, dest: Delivery) -> Iterator[Stubbed]:
    """Stubber on the very logs client the broker hands the sink."""
    client = broker.client("logs", dest.tenant_id, dest.role_arn, dest.region)
    calls = Calls(client)
    stub = Stubber(client)
    with stub:
        yield Stubbed(broker, stub, calls)
    client.meta.events.unregister("provide-client-params.logs", calls._record)


class Sleeps(list[float]):
    def __call__(self, s: float) -> None:
        self.append(s)


def events(n: int, tag: str = "m", start: int = NOW) -> list[tuple[int, str]]:
    return [(start + i, f"{tag}-{i}") for i in range(n)]


def recent(n: int, tag: str) -> list[tuple[int, str]]:
    """Events the real local CloudWatch accepts: it rejects anything over 14 days old, as AWS does."""
    return events(n, tag, int(time.time() * 1000) - 60_000)


def put_params(stream: str, evs: list[tuple[int, str]]) -> dict[str, Any]:
    return {
        "logGroupName": GROUP,
        "logStreamName": stream,
        "logEvents": [{"timestamp": ts, "message": m} for ts, m in evs],
    }


def error(stub: Stubber, op: str, code: str, status: int = 400, params: dict[str, Any] | None = None) -> None:
    stub.add_client_error(
        op, service_error_code=code, service_message=code, http_status_code=status, expected_params=params
    )


# ---------------------------------------------------------------------------------------------------------
# Retries
# ---------------------------------------------------------------------------------------------------------


def test_throttling_503_and_500_are_retried_with_backoff(cw: Stubbed, dest: Delivery) -> None:
    stub, calls = cw.stub, cw.calls
    evs = events(5)
    p = put_params("s-retry", evs)
    error(stub, "put_log_events", "ThrottlingException", 400, p)
    error(stub, "put_log_events", "ServiceUnavailableException", 503, p)
    error(stub, "put_log_events", "InternalFailure", 500, p)
    error(stub, "put_log_events", "", 502, p)  # a bare 5xx without an error code
    stub.add_response("put_log_events", {"nextSequenceToken": "x"}, p)
    sleeps = Sleeps()
    policy = RetryPolicy(attempts=8, base_s=0.1, cap_s=0.3)
    result = CloudWatchSink(credentials=cw.broker, retry=policy, sleep=sleeps).send(dest, "s-retry", evs)
    stub.assert_no_pending_responses()
    assert result.events_delivered == 5 and result.requests == 1 and result.retries == 4
    assert len(sleeps) == 4
    for attempt, d in enumerate(sleeps):
        assert 0 <= d <= min(policy.cap_s, policy.base_s * 2**attempt)
    assert calls.names == ["PutLogEvents"] * 5


def test_retries_exhausted_is_a_recoverable_delivery_error(cw: Stubbed, dest: Delivery) -> None:
    stub, calls = cw.stub, cw.calls
    for _ in range(4):
        error(stub, "put_log_events", "ThrottlingException")
    sleeps = Sleeps()
    sink = CloudWatchSink(credentials=cw.broker, retry=RetryPolicy(attempts=4), sleep=sleeps)
    with pytest.raises(DeliveryError) as info:
        sink.send(dest, "s-exhaust", events(3))
    stub.assert_no_pending_responses()  # exactly `attempts` puts, no more
    assert info.value.recoverable is True
    assert "ThrottlingException" in info.value.reason and "4 attempts" in info.value.reason
    assert info.value.code == "ThrottlingException"  # bare: what the consumer's circuits key on
    assert len(sleeps) == 3
    assert calls.names == ["PutLogEvents"] * 4


def test_the_consumers_policy_gives_up_on_throttling_after_its_throttle_attempts(cw: Stubbed, dest: Delivery) -> None:
    """A 503 costs an attempt of the whole budget; throttling fails after 3, so no worker waits out a tenant's
    quota: the consumer's circuit does (pipeline/circuits.py)."""
    stub, calls = cw.stub, cw.calls
    error(stub, "put_log_events", "ServiceUnavailableException", 503)
    for _ in range(3):
        error(stub, "put_log_events", "ThrottlingException")
    sink = CloudWatchSink(credentials=cw.broker, retry=RetryPolicy(attempts=8, throttle_attempts=3), sleep=Sleeps())
    with pytest.raises(DeliveryError) as info:
        sink.send(dest, "s-throttle", events(2))
    stub.assert_no_pending_responses()
    assert info.value.code == "ThrottlingException" and info.value.recoverable
    assert "still throttled after 4 attempts" in info.value.reason
    assert calls.names == ["PutLogEvents"] * 4


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("AccessDeniedException", 400),
        ("InvalidParameterException", 400),
        ("UnrecognizedClientException", 400),
        ("Throttling", 400),  # not CloudWatch's code: matching is exact
        ("DataAlreadyAcceptedException", 400),
    ],
)
def test_non_retryable_errors_fail_at_once(cw: Stubbed, dest: Delivery, code: str, status: int) -> None:
    stub, calls = cw.stub, cw.calls
    error(stub, "put_log_events", code, status)
    sleeps = Sleeps()
    with pytest.raises(DeliveryError) as info:
        CloudWatchSink(credentials=cw.broker, sleep=sleeps).send(dest, "s-fatal", events(2))
    stub.assert_no_pending_responses()
    assert code in info.value.reason and info.value.code == code
    assert sleeps == [] and calls.names == ["PutLogEvents"]


def test_jitter_is_full_and_capped() -> None:
    policy = RetryPolicy(attempts=30, base_s=0.1, cap_s=2.0)
    random.seed(7)
    for attempt in range(12):
        samples = [policy.delay(attempt) for _ in range(300)]
        bound = min(policy.cap_s, policy.base_s * 2**attempt)
        assert all(0 <= s <= bound for s in samples)
        assert max(samples) > 0.8 * bound  # the whole range is used...
        assert min(samples) < 0.2 * bound  # ...down to almost nothing (full jitter)
        assert len(set(samples)) > 250


def test_network_error_is_retried(broker: CredentialBroker, env: LocalEnvironment, dest: Delivery) -> None:
    """A dropped connection before the request was answered: retried against the real local service."""
    client = broker.client("logs", dest.tenant_id, dest.role_arn, dest.region)
    failures = [1]

    def drop(request: Any, **_: Any) -> None:
        if failures:
            failures.pop()
            raise ConnectionClosedError(endpoint_url=request.url)

    client.meta.events.register("before-send.logs.PutLogEvents", drop)
    try:
        sleeps = Sleeps()
        evs = recent(4, "net")
        result = CloudWatchSink(credentials=broker, sleep=sleeps).send(dest, "s-network", evs)
    finally:
        client.meta.events.unregister("before-send.logs.PutLogEvents", drop)
    assert result.events_delivered == 4 and result.retries == 1 and len(sleeps) == 1
    got = env.tenant_logs("acme").get_log_events(logGroupName=GROUP, logStreamName="s-network", startFromHead=True)
    assert [(e["timestamp"], e["message"]) for e in got["events"]] == evs


# ---------------------------------------------------------------------------------------------------------
# Missing groups and streams: create, never describe
# ---------------------------------------------------------------------------------------------------------


def test_missing_stream_is_created_then_put_again(cw: Stubbed, dest: Delivery) -> None:
    stub, calls = cw.stub, cw.calls
    evs = events(3)
    p = put_params("s-new", evs)
    error(stub, "put_log_events", "ResourceNotFoundException", 400, p)
    stub.add_response("create_log_stream", {}, {"logGroupName": GROUP, "logStreamName": "s-new"})
    stub.add_response("put_log_events", {}, p)
    result = CloudWatchSink(credentials=cw.broker, sleep=Sleeps()).send(dest, "s-new", evs)
    stub.assert_no_pending_responses()
    assert result.events_delivered == 3
    assert calls.names == ["PutLogEvents", "CreateLogStream", "PutLogEvents"]


def test_missing_group_is_created_then_the_stream(cw: Stubbed, dest: Delivery) -> None:
    stub, calls = cw.stub, cw.calls
    evs = events(2)
    p = put_params("s-nogroup", evs)
    error(stub, "put_log_events", "ResourceNotFoundException", 400, p)
    error(stub, "create_log_stream", "ResourceNotFoundException")
    stub.add_response("create_log_group", {}, {"logGroupName": GROUP})
    stub.add_response("create_log_stream", {}, {"logGroupName": GROUP, "logStreamName": "s-nogroup"})
    stub.add_response("put_log_events", {}, p)
    result = CloudWatchSink(credentials=cw.broker, sleep=Sleeps()).send(dest, "s-nogroup", evs)
    stub.assert_no_pending_responses()
    assert result.events_delivered == 2
    assert calls.names == ["PutLogEvents", "CreateLogStream", "CreateLogGroup", "CreateLogStream", "PutLogEvents"]


def test_already_exists_counts_as_created(cw: Stubbed, dest: Delivery) -> None:
    """Another worker created the stream (or the group) first: that is success, not an error."""
    stub, calls = cw.stub, cw.calls
    evs = events(2)
    p = put_params("s-race", evs)
    error(stub, "put_log_events", "ResourceNotFoundException", 400, p)
    error(stub, "create_log_stream", "ResourceAlreadyExistsException")
    stub.add_response("put_log_events", {}, p)
    result = CloudWatchSink(credentials=cw.broker, sleep=Sleeps()).send(dest, "s-race", evs)
    stub.assert_no_pending_responses()
    assert result.events_delivered == 2

    error(stub, "put_log_events", "ResourceNotFoundException", 400, p)
    error(stub, "create_log_stream", "ResourceNotFoundException")
    error(stub, "create_log_group", "ResourceAlreadyExistsException")
    stub.add_response("create_log_stream", {})
    stub.add_response("put_log_events", {}, p)
    result = CloudWatchSink(credentials=cw.broker, sleep=Sleeps()).send(dest, "s-race", evs)
    stub.assert_no_pending_responses()
    assert result.events_delivered == 2
    assert not any(n.startswith("Describe") for n in calls.names)


def test_throttled_create_backs_off_and_tries_again(cw: Stubbed, dest: Delivery) -> None:
    stub, calls = cw.stub, cw.calls
    evs = events(2)
    p = put_params("s-slowcreate", evs)
    error(stub, "put_log_events", "ResourceNotFoundException", 400, p)
    error(stub, "create_log_stream", "ThrottlingException")
    error(stub, "put_log_events", "ResourceNotFoundException", 400, p)
    stub.add_response("create_log_stream", {})
    stub.add_response("put_log_events", {}, p)
    sleeps = Sleeps()
    result = CloudWatchSink(credentials=cw.broker, sleep=sleeps).send(dest, "s-slowcreate", evs)
    stub.assert_no_pending_responses()
    assert result.events_delivered == 2 and len(sleeps) == 1
    assert not any(n.startswith("Describe") for n in calls.names)


def test_create_denied_is_an_error(cw: Stubbed, dest: Delivery) -> None:
    stub = cw.stub
    error(stub, "put_log_events", "ResourceNotFoundException")
    error(stub, "create_log_stream", "AccessDeniedException")
    with pytest.raises(DeliveryError, match="AccessDeniedException"):
        CloudWatchSink(credentials=cw.broker, sleep=Sleeps()).send(dest, "s-denied", events(1))
    stub.assert_no_pending_responses()


def test_still_missing_after_create_is_an_error_not_a_loop(cw: Stubbed, dest: Delivery) -> None:
    stub = cw.stub
    error(stub, "put_log_events", "ResourceNotFoundException")
    stub.add_response("create_log_stream", {})
    error(stub, "put_log_events", "ResourceNotFoundException")
    with pytest.raises(DeliveryError, match="ResourceNotFoundException"):
        CloudWatchSink(credentials=cw.broker, sleep=Sleeps()).send(dest, "s-vanishing", events(1))
    stub.assert_no_pending_responses()


# ---------------------------------------------------------------------------------------------------------
# Rejected events and batching
# ---------------------------------------------------------------------------------------------------------


def test_rejected_events_are_counted_and_not_retried(cw: Stubbed, dest: Delivery) -> None:
    stub, calls = cw.stub, cw.calls
    evs = events(10)
    info = {"tooOldLogEventEndIndex": 2, "expiredLogEventEndIndex": 3, "tooNewLogEventStartIndex": 9}
    stub.add_response("put_log_events", {"rejectedLogEventsInfo": info}, put_params("s-rej", evs))
    result = CloudWatchSink(credentials=cw.broker, sleep=Sleeps()).send(dest, "s-rej", evs)
    stub.assert_no_pending_responses()
    assert (result.events_rejected_too_old, result.events_rejected_expired, result.events_rejected_too_new) == (2, 1, 1)
    assert result.events_delivered == 6
    assert calls.names == ["PutLogEvents"]


def test_many_events_go_in_several_batches_each_sent_once(cw: Stubbed, dest: Delivery) -> None:
    stub, calls = cw.stub, cw.calls
    evs = events(25_000)
    chunks = [evs[:10_000], evs[10_000:20_000], evs[20_000:]]
    stub.add_response("put_log_events", {}, put_params("s-many", chunks[0]))
    error(stub, "put_log_events", "ThrottlingException", 400, put_params("s-many", chunks[1]))
    stub.add_response("put_log_events", {}, put_params("s-many", chunks[1]))
    stub.add_response("put_log_events", {}, put_params("s-many", chunks[2]))
    result = CloudWatchSink(credentials=cw.broker, sleep=Sleeps()).send(dest, "s-many", evs)
    stub.assert_no_pending_responses()
    assert result.events_delivered == 25_000 and result.requests == 3 and result.retries == 1
    assert calls.names == ["PutLogEvents"] * 4


# ---------------------------------------------------------------------------------------------------------
# Against the real local CloudWatch
# ---------------------------------------------------------------------------------------------------------


def test_expired_token_refreshes_credentials_once(
    cw: Stubbed, broker: CredentialBroker, env: LocalEnvironment, dest: Delivery
) -> None:
    """The service says the session expired: the sink drops it, re-assumes, and the put goes through."""
    stub = cw.stub
    error(stub, "put_log_events", "ExpiredTokenException")
    before = broker.sts_calls
    result = CloudWatchSink(credentials=broker, sleep=Sleeps()).send(dest, "s-expired", recent(3, "exp"))
    stub.assert_no_pending_responses()
    assert broker.sts_calls == before + 1  # the tenant hop only
    assert result.events_delivered == 3
    got = env.tenant_logs("acme").get_log_events(logGroupName=GROUP, logStreamName="s-expired", startFromHead=True)
    assert [e["message"] for e in got["events"]] == ["exp-0", "exp-1", "exp-2"]


def test_put_into_a_deleted_group_recreates_it(broker: CredentialBroker, env: LocalEnvironment) -> None:
    t = env.tenant("globex")
    dest = cloudwatch_delivery(env, "globex")
    tenant_logs = env.tenant_logs("globex")
    tenant_logs.delete_log_group(logGroupName=t.log_group)
    assert tenant_logs.describe_log_groups()["logGroups"] == []
    sink = CloudWatchSink(credentials=broker, sleep=Sleeps())
    evs = recent(5, "back")
    result = sink.send(dest, "frontend-web-1-2024-06-01", evs)
    assert result.events_delivered == 5
    got = tenant_logs.get_log_events(
        logGroupName=t.log_group, logStreamName="frontend-web-1-2024-06-01", startFromHead=True
    )
    assert [(e["timestamp"], e["message"]) for e in got["events"]] == evs
    # A second send to the now-existing stream needs no creates at all.
    assert sink.send(dest, "frontend-web-1-2024-06-01", recent(1, "again")).events_delivered == 1
