"""Replay planning: pods packed whole into balanced units, and the plan's skips, failures and 14-day share.

Expectations are written from the plan's contract (CONTRACTS.md §1, §3, §5), not read back from the code:
the 14-day limit is spelled out here, and balance is checked against the greedy (LPT) bound.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.coverage import WHOLE, Coverage
from pipeline.delivery.results import LEDGER_SKIP, ObjectResult, Status
from pipeline.delivery.routing import Routing
from pipeline.keys import format_key, parse_key
from pipeline.replay.plan import PlanTotals, UnitPacker, WorkUnit, pack_units, route_pods, spec_of, window_totals
from pipeline.source.listing import ListedObject, Listing
from pipeline.tenants import InvalidDelivery, Tenant, parse_delivery

NOW = datetime(2024, 6, 20, 12, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)
FOURTEEN_DAYS = timedelta(days=14)  # CloudWatch's age limit, written out on purpose
MIN_UNIT = 256 * 1024
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def obj(
    pod: str,
    write_time: datetime,
    size: int = 1000,
    tenant: str = "acme",
    app: str = "payment-service",
    cluster: str = "prod-1",
    uid: str | None = None,
) -> ListedObject:
    key = format_key(cluster, tenant, app, pod, write_time, uid)
    return ListedObject(key, size, "etag-" + key[-8:], write_time, parse_key(key))


def pod_objects(pod: str, sizes: list[int], start: datetime = NOW - DAY, **kw: str) -> list[ListedObject]:
    """Objects of one pod in key (= write time) order, as the listing returns them."""
    objs = [
        obj(pod, start + timedelta(seconds=30 * i), size, uid=f"{i:08d}-0000-4000-8000-000000000000", **kw)
        for i, size in enumerate(sizes)
    ]
    assert [o.key for o in objs] == sorted(o.key for o in objs)
    return objs


def prefix_of(o: ListedObject) -> str:
    return o.key.rsplit("/", 1)[0] + "/"


def listing_of(*pods: list[ListedObject], malformed: list[tuple[str, str]] | None = None) -> Listing:
    return Listing(pods={prefix_of(objs[0]): objs for objs in pods}, malformed=list(malformed or []), list_calls=7)


def tenant(tenant_id: str = "acme", **extra: object) -> Tenant:
    """A tenant with the one CloudWatch delivery `cloudwatch`, as a v1 table (or a plain v2 one) holds it."""
    delivery = parse_delivery(
        {
            "tenant_id": tenant_id,
            "delivery_id": "cloudwatch",
            "type": "cloudwatch",
            "log_distribution_role_arn": f"arn:aws:iam::111111111111:role/CustomerLogDistribution-{tenant_id}",
            "log_group_name": f"/logs/{tenant_id}",
            "target_region": "us-east-1",
            **extra,
        }
    )
    return Tenant(tenant_id, (delivery,))


# ---------------------------------------------------------------------------------------------------------
# pack_units

pod_sizes = st.lists(st.lists(st.integers(0, 5_000_000), min_size=1, max_size=12), min_size=1, max_size=40)


def build_pods(sizes: list[list[int]]) -> dict[str, list[ListedObject]]:
    pods = {}
    for i, objs in enumerate(sizes):
        listed = pod_objects(f"pod-{i:03d}", objs)
        pods[prefix_of(listed[0])] = listed
    return pods


def unit_of_key(units: list[WorkUnit]) -> dict[str, int]:
    return {o.key: u.unit_id for u in units for o in u.objects}


@PROPS
@given(sizes=pod_sizes, workers=st.integers(1, 16))
def test_every_object_is_in_exactly_one_unit(sizes: list[list[int]], workers: int) -> None:
    pods = build_pods(sizes)
    units = pack_units(pods, workers)
    keys = [o.key for u in units for o in u.objects]
    assert Counter(keys) == Counter(o.key for objs in pods.values() for o in objs)
    assert len({u.unit_id for u in units}) == len(units)
    for u in units:
        assert u.objects, "a unit with nothing to do"
        assert u.bytes == sum(o.size for o in u.objects)
    # Size, ETag and LastModified travel with the key, so a worker needs no second lookup.
    listed = {o.key: o for objs in pods.values() for o in objs}
    for u in units:
        for spec in u.objects:
            src = listed[spec.key]
            assert (spec.size, spec.etag, spec.last_modified) == (src.size, src.etag, src.last_modified.timestamp())


@PROPS
@given(sizes=pod_sizes, workers=st.integers(1, 16))
def test_a_pod_stays_whole_and_in_key_order(sizes: list[list[int]], workers: int) -> None:
    pods = build_pods(sizes)
    units = pack_units(pods, workers)
    where = unit_of_key(units)
    for prefix, objs in pods.items():
        assert len({where[o.key] for o in objs}) == 1, f"pod {prefix} split across units"
        unit = next(u for u in units if u.unit_id == where[objs[0].key])
        in_unit = [o.key for o in unit.objects if o.key.startswith(prefix)]
        assert in_unit == [o.key for o in objs]


@PROPS
@given(sizes=pod_sizes, workers=st.integers(1, 16))
def test_biggest_units_come_first(sizes: list[list[int]], workers: int) -> None:
    units = pack_units(build_pods(sizes), workers)
    assert [u.bytes for u in units] == sorted((u.bytes for u in units), reverse=True)


@PROPS
@given(
    sizes=st.lists(st.lists(st.integers(10_000, 200_000), min_size=1, max_size=5), min_size=60, max_size=150),
    workers=st.integers(1, 6),
)
def test_units_are_balanced_when_pods_are_small(sizes: list[list[int]], workers: int) -> None:
    """Many pods, each small next to the unit target: greedy packing leaves any two units within one pod."""
    pods = build_pods(sizes)
    units = pack_units(pods, workers)
    pod_bytes = [sum(o.size for o in objs) for objs in pods.values()]
    total = sum(pod_bytes)
    loads = [u.bytes for u in units]
    # Greedy assignment (each pod to the lightest unit) bounds the spread by the biggest pod.
    assert max(loads) - min(loads) <= max(pod_bytes)
    # And the biggest unit is within that bound of a perfect split.
    assert max(loads) <= total / len(units) + max(pod_bytes)
    assert min(loads) > 0
    # A window big enough to give every worker several units of the minimum size does so.
    if total >= workers * 4 * MIN_UNIT:
        assert len(units) >= workers


@PROPS
@given(
    tenant_sizes=st.lists(
        st.lists(st.lists(st.integers(10_000, 2_000_000), min_size=1, max_size=5), min_size=1, max_size=30),
        min_size=1,
        max_size=4,
    ),
    workers=st.integers(1, 8),
)
def test_a_unit_holds_one_tenant_and_each_tenants_units_stay_balanced(
    tenant_sizes: list[list[list[int]]], workers: int
) -> None:
    """One tenant a unit, so the scheduler can share workers between tenants; within a tenant, greedy packing
    keeps its units within one pod of each other, as for a single tenant."""
    pods: dict[str, list[ListedObject]] = {}
    for t, sizes in enumerate(tenant_sizes):
        for i, objs in enumerate(sizes):
            listed = pod_objects(f"pod-{i:03d}", objs, tenant=f"t{t}")
            pods[prefix_of(listed[0])] = listed
    units = pack_units(pods, workers)
    assert Counter(o.key for u in units for o in u.objects) == Counter(o.key for objs in pods.values() for o in objs)
    for u in units:
        assert {o.tenant for o in u.objects} == {u.tenant}
    for t in {u.tenant for u in units}:
        loads = [u.bytes for u in units if u.tenant == t]
        biggest_pod = max(sum(o.size for o in objs) for objs in pods.values() if objs[0].parsed.tenant == t)
        assert max(loads) - min(loads) <= biggest_pod


def test_units_target_several_per_worker_for_a_big_window() -> None:
    # 200 pods of 4 MiB: 800 MiB, far over the per-unit minimum, so each worker gets about four units.
    pods = build_pods([[1 << 20] * 4 for _ in range(200)])
    units = pack_units(pods, workers=5)
    assert len(units) == 20
    assert {u.bytes for u in units} == {10 * (4 << 20)}


def test_tiny_windows_are_not_split_into_pointless_units() -> None:
    pods = build_pods([[100] * 3 for _ in range(10)])
    units = pack_units(pods, workers=8)
    assert len(units) == 1
    assert len(units[0].objects) == 30


def test_no_pods_no_units() -> None:
    assert pack_units({}, workers=4) == []


# ---------------------------------------------------------------------------------------------------------
# The streaming planner: pods routed as a Surveyor routes them, folded and packed as the Scheduler does


@dataclass
class Planned:
    """What the streaming planner makes of a listing: the window's figures, its units, the objects it settled.

    Attributes other than these are the figures' (`PlanTotals`), so a test reads them as the report does."""

    totals: PlanTotals
    units: list[WorkUnit] = field(default_factory=list)
    settled: list[ObjectResult] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.totals, name)

    @property
    def skipped_keys(self) -> list[tuple[str, str]]:
        return [(r.key, r.reason) for r in self.settled if r.status is Status.SKIPPED]

    @property
    def failed_keys(self) -> list[tuple[str, str]]:
        return [(r.key, r.reason) for r in self.settled if r.status is Status.FAILED]


def stream_plan(
    listing: Listing,
    tenants: Mapping[str, Tenant | str],
    ledger: Mapping[str, Mapping[str, Coverage]],
    since: datetime,
    until: datetime,
    workers: int,
    now: datetime,
    events_per_byte: float = 0.0,
    routing: Routing | None = None,
) -> Planned:
    """The listing surveyed in one go (`route_pods`, the Surveyor's routing), then its figures folded into the
    window's and its pods handed to a UnitPacker one by one, as `Scheduler._surveyed` does with a survey."""
    routed = route_pods(listing.pods, listing.malformed, tenants, ledger, since, until, now, events_per_byte, routing)
    routed.totals.list_calls = listing.list_calls
    routed.totals.pods_listed = len(listing.pods)
    totals = window_totals(since, until, now)
    totals.add(routed.totals)
    totals.pods_found = len(listing.pods)
    totals.listing_complete = True
    packer = UnitPacker(workers)
    units = [u for prefix, objs in routed.todo.items() for u in packer.add(prefix, [spec_of(o) for o in objs])]
    units += packer.flush()
    totals.work_units = len(units)
    return Planned(totals, units, routed.settled)


def plan_for(
    listing: Listing,
    tenants: dict[str, Tenant | str],
    delivered: set[str] | None = None,
    since: datetime = NOW - DAY,
    until: datetime = NOW,
    events_per_byte: float = 0.0,
) -> Planned:
    """A plan where `delivered` names the keys the ledger has for the delivery `cloudwatch`."""
    ledger = {k: {"cloudwatch": WHOLE} for k in delivered or ()}
    return stream_plan(listing, tenants, ledger, since, until, 2, NOW, events_per_byte)


def test_disabled_tenant_is_skipped_with_its_reason() -> None:
    acme = pod_objects("api-1", [100, 200])
    initech = pod_objects("api-1", [300], tenant="initech")
    plan = plan_for(listing_of(acme, initech), {"acme": tenant(), "initech": tenant("initech", enabled=False)})
    assert plan.skipped_keys == [(o.key, "delivery 'cloudwatch' of tenant 'initech' is disabled") for o in initech]
    assert [o.key for u in plan.units for o in u.objects] == [o.key for o in acme]
    assert plan.failed_keys == []
    assert ("initech", "payment-service") not in plan.by_tenant_app


def test_desired_logs_filter_is_case_insensitive() -> None:
    # The config says "Payment-Service"; the key says "payment-service", another app says "FrontEnd".
    pay = pod_objects("pay-1", [10, 20], app="payment-service")
    front = pod_objects("web-1", [30], app="FrontEnd")
    other = pod_objects("chk-1", [40, 50], app="checkout")
    cfg = tenant(desired_logs=["Payment-Service", "frontend"])
    plan = plan_for(listing_of(pay, front, other), {"acme": cfg})
    planned = {o.key for u in plan.units for o in u.objects}
    assert planned == {o.key for o in pay + front}
    assert plan.skipped_keys == [
        (o.key, "application 'checkout' is not in desired_logs of delivery 'cloudwatch'") for o in other
    ]
    assert set(plan.by_tenant_app) == {("acme", "payment-service"), ("acme", "FrontEnd")}


def test_unknown_tenant_fails_with_the_lookup_reason() -> None:
    ghost = pod_objects("api-1", [1, 2, 3], tenant="ghost")
    acme = pod_objects("api-1", [5])
    reason = "unknown tenant 'ghost': no entry in tenant-configs"
    plan = plan_for(listing_of(ghost, acme), {"acme": tenant(), "ghost": reason})
    assert plan.failed_keys == [(o.key, reason) for o in ghost]
    assert plan.objects_to_deliver == 1


def test_a_tenant_that_was_never_looked_up_fails_instead_of_vanishing() -> None:
    stray = pod_objects("api-1", [1], tenant="stray")
    plan = plan_for(listing_of(stray), {"acme": tenant()})
    assert [k for k, _ in plan.failed_keys] == [stray[0].key]
    assert "stray" in plan.failed_keys[0][1]
    assert plan.units == []


def test_malformed_keys_from_the_listing_are_failures_and_are_counted_as_listed() -> None:
    acme = pod_objects("api-1", [1, 2])
    bad = [("prod-1/acme//pod/x.json.gz", "contains an empty segment")]
    plan = plan_for(listing_of(acme, malformed=bad), {"acme": tenant()})
    assert plan.failed_keys == bad
    assert plan.objects_listed == 3
    assert plan.list_calls == 7


def test_ledger_delivered_keys_are_skipped_and_counted() -> None:
    a = pod_objects("api-1", [100, 200, 300, 400])
    b = pod_objects("api-2", [500, 600])
    delivered = {a[0].key, a[2].key, b[0].key, b[1].key}
    plan = plan_for(listing_of(a, b), {"acme": tenant()}, delivered)
    assert sorted(k for k, r in plan.skipped_keys if r == LEDGER_SKIP) == sorted(delivered)
    assert plan.skipped_ledger == 4
    # The pod whose objects were all delivered produces no work at all; the other keeps its order.
    assert [o.key for u in plan.units for o in u.objects] == [a[1].key, a[3].key]
    assert plan.bytes_to_deliver == 200 + 400
    stats = plan.by_tenant_app[("acme", "payment-service")]
    assert (stats.objects, stats.bytes, stats.already_delivered) == (6, 2100, 4)


def test_event_estimate_scales_with_bytes() -> None:
    a = pod_objects("api-1", [1000, 3000])
    plan = plan_for(listing_of(a), {"acme": tenant()}, events_per_byte=0.01)
    assert plan.by_tenant_app[("acme", "payment-service")].estimated_events == 40


@pytest.mark.parametrize(
    ("since_days_ago", "until_days_ago", "expected"),
    [
        (20, 16, 1.0),  # entirely older than 14 days
        (10, 1, 0.0),  # entirely within the last 14 days
        (16, 12, 0.5),  # straddling: 2 of its 4 days are too old
        (15, 14, 1.0),  # ends exactly at the limit
        (18, 13, 0.8),  # 4 of 5 days too old
    ],
)
def test_share_of_the_window_older_than_14_days(since_days_ago: int, until_days_ago: int, expected: float) -> None:
    since, until = NOW - since_days_ago * DAY, NOW - until_days_ago * DAY
    plan = plan_for(listing_of(pod_objects("api-1", [1])), {"acme": tenant()}, since=since, until=until)
    assert plan.undeliverable_fraction == pytest.approx(expected, abs=1e-9)


def test_objects_written_before_the_14_day_limit_are_counted_as_undeliverable() -> None:
    cutoff = NOW - FOURTEEN_DAYS
    old = pod_objects("api-1", [1, 1, 1], start=cutoff - timedelta(minutes=5))  # 5 min, 4.5, 4 min before
    new = pod_objects("api-2", [1, 1], start=cutoff + timedelta(seconds=1))
    plan = plan_for(
        listing_of(old, new), {"acme": tenant()}, since=cutoff - timedelta(hours=1), until=cutoff + timedelta(hours=1)
    )
    assert plan.undeliverable_objects == 3
    assert plan.undeliverable_fraction == pytest.approx(0.5)


# ---------------------------------------------------------------------------------------------------------
# the streaming planner with several deliveries per tenant


def umbrella(**s3_extra: object) -> Tenant:
    """CloudWatch for payment-service only, and every application to S3 (the sample tenant `umbrella`)."""
    role = "arn:aws:iam::444444444444:role/CustomerLogDistribution-umbrella"
    common = {"tenant_id": "umbrella", "log_distribution_role_arn": role, "target_region": "us-east-1"}
    cw = parse_delivery(
        {**common, "delivery_id": "cloudwatch", "type": "cloudwatch", "log_group_name": "/logs/umbrella"}
        | {"desired_logs": ["payment-service"]}
    )
    s3 = parse_delivery(
        {**common, "delivery_id": "s3-archive", "type": "s3", "bucket_name": "umbrella-logs-444444444444"}
        | dict(s3_extra)
    )
    return Tenant("umbrella", (cw, s3))


def planned_keys(plan: Planned) -> list[str]:
    return [o.key for u in plan.units for o in u.objects]


def test_each_delivery_has_its_own_plan() -> None:
    pay = pod_objects("pay-1", [100, 200], tenant="umbrella")
    chk = pod_objects("chk-1", [300], tenant="umbrella", app="checkout")
    plan = plan_for(listing_of(pay, chk), {"umbrella": umbrella()}, events_per_byte=0.5)
    # checkout goes to S3 only, but it goes: the object is planned.
    assert sorted(planned_keys(plan)) == sorted(o.key for o in pay + chk)
    assert plan.skipped_keys == [] and plan.failed_keys == [] and plan.settled == []
    cw, s3 = plan.deliveries[("umbrella", "cloudwatch")], plan.deliveries[("umbrella", "s3-archive")]
    assert (cw.type, cw.target, cw.whole_objects) == ("cloudwatch", "/logs/umbrella (us-east-1)", False)
    assert (cw.objects, cw.bytes, cw.estimated_events) == (2, 300, 150)
    assert cw.skipped == {"application 'checkout' is not in desired_logs of delivery 'cloudwatch'": 1}
    assert (s3.type, s3.target, s3.whole_objects) == ("s3", "s3://umbrella-logs-444444444444/ROSA/cluster-logs/", True)
    assert (s3.objects, s3.bytes, s3.skipped) == (3, 600, {})
    assert s3.estimated_events == 0  # S3 takes bytes, never events
    assert plan.has_event_deliveries


def test_the_ledger_is_per_delivery() -> None:
    pay = pod_objects("pay-1", [100, 200, 300], tenant="umbrella")
    ledger = {
        pay[0].key: {"cloudwatch": WHOLE, "s3-archive": WHOLE},  # done everywhere: nothing to do
        pay[1].key: {"cloudwatch": WHOLE},  # S3 still missing
    }
    plan = stream_plan(listing_of(pay), {"umbrella": umbrella()}, ledger, NOW - DAY, NOW, 2, NOW)
    assert planned_keys(plan) == [pay[1].key, pay[2].key]
    assert plan.skipped_keys == [(pay[0].key, LEDGER_SKIP)] and plan.skipped_ledger == 1
    cw, s3 = plan.deliveries[("umbrella", "cloudwatch")], plan.deliveries[("umbrella", "s3-archive")]
    assert (cw.objects, cw.already_delivered) == (1, 2)
    assert (s3.objects, s3.already_delivered) == (2, 1)
    [settled] = plan.settled
    assert {d.delivery_id: d.reason for d in settled.deliveries} == {
        "cloudwatch": LEDGER_SKIP,
        "s3-archive": LEDGER_SKIP,
    }


def test_s3_takes_whole_objects_written_in_the_window_cloudwatch_filters_events() -> None:
    since, until = NOW - DAY, NOW - DAY / 2
    before = pod_objects("pay-1", [10], start=since - timedelta(minutes=2), tenant="umbrella")  # listing slack
    inside = pod_objects("pay-2", [20], start=since, tenant="umbrella")
    after = pod_objects("pay-3", [30], start=until, tenant="umbrella")  # until is not in the window
    plan = plan_for(listing_of(before, inside, after), {"umbrella": umbrella()}, since=since, until=until)
    s3 = plan.deliveries[("umbrella", "s3-archive")]
    assert (s3.objects, s3.skipped) == (1, {"written outside the window": 2})
    # Events in the objects around the window can be inside it: CloudWatch still reads all three.
    assert plan.deliveries[("umbrella", "cloudwatch")].objects == 3
    assert sorted(planned_keys(plan)) == sorted(o.key for o in before + inside + after)


def test_old_objects_count_against_cloudwatch_only() -> None:
    cutoff = NOW - FOURTEEN_DAYS
    old_pay = pod_objects("pay-1", [1, 1], start=cutoff - timedelta(hours=1), tenant="umbrella")
    old_chk = pod_objects("chk-1", [1], start=cutoff - timedelta(hours=1), tenant="umbrella", app="checkout")
    plan = plan_for(listing_of(old_pay, old_chk), {"umbrella": umbrella()}, since=cutoff - 2 * DAY, until=cutoff + DAY)
    assert plan.deliveries[("umbrella", "cloudwatch")].older_than_14d == 2
    assert plan.deliveries[("umbrella", "s3-archive")].older_than_14d == 0  # S3 has no 14-day limit
    assert plan.undeliverable_objects == 2  # checkout goes to S3 only: nothing of it is lost


def test_an_s3_only_tenant_has_no_event_deliveries() -> None:
    hooli = Tenant("hooli", (replace(umbrella().deliveries[1], tenant_id="hooli", delivery_id="archive"),))
    objs = pod_objects("api-1", [5, 6], tenant="hooli", start=NOW - FOURTEEN_DAYS - DAY)
    plan = plan_for(listing_of(objs), {"hooli": hooli}, since=NOW - 20 * DAY, until=NOW)
    assert not plan.has_event_deliveries
    assert plan.undeliverable_objects == 0
    assert plan.objects_to_deliver == 2


def test_an_invalid_delivery_fails_its_objects_and_the_others_go_on() -> None:
    good = umbrella().deliveries[0]  # cloudwatch, payment-service only
    bad = InvalidDelivery("umbrella", "s3-archive", "tenant 'umbrella' delivery 's3-archive': bucket_name: missing")
    tenant = Tenant("umbrella", (good,), (bad,))
    pay = pod_objects("pay-1", [10], tenant="umbrella")
    chk = pod_objects("chk-1", [20], tenant="umbrella", app="checkout")
    plan = plan_for(listing_of(pay, chk), {"umbrella": tenant})
    # payment-service still goes to CloudWatch (the worker reports the failed delivery with it).
    assert planned_keys(plan) == [pay[0].key]
    # checkout has nowhere to go but the broken delivery: it fails here, naming it.
    assert plan.failed_keys == [(chk[0].key, f"s3-archive: {bad.reason}")]
    assert plan.deliveries[("umbrella", "s3-archive")].failed == {bad.reason: 2}
    assert plan.deliveries[("umbrella", "s3-archive")].type == "?"


def test_totals_add_counts_and_reasons_but_not_flags_or_times() -> None:
    since, until = datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 1, 2, tzinfo=UTC)
    mine, theirs = PlanTotals(since, until), PlanTotals(since, until)
    mine.objects_listed, mine.skipped = 2, {LEDGER_SKIP: 1}
    theirs.objects_listed, theirs.skipped, theirs.failed = 3, {LEDGER_SKIP: 2, "disabled": 1}, {"bad key": 4}
    theirs.listing_complete, theirs.undeliverable_fraction = True, 0.5
    mine.add(theirs)
    assert mine.objects_listed == 5
    assert mine.skipped == {LEDGER_SKIP: 3, "disabled": 1}
    assert mine.failed == {"bad key": 4}
    assert not mine.listing_complete
    assert mine.undeliverable_fraction == 0.0
