"""What an object did at each of its deliveries: the result types every caller reads (pure values)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, overload

from pipeline.counters import DecodeCounts, DeliveryCounts
from pipeline.coverage import EMPTY, WHOLE, Coverage
from pipeline.errors import DeliveryError

LEDGER_SKIP = "already delivered (ledger)"
OUTSIDE_WINDOW = "written outside the window"


class Status(StrEnum):
    DELIVERED = "delivered"
    SKIPPED = "skipped"  # nothing to do: already delivered, disabled, application or cluster not wanted
    DAMAGED = "damaged"  # the readable part was delivered; the rest of the body cannot be read
    FAILED = "failed"


class Commit(StrEnum):
    """When and how a delivery's ledger record is written: the one commit rule (`Deliverer`), chosen for each
    delivery from what the caller asked for and its sink's traits. A record is only ever written for data
    that is durable at the destination, so a crash resends what is unrecorded, never loses it."""

    NOW = "now"  # durable when the sink returns: recorded at once (a filled batch's: with its answer's others)
    AFTER_FLUSH = "after flush"  # durable only after the sink's flush(): recorded by the caller's finish()
    GROUP = "group"  # durable, left for the caller's commit(), written with other objects' (Ledger.record_many)
    WHOLE = "whole"  # GROUP, and the object's item may be written whole (Ledger.replace_items)


class _Grouped:
    """`DeliveryResult.batched`, as the consumer's group commit reads it and its tests build it: whether the
    record waits for the caller's commit() (GROUP, WHOLE). Setting it True asks for GROUP (a WHOLE stays
    WHOLE), False for NOW; left out of the constructor (None), `commit` alone decides."""

    @overload
    def __get__(self, obj: None, owner: Any) -> None: ...
    @overload
    def __get__(self, obj: DeliveryResult, owner: Any) -> bool: ...
    def __get__(self, obj: DeliveryResult | None, owner: Any = None) -> bool | None:
        if obj is None:
            return None  # the constructor's default: not asked
        return obj.commit in (Commit.GROUP, Commit.WHOLE)

    def __set__(self, obj: DeliveryResult, value: bool | None) -> None:
        if value is not None and value != self.__get__(obj, None):
            obj.commit = Commit.GROUP if value else Commit.NOW


@dataclass
class DeliveryResult(DeliveryCounts):
    """What one object did at one delivery: its counters, and its outcome there."""

    delivery_id: str
    type: str
    target: str = ""
    status: Status = Status.DELIVERED
    reason: str = ""
    recoverable: bool = False
    streams: list[str] = field(default_factory=list)
    recorded: bool = False  # in the ledger
    commit: Commit = Commit.NOW  # when its record is written, once it is done (before `batched`: see there)
    # A view of `commit`, kept as a field so that `DeliveryResult(..., batched=True)` asks for GROUP; it is set
    # after `commit` in __init__, so it must stay declared after it.
    batched: _Grouped = _Grouped()
    code: str = ""  # the AWS error code behind a failure, when known (DeliveryError.code)
    held: bool = False  # not attempted: the caller held it back (its destination is backing off)
    # Event deliveries: what the ledger says earlier runs delivered of this object (not sent again), and
    # what this run is to cover (its window, or the whole object) and records once durable.
    covered: Coverage = EMPTY
    scope: Coverage = WHOLE
    newest_event_ms: int = 0  # event deliveries: the newest event time of the object in this run's scope

    @property
    def done(self) -> bool:
        return self.status in (Status.DELIVERED, Status.DAMAGED)

    @property
    def durable(self) -> bool:
        """False while what the sink took waits for its flush() to be at the destination."""
        return self.commit is not Commit.AFTER_FLUSH

    def fail(self, reason: str, recoverable: bool, code: str = "") -> DeliveryResult:
        self.status, self.reason, self.recoverable, self.code = Status.FAILED, reason, recoverable, code
        return self

    def failed_with(self, exc: DeliveryError) -> DeliveryResult:
        if exc.sent is not None:  # what the sink did before it gave up still happened on the wire
            self.add(exc.sent)
        return self.fail(exc.reason, exc.recoverable, exc.code)

    def skip(self, reason: str) -> DeliveryResult:
        self.status, self.reason = Status.SKIPPED, reason
        return self

    def to_dict(self) -> dict[str, Any]:
        d = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in ("recorded", "commit", "batched", "held", "covered", "scope", "newest_event_ms")
        }
        d["status"] = str(self.status)
        return d


@dataclass
class ObjectResult(DecodeCounts):
    """What one object did: what reading it saw (its own counters), and a result per delivery."""

    key: str
    status: Status = Status.DELIVERED
    reason: str = ""
    recoverable: bool = False
    tenant: str = ""
    application: str = ""
    etag: str = ""
    malformed_samples: list[tuple[int, str]] = field(default_factory=list)
    delivered_at: float = 0.0
    last_modified: float = 0.0
    deliveries: list[DeliveryResult] = field(default_factory=list)
    # The object's ledger item is known to hold the map `deliveries` (read so, or recorded to): its next
    # records set their own entries of it (`Ledger.record_many`).
    mapped: bool = False

    def totals(self) -> DeliveryCounts:
        """The deliveries' counters summed: what the object did at all of them."""
        out = DeliveryCounts()
        for d in self.deliveries:
            out.add(d)
        return out

    @property
    def events_delivered(self) -> int:
        return sum(d.events_delivered for d in self.deliveries)

    @property
    def events_rejected(self) -> int:
        return sum(d.events_rejected for d in self.deliveries)

    @property
    def acknowledged(self) -> bool:
        """Whether the work is durably done: delivered, or failed in a way a retry cannot fix."""
        return not (self.status is Status.FAILED and self.recoverable)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("deliveries", "mapped")
        }
        d["status"] = str(self.status)
        d.update(self.totals().counts())
        d["deliveries"] = [r.to_dict() for r in self.deliveries]
        return d

    def fail(self, reason: str, recoverable: bool) -> ObjectResult:
        self.status, self.reason, self.recoverable = Status.FAILED, reason, recoverable
        return self

    def settle(self) -> ObjectResult:
        """The object's status from its deliveries': any failed, else any damaged, else any delivered."""
        if not self.deliveries:
            # Unless already decided for the object as a whole (bad key, unknown tenant, interrupted), no
            # delivery takes it: the tenant has none, or none was selected.
            if self.status is Status.DELIVERED:
                self.status, self.reason = Status.SKIPPED, "no delivery takes it"
            return self
        failed = [d for d in self.deliveries if d.status is Status.FAILED]
        if failed:
            reason = "; ".join(f"{d.delivery_id}: {d.reason}" for d in failed)
            return self.fail(reason, any(d.recoverable for d in failed))
        damaged = [d for d in self.deliveries if d.status is Status.DAMAGED]
        if damaged:
            self.status, self.reason = Status.DAMAGED, damaged[0].reason
        elif any(d.status is Status.DELIVERED for d in self.deliveries):
            self.status, self.reason = Status.DELIVERED, ""
        else:
            self.status = Status.SKIPPED
            reasons = list(dict.fromkeys(d.reason for d in self.deliveries))
            # Every delivery that takes the object has it: the others' filters are beside the point.
            self.reason = LEDGER_SKIP if LEDGER_SKIP in reasons else "; ".join(reasons)
        return self
