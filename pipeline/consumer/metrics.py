"""Prometheus metrics for the consumer, and the small HTTP server that serves /metrics and /healthz.

Every metric lives in the consumer's own registry (not prometheus_client's global one), so a process
can build several consumers (tests, the benchmark) without "duplicated timeseries" errors. Names are
prefixed `logdelivery_`. Per-tenant labels are bounded by the namespaces of the clusters that write
to the bucket; a key too malformed to name a tenant is counted under `_invalid`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from pipeline.classify import is_throttling
from pipeline.delivery.results import DeliveryResult, ObjectResult, Status
from pipeline.tenants import Tenant

log = logging.getLogger(__name__)

INVALID_TENANT = "_invalid"
# From seconds (a hot pipeline) to an hour (a backlog after an outage).
LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
DURATION_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, float("inf"))


def object_status(result: ObjectResult | DeliveryResult) -> str:
    """delivered, skipped, damaged, rejected (failed, acknowledged) or failed (recoverable, retried)."""
    if result.status is Status.FAILED:
        return "failed" if result.recoverable else "rejected"
    return str(result.status)


def failure_reason(result: ObjectResult | DeliveryResult) -> str:
    """The `reason` label of the object and delivery counters: none (not failed); throttled (the destination
    throttled it, or held it back while backing off from throttling); backing_off (held back while its
    destination backs off from another failure); error (anything else). An object takes its deliveries'
    reason when they all agree, else error."""
    if result.status is not Status.FAILED:
        return "none"
    if isinstance(result, DeliveryResult):
        if is_throttling(result.code):
            return "throttled"
        return "backing_off" if result.held else "error"
    reasons = {failure_reason(d) for d in result.deliveries if d.status is Status.FAILED}
    return reasons.pop() if len(reasons) == 1 else "error"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.messages_received = Counter("logdelivery_messages_received", "SQS messages received", registry=r)
        self.messages = Counter(
            "logdelivery_messages",
            "Messages handled, by outcome: delivered (deleted), skipped (ledger, disabled tenant or filtered "
            "application; deleted), ignored (no object in it, deleted), "
            "rejected (non-recoverable, deleted and reported), retried (left for redelivery), "
            "released (handed back at shutdown)",
            ["outcome"],
            registry=r,
        )
        self.objects = Counter(
            "logdelivery_objects",
            "Objects by tenant, status (delivered, skipped, damaged, rejected, failed) and the failure's reason "
            "(none, throttled, backing_off, error)",
            ["tenant", "status", "reason"],
            registry=r,
        )
        self.events = Counter(
            "logdelivery_events",
            "Events by tenant and outcome: delivered, rejected (by CloudWatch: too old, too new, expired), "
            "malformed (lines that are not JSON)",
            ["tenant", "outcome"],
            registry=r,
        )
        self.bytes_read = Counter("logdelivery_object_bytes", "Decoded object bytes read", ["tenant"], registry=r)
        self.events_filtered = Counter(
            "logdelivery_events_filtered",
            "Events a delivery left out on purpose, by tenant and reason: content (its include/exclude patterns, "
            "CONTRACTS.md §3) or window (outside the requested time window); summed over the object's deliveries",
            ["tenant", "reason"],
            registry=r,
        )
        self.deliveries = Counter(
            "logdelivery_deliveries",
            "Object deliveries by tenant, delivery type (cloudwatch, s3) and status (delivered, skipped, damaged, "
            "rejected: failed for good, failed: left for a retry) and the failure's reason (none, throttled, "
            "backing_off: held while its destination backs off, error)",
            ["tenant", "type", "status", "reason"],
            registry=r,
        )
        self.delivered_bytes = Counter(
            "logdelivery_delivered_bytes",
            "Bytes delivered, by tenant and delivery type (s3: object bytes written; cloudwatch: decoded bytes)",
            ["tenant", "type"],
            registry=r,
        )
        self.latency = Histogram(
            "logdelivery_delivery_latency_seconds",
            "From the object's S3 LastModified to the end of its delivery",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "logdelivery_object_duration_seconds",
            "Time spent delivering one object (GetObject to ledger write)",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge("logdelivery_inflight_messages", "Messages received and not yet finished", registry=r)
        self.visibility_extensions = Counter(
            "logdelivery_visibility_extensions",
            "Visibility heartbeat extensions, by result (ok, failed)",
            ["result"],
            registry=r,
        )
        self.sqs_errors = Counter("logdelivery_sqs_errors", "Failed SQS calls, by operation", ["operation"], registry=r)
        self.last_poll = Gauge(
            "logdelivery_last_poll_timestamp_seconds", "Unix time the poll loop last started a receive", registry=r
        )
        self.backing_off = Gauge(
            "logdelivery_destinations_backing_off",
            "Destinations (tenant deliveries) whose circuit is open: the consumer holds their objects back and "
            "probes them now and then (pipeline/circuits.py)",
            ["tenant", "delivery_type"],
            registry=r,
        )
        self._backing_off_lock = threading.Lock()
        self._backing_off_seen: set[tuple[str, str]] = set()
        self.last_delivery = Gauge(
            "logdelivery_last_delivery_timestamp_seconds",
            "Unix time the tenant's last object was delivered (the canary alert watches its tenant's)",
            ["tenant"],
            registry=r,
        )

        self.tenant_legacy = Gauge(
            "logdelivery_tenant_legacy",
            "1 for a tenant without a profile (CONTRACTS.md §3): its second hop sends the shared ExternalId, "
            "and it takes no new delivery until `log-tenants migrate-profiles` gives it one; 0 once it has one",
            ["tenant"],
            registry=r,
        )
        self.deliveries_without_clusters = Gauge(
            "logdelivery_deliveries_without_clusters",
            "Deliveries of the tenant without `clusters`: older items that take the namespace from every cluster",
            ["tenant"],
            registry=r,
        )

    def observe_tenant(self, tenant: Tenant) -> None:
        """The tenant's flags, as of its last object (one label per tenant, like the other per-tenant series)."""
        self.tenant_legacy.labels(tenant.tenant_id).set(1 if tenant.legacy else 0)
        self.deliveries_without_clusters.labels(tenant.tenant_id).set(len(tenant.unbound_clusters))

    def observe_object(self, result: ObjectResult, seconds: float) -> None:
        tenant = result.tenant or INVALID_TENANT
        self.objects.labels(tenant, object_status(result), failure_reason(result)).inc()
        self.duration.observe(seconds)
        if result.events_delivered:
            self.events.labels(tenant, "delivered").inc(result.events_delivered)
        if result.events_rejected:
            self.events.labels(tenant, "rejected").inc(result.events_rejected)
        if result.lines_malformed:
            self.events.labels(tenant, "malformed").inc(result.lines_malformed)
        if result.bytes_read:
            self.bytes_read.labels(tenant).inc(result.bytes_read)
        totals = result.totals()
        if totals.events_filtered_content:
            self.events_filtered.labels(tenant, "content").inc(totals.events_filtered_content)
        if totals.events_filtered > totals.events_filtered_content:
            self.events_filtered.labels(tenant, "window").inc(totals.events_filtered - totals.events_filtered_content)
        for d in result.deliveries:
            self.deliveries.labels(tenant, d.type, object_status(d), failure_reason(d)).inc()
            if d.bytes_delivered and d.done:
                self.delivered_bytes.labels(tenant, d.type).inc(d.bytes_delivered)
        if result.status in (Status.DELIVERED, Status.DAMAGED) and result.delivered_at and result.last_modified:
            # Clocks of S3 and this host differ a little; a negative latency is skew, not a real value.
            self.latency.observe(max(0.0, result.delivered_at - result.last_modified))
        if result.status in (Status.DELIVERED, Status.DAMAGED) and result.tenant:
            self.last_delivery.labels(result.tenant).set(result.delivered_at or time.time())

    def set_backing_off(self, counts: dict[tuple[str, str], int]) -> None:
        """The destinations in back-off now, by (tenant, delivery type); a pair that recovered goes to 0."""
        with self._backing_off_lock:
            for labels in self._backing_off_seen - counts.keys():
                self.backing_off.labels(*labels).set(0)
            for labels, n in counts.items():
                self.backing_off.labels(*labels).set(n)
            self._backing_off_seen |= counts.keys()

    def render(self) -> bytes:
        return generate_latest(self.registry)


Health = Callable[[], tuple[bool, dict[str, Any]]]


class MetricsServer:
    """/metrics (Prometheus text format) and /healthz (200 or 503, with a small JSON body) on one port."""

    # S104: the metrics port is scraped from other pods; the NetworkPolicy limits who reaches it.
    def __init__(self, metrics: Metrics, health: Health, host: str = "0.0.0.0", port: int = 8080) -> None:  # noqa: S104
        self._metrics = metrics
        self._health = health
        self._host = host
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful with port 0)."""
        return self._server.server_address[1] if self._server else self._port

    def start(self) -> MetricsServer:
        metrics, health = self._metrics, self._health

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, CONTENT_TYPE_LATEST, metrics.render())
                elif path in ("/healthz", "/health", "/livez", "/readyz"):
                    ok, detail = health()
                    self._send(200 if ok else 503, "application/json", orjson.dumps(detail))
                else:
                    self._send(404, "text/plain", b"not found\n")

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # probes every few seconds would drown the structured logs

        self._server = ThreadingHTTPServer((self._host, self._port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        log.info("metrics server listening", extra={"host": self._host, "port": self.port})
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
