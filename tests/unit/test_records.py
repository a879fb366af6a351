"""Decoding object bodies into (timestamp_ms, message) events (CONTRACTS.md §2)."""

from __future__ import annotations

import gzip
import io
import json
import zlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.records import MAX_SAMPLES, DecodeStats, decode_events, vector_record

FALLBACK = 1_700_000_000_000  # the object's LastModified, in ms
T0 = "2024-01-01T00:00:00.123456789Z"
T0_MS = 1_704_067_200_123


def rec(message: object, timestamp: object = T0, **extra: object) -> dict[str, object]:
    r = vector_record(message, "x", "prod-1", "acme", "payment-service", "payment-7d9f")
    r["timestamp"] = timestamp
    r.update(extra)
    return r


def ndjson(records: list[object]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def decode(body: object, fallback: int = FALLBACK) -> tuple[list[tuple[int, str]], DecodeStats]:
    stats = DecodeStats(key="k")
    return list(decode_events(body, fallback, stats)), stats  # type: ignore[arg-type]


class ShortReads:
    """A file-like body whose read() returns at most `n` bytes, as a socket-backed stream may."""

    def __init__(self, data: bytes, n: int) -> None:
        self._buf = io.BytesIO(data)
        self._n = n
        self.reads = 0

    def read(self, size: int = -1, /) -> bytes:
        self.reads += 1
        return self._buf.read(self._n if size < 0 else min(size, self._n))


# ---------------------------------------------------------------------------------------------------------
# Framing and compression
# ---------------------------------------------------------------------------------------------------------

RECORDS = [rec("first"), rec("second", "2024-01-01T00:00:01Z"), rec("thïrd ✓ 日本", "2024-01-01T00:00:02.5Z")]
EXPECTED = [(T0_MS, "first"), (1_704_067_201_000, "second"), (1_704_067_202_500, "thïrd ✓ 日本")]


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_ndjson(compress: bool) -> None:
    body = ndjson(RECORDS)
    events, stats = decode(gzip.compress(body) if compress else body)
    assert events == EXPECTED
    assert stats.events_decoded == 3 and stats.lines_malformed == 0 and stats.damaged is None
    assert stats.timestamps_defaulted == 0


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("pretty", [False, True], ids=["compact", "pretty"])
def test_json_array(compress: bool, pretty: bool) -> None:
    body = json.dumps(RECORDS, indent=2 if pretty else None, ensure_ascii=False).encode()
    events, stats = decode(gzip.compress(body) if compress else body)
    assert events == EXPECTED
    assert stats.lines_malformed == 0


def test_no_trailing_newline() -> None:
    events, _ = decode(ndjson(RECORDS).rstrip(b"\n"))
    assert events == EXPECTED


def test_concatenated_gzip_members() -> None:
    body = b"".join(gzip.compress(orjson.dumps(r) + b"\n") for r in RECORDS)
    events, stats = decode(body)
    assert events == EXPECTED
    assert stats.damaged is None


def test_gzip_member_boundary_inside_a_line() -> None:
    raw = ndjson(RECORDS)
    cut = len(raw) // 2
    events, stats = decode(gzip.compress(raw[:cut]) + gzip.compress(raw[cut:]))
    assert events == EXPECTED and stats.damaged is None


def test_zero_byte_body() -> None:
    events, stats = decode(b"")
    assert events == [] and stats.damaged is None and stats.lines_malformed == 0


def test_empty_gzip() -> None:
    events, stats = decode(gzip.compress(b""))
    assert events == [] and stats.damaged is None


def test_blank_lines_are_skipped_and_still_numbered() -> None:
    body = b"\n\n" + orjson.dumps(rec("a")) + b"\n   \n\nnot json\n" + orjson.dumps(rec("b")) + b"\n\n"
    events, stats = decode(body)
    assert [m for _, m in events] == ["a", "b"]
    assert stats.lines_malformed == 1
    assert stats.samples[0][0] == 6  # the sixth line of the object


def test_crlf_line_endings() -> None:
    body = ndjson(RECORDS).replace(b"\n", b"\r\n")
    events, stats = decode(body)
    assert events == EXPECTED  # no stray \r in any message, nothing counted malformed
    assert stats.lines_malformed == 0
    events, stats = decode(b"\r\n" + body + b"\r\n\r\n")
    assert events == EXPECTED and stats.lines_malformed == 0


def test_message_with_escaped_newlines_stays_one_event() -> None:
    events, _ = decode(ndjson([rec("line one\nline two\r\n\ttabbed")]))
    assert events == [(T0_MS, "line one\nline two\r\n\ttabbed")]


# ---------------------------------------------------------------------------------------------------------
# What is delivered: the message, never the envelope, never a Python repr
# ---------------------------------------------------------------------------------------------------------


def test_message_only_not_the_envelope() -> None:
    [(_, msg)] = decode(ndjson([rec("hello")]))[0]
    assert msg == "hello"


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            {"level": "info", "n": 1, "nested": {"ok": True, "v": None}},
            '{"level":"info","n":1,"nested":{"ok":true,"v":null}}',
        ),
        ([1, "two", {"x": 3.5}], '[1,"two",{"x":3.5}]'),
        ({"ünï": "日本"}, '{"ünï":"日本"}'),
        (42, "42"),
        (True, "true"),
    ],
)
def test_structured_message_is_compact_json(message: object, expected: str) -> None:
    [(_, msg)] = decode(ndjson([rec(message)]))[0]
    assert msg == expected
    assert "'" not in msg and "True" not in msg and "None" not in msg
    assert orjson.loads(msg) == message


def test_record_without_message_is_the_whole_record_as_compact_json() -> None:
    record = {"timestamp": T0, "log": "something", "level": "warn", "ok": False}
    [(ts, msg)] = decode(ndjson([record]))[0]
    assert ts == T0_MS
    assert msg == '{"timestamp":"2024-01-01T00:00:00.123456789Z","log":"something","level":"warn","ok":false}'


def test_non_object_lines_are_delivered_as_json() -> None:
    events, stats = decode(b'"just a string"\n[1,2]\n')
    assert [m for _, m in events] == ['"just a string"', "[1,2]"]
    assert stats.timestamps_defaulted == 2 and all(ts == FALLBACK for ts, _ in events)


def test_empty_message_is_counted_not_delivered() -> None:
    events, stats = decode(ndjson([rec(""), rec("x")]))
    assert [m for _, m in events] == ["x"]
    assert stats.messages_empty == 1
    assert stats.events_decoded == 1


def test_unicode_messages_round_trip() -> None:
    msgs = ["emoji 😀👍🏽", "rtl שלום", "cjk 漢字", "combining e\u0301", "nul \x00 inside", "\u2028sep"]
    events, _ = decode(gzip.compress(ndjson([rec(m) for m in msgs])))
    assert [m for _, m in events] == msgs


def test_five_megabyte_line() -> None:
    big = "x" * (5 * 1024 * 1024)
    events, stats = decode(gzip.compress(ndjson([rec("before"), rec(big), rec("after")])))
    assert [m for _, m in events] == ["before", big, "after"]
    assert stats.lines_malformed == 0


# ---------------------------------------------------------------------------------------------------------
# Timestamps: keep the milliseconds
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ms"),
    [
        ("2024-01-01T00:00:00.123456789Z", 1_704_067_200_123),
        ("2024-01-01T00:00:00.999999999Z", 1_704_067_200_999),
        ("2024-01-01T00:00:00.1Z", 1_704_067_200_100),
        ("2024-01-01T00:00:00.12Z", 1_704_067_200_120),
        ("2024-01-01T00:00:00Z", 1_704_067_200_000),
        ("2024-01-01t00:00:00.5z", 1_704_067_200_500),
        ("2024-01-01 00:00:00.5Z", 1_704_067_200_500),
        ("2024-01-01T02:00:00.250+02:00", 1_704_067_200_250),
        ("2023-12-31T19:00:00.123456789-05:00", 1_704_067_200_123),
        ("2024-01-01T00:00:00+00:00", 1_704_067_200_000),
        ("2024-01-01T00:00:00.750", 1_704_067_200_750),  # naive: Vector writes UTC
        (1_704_067_200, 1_704_067_200_000),  # epoch seconds
        (1_704_067_200.5, 1_704_067_200_500),  # float seconds
        (1_704_067_200.123, 1_704_067_200_123),
        (1_704_067_200_123, 1_704_067_200_123),  # epoch ms
        (1e12, 1_000_000_000_000),  # the threshold itself is milliseconds
        (999_999_999_999, 999_999_999_999_000),  # just under: seconds
        (0, 0),
    ],
)
def test_timestamps(value: object, ms: int) -> None:
    events, stats = decode(ndjson([rec("m", value)]))
    assert events == [(ms, "m")]
    assert stats.timestamps_defaulted == 0


@pytest.mark.parametrize(
    "value",
    [
        *("garbage", "", "2024-13-01T00:00:00Z", "2024-01-01T25:00:00Z", -1, -1.5, True, False, None, [1], {"s": 1}),
        "NaN",
        "2024-01-01T00:00:00.\u0661\u0662\u0663\u0664Z",  # Arabic-Indic digits: decimal to Python, not to RFC 3339
        "2024-01-01T00:00:00.1_23456Z",
    ],
)
def test_bad_timestamp_falls_back_to_last_modified(value: object) -> None:
    events, stats = decode(ndjson([rec("m", value)]))
    assert events == [(FALLBACK, "m")]
    assert stats.timestamps_defaulted == 1


def test_missing_timestamp_falls_back() -> None:
    record = rec("m")
    del record["timestamp"]
    events, stats = decode(ndjson([record, rec("n")]))
    assert events == [(FALLBACK, "m"), (T0_MS, "n")]
    assert stats.timestamps_defaulted == 1


def test_same_second_different_offsets_are_not_confused_by_caching() -> None:
    events, _ = decode(
        ndjson(
            [
                rec("a", "2024-01-01T00:00:00Z"),
                rec("b", "2024-01-01T00:00:00+02:00"),
                rec("c", "2024-01-01T00:00:00.5Z"),
            ]
        )
    )
    assert events == [(1_704_067_200_000, "a"), (1_704_060_000_000, "b"), (1_704_067_200_500, "c")]


# ---------------------------------------------------------------------------------------------------------
# Damage: bad lines, bad bytes, bad streams
# ---------------------------------------------------------------------------------------------------------


def test_bad_lines_are_counted_with_line_numbers_and_decoding_continues() -> None:
    lines = [
        orjson.dumps(rec("a")),
        b"{not json",
        orjson.dumps(rec("b")),
        b'{"message": "unterminated',
        b"[1,",
        orjson.dumps(rec("c")),
    ]
    events, stats = decode(gzip.compress(b"\n".join(lines) + b"\n"))
    assert [m for _, m in events] == ["a", "b", "c"]
    assert stats.lines_malformed == 3
    assert [n for n, _ in stats.samples] == [2, 4, 5]
    assert all("invalid JSON" in reason for _, reason in stats.samples)
    assert stats.damaged is None


def test_samples_are_bounded_but_all_bad_lines_counted() -> None:
    body = b"garbage\n" * (MAX_SAMPLES + 15) + orjson.dumps(rec("ok")) + b"\n"
    events, stats = decode(body)
    assert [m for _, m in events] == ["ok"]
    assert stats.lines_malformed == MAX_SAMPLES + 15
    assert len(stats.samples) == MAX_SAMPLES


def test_invalid_utf8_is_repaired_and_counted() -> None:
    line = b'{"message": "caf\xe9 \xff ok", "timestamp": "2024-01-01T00:00:00.123Z"}'
    events, stats = decode(line + b"\n" + orjson.dumps(rec("next")) + b"\n")
    assert events == [(T0_MS, "caf\ufffd \ufffd ok"), (T0_MS, "next")]
    assert stats.lines_repaired_utf8 == 1
    assert stats.lines_malformed == 0


def test_truncated_gzip_delivers_what_decoded_and_is_damaged() -> None:
    records = [rec(f"event {i} " + "p" * 200) for i in range(200)]
    full = gzip.compress(ndjson(records))
    events, stats = decode(full[: len(full) * 2 // 3])
    assert stats.damaged and "truncated" in stats.damaged
    assert 0 < len(events) < 200
    assert [m for _, m in events] == [r["message"] for r in records[: len(events)]]  # a prefix, in order
    assert stats.lines_malformed == 0  # the cut-off last line is part of the damage, not a bad line


def test_truncated_second_gzip_member() -> None:
    first = gzip.compress(ndjson([rec("a"), rec("b")]))
    second = gzip.compress(ndjson([rec("c") for _ in range(50)]))
    events, stats = decode(first + second[: len(second) // 2])
    assert stats.damaged
    assert [m for _, m in events][:2] == ["a", "b"]


def test_corrupt_gzip_is_damaged() -> None:
    full = bytearray(gzip.compress(ndjson([rec(f"e{i}" * 50) for i in range(500)])))
    full[len(full) // 2 : len(full) // 2 + 64] = b"\x00" * 64
    events, stats = decode(bytes(full))
    assert stats.damaged
    assert "corrupt" in stats.damaged or "truncated" in stats.damaged
    assert all(m.startswith("e") for _, m in events)


def test_gzip_header_only_is_damaged() -> None:
    events, stats = decode(gzip.compress(ndjson([rec("a")]))[:12])
    assert events == [] and stats.damaged


def test_garbage_after_gzip_member_is_damage_not_silence() -> None:
    events, stats = decode(gzip.compress(ndjson([rec("a")])) + b"trailing junk")
    assert [m for _, m in events] == ["a"]
    assert stats.damaged


def test_malformed_json_array_is_counted() -> None:
    events, stats = decode(b'[{"message": "a"}, {"message": ')
    assert events == []
    assert stats.lines_malformed == 1


# ---------------------------------------------------------------------------------------------------------
# Streaming from a file-like body
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 2, 3, 17, 4096])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_streaming_in_small_chunks_equals_bytes(chunk: int, compress: bool) -> None:
    body = ndjson([*RECORDS, rec("ünïcode " * 100), rec({"k": "v"})]) + b"bad line\n" + ndjson(RECORDS)
    if compress:
        body = gzip.compress(body)
    expected_events, expected_stats = decode(body)
    reader = ShortReads(body, chunk)
    events, stats = decode(reader)
    assert events == expected_events
    assert stats.lines_malformed == expected_stats.lines_malformed == 1
    assert stats.damaged is None
    assert stats.bytes_read == len(body)


def test_streaming_a_json_array_in_chunks() -> None:
    body = gzip.compress(json.dumps(RECORDS, indent=1).encode())
    events, _ = decode(ShortReads(body, 5))
    assert events == EXPECTED


def test_streaming_truncated_gzip_in_chunks() -> None:
    full = gzip.compress(ndjson([rec(f"event {i}") for i in range(300)]))
    cut = full[: len(full) - 40]
    whole_events, whole_stats = decode(cut)
    events, stats = decode(ShortReads(cut, 7))
    assert events == whole_events
    assert stats.damaged and whole_stats.damaged


@settings(max_examples=60, deadline=None)
@given(
    messages=st.lists(st.text(min_size=1, max_size=300), min_size=0, max_size=30),
    chunk=st.integers(min_value=1, max_value=512),
    level=st.sampled_from([1, 6, 9]),
)
def test_streaming_property(messages: list[str], chunk: int, level: int) -> None:
    body = gzip.compress(ndjson([rec(m) for m in messages]), compresslevel=level)
    events, stats = decode(ShortReads(body, chunk))
    assert [m for _, m in events] == messages
    assert stats.damaged is None and stats.lines_malformed == 0


def test_raw_deflate_is_not_mistaken_for_text_silently() -> None:
    # Not gzip and not JSON: every line is counted as malformed, nothing is delivered as garbage text.
    body = zlib.compress(ndjson(RECORDS))
    events, stats = decode(body)
    assert events == []
    assert stats.lines_malformed >= 1


# ---------------------------------------------------------------------------------------------------------
# The lazy (simdjson) fast path against the full (orjson) parse
# ---------------------------------------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)
TIMESTAMPS = st.one_of(
    st.just(T0),
    st.datetimes(timezones=st.just(__import__("datetime").UTC)).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
    st.integers(min_value=-1, max_value=2**53),
    st.floats(allow_nan=True),
    st.text(max_size=30),
    st.none(),
)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.builds(rec, JSON_VALUES, TIMESTAMPS),
            st.dictionaries(st.sampled_from(["timestamp", "log", "level", "x"]), JSON_VALUES, max_size=3),
            JSON_VALUES,
        ),
        max_size=12,
    )
)
def test_ndjson_lines_decode_exactly_like_the_full_parse(records: list[object]) -> None:
    # A JSON array is decoded with orjson record by record; NDJSON goes through simdjson's lazy fast path
    # where it can. Whatever a record holds (structured messages with floats, odd timestamps, no message,
    # non-object lines), both must deliver the same events and count the same things. (The first record
    # is fixed because an NDJSON body whose first line is an array reads as one JSON array.)
    records = [rec("first"), *records]
    via_lines, line_stats = decode(ndjson(records))
    via_array, array_stats = decode(orjson.dumps(records))
    assert via_lines == via_array
    assert (line_stats.events_decoded, line_stats.timestamps_defaulted, line_stats.messages_empty) == (
        array_stats.events_decoded,
        array_stats.timestamps_defaulted,
        array_stats.messages_empty,
    )
    assert line_stats.lines_malformed == 0


@pytest.mark.parametrize("timestamp", ["2024-01-01T00:00:00.500000Z", "2024-01-01T00:00:00.5Z"], ids=["fast", "slow"])
def test_a_byte_order_mark_is_skipped_on_either_path(timestamp: str) -> None:
    # simdjson skips a UTF-8 byte-order mark that orjson refuses. A line must not be delivered or refused
    # depending on which path its timestamp sends it down, and its lazy message must not outlive it.
    line = b'\xef\xbb\xbf{"message":{"a":[1,2]},"timestamp":"' + timestamp.encode() + b'"}\n'
    events, stats = decode(ndjson([rec("first")]) + line + ndjson([rec("next")]))
    assert events[1:] == [(1_704_067_200_500, '{"a":[1,2]}'), (T0_MS, "next")]
    assert stats.lines_malformed == 0


@pytest.mark.parametrize("pretty", [False, True])
def test_a_byte_order_mark_before_the_body(pretty: bool) -> None:
    body = json.dumps(RECORDS, indent=2 if pretty else None).encode()
    assert decode(b"\xef\xbb\xbf" + body)[0] == EXPECTED
    assert decode(b"\xef\xbb\xbf" + ndjson(RECORDS))[0] == EXPECTED


def test_big_integers_simdjson_cannot_hold_are_decoded_by_orjson() -> None:
    events, stats = decode(ndjson([rec({"n": 2**64 - 1}), rec("after")]) + b'{"message":{"n":1e400}}\n')
    assert [m for _, m in events][:2] == ['{"n":18446744073709551615}', "after"]
    assert stats.lines_malformed == 1  # 1e400 is out of range for orjson too: counted, not guessed


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.lists(JSON_VALUES, max_size=4), st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4)))
def test_structured_messages_are_compact_json_of_the_same_value(message: object) -> None:
    # simdjson prints some floats differently from orjson (1e+15, 1e-05); the number must be the same.
    [(_, text)] = decode(ndjson([rec(message)]))[0]
    assert orjson.loads(text) == message
    assert text == orjson.dumps(message).decode() or any(c in text for c in "eE.")


@pytest.mark.parametrize("value", [1e15, 1e-5, 1.5e-7, 11016398457797.562, -0.0, 5e-324, 1.7976931348623157e308])
def test_awkward_floats_in_structured_messages_keep_their_value(value: float) -> None:
    events, _ = decode(ndjson([rec({"v": value}), rec([value])]))
    assert [orjson.loads(m) for _, m in events] == [{"v": value}, [value]]
    assert all(" " not in m for _, m in events)
