"""The replay report: exactly what was delivered, skipped, rejected and failed, per tenant and in total."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from pipeline.cli import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from pipeline.keys import parse_key
from pipeline.replay.plan import LEDGER_SKIP, ObjectSpec, Plan

INTERRUPTED = "not attempted: the replay was interrupted"

# Counters summed from each ObjectResult (pipeline.delivery) into the report, under the same names.
EVENT_COUNTERS = (
    "events_delivered",
    "events_rejected_too_old",
    "events_rejected_too_new",
    "events_rejected_expired",
    "events_filtered",
    "events_split",
    "lines_malformed",
    "lines_repaired_utf8",
    "messages_empty",
    "timestamps_defaulted",
    "bytes_read",
)


@dataclass
class TenantTotals:
    objects_delivered: int = 0
    objects_skipped: int = 0
    objects_failed: int = 0
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys(EVENT_COUNTERS, 0))


@dataclass
class ReplayReport:
    plan: Plan
    started: float = field(default_factory=time.monotonic)
    tenants: dict[str, TenantTotals] = field(default_factory=lambda: defaultdict(TenantTotals))
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    damaged: list[dict[str, str]] = field(default_factory=list)
    timeline: list[dict[str, float]] = field(default_factory=list)
    objects_delivered: int = 0
    interrupted: bool = False

    def __post_init__(self) -> None:
        for key, reason in self.plan.failed:
            self.failed.append({"key": key, "reason": reason})
        for key, reason in self.plan.skipped:
            self.skipped.append({"key": key, "reason": reason})

    def add(self, result: dict[str, Any]) -> None:
        """Fold in one object's result (ObjectResult.to_dict())."""
        totals = self.tenants[result.get("tenant") or "?"]
        for name in EVENT_COUNTERS:
            totals.counters[name] += int(result.get(name, 0))
        status = result["status"]
        if status == "delivered":
            totals.objects_delivered += 1
            self.objects_delivered += 1
        elif status == "skipped":
            totals.objects_skipped += 1
            self.skipped.append({"key": result["key"], "reason": result["reason"]})
        else:
            # A damaged object had its readable part delivered, but the rest is lost: that is a failure
            # an operator must see, even though retrying cannot help.
            totals.objects_failed += 1
            self.failed.append({"key": result["key"], "reason": result["reason"]})
            if status == "damaged":
                self.damaged.append({"key": result["key"], "reason": result["reason"]})

    def add_interrupted(self, objects: Iterable[ObjectSpec]) -> None:
        """Account for planned objects that were never started because the replay was interrupted."""
        for o in objects:
            self.add({"key": o.key, "tenant": parse_key(o.key).tenant, "status": "skipped", "reason": INTERRUPTED})

    def tick(self) -> None:
        """Record a point of throughput over time, for the replay_report notebook."""
        self.timeline.append(
            {
                "t": round(time.monotonic() - self.started, 3),
                "objects": self.objects_delivered,
                "events": self.total("events_delivered"),
                "bytes": self.total("bytes_read"),
            }
        )

    def total(self, name: str) -> int:
        return sum(t.counters[name] for t in self.tenants.values())

    @property
    def exit_code(self) -> int:
        """0: everything deliverable was delivered; 1: some objects failed; 130: interrupted (re-run to resume)."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_FAILED if self.failed else EXIT_OK

    def to_dict(self) -> dict[str, Any]:
        duration = time.monotonic() - self.started
        events = self.total("events_delivered")
        plan = self.plan
        return {
            "window": {"since": plan.since.isoformat(), "until": plan.until.isoformat()},
            "objects_listed": plan.objects_listed,
            "objects_planned": plan.objects_to_deliver,
            "objects_skipped_ledger": sum(1 for s in self.skipped if s["reason"] == LEDGER_SKIP),
            "objects_skipped": self.skipped,
            "objects_delivered": self.objects_delivered,
            "interrupted": self.interrupted,
            "objects_damaged": self.damaged,
            "objects_failed": self.failed,
            **{name: self.total(name) for name in EVENT_COUNTERS},
            "duration_s": round(duration, 3),
            "events_per_s": round(events / duration, 1) if duration > 0 else 0.0,
            "list_calls": plan.list_calls,
            "work_units": len(plan.units),
            "window_older_than_14d_fraction": round(plan.undeliverable_fraction, 4),
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

    def summary_table(self) -> str:
        cols = ("tenant", "objects", "failed", "events", "too_old", "too_new", "expired", "filtered", "malformed")
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
                )
            )
        widths = [max(len(r[i]) for r in rows) for i in range(len(cols))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows)
