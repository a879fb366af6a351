"""Routing an object to its tenant's deliveries (pure), and how an object's result follows from theirs."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.coverage import WHOLE, Coverage
from pipeline.delivery.results import LEDGER_SKIP, OUTSIDE_WINDOW, DeliveryResult, ObjectResult, Status
from pipeline.delivery.routing import Routing, TimeWindow
from pipeline.keys import ObjectKey, format_key, parse_key
from pipeline.sinks import sink_plan, traits_of
from pipeline.tenants import Delivery, DeliveryType, InvalidDelivery, Tenant
from pipeline.timespec import to_ms

T0 = datetime(2024, 6, 20, 12, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
ROLE = "arn:aws:iam::444444444444:role/CustomerLogDistribution-umbrella"


def routing(window: TimeWindow | None = None, chosen: str = "cloudwatch", **kw: Any) -> Routing:
    """Routing with each delivery type served as the sink `chosen` plans it."""
    return Routing({kind: traits_of(name) for kind, name in sink_plan(chosen).items()}, window, **kw)


def cw(delivery_id: str = "cloudwatch", **kw: Any) -> Delivery:
    return Delivery("umbrella", delivery_id, DeliveryType.CLOUDWATCH, ROLE, "us-east-1", log_group="/logs/u", **kw)


def s3(delivery_id: str = "s3-archive", **kw: Any) -> Delivery:
    return Delivery(
        "umbrella", delivery_id, DeliveryType.S3, ROLE, "us-east-1", bucket="umbrella-logs", bucket_prefix="p/", **kw
    )


UMBRELLA = Tenant("umbrella", (cw(desired_logs=frozenset({"payment-service"})), s3()))


def parsed(app: str = "payment-service", written: datetime = T0, cluster: str = "prod-1") -> ObjectKey:
    return parse_key(format_key(cluster, "umbrella", app, "pod-1", written, "00000000-0000-4000-8000-000000000000"))


class Ledger:
    """The `delivered` callable routing takes, counting its calls."""

    def __init__(self, done: frozenset[str] = frozenset()) -> None:
        self.done = done
        self.calls = 0

    def __call__(self) -> dict[str, Coverage]:
        """Each delivery named has a record of the whole object (what a consumer delivery writes)."""
        self.calls += 1
        return dict.fromkeys(self.done, WHOLE)


def outcome(results: list[DeliveryResult]) -> dict[str, tuple[str, str]]:
    return {r.delivery_id: (str(r.status), r.reason) for r in results}


def todo_ids(todo: list[tuple[Delivery, DeliveryResult]]) -> list[str]:
    return [d.delivery_id for d, _ in todo]


# ---------------------------------------------------------------------------------------------------------
# Filters per delivery
# ---------------------------------------------------------------------------------------------------------


def test_each_delivery_filters_on_its_own() -> None:
    results, todo = routing().route(UMBRELLA, parsed("payment-service"), None, Ledger())
    assert todo_ids(todo) == ["cloudwatch", "s3-archive"]
    assert all(r.status is Status.DELIVERED and r.reason == "" for r in results)  # pending, nothing against it
    results, todo = routing().route(UMBRELLA, parsed("checkout"), None, Ledger())
    assert todo_ids(todo) == ["s3-archive"]
    assert outcome(results)["cloudwatch"] == (
        "skipped",
        "application 'checkout' is not in desired_logs of delivery 'cloudwatch'",
    )
    # The results carry what each delivery is, for reports.
    by_id = {r.delivery_id: r for r in results}
    assert (by_id["cloudwatch"].type, by_id["cloudwatch"].target) == ("cloudwatch", "/logs/u (us-east-1)")
    assert (by_id["s3-archive"].type, by_id["s3-archive"].target) == ("s3", "s3://umbrella-logs/p/")
    # The todo entries and the results are the same objects: filling one fills the other.
    assert todo[0][1] is by_id["s3-archive"]


def test_disabled_and_cluster_filters() -> None:
    tenant = Tenant("umbrella", (cw(enabled=False), s3(clusters=frozenset({"prod-2"}))))
    results, todo = routing().route(tenant, parsed(cluster="prod-1"), None, Ledger())
    assert todo == []
    assert outcome(results) == {
        "cloudwatch": ("skipped", "delivery 'cloudwatch' of tenant 'umbrella' is disabled"),
        "s3-archive": ("skipped", "cluster 'prod-1' is not allowed for tenant 'umbrella'"),
    }
    _, todo = routing().route(tenant, parsed(cluster="prod-2"), None, Ledger())
    assert todo_ids(todo) == ["s3-archive"]


def test_invalid_deliveries_are_reported_and_the_others_go_on() -> None:
    bad = InvalidDelivery("umbrella", "s3-broken", "tenant 'umbrella' delivery 's3-broken': bucket_name: missing")
    tenant = Tenant("umbrella", (cw(),), (bad,))
    results, todo = routing().route(tenant, parsed(), None, Ledger())
    assert todo_ids(todo) == ["cloudwatch"]
    [failed] = [r for r in results if r.delivery_id == "s3-broken"]
    assert (failed.status, failed.reason, failed.recoverable) == (Status.FAILED, bad.reason, False)
    assert failed.type == "?"  # its type is not known: the item did not validate


def test_selected_deliveries_by_id_or_type() -> None:
    bad = InvalidDelivery("umbrella", "s3-broken", "bad")
    tenant = Tenant("umbrella", (cw(), s3(), s3("s3-backup")), (bad,))
    results, todo = routing(selected=frozenset({"s3-backup"})).route(tenant, parsed(), None, Ledger())
    assert [r.delivery_id for r in results] == ["s3-backup"] and todo_ids(todo) == ["s3-backup"]
    results, _ = routing(selected=frozenset({"s3"})).route(tenant, parsed(), None, Ledger())
    assert [r.delivery_id for r in results] == ["s3-archive", "s3-backup"]  # an invalid one has no known type
    results, _ = routing(selected=frozenset({"s3-broken"})).route(tenant, parsed(), None, Ledger())
    assert [(r.delivery_id, r.status) for r in results] == [("s3-broken", Status.FAILED)]


# ---------------------------------------------------------------------------------------------------------
# The time window: whole objects by write time for S3, events by their own time for CloudWatch
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "held"),
    [
        (T0, True),  # since <= t
        (T0 + HOUR - timedelta(seconds=1), True),
        (T0 + HOUR, False),  # t < until
        (T0 - timedelta(seconds=1), False),
        (T0 + HOUR / 2, True),
    ],
)
def test_s3_takes_whole_objects_written_in_the_window(written: datetime, held: bool) -> None:
    window = TimeWindow(to_ms(T0), to_ms(T0 + HOUR))
    results, todo = routing(window).route(UMBRELLA, parsed(written=written), None, Ledger())
    assert ("s3-archive" in todo_ids(todo)) is held
    if not held:
        assert outcome(results)["s3-archive"] == ("skipped", OUTSIDE_WINDOW)
    # CloudWatch filters events by their own timestamps later: an object written just outside the window
    # can hold events inside it (CONTRACTS.md §1), so it is never skipped whole.
    assert "cloudwatch" in todo_ids(todo)


def test_without_a_time_in_the_key_the_write_time_is_last_modified() -> None:
    window = TimeWindow(to_ms(T0), to_ms(T0 + HOUR))
    key = parse_key("prod-1/umbrella/payment-service/pod-1/no-time-here.json.gz")
    assert key.write_time is None
    r = routing(window)
    assert todo_ids(r.route(UMBRELLA, key, T0 + HOUR / 2, Ledger())[1]) == ["cloudwatch", "s3-archive"]
    assert todo_ids(r.route(UMBRELLA, key, T0 + 2 * HOUR, Ledger())[1]) == ["cloudwatch"]
    assert todo_ids(r.route(UMBRELLA, key, None, Ledger())[1]) == ["cloudwatch", "s3-archive"]  # nothing to go by


@settings(max_examples=200, deadline=None)
@given(
    cuts=st.lists(st.integers(0, 48 * 3600), min_size=2, max_size=6, unique=True),
    offset=st.integers(0, 48 * 3600),
)
def test_adjacent_windows_take_every_object_exactly_once(cuts: list[int], offset: int) -> None:
    cuts.sort()
    written = T0 + timedelta(seconds=offset)
    key = parsed(written=written)
    takers = []
    for lo, hi in itertools.pairwise(cuts):
        window = TimeWindow(to_ms(T0 + timedelta(seconds=lo)), to_ms(T0 + timedelta(seconds=hi)))
        if "s3-archive" in todo_ids(routing(window).route(UMBRELLA, key, None, Ledger())[1]):
            takers.append((lo, hi))
    inside = cuts[0] <= offset < cuts[-1]
    assert len(takers) == (1 if inside else 0)
    if inside:
        assert takers[0][0] <= offset < takers[0][1]


# ---------------------------------------------------------------------------------------------------------
# The ledger
# ---------------------------------------------------------------------------------------------------------


def test_the_ledger_is_consulted_once_per_object() -> None:
    tenant = Tenant("umbrella", (cw(), cw("cw-eu"), s3(), s3("s3-backup")))
    ledger = Ledger(frozenset({"cloudwatch", "s3-backup"}))
    results, todo = routing().route(tenant, parsed(), None, ledger)
    assert ledger.calls == 1
    assert todo_ids(todo) == ["cw-eu", "s3-archive"]
    assert outcome(results)["cloudwatch"] == ("skipped", LEDGER_SKIP)
    assert outcome(results)["s3-backup"] == ("skipped", LEDGER_SKIP)


def test_the_ledger_is_not_consulted_when_no_delivery_needs_it() -> None:
    ledger = Ledger()
    tenant = Tenant("umbrella", (cw(enabled=False), s3(desired_logs=frozenset({"api"}))))
    routing().route(tenant, parsed(), None, ledger)
    window = TimeWindow(to_ms(T0 + HOUR), to_ms(T0 + 2 * HOUR))
    routing(window).route(Tenant("umbrella", (s3(),)), parsed(written=T0), None, ledger)  # outside the window
    routing(use_ledger=False).route(UMBRELLA, parsed(), None, ledger)  # --redeliver
    # null writes no ledger, so it cannot skip what the ledger has: it sends everything again.
    _, todo = routing(chosen="null").route(UMBRELLA, parsed(), None, ledger)
    assert todo_ids(todo) == ["cloudwatch", "s3-archive"]
    assert ledger.calls == 0


def test_a_delivery_the_ledger_has_is_skipped_and_the_others_are_not() -> None:
    _, todo = routing().route(UMBRELLA, parsed(), None, Ledger(frozenset({"cloudwatch"})))
    assert todo_ids(todo) == ["s3-archive"]
    _, todo = routing().route(UMBRELLA, parsed(), None, Ledger(frozenset({"s3-archive", "gone"})))
    assert todo_ids(todo) == ["cloudwatch"]


# ---------------------------------------------------------------------------------------------------------
# An object's result from its deliveries'
# ---------------------------------------------------------------------------------------------------------


def result_of(*deliveries: DeliveryResult) -> ObjectResult:
    return ObjectResult("k", tenant="umbrella", deliveries=list(deliveries)).settle()


def test_settle() -> None:
    ok = DeliveryResult("cloudwatch", "cloudwatch", events_delivered=5, bytes_delivered=100)
    stored = DeliveryResult("s3-archive", "s3", bytes_delivered=100)
    assert result_of(ok, stored).status is Status.DELIVERED
    skipped = DeliveryResult("s3-archive", "s3").skip(LEDGER_SKIP)
    assert (result_of(ok, skipped).status, result_of(ok, skipped).reason) == (Status.DELIVERED, "")
    r = result_of(
        DeliveryResult("a", "s3").skip("x"), DeliveryResult("b", "s3").skip("x"), DeliveryResult("c", "s3").skip("y")
    )
    assert (r.status, r.reason) == (Status.SKIPPED, "x; y")
    assert result_of().status is Status.SKIPPED and result_of().reason == "no delivery takes it"
    # Every delivery that takes the object already has it: a ledger skip, whatever the others' filters say.
    r = result_of(DeliveryResult("a", "s3").skip("x"), DeliveryResult("b", "s3").skip(LEDGER_SKIP))
    assert (r.status, r.reason) == (Status.SKIPPED, LEDGER_SKIP)
    damaged = DeliveryResult("cloudwatch", "cloudwatch", status=Status.DAMAGED, reason="truncated gzip stream")
    assert (result_of(stored, damaged).status, result_of(stored, damaged).reason) == (
        Status.DAMAGED,
        "truncated gzip stream",
    )
    # One failed delivery fails the object (naming it), recoverably when any failure is.
    denied = DeliveryResult("s3-archive", "s3").fail("AccessDenied", recoverable=False)
    slow = DeliveryResult("cw-eu", "cloudwatch").fail("ThrottlingException", recoverable=True)
    r = result_of(ok, denied)
    assert (r.status, r.reason, r.recoverable, r.acknowledged) == (
        Status.FAILED,
        "s3-archive: AccessDenied",
        False,
        True,
    )
    r = result_of(ok, denied, slow)
    assert r.reason == "s3-archive: AccessDenied; cw-eu: ThrottlingException"
    assert r.recoverable and not r.acknowledged
    # An object that failed before any delivery (bad key, unknown tenant) keeps its own reason.
    early = ObjectResult("k").fail("unknown tenant 'x'", recoverable=False).settle()
    assert (early.status, early.reason) == (Status.FAILED, "unknown tenant 'x'")


def test_counters_are_totals_over_deliveries() -> None:
    r = result_of(
        DeliveryResult(
            "cloudwatch", "cloudwatch", events_delivered=5, events_rejected_too_old=2, events_rejected_expired=1
        ),
        DeliveryResult("cw-eu", "cloudwatch", events_delivered=7, events_rejected_too_new=3, bytes_delivered=30),
        DeliveryResult("s3-archive", "s3", bytes_delivered=100),
    )
    assert r.events_delivered == r.totals().events_delivered == 12
    assert r.events_rejected == r.totals().events_rejected == 6
    assert r.totals().bytes_delivered == 130
    d = r.to_dict()
    assert (d["events_delivered"], d["bytes_delivered"], d["events_rejected_too_new"]) == (12, 130, 3)
    assert [x["delivery_id"] for x in d["deliveries"]] == ["cloudwatch", "cw-eu", "s3-archive"]
    assert d["deliveries"][2]["status"] == "delivered"
    assert "recorded" not in d["deliveries"][0] and "durable" not in d["deliveries"][0]
