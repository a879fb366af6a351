"""The delivery ledger: a durable record of each object fully delivered (CONTRACTS.md §7).

One item per (tenant, object key), carrying the ETag it was delivered at and its event counts. The
consumer and the replay job share it: CloudWatch has no dedup, so this is what makes a replay after an
outage send exactly the gap, and a duplicate S3 notification harmless.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pipeline import aws

BATCH_GET_MAX = 100


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


def _norm_etag(etag: str | None) -> str:
    return (etag or "").strip('"')


class Ledger:
    def __init__(self, table: str, client: Any | None = None) -> None:
        self.table = table
        self._client = client

    def _ddb(self) -> Any:
        if self._client is None:
            self._client = aws.client("dynamodb")
        return self._client

    def is_delivered(self, tenant_id: str, key: str, etag: str | None) -> bool:
        """Whether this object, at this ETag, was already delivered. An overwritten object was not."""
        resp = self._ddb().get_item(
            TableName=self.table,
            Key={"tenant_id": {"S": tenant_id}, "object_key": {"S": key}},
            ConsistentRead=True,
        )
        item = resp.get("Item")
        return item is not None and _matches(item, etag)

    def delivered_keys(self, tenant_id: str, objects: Iterable[tuple[str, str | None]]) -> set[str]:
        """Of (key, etag) pairs, the keys already delivered at that ETag: one BatchGetItem per 100 keys."""
        wanted = dict(objects)
        keys = list(wanted)
        found: set[str] = set()
        for i in range(0, len(keys), BATCH_GET_MAX):
            request: dict[str, Any] = {
                self.table: {
                    "Keys": [
                        {"tenant_id": {"S": tenant_id}, "object_key": {"S": k}} for k in keys[i : i + BATCH_GET_MAX]
                    ],
                    "ConsistentRead": True,
                }
            }
            while request:
                resp = self._ddb().batch_get_item(RequestItems=request)
                for item in resp.get("Responses", {}).get(self.table, []):
                    k = item["object_key"]["S"]
                    if _matches(item, wanted.get(k)):
                        found.add(k)
                request = resp.get("UnprocessedKeys") or {}
                if request:
                    time.sleep(0.05)
        return found

    def record(self, entry: LedgerEntry) -> None:
        item: dict[str, Any] = {
            "tenant_id": {"S": entry.tenant_id},
            "object_key": {"S": entry.object_key},
            "etag": {"S": _norm_etag(entry.etag)},
            "events_delivered": {"N": str(entry.events_delivered)},
            "events_rejected": {"N": str(entry.events_rejected)},
            "source": {"S": entry.source},
            "delivered_at": {"N": repr(entry.delivered_at or time.time())},
        }
        if entry.damaged:
            item["damaged"] = {"S": entry.damaged[:1000]}
        self._ddb().put_item(TableName=self.table, Item=item)

    def entries(self, tenant_id: str) -> list[LedgerEntry]:
        """Every entry of one tenant (for reports, notebooks and tests)."""
        out: list[LedgerEntry] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "tenant_id = :t",
            "ExpressionAttributeValues": {":t": {"S": tenant_id}},
        }
        while True:
            resp = self._ddb().query(**kwargs)
            out.extend(_entry(i) for i in resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return out
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]


def _matches(item: Mapping[str, Any], etag: str | None) -> bool:
    # Without a known ETag (rare: a notification that lacks one) the key alone decides.
    return etag is None or item.get("etag", {}).get("S", "") == _norm_etag(etag)


def _entry(item: Mapping[str, Any]) -> LedgerEntry:
    return LedgerEntry(
        tenant_id=item["tenant_id"]["S"],
        object_key=item["object_key"]["S"],
        etag=item.get("etag", {}).get("S", ""),
        events_delivered=int(item.get("events_delivered", {}).get("N", "0")),
        events_rejected=int(item.get("events_rejected", {}).get("N", "0")),
        damaged=item.get("damaged", {}).get("S", ""),
        source=item.get("source", {}).get("S", ""),
        delivered_at=float(item.get("delivered_at", {}).get("N", "0")),
    )
