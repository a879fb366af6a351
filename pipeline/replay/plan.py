"""Turn a listing into work units: pure arithmetic over plain values, no I/O.

Each pod's objects stay together and in time order inside one unit, so one stream is written by one
sink, in order. Small pods are packed together so units have balanced byte sizes; idle workers pull the
next unit, which balances the rest.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from pipeline.batching import MAX_AGE_MS
from pipeline.delivery import LEDGER_SKIP, DeliveryResult, ObjectResult, Routing, Status, TimeWindow
from pipeline.replay.listing import ListedObject, Listing
from pipeline.sinks import plan_traits
from pipeline.tenants import Delivery, DeliveryType, Tenant
from pipeline.timespec import to_ms

MIN_UNIT_BYTES = 256 * 1024  # below this, per-unit overhead outweighs balance
UNITS_PER_WORKER = 4


@dataclass(frozen=True)
class ObjectSpec:
    """What a worker needs to deliver one object; small, so units ship cheaply to Ray workers."""

    key: str
    size: int
    etag: str
    last_modified: float  # epoch seconds


@dataclass(frozen=True)
class WorkUnit:
    unit_id: int
    objects: tuple[ObjectSpec, ...]
    bytes: int


@dataclass
class GroupStats:
    objects: int = 0
    bytes: int = 0
    estimated_events: int = 0
    already_delivered: int = 0


@dataclass
class DeliveryPlan:
    """What one delivery of one tenant will take from the window, for the dry run and the report."""

    tenant: str
    delivery_id: str
    type: str
    target: str
    whole_objects: bool = False  # S3: whole objects by write time; else events by their own timestamp
    objects: int = 0  # to deliver
    bytes: int = 0
    estimated_events: int = 0
    already_delivered: int = 0
    older_than_14d: int = 0  # event deliveries: objects written past CloudWatch's age limit
    skipped: dict[str, int] = field(default_factory=dict)  # reason → objects (other than the ledger)
    failed: dict[str, int] = field(default_factory=dict)  # reason → objects


@dataclass
class Plan:
    since: datetime
    until: datetime
    units: list[WorkUnit] = field(default_factory=list)
    by_tenant_app: dict[tuple[str, str], GroupStats] = field(default_factory=dict)
    deliveries: dict[tuple[str, str], DeliveryPlan] = field(default_factory=dict)  # (tenant, delivery_id)
    settled: list[ObjectResult] = field(default_factory=list)  # decided here: no worker needs to see them
    objects_listed: int = 0
    undeliverable_fraction: float = 0.0  # share of the window older than CloudWatch's 14 days
    undeliverable_objects: int = 0
    list_calls: int = 0

    @property
    def objects_to_deliver(self) -> int:
        return sum(len(u.objects) for u in self.units)

    @property
    def bytes_to_deliver(self) -> int:
        return sum(u.bytes for u in self.units)

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """(key, reason) of objects no delivery takes: ledger, disabled, filtered, outside the window."""
        return [(r.key, r.reason) for r in self.settled if r.status is Status.SKIPPED]

    @property
    def failed(self) -> list[tuple[str, str]]:
        """(key, reason) of objects that cannot be delivered anywhere: malformed, unknown tenant, bad config."""
        return [(r.key, r.reason) for r in self.settled if r.status is Status.FAILED]

    @property
    def skipped_ledger(self) -> int:
        return sum(1 for r in self.settled if r.status is Status.SKIPPED and r.reason == LEDGER_SKIP)

    @property
    def has_event_deliveries(self) -> bool:
        return any(not d.whole_objects for d in self.deliveries.values())


def default_routing(since: datetime, until: datetime) -> Routing:
    """Each delivery type through its default sink, over the window: what a plain replay does."""
    return Routing(plan_traits("cloudwatch"), TimeWindow(to_ms(since), to_ms(until)))


def make_plan(
    listing: Listing,
    tenants: Mapping[str, Tenant | str],
    delivered: Mapping[str, frozenset[str]],
    since: datetime,
    until: datetime,
    workers: int,
    now: datetime,
    events_per_byte: float = 0.0,
    routing: Routing | None = None,
) -> Plan:
    """A plan of work units. `tenants` maps a tenant id to its config, or to why it cannot be used;
    `delivered` maps an object key to the deliveries the ledger already has for it."""
    routing = routing or default_routing(since, until)
    plan = Plan(since=since, until=until, list_calls=listing.list_calls)
    plan.settled.extend(ObjectResult(key).fail(reason, recoverable=False) for key, reason in listing.malformed)
    plan.objects_listed = sum(len(v) for v in listing.pods.values()) + len(listing.malformed)
    cutoff_ms = now.timestamp() * 1000 - MAX_AGE_MS
    plan.undeliverable_fraction = _fraction_before(since, until, cutoff_ms)

    pods: dict[str, list[ListedObject]] = {}
    for prefix, objs in listing.pods.items():
        first = objs[0].parsed
        tenant = tenants.get(first.tenant, f"tenant {first.tenant!r} was not looked up")
        if isinstance(tenant, str):
            plan.settled.extend(_result(o).fail(tenant, recoverable=False) for o in objs)
            continue
        todo_objects: list[ListedObject] = []
        for o in objs:
            results, todo = routing.route(tenant, o.parsed, o.last_modified, lambda k=o.key: delivered.get(k, _NONE))
            too_old = o.parsed.write_time is not None and o.parsed.write_time.timestamp() * 1000 < cutoff_ms
            _count(plan, tenant.tenant_id, routing, results, todo, o, too_old, events_per_byte)
            if todo:
                todo_objects.append(o)
                continue
            settled = _result(o)
            settled.deliveries = results
            plan.settled.append(settled.settle())
        if todo_objects:
            pods[prefix] = todo_objects
    plan.units = pack_units(pods, workers)
    return plan


_NONE: frozenset[str] = frozenset()


def _result(o: ListedObject) -> ObjectResult:
    return ObjectResult(o.key, tenant=o.parsed.tenant, application=o.parsed.application, etag=o.etag)


def _count(
    plan: Plan,
    tenant_id: str,
    routing: Routing,
    results: list[DeliveryResult],
    todo: list[tuple[Delivery, DeliveryResult]],
    o: ListedObject,
    too_old: bool,
    events_per_byte: float,
) -> None:
    """Fold one object's routing into the per-delivery and per-application figures."""
    pending = {id(r) for _, r in todo}
    for r in results:
        kind = DeliveryType(r.type) if r.type in set(DeliveryType) else None
        dp = plan.deliveries.get((tenant_id, r.delivery_id))
        if dp is None:
            whole = kind is not None and routing.whole_objects(kind)
            dp = plan.deliveries[(tenant_id, r.delivery_id)] = DeliveryPlan(
                tenant_id, r.delivery_id, r.type, r.target, whole
            )
        if id(r) in pending:
            dp.objects += 1
            dp.bytes += o.size
            if not dp.whole_objects:
                dp.estimated_events += int(o.size * events_per_byte)
                if too_old:
                    dp.older_than_14d += 1
        elif r.status is Status.FAILED:
            dp.failed[r.reason] = dp.failed.get(r.reason, 0) + 1
        elif r.reason == LEDGER_SKIP:
            dp.already_delivered += 1
        else:
            dp.skipped[r.reason] = dp.skipped.get(r.reason, 0) + 1
    if todo or any(r.reason == LEDGER_SKIP for r in results):
        stats = plan.by_tenant_app.setdefault((tenant_id, o.parsed.application), GroupStats())
        stats.objects += 1
        stats.bytes += o.size
        stats.estimated_events += int(o.size * events_per_byte)
        if not todo:
            stats.already_delivered += 1
        if too_old and any(not routing.whole_objects(d.type) for d, _ in todo):
            plan.undeliverable_objects += 1


def _fraction_before(since: datetime, until: datetime, cutoff_ms: float) -> float:
    lo, hi = since.timestamp() * 1000, until.timestamp() * 1000
    if hi <= lo:
        return 0.0
    return max(0.0, min(hi, cutoff_ms) - lo) / (hi - lo)


def pack_units(pods: Mapping[str, list[ListedObject]], workers: int) -> list[WorkUnit]:
    """Pack whole pods into units of roughly equal bytes (longest-processing-time-first)."""
    total = sum(o.size for objs in pods.values() for o in objs)
    if not pods:
        return []
    target = max(total / max(1, workers * UNITS_PER_WORKER), MIN_UNIT_BYTES)
    n_units = max(1, min(len(pods), round(total / target) or 1))
    sized = sorted(((sum(o.size for o in objs), prefix) for prefix, objs in pods.items()), reverse=True)
    heap: list[tuple[int, int]] = [(0, i) for i in range(n_units)]
    members: dict[int, list[str]] = defaultdict(list)
    for size, prefix in sized:
        load, i = heapq.heappop(heap)
        members[i].append(prefix)
        heapq.heappush(heap, (load + size, i))
    units: list[WorkUnit] = []
    for i in sorted(members):
        specs = tuple(
            ObjectSpec(o.key, o.size, o.etag, o.last_modified.timestamp()) for p in sorted(members[i]) for o in pods[p]
        )
        units.append(WorkUnit(len(units), specs, sum(s.size for s in specs)))
    # Biggest first: the long units start early, the small ones fill the tail.
    units.sort(key=lambda u: -u.bytes)
    return units
