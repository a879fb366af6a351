"""Redelivery requests (CONTRACTS.md §9 "Replays"): what was asked, validated, and where it is kept.

A request lives in its own DynamoDB table, `REPLAY_REQUEST_TABLE` (hash `tenant_id`, range `replay_id`), not
beside the tenant rows: its items change while a run goes (progress, state) and are written by the Ray job's
driver, a writer that has no business in the tenant table; and every reader of the tenant table (the
consumer's lookups, `log-tenants list/export/import`, the API's delivery routes) would otherwise have to learn
one more kind of row to leave out. Ids sort by time (`rp-YYYYMMDDTHHMMSSZ-<hex>`), so one Query, backwards,
lists a tenant's requests newest first.

"One running replay per tenant" is one item per tenant, `replay_id = "_active"`, naming the request that holds
it. A request is created together with that item in one TransactWriteItems, conditional on the item not
existing: two requests at once cannot both pass, whichever API replica sees them (no read-then-write). The
request's end (succeeded, failed, stopped) removes it in the same transaction that writes the end state.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from pipeline import aws
from pipeline.errors import Busy
from pipeline.tenants import DELIVERY_ID_RE, TenantConfigError, deserialize
from pipeline.timespec import iso_z

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_log = logging.getLogger("pipeline.replay")

MAX_WINDOW_DAYS_ENV = "REPLAY_MAX_WINDOW_DAYS"
DEFAULT_MAX_WINDOW_DAYS = 90.0
LOCK_ID = "_active"  # the item that says which request of the tenant holds its one run
ID_PREFIX = "rp-"
ID_RE = re.compile(r"^rp-\d{8}T\d{6}Z-[0-9a-f]{8}$")
RETENTION = timedelta(days=400)  # requests are kept for a year and a bit (the table's TTL, `expires_at`)
MAX_LIST = 100  # deliveries or applications named in one request
MAX_EVENTS_LIMIT = 10**12

_ser = TypeSerializer()


class State(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"

    @property
    def active(self) -> bool:
        return self in (State.PENDING, State.RUNNING)


ACTIVE = (State.PENDING.value, State.RUNNING.value)


@dataclass(frozen=True)
class ReplaySpec:
    """A request's options, validated: the window and what narrows it."""

    since: datetime
    until: datetime
    deliveries: tuple[str, ...] = ()
    applications: tuple[str, ...] = ()
    max_events: int | None = None
    dry_run: bool = False


FIELDS = frozenset({"since", "until", "deliveries", "applications", "max_events", "dry_run"})


def iso(dt: datetime) -> str:
    """UTC, to the millisecond, with a Z: what the API answers and the Ray job's entrypoint takes."""
    return iso_z(dt)


def _time(body: Mapping[str, Any], name: str, errors: dict[str, str]) -> datetime | None:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        errors[name] = "must be an ISO 8601 time (2024-05-01T10:00:00Z)"
        return None
    try:
        dt = datetime.fromisoformat(value.strip().replace("z", "Z"))
    except ValueError:
        errors[name] = f"{value[:64]!r} is not an ISO 8601 time (2024-05-01T10:00:00Z)"
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _names(
    body: Mapping[str, Any], name: str, errors: dict[str, str], pattern: re.Pattern[str] | None
) -> tuple[str, ...]:
    value = body.get(name)
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        errors[name] = "must be a list of non-empty strings"
        return ()
    if len(value) > MAX_LIST:
        errors[name] = f"at most {MAX_LIST} entries"
        return ()
    bad = [v for v in value if pattern is not None and not pattern.fullmatch(v)]
    if bad:
        errors[name] = f"{bad[0][:64]!r} is not a valid id"
        return ()
    return tuple(dict.fromkeys(v.strip() for v in value))


def parse_spec(body: Mapping[str, Any], now: datetime, max_window_days: float = DEFAULT_MAX_WINDOW_DAYS) -> ReplaySpec:
    """The request body as a ReplaySpec, or TenantConfigError naming every bad field (each guard rail with
    its own message): `since` required, `until` default now; the window not empty nor reversed, not in the
    future, at most `max_window_days` long."""
    errors: dict[str, str] = {}
    for name in sorted(set(body) - FIELDS):
        errors[name[:64]] = "unknown field"
    since = _time(body, "since", errors)
    until = _time(body, "until", errors) if body.get("until") is not None else now
    deliveries = _names(body, "deliveries", errors, DELIVERY_ID_RE)
    applications = _names(body, "applications", errors, None)
    max_events = body.get("max_events")
    if max_events is not None and (
        isinstance(max_events, bool) or not isinstance(max_events, int) or not 1 <= max_events <= MAX_EVENTS_LIMIT
    ):
        errors["max_events"] = f"must be a whole number from 1 to {MAX_EVENTS_LIMIT}"
        max_events = None
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        errors["dry_run"] = "must be a boolean"
    if since is not None and until is not None:
        if since > now:
            errors["since"] = "is in the future"
        elif until > now:
            errors["until"] = f"is in the future (now is {iso(now)})"
        elif until <= since:
            errors["until"] = "must be after since: the window is empty or reversed"
        elif until - since > timedelta(days=max_window_days):
            days = (until - since).total_seconds() / 86400
            errors["since"] = (
                f"the window is {days:,.1f} days long; at most {max_window_days:g} ({MAX_WINDOW_DAYS_ENV})"
            )
    if errors or since is None or until is None:
        raise TenantConfigError("invalid replay request", errors)
    return ReplaySpec(since, until, deliveries, applications, max_events, bool(dry_run))


def max_window_days(env: Mapping[str, str]) -> float:
    """REPLAY_MAX_WINDOW_DAYS, a positive number of days (default 90)."""
    from pipeline.errors import ConfigError

    raw = env.get(MAX_WINDOW_DAYS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_WINDOW_DAYS
    try:
        days = float(raw)
    except ValueError:
        days = 0.0
    if not days > 0:
        raise ConfigError(f"{MAX_WINDOW_DAYS_ENV} must be a positive number of days, not {raw!r}")
    return days


def new_replay_id(now: datetime) -> str:
    return f"{ID_PREFIX}{now.astimezone(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def _now() -> datetime:
    return datetime.now(UTC)


def _plain(value: Any) -> Any:
    """DynamoDB's Decimals as ints (every number the store keeps is a count)."""
    if isinstance(value, Decimal):
        return int(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _av(value: Any) -> dict[str, Any]:
    return dict(_ser.serialize(value))


class ReplayStore:
    """The request table. Every write that changes a state is conditional on the state it leaves."""

    def __init__(self, table: str, ddb: DynamoDBClient | None = None, clock: Callable[[], datetime] = _now) -> None:
        self.table = table
        self._ddb = ddb or aws.client("dynamodb")
        self._clock = clock

    def _key(self, tenant_id: str, replay_id: str) -> dict[str, Any]:
        return {"tenant_id": {"S": tenant_id}, "replay_id": {"S": replay_id}}

    # -- reads ----------------------------------------------------------------------------------------------

    def get(self, tenant_id: str, replay_id: str) -> dict[str, Any] | None:
        if not ID_RE.fullmatch(replay_id):
            return None
        raw = self._ddb.get_item(TableName=self.table, Key=self._key(tenant_id, replay_id), ConsistentRead=True)
        item = raw.get("Item")
        return _plain(deserialize(item)) if item else None

    def list(self, tenant_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The tenant's requests, newest first (ids sort by their creation time)."""
        pages = self._ddb.get_paginator("query").paginate(
            TableName=self.table,
            KeyConditionExpression="tenant_id = :t AND begins_with(replay_id, :p)",
            ExpressionAttributeValues={":t": {"S": tenant_id}, ":p": {"S": ID_PREFIX}},
            ScanIndexForward=False,
            ConsistentRead=True,
            # Limit on each call, and no more than `limit` items in all: the newest `limit` requests.
            PaginationConfig={"MaxItems": limit, "PageSize": limit},
        )
        return [_plain(deserialize(i)) for page in pages for i in page.get("Items", [])]

    def active(self, tenant_id: str) -> str | None:
        """The id of the request holding the tenant's run, if any."""
        raw = self._ddb.get_item(TableName=self.table, Key=self._key(tenant_id, LOCK_ID), ConsistentRead=True)
        item = raw.get("Item")
        return str(item["active"]["S"]) if item and "active" in item else None

    # -- writes ---------------------------------------------------------------------------------------------

    def create(self, tenant_id: str, replay_id: str, spec: ReplaySpec, estimate: Mapping[str, Any]) -> dict[str, Any]:
        """Store a pending request and take the tenant's run for it, at once; Busy when another holds it.

        A lock left by a request that already ended (its end was written without the lock, or by hand) is
        released and the create tried once more."""
        now = self._clock()
        item: dict[str, Any] = {
            "tenant_id": tenant_id,
            "replay_id": replay_id,
            "state": State.PENDING.value,
            "since": iso(spec.since),
            "until": iso(spec.until),
            "deliveries": list(spec.deliveries),
            "applications": list(spec.applications),
            "estimate": dict(estimate),
            "progress": {"objects_done": 0, "objects_planned": int(estimate.get("objects", 0)), "events_delivered": 0},
            "created_at": iso(now),
            "updated_at": iso(now),
            "expires_at": int((now + RETENTION).timestamp()),
        }
        if spec.max_events is not None:
            item["max_events"] = spec.max_events
        for attempt in (1, 2):
            try:
                self._ddb.transact_write_items(
                    TransactItems=[
                        {
                            "Put": {
                                "TableName": self.table,
                                "Item": {
                                    **self._key(tenant_id, LOCK_ID),
                                    "active": {"S": replay_id},
                                    "created_at": {"S": iso(now)},
                                },
                                "ConditionExpression": "attribute_not_exists(tenant_id)",
                            }
                        },
                        {
                            "Put": {
                                "TableName": self.table,
                                "Item": {k: _av(v) for k, v in item.items()},
                                "ConditionExpression": "attribute_not_exists(tenant_id)",
                            }
                        },
                    ]
                )
                created: dict[str, Any] = _plain(item)
                return created
            except ClientError as exc:
                if aws.error_code(exc) != aws.TRANSACTION_CANCELED:
                    raise
                holder = self.active(tenant_id)
                if holder is None:
                    continue  # released meanwhile
                held = self.get(tenant_id, holder)
                if attempt == 1 and (held is None or not State(held["state"]).active):
                    self._release(tenant_id, holder)
                    continue
                raise Busy(holder) from None
        raise Busy(self.active(tenant_id) or "?")

    def _release(self, tenant_id: str, replay_id: str) -> None:
        try:
            self._ddb.delete_item(
                TableName=self.table,
                Key=self._key(tenant_id, LOCK_ID),
                ConditionExpression="active = :r",
                ExpressionAttributeValues={":r": {"S": replay_id}},
            )
        except ClientError as exc:
            if not aws.condition_failed(exc):
                raise

    def _update(
        self, tenant_id: str, replay_id: str, values: Mapping[str, Any], states: Sequence[str] = ACTIVE
    ) -> dict[str, Any]:
        """The update of `values` on a request in one of `states` (as one TransactItems entry)."""
        names = {f"#f{i}": k for i, k in enumerate(values)}
        vals = {f":v{i}": _av(v) for i, v in enumerate(values.values())}
        vals |= {f":s{i}": {"S": s} for i, s in enumerate(states)}
        states_expr = ", ".join(f":s{i}" for i in range(len(states)))
        return {
            "TableName": self.table,
            "Key": self._key(tenant_id, replay_id),
            "UpdateExpression": "SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(values))),
            "ConditionExpression": f"attribute_exists(replay_id) AND #state IN ({states_expr})",
            "ExpressionAttributeNames": {**names, "#state": "state"},
            "ExpressionAttributeValues": vals,
        }

    def _conditional(self, update: dict[str, Any]) -> bool:
        try:
            self._ddb.update_item(**update)
        except ClientError as exc:
            if aws.condition_failed(exc):
                return False
            raise
        return True

    def mark_running(self, tenant_id: str, replay_id: str) -> bool:
        """pending → running, when the job's driver starts. False when the request is not pending (stopped
        or failed meanwhile): the driver then does not run."""
        now = iso(self._clock())
        values = {"state": State.RUNNING.value, "started_at": now, "updated_at": now}
        return self._conditional(self._update(tenant_id, replay_id, values, (State.PENDING.value,)))

    def progress(self, tenant_id: str, replay_id: str, objects_done: int, objects_planned: int, events: int) -> bool:
        progress = {"objects_done": objects_done, "objects_planned": objects_planned, "events_delivered": events}
        values = {"progress": progress, "updated_at": iso(self._clock())}
        return self._conditional(self._update(tenant_id, replay_id, values))

    def request_stop(self, tenant_id: str, replay_id: str) -> bool:
        """Mark a pending or running request as asked to stop; False when it has already ended."""
        values = {"stop_requested": True, "updated_at": iso(self._clock())}
        return self._conditional(self._update(tenant_id, replay_id, values))

    def finish(
        self,
        tenant_id: str,
        replay_id: str,
        state: State,
        report: Mapping[str, Any] | None = None,
        error: str | None = None,
        progress: Mapping[str, int] | None = None,
    ) -> bool:
        """End a pending or running request and free the tenant's run, in one transaction. False when it had
        already ended (the first end written wins: the driver's, or a reconciliation's)."""
        now = iso(self._clock())
        values: dict[str, Any] = {"state": state.value, "ended_at": now, "updated_at": now}
        if report is not None:
            values["report"] = dict(report)
        if error:
            values["error"] = error[:2000]
        if progress is not None:
            values["progress"] = dict(progress)
        update = self._update(tenant_id, replay_id, values)
        release = {
            "TableName": self.table,
            "Key": self._key(tenant_id, LOCK_ID),
            "ConditionExpression": "attribute_not_exists(active) OR active = :r",
            "ExpressionAttributeValues": {":r": {"S": replay_id}},
        }
        try:
            both: list[Any] = [{"Update": update}, {"Delete": release}]
            self._ddb.transact_write_items(TransactItems=both)
        except ClientError as exc:
            if aws.error_code(exc) != aws.TRANSACTION_CANCELED:
                raise
            reasons = [str(r.get("Code", "")) for r in getattr(exc, "response", {}).get("CancellationReasons", [])]
            if reasons and reasons[0] == "ConditionalCheckFailed":
                return False  # already ended
            # The lock names another request (it cannot, short of a hand edit): end this one regardless.
            return self._conditional(update)
        return True


PROGRESS_INTERVAL_S = 5.0  # the driver writes a request's progress at most this often


class RequestRecorder:
    """The job driver's side of a request (`log-replay --replay-request ID`): running when it starts,
    progress at most every PROGRESS_INTERVAL_S (one write however fast objects go), the end with the report.

    A write that fails is logged and the run goes on: the request's progress is a view, the ledger and the
    report are what the run is judged by."""

    def __init__(
        self,
        store: ReplayStore,
        tenant_id: str,
        replay_id: str,
        interval_s: float = PROGRESS_INTERVAL_S,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.store, self.tenant_id, self.replay_id = store, tenant_id, replay_id
        self._interval = interval_s
        self._clock = clock or time.monotonic
        self._last: float | None = None
        self.writes = 0

    def start(self) -> bool:
        return self.store.mark_running(self.tenant_id, self.replay_id)

    def progress(self, objects_done: int, objects_planned: int, events: int) -> None:
        now = self._clock()
        if self._last is not None and now - self._last < self._interval:
            return
        self._last = now
        try:
            self.store.progress(self.tenant_id, self.replay_id, objects_done, objects_planned, events)
            self.writes += 1
        except Exception as exc:  # a throttled or unreachable table must not stop the run
            _log.warning("replay progress not recorded", extra={"replay_id": self.replay_id, "error": str(exc)[:300]})

    def finish(
        self,
        state: State,
        report: Mapping[str, Any] | None = None,
        error: str | None = None,
        progress: Mapping[str, int] | None = None,
    ) -> None:
        try:
            self.store.finish(self.tenant_id, self.replay_id, state, report, error, progress)
        except Exception as exc:  # the API's reconciliation with Ray's job status ends it then
            _log.error("replay end not recorded", extra={"replay_id": self.replay_id, "error": str(exc)[:300]})
