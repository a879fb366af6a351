"""The S3 key layout (CONTRACTS.md §1): tenant second, hostile keys rejected, listing bounds by text order."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.keys import (
    DEFAULT_WRITE_SLACK,
    InvalidKeyError,
    filename_time,
    format_filename,
    format_key,
    listing_bounds,
    parse_key,
    pod_prefix,
)

FAST = settings(max_examples=150, deadline=None)

GOOD = "prod-1/acme/payment-service/payment-7d9f/20240101-000000-0b7c6b8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b.json.gz"

# Kubernetes-shaped names: a DNS label for the tenant, names/label values for the rest.
tenant_ids = st.from_regex(r"\A[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?\Z", fullmatch=True)
names = st.from_regex(r"\A[A-Za-z0-9]([-A-Za-z0-9_.]{0,40}[A-Za-z0-9])?\Z", fullmatch=True)
times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC))


def test_tenant_is_the_second_segment() -> None:
    k = parse_key(GOOD)
    assert k.cluster == "prod-1"
    assert k.tenant == "acme"
    assert k.application == "payment-service"
    assert k.pod == "payment-7d9f"
    assert k.write_time == datetime(2024, 1, 1, tzinfo=UTC)
    assert k.key == GOOD


def test_format_key_puts_tenant_second() -> None:
    key = format_key("prod-1", "acme", "api", "api-1", datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), "u1")
    assert key == "prod-1/acme/api/api-1/20240506-070809-u1.json.gz"
    assert key.split("/")[1] == "acme"


def test_format_key_converts_to_utc() -> None:
    plus2 = datetime(2024, 5, 6, 9, 8, 9, tzinfo=UTC).astimezone(timezone(timedelta(hours=2)))
    assert format_filename(plus2, "u").startswith("20240506-090809-")


@FAST
@given(cluster=names, tenant=tenant_ids, app=names, pod=names, when=times, uid=st.uuids())
def test_format_parse_round_trip(cluster: str, tenant: str, app: str, pod: str, when: datetime, uid: object) -> None:
    key = format_key(cluster, tenant, app, pod, when, str(uid))
    k = parse_key(key)
    assert (k.cluster, k.tenant, k.application, k.pod) == (cluster, tenant, app, pod)
    assert k.write_time == when.replace(microsecond=0)
    assert k.key == key
    assert key.startswith(pod_prefix(cluster, tenant, app, pod))


def test_deeper_filename_path_is_kept() -> None:
    k = parse_key("c/acme/app/pod/sub/20240101-000000-x.json.gz")
    assert k.filename == "sub/20240101-000000-x.json.gz"
    assert k.write_time == datetime(2024, 1, 1, tzinfo=UTC)


def test_filename_without_timestamp_has_no_write_time() -> None:
    assert parse_key("c/acme/app/pod/file.json.gz").write_time is None


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "empty"),
        ("a//b/c/f.json.gz", "empty"),
        ("c/acme/app//f.json.gz", "empty"),
        ("c/acme/app/pod/", "empty"),
        ("/acme/app/pod/f.json.gz", "empty"),
        ("c/acme/app/pod/a//f.json.gz", "empty"),
        ("c/acme/./pod/f.json.gz", "'.'"),
        ("c/acme/../pod/f.json.gz", "'..'"),
        ("../acme/app/pod/f.json.gz", "'..'"),
        ("c/acme/app/pod/..", "'..'"),
        ("c/Acme/app/pod/f.json.gz", "tenant"),
        ("c/-acme/app/pod/f.json.gz", "tenant"),
        ("c/acme-/app/pod/f.json.gz", "tenant"),
        ("c/a_b/app/pod/f.json.gz", "tenant"),
        ("c/" + "a" * 64 + "/app/pod/f.json.gz", "tenant"),
        ("c/acme/app/f.json.gz", "segments"),
        ("acme/app/f.json.gz", "segments"),
        ("f.json.gz", "segments"),
        ("c/acme/my app/pod/f.json.gz", "application"),
        ("c/acme/app/pod/my file.json.gz", "filename"),
        ("c/acme/app+x/pod/f.json.gz", "application"),
        ("c/acme/app/pod/20240101-000000+x.json.gz", "filename"),
        ("c/acme/app/" + "p" * 1000 + "/f.json.gz", "pod"),
        ("c/acme/app/pod\x00/f.json.gz", "pod"),
        ("c/acme/app\x1b[31m/pod/f.json.gz", "application"),
        ("c/acme/app/pod/f.json.gz\x7f", "filename"),
        ("c/acme/app/pod/f.json.gz%2F..", "filename"),
        ("c/acme/app/pod/" + "/".join(["f" * 200] * 6), "1024 bytes"),
    ],
)
def test_hostile_keys_are_rejected_with_a_reason(key: str, why: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        parse_key(key)
    assert info.value.recoverable is False
    assert why in info.value.reason, info.value.reason
    assert info.value.key == key


@pytest.mark.parametrize(
    "key",
    [
        "c/acme\n/app/pod/20240101-000000-x.json.gz",  # `$` matches before a final newline
        "c/acme/app\n/pod/20240101-000000-x.json.gz",
        "c/acme/app/pod\n/20240101-000000-x.json.gz",
        "c\n/acme/app/pod/20240101-000000-x.json.gz",
        "c/acme/app/pod/20240101-000000-x.json.gz\n",
        "c/acme/app/pod/20240101-000000-x.json.gz\r",
        "c/acme/app/pod/20240101-000000-x.json.gz\t",
    ],
)
def test_control_characters_at_a_segment_end_are_rejected(key: str) -> None:
    with pytest.raises(InvalidKeyError):
        parse_key(key)


def test_over_1024_bytes_counts_bytes_not_characters() -> None:
    pod = "p" * 180
    fname = "é" * 100  # 200 bytes, not a valid filename anyway: size is checked first
    key = f"c/acme/app/{pod}/" + "/".join([pod] * 4) + "/" + fname
    assert len(key) <= 1024 and len(key.encode()) > 1024
    with pytest.raises(InvalidKeyError, match="1024 bytes"):
        parse_key(key)


def test_format_key_refuses_a_bad_part() -> None:
    with pytest.raises(InvalidKeyError):
        format_key("c", "ACME", "app", "pod", datetime(2024, 1, 1, tzinfo=UTC))
    with pytest.raises(InvalidKeyError):
        format_key("c", "acme", "", "pod", datetime(2024, 1, 1, tzinfo=UTC))


# ---------------------------------------------------------------------------------------------------------
# listing_bounds: StartAfter / stop keys inside one pod prefix
# ---------------------------------------------------------------------------------------------------------

PREFIX = pod_prefix("c", "acme", "app", "pod")


def _key_at(t: datetime, uid: str = "00000000-0000-0000-0000-000000000000") -> str:
    return PREFIX + format_filename(t, uid)


def _listed(key: str, bounds: tuple[str, str]) -> bool:
    start, stop = bounds
    return start < key <= stop  # S3 StartAfter is exclusive; the caller stops after `stop`


def test_listing_bounds_lower_edge() -> None:
    since = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
    until = datetime(2024, 3, 1, 13, 0, 0, tzinfo=UTC)
    b = listing_bounds(PREFIX, since, until)
    edge = since - DEFAULT_WRITE_SLACK
    assert _listed(_key_at(edge), b), "a file written exactly at since-slack must be listed"
    assert _listed(_key_at(edge, "ffffffff"), b)
    assert not _listed(_key_at(edge - timedelta(seconds=1)), b)
    assert not _listed(_key_at(edge - timedelta(days=3)), b)


def test_listing_bounds_upper_edge() -> None:
    since = datetime(2024, 3, 1, 12, 0, 0, tzinfo=UTC)
    until = datetime(2024, 3, 1, 13, 0, 0, tzinfo=UTC)
    b = listing_bounds(PREFIX, since, until)
    edge = until + DEFAULT_WRITE_SLACK
    assert _listed(_key_at(edge), b)
    assert _listed(_key_at(edge, "ffffffff-ffff-ffff-ffff-ffffffffffff"), b)
    assert _listed(PREFIX + edge.strftime("%Y%m%d-%H%M%S") + "-zzz.json.gz", b)
    assert not _listed(_key_at(edge + timedelta(seconds=1)), b)
    # Files inside the window proper are listed.
    assert _listed(_key_at(since), b) and _listed(_key_at(until), b)


def test_listing_bounds_custom_slack_and_subsecond_since() -> None:
    since = datetime(2024, 3, 1, 12, 0, 0, 700_000, tzinfo=UTC)
    until = since + timedelta(minutes=5)
    b = listing_bounds(PREFIX, since, until, slack=timedelta(0))
    # The file written during the second `since` falls in is still listed.
    assert _listed(_key_at(since.replace(microsecond=0)), b)
    assert not _listed(_key_at(since - timedelta(seconds=1)), b)


def test_listing_bounds_stay_inside_the_prefix() -> None:
    since = datetime(2024, 3, 1, tzinfo=UTC)
    start, stop = listing_bounds(PREFIX, since, since + timedelta(hours=1))
    assert start.startswith(PREFIX) and stop.startswith(PREFIX)
    other_pod = pod_prefix("c", "acme", "app", "pod2") + format_filename(since, "x")
    assert not _listed(other_pod, (start, stop))


@FAST
@given(a=times, b=times)
def test_text_order_matches_time_order(a: datetime, b: datetime) -> None:
    ka, kb = _key_at(a, "ffffffff"), _key_at(b, "00000000")
    sa, sb = a.replace(microsecond=0), b.replace(microsecond=0)
    if sa < sb:
        assert ka < kb
    elif sa > sb:
        assert ka > kb


@FAST
@given(since=times, span=st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3)), file_t=times)
def test_listing_bounds_property(since: datetime, span: timedelta, file_t: datetime) -> None:
    until = since + span
    b = listing_bounds(PREFIX, since, until)
    lo = (since - DEFAULT_WRITE_SLACK).replace(microsecond=0)
    hi = (until + DEFAULT_WRITE_SLACK).replace(microsecond=0)
    t = file_t.replace(microsecond=0)
    assert _listed(_key_at(file_t), b) == (lo <= t <= hi)


def _strptime_time(filename: str) -> datetime | None:
    """filename_time as it was: strptime alone (the reference for its fast path)."""
    try:
        return datetime.strptime(filename[:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


stamp_chars = st.sampled_from("0123456789-1290 ٣x")


stamp_shaped = st.text(st.sampled_from("0123456789"), min_size=14, max_size=14).map(lambda d: f"{d[:8]}-{d[8:]}")


@given(
    st.one_of(
        st.text(stamp_chars, max_size=20),
        stamp_shaped,
        stamp_shaped.map(lambda s: s + "-uuid.json.gz"),
        times.map(lambda t: t.strftime("%Y%m%d-%H%M%S")),
        st.text(),
    )
)
@settings(max_examples=500, deadline=None)
def test_filename_time_reads_what_strptime_reads(filename: str) -> None:
    assert filename_time(filename) == _strptime_time(filename)
