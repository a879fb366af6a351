"""The Deliverer's fan-out with in-memory stand-ins: one read per object, each delivery on its own, durability.

Sinks, ledger, tenant directory and central bucket are stand-ins here, so the tests can see the order of
writes and make any one delivery fail; tests/integration/test_deliveries.py runs the same paths against
the local AWS.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar

import orjson
import pytest
from botocore.exceptions import ClientError

from pipeline.coverage import EMPTY, WHOLE, Coverage
from pipeline.delivery.engine import Deliverer
from pipeline.delivery.results import LEDGER_SKIP, Status
from pipeline.delivery.routing import ObjectRef
from pipeline.errors import DeliveryError
from pipeline.ledger import LedgerEntry, ObjectLedger
from pipeline.records import Event
from pipeline.sinks import SinkResult, SinkTraits, SourceObject, traits_of
from pipeline.tenants import Delivery, DeliveryType, Tenant, TenantConfigError

CW, S3 = DeliveryType.CLOUDWATCH, DeliveryType.S3
NOW = datetime(2024, 6, 20, 12, 0, 0, tzinfo=UTC)
ROLE = "arn:aws:iam::444444444444:role/CustomerLogDistribution-umbrella"
KEY = "prod-1/umbrella/payment-service/pay-1/20240620-115900-00000000-0000-4000-8000-000000000000.json.gz"
CHECKOUT = KEY.replace("payment-service", "checkout")
TS = int(NOW.timestamp() * 1000) - 60_000


def body(n: int = 3) -> bytes:
    return gzip.compress(b"".join(orjson.dumps({"message": f"m{i}", "timestamp": TS + i}) + b"\n" for i in range(n)))


CW_DELIVERY = Delivery(
    "umbrella",
    "cloudwatch",
    CW,
    ROLE,
    "us-east-1",
    desired_logs=frozenset({"payment-service"}),
    log_group="/logs/umbrella",
)
S3_DELIVERY = Delivery("umbrella", "s3-archive", S3, ROLE, "us-east-1", bucket="umbrella-logs", bucket_prefix="p/")
UMBRELLA = Tenant("umbrella", (CW_DELIVERY, S3_DELIVERY))


class Tenants:
    def __init__(self, *tenants: Tenant) -> None:
        self.tenants = {t.tenant_id: t for t in tenants}

    def get(self, tenant_id: str) -> Tenant:
        if tenant_id not in self.tenants:
            raise TenantConfigError(f"unknown tenant {tenant_id!r}: no entry in tenant-configs")
        return self.tenants[tenant_id]


class Body:
    def __init__(self, data: bytes, log: list[str]) -> None:
        self.data, self.log = data, log

    def read(self, n: int = -1) -> bytes:
        self.log.append("read")
        data, self.data = (self.data, b"") if n < 0 else (self.data[:n], self.data[n:])
        return data


class CentralBucket:
    def __init__(self, objects: dict[str, bytes], log: list[str]) -> None:
        self.objects, self.log = objects, log
        self.gets = 0

    def get_object(self, Bucket: str, Key: str, IfMatch: str = '"etag-1"') -> dict[str, Any]:
        self.gets += 1
        self.log.append("get")
        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "NoSuchKey", "Message": "gone"}}, "GetObject")
        if IfMatch != '"etag-1"':
            raise ClientError({"Error": {"Code": "PreconditionFailed", "Message": "changed"}}, "GetObject")
        return {"Body": Body(self.objects[Key], self.log), "ETag": '"etag-1"', "LastModified": NOW}

    def head_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        self.log.append("head")
        if Key not in self.objects:
            raise ClientError({"Error": {"Code": "404", "Message": "Not Found"}}, "HeadObject")
        return {"ETag": '"etag-1"', "LastModified": NOW}


class Ledger:
    def __init__(self, log: list[str]) -> None:
        self.records: list[LedgerEntry] = []
        self.lookups = 0
        self.log = log

    def read(self, tenant_id: str, key: str) -> ObjectLedger:
        """The real ledger's reading of its records: the union of each delivery's coverage at its ETag."""
        self.lookups += 1
        held: dict[str, tuple[str, Coverage]] = {}
        for r in self.records:
            if (r.tenant_id, r.object_key) != (tenant_id, key):
                continue
            etag, covered = held.get(r.delivery_id, (r.etag, EMPTY))
            held[r.delivery_id] = (r.etag, (covered if etag == r.etag else EMPTY).union(r.covered or WHOLE))
        return ObjectLedger(held)

    def record(self, entry: LedgerEntry) -> None:
        self.log.append(f"record {entry.delivery_id}")
        self.records.append(entry)


@dataclass
class EventSink:
    log: list[str]
    durable: bool = True
    fail: str = ""
    sent: list[tuple[str, str, list[Event]]] = field(default_factory=list)
    name: ClassVar[str] = "cloudwatch"

    @property
    def traits(self) -> SinkTraits:
        t = traits_of("cloudwatch")
        return SinkTraits(t.delivers, t.needs_events, self.durable, t.writes_ledger)

    def send(self, dest: Delivery, stream: str, events: list[Event]) -> SinkResult:
        self.log.append(f"send {dest.delivery_id}")
        if self.fail:
            raise DeliveryError(self.fail)
        self.sent.append((dest.delivery_id, stream, events))
        return SinkResult(events_delivered=len(events), requests=1)

    def flush(self) -> None:
        self.log.append("flush")

    def close(self) -> None:
        pass


@dataclass
class ObjectSink:
    log: list[str]
    fail: str = ""
    recoverable: bool = True
    puts: list[tuple[str, SourceObject]] = field(default_factory=list)
    name: ClassVar[str] = "s3"
    traits: ClassVar[SinkTraits] = traits_of("s3")

    def put_object(self, dest: Delivery, source: SourceObject) -> SinkResult:
        self.log.append(f"put {dest.delivery_id}")
        if self.fail:
            raise DeliveryError(self.fail, recoverable=self.recoverable)
        self.puts.append((dest.delivery_id, source))
        return SinkResult(requests=1, bytes_delivered=len(source.body))

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class World:
    log: list[str]
    bucket: CentralBucket
    ledger: Ledger
    cw: EventSink
    s3: ObjectSink
    deliverer: Deliverer


def world(*tenants: Tenant, objects: dict[str, bytes] | None = None, durable: bool = True, **kw: Any) -> World:
    log: list[str] = []
    bucket = CentralBucket({KEY: body(), CHECKOUT: body(2)} if objects is None else objects, log)
    ledger = Ledger(log)
    cw, s3 = EventSink(log, durable=durable), ObjectSink(log)
    deliverer = Deliverer(
        Tenants(*(tenants or (UMBRELLA,))),  # type: ignore[arg-type]
        {CW: cw, S3: s3},  # type: ignore[dict-item]
        ledger,  # type: ignore[arg-type]
        s3=bucket,
        clock=lambda: NOW.timestamp(),
        **kw,
    )
    return World(log, bucket, ledger, cw, s3, deliverer)


def ref(key: str = KEY) -> ObjectRef:
    return ObjectRef("central", key, '"etag-1"')


def test_an_object_goes_to_each_delivery_that_wants_it_read_once() -> None:
    w = world()
    result = w.deliverer.deliver(ref())
    assert result.status is Status.DELIVERED and result.reason == ""
    assert w.bucket.gets == 1
    # Object deliveries first (cheap and durable at once), then the events, each recorded as soon as durable.
    assert w.log[:2] == ["get", "read"]
    assert w.log[2:] == ["put s3-archive", "record s3-archive", "send cloudwatch", "record cloudwatch"]
    [(_, source)] = w.s3.puts
    assert (source.bucket, source.key, source.etag, source.body) == ("central", KEY, "etag-1", body())
    [(_, stream, events)] = w.cw.sent
    assert stream == "payment-service-pay-1-2024-06-20"
    assert [m for _, m in events] == ["m0", "m1", "m2"]
    by_id = {d.delivery_id: d for d in result.deliveries}
    assert by_id["s3-archive"].bytes_delivered == len(body()) and by_id["s3-archive"].requests == 1
    assert by_id["cloudwatch"].events_delivered == 3 and by_id["cloudwatch"].streams == [stream]
    assert result.events_delivered == 3 and result.events_decoded == 3
    assert [(r.delivery_id, r.etag, r.bytes_delivered) for r in w.ledger.records] == [
        ("s3-archive", "etag-1", len(body())),
        ("cloudwatch", "etag-1", len(gzip.decompress(body()))),  # CloudWatch: the decoded bytes
    ]
    assert all(r.recorded for r in result.deliveries)


def test_an_object_only_s3_wants_is_never_decoded() -> None:
    w = world()
    result = w.deliverer.deliver(ref(CHECKOUT))
    assert result.status is Status.DELIVERED
    assert [m for m in w.log if m.startswith(("send", "put"))] == ["put s3-archive"]
    assert result.events_decoded == 0
    assert {d.delivery_id: str(d.status) for d in result.deliveries} == {
        "cloudwatch": "skipped",
        "s3-archive": "delivered",
    }


def test_one_failing_delivery_does_not_hold_back_the_others() -> None:
    w = world()
    w.s3.fail, w.s3.recoverable = "AccessDenied writing s3://umbrella-logs/p/k", False
    result = w.deliverer.deliver(ref())
    assert result.status is Status.FAILED
    assert result.reason == "s3-archive: AccessDenied writing s3://umbrella-logs/p/k"
    assert result.recoverable is False and result.acknowledged
    assert [r.delivery_id for r in w.ledger.records] == ["cloudwatch"]  # what did arrive is recorded
    # A recoverable failure leaves the object for a retry, which sends only what is missing.
    w = world()
    w.s3.fail = "SlowDown still failing after 8 attempts"
    first = w.deliverer.deliver(ref())
    assert first.recoverable and not first.acknowledged
    w.s3.fail = ""
    w.log.clear()
    second = w.deliverer.deliver(ref())
    assert second.status is Status.DELIVERED
    assert [m for m in w.log if m.startswith(("send", "put"))] == ["put s3-archive"]
    assert {d.delivery_id: d.reason for d in second.deliveries}["cloudwatch"] == LEDGER_SKIP


def test_a_second_delivery_of_the_same_object_is_a_ledger_skip() -> None:
    w = world()
    w.deliverer.deliver(ref())
    lookups = w.ledger.lookups
    w.log.clear()
    again = w.deliverer.deliver(ref())
    assert (again.status, again.reason) == (Status.SKIPPED, LEDGER_SKIP)
    assert w.log == ["head"]  # the ledger compared with the object's own ETag; the body not even fetched
    assert w.ledger.lookups == lookups + 1  # one ledger read for both deliveries


def test_redeliver_ignores_the_ledger_and_selected_deliveries_limit_the_work() -> None:
    w = world(redeliver=True, deliveries=("s3-archive",))
    w.deliverer.deliver(ref())
    w.deliverer.deliver(ref())
    assert [m for m in w.log if m.startswith(("send", "put"))] == ["put s3-archive"] * 2
    assert w.ledger.lookups == 0
    assert [d.delivery_id for d in w.deliverer.deliver(ref()).deliveries] == ["s3-archive"]


def test_deliveries_not_durable_on_return_are_recorded_only_on_commit() -> None:
    w = world(durable=False)
    result = w.deliverer.deliver(ref())
    by_id = {d.delivery_id: d for d in result.deliveries}
    assert by_id["s3-archive"].recorded and by_id["s3-archive"].durable  # durable at once
    assert not by_id["cloudwatch"].recorded and not by_id["cloudwatch"].durable
    assert [r.delivery_id for r in w.ledger.records] == ["s3-archive"]
    w.deliverer.flush()
    w.deliverer.commit(result)
    assert [r.delivery_id for r in w.ledger.records] == ["s3-archive", "cloudwatch"]
    assert by_id["cloudwatch"].recorded and result.status is Status.DELIVERED
    w.deliverer.commit(result)  # idempotent
    assert len(w.ledger.records) == 2


def test_a_failed_flush_abandons_only_what_waited_for_it() -> None:
    w = world(durable=False)
    result = w.deliverer.deliver(ref())
    w.deliverer.abandon(result, "vector exited with code 1")
    by_id = {d.delivery_id: d for d in result.deliveries}
    assert (by_id["cloudwatch"].status, by_id["cloudwatch"].recoverable) == (Status.FAILED, True)
    assert by_id["s3-archive"].status is Status.DELIVERED  # already stored and recorded
    assert (result.status, result.reason, result.recoverable) == (
        Status.FAILED,
        "cloudwatch: vector exited with code 1",
        True,
    )
    assert [r.delivery_id for r in w.ledger.records] == ["s3-archive"]


@pytest.mark.parametrize(
    ("key", "objects", "fragment", "recoverable"),
    [
        ("prod-1/umbrella//pod/x.json.gz", None, "empty segment", False),
        (KEY.replace("/umbrella/", "/wayne/"), None, "unknown tenant 'wayne'", False),
        (KEY, {}, "no longer exists", False),
    ],
)
def test_object_level_failures(key: str, objects: dict[str, bytes] | None, fragment: str, recoverable: bool) -> None:
    w = world(objects=objects)
    result = w.deliverer.deliver(ref(key))
    assert result.status is Status.FAILED and fragment in result.reason
    assert result.recoverable is recoverable
    assert w.ledger.records == [] and w.cw.sent == [] and w.s3.puts == []
