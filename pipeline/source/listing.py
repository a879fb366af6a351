"""List a tenant's objects for a time window, costing LIST calls in proportion to pods, not objects.

The tenant is the key's second segment, so clusters are discovered first (Delimiter='/'), then each
`cluster/tenant/` prefix is walked down to its pods, and each pod prefix is listed from a StartAfter
derived from the window (CONTRACTS.md §1). Listing stops at the window's upper bound.

The levels are separate functions so that the replay can run the expensive ones (pods, and the objects
under them) wherever it has workers, level by level, without ever holding the whole window
(`pipeline.replay.survey`); `list_window` composes them in one process for the inventory and the
benchmarks. Plain S3 calls only: no Ray here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from pipeline.keys import (
    DEFAULT_WRITE_SLACK,
    InvalidKeyError,
    ObjectKey,
    listing_bounds,
    parse_key,
    tenant_prefix,
)
from pipeline.storage import REPORTS_PREFIX

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import ObjectTypeDef

LOOSE_OBJECT = "object is not under a cluster/tenant/application/pod/ prefix"


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
class Prefixes:
    """One level of the key hierarchy: the prefixes found below some parents, and objects found loose there."""

    prefixes: list[str] = field(default_factory=list)
    malformed: list[tuple[str, str]] = field(default_factory=list)  # (key, reason)
    list_calls: int = 0

    def extend(self, other: Prefixes) -> None:
        self.prefixes.extend(other.prefixes)
        self.malformed.extend(other.malformed)
        self.list_calls += other.list_calls


@dataclass
class PodListing:
    """One pod's objects in the window, in key (= time) order."""

    prefix: str
    objects: list[ListedObject] = field(default_factory=list)
    malformed: list[tuple[str, str]] = field(default_factory=list)
    list_calls: int = 0


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


def _segment(prefix: str) -> str:
    return prefix.rstrip("/").rsplit("/", 1)[-1]


def children(s3: S3Client, bucket: str, prefix: str, wanted: tuple[str, ...] = ()) -> Prefixes:
    """The prefixes one level below `prefix` (only `wanted` names when given).

    An object sitting directly at that level cannot be routed to a stream; it is reported, not skipped
    silently.
    """
    level = Prefixes()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/"):
        level.list_calls += 1
        found = (p["Prefix"] for p in page.get("CommonPrefixes", []))
        level.prefixes.extend(p for p in found if not wanted or _segment(p) in wanted)
        level.malformed.extend((o["Key"], LOOSE_OBJECT) for o in page.get("Contents", []))
    return level


def tenant_prefixes(s3: S3Client, bucket: str, flt: ListingFilter) -> tuple[list[str], int]:
    """(every `cluster/tenant/` prefix the filter asks for, LIST calls): one listing of the bucket's top level."""
    roots = children(s3, bucket, "")
    # Backfill reports share the bucket's top level with the clusters; taken for a cluster, reports/
    # would cost a LIST per tenant, and a report under reports/<tenant>/ would be listed as malformed.
    clusters = [_segment(p) for p in roots.prefixes if p != REPORTS_PREFIX]
    if flt.clusters:
        clusters = [c for c in clusters if c in flt.clusters]
    return [tenant_prefix(c, t) for c in clusters for t in flt.tenants], roots.list_calls


def list_pod(s3: S3Client, bucket: str, prefix: str, flt: ListingFilter) -> PodListing:
    """A pod's objects that can hold events of the window: from a StartAfter bound to the stop key."""
    start, stop = listing_bounds(prefix, flt.since, flt.until, flt.slack)
    pod = PodListing(prefix)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, StartAfter=start):
        pod.list_calls += 1
        if _collect(page.get("Contents", []), stop, pod):
            break  # past the stop key: nothing later can be in the window
    return pod


def list_window(s3: S3Client, bucket: str, flt: ListingFilter, max_workers: int = 16) -> Listing:
    """All objects of the filter's tenants whose write time can hold events inside the window, in memory."""
    listing = Listing()
    with ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="list") as pool:
        tenants, listing.list_calls = tenant_prefixes(s3, bucket, flt)
        apps = descend(pool, s3, bucket, tenants, flt.applications)
        pods = descend(pool, s3, bucket, apps.prefixes, flt.pods)
        for level in (apps, pods):
            listing.malformed.extend(level.malformed)
            listing.list_calls += level.list_calls
        for pod in pool.map(lambda p: list_pod(s3, bucket, p, flt), pods.prefixes):
            if pod.objects:
                listing.pods[pod.prefix] = pod.objects
            listing.malformed.extend(pod.malformed)
            listing.list_calls += pod.list_calls
    return listing


def descend(
    pool: ThreadPoolExecutor, s3: S3Client, bucket: str, parents: Iterable[str], wanted: tuple[str, ...] = ()
) -> Prefixes:
    """The prefixes one level below each parent, listed in parallel on `pool`."""
    level = Prefixes()
    for found in pool.map(lambda p: children(s3, bucket, p, wanted), parents):
        level.extend(found)
    return level


def _collect(contents: Sequence[ObjectTypeDef], stop: str, pod: PodListing) -> bool:
    """Append the page's objects up to the stop key; True once past it."""
    for item in contents:
        key = item["Key"]
        if key > stop:
            return True
        try:
            parsed = parse_key(key)
        except InvalidKeyError as exc:
            pod.malformed.append((key, exc.reason))
            continue
        pod.objects.append(
            ListedObject(
                key, int(item.get("Size", 0)), str(item.get("ETag", "")).strip('"'), item["LastModified"], parsed
            )
        )
    return False
