"""The replay report: counts per object status and per tenant, the exit code, and the JSON it writes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from pipeline.delivery.results import LEDGER_SKIP, DeliveryResult, ObjectResult, Status
from pipeline.replay.plan import DeliveryPlan, ObjectSpec, Plan, WorkUnit
from pipeline.replay.report import (
    EXIT_INTERRUPTED,
    FAILED_DETAIL_MAX,
    INTERRUPTED,
    RUN_FAILED_MAX,
    RUN_SKIPPED_SAMPLE,
    TIMELINE_MAX,
    ReplayReport,
)

UNTIL = datetime(2024, 6, 20, 12, tzinfo=UTC)
UTC_SINCE = UNTIL - timedelta(hours=1)
REQUIRED_KEYS = {
    "objects_listed",
    "objects_skipped_ledger",
    "objects_delivered",
    "objects_failed",
    "events_delivered",
    "events_rejected_too_old",
    "events_rejected_too_new",
    "events_rejected_expired",
    "events_filtered",
    "lines_malformed",
    "bytes_read",
    "duration_s",
    "events_per_s",
}


def key(tenant: str, n: int) -> str:
    return f"prod-1/{tenant}/payment-service/pay-1/20240620-11{n:04d}-{n:08d}-0000-4000-8000-000000000000.json.gz"


def make_plan(failed: Sequence[tuple[str, str]] = (), skipped: Sequence[tuple[str, str]] = (), **kw: object) -> Plan:
    """A plan; `failed` and `skipped` are (key, reason) of objects the plan settled itself."""
    plan = Plan(since=UTC_SINCE, until=UNTIL, objects_listed=10, list_calls=4)
    for name, value in kw.items():
        setattr(plan, name, value)
    for k, reason in failed:
        plan.settled.append(ObjectResult(k).fail(reason, recoverable=False))
    for k, reason in skipped:
        plan.settled.append(ObjectResult(k, Status.SKIPPED, reason, tenant=k.split("/")[1]))
    assert (plan.failed_keys, plan.skipped_keys) == (list(failed), list(skipped))
    return plan


def report_of(plan: Plan) -> ReplayReport:
    """A report of a plan held in memory: what the plan settled folded in, as the driver does per survey."""
    report = ReplayReport(plan)
    for result in plan.settled:
        report.settle(result)
    return report


# Counters each delivery carries (the object's are their totals); the rest belong to the object itself.
PER_DELIVERY = {f.name for f in fields(DeliveryResult) if f.name.startswith(("events_", "bytes_delivered"))}


def delivered(k: str, events: int, **counts: int) -> ObjectResult:
    """An object delivered to its tenant's one delivery, `cloudwatch`."""
    r = ObjectResult(k, tenant=k.split("/")[1], application="payment-service")
    d = DeliveryResult("cloudwatch", "cloudwatch", "/logs/x (us-east-1)", events_delivered=events)
    r.deliveries.append(d)
    for name, value in counts.items():
        setattr(d if name in PER_DELIVERY else r, name, value)
    return r


def test_counts_are_summed_per_tenant_and_in_total() -> None:
    report = report_of(make_plan())
    report.add(delivered(key("acme", 1), 100, bytes_read=1000, events_filtered=3, lines_malformed=1))
    report.add(delivered(key("acme", 2), 50, bytes_read=500, events_rejected_too_old=7))
    report.add(delivered(key("globex", 3), 10, bytes_read=80, events_rejected_too_new=2, events_rejected_expired=4))
    doc = report.to_dict()
    assert not REQUIRED_KEYS - set(doc)
    assert doc["objects_delivered"] == 3
    assert doc["events_delivered"] == 160
    assert doc["bytes_read"] == 1580
    assert doc["events_filtered"] == 3
    assert doc["lines_malformed"] == 1
    assert (doc["events_rejected_too_old"], doc["events_rejected_too_new"], doc["events_rejected_expired"]) == (7, 2, 4)
    assert doc["tenants"]["acme"]["events_delivered"] == 150
    assert doc["tenants"]["acme"]["objects_delivered"] == 2
    assert doc["tenants"]["globex"]["events_rejected_expired"] == 4
    assert doc["objects_failed"] == []
    assert report.exit_code == 0
    # What the CLI writes with --report must be plain JSON.
    assert orjson.loads(orjson.dumps(doc))["objects_listed"] == 10


def test_failed_and_damaged_objects_are_listed_with_reasons_and_fail_the_run() -> None:
    report = report_of(make_plan())
    report.add(delivered(key("acme", 1), 5))
    failed = ObjectResult(key("acme", 2), tenant="acme").fail("AccessDenied on PutLogEvents", recoverable=False)
    report.add(failed)
    damaged = ObjectResult(key("acme", 3), Status.DAMAGED, "truncated gzip stream after 812 bytes", tenant="acme")
    damaged.deliveries.append(
        DeliveryResult("cloudwatch", "cloudwatch", status=Status.DAMAGED, reason=damaged.reason, events_delivered=4)
    )
    report.add(damaged)
    doc = report.to_dict()
    assert doc["objects_failed"] == [
        {"key": key("acme", 2), "reason": "AccessDenied on PutLogEvents"},
        {"key": key("acme", 3), "reason": "truncated gzip stream after 812 bytes"},
    ]
    assert doc["objects_damaged"] == [{"key": key("acme", 3), "reason": "truncated gzip stream after 812 bytes"}]
    # The readable part of a damaged object was delivered and is counted; the object is not "delivered".
    assert doc["events_delivered"] == 9
    assert doc["objects_delivered"] == 1
    assert doc["tenants"]["acme"]["objects_failed"] == 2
    assert report.exit_code == 1


def test_plan_failures_and_skips_are_carried_into_the_report() -> None:
    plan = make_plan(
        failed=[("prod-1/acme//p/x.json.gz", "contains an empty segment")],
        skipped=[
            (key("acme", 1), LEDGER_SKIP),
            (key("acme", 2), LEDGER_SKIP),
            (key("initech", 3), "delivery 'cloudwatch' of tenant 'initech' is disabled"),
        ],
    )
    report = report_of(plan)
    # A ledger skip found by a worker (delivered meanwhile by the consumer) counts the same way.
    skip = ObjectResult(key("acme", 4), Status.SKIPPED, LEDGER_SKIP, tenant="acme")
    report.add(skip)
    doc = report.to_dict()
    assert doc["objects_failed"] == [{"key": "prod-1/acme//p/x.json.gz", "reason": "contains an empty segment"}]
    assert doc["objects_skipped_ledger"] == 3
    assert {s["reason"] for s in doc["objects_skipped"]} == {
        LEDGER_SKIP,
        "delivery 'cloudwatch' of tenant 'initech' is disabled",
    }
    assert doc["objects_delivered"] == 0
    assert report.exit_code == 1  # the malformed key is a failure an operator must see


def test_skipped_objects_alone_do_not_fail_the_run() -> None:
    report = report_of(make_plan(skipped=[(key("acme", 1), LEDGER_SKIP)]))
    disabled = "delivery 'cloudwatch' of tenant 'acme' is disabled"
    report.add(ObjectResult(key("acme", 2), Status.SKIPPED, disabled, tenant="acme"))
    assert report.exit_code == 0
    assert report.to_dict()["tenants"]["acme"]["objects_skipped"] == 1


def test_an_interrupted_run_exits_130_and_lists_what_it_did_not_attempt() -> None:
    report = report_of(make_plan())
    report.add(delivered(key("acme", 1), 10))
    pending = [ObjectSpec(key("acme", n), 100, "e", 0.0) for n in (2, 3)]
    report.add_interrupted(pending)
    report.interrupted = True
    doc = report.to_dict()
    assert report.exit_code == EXIT_INTERRUPTED == 130
    assert doc["interrupted"] is True
    assert [s for s in doc["objects_skipped"] if s["reason"] == INTERRUPTED] == [
        {"key": key("acme", 2), "reason": INTERRUPTED},
        {"key": key("acme", 3), "reason": INTERRUPTED},
    ]
    assert doc["objects_skipped_ledger"] == 0
    assert doc["objects_delivered"] == 1


def test_interrupted_wins_over_failed() -> None:
    report = report_of(make_plan(failed=[("bad", "reason")]))
    assert report.exit_code == 1
    report.interrupted = True
    assert report.exit_code == 130


def test_rate_and_plan_figures() -> None:
    units = [WorkUnit(0, (ObjectSpec(key("acme", 1), 10, "e", 0.0),), 10)]
    report = report_of(make_plan(units=units, objects_to_deliver=1, work_units=1, undeliverable_fraction=0.123456))
    report.started -= 2.0  # as if the run had taken two seconds
    report.add(delivered(key("acme", 1), 1000))
    report.tick()
    doc = report.to_dict()
    assert doc["duration_s"] == pytest.approx(2.0, abs=0.5)
    assert doc["events_per_s"] == pytest.approx(1000 / doc["duration_s"], rel=0.01)
    assert doc["objects_planned"] == 1
    assert doc["work_units"] == 1
    assert doc["list_calls"] == 4
    assert doc["window_older_than_14d_fraction"] == 0.1235
    assert doc["window"] == {"since": UTC_SINCE.isoformat(), "until": UNTIL.isoformat()}
    assert doc["timeline"][-1]["events"] == 1000
    table = report.summary_table()
    assert table.splitlines()[1].split()[:4] == ["acme", "1", "0", "1000"]


# ---------------------------------------------------------------------------------------------------------
# Per-delivery sections


def umbrella_result(n: int, cw: DeliveryResult, s3: DeliveryResult, **counts: int) -> ObjectResult:
    r = ObjectResult(key("umbrella", n), tenant="umbrella", application="payment-service", deliveries=[cw, s3])
    for name, value in counts.items():
        setattr(r, name, value)
    return r.settle()


def cw_result(**kw: Any) -> DeliveryResult:
    return DeliveryResult("cloudwatch", "cloudwatch", "/logs/umbrella (us-east-1)", **kw)


def s3_result(**kw: Any) -> DeliveryResult:
    return DeliveryResult("s3-archive", "s3", "s3://umbrella-logs/ROSA/cluster-logs/", **kw)


def test_each_delivery_has_its_own_section() -> None:
    plan = make_plan(
        deliveries={
            ("umbrella", "cloudwatch"): DeliveryPlan(
                "umbrella", "cloudwatch", "cloudwatch", "/logs/umbrella (us-east-1)", objects=3, older_than_14d=1
            ),
            ("umbrella", "s3-archive"): DeliveryPlan(
                "umbrella", "s3-archive", "s3", "s3://umbrella-logs/ROSA/cluster-logs/", True, objects=4
            ),
        }
    )
    report = report_of(plan)
    report.add(
        umbrella_result(
            1,
            cw_result(events_delivered=10, bytes_delivered=900, requests=1, events_rejected_too_old=2),
            s3_result(bytes_delivered=400, requests=1, retries=2),
            bytes_read=900,
        )
    )
    report.add(
        umbrella_result(
            2,
            cw_result(status=Status.DAMAGED, reason="truncated gzip stream", events_delivered=3),
            s3_result(bytes_delivered=500, requests=1),
        )
    )
    report.add(
        umbrella_result(
            3,
            cw_result().skip("application 'checkout' is not in desired_logs of delivery 'cloudwatch'"),
            s3_result().fail("AccessDenied writing s3://umbrella-logs/k", recoverable=False),
        )
    )
    doc = report.to_dict()
    cw, s3 = doc["deliveries"]  # sorted by (tenant, delivery)
    assert (cw["tenant"], cw["delivery_id"], cw["type"], cw["target"]) == (
        "umbrella",
        "cloudwatch",
        "cloudwatch",
        "/logs/umbrella (us-east-1)",
    )
    assert (cw["objects_planned"], cw["objects_older_than_14d"]) == (3, 1)
    assert (cw["objects_delivered"], cw["objects_damaged"], cw["objects_failed_count"]) == (2, 1, 0)
    assert cw["objects_skipped"] == {"application 'checkout' is not in desired_logs of delivery 'cloudwatch'": 1}
    assert (cw["events_delivered"], cw["events_rejected_too_old"], cw["bytes_delivered"]) == (13, 2, 900)
    assert (s3["delivery_id"], s3["type"], s3["objects_planned"]) == ("s3-archive", "s3", 4)
    assert (s3["objects_delivered"], s3["objects_failed_count"]) == (2, 1)
    assert s3["objects_failed"] == [{"key": key("umbrella", 3), "reason": "AccessDenied writing s3://umbrella-logs/k"}]
    assert (s3["bytes_delivered"], s3["requests"], s3["retries"], s3["events_delivered"]) == (900, 2, 2, 0)
    # The totals: bytes delivered over every delivery, next to the bytes read once per object.
    assert doc["bytes_delivered"] == 1800 and doc["bytes_read"] == 900
    assert doc["tenants"]["umbrella"]["bytes_delivered"] == 1800
    assert doc["events_delivered"] == 13
    assert orjson.loads(orjson.dumps(doc))["deliveries"][1]["objects_failed_count"] == 1
    table = report.deliveries_table().splitlines()
    assert table[0].split() == [
        "tenant",
        "delivery",
        "type",
        "objects",
        "failed",
        "skipped",
        "events",
        "MiB",
        "too_old",
    ]
    assert table[1].split() == ["umbrella", "cloudwatch", "cloudwatch", "2", "0", "1", "13", "0.0", "2"]
    assert table[2].split() == ["umbrella", "s3-archive", "s3", "2", "1", "0", "0", "0.0", "0"]


def test_objects_the_plan_settled_count_in_their_deliveries_sections() -> None:
    settled = ObjectResult(
        key("umbrella", 1),
        tenant="umbrella",
        deliveries=[
            cw_result().skip(LEDGER_SKIP),
            s3_result().skip("written outside the window"),
        ],
    ).settle()
    plan = make_plan()
    plan.settled.append(settled)
    doc = report_of(plan).to_dict()
    sections = {d["delivery_id"]: d for d in doc["deliveries"]}
    assert sections["cloudwatch"]["objects_skipped"] == {LEDGER_SKIP: 1}
    assert sections["s3-archive"]["objects_skipped"] == {"written outside the window": 1}
    # Every delivery that takes the object has it: the object counts as a ledger skip.
    assert doc["objects_skipped"] == [{"key": key("umbrella", 1), "reason": LEDGER_SKIP}]
    assert doc["objects_skipped_ledger"] == 1
    # Settled by the plan: counted in the sections and listed, but not as work a tenant's worker did.
    assert doc["tenants"] == {}


def test_failures_listed_per_delivery_are_bounded_but_all_counted() -> None:
    report = report_of(make_plan())
    n = FAILED_DETAIL_MAX + 25
    for i in range(n):
        report.add(umbrella_result(i, cw_result(), s3_result().fail("SlowDown", recoverable=True)))
    s3 = {d["delivery_id"]: d for d in report.to_dict()["deliveries"]}["s3-archive"]
    assert s3["objects_failed_count"] == n
    assert len(s3["objects_failed"]) == FAILED_DETAIL_MAX
    assert len(report.to_dict()["objects_failed"]) == n  # the run's own list names every object


def test_put_requests_and_their_minimum_count_only_cloudwatch_deliveries_per_tenant() -> None:
    report = report_of(make_plan())
    for n, (tenant, calls, minimum) in enumerate([("acme", 2, 1), ("acme", 0, 0), ("globex", 3, 3)]):
        r = ObjectResult(key(tenant, n), tenant=tenant, application="payment-service")
        r.deliveries = [
            DeliveryResult("cloudwatch", "cloudwatch", requests=calls, requests_minimum=minimum),
            DeliveryResult("s3-archive", "s3", requests=7),  # PutObject calls: not PutLogEvents
        ]
        report.add(r.settle())
    doc = report.to_dict()
    assert (doc["put_requests"], doc["put_requests_minimum"]) == (5, 4)
    assert (doc["tenants"]["acme"]["put_requests"], doc["tenants"]["acme"]["put_requests_minimum"]) == (2, 1)
    assert (doc["tenants"]["globex"]["put_requests"], doc["tenants"]["globex"]["put_requests_minimum"]) == (3, 3)
    sections = {d["delivery_id"]: d for d in doc["deliveries"] if d["tenant"] == "acme"}
    assert (sections["cloudwatch"]["requests"], sections["cloudwatch"]["requests_minimum"]) == (2, 1)
    assert sections["s3-archive"]["requests"] == 14
    assert "min_puts" in report.summary_table()


def test_the_timeline_is_thinned_not_grown_past_its_cap() -> None:
    report = report_of(make_plan())
    for n in range(5 * TIMELINE_MAX + 3):
        report.add(delivered(key("acme", n), 1))
        report.tick()
    timeline = report.to_dict()["timeline"]
    assert TIMELINE_MAX // 2 <= len(timeline) <= TIMELINE_MAX + 1
    assert timeline[0]["events"] == 1 and timeline[-1]["events"] == 5 * TIMELINE_MAX + 3
    assert [p["events"] for p in timeline] == sorted(p["events"] for p in timeline)


def test_failures_and_skips_are_counted_whole_and_listed_up_to_their_caps() -> None:
    report = report_of(make_plan())
    for n in range(RUN_FAILED_MAX + 7):
        report.add(ObjectResult(key("acme", n), tenant="acme").fail("AccessDenied", recoverable=True))
    for n in range(RUN_SKIPPED_SAMPLE + 5):
        report.add(ObjectResult(key("acme", n), Status.SKIPPED, LEDGER_SKIP, tenant="acme"))
    doc = report.to_dict()
    assert (doc["objects_failed_count"], len(doc["objects_failed"]), doc["objects_failed_omitted"]) == (
        RUN_FAILED_MAX + 7,
        RUN_FAILED_MAX,
        7,
    )
    assert (doc["objects_skipped_count"], len(doc["objects_skipped"]), doc["objects_skipped_omitted"]) == (
        RUN_SKIPPED_SAMPLE + 5,
        RUN_SKIPPED_SAMPLE,
        5,
    )
    assert doc["objects_skipped_by_reason"] == {LEDGER_SKIP: RUN_SKIPPED_SAMPLE + 5}
    assert doc["objects_skipped_ledger"] == RUN_SKIPPED_SAMPLE + 5
    assert report.exit_code == 1
