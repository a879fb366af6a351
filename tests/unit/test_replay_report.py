"""The replay report: counts per object status and per tenant, the exit code, and the JSON it writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest

from pipeline.delivery import ObjectResult, Status
from pipeline.replay.plan import LEDGER_SKIP, ObjectSpec, Plan, WorkUnit
from pipeline.replay.report import EXIT_INTERRUPTED, INTERRUPTED, ReplayReport

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


def make_plan(**kw: object) -> Plan:
    plan = Plan(since=UTC_SINCE, until=UNTIL, objects_listed=10, list_calls=4)
    for name, value in kw.items():
        setattr(plan, name, value)
    return plan


def delivered(k: str, events: int, **counts: int) -> dict[str, object]:
    r = ObjectResult(k, tenant=k.split("/")[1], application="payment-service")
    r.events_delivered = events
    for name, value in counts.items():
        setattr(r, name, value)
    return r.to_dict()


def test_counts_are_summed_per_tenant_and_in_total() -> None:
    report = ReplayReport(make_plan())
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
    report = ReplayReport(make_plan())
    report.add(delivered(key("acme", 1), 5))
    failed = ObjectResult(key("acme", 2), tenant="acme").fail("AccessDenied on PutLogEvents", recoverable=False)
    report.add(failed.to_dict())
    damaged = ObjectResult(key("acme", 3), Status.DAMAGED, "truncated gzip stream after 812 bytes", tenant="acme")
    damaged.events_delivered = 4
    report.add(damaged.to_dict())
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
        skipped=[(key("acme", 1), LEDGER_SKIP), (key("acme", 2), LEDGER_SKIP), (key("initech", 3), "disabled")],
    )
    report = ReplayReport(plan)
    # A ledger skip found by a worker (delivered meanwhile by the consumer) counts the same way.
    skip = ObjectResult(key("acme", 4), Status.SKIPPED, LEDGER_SKIP, tenant="acme")
    report.add(skip.to_dict())
    doc = report.to_dict()
    assert doc["objects_failed"] == [{"key": "prod-1/acme//p/x.json.gz", "reason": "contains an empty segment"}]
    assert doc["objects_skipped_ledger"] == 3
    assert {s["reason"] for s in doc["objects_skipped"]} == {LEDGER_SKIP, "disabled"}
    assert doc["objects_delivered"] == 0
    assert report.exit_code == 1  # the malformed key is a failure an operator must see


def test_skipped_objects_alone_do_not_fail_the_run() -> None:
    report = ReplayReport(make_plan(skipped=[(key("acme", 1), LEDGER_SKIP)]))
    report.add(ObjectResult(key("acme", 2), Status.SKIPPED, "tenant 'acme' is disabled", tenant="acme").to_dict())
    assert report.exit_code == 0
    assert report.to_dict()["tenants"]["acme"]["objects_skipped"] == 1


def test_an_interrupted_run_exits_130_and_lists_what_it_did_not_attempt() -> None:
    report = ReplayReport(make_plan())
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
    report = ReplayReport(make_plan(failed=[("bad", "reason")]))
    assert report.exit_code == 1
    report.interrupted = True
    assert report.exit_code == 130


def test_rate_and_plan_figures() -> None:
    units = [WorkUnit(0, (ObjectSpec(key("acme", 1), 10, "e", 0.0),), 10)]
    report = ReplayReport(make_plan(units=units, undeliverable_fraction=0.123456))
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
