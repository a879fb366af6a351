"""One object, end to end: source → route → decode → batch → sink → ledger, for each of its deliveries.

An object goes to every enabled delivery of its tenant that wants it (application, cluster). It is read
from the central bucket once, with the central identity; object sinks (S3) take its bytes as they are,
and it is decoded at most once, and only when an event sink (CloudWatch, Vector) has a delivery for it.
Each delivery's outcome is its own: one failing does not hold back or fail the others, and each is
recorded in the ledger as soon as its data is durable, so a retry sends only what is missing.

The consumer and the replay job both deliver through `Deliverer`; they differ only in where object
references come from and how work is spread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import partial
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import allocator, aws
from pipeline.classify import Action, classify_error
from pipeline.coverage import WHOLE, Coverage
from pipeline.credentials import CredentialBroker
from pipeline.delivery.results import DeliveryResult, ObjectResult, Status
from pipeline.delivery.routing import ObjectRef, Routing, TimeWindow
from pipeline.errors import DeliveryError, NonRecoverableError
from pipeline.keys import InvalidKeyError, ObjectKey, parse_key
from pipeline.ledger import NOTHING, Ledger, LedgerEntry, LedgerError, ObjectLedger
from pipeline.records import DecodeStats, Event, decode_events
from pipeline.retry import RetryPolicy
from pipeline.settings import ConfigError, Settings
from pipeline.sinks import (
    BatchSink,
    EventSink,
    ObjectSink,
    Sink,
    SourceObject,
    build_sinks,
    writes_ledger,
)
from pipeline.sinks.cloudwatch.inflight import IN_FLIGHT_PUTS, Pending, PodBatches, PutPipeline
from pipeline.sinks.cloudwatch.limits import MAX_STREAM_NAME_CHARS, PreparedStream, group_by_stream, prepare
from pipeline.source.s3 import S3Object
from pipeline.tenants import Delivery, DeliveryType, Tenant, TenantDirectory


class Deliverer:
    """Delivers objects to every delivery of their tenant, one object at a time, through one sink per type."""

    def __init__(
        self,
        tenants: TenantDirectory,
        sinks: Mapping[DeliveryType, Sink],
        ledger: Ledger | None = None,
        *,
        s3: Any | None = None,
        window: TimeWindow | None = None,
        redeliver: bool = False,
        deliveries: Collection[str] = (),
        source: str = "consumer",
        throttle: Callable[[str, int, int], None] | None = None,
        group_commit: bool = False,
        in_flight: int = IN_FLIGHT_PUTS,
        clock: Callable[[], float] = time.time,
        defer_records: bool = False,
        read_idempotent: bool = True,
    ) -> None:
        self.tenants = tenants
        # Callers that deliver many objects and then commit() them (replay units) may have the records of
        # idempotent deliveries written in batches: see deliver().
        self.group_commit = group_commit
        # Callers that commit() every object themselves, with others that finished at the same time (the
        # consumer's group commit): no record is written inside deliver().
        self.defer_records = defer_records
        self.sinks = dict(sinks)
        self.ledger = ledger
        self._s3 = s3
        self.routing = Routing(
            {kind: sink.traits for kind, sink in self.sinks.items()},
            window,
            frozenset(deliveries),
            use_ledger=ledger is not None and not redeliver,
            read_idempotent=read_idempotent,
        )
        self.source = source
        # (tenant, events, requests) before each send: the replay's shared per-tenant rate limits.
        self._throttle = throttle
        self._in_flight = in_flight
        self._puts: PutPipeline | None = None
        self._puts_lock = threading.Lock()
        self._clock = clock

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = aws.client("s3")
        return self._s3

    @property
    def unique_sinks(self) -> list[Sink]:
        return list({id(s): s for s in self.sinks.values()}.values())

    @property
    def max_writers(self) -> int | None:
        """How many threads may deliver at once: the tightest of the sinks' limits (None: no limit)."""
        limits = [s.traits.max_writers for s in self.unique_sinks if s.traits.max_writers is not None]
        return min(limits) if limits else None

    def flush(self) -> None:
        for sink in self.unique_sinks:
            sink.flush()

    def close(self) -> None:
        if self._puts is not None:
            self._puts.close()
        for sink in self.unique_sinks:
            sink.close()

    @contextmanager
    def batching(self) -> Iterator[PodBatches | None]:
        """Fill PutLogEvents batches across the objects delivered inside (`pipeline.sinks.cloudwatch.inflight`):
        one pod's, in order, on one thread. On leaving, the partial batches go out; `finish()` waits for the answers.
        None when no sink takes single batches (Vector batches on its own): each object is sent alone."""
        if not any(s.traits.fills_batches for s in self.unique_sinks):
            yield None
            return
        with self._puts_lock:
            if self._puts is None:
                self._puts = PutPipeline(self._in_flight, self._throttle, after=self._record_settled)
        batches = PodBatches(self._puts)
        try:
            yield batches
        finally:
            for pending, minimum in batches.drain():
                pending.tag[1].requests_minimum += minimum

    def _takers(self, key: str) -> list[tuple[Delivery, Sink]] | None:
        """The deliveries of this run that take the object, with their sinks; None when that cannot be told
        yet (a bad key, an unknown tenant, a tenant table in trouble: deliver() reports why)."""
        try:
            parsed = parse_key(key)
            tenant = self.tenants.get(parsed.tenant)
        except (InvalidKeyError, DeliveryError, ClientError, BotoCoreError):
            return None
        return [
            (d, self.sinks[d.type])
            for d in tenant.deliveries
            if self.routing.selects(d.delivery_id, d.type) and d.type in self.sinks and not d.skip_reason(parsed)
        ]

    def may_decode(self, key: str) -> bool:
        """Whether delivering the object can decode it (an event sink has a delivery that takes it): what
        a memory budget charges for it. True when that cannot be told yet."""
        takers = self._takers(key)
        return takers is None or any(sink.traits.needs_events or d.decodes for d, sink in takers)

    def needs_ledger(self, ref: ObjectRef) -> bool:
        """Whether delivering the object asks the ledger: some delivery that takes it writes the ledger and
        is not idempotent (or the routing reads for idempotent ones too). True when that cannot be told yet."""
        if self.ledger is None or not self.routing.use_ledger:
            return False
        takers = self._takers(ref.key)
        return takers is None or any(
            sink.traits.writes_ledger and (self.routing.read_idempotent or not sink.traits.idempotent)
            for _, sink in takers
        )

    def deliver(
        self,
        ref: ObjectRef,
        delivered: ObjectLedger | None = None,
        batches: PodBatches | None = None,
        held: Mapping[str, str] | None = None,
    ) -> ObjectResult:
        """Deliver one object to each of its deliveries. Never raises for a bad object or a bad delivery.

        `delivered`: what the ledger has for the object, when the caller read it in a batch (`ledger_view`);
        None reads it here. The ledger is checked at the ETag S3 answers, never at one a caller or a
        notification names: when the ledger holds anything for the key, a HeadObject gives it first, and
        the body is fetched (GetObject `IfMatch`) only if some delivery still has work (`S3Object`).
        `batches`: the pod's batches being filled
        (`batching()`), which hold back the events of deliveries whose sink takes single batches until a
        batch is full; those deliveries are recorded when their last batch is answered, at the latest in
        `finish()`. Other deliveries whose sink is durable on return are in the ledger when this returns;
        the rest wait for the caller's `finish()` (flush, then `commit()`). With `group_commit`, so do the
        records of an object whose tenant has only idempotent deliveries (S3) and that the ledger had no
        record of: they are written whole, in batches (`Ledger.replace_items`), because losing one to a
        crash costs a resend that overwrites the same objects, never a duplicate.

        `held`: delivery id → reason, for deliveries the caller holds back without an attempt (the consumer's
        circuit for a destination that is backing off). Each fails recoverably with its reason and `held`
        set, before the ledger or the object is read; the object's other deliveries go on.
        """
        result = ObjectResult(key=ref.key, etag=(ref.etag or "").strip('"'))
        try:
            parsed = parse_key(ref.key)
        except InvalidKeyError as exc:
            return result.fail(exc.reason, recoverable=False)
        result.tenant, result.application = parsed.tenant, parsed.application
        source = S3Object(self.s3, ref)
        try:
            tenant = self.tenants.get(parsed.tenant)
            result.mapped = delivered is not None and delivered.mapped
            todo = self._route(tenant, parsed, ref, result, delivered, source, held)
            if self.group_commit and delivered is not None and not delivered.records and self._idempotent_only(tenant):
                for _, r in todo:
                    r.batched = r.replace = True
            elif self.defer_records and len(todo) == 1:
                # One delivery with work: its record waits for the caller's commit, which follows at once. An
                # object with several keeps recording each as soon as it is durable, so a crash between them
                # resends only the unrecorded one.
                todo[0][1].batched = True
        except NonRecoverableError as exc:
            return result.fail(exc.reason, recoverable=False)
        except LedgerError as exc:
            return result.fail(f"tenant or ledger lookup failed: {exc}", recoverable=True)
        except (ClientError, BotoCoreError) as exc:
            recoverable = classify_error("dynamodb", exc) is not Action.FAIL
            return result.fail(f"tenant or ledger lookup failed: {aws.error_code(exc) or exc}", recoverable)
        if todo:
            try:
                self._deliver_body(source, parsed, todo, result, batches)
            except DeliveryError as exc:
                self._fail_unrecorded(todo, exc.reason, exc.recoverable)
            except (ClientError, BotoCoreError) as exc:
                self._fail_unrecorded(todo, f"{type(exc).__name__}: {aws.error_code(exc) or exc}", recoverable=True)
        return result.settle()

    @staticmethod
    def _fail_unrecorded(todo: list[tuple[Delivery, DeliveryResult]], reason: str, recoverable: bool) -> None:
        """The object itself failed (unreadable, gone): every delivery not yet in the ledger failed with it."""
        for _, r in todo:
            if not r.recorded and r.status is not Status.FAILED:
                r.fail(reason, recoverable)

    def _route(
        self,
        tenant: Tenant,
        parsed: ObjectKey,
        ref: ObjectRef,
        result: ObjectResult,
        known: ObjectLedger | None,
        source: S3Object,
        held: Mapping[str, str] | None,
    ) -> list[tuple[Delivery, DeliveryResult]]:
        ledger = self.ledger

        def delivered() -> Mapping[str, Coverage]:
            records = known if known is not None else NOTHING
            if known is None and ledger is not None:
                records = ledger.read(tenant.tenant_id, ref.key)
                result.mapped = records.mapped
            if not records.records:
                return {}  # nothing to compare: no need for the ETag before the object is read anyway
            etag = source.etag()
            # An object that cannot be opened cannot be delivered: routing goes on as if nothing were
            # recorded, and every delivery with work then fails with the object's own error.
            return {} if etag is None else records.at(etag)

        result.deliveries, todo = self.routing.route(tenant, parsed, ref.last_modified, delivered, held)
        return todo

    def ledger_view(self, refs: Iterable[ObjectRef]) -> dict[str, ObjectLedger] | None:
        """What the ledger has for many objects, read in batches (BatchGetItem, 100 keys a call): for callers
        that deliver a known set of objects (a replay unit), instead of one read per object.

        None when this Deliverer does not consult the ledger. Keys absent from the answer have nothing.
        """
        if self.ledger is None or not self.routing.use_ledger:
            return None
        objects: list[tuple[str, str]] = []
        for ref in refs:
            try:
                objects.append((parse_key(ref.key).tenant, ref.key))
            except InvalidKeyError:
                continue  # deliver() reports it
        return self.ledger.read_for(objects)

    def _deliver_body(
        self,
        source: S3Object,
        parsed: ObjectKey,
        todo: list[tuple[Delivery, DeliveryResult]],
        result: ObjectResult,
        batches: PodBatches | None,
    ) -> None:
        ref = source.ref
        obj = source.open()
        result.etag = source.etag() or result.etag
        last_modified: datetime | None = obj.get("LastModified") or ref.last_modified
        fallback_ms = int(last_modified.timestamp() * 1000) if last_modified else int(self._clock() * 1000)
        result.last_modified = fallback_ms / 1000

        by_objects = [(d, r) for d, r in todo if not self.sinks[d.type].traits.needs_events]
        by_events = [(d, r) for d, r in todo if self.sinks[d.type].traits.needs_events]
        body: Any = obj["Body"]
        if by_objects:
            # Object deliveries go first: each is cheap and durable at once, so a kill after them leaves
            # only the event deliveries to send again.
            body = body.read()
            source_object = SourceObject(ref.bucket, ref.key, result.etag, body, parsed, last_modified)
            result.bytes_read = len(body)
            for d, r in by_objects:
                self._put_object(d, r, source_object, result)
        if by_events:
            self._send_events(body, fallback_ms, parsed, by_events, result, batches)
        result.delivered_at = self._clock()

    def _put_object(self, d: Delivery, r: DeliveryResult, source: SourceObject, result: ObjectResult) -> None:
        # The registry's traits decide which interface a sink has (needs_events: EventSink, else ObjectSink);
        # the routing took this path from those traits, which the type of `sinks` cannot express.
        sink: ObjectSink = self.sinks[d.type]  # type: ignore[assignment]
        try:
            r.add(sink.put_object(d, source))
        except DeliveryError as exc:
            r.failed_with(exc)
            return
        self._record(result, r, sink)

    def _send_events(
        self,
        body: Any,
        fallback_ms: int,
        parsed: ObjectKey,
        todo: list[tuple[Delivery, DeliveryResult]],
        result: ObjectResult,
        batches: PodBatches | None,
    ) -> None:
        stats = DecodeStats(key=result.key)
        streams = group_by_stream(decode_events(body, fallback_ms, stats), parsed.application, parsed.pod)
        result.add(stats)
        result.malformed_samples = stats.samples

        pending: dict[int, Pending] = {}
        if batches is not None:
            for d, r in todo:
                if self.sinks[d.type].traits.fills_batches:
                    sink: BatchSink = self.sinks[d.type]  # type: ignore[assignment]  # fills_batches: a BatchSink
                    pending[id(r)] = Pending(d, sink, partial(self._settle, result, r), tag=(result, r))
        try:
            self._send_streams(streams, stats, todo, result, batches, pending)
        finally:
            # Sealed even when sending stopped early, so the object settles and never holds up finish().
            if batches is not None:
                for p in pending.values():
                    batches.seal(p)

    def _send_streams(
        self,
        streams: dict[str, list[Event]],
        stats: DecodeStats,
        todo: list[tuple[Delivery, DeliveryResult]],
        result: ObjectResult,
        batches: PodBatches | None,
        pending: dict[int, Pending],
    ) -> None:
        now_ms = int(self._clock() * 1000)
        window = self.routing.window
        since, until = (window.since_ms, window.until_ms) if window else (None, None)
        # The object's time span, from its streams once prepare() has sorted them (it sorts in place).
        earliest: int | None = None
        latest: int | None = None
        for name in sorted(streams):
            live = [(d, r) for d, r in todo if r.status is not Status.FAILED]
            if not live:
                break
            if len(name) > MAX_STREAM_NAME_CHARS:
                for _, r in live:
                    r.fail(f"log stream name is over {MAX_STREAM_NAME_CHARS} characters", recoverable=False)
                break
            events = streams.pop(name)
            # Deliveries differ only in what the ledger says earlier runs covered and in their content filters:
            # one preparation each.
            prepared_for: dict[tuple[Coverage, tuple[str, ...], tuple[str, ...]], PreparedStream] = {}
            for d, r in live:
                slot = (r.covered, d.include, d.exclude)
                prepared = prepared_for.get(slot)
                if prepared is None:
                    prepared = prepared_for[slot] = prepare(events, now_ms, since, until, r.covered, d.content_filter)
                    if events:  # sorted now
                        first, last = events[0][0], events[-1][0]
                        earliest = first if earliest is None else min(earliest, first)
                        latest = last if latest is None else max(latest, last)
                r.add(prepared)
                # Nothing of the stream is this run's to send (outside the window, or delivered before):
                # counted, not touched.
                if not (prepared.events or prepared.events_rejected):
                    continue
                if prepared.events and batches is not None and id(r) in pending:
                    batches.add(pending[id(r)], name, prepared.events)
                elif prepared.events:
                    if self._throttle is not None:
                        self._throttle(d.tenant_id, len(prepared.events), 0)
                    sink: EventSink = self.sinks[d.type]  # type: ignore[assignment]  # needs_events: an EventSink
                    try:
                        r.add(sink.send(d, name, prepared.events))
                    except DeliveryError as exc:
                        r.failed_with(exc)
                        continue
                r.streams.append(name)
        # No event of the object lies outside its own time span, so a run that delivered its scope has
        # delivered everything outside the span too: recording that lets a later window whose scope holds
        # the rest skip the object from the ledger alone (a re-run of `--since 45m` minutes later), where
        # the bare window would leave it to be read again for nothing. A delivery that did not fail saw
        # every stream prepared, so the span is the whole object's.
        beyond = WHOLE if earliest is None or latest is None else Coverage.outside(earliest, latest + 1)
        for d, r in todo:
            if r.status is Status.FAILED:
                continue
            r.bytes_delivered = stats.bytes_decoded  # the decoded object, whatever the window kept of it
            if latest is not None:  # for the delivery's status (pipeline.status): bounded by the window's end
                r.newest_event_ms = latest if until is None else min(latest, until - 1)
            r.scope = r.scope.union(beyond)
            if stats.damaged:
                r.status, r.reason = Status.DAMAGED, stats.damaged
            if id(r) not in pending:  # those are recorded when their last batch is answered (_settle)
                self._record(result, r, self.sinks[d.type])

    def _settle(self, result: ObjectResult, r: DeliveryResult, p: Pending) -> None:
        """Every event the object gave a delivery through filled batches is answered (on a put thread).
        Its record is written by `_record_settled`, with those of every object the same answer settled."""
        r.add(p.sent)
        if p.error is not None and r.status is not Status.FAILED:
            # Not failed_with(): the failed batch's calls are already in p.sent, credited to its last owner.
            r.fail(p.error.reason, p.error.recoverable, p.error.code)

    def _record_settled(self, done: list[Pending]) -> None:
        """The objects one batch's answer settled (`PutPipeline`'s `after`): their records, written together
        (`Ledger.record_many`: one call for up to 100 objects) before the batch's slot is given back, so a
        kill can still resend only the objects of the batches in flight."""
        owners: list[tuple[ObjectResult, DeliveryResult]] = []
        for p in done:
            result, r = p.tag
            if not p.sink.traits.durable_on_return:
                r.durable = False  # the caller records it after the sink's flush()
            elif p.sink.traits.writes_ledger and r.done and not r.recorded and not r.batched:
                owners.append((result, r))
        self._write_group(owners)

    def _idempotent_only(self, tenant: Tenant) -> bool:
        """Whether every delivery the tenant has goes through an idempotent sink: its ledger items can then
        hold nothing but records whose loss costs an overwrite, never a duplicate."""
        return not tenant.invalid and all(
            d.type in self.sinks and self.sinks[d.type].traits.idempotent for d in tenant.deliveries
        )

    def _record(self, result: ObjectResult, r: DeliveryResult, sink: Sink) -> None:
        if not sink.traits.durable_on_return:
            r.durable = False  # the caller records it after the sink's flush()
            return
        if sink.traits.writes_ledger and not r.batched:
            self._write_ledger(result, r)

    def finish(self, results: Sequence[ObjectResult]) -> None:
        """After a run of deliver() calls: wait for the batches in flight, flush the sinks if a delivery
        waits for it, then commit them all."""
        if self._puts is not None:
            self._puts.wait()
        if any(not d.durable for r in results for d in r.deliveries):
            try:
                self.flush()
            except DeliveryError as exc:
                for r in results:
                    self.abandon(r, f"sink flush failed: {exc.reason}")
        self.commit(*results)

    def commit(self, *results: ObjectResult) -> None:
        """After a successful flush(): record the deliveries that were waiting for it, and the batched ones:
        whole items in batches where `deliver()` allowed it, every other record with `Ledger.record_many`."""
        batched: list[tuple[ObjectResult, DeliveryResult]] = []
        for result in results:
            for r in result.deliveries:
                if not r.done or r.recorded:
                    continue
                if not r.durable:
                    r.durable = True
                    self._write_ledger(result, r)
                elif r.batched:
                    batched.append((result, r))
        replace = [(result, r) for result, r in batched if r.replace]
        if replace and self.ledger is not None:
            self._write_group(replace, self.ledger.replace_items)
        self._write_group([(result, r) for result, r in batched if not r.replace])
        for result in results:
            result.settle()

    def _write_group(
        self,
        owners: Sequence[tuple[ObjectResult, DeliveryResult]],
        write: Callable[[Iterable[LedgerEntry]], None] | None = None,
    ) -> None:
        """Record the deliveries together; on a failure, every one of them failed recoverably (its data is
        out, its record is not: the next attempt finds it unrecorded and sends it again)."""
        if not owners or self.ledger is None:
            return
        entries = [self._entry(result, r) for result, r in owners]
        try:
            if write is not None:
                write(entries)
            else:
                self.ledger.record_many(entries, mapped={(res.tenant, res.key) for res, _ in owners if res.mapped})
        except (ClientError, BotoCoreError, LedgerError) as exc:
            for _, r in owners:
                r.fail(f"delivered, but the ledger write failed ({aws.error_code(exc) or exc})", recoverable=True)
            return
        for result, r in owners:
            r.recorded = True
            result.mapped = True

    def abandon(self, result: ObjectResult, reason: str) -> None:
        """After a failed flush(): the deliveries that were waiting for it failed, recoverably."""
        for r in result.deliveries:
            if r.done and not r.durable:
                r.fail(reason, recoverable=True)
        result.settle()

    def _entry(self, result: ObjectResult, r: DeliveryResult) -> LedgerEntry:
        return LedgerEntry(
            tenant_id=result.tenant,
            object_key=result.key,
            etag=result.etag,
            events_delivered=r.events_delivered,
            events_rejected=r.events_rejected,
            damaged=r.reason if r.status is Status.DAMAGED else "",
            source=self.source,
            delivered_at=self._clock(),
            delivery_id=r.delivery_id,
            bytes_delivered=r.bytes_delivered,
            # Event deliveries add what this run covered; the ledger keeps the union with earlier runs'.
            covered=None if self.routing.whole_objects(DeliveryType(r.type)) else r.scope,
        )

    def _write_ledger(self, result: ObjectResult, r: DeliveryResult) -> None:
        if self.ledger is None or not r.done or r.recorded:
            return
        try:
            self.ledger.record(self._entry(result, r))
            r.recorded = True
            result.mapped = True
        except (ClientError, BotoCoreError, LedgerError) as exc:
            r.fail(f"delivered, but the ledger write failed ({aws.error_code(exc) or exc})", recoverable=True)


def build_deliverer(
    settings: Settings,
    *,
    sink: str = "cloudwatch",
    source: str = "consumer",
    window: TimeWindow | None = None,
    redeliver: bool = False,
    deliveries: Iterable[str] = (),
    throttle: Callable[[str, int, int], None] | None = None,
    put_attempts: int | None = None,
    group_commit: bool = False,
    retry: RetryPolicy | None = None,  # the sinks' whole policy, over put_attempts (the consumer's)
    defer_records: bool = False,
    read_idempotent: bool = True,
) -> Deliverer:
    """The Deliverer every path uses (consumer modes, replay workers), with its AWS clients made up front.

    `sink` chooses the sink for the delivery types it can serve (`pipeline.sinks.sink_plan`); the other
    types get their default sink. Pool threads share the result: the tenant directory and the credential
    broker lock their caches, botocore clients are thread-safe, and creating the clients here (not lazily
    on first use) avoids threads racing to build them. When no sink writes the ledger (null), it gets none:
    nothing may be recorded as delivered. Every delivering process builds one, so this is also where the
    process's allocator is tuned. Raises ConfigError naming any missing env var.
    """
    allocator.tune()
    writes = writes_ledger(sink)
    settings.require("tenant_table", *(["central_role_arn", "ledger_table"] if writes else []))
    ddb = aws.client("dynamodb")
    tenants = TenantDirectory(settings.tenant_table, settings.tenant_cache_ttl_s, client=ddb)
    broker: CredentialBroker | None = None
    if writes:
        try:
            broker = CredentialBroker(settings.central_role_arn)
        except ValueError as exc:
            raise ConfigError(f"CENTRAL_LOG_DISTRIBUTION_ROLE_ARN: {exc}") from exc
    retry = retry or (RetryPolicy(attempts=put_attempts) if put_attempts is not None else None)
    sinks = build_sinks(sink, credentials=broker, retry=retry)
    return Deliverer(
        tenants,
        sinks,
        Ledger(settings.ledger_table, client=ddb, retention_s=settings.ledger_retention_s) if writes else None,
        s3=aws.client("s3"),
        window=window,
        redeliver=redeliver or not writes,
        deliveries=tuple(deliveries),
        source=source,
        throttle=throttle,
        group_commit=group_commit,
        defer_records=defer_records,
        read_idempotent=read_idempotent,
    )
