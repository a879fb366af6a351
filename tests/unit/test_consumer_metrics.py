"""Consumer metrics and the /metrics + /healthz server, over real HTTP on a free port."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.consumer.metrics import Metrics, MetricsServer, object_status
from pipeline.delivery.results import DeliveryResult, ObjectResult, Status


def get(port: int, path: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_observe_object_counts_per_tenant_and_latency() -> None:
    m = Metrics()
    delivered = ObjectResult(
        key="k",
        tenant="acme",
        lines_malformed=2,
        bytes_read=1000,
        last_modified=100.0,
        delivered_at=103.5,
        deliveries=[DeliveryResult("cloudwatch", "cloudwatch", events_delivered=90, events_rejected_too_old=7)],
    )
    m.observe_object(delivered, 0.2)
    m.observe_object(ObjectResult(key="bad", status=Status.FAILED, reason="empty segment"), 0.001)
    m.observe_object(ObjectResult(key="k2", tenant="acme", status=Status.FAILED, recoverable=True), 0.5)
    s = samples(m.render().decode())
    assert s[("logdelivery_objects_total", (("reason", "none"), ("status", "delivered"), ("tenant", "acme")))] == 1
    assert s[("logdelivery_objects_total", (("reason", "error"), ("status", "rejected"), ("tenant", "_invalid")))] == 1
    assert s[("logdelivery_objects_total", (("reason", "error"), ("status", "failed"), ("tenant", "acme")))] == 1
    assert s[("logdelivery_events_total", (("outcome", "delivered"), ("tenant", "acme")))] == 90
    assert s[("logdelivery_events_total", (("outcome", "rejected"), ("tenant", "acme")))] == 7
    assert s[("logdelivery_events_total", (("outcome", "malformed"), ("tenant", "acme")))] == 2
    # Only the delivered object has a latency: 3.5 s from LastModified.
    assert s[("logdelivery_delivery_latency_seconds_count", ())] == 1
    assert s[("logdelivery_delivery_latency_seconds_sum", ())] == pytest.approx(3.5)
    assert s[("logdelivery_delivery_latency_seconds_bucket", (("le", "2.0"),))] == 0
    assert s[("logdelivery_delivery_latency_seconds_bucket", (("le", "5.0"),))] == 1
    assert s[("logdelivery_object_duration_seconds_count", ())] == 3


def test_observe_object_counts_each_delivery_by_type_and_status() -> None:
    m = Metrics()
    both = ObjectResult(
        key="k",
        tenant="umbrella",
        bytes_read=1000,
        deliveries=[
            DeliveryResult("cloudwatch", "cloudwatch", events_delivered=40, events_rejected_expired=2),
            DeliveryResult("s3-archive", "s3", bytes_delivered=1000),
        ],
    )
    m.observe_object(both, 0.1)
    partly = ObjectResult(
        key="k2",
        tenant="umbrella",
        deliveries=[
            DeliveryResult("cloudwatch", "cloudwatch").skip("application 'x' is not in desired_logs of delivery"),
            DeliveryResult("s3-archive", "s3", bytes_delivered=500).fail("SlowDown", recoverable=True),
            DeliveryResult("s3-old", "s3").fail("AccessDenied", recoverable=False),
        ],
    )
    m.observe_object(partly.settle(), 0.1)
    s = samples(m.render().decode())

    def deliveries(kind: str, status: str) -> float:
        return sum(
            v
            for (name, labels), v in s.items()
            if name == "logdelivery_deliveries_total"
            and {("status", status), ("tenant", "umbrella"), ("type", kind)} <= set(labels)
        )

    assert deliveries("cloudwatch", "delivered") == 1
    assert deliveries("cloudwatch", "skipped") == 1
    assert deliveries("s3", "delivered") == 1
    assert deliveries("s3", "failed") == 1  # recoverable: left for a retry
    assert deliveries("s3", "rejected") == 1  # failed for good
    # Only what was delivered counts as delivered bytes; the events are the object's totals.
    assert s[("logdelivery_delivered_bytes_total", (("tenant", "umbrella"), ("type", "s3")))] == 1000
    assert s[("logdelivery_events_total", (("outcome", "delivered"), ("tenant", "umbrella")))] == 40
    assert s[("logdelivery_events_total", (("outcome", "rejected"), ("tenant", "umbrella")))] == 2
    assert s[("logdelivery_objects_total", (("reason", "error"), ("status", "failed"), ("tenant", "umbrella")))] == 1


def test_failures_say_throttled_and_backing_off_and_the_back_off_gauge_returns_to_zero() -> None:
    m = Metrics()
    throttled = DeliveryResult("cloudwatch", "cloudwatch").fail("throttled", True, code="ThrottlingException")
    archive = DeliveryResult("s3-archive", "s3", bytes_delivered=10)
    m.observe_object(ObjectResult(key="k", tenant="umbrella", deliveries=[throttled, archive]).settle(), 0.1)
    held = DeliveryResult("cloudwatch", "cloudwatch").fail("held", True, code="ThrottlingException")
    held.held = True
    denied = DeliveryResult("s3-archive", "s3").fail("held", True, code="AccessDenied")
    denied.held = True
    m.observe_object(ObjectResult(key="k2", tenant="umbrella", deliveries=[held, denied]).settle(), 0.1)
    s = samples(m.render().decode())
    row, cw = "logdelivery_deliveries_total", ("type", "cloudwatch")
    assert s[(row, (("reason", "throttled"), ("status", "failed"), ("tenant", "umbrella"), cw))] == 2
    assert s[(row, (("reason", "backing_off"), ("status", "failed"), ("tenant", "umbrella"), ("type", "s3")))] == 1
    assert s[(row, (("reason", "none"), ("status", "delivered"), ("tenant", "umbrella"), ("type", "s3")))] == 1
    # One object failed only by throttling, the other for two reasons.
    objects = "logdelivery_objects_total"
    assert s[(objects, (("reason", "throttled"), ("status", "failed"), ("tenant", "umbrella")))] == 1
    assert s[(objects, (("reason", "error"), ("status", "failed"), ("tenant", "umbrella")))] == 1

    gauge = "logdelivery_destinations_backing_off"
    m.set_backing_off({("umbrella", "cloudwatch"): 1, ("acme", "cloudwatch"): 2})
    s = samples(m.render().decode())
    assert s[(gauge, (("delivery_type", "cloudwatch"), ("tenant", "acme")))] == 2
    m.set_backing_off({("acme", "cloudwatch"): 1})
    s = samples(m.render().decode())
    assert s[(gauge, (("delivery_type", "cloudwatch"), ("tenant", "umbrella")))] == 0  # recovered, not stale
    assert s[(gauge, (("delivery_type", "cloudwatch"), ("tenant", "acme")))] == 1


def test_two_metrics_objects_do_not_collide() -> None:
    Metrics().messages.labels("delivered").inc()
    assert b'logdelivery_messages_total{outcome="delivered"}' not in Metrics().render()


@pytest.mark.parametrize(
    ("status", "recoverable", "label"),
    [
        (Status.DELIVERED, False, "delivered"),
        (Status.SKIPPED, False, "skipped"),
        (Status.DAMAGED, False, "damaged"),
        (Status.FAILED, False, "rejected"),
        (Status.FAILED, True, "failed"),
    ],
)
def test_object_status_labels(status: Status, recoverable: bool, label: str) -> None:
    assert object_status(ObjectResult(key="k", status=status, recoverable=recoverable)) == label
    assert object_status(DeliveryResult("d", "s3", status=status, recoverable=recoverable)) == label


def test_server_serves_metrics_and_health() -> None:
    m = Metrics()
    m.inflight.set(3)
    state: dict[str, Any] = {"ok": True}
    server = MetricsServer(
        m, lambda: (state["ok"], {"status": "running" if state["ok"] else "stalled"}), "127.0.0.1", 0
    )
    server.start()
    try:
        assert server.port > 0
        code, ctype, body = get(server.port, "/metrics")
        assert code == 200 and ctype.startswith("text/plain")
        assert samples(body.decode())[("logdelivery_inflight_messages", ())] == 3
        code, ctype, body = get(server.port, "/healthz")
        assert (code, ctype, orjson.loads(body)) == (200, "application/json", {"status": "running"})
        state["ok"] = False
        code, _, body = get(server.port, "/healthz")
        assert (code, orjson.loads(body)["status"]) == (503, "stalled")
        assert get(server.port, "/nope")[0] == 404
    finally:
        server.stop()
