"""Each delivery's status (pipeline/status.py): the state rules, the coalescing that bounds writes, the
observation of results, the buckets and the request a write sends. Pure: no AWS here (the table, the
consumer, two writers at once and the tenant's metrics are in tests/integration/test_status.py)."""

from __future__ import annotations

import itertools
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.classify import advice
from pipeline.delivery.results import LEDGER_SKIP, DeliveryResult, ObjectResult, Status
from pipeline.status import (
    DEGRADED_LAG_S,
    FLUSH_INTERVAL_S,
    Coalescer,
    Figures,
    LastError,
    Observation,
    Pending,
    State,
    observe,
    stale_buckets,
    state_of,
    status_of,
    update_request,
    window_figures,
    worst_first,
)

NOW = 1_800_000_000.0
KEY = "prod-1/acme/payment-service/pod-1/20270115-075800-abc.json.gz"  # written 2 minutes before NOW


def _item(**kw: Any) -> dict[str, Any]:
    """A status item as DynamoDB gives it back (numbers as Decimal, maxima as number sets)."""
    item: dict[str, Any] = {}
    for name in ("newest_object", "newest_event", "newest_seen", "last_success"):
        if name in kw:
            item[f"{name}_0"] = {Decimal(str(kw.pop(name)))}
    if "error" in kw:
        code, at = kw.pop("error")
        item["last_error"] = {"code": code, "message": "m", "remedy": "r", "at": Decimal(str(at))}
    if "backoff_until" in kw:
        item["backoff_until"] = Decimal(str(kw.pop("backoff_until")))
    for letter, n in kw.pop("hour", {}).items():
        item[f"h{int(NOW // 300)}_{letter}"] = Decimal(n)
        item[f"d{int(NOW // 3600)}_{letter}"] = Decimal(n)
    assert not kw
    return item


@pytest.mark.parametrize(
    ("item", "enabled", "state"),
    [
        (_item(), True, State.HEALTHY),  # nothing delivered yet, nothing wrong
        (_item(last_success=NOW - 10, newest_object=NOW - 60, newest_seen=NOW - 60), True, State.HEALTHY),
        (_item(error=("AccessDenied", NOW - 5)), False, State.DISABLED),  # disabled wins over anything
        (_item(last_success=NOW - 100, error=("AccessDenied", NOW - 5)), True, State.FAILING),
        (_item(error=("NoSuchBucket", NOW - 5)), True, State.FAILING),  # never delivered, fails
        (_item(last_success=NOW - 100, error=("ThrottlingException", NOW - 5)), True, State.BACKING_OFF),
        (_item(last_success=NOW - 1, backoff_until=NOW + 20), True, State.BACKING_OFF),  # held by the circuit
        (_item(last_success=NOW - 1, backoff_until=NOW - 1), True, State.HEALTHY),  # the back-off is over
        # Failing outranks a circuit that is open: the failure is not throttling.
        (_item(error=("AccessDenied", NOW - 5), backoff_until=NOW + 60), True, State.FAILING),
        # A success after the error: it recovered, but the last hour had a failure.
        (_item(last_success=NOW - 1, error=("AccessDenied", NOW - 5), hour={"f": 1}), True, State.DEGRADED),
        (_item(last_success=NOW - 1, hour={"o": 3, "r": 2}), True, State.DEGRADED),  # rejected events
        (
            _item(last_success=NOW - 1, newest_object=NOW - 2000, newest_seen=NOW - 2000 + DEGRADED_LAG_S + 1),
            True,
            State.DEGRADED,
        ),
    ],
)
def test_the_state_rules(item: dict[str, Any], enabled: bool, state: State) -> None:
    assert state_of(item, enabled, NOW) is state


def test_status_has_the_contract_shape() -> None:
    item = _item(
        newest_object=NOW - 120, newest_seen=NOW - 60, newest_event=NOW - 130, last_success=NOW - 1, hour={"o": 4}
    )
    doc = status_of("cloudwatch", item, True, NOW)
    assert set(doc) == {
        "delivery_id",
        "state",
        "newest_object_time",
        "newest_event_time",
        "lag_seconds",
        "last_hour",
        "last_day",
        "last_error",
    }
    assert doc["lag_seconds"] == 60.0
    assert doc["newest_object_time"] == "2027-01-15T07:58:00.000Z"
    assert doc["last_hour"] == {"objects": 4, "events": 0, "bytes": 0, "events_rejected": 0, "objects_failed": 0}
    assert doc["last_error"] is None
    empty = status_of("s3-archive", None, True, NOW)
    assert (empty["lag_seconds"], empty["newest_object_time"], empty["state"]) == (None, None, "healthy")


def test_worst_first_orders_by_state_then_lag() -> None:
    rows = [
        {"tenant_id": "a", "delivery_id": "x", "state": "healthy", "lag_seconds": 5.0},
        {"tenant_id": "a", "delivery_id": "y", "state": "disabled", "lag_seconds": None},
        {"tenant_id": "b", "delivery_id": "x", "state": "degraded", "lag_seconds": 10.0},
        {"tenant_id": "c", "delivery_id": "x", "state": "degraded", "lag_seconds": 900.0},
        {"tenant_id": "d", "delivery_id": "x", "state": "failing", "lag_seconds": None},
        {"tenant_id": "e", "delivery_id": "x", "state": "backing-off", "lag_seconds": 1.0},
    ]
    assert [(r["tenant_id"], r["state"]) for r in worst_first(rows)] == [
        ("d", "failing"),
        ("e", "backing-off"),
        ("c", "degraded"),
        ("b", "degraded"),
        ("a", "healthy"),
        ("a", "disabled"),
    ]


def test_buckets_outside_the_windows_are_ignored_and_named_for_removal() -> None:
    hour_slot, day_slot = int(NOW // 300), int(NOW // 3600)
    item = {
        f"h{hour_slot}_o": Decimal(2),
        f"h{hour_slot - 11}_o": Decimal(3),  # 55 to 60 minutes ago: still the last hour
        f"h{hour_slot - 12}_o": Decimal(100),  # past it
        f"d{day_slot}_o": Decimal(5),
        f"d{day_slot - 23}_e": Decimal(7),
        f"d{day_slot - 24}_e": Decimal(1000),
        "hello_o": "not a bucket",
    }
    hour, day = window_figures(item, NOW)
    assert (hour.objects, day.objects, day.events) == (5, 5, 7)
    assert stale_buckets(item, NOW) == {f"h{hour_slot - 12}_o", f"d{day_slot - 24}_e"}


def _result(status: Status, **kw: Any) -> tuple[ObjectResult, DeliveryResult]:
    d = DeliveryResult("cloudwatch", "cloudwatch", status=status, **kw)
    r = ObjectResult(KEY, tenant="acme", deliveries=[d])
    return r, d


def test_what_each_result_says() -> None:
    r, d = _result(Status.DELIVERED, events_delivered=10, bytes_delivered=500, events_rejected_too_old=2)
    d.newest_event_ms = 1_700_000_000_123
    o = observe(r, d, NOW)
    assert o is not None and o.delivered and o.error is None
    assert o.figures == Figures(1, 10, 500, 2, 0)
    assert o.newest_event == 1_700_000_000.123
    assert o.key_time == NOW - 120  # the key's write time, not the clock
    r, d = _result(Status.FAILED, reason="denied", recoverable=True, code="AccessDenied")
    o = observe(r, d, NOW)
    assert o is not None and not o.delivered and o.figures == Figures(objects_failed=1)
    assert o.error is not None and (o.error.code, o.error.at) == ("AccessDenied", NOW)
    assert o.error.remedy == advice("AccessDenied", "cloudwatch") and "PutLogEvents" in o.error.remedy
    r, d = _result(Status.FAILED, reason="held", recoverable=True, held=True)
    o = observe(r, d, NOW)
    assert o is not None and not o.figures and o.error is None and o.key_time is not None  # seen, not failed
    r, d = _result(Status.SKIPPED, reason=LEDGER_SKIP)
    o = observe(r, d, NOW)
    assert o is not None and not o.figures and not o.delivered  # seen: it is in the bucket
    r, d = _result(Status.SKIPPED, reason="application 'x' is not in desired_logs")
    assert observe(r, d, NOW) is None  # not this delivery's to take
    r, d = _result(Status.DAMAGED, reason="truncated gzip", events_delivered=3)
    o = observe(r, d, NOW)
    assert o is not None and o.delivered and o.figures.objects_failed == 1 and o.error is not None


# -- at most one write per delivery per 30 s, whatever arrives ---------------------------------------------

_steps = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=20, allow_nan=False),  # time to the next step
        st.sampled_from([("acme", "cloudwatch"), ("acme", "s3-archive"), ("globex", "cloudwatch")]),
        st.integers(min_value=0, max_value=50),  # events of the object
        st.booleans(),  # a timer tick after it
    ),
    max_size=300,
)


@settings(max_examples=200, deadline=None)
@given(_steps)
def test_no_delivery_is_written_twice_within_the_interval_and_nothing_is_lost(steps: list[Any]) -> None:
    clock = [NOW]
    c = Coalescer(FLUSH_INTERVAL_S, clock=lambda: clock[0])
    writes: dict[tuple[str, str], list[float]] = {}
    observed: dict[tuple[str, str], int] = {}
    written: dict[tuple[str, str], int] = {}
    for gap, key, events, tick in steps:
        clock[0] += gap
        c.add(key, Observation(clock[0], Figures(objects=1, events=events)))
        observed[key] = observed.get(key, 0) + events + 1
        if tick:
            for k, p in c.due():
                writes.setdefault(k, []).append(clock[0])
                written[k] = written.get(k, 0) + p.totals().events + p.totals().objects
    for times in writes.values():
        assert all(b - a >= FLUSH_INTERVAL_S for a, b in itertools.pairwise(times))
    for k, p in c.due(force=True):  # the process's last flush takes the rest
        written[k] = written.get(k, 0) + p.totals().events + p.totals().objects
    assert written == observed


def test_a_failed_write_is_merged_back_for_the_next() -> None:
    clock = [NOW]
    c = Coalescer(clock=lambda: clock[0])
    c.add(("a", "d"), Observation(NOW, Figures(objects=1), key_time=NOW - 5, delivered=True))
    ((key, p),) = c.due()
    c.add(("a", "d"), Observation(NOW + 1, Figures(objects=2), key_time=NOW - 50, delivered=True))
    c.put_back(key, p)
    clock[0] += FLUSH_INTERVAL_S
    ((_, merged),) = c.due()
    assert merged.totals().objects == 3 and merged.newest_object == NOW - 5


# -- the request of one write --------------------------------------------------------------------------


def test_a_write_adds_counters_keeps_maxima_and_prunes_what_it_saw() -> None:
    p = Pending()
    p.merge(Observation(NOW, Figures(1, 10, 100), key_time=NOW - 60, delivered=True, newest_event=NOW - 70))
    p.merge(Observation(NOW, Figures(objects_failed=1), error=LastError("SlowDown", "m", "r", NOW)))
    stale = f"h{int(NOW // 300) - 20}_o"
    seen = {
        "newest_object_0": {Decimal(NOW - 500), Decimal(NOW - 30)},  # another writer's newer value: kept
        "newest_object_1": {Decimal(NOW - 900)},
        stale: Decimal(4),
    }
    req = update_request(p, NOW, seen, parity=1, backoff_until=0.0)
    names, values = req["ExpressionAttributeNames"], req["ExpressionAttributeValues"]
    expr = req["UpdateExpression"]
    alias = {v: k for k, v in names.items()}

    def value_of(attr: str, section: str) -> Any:
        part = expr.split(f" {section} ", 1)[1]
        token = part.split(alias[attr] + " ", 1)[1].split(",")[0].split(" ")[0]
        return values[token]

    assert value_of(f"h{int(NOW // 300)}_o", "ADD") == {"N": "1"}
    assert value_of(f"d{int(NOW // 3600)}_e", "ADD") == {"N": "10"}
    assert value_of("newest_object_1", "ADD") == {"NS": [str(int(NOW - 60))]}
    # Elements below the largest seen (NOW - 30) leave the other set; NOW - 30 itself stays.
    assert value_of("newest_object_0", "DELETE") == {"NS": [str(int(NOW - 500))]}
    assert alias[stale] in expr.split(" REMOVE ", 1)[1]
    assert req["ReturnValues"] == "ALL_NEW"


def test_every_error_code_has_a_remedy_in_words() -> None:
    for code in ("ThrottlingException", "AccessDenied", "NoSuchBucket", "ExpiredToken", "KMS.Disabled", "Weird"):
        assert len(advice(code, "s3")) > 20
    assert "s3:PutObject" in advice("AccessDenied", "s3")


def test_figures_add_every_counter_of_the_other() -> None:
    total = Figures(objects=1, events=10, bytes=100)
    total.add(Figures(objects=2, events=20, bytes=200, events_rejected=3, objects_failed=1))
    assert total == Figures(objects=3, events=30, bytes=300, events_rejected=3, objects_failed=1)
