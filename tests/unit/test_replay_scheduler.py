"""The replay's driver loop against an in-memory backend: every pod listed once, every object in one unit,
the driver's queue bounded while listing runs ahead of delivery, interrupts and listing failures reported.

The backend here stands in for Ray and S3 only; the scheduler, packer, plan totals and report are the
project's own. The real backends run in tests/integration (test_replay_cli, test_replay_streaming).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.delivery.results import ObjectResult
from pipeline.keys import parse_key
from pipeline.replay.plan import ObjectSpec, PlanTotals, UnitPacker, WorkUnit, pack_units, spec_of
from pipeline.replay.report import INTERRUPTED, ReplayReport
from pipeline.replay.scheduler import FairDispatch, Scheduler, sampled
from pipeline.replay.survey import Survey
from pipeline.source.listing import ListedObject, ListingFilter, Prefixes

UNTIL = datetime(2024, 6, 20, tzinfo=UTC)
SINCE = UNTIL - timedelta(days=1)


def done(value: Any) -> Future[Any]:
    f: Future[Any] = Future()
    f.set_result(value)
    return f


class Fleet:
    """An in-memory key tree: tenants → applications → pods → objects per pod."""

    def __init__(self, tenants: int, apps: int, pods: int, objects: int) -> None:
        self.tenants = [f"prod-1/t{t}/" for t in range(tenants)]
        self.objects = objects
        self.apps = {t: [f"{t}app{a}/" for a in range(apps)] for t in self.tenants}
        self.pods = {a: [f"{a}pod{p}/" for p in range(pods)] for t in self.tenants for a in self.apps[t]}

    def objects_of(self, pod: str) -> tuple[ObjectSpec, ...]:
        tenant = pod.split("/")[1]
        return tuple(ObjectSpec(f"{pod}{i:05d}.json.gz", 100, "e", 0.0, tenant) for i in range(self.objects))


class Backend:
    """Answers listing at once; deliveries complete on a timer thread, `delay` seconds each."""

    listing_slots = 4

    def __init__(self, fleet: Fleet, workers: int = 2, delay: float = 0.0, fail_surveys: int = 0) -> None:
        self.fleet, self.workers, self.delay = fleet, workers, delay
        self.fail_surveys = fail_surveys
        self.surveyed: list[str] = []
        self.delivered: list[WorkUnit] = []
        self.stopped = False
        self.peak_queue = 0
        self.scheduler: Scheduler | None = None

    def descend(self, prefixes: list[str], wanted: tuple[str, ...]) -> Future[Prefixes]:
        level = Prefixes(list_calls=len(prefixes))
        for p in prefixes:
            level.prefixes.extend(self.fleet.apps.get(p) or self.fleet.pods[p])
        return done(level)

    def survey(self, prefixes: list[str]) -> Future[Survey]:
        if self.scheduler is not None:
            self.peak_queue = max(self.peak_queue, self.scheduler._queued_objects())
        if self.fail_surveys:
            self.fail_surveys -= 1
            f: Future[Survey] = Future()
            f.set_exception(ConnectionError("S3 went away"))
            return f
        self.surveyed.extend(prefixes)
        totals = PlanTotals(SINCE, UNTIL, pods_listed=len(prefixes), list_calls=len(prefixes))
        pods = [(p, self.fleet.objects_of(p)) for p in prefixes]
        totals.objects_listed = totals.objects_to_deliver = sum(len(o) for _, o in pods)
        return done(Survey(totals, pods))

    def deliver(self, worker: int, unit: WorkUnit) -> Future[list[ObjectResult]]:
        f: Future[list[ObjectResult]] = Future()
        result = [ObjectResult(o.key, tenant=o.tenant) for o in unit.objects]

        def finish() -> None:
            self.delivered.append(unit)
            f.set_result(result)

        if self.delay:
            threading.Timer(self.delay, finish).start()
        else:
            finish()
        return f

    def stop(self) -> None:
        self.stopped = True

    def close(self) -> None:
        pass


class Interrupt:
    def __init__(self) -> None:
        self.requested = False


def scheduler(backend: Backend, buffer: int = 50, queue: int = 100, sample: float = 1.0) -> Scheduler:
    totals = PlanTotals(SINCE, UNTIL)
    s = Scheduler(
        backend, totals, ReplayReport(totals), UnitPacker(2, buffer), ListingFilter(("t",), SINCE, UNTIL), sample
    )
    s.queue_objects = queue
    backend.scheduler = s
    return s


@settings(max_examples=40, deadline=None)
@given(
    tenants=st.integers(1, 3),
    apps=st.integers(1, 3),
    pods=st.integers(1, 6),
    objects=st.integers(1, 30),
    buffer=st.integers(1, 80),
)
def test_every_pod_is_listed_once_and_every_object_delivered_once(
    tenants: int, apps: int, pods: int, objects: int, buffer: int
) -> None:
    fleet = Fleet(tenants, apps, pods, objects)
    backend = Backend(fleet)
    s = scheduler(backend, buffer=buffer, queue=buffer * 2)
    s.run(fleet.tenants, Interrupt())
    all_pods = [p for ps in fleet.pods.values() for p in ps]
    assert sorted(backend.surveyed) == sorted(all_pods)
    keys = [o.key for u in backend.delivered for o in u.objects]
    assert len(keys) == len(set(keys)) == len(all_pods) * objects
    for unit in backend.delivered:  # pods stay whole: a pod's objects are in one unit, in order
        by_pod: dict[str, list[str]] = {}
        for o in unit.objects:
            by_pod.setdefault(o.key.rsplit("/", 1)[0], []).append(o.key)
        for pod_keys in by_pod.values():
            assert pod_keys == sorted(pod_keys) and len(pod_keys) == objects
    assert s.totals.listing_complete
    assert s.totals.pods_found == s.totals.pods_listed == len(all_pods)
    assert s.totals.work_units == len(backend.delivered)
    # One call per tenant prefix and per application (descending), one per pod (the stand-in's own count).
    assert s.totals.list_calls == tenants + tenants * apps + len(all_pods)
    assert s.report.objects_delivered == len(keys)
    assert len({u.unit_id for u in backend.delivered}) == len(backend.delivered)


def test_listing_waits_while_the_driver_holds_a_full_queue() -> None:
    """Workers slower than the listing: the driver stops surveying at its bound instead of holding the window."""
    fleet = Fleet(2, 2, 20, 10)  # 80 pods, 800 objects
    backend = Backend(fleet, workers=1, delay=0.002)
    s = scheduler(backend, buffer=20, queue=40)
    s.run(fleet.tenants, Interrupt())
    assert s.report.objects_delivered == 800
    assert backend.peak_queue < 40 + 20  # the bound, plus at most what one buffer flush adds past it


def test_a_dry_run_counts_units_and_keeps_none() -> None:
    fleet = Fleet(1, 2, 5, 10)
    backend = Backend(fleet, workers=0)
    s = scheduler(backend, buffer=15, queue=30)
    s.run(fleet.tenants, Interrupt())
    assert backend.delivered == [] and s.totals.work_units > 1
    assert s.totals.objects_to_deliver == 100 and not s._units


def test_an_interrupt_stops_listing_and_reports_what_was_not_attempted() -> None:
    fleet = Fleet(1, 1, 400, 5)  # 2,000 objects, far more than the queue holds
    backend = Backend(fleet, workers=1, delay=0.01)
    s = scheduler(backend, buffer=10, queue=20)
    interrupt = Interrupt()
    threading.Timer(0.05, lambda: setattr(interrupt, "requested", True)).start()
    s.run(fleet.tenants, interrupt)
    assert backend.stopped
    assert not s.totals.listing_complete
    doc = s.report.to_dict()
    interrupted = doc["objects_skipped_by_reason"].get(INTERRUPTED, 0)
    delivered = {o.key for u in backend.delivered for o in u.objects}
    assert doc["objects_delivered"] == len(delivered)
    # What was listed was either delivered or reported as not attempted; the rest was never listed.
    assert doc["objects_delivered"] + interrupted == s.totals.objects_to_deliver < 2000


def test_a_failed_survey_names_its_pods_and_fails_the_run() -> None:
    fleet = Fleet(1, 1, 20, 3)
    backend = Backend(fleet, fail_surveys=1)
    s = scheduler(backend)
    s.run(fleet.tenants, Interrupt())
    doc = s.report.to_dict()
    assert doc["prefixes_failed_count"] == 16  # one survey's pods
    assert all("S3 went away" in f["reason"] for f in doc["prefixes_failed"])
    assert doc["objects_delivered"] == 4 * 3 and s.report.exit_code == 1


def test_a_sample_lists_a_stable_share_of_pods() -> None:
    fleet = Fleet(2, 5, 40, 1)  # 400 pods
    backend = Backend(fleet, workers=0)
    s = scheduler(backend, sample=0.25)
    s.run(fleet.tenants, Interrupt())
    assert s.totals.pods_found == 400
    assert 60 < s.totals.pods_listed < 140 and s.totals.sampled
    assert sorted(backend.surveyed) == sorted(p for ps in fleet.pods.values() for p in ps if sampled(p, 0.25))


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5, 1.0])
def test_sampling_is_deterministic_and_near_its_rate(rate: float) -> None:
    prefixes = [f"prod-1/acme/app/pod-{i}/" for i in range(4000)]
    picked = [p for p in prefixes if sampled(p, rate)]
    assert picked == [p for p in prefixes if sampled(p, rate)]
    assert abs(len(picked) / len(prefixes) - rate) < 0.03


def test_spec_of_carries_the_tenant() -> None:
    key = "prod-1/acme/app/pod-1/20240620-110000-00000000-0000-4000-8000-000000000000.json.gz"
    listed = ListedObject(key, 10, "e", datetime.fromtimestamp(time.time(), UTC), parse_key(key))
    assert spec_of(listed).tenant == "acme"


# ---------------------------------------------------------------------------------------------------------
# Sharing workers between tenants


def unit(unit_id: int, tenant: str, objects: int = 1) -> WorkUnit:
    specs = tuple(
        ObjectSpec(f"prod-1/{tenant}/app/pod/{unit_id:05d}-{i}.json.gz", 10, "e", 0.0, tenant) for i in range(objects)
    )
    return WorkUnit(unit_id, specs, 10 * objects, tenant)


@settings(max_examples=300, deadline=None)
@given(
    data=st.data(),
    workers=st.integers(1, 6),
    depth=st.integers(1, 3),
    tenants=st.integers(1, 4),
    steps=st.integers(1, 60),
)
def test_fair_dispatch_starves_no_tenant_is_work_conserving_and_hands_every_unit_once(
    data: st.DataObject, workers: int, depth: int, tenants: int, steps: int
) -> None:
    """Units arrive and end in any order; the dispatcher is asked for units as the scheduler asks (until it
    has none to give) after every change, and each answer is checked against a model of the workers."""
    d = FairDispatch(workers, depth)
    on: list[list[WorkUnit]] = [[] for _ in range(workers)]  # the model: units in flight per worker
    waiting: dict[str, list[WorkUnit]] = {}
    added: list[int] = []
    handed: list[int] = []

    def busy(t: str) -> int:
        return sum(any(u.tenant == t for u in units) for units in on)

    def hand_out() -> None:
        while True:
            ready = {t for t, q in waiting.items() if q}
            before = {t: busy(t) for t in ready}
            taken = d.take()
            if taken is None:
                # Work-conserving: nothing is left waiting while a worker is idle, and a lone tenant fills
                # every worker's queue it can.
                assert not ready or all(on), "a worker idle while units wait"
                if len(ready) == 1:
                    (t,) = ready
                    assert not any(len(units) < depth and all(u.tenant == t for u in units) for units in on)
                return
            worker, u = taken
            assert u.tenant in ready and u is waiting[u.tenant][0], "not the tenant's oldest waiting unit"
            assert len(on[worker]) < depth
            # A unit never waits behind another tenant's, and only queues behind its own while no other
            # tenant has units waiting.
            assert all(x.tenant == u.tenant for x in on[worker])
            if on[worker]:
                assert ready == {u.tenant}
            else:
                # No starvation: an idle worker goes to a tenant holding no more workers than any other
                # tenant with units waiting.
                assert before[u.tenant] == min(before.values())
            waiting[u.tenant].pop(0)
            on[worker].append(u)
            handed.append(u.unit_id)

    for _ in range(steps):
        if data.draw(st.booleans(), "add") or not any(on):
            t = f"t{data.draw(st.integers(0, tenants - 1), 'tenant')}"
            for _ in range(data.draw(st.integers(1, 4), "units")):
                u = unit(len(added), t)
                d.add(u)
                waiting.setdefault(t, []).append(u)
                added.append(u.unit_id)
        else:
            worker = data.draw(st.sampled_from([w for w, units in enumerate(on) if units]), "ends on")
            # A worker runs its units in order: the first one ends.
            d.done(worker, on[worker].pop(0))
        assert d.waiting_objects == sum(len(q) for q in waiting.values()) == len(d)
        hand_out()
    while any(on):  # every unit ends: the rest is handed out
        worker = next(w for w, units in enumerate(on) if units)
        d.done(worker, on[worker].pop(0))
        hand_out()
    assert sorted(handed) == sorted(added) and len(d) == 0


def test_a_lone_tenant_uses_every_worker_and_queues_one_more_on_each() -> None:
    d = FairDispatch(3, depth=2)
    for i in range(10):
        d.add(unit(i, "acme"))
    taken = []
    while (t := d.take()) is not None:
        taken.append(t)
    assert sorted(w for w, _ in taken) == [0, 0, 1, 1, 2, 2]
    assert [u.unit_id for _, u in taken] == list(range(6))  # in the packer's order (biggest first)


def test_workers_freed_by_a_slow_tenant_go_to_the_others_until_they_hold_as_many() -> None:
    """A slow tenant took every worker while it was alone; as its units end, the workers go to the tenants
    that arrived since, until each holds its share, then in turn."""
    d = FairDispatch(4, depth=2)
    for i in range(20):
        d.add(unit(i, "slow"))
    slow_units = [d.take() for _ in range(8)]
    assert d.take() is None
    for i in range(20, 30):
        d.add(unit(i, "calm"))
    assert d.take() is None  # no worker is idle, and calm never queues behind slow
    by_worker = {w: [u for x, u in slow_units if x == w] for w in range(4)}
    got = []
    for w in range(4):
        for u in by_worker[w]:
            d.done(w, u)
        while (t := d.take()) is not None:
            got.append((t[0], t[1].tenant))
    # Worker 0 is freed first and goes to calm (0 workers against slow's 3); worker 1 too (1 against 2);
    # then calm holds 2, and each worker slow frees leaves it fewer: it gets them back.
    assert got == [(0, "calm"), (1, "calm"), (2, "slow"), (3, "slow")]
    assert d.busy("calm") == 2 and d.busy("slow") == 2


class SlowTenantBackend(Backend):
    """Deliveries of `slow`'s units end only once every other unit is delivered (or after `patience`): the
    tenant whose CloudWatch throttles through the whole replay. Each unit ends on its own thread."""

    def __init__(self, fleet: Fleet, workers: int, slow: str, patience: float = 20.0) -> None:
        super().__init__(fleet, workers)
        self.slow, self.patience = slow, patience
        self.calm_units = 0  # set by the test once the units are packed
        self.calm_done = threading.Event()
        self.order: list[str] = []
        self._lock = threading.Lock()

    def deliver(self, worker: int, unit: WorkUnit) -> Future[list[ObjectResult]]:
        f: Future[list[ObjectResult]] = Future()

        def finish() -> None:
            if unit.tenant == self.slow:
                self.calm_done.wait(self.patience)
            with self._lock:
                self.order.append(unit.tenant)
                self.delivered.append(unit)
                if sum(t != self.slow for t in self.order) == self.calm_units:
                    self.calm_done.set()
            f.set_result([ObjectResult(o.key, tenant=o.tenant) for o in unit.objects])

        threading.Thread(target=finish, daemon=True).start()
        return f


def test_a_slow_tenants_units_do_not_keep_the_other_tenants_from_the_workers() -> None:
    """Three tenants replayed together on three workers, one of whose units end only after all the others'
    (a storm that outlasts them): each calm tenant gets a worker of its own and finishes, with no clock."""
    fleet = Fleet(3, 1, 6, 5)  # tenants t0 (slow), t1, t2: 6 pods of 5 objects each
    backend = SlowTenantBackend(fleet, workers=3, slow="t0")
    units_per_tenant = len(pack_units({p: fleet.objects_of(p) for p in fleet.pods["prod-1/t0/app0/"]}, 3))
    backend.calm_units = 2 * units_per_tenant
    s = scheduler(backend, buffer=10_000, queue=20_000)  # one flush: every tenant's units wait at once
    s.run(fleet.tenants, Interrupt())
    assert backend.calm_done.is_set()
    assert backend.order[: backend.calm_units] == [t for t in backend.order if t != "t0"], backend.order
    assert s.report.objects_delivered == 3 * 6 * 5
