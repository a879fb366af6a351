"""List a tenant's objects for a time window, costing LIST calls in proportion to pods, not objects.

The tenant is the key's second segment, so clusters are discovered first (Delimiter='/'), then each
`cluster/tenant/` prefix is walked down to its pods, and each pod prefix is listed from a StartAfter
derived from the window (CONTRACTS.md §1). Listing stops at the window's upper bound. Independent
prefixes are listed in parallel. Plain S3 calls only: no Ray here, so the inventory builder and the
dry-run reuse it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pipeline.keys import (
    DEFAULT_WRITE_SLACK,
    InvalidKeyError,
    ObjectKey,
    listing_bounds,
    parse_key,
    tenant_prefix,
)
from pipeline.storage import REPORTS_PREFIX


@dataclass(frozen=True)
class ListedObject:
    key: str
    size: int
    etag: str
    last_modified: datetime
    parsed: ObjectKey


@dataclass(frozen=True)
class ListingFilter:
    tenants: tuple[str, ...]
    since: datetime
    until: datetime
    clusters: tuple[str, ...] = ()
    applications: tuple[str, ...] = ()
    pods: tuple[str, ...] = ()
    slack: timedelta = DEFAULT_WRITE_SLACK


@dataclass
class Listing:
    """Everything one listing found: objects per pod in key (= time) order, and what it could not use."""

    pods: dict[str, list[ListedObject]] = field(default_factory=dict)  # pod prefix → objects
    malformed: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    list_calls: int = 0

    @property
    def objects(self) -> Iterator[ListedObject]:
        for objs in self.pods.values():
            yield from objs


class _Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1  # list.append-like increments are atomic enough under the GIL for a statistic


def _child_prefixes(s3: Any, bucket: str, prefix: str, count: Callable[[], None]) -> tuple[list[str], list[str]]:
    """The prefixes one level below `prefix`, and the objects sitting directly at that level."""
    prefixes: list[str] = []
    loose: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        count()
        prefixes.extend(p["Prefix"] for p in page.get("CommonPrefixes", []))
        loose.extend(o["Key"] for o in page.get("Contents", []))
    return prefixes, loose


def _segment(prefix: str) -> str:
    return prefix.rstrip("/").rsplit("/", 1)[-1]


def list_window(s3: Any, bucket: str, flt: ListingFilter, max_workers: int = 16) -> Listing:
    """All objects of the filter's tenants whose write time can hold events inside the window."""
    count = _Counter()
    listing = Listing()
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="list") as pool:
        # Backfill reports share the bucket's top level with the clusters; taken for a cluster, reports/
        # would cost a LIST per tenant, and a report under reports/<tenant>/ would be listed as malformed.
        roots = _child_prefixes(s3, bucket, "", count)[0]
        clusters = [_segment(p) for p in roots if p != REPORTS_PREFIX]
        if flt.clusters:
            clusters = [c for c in clusters if c in flt.clusters]
        tenant_prefixes = [tenant_prefix(c, t) for c in clusters for t in flt.tenants]

        app_prefixes = _expand(pool, s3, bucket, tenant_prefixes, flt.applications, count, listing.malformed)
        pod_prefixes = _expand(pool, s3, bucket, app_prefixes, flt.pods, count, listing.malformed)

        def list_pod(prefix: str) -> tuple[str, list[ListedObject], list[tuple[str, str]]]:
            start, stop = listing_bounds(prefix, flt.since, flt.until, flt.slack)
            objs: list[ListedObject] = []
            bad: list[tuple[str, str]] = []
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, StartAfter=start)
            for page in pages:
                count()
                done = _collect(page.get("Contents", []), stop, objs, bad)
                if done:
                    break
            return prefix, objs, bad

        for prefix, objs, bad in pool.map(list_pod, pod_prefixes):
            if objs:
                listing.pods[prefix] = objs
            listing.malformed.extend(bad)
    listing.list_calls = count.calls
    return listing


def _expand(
    pool: ThreadPoolExecutor,
    s3: Any,
    bucket: str,
    prefixes: Iterable[str],
    wanted: tuple[str, ...],
    count: Callable[[], None],
    malformed: list[tuple[str, str]],
) -> list[str]:
    """The next level of prefixes under each prefix, keeping only `wanted` names when given.

    An object sitting above the pod level cannot be routed to a stream; it is reported, not skipped
    silently.
    """
    out: list[str] = []
    for children, loose in pool.map(lambda p: _child_prefixes(s3, bucket, p, count), prefixes):
        out.extend(c for c in children if not wanted or _segment(c) in wanted)
        malformed.extend((k, "object is not under a cluster/tenant/application/pod/ prefix") for k in loose)
    return out


def _collect(contents: list[dict[str, Any]], stop: str, objs: list[ListedObject], bad: list[tuple[str, str]]) -> bool:
    """Append the page's objects up to the stop key; True once past it (nothing later can be in the window)."""
    for item in contents:
        key = item["Key"]
        if key > stop:
            return True
        try:
            parsed = parse_key(key)
        except InvalidKeyError as exc:
            bad.append((key, exc.reason))
            continue
        objs.append(
            ListedObject(
                key, int(item.get("Size", 0)), str(item.get("ETag", "")).strip('"'), item["LastModified"], parsed
            )
        )
    return False
