"""UnitRunner (the body of a Ray replay worker) without Ray: real moto S3, DynamoDB, STS and CloudWatch.

What must arrive is computed from the generator's manifest and the contracts (stream =
{application}-{pod}-{UTC date of the event}), not from the code under test.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from devstack.generator import GeneratorConfig, Manifest, write_dataset
from devstack.provision import LocalEnvironment
from devstack.readback import read_group
from pipeline import aws
from pipeline.delivery.routing import TimeWindow
from pipeline.ledger import Ledger
from pipeline.memory import MemoryBudget, decoded_footprint
from pipeline.replay.plan import WorkUnit, pack_units
from pipeline.replay.report import INTERRUPTED
from pipeline.replay.workers import UnitRunner
from pipeline.source.listing import ListingFilter, list_window
from pipeline.timespec import to_ms

pytestmark = pytest.mark.integration

Events = Counter[tuple[str, int, str]]


def stream_of(key: str, ts_ms: int) -> str:
    _, _, app, pod, _ = key.split("/", 4)
    return f"{app}-{pod}-{datetime.fromtimestamp(ts_ms / 1000, UTC):%Y-%m-%d}"


def expected(manifest: Manifest, keys: set[str], lo: int = 0, hi: int = 1 << 62) -> Events:
    out: Events = Counter()
    for o in manifest.objects:
        if o.key in keys:
            assert o.expected is not None
            out.update((stream_of(o.key, ts), ts, msg) for ts, msg in o.expected if lo <= ts < hi)
    return out


def delivered(local: LocalEnvironment, tenant: str) -> Events:
    group = read_group(local.tenant_logs(tenant), local.tenant(tenant).log_group)
    return Counter((stream, ts, msg) for stream, evs in group.items() for ts, msg in evs)


def ledger_keys(local: LocalEnvironment, tenant: str) -> dict[str, int]:
    return {e.object_key: e.events_delivered for e in Ledger(local.names.ledger_table).entries(tenant)}


def write(local: LocalEnvironment, since: datetime, until: datetime, **kw: object) -> tuple[Manifest, WorkUnit]:
    """Generated objects in moto, and one work unit holding all of them, built the way the job builds it."""
    cfg = GeneratorConfig(since=since, until=until, events_per_object=25, seed=5, **kw)  # type: ignore[arg-type]
    manifest = write_dataset(cfg, local.names.bucket, s3=local.client("s3"), workers=8)
    flt = ListingFilter(tenants=cfg.tenants, since=since, until=until)
    listing = list_window(aws.client("s3"), local.names.bucket, flt)
    units = pack_units(listing.pods, workers=1)
    assert len(units) == 1
    assert {o.key for o in units[0].objects} == set(manifest.keys)
    return manifest, units[0]


@pytest.fixture
def span() -> tuple[datetime, datetime]:
    now = datetime.now(UTC).replace(microsecond=0)
    return now - timedelta(hours=2), now - timedelta(hours=1)


def test_cloudwatch_unit_is_delivered_and_recorded_in_the_ledger(
    local_aws: LocalEnvironment, span: tuple[datetime, datetime]
) -> None:
    since, until = span
    manifest, unit = write(
        local_aws, since, until, applications=("payment-service", "frontend"), pods_per_app=2, objects_per_pod=3
    )
    window = TimeWindow(to_ms(since), to_ms(until) + 1)
    runner = UnitRunner(local_aws.settings, "cloudwatch", window)
    try:
        results = [r.to_dict() for r in runner.run(unit)]
    finally:
        runner.close()

    by_key = {r["key"]: r for r in results}
    assert set(by_key) == set(manifest.keys)
    assert {r["status"] for r in results} == {"delivered"}, [r["reason"] for r in results]
    for o in manifest.objects:
        assert by_key[o.key]["events_delivered"] == o.expected_count
        assert by_key[o.key]["events_filtered"] == 0
    assert delivered(local_aws, "acme") == expected(manifest, set(manifest.keys))
    # Every object is in the ledger, at its ETag, with the count that really went out.
    entries = {e.object_key: e for e in Ledger(local_aws.names.ledger_table).entries("acme")}
    assert set(entries) == set(manifest.keys)
    for o in manifest.objects:
        assert entries[o.key].etag == o.etag.strip('"')
        assert entries[o.key].events_delivered == o.expected_count
        assert entries[o.key].source == "replay"

    # Running the same unit again sends nothing twice: the ledger says it is done.
    again = UnitRunner(local_aws.settings, "cloudwatch", window)
    try:
        second = [r.to_dict() for r in again.run(unit)]
    finally:
        again.close()
    assert {r["status"] for r in second} == {"skipped"}
    assert {r["reason"] for r in second} == {"already delivered (ledger)"}
    assert delivered(local_aws, "acme") == expected(manifest, set(manifest.keys))


def test_stopping_skips_the_rest_of_the_unit_and_leaves_it_out_of_the_ledger(
    local_aws: LocalEnvironment, span: tuple[datetime, datetime]
) -> None:
    since, until = span
    manifest, unit = write(local_aws, since, until, objects_per_pod=5)  # one pod: objects go in key order
    window = TimeWindow(to_ms(since), to_ms(until) + 1)
    runner = UnitRunner(local_aws.settings, "cloudwatch", window)
    deliver = runner.deliverer.deliver

    def deliver_then_stop(*args: Any) -> Any:
        # The stop request arrives while the first object is being delivered (as `DeliveryWorker.stop` does).
        runner.stopping.set()
        return deliver(*args)

    runner.deliverer.deliver = deliver_then_stop  # type: ignore[method-assign]
    try:
        results = [r.to_dict() for r in runner.run(unit)]
    finally:
        runner.close()

    keys = [o.key for o in unit.objects]
    assert [r["key"] for r in results] == keys
    first, rest = results[0], results[1:]
    assert first["status"] == "delivered"  # the object in flight is finished, never cut in half
    assert [(r["status"], r["reason"]) for r in rest] == [("skipped", INTERRUPTED)] * 4
    assert all(r["events_delivered"] == 0 and r["bytes_read"] == 0 for r in rest)
    assert ledger_keys(local_aws, "acme") == {keys[0]: manifest.by_key()[keys[0]].expected_count}
    assert delivered(local_aws, "acme") == expected(manifest, {keys[0]})

    # A re-run resumes exactly where it stopped: the first object is skipped by the ledger, the rest sent.
    resumed = UnitRunner(local_aws.settings, "cloudwatch", window)
    try:
        after = [r.to_dict() for r in resumed.run(unit)]
    finally:
        resumed.close()
    assert [r["status"] for r in after] == ["skipped"] + ["delivered"] * 4
    assert set(ledger_keys(local_aws, "acme")) == set(keys)
    assert delivered(local_aws, "acme") == expected(manifest, set(keys))


def test_stop_before_the_unit_starts_touches_nothing(
    local_aws: LocalEnvironment, span: tuple[datetime, datetime]
) -> None:
    since, until = span
    _, unit = write(local_aws, since, until, pods_per_app=2, objects_per_pod=2)
    runner = UnitRunner(local_aws.settings, "cloudwatch", TimeWindow(to_ms(since), to_ms(until) + 1))
    runner.stopping.set()
    try:
        results = [r.to_dict() for r in runner.run(unit)]
    finally:
        runner.close()
    assert [(r["status"], r["reason"], r["tenant"]) for r in results] == [("skipped", INTERRUPTED, "acme")] * 4
    assert ledger_keys(local_aws, "acme") == {}
    assert delivered(local_aws, "acme") == Counter()


def test_null_sink_decodes_and_filters_but_sends_nothing_and_writes_no_ledger(
    local_aws: LocalEnvironment, span: tuple[datetime, datetime]
) -> None:
    since, until = span
    manifest, unit = write(local_aws, since, until, pods_per_app=2, objects_per_pod=3)
    # Only the first half hour: the rest of each object's events are counted as filtered.
    lo, hi = to_ms(since), to_ms(since + timedelta(minutes=30))
    runner = UnitRunner(local_aws.settings, "null", TimeWindow(lo, hi))
    try:
        results = [r.to_dict() for r in runner.run(unit)]
    finally:
        runner.close()

    by_key = {r["key"]: r for r in results}
    for o in manifest.objects:
        inside = sum(1 for ts, _ in o.expected or [] if lo <= ts < hi)
        r = by_key[o.key]
        assert r["status"] == "delivered"
        assert (r["events_delivered"], r["events_filtered"]) == (inside, o.expected_count - inside)
        assert r["bytes_read"] == o.size
    assert 0 < sum(r["events_delivered"] for r in results) < sum(o.expected_count for o in manifest.objects)
    assert ledger_keys(local_aws, "acme") == {}
    assert delivered(local_aws, "acme") == Counter()


@pytest.mark.parametrize("tight", [True, False], ids=["budget-of-one-object", "default-budget"])
def test_the_memory_budget_bounds_the_objects_a_worker_decodes_at_once(
    local_aws: LocalEnvironment, span: tuple[datetime, datetime], tight: bool
) -> None:
    since, until = span
    manifest, unit = write(local_aws, since, until, applications=("payment-service",), pods_per_app=6)
    window = TimeWindow(to_ms(since), to_ms(until) + 1)
    inside: list[int] = []
    lock = threading.Lock()
    gauge = [0]

    runner = UnitRunner(local_aws.settings, "cloudwatch", window)
    deliver = runner.deliverer.deliver

    def slow_deliver(*args: Any) -> Any:
        # Count the objects being delivered at the same moment (the budget is held around each delivery).
        with lock:
            gauge[0] += 1
            inside.append(gauge[0])
        time.sleep(0.2)
        try:
            return deliver(*args)
        finally:
            with lock:
                gauge[0] -= 1

    runner.deliverer.deliver = slow_deliver  # type: ignore[method-assign]
    if tight:
        runner.budget = MemoryBudget(max(decoded_footprint(o.size) for o in unit.objects))
    try:
        results = [r.to_dict() for r in runner.run(unit)]
    finally:
        runner.close()
    assert [r["status"] for r in results] == ["delivered"] * len(unit.objects)
    assert delivered(local_aws, "acme") == expected(manifest, set(manifest.keys))
    if tight:
        assert max(inside) == 1  # one object's worth of budget: one object at a time
    else:
        assert max(inside) > 1  # small objects under the default budget: pods go in parallel


def test_a_pods_small_objects_share_full_batches_and_each_is_recorded_once_all_its_events_are_in(
    local_aws: LocalEnvironment, span: tuple[datetime, datetime]
) -> None:
    since, until = span
    manifest, unit = write(
        local_aws, since, until, applications=("payment-service",), pods_per_app=3, objects_per_pod=12
    )
    streams = {stream_of(o.key, ts) for o in manifest.objects for ts, _ in o.expected or []}
    runner = UnitRunner(local_aws.settings, "cloudwatch", TimeWindow(to_ms(since), to_ms(until) + 1))
    try:
        results = [r.to_dict() for r in runner.run(unit)]
    finally:
        runner.close()

    assert [r["status"] for r in results] == ["delivered"] * 36
    assert delivered(local_aws, "acme") == expected(manifest, set(manifest.keys))  # every event, once
    assert ledger_keys(local_aws, "acme") == {o.key: o.expected_count for o in manifest.objects}
    # 36 objects of 25 events in 3 streams: 3 calls, not 36, and the minimum says the same.
    cw = [d for r in results for d in r["deliveries"]]
    assert sum(d["requests"] for d in cw) == sum(d["requests_minimum"] for d in cw) == len(streams) == 3
    assert sum(d["events_delivered"] for d in cw) == sum(o.expected_count for o in manifest.objects)
