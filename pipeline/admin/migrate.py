"""Copy a v1 tenant table into a v2 one (CONTRACTS.md §3): each v1 item becomes the delivery `cloudwatch`.

Every v1 item is validated with `parse_delivery` and written back with `delivery_item`, the same two functions
every reader uses, so the v2 table holds exactly the deliveries the v1 table stood for (defaults made explicit,
`created_at`/`updated_at` kept when the v1 item has them, never invented). Attributes §3 does not define are
not copied, and the line of their tenant names them.

Nothing in the v2 table is ever overwritten: each write is conditional on the item not existing. An item that
exists already is `unchanged` when it is the same delivery (timestamps, list order and the case of
`desired_logs` aside), and a `conflict` otherwise, reported with the fields that differ. A v1 item that does
not validate is `invalid`, reported with every bad field, and not copied. Running the migration again copies
nothing and reports every item `unchanged`, so it can be rerun after fixing what it reported.

The planning (`plan_item`) is pure; `migrate` adds the reads and the conditional writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from pipeline import aws
from pipeline.admin import text
from pipeline.admin.tables import open_table
from pipeline.ledger import BATCH_GET_MAX, UNPROCESSED_RETRY, batch_rounds
from pipeline.tenants import (
    V1_DELIVERY_ID,
    TableSchema,
    TenantConfigError,
    TenantDirectory,
    delivery_item,
    deserialize,
    parse_delivery,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

log = logging.getLogger("pipeline.admin.migrate")

STAMPS = ("created_at", "updated_at")  # not part of what makes two items the same delivery


class Action(StrEnum):
    COPIED = "copied"  # in a dry run: would be copied
    UNCHANGED = "unchanged"  # the v2 table holds this delivery already
    CONFLICT = "conflict"  # the v2 table holds a different item under the key: left as it is
    INVALID = "invalid"  # the v1 item does not validate: not copied


@dataclass(frozen=True)
class MigrationLine:
    """What happened (or, in a dry run, would happen) to one v1 item."""

    tenant_id: str
    action: Action
    item: dict[str, Any] | None = None  # the v2 item it becomes (None when invalid)
    fields: dict[str, str] = field(default_factory=dict)  # invalid: bad field → problem; conflict: field → v1/v2
    dropped: tuple[str, ...] = ()  # attributes of the v1 item that §3 does not define, not copied

    @property
    def delivery_id(self) -> str:
        return V1_DELIVERY_ID

    def detail(self) -> str:
        problems = "; ".join(f"{name}: {problem}" for name, problem in sorted(self.fields.items()))
        if self.action is Action.INVALID:
            return problems
        if self.action is Action.CONFLICT:
            return f"the v2 table holds a different item, left as it is: {problems}"
        if self.item is None:
            return problems
        where = parse_delivery(self.item).target
        return where + (f" (not copied: {', '.join(self.dropped)})" if self.dropped else "")

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tenant_id": self.tenant_id, "delivery_id": self.delivery_id, "action": str(self.action)}
        if self.item is not None:
            out["item"] = self.item
        if self.fields:
            out["fields"] = dict(sorted(self.fields.items()))
        if self.dropped:
            out["dropped"] = list(self.dropped)
        return out


@dataclass(frozen=True)
class MigrationResult:
    source: str
    target: str
    dry_run: bool
    lines: tuple[MigrationLine, ...]

    @property
    def counts(self) -> dict[str, int]:
        return {str(a): sum(1 for line in self.lines if line.action is a) for a in Action}

    @property
    def ok(self) -> bool:
        """Every v1 item is in the v2 table (or, in a dry run, would be)."""
        return all(line.action in (Action.COPIED, Action.UNCHANGED) for line in self.lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.source,
            "to": self.target,
            "dry_run": self.dry_run,
            "ok": self.ok,
            "counts": self.counts,
            "tenants": [line.to_json() for line in self.lines],
        }

    def render(self) -> str:
        head = f"migrate v1 table {self.source} → v2 table {self.target}"
        head += " (dry run: nothing written)" if self.dry_run else ""
        label = {**{a: str(a) for a in Action}, Action.COPIED: "would copy" if self.dry_run else "copied"}
        rows = [(line.tenant_id, line.delivery_id, label[line.action], line.detail()) for line in self.lines]
        c = self.counts
        summary = (
            f"{len(self.lines)} v1 items: {c['copied']} {'to copy' if self.dry_run else 'copied'}, "
            f"{c['unchanged']} unchanged, {c['conflict']} conflict, {c['invalid']} invalid"
        )
        body = text.table(("TENANT", "DELIVERY", "ACTION", "DETAIL"), rows) if rows else "the v1 table is empty"
        return f"{head}\n{body}\n{summary}"


# -- planning (pure) -----------------------------------------------------------------------------------------


def plan_item(v1_item: Mapping[str, Any], existing: Mapping[str, Any] | None) -> MigrationLine:
    """The line for one v1 item, given the v2 item already under (tenant_id, `cloudwatch`), if any."""
    tenant_id = str(v1_item.get("tenant_id"))
    try:
        delivery = parse_delivery(v1_item, TableSchema.V1)
    except TenantConfigError as exc:
        return MigrationLine(tenant_id, Action.INVALID, fields=exc.fields or {"item": exc.reason})
    item = delivery_item(delivery, TableSchema.V2)
    dropped = tuple(sorted(set(v1_item) - set(item)))
    if existing is None:
        return MigrationLine(tenant_id, Action.COPIED, item, dropped=dropped)
    diffs = differences(item, existing)
    if diffs:
        return MigrationLine(tenant_id, Action.CONFLICT, item, fields=diffs, dropped=dropped)
    return MigrationLine(tenant_id, Action.UNCHANGED, item, dropped=dropped)


def differences(item: Mapping[str, Any], existing: Mapping[str, Any]) -> dict[str, str]:
    """Field → how the v2 `item` the migration would write differs from the `existing` one; {} if the same."""
    try:
        have = delivery_item(parse_delivery(existing, TableSchema.V2), TableSchema.V2)
    except TenantConfigError as exc:
        return {name: f"the existing item is invalid: {problem}" for name, problem in exc.fields.items()} or {
            "item": f"the existing item is invalid: {exc.reason}"
        }
    names = sorted((set(item) | set(have)) - set(STAMPS))
    return {n: f"v1 {_show(item.get(n))}, v2 {_show(have.get(n))}" for n in names if item.get(n) != have.get(n)}


def _show(value: Any) -> str:
    return "(absent)" if value is None else repr(value)


def plan(v1_items: Iterable[Mapping[str, Any]], existing: Mapping[str, Mapping[str, Any]]) -> list[MigrationLine]:
    """Lines for every v1 item, by tenant; `existing` maps tenant_id → its v2 `cloudwatch` item."""
    lines = [plan_item(i, existing.get(str(i.get("tenant_id")))) for i in v1_items]
    return sorted(lines, key=lambda line: line.tenant_id)


# -- reading and writing -------------------------------------------------------------------------------------

_serializer = TypeSerializer()


def migrate(ddb: DynamoDBClient, source: str, target: str, dry_run: bool = False) -> MigrationResult:
    """Copy every v1 item of `source` into the v2 table `target`; in a dry run, write nothing.

    ConfigError (one line naming the table) when `source` is not a v1 tenant table or `target` not a v2 one.
    """
    open_table(ddb, source, TableSchema.V1, role="--from")
    open_table(ddb, target, TableSchema.V2, role="--to")
    v1_items = list(TenantDirectory(source, client=ddb).items())
    existing = _existing(ddb, target, [str(i["tenant_id"]) for i in v1_items if isinstance(i.get("tenant_id"), str)])
    by_tenant = {str(i.get("tenant_id")): i for i in v1_items}
    lines = plan(v1_items, existing)
    if not dry_run:
        lines = [_copy(ddb, target, by_tenant[line.tenant_id], line) for line in lines]
    result = MigrationResult(source, target, dry_run, tuple(lines))
    log.info("migration", extra={"from": source, "to": target, "dry_run": dry_run, **result.counts})
    return result


def _copy(ddb: DynamoDBClient, target: str, v1_item: Mapping[str, Any], line: MigrationLine) -> MigrationLine:
    """Write a planned copy, on the condition that the key is still free."""
    for _ in range(3):
        if line.action is not Action.COPIED or line.item is None:
            return line
        try:
            ddb.put_item(
                TableName=target,
                Item={k: _serializer.serialize(v) for k, v in line.item.items()},
                ConditionExpression="attribute_not_exists(tenant_id)",
            )
        except ClientError as exc:
            if not aws.condition_failed(exc):
                raise
            # Written by someone else since the plan was made: judge it like any item that was there before.
            raw = ddb.get_item(TableName=target, Key=_key(line.tenant_id), ConsistentRead=True).get("Item")
            line = plan_item(v1_item, deserialize(raw) if raw else None)
            log.warning("item appeared during the migration", extra={"tenant_id": line.tenant_id})
            continue
        log.info("copied", extra={"tenant_id": line.tenant_id, "delivery_id": line.delivery_id})
        return line
    raise RuntimeError(f"the item of tenant {line.tenant_id!r} in {target} keeps changing; run the migration again")


def _key(tenant_id: str) -> dict[str, Any]:
    return {"tenant_id": {"S": tenant_id}, "delivery_id": {"S": V1_DELIVERY_ID}}


def _existing(ddb: DynamoDBClient, table: str, tenant_ids: list[str]) -> dict[str, dict[str, Any]]:
    """tenant_id → the `cloudwatch` item the v2 table holds for it, for those that have one (consistent reads)."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(tenant_ids), BATCH_GET_MAX):
        request: dict[str, Any] = {
            table: {"Keys": [_key(t) for t in tenant_ids[start : start + BATCH_GET_MAX]], "ConsistentRead": True}
        }
        # Keys DynamoDB left unprocessed (throttled) are asked for again with the ledger's policy and loop.
        retrying = UNPROCESSED_RETRY.begin(time.sleep)
        for resp in batch_rounds(
            ddb.batch_get_item, request, retrying, f"table {table}", "UnprocessedKeys", error=RuntimeError
        ):
            for raw in resp.get("Responses", {}).get(table, []):
                item = deserialize(raw)
                found[str(item["tenant_id"])] = item
    return found
