"""Log streams and PutLogEvents batches under every CloudWatch Logs limit (CONTRACTS.md §4–5).

The only module that knows CloudWatch's limits. Pure: plain values in, plain values out, no I/O, so the
limits can be property-tested.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
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
