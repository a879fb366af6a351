"""PutLogEvents batches under every CloudWatch Logs limit (CONTRACTS.md §4–5), property-tested."""

from __future__ import annotations

import random
import re
from collections import Counter
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.coverage import Coverage
from pipeline.records import Event
from pipeline.sinks.cloudwatch.limits import (
    batches,
    count_rejected,
    group_by_stream,
    prepare,
    split_message,
    stream_name,
    utf8_sizes,
)

# The contract's numbers, written out here on purpose rather than imported: the tests check the code
# against CONTRACTS.md §5, not against itself.
BATCH_BYTES = 1_048_576
OVERHEAD = 26
BATCH_EVENTS = 10_000
EVENT_BYTES = 1_048_576  # including the overhead
SPAN_MS = 24 * 3600 * 1000
DAY_MS = 86_400_000
AGE_MS = 14 * DAY_MS
FUTURE_MS = 2 * 3600 * 1000

# 2024-06-03 01:30 UTC: a three-day window before it crosses three midnights.
NOW = int(datetime(2024, 6, 3, 1, 30, tzinfo=UTC).timestamp() * 1000)

SPLIT_RE = re.compile(r"^\[split (\d+)/(\d+)\] ", re.DOTALL)
PROPS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


def nbytes(s: str) -> int:
    return len(s.encode("utf-8", "surrogatepass"))


def sized(pattern: str, total: int) -> str:
    """A string of exactly `total` UTF-8 bytes made of `pattern` repeats, padded with ASCII."""
    unit = nbytes(pattern)
    s = pattern * (total // unit)
    return s + "z" * (total - nbytes(s))


def check_batches(out: list[list[Event]]) -> None:
    for b in out:
        assert 0 < len(b) <= BATCH_EVENTS
        assert sum(nbytes(m) + OVERHEAD for _, m in b) <= BATCH_BYTES
        assert all(b[i][0] <= b[i + 1][0] for i in range(len(b) - 1)), "not sorted by timestamp"
        assert b[-1][0] - b[0][0] < SPAN_MS
        for _, m in b:
            assert nbytes(m) + OVERHEAD <= EVENT_BYTES
            assert m, "CloudWatch refuses empty messages"


def reassemble(events: list[Event]) -> list[Event]:
    """Undo split_message: consecutive `[split i/n] ` parts of one timestamp become one event again."""
    out: list[Event] = []
    i = 0
    while i < len(events):
        ts, m = events[i]
        match = SPLIT_RE.match(m)
        if not match:
            out.append((ts, m))
            i += 1
            continue
        n = int(match.group(2))
        assert match.group(1) == "1", f"split part {m[:20]!r} out of order"
        parts = events[i : i + n]
        assert len(parts) == n
        text = []
        for k, (pts, pm) in enumerate(parts, 1):
            pmatch = SPLIT_RE.match(pm)
            assert pmatch and int(pmatch.group(1)) == k and int(pmatch.group(2)) == n
            assert pts == ts
            text.append(pm[pmatch.end() :])
        out.append((ts, "".join(text)))
        i += n
    return out


def run(events: list[Event], now: int = NOW) -> tuple[list[list[Event]], int, int, int]:
    prepared = prepare(list(events), now)
    out = list(batches(prepared.events))
    return out, prepared.events_rejected_too_old, prepared.events_rejected_too_new, prepared.events_split


def check_all(events: list[Event], now: int = NOW) -> list[list[Event]]:
    out, too_old, too_new, split = run(events, now)
    check_batches(out)
    old = [e for e in events if e[0] < now - AGE_MS]
    new = [e for e in events if e[0] > now + FUTURE_MS]
    kept = [e for e in events if now - AGE_MS <= e[0] <= now + FUTURE_MS]
    assert too_old == len(old)
    assert too_new == len(new)
    assert split == sum(1 for _, m in kept if nbytes(m) + OVERHEAD > EVENT_BYTES)
    flat = [e for b in out for e in b]
    assert Counter(reassemble(flat)) == Counter(kept), "events lost or duplicated"
    return out


# ---------------------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------------------

in_range_ts = st.integers(min_value=NOW - 3 * DAY_MS, max_value=NOW + FUTURE_MS)
any_ts = st.one_of(
    in_range_ts,
    in_range_ts,
    in_range_ts,
    st.integers(min_value=NOW - 30 * DAY_MS, max_value=NOW - AGE_MS - 1),
    st.integers(min_value=NOW + FUTURE_MS + 1, max_value=NOW + 3 * DAY_MS),
    st.sampled_from([NOW - AGE_MS, NOW - AGE_MS - 1, NOW + FUTURE_MS, NOW + FUTURE_MS + 1]),
    # around the midnights inside the window
    st.sampled_from([d * DAY_MS + off for d in range(NOW // DAY_MS - 3, NOW // DAY_MS + 1) for off in (-1, 0, 1)]),
)
text = st.text(min_size=1, max_size=200).filter(lambda s: not s.startswith("[split "))
patterns = st.sampled_from(["a", "é", "日本", "😀", "x😀é"])
big_sizes = st.sampled_from(
    [
        EVENT_BYTES - OVERHEAD - 1,
        EVENT_BYTES - OVERHEAD,  # exactly fits
        EVENT_BYTES - OVERHEAD + 1,  # one byte too many
        EVENT_BYTES,
        EVENT_BYTES + 3,
        BATCH_BYTES // 2,
        2 * EVENT_BYTES + 5,
        3_500_000,
    ]
)
big_message = st.builds(sized, patterns, big_sizes)


@st.composite
def event_sets(draw: st.DrawFn) -> list[Event]:
    events = draw(st.lists(st.tuples(any_ts, text), max_size=200))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        events.append((draw(any_ts), draw(big_message)))
    events = draw(st.permutations(events))
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        # Sometimes many events: over 10,000, from a seeded generator so Hypothesis stays fast.
        rng = random.Random(draw(st.integers(min_value=0, max_value=2**32)))
        n = draw(st.integers(min_value=9_999, max_value=12_500))
        lo = draw(in_range_ts)
        span = draw(st.sampled_from([1000, 60_000, 3 * DAY_MS]))
        words = ["ok", "ünï", "日本語", "😀", "x" * 300, "y" * 2000]
        events.extend((min(lo + rng.randrange(span), NOW + FUTURE_MS), rng.choice(words) + str(i)) for i in range(n))
        rng.shuffle(events)
    return events


# ---------------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------------


@PROPS
@given(events=event_sets())
def test_batches_obey_every_limit_and_lose_nothing(events: list[Event]) -> None:
    check_all(events)


@PROPS
@given(events=event_sets())
def test_per_stream_pipeline(events: list[Event]) -> None:
    """The delivery path: group into daily streams, then prepare and batch each stream."""
    streams = group_by_stream(events, "payment-service", "payment-7d9f")
    assert sum(len(v) for v in streams.values()) == len(events)
    for name, evs in streams.items():
        for ts, _ in evs:
            assert name == stream_name("payment-service", "payment-7d9f", ts)
        check_all(evs)


@settings(max_examples=100, deadline=None)
@given(msg=st.text(min_size=1, max_size=400), limit=st.integers(min_value=40, max_value=300))
def test_split_message_property(msg: str, limit: int) -> None:
    parts = split_message(msg, limit)
    if nbytes(msg) <= limit:
        assert parts == [msg]
        return
    assert len(parts) >= 2
    assert all(nbytes(p) <= limit for p in parts)
    assert reassemble([(0, p) for p in parts]) == [(0, msg)]


def test_large_mixed_set() -> None:
    """A fixed worst case: 30,000 events over three days and three midnights, several over 1 MiB."""
    rng = random.Random(1234)
    words = ["ok", "ünï", "日本語", "😀", "x" * 3000]
    events = [(NOW - rng.randrange(3 * DAY_MS), rng.choice(words) + str(i)) for i in range(30_000)]
    events += [(NOW - rng.randrange(3 * DAY_MS), sized(p, EVENT_BYTES + k)) for k, p in enumerate(["a", "é", "😀"])]
    events += [(NOW - 20 * DAY_MS, "old"), (NOW + 3 * FUTURE_MS, "new")]
    rng.shuffle(events)
    out = check_all(events)
    assert len(out) >= 4  # at least three 24 h spans and the event count limit


# ---------------------------------------------------------------------------------------------------------
# Exact edges
# ---------------------------------------------------------------------------------------------------------


def test_an_event_of_exactly_one_mib_is_not_split() -> None:
    msg = sized("é", EVENT_BYTES - OVERHEAD)
    out, _, _, split = run([(NOW, msg)])
    assert split == 0 and out == [[(NOW, msg)]]


def test_one_byte_over_is_split_with_a_visible_marker() -> None:
    msg = sized("😀", EVENT_BYTES - OVERHEAD + 1)
    out, _, _, split = run([(NOW, msg)])
    assert split == 1
    flat = [e for b in out for e in b]
    assert len(flat) == 2
    assert flat[0][1].startswith("[split 1/2] ") and flat[1][1].startswith("[split 2/2] ")
    assert reassemble(flat) == [(NOW, msg)]
    check_batches(out)


def test_split_never_cuts_inside_a_character() -> None:
    msg = sized("😀", 3 * EVENT_BYTES)  # every cut point falls on a 4-byte character
    parts = split_message(msg)
    assert all("\ufffd" not in p for p in parts)
    assert all(nbytes(p) <= EVENT_BYTES - OVERHEAD for p in parts)
    assert reassemble([(0, p) for p in parts]) == [(0, msg)]


def test_batch_byte_limit_is_exact() -> None:
    half = BATCH_BYTES // 2 - OVERHEAD  # two of these fill a batch to the byte
    out = list(batches([(NOW, "a" * half), (NOW, "b" * half), (NOW, "c")]))
    assert [len(b) for b in out] == [2, 1]
    out = list(batches([(NOW, "a" * half), (NOW, "b" * (half + 1))]))
    assert [len(b) for b in out] == [1, 1]


def test_batch_byte_limit_counts_utf8_bytes_not_characters() -> None:
    msg = "é" * 300_000  # 600,000 bytes, 300,000 characters
    out = list(batches([(NOW, msg), (NOW, msg)]))
    assert [len(b) for b in out] == [1, 1]


def test_event_count_limit_is_exact() -> None:
    evs = [(NOW + i, "m") for i in range(BATCH_EVENTS)]
    assert [len(b) for b in batches(evs)] == [BATCH_EVENTS]
    evs.append((NOW + BATCH_EVENTS, "m"))
    assert [len(b) for b in batches(evs)] == [BATCH_EVENTS, 1]


def test_span_limit() -> None:
    assert [len(b) for b in batches([(NOW, "a"), (NOW + SPAN_MS - 1, "b")])] == [2]
    assert [len(b) for b in batches([(NOW, "a"), (NOW + SPAN_MS, "b")])] == [1, 1]


def test_prepare_sorts_stably() -> None:
    evs = [(NOW + 5, "c"), (NOW, "a"), (NOW + 5, "d"), (NOW, "b")]
    assert prepare(evs, NOW).events == [(NOW, "a"), (NOW, "b"), (NOW + 5, "c"), (NOW + 5, "d")]


def test_too_old_and_too_new_are_counted_not_sent() -> None:
    evs = [
        (NOW - AGE_MS - 1, "too old"),
        (NOW - AGE_MS, "oldest kept"),
        (NOW + FUTURE_MS, "newest kept"),
        (NOW + FUTURE_MS + 1, "too new"),
        (NOW - 30 * DAY_MS, "ancient"),
    ]
    p = prepare(evs, NOW)
    assert (p.events_rejected_too_old, p.events_rejected_too_new) == (2, 1)
    assert [m for _, m in p.events] == ["oldest kept", "newest kept"]


def test_empty_input() -> None:
    p = prepare([], NOW)
    assert p.events == [] and list(batches(p.events)) == []


# ---------------------------------------------------------------------------------------------------------
# Stream names
# ---------------------------------------------------------------------------------------------------------


def test_stream_name_uses_the_events_utc_date() -> None:
    ts = int(datetime(2024, 1, 31, 23, 59, 59, 999_000, tzinfo=UTC).timestamp() * 1000)
    assert stream_name("payment-service", "payment-7d9f", ts) == "payment-service-payment-7d9f-2024-01-31"
    assert stream_name("payment-service", "payment-7d9f", ts + 1) == "payment-service-payment-7d9f-2024-02-01"
    assert stream_name("a", "p", 0) == "a-p-1970-01-01"
    leap = int(datetime(2024, 2, 29, 12, tzinfo=UTC).timestamp() * 1000)
    assert stream_name("a", "p", leap) == "a-p-2024-02-29"


def test_an_object_spanning_midnight_feeds_two_streams() -> None:
    midnight = int(datetime(2024, 6, 2, tzinfo=UTC).timestamp() * 1000)
    evs = [(midnight - 1, "before"), (midnight, "at"), (midnight - 500, "earlier"), (midnight + 10, "after")]
    streams = group_by_stream(evs, "api", "api-1")
    assert streams == {
        "api-api-1-2024-06-01": [(midnight - 1, "before"), (midnight - 500, "earlier")],
        "api-api-1-2024-06-02": [(midnight, "at"), (midnight + 10, "after")],
    }


@settings(max_examples=200, deadline=None)
@given(ts=st.integers(min_value=0, max_value=4_102_444_800_000))
def test_stream_date_property(ts: int) -> None:
    expected = datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%d")
    assert stream_name("app", "pod", ts) == f"app-pod-{expected}"


# ---------------------------------------------------------------------------------------------------------
# rejectedLogEventsInfo
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("info", "n", "expected"),
    [
        (None, 10, (0, 0, 0)),
        ({}, 10, (0, 0, 0)),
        ({"tooOldLogEventEndIndex": 3}, 10, (3, 0, 0)),  # [0, 3) too old
        ({"tooNewLogEventStartIndex": 7}, 10, (0, 3, 0)),  # [7, 10) too new
        ({"tooNewLogEventStartIndex": 0}, 10, (0, 10, 0)),
        ({"expiredLogEventEndIndex": 4}, 10, (0, 0, 4)),
        ({"tooOldLogEventEndIndex": 3, "expiredLogEventEndIndex": 5}, 10, (3, 0, 2)),  # overlap counted once
        ({"tooOldLogEventEndIndex": 5, "expiredLogEventEndIndex": 2}, 10, (5, 0, 0)),
        ({"tooOldLogEventEndIndex": 2, "expiredLogEventEndIndex": 4, "tooNewLogEventStartIndex": 8}, 10, (2, 2, 2)),
        ({"tooOldLogEventEndIndex": 50}, 10, (10, 0, 0)),
        ({"tooOldLogEventEndIndex": 0, "tooNewLogEventStartIndex": 10}, 10, (0, 0, 0)),
    ],
)
def test_count_rejected(info: dict[str, int] | None, n: int, expected: tuple[int, int, int]) -> None:
    r = count_rejected(info, n)
    assert (r.events_rejected_too_old, r.events_rejected_too_new, r.events_rejected_expired) == expected
    assert r.events_rejected == sum(expected)


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(min_value=1, max_value=50),
    old=st.one_of(st.none(), st.integers(min_value=0, max_value=60)),
    new=st.one_of(st.none(), st.integers(min_value=0, max_value=60)),
    expired=st.one_of(st.none(), st.integers(min_value=0, max_value=60)),
)
def test_count_rejected_never_counts_an_event_twice(
    n: int, old: int | None, new: int | None, expired: int | None
) -> None:
    info = {
        k: v
        for k, v in (
            ("tooOldLogEventEndIndex", old),
            ("tooNewLogEventStartIndex", new),
            ("expiredLogEventEndIndex", expired),
        )
        if v is not None
    }
    r = count_rejected(info, n)
    assert min(r.events_rejected_too_old, r.events_rejected_too_new, r.events_rejected_expired) >= 0
    assert r.events_rejected <= n
    # Per-event truth: an event is rejected if any range covers it.
    truth = sum(
        1
        for i in range(n)
        if (old is not None and i < old) or (expired is not None and i < expired) or (new is not None and i >= new)
    )
    assert r.events_rejected == truth


def test_prepare_filters_the_window_before_judging_age() -> None:
    day = 86_400_000
    now = 100 * day
    events = [
        (now - 20 * day, "old-outside"),  # before the window: filtered, not "too old"
        (now - 15 * day, "old-inside"),  # in the window, but CloudWatch would reject it
        (now - 1000, "ok-1"),
        (now - 999, "ok-2"),
        (now + 3 * 3600 * 1000, "future-inside"),  # in the window, more than 2 h ahead
        (now + 5 * day, "after"),  # at or after until: filtered
    ]
    since, until = now - 16 * day, now + 5 * day
    out = prepare(list(reversed(events)), now, since, until)
    assert [m for _, m in out.events] == ["ok-1", "ok-2"]
    assert (out.events_filtered, out.events_rejected_too_old, out.events_rejected_too_new) == (2, 1, 1)
    # Without a window nothing is filtered, and age alone decides.
    out = prepare(list(events), now)
    assert (out.events_filtered, out.events_rejected_too_old, out.events_rejected_too_new) == (0, 2, 2)


@given(
    st.lists(st.integers(-16 * DAY_MS, DAY_MS), max_size=60),
    st.lists(st.tuples(st.integers(-16 * DAY_MS, DAY_MS), st.integers(0, 3 * DAY_MS)), max_size=4),
    st.one_of(st.none(), st.integers(-16 * DAY_MS, 0)),
    st.one_of(st.none(), st.integers(0, DAY_MS)),
)
def test_prepare_leaves_out_exactly_what_the_ledger_covers(
    offsets: list[int], spans: list[tuple[int, int]], since: int | None, until: int | None
) -> None:
    """Each event lands in exactly one bucket: outside the window, covered by an earlier run, too old or
    too new, or sent; and the sent ones stay sorted."""
    events = [(NOW + o, f"e{i}") for i, o in enumerate(offsets)]
    covered = Coverage.of((NOW + lo, NOW + lo + length) for lo, length in spans)
    lo, hi = (None if since is None else NOW + since), (None if until is None else NOW + until)
    out = prepare(list(events), NOW, lo, hi, covered)
    sent = {m for _, m in out.events}

    def bucket(ts: int) -> str:
        if (lo is not None and ts < lo) or (hi is not None and ts >= hi):
            return "filtered"
        if covered.holds(ts):
            return "covered"
        if ts < NOW - AGE_MS:
            return "old"
        return "new" if ts > NOW + FUTURE_MS else "sent"

    want = Counter(bucket(ts) for ts, _ in events)
    assert out.events_filtered == want["filtered"]
    assert out.events_already_delivered == want["covered"]
    assert (out.events_rejected_too_old, out.events_rejected_too_new) == (want["old"], want["new"])
    assert sent == {m for ts, m in events if bucket(ts) == "sent"}
    assert [ts for ts, _ in out.events] == sorted(ts for ts, _ in out.events)


MIXED_TEXT = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from("a\x00\x7f\x80é😀\ud800"))


@given(st.lists(MIXED_TEXT, max_size=40))
def test_utf8_sizes_are_the_encoded_lengths(messages: list[str]) -> None:
    assert utf8_sizes(messages) == [len(m.encode("utf-8", "surrogatepass")) for m in messages]
