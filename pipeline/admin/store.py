"""Reading and changing deliveries in a v2 tenant table: what the tenant CLI and the HTTP API both call.

Every write is validated with `parse_delivery(strict=True)` first (every bad field named, nothing written
when one is bad) and stored as `delivery_item` of the result, so the table holds items exactly as every
reader parses them. `created_at` is set once, `updated_at` on every change.

Concurrency: an item's ETag is a digest of its stored form, and every write is conditional on the item
being what the writer read (its `updated_at`, or its absence), so two writers that read the same version
cannot both win; a caller that passes `if_match` is refused unless the item still has that ETag.

Each change is one audit log line (logger `pipeline.admin.audit`): who (an actor name, never a key), what,
and the item before and after.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from pipeline import aws
from pipeline.admin.tables import open_table
from pipeline.keys import TENANT_ID_RE
from pipeline.tenants import (
    FIELDS,
    TableSchema,
    TenantConfigError,
    TenantDirectory,
    delivery_item,
    deserialize,
    parse_delivery,
    tenant_from_items,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

audit = logging.getLogger("pipeline.admin.audit")
# Who makes the changes of the current request, when one store serves several callers (the API: one per
# key id); unset, the store's own `actor`.
ACTOR: ContextVar[str | None] = ContextVar("pipeline_admin_actor", default=None)

MANAGED = tuple(f.name for f in FIELDS if f.managed)
KEYS = tuple(f.name for f in FIELDS if f.key)
_serializer = TypeSerializer()


class NotFound(LookupError):
    """An unknown tenant, or an unknown delivery of a known tenant; the message says which."""


class PreconditionFailed(RuntimeError):
    """If-Match named another version, or the item changed between the read and the write."""


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def etag(item: Mapping[str, Any]) -> str:
    canonical = json.dumps(item, sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.sha256(canonical.encode()).hexdigest()[:32] + '"'


@dataclass(frozen=True)
class Stored:
    item: dict[str, Any]

    @property
    def etag(self) -> str:
        return etag(self.item)


@dataclass(frozen=True)
class Change:
    action: str  # created, replaced, updated, deleted, unchanged
    before: dict[str, Any] | None
    after: dict[str, Any] | None

    @property
    def etag(self) -> str | None:
        return etag(self.after) if self.after is not None else None


def encode_token(tenant_id: str) -> str:
    return base64.urlsafe_b64encode(tenant_id.encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    """The tenant id a token stands for; TenantConfigError for anything `encode_token` did not make."""
    try:
        tenant_id = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        tenant_id = ""
    if not TENANT_ID_RE.fullmatch(tenant_id) or encode_token(tenant_id) != token:
        raise TenantConfigError("next is not a token this API gave", {"next": "not a token this API gave"})
    return tenant_id


def validate(tenant_id: str, delivery_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """The item `body` stands for at (tenant_id, delivery_id), validated; TenantConfigError names every bad
    field. Keys in the body must match the path; managed fields in a body are ignored."""
    errors: dict[str, str] = {}
    for name, value in (("tenant_id", tenant_id), ("delivery_id", delivery_id)):
        if name in body and body[name] != value:
            errors[name] = f"{body[name]!r} does not match {value!r} of the path"
    raw = {k: v for k, v in body.items() if k not in MANAGED} | {"tenant_id": tenant_id, "delivery_id": delivery_id}
    try:
        delivery = parse_delivery(raw, TableSchema.V2, strict=True)
    except TenantConfigError as exc:
        errors.update(exc.fields)
    if errors:
        detail = "; ".join(f"{name}: {problem}" for name, problem in sorted(errors.items()))
        raise TenantConfigError(f"tenant {tenant_id!r} delivery {delivery_id!r}: {detail}", errors)
    return delivery_item(delivery, TableSchema.V2)


class TenantStore:
    """One v2 tenant table, for the management tools. `actor` names who makes the changes, in the audit log."""

    def __init__(
        self, table: str, ddb: DynamoDBClient | None = None, actor: str = "unknown", clock: Callable[[], str] = now_iso
    ):
        self.table = table
        self._ddb = ddb or aws.client("dynamodb")
        self.actor = actor
        self._clock = clock

    def check(self) -> None:
        """ConfigError unless the table exists and is v2 (writes need the delivery_id range key)."""
        open_table(self._ddb, self.table, TableSchema.V2)

    # -- reads --------------------------------------------------------------------------------------------

    def _key(self, tenant_id: str, delivery_id: str) -> dict[str, Any]:
        return {"tenant_id": {"S": tenant_id}, "delivery_id": {"S": delivery_id}}

    def raw_items(self, tenant_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        kwargs: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "tenant_id = :t",
            "ExpressionAttributeValues": {":t": {"S": tenant_id}},
            "ConsistentRead": True,
        }
        while True:
            try:
                resp = self._ddb.query(**kwargs)
            except ClientError as exc:
                if aws.error_code(exc) == "ValidationException":  # not a key the table can hold
                    return []
                raise
            items.extend(deserialize(i) for i in resp.get("Items", []))
            if "LastEvaluatedKey" not in resp:
                return sorted(items, key=lambda i: str(i.get("delivery_id")))
            kwargs["ExclusiveStartKey"] = resp["LastEvaluatedKey"]

    def tenant(self, tenant_id: str) -> tuple[list[Stored], list[tuple[str, str]]]:
        """(valid deliveries as stored, [(delivery_id, reason)] of invalid ones); NotFound without any."""
        items = self.raw_items(tenant_id)
        if not items:
            raise NotFound(f"unknown tenant {tenant_id!r}")
        t = tenant_from_items(tenant_id, items, TableSchema.V2)
        good = [Stored(i) for i in items if str(i.get("delivery_id")) in {d.delivery_id for d in t.deliveries}]
        return good, [(i.delivery_id, i.reason) for i in t.invalid]

    def get(self, tenant_id: str, delivery_id: str) -> Stored:
        raw = self._get_raw(tenant_id, delivery_id)
        if raw is None:
            if not self.raw_items(tenant_id):
                raise NotFound(f"unknown tenant {tenant_id!r}")
            raise NotFound(f"tenant {tenant_id!r} has no delivery {delivery_id!r}")
        return Stored(raw)

    def _get_raw(self, tenant_id: str, delivery_id: str) -> dict[str, Any] | None:
        try:
            resp = self._ddb.get_item(TableName=self.table, Key=self._key(tenant_id, delivery_id), ConsistentRead=True)
        except ClientError as exc:
            if aws.error_code(exc) == "ValidationException":
                return None
            raise
        raw = resp.get("Item")
        return deserialize(raw) if raw else None

    def tenant_ids(self) -> list[str]:
        """Every tenant id in the table, sorted (one consistent scan of the key attribute)."""
        ids: set[str] = set()
        paginator = self._ddb.get_paginator("scan")
        for page in paginator.paginate(TableName=self.table, ProjectionExpression="tenant_id", ConsistentRead=True):
            ids.update(str(deserialize(i)["tenant_id"]) for i in page.get("Items", []))
        return sorted(ids)

    def page(self, limit: int, token: str | None) -> tuple[list[str], str | None]:
        """A page of tenant ids after the token's, and the token of the next page (None on the last)."""
        after = decode_token(token) if token else ""
        rest = [t for t in self.tenant_ids() if t > after]
        page = rest[:limit]
        return page, (encode_token(page[-1]) if len(rest) > limit else None)

    def items(self) -> list[dict[str, Any]]:
        return sorted(
            TenantDirectory(self.table, client=self._ddb).items(),
            key=lambda i: (str(i.get("tenant_id")), str(i.get("delivery_id"))),
        )

    # -- writes -------------------------------------------------------------------------------------------

    def put(self, tenant_id: str, delivery_id: str, body: Mapping[str, Any], if_match: str | None = None) -> Change:
        """Create or replace a delivery; unchanged (and not written) when it is the same delivery."""
        item = validate(tenant_id, delivery_id, body)
        before = self._get_raw(tenant_id, delivery_id)
        return self._write(tenant_id, delivery_id, before, item, if_match, "replaced" if before else "created")

    def patch(
        self, tenant_id: str, delivery_id: str, changes: Mapping[str, Any], if_match: str | None = None
    ) -> Change:
        """Change some fields of an existing delivery; a None value removes the field (its default applies)."""
        before = self.get(tenant_id, delivery_id).item
        merged = {k: v for k, v in before.items() if k not in MANAGED}
        for name, value in changes.items():
            if value is None:
                merged.pop(name, None)
            else:
                merged[name] = value
        item = validate(tenant_id, delivery_id, merged)
        return self._write(tenant_id, delivery_id, before, item, if_match, "updated")

    def delete(self, tenant_id: str, delivery_id: str, if_match: str | None = None) -> Change:
        before = self.get(tenant_id, delivery_id).item
        self._precondition(before, if_match)
        try:
            self._ddb.delete_item(
                TableName=self.table, Key=self._key(tenant_id, delivery_id), **self._unchanged_since(before)
            )
        except ClientError as exc:
            if aws.error_code(exc) == "ConditionalCheckFailedException":
                raise PreconditionFailed("the delivery changed since it was read; read it again") from None
            raise
        change = Change("deleted", before, None)
        self._audit(tenant_id, delivery_id, change)
        return change

    def _write(
        self,
        tenant_id: str,
        delivery_id: str,
        before: dict[str, Any] | None,
        item: dict[str, Any],
        if_match: str | None,
        action: str,
    ) -> Change:
        self._precondition(before, if_match)
        if before is not None and same_delivery(before, item):
            return Change("unchanged", before, before)
        stamp = self._clock()
        item = {**item, "created_at": (before or {}).get("created_at") or stamp, "updated_at": stamp}
        try:
            self._ddb.put_item(
                TableName=self.table,
                Item={k: _serializer.serialize(v) for k, v in item.items()},
                **self._unchanged_since(before),
            )
        except ClientError as exc:
            if aws.error_code(exc) == "ConditionalCheckFailedException":
                raise PreconditionFailed("the delivery changed since it was read; read it again") from None
            raise
        change = Change(action, before, item)
        self._audit(tenant_id, delivery_id, change)
        return change

    @staticmethod
    def _precondition(before: dict[str, Any] | None, if_match: str | None) -> None:
        if if_match is None:
            return
        if if_match.strip() == "*":
            if before is None:
                raise PreconditionFailed("If-Match: * but the delivery does not exist")
            return
        if before is None or etag(before) not in {t.strip() for t in if_match.split(",")}:
            raise PreconditionFailed("the delivery is not at the version If-Match names; read it again")

    @staticmethod
    def _unchanged_since(before: dict[str, Any] | None) -> dict[str, Any]:
        """The condition that the item is still the one read: absent, or the same updated_at."""
        if before is None:
            return {"ConditionExpression": "attribute_not_exists(tenant_id)"}
        if "updated_at" not in before:
            return {"ConditionExpression": "attribute_exists(tenant_id) AND attribute_not_exists(updated_at)"}
        return {
            "ConditionExpression": "updated_at = :u",
            "ExpressionAttributeValues": {":u": {"S": str(before["updated_at"])}},
        }

    def _audit(self, tenant_id: str, delivery_id: str, change: Change) -> None:
        before, after = change.before or {}, change.after or {}
        changed = sorted(n for n in set(before) | set(after) if n not in MANAGED and before.get(n) != after.get(n))
        audit.info(
            "tenant delivery %s",
            change.action,
            extra={
                "audit": True,
                "actor": ACTOR.get() or self.actor,
                "action": change.action,
                "table": self.table,
                "tenant_id": tenant_id,
                "delivery_id": delivery_id,
                "changed": changed,
                "before": change.before,
                "after": change.after,
            },
        )


def same_delivery(before: Mapping[str, Any], item: Mapping[str, Any]) -> bool:
    """Whether two items are the same delivery, stamps aside (the stored one parsed as every reader does)."""
    try:
        have = delivery_item(parse_delivery(before, TableSchema.V2), TableSchema.V2)
    except TenantConfigError:
        return False
    strip = set(MANAGED)
    return {k: v for k, v in have.items() if k not in strip} == {k: v for k, v in item.items() if k not in strip}
