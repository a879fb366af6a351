"""The delivery ledger (CONTRACTS.md §10): one item per (tenant, object), a record per delivery inside it.

Against the local DynamoDB, except the UnprocessedKeys rounds of `delivered_many`, which a scripted client
plays (DynamoDB only leaves keys unprocessed under throttling).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from boto3.dynamodb.types import TypeSerializer

from devstack.provision import LocalEnvironment
from pipeline.coverage import WHOLE, Coverage
from pipeline.ledger import BATCH_GET_MAX, UNPROCESSED_ATTEMPTS, Ledger, LedgerEntry, LedgerError

pytestmark = pytest.mark.integration

KEY = "prod-1/umbrella/payment-service/pay-1/20240620-110000-00000000-0000-4000-8000-000000000000.json.gz"


def key(n: int) -> str:
    return KEY.replace("00000000-0000", f"{n:08d}-0000")


def entry(delivery_id: str = "cloudwatch", etag: str = "etag-1", k: str = KEY, **kw: Any) -> LedgerEntry:
    return LedgerEntry("umbrella", k, etag, delivery_id=delivery_id, **kw)


@pytest.fixture
def ledger(local_aws: LocalEnvironment) -> Ledger:
    return Ledger(local_aws.names.ledger_table)


def raw_item(local: LocalEnvironment, k: str = KEY) -> dict[str, Any]:
    return local.client("dynamodb").get_item(
        TableName=local.names.ledger_table, Key={"tenant_id": {"S": "umbrella"}, "object_key": {"S": k}}
    )["Item"]


def put_legacy(local: LocalEnvironment, k: str = KEY, etag: str = "etag-1") -> None:
    """An item as the ledger wrote it before deliveries existed: the record at the top level."""
    ser = TypeSerializer()
    item = {
        "tenant_id": "umbrella",
        "object_key": k,
        "etag": etag,
        "events_delivered": 12,
        "events_rejected": 1,
        "source": "consumer",
        "delivered_at": 1718881200,
    }
    local.client("dynamodb").put_item(
        TableName=local.names.ledger_table, Item={n: ser.serialize(v) for n, v in item.items()}
    )


def test_nothing_recorded_is_nothing_delivered(ledger: Ledger) -> None:
    assert ledger.delivered("umbrella", KEY, "etag-1") == frozenset()
    assert ledger.delivered_many("umbrella", [(KEY, "etag-1")]) == {}
    assert ledger.entries("umbrella") == []


def test_each_delivery_has_its_own_record_in_one_item(ledger: Ledger, local_aws: LocalEnvironment) -> None:
    ledger.record(entry("cloudwatch", events_delivered=40, events_rejected=2, source="replay", delivered_at=1.5))
    assert ledger.delivered("umbrella", KEY, "etag-1") == {"cloudwatch"}
    ledger.record(entry("s3-archive", bytes_delivered=2048, source="replay", delivered_at=2.5))
    assert ledger.delivered("umbrella", KEY, "etag-1") == {"cloudwatch", "s3-archive"}
    # One item: the key schema never changes, the deliveries live inside it.
    item = raw_item(local_aws)
    assert set(item["deliveries"]["M"]) == {"cloudwatch", "s3-archive"}
    assert ledger.entries("umbrella") == [
        LedgerEntry("umbrella", KEY, "etag-1", 40, 2, "", "replay", 1.5, "cloudwatch", 0),
        LedgerEntry("umbrella", KEY, "etag-1", 0, 0, "", "replay", 2.5, "s3-archive", 2048),
    ]


def test_an_etag_mismatch_is_not_delivered(ledger: Ledger) -> None:
    ledger.record(entry("cloudwatch", etag='"etag-1"'))  # S3 quotes ETags; the ledger does not care
    assert ledger.delivered("umbrella", KEY, "etag-1") == {"cloudwatch"}
    assert ledger.delivered("umbrella", KEY, '"etag-1"') == {"cloudwatch"}
    # The object was overwritten since: what was delivered was another object.
    assert ledger.delivered("umbrella", KEY, "etag-2") == frozenset()
    assert ledger.delivered_many("umbrella", [(KEY, "etag-2")]) == {}
    # Without an ETag to compare (a notification that lacks one), the key alone decides.
    assert ledger.delivered("umbrella", KEY, None) == {"cloudwatch"}


def test_each_delivery_is_compared_at_its_own_etag(ledger: Ledger) -> None:
    ledger.record(entry("cloudwatch", etag="etag-1"))
    ledger.record(entry("s3-archive", etag="etag-2"))  # the overwritten object went to S3 only, so far
    assert ledger.delivered("umbrella", KEY, "etag-1") == {"cloudwatch"}
    assert ledger.delivered("umbrella", KEY, "etag-2") == {"s3-archive"}
    ledger.record(entry("cloudwatch", etag="etag-2", events_delivered=9))  # re-recorded: replaced, not added
    assert ledger.delivered("umbrella", KEY, "etag-2") == {"cloudwatch", "s3-archive"}
    cw = [e for e in ledger.entries("umbrella") if e.delivery_id == "cloudwatch"]
    assert [(e.etag, e.events_delivered) for e in cw] == [("etag-2", 9)]


def test_damaged_reason_is_kept_and_bounded(ledger: Ledger) -> None:
    ledger.record(entry("cloudwatch", damaged="truncated gzip stream " + "x" * 5000))
    [e] = ledger.entries("umbrella")
    assert e.damaged.startswith("truncated gzip stream") and len(e.damaged) == 1000


def test_a_legacy_item_counts_for_cloudwatch(ledger: Ledger, local_aws: LocalEnvironment) -> None:
    put_legacy(local_aws)
    assert ledger.delivered("umbrella", KEY, "etag-1") == {"cloudwatch"}
    assert ledger.delivered("umbrella", KEY, "etag-2") == frozenset()
    assert ledger.delivered_many("umbrella", [(KEY, "etag-1")]) == {KEY: frozenset({"cloudwatch"})}
    assert ledger.entries("umbrella") == [
        LedgerEntry("umbrella", KEY, "etag-1", 12, 1, "", "consumer", 1718881200.0, "cloudwatch", 0)
    ]
    # Another delivery recorded on it keeps the legacy record.
    ledger.record(entry("s3-archive"))
    assert ledger.delivered("umbrella", KEY, "etag-1") == {"cloudwatch", "s3-archive"}
    assert [e.delivery_id for e in ledger.entries("umbrella")] == ["cloudwatch", "s3-archive"]


def test_cloudwatch_recorded_again_on_a_legacy_item_wins_over_it(ledger: Ledger, local_aws: LocalEnvironment) -> None:
    put_legacy(local_aws, etag="etag-1")
    ledger.record(entry("cloudwatch", etag="etag-2", events_delivered=3))
    assert ledger.delivered("umbrella", KEY, "etag-2") == {"cloudwatch"}
    assert ledger.delivered("umbrella", KEY, "etag-1") == frozenset()
    assert [(e.delivery_id, e.etag, e.events_delivered) for e in ledger.entries("umbrella")] == [
        ("cloudwatch", "etag-2", 3)
    ]


def test_event_deliveries_record_the_union_of_the_ranges_they_received(
    ledger: Ledger, local_aws: LocalEnvironment
) -> None:
    ledger.record(entry("cloudwatch", covered=Coverage.window(100, 200)))
    ledger.record(entry("cloudwatch", covered=Coverage.window(300, 400)))
    ledger.record(entry("cloudwatch", covered=Coverage.window(200, 300)))  # fills the gap: one range
    ledger.record(entry("s3-archive"))  # an object delivery: its record is the whole object
    held = ledger.read("umbrella", KEY)
    assert held.at("etag-1") == {"cloudwatch": Coverage.window(100, 400), "s3-archive": WHOLE}
    assert held.at('"etag-1"') == held.at("etag-1")  # S3's quotes are not part of the ETag
    assert held.at("etag-2") == {}
    # Stored as one element per write in a string set, so that DynamoDB's ADD makes the union.
    assert sorted(raw_item(local_aws)["covered"]["SS"]) == [
        "cloudwatch etag-1 100 200",
        "cloudwatch etag-1 200 300",
        "cloudwatch etag-1 300 400",
    ]
    [cw, _] = ledger.entries("umbrella")
    assert cw.covered == Coverage.window(100, 400)


def test_a_whole_object_delivery_after_windows_covers_everything(ledger: Ledger, local_aws: LocalEnvironment) -> None:
    ledger.record(entry("cloudwatch", covered=Coverage.window(100, 200)))
    ledger.record(entry("cloudwatch", covered=WHOLE))
    assert ledger.read("umbrella", KEY).at("etag-1") == {"cloudwatch": WHOLE}
    assert "cloudwatch etag-1 * *" in raw_item(local_aws)["covered"]["SS"]


def test_a_record_without_coverage_counts_as_the_whole_object(ledger: Ledger, local_aws: LocalEnvironment) -> None:
    """Pre-coverage records (the legacy top-level one, and deliveries-map ones) do not say which window
    wrote them: they stand for the whole object, the reading that never sends an event twice."""
    put_legacy(local_aws)
    assert ledger.read("umbrella", KEY).at("etag-1") == {"cloudwatch": WHOLE}
    ledger.record(entry("s3-archive"))  # a deliveries map now, still without coverage for cloudwatch
    assert ledger.read("umbrella", KEY).at("etag-1") == {"cloudwatch": WHOLE, "s3-archive": WHOLE}


def test_an_overwritten_object_starts_its_coverage_again(ledger: Ledger) -> None:
    ledger.record(entry("cloudwatch", covered=Coverage.window(100, 200)))
    ledger.record(entry("cloudwatch", etag="etag-2", covered=Coverage.window(500, 600)))
    held = ledger.read("umbrella", KEY)
    assert held.at("etag-2") == {"cloudwatch": Coverage.window(500, 600)}
    assert held.at("etag-1") == {}


def test_windows_recorded_concurrently_keep_every_range(local_aws: LocalEnvironment) -> None:
    """Two replays of one tenant recording the same object at once: ADD unions, neither range is lost."""
    atomic = OneRequestAtATime()
    windows = [Coverage.window(i * 100, i * 100 + 50) for i in range(6)]
    barrier = threading.Barrier(len(windows))

    def write(covered: Coverage) -> None:
        ledger = Ledger(local_aws.names.ledger_table, client=atomic.attach(local_aws.client("dynamodb")))
        barrier.wait()
        ledger.record(entry("cloudwatch", covered=covered))

    threads = [threading.Thread(target=write, args=(w,)) for w in windows]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    union = Coverage.of(i for w in windows for i in w.intervals)
    assert Ledger(local_aws.names.ledger_table).read("umbrella", KEY).at("etag-1") == {"cloudwatch": union}


class OneRequestAtATime:
    """Makes each DynamoDB request atomic against moto, as it is in DynamoDB.

    moto applies a conditional update as check-then-write with no lock, so two requests for one item can
    interleave inside moto (both see no item, the second create replaces the first), which DynamoDB never
    does. Holding a lock from each request's start to its answer gives the guarantee DynamoDB gives, and
    the threads still race between requests, which is what the ledger has to survive.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def attach(self, client: Any) -> Any:
        client.meta.events.register("before-call.dynamodb.UpdateItem", self._enter)
        client.meta.events.register("after-call.dynamodb.UpdateItem", self._leave)
        client.meta.events.register("after-call-error.dynamodb.UpdateItem", self._leave)
        return client

    def _enter(self, **_: Any) -> None:
        self.lock.acquire()  # returns None: a before-call handler that returns something replaces the call

    def _leave(self, **_: Any) -> None:
        self.lock.release()


def test_two_deliveries_recorded_concurrently_both_survive(local_aws: LocalEnvironment) -> None:
    """The first write of an object's item races: whoever loses must not erase the winner's record."""
    ids = ["cloudwatch", "s3-archive", "s3-backup", "cw-eu"]
    rounds = 12
    atomic = OneRequestAtATime()
    errors: list[BaseException] = []

    def write(delivery_id: str, k: str, barrier: threading.Barrier) -> None:
        ledger = Ledger(local_aws.names.ledger_table, client=atomic.attach(local_aws.client("dynamodb")))
        barrier.wait()
        try:
            ledger.record(entry(delivery_id, k=k))
        except BaseException as exc:
            errors.append(exc)

    for n in range(rounds):
        barrier = threading.Barrier(len(ids))
        threads = [threading.Thread(target=write, args=(d, key(n), barrier)) for d in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    ledger = Ledger(local_aws.names.ledger_table)
    found = ledger.delivered_many("umbrella", [(key(n), "etag-1") for n in range(rounds)])
    assert found == {key(n): frozenset(ids) for n in range(rounds)}
    assert len(ledger.entries("umbrella")) == rounds * len(ids)


@pytest.mark.parametrize("before_request", [0, 1, 2])
def test_a_record_made_between_two_requests_of_another_survives(
    local_aws: LocalEnvironment, before_request: int
) -> None:
    """The race, made deterministic: another delivery's record lands just before one of this record's requests
    (or after the last, when it makes fewer). Wherever it lands, both records are there at the end."""
    table = local_aws.names.ledger_table
    other = Ledger(table, client=local_aws.client("dynamodb"))
    client = local_aws.client("dynamodb")
    requests: list[int] = []

    def interleave(**_: Any) -> None:
        if len(requests) == before_request:
            other.record(entry("s3-archive", bytes_delivered=10))
        requests.append(len(requests))

    client.meta.events.register("before-call.dynamodb.UpdateItem", interleave)
    Ledger(table, client=client).record(entry("cloudwatch", events_delivered=5))
    if len(requests) <= before_request:
        other.record(entry("s3-archive", bytes_delivered=10))
    ledger = Ledger(table)
    assert ledger.delivered("umbrella", KEY, "etag-1") == {"cloudwatch", "s3-archive"}
    assert [(e.delivery_id, e.events_delivered, e.bytes_delivered) for e in ledger.entries("umbrella")] == [
        ("cloudwatch", 5, 0),
        ("s3-archive", 0, 10),
    ]


def test_delivered_many_over_several_batches(ledger: Ledger) -> None:
    n = BATCH_GET_MAX * 2 + 17
    for i in range(0, n, 3):
        ledger.record(entry("cloudwatch", k=key(i)))
    for i in range(0, n, 5):
        ledger.record(entry("s3-archive", k=key(i)))
    ledger.record(entry("s3-archive", k=key(1), etag="etag-old"))  # at another ETag: not delivered
    found = ledger.delivered_many("umbrella", [(key(i), "etag-1") for i in range(n)])
    expected = {
        key(i): frozenset(({"cloudwatch"} if i % 3 == 0 else set()) | ({"s3-archive"} if i % 5 == 0 else set()))
        for i in range(n)
        if i % 3 == 0 or i % 5 == 0
    }
    assert found == expected
    # The same answer, key by key.
    for i in (0, 1, 3, 5, 15, n - 1):
        assert ledger.delivered("umbrella", key(i), "etag-1") == expected.get(key(i), frozenset())


# ---------------------------------------------------------------------------------------------------------
# delivered_many under throttling: UnprocessedKeys, with a scripted client
# ---------------------------------------------------------------------------------------------------------


class Throttled:
    """BatchGetItem that leaves keys unprocessed for `rounds` answers, then answers from `items`."""

    def __init__(self, table: str, items: dict[str, dict[str, Any]], rounds: int) -> None:
        self.table = table
        self.items = items
        self.rounds = rounds
        self.calls: list[list[str]] = []

    def batch_get_item(self, RequestItems: dict[str, Any]) -> dict[str, Any]:
        keys = [k["object_key"]["S"] for k in RequestItems[self.table]["Keys"]]
        self.calls.append(keys)
        if len(self.calls) <= self.rounds:
            # Half answered, half left over (as DynamoDB does when throttled).
            done, left = keys[: len(keys) // 2], keys[len(keys) // 2 :]
            unprocessed = {
                self.table: {
                    "Keys": [{"tenant_id": {"S": "umbrella"}, "object_key": {"S": k}} for k in left],
                    "ConsistentRead": True,
                }
            }
            return {
                "Responses": {self.table: [self.items[k] for k in done if k in self.items]},
                "UnprocessedKeys": unprocessed if left else {},
            }
        return {"Responses": {self.table: [self.items[k] for k in keys if k in self.items]}, "UnprocessedKeys": {}}


def ledger_item(k: str, *deliveries: str) -> dict[str, Any]:
    record = {"M": {"etag": {"S": "etag-1"}}}
    return {
        "tenant_id": {"S": "umbrella"},
        "object_key": {"S": k},
        "deliveries": {"M": dict.fromkeys(deliveries, record)},
    }


def test_unprocessed_keys_are_asked_again_until_answered() -> None:
    items = {key(i): ledger_item(key(i), "cloudwatch", "s3-archive") for i in range(8)}
    ddb = Throttled("t", items, rounds=2)
    sleeps: list[float] = []
    found = Ledger("t", client=ddb, sleep=sleeps.append).delivered_many(
        "umbrella", [(key(i), "etag-1") for i in range(10)]
    )
    assert found == {key(i): frozenset({"cloudwatch", "s3-archive"}) for i in range(8)}
    assert [len(c) for c in ddb.calls] == [10, 5, 3]  # only what was left over is asked again
    assert len(sleeps) == 2 and all(0 <= s <= 2.0 for s in sleeps)


def test_keys_left_unprocessed_for_good_are_a_ledger_error() -> None:
    """Bounded: a ledger that cannot answer must fail the lookup, not loop nor say 'nothing delivered'."""
    items = {key(i): ledger_item(key(i), "cloudwatch") for i in range(4)}
    ddb = Throttled("t", items, rounds=10_000)
    sleeps: list[float] = []
    keys = [(key(i), "etag-1") for i in range(64)]
    with pytest.raises(LedgerError, match="unprocessed"):
        Ledger("t", client=ddb, sleep=sleeps.append).delivered_many("umbrella", keys)
    assert len(ddb.calls) == UNPROCESSED_ATTEMPTS + 1
    assert len(sleeps) == UNPROCESSED_ATTEMPTS


def test_replace_items_writes_whole_items_in_batches_of_25(local_aws: LocalEnvironment) -> None:
    ledger = Ledger(local_aws.names.ledger_table)
    entries = [LedgerEntry("hooli", f"k/{i:03d}", f"e{i}", delivery_id="archive", bytes_delivered=i) for i in range(60)]
    calls: list[int] = []
    ddb = ledger._ddb()
    ddb.meta.events.register(
        "provide-client-params.dynamodb.BatchWriteItem",
        lambda params, **_: calls.append(len(params["RequestItems"][local_aws.names.ledger_table])),
    )
    ledger.replace_items(entries)
    assert calls == [25, 25, 10]
    got = {e.object_key: e for e in ledger.entries("hooli")}
    assert set(got) == {e.object_key for e in entries}
    assert got["k/007"].etag == "e7" and got["k/007"].bytes_delivered == 7 and got["k/007"].delivery_id == "archive"
    assert ledger.delivered("hooli", "k/007", "e7") == {"archive"}
    # Whole items: a second write replaces the first one's records.
    ledger.replace_items([LedgerEntry("hooli", "k/007", "e7b", delivery_id="archive-2")])
    assert ledger.delivered("hooli", "k/007", None) == {"archive-2"}
