"""Lambda mode: an SQS event source batch in, `batchItemFailures` out (CONTRACTS.md §6).

Only the messages to retry are listed, so one bad message does not make the whole batch come back
(the event source mapping needs `FunctionResponseTypes: [ReportBatchItemFailures]`). Non-recoverable
failures are logged and acknowledged, exactly as in SQS mode. The Deliverer is built once per container
(cold start) and reused across invocations, so the credential and tenant caches survive between them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pipeline import logs
from pipeline.consumer.metrics import Metrics
from pipeline.consumer.processor import MessageOutcome, MessageProcessor
from pipeline.delivery import build_deliverer
from pipeline.settings import ConfigError, Settings

log = logging.getLogger("pipeline.consumer.lambda")

DEFAULT_WORKERS = 10  # the default SQS batch size for Lambda


class LambdaRuntime:
    def __init__(self, processor: MessageProcessor, workers: int = DEFAULT_WORKERS) -> None:
        self.processor = processor
        self.workers = workers

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LambdaRuntime:
        """Lambda has no command line: the same env vars as the CLI (CONSUMER_WORKERS, PUT_ATTEMPTS)."""
        env = os.environ if env is None else env
        settings = Settings.from_env(env)
        try:
            workers = int(env.get("CONSUMER_WORKERS") or DEFAULT_WORKERS)
            put_attempts = int(env["PUT_ATTEMPTS"]) if env.get("PUT_ATTEMPTS") else None
        except ValueError as exc:
            raise ConfigError(f"CONSUMER_WORKERS and PUT_ATTEMPTS must be integers: {exc}") from exc
        settings.require("bucket", "tenant_table", "ledger_table", "central_role_arn")  # all missing at once
        deliverer = build_deliverer(settings, put_attempts=put_attempts)
        return cls(MessageProcessor(deliverer, Metrics(), bucket=settings.bucket), workers)

    def handle(self, event: dict[str, Any], context: Any = None) -> dict[str, list[dict[str, str]]]:
        records = event.get("Records") if isinstance(event, dict) else None
        if not isinstance(records, list):
            # Not an SQS batch at all: nothing can be listed as failed, and raising would retry garbage.
            log.error("lambda event has no Records list; nothing to do", extra={"event_keys": _keys(event)})
            return {"batchItemFailures": []}
        with ThreadPoolExecutor(max_workers=max(1, min(self.workers, len(records)))) as pool:
            outcomes = list(pool.map(self._one, records))
        failures = [{"itemIdentifier": o.message_id} for o in outcomes if not o.acknowledged and o.message_id]
        log.info(
            "lambda batch done",
            extra={"messages": len(records), "retry": len(failures), "outcomes": [o.outcome for o in outcomes]},
        )
        return {"batchItemFailures": failures}

    def _one(self, record: Any) -> MessageOutcome:
        if not isinstance(record, dict):
            return self.processor.process("", "")
        attrs = record.get("attributes") or {}
        count = int(attrs.get("ApproximateReceiveCount", "0") or 0)
        outcome = self.processor.process(record.get("body", ""), str(record.get("messageId", "")), count)
        self.processor.metrics.messages.labels(outcome.outcome).inc()
        return outcome


def _keys(event: Any) -> list[str]:
    return sorted(event)[:10] if isinstance(event, dict) else [type(event).__name__]


_runtime: LambdaRuntime | None = None
_runtime_lock = threading.Lock()


def handler(event: dict[str, Any], context: Any = None) -> dict[str, list[dict[str, str]]]:
    """The Lambda entry point (re-exported as `jobs.consumer.lambda_handler`)."""
    global _runtime
    if _runtime is None:
        with _runtime_lock:
            if _runtime is None:
                logs.setup()
                _runtime = LambdaRuntime.from_env()
    return _runtime.handle(event, context)


def reset() -> None:
    """Forget the cached runtime, so the next invocation reads its configuration again."""
    global _runtime
    _runtime = None
