"""The replay report: exactly what was delivered, skipped, rejected and failed, per tenant and in total."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.counters import DecodeCounts, DeliveryCounts
from pipeline.delivery.results import LEDGER_SKIP, DeliveryResult, ObjectResult, Status
from pipeline.exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from pipeline.replay.plan import ObjectSpec, PlanTotals
from pipeline.tenants import DeliveryType

INTERRUPTED = "not attempted: the replay was interrupted"

# The run's and each tenant's counters, under the names pipeline.counters gives them: every delivery
# counter summed over the object's deliveries, and what decoding the object saw.
EVENT_COUNTERS = (*DeliveryCounts.NAMES, *DecodeCounts.NAMES)
# Per tenant: the PutLogEvents calls its event deliveries made, and the fewest their events needed
# (`pipeline.sinks.cloudwatch.limits.min_put_requests`): the quota unit the tenant shares with its own workloads.
PUT_COUNTERS = {"put_requests": "requests", "put_requests_minimum": "requests_minimum"}
FAILED_DETAIL_MAX = 1000  # per delivery: failures beyond this are counted, not listed
# The run's own lists: failures are listed up to this many, then counted (a fleet-wide outage must not
# grow the driver or the report without bound); skips, which need no action, are listed as a sample.
RUN_FAILED_MAX = 10_000
RUN_SKIPPED_SAMPLE = 1000
TIMELINE_MAX = 2000  # throughput points: one a unit, thinned past this, so a long backfill's report stays small


@dataclass
class KeyList:
    """(key, reason) pairs, listed up to a cap and counted, in total and per reason, beyond it."""

    cap: int
    items: list[dict[str, str]] = field(default_factory=list)
    count: int = 0
    by_reason: dict[str, int] = field(default_factory=dict)

    def add(self, key: str, reason: str) -> None:
        self.count += 1
        self.by_reason[reason] = self.by_reason.get(reason, 0) + 1
        if len(self.items) < self.cap:
            self.items.append({"key": key, "reason": reason})

    @property
    def omitted(self) -> int:
        return self.count - len(self.items)


@dataclass
class DeliveryTotals:
    tenant: str
    delivery_id: str
    type: str = ""
    target: str = ""
    objects_planned: int = 0
    objects_older_than_14d: int = 0
    objects_delivered: int = 0
    objects_damaged: int = 0
    objects_skipped: dict[str, int] = field(default_factory=dict)
    objects_failed: list[dict[str, str]] = field(default_factory=list)
    objects_failed_count: int = 0
    counts: DeliveryCounts = field(default_factory=DeliveryCounts)

    def add(self, key: str, d: DeliveryResult) -> None:
        self.type, self.target = d.type or self.type, d.target or self.target
        self.counts.add(d)
        if d.status in (Status.DELIVERED, Status.DAMAGED):
            self.objects_delivered += 1
            self.objects_damaged += d.status is Status.DAMAGED
        elif d.status is Status.SKIPPED:
            self.objects_skipped[d.reason] = self.objects_skipped.get(d.reason, 0) + 1
        else:
            self.objects_failed_count += 1
            if len(self.objects_failed) < FAILED_DETAIL_MAX:
                self.objects_failed.append({"key": key, "reason": d.reason})

    def to_dict(self) -> dict[str, Any]:
        return {
            "tenant": self.tenant,
            "delivery_id": self.delivery_id,
            "type": self.type,
            "target": self.target,
            "objects_planned": self.objects_planned,
            "objects_older_than_14d": self.objects_older_than_14d,
            "objects_delivered": self.objects_delivered,
            "objects_damaged": self.objects_damaged,
            "objects_skipped": dict(sorted(self.objects_skipped.items())),
            "objects_failed_count": self.objects_failed_count,
            "objects_failed": self.objects_failed,
            **self.counts.counts(),
        }


@dataclass
class TenantTotals:
    objects_delivered: int = 0
    objects_skipped: int = 0
    objects_failed: int = 0
    deliveries: DeliveryCounts = field(default_factory=DeliveryCounts)
    decode: DecodeCounts = field(default_factory=DecodeCounts)
    puts: DeliveryCounts = field(default_factory=DeliveryCounts)  # of CloudWatch deliveries only

    @property
    def counters(self) -> dict[str, int]:
        puts = {name: getattr(self.puts, field_name) for name, field_name in PUT_COUNTERS.items()}
        return {**self.deliveries.counts(), **self.decode.counts(), **puts}


@dataclass
class ReplayReport:
    """Folds results in as they come; holds counts, and keys only up to the lists' caps.

    `plan` is the live plan figures: the driver keeps adding to them while listing goes on.
    """

    plan: PlanTotals
    started: float = field(default_factory=time.monotonic)
    tenants: dict[str, TenantTotals] = field(default_factory=lambda: defaultdict(TenantTotals))
    failed: KeyList = field(default_factory=lambda: KeyList(RUN_FAILED_MAX))
    skipped: KeyList = field(default_factory=lambda: KeyList(RUN_SKIPPED_SAMPLE))
    damaged: KeyList = field(default_factory=lambda: KeyList(RUN_FAILED_MAX))
    listing_failed: KeyList = field(default_factory=lambda: KeyList(RUN_FAILED_MAX))  # (prefix, reason)
    timeline: list[dict[str, float]] = field(default_factory=list)
    deliveries: dict[tuple[str, str], DeliveryTotals] = field(default_factory=dict)
    objects_delivered: int = 0
    interrupted: bool = False
    # Told of every result a worker hands back (the deliveries' status, pipeline.status); not part of the report.
    observer: Callable[[ObjectResult], None] | None = None
    stopped: str | None = None  # why the run stopped before its window's end: "cap" (--max-events) or "request"

    def _delivery(self, tenant: str, delivery_id: str) -> DeliveryTotals:
        key = (tenant, delivery_id)
        if key not in self.deliveries:
            self.deliveries[key] = DeliveryTotals(tenant, delivery_id)
        return self.deliveries[key]

    def _add_deliveries(self, result: ObjectResult) -> None:
        for d in result.deliveries:
            self._delivery(result.tenant or "?", d.delivery_id).add(result.key, d)

    def settle(self, result: ObjectResult) -> None:
        """Fold in an object the plan settled (ledger, filters, bad keys and tenants): listed, and counted in
        its deliveries' sections; the per-tenant totals count what the workers did."""
        self._add_deliveries(result)
        (self.skipped if result.status is Status.SKIPPED else self.failed).add(result.key, result.reason)

    def add(self, result: ObjectResult) -> None:
        """Fold in one object's result from a worker."""
        self._add_deliveries(result)
        if self.observer is not None:
            self.observer(result)
        totals = self.tenants[result.tenant or "?"]
        totals.decode.add(result)
        for d in result.deliveries:
            totals.deliveries.add(d)
            if d.type == DeliveryType.CLOUDWATCH:
                totals.puts.add(d)
        if result.status is Status.DELIVERED:
            totals.objects_delivered += 1
            self.objects_delivered += 1
        elif result.status is Status.SKIPPED:
            totals.objects_skipped += 1
            self.skipped.add(result.key, result.reason)
        else:
            # A damaged object had its readable part delivered, but the rest is lost: that is a failure
            # an operator must see, even though retrying cannot help.
            totals.objects_failed += 1
            self.failed.add(result.key, result.reason)
            if result.status is Status.DAMAGED:
                self.damaged.add(result.key, result.reason)

    def add_interrupted(self, objects: Iterable[ObjectSpec]) -> None:
        """Account for planned objects that were never started because the replay was interrupted."""
        for o in objects:
            self.add(ObjectResult(o.key, Status.SKIPPED, INTERRUPTED, tenant=o.tenant))

    def add_listing_failure(self, prefixes: Iterable[str], reason: str) -> None:
        """Prefixes whose listing failed: their objects are unknown, so the run cannot say it delivered all."""
        for prefix in prefixes:
            self.listing_failed.add(prefix, reason)

    def tick(self) -> None:
        """Record a point of throughput over time, for the replay_report notebook. Points are cumulative, so
        thinning them keeps the curve: past TIMELINE_MAX every other one goes (the first and last stay)."""
        self.timeline.append(
            {
                "t": round(time.monotonic() - self.started, 3),
                "objects": self.objects_delivered,
                "events": self.total("events_delivered"),
                "bytes": self.total("bytes_read"),
            }
        )
        if len(self.timeline) > TIMELINE_MAX:
            last = self.timeline[-1]
            self.timeline = self.timeline[::2]
            if self.timeline[-1] is not last:
                self.timeline.append(last)

    @property
    def objects_done(self) -> int:
        """Objects the workers finished with, whatever the outcome."""
        return sum(t.objects_delivered + t.objects_skipped + t.objects_failed for t in self.tenants.values())

    def total(self, name: str) -> int:
        return sum(t.counters[name] for t in self.tenants.values())

    @property
    def exit_code(self) -> int:
        """0: everything deliverable was delivered; 1: some objects failed; 130: interrupted (re-run to resume)."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed.count or self.listing_failed.count else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        duration = time.monotonic() - self.started
        events = self.total("events_delivered")
        plan = self.plan
        for (tenant, delivery_id), p in plan.deliveries.items():
            totals = self._delivery(tenant, delivery_id)
            totals.type, totals.target = totals.type or p.type, totals.target or p.target
            totals.objects_planned, totals.objects_older_than_14d = p.objects, p.older_than_14d
        return {
            "window": {"since": plan.since.isoformat(), "until": plan.until.isoformat()},
            "listing_complete": plan.listing_complete,
            "pods_found": plan.pods_found,
            "pods_listed": plan.pods_listed,
            "objects_listed": plan.objects_listed,
            "objects_planned": plan.objects_to_deliver,
            "objects_skipped_ledger": self.skipped.by_reason.get(LEDGER_SKIP, 0),
            "objects_skipped": self.skipped.items,
            "objects_skipped_count": self.skipped.count,
            "objects_skipped_by_reason": dict(sorted(self.skipped.by_reason.items())),
            "objects_skipped_omitted": self.skipped.omitted,
            "objects_delivered": self.objects_delivered,
            "interrupted": self.interrupted,
            "stopped": self.stopped,
            "objects_damaged": self.damaged.items,
            "objects_damaged_count": self.damaged.count,
            "objects_failed": self.failed.items,
            "objects_failed_count": self.failed.count,
            "objects_failed_omitted": self.failed.omitted,
            "prefixes_failed": self.listing_failed.items,
            "prefixes_failed_count": self.listing_failed.count,
            **{name: self.total(name) for name in (*EVENT_COUNTERS, *PUT_COUNTERS)},
            "duration_s": round(duration, 3),
            "events_per_s": round(events / duration, 1) if duration > 0 else 0.0,
            "list_calls": plan.list_calls,
            "work_units": plan.work_units,
            "window_older_than_14d_fraction": round(plan.undeliverable_fraction, 4),
            "deliveries": [d.to_dict() for _, d in sorted(self.deliveries.items())],
            "tenants": {
                tenant: {
                    "objects_delivered": t.objects_delivered,
                    "objects_skipped": t.objects_skipped,
                    "objects_failed": t.objects_failed,
                    **t.counters,
                }
                for tenant, t in sorted(self.tenants.items())
            },
            "timeline": self.timeline,
        }

    def deliveries_table(self) -> str:
        cols = ("tenant", "delivery", "type", "objects", "failed", "skipped", "events", "MiB", "too_old")
        rows = [cols]
        for (tenant, delivery_id), d in sorted(self.deliveries.items()):
            c = d.counts.counts()
            rows.append(
                (
                    tenant,
                    delivery_id,
                    d.type,
                    str(d.objects_delivered),
                    str(d.objects_failed_count),
                    str(sum(d.objects_skipped.values())),
                    str(c["events_delivered"]),
                    f"{c['bytes_delivered'] / 1048576:.1f}",
                    str(c["events_rejected_too_old"]),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)

    def summary_table(self) -> str:
        cols = (
            "tenant", "objects", "failed", "events", "too_old", "too_new", "expired", "filtered", "malformed",
            "puts", "min_puts",
        )  # fmt: skip
        rows = [cols]
        for tenant, t in sorted(self.tenants.items()):
            c = t.counters
            rows.append(
                (
                    tenant,
                    str(t.objects_delivered),
                    str(t.objects_failed),
                    str(c["events_delivered"]),
                    str(c["events_rejected_too_old"]),
                    str(c["events_rejected_too_new"]),
                    str(c["events_rejected_expired"]),
                    str(c["events_filtered"]),
                    str(c["lines_malformed"]),
                    str(c["put_requests"]),
                    str(c["put_requests_minimum"]),
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)
