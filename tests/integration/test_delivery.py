"""One object end to end against the embedded local AWS: S3 → decode → tenant's own CloudWatch → ledger.

Every read-back goes to the tenant's own account (moto keeps one CloudWatch per account), so a delivery
to the wrong tenant, a duplicate, a lost event or a truncated timestamp shows up here.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from devstack.provision import LocalEnvironment
from pipeline.credentials import CredentialBroker
from pipeline.delivery.engine import Deliverer
from pipeline.delivery.results import Status
from pipeline.delivery.routing import ObjectRef, TimeWindow
from pipeline.keys import format_key
from pipeline.ledger import Ledger
from pipeline.records import vector_record
from pipeline.sinks.cloudwatch.limits import DAY_MS
from pipeline.sinks.cloudwatch.sink import CloudWatchSink
from pipeline.tenants import DeliveryType, TenantDirectory

pytestmark = pytest.mark.integration

CLUSTER = "prod-1"
Event = tuple[int, str]


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ms: int) -> str:
    """RFC 3339 with nanoseconds, as Vector writes it; the sub-millisecond digits must be dropped."""
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{ms % 1000:03d}987654Z"


def on_one_day(ms: int, span: int = 60_000) -> int:
    """`ms`, moved back if [ms, ms + span] would cross a UTC midnight (those tests want one stream)."""
    return ms - span if ms % DAY_MS + span >= DAY_MS else ms


def utc_day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d")


def deliverer(local: LocalEnvironment, **kwargs: Any) -> Deliverer:
    s = local.settings
    return Deliverer(
        TenantDirectory(s.tenant_table),
        {DeliveryType.CLOUDWATCH: CloudWatchSink(CredentialBroker(s.central_role_arn))},
        Ledger(s.ledger_table),
        **kwargs,
    )


def records(tenant: str, app: str, pod: str, events: Iterable[Event]) -> list[dict[str, Any]]:
    return [vector_record(msg, iso(ts), CLUSTER, tenant, app, pod) for ts, msg in events]


def upload(
    local: LocalEnvironment, tenant: str, app: str, pod: str, body: bytes | list[Any], uid: str = "u1"
) -> ObjectRef:
    key = format_key(CLUSTER, tenant, app, pod, datetime.now(UTC), uid)
    return put(local, key, body)


def put(local: LocalEnvironment, key: str, body: bytes | list[Any]) -> ObjectRef:
    if isinstance(body, list):
        body = gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in body))
    s3 = local.client("s3")
    etag = s3.put_object(Bucket=local.names.bucket, Key=key, Body=body)["ETag"]
    return ObjectRef(local.names.bucket, key, etag=etag, size=len(body))


def stream_events(logs: Any, group: str, stream: str) -> list[Event]:
    out: list[Event] = []
    kwargs: dict[str, Any] = {"logGroupName": group, "logStreamName": stream, "startFromHead": True}
    while True:
        resp = logs.get_log_events(**kwargs)
        out.extend((e["timestamp"], e["message"]) for e in resp["events"])
        token = resp.get("nextForwardToken")
        if not resp["events"] or token == kwargs.get("nextToken"):
            return out
        kwargs["nextToken"] = token


def account_streams(logs: Any) -> dict[str, list[Event]]:
    """Every stream of every group in one account and region: (group/stream) → events."""
    out: dict[str, list[Event]] = {}
    for g in logs.describe_log_groups()["logGroups"]:
        name = g["logGroupName"]
        for s in logs.describe_log_streams(logGroupName=name)["logStreams"]:
            out[f"{name}/{s['logStreamName']}"] = stream_events(logs, name, s["logStreamName"])
    return out


# ---------------------------------------------------------------------------------------------------------


def test_every_event_arrives_once_in_the_right_account_and_stream(local_aws: LocalEnvironment) -> None:
    base = on_one_day(now_ms() - 3_600_000)
    acme_pay = [(base + i * 7, f"acme pay {i}") for i in range(30)] + [(base + 5, "acme same-ms twin")]
    acme_api = [(base + 1000 + i, f"acme api {i} ünï ✓") for i in range(10)]
    globex_pay = [(base + i, f"globex pay {i}") for i in range(20)]
    structured = [(base + 99, {"level": "info", "user": {"id": 7}})]

    refs = {
        "acme-pay": upload(
            local_aws,
            "acme",
            "payment-service",
            "pay-1",
            records("acme", "payment-service", "pay-1", acme_pay + structured),
        ),
        "acme-api": upload(local_aws, "acme", "api", "api-1", records("acme", "api", "api-1", acme_api)),
        # globex wants "Payment-Service": matched case-insensitively
        "globex-pay": upload(
            local_aws, "globex", "payment-service", "gpay-1", records("globex", "payment-service", "gpay-1", globex_pay)
        ),
    }
    d = deliverer(local_aws)
    results = {name: d.deliver(ref) for name, ref in refs.items()}
    for name, r in results.items():
        assert r.status is Status.DELIVERED, (name, r.reason)
        assert r.acknowledged and r.lines_malformed == 0 and r.events_rejected == 0
    assert results["acme-pay"].events_delivered == 32
    assert results["acme-api"].events_delivered == 10
    assert results["globex-pay"].events_delivered == 20
    assert results["acme-pay"].tenant == "acme" and results["globex-pay"].tenant == "globex"

    day = utc_day(base)
    acme = account_streams(local_aws.tenant_logs("acme"))
    expected_pay = sorted([*acme_pay, (base + 99, '{"level":"info","user":{"id":7}}')], key=lambda e: e[0])
    assert acme == {
        f"/logs/acme/payment-service-pay-1-{day}": expected_pay,
        f"/logs/acme/api-api-1-{day}": sorted(acme_api),
    }
    globex = account_streams(local_aws.tenant_logs("globex"))
    assert globex == {f"/logs/globex/payment-service-gpay-1-{day}": sorted(globex_pay)}
    # Millisecond timestamps kept (the records carry nanoseconds)
    assert {ts for ts, _ in acme[f"/logs/acme/payment-service-pay-1-{day}"]} == {ts for ts, _ in expected_pay}

    # Nothing anywhere else: not in the central account, not in a tenant's account in another region.
    for region in ("us-east-1", "eu-west-1"):
        assert local_aws.client("logs", region=region).describe_log_groups()["logGroups"] == []
    acme_eu = local_aws.client("logs", region="eu-west-1", account_id="111111111111")
    assert acme_eu.describe_log_groups()["logGroups"] == []
    globex_us = local_aws.client("logs", region="us-east-1", account_id="222222222222")
    assert globex_us.describe_log_groups()["logGroups"] == []

    ledger = Ledger(local_aws.settings.ledger_table)
    entries = {e.object_key: e for e in ledger.entries("acme")}
    assert set(entries) == {refs["acme-pay"].key, refs["acme-api"].key}
    assert entries[refs["acme-pay"].key].etag == refs["acme-pay"].etag.strip('"')
    assert entries[refs["acme-pay"].key].events_delivered == 32
    assert [e.object_key for e in ledger.entries("globex")] == [refs["globex-pay"].key]


def test_skips_and_non_recoverable_failures(local_aws: LocalEnvironment) -> None:
    t = now_ms() - 60_000
    d = deliverer(local_aws)

    disabled = d.deliver(upload(local_aws, "initech", "api", "api-1", records("initech", "api", "api-1", [(t, "x")])))
    assert disabled.status is Status.SKIPPED and "disabled" in disabled.reason and disabled.acknowledged

    unwanted = d.deliver(
        upload(local_aws, "globex", "backend", "be-1", records("globex", "backend", "be-1", [(t, "x")]))
    )
    assert unwanted.status is Status.SKIPPED and "desired_logs" in unwanted.reason and unwanted.acknowledged

    unknown = d.deliver(upload(local_aws, "oscorp", "api", "api-1", records("oscorp", "api", "api-1", [(t, "x")])))
    assert unknown.status is Status.FAILED and not unknown.recoverable and unknown.acknowledged
    assert "unknown tenant" in unknown.reason and "oscorp" in unknown.reason

    bad_key = put(local_aws, "a//b/c/f.json.gz", records("acme", "api", "api-1", [(t, "x")]))
    malformed = d.deliver(bad_key)
    assert malformed.status is Status.FAILED and not malformed.recoverable
    assert "empty segment" in malformed.reason

    tenant_first = put(
        local_aws, "acme/prod-1/api/api-1/20240101-000000-x.json.gz", records("acme", "api", "api-1", [(t, "x")])
    )
    swapped = d.deliver(tenant_first)  # the old, wrong layout: tenant first. "prod-1" is no tenant.
    assert swapped.status is Status.FAILED and not swapped.recoverable and swapped.tenant == "prod-1"

    gone = upload(local_aws, "acme", "api", "api-gone", records("acme", "api", "api-gone", [(t, "x")]))
    local_aws.client("s3").delete_object(Bucket=gone.bucket, Key=gone.key)
    vanished = d.deliver(gone)
    assert vanished.status is Status.FAILED and not vanished.recoverable
    assert "no longer exists" in vanished.reason

    # Nothing was delivered anywhere, and nothing was recorded as delivered.
    for tenant in ("acme", "globex", "initech"):
        assert account_streams(local_aws.tenant_logs(tenant)) == {}
        assert Ledger(local_aws.settings.ledger_table).entries(tenant) == []


def test_ledger_skips_a_second_delivery_but_not_a_reupload(local_aws: LocalEnvironment) -> None:
    t = on_one_day(now_ms() - 120_000)
    first = [(t + i, f"v1 {i}") for i in range(5)]
    ref = upload(local_aws, "acme", "api", "api-1", records("acme", "api", "api-1", first), uid="same")
    d = deliverer(local_aws)
    assert d.deliver(ref).status is Status.DELIVERED

    again = deliverer(local_aws).deliver(ref)  # a fresh deliverer: the ledger is durable, not in memory
    assert again.status is Status.SKIPPED and "already delivered" in again.reason and again.acknowledged

    second = [(t + 100 + i, f"v2 {i}") for i in range(3)]
    reup = put(local_aws, ref.key, records("acme", "api", "api-1", second))  # same key, new content, new ETag
    assert reup.etag != ref.etag
    r = d.deliver(reup)
    assert r.status is Status.DELIVERED and r.events_delivered == 3

    stream = f"api-api-1-{utc_day(t)}"
    assert stream_events(local_aws.tenant_logs("acme"), "/logs/acme", stream) == first + second
    [entry] = Ledger(local_aws.settings.ledger_table).entries("acme")
    assert entry.etag == reup.etag.strip('"') and entry.events_delivered == 3
    assert d.deliver(reup).status is Status.SKIPPED


def test_damaged_and_malformed_objects(local_aws: LocalEnvironment) -> None:
    t = on_one_day(now_ms() - 300_000)
    evs = [(t + i, f"line {i} " + "x" * 100) for i in range(400)]
    full = gzip.compress(b"".join(orjson.dumps(r) + b"\n" for r in records("acme", "api", "api-t", evs)))
    d = deliverer(local_aws)
    ref = upload(local_aws, "acme", "api", "api-t", full[: len(full) // 2])
    r = d.deliver(ref)
    assert r.status is Status.DAMAGED and "truncated" in r.reason
    assert r.acknowledged
    assert 0 < r.events_delivered < 400
    got = stream_events(local_aws.tenant_logs("acme"), "/logs/acme", f"api-api-t-{utc_day(t)}")
    assert got == evs[: r.events_delivered]  # the readable prefix, each event once
    [entry] = Ledger(local_aws.settings.ledger_table).entries("acme")
    assert entry.object_key == ref.key and "truncated" in entry.damaged
    assert entry.events_delivered == r.events_delivered

    # Bad lines are counted with their line numbers and do not stop the object; a record without a
    # timestamp takes the object's LastModified.
    lines = [orjson.dumps(x) for x in records("acme", "api", "api-m", [(t, "ok 1")])]
    lines += [b"{broken", orjson.dumps({"message": "no timestamp"})]
    lines += [orjson.dumps(x) for x in records("acme", "api", "api-m", [(t + 1, "ok 2")])]
    ref = upload(local_aws, "acme", "api", "api-m", gzip.compress(b"\n".join(lines) + b"\n"))
    r = d.deliver(ref)
    assert r.status is Status.DELIVERED
    assert r.lines_malformed == 1 and r.malformed_samples[0][0] == 2
    assert r.timestamps_defaulted == 1 and r.events_delivered == 3
    head = local_aws.client("s3").head_object(Bucket=ref.bucket, Key=ref.key)
    lm = int(head["LastModified"].timestamp() * 1000)
    got = []
    for day in sorted({utc_day(t), utc_day(lm)}):
        got += stream_events(local_aws.tenant_logs("acme"), "/logs/acme", f"api-api-m-{day}")
    assert sorted(got) == sorted([(t, "ok 1"), (t + 1, "ok 2"), (lm, "no timestamp")])


def test_event_times_too_old_too_new_and_midnight(local_aws: LocalEnvironment) -> None:
    now = now_ms()
    midnight = now - now % DAY_MS
    old = [(now - 20 * DAY_MS + i, f"old {i}") for i in range(4)]
    new = [(now + 3 * 3_600_000, "from the future")]
    before = [(midnight - 2000 + i, f"before {i}") for i in range(3)]
    after = [(midnight + i, f"after {i}") for i in range(2)]
    ref = upload(local_aws, "acme", "api", "api-1", records("acme", "api", "api-1", old + before + new + after))
    r = deliverer(local_aws).deliver(ref)
    assert r.status is Status.DELIVERED
    assert r.events_decoded == 10
    assert r.totals().events_rejected_too_old == 4 and r.totals().events_rejected_too_new == 1
    assert r.events_delivered == 5
    streams = account_streams(local_aws.tenant_logs("acme"))
    assert streams == {
        f"/logs/acme/api-api-1-{utc_day(midnight - 1)}": before,
        f"/logs/acme/api-api-1-{utc_day(midnight)}": after,
    }
    [entry] = Ledger(local_aws.settings.ledger_table).entries("acme")
    assert entry.events_rejected == 5


def test_time_window_filters_events(local_aws: LocalEnvironment) -> None:
    now = now_ms()
    start = on_one_day(now - 3_600_000)
    evs = [(start + i * 1000, f"e{i}") for i in range(10)]
    ref = upload(local_aws, "acme", "api", "api-1", records("acme", "api", "api-1", evs))
    window = TimeWindow(since_ms=start + 3000, until_ms=start + 7000)  # e3..e6
    r = deliverer(local_aws, window=window, source="replay").deliver(ref)
    assert r.status is Status.DELIVERED
    assert r.totals().events_filtered == 6 and r.events_delivered == 4
    got = stream_events(local_aws.tenant_logs("acme"), "/logs/acme", f"api-api-1-{utc_day(start)}")
    assert got == evs[3:7]
    [entry] = Ledger(local_aws.settings.ledger_table).entries("acme")
    assert entry.source == "replay"
