"""The delivery ledger: a durable record of what each object delivered to each delivery (CONTRACTS.md §10).

One item per (tenant, object key), a key schema that never changes. What each of the tenant's deliveries
received lives inside it, in the map `deliveries`: per `delivery_id`, the ETag it was delivered at, its
counts and when. An item written before deliveries existed has those fields at the top level; it counts
for the delivery `cloudwatch`.

Event deliveries (CloudWatch, Vector) also say which part of the object's events they received, by event
time (`pipeline.coverage`): each write adds one element "<delivery_id> <etag> <lo> <hi>" (`*` for an open
end) to the string set `covered`, with DynamoDB's ADD, an atomic union that needs no read and no condition.
What a delivery has received at an ETag is the union of its elements for that ETag; a record with none
(written before coverage existed, or by an object delivery such as S3) covers the whole object. A replay
window then sends exactly the events of its range that no earlier run covered, and adds its range.

Two deliveries of one object may finish at the same instant on different threads or processes. The map
is created by a conditional write that only one of them can win; every later write sets only its own
entry of the map (`SET deliveries.#id`), so neither can overwrite the other.

Records settled together (a replay's PutLogEvents answer, the consumer's group commit) are written with
`record_many`: TransactWriteItems of up to 100 objects, each item with the same update and condition as
`record`, chosen from whether the item is known to hold the map; a cancelled group is written again one
record at a time.

The consumer and the replay job share it: CloudWatch has no dedup, so this is what makes a replay after
an outage send exactly the gap, and a duplicate S3 notification harmless.

Retention: with a retention set (`retention_s`: LEDGER_RETENTION_DAYS, which `build_deliverer` passes in
from the process's Settings), every write stamps the item with `expires_at` (epoch seconds), the table's
TTL attribute. DynamoDB deletes expired items only eventually (often days
later), so every read treats an item past its `expires_at` as absent already: an expired object counts as
not delivered, and a replay of it sends it again. Keep the retention above the bucket's, so nothing the
bucket still holds can expire from the ledger.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from pipeline import aws
from pipeline.coverage import MAX_MS, MIN_MS, WHOLE, Coverage, decode_bound, encode_bound
from pipeline.errors import DeliveryError
from pipeline.retry import Retrying, RetryPolicy
from pipeline.tenants import V1_DELIVERY_ID

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

BATCH_GET_MAX = 100
BATCH_WRITE_MAX = 25
TRANSACT_MAX = 100  # items per TransactWriteItems (DynamoDB's limit)
UNPROCESSED_ATTEMPTS = 8  # batch rounds for keys DynamoDB left unprocessed (throttled), after the first
# DynamoDB leaves keys unprocessed when it throttles the batch: AWS advises asking again for just those, with
# exponential backoff. Nine calls over at most ~8 s, then the caller hears of it (LedgerError).
UNPROCESSED_RETRY = RetryPolicy(attempts=UNPROCESSED_ATTEMPTS + 1, base_s=0.05, cap_s=2.0)
TTL_ATTRIBUTE = "expires_at"
COVERED_ATTRIBUTE = "covered"


@dataclass(frozen=True)
class LedgerEntry:
    tenant_id: str
    object_key: str
    etag: str
    events_delivered: int = 0
    events_rejected: int = 0
    damaged: str = ""
    source: str = ""
    delivered_at: float = 0.0
    delivery_id: str = V1_DELIVERY_ID
    bytes_delivered: int = 0
    # The event-time range this write adds to what the delivery received at `etag`: a replay window, or
    # WHOLE. None for object deliveries (S3), whose record alone means the whole object.
    covered: Coverage | None = None


@dataclass(frozen=True)
class ObjectLedger:
    """What the ledger holds for one object: per delivery, the ETag of its record and what it received at
    that ETag. Read before the object's real ETag is known; `at()` answers once it is."""

    records: Mapping[str, tuple[str, Coverage]]
    # The item holds the map `deliveries`: a later write sets its own entry of it (`Ledger.record_many`).
    mapped: bool = False

    def at(self, etag: str | None) -> dict[str, Coverage]:
        """{delivery_id: coverage} of the records made at this ETag (an overwritten object has none).
        Without an ETag (a caller that cannot know it) the key alone decides."""
        want = _norm_etag(etag)
        return {d: cov for d, (e, cov) in self.records.items() if etag is None or e == want}


NOTHING = ObjectLedger({})


class LedgerError(DeliveryError):
    """The ledger could not answer after bounded retries (DynamoDB kept throttling). Recoverable: the
    objects it was about are kept, and the next attempt asks again."""


def _norm_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


class Ledger:
    def __init__(
        self,
        table: str,
        client: DynamoDBClient | None = None,
        sleep: Callable[[float], None] = time.sleep,
        retention_s: float = 0.0,
        clock: Callable[[], float] = time.time,
        retry: RetryPolicy = UNPROCESSED_RETRY,
    ) -> None:
        self.table = table
        self._client = client
        self._sleep = sleep
        self._retry = retry
        # 0 (no expiry) suits the readers that build their own ledger (plan, inventory): expiry is checked
        # on read from each item's own attribute, whatever the reader's retention.
        self.retention_s = retention_s
        self._clock = clock

    def _expiry(self) -> dict[str, Any] | None:
        if self.retention_s <= 0:
            return None
        return {"N": str(int(self._clock() + self.retention_s))}

    def _ddb(self) -> DynamoDBClient:
        if self._client is None:
            self._client = aws.client("dynamodb")
        return self._client

    def read(self, tenant_id: str, key: str) -> ObjectLedger:
        """What the ledger holds for one object (a consistent read)."""
        resp = self._ddb().get_item(
            TableName=self.table,
            Key={"tenant_id": {"S": tenant_id}, "object_key": {"S": key}},
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return _object_ledger(item) if item and not _expired(item, self._clock()) else NOTHING

    def read_for(self, objects: Iterable[tuple[str, str]]) -> dict[str, ObjectLedger]:
        """`read_many` for (tenant, key) pairs of any tenants: one batched read per tenant."""
        by_tenant: dict[str, list[str]] = {}
        for tenant, key in objects:
            by_tenant.setdefault(tenant, []).append(key)
        found: dict[str, ObjectLedger] = {}
        for tenant, keys in by_tenant.items():
            found |= self.read_many(tenant, keys)
        return found

    def delivered(self, tenant_id: str, key: str, etag: str | None) -> frozenset[str]:
        """The deliveries with a record of this object at this ETag (whatever part of it they received)."""
        return frozenset(self.read(tenant_id, key).at(etag))

    def delivered_for(self, objects: Iterable[tuple[str, str, str | None]]) -> dict[str, frozenset[str]]:
        """`delivered` for (tenant, key, etag) triples of any tenants, read in batches; keys with none left out."""
        triples = list(objects)
        held = self.read_for((tenant, key) for tenant, key, _ in triples)
        found: dict[str, frozenset[str]] = {}
        for _, key, etag in triples:
            done = frozenset(held[key].at(etag)) if key in held else frozenset()
            if done:
                found[key] = done
        return found

    def delivered_many(self, tenant_id: str, objects: Iterable[tuple[str, str | None]]) -> dict[str, frozenset[str]]:
        """Of (key, etag) pairs, {key: deliveries with a record at that ETag} for keys with any."""
        return self.delivered_for((tenant_id, key, etag) for key, etag in objects)

    def read_many(self, tenant_id: str, keys: Iterable[str]) -> dict[str, ObjectLedger]:
        """{key: what the ledger holds} for the keys it holds anything of: a BatchGetItem per 100 keys."""
        keys = list(dict.fromkeys(keys))
        found: dict[str, ObjectLedger] = {}
        for i in range(0, len(keys), BATCH_GET_MAX):
            request: dict[str, Any] = {
                self.table: {
                    "Keys": [
                        {"tenant_id": {"S": tenant_id}, "object_key": {"S": k}} for k in keys[i : i + BATCH_GET_MAX]
                    ],
                    "ConsistentRead": True,
                }
            }
            for resp in self._rounds(self._ddb().batch_get_item, request, "UnprocessedKeys"):
                for item in resp.get("Responses", {}).get(self.table, []):
                    if _expired(item, self._clock()):
                        continue
                    found[item["object_key"]["S"]] = _object_ledger(item)
        return found

    def record(self, entry: LedgerEntry) -> None:
        """Record one delivery of one object, leaving every other delivery's record in the item as it is."""
        record = _record_value(entry)
        key = {"tenant_id": {"S": entry.tenant_id}, "object_key": {"S": entry.object_key}}
        ddb = self._ddb()
        # Each write moves the item's expiry on: an object is forgotten a retention after its last delivery.
        expiry = self._expiry()
        ttl_set = f", {TTL_ATTRIBUTE} = :e" if expiry else ""
        values: dict[str, Any] = {":e": expiry} if expiry else {}
        # What an event delivery received joins what earlier runs did: ADD is a set union made by DynamoDB
        # itself, so two runs recording at once both keep their ranges.
        add = ""
        if entry.covered is not None:
            add = f" ADD {COVERED_ATTRIBUTE} :c"
            values[":c"] = {"SS": _coverage_elements(entry.delivery_id, entry.etag, entry.covered)}
        # The first delivery of an object (the common case) creates the map in one write; a later one, or the
        # loser of a race to create it, sets only its own entry.
        for _ in range(2):
            try:
                ddb.update_item(
                    TableName=self.table,
                    Key=key,
                    UpdateExpression="SET deliveries = :m" + ttl_set + add,
                    ConditionExpression="attribute_not_exists(deliveries)",
                    ExpressionAttributeValues={":m": {"M": {entry.delivery_id: {"M": record}}}, **values},
                )
                return
            except ddb.exceptions.ConditionalCheckFailedException:
                pass
            try:
                ddb.update_item(
                    TableName=self.table,
                    Key=key,
                    UpdateExpression="SET deliveries.#id = :r" + ttl_set + add,
                    ConditionExpression="attribute_exists(deliveries)",
                    ExpressionAttributeNames={"#id": entry.delivery_id},
                    ExpressionAttributeValues={":r": {"M": record}, **values},
                )
                return
            except ddb.exceptions.ConditionalCheckFailedException:
                continue  # the item was deleted in between (an operator's cleanup): start over
        raise LedgerError(f"{self.table}: could not record {entry.delivery_id} of {entry.object_key}")

    def record_many(self, entries: Iterable[LedgerEntry], mapped: Collection[tuple[str, str]] = ()) -> None:
        """Record many deliveries together: the same per-delivery update and condition as `record()`, in
        TransactWriteItems calls of up to 100 objects (one call for a single object: an UpdateItem).

        `mapped`: (tenant, key) of the items known to hold the map `deliveries` (the caller read them, or
        recorded another delivery of them); each of those sets its own entries, every other object creates
        the map. The records of one object are one update. A guess the table refutes (a condition fails:
        another writer created or deleted the item meanwhile) cancels the whole transaction, and that group
        alone is then written one record at a time with `record()`, which finds the right form itself. Every
        write is idempotent (a SET of the delivery's own entry, an ADD to a set), so writing a group again
        after a cancellation can never double anything.
        """
        by_item: dict[tuple[str, str], list[LedgerEntry]] = {}
        for e in entries:
            by_item.setdefault((e.tenant_id, e.object_key), []).append(e)
        groups = list(by_item.items())
        for i in range(0, len(groups), TRANSACT_MAX):
            chunk = groups[i : i + TRANSACT_MAX]
            updates = [self._update(key, group, key in mapped) for key, group in chunk]
            try:
                if len(updates) == 1:
                    self._ddb().update_item(**updates[0])
                else:
                    transact: list[Any] = [{"Update": u} for u in updates]  # the stubs' TypedDicts, built as dicts
                    self._ddb().transact_write_items(TransactItems=transact)
            except ClientError as exc:
                if aws.error_code(exc) not in (aws.CONDITION_FAILED, aws.TRANSACTION_CANCELED):
                    raise
                for _, group in chunk:
                    for e in group:
                        self.record(e)

    def _update(self, key: tuple[str, str], entries: list[LedgerEntry], mapped: bool) -> dict[str, Any]:
        """One item's UpdateItem parameters for its records: set the entries of a map that exists, or
        create it, each under the matching condition; ADD the coverage; move the expiry on."""
        values: dict[str, Any] = {}
        names: dict[str, str] = {}
        if mapped:
            sets = []
            for n, e in enumerate(entries):
                names[f"#d{n}"] = e.delivery_id
                values[f":r{n}"] = {"M": _record_value(e)}
                sets.append(f"deliveries.#d{n} = :r{n}")
            expression, condition = "SET " + ", ".join(sets), "attribute_exists(deliveries)"
        else:
            values[":m"] = {"M": {e.delivery_id: {"M": _record_value(e)} for e in entries}}
            expression, condition = "SET deliveries = :m", "attribute_not_exists(deliveries)"
        expiry = self._expiry()
        if expiry:
            expression += f", {TTL_ATTRIBUTE} = :e"
            values[":e"] = expiry
        covered = [
            c for e in entries if e.covered is not None for c in _coverage_elements(e.delivery_id, e.etag, e.covered)
        ]
        if covered:
            expression += f" ADD {COVERED_ATTRIBUTE} :c"
            values[":c"] = {"SS": list(dict.fromkeys(covered))}
        update: dict[str, Any] = {
            "TableName": self.table,
            "Key": {"tenant_id": {"S": key[0]}, "object_key": {"S": key[1]}},
            "UpdateExpression": expression,
            "ConditionExpression": condition,
            "ExpressionAttributeValues": values,
        }
        if names:
            update["ExpressionAttributeNames"] = names
        return update

    def replace_items(self, entries: Iterable[LedgerEntry]) -> None:
        """Write whole items, one per object with the records given for it, in BatchWriteItem calls of 25.

        Unconditional: each item replaces whatever the table held for its object. Only for items that can
        hold nothing but records of idempotent deliveries (S3), so that the worst a replaced record costs
        is one resend that overwrites the same destination object.
        """
        items: dict[tuple[str, str], dict[str, Any]] = {}
        expiry = self._expiry()
        for e in entries:
            item = items.setdefault(
                (e.tenant_id, e.object_key),
                {"tenant_id": {"S": e.tenant_id}, "object_key": {"S": e.object_key}, "deliveries": {"M": {}}},
            )
            if expiry:
                item[TTL_ATTRIBUTE] = expiry
            item["deliveries"]["M"][e.delivery_id] = {"M": _record_value(e)}
            if e.covered is not None:
                covered = item.setdefault(COVERED_ATTRIBUTE, {"SS": []})["SS"]
                covered.extend(_coverage_elements(e.delivery_id, e.etag, e.covered))
        requests = [{"PutRequest": {"Item": item}} for item in items.values()]
        for i in range(0, len(requests), BATCH_WRITE_MAX):
            for _ in self._rounds(self._ddb().batch_write_item, {self.table: requests[i : i + BATCH_WRITE_MAX]}):
                pass

    def _rounds(
        self, call: Callable[..., Any], request: dict[str, Any], leftover: str = "UnprocessedItems"
    ) -> Iterator[dict[str, Any]]:
        return batch_rounds(call, request, self._retry.begin(self._sleep), f"ledger table {self.table}", leftover)

    def entries(self, tenant_id: str) -> list[LedgerEntry]:
        """Every record of one tenant, one per (object, delivery): for reports, notebooks and tests."""
        pages = (
            self._ddb()
            .get_paginator("query")
            .paginate(
                TableName=self.table,
                KeyConditionExpression="tenant_id = :t",
                ExpressionAttributeValues={":t": {"S": tenant_id}},
            )
        )
        return [e for page in pages for item in page.get("Items", []) for e in _entries(item)]


def batch_rounds(
    call: Callable[..., Any],
    request: dict[str, Any],
    retrying: Retrying,
    what: str,
    leftover: str = "UnprocessedItems",
    error: Callable[[str], Exception] = LedgerError,
) -> Iterator[dict[str, Any]]:
    """Each answer of a DynamoDB batch call, sent again with what DynamoDB left unprocessed (throttled):
    bounded by the retry loop, with its backoff, then `error` naming `what` and how much is left.

    The ledger's batches and the tenant migration's reads (`admin.migrate`) go through this one loop."""
    while True:
        resp: dict[str, Any] = call(RequestItems=request)
        yield resp
        request = resp.get(leftover) or {}
        if not request:
            return
        if not retrying.wait():
            raise error(
                f"{what}: {_count_requests(request)} keys still unprocessed after "
                f"{retrying.failures} batch rounds ({leftover}): DynamoDB kept throttling"
            )


def _count_requests(request: Mapping[str, Any]) -> int:
    """Keys in a BatchGetItem request ({table: {"Keys": [...]}}) or items in a BatchWriteItem one ({table: [...]})."""
    return sum(len(v.get("Keys", [])) if isinstance(v, Mapping) else len(v) for v in request.values())


def _record_value(entry: LedgerEntry) -> dict[str, Any]:
    """One delivery's record, as the value under `deliveries.{delivery_id}`."""
    record: dict[str, Any] = {
        "etag": {"S": _norm_etag(entry.etag)},
        "events_delivered": {"N": str(entry.events_delivered)},
        "events_rejected": {"N": str(entry.events_rejected)},
        "bytes_delivered": {"N": str(entry.bytes_delivered)},
        "source": {"S": entry.source},
        "delivered_at": {"N": repr(entry.delivered_at or time.time())},
    }
    if entry.damaged:
        record["damaged"] = {"S": entry.damaged[:1000]}
    return record


def _records(item: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """{delivery_id: record}; an item from before deliveries existed is the record of `cloudwatch`."""
    records: dict[str, Mapping[str, Any]] = {}
    if "etag" in item:
        records[V1_DELIVERY_ID] = item
    for delivery_id, value in item.get("deliveries", {}).get("M", {}).items():
        records[delivery_id] = value.get("M", {})
    return records


def _expired(item: Mapping[str, Any], now: float) -> bool:
    """Past its TTL: DynamoDB has not deleted it yet, but it is gone as far as delivery is concerned."""
    expires = item.get(TTL_ATTRIBUTE, {}).get("N")
    return expires is not None and float(expires) <= now


def _coverage_elements(delivery_id: str, etag: str, covered: Coverage) -> list[str]:
    """The `covered` set's elements for one write: one per interval (a window is one)."""
    tag = _norm_etag(etag)
    return [f"{delivery_id} {tag} {encode_bound(lo)} {encode_bound(hi)}" for lo, hi in covered.intervals]


def _covered_by(item: Mapping[str, Any]) -> dict[tuple[str, str], Coverage]:
    """{(delivery_id, etag): the union of its elements}. An element this code cannot read is ignored: the
    record it belongs to then counts as the whole object, the side that never sends twice."""
    spans: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for element in item.get(COVERED_ATTRIBUTE, {}).get("SS", []):
        parts = element.split(" ")
        if len(parts) < 4:
            continue
        delivery_id, etag = parts[0], " ".join(parts[1:-2])
        try:
            lo, hi = decode_bound(parts[-2], MIN_MS), decode_bound(parts[-1], MAX_MS)
        except ValueError:
            continue
        spans.setdefault((delivery_id, etag), []).append((lo, hi))
    return {k: Coverage.of(v) for k, v in spans.items()}


def _object_ledger(item: Mapping[str, Any]) -> ObjectLedger:
    covered = _covered_by(item)
    records: dict[str, tuple[str, Coverage]] = {}
    for delivery_id, r in _records(item).items():
        etag = r.get("etag", {}).get("S", "")
        # No element for this record: written before coverage existed, or by an object delivery. Either
        # way it stands for the whole object (a pre-coverage record does not say which window wrote it).
        records[delivery_id] = (etag, covered.get((delivery_id, etag), WHOLE))
    return ObjectLedger(records, mapped="deliveries" in item)


def _entries(item: Mapping[str, Any]) -> list[LedgerEntry]:
    covered = _covered_by(item)

    def number(r: Mapping[str, Any], name: str) -> float:
        return float(r.get(name, {}).get("N", "0"))

    return [
        LedgerEntry(
            tenant_id=item["tenant_id"]["S"],
            object_key=item["object_key"]["S"],
            etag=r.get("etag", {}).get("S", ""),
            events_delivered=int(number(r, "events_delivered")),
            events_rejected=int(number(r, "events_rejected")),
            damaged=r.get("damaged", {}).get("S", ""),
            source=r.get("source", {}).get("S", ""),
            delivered_at=number(r, "delivered_at"),
            delivery_id=delivery_id,
            bytes_delivered=int(number(r, "bytes_delivered")),
            covered=covered.get((delivery_id, r.get("etag", {}).get("S", ""))),
        )
        for delivery_id, r in sorted(_records(item).items())
    ]
