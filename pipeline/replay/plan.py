"""Turn listed pods into work units and plan figures: pure arithmetic over plain values, no I/O.

Each pod's objects stay together and in time order inside one unit, so one stream is written by one
sink, in order. A unit holds the pods of one tenant only, so the scheduler can share workers between
tenants (a throttled tenant's unit holds its worker through the sink's retries, and must not hold another
tenant's pods with it). Small pods of a tenant are packed together so units have balanced byte sizes; idle
workers pull the next unit, which balances the rest.

The figures (`PlanTotals`) are sums: a survey of a few pods makes one, and the driver adds them up as
surveys come back, so a window of any size is planned in memory that does not grow with it.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import TYPE_CHECKING

from pipeline.counters import add_ints
from pipeline.coverage import Coverage
from pipeline.delivery.results import LEDGER_SKIP, DeliveryResult, ObjectResult, Status
from pipeline.delivery.routing import Routing, TimeWindow
from pipeline.sinks import plan_traits
from pipeline.sinks.cloudwatch.limits import MAX_AGE_MS
from pipeline.source.listing import ListedObject
from pipeline.tenants import Delivery, DeliveryType, Tenant
from pipeline.timespec import to_ms

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

MIN_UNIT_BYTES = 256 * 1024  # below this, per-unit overhead outweighs balance
UNITS_PER_WORKER = 4
# The streaming packer's buffer: pods wait here until this many objects are to deliver, then are packed
# together. A window that fits is packed as a whole (balanced as well as the window allows); a bigger one is
# packed buffer by buffer, which holds the driver's memory to the buffer (~540 bytes an object).
PACK_BUFFER_OBJECTS = 20_000


@dataclass(frozen=True)
class ObjectSpec:
    """What a worker needs to deliver one object; small, so units ship cheaply to Ray workers."""

    key: str
    size: int
    etag: str
    last_modified: float  # epoch seconds
    tenant: str = ""


@dataclass(frozen=True)
class WorkUnit:
    unit_id: int
    objects: tuple[ObjectSpec, ...]
    bytes: int
    tenant: str = ""  # the one tenant of its objects (pack_units); "" for a unit built by hand


def spec_of(o: ListedObject) -> ObjectSpec:
    return ObjectSpec(o.key, o.size, o.etag, o.last_modified.timestamp(), o.parsed.tenant)


def _add_fields(into: DataclassInstance, other: DataclassInstance) -> None:
    """Add every count of `other` into `into` (of the same type): int fields, and the reason → count dicts."""
    add_ints(into, other)
    for name in REASON_COUNTS:
        for reason, n in getattr(other, name, {}).items():
            mine = getattr(into, name)
            mine[reason] = mine.get(reason, 0) + n


REASON_COUNTS = ("skipped", "failed")


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
class PlanTotals:
    """The plan's figures: counts per tenant, application and delivery, never a list of objects."""

    since: datetime
    until: datetime
    by_tenant_app: dict[tuple[str, str], GroupStats] = field(default_factory=dict)
    deliveries: dict[tuple[str, str], DeliveryPlan] = field(default_factory=dict)  # (tenant, delivery_id)
    objects_listed: int = 0
    objects_to_deliver: int = 0
    bytes_to_deliver: int = 0
    work_units: int = 0
    list_calls: int = 0
    undeliverable_objects: int = 0  # to event deliveries, written past CloudWatch's 14 days
    undeliverable_fraction: float = 0.0  # share of the window older than CloudWatch's 14 days
    # Objects no delivery takes, by reason: skipped (ledger, disabled, filtered, outside the window) and
    # failed (malformed key, unknown tenant, bad config).
    skipped: dict[str, int] = field(default_factory=dict)
    failed: dict[str, int] = field(default_factory=dict)
    pods_found: int = 0
    pods_listed: int = 0  # fewer than found when the dry run samples
    listing_complete: bool = False

    @property
    def skipped_ledger(self) -> int:
        return self.skipped.get(LEDGER_SKIP, 0)

    @property
    def has_event_deliveries(self) -> bool:
        return any(not d.whole_objects for d in self.deliveries.values())

    @property
    def sampled(self) -> bool:
        return self.pods_listed < self.pods_found

    def count_settled(self, result: ObjectResult) -> None:
        """Count an object no delivery takes, under its reason."""
        by_reason = self.skipped if result.status is Status.SKIPPED else self.failed
        by_reason[result.reason] = by_reason.get(result.reason, 0) + 1

    def add(self, other: PlanTotals) -> None:
        """Fold another part of the window's figures into these."""
        _add_fields(self, other)
        for k, g in other.by_tenant_app.items():
            _add_fields(self.by_tenant_app.setdefault(k, GroupStats()), g)
        for k, d in other.deliveries.items():
            mine = self.deliveries.setdefault(
                k, DeliveryPlan(d.tenant, d.delivery_id, d.type, d.target, d.whole_objects)
            )
            _add_fields(mine, d)


@dataclass
class RoutedPods:
    """Some pods routed: the plan figures they add, the pods with work left, and the objects settled here."""

    totals: PlanTotals
    todo: dict[str, list[ListedObject]] = field(default_factory=dict)
    settled: list[ObjectResult] = field(default_factory=list)


def default_routing(since: datetime, until: datetime) -> Routing:
    """Each delivery type through its default sink, over the window: what a plain replay does."""
    return Routing(plan_traits("cloudwatch"), TimeWindow(to_ms(since), to_ms(until)))


def window_totals(since: datetime, until: datetime, now: datetime) -> PlanTotals:
    """Empty figures for a window, with the share of it that is past CloudWatch's age limit."""
    totals = PlanTotals(since=since, until=until)
    totals.undeliverable_fraction = _fraction_before(since, until, now.timestamp() * 1000 - MAX_AGE_MS)
    return totals


def route_pods(
    pods: Mapping[str, list[ListedObject]],
    malformed: Sequence[tuple[str, str]],
    tenants: Mapping[str, Tenant | str],
    delivered: Mapping[str, Mapping[str, Coverage]],
    since: datetime,
    until: datetime,
    now: datetime,
    events_per_byte: float = 0.0,
    routing: Routing | None = None,
) -> RoutedPods:
    """Route listed pods through their tenants' deliveries. `tenants` maps a tenant id to its config, or to
    why it cannot be used; `delivered` maps an object key to what the ledger already has for it, per delivery,
    at the listed ETag (a plan's view: each worker checks again at the ETag it reads)."""
    routing = routing or default_routing(since, until)
    out = RoutedPods(PlanTotals(since=since, until=until))
    totals = out.totals
    totals.objects_listed = sum(len(v) for v in pods.values()) + len(malformed)
    for key, reason in malformed:
        _settle(out, ObjectResult(key).fail(reason, recoverable=False))
    cutoff_ms = now.timestamp() * 1000 - MAX_AGE_MS
    for prefix, objs in pods.items():
        if not objs:
            continue
        first = objs[0].parsed
        tenant = tenants.get(first.tenant, f"tenant {first.tenant!r} was not looked up")
        if isinstance(tenant, str):
            for o in objs:
                _settle(out, _result(o).fail(tenant, recoverable=False))
            continue
        todo_objects: list[ListedObject] = []
        for o in objs:
            results, todo = routing.route(tenant, o.parsed, o.last_modified, _ledger_of(delivered, o.key))
            too_old = o.parsed.write_time is not None and o.parsed.write_time.timestamp() * 1000 < cutoff_ms
            _count(totals, tenant.tenant_id, routing, results, todo, o, too_old, events_per_byte)
            if todo:
                todo_objects.append(o)
                totals.objects_to_deliver += 1
                totals.bytes_to_deliver += o.size
                continue
            settled = _result(o)
            settled.deliveries = results
            _settle(out, settled.settle())
        if todo_objects:
            out.todo[prefix] = todo_objects
    return out


_NONE: Mapping[str, Coverage] = {}


def _ledger_of(delivered: Mapping[str, Mapping[str, Coverage]], key: str) -> Callable[[], Mapping[str, Coverage]]:
    """What the ledger holds for `key`, as Routing.route asks for it (only when some delivery wants it)."""
    return lambda: delivered.get(key, _NONE)


def _result(o: ListedObject) -> ObjectResult:
    return ObjectResult(o.key, tenant=o.parsed.tenant, application=o.parsed.application, etag=o.etag)


def _settle(out: RoutedPods, result: ObjectResult) -> None:
    out.totals.count_settled(result)
    out.settled.append(result)


def _count(
    totals: PlanTotals,
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
        dp = totals.deliveries.get((tenant_id, r.delivery_id))
        if dp is None:
            whole = kind is not None and routing.whole_objects(kind)
            dp = totals.deliveries[(tenant_id, r.delivery_id)] = DeliveryPlan(
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
        stats = totals.by_tenant_app.setdefault((tenant_id, o.parsed.application), GroupStats())
        stats.objects += 1
        stats.bytes += o.size
        stats.estimated_events += int(o.size * events_per_byte)
        if not todo:
            stats.already_delivered += 1
        if too_old and any(not routing.whole_objects(d.type) for d, _ in todo):
            totals.undeliverable_objects += 1


def _fraction_before(since: datetime, until: datetime, cutoff_ms: float) -> float:
    lo, hi = since.timestamp() * 1000, until.timestamp() * 1000
    if hi <= lo:
        return 0.0
    return max(0.0, min(hi, cutoff_ms) - lo) / (hi - lo)


def pack_units(pods: Mapping[str, Sequence[ListedObject | ObjectSpec]], workers: int) -> list[WorkUnit]:
    """Pack whole pods into units of roughly equal bytes (longest-processing-time-first), one tenant a unit.

    The size target is the whole window's, so tenants' units are of one size and a small tenant gets fewer
    units, not smaller ones (down to one unit holding all it has)."""
    total = sum(o.size for objs in pods.values() for o in objs)
    if not pods:
        return []
    target = max(total / max(1, workers * UNITS_PER_WORKER), MIN_UNIT_BYTES)
    by_tenant: dict[str, dict[str, Sequence[ListedObject | ObjectSpec]]] = defaultdict(dict)
    for prefix, objs in pods.items():
        by_tenant[_tenant_of(objs)][prefix] = objs
    units: list[WorkUnit] = []
    for tenant in sorted(by_tenant):
        for members in _pack_bytes(by_tenant[tenant], target):
            specs = tuple(o if isinstance(o, ObjectSpec) else spec_of(o) for p in sorted(members) for o in pods[p])
            units.append(WorkUnit(len(units), specs, sum(s.size for s in specs), tenant))
    # Biggest first: the long units start early, the small ones fill the tail.
    units.sort(key=lambda u: -u.bytes)
    return units


def _tenant_of(objs: Sequence[ListedObject | ObjectSpec]) -> str:
    if not objs:
        return ""
    first = objs[0]
    return first.tenant if isinstance(first, ObjectSpec) else first.parsed.tenant


def _pack_bytes(pods: Mapping[str, Sequence[ListedObject | ObjectSpec]], target: float) -> list[list[str]]:
    """Pod prefixes grouped into about total/target groups of balanced bytes: each pod, biggest first, to the
    lightest group."""
    total = sum(o.size for objs in pods.values() for o in objs)
    n_units = max(1, min(len(pods), round(total / target) or 1))
    sized = sorted(((sum(o.size for o in objs), prefix) for prefix, objs in pods.items()), reverse=True)
    heap: list[tuple[int, int]] = [(0, i) for i in range(n_units)]
    members: dict[int, list[str]] = defaultdict(list)
    for size, prefix in sized:
        load, i = heapq.heappop(heap)
        members[i].append(prefix)
        heapq.heappush(heap, (load + size, i))
    return [members[i] for i in sorted(members)]


class UnitPacker:
    """Packs pods into work units as they arrive, holding at most a buffer of them (PACK_BUFFER_OBJECTS)."""

    def __init__(self, workers: int, buffer_objects: int | None = None) -> None:
        self.workers = workers
        self.buffer_objects = buffer_objects or PACK_BUFFER_OBJECTS
        self._pods: dict[str, Sequence[ObjectSpec]] = {}
        self.buffered = 0  # objects waiting to be packed
        self._next_id = 0

    def add(self, prefix: str, objects: Sequence[ObjectSpec]) -> list[WorkUnit]:
        """Buffer one pod's objects; the units packed once the buffer is full (else none)."""
        self._pods[prefix] = objects
        self.buffered += len(objects)
        return self.flush() if self.buffered >= self.buffer_objects else []

    def flush(self) -> list[WorkUnit]:
        """Pack whatever is buffered."""
        units = [replace(u, unit_id=self._next_id + i) for i, u in enumerate(pack_units(self._pods, self.workers))]
        self._next_id += len(units)
        self._pods, self.buffered = {}, 0
        return units

    def drain(self) -> list[ObjectSpec]:
        """Give back what is buffered, unpacked (an interrupted replay reports it as not attempted)."""
        objects = [o for objs in self._pods.values() for o in objs]
        self._pods, self.buffered = {}, 0
        return objects
