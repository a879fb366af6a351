"""The synthetic generator: deterministic, keys from pipeline.keys, Vector-shaped records, an exact manifest.

The manifest is checked against an independent decoder written here (gzip/zlib + orjson per line, the
contract's timestamp and message rules), not against the generator's own helpers.
"""

from __future__ import annotations

import calendar
import gzip
import re
import statistics
import threading
import zlib
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devstack import generator as gen
from devstack.generator import DamageKind, ExpectedEvent, GeneratorConfig, MessageKind
from pipeline.keys import parse_key

FAST = settings(max_examples=25, deadline=None)
SINCE = datetime(2024, 1, 1, tzinfo=UTC)
UNTIL = datetime(2024, 1, 1, 2, tzinfo=UTC)
SINCE_MS = calendar.timegm(SINCE.timetuple()) * 1000
UNTIL_MS = calendar.timegm(UNTIL.timetuple()) * 1000

RFC3339_NS = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{9})Z$")
KLOG = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+\.go:\d+\] ")


def config(**kw: Any) -> GeneratorConfig:
    base: dict[str, Any] = {
        "since": SINCE,
        "until": UNTIL,
        "tenants": ("acme", "globex"),
        "clusters": ("prod-1", "dr-2"),
        "applications": gen.app_names(2),
        "pods_per_app": 2,
        "objects_per_pod": 2,
        "events_per_object": 25,
    }
    return GeneratorConfig(**{**base, **kw})


# -- an independent decoder, the contract's rules written out again -------------------------------------


def ts_ms(value: Any) -> int:
    if isinstance(value, str):
        m = RFC3339_NS.match(value)
        assert m, value
        y, mo, d, h, mi, s, frac = m.groups()
        sec = calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s)))
        return sec * 1000 + int(frac[:3])
    assert isinstance(value, int | float) and not isinstance(value, bool)
    return int(value) if value >= 1e12 else int(value * 1000)


def delivered(rec: dict[str, Any]) -> ExpectedEvent:
    if "message" not in rec:
        return ExpectedEvent(ts_ms(rec["timestamp"]), orjson.dumps(rec).decode())
    msg = rec["message"]
    return ExpectedEvent(ts_ms(rec["timestamp"]), msg if isinstance(msg, str) else orjson.dumps(msg).decode())


def decode(body: bytes) -> tuple[list[ExpectedEvent], list[int], list[int], bool]:
    """(events, invalid line numbers, repaired line numbers, truncated) for one object body."""
    truncated = False
    data = body
    if body[:2] == b"\x1f\x8b":
        d = zlib.decompressobj(wbits=31)
        data = d.decompress(body)
        truncated = not d.eof
        if truncated:
            data = data[: data.rfind(b"\n") + 1]
    if data.lstrip().startswith(b"["):
        return [delivered(r) for r in orjson.loads(data)], [], [], truncated
    events: list[ExpectedEvent] = []
    invalid: list[int] = []
    repaired: list[int] = []
    lines = data.split(b"\n")
    if lines[-1] == b"":  # the newline that ends the last record (or an empty body)
        lines.pop()
    for n, line in enumerate(lines, 1):
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            try:  # valid JSON apart from bad UTF-8 bytes: delivered with U+FFFD (the project's decoder rule)
                line.decode("utf-8")
                invalid.append(n)
                continue
            except UnicodeDecodeError:
                rec = orjson.loads(line.decode("utf-8", "replace"))
                repaired.append(n)
        events.append(delivered(rec))
    return events, invalid, repaired, truncated


def records(obj: gen.GeneratedObject) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in gzip.decompress(obj.body).splitlines()]


# Every damaged kind, more epoch timestamps than by default, and records without a message.
DATASET: dict[str, Any] = {
    "damaged": tuple(DamageKind),
    "epoch_fraction": 0.2,
    "mix": {**gen.DEFAULT_MIX, MessageKind.NO_MESSAGE: 0.03},
}


@pytest.fixture(scope="module")
def dataset() -> list[gen.GeneratedObject]:
    return list(gen.generate(config(**DATASET)))


@pytest.fixture(scope="module")
def regular(dataset: list[gen.GeneratedObject]) -> list[gen.GeneratedObject]:
    return [o for o in dataset if o.damage is None]


# -- determinism, keys, time -------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes(dataset: list[gen.GeneratedObject]) -> None:
    again = list(gen.generate(config(**DATASET)))
    assert [(o.key, o.body, o.expected) for o in again] == [(o.key, o.body, o.expected) for o in dataset]
    other = list(gen.generate(config(**DATASET, seed=1)))
    assert {o.key for o in other}.isdisjoint({o.key for o in dataset})
    assert [o.body for o in other] != [o.body for o in dataset]


def test_plan_covers_every_part_and_keys_parse(regular: list[gen.GeneratedObject]) -> None:
    cfg = config()
    assert len(regular) == 2 * 2 * 2 * 2 * 2  # clusters x tenants x apps x pods x objects
    seen = set()
    for o in regular:
        k = parse_key(o.key)
        s = o.spec
        assert (k.cluster, k.tenant, k.application, k.pod) == (s.cluster, s.tenant, s.application, s.pod)
        assert k.pod.startswith(f"{k.application}-")
        assert k.write_time == s.write_time
        assert SINCE <= k.write_time <= UNTIL
        assert k.filename.endswith(".json.gz")
        seen.add((k.cluster, k.tenant, k.application))
    assert len(seen) == len(cfg.clusters) * len(cfg.tenants) * len(cfg.applications)


def test_records_are_vector_records_for_their_key(regular: list[gen.GeneratedObject]) -> None:
    for o in regular:
        k = parse_key(o.key)
        for rec in records(o):
            assert (rec["cluster_id"], rec["namespace"], rec["application"], rec["pod_name"]) == (
                k.cluster,
                k.tenant,
                k.application,
                k.pod,
            )
            assert rec["kubernetes"]["pod_namespace"] == k.tenant
            assert rec["source_type"] == "kubernetes_logs"


def test_event_times_within_window_and_never_after_write_time(dataset: list[gen.GeneratedObject]) -> None:
    for o in dataset:
        write_ms = o.spec.write_second * 1000
        for e in o.expected:
            assert SINCE_MS <= e.timestamp_ms <= write_ms <= UNTIL_MS
            assert write_ms - e.timestamp_ms <= 300_000


def test_timestamps_mostly_rfc3339_ns_some_epoch_numbers() -> None:
    objs = list(gen.generate(config(epoch_fraction=0.3)))
    stamps = [r["timestamp"] for o in objs for r in records(o)]
    rfc = [s for s in stamps if isinstance(s, str)]
    assert all(RFC3339_NS.match(s) for s in rfc)
    assert any(isinstance(s, int) and s >= 10**12 for s in stamps)  # epoch milliseconds
    assert any(isinstance(s, int) and s < 10**12 for s in stamps)  # whole epoch seconds
    assert any(isinstance(s, float) for s in stamps)  # fractional epoch seconds
    assert len(rfc) > len(stamps) // 2
    default = [r["timestamp"] for o in gen.generate(config()) for r in records(o)]
    assert sum(isinstance(s, str) for s in default) / len(default) > 0.9


def test_ms_are_truncated_not_rounded() -> None:
    ns = 1_704_067_200_123_999_999
    assert gen.timestamp_value(ns, "rfc3339") == ("2024-01-01T00:00:00.123999999Z", 1_704_067_200_123)
    assert gen.timestamp_value(ns, "epoch_ms") == (1_704_067_200_123, 1_704_067_200_123)
    assert gen.timestamp_value(ns, "epoch_s") == (1_704_067_200, 1_704_067_200_000)
    assert gen.timestamp_value(ns, "epoch_s_frac") == (1_704_067_200.0, 1_704_067_200_000)


@FAST
@given(
    st.integers(min_value=1_000_000_000 * 10**9, max_value=4_000_000_000 * 10**9),
    st.sampled_from(["rfc3339", "epoch_s", "epoch_s_frac", "epoch_ms"]),
)
def test_timestamp_value_round_trips_through_json(ns: int, style: str) -> None:
    value, ms = gen.timestamp_value(ns, style)
    assert ts_ms(orjson.loads(orjson.dumps(value))) == ms  # what a decoder reads back is exactly ms
    assert ms * 1_000_000 <= ns  # precision is only ever lost downwards: never after the write time


# -- messages ---------------------------------------------------------------------------------------------


def test_message_mix_has_every_kind() -> None:
    objs = list(gen.generate(config(events_per_object=100, mix={**gen.DEFAULT_MIX, MessageKind.NO_MESSAGE: 0.02})))
    kinds = sum((gen.Counter(o.kinds) for o in objs), gen.Counter())
    assert set(kinds) == set(MessageKind)
    recs = [r for o in objs for r in records(o)]
    msgs = [r["message"] for r in recs if "message" in r]
    text = [m for m in msgs if isinstance(m, str)]
    assert any(isinstance(m, dict) for m in msgs)
    assert any(isinstance(m, list) for m in msgs)
    assert any(m.startswith("{") and isinstance(orjson.loads(m), dict) for m in text)
    assert any(KLOG.match(m) for m in text)
    traces = [m for m in text if m.startswith("Traceback") or "\n\tat com.example." in m]
    assert any(m.startswith("Traceback") for m in traces)
    assert any("\tat com.example." in m for m in traces)
    assert all(len(m.encode()) >= 1024 and m.count("\n") >= 5 for m in traces)
    assert any(re.search(r"[\u4e00-\u9fff]", m) for m in text)  # CJK
    assert any(re.search(r"[\U0001F300-\U0001FAFF]", m) for m in text)  # emoji
    assert any(re.search(r"[éüñçè]", m) for m in text)  # accented
    assert any("message" not in r for r in recs)
    assert all(m for m in text)  # CloudWatch rejects empty messages


def test_message_sizes_follow_mean_and_cap() -> None:
    objs = list(gen.generate(config(events_per_object=100, message_bytes=1000, max_message_bytes=4096)))
    sizes = [len(e.message.encode()) for o in objs for e in o.expected]
    assert 800 <= statistics.mean(sizes) <= 1200
    assert max(sizes) <= 4096


@FAST
@given(st.text(min_size=1, max_size=200), st.integers(min_value=1, max_value=300))
def test_clip_utf8_is_a_prefix_within_the_byte_budget(text: str, limit: int) -> None:
    clipped = gen.clip_utf8(text, limit)
    assert text.startswith(clipped) and clipped
    if len(text.encode()) <= limit:
        assert clipped == text
    else:
        assert len(clipped.encode()) <= max(limit, len(text[0].encode()))


# -- the manifest is exact ----------------------------------------------------------------------------------


def test_expected_events_are_exactly_what_decoding_yields(dataset: list[gen.GeneratedObject]) -> None:
    for o in dataset:
        events, invalid, repaired, _ = decode(o.body)
        assert events == o.expected, (o.damage, o.key)
        assert tuple(invalid) == o.invalid_lines, o.damage
        assert tuple(repaired) == o.repaired_lines, o.damage


@FAST
@given(
    seed=st.integers(0, 2**32),
    events=st.integers(0, 30),
    objects=st.integers(1, 3),
    epoch_fraction=st.sampled_from([0.0, 0.1, 1.0]),
    window=st.integers(1, 7200),
)
def test_any_small_config_has_an_exact_manifest(
    seed: int, events: int, objects: int, epoch_fraction: float, window: int
) -> None:
    since = SINCE + timedelta(microseconds=123_457)  # a window that does not start on a whole second
    cfg = config(
        seed=seed,
        events_per_object=events,
        objects_per_pod=objects,
        epoch_fraction=epoch_fraction,
        since=since,
        until=since + timedelta(seconds=window),
        tenants=("acme",),
        clusters=("prod-1",),
        pods_per_app=1,
    )
    since_ms = SINCE_MS + 123
    for o in gen.generate(cfg):
        events_, invalid, repaired, _ = decode(o.body)
        assert events_ == o.expected and not invalid and not repaired
        assert len(o.expected) == events == o.events
        assert all(since_ms <= e.timestamp_ms <= o.spec.write_second * 1000 for e in o.expected)
        assert since <= o.spec.write_time <= cfg.until


def test_manifest_round_trips_and_counts_only_drops_events(dataset: list[gen.GeneratedObject]) -> None:
    entries = [gen.ManifestObject.of(o, f'"{i}"', keep_events=True) for i, o in enumerate(dataset)]
    m = gen.Manifest("bucket", 0, SINCE, UNTIL, entries)
    back = gen.Manifest.from_dict(orjson.loads(orjson.dumps(m.to_dict())))
    assert back.objects == m.objects and back.since == SINCE
    assert m.expected_count == sum(len(o.expected) for o in dataset)
    acme = [e for o in dataset if o.key.startswith("prod-1/acme/") for e in o.expected]
    assert m.expected_events("prod-1/acme/") == acme
    assert set(m.damaged()) == set(DamageKind)
    slim = gen.ManifestObject.of(dataset[0], '"x"', keep_events=False)
    assert slim.expected is None and slim.expected_count == len(dataset[0].expected)
    with pytest.raises(ValueError, match="counts only"):
        gen.Manifest("b", 0, SINCE, UNTIL, [slim]).expected_events()


# -- damaged objects are what they claim --------------------------------------------------------------------


def by_damage(dataset: list[gen.GeneratedObject]) -> dict[DamageKind, gen.GeneratedObject]:
    return {o.damage: o for o in dataset if o.damage is not None}


def test_truncated_gzip_is_really_truncated(dataset: list[gen.GeneratedObject]) -> None:
    o = by_damage(dataset)[DamageKind.TRUNCATED_GZIP]
    with pytest.raises(EOFError):
        gzip.decompress(o.body)
    events, _, _, truncated = decode(o.body)
    assert truncated and 0 < len(events) == len(o.expected) < o.events
    # The partial last line must not parse, or "recoverable" would depend on the decoder.
    data = zlib.decompressobj(wbits=31).decompress(o.body)
    tail = data[data.rfind(b"\n") + 1 :]
    if tail:
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(tail)


def test_other_damaged_kinds(dataset: list[gen.GeneratedObject]) -> None:
    d = by_damage(dataset)
    assert d[DamageKind.EMPTY].body == b"" and d[DamageKind.EMPTY].expected == []

    plain = d[DamageKind.PLAIN_NDJSON]
    assert plain.key.endswith(".json.gz") and plain.body[:1] == b"{" and not plain.gzipped
    assert len(plain.expected) == plain.events >= gen.DAMAGED_MIN_EVENTS

    arr = d[DamageKind.JSON_ARRAY]
    assert isinstance(orjson.loads(gzip.decompress(arr.body)), list)
    assert len(arr.expected) == arr.events

    garbage = d[DamageKind.GARBAGE_LINES]
    lines = gzip.decompress(garbage.body).split(b"\n")[:-1]
    assert len(garbage.invalid_lines) >= 2 and 1 not in garbage.invalid_lines
    assert {lines[n - 1] for n in garbage.invalid_lines} <= set(gen.GARBAGE_LINES)
    assert len(lines) == garbage.events + len(garbage.invalid_lines) and len(garbage.expected) == garbage.events

    big = d[DamageKind.OVERSIZED_LINE]
    lines = gzip.decompress(big.body).split(b"\n")
    assert max(len(line) for line in lines) > 1 << 20
    assert max(len(e.message.encode()) for e in big.expected) > 1 << 20
    assert len(big.expected) == big.events

    bad = d[DamageKind.INVALID_UTF8]
    lines = gzip.decompress(bad.body).split(b"\n")[:-1]
    (n,) = bad.repaired_lines
    assert not bad.invalid_lines
    with pytest.raises(UnicodeDecodeError):
        lines[n - 1].decode("utf-8")
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(lines[n - 1])
    assert all(line.decode("utf-8") for i, line in enumerate(lines, 1) if i != n)
    assert len(bad.expected) == bad.events
    assert bad.expected[n - 1].message == "caf\ufffd\ufffd au lait"


def test_the_project_decoder_agrees_with_the_manifest(dataset: list[gen.GeneratedObject]) -> None:
    # The consumer and replay decode with pipeline.records; a disagreement here is a contract question.
    from pipeline.records import DecodeStats, decode_events

    for o in dataset:
        stats = DecodeStats()
        assert list(decode_events(o.body, 0, stats)) == o.expected, o.damage
        assert [n for n, _ in stats.samples] == list(o.invalid_lines), o.damage
        assert stats.lines_repaired_utf8 == len(o.repaired_lines)
        assert (stats.damaged is not None) == (o.damage is DamageKind.TRUNCATED_GZIP)


# -- stdout lines, writing, time parsing ---------------------------------------------------------------------


def test_iter_lines_are_the_regular_records_in_write_order(regular: list[gen.GeneratedObject]) -> None:
    lines = list(gen.iter_lines(config(**DATASET)))
    assert len(lines) == sum(o.events for o in regular)
    recs = [orjson.loads(line) for line in lines]
    assert all(b"\n" not in line for line in lines)
    first_by_object = sorted(regular, key=lambda o: (o.spec.write_second, o.spec.index))
    assert [delivered(r) for r in recs] == [e for o in first_by_object for e in o.expected]


class FakeS3:
    def __init__(self, fail_on: str | None = None) -> None:
        self.puts: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.fail_on = fail_on

    def put_object(self, **kw: Any) -> dict[str, str]:
        if self.fail_on and self.fail_on in kw["Key"]:
            raise RuntimeError("boom")
        with self.lock:
            self.puts[kw["Key"]] = kw
        return {"ETag": f'"{len(kw["Body"])}"'}


def test_write_dataset_in_plan_order_with_vector_headers() -> None:
    cfg = config(damaged=(DamageKind.PLAIN_NDJSON, DamageKind.EMPTY))
    s3 = FakeS3()
    m = gen.write_dataset(cfg, "central", s3=s3, workers=8)
    assert m.keys == [s.key for s in gen.plan(cfg)]
    for entry in m.objects:
        put = s3.puts[entry.key]
        assert put["Bucket"] == "central" and entry.size == len(put["Body"]) and entry.etag == f'"{entry.size}"'
        gz = put["Body"][:2] == b"\x1f\x8b"
        assert (put.get("ContentEncoding") == "gzip") == gz
        assert gz == (entry.damage not in (DamageKind.PLAIN_NDJSON, DamageKind.EMPTY))
    assert m.summary()["objects"] == len(m.objects)


def test_write_dataset_raises_the_first_failure() -> None:
    cfg = config()
    victim = gen.plan(cfg)[3].uid
    with pytest.raises(RuntimeError, match="boom"):
        gen.write_dataset(cfg, "central", s3=FakeS3(fail_on=victim), workers=4)


def test_utc_time() -> None:
    now = datetime(2024, 6, 1, 12, tzinfo=UTC)
    assert gen.utc_time("6h", now) == now - timedelta(hours=6)
    assert gen.utc_time("7d", now) == now - timedelta(days=7)
    assert gen.utc_time("now", now) == now
    assert gen.utc_time("2024-01-01", now) == SINCE
    assert gen.utc_time("2024-01-01T06:00:00Z", now) == SINCE + timedelta(hours=6)
    assert gen.utc_time("2024-01-01T08:00:00+02:00", now) == SINCE + timedelta(hours=6)
    assert gen.utc_time(date(2024, 1, 1)) == SINCE
    assert gen.utc_time(datetime(2024, 1, 1)) == SINCE
    with pytest.raises(ValueError):
        gen.utc_time("yesterday-ish", now)


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        config(until=SINCE - timedelta(seconds=1))
    with pytest.raises(ValueError):
        config(since=datetime(2024, 1, 1))  # naive
    with pytest.raises(ValueError):
        config(message_bytes=0)
    with pytest.raises(ValueError, match="not a valid namespace"):
        gen.plan(config(tenants=("Not_A_Namespace",)))
    assert replace(config(), seed=5).seed == 5
