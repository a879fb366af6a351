"""Replay workers: each owns one long-lived sink and the tenant credentials it has assumed.

`UnitRunner` is plain Python (one work unit through one Deliverer); `DeliveryWorker` is the Ray actor
that hosts it, `ListingWorker` the actor that hosts a `Surveyor`, and `RateLimiter` the actor that holds
the per-tenant token buckets shared by all. `RayBackend` puts them behind the scheduler's `Backend`.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from functools import partial
from typing import Any

import ray
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.delivery.engine import build_deliverer
from pipeline.delivery.results import ObjectResult, Status
from pipeline.delivery.routing import ObjectRef, TimeWindow
from pipeline.ledger import NOTHING, LedgerError, ObjectLedger
from pipeline.memory import DEFAULT_BUDGET_MIB, MemoryBudget, decoded_footprint
from pipeline.replay.plan import ObjectSpec, WorkUnit
from pipeline.replay.ratelimit import EventCap, TenantRateLimits
from pipeline.replay.report import INTERRUPTED
from pipeline.replay.survey import Survey, Surveyor, SurveySpec
from pipeline.settings import Settings
from pipeline.source.listing import Prefixes

log = logging.getLogger("pipeline.replay")

POD_THREADS = 8
WORKER_CPUS = 1
# What a worker takes besides its budget of decoded objects: the interpreter, boto3, Ray's core worker and
# the sink's buffers (docs/PERFORMANCE.md, memory).
WORKER_BASE_MEMORY_MIB = 300


def worker_options(memory_budget_mib: int = DEFAULT_BUDGET_MIB) -> dict[str, Any]:
    """The resources a DeliveryWorker asks Ray for: what it uses, so an autoscaler adds the nodes it needs
    and a node never holds more workers than its memory allows."""
    return {"num_cpus": WORKER_CPUS, "memory": (memory_budget_mib + WORKER_BASE_MEMORY_MIB) * 1024 * 1024}


class UnitRunner:
    def __init__(
        self,
        settings: Settings,
        sink_kind: str,
        window: TimeWindow | None,
        redeliver: bool = False,
        throttle: Callable[[str, int, int], None] | None = None,
        memory_budget_mib: int = DEFAULT_BUDGET_MIB,
        deliveries: tuple[str, ...] = (),
        spend: Callable[[int], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.stopping = threading.Event()
        if spend is not None:
            throttle = _counting(throttle, spend, self.stopping)
        self.deliverer = build_deliverer(
            settings,
            sink=sink_kind,
            source="replay",
            window=window,
            redeliver=redeliver,
            deliveries=deliveries,
            throttle=throttle,
            group_commit=True,
        )
        # A sink that takes one writer at a time (one Vector stdin per destination) gets one pod thread.
        self._threads = min(POD_THREADS, self.deliverer.max_writers or POD_THREADS)
        self.budget = MemoryBudget(memory_budget_mib * 1024 * 1024)

    def run(self, unit: WorkUnit) -> list[ObjectResult]:
        # Pods are independent streams, so they go in parallel: a worker's time is mostly spent waiting
        # on S3 and CloudWatch. Within a pod, objects stay in order on one thread.
        pods: dict[str, list[ObjectSpec]] = {}
        for o in unit.objects:
            pods.setdefault(o.key.rsplit("/", 1)[0], []).append(o)
        # The unit's objects are checked against the ledger in batches when it starts, not one read each:
        # fresh enough to skip what another run delivered since the plan, at 1/100 of the calls.
        ledger: dict[str, ObjectLedger] | None
        try:
            ledger = self.deliverer.ledger_view(self._ref(o) for o in unit.objects)
        except (ClientError, BotoCoreError, LedgerError):
            ledger = None  # each object reads its own entry, and reports a failure to read it
        with ThreadPoolExecutor(max_workers=self._threads, thread_name_prefix="pod") as pool:
            per_pod = list(pool.map(partial(self._run_pod, ledger=ledger), pods.values()))
        results = [r for pod_results in per_pod for r in pod_results]
        # Batches in flight are answered first. Deliveries through a sink that is not durable on return
        # (Vector) are recorded after a flush, and those of S3-only objects in batches: a unit's result says
        # delivered only once it is in the ledger.
        self.deliverer.finish(results)
        return results

    def _run_pod(self, objects: list[ObjectSpec], ledger: dict[str, ObjectLedger] | None) -> list[ObjectResult]:
        results = []
        # The pod's objects fill its streams' batches together; leaving sends the last, partial ones.
        with self.deliverer.batching() as batches:
            for o in objects:
                with self.budget.hold(decoded_footprint(o.size, self.deliverer.may_decode(o.key))):
                    if self.stopping.is_set():
                        # Stop between objects, never inside one: every object started is delivered and in
                        # the ledger once its batches are answered, so a re-run resumes where this one stopped.
                        results.append(ObjectResult(o.key, Status.SKIPPED, INTERRUPTED, tenant=o.tenant))
                        continue
                    known = None if ledger is None else ledger.get(o.key, NOTHING)
                    results.append(self.deliverer.deliver(self._ref(o), known, batches))
        return results

    def _ref(self, o: ObjectSpec) -> ObjectRef:
        return ObjectRef(self.settings.bucket, o.key, o.etag, o.size, datetime.fromtimestamp(o.last_modified, UTC))

    def close(self) -> None:
        self.deliverer.close()


def _counting(
    throttle: Callable[[str, int, int], None] | None, spend: Callable[[int], bool], stopping: threading.Event
) -> Callable[[str, int, int], None]:
    """--max-events: every batch's events are counted as they go out (after the rate limit's wait); once the
    run's cap is reached the worker stops between objects. Those started finish and are recorded, so the
    ledger stays whole and a later run sends the rest."""

    def counted(tenant: str, events: int, requests: int) -> None:
        if throttle is not None:
            throttle(tenant, events, requests)
        if events and not spend(events):
            stopping.set()

    return counted


# Ray's side is typed loosely, on purpose. mypy keeps a class decorated with @ray.remote a plain class (a class
# decorator cannot change its type), so code reaches the actor class Ray made through actor_class(); and ray's
# own actor types are partial (its typed decorator options omit concurrency_groups; a handle is typed only for
# methods wrapped in @ray.method, and then as a union ray.kill does not take), so actor handles are Any. What
# the actors host (UnitRunner, Surveyor, TenantRateLimits) is plain Python, typed in full.
def actor_class(cls: type[object]) -> Any:
    """The Ray actor class that @ray.remote made of `cls`, with its .options() and .remote()."""
    return cls


@ray.remote(num_cpus=0)
class CapKeeper:
    """The run's one EventCap, shared by every worker."""

    def __init__(self, limit: int) -> None:
        self._cap = EventCap(limit)

    def spend(self, events: int) -> bool:
        return self._cap.spend(events)

    def reached(self) -> bool:
        return self._cap.reached


@ray.remote(num_cpus=0)
class RateLimiter:
    def __init__(self, events_per_second: float | None, requests_per_second: float | None = None) -> None:
        self._limits = TenantRateLimits(events_per_second, requests_per_second)

    def reserve(self, tenant: str, events: int, requests: int) -> float:
        return self._limits.reserve(tenant, events, requests, time.monotonic())


# A worker that dies mid-unit is restarted once and the unit retried once; objects it had already
# finished are in the ledger by then, so the retry sends only the rest. `stop` runs in its own
# concurrency group so it reaches a worker that is busy in `run`.
# ray's typed options for the decorator omit concurrency_groups, an option it takes and documents.
@ray.remote(num_cpus=1, max_restarts=1, max_task_retries=1, concurrency_groups={"control": 1})  # type: ignore[call-overload]
class DeliveryWorker:
    def __init__(
        self,
        settings: Settings,
        sink_kind: str,
        window: TimeWindow | None,
        redeliver: bool,
        limiter: Any | None = None,
        memory_budget_mib: int = DEFAULT_BUDGET_MIB,
        deliveries: tuple[str, ...] = (),
        cap: Any | None = None,
    ) -> None:
        throttle = None
        if limiter is not None:

            def throttle(tenant: str, events: int, requests: int) -> None:
                wait = ray.get(limiter.reserve.remote(tenant, events, requests))
                if wait > 0:
                    time.sleep(wait)

        spend = None
        if cap is not None:

            def spend(events: int) -> bool:
                return bool(ray.get(cap.spend.remote(events)))

        self._runner = UnitRunner(
            settings, sink_kind, window, redeliver, throttle, memory_budget_mib, deliveries, spend
        )

    def run(self, unit: WorkUnit) -> list[ObjectResult]:
        return self._runner.run(unit)

    @ray.method(concurrency_group="control")
    def stop(self) -> None:
        self._runner.stopping.set()

    def close(self) -> None:
        self._runner.close()


# Listing waits on S3 round trips and parses XML: it takes no CPU reservation, so it runs beside the delivery
# workers that hold every CPU, and SPREAD keeps the listing workers off a single node.
@ray.remote(num_cpus=0, max_restarts=1, max_task_retries=1)
class ListingWorker:
    def __init__(self, spec: SurveySpec) -> None:
        self._surveyor = Surveyor(spec)

    def descend(self, prefixes: list[str], wanted: tuple[str, ...]) -> Prefixes:
        return self._surveyor.descend(prefixes, wanted)

    def survey(self, prefixes: list[str]) -> Survey:
        return self._surveyor.survey(prefixes)


LISTING_CALLS_PER_WORKER = 2  # one listing, one queued


class RayBackend:
    """The scheduler's Backend on Ray: `listers` listing workers, and `workers` delivery workers built by
    `make_worker` (none for a dry run)."""

    def __init__(self, spec: SurveySpec, listers: int, workers: int, make_worker: Callable[[], Any]) -> None:
        lister = actor_class(ListingWorker).options(scheduling_strategy="SPREAD")
        self._listers: list[Any] = [lister.remote(spec) for _ in range(listers)]
        self._round = itertools.cycle(self._listers)
        self.listing_slots = LISTING_CALLS_PER_WORKER * listers
        self._actors = [make_worker() for _ in range(workers)]
        self.workers = workers

    def descend(self, prefixes: list[str], wanted: tuple[str, ...]) -> Future[Prefixes]:
        descended: Future[Prefixes] = next(self._round).descend.remote(prefixes, wanted).future()
        return descended

    def survey(self, prefixes: list[str]) -> Future[Survey]:
        surveyed: Future[Survey] = next(self._round).survey.remote(prefixes).future()
        return surveyed

    def deliver(self, worker: int, unit: WorkUnit) -> Future[list[ObjectResult]]:
        delivered: Future[list[ObjectResult]] = self._actors[worker].run.remote(unit).future()
        return delivered

    def stop(self) -> None:
        for actor in self._actors:
            actor.stop.remote()

    def close(self) -> None:
        for actor in self._actors:
            try:
                ray.get(actor.close.remote(), timeout=30)
            except Exception:  # closing is best effort; the job's outcome is already decided
                log.warning("worker did not close cleanly")
        for actor in [*self._actors, *self._listers]:
            ray.kill(actor)
