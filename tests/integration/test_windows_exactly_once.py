"""Exactly once over any sequence of replay windows and consumer deliveries (CONTRACTS.md §10).

Random pods of objects whose events straddle every boundary; random sequences of windows (adjacent,
overlapping, nested, repeated, in any order) run as a replay worker runs them (ledger read in a batch,
batches filled across objects), with consumer deliveries of single objects (with a forged eTag) in
between. The central bucket and the ledger are the local AWS over HTTP; the sinks record what they are
given. Every event of the union of what was asked is delivered exactly once to CloudWatch, none outside
it; every object the windows' key-time rule or the consumer takes is put exactly once to S3.
"""

from __future__ import annotations

import gzip
import threading
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.provision import LocalEnvironment
from pipeline.coverage import EMPTY, Coverage
from pipeline.delivery.engine import Deliverer
from pipeline.delivery.results import Status
from pipeline.delivery.routing import ObjectRef, TimeWindow
from pipeline.keys import format_key, listing_bounds, parse_key, pod_prefix
from pipeline.ledger import NOTHING, Ledger
from pipeline.records import Event
from pipeline.sinks import SinkResult, SourceObject, traits_of
from pipeline.sinks.cloudwatch.limits import batches
from pipeline.tenants import Delivery, DeliveryType, Tenant

pytestmark = pytest.mark.integration

BASE = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)
BASE_MS = int(BASE.timestamp() * 1000)
NOW = BASE + timedelta(hours=3)  # every event is recent enough for CloudWatch, none in its future
ROLE = "arn:aws:iam::444444444444:role/CustomerLogDistribution-acme"
SLACK_MS = 300_000  # an object holds events from up to one batch timeout before its write time (§1)


class RecordingCloudWatch:
    """An event sink with the native CloudWatch sink's traits (batches filled across objects), counting
    every event it is given."""

    name: ClassVar[str] = "cloudwatch"
    traits = traits_of("cloudwatch")

    def __init__(self) -> None:
        self.events: Counter[str] = Counter()
        self._lock = threading.Lock()

    def send(self, dest: Delivery, stream: str, events: list[Event]) -> SinkResult:
        result = SinkResult()
        for batch in batches(events):
            result.add(self.put_batch(dest, stream, batch))
        return result

    def put_batch(self, dest: Delivery, stream: str, batch: list[Event]) -> SinkResult:
        with self._lock:
            self.events.update(msg for _, msg in batch)
        return SinkResult(events_delivered=len(batch), requests=1)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class RecordingS3:
    name: ClassVar[str] = "s3"
    traits = traits_of("s3")

    def __init__(self) -> None:
        self.puts: Counter[str] = Counter()

    def put_object(self, dest: Delivery, source: SourceObject) -> SinkResult:
        self.puts[source.key] += 1
        return SinkResult(requests=1, bytes_delivered=len(source.body))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class Tenants:
    def __init__(self, tenant: Tenant) -> None:
        self.tenant = tenant

    def get(self, tenant_id: str) -> Tenant:
        return self.tenant


# An object: its write time (seconds after BASE) and its events' ages before it (ms, within the slack).
objects_st = st.lists(
    st.tuples(st.integers(0, 3 * 3600), st.lists(st.integers(0, SLACK_MS), min_size=1, max_size=5)),
    min_size=1,
    max_size=5,
)


@st.composite
def scenario(draw: st.DrawFn) -> tuple[list[tuple[int, list[int]]], list[tuple[str, int, int]]]:
    objects = draw(objects_st)
    stamps = [w * 1000 - age for w, ages in objects for age in ages] + [w * 1000 for w, _ in objects]
    # Window bounds on event times (and a millisecond either side) straddle objects; a few free ones too.
    bound = st.one_of(
        st.sampled_from(stamps).flatmap(lambda t: st.sampled_from([t - 1, t, t + 1])),
        st.integers(-SLACK_MS, 3 * 3600 * 1000 + SLACK_MS),
    )
    window = st.tuples(bound, bound).filter(lambda w: w[0] != w[1]).map(lambda w: ("window", min(w), max(w)))
    consumer = st.integers(0, len(objects) - 1).map(lambda i: ("consumer", i, 0))
    ops = draw(st.lists(st.one_of(window, window, consumer), min_size=1, max_size=6))
    return objects, ops


@pytest.fixture(scope="module")
def parts(module_aws: LocalEnvironment) -> tuple[LocalEnvironment, Any, Ledger]:
    return (
        module_aws,
        module_aws.client("s3"),
        Ledger(module_aws.names.ledger_table, client=module_aws.client("dynamodb")),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scenario())
def test_any_sequence_of_windows_and_consumer_deliveries_delivers_each_event_once(
    parts: tuple[LocalEnvironment, Any, Ledger], case: tuple[list[tuple[int, list[int]]], list[tuple[str, int, int]]]
) -> None:
    local, s3, ledger = parts
    objects, ops = case
    bucket = local.names.bucket
    tenant_id = "acme"
    pod = f"pay-{uuid.uuid4().hex[:12]}"  # each example its own pod: nothing recorded by another
    tenant = Tenant(
        tenant_id,
        (
            Delivery(tenant_id, "cloudwatch", DeliveryType.CLOUDWATCH, ROLE, "us-east-1", log_group="/logs/acme"),
            Delivery(tenant_id, "s3-archive", DeliveryType.S3, ROLE, "us-east-1", bucket="acme-logs"),
        ),
    )
    keys: list[str] = []
    events_of: dict[str, list[tuple[int, str]]] = {}
    for n, (written, ages) in enumerate(objects):
        key = format_key("prod-1", tenant_id, "payment-service", pod, BASE + timedelta(seconds=written), f"{n:08d}")
        evs = [(written * 1000 - age, f"{pod}/{n}/{i}") for i, age in enumerate(ages)]
        body = b"".join(orjson.dumps({"message": m, "timestamp": BASE_MS + ts}) + b"\n" for ts, m in evs)
        s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(body))
        keys.append(key)
        events_of[key] = evs

    cw, archive = RecordingCloudWatch(), RecordingS3()
    asked, consumed, held = EMPTY, set(), set()

    def deliverer(window: TimeWindow | None) -> Deliverer:
        return Deliverer(
            Tenants(tenant),  # type: ignore[arg-type]
            {DeliveryType.CLOUDWATCH: cw, DeliveryType.S3: archive},  # type: ignore[dict-item]
            ledger,
            s3=s3,
            window=window,
            source="replay" if window else "consumer",
            clock=NOW.timestamp,
        )

    for kind, a, b in ops:
        if kind == "consumer":
            d = deliverer(None)
            # The notification names a forged eTag: the ledger is checked at the object's real one.
            result = d.deliver(ObjectRef(bucket, keys[a], etag="forged-etag"))
            consumed.add(keys[a])
        else:
            window = TimeWindow(BASE_MS + a, BASE_MS + b)
            asked = asked.union(window.coverage)
            since, until = BASE + timedelta(milliseconds=a), BASE + timedelta(milliseconds=b)
            start, stop = listing_bounds(pod_prefix("prod-1", tenant_id, "payment-service", pod), since, until)
            listed = [k for k in keys if start < k <= stop]
            d = deliverer(window)
            refs = [ObjectRef(bucket, k, last_modified=BASE) for k in listed]
            view = d.ledger_view(refs) or {}
            with d.batching() as filling:
                results = [d.deliver(r, view.get(r.key, NOTHING), filling) for r in refs]
            d.finish(results)
            held.update(k for k in listed if window.holds_object(parse_key(k), None))
            assert all(r.status is not Status.FAILED for r in results), [r.reason for r in results]
            result = None
        d.close()
        if result is not None:
            assert result.status is not Status.FAILED, result.reason

    for key, evs in events_of.items():
        for ts, msg in evs:
            want = 1 if key in consumed or asked.holds(BASE_MS + ts) else 0
            assert cw.events[msg] == want, (msg, ts, ops)
    for key in keys:
        assert archive.puts[key] == (1 if key in consumed or key in held else 0), (key, ops)
    assert set(cw.events) <= {m for evs in events_of.values() for _, m in evs}


def test_coverage_of_a_window_is_its_half_open_range() -> None:
    w = TimeWindow(1000, 2000)
    assert w.coverage == Coverage(((1000, 2000),))


def test_a_shifted_window_holding_all_of_an_objects_events_skips_it_from_the_ledger(
    parts: tuple[LocalEnvironment, Any, Ledger],
) -> None:
    """What a run records covers the window and everything outside the object's own event span, so the
    same relative window run again minutes later (`--since 45m`) skips objects it already had whole."""
    local, s3, ledger = parts
    pod = f"pay-{uuid.uuid4().hex[:12]}"
    key = format_key("prod-1", "acme", "payment-service", pod, BASE + timedelta(minutes=30), "00000001")
    evs = [(BASE_MS + 29 * 60_000 + i, f"{pod}/{i}") for i in range(3)]
    body = b"".join(orjson.dumps({"message": m, "timestamp": ts}) + b"\n" for ts, m in evs)
    s3.put_object(Bucket=local.names.bucket, Key=key, Body=gzip.compress(body))
    cw = RecordingCloudWatch()
    tenant = Tenant(
        "acme",
        (Delivery("acme", "cloudwatch", DeliveryType.CLOUDWATCH, ROLE, "us-east-1", log_group="/logs/acme"),),
    )

    def run(since_min: int, until_min: int) -> Status:
        d = Deliverer(
            Tenants(tenant),  # type: ignore[arg-type]
            {DeliveryType.CLOUDWATCH: cw},  # type: ignore[dict-item]
            ledger,
            s3=s3,
            window=TimeWindow(BASE_MS + since_min * 60_000, BASE_MS + until_min * 60_000),
            clock=NOW.timestamp,
        )
        try:
            return d.deliver(ObjectRef(local.names.bucket, key)).status
        finally:
            d.close()

    assert run(0, 40) is Status.DELIVERED
    assert run(5, 45) is Status.SKIPPED  # shifted, still holding all three events: nothing to read
    assert run(29, 60) is Status.SKIPPED
    assert cw.events == Counter(m for _, m in evs)
    # What the ledger holds: the first window, and everything outside the object's span.
    held = ledger.read("acme", key).at(s3.head_object(Bucket=local.names.bucket, Key=key)["ETag"])
    assert held["cloudwatch"].whole
