"""Log streams and PutLogEvents batches under every CloudWatch Logs limit (CONTRACTS.md §4–5).

The only module that knows CloudWatch's limits. Pure: plain values in, plain values out, no I/O, so the
limits can be property-tested.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate, compress, islice, repeat
from operator import add, itemgetter, le, methodcaller, not_
from typing import Any

import orjson

from pipeline.counters import DeliveryCounts
from pipeline.coverage import EMPTY, Coverage
from pipeline.filters import ContentFilter
from pipeline.records import Event

MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD_BYTES = 26
MAX_BATCH_EVENTS = 10_000
MAX_EVENT_BYTES = 1_048_576  # including the 26-byte overhead
MAX_MESSAGE_BYTES = MAX_EVENT_BYTES - EVENT_OVERHEAD_BYTES
MAX_BATCH_SPAN_MS = 24 * 3600 * 1000
MAX_AGE_MS = 14 * 24 * 3600 * 1000
MAX_FUTURE_MS = 2 * 3600 * 1000
MAX_STREAM_NAME_CHARS = 512

DAY_MS = 86_400_000
_day_names: dict[int, str] = {}


def utc_date(ts_ms: int) -> str:
    """YYYY-MM-DD of an epoch-millisecond timestamp, cached per day: called once per event."""
    day = ts_ms // DAY_MS
    name = _day_names.get(day)
    if name is None:
        name = datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")
        _day_names[day] = name
    return name


def stream_name(application: str, pod: str, ts_ms: int) -> str:
    """`{application}-{pod_name}-{YYYY-MM-DD}`, the event's UTC date: one object can feed two streams."""
    return f"{application}-{pod}-{utc_date(ts_ms)}"


def group_by_stream(events: Iterable[Event], application: str, pod: str) -> dict[str, list[Event]]:
    """Events of one pod, grouped into their log streams (by UTC day). A list argument may be returned as
    one of the groups, not copied.

    An object covers a few minutes, so nearly always all its events share one day: that case is two
    passes in C. Otherwise each event costs two comparisons while it stays on the previous event's day.
    """
    evs = events if isinstance(events, list) else list(events)
    if not evs:
        return {}
    day = min(map(_ts, evs)) // DAY_MS
    if max(map(_ts, evs)) // DAY_MS == day:
        return {stream_name(application, pod, day * DAY_MS): evs}
    by_day: dict[int, list[Event]] = {}
    lo = hi = 0  # an empty day: the first event always picks its bucket
    append = evs.append  # never called before the first bucket replaces it
    for ev in evs:
        ts = ev[0]
        if lo <= ts < hi:
            append(ev)
            continue
        day = ts // DAY_MS
        bucket = by_day.get(day)
        if bucket is None:
            bucket = by_day[day] = []
        append = bucket.append
        lo, hi = day * DAY_MS, (day + 1) * DAY_MS
        append(ev)
    return {stream_name(application, pod, day * DAY_MS): evs for day, evs in by_day.items()}


def message_bytes(message: str) -> int:
    return len(message) if message.isascii() else len(message.encode("utf-8", "surrogatepass"))


def split_message(message: str, limit: int = MAX_MESSAGE_BYTES) -> list[str]:
    """Split a message over the one-event limit into parts that fit, each marked `[split i/n] `.

    Parts are cut on UTF-8 character boundaries. Nothing is dropped, so the reader can reassemble it.
    """
    data = message.encode("utf-8", "surrogatepass")
    if len(data) <= limit:
        return [message]
    marker_room = len(f"[split {len(data)}/{len(data)}] ")  # an upper bound on the marker's length
    room = limit - marker_room
    pieces: list[str] = []
    start = 0
    while start < len(data):
        end = min(start + room, len(data))
        while end < len(data) and (data[end] & 0xC0) == 0x80:  # don't cut inside a character
            end -= 1
        pieces.append(data[start:end].decode("utf-8", "surrogatepass"))
        start = end
    n = len(pieces)
    return [f"[split {i}/{n}] {p}" for i, p in enumerate(pieces, 1)]


@dataclass(kw_only=True)
class PreparedStream(DeliveryCounts):
    """One stream's events, sorted and within limits, with what was held back and why counted: the
    rejected, filtered and split counts (a delivery adds them to its own)."""

    events: list[Event] = field(default_factory=list)


def prepare(
    events: Iterable[Event],
    now_ms: int,
    since_ms: int | None = None,
    until_ms: int | None = None,
    covered: Coverage = EMPTY,
    keep: ContentFilter | None = None,
) -> PreparedStream:
    """Sort by timestamp, drop what is outside [since_ms, until_ms) (counted as filtered) and what an
    earlier run already delivered (`covered`, from the ledger: counted as already delivered), drop what the
    delivery's content filter `keep` does not keep (counted as filtered, and as events_filtered_content), hold
    back what CloudWatch would reject (over 14 days old, over 2 h ahead), and split oversized events.

    Counting these here makes the report exact for every sink: Vector's CloudWatch sink drops old events
    silently, and the native sink saves a call. A list argument is sorted in place (and may be prepared
    again, for another delivery's coverage). The common case (all in range, nothing covered, nothing
    oversized) runs in C: one sort, a few bisections and one max().
    """
    evs = events if isinstance(events, list) else list(events)
    evs.sort(key=_ts)  # stable: equal timestamps keep their order in the object
    n = len(evs)
    lo = 0 if since_ms is None else bisect_left(evs, since_ms, key=_ts)
    hi = n if until_ms is None else bisect_left(evs, until_ms, key=_ts, lo=lo)
    out = PreparedStream(events_filtered=lo + (n - hi))
    segments = _uncovered(evs, lo, hi, covered) if covered else [(lo, hi)]
    out.events_already_delivered = (hi - lo) - sum(b - a for a, b in segments)
    if keep is not None:
        # After the window and the ledger (an event outside them is not this run's to judge), before the age
        # limits (an event the tenant excluded is not one CloudWatch refused).
        evs, dropped = keep.split([ev for a, b in segments for ev in evs[a:b]])
        out.events_filtered += dropped
        out.events_filtered_content = dropped
        n = len(evs)
        segments = [(0, n)]
    parts: list[list[Event]] = []
    for a, b in segments:
        start = max(a, bisect_left(evs, now_ms - MAX_AGE_MS, key=_ts, lo=a, hi=b))
        end = min(b, bisect_right(evs, now_ms + MAX_FUTURE_MS, key=_ts, lo=start, hi=b))
        out.events_rejected_too_old += start - a
        out.events_rejected_too_new += b - end
        parts.append(evs if start == 0 and end == n else evs[start:end])
    kept = parts[0] if len(parts) == 1 else [ev for part in parts for ev in part]
    # A character is at most 4 UTF-8 bytes, so only longer messages can be over the limit.
    if kept and max(map(len, map(_msg, kept))) > MAX_MESSAGE_BYTES // 4:
        kept = _split_oversized(kept, out)
    out.events = kept
    return out


def _uncovered(evs: list[Event], lo: int, hi: int, covered: Coverage) -> list[tuple[int, int]]:
    """The index ranges of evs[lo:hi] (sorted) whose timestamps `covered` does not hold, in order."""
    if lo >= hi:
        return []
    left = Coverage.window(_ts(evs[lo]), _ts(evs[hi - 1]) + 1).minus(covered)
    return [
        (bisect_left(evs, a, key=_ts, lo=lo, hi=hi), bisect_left(evs, b, key=_ts, lo=lo, hi=hi))
        for a, b in left.intervals
    ]


def _split_oversized(events: list[Event], out: PreparedStream) -> list[Event]:
    kept: list[Event] = []
    for ev in events:
        ts, msg = ev
        if len(msg) > MAX_MESSAGE_BYTES // 4 and message_bytes(msg) > MAX_MESSAGE_BYTES:
            out.events_split += 1
            kept.extend((ts, part) for part in split_message(msg))  # parts share ts: they stay in order
        else:
            kept.append(ev)
    return kept


def batches(events: list[Event]) -> Iterator[list[Event]]:
    """Cut sorted, prepared events into PutLogEvents batches that obey every limit.

    Greedy, like filling each batch event by event, but done with prefix sums and bisection so the
    per-event work stays in C.
    """
    n = len(events)
    if n == 0:
        return
    # Byte cost of each event, as running totals: cum[i] is the cost of events[:i].
    cum = list(accumulate(event_costs(events), initial=0))
    if n <= MAX_BATCH_EVENTS and cum[-1] <= MAX_BATCH_BYTES and events[-1][0] - events[0][0] < MAX_BATCH_SPAN_MS:
        yield events
        return
    start = 0
    while start < n:
        end = max(_batch_end(events, cum, start, _ts), start + 1)  # prepare() guarantees one event always fits
        yield events[start:end]
        start = end


def _batch_end(stamps: Sequence[Any], cum: Sequence[int], start: int, key: Callable[[Any], int] | None = None) -> int:
    """The end of the fullest batch starting at `start` that every limit allows, over time-sorted `stamps`
    (events with `key`, or timestamps) and `cum`, the running byte costs (cum[i] = cost of the first i).
    `start` when even its first event is over the one-event limit."""
    n = len(stamps)
    end = min(n, start + MAX_BATCH_EVENTS, bisect_right(cum, cum[start] + MAX_BATCH_BYTES, lo=start) - 1)
    first = stamps[start] if key is None else key(stamps[start])
    return min(end, bisect_left(stamps, first + MAX_BATCH_SPAN_MS, lo=start + 1, hi=n, key=key))


def event_costs(events: list[Event]) -> list[int]:
    """Each event's cost against the batch byte limit (its UTF-8 message bytes plus the overhead)."""
    return list(map(add, utf8_sizes(list(map(_msg, events))), repeat(EVENT_OVERHEAD_BYTES)))


def min_put_requests(events: Iterable[Event]) -> int:
    """The fewest PutLogEvents calls one stream's events need under every limit of CONTRACTS §5.

    Events are taken in time order (a call must be sorted, and a stream is read back in time order).
    Cutting the sorted events greedily, each call as full as the limits allow, is optimal among
    partitions into time-ordered runs: every limit (count, bytes, 24 h span) holds for any part of a run
    that satisfies it, so a greedy call always ends at or after the matching call of any other
    partition. The events must already be within the one-event limit (see `prepare`).
    """
    evs = sorted(events, key=_ts)
    return min_put_requests_of(array("q", map(_ts, evs)), event_costs(evs))


def min_put_requests_of(timestamps: Sequence[int], costs: Sequence[int]) -> int:
    """`min_put_requests` from each event's timestamp and byte cost, in any order: what a sender keeps of
    a stream instead of its events."""
    n = len(timestamps)
    if n == 0:
        return 0
    if not all(map(le, timestamps, islice(timestamps, 1, None))):
        order = sorted(range(n), key=timestamps.__getitem__)
        timestamps, costs = [timestamps[i] for i in order], [costs[i] for i in order]
    cum = list(accumulate(costs, initial=0))
    calls = start = 0
    while start < n:
        end = _batch_end(timestamps, cum, start)
        if end <= start:
            raise ValueError(f"an event of {costs[start]} bytes is over the one-event limit")
        calls += 1
        start = end
    return calls


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


def put_log_events_body(log_group: str, stream: str, batch: list[Event]) -> bytes:
    """The PutLogEvents request body for one batch, serialized in one orjson call."""
    return orjson.dumps(
        {
            "logGroupName": log_group,
            "logStreamName": stream,
            "logEvents": [{"timestamp": ts, "message": msg} for ts, msg in batch],
        }
    )


def utf8_sizes(messages: list[str]) -> list[int]:
    """UTF-8 byte length of each message. An ASCII string's length is its byte count, and CPython knows
    a string is ASCII without looking at it, so only the others are encoded."""
    sizes = list(map(len, messages))
    for i in compress(range(len(messages)), map(not_, map(str.isascii, messages))):
        sizes[i] = len(_utf8(messages[i]))
    return sizes


_ts = itemgetter(0)
_msg = itemgetter(1)
_utf8 = methodcaller("encode", "utf-8", "surrogatepass")


def count_rejected(info: dict[str, int] | None, batch_len: int) -> DeliveryCounts:
    """Turn PutLogEvents' rejectedLogEventsInfo into per-reason counts for a batch of `batch_len` events.

    Too-old events are [0, tooOldLogEventEndIndex), expired ones [0, expiredLogEventEndIndex) (an overlap
    with too-old is counted once, as too-old), too-new ones [tooNewLogEventStartIndex, len).
    """
    if not info:
        return DeliveryCounts()
    too_old = min(int(info.get("tooOldLogEventEndIndex", 0) or 0), batch_len)
    expired_end = min(int(info.get("expiredLogEventEndIndex", 0) or 0), batch_len)
    new_start = info.get("tooNewLogEventStartIndex")
    too_new = batch_len - max(int(new_start), 0) if new_start is not None else 0
    too_new = max(0, min(too_new, batch_len - max(too_old, expired_end)))
    return DeliveryCounts(
        events_rejected_too_old=too_old,
        events_rejected_too_new=too_new,
        events_rejected_expired=max(0, expired_end - too_old),
    )
