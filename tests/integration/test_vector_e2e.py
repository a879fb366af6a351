"""End to end through a real `vector`: VectorSink → vector → moto CloudWatch in the tenant's own account.

Runs only where a `vector` binary is on PATH; this machine cannot install one, so here it skips.
"""

from __future__ import annotations

import shutil
import time

import pytest

from devstack.provision import LocalEnvironment
from pipeline.credentials import CredentialBroker
from pipeline.sinks.cloudwatch.limits import prepare, stream_name
from pipeline.sinks.vector import VectorSink

pytestmark = [
    pytest.mark.integration,
    pytest.mark.vector,
    pytest.mark.skipif(
        shutil.which("vector") is None, reason="vector binary not on PATH (cannot be installed on this machine)"
    ),
]


def test_events_arrive_exactly_in_the_tenants_cloudwatch(local_aws: LocalEnvironment) -> None:
    tenant = local_aws.tenant("acme")
    dest = tenant.delivery()
    now_ms = int(time.time() * 1000)
    base = now_ms - 60_000
    raw = [(base + i * 7, f"line {i} ünïcödé {{json}}") for i in range(25)]
    raw.append((base + 3, "same millisecond as another, later in the object"))
    prepared = prepare(raw, now_ms)
    stream = stream_name("payment-service", "payment-7d9f", base)

    broker = CredentialBroker(local_aws.central_role_arn)
    with VectorSink(broker, flush_timeout_s=60) as sink:
        result = sink.send(dest, stream, prepared.events)
        assert result.events_delivered == len(raw)
        sink.flush()

    logs = local_aws.tenant_logs("acme")
    got = []
    kwargs = {"logGroupName": tenant.log_group, "logStreamName": stream, "startFromHead": True}
    while True:
        page = logs.get_log_events(**kwargs)
        got.extend((e["timestamp"], e["message"]) for e in page["events"])
        if not page["events"] or page.get("nextForwardToken") == kwargs.get("nextToken"):
            break
        kwargs["nextToken"] = page["nextForwardToken"]
    # Exact: every event once, with its own millisecond timestamp (not Vector's "now"), message only.
    assert sorted(got) == sorted(prepared.events)
    assert [ts for ts, _ in got] == sorted(ts for ts, _ in got)
