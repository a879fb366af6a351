"""Lambda mode: an SQS event source batch in, `batchItemFailures` out (CONTRACTS.md §6).

Only the messages to retry are listed, so one bad message does not make the whole batch come back
(the event source mapping needs `FunctionResponseTypes: [ReportBatchItemFailures]`). Non-recoverable
failures are logged and acknowledged, exactly as in SQS mode. The Deliverer is built once per container
(cold start) and reused across invocations, so the credential and tenant caches survive between them.

Time: a record is started only while more than the reserve (LAMBDA_TIME_RESERVE_SECONDS, default 30 s) is
left of the invocation; the records not started by then are listed in `batchItemFailures` and come back,
while those started finish. Without it, a batch that outlasts the timeout is killed whole, the response
never sent, and every message of it comes back, the delivered ones too.

Back-off: the runtime keeps the consumer's per-destination circuits (`pipeline.circuits`) across the
invocations of a warm container. A record whose destination backs off is listed in `batchItemFailures` at
once, and its visibility is set to the grown delay (`MessageOutcome.retry_after_s`) with
ChangeMessageVisibility on its receipt handle, so it neither comes back after the queue's full visibility
timeout nor walks into the DLQ during a long storm; if that call fails it is only listed.

Metrics: CloudWatch embedded metric format lines on stdout, one set per invocation, with the names of the
SQS mode's Prometheus metrics (pipeline.consumer.emf). Logs: JSON on stderr, each line with the invocation's
`request_id`.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws, logs
from pipeline.circuits import DEFAULT_HOLD_BASE_S, CircuitBreakers
from pipeline.consumer.commit import LedgerView
from pipeline.consumer.emf import DEFAULT_NAMESPACE, EmfMetrics
from pipeline.consumer.metrics import Metrics
from pipeline.consumer.processor import MessageOutcome, MessageProcessor, consumer_deliverer
from pipeline.memory import DEFAULT_CONSUMER_BUDGET_MIB, MemoryBudget
from pipeline.settings import ConfigError, Settings
from pipeline.status import status_recorder

log = logging.getLogger("pipeline.consumer.lambda")

DEFAULT_WORKERS = 10  # the default SQS batch size for Lambda
# The longest one object takes to deliver, with the sink's retries: a record is not started with less left.
DEFAULT_TIME_RESERVE_S = 30.0
NOT_STARTED = "not started: the invocation was running out of time"

_request_id = ""  # one invocation at a time per container, read by the log filter from every thread


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _request_id and not hasattr(record, "request_id"):
            record.request_id = _request_id
        return True


def install_request_id_logging() -> None:
    """Every JSON log line of an invocation carries its request id (the formatter prints record extras)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, _RequestIdFilter) for f in handler.filters):
            handler.addFilter(_RequestIdFilter())


class LambdaRuntime:
    def __init__(
        self,
        processor: MessageProcessor,
        workers: int = DEFAULT_WORKERS,
        time_reserve_s: float = DEFAULT_TIME_RESERVE_S,
        namespace: str = DEFAULT_NAMESPACE,
        sqs: Any = None,
    ) -> None:
        self.processor = processor
        self.workers = workers
        self.time_reserve_s = time_reserve_s
        self.namespace = namespace
        self._sqs = sqs  # made on first use: only a record held for a destination in back-off needs it

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LambdaRuntime:
        """Lambda has no command line: the same env vars as the CLI (CONSUMER_WORKERS, PUT_ATTEMPTS)."""
        env = os.environ if env is None else env
        settings = Settings.from_env(env)
        try:
            workers = int(env.get("CONSUMER_WORKERS") or DEFAULT_WORKERS)
            put_attempts = int(env["PUT_ATTEMPTS"]) if env.get("PUT_ATTEMPTS") else None
            throttle_attempts = int(env["THROTTLE_ATTEMPTS"]) if env.get("THROTTLE_ATTEMPTS") else None
            backoff_delay = float(env.get("BACKOFF_DELAY_SECONDS") or DEFAULT_HOLD_BASE_S)
            reserve = float(env.get("LAMBDA_TIME_RESERVE_SECONDS") or DEFAULT_TIME_RESERVE_S)
            budget_mib = int(env.get("CONSUMER_MEMORY_MIB") or DEFAULT_CONSUMER_BUDGET_MIB)
        except ValueError as exc:
            raise ConfigError(
                "CONSUMER_WORKERS, PUT_ATTEMPTS, THROTTLE_ATTEMPTS, BACKOFF_DELAY_SECONDS, "
                f"LAMBDA_TIME_RESERVE_SECONDS and CONSUMER_MEMORY_MIB must be numbers: {exc}"
            ) from exc
        settings.require("bucket", "tenant_table", "ledger_table", "central_role_arn")  # all missing at once
        deliverer = consumer_deliverer(settings, put_attempts, throttle_attempts)
        budget = MemoryBudget(budget_mib * 1024 * 1024)
        circuits = CircuitBreakers()  # per container: kept across its invocations
        processor = MessageProcessor(
            deliverer,
            Metrics(),
            bucket=settings.bucket,
            budget=budget,
            circuits=circuits,
            hold_base_s=backoff_delay,
            status=status_recorder(settings, deliverer.tenants, circuits),
        )
        return cls(processor, workers, reserve, env.get("METRICS_NAMESPACE") or DEFAULT_NAMESPACE)

    def handle(self, event: dict[str, Any], context: object = None) -> dict[str, list[dict[str, str]]]:
        global _request_id
        _request_id = str(getattr(context, "aws_request_id", "") or "")
        metrics = self.processor.metrics = EmfMetrics()
        self.processor.publish_backoff()  # the circuits outlive the invocation; its metrics start from them
        try:
            return self._handle(event, context, metrics)
        finally:
            if self.processor.status is not None:
                # No timer between invocations (the container is frozen): each invocation ends by writing the
                # deliveries whose last write is 30 s old; the others wait for a later invocation.
                self.processor.status.flush()
            metrics.emit(self.namespace, {"request_id": _request_id} if _request_id else None)
            _request_id = ""

    def _handle(self, event: object, context: object, metrics: EmfMetrics) -> dict[str, list[dict[str, str]]]:
        records = event.get("Records") if isinstance(event, dict) else None
        if not isinstance(records, list):
            # Not an SQS batch at all: nothing can be listed as failed, and raising would retry garbage.
            log.error("lambda event has no Records list; nothing to do", extra={"event_keys": _keys(event)})
            return {"batchItemFailures": []}
        metrics.messages_received.inc(len(records))
        remaining = _remaining_s(context)
        # One ledger read for the objects of the whole batch, not one per record (pipeline.consumer.commit).
        view = self.processor.prefetch([r.get("body", "") for r in records if isinstance(r, dict)])
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(records)))) as pool:
            outcomes = list(pool.map(lambda r: self._one(r, remaining, view), records))
        failures = [{"itemIdentifier": o.message_id} for o in outcomes if not o.acknowledged and o.message_id]
        not_started = sum(1 for o in outcomes if o.error == NOT_STARTED)
        log.info(
            "lambda batch done",
            extra={
                "messages": len(records),
                "retry": len(failures),
                "not_started": not_started,
                "outcomes": [o.outcome for o in outcomes],
            },
        )
        return {"batchItemFailures": failures}

    def _one(self, record: object, remaining: Callable[[], float | None], view: LedgerView | None) -> MessageOutcome:
        if not isinstance(record, dict):
            return self.processor.process("", "")
        message_id = str(record.get("messageId", ""))
        left = remaining()
        if left is not None and left < self.time_reserve_s:
            # Handed back untouched: it is listed in batchItemFailures and comes back after its visibility.
            self.processor.metrics.messages.labels("released").inc()
            return MessageOutcome(message_id, error=NOT_STARTED)
        attrs = record.get("attributes") or {}
        count = int(attrs.get("ApproximateReceiveCount", "0") or 0)
        outcome = self.processor.process(record.get("body", ""), message_id, count, view)
        self.processor.metrics.messages.labels(outcome.outcome).inc()
        if not outcome.acknowledged and outcome.retry_after_s is not None:
            self._delay(record, outcome.retry_after_s)
        return outcome

    def _delay(self, record: dict[str, Any], seconds: int) -> None:
        """Make a record held for a destination in back-off visible again after `seconds`. On failure it is
        only listed in batchItemFailures, and comes back after the queue's visibility timeout."""
        receipt, arn = str(record.get("receiptHandle") or ""), str(record.get("eventSourceARN") or "")
        message_id = str(record.get("messageId", ""))
        try:
            if self._sqs is None:
                self._sqs = aws.client("sqs")
            self._sqs.change_message_visibility(
                QueueUrl=queue_url(self._sqs, arn), ReceiptHandle=receipt, VisibilityTimeout=seconds
            )
        except (ClientError, BotoCoreError, ValueError) as exc:
            self.processor.metrics.sqs_errors.labels("ChangeMessageVisibility").inc()
            log.warning(
                "could not delay a held record: %s",
                aws.error_code(exc) or exc,
                extra={"message_id": message_id, "retry_in_s": seconds},
            )
            return
        log.info("held record delayed", extra={"message_id": message_id, "retry_in_s": seconds})


def queue_url(sqs: Any, arn: str) -> str:
    """The URL of the queue an event source ARN names (arn:aws:sqs:region:account:name), on the client's own
    endpoint: the form SQS answers to, with no GetQueueUrl call (and no permission for it)."""
    parts = arn.split(":")
    if len(parts) != 6 or parts[2] != "sqs" or not parts[4] or not parts[5]:
        raise ValueError(f"not an SQS queue ARN: {arn!r}")
    return f"{str(sqs.meta.endpoint_url).rstrip('/')}/{parts[4]}/{parts[5]}"


def _remaining_s(context: object) -> Callable[[], float | None]:
    """Seconds the invocation has left, as a function (None outside Lambda: no limit)."""
    get = getattr(context, "get_remaining_time_in_millis", None)
    if not callable(get):
        return lambda: None
    return lambda: get() / 1000.0


def _keys(event: object) -> list[str]:
    return sorted(event)[:10] if isinstance(event, dict) else [type(event).__name__]


_runtime: LambdaRuntime | None = None
_runtime_lock = threading.Lock()


def handler(event: dict[str, Any], context: object = None) -> dict[str, list[dict[str, str]]]:
    """The Lambda entry point (re-exported as `pipeline.commands.consumer.lambda_handler`, what the image runs)."""
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                logs.setup(os.environ.get("LOG_LEVEL") or "INFO")
                install_request_id_logging()
                _runtime = LambdaRuntime.from_env()
    return _runtime.handle(event, context)


def reset() -> None:
    """Forget the cached runtime, so the next invocation reads its configuration again."""
    global _runtime
    _runtime = None
