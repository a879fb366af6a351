"""Which of a tenant's deliveries take an object, and why the others do not: the object reference, the
replay's window and `Routing`. Pure: no I/O, importable without the delivery engine."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from pipeline.coverage import WHOLE, Coverage
from pipeline.delivery.results import LEDGER_SKIP, OUTSIDE_WINDOW, DeliveryResult
from pipeline.keys import ObjectKey
from pipeline.sinks import (
    SinkTraits,
)
from pipeline.tenants import Delivery, DeliveryType, Tenant


@dataclass(frozen=True)
class ObjectRef:
    bucket: str
    key: str
    etag: str | None = None
    size: int | None = None
    last_modified: datetime | None = None


@dataclass(frozen=True)
class TimeWindow:
    """The replay's window, since_ms <= t < until_ms.

    Event deliveries (CloudWatch) filter events by their own timestamp and count the rest as filtered.
    Object deliveries (S3) take whole objects by the write time in their key, so adjacent windows cover
    every object exactly once.
    """

    since_ms: int
    until_ms: int

    @property
    def coverage(self) -> Coverage:
        return Coverage.window(self.since_ms, self.until_ms)

    def holds_object(self, parsed: ObjectKey, last_modified: datetime | None) -> bool:
        written = parsed.write_time or last_modified
        return written is None or self.since_ms <= written.timestamp() * 1000 < self.until_ms


@dataclass(frozen=True)
class Routing:
    """Which of a tenant's deliveries take an object, and why the others do not: pure, shared by the
    Deliverer (per object) and the replay plan (per listed object, with the ledger read in batches)."""

    traits: Mapping[DeliveryType, SinkTraits]  # the sink serving each delivery type
    window: TimeWindow | None = None
    selected: frozenset[str] = frozenset()  # delivery ids or types; empty: every delivery
    use_ledger: bool = True  # False: --redeliver, or no sink that writes the ledger
    # False (the consumer): an object whose deliveries with work are all idempotent (S3) is delivered without
    # asking the ledger, since a resend overwrites the same key; its record is still written.
    read_idempotent: bool = True

    def selects(self, delivery_id: str, kind: str) -> bool:
        return not self.selected or delivery_id in self.selected or kind in self.selected

    def whole_objects(self, kind: DeliveryType) -> bool:
        return not self.traits[kind].needs_events

    @property
    def scope(self) -> Coverage:
        """What an event delivery of this run covers of an object: the window, or all of it."""
        return self.window.coverage if self.window else WHOLE

    def route(
        self,
        tenant: Tenant,
        parsed: ObjectKey,
        last_modified: datetime | None,
        delivered: Callable[[], Mapping[str, Coverage]],
        held: Mapping[str, str] | None = None,
    ) -> tuple[list[DeliveryResult], list[tuple[Delivery, DeliveryResult]]]:
        """(a result for every selected delivery, the deliveries with work to do and their results).

        `delivered` gives what the ledger has for this object, per delivery; it is called at most once,
        and only when a delivery needs the answer. An object delivery with a record is done; an event
        delivery is done when its record covers this run's scope, and otherwise sends only the rest.
        `held`: deliveries the caller holds back (id → reason), failed recoverably before the ledger is asked.
        Without `read_idempotent`, the ledger is asked only when a delivery that is not idempotent has work.
        """
        results: list[DeliveryResult] = []
        todo: list[tuple[Delivery, DeliveryResult]] = []
        for bad in tenant.invalid:
            if self.selects(bad.delivery_id, ""):
                results.append(DeliveryResult(bad.delivery_id, "?").fail(bad.reason, recoverable=False))
        open_: list[tuple[Delivery, DeliveryResult, str]] = []
        for d in tenant.deliveries:
            if not self.selects(d.delivery_id, d.type):
                continue
            r = DeliveryResult(d.delivery_id, str(d.type), d.target)
            results.append(r)
            if d.type not in self.traits:  # a process built without that sink: leave the work for one with it
                r.fail(f"no sink for {d.type} deliveries in this process", recoverable=True)
                continue
            reason = d.skip_reason(parsed)
            if not reason and self.window and self.whole_objects(d.type):
                reason = "" if self.window.holds_object(parsed, last_modified) else OUTSIDE_WINDOW
            if not reason and held and d.delivery_id in held:
                r.fail(held[d.delivery_id], recoverable=True)
                r.held = True
                continue
            if not self.whole_objects(d.type):
                r.scope = self.scope
            open_.append((d, r, reason))
        consult = self.use_ledger and any(
            not reason
            and self.traits[d.type].writes_ledger
            and (self.read_idempotent or not self.traits[d.type].idempotent)
            for d, _, reason in open_
        )
        done: Mapping[str, Coverage] | None = None
        for d, r, reason in open_:
            if not reason and consult and self.traits[d.type].writes_ledger:
                if done is None:
                    done = delivered()
                covered = done.get(d.delivery_id)
                if covered is not None and (self.whole_objects(d.type) or covered.covers(r.scope)):
                    reason = LEDGER_SKIP
                elif covered is not None:
                    r.covered = covered
            if reason:
                r.skip(reason)
            else:
                todo.append((d, r))
        return results, todo
