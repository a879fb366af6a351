"""One object, end to end: source → decode → route → batch → sink → ledger.

The consumer and the replay job both deliver through `Deliverer`; they differ only in where object
references come from and how work is spread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import allocator, aws
from pipeline.batching import MAX_STREAM_NAME_CHARS, group_by_stream, prepare
from pipeline.credentials import CredentialBroker
from pipeline.errors import DeliveryError, NonRecoverableError
from pipeline.keys import InvalidKeyError, ObjectKey, parse_key
from pipeline.ledger import Ledger, LedgerEntry
from pipeline.records import DecodeStats, decode_events
from pipeline.settings import ConfigError, Settings
from pipeline.sinks import make_sink
from pipeline.sinks.base import Destination, Sink, SinkResult
from pipeline.tenants import TenantConfig, TenantDirectory


@dataclass(frozen=True)
class ObjectRef:
    bucket: str
    key: str
    etag: str | None = None
    size: int | None = None
    last_modified: datetime | None = None


@dataclass(frozen=True)
class TimeWindow:
    """Events with since_ms <= timestamp < until_ms are delivered; the rest are counted as filtered."""

    since_ms: int
    until_ms: int


class Status(StrEnum):
    DELIVERED = "delivered"
    SKIPPED = "skipped"  # nothing to do: already delivered, tenant disabled, application not wanted
    DAMAGED = "damaged"  # the readable part was delivered; the rest of the body cannot be read
    FAILED = "failed"


@dataclass
class ObjectResult:
    key: str
    status: Status = Status.DELIVERED
    reason: str = ""
    recoverable: bool = False
    tenant: str = ""
    application: str = ""
    etag: str = ""
    bytes_read: int = 0
    lines_malformed: int = 0
    lines_repaired_utf8: int = 0
    messages_empty: int = 0
    timestamps_defaulted: int = 0
    events_decoded: int = 0
    events_filtered: int = 0
    events_split: int = 0
    events_delivered: int = 0
    events_rejected_too_old: int = 0
    events_rejected_too_new: int = 0
    events_rejected_expired: int = 0
    streams: list[str] = field(default_factory=list)
    malformed_samples: list[tuple[int, str]] = field(default_factory=list)
    delivered_at: float = 0.0
    last_modified: float = 0.0

    @property
    def events_rejected(self) -> int:
        return self.events_rejected_too_old + self.events_rejected_too_new + self.events_rejected_expired

    @property
    def acknowledged(self) -> bool:
        """Whether the work is durably done: delivered, or failed in a way a retry cannot fix."""
        return not (self.status is Status.FAILED and self.recoverable)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
        return d

    def fail(self, reason: str, recoverable: bool) -> ObjectResult:
        self.status, self.reason, self.recoverable = Status.FAILED, reason, recoverable
        return self


class Deliverer:
    """Delivers objects to their tenants' CloudWatch, one at a time, through one sink."""

    def __init__(
        self,
        tenants: TenantDirectory,
        sink: Sink,
        ledger: Ledger | None = None,
        *,
        s3: Any | None = None,
        window: TimeWindow | None = None,
        redeliver: bool = False,
        source: str = "consumer",
        throttle: Callable[[str, int], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tenants = tenants
        self.sink = sink
        self.ledger = ledger
        self._s3 = s3
        self.window = window
        self.redeliver = redeliver
        self.source = source
        self._throttle = throttle
        self._clock = clock

    @property
    def s3(self) -> Any:
        if self._s3 is None:
            self._s3 = aws.client("s3")
        return self._s3

    def deliver(self, ref: ObjectRef, *, commit: bool = True) -> ObjectResult:
        """Deliver one object. Never raises for a bad object: the result says what happened and why.

        With commit=False the ledger is not written; the caller flushes the sink and calls commit(),
        for sinks (Vector) that only know an object is durable once the whole process has drained.
        """
        result = ObjectResult(key=ref.key, etag=(ref.etag or "").strip('"'))
        try:
            parsed = parse_key(ref.key)
        except InvalidKeyError as exc:
            return result.fail(exc.reason, recoverable=False)
        result.tenant, result.application = parsed.tenant, parsed.application
        try:
            tenant = self.tenants.get(parsed.tenant)
        except NonRecoverableError as exc:
            return result.fail(exc.reason, recoverable=False)
        except (ClientError, BotoCoreError) as exc:
            return result.fail(f"tenant config lookup failed: {aws.error_code(exc) or exc}", recoverable=True)
        skip = self._skip_reason(tenant, parsed, ref)
        if skip:
            result.status, result.reason = Status.SKIPPED, skip
            return result
        try:
            self._deliver_body(ref, parsed, tenant, result)
        except DeliveryError as exc:
            return result.fail(exc.reason, exc.recoverable)
        except (ClientError, BotoCoreError) as exc:
            return result.fail(f"{type(exc).__name__}: {aws.error_code(exc) or exc}", recoverable=True)
        if commit:
            self.commit(result)
        return result

    def commit(self, result: ObjectResult) -> None:
        """Record a delivered (or damaged) object in the ledger; a failed write makes the result recoverable."""
        if self.ledger is None or result.status not in (Status.DELIVERED, Status.DAMAGED):
            return
        entry = LedgerEntry(
            tenant_id=result.tenant,
            object_key=result.key,
            etag=result.etag,
            events_delivered=result.events_delivered,
            events_rejected=result.events_rejected,
            damaged=result.reason if result.status is Status.DAMAGED else "",
            source=self.source,
            delivered_at=self._clock(),
        )
        try:
            self.ledger.record(entry)
        except (ClientError, BotoCoreError) as exc:
            result.fail(f"delivered, but the ledger write failed ({aws.error_code(exc) or exc})", recoverable=True)

    def _skip_reason(self, tenant: TenantConfig, parsed: ObjectKey, ref: ObjectRef) -> str:
        if not tenant.enabled:
            return f"tenant {tenant.tenant_id!r} is disabled"
        if not tenant.wants(parsed.application):
            return f"application {parsed.application!r} is not in the tenant's desired_logs"
        if (
            self.ledger is not None
            and not self.redeliver
            and self.ledger.is_delivered(tenant.tenant_id, ref.key, ref.etag)
        ):
            return "already delivered (ledger)"
        return ""

    def _deliver_body(self, ref: ObjectRef, parsed: ObjectKey, tenant: TenantConfig, result: ObjectResult) -> None:
        try:
            obj = self.s3.get_object(Bucket=ref.bucket, Key=ref.key)
        except ClientError as exc:
            code = aws.error_code(exc)
            if code in ("NoSuchKey", "404", "NotFound"):
                raise NonRecoverableError(f"object no longer exists in s3://{ref.bucket}") from exc
            raise DeliveryError(f"GetObject failed: {code}") from exc
        result.etag = str(obj.get("ETag", result.etag)).strip('"')
        last_modified: datetime | None = obj.get("LastModified") or ref.last_modified
        fallback_ms = int(last_modified.timestamp() * 1000) if last_modified else int(self._clock() * 1000)
        result.last_modified = fallback_ms / 1000

        stats = DecodeStats(key=ref.key)
        events = decode_events(obj["Body"], fallback_ms, stats)
        streams = group_by_stream(events, parsed.application, parsed.pod)
        result.bytes_read = stats.bytes_read
        result.events_decoded = stats.events
        result.lines_malformed = stats.lines_malformed
        result.lines_repaired_utf8 = stats.lines_repaired_utf8
        result.messages_empty = stats.messages_empty
        result.timestamps_defaulted = stats.timestamps_defaulted
        result.malformed_samples = stats.samples

        dest = Destination(tenant.tenant_id, tenant.role_arn, tenant.log_group, tenant.region)
        now_ms = int(self._clock() * 1000)
        sent = SinkResult()
        bounds = (self.window.since_ms, self.window.until_ms) if self.window else ()
        for name in sorted(streams):
            if len(name) > MAX_STREAM_NAME_CHARS:
                raise NonRecoverableError(f"log stream name is over {MAX_STREAM_NAME_CHARS} characters")
            prepared = prepare(streams.pop(name), now_ms, *bounds)
            result.events_filtered += prepared.filtered
            if prepared.filtered and not (prepared.events or prepared.too_old or prepared.too_new):
                continue  # the whole stream is outside the window: it is not touched
            result.events_split += prepared.split
            sent.rejected_too_old += prepared.too_old
            sent.rejected_too_new += prepared.too_new
            if prepared.events:
                if self._throttle is not None:
                    self._throttle(tenant.tenant_id, len(prepared.events))
                sent.add(self.sink.send(dest, name, prepared.events))
            result.streams.append(name)
        result.events_delivered = sent.delivered
        result.events_rejected_too_old = sent.rejected_too_old
        result.events_rejected_too_new = sent.rejected_too_new
        result.events_rejected_expired = sent.rejected_expired
        result.delivered_at = self._clock()
        if stats.damaged:
            result.status, result.reason = Status.DAMAGED, stats.damaged


def build_deliverer(
    settings: Settings,
    *,
    sink: str = "cloudwatch",
    source: str = "consumer",
    window: TimeWindow | None = None,
    redeliver: bool = False,
    throttle: Callable[[str, int], None] | None = None,
    put_attempts: int | None = None,
) -> Deliverer:
    """The Deliverer every path uses (consumer modes, replay workers), with its AWS clients made up front.

    Pool threads share it: the tenant directory and the credential broker lock their caches, botocore
    clients are thread-safe, and creating the clients here (not lazily on first use) avoids threads racing
    to build them. The null sink sends nothing, so it gets no ledger: nothing may be recorded as delivered.
    Every delivering process builds one, so this is also where the process's allocator is tuned.
    Raises ConfigError naming any missing env var.
    """
    allocator.tune()
    settings.require("tenant_table", *([] if sink == "null" else ["central_role_arn", "ledger_table"]))
    ddb = aws.client("dynamodb")
    tenants = TenantDirectory(settings.tenant_table, settings.tenant_cache_ttl_s, client=ddb)
    common: dict[str, Any] = {"s3": aws.client("s3"), "window": window, "source": source, "throttle": throttle}
    if sink == "null":
        return Deliverer(tenants, make_sink("null"), None, redeliver=True, **common)
    try:
        broker = CredentialBroker(settings.central_role_arn)
    except ValueError as exc:
        raise ConfigError(f"CENTRAL_LOG_DISTRIBUTION_ROLE_ARN: {exc}") from exc
    options: dict[str, Any] = {"credentials": broker}
    if put_attempts is not None and sink == "cloudwatch":
        from pipeline.sinks.cloudwatch import RetryPolicy

        options["retry"] = RetryPolicy(attempts=put_attempts)
    ledger = Ledger(settings.ledger_table, client=ddb)
    return Deliverer(tenants, make_sink(sink, **options), ledger, redeliver=redeliver, **common)
