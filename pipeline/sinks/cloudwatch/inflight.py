"""Full PutLogEvents batches across a pod's objects, with several puts in flight (the replay's event path).

The consumer sends each object's events as soon as it arrives: a stream's objects come minutes apart.
The replay has a pod's objects in hand, in order, so it fills each stream's batches across objects
(`pipeline.sinks.cloudwatch.filling.BatchFiller`) and sends a batch only once it is full, or when the pod's objects run
out. Calls then grow with bytes, not with objects: most pods are quiet, and their objects are small.

An object's delivery is settled only when every one of its events is answered: accepted, or rejected
and counted. The objects one answer settles are then recorded in the ledger together (one
TransactWriteItems for up to 100 of them), each still its own record, so the ledger stays per object and
exact. What
a kill can resend is the objects with an event in a batch still being filled or in flight: at most the
objects of `PutPipeline.limit` batches in flight, plus one filling batch per open stream.

Puts run on a pool of `limit` threads, so a worker keeps up to `limit` requests outstanding, to one
stream or several (sequence tokens are gone: CloudWatch takes parallel puts to one stream). A worker is
then bounded by its CPU, not by the round trip. A pod thread that finds every slot taken waits for one,
which bounds the memory held in flight.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import DeliveryError
from pipeline.records import Event
from pipeline.sinks import BatchSink, SinkResult
from pipeline.sinks.cloudwatch.filling import Batch, BatchFiller
from pipeline.tenants import Delivery

log = logging.getLogger(__name__)

# What a batch's calls did on the wire, as opposed to what its events did (credited to each owner).
WIRE_COUNTERS = ("requests", "requests_refused", "creates", "retries")
KNOWN_STREAMS_MAX = 100_000  # streams a worker remembers as existing (a few MB at most)
IN_FLIGHT_PUTS = 8  # per worker: at 40 ms a call, 8 full batches in flight outrun a core's decoding


@dataclass(eq=False)
class Pending:
    """One object's delivery while its events are in batches not yet answered."""

    dest: Delivery
    sink: BatchSink
    on_done: Callable[[Pending], None]  # called once, when sealed and every event answered
    tag: Any = None  # the caller's own handle on what this is for
    events: int = 0  # added and not yet answered
    sealed: bool = False  # every event of the object has been added
    sent: SinkResult = field(default_factory=SinkResult)
    error: DeliveryError | None = None  # the first failed batch holding one of its events

    @property
    def settled(self) -> bool:
        return self.sealed and self.events == 0


class PutPipeline:
    """A worker's PutLogEvents calls in flight: at most `limit` at once, shared by its pod threads."""

    def __init__(
        self,
        limit: int = IN_FLIGHT_PUTS,
        throttle: Callable[[str, int, int], None] | None = None,
        after: Callable[[list[Pending]], None] | None = None,
    ) -> None:
        self.limit = limit
        self._throttle = throttle
        # Called once with the owners one answer (or one seal) settled, after each one's on_done: where
        # their records are written together.
        self._after = after
        self._pool = ThreadPoolExecutor(limit, thread_name_prefix="put")
        self._slots = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._outstanding = 0
        # Streams this worker has put to: None once a put to it succeeded (it exists), an Event while its
        # first put is in flight. A backfill writes mostly into streams that do not exist yet: the first
        # batch to one goes alone, is refused once and creates it (one CreateLogStream), and the stream's
        # other batches wait for it instead of each being refused and racing to create it.
        self._streams: dict[tuple[str, str, str], threading.Event | None] = {}

    def submit(self, pending: Pending, stream: str, batch: Batch) -> None:
        """Send the batch from the pool. Blocks while `limit` calls are outstanding, and for the rate limit,
        and while the first batch to a stream new to this worker is in flight. `pending` is the batch's last
        owner, which the call itself is counted against."""
        key = (pending.dest.tenant_id, pending.dest.delivery_id, stream)
        opening = self._open(key)
        if self._throttle is not None:
            self._throttle(pending.dest.tenant_id, len(batch.events), 1)
        self._slots.acquire()
        with self._lock:
            self._outstanding += 1
        self._pool.submit(self._put, pending, stream, batch, key if opening else None)

    def _open(self, key: tuple[str, str, str]) -> bool:
        """Whether this batch is the first to the stream (it then goes alone); waits while another is."""
        while True:
            with self._lock:
                if key not in self._streams:
                    if len(self._streams) >= KNOWN_STREAMS_MAX:  # forgetting costs at most one refused put
                        self._streams = {k: v for k, v in self._streams.items() if v is not None}
                    self._streams[key] = threading.Event()
                    return True
                first = self._streams[key]
            if first is None:
                return False
            first.wait()

    def _opened(self, key: tuple[str, str, str], ok: bool) -> None:
        with self._lock:
            first = self._streams.pop(key, None)
            if ok:
                self._streams[key] = None
        if first is not None:
            first.set()  # failed: the next batch to the stream opens it again

    def _put(self, last: Pending, stream: str, batch: Batch, opening: tuple[str, str, str] | None) -> None:
        sent: SinkResult | None = None
        error: DeliveryError | None = None
        try:
            sent = last.sink.put_batch(last.dest, stream, batch.events)
        except DeliveryError as exc:
            error = exc
        except Exception as exc:  # a bug must fail the objects, not leave them waiting forever
            log.exception("put failed", extra={"stream": stream, "tenant": last.dest.tenant_id})
            error = DeliveryError(f"PutLogEvents to {stream} failed: {type(exc).__name__}: {exc}"[:500])
        if opening is not None:
            self._opened(opening, sent is not None)
        try:
            self.settle(batch, last, sent, error)
        finally:
            # The slot is held until the batch's objects are recorded: at most `limit` batches are sent or
            # being recorded at once, which is what bounds both memory and what a kill can resend.
            self._slots.release()
            with self._lock:
                self._outstanding -= 1
                self._idle.notify_all()

    def settle(self, batch: Batch, last: Pending, sent: SinkResult | None, error: DeliveryError | None) -> None:
        """Credit each owner of the batch with its events' outcome; finish the owners this settles."""
        owned = batch.owned()
        if sent is not None:
            n = len(batch.events)
            old_end = sent.events_rejected_too_old
            expired_end = old_end + sent.events_rejected_expired
            too_old, expired = batch.owned(0, old_end), batch.owned(old_end, expired_end)
            too_new = batch.owned(n - sent.events_rejected_too_new, n)
        done: list[Pending] = []
        with self._lock:
            for owner, count in owned.items():
                p: Pending = owner  # type: ignore[assignment]  # BatchFiller keeps owners opaque; ours are Pending
                p.events -= count
                if sent is None:
                    p.error = p.error or error
                else:
                    rejected = (too_old.get(p, 0), expired.get(p, 0), too_new.get(p, 0))
                    p.sent.events_delivered += count - sum(rejected)
                    p.sent.events_rejected_too_old += rejected[0]
                    p.sent.events_rejected_expired += rejected[1]
                    p.sent.events_rejected_too_new += rejected[2]
                if p.settled:
                    done.append(p)
            # The calls themselves are counted once, against the batch's last owner, answered or not.
            wire = sent if sent is not None else (error.sent if error is not None else None)
            if wire is not None:
                for name in WIRE_COUNTERS:
                    setattr(last.sent, name, getattr(last.sent, name) + getattr(wire, name))
        self._finish(done)

    def _finish(self, done: list[Pending]) -> None:
        for p in done:
            p.on_done(p)
        if done and self._after is not None:
            self._after(done)

    def expect(self, pending: Pending, events: int) -> None:
        """Count events of the object that are about to join batches, before any of them can be answered."""
        with self._lock:
            pending.events += events

    def seal(self, pending: Pending) -> None:
        """Every event of the object has been added: finish it now if nothing of it is in flight."""
        with self._lock:
            pending.sealed = True
            done = pending.settled
        if done:
            self._finish([pending])

    def wait(self) -> None:
        """Return once every call submitted so far has been answered and settled."""
        with self._idle:
            self._idle.wait_for(lambda: self._outstanding == 0)

    def close(self) -> None:
        self._pool.shutdown(wait=True)


class PodBatches:
    """One pod's streams being filled, used by the one thread that delivers the pod's objects in order."""

    def __init__(self, pipeline: PutPipeline) -> None:
        self._pipeline = pipeline
        # (tenant, delivery id, stream) → (the filler, the last owner added to it)
        self._streams: dict[tuple[str, str, str], tuple[BatchFiller, Pending]] = {}

    def add(self, pending: Pending, stream: str, events: list[Event]) -> None:
        """Add one object's prepared events for one stream; full batches go out now."""
        key = (pending.dest.tenant_id, pending.dest.delivery_id, stream)
        filler = self._streams[key][0] if key in self._streams else BatchFiller()
        self._streams[key] = (filler, pending)
        self._pipeline.expect(pending, len(events))
        for batch in filler.add(pending, events):
            self._pipeline.submit(_last_owner(batch), stream, batch)

    def seal(self, pending: Pending) -> None:
        """Every event of the object has been added (`PutPipeline.seal`)."""
        self._pipeline.seal(pending)

    def drain(self) -> list[tuple[Pending, int]]:
        """Send every partial batch: the pod has no more objects. Returns each stream's last owner with the
        fewest calls its events needed (`BatchFiller.minimum`), for the report."""
        minimums: list[tuple[Pending, int]] = []
        for (_, _, stream), (filler, last) in self._streams.items():
            minimums.append((last, filler.minimum()))
            batch = filler.drain()
            if batch is not None:
                self._pipeline.submit(_last_owner(batch), stream, batch)
        self._streams.clear()
        return minimums


def _last_owner(batch: Batch) -> Pending:
    owner: Pending = batch.runs[-1][0]  # type: ignore[assignment]  # owners here are always Pending
    return owner
