"""Log streams and PutLogEvents batches under every CloudWatch Logs limit (CONTRACTS.md §4–5).

The only module that knows CloudWatch's limits. Pure: plain values in, plain values out, no I/O, so the
limits can be property-tested.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate, compress, repeat
from operator import add, itemgetter, methodcaller, not_

import orjson

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
    lo = hi = 0
    append = None
    for ev in evs:
        ts = ev[0]
        if lo <= ts < hi:
            append(ev)  # type: ignore[misc]
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


def event_size(message: str) -> int:
    """An event's cost against the batch byte limit."""
    return message_bytes(message) + EVENT_OVERHEAD_BYTES


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


@dataclass
class PreparedStream:
    """One stream's events, sorted and within limits, plus what was held back and why."""

    events: list[Event] = field(default_factory=list)
    too_old: int = 0
    too_new: int = 0
    filtered: int = 0  # outside the requested time window
    split: int = 0  # original events over the one-event limit, each sent as several parts


def prepare(
    events: Iterable[Event], now_ms: int, since_ms: int | None = None, until_ms: int | None = None
) -> PreparedStream:
    """Sort by timestamp, drop what is outside [since_ms, until_ms) (counted as filtered), hold back what
    CloudWatch would reject (over 14 days old, over 2 h ahead), and split oversized events.

    Counting these here makes the report exact for every sink: Vector's CloudWatch sink drops old events
    silently, and the native sink saves a call. A list argument is sorted in place. The common case (all
    in range, nothing oversized) runs in C: one sort, a few bisections and one max().
    """
    evs = events if isinstance(events, list) else list(events)
    evs.sort(key=_ts)  # stable: equal timestamps keep their order in the object
    n = len(evs)
    lo = 0 if since_ms is None else bisect_left(evs, since_ms, key=_ts)
    hi = n if until_ms is None else bisect_left(evs, until_ms, key=_ts, lo=lo)
    start = max(lo, bisect_left(evs, now_ms - MAX_AGE_MS, key=_ts, lo=lo, hi=hi))
    end = min(hi, bisect_right(evs, now_ms + MAX_FUTURE_MS, key=_ts, lo=start, hi=hi))
    out = PreparedStream(too_old=start - lo, too_new=hi - end, filtered=lo + (n - hi))
    kept = evs if start == 0 and end == n else evs[start:end]
    # A character is at most 4 UTF-8 bytes, so only longer messages can be over the limit.
    if kept and max(map(len, map(_msg, kept))) > MAX_MESSAGE_BYTES // 4:
        kept = _split_oversized(kept, out)
    out.events = kept
    return out


def _split_oversized(events: list[Event], out: PreparedStream) -> list[Event]:
    kept: list[Event] = []
    for ev in events:
        ts, msg = ev
        if len(msg) > MAX_MESSAGE_BYTES // 4 and message_bytes(msg) > MAX_MESSAGE_BYTES:
            out.split += 1
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
    cum = list(accumulate(map(add, utf8_sizes(list(map(_msg, events))), repeat(EVENT_OVERHEAD_BYTES)), initial=0))
    if n <= MAX_BATCH_EVENTS and cum[-1] <= MAX_BATCH_BYTES and events[-1][0] - events[0][0] < MAX_BATCH_SPAN_MS:
        yield events
        return
    start = 0
    while start < n:
        end = bisect_right(cum, cum[start] + MAX_BATCH_BYTES, lo=start + 1) - 1
        end = min(end, start + MAX_BATCH_EVENTS)
        end = min(end, bisect_left(events, events[start][0] + MAX_BATCH_SPAN_MS, lo=start + 1, key=_ts))
        end = max(end, start + 1)  # prepare() guarantees one event always fits
        yield events[start:end]
        start = end


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


@dataclass(frozen=True)
class Rejected:
    too_old: int = 0
    too_new: int = 0
    expired: int = 0

    @property
    def total(self) -> int:
        return self.too_old + self.too_new + self.expired


def count_rejected(info: dict[str, int] | None, batch_len: int) -> Rejected:
    """Turn PutLogEvents' rejectedLogEventsInfo into per-reason counts for a batch of `batch_len` events.

    Too-old events are [0, tooOldLogEventEndIndex), expired ones [0, expiredLogEventEndIndex) (an overlap
    with too-old is counted once, as too-old), too-new ones [tooNewLogEventStartIndex, len).
    """
    if not info:
        return Rejected()
    too_old = min(int(info.get("tooOldLogEventEndIndex", 0) or 0), batch_len)
    expired_end = min(int(info.get("expiredLogEventEndIndex", 0) or 0), batch_len)
    new_start = info.get("tooNewLogEventStartIndex")
    too_new = batch_len - max(int(new_start), 0) if new_start is not None else 0
    too_new = max(0, min(too_new, batch_len - max(too_old, expired_end)))
    return Rejected(too_old=too_old, too_new=too_new, expired=max(0, expired_end - too_old))
