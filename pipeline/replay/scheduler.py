"""The replay's driver loop: listing and delivery at once, with bounded queues between them.

Listing goes level by level (tenants → applications → pods → objects), each step a call to a surveyor
(`pipeline.replay.survey`) on whatever `Backend` runs them: Ray workers, or threads for a local dry run.
Surveys hand back the pods left to deliver; they are packed into work units of one tenant each
(`UnitPacker`) and handed to delivery workers as soon as there are some, shared fairly between tenants
(`FairDispatch`). The driver holds prefixes still to list, the packer's buffer and the units waiting for a
worker: bounded by QUEUED_OBJECTS_MAX, not by the window. When the queue is full the driver stops surveying
until workers catch up.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol

from pipeline.delivery.results import ObjectResult
from pipeline.replay.plan import PACK_BUFFER_OBJECTS, PlanTotals, UnitPacker, WorkUnit
from pipeline.replay.report import ReplayReport
from pipeline.replay.survey import Survey, Surveyor
from pipeline.source.listing import ListingFilter, Prefixes

log = logging.getLogger("pipeline.replay")

DESCEND_CHUNK = 8  # prefixes per listing call one level down
SURVEY_CHUNK = 16  # pods per survey
IN_FLIGHT_PER_WORKER = 2  # one running, one queued (see FairDispatch for when): the driver never holds the window
QUEUED_OBJECTS_MAX = 2 * PACK_BUFFER_OBJECTS  # to deliver, held by the driver: packer buffer + waiting units


class Backend(Protocol):
    """Where the work runs. `workers` is 0 for a dry run (nothing is delivered)."""

    listing_slots: int
    workers: int

    def descend(self, prefixes: list[str], wanted: tuple[str, ...]) -> Future[Prefixes]: ...
    def survey(self, prefixes: list[str]) -> Future[Survey]: ...
    def deliver(self, worker: int, unit: WorkUnit) -> Future[list[ObjectResult]]: ...
    def stop(self) -> None: ...
    def close(self) -> None: ...


class Interrupt(Protocol):
    requested: bool


def sampled(prefix: str, rate: float) -> bool:
    """Whether a pod is in a dry run's sample: by a hash of its prefix, so a rerun samples the same pods."""
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(prefix.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < rate


class FairDispatch:
    """Which waiting unit goes to which worker: one queue of units per tenant, shared so that a tenant whose
    units are slow (a throttled CloudWatch holds a worker through the sink's retries, minutes a unit) does not
    take the workers from the others.

    - An idle worker goes to the tenant, among those with units waiting, that holds the fewest workers; ties
      go to the one served longest ago (round robin). Workers freed by a slow tenant thus go to the others
      until each holds as many as it: no tenant holds more than its share (workers / tenants with work)
      while another has units waiting, unless it took them when nobody else had any (work-conserving: a
      lone tenant may use every worker).
    - A worker takes a second unit, queued behind its running one so it never waits on the driver, only
      while a single tenant has units waiting, and only behind that tenant's own unit: another tenant's unit
      never waits behind a slow one, and a worker whose unit ends goes back to the choice above.

    Units are never taken back from a worker: a unit is delivered by the worker it was handed to.
    """

    def __init__(self, workers: int, depth: int = IN_FLIGHT_PER_WORKER) -> None:
        self.depth = depth
        self._waiting: dict[str, deque[WorkUnit]] = {}  # only tenants with units waiting
        self._on: list[list[str]] = [[] for _ in range(workers)]  # per worker, the tenants of its units in flight
        self._busy: Counter[str] = Counter()  # per tenant, the workers holding at least one of its units
        self._served: dict[str, int] = {}  # per tenant, the turn it was last handed a unit at
        self._turn = 0
        self.waiting_objects = 0

    def __len__(self) -> int:  # units waiting
        return sum(len(q) for q in self._waiting.values())

    def busy(self, tenant: str) -> int:
        return self._busy[tenant]

    def add(self, unit: WorkUnit) -> None:
        self._waiting.setdefault(unit.tenant, deque()).append(unit)
        self.waiting_objects += len(unit.objects)

    def take(self) -> tuple[int, WorkUnit] | None:
        """The next unit to hand out and its worker (counted in flight from now), or None if there is none
        to hand out now."""
        if not self._waiting:
            return None
        idle = next((w for w, on in enumerate(self._on) if not on), None)
        if idle is not None:
            tenant = min(self._waiting, key=lambda t: (self._busy[t], self._served.get(t, -1)))
            return idle, self._hand(idle, tenant)
        if len(self._waiting) == 1:
            (tenant,) = self._waiting
            own = [w for w, on in enumerate(self._on) if len(on) < self.depth and all(t == tenant for t in on)]
            if own:
                worker = min(own, key=lambda w: len(self._on[w]))
                return worker, self._hand(worker, tenant)
        return None

    def done(self, worker: int, unit: WorkUnit) -> None:
        """A unit handed to `worker` ended (delivered, failed or interrupted)."""
        on = self._on[worker]
        on.remove(unit.tenant)
        if unit.tenant not in on:
            self._busy[unit.tenant] -= 1
            if not self._busy[unit.tenant]:
                del self._busy[unit.tenant]

    def drain(self) -> list[WorkUnit]:
        """Every waiting unit, given back (an interrupted replay reports them as not attempted)."""
        units = [u for q in self._waiting.values() for u in q]
        self._waiting.clear()
        self.waiting_objects = 0
        return units

    def _hand(self, worker: int, tenant: str) -> WorkUnit:
        queue = self._waiting[tenant]
        unit = queue.popleft()
        if not queue:
            del self._waiting[tenant]
        if tenant not in self._on[worker]:
            self._busy[tenant] += 1
        self._on[worker].append(tenant)
        self._turn += 1
        self._served[tenant] = self._turn
        self.waiting_objects -= len(unit.objects)
        return unit


@dataclass
class _Task:
    kind: str  # "descend" (level: 1 applications, 2 pods), "survey" or "unit"
    payload: Any
    level: int = 0
    worker: int = -1


@dataclass
class Scheduler:
    backend: Backend
    totals: PlanTotals
    report: ReplayReport
    packer: UnitPacker
    flt: ListingFilter
    sample: float = 1.0  # a dry run may list a share of the pods
    queue_objects: int = field(default_factory=lambda: QUEUED_OBJECTS_MAX)
    on_listed: Callable[[], None] = lambda: None  # once the whole window is listed
    on_progress: Callable[[], None] = lambda: None
    _levels: list[deque[str]] = field(default_factory=lambda: [deque(), deque()])  # tenants, applications
    _pods: deque[str] = field(default_factory=deque)
    _units: FairDispatch = field(default_factory=lambda: FairDispatch(0))
    _inflight: dict[Future[Any], _Task] = field(default_factory=dict)
    _stopped: bool = False

    def run(self, tenant_prefixes: Sequence[str], interrupt: Interrupt) -> None:
        self._levels[0].extend(tenant_prefixes)
        self._units = FairDispatch(self.backend.workers, IN_FLIGHT_PER_WORKER)
        while True:
            if interrupt.requested and not self._stopped:
                self._stop()
            if not self._stopped:
                self._submit_listing()
                if not self.totals.listing_complete and self._listing_idle():
                    self._queue_units(self.packer.flush())
                    self.totals.listing_complete = True
                    self.on_listed()
                self._submit_units()
            if not self._inflight:
                return
            done, _ = wait(list(self._inflight), timeout=1.0, return_when=FIRST_COMPLETED)
            for future in done:
                self._handle(future, self._inflight.pop(future))
            self.on_progress()

    # --- listing -------------------------------------------------------------------------------------

    def _listing_idle(self) -> bool:
        return not (self._pods or any(self._levels)) and self._listing_inflight() == 0

    def _listing_inflight(self) -> int:
        return sum(t.kind != "unit" for t in self._inflight.values())

    def _queued_objects(self) -> int:
        return self.packer.buffered + self._units.waiting_objects

    def _submit_listing(self) -> None:
        while self._listing_inflight() < self.backend.listing_slots:
            # Surveys first: they feed the workers; descending only adds prefixes to the queues.
            if self._pods and (self.backend.workers == 0 or self._queued_objects() < self.queue_objects):
                chunk = [self._pods.popleft() for _ in range(min(SURVEY_CHUNK, len(self._pods)))]
                self._inflight[self.backend.survey(chunk)] = _Task("survey", chunk)
                continue
            level = next((i for i, q in enumerate(self._levels) if q), None)
            if level is None:
                return
            queue = self._levels[level]
            chunk = [queue.popleft() for _ in range(min(DESCEND_CHUNK, len(queue)))]
            wanted = self.flt.applications if level == 0 else self.flt.pods
            self._inflight[self.backend.descend(chunk, wanted)] = _Task("descend", chunk, level + 1)

    def _descended(self, task: _Task, found: Prefixes) -> None:
        self.totals.list_calls += found.list_calls
        for key, reason in found.malformed:  # an object above the pod level: listed, and failed as a survey's are
            result = ObjectResult(key).fail(reason, recoverable=False)
            self.totals.objects_listed += 1
            self.totals.count_settled(result)
            self.report.settle(result)
        if task.level == 1:
            self._levels[1].extend(found.prefixes)
            return
        self.totals.pods_found += len(found.prefixes)
        self._pods.extend(p for p in found.prefixes if sampled(p, self.sample))

    def _surveyed(self, survey: Survey) -> None:
        self.totals.add(survey.totals)
        for result in survey.settled:
            self.report.settle(result)
        for prefix, objects in survey.pods:
            if self._stopped:
                self.report.add_interrupted(objects)
            else:
                self._queue_units(self.packer.add(prefix, objects))

    # --- delivery ------------------------------------------------------------------------------------

    def _queue_units(self, units: list[WorkUnit]) -> None:
        self.totals.work_units += len(units)
        if self.backend.workers:  # a dry run only counts them
            for unit in units:
                self._units.add(unit)

    def _submit_units(self) -> None:
        while (taken := self._units.take()) is not None:
            worker, unit = taken
            self._inflight[self.backend.deliver(worker, unit)] = _Task("unit", unit, worker=worker)

    def _delivered(self, task: _Task, future: Future[list[ObjectResult]]) -> None:
        unit: WorkUnit = task.payload
        self._units.done(task.worker, unit)
        try:
            results = future.result()
        except Exception as exc:  # a worker that died twice, or a bug: the unit's objects failed
            reason = f"worker failed on unit {unit.unit_id}: {type(exc).__name__}: {str(exc)[:300]}"
            log.error("unit failed", extra={"unit": unit.unit_id, "reason": reason})
            results = [ObjectResult(o.key, tenant=o.tenant).fail(reason, recoverable=True) for o in unit.objects]
        for r in results:
            self.report.add(r)
        self.report.tick()

    # --- control -------------------------------------------------------------------------------------

    def _handle(self, future: Future[Any], task: _Task) -> None:
        if task.kind == "unit":
            self._delivered(task, future)
            return
        try:
            value = future.result()
        except Exception as exc:  # listing that failed past its retries: these prefixes' objects are unknown
            reason = f"listing failed: {type(exc).__name__}: {str(exc)[:300]}"
            log.error("listing failed", extra={"prefixes": task.payload[:3], "reason": reason})
            self.report.add_listing_failure(task.payload, reason)
            return
        if task.kind == "survey":
            self._surveyed(value)
        else:
            self._descended(task, value)

    def _stop(self) -> None:
        """Stop listing and handing out units, and ask workers to stop between objects; what they finished
        is in the ledger, so a re-run resumes exactly from there."""
        self._stopped = True
        log.warning("interrupted: finishing the objects in flight")
        self.backend.stop()
        for unit in self._units.drain():
            self.report.add_interrupted(unit.objects)
        self.report.add_interrupted(self.packer.drain())
        self._pods.clear()
        for q in self._levels:
            q.clear()


class LocalBackend:
    """Surveys on threads of this process, delivering nothing: a dry run that starts no Ray."""

    workers = 0

    def __init__(self, surveyor: Surveyor, slots: int = 4) -> None:
        self.listing_slots = slots
        self._surveyor = surveyor
        self._pool = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="listing")

    def descend(self, prefixes: list[str], wanted: tuple[str, ...]) -> Future[Prefixes]:
        return self._pool.submit(self._surveyor.descend, prefixes, wanted)

    def survey(self, prefixes: list[str]) -> Future[Survey]:
        return self._pool.submit(self._surveyor.survey, prefixes)

    def deliver(self, worker: int, unit: WorkUnit) -> Future[list[ObjectResult]]:
        raise RuntimeError("a local backend delivers nothing: it serves dry runs")

    def stop(self) -> None:
        pass

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._surveyor.close()
