"""A delivery's status as the consumer moves it (pipeline/status.py, CONTRACTS.md §9 "Status"): delivered,
then throttled, then refused, through the fault proxy in front of moto. The consumer's own pieces run in this
process (the processor, its circuits with a clock the test moves, the status recorder), so each step is
decided by what the proxy answered, never by waiting; the status is read back from the table as the API
reads it."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fault_helpers import FaultStack, write

from devstack.faults import Error, Rule
from pipeline.admin.store import TenantStore
from pipeline.circuits import CircuitBreakers
from pipeline.consumer.processor import MessageProcessor, consumer_retry
from pipeline.delivery.engine import build_deliverer
from pipeline.keys import parse_key
from pipeline.settings import Settings
from pipeline.status import StatusRecorder, StatusTable, circuit_backoff, iso, tenant_status

pytestmark = pytest.mark.integration

PUT = "PutLogEvents"


def _body(bucket: str, key: str, size: int) -> str:
    record = {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put"}
    record["s3"] = {"bucket": {"name": bucket}, "object": {"key": key, "size": size}}  # type: ignore[assignment]
    return json.dumps({"Records": [record]})


def test_status_moves_from_healthy_to_backing_off_to_failing_with_the_right_error_and_counts(
    stack: FaultStack,
) -> None:
    local = stack.local
    manifest = write(local, tenants=("acme",), objects_per_pod=4, events_per_object=20, seed=25)
    objects = sorted(manifest.objects, key=lambda o: o.key)  # one pod: key order is write-time order
    settings = Settings.from_env()  # through the proxy
    clock = [1000.0]
    circuits = CircuitBreakers(clock=lambda: clock[0])
    table = StatusTable(settings.status_table, local.client("dynamodb"))
    recorder = StatusRecorder(table, backoff=circuit_backoff(circuits))
    deliverer = build_deliverer(settings, retry=consumer_retry(put_attempts=3, throttle_attempts=2))
    processor = MessageProcessor(deliverer, bucket=settings.bucket, circuits=circuits, status=recorder)
    store = TenantStore(local.names.tenant_table, local.client("dynamodb"))

    def deliver(i: int) -> Any:
        o = objects[i]
        return processor.process(_body(settings.bucket, o.key, o.size), f"m{i}", 1)

    def status() -> dict[str, Any]:
        recorder.flush(force=True)  # the process's timer, now: what it has is written
        (doc,) = tenant_status(store, table, "acme", time.time())["deliveries"]
        return doc

    def key_time(i: int) -> str | None:
        written = parse_key(objects[i].key).write_time
        return iso(written.timestamp()) if written else None

    # 1. Delivered.
    assert deliver(0).acknowledged
    s = status()
    assert s["state"] == "healthy" and s["last_error"] is None
    assert s["last_hour"] == {
        "objects": 1,
        "events": objects[0].expected_count,
        "bytes": s["last_hour"]["bytes"],
        "events_rejected": 0,
        "objects_failed": 0,
    }
    assert s["last_hour"]["bytes"] > 0 and s["last_day"] == s["last_hour"]
    assert s["newest_object_time"] == key_time(0) and s["newest_event_time"] is not None
    assert s["lag_seconds"] == 0

    # 2. The tenant's CloudWatch throttles every put: the object fails, the circuit opens.
    throttled = stack.proxy.add(Rule(Error.throttling(), service="logs", operation=PUT))
    outcome = deliver(1)
    assert not outcome.acknowledged and throttled.stats.injected >= 1
    s = status()
    assert s["state"] == "backing-off"
    assert s["last_error"]["code"] == "ThrottlingException" and "throttl" in s["last_error"]["remedy"]
    assert s["last_hour"]["objects"] == 1 and s["last_hour"]["objects_failed"] == 1
    # While the circuit is open the next object is held, never attempted: seen, not failed.
    puts = len(stack.proxy.calls("logs", PUT))
    assert not deliver(2).acknowledged
    assert len(stack.proxy.calls("logs", PUT)) == puts
    s = status()
    assert s["state"] == "backing-off" and s["last_hour"]["objects_failed"] == 1
    assert s["lag_seconds"] is not None and s["lag_seconds"] > 0  # a newer object waits
    assert s["newest_object_time"] == key_time(0)

    # 3. The customer's role now refuses the write: the probe after the open time fails for another reason.
    stack.proxy.clear()
    denied = stack.proxy.add(Rule(Error.access_denied("AccessDeniedException"), service="logs", operation=PUT))
    clock[0] += circuits.open_time(("acme", "cloudwatch")) + 0.1
    assert not deliver(1).acknowledged and denied.stats.injected >= 1
    s = status()
    assert s["state"] == "failing"
    assert s["last_error"]["code"] == "AccessDeniedException"
    assert "logs:PutLogEvents" in s["last_error"]["remedy"]
    assert s["last_hour"]["objects_failed"] == 2 and s["last_hour"]["objects"] == 1

    # 4. Fixed: the next probe goes through and the rest follow. Delivering again, with the hour's failures.
    stack.proxy.clear()
    clock[0] += circuits.open_time(("acme", "cloudwatch")) + 0.1
    for i in (1, 2, 3):
        assert deliver(i).acknowledged
    s = status()
    assert s["state"] == "degraded"
    assert s["last_hour"]["objects"] == 4 and s["last_hour"]["objects_failed"] == 2
    assert s["last_hour"]["events"] == sum(o.expected_count for o in objects)
    assert s["newest_object_time"] == key_time(3) and s["lag_seconds"] == 0
    recorder.close()
