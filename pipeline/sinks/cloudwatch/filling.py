"""PutLogEvents batches filled across a pod's objects (`BatchFiller`): pure, property-tested."""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Hashable
from dataclasses import dataclass
from itertools import accumulate, repeat

from pipeline.records import Event
from pipeline.sinks.cloudwatch.limits import (
    EVENT_OVERHEAD_BYTES,
    MAX_BATCH_BYTES,
    MAX_BATCH_EVENTS,
    MAX_BATCH_SPAN_MS,
    _ts,
    event_costs,
    min_put_requests_of,
)


@dataclass
class Batch:
    """One PutLogEvents call's events, sorted, and which owner (the object they came from) each belongs to.

    `runs` is the owners in the order of `events`, run-length encoded: (owner, end) means the events from
    the previous run's end up to `end` are that owner's. An owner can have several runs when objects
    overlap in time.
    """

    events: list[Event]
    runs: list[tuple[Hashable, int]]

    def owned(self, lo: int = 0, hi: int | None = None) -> dict[Hashable, int]:
        """Events per owner among events[lo:hi]."""
        hi = len(self.events) if hi is None else hi
        out: dict[Hashable, int] = {}
        start = 0
        for owner, end in self.runs:
            n = min(end, hi) - max(start, lo)
            if n > 0:
                out[owner] = out.get(owner, 0) + n
            start = end
        return out


class BatchFiller:
    """Fills one stream's PutLogEvents batches across the objects that feed it, one object at a time.

    A quiet pod's objects hold a few hundred events each; sending each object's events as its own call
    would cost one call per object, so consecutive objects share batches up to every limit. `add` gives
    back the batches that are full; `drain` the last, partial one. Each object's events arrive sorted (from
    `prepare`); a batch spanning objects that overlap in time is sorted when it is cut. Pure, like the
    rest of this module: the caller does the sending and settles owners from each batch's `runs`.
    """

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._runs: list[tuple[Hashable, int]] = []
        self._bytes = 0
        self._first = self._last = 0  # earliest and latest timestamp held
        # While each object's events start no earlier than every event before them (a pod's objects are
        # consecutive time slices), the batches cut are the greedy cut of the stream in time order, which
        # is the minimum: `minimum()` is then their count. `_high` is the latest timestamp added so far.
        self._in_order = True
        self._high: int | None = None
        self._cuts = 0
        # Every event added, as (timestamp, cost), for `minimum()` once objects overlap in time: 12 bytes
        # each instead of the event. Unsigned arrays, because filling a signed one converts every item
        # through PyArg_Parse (three times the cost); a negative timestamp, which only a hand-built stream
        # can have (`prepare` holds them back as too old), switches to a signed one.
        self._timestamps: array[int] = array("L")
        self._costs: array[int] = array("I")

    def __len__(self) -> int:
        return len(self._events)

    def add(self, owner: Hashable, events: list[Event]) -> list[Batch]:
        """Add one owner's sorted, prepared events; return the batches this filled."""
        full: list[Batch] = []
        n = len(events)
        if n == 0:
            return full
        costs = event_costs(events)
        first, last = events[0][0], events[-1][0]
        if self._high is not None and first < self._high:
            self._in_order = False
        self._high = last if self._high is None else max(self._high, last)
        if first < 0 and self._timestamps.typecode == "L":
            self._timestamps = array("q", self._timestamps)
        self._timestamps.extend(map(_ts, events))
        self._costs.extend(costs)
        cum = list(accumulate(costs, initial=0))
        i = 0
        while i < n:
            end = self._fits(events, cum, i)
            if end == i:
                if not self._events:
                    raise ValueError(f"an event of {cum[i + 1] - cum[i]} bytes is over the one-event limit")
                full.append(self._cut())
                continue
            if not self._events:
                self._first, self._last = events[i][0], events[end - 1][0]
            else:
                self._first, self._last = min(self._first, events[i][0]), max(self._last, events[end - 1][0])
            self._events.extend(events[i:end] if i or end < n else events)
            self._runs.append((owner, len(self._events)))
            self._bytes += cum[end] - cum[i]
            i = end
        if len(self._events) == MAX_BATCH_EVENTS or self._bytes > MAX_BATCH_BYTES - EVENT_OVERHEAD_BYTES:
            full.append(self._cut())  # nothing more can join it: send it now rather than on the next add
        return full

    def drain(self) -> Batch | None:
        """The partial batch still being filled, if any: when the stream has no more objects."""
        return self._cut() if self._events else None

    def minimum(self) -> int:
        """The fewest calls every event added so far needs (`min_put_requests`), to compare with the calls
        this filler made."""
        if self._in_order:
            return self._cuts + (1 if self._events else 0)
        return min_put_requests_of(self._timestamps, self._costs)

    def _fits(self, events: list[Event], cum: list[int], i: int) -> int:
        """The end of the longest run events[i:end] that can join the batch being filled."""
        n = len(events)
        end = min(n, i + MAX_BATCH_EVENTS - len(self._events))
        end = min(end, bisect_right(cum, cum[i] + MAX_BATCH_BYTES - self._bytes, lo=i, hi=end + 1) - 1)
        first = min(self._first, events[i][0]) if self._events else events[i][0]
        if self._events and self._last - first >= MAX_BATCH_SPAN_MS:
            return i
        return min(end, bisect_left(events, first + MAX_BATCH_SPAN_MS, lo=i, hi=max(i, end), key=_ts))

    def _cut(self) -> Batch:
        events, runs = self._events, self._runs
        self._events, self._runs, self._bytes = [], [], 0
        self._cuts += 1
        if len(runs) > 1 and any(events[end - 1][0] > events[end][0] for _, end in runs[:-1]):
            events, runs = _merge(events, runs)
        return Batch(events, runs)


def _merge(events: list[Event], runs: list[tuple[Hashable, int]]) -> tuple[list[Event], list[tuple[Hashable, int]]]:
    """Sort a batch whose objects overlap in time, keeping track of whose each event is. Stable: events
    with the same timestamp keep their objects' order."""
    owners: list[int] = []
    start = 0
    for index, (_, end) in enumerate(runs):
        owners.extend(repeat(index, end - start))
        start = end
    order = sorted(range(len(events)), key=lambda j: events[j][0])
    merged: list[tuple[Hashable, int]] = []
    for pos, j in enumerate(order, 1):
        owner = runs[owners[j]][0]
        if merged and merged[-1][0] == owner:
            merged[-1] = (owner, pos)
        else:
            merged.append((owner, pos))
    return [events[j] for j in order], merged
