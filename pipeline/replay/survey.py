"""Survey a window pod by pod, where the workers are: list, check the ledger, route, and hand back only what
is left to deliver, with the plan figures of what was seen.

The driver never holds the window: it hands out prefixes a few at a time and gets back, per survey, the
to-do objects of a few pods (compact `ObjectSpec`s), the objects settled there (already delivered,
filtered, malformed) and `PlanTotals` to add up. A `Surveyor` is plain Python; the replay runs one per
Ray listing worker, and a local dry run runs one on threads in the driver.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws
from pipeline.coverage import Coverage
from pipeline.delivery.results import ObjectResult
from pipeline.delivery.routing import Routing
from pipeline.ledger import Ledger, LedgerError
from pipeline.records import decode_events
from pipeline.replay.plan import ObjectSpec, PlanTotals, route_pods, spec_of
from pipeline.source.listing import ListedObject, ListingFilter, PodListing, Prefixes, descend, list_pod
from pipeline.tenants import Tenant

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

log = logging.getLogger("pipeline.replay.survey")

POD_THREADS = 8  # a survey's pods are listed in parallel: each LIST is a round trip, mostly waiting


@dataclass(frozen=True)
class SurveySpec:
    """What every surveyor of one replay needs; shipped once to each."""

    bucket: str
    filter: ListingFilter
    tenants: Mapping[str, Tenant | str]
    routing: Routing
    now: datetime
    ledger_table: str = ""  # empty: the ledger is not consulted (--redeliver, or no sink that writes it)


@dataclass
class Survey:
    """A few pods surveyed: their figures, their objects left to deliver, and the objects settled here."""

    totals: PlanTotals
    pods: list[tuple[str, tuple[ObjectSpec, ...]]] = field(default_factory=list)
    settled: list[ObjectResult] = field(default_factory=list)


class Surveyor:
    def __init__(self, spec: SurveySpec, s3: S3Client | None = None, ledger: Ledger | None = None) -> None:
        self.spec = spec
        self.s3 = s3 or aws.client("s3")
        self.ledger = ledger or (Ledger(spec.ledger_table) if spec.ledger_table else None)
        self._pool = ThreadPoolExecutor(max_workers=POD_THREADS, thread_name_prefix="survey")

    def descend(self, prefixes: list[str], wanted: tuple[str, ...] = ()) -> Prefixes:
        """The prefixes one level below each of `prefixes` (applications below tenants, pods below those)."""
        return descend(self._pool, self.s3, self.spec.bucket, prefixes, wanted)

    def survey(self, pod_prefixes: list[str]) -> Survey:
        spec = self.spec
        listed: list[PodListing] = list(
            self._pool.map(lambda p: list_pod(self.s3, spec.bucket, p, spec.filter), pod_prefixes)
        )
        pods = {p.prefix: p.objects for p in listed if p.objects}
        malformed = [m for p in listed for m in p.malformed]
        routed = route_pods(
            pods,
            malformed,
            spec.tenants,
            self._delivered(pods),
            spec.filter.since,
            spec.filter.until,
            spec.now,
            self._events_per_byte(pods),
            spec.routing,
        )
        routed.totals.list_calls = sum(p.list_calls for p in listed)
        routed.totals.pods_listed = len(pod_prefixes)
        todo = [(prefix, tuple(spec_of(o) for o in objs)) for prefix, objs in routed.todo.items()]
        return Survey(routed.totals, todo, routed.settled)

    def _delivered(self, pods: Mapping[str, list[ListedObject]]) -> dict[str, Mapping[str, Coverage]]:
        """What the ledger has for these pods' objects at their listed ETags, read in batches (BatchGetItem,
        100 keys a call).

        A failed read leaves the objects planned: each worker reads its unit's entries again before it
        delivers, so the ledger still decides; only a dry run's "already delivered" would be short.
        """
        if self.ledger is None:
            return {}
        try:
            held = self.ledger.read_for((o.parsed.tenant, o.key) for objs in pods.values() for o in objs)
            return {o.key: held[o.key].at(o.etag) for objs in pods.values() for o in objs if o.key in held}
        except (ClientError, BotoCoreError, LedgerError) as exc:
            log.warning("ledger read failed; its objects stay planned", extra={"reason": str(exc)[:300]})
            return {}

    def _events_per_byte(self, pods: Mapping[str, list[ListedObject]]) -> float:
        """Events per stored byte of one object of these pods: the plan's event estimate, one GET a survey."""
        sample = next((objs[0] for objs in pods.values() if objs[0].size), None)
        if sample is None:
            return 0.0
        try:
            body = self.s3.get_object(Bucket=self.spec.bucket, Key=sample.key)["Body"]
            return sum(1 for _ in decode_events(body, 0)) / sample.size
        except Exception:  # whatever is wrong with the object, only the estimate is lost; delivery reports it
            return 0.0

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
