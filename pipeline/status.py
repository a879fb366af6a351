"""Each delivery's status (CONTRACTS.md §9 "Status"): what the consumer and the replay delivered, kept cheap.

One DynamoDB item per (tenant, delivery) in its own table, `DELIVERY_STATUS_TABLE` (hash `tenant_id`, range
`delivery_id`). Its own table, not rows beside the tenant's: every delivering process writes it every 30 s,
while the tenant table is read by every tenant lookup (a Query of the tenant's rows, cached) and written only
by the management tools, whose roles, audit and ETags would all have to step around rows that are not
configuration; and the consumer's role reads the tenant table but never writes it.

**Counters are time-bucketed and added with ADD.** Each flush adds its figures (objects, events, bytes
delivered; events rejected; objects failed) to a 5-minute bucket (`h<slot>_<m>`, the last hour) and an
hour bucket (`d<slot>_<m>`, the last day): top-level number attributes, because DynamoDB's ADD is atomic
only there. Two processes adding at once both count, without a read and without a condition. A read sums
the buckets in the window (the last hour is the current 5-minute bucket and the 11 before it, so 55 to 60
minutes; the last day likewise 23 to 24 hours). Buckets past the window are removed by the next flush of
the same item, which learns of them from the item the previous flush returned (`ReturnValues=ALL_NEW`, no
extra read); a reader ignores them whether or not they are gone yet.

**Newest times are maxima without a condition.** `newest_object` (the key time of the newest object
delivered), `newest_event`, `newest_seen` (the key time of the newest object of the tenant this delivery
was asked to take, delivered or not) and `last_success` are each kept as two number sets, `<name>_0` and
`<name>_1`, whose union's maximum is the value. A flush ADDs its value to one set and DELETEs from the
other the elements it saw that are below the largest it saw: the largest element anyone has written is
never below anything, so it is never deleted, and the sets stay a few elements long. (ADD and DELETE may
not name one attribute in one update, hence two sets.) A replay of last month cannot move them back.

**Lag** is `newest_seen - newest_object`: the consumer is notified of every object of the tenant, so what
it was asked to deliver is the newest object in the bucket for this delivery as far as anyone knows,
without listing the bucket; the replay records what it listed too.

**At most one write per delivery per process every 30 s.** Results are coalesced in memory
(`Coalescer`) and written by a timer; a delivery is written again only 30 s after its previous write,
whatever the object rate. The one exception is the process's last flush, at shutdown or at the end of a
replay, which writes what is pending at once rather than lose it.

**The state** (`state_of`), first rule that holds:

    disabled     the delivery is disabled in the tenant table
    failing      its last error is newer than its last success, and is not throttling: it fails now
    backing-off  its last error is newer than its last success and is throttling, or a writer's circuit
                 for it is open (pipeline.circuits: its objects are held back for a while)
    degraded     it delivers, but in the last hour objects failed, events were rejected (too old, too new,
                 too large), or the lag is over 15 minutes
    healthy      otherwise, including a delivery that had nothing to deliver

With `publish_metrics` on the delivery, each write also puts the figures of that write as CloudWatch
metrics in the tenant's own account, through the tenant's role (`MetricsPublisher`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws
from pipeline.classify import advice, describe, is_throttling
from pipeline.counters import add_ints
from pipeline.errors import NotFound
from pipeline.keys import InvalidKeyError, parse_key
from pipeline.timespec import iso_z

if TYPE_CHECKING:
    from pipeline.admin.store import TenantStore
    from pipeline.circuits import CircuitBreakers
    from pipeline.credentials import CredentialBroker
    from pipeline.delivery.results import DeliveryResult, ObjectResult
    from pipeline.settings import Settings
    from pipeline.tenants import Delivery, TenantDirectory

log = logging.getLogger("pipeline.status")

Key = tuple[str, str]  # (tenant_id, delivery_id)

FLUSH_INTERVAL_S = 30.0  # one write per delivery per process at most this often
HOUR_SLOT_S, HOUR_SLOTS = 300, 12  # last hour: 5-minute buckets
DAY_SLOT_S, DAY_SLOTS = 3600, 24  # last day: hour buckets
DEGRADED_LAG_S = 900.0
RETENTION_S = 35 * 86400  # TTL of an item nobody writes any more (a removed delivery)
MESSAGE_CHARS = 500
NAMESPACE = "LogDelivery"

# The figure each counter letter stands for, in the order of the contract's `last_hour`/`last_day` objects.
COUNTERS = {"o": "objects", "e": "events", "b": "bytes", "r": "events_rejected", "f": "objects_failed"}
MAXIMA = ("newest_object", "newest_event", "newest_seen", "last_success")


class State(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILING = "failing"
    BACKING_OFF = "backing-off"
    DISABLED = "disabled"


# An operator's morning look: what needs a hand first. Disabled is someone's decision, not a problem.
WORST_FIRST = (State.FAILING, State.BACKING_OFF, State.DEGRADED, State.HEALTHY, State.DISABLED)


@dataclass
class Figures:
    objects: int = 0
    events: int = 0
    bytes: int = 0
    events_rejected: int = 0
    objects_failed: int = 0

    def add(self, other: Figures) -> None:
        add_ints(self, other)

    def to_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) for f in fields(self))


@dataclass(frozen=True)
class LastError:
    code: str
    message: str
    remedy: str
    at: float  # epoch seconds

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "remedy": self.remedy, "at": iso(self.at)}


@dataclass(frozen=True)
class Observation:
    """What one object did at one delivery, as the status counts it."""

    at: float
    figures: Figures
    key_time: float | None = None  # the object's write time (its key), epoch seconds
    delivered: bool = False
    newest_event: float | None = None
    error: LastError | None = None


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


@dataclass
class Pending:
    """A delivery's observations since its last write, coalesced."""

    slots: dict[int, Figures] = field(default_factory=dict)  # 5-minute slot (epoch s // 300) → figures
    newest_object: float | None = None
    newest_event: float | None = None
    newest_seen: float | None = None
    last_success: float | None = None
    last_error: LastError | None = None
    observations: int = 0

    def merge(self, o: Observation) -> None:
        self.observations += 1
        if o.figures:
            self.slots.setdefault(int(o.at // HOUR_SLOT_S), Figures()).add(o.figures)
        self.newest_seen = _max(self.newest_seen, o.key_time)
        if o.delivered:
            self.newest_object = _max(self.newest_object, o.key_time)
            self.newest_event = _max(self.newest_event, o.newest_event)
            self.last_success = _max(self.last_success, o.at)
        if o.error is not None and (self.last_error is None or o.error.at >= self.last_error.at):
            self.last_error = o.error

    def totals(self) -> Figures:
        out = Figures()
        for f in self.slots.values():
            out.add(f)
        return out


def observe(result: ObjectResult, d: DeliveryResult, now: float) -> Observation | None:
    """What `d` (one delivery of `result`) says for the delivery's status; None when nothing (the delivery
    did not take the object: filtered, disabled, outside the window; or it has no valid item)."""
    from pipeline.delivery.results import LEDGER_SKIP, Status  # the status module is imported by delivery's callers

    if not result.tenant or d.type == "?":
        return None
    try:
        written = parse_key(result.key).write_time
    except InvalidKeyError:
        return None
    key_time = written.timestamp() if written is not None else (result.last_modified or None)
    if d.status is Status.SKIPPED:
        # Already delivered (the ledger): the object is in the bucket and the delivery has it. Anything else
        # skipped is not this delivery's to take.
        return Observation(now, Figures(), key_time) if d.reason == LEDGER_SKIP else None
    if d.status is Status.FAILED:
        if d.held:  # not attempted: the circuit speaks for the destination, not this object
            return Observation(now, Figures(), key_time)
        code = d.code or ("Unrecoverable" if not d.recoverable else "DeliveryError")
        failed = LastError(code, d.reason[:MESSAGE_CHARS], advice(code, d.type), now)
        return Observation(now, Figures(objects_failed=1, events_rejected=d.events_rejected), key_time, error=failed)
    figures = Figures(1, d.events_delivered, d.bytes_delivered, d.events_rejected)
    error: LastError | None = None
    if d.status is Status.DAMAGED:
        figures.objects_failed = 1
        error = LastError("DamagedObject", d.reason[:MESSAGE_CHARS], advice("DamagedObject", d.type), now)
    newest_event = d.newest_event_ms / 1000 if d.newest_event_ms else None
    return Observation(now, figures, key_time, delivered=True, newest_event=newest_event, error=error)


class Coalescer:
    """Observations per delivery, handed out for writing at most once per `interval_s` each. Thread-safe;
    the clock is injected."""

    def __init__(self, interval_s: float = FLUSH_INTERVAL_S, clock: Callable[[], float] = time.time) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: dict[Key, Pending] = {}
        self._written: dict[Key, float] = {}

    def add(self, key: Key, o: Observation) -> None:
        with self._lock:
            self._pending.setdefault(key, Pending()).merge(o)

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def due(self, force: bool = False) -> list[tuple[Key, Pending]]:
        """The deliveries to write now, taken out: every one with something pending whose last write is
        `interval_s` ago or more (all of them with `force`, the process's last flush)."""
        with self._lock:
            now = self._clock()
            out = []
            for key in list(self._pending):
                last = self._written.get(key)
                if force or last is None or now - last >= self.interval_s:
                    out.append((key, self._pending.pop(key)))
                    self._written[key] = now
            return out

    def put_back(self, key: Key, p: Pending) -> None:
        """A write that failed: its observations wait for the next one (merged with what came meanwhile)."""
        with self._lock:
            mine = self._pending.setdefault(key, Pending())
            for slot, figures in p.slots.items():
                mine.slots.setdefault(slot, Figures()).add(figures)
            for name in MAXIMA:
                setattr(mine, name, _max(getattr(mine, name), getattr(p, name)))
            if p.last_error is not None and (mine.last_error is None or p.last_error.at > mine.last_error.at):
                mine.last_error = p.last_error
            mine.observations += p.observations


# -- the item -------------------------------------------------------------------------------------------


def _bucket_attr(kind: str, slot: int, letter: str) -> str:
    """A bucket's attribute: 'h' (5-minute) or 'd' (hour), its slot, its counter's letter (`_bucket` reads it)."""
    return f"{kind}{slot}_{letter}"


def update_request(
    p: Pending, now: float, seen: Mapping[str, Any] | None, parity: int, backoff_until: float | None
) -> dict[str, Any]:
    """The UpdateItem arguments (without table and key) of one write: pure, so it is tested on its own.

    `seen`: the item the previous write of this process returned (what to prune); `parity`: which of each
    maximum's two sets this write ADDs to; `backoff_until`: the writer's circuit (None: not the writer's
    to say, as for the replay)."""
    names: dict[str, str] = {}
    values: dict[str, Any] = {}
    adds: list[str] = []
    sets: list[str] = []
    deletes: list[str] = []

    def name(attr: str) -> str:
        alias = f"#a{len(names)}"
        names[alias] = attr
        return alias

    def value(v: Any) -> str:
        alias = f":v{len(values)}"
        values[alias] = v
        return alias

    days: dict[int, Figures] = {}
    for slot, figures in p.slots.items():
        days.setdefault(slot * HOUR_SLOT_S // DAY_SLOT_S, Figures()).add(figures)
    for kind, slots in (("h", p.slots), ("d", days)):
        for slot, figures in sorted(slots.items()):
            for letter, attr in COUNTERS.items():
                if n := getattr(figures, attr):
                    adds.append(f"{name(_bucket_attr(kind, slot, letter))} {value({'N': str(n)})}")
    seen = seen or {}
    for attr in MAXIMA:
        mine = getattr(p, attr)
        if mine is None:
            continue
        adds.append(f"{name(f'{attr}_{parity}')} {value({'NS': [_num(mine)]})}")
        other = f"{attr}_{1 - parity}"
        was = maximum(seen, attr)
        top = mine if was is None else max(was, mine)  # the largest anyone has written, this write's included
        stale = sorted({_num(x) for x in seen.get(other, ()) if float(x) < top})
        if stale:
            deletes.append(f"{name(other)} {value({'NS': stale})}")
    if p.last_error is not None:
        e = p.last_error
        sets.append(
            f"{name('last_error')} = "
            + value(
                {
                    "M": {
                        "code": {"S": e.code},
                        "message": {"S": e.message},
                        "remedy": {"S": e.remedy},
                        "at": {"N": _num(e.at)},
                    }
                }
            )
        )
    if backoff_until is not None:
        sets.append(f"{name('backoff_until')} = {value({'N': _num(backoff_until)})}")
    sets.append(f"{name('updated_at')} = {value({'N': _num(now)})}")
    sets.append(f"{name('expires_at')} = {value({'N': str(int(now + RETENTION_S))})}")
    added = set(names.values())
    removes = [name(a) for a in sorted(stale_buckets(seen, now) - added)]
    expression = "SET " + ", ".join(sets)
    if adds:
        expression += " ADD " + ", ".join(adds)
    if deletes:
        expression += " DELETE " + ", ".join(deletes)
    if removes:
        expression += " REMOVE " + ", ".join(removes)
    return {
        "UpdateExpression": expression,
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": values,
        "ReturnValues": "ALL_NEW",
    }


def _num(x: float | Decimal) -> str:
    # Milliseconds are enough for every time kept here; a stable text keeps set elements comparable.
    return f"{round(float(x), 3):.3f}".rstrip("0").rstrip(".")


def _bucket(attr: str) -> tuple[str, int, str] | None:
    """('h' or 'd', slot, counter letter) of a bucket attribute, None for any other attribute."""
    if len(attr) < 4 or attr[0] not in "hd" or "_" not in attr:
        return None
    slot, _, letter = attr[1:].partition("_")
    if not slot.isdigit() or letter not in COUNTERS:
        return None
    return attr[0], int(slot), letter


def _first_slots(now: float) -> tuple[int, int]:
    """The oldest 5-minute and hour slots still in the last hour and the last day."""
    return int(now // HOUR_SLOT_S) - (HOUR_SLOTS - 1), int(now // DAY_SLOT_S) - (DAY_SLOTS - 1)


def stale_buckets(item: Mapping[str, Any], now: float) -> set[str]:
    first_hour, first_day = _first_slots(now)
    out = set()
    for attr in item:
        b = _bucket(attr)
        if b is not None and b[1] < (first_hour if b[0] == "h" else first_day):
            out.add(attr)
    return out


def window_figures(item: Mapping[str, Any], now: float) -> tuple[Figures, Figures]:
    """(last hour, last day) from an item's buckets."""
    first_hour, first_day = _first_slots(now)
    hour, day = Figures(), Figures()
    for attr, raw in item.items():
        b = _bucket(attr)
        if b is None:
            continue
        kind, slot, letter = b
        target = hour if kind == "h" and slot >= first_hour else day if kind == "d" and slot >= first_day else None
        if target is not None:
            setattr(target, COUNTERS[letter], getattr(target, COUNTERS[letter]) + int(raw))
    return hour, day


def maximum(item: Mapping[str, Any], attr: str) -> float | None:
    values = [float(x) for s in (f"{attr}_0", f"{attr}_1") for x in (item.get(s) or ())]
    return max(values) if values else None


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    return iso_z(datetime.fromtimestamp(t, UTC))


def last_error_of(item: Mapping[str, Any]) -> LastError | None:
    e = item.get("last_error")
    if not isinstance(e, Mapping):
        return None
    return LastError(str(e.get("code", "")), str(e.get("message", "")), str(e.get("remedy", "")), float(e.get("at", 0)))


def state_of(item: Mapping[str, Any], enabled: bool, now: float) -> State:
    """The delivery's state by the rules in the module's docstring (and CONTRACTS.md §9)."""
    if not enabled:
        return State.DISABLED
    error = last_error_of(item)
    success = maximum(item, "last_success")
    failing_now = error is not None and (success is None or error.at > success)
    throttled = error is not None and is_throttling(error.code)
    if failing_now and not throttled:
        return State.FAILING
    if failing_now or float(item.get("backoff_until") or 0) > now:
        return State.BACKING_OFF
    hour, _ = window_figures(item, now)
    lag = lag_of(item)
    if hour.objects_failed or hour.events_rejected or (lag is not None and lag > DEGRADED_LAG_S):
        return State.DEGRADED
    return State.HEALTHY


def lag_of(item: Mapping[str, Any]) -> float | None:
    seen, delivered = maximum(item, "newest_seen"), maximum(item, "newest_object")
    if seen is None or delivered is None:
        return None
    return max(0.0, seen - delivered)


def status_of(delivery_id: str, item: Mapping[str, Any] | None, enabled: bool, now: float) -> dict[str, Any]:
    """One delivery's status, in the shape of CONTRACTS.md §9."""
    item = item or {}
    hour, day = window_figures(item, now)
    error = last_error_of(item)
    lag = lag_of(item)
    return {
        "delivery_id": delivery_id,
        "state": str(state_of(item, enabled, now)),
        "newest_object_time": iso(maximum(item, "newest_object")),
        "newest_event_time": iso(maximum(item, "newest_event")),
        "lag_seconds": None if lag is None else round(lag, 3),
        "last_hour": hour.to_dict(),
        "last_day": day.to_dict(),
        "last_error": error.to_dict() if error is not None else None,
    }


def worst_first(statuses: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Statuses (each with `tenant_id`) in the order an operator reads them: state, then the longest lag."""
    rank = {str(s): i for i, s in enumerate(WORST_FIRST)}
    return sorted(
        statuses,
        key=lambda s: (rank[s["state"]], -(s["lag_seconds"] or 0.0), s.get("tenant_id", ""), s["delivery_id"]),
    )


class StatusTable:
    """The status items (`DELIVERY_STATUS_TABLE`)."""

    def __init__(self, table: str, client: Any = None) -> None:
        self.table = table
        self._client = client
        self.writes = 0

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = aws.client("dynamodb")
        return self._client

    def update(self, key: Key, request: Mapping[str, Any]) -> dict[str, Any]:
        from pipeline.tenants import deserialize

        answer = self.client.update_item(
            TableName=self.table, Key={"tenant_id": {"S": key[0]}, "delivery_id": {"S": key[1]}}, **request
        )
        self.writes += 1
        return deserialize(answer.get("Attributes", {}))

    def tenant(self, tenant_id: str) -> dict[str, dict[str, Any]]:
        """Every status item of a tenant, by delivery id (a Query; a tenant has a handful)."""
        from pipeline.tenants import deserialize

        pages = self.client.get_paginator("query").paginate(
            TableName=self.table,
            KeyConditionExpression="tenant_id = :t",
            ExpressionAttributeValues={":t": {"S": tenant_id}},
            ConsistentRead=True,
        )
        items = (deserialize(raw) for page in pages for raw in page.get("Items", []))
        return {str(item.get("delivery_id")): item for item in items}


def circuit_backoff(circuits: CircuitBreakers) -> Callable[[Key], float]:
    """Seconds a destination stays in back-off by the consumer's circuits (0: not backing off). At least
    one flush interval while it is: the next write says again."""

    def until(key: Key) -> float:
        if key not in circuits.backing_off():
            return 0.0
        return max(circuits.retry_after(key), FLUSH_INTERVAL_S)

    return until


class MetricsPublisher:
    """The status figures of a write as CloudWatch metrics in the tenant's own account (`publish_metrics`):
    namespace `LogDelivery`, dimensions `tenant` and `delivery`, through the tenant's role (the same double
    hop as delivery; the customer template grants PutMetricData on that namespace only)."""

    def __init__(self, directory: TenantDirectory, broker: CredentialBroker) -> None:
        self.directory = directory
        self.broker = broker
        self.calls = 0

    def delivery(self, key: Key) -> Delivery | None:
        try:
            tenant = self.directory.get(key[0])
        except Exception:  # an unknown tenant or a lookup error: nothing to publish to
            return None
        return next((d for d in tenant.deliveries if d.delivery_id == key[1] and d.publish_metrics), None)

    def publish(self, key: Key, figures: Figures, status: Mapping[str, Any], now: float) -> None:
        d = self.delivery(key)
        if d is None:
            return
        stamp = datetime.fromtimestamp(now, UTC)
        dims = [{"Name": "tenant", "Value": key[0]}, {"Name": "delivery", "Value": key[1]}]
        data: list[dict[str, Any]] = [
            {"MetricName": n, "Dimensions": dims, "Timestamp": stamp, "Value": float(v), "Unit": u}
            for n, v, u in (
                ("ObjectsDelivered", figures.objects, "Count"),
                ("EventsDelivered", figures.events, "Count"),
                ("BytesDelivered", figures.bytes, "Bytes"),
                ("EventsRejected", figures.events_rejected, "Count"),
                ("ObjectsFailed", figures.objects_failed, "Count"),
            )
        ]
        if status.get("lag_seconds") is not None:
            data.append(
                {
                    "MetricName": "LagSeconds",
                    "Dimensions": dims,
                    "Timestamp": stamp,
                    "Value": float(status["lag_seconds"]),
                    "Unit": "Seconds",
                }
            )
        try:
            cw = self.broker.client("cloudwatch", d.tenant_id, d.role_arn, d.region, d.hop_external_id)
            cw.put_metric_data(Namespace=NAMESPACE, MetricData=data)
            self.calls += 1
        except (ClientError, BotoCoreError, ValueError) as exc:
            log.warning(
                "status metrics not published: %s",
                describe(exc),
                extra={"tenant_id": key[0], "delivery_id": key[1]},
            )


class StatusRecorder:
    """Coalesces results and writes each delivery's status item at most once per interval (a timer thread),
    and everything pending at `close()`. Never raises into the delivery path: a write that fails is logged
    and its figures wait for the next."""

    def __init__(
        self,
        table: StatusTable,
        *,
        interval_s: float = FLUSH_INTERVAL_S,
        clock: Callable[[], float] = time.time,
        backoff: Callable[[Key], float] | None = None,
        publisher: MetricsPublisher | None = None,
    ) -> None:
        self.table = table
        self.coalescer = Coalescer(interval_s, clock)
        self._clock = clock
        self._backoff = backoff
        self.publisher = publisher
        self._seen: dict[Key, dict[str, Any]] = {}
        self._parity: dict[Key, int] = {}
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def observe(self, result: ObjectResult) -> None:
        """Fold in one object's result (the seam: where the consumer and the replay report results)."""
        now = self._clock()
        for d in result.deliveries:
            o = observe(result, d, now)
            if o is not None:
                self.coalescer.add((result.tenant, d.delivery_id), o)

    def flush(self, force: bool = False) -> int:
        """Write the deliveries that are due (all with `force`); the number of writes."""
        with self._write_lock:  # the timer and close() never write one item at once
            writes = 0
            for key, p in self.coalescer.due(force):
                if self._write(key, p):
                    writes += 1
            return writes

    def _write(self, key: Key, p: Pending) -> bool:
        now = self._clock()
        parity = self._parity.get(key, 0)
        backoff = None
        if self._backoff is not None:
            wait = self._backoff(key)
            backoff = now + wait if wait > 0 else 0.0
        request = update_request(p, now, self._seen.get(key), parity, backoff)
        try:
            item = self.table.update(key, request)
        except (ClientError, BotoCoreError) as exc:
            log.warning(
                "status write failed: %s",
                describe(exc),
                extra={"tenant_id": key[0], "delivery_id": key[1]},
            )
            self.coalescer.put_back(key, p)
            return False
        self._seen[key], self._parity[key] = item, 1 - parity
        if self.publisher is not None:
            self.publisher.publish(key, p.totals(), status_of(key[1], item, True, now), now)
        return True

    def start(self, tick_s: float | None = None) -> StatusRecorder:
        tick = tick_s if tick_s is not None else max(0.5, self.coalescer.interval_s / 6)

        def run() -> None:
            while not self._stop.wait(tick):
                try:
                    self.flush()
                except Exception:  # a bug here must not stop the timer, nor reach the delivery path
                    log.exception("status flush failed")

        self._thread = threading.Thread(target=run, name="status-flush", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the timer and write everything pending (shutdown, the end of a replay)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush(force=True)


def status_recorder(
    settings: Settings, directory: TenantDirectory, circuits: CircuitBreakers | None = None
) -> StatusRecorder | None:
    """The process's recorder, or None when `DELIVERY_STATUS_TABLE` is not set (no status is kept).

    Deliveries with `publish_metrics` get their metrics through the tenant's role when the process has a
    central role (it delivers); the consumer passes its circuits, which say when a delivery backs off."""
    if not settings.status_table:
        return None
    publisher = None
    if settings.central_role_arn:
        from pipeline.credentials import CredentialBroker

        publisher = MetricsPublisher(directory, CredentialBroker(settings.central_role_arn))
    backoff = circuit_backoff(circuits) if circuits is not None else None
    return StatusRecorder(StatusTable(settings.status_table), backoff=backoff, publisher=publisher)


INVALID_DELIVERY = "InvalidDelivery"


def tenant_status(
    store: TenantStore, table: StatusTable, tenant_id: str, now: float, delivery_id: str | None = None
) -> dict[str, Any]:
    """`{"tenant_id", "deliveries": [...]}` (CONTRACTS.md §9), every delivery of the tenant's configuration
    with its status item, or the one `delivery_id`; NotFound (the API's 404) for an unknown tenant or
    delivery. An item of the tenant table that does not validate is `failing`: its objects fail until it is
    fixed. Two reads: the tenant's rows and its status items, one Query each."""
    good, bad = store.tenant(tenant_id)
    ids = [str(s.item["delivery_id"]) for s in good] + [d for d, _ in bad]
    if delivery_id is not None and delivery_id not in ids:
        raise NotFound(f"tenant {tenant_id!r} has no delivery {delivery_id!r}")
    items = table.tenant(tenant_id)
    out = []
    for s in good:
        did = str(s.item["delivery_id"])
        if delivery_id in (None, did):
            out.append(status_of(did, items.get(did), s.item.get("enabled") is not False, now))
    for did, reason in bad:
        if delivery_id in (None, did):
            doc = status_of(did, items.get(did), True, now)
            remedy = "fix the delivery item (log-tenants show lists every bad field); its objects fail until then"
            doc["state"] = str(State.FAILING)
            doc["last_error"] = LastError(INVALID_DELIVERY, reason[:MESSAGE_CHARS], remedy, now).to_dict()
            out.append(doc)
    return {"tenant_id": tenant_id, "deliveries": worst_first(out)}
