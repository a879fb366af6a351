"""Records written together (`Ledger.record_many`, CONTRACTS.md §10): one TransactWriteItems per group of up
to 100 objects, the same update and condition per object as `record()`, and a group whose guess the table
refutes written again one record at a time. Against the local DynamoDB, every call counted as it is made."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.provision import LocalEnvironment
from pipeline import aws
from pipeline.coverage import WHOLE, Coverage
from pipeline.ledger import TRANSACT_MAX, Ledger, LedgerEntry

pytestmark = pytest.mark.integration

KEY = "prod-1/umbrella/payment-service/pay-1/20240620-110000-00000000-0000-4000-8000-000000000000.json.gz"


def key(n: int) -> str:
    return KEY.replace("00000000-0000", f"{n:08d}-0000")


def entry(n: int, delivery_id: str = "cloudwatch", etag: str = "etag-1", **kw: Any) -> LedgerEntry:
    return LedgerEntry("umbrella", key(n), etag, delivery_id=delivery_id, **kw)


class Counted:
    """The ledger's own DynamoDB client, with every call it makes counted by operation name."""

    def __init__(self) -> None:
        self.client = aws.client("dynamodb")
        self.calls: Counter[str] = Counter()
        self.client.meta.events.register("before-call.dynamodb.*", self._count)

    def _count(self, model: Any, **_: Any) -> None:
        self.calls[model.name] += 1


@pytest.fixture
def counted(local_aws: LocalEnvironment) -> Counted:
    return Counted()


@pytest.fixture
def ledger(local_aws: LocalEnvironment, counted: Counted) -> Ledger:
    return Ledger(local_aws.names.ledger_table, client=counted.client, retention_s=3600)


def test_a_group_of_new_objects_is_one_call_per_hundred(ledger: Ledger, counted: Counted) -> None:
    entries = [entry(n, events_delivered=n, covered=Coverage.window(0, 1000)) for n in range(TRANSACT_MAX + 30)]
    ledger.record_many(entries)
    assert counted.calls == {"TransactWriteItems": 2}
    got = ledger.read_many("umbrella", [key(n) for n in range(TRANSACT_MAX + 30)])
    assert {k: o.at("etag-1") for k, o in got.items()} == {
        key(n): {"cloudwatch": Coverage.window(0, 1000)} for n in range(TRANSACT_MAX + 30)
    }
    assert all(o.mapped for o in got.values())
    assert sorted(e.events_delivered for e in ledger.entries("umbrella")) == list(range(TRANSACT_MAX + 30))


def test_one_object_is_one_update_and_its_records_are_one_write(ledger: Ledger, counted: Counted) -> None:
    ledger.record_many([entry(1, "cloudwatch", covered=WHOLE), entry(1, "s3-archive", bytes_delivered=5)])
    assert counted.calls == {"UpdateItem": 1}
    assert ledger.read("umbrella", key(1)).at("etag-1") == {"cloudwatch": WHOLE, "s3-archive": WHOLE}


def test_a_wrong_guess_falls_back_to_one_record_at_a_time_for_that_group_only(ledger: Ledger, counted: Counted) -> None:
    ledger.record(entry(5, "s3-archive"))  # object 5 has a map the caller does not know of
    counted.calls.clear()
    ledger.record_many([entry(n, covered=Coverage.window(0, 10)) for n in range(TRANSACT_MAX + 10)])
    # The first hundred: one cancelled transaction, then a record each (the create, refused for object 5,
    # then its entry); the last ten: one transaction.
    assert counted.calls == {"TransactWriteItems": 2, "UpdateItem": TRANSACT_MAX + 1}
    assert ledger.read("umbrella", key(5)).at("etag-1") == {"s3-archive": WHOLE, "cloudwatch": Coverage.window(0, 10)}
    assert len(ledger.read_many("umbrella", [key(n) for n in range(TRANSACT_MAX + 10)])) == TRANSACT_MAX + 10


def test_items_known_to_hold_the_map_set_only_their_own_entry(ledger: Ledger, counted: Counted) -> None:
    ledger.record_many([entry(n, "s3-archive") for n in range(3)])
    counted.calls.clear()
    ledger.record_many(
        [entry(n, covered=Coverage.window(5, 9)) for n in range(3)], mapped={("umbrella", key(n)) for n in range(3)}
    )
    assert counted.calls == {"TransactWriteItems": 1}
    for n in range(3):
        assert ledger.read("umbrella", key(n)).at("etag-1") == {
            "s3-archive": WHOLE,
            "cloudwatch": Coverage.window(5, 9),
        }


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    writes=st.lists(
        st.tuples(
            st.integers(0, 4),  # object
            st.sampled_from(["cloudwatch", "cw-eu", "s3-archive"]),
            st.integers(0, 5),  # window start (x 10 ms)
            st.booleans(),  # the caller's guess that the item holds the map
        ),
        min_size=1,
        max_size=12,
    ),
    split=st.integers(1, 4),
)
def test_any_grouping_and_any_guess_records_what_one_record_at_a_time_does(
    local_aws: LocalEnvironment, writes: list[tuple[int, str, int, bool]], split: int
) -> None:
    """Grouped, with right or wrong guesses, the table ends as it would after record() of each entry."""
    table = local_aws.names.ledger_table
    ddb = local_aws.client("dynamodb")
    for item in ddb.scan(TableName=table).get("Items", []):
        ddb.delete_item(TableName=table, Key={"tenant_id": item["tenant_id"], "object_key": item["object_key"]})
    ledger = Ledger(table)

    def cov(d: str, lo: int) -> Coverage | None:
        return None if d == "s3-archive" else Coverage.window(lo * 10, lo * 10 + 15)

    groups = [writes[i : i + split] for i in range(0, len(writes), split)]
    for group in groups:
        # One delivery of one object per group at most, as one batch's answer settles them.
        once = {(o, d): (o, d, lo, g) for o, d, lo, g in group}
        ledger.record_many(
            [entry(o, d, covered=cov(d, lo), events_delivered=lo) for o, d, lo, _ in once.values()],
            mapped={("umbrella", key(o)) for o, _, _, g in once.values() if g},
        )
    expect: dict[str, dict[str, Coverage]] = {}
    for group in groups:
        for o, d, lo, _ in {(o, d): (o, d, lo, g) for o, d, lo, g in group}.values():
            c = cov(d, lo)
            was = expect.setdefault(key(o), {}).get(d)
            expect[key(o)][d] = WHOLE if c is None else (c if was is None else was.union(c))
    got = ledger.read_many("umbrella", [key(n) for n in range(5)])
    assert {k: o.at("etag-1") for k, o in got.items()} == expect
