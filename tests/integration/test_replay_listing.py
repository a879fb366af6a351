"""Replay listing against the real moto server: exactly the window, only the tenant, LIST calls per pod.

Expectations come from the key layout (CONTRACTS.md §1) applied to the keys this test wrote: a key is
in the window when its filename write time is within [since - slack, until + slack], to the second.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.provision import LocalEnvironment
from pipeline import aws
from pipeline.keys import format_key
from pipeline.source.listing import Listing, ListingFilter, list_window
from pipeline.storage import REPORTS_PREFIX

pytestmark = pytest.mark.integration

SLACK = timedelta(seconds=300)
START = datetime(2024, 3, 10, tzinfo=UTC)
SINCE = START + timedelta(hours=36, seconds=17)
UNTIL = SINCE + timedelta(hours=1)
PAGE = 1000  # S3's ListObjectsV2 page size
PER_POD = 1100  # more than one LIST page per pod, yet quick to write to moto (~200 puts/s on 2 cores)


def uid(n: int) -> str:
    return f"{n:08x}-0000-4000-8000-000000000000"


def put_all(s3: Any, bucket: str, keys: Iterable[str]) -> dict[str, tuple[int, str]]:
    """Tiny bodies, written in parallel; returns key → (size, ETag without quotes)."""

    def put(key: str) -> tuple[str, tuple[int, str]]:
        body = key[-12:].encode()
        etag = s3.put_object(Bucket=bucket, Key=key, Body=body)["ETag"].strip('"')
        return key, (len(body), etag)

    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(pool.map(put, list(keys)))


def in_window(write_time: datetime, since: datetime = SINCE, until: datetime = UNTIL) -> bool:
    lo = (since - SLACK).replace(microsecond=0)
    hi = (until + SLACK).replace(microsecond=0)
    return lo <= write_time <= hi


def listed_keys(listing: Listing) -> set[str]:
    return {o.key for o in listing.objects}


def listing(local: LocalEnvironment, tenants: tuple[str, ...] = ("acme",), **kw: Any) -> Listing:
    flt = ListingFilter(tenants=tenants, since=SINCE, until=UNTIL, slack=SLACK, **kw)
    return list_window(aws.client("s3"), local.names.bucket, flt)


@pytest.mark.timeout(120)
def test_one_hour_window_lists_exactly_its_objects_with_one_call_per_pod(local_aws: LocalEnvironment) -> None:
    t0 = time.monotonic()
    bucket = local_aws.names.bucket
    s3 = aws.client("s3")
    # Thousands of S3 event notifications through moto's SNS and SQS would dominate the write time.
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})
    pods = [("payment-service", "pay-a"), ("payment-service", "pay-b"), ("frontend", "web-a")]
    times: dict[str, datetime] = {}
    for app, pod in pods:
        # 1,100 objects over three days: every 236 s, like a steadily logging pod.
        for i in range(PER_POD):
            wt = START + timedelta(seconds=236 * i)
            times[format_key("prod-1", "acme", app, pod, wt, uid(i))] = wt
    # The same pod names under a tenant whose id extends "acme", and another tenant: never listed.
    others = [
        format_key("prod-1", tenant, "payment-service", "pay-a", SINCE + timedelta(minutes=m), uid(m))
        for tenant in ("acme-eu", "globex")
        for m in range(0, 60, 5)
    ]
    meta = put_all(s3, bucket, [*times, *others])
    written_s = time.monotonic() - t0

    t1 = time.monotonic()
    result = listing(local_aws)
    listed_s = time.monotonic() - t1

    expected = {k for k, wt in times.items() if in_window(wt)}
    assert 3 * 15 < len(expected) < 3 * 22  # the window (+ slack on both sides) holds ~18 per pod
    assert listed_keys(result) == expected
    assert result.malformed == []
    # Per pod, in key (= write time) order, with what S3 said about each object.
    for prefix, objs in result.pods.items():
        assert [o.key for o in objs] == sorted(o.key for o in objs)
        assert all(o.key.startswith(prefix) for o in objs)
    for o in result.objects:
        assert (o.size, o.etag) == meta[o.key]
        assert o.parsed.tenant == "acme"

    # Cost: root (clusters) + 1 tenant prefix + 2 applications + 3 pods, each one page: 1,100 objects per
    # pod do not cost a second page, because StartAfter jumps straight to the window.
    clusters, tenant_prefixes, apps = 1, 1, 2
    assert result.list_calls <= clusters + tenant_prefixes + apps + len(pods) + 2
    naive_pages = sum(1 for _ in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="prod-1/acme/"))
    assert naive_pages >= 3 * PER_POD // PAGE
    pod_calls = result.list_calls - (clusters + tenant_prefixes + apps)
    assert pod_calls == len(pods) < naive_pages
    # Writing the data is most of this test (~20 s on a busy 2-core machine); listing must stay quick.
    assert listed_s < 10, f"listing took {listed_s:.1f}s (writing {written_s:.1f}s)"


def test_window_edges_tenant_prefixes_and_malformed_keys(local_aws: LocalEnvironment) -> None:
    bucket = local_aws.names.bucket
    s3 = aws.client("s3")
    lo, hi = SINCE - SLACK, UNTIL + SLACK
    second = timedelta(seconds=1)
    edge_times = [lo - second, lo, SINCE, UNTIL, hi, hi + second, START, START + timedelta(days=3)]
    edge = {format_key("prod-1", "acme", "checkout", "chk-a", t, uid(i)): t for i, t in enumerate(edge_times)}
    bleed = {
        format_key("prod-1", tenant, "checkout", "chk-a", SINCE, uid(99))
        for tenant in ("acme-eu", "acme2", "xacme", "globex")
    }
    stamp = SINCE.strftime("%Y%m%d-%H%M%S")
    malformed = {
        f"prod-1/acme/checkout/chk-a/{stamp}-bad name.json.gz": "filename",
        f"prod-1/acme//chk-b/{stamp}-{uid(1)}.json.gz": "empty segment",
        f"prod-1/acme/checkout/chk-a/{stamp}-x/../{uid(2)}.json.gz": "'..'",
        "prod-1/acme/checkout/stray.json.gz": "not under",
        "prod-1/acme/README": "not under",
    }
    put_all(s3, bucket, [*edge, *bleed, *malformed])

    result = listing(local_aws)

    assert listed_keys(result) == {k for k, t in edge.items() if lo <= t <= hi}
    assert len(listed_keys(result)) == 4  # lo, since, until, hi: the seconds just outside are not
    reasons = dict(result.malformed)  # reported with reasons, not raised, not silently dropped
    assert set(reasons) == set(malformed)
    for key, fragment in malformed.items():
        assert fragment in reasons[key], (key, reasons[key])

    # Asking for the longer tenant id too lists both, each under its own prefix.
    both = listing(local_aws, tenants=("acme", "acme-eu"))
    assert {o.parsed.tenant for o in both.objects} == {"acme", "acme-eu"}
    assert {o.key for o in both.objects if o.parsed.tenant == "acme-eu"} == {k for k in bleed if "/acme-eu/" in k}


def test_cluster_application_and_pod_filters(local_aws: LocalEnvironment) -> None:
    layout = [
        ("prod-1", "payment-service", "pay-a"),
        ("prod-1", "payment-service", "pay-b"),
        ("prod-1", "frontend", "web-a"),
        ("prod-2", "payment-service", "pay-a"),
        ("prod-2", "checkout", "chk-a"),
    ]
    keys: dict[str, tuple[str, str, str]] = {}
    for cluster, app, pod in layout:
        for m in range(0, 60, 10):
            keys[format_key(cluster, "acme", app, pod, SINCE + timedelta(minutes=m), uid(m))] = (cluster, app, pod)
    # A cluster without the tenant at all: discovered, but it costs one tenant-prefix call and finds nothing.
    keys[format_key("staging", "globex", "frontend", "web-z", SINCE, uid(0))] = ("staging", "frontend", "web-z")
    put_all(aws.client("s3"), local_aws.names.bucket, keys)

    def expect(cluster: str | None = None, app: str | None = None, pod: str | None = None) -> set[str]:
        return {
            k
            for k, (c, a, p) in keys.items()
            if "/acme/" in k and (cluster in (None, c)) and (app in (None, a)) and (pod in (None, p))
        }

    everything = listing(local_aws)
    assert listed_keys(everything) == expect()
    assert len(everything.pods) == 5

    prod2 = listing(local_aws, clusters=("prod-2",))
    assert listed_keys(prod2) == expect(cluster="prod-2")
    assert prod2.list_calls < everything.list_calls  # prod-1 was never walked

    assert listed_keys(listing(local_aws, applications=("payment-service",))) == expect(app="payment-service")
    assert listed_keys(listing(local_aws, pods=("pay-a",))) == expect(pod="pay-a")
    assert listed_keys(listing(local_aws, clusters=("prod-1",), pods=("pay-a", "web-a"))) == (
        expect(cluster="prod-1", pod="pay-a") | expect(cluster="prod-1", pod="web-a")
    )
    assert listed_keys(listing(local_aws, applications=("checkout",), clusters=("prod-1",))) == set()
    # Filters match names exactly: no prefix matching of applications or pods.
    assert listed_keys(listing(local_aws, applications=("payment",))) == set()
    assert listed_keys(listing(local_aws, pods=("pay",))) == set()


def test_the_reports_prefix_is_not_a_cluster(local_aws: LocalEnvironment) -> None:
    pods = [("payment-service", "pay-a"), ("payment-service", "pay-b"), ("frontend", "web-a")]
    keys = {
        format_key("prod-1", "acme", app, pod, SINCE + timedelta(minutes=m), uid(m))
        for app, pod in pods
        for m in (0, 30)
    }
    # What backfills write next to the clusters, including a report filed under a tenant's name.
    reports = [f"{REPORTS_PREFIX}replay-20240311T120000Z.json", f"{REPORTS_PREFIX}acme/replay-20240311T120000Z.json"]
    put_all(aws.client("s3"), local_aws.names.bucket, [*keys, *reports])

    result = listing(local_aws)

    assert listed_keys(result) == keys
    assert result.malformed == []
    # Root + the one cluster's tenant prefix, then one call per application and per pod: reports/ costs none.
    applications = {app for app, _ in pods}
    assert result.list_calls == 2 + len(applications) + len(pods)
