"""A steady stream of generated objects for several tenants, as the collector writes them: for the tests
and the benchmark that watch how delivery latency behaves while something goes wrong.

    writer = SteadyWriter(local, tenants=("acme", "globex", "umbrella"), rate_per_tenant=2.0).start()
    writer.phase = "storm"      # every object written from now on is labelled "storm"
    ...
    writer.stop()
    writer.written              # {key: Written(tenant, phase, put_at, object)}

Each tenant gets `rate_per_tenant` objects a second, on a fixed schedule (not "as fast as the last PUT
returned"): a slow PUT does not slow the stream, the next ones start on time on their own threads. An
object's `put_at` is the wall-clock time its PUT returned, the same clock the ledger's `delivered_at` uses,
so `delivered_at - put_at` is its delivery latency (S3 → SNS → SQS → consumer → destination → ledger).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from devstack import generator as gen
from devstack.provision import LocalEnvironment

__all__ = ["SteadyWriter", "Written", "percentile"]


@dataclass(frozen=True)
class Written:
    tenant: str
    phase: str
    put_at: float  # time.time() when the PUT returned
    object: gen.GeneratedObject


class SteadyWriter:
    def __init__(
        self,
        local: LocalEnvironment,
        tenants: tuple[str, ...],
        rate_per_tenant: float,
        *,
        application: str = "payment-service",
        events_per_object: int = 20,
        seed: int = 0,
    ) -> None:
        self.local = local
        self.tenants = tenants
        self.interval_s = 1.0 / (rate_per_tenant * len(tenants))
        self.phase = "warm-up"
        self.written: dict[str, Written] = {}
        self.errors: list[BaseException] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._puts: list[threading.Thread] = []
        now = datetime.now(UTC).replace(microsecond=0)
        # Events 2 to 30 minutes old: CloudWatch takes them, and every object's plan is fixed up front.
        self._cfg = gen.GeneratorConfig(
            since=now - timedelta(minutes=30),
            until=now - timedelta(minutes=2),
            tenants=tenants,
            applications=(application,),
            pods_per_app=1,
            objects_per_pod=5_000,  # more than any run writes: the schedule takes them in order
            events_per_object=events_per_object,
            message_bytes=200,
            seed=seed,
        )
        self._s3 = local.client("s3")

    def _specs(self) -> Iterator[gen.PlannedObject]:
        """Round-robin over the tenants, each tenant's objects in their planned order."""
        by_tenant: dict[str, list[gen.PlannedObject]] = {t: [] for t in self.tenants}
        for spec in gen.plan(self._cfg):
            by_tenant[spec.tenant].append(spec)
        for group in zip(*(by_tenant[t] for t in self.tenants), strict=False):
            yield from group

    def start(self) -> SteadyWriter:
        self._thread = threading.Thread(target=self._run, name="steady-writer", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        next_at = time.monotonic()
        for spec in self._specs():
            if self._stop.is_set():
                break
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                break
            t = threading.Thread(target=self._put, args=(spec, self.phase), daemon=True)
            t.start()
            self._puts.append(t)
            next_at += self.interval_s

    def _put(self, spec: gen.PlannedObject, phase: str) -> None:
        try:
            obj = gen.build_object(self._cfg, spec)
            gen.put_object(self._s3, self.local.names.bucket, obj)
            with self._lock:
                self.written[obj.key] = Written(spec.tenant, phase, time.time(), obj)
        except BaseException as exc:  # reported by stop(): a writer that silently lost objects lies
            with self._lock:
                self.errors.append(exc)

    def stop(self) -> dict[str, Written]:
        """Stop writing, wait for the PUTs in flight; everything written. Raises the first PUT error."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        for t in self._puts:
            t.join()
        if self.errors:
            raise self.errors[0]
        return dict(self.written)

    def keys(self, tenant: str | None = None, phase: str | None = None) -> set[str]:
        with self._lock:
            return {
                k
                for k, w in self.written.items()
                if (tenant is None or w.tenant == tenant) and (phase is None or w.phase == phase)
            }


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..1) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]
