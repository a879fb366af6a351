"""One message end to end, and the acknowledge decision that SQS, Lambda and manual mode all share.

A message is acknowledged (deleted, or left out of `batchItemFailures`) when every delivery of every
object it names is durably done: delivered and in the ledger, skipped (ledger, disabled delivery,
filtered application or cluster), or failed in a way no retry can fix (malformed key, unknown tenant, an
invalid delivery item, a body that is not an S3 event, an object in another bucket than the central one).
Anything recoverable leaves the whole message for redelivery; every delivery that did succeed is in the
ledger by then, so the retry sends only the rest.

One destination's failures do not spend the workers of everyone else (`pipeline.circuits`): before an
object is delivered, the deliveries whose circuit is open are held back (failed recoverably, never
attempted, while the object's other deliveries go on), and a message with a held or throttled delivery
carries `retry_after_s`, a delay that grows with its receive count, so SQS mode and Lambda hand it back at
once instead of a worker waiting on it, and a long storm does not walk it into the DLQ.

Only objects of the central bucket (`S3_BUCKET_NAME`) are delivered. A notification is data anyone who can
send to the queue controls, and the consumer reads with an identity that may read other buckets too: a
record naming another bucket is refused, never fetched, and acknowledged (retrying cannot change it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.circuits import (
    DEFAULT_HOLD_BASE_S,
    CircuitBreakers,
    Key,
    Verdict,
    release_delay,
    spread,
    verdict_of,
)
from pipeline.consumer.commit import GroupCommit, LedgerView
from pipeline.consumer.events import InvalidMessageError, ParsedMessage, parse_body
from pipeline.consumer.metrics import Metrics, object_status
from pipeline.delivery.engine import Deliverer, build_deliverer
from pipeline.delivery.results import DeliveryResult, ObjectResult, Status
from pipeline.delivery.routing import ObjectRef
from pipeline.errors import DeliveryError
from pipeline.keys import parse_key
from pipeline.ledger import LedgerError, ObjectLedger
from pipeline.memory import MemoryBudget, decoded_footprint
from pipeline.retry import RetryPolicy
from pipeline.settings import Settings
from pipeline.sinks import sink_names
from pipeline.status import StatusRecorder
from pipeline.tenants import Delivery, DeliveryType

log = logging.getLogger("pipeline.consumer")

# The consumer acknowledges a message once delivery returns, so its CloudWatch sink must be durable by then.
SINKS = sink_names(DeliveryType.CLOUDWATCH, durable_only=True)
BEING_DELIVERED = "the same object is being delivered by another worker of this consumer; retried after it"

# Throttled attempts a put makes in the consumer before it fails and opens its destination's circuit. Short:
# a worker that waits out a throttled tenant's quota is a worker every other tenant lacks, and the circuit
# (not the sink's retry loop) is what waits out a storm.
DEFAULT_THROTTLE_ATTEMPTS = 3

# How long idempotent records wait for others to be written with (`DeferredRecords`), and how many messages'
# records make a group written at once. Their messages stay in flight meanwhile (the heartbeat extends them):
# this bounds only how late they are deleted and their status written. A group's objects are one
# TransactWriteItems (up to 100 items).
DEFER_PATIENCE_S = 0.1
DEFER_LIMIT = 25


def consumer_retry(put_attempts: int | None = None, throttle_attempts: int | None = None) -> RetryPolicy:
    """The sinks' retry policy in the consumer: `put_attempts` for 5xx and the network (default 8), and at
    most `throttle_attempts` (default 3) of them throttled."""
    default = RetryPolicy()
    return RetryPolicy(
        attempts=put_attempts or default.attempts,
        base_s=default.base_s,
        cap_s=default.cap_s,
        throttle_attempts=throttle_attempts or DEFAULT_THROTTLE_ATTEMPTS,
    )


def consumer_deliverer(settings: Settings, put_attempts: int | None, throttle_attempts: int | None) -> Deliverer:
    """The Deliverer of the SQS and Lambda modes: its records are left to the processor's group commit, and
    an object that only idempotent (S3) deliveries take is delivered without a ledger read."""
    return build_deliverer(
        settings,
        retry=consumer_retry(put_attempts, throttle_attempts),
        defer_records=True,
        read_idempotent=False,
    )


# A body parsed: the message it names, or why it names none (InvalidMessageError; anything else is a bug).
Parse = ParsedMessage | Exception


def parse(body: str | bytes) -> Parse:
    """The body parsed once for the whole receive: what `prefetch` reads the ledger for and what the
    message then delivers; an exception is kept, to be reported by the message it belongs to."""
    try:
        return parse_body(body)
    except Exception as exc:  # judged by _deliver_message: rejected, or a parser bug that keeps the message
        return exc


@dataclass
class MessageOutcome:
    message_id: str
    results: list[ObjectResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # message- or record-level, non-recoverable
    error: str = ""  # an unexpected exception: the message is retried
    # Set when a delivery was held back or its destination is backing off: hand the message back now, to come
    # back after this many seconds (rather than the flat retry delay).
    retry_after_s: int | None = None

    @property
    def acknowledged(self) -> bool:
        return not self.error and all(r.acknowledged for r in self.results)

    @property
    def outcome(self) -> str:
        """The `logdelivery_messages_total` label: delivered, skipped, ignored, rejected or retried."""
        if not self.acknowledged:
            return "retried"
        if self.rejected or any(r.status is Status.FAILED for r in self.results):
            return "rejected"
        if not self.results:
            return "ignored"
        if all(r.status is Status.SKIPPED for r in self.results):
            return "skipped"
        return "delivered"

    @property
    def failed(self) -> bool:
        """Anything failed, recoverable or not (manual mode's exit status)."""
        return bool(self.error or self.rejected or any(r.status is Status.FAILED for r in self.results))

    def to_dict(self) -> dict[str, Any]:
        return {
            "message_id": self.message_id,
            "outcome": self.outcome,
            "acknowledged": self.acknowledged,
            "objects": [r.to_dict() for r in self.results],
            "skipped": self.skipped,
            "rejected": self.rejected,
            "error": self.error,
            "retry_after_s": self.retry_after_s,
        }


@dataclass
class _Work:
    """A message whose objects are delivered and not yet recorded (`MessageProcessor._deliver_message`)."""

    outcome: MessageOutcome
    ctx: dict[str, Any]
    done: list[tuple[str, list[Delivery], ObjectResult, float]] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # taken in _in_flight: kept until the records are written

    @property
    def receive_count(self) -> int:
        return int(self.ctx["receive_count"])


class MessageProcessor:
    """Parses one SQS body and delivers the objects it names. Never raises: the outcome says it all.

    Thread-safe as long as the Deliverer is; `pipeline.delivery.engine.build_deliverer` makes one that is.
    """

    def __init__(
        self,
        deliverer: Deliverer,
        metrics: Metrics | None = None,
        *,
        bucket: str,
        budget: MemoryBudget | None = None,
        circuits: CircuitBreakers | None = None,
        hold_base_s: float = DEFAULT_HOLD_BASE_S,
        status: StatusRecorder | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("the central bucket (S3_BUCKET_NAME) is required: it is the only one delivered from")
        self.deliverer = deliverer
        self.metrics = metrics or Metrics()
        self.bucket = bucket
        # Workers wait for room before an object that would not fit, so the pod's memory follows the budget,
        # not object size times workers.
        self.budget = budget
        self._in_flight: set[str] = set()  # keys being delivered by this process's workers
        self._in_flight_lock = threading.Lock()
        # None: every delivery is always attempted (manual mode, which answers for one object on request).
        self.circuits = circuits
        self.hold_base_s = hold_base_s
        self._types: dict[Key, str] = {}  # delivery type of each destination seen, for the back-off gauge
        # Every worker's finished objects are recorded through it, together with those finishing alongside.
        self.commits = GroupCommit(lambda results: deliverer.commit(*results))
        # Each delivery's status (pipeline.status): fed with every result, written at most every 30 s.
        self.status = status
        # Messages whose records are idempotent, waiting to be recorded together (`Receive.process`).
        self.deferred = DeferredRecords(self)
        # Messages delivered and being recorded, concluded and handed back (`Receive.process`): their workers
        # are free within milliseconds, so the SQS poll loop may wait that long to receive for them too.
        self._finishing = 0

    def prefetch(self, parses: Iterable[Parse]) -> LedgerView | None:
        """What the ledger holds for the objects a receive's messages name, in one batched read (only those
        a delivery needs it for: `Deliverer.ledger_view`). None when there is nothing to read, or the read
        failed: each message then asks for its own objects. A body that did not parse is the message's own
        business: delivering it reports it."""
        refs = [r for p in parses if isinstance(p, ParsedMessage) for r in p.refs if r.bucket == self.bucket]
        if not refs:
            return None
        try:
            asked = [r for r in refs if self.deliverer.needs_ledger(r)]
            found = self.deliverer.ledger_view(asked) if asked else None
        except (ClientError, BotoCoreError, LedgerError, DeliveryError) as exc:
            log.warning("batched ledger read failed; each message reads its own", extra={"error": str(exc)[:300]})
            return None
        if found is None:
            return None
        return self.commits.watch(LedgerView(found, (r.key for r in asked)))

    def process(
        self,
        body: str | bytes,
        message_id: str = "",
        receive_count: int = 0,
        view: LedgerView | None = None,
        parsed: Parse | None = None,
    ) -> MessageOutcome:
        """Deliver what the message names, then record it (`GroupCommit`): the outcome is acknowledged only
        once every record is written. `view`: the ledger read for the whole receive (`prefetch`); `parsed`:
        the body as that read parsed it (`Receive.parsed`), else it is parsed here."""
        work = self._deliver_message(body, message_id, receive_count, view, parsed)
        if isinstance(work, MessageOutcome):
            return work
        self._commit([work])
        return self._conclude(work)

    @property
    def finishing(self) -> int:
        """How many messages are past their delivery and in their ledger write or conclusion (not deferred)."""
        with self._in_flight_lock:
            return self._finishing

    def _finish(self, step: int) -> None:
        with self._in_flight_lock:
            self._finishing += step

    def receive(self, bodies: Sequence[str | bytes]) -> Receive:
        """The messages of one receive, read from the ledger at once (`prefetch`), their idempotent records
        written with others' (`DeferredRecords`). Each must then go through `Receive.process`, exactly once."""
        parses = {body: parse(body) for body in bodies}
        return Receive(self, self.prefetch(parses.values()), parses)

    def _deliver_message(
        self,
        body: str | bytes,
        message_id: str,
        receive_count: int,
        view: LedgerView | None,
        parsed: Parse | None = None,
    ) -> _Work | MessageOutcome:
        """A message's deliveries, not yet recorded (a `_Work` for `_commit`, then `_conclude`); or its final
        outcome when nothing it names could be delivered (a body that is not an S3 event)."""
        outcome = MessageOutcome(message_id)
        ctx: dict[str, Any] = {"message_id": message_id, "receive_count": receive_count}
        parsed = parse(body) if parsed is None else parsed
        if isinstance(parsed, InvalidMessageError):
            outcome.rejected.append(parsed.reason)
            log.warning("message rejected: %s", parsed.reason, extra={**ctx, "reason": parsed.reason})
            return outcome
        if isinstance(parsed, Exception):  # a parser bug must not kill a worker; the queue's redrive takes over
            outcome.error = f"{type(parsed).__name__}: {parsed}"
            log.error("message parsing failed unexpectedly", exc_info=parsed, extra=ctx)
            return outcome
        outcome.skipped, outcome.rejected = list(parsed.skipped), list(parsed.rejected)
        refs = []
        named: set[str] = set()
        for ref in parsed.refs:
            if ref.bucket != self.bucket:
                outcome.rejected.append(foreign_bucket_reason(ref.bucket, ref.key, self.bucket))
            elif ref.key in named:
                # S3 never names one object twice in an event, but anyone who can send to the queue can:
                # each record would read the ledger before the other recorded, and deliver it again.
                outcome.skipped.append(f"s3://{ref.bucket}/{ref.key} named again in the same message: delivered once")
            else:
                named.add(ref.key)
                refs.append(ref)
        for reason in outcome.skipped:
            log.info("event skipped: %s", reason, extra={**ctx, "reason": reason})
        for reason in outcome.rejected:
            log.warning("record rejected: %s", reason, extra={**ctx, "reason": reason})
        work = _Work(outcome, ctx)
        try:
            for ref in refs:
                start = time.monotonic()
                tenant, probes, held = self._ask_circuits(ref)
                try:
                    result = self._deliver(ref, held, probes, view.get(ref.key) if view else None, work.keys)
                except Exception as exc:  # deliver() never raises for a bad object; this is a bug or a crash
                    self._report(tenant, probes, None)  # a half-open circuit's probe must not stay out forever
                    outcome.error = f"{type(exc).__name__}: {exc}"
                    log.exception("delivery raised unexpectedly", extra={**ctx, "object_key": ref.key})
                    break
                work.done.append((tenant, probes, result, start))
        except BaseException:
            self._release_keys([work])
            raise
        return work

    def _deferrable(self, work: _Work) -> bool:
        """Whether the message's records may wait for the rest of its receive: it has some, and every one of
        them is of an idempotent sink (S3). A kill before they are written then costs a resend that overwrites
        the same objects, never a duplicate; any other record is written as soon as its object is done."""
        if work.outcome.error:
            return False
        pending = [r for _, _, res, _ in work.done for r in res.deliveries if r.batched and r.done and not r.recorded]
        sinks = {str(t): sink for t, sink in self.deliverer.sinks.items()}
        return bool(pending) and all(r.type in sinks and sinks[r.type].traits.idempotent for r in pending)

    def _commit(self, works: Sequence[_Work]) -> None:
        """Record what these messages delivered (`GroupCommit`, in one group when they come together)."""
        try:
            # What was delivered is recorded even after a crash on a later object, so a retry skips it.
            self.commits.commit([result for w in works for _, _, result, _ in w.done])
        except Exception as exc:  # the group's deliveries are failed already (GroupCommit): retried
            for w in works:
                w.outcome.error = w.outcome.error or f"{type(exc).__name__}: {exc}"
            log.exception(
                "ledger commit raised unexpectedly", extra={"message_ids": [w.ctx["message_id"] for w in works]}
            )
        finally:
            self._release_keys(works)

    def _release_keys(self, works: Sequence[_Work]) -> None:
        with self._in_flight_lock:
            for w in works:
                self._in_flight.difference_update(w.keys)

    def _conclude(self, work: _Work) -> MessageOutcome:
        """After `_commit`: the circuits, metrics, status and log of each object, and the message's outcome."""
        outcome, ctx = work.outcome, work.ctx
        # For each destination this message backs off from: when it is worth receiving again (circuits.spread).
        waits: list[float] = []
        for tenant, probes, result, start in work.done:
            waits += self._report(tenant, probes, result)
            self.metrics.observe_object(result, time.monotonic() - start)
            if self.status is not None:
                self.status.observe(result)
            self._observe_tenant(result.tenant)
            outcome.results.append(result)
            _log_result(result, ctx, time.monotonic() - start)
        if outcome.error:
            return outcome
        if waits and not outcome.acknowledged:
            outcome.retry_after_s = release_delay(max(waits), work.receive_count, self.hold_base_s)
        return outcome

    def _ask_circuits(self, ref: ObjectRef) -> tuple[str, list[Delivery], dict[str, str]]:
        """The object's tenant, the deliveries let through (each reported after), and those held: id → reason."""
        if self.circuits is None:
            return "", [], {}
        try:
            tenant = self.deliverer.tenants.get(parse_key(ref.key).tenant)
        except Exception:  # a bad key or an unknown tenant: deliver() reports it, no destination is involved
            return "", [], {}
        probes: list[Delivery] = []
        held: dict[str, str] = {}
        for d in tenant.deliveries:
            key = (tenant.tenant_id, d.delivery_id)
            self._types[key] = str(d.type)
            if self.circuits.allow(key):
                probes.append(d)
            else:
                why = self.circuits.cause(key)[0]
                held[d.delivery_id] = (
                    f"held: {d.type} delivery {d.delivery_id!r} of tenant {tenant.tenant_id!r} is backing off "
                    f"for {self.circuits.retry_after(key):.1f} s more" + (f" after: {why}" if why else "")
                )[:500]
        return tenant.tenant_id, probes, held

    def _report(self, tenant: str, probes: list[Delivery], result: ObjectResult | None) -> list[float]:
        """Tell the circuits what each attempted delivery said about its destination; the wait (s) of every
        destination of this object that is backing off now (held, or just opened)."""
        if self.circuits is None or not tenant:
            return []
        by_id: dict[str, DeliveryResult] = {d.delivery_id: d for d in result.deliveries} if result else {}
        for d in probes:
            key = (tenant, d.delivery_id)
            r = by_id.get(d.delivery_id)
            verdict = (
                verdict_of(r.done, r.status is Status.FAILED, r.recoverable, r.held, r.code) if r else Verdict.NONE
            )
            self.circuits.report(key, verdict, r.reason if r else "", r.code if r else "")
        waits = []
        for delivery_id, r in by_id.items():
            key = (tenant, delivery_id)
            if r.held and not r.code:
                r.code = self.circuits.cause(key)[1]  # so its metrics say throttled when that is why
            if r.status is Status.FAILED and r.recoverable and (r.held or self.circuits.retry_after(key) > 0):
                waits.append(spread(self.circuits.retry_after(key), self.circuits.open_time(key)))
        self.publish_backoff()
        return waits

    def publish_backoff(self) -> None:
        """The `logdelivery_destinations_backing_off` gauge, from the circuits' state."""
        if self.circuits is None:
            return
        counts: dict[tuple[str, str], int] = {}
        for tenant, delivery_id in self.circuits.backing_off():
            kind = self._types.get((tenant, delivery_id), "unknown")
            counts[(tenant, kind)] = counts.get((tenant, kind), 0) + 1
        self.metrics.set_backing_off(counts)

    def _deliver(
        self,
        ref: ObjectRef,
        held: dict[str, str],
        probes: list[Delivery],
        known: ObjectLedger | None,
        keys: list[str],
    ) -> ObjectResult:
        # Two messages naming one object (S3's duplicate notifications) on two workers would both find the
        # ledger empty and both deliver: the second waits for its redelivery instead, and the ledger then
        # skips what the first delivered. (Two consumer pods can still race; the ledger bounds it.) The key
        # stays taken (`keys`) until the caller has recorded the object.
        with self._in_flight_lock:
            if ref.key in self._in_flight:
                return ObjectResult(ref.key).fail(BEING_DELIVERED, recoverable=True)
            self._in_flight.add(ref.key)
            keys.append(ref.key)
        if held and not probes:
            # Every delivery is held: nothing is read (routing holds them before it asks the ledger). A
            # herd of held messages coming back when a circuit half-opens then costs the other tenants
            # almost nothing, and a worker never waits for memory only to hand the message back.
            return self.deliverer.deliver(ref, known, held=held)
        if self.budget is None:
            return self.deliverer.deliver(ref, known, held=held or None)
        # An event without a size (never seen from S3) is charged nothing rather than blocking the pool.
        with self.budget.hold(decoded_footprint(ref.size or 0, self.deliverer.may_decode(ref.key))):
            return self.deliverer.deliver(ref, known, held=held or None)

    def _observe_tenant(self, tenant_id: str) -> None:
        """Flag a legacy tenant in the metrics (a cached lookup: the delivery has just read it)."""
        if not tenant_id:
            return
        try:
            tenant = self.deliverer.tenants.get(tenant_id)
        except (DeliveryError, ClientError, BotoCoreError):
            return  # an unknown tenant or a lookup error: the object's own result says so already
        self.metrics.observe_tenant(tenant)


class Receive:
    """The messages of one receive, read from the ledger at once (`MessageProcessor.prefetch`); each is handed
    to `process` exactly once, on any worker thread."""

    def __init__(
        self, processor: MessageProcessor, view: LedgerView | None, parses: dict[str | bytes, Parse] | None = None
    ) -> None:
        self._processor = processor
        self.view = view
        self._parses = parses or {}  # each body as `prefetch` parsed it: a message's body is parsed once

    def parsed(self, body: str | bytes) -> Parse | None:
        """The body as this receive parsed it; None for a body it was not given."""
        return self._parses.get(body)

    def process(
        self, body: str | bytes, message_id: str, receive_count: int, then: Callable[[MessageOutcome], None]
    ) -> None:
        """Deliver the message; `then(outcome)` once it is concluded: at once, or, when its only unwritten
        records are idempotent, after they are written with others (`DeferredRecords`, maybe on another
        thread). The outcome is never acknowledged before its records are written."""
        proc = self._processor
        work = proc._deliver_message(body, message_id, receive_count, self.view, self.parsed(body))
        if isinstance(work, MessageOutcome):
            _hand(then, work)
        elif proc._deferrable(work):
            proc.deferred.add(work, then)
        else:
            proc._finish(1)
            try:
                proc._commit([work])
                _hand(then, proc._conclude(work))
            finally:
                proc._finish(-1)


class DeferredRecords:
    """Messages whose only unwritten records are idempotent (S3: `MessageProcessor._deferrable`), waiting to
    be recorded together, across messages and receives: a consumer with one worker receives one message at a
    time, and would otherwise write the ledger once per object.

    The waiting records are written in one group (`GroupCommit`) once `limit` messages wait (by the worker
    that adds the last), or once the first of them has waited `patience_s` (by this object's own thread, so a
    consumer that goes idle still writes them), or at `flush()`. Only then is each message
    concluded and handed to its `then`, which deletes it: a message is never acknowledged before its records
    are written, and it stays in flight (the heartbeat extends it) while it waits. A kill meanwhile costs a
    resend that overwrites the same objects, never a duplicate. Records that are not idempotent (CloudWatch)
    never wait here: a kill between their put and their record resends events, so that window stays short.
    """

    def __init__(
        self, processor: MessageProcessor, patience_s: float = DEFER_PATIENCE_S, limit: int = DEFER_LIMIT
    ) -> None:
        self._processor = processor
        self._patience_s = patience_s
        self._limit = limit
        self._cond = threading.Condition()
        self._waiting: list[tuple[_Work, Callable[[MessageOutcome], None]]] = []
        self._since = 0.0  # when the first waiting message was added
        self._timer: threading.Thread | None = None
        self.groups = 0  # groups written, for tests and the bench

    def add(self, work: _Work, then: Callable[[MessageOutcome], None]) -> None:
        with self._cond:
            if not self._waiting:
                self._since = time.monotonic()
            self._waiting.append((work, then))
            group = self._take() if len(self._waiting) >= self._limit else []
            if self._timer is None:
                self._timer = threading.Thread(target=self._run, name="deferred-records", daemon=True)
                self._timer.start()
            self._cond.notify_all()
        self._write(group)

    def flush(self) -> None:
        """Write whatever waits, now."""
        with self._cond:
            group = self._take()
        self._write(group)

    @property
    def waiting(self) -> int:
        with self._cond:
            return len(self._waiting)

    def _take(self) -> list[tuple[_Work, Callable[[MessageOutcome], None]]]:
        group, self._waiting = self._waiting, []
        return group

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
                left = self._since + self._patience_s - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                group = self._take()
            try:
                self._write(group)
            except Exception:  # the timer must outlive a bad group: its messages come back (not deleted)
                log.exception("writing deferred records failed")

    def _write(self, group: list[tuple[_Work, Callable[[MessageOutcome], None]]]) -> None:
        if not group:
            return
        proc = self._processor
        proc._commit([w for w, _ in group])
        with self._cond:
            self.groups += 1
        for w, then in group:
            _hand(then, proc._conclude(w))


def _hand(then: Callable[[MessageOutcome], None], outcome: MessageOutcome) -> None:
    """One message's conclusion; its failure must not keep the other messages of a group from theirs."""
    try:
        then(outcome)
    except Exception:
        log.exception("handling a message's outcome failed", extra={"message_id": outcome.message_id})


def foreign_bucket_reason(bucket: str, key: str, central: str) -> str:
    return (
        f"object s3://{bucket}/{key} refused: bucket {bucket!r} is not the central bucket {central!r} "
        "(S3_BUCKET_NAME); only its objects are delivered"
    )


def _log_result(result: ObjectResult, ctx: dict[str, Any], seconds: float) -> None:
    status = object_status(result)
    extra: dict[str, Any] = {
        **ctx,
        "object_key": result.key,
        "tenant": result.tenant,
        "application": result.application,
        "status": status,
        "reason": result.reason,
        "events_delivered": result.events_delivered,
        "events_rejected": result.events_rejected,
        "lines_malformed": result.lines_malformed,
        "duration_s": round(seconds, 3),
        "deliveries": [
            {
                "delivery_id": d.delivery_id,
                "type": d.type,
                "status": object_status(d),
                "reason": d.reason,
                "events_delivered": d.events_delivered,
                "bytes_delivered": d.bytes_delivered,
            }
            for d in result.deliveries
        ],
    }
    if result.delivered_at and result.last_modified:
        extra["latency_s"] = round(result.delivered_at - result.last_modified, 3)
    level = logging.INFO if status in ("delivered", "skipped") else logging.WARNING
    text = f"object {status}" + (f": {result.reason}" if result.reason else "")
    log.log(level, text, extra=extra)
