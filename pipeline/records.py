"""The record shape the collector writes (CONTRACTS.md §2), and decoding an object body into events."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from io import BytesIO
from typing import Any, Protocol

import orjson
import simdjson

from pipeline.counters import DecodeCounts

try:  # zlib-ng inflates faster than zlib (docs/PERFORMANCE.md), with the same API and output
    from zlib_ng import zlib_ng as zlib
except ImportError:  # pragma: no cover - the stdlib module is always there
    import zlib  # type: ignore[no-redef]  # the same API under the same name: the fallback is the point

# zlib_ng's stub declares `error` as an exception instance; at run time it is the class, as in zlib.
ZLIB_ERROR: type[Exception] = zlib.error  # type: ignore[assignment]

Event = tuple[int, str]  # (timestamp in epoch milliseconds, message): what a record becomes

# The fields of a Vector record that delivery reads; everything else is Vector's envelope.
MESSAGE_FIELD = "message"
TIMESTAMP_FIELD = "timestamp"


def vector_record(
    message: Any,
    timestamp: str,
    cluster: str,
    tenant: str,
    application: str,
    pod: str,
    container: str = "app",
    stream: str = "stdout",
) -> dict[str, Any]:
    """One record as the collector's kubernetes_logs source plus enrichment transform writes it."""
    return {
        MESSAGE_FIELD: message,
        TIMESTAMP_FIELD: timestamp,
        "stream": stream,
        "source_type": "kubernetes_logs",
        "file": f"/var/log/pods/{tenant}_{pod}_0/{container}/0.log",
        "kubernetes": {
            "pod_namespace": tenant,
            "pod_name": pod,
            "container_name": container,
            "pod_labels": {"app": application},
        },
        "cluster_id": cluster,
        "namespace": tenant,
        "application": application,
        "pod_name": pod,
    }


# ---------------------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------------------

READ_CHUNK = 256 * 1024
MAX_SAMPLES = 20  # per object: enough to diagnose, bounded so a garbage object cannot bloat a report
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"  # Windows tools start files with it; JSON forbids it, simdjson skips it, so do we
MS_THRESHOLD = 1e12  # a numeric timestamp at or above this is already in milliseconds


@dataclass(kw_only=True)
class DecodeStats(DecodeCounts):
    """What decoding one object saw. Bad lines are counted and sampled with their line numbers."""

    key: str = ""
    lines: int = 0
    bytes_decoded: int = 0
    damaged: str | None = None  # why the body could not be read to the end, if it could not
    samples: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)

    def malformed(self, line_no: int, reason: str) -> None:
        self.lines_malformed += 1
        if len(self.samples) < MAX_SAMPLES:
            self.samples.append((line_no, reason))


class _ReadableBody(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _chunks(body: bytes | _ReadableBody, stats: DecodeStats) -> Iterator[bytes]:
    if isinstance(body, bytes | bytearray | memoryview):
        stats.bytes_read += len(body)
        yield bytes(body)
        return
    while chunk := body.read(READ_CHUNK):
        stats.bytes_read += len(chunk)
        yield chunk


def _inflate(chunks: Iterator[bytes], stats: DecodeStats) -> Iterator[bytes]:
    """Gunzip if the body starts with the gzip magic, pass it through otherwise.

    Handles concatenated gzip members. A truncated or corrupt stream yields what decoded and marks the
    object damaged, so the readable part is still delivered.
    """
    first = next(chunks, b"")
    while len(first) < len(GZIP_MAGIC) and (more := next(chunks, b"")):  # a short first read
        first += more
    if not first.startswith(GZIP_MAGIC):
        if first:
            yield first
        yield from chunks
        return
    d = zlib.decompressobj(wbits=31)
    fed = False  # whether the current member has seen input: an unfed one at the end is a clean finish
    data: bytes | None = first
    try:
        while data is not None:
            while data:
                fed = True
                out = d.decompress(data)
                if out:
                    yield out
                if not d.eof:
                    break
                data = d.unused_data
                d, fed = zlib.decompressobj(wbits=31), False
            data = next(chunks, None)
    except ZLIB_ERROR as exc:
        stats.damaged = f"corrupt gzip stream after {stats.bytes_read} bytes: {exc}"
        return
    if fed and not d.eof:
        stats.damaged = f"truncated gzip stream after {stats.bytes_read} bytes"


def _line_batches(chunks: Iterator[bytes], stats: DecodeStats) -> Iterator[list[bytes]]:
    """The lines of each inflated chunk, each with its newline, as one list per chunk: the hot loop then
    runs over plain lists. BytesIO finds newlines with memchr, faster than bytes.split."""
    tail = b""
    for chunk in chunks:
        stats.bytes_decoded += len(chunk)
        if tail:
            chunk = tail + chunk
        lines = BytesIO(chunk).readlines()
        tail = b"" if lines[-1].endswith(b"\n") else lines.pop()
        if lines:
            yield lines
    if tail:
        yield [tail]


class _TimestampParser:
    """RFC 3339 (up to nanoseconds) or epoch seconds/milliseconds to epoch milliseconds.

    Records in one object share the same few seconds, so the "YYYY-MM-DDTHH:MM:SS" part is parsed once
    and cached; only the fraction is handled per event. Anything the fast path does not recognise goes
    through datetime.fromisoformat.
    """

    __slots__ = ("days_ms", "seconds_ms")

    def __init__(self) -> None:
        # "YYYY-MM-DDTHH:MM:SS" → epoch milliseconds of that second; shared with the hot loop
        self.seconds_ms: dict[str, int] = {}
        self.days_ms: dict[str, int] = {}

    def __call__(self, value: Any) -> int | None:
        kind = type(value)
        if kind is str:
            return self._parse_str(value)
        if kind is int or kind is float:
            if not value >= 0 or value == float("inf"):  # NaN compares false
                return None
            return int(value) if value >= MS_THRESHOLD else int(value * 1000)
        return None

    def _parse_str(self, value: str) -> int | None:
        base = value[:19]
        base_ms = self.seconds_ms.get(base)
        if base_ms is None:
            base_ms = self.second_ms(base)
            if base_ms is None:
                return self._slow(value)
        rest = value[19:]
        if rest == "Z" or rest == "z":
            return base_ms
        if rest[:1] == "." and rest[-1:] in ("Z", "z"):
            frac = rest[1:-1]
            if frac.isdigit() and frac.isascii():
                return base_ms + int((frac + "00")[:3])
        return self._slow(value)

    def second_ms(self, base: str) -> int | None:
        """Epoch ms of "YYYY-MM-DDTHH:MM:SS", cached; None when `base` is not that shape.

        A 300 s batch meets ~300 distinct seconds, so a miss is common: the date is cached on its own and
        the time of day is plain integer arithmetic.
        """
        if len(base) != 19 or base[10] not in "Tt " or base[13] != ":" or base[16] != ":":
            return None
        day_ms = self.days_ms.get(base[:10])
        if day_ms is None:
            try:
                day = date.fromisoformat(base[:10])
            except ValueError:
                return None
            day_ms = self.days_ms[base[:10]] = (day - _EPOCH_DATE).days * 86_400_000
        digits = base[11:13] + base[14:16] + base[17:19]
        if not (digits.isdecimal() and digits.isascii()):
            return None
        h, m, sec = int(digits[0:2]), int(digits[2:4]), int(digits[4:6])
        if h > 23 or m > 59 or sec > 59:
            return None
        if len(self.seconds_ms) > 65536:
            self.seconds_ms.clear()
        ms = self.seconds_ms[base] = day_ms + (h * 3600 + m * 60 + sec) * 1000
        return ms

    @staticmethod
    def _slow(value: str) -> int | None:
        try:
            dt = datetime.fromisoformat(value.replace("z", "Z"))
        except ValueError:
            return None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)  # Vector writes UTC; a naive stamp is taken as UTC too
        # Integer arithmetic: float timestamps lose the millisecond for dates far from the epoch.
        delta = dt - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


_MILLIS = {f"{ms:03d}": ms for ms in range(1000)}  # a lookup is cheaper than int() on a str
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DATE = date(1970, 1, 1)
# One parser for the process: consecutive objects of a pod share seconds, and the caches are bounded.
_PARSER = _TimestampParser()


def _message_of(record: Any) -> str:
    """The text CloudWatch receives for one record (CONTRACTS.md §2)."""
    if type(record) is dict:
        msg = record.get(MESSAGE_FIELD)
        if type(msg) is str:
            return msg
        if msg is not None:
            return compact_json(msg)
    return compact_json(record)


def compact_json(value: Any) -> str:
    """A structured message as compact JSON, printed the way the hot loop prints it (simdjson's `mini`), so
    a record reads the same whichever path decodes it.

    simdjson and orjson print the same text except for some floats (`1e+15` for `1000000000000000.0`,
    `1e-05` for `0.00001`); both give back the same number.
    """
    text = orjson.dumps(value)
    if type(value) is dict or type(value) is list:
        text = _mini(simdjson.Parser().parse(text))
    return text.decode()


def _mini(doc: Any) -> bytes:
    """simdjson's compact print. Its stub says `mini` is a str; it is bytes (and every caller needs bytes)."""
    out: bytes = doc.mini
    return out


def decode_batches(
    body: bytes | _ReadableBody,
    fallback_ts_ms: int,
    stats: DecodeStats | None = None,
) -> Iterator[list[Event]]:
    """Stream one object body into lists of (timestamp_ms, message) events, one list per read chunk.

    The body may be gzip or plain, NDJSON or one JSON array of records. NDJSON is decoded chunk by chunk,
    so memory stays at one inflated chunk and its events; a JSON array has to be parsed whole. Bad lines
    are counted in `stats` with their line numbers, and decoding goes on. `fallback_ts_ms` (the object's
    LastModified) stands in for a missing or unparseable timestamp.

    The body is read up to its first record when this is called (to tell NDJSON from an array), and
    the rest as the lists are consumed. Lists rather than single events, because every event would
    otherwise cost a generator round trip in each layer it passes through.
    """
    st = stats if stats is not None else DecodeStats()
    line_batches = _line_batches(_inflate(_chunks(body, st), st), st)
    for parts in line_batches:
        first = next((i for i, raw in enumerate(parts) if raw.strip()), None)
        if first is None:
            st.lines += len(parts)  # blank lines are framing, but they are numbered
            continue
        st.lines += first
        head = parts[first:]
        head[0] = head[0].removeprefix(UTF8_BOM)
        rest = itertools.chain((head,), line_batches)
        if head[0].lstrip()[:1] == b"[":
            return _array_batches(itertools.chain.from_iterable(rest), st, fallback_ts_ms, _PARSER)
        return _ndjson_batches(rest, st, fallback_ts_ms, _PARSER)
    return iter(())


def decode_events(
    body: bytes | _ReadableBody,
    fallback_ts_ms: int,
    stats: DecodeStats | None = None,
) -> Iterator[Event]:
    """`decode_batches`, one event at a time."""
    return itertools.chain.from_iterable(decode_batches(body, fallback_ts_ms, stats))


def _array_batches(
    lines: Iterator[bytes], st: DecodeStats, fallback_ts_ms: int, parse_ts: _TimestampParser
) -> Iterator[list[Event]]:
    events = list(_record_events(_array_records(lines, st), st, fallback_ts_ms, parse_ts))
    if events:
        yield events


def _record_events(
    records: Iterator[Any], st: DecodeStats, fallback_ts_ms: int, parse_ts: _TimestampParser
) -> Iterator[Event]:
    for record in records:
        ts = parse_ts(record.get(TIMESTAMP_FIELD)) if type(record) is dict else None
        if ts is None:
            ts = fallback_ts_ms
            st.timestamps_defaulted += 1
        message = _message_of(record)
        if not message:
            st.messages_empty += 1  # CloudWatch refuses empty messages; there is nothing to deliver
            continue
        st.events_decoded += 1
        yield ts, message


def _ndjson_batches(
    line_batches: Iterator[list[bytes]], st: DecodeStats, fallback_ts_ms: int, parse_ts: _TimestampParser
) -> Iterator[list[Event]]:
    """The hot loop: one line to one event with as few Python calls as possible.

    A Vector record is mostly envelope (pod labels, file, source type) that delivery never reads, and
    materialising it is most of what a full parse costs. So simdjson parses each line lazily and only
    `message` and `timestamp` become Python objects. A line whose record is not the common shape (a
    non-empty string message and an RFC 3339 UTC timestamp), or that simdjson refuses, is decoded again
    with orjson, exactly as `_record_events` would: the results are the same either way, apart from a
    duplicated key, where simdjson's first value wins and orjson's last. Counters live in locals and are
    written back when the loop ends, however it ends.
    """
    # A lazy document borrows the parser's buffer, and the parser refuses to parse again while any
    # proxy into it is alive: that is why `doc`, `msg` and `tsv` are reassigned on every path.
    # Any: simdjson's stub types a document as a union of every JSON value; the loop tests types itself.
    parse: Callable[[bytes], Any] = simdjson.Parser().parse
    lazy_containers = (simdjson.Object, simdjson.Array)
    millis = _MILLIS
    loads = orjson.loads
    decode_error = orjson.JSONDecodeError
    seconds = parse_ts.seconds_ms
    second_ms = parse_ts.second_ms
    ts_field, msg_field = TIMESTAMP_FIELD, MESSAGE_FIELD
    n = st.lines  # the line before the first record; leading blank lines were counted already
    defaulted = empty = 0
    try:
        for parts in line_batches:
            out: list[Event] = []
            append = out.append
            # After the loop, n is the last line's number, which is what st.lines must say.
            for n, raw in enumerate(parts, n + 1):  # noqa: B020 - numbering carries on from the last chunk
                try:
                    doc = parse(raw)
                    msg = doc[msg_field]
                    tsv = doc[ts_field]
                except Exception:  # not JSON to simdjson, not an object, a field missing: orjson decides below
                    msg = None
                else:
                    doc = None
                    if type(msg) in lazy_containers:  # structured logging: printed straight from the parse
                        msg = msg.mini.decode()
                    if type(msg) is str and type(tsv) is str and len(tsv) > 24 and tsv[19] == "." and tsv[-1] == "Z":
                        secs = seconds.get(tsv[:19]) or second_ms(tsv[:19])
                        frac = tsv[20:-1]
                        if secs is not None and frac.isdecimal() and frac.isascii() and msg:
                            append((secs + millis[frac[:3]], msg))
                            continue
                doc = msg = tsv = None
                try:
                    record = loads(raw)
                except decode_error as exc:
                    st.lines = n
                    record = _bad_line(raw, exc, st)
                    if record is _INVALID:
                        continue
                if type(record) is dict:
                    ts = parse_ts(record.get(ts_field))
                    msg = record.get(msg_field)
                    if type(msg) is not str:
                        msg = _message_of(record)
                else:
                    ts = None
                    msg = _message_of(record)
                if ts is None:
                    ts = fallback_ts_ms
                    defaulted += 1
                if not msg:
                    empty += 1  # CloudWatch refuses empty messages; there is nothing to deliver
                    continue
                append((ts, msg))
            if out:
                st.events_decoded += len(out)
                yield out
    finally:
        st.lines = n
        st.timestamps_defaulted += defaulted
        st.messages_empty += empty


def _bad_line(raw: bytes, exc: Exception, st: DecodeStats) -> Any:
    """A record from a line orjson refused, or _INVALID after counting why. `st.lines` is this line's number."""
    if not raw.strip():
        return _INVALID  # blank lines are framing, not errors
    if raw.startswith(UTF8_BOM):  # the fast path takes these, so the slow one must too
        raw = raw[len(UTF8_BOM) :]
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as retry:
            exc = retry
    record = _repair_utf8(raw, st)
    if record is not _INVALID:
        return record
    if st.damaged:
        # Damage is only known once the stream has ended, so this is its cut-off last line:
        # part of the damage already reported, not a separate bad line.
        st.damaged += f"; last line {st.lines} cut short"
    else:
        st.malformed(st.lines, f"invalid JSON: {exc}")
    return _INVALID


_INVALID = object()


def _repair_utf8(raw: bytes, st: DecodeStats) -> Any:
    """A line that is valid JSON apart from bad UTF-8 bytes is delivered with U+FFFD in their place."""
    try:
        raw.decode("utf-8")
        return _INVALID  # valid UTF-8, so the JSON itself is broken
    except UnicodeDecodeError:
        pass
    try:
        record = orjson.loads(raw.decode("utf-8", "replace"))
    except orjson.JSONDecodeError:
        return _INVALID
    st.lines_repaired_utf8 += 1
    return record


def _array_records(lines: Iterator[bytes], st: DecodeStats) -> Iterator[Any]:
    body = b"".join(lines)
    st.lines += body.count(b"\n") + (not body.endswith(b"\n"))
    try:
        records = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:
            records = orjson.loads(body.decode("utf-8", "replace"))
            st.lines_repaired_utf8 += 1
        except orjson.JSONDecodeError:
            st.malformed(1, f"invalid JSON array: {exc}")
            return
    if not isinstance(records, list):
        records = [records]
    yield from records


# ---------------------------------------------------------------------------------------------------------
# Whole records (object deliveries that decode: Parquet, content filters)
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Row:
    """One line of an object with everything an object delivery keeps of it (pipeline/columnar.py).

    Unlike `decode_batches`, which reads only what CloudWatch receives, every line becomes a row: a line that is
    not JSON is carried with `record` None and the line itself (bad UTF-8 replaced) as its message, and an empty
    message is kept, since an object delivery refuses nothing CloudWatch would.
    """

    ts: int  # epoch milliseconds: the record's timestamp, else the object's LastModified
    message: str  # what CloudWatch would receive (CONTRACTS.md §2); for a malformed line, the line
    record: Any  # the decoded record (a dict for every collector record); None for a malformed line
    raw: bytes  # the line as written, without its line break (a record of a JSON array: its compact JSON)


def decode_rows(body: bytes | _ReadableBody, fallback_ts_ms: int, stats: DecodeStats | None = None) -> Iterator[Row]:
    """Every line of one object body as a `Row`, in order. Gzip or plain, NDJSON or one JSON array, as
    `decode_batches`; bad lines are counted (and sampled) in `stats` the same way, and carried as rows."""
    st = stats if stats is not None else DecodeStats()
    line_batches = _line_batches(_inflate(_chunks(body, st), st), st)
    n = 0
    started = False
    for parts in line_batches:
        for raw in parts:
            n += 1
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue  # blank lines are framing
            if not started:
                started = True
                line = line.removeprefix(UTF8_BOM)
                if line.lstrip()[:1] == b"[":  # one JSON array: parsed whole
                    rest = itertools.chain([line + b"\n"], (r for p in line_batches for r in p))
                    st.lines = n - 1
                    for record in _array_records(rest, st):
                        yield _row(record, orjson.dumps(record), st, fallback_ts_ms)
                    return
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                st.lines = n
                record = _bad_line(line, exc, st)
                if record is _INVALID:
                    yield Row(fallback_ts_ms, line.decode("utf-8", "replace"), None, line)
                    continue
            yield _row(record, line, st, fallback_ts_ms)
    st.lines = n


def _row(record: Any, raw: bytes, st: DecodeStats, fallback_ts_ms: int) -> Row:
    ts = _PARSER(record.get(TIMESTAMP_FIELD)) if type(record) is dict else None
    if ts is None:
        ts = fallback_ts_ms
        st.timestamps_defaulted += 1
    message = _message_of(record)
    if not message:
        st.messages_empty += 1
    st.events_decoded += 1
    return Row(ts, message, record, raw)
