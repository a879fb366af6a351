"""One message end to end, and the acknowledge decision that SQS, Lambda and manual mode all share.

A message is acknowledged (deleted, or left out of `batchItemFailures`) when every delivery of every
object it names is durably done: delivered and in the ledger, skipped (ledger, disabled delivery,
filtered application or cluster), or failed in a way no retry can fix (malformed key, unknown tenant, an
invalid delivery item, a body that is not an S3 event, an object in another bucket than the central one).
Anything recoverable leaves the whole message for redelivery; every delivery that did succeed is in the
ledger by then, so the retry sends only the rest.

Only objects of the central bucket (`S3_BUCKET_NAME`) are delivered. A notification is data anyone who can
send to the queue controls, and the consumer reads with an identity that may read other buckets too: a
record naming another bucket is refused, never fetched, and acknowledged (retrying cannot change it).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline.consumer.events import InvalidMessageError, parse_body
from pipeline.consumer.metrics import Metrics, object_status
from pipeline.delivery import Deliverer, ObjectRef, ObjectResult, Status
from pipeline.errors import DeliveryError
from pipeline.replay.budget import MemoryBudget, decoded_footprint
from pipeline.sinks import sink_names
from pipeline.tenants import DeliveryType

log = logging.getLogger("pipeline.consumer")

# The consumer acknowledges a message once delivery returns, so its CloudWatch sink must be durable by then.
SINKS = sink_names(DeliveryType.CLOUDWATCH, durable_only=True)


@dataclass
class MessageOutcome:
    message_id: str
    results: list[ObjectResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # message- or record-level, non-recoverable
    error: str = ""  # an unexpected exception: the message is retried

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
        }


class MessageProcessor:
    """Parses one SQS body and delivers the objects it names. Never raises: the outcome says it all.

    Thread-safe as long as the Deliverer is; `pipeline.delivery.build_deliverer` makes one that is.
    """

    def __init__(
        self,
        deliverer: Deliverer,
        metrics: Metrics | None = None,
        *,
        bucket: str,
        budget: MemoryBudget | None = None,
    ) -> None:
        if not bucket:
            raise ValueError("the central bucket (S3_BUCKET_NAME) is required: it is the only one delivered from")
        self.deliverer = deliverer
        self.metrics = metrics or Metrics()
        self.bucket = bucket
        # Workers wait for room before an object that would not fit, so the pod's memory follows the budget,
        # not object size times workers.
        self.budget = budget

    def process(self, body: str | bytes, message_id: str = "", receive_count: int = 0) -> MessageOutcome:
        outcome = MessageOutcome(message_id)
        ctx: dict[str, Any] = {"message_id": message_id, "receive_count": receive_count}
        try:
            parsed = parse_body(body)
        except InvalidMessageError as exc:
            outcome.rejected.append(exc.reason)
            log.warning("message rejected: %s", exc.reason, extra={**ctx, "reason": exc.reason})
            return outcome
        except Exception as exc:  # a parser bug must not kill a worker; the queue's redrive takes over
            outcome.error = f"{type(exc).__name__}: {exc}"
            log.exception("message parsing failed unexpectedly", extra=ctx)
            return outcome
        outcome.skipped, outcome.rejected = list(parsed.skipped), list(parsed.rejected)
        refs = []
        for ref in parsed.refs:
            if ref.bucket == self.bucket:
                refs.append(ref)
            else:
                outcome.rejected.append(foreign_bucket_reason(ref.bucket, ref.key, self.bucket))
        for reason in outcome.skipped:
            log.info("event skipped: %s", reason, extra={**ctx, "reason": reason})
        for reason in outcome.rejected:
            log.warning("record rejected: %s", reason, extra={**ctx, "reason": reason})
        for ref in refs:
            start = time.monotonic()
            try:
                result = self._deliver(ref)
            except Exception as exc:  # deliver() never raises for a bad object; this is a bug or a crash
                outcome.error = f"{type(exc).__name__}: {exc}"
                log.exception("delivery raised unexpectedly", extra={**ctx, "object_key": ref.key})
                return outcome
            self.metrics.observe_object(result, time.monotonic() - start)
            self._observe_tenant(result.tenant)
            outcome.results.append(result)
            _log_result(result, ctx, time.monotonic() - start)
        return outcome

    def _observe_tenant(self, tenant_id: str) -> None:
        """Flag a legacy tenant in the metrics (a cached lookup: the delivery has just read it)."""
        if not tenant_id:
            return
        try:
            tenant = self.deliverer.tenants.get(tenant_id)
        except (DeliveryError, ClientError, BotoCoreError):
            return  # an unknown tenant or a lookup error: the object's own result says so already
        self.metrics.observe_tenant(tenant)

    def _deliver(self, ref: ObjectRef) -> ObjectResult:
        if self.budget is None:
            return self.deliverer.deliver(ref)
        # An event without a size (never seen from S3) is charged nothing rather than blocking the pool.
        with self.budget.hold(decoded_footprint(ref.size or 0, self.deliverer.may_decode(ref.key))):
            return self.deliverer.deliver(ref)


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
