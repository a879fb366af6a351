"""Batches filled across a pod's objects (pipeline.sinks.cloudwatch.filling.BatchFiller,
pipeline.sinks.cloudwatch.inflight), property-tested.

Objects are random: quiet and busy, events over 1 MiB, objects that cross midnight, pods whose objects
span more than 24 h, and objects damaged part-way (they give fewer events than they hold). The sink is an
in-memory CloudWatch stand-in that checks each request against the contract's limits, answers some
batches with an error and rejects some events the way PutLogEvents' rejectedLogEventsInfo does.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.errors import DeliveryError
from pipeline.records import Event
from pipeline.sinks import SinkResult
from pipeline.sinks.cloudwatch.filling import Batch, BatchFiller
from pipeline.sinks.cloudwatch.inflight import Pending, PodBatches, PutPipeline
from pipeline.sinks.cloudwatch.limits import batches, group_by_stream, min_put_requests, prepare
from pipeline.tenants import Delivery, DeliveryType

# The contract's numbers (CONTRACTS.md §5), written out rather than imported: the code is checked against
# the contract, not against itself.
BATCH_BYTES = 1_048_576
OVERHEAD = 26
BATCH_EVENTS = 10_000
SPAN_MS = 24 * 3600 * 1000
DAY_MS = 86_400_000

START = int(datetime(2024, 6, 1, 22, 0, tzinfo=UTC).timestamp() * 1000)  # two hours before a midnight
PROPS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def cost(ev: Event) -> int:
    return len(ev[1].encode("utf-8", "surrogatepass")) + OVERHEAD


def assert_within_limits(batch: list[Event]) -> None:
    assert 0 < len(batch) <= BATCH_EVENTS
    assert sum(map(cost, batch)) <= BATCH_BYTES
    assert batch[-1][0] - batch[0][0] < SPAN_MS
    assert all(a[0] <= b[0] for a, b in pairwise(batch)), "not sorted"


# -- objects -------------------------------------------------------------------------------------------

BIG = (20_000, BATCH_BYTES - OVERHEAD, BATCH_BYTES - OVERHEAD + 1, 1_300_000)  # at and over the 1 MiB limit
GAPS = (60_000, 300_000, 3_600_000, 7 * 3_600_000, 26 * 3_600_000)  # streams cross midnight and the 24 h span


@st.composite
def pod_objects(draw: st.DrawFn, overlapping: bool = False) -> list[list[Event]]:
    """One pod's objects in the order the collector wrote them: consecutive time slices (or overlapping
    ones), each holding events in its own order. Some objects are damaged part-way: they lose their tail.
    The bulk comes from a seeded generator, so examples stay fast; hypothesis picks the shape."""
    n = draw(st.integers(1, 30))
    rng = random.Random(draw(st.integers(0, 2**32)))
    quiet = draw(st.booleans())
    objects, t = [], START
    for _ in range(n):
        gap = rng.choice(GAPS)
        count = rng.randint(0, 300 if quiet else 3000)
        sizes = [rng.randint(0, 300) for _ in range(count)]
        for _ in range(rng.choice((0, 0, 0, 1, 2))):
            sizes.insert(rng.randint(0, len(sizes)), rng.choice(BIG))
        width = gap * (3 if overlapping else 1)
        letter = rng.choice("aé漢")
        events = [(rng.randrange(t, t + width), letter * (size // len(letter.encode()))) for size in sizes]
        if rng.random() < 0.2 and events:
            events = events[: rng.randint(0, len(events) - 1)]  # damaged: the rest cannot be read
        objects.append(events)
        t += gap
    return objects


def streams_of(objects: list[list[Event]]) -> list[list[tuple[str, list[Event]]]]:
    """Each object's prepared events per stream, as the Deliverer hands them over."""
    # An hour after the newest event: a pod that spans weeks has its oldest events held back as too old.
    now = max((ts for events in objects for ts, _ in events), default=START) + 3_600_000
    out = []
    for events in objects:
        by_stream = group_by_stream(list(events), "app", "pod-1")
        out.append([(name, prepare(evs, now, START - DAY_MS).events) for name, evs in sorted(by_stream.items())])
    return out


def minimum(prepared: list[list[tuple[str, list[Event]]]]) -> int:
    per_stream: dict[str, list[Event]] = {}
    for obj in prepared:
        for name, evs in obj:
            per_stream.setdefault(name, []).extend(evs)
    return sum(min_put_requests(evs) for evs in per_stream.values())


# -- the pure filler ------------------------------------------------------------------------------------


def fill(prepared: list[list[tuple[str, list[Event]]]]) -> dict[str, list[Batch]]:
    fillers: dict[str, BatchFiller] = {}
    sent: dict[str, list[Batch]] = {}
    for index, obj in enumerate(prepared):
        for name, evs in obj:
            sent.setdefault(name, []).extend(fillers.setdefault(name, BatchFiller()).add(index, evs))
    for name, filler in fillers.items():
        last = filler.drain()
        if last is not None:
            sent[name].append(last)
        assert filler.drain() is None
    return sent


@PROPS
@given(pod_objects())
def test_batches_across_objects_obey_every_limit_lose_nothing_and_make_the_fewest_calls(
    objects: list[list[Event]],
) -> None:
    prepared = streams_of(objects)
    sent = fill(prepared)
    for stream_batches in sent.values():
        for b in stream_batches:
            assert_within_limits(b.events)
            # Every event is credited to exactly one object.
            assert sum(b.owned().values()) == len(b.events)
    got = Counter((name, ev) for name, bs in sent.items() for b in bs for ev in b.events)
    want = Counter((name, ev) for obj in prepared for name, evs in obj for ev in evs)
    assert got == want  # nothing lost, nothing twice
    per_owner = Counter()
    for bs in sent.values():
        for b in bs:
            per_owner.update(b.owned())
    assert per_owner == Counter(
        {i: sum(len(e) for _, e in obj) for i, obj in enumerate(prepared) if any(e for _, e in obj)}
    )
    calls = sum(len(bs) for bs in sent.values())
    # The collector's objects are consecutive time slices, so filling them in order is the greedy cut of
    # the stream in time order, which is optimal: the bound the issue sets is 1.1 times the minimum.
    assert calls <= 1.1 * minimum(prepared)
    assert calls == minimum(prepared)


@PROPS
@given(pod_objects(overlapping=True))
def test_objects_that_overlap_in_time_still_give_sorted_batches_within_limits(objects: list[list[Event]]) -> None:
    prepared = streams_of(objects)
    sent = fill(prepared)
    for bs in sent.values():
        for b in bs:
            assert_within_limits(b.events)
            for owner, n in b.owned().items():
                assert n > 0 and owner in range(len(prepared))
    got = Counter((name, ev) for name, bs in sent.items() for b in bs for ev in b.events)
    assert got == Counter((name, ev) for obj in prepared for name, evs in obj for ev in evs)


def test_a_quiet_pods_objects_share_one_call_and_a_busy_one_fills_every_call() -> None:
    quiet = [[(START + i * 60_000 + j, f"line {j}") for j in range(50)] for i in range(40)]
    assert len(fill(streams_of(quiet))["app-pod-1-2024-06-01"]) == 1  # 2,000 small events: one call, not 40
    busy = [[(START + i * 1000 + j, "x" * 974) for j in range(100)] for i in range(50)]  # 1,000 bytes each
    sent = fill(streams_of(busy))["app-pod-1-2024-06-01"]
    assert [len(b.events) for b in sent] == [1048, 1048, 1048, 1048, 808]  # 1 MiB // 1,000 bytes per call


def test_an_event_over_the_limit_is_refused_rather_than_sent() -> None:
    with pytest.raises(ValueError, match="over the one-event limit"):
        BatchFiller().add("o", [(START, "x" * BATCH_BYTES)])


# -- the minimum ----------------------------------------------------------------------------------------


def fewest_runs(events: list[Event]) -> int:
    """Dynamic programming over every split of the time-sorted events into calls: the reference."""
    evs = sorted(events, key=lambda e: e[0])
    best = [0] + [10**9] * len(evs)
    for end in range(1, len(evs) + 1):
        size = 0
        for start in range(end - 1, -1, -1):
            size += cost(evs[start])
            if size > BATCH_BYTES or end - start > BATCH_EVENTS or evs[end - 1][0] - evs[start][0] >= SPAN_MS:
                break
            best[end] = min(best[end], best[start] + 1)
    return best[-1]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(START, START + 3 * DAY_MS), st.integers(0, BATCH_BYTES - OVERHEAD)),
        max_size=30,
    )
)
def test_the_minimum_is_the_fewest_time_ordered_calls(spec: list[tuple[int, int]]) -> None:
    events = [(ts, "m" * size) for ts, size in spec]
    n = min_put_requests(events)
    assert n == fewest_runs(events)
    # Never below what the byte and count limits alone need.
    assert n >= -(-sum(map(cost, events)) // BATCH_BYTES) and n >= -(-len(events) // BATCH_EVENTS)
    assert n == sum(1 for _ in batches(sorted(events, key=lambda e: e[0])))


def test_the_minimum_of_nothing_is_nothing() -> None:
    assert min_put_requests([]) == 0


@PROPS
@given(pod_objects(overlapping=False) | pod_objects(overlapping=True), st.booleans())
def test_a_fillers_minimum_is_the_streams_minimum_whether_objects_overlap_or_not(
    objects: list[list[Event]], drained: bool
) -> None:
    # While objects come in time order the filler counts its own cuts instead of re-reading every event;
    # once one overlaps an earlier one, it works from what it kept. Either way: the stream's minimum.
    prepared = streams_of(objects)
    fillers: dict[str, BatchFiller] = {}
    for index, obj in enumerate(prepared):
        for name, evs in obj:
            fillers.setdefault(name, BatchFiller()).add(index, evs)
    per_stream: dict[str, list[Event]] = {}
    for obj in prepared:
        for name, evs in obj:
            per_stream.setdefault(name, []).extend(evs)
    for name, filler in fillers.items():
        if drained:
            filler.drain()
        assert filler.minimum() == min_put_requests(per_stream[name])


def test_a_filler_takes_timestamps_before_1970() -> None:
    # A hand-built stream can hold them (prepare holds them back as too old): the minimum still counts them.
    filler = BatchFiller()
    filler.add("a", [(0, "x"), (SPAN_MS, "y")])
    filler.add("b", [(-SPAN_MS, "z"), (-1, "w")])
    assert filler.minimum() == min_put_requests([(0, "x"), (SPAN_MS, "y"), (-SPAN_MS, "z"), (-1, "w")]) == 3


# -- the pipeline: puts in flight, and who is settled --------------------------------------------------


@dataclass
class FakeCloudWatch:
    """PutLogEvents as CloudWatch answers it: limits checked per request, some batches refused, some
    events rejected (rejectedLogEventsInfo: too old first, then expired, too new last)."""

    fail: set[int] = field(default_factory=set)  # request numbers answered with an error
    reject: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # request → (too old, expired, too new)
    accepted: list[tuple[str, list[Event]]] = field(default_factory=list)
    requests: int = 0
    in_flight: int = 0
    most_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put_batch(self, dest: Delivery, stream: str, batch: list[Event]) -> SinkResult:
        assert_within_limits(batch)
        with self.lock:
            n = self.requests
            self.requests += 1
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if n in self.fail:
                raise DeliveryError(f"request {n} failed", recoverable=True)
            old, expired, new = self.reject.get(n, (0, 0, 0))
            old, expired = min(old, len(batch)), min(expired, len(batch) - min(old, len(batch)))
            new = min(new, len(batch) - old - expired)
            with self.lock:
                self.accepted.append((stream, batch[old + expired : len(batch) - new]))
            return SinkResult(
                events_delivered=len(batch) - old - expired - new,
                events_rejected_too_old=old,
                events_rejected_expired=expired,
                events_rejected_too_new=new,
                requests=1,
            )
        finally:
            with self.lock:
                self.in_flight -= 1


DEST = Delivery(
    tenant_id="acme",
    delivery_id="cloudwatch",
    type=DeliveryType.CLOUDWATCH,
    role_arn="arn:aws:iam::111111111111:role/CustomerLogDistribution-acme",
    region="us-east-1",
    log_group="/logs/acme",
)


@PROPS
@given(pod_objects(), st.sets(st.integers(0, 30), max_size=4), st.data())
def test_an_object_is_settled_once_every_event_is_answered_and_recorded_only_if_none_failed(
    objects: list[list[Event]], failing: set[int], data: st.DataObject
) -> None:
    reject = data.draw(st.dictionaries(st.integers(0, 30), st.tuples(*[st.integers(0, 3)] * 3), max_size=4))
    cw = FakeCloudWatch(fail=failing, reject=reject)
    pipeline = PutPipeline(limit=3)
    done: list[Pending] = []
    lock = threading.Lock()

    def on_done(p: Pending) -> None:
        with lock:
            done.append(p)

    prepared = streams_of(objects)
    pods = PodBatches(pipeline)
    pendings = []
    for index, obj in enumerate(prepared):
        p = Pending(DEST, cw, on_done, tag=index)  # type: ignore[arg-type]
        pendings.append(p)
        for name, evs in obj:
            if evs:
                pods.add(p, name, evs)
        pipeline.seal(p)
    minimums = pods.drain()
    pipeline.wait()
    pipeline.close()

    assert sorted(p.tag for p in done) == list(range(len(prepared)))  # each settled exactly once
    assert cw.most_in_flight <= 3
    # Which events of which object went out in which request, from the wire.
    owner_of = {(name, ev): i for i, obj in enumerate(prepared) for name, evs in obj for ev in evs}
    for p in pendings:
        sent = p.sent
        total = sum(len(evs) for _, evs in prepared[p.tag])
        answered = sent.events_delivered + sent.events_rejected
        if p.error is None:
            assert answered == total  # recordable: every event accepted or counted as rejected
        else:
            assert answered < total  # some of its events were in a refused batch
        assert sent.events_delivered == sum(1 for s, b in cw.accepted for ev in b if owner_of[(s, ev)] == p.tag)
    assert sum(p.sent.requests for p in pendings) == cw.requests - len(failing & set(range(cw.requests)))
    assert sum(m for _, m in minimums) == minimum(prepared)


@dataclass
class NewStreams:
    """CloudWatch for a backfill: no stream exists yet. A put to a missing stream is refused, the sink then
    creates it and puts again (what the native sink does). Counts every call, as the wire would."""

    existing: set[str] = field(default_factory=set)
    puts: int = 0
    refused: int = 0
    creates: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put_batch(self, dest: Delivery, stream: str, batch: list[Event]) -> SinkResult:
        result = SinkResult()
        with self.lock:
            self.puts += 1
            missing = stream not in self.existing
        if missing:
            # The refused call's round trip: other puts to the stream sent meanwhile are refused too, and
            # each creates it again. (Waiting here cannot make a correct pipeline fail, only give a wrong
            # one the chance to show it.)
            threading.Event().wait(0.01)
            with self.lock:
                self.refused += 1
                self.creates += 1
                self.existing.add(stream)
                self.puts += 1  # the put again, after the create
            result.requests_refused, result.creates = 1, 1
        result.requests = 1
        result.events_delivered = len(batch)
        return result


@PROPS
@given(st.lists(pod_objects(), min_size=1, max_size=4))
def test_a_new_stream_costs_one_create_and_at_most_one_refused_put(pods_objects: list[list[list[Event]]]) -> None:
    cw = NewStreams()
    pipeline = PutPipeline(limit=4)
    pendings: list[Pending] = []
    streams: set[str] = set()
    for pod, objects in enumerate(pods_objects):
        filling = PodBatches(pipeline)
        for obj in streams_of(objects):
            p = Pending(DEST, cw, lambda _: None)  # type: ignore[arg-type]
            pendings.append(p)
            for name, evs in obj:
                if evs:
                    filling.add(p, f"{name}-{pod}", evs)
                    streams.add(f"{name}-{pod}")
            pipeline.seal(p)
        filling.drain()
    pipeline.wait()
    pipeline.close()
    assert cw.creates == len(streams)  # however many batches each stream took
    assert cw.refused == len(streams)
    # The report's figures are the wire's: every put, refused or accepted, and every create.
    sent = [p.sent for p in pendings]
    assert sum(s.requests + s.requests_refused for s in sent) == cw.puts
    assert sum(s.creates for s in sent) == cw.creates
