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
from pipeline.replay.listing import ListedObject, Listing
from pipeline.tenants import TenantConfig

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
class Plan:
    since: datetime
    until: datetime
    units: list[WorkUnit] = field(default_factory=list)
    by_tenant_app: dict[tuple[str, str], GroupStats] = field(default_factory=dict)
    objects_listed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (key, reason): ledger, disabled, filtered
    failed: list[tuple[str, str]] = field(default_factory=list)  # (key, reason): malformed, bad tenant
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
    def skipped_ledger(self) -> int:
        return sum(1 for _, reason in self.skipped if reason == LEDGER_SKIP)


LEDGER_SKIP = "already delivered (ledger)"


def make_plan(
    listing: Listing,
    tenants: Mapping[str, TenantConfig | str],
    delivered: set[str],
    since: datetime,
    until: datetime,
    workers: int,
    now: datetime,
    events_per_byte: float = 0.0,
) -> Plan:
    """A plan of work units. `tenants` maps a tenant id to its config, or to why it cannot be used."""
    plan = Plan(since=since, until=until, list_calls=listing.list_calls)
    plan.failed.extend(listing.malformed)
    plan.objects_listed = sum(len(v) for v in listing.pods.values()) + len(listing.malformed)
    cutoff_ms = now.timestamp() * 1000 - MAX_AGE_MS
    plan.undeliverable_fraction = _fraction_before(since, until, cutoff_ms)

    pods: dict[str, list[ListedObject]] = {}
    for prefix, objs in listing.pods.items():
        first = objs[0].parsed
        tenant = tenants.get(first.tenant, f"tenant {first.tenant!r} was not looked up")
        if isinstance(tenant, str):
            plan.failed.extend((o.key, tenant) for o in objs)
            continue
        if not tenant.enabled:
            plan.skipped.extend((o.key, f"tenant {tenant.tenant_id!r} is disabled") for o in objs)
            continue
        if not tenant.wants(first.application):
            reason = f"application {first.application!r} is not in the tenant's desired_logs"
            plan.skipped.extend((o.key, reason) for o in objs)
            continue
        stats = plan.by_tenant_app.setdefault((first.tenant, first.application), GroupStats())
        todo: list[ListedObject] = []
        for o in objs:
            stats.objects += 1
            stats.bytes += o.size
            stats.estimated_events += int(o.size * events_per_byte)
            if o.parsed.write_time is not None and o.parsed.write_time.timestamp() * 1000 < cutoff_ms:
                plan.undeliverable_objects += 1
            if o.key in delivered:
                stats.already_delivered += 1
                plan.skipped.append((o.key, LEDGER_SKIP))
            else:
                todo.append(o)
        if todo:
            pods[prefix] = todo
    plan.units = pack_units(pods, workers)
    return plan


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
