"""The long-running SQS consumer: long-poll, a bounded pool, visibility heartbeat, deletion and drain.

Flow of one message:

    receive ─► in-flight (heartbeat extends its visibility) ─► worker: process ─► delete   (acknowledged)
                                                                              └─► release  (recoverable)

- The poll loop only asks for as many messages as there are free workers, so nothing sits received but
  idle in a local queue while its visibility runs down. Holding one free worker, it waits a few
  milliseconds (`FINISHING_GRACE_S`) for the workers whose ledger write is under way or done, so the
  workers one group write frees are received for together: one receive and one ledger read for all.
- The heartbeat thread extends every in-flight message to the full visibility timeout, every
  `heartbeat_interval` seconds, so an object that takes longer than the timeout is never handed to a
  second consumer. A crashed consumer stops heartbeating and its messages come back after at most one
  visibility timeout.
- A recoverable failure sets the message's visibility to `retry_delay` and lets it come back; the queue's
  redrive policy moves a poison message to the DLQ after maxReceiveCount receives. That is not our job.
  A message held back for a destination in back-off (`pipeline.circuits`) is handed back at once with the
  processor's `retry_after_s` instead, which grows with its receive count.
- SIGTERM: stop receiving, let workers finish until the drain deadline, then release (visibility 0)
  whatever is still in flight so another pod picks it up at once, and return 0. The long poll runs on its
  own thread, so an idle consumer does not wait out its 20 s poll: it leaves the poll behind (it holds no
  message until it returns one) and exits within a second or so.
- A failing receive is judged by `pipeline.classify` ("sqs"). The queue gone or its URL wrong: the
  consumer drains and raises ConfigError (exit 3), since waiting cannot fix its configuration. Anything
  else (throttling, 5xx, the network, access denied) is waited out with the shared backoff policy, for at
  most `RECEIVE_RETRY`'s deadline of uninterrupted failure; then it drains and returns 1, so the pod is
  restarted and its startup check names the problem, instead of turning forever behind a healthy /healthz.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws, environment
from pipeline.circuits import DEFAULT_BASE_S as DEFAULT_CIRCUIT_BASE_S
from pipeline.circuits import DEFAULT_HOLD_BASE_S, CircuitBreakers
from pipeline.classify import Action, classify_error, describe
from pipeline.consumer.metrics import Metrics, MetricsServer
from pipeline.consumer.processor import MessageOutcome, MessageProcessor, Receive, consumer_deliverer
from pipeline.errors import ConfigError
from pipeline.exits import EXIT_FAILED, EXIT_OK
from pipeline.memory import DEFAULT_CONSUMER_BUDGET_MIB, MemoryBudget
from pipeline.retry import Retrying, RetryPolicy
from pipeline.settings import Settings
from pipeline.status import status_recorder

if TYPE_CHECKING:
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sqs.type_defs import ChangeMessageVisibilityBatchRequestEntryTypeDef, MessageTypeDef

log = logging.getLogger("pipeline.consumer.sqs")

SQS_MAX_MESSAGES = 10  # per ReceiveMessage and per ChangeMessageVisibilityBatch
SQS_MAX_WAIT_S = 20
SQS_MAX_VISIBILITY_S = 12 * 3600
DEFAULT_HEARTBEAT_CAP_S = 60.0
# Waits from 1 s up to one long poll's length; 10 minutes of nothing but failed receives is an outage or a
# broken identity that a restart (and its startup check) reports better than a loop that keeps turning.
RECEIVE_RETRY = RetryPolicy(attempts=1000, base_s=1.0, cap_s=SQS_MAX_WAIT_S, deadline_s=600.0)
STOP_CHECK_S = 0.1  # how often the loop looks for a stop request while a long poll is open
# After a stop request, how long an open poll may still answer: a poll about to return messages is worth a
# moment (they are released at once); an idle one is left behind.
POLL_GRACE_S = 0.3
# How long the loop, holding a free worker, waits for the workers that are finishing (their ledger write is
# under way or done) before it receives. Workers a group write releases free up within milliseconds of each
# other; one receive for all of them makes one ledger read for all their messages (and their objects,
# started together, finish together and share a write) instead of a receive and a read for each.
FINISHING_GRACE_S = 0.03


class _Poll:
    """One ReceiveMessage on its own daemon thread, so the loop can stop without waiting for it."""

    def __init__(self, receive: Callable[[int], list[MessageTypeDef]], n: int) -> None:
        self.done = threading.Event()
        self._messages: list[MessageTypeDef] = []
        self._error: BaseException | None = None
        self._receive, self._n = receive, n
        threading.Thread(target=self._run, name="sqs-poll", daemon=True).start()

    def _run(self) -> None:
        try:
            self._messages = self._receive(self._n)
        except BaseException as exc:  # handed to the loop, which decides
            self._error = exc
        finally:
            self.done.set()

    def result(self) -> list[MessageTypeDef]:
        if self._error is not None:
            raise self._error
        return self._messages


@dataclass(frozen=True)
class SqsOptions:
    queue_url: str
    workers: int = 8
    max_messages: int = SQS_MAX_MESSAGES
    wait_time_s: int = SQS_MAX_WAIT_S
    visibility_timeout_s: int | None = None  # None: the queue's own VisibilityTimeout attribute
    heartbeat_interval_s: float | None = None  # None: a third of the visibility timeout, at most 60 s
    retry_delay_s: int = 60  # visibility given back to a message after a recoverable failure
    drain_timeout_s: float = 45.0

    def validate(self) -> None:
        if not self.queue_url:
            raise ConfigError("missing required setting(s): SQS_QUEUE_URL")
        if self.workers < 1:
            raise ConfigError("workers must be at least 1")
        if not 1 <= self.max_messages <= SQS_MAX_MESSAGES:
            raise ConfigError(f"max messages must be within 1..{SQS_MAX_MESSAGES}")
        if not 0 <= self.wait_time_s <= SQS_MAX_WAIT_S:
            raise ConfigError(f"poll wait must be within 0..{SQS_MAX_WAIT_S} s")
        if not 0 <= self.retry_delay_s <= SQS_MAX_VISIBILITY_S:
            raise ConfigError("retry delay must be within 0 s..12 h")
        if self.drain_timeout_s < 0:
            raise ConfigError("drain timeout must not be negative")
        if self.visibility_timeout_s and self.heartbeat_interval_s:
            check_heartbeat(self.heartbeat_interval_s, self.visibility_timeout_s)


def check_heartbeat(interval_s: float, visibility_s: int) -> None:
    if interval_s >= visibility_s:
        # A beat that comes after the timeout ran out lets a second consumer take the message.
        raise ConfigError(
            f"heartbeat interval ({interval_s} s) must be shorter than the visibility timeout ({visibility_s} s); "
            "a third of it is a safe choice"
        )


@dataclass
class InFlight:
    message_id: str
    receipt: str
    body: str
    receive_count: int
    received_at: float = field(default_factory=time.monotonic)
    receive: Receive | None = None  # its receive: the ledger read and the records written together


class SqsConsumer:
    def __init__(
        self,
        processor: MessageProcessor,
        sqs: SQSClient,
        options: SqsOptions,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        receive_retry: RetryPolicy = RECEIVE_RETRY,
    ) -> None:
        options.validate()
        self.processor = processor
        self.sqs = sqs
        self.options = options
        self.metrics = metrics or processor.metrics
        self._clock = clock
        self._receive_retry = receive_retry
        self._stop = threading.Event()
        self._stop_requested_at: float | None = None
        self._heartbeat_stop = threading.Event()
        self._inflight: dict[str, InFlight] = {}
        self._cond = threading.Condition()  # guards _inflight; notified whenever a message finishes
        # Held by a heartbeat round and by a release, so a heartbeat that snapshotted a message can never
        # extend it again after a worker handed it back.
        self._visibility_lock = threading.Lock()
        self._slots = threading.Semaphore(options.workers)
        self._work: queue.Queue[InFlight] = queue.Queue()
        self.visibility_timeout_s = options.visibility_timeout_s or 0
        self.heartbeat_interval_s = options.heartbeat_interval_s or 0.0
        self.state = "starting"
        self._last_loop = clock()
        self._abandoned: _Poll | None = None

    # -- control ------------------------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Stop receiving and start draining. Safe from a signal handler: it only sets flags."""
        if self._stop_requested_at is None:
            self._stop_requested_at = self._clock()
        self._stop.set()

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy unless the poll loop has stopped turning (a hung receive or a dead main thread)."""
        idle = self._clock() - self._last_loop
        # A receive may legitimately take the long-poll wait plus botocore's 60 s read timeout.
        stalled = self.state == "running" and idle > self.options.wait_time_s + 90
        with self._cond:
            inflight = len(self._inflight)
        detail = {"status": "stalled" if stalled else self.state, "inflight": inflight, "idle_s": round(idle, 1)}
        return not stalled, detail

    # -- main loop ----------------------------------------------------------------------------------------

    def run(self) -> int:
        """Consume until request_stop(), then drain. Returns the exit code: 0, or 1 when receives kept
        failing past the retry policy. Raises ConfigError (after draining) when the queue is gone."""
        self._resolve_timeouts()
        for i in range(self.options.workers):
            threading.Thread(target=self._worker, name=f"consumer-{i}", daemon=True).start()
        heartbeat = threading.Thread(target=self._heartbeat, name="visibility-heartbeat", daemon=True)
        heartbeat.start()
        self.state = "running"
        log.info(
            "consumer started",
            extra={
                "queue_url": self.options.queue_url,
                "workers": self.options.workers,
                "wait_time_s": self.options.wait_time_s,
                "visibility_timeout_s": self.visibility_timeout_s,
                "heartbeat_interval_s": self.heartbeat_interval_s,
                "retry_delay_s": self.options.retry_delay_s,
                "drain_timeout_s": self.options.drain_timeout_s,
            },
        )
        code = EXIT_OK
        fatal: ConfigError | None = None
        failing: Retrying | None = None  # the retry loop of the receives failing since the last success
        while not self._stop.is_set():
            self._last_loop = self._clock()
            slots = self._take_slots()
            if not slots:
                continue
            try:
                received = self._receive_until_stopped(slots)
                failing = None
            except (ClientError, BotoCoreError) as exc:
                self._give_back_slots(slots)
                self.metrics.sqs_errors.labels("ReceiveMessage").inc()
                if classify_error("sqs", exc) is Action.FAIL:
                    fatal = ConfigError(self._explain(exc))
                    log.error("receive failed for good, stopping: %s", fatal, extra={"error": str(exc)[:300]})
                    break
                failing = failing or self._receive_retry.begin(self._stop.wait, self._clock)
                log.warning("receive failed, retrying: %s", describe(exc), extra={"error": str(exc)[:300]})
                if not failing.wait() and not self._stop.is_set():
                    log.error(
                        "receive failed %d times in a row, stopping: %s",
                        failing.failures,
                        self._explain(exc),
                        extra={"error": str(exc)[:300]},
                    )
                    code = EXIT_FAILED
                    break
                continue
            if received is None:  # stopped while the poll was still open
                self._give_back_slots(slots)
                break
            messages = received
            self._give_back_slots(slots - len(messages))
            if self._stop.is_set():
                # Received during the last long poll after SIGTERM: hand them straight back.
                self._give_back_slots(len(messages))
                self._release(messages, "received after the stop request")
                break
            # One ledger read for the objects of the whole receive, not one per message, and the idempotent
            # records of its messages written together (pipeline.consumer.processor.Receive).
            if messages:
                receive = self.processor.receive([m.get("Body", "") for m in messages])
                for m in messages:
                    self._start(m, receive)
        self._drain()
        self._settle_abandoned_poll()
        self._heartbeat_stop.set()
        self.state = "stopped"
        if fatal is not None:
            raise fatal
        return code

    def _explain(self, exc: BaseException) -> str:
        """One line for a failed call on the queue, naming the setting and the fix where one is known."""
        queue = environment.Resource("queue", self.options.queue_url, "SQS_QUEUE_URL", "sqs:ReceiveMessage")
        return environment.explain(exc, queue) or f"queue {self.options.queue_url}: {describe(exc)}"

    def _receive_until_stopped(self, n: int) -> list[MessageTypeDef] | None:
        """The messages of one receive; None when a stop came first and the poll stayed open."""
        poll = _Poll(self._receive, n)
        while not poll.done.wait(STOP_CHECK_S):
            if self._stop.is_set() and not poll.done.wait(POLL_GRACE_S):
                self._abandoned = poll
                return None
        return poll.result()

    def _settle_abandoned_poll(self) -> None:
        """A poll left open at the stop holds no message until it answers. If it answered meanwhile, its
        messages go straight back; if it answers after the process is gone, SQS makes them visible again
        after the visibility timeout (nothing is lost, the ledger keeps them from being sent twice)."""
        poll, self._abandoned = self._abandoned, None
        if poll is None:
            return
        if poll.done.is_set():
            try:
                messages = poll.result()
            except (ClientError, BotoCoreError):
                return
            self._release(messages, "received after the stop request")
        else:
            log.info("left an idle long poll open at shutdown")

    def _resolve_timeouts(self) -> None:
        if not self.visibility_timeout_s:
            try:
                attrs = self.sqs.get_queue_attributes(
                    QueueUrl=self.options.queue_url, AttributeNames=["VisibilityTimeout"]
                )["Attributes"]
            except ClientError as exc:
                if classify_error("sqs", exc) is Action.FAIL:  # the queue is gone, or its URL is wrong
                    raise ConfigError(self._explain(exc)) from exc
                raise
            self.visibility_timeout_s = int(attrs["VisibilityTimeout"])
        if self.visibility_timeout_s < 1:
            raise ConfigError("the visibility timeout must be at least 1 s for a heartbeat to keep messages")
        if not self.heartbeat_interval_s:
            self.heartbeat_interval_s = min(DEFAULT_HEARTBEAT_CAP_S, self.visibility_timeout_s / 3)
        check_heartbeat(self.heartbeat_interval_s, self.visibility_timeout_s)

    def _take_slots(self) -> int:
        """Wait (≤ 1 s, to notice a stop) for one free worker, then take up to max_messages free ones, and
        those of the workers finishing now (`FINISHING_GRACE_S`). Only free workers are received for: a
        message never waits in a local queue for a worker."""
        if not self._slots.acquire(timeout=1.0):
            return 0
        n = 1
        deadline = time.monotonic() + FINISHING_GRACE_S
        while n < min(self.options.max_messages, self.options.workers):
            if self._slots.acquire(blocking=False):
                n += 1
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not self.processor.finishing or self._stop.is_set():
                break
            if self._slots.acquire(timeout=min(left, 0.005)):
                n += 1
        return n

    def _give_back_slots(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    def _receive(self, n: int) -> list[MessageTypeDef]:
        self.metrics.last_poll.set_to_current_time()
        resp = self.sqs.receive_message(
            QueueUrl=self.options.queue_url,
            MaxNumberOfMessages=n,
            WaitTimeSeconds=self.options.wait_time_s,
            MessageSystemAttributeNames=["ApproximateReceiveCount", "SentTimestamp"],
        )
        messages = resp.get("Messages", [])
        if messages:
            self.metrics.messages_received.inc(len(messages))
        return messages

    def _start(self, message: MessageTypeDef, receive: Receive) -> None:
        entry = InFlight(
            message_id=message["MessageId"],
            receipt=message["ReceiptHandle"],
            body=message.get("Body", ""),
            receive_count=int(message.get("Attributes", {}).get("ApproximateReceiveCount", "0")),
            received_at=self._clock(),
            receive=receive,
        )
        with self._cond:
            self._inflight[entry.message_id] = entry
            self.metrics.inflight.set(len(self._inflight))
        self._work.put(entry)

    # -- workers ------------------------------------------------------------------------------------------

    def _worker(self) -> None:
        while True:
            entry = self._work.get()
            try:
                self._handle(entry)
            except Exception:  # keep the worker alive; the message comes back after its visibility runs out
                log.exception("worker failed on a message", extra={"message_id": entry.message_id})
            finally:
                self._slots.release()

    def _handle(self, entry: InFlight) -> None:
        """Deliver the message; it is deleted or handed back once concluded: at once, or once its idempotent
        records are written with others' (`pipeline.consumer.processor.DeferredRecords`)."""
        receive, entry.receive = entry.receive, None
        if receive is None:  # never: every message is started with its receive
            receive = Receive(self.processor, None)
        receive.process(
            entry.body, entry.message_id, entry.receive_count, lambda outcome: self._conclude(entry, outcome)
        )

    def _conclude(self, entry: InFlight, outcome: MessageOutcome) -> None:
        if outcome.acknowledged:
            self._delete(entry, outcome)
        else:
            # A destination backing off sets its own, growing delay (pipeline.circuits.release_delay): the
            # message comes back when its circuit may probe, and a long storm does not reach the DLQ.
            delay = outcome.retry_after_s if outcome.retry_after_s is not None else self.options.retry_delay_s
            self._release([entry], "recoverable failure", delay)
            self.metrics.messages.labels("retried").inc()
            log.warning(
                "message left for redelivery",
                extra={
                    "message_id": entry.message_id,
                    "receive_count": entry.receive_count,
                    "retry_in_s": delay,
                    "backing_off": outcome.retry_after_s is not None,
                    "reasons": [r.reason for r in outcome.results if not r.acknowledged] or [outcome.error],
                },
            )

    def _delete(self, entry: InFlight, outcome: MessageOutcome) -> None:
        if not self._forget(entry.message_id):
            # Released at the drain deadline while we were still working. The work is done and in the
            # ledger, so deleting is still right; if another consumer has it now, it will skip it.
            log.info("finished a message after releasing it", extra={"message_id": entry.message_id})
        try:
            self.sqs.delete_message(QueueUrl=self.options.queue_url, ReceiptHandle=entry.receipt)
        except (ClientError, BotoCoreError) as exc:
            # The message comes back after its visibility timeout; the ledger makes that a skip.
            self.metrics.sqs_errors.labels("DeleteMessage").inc()
            log.warning("delete failed: %s", describe(exc), extra={"message_id": entry.message_id})
        self.metrics.messages.labels(outcome.outcome).inc()

    def _forget(self, message_id: str) -> bool:
        with self._cond:
            found = self._inflight.pop(message_id, None) is not None
            self.metrics.inflight.set(len(self._inflight))
            self._cond.notify_all()
        return found

    # -- visibility ---------------------------------------------------------------------------------------

    def _release(self, entries: list[InFlight] | list[MessageTypeDef], why: str, visibility: int = 0) -> None:
        """Hand messages back to the queue: visible again after `visibility` seconds."""
        if not entries:
            return
        with self._visibility_lock:
            handles: list[tuple[str, str]] = []
            for e in entries:
                if isinstance(e, InFlight):
                    self._forget(e.message_id)
                    handles.append((e.message_id, e.receipt))
                else:
                    handles.append((e["MessageId"], e["ReceiptHandle"]))
            failed = self._change_visibility(handles, visibility, "release")
        if visibility == 0:
            self.metrics.messages.labels("released").inc(len(handles))
            log.info(
                "released %d message(s): %s",
                len(handles),
                why,
                extra={"message_ids": [h[0] for h in handles], "failed": failed},
            )

    def _heartbeat(self) -> None:
        while not self._heartbeat_stop.wait(self.heartbeat_interval_s):
            try:
                with self._visibility_lock:
                    with self._cond:
                        handles = [(e.message_id, e.receipt) for e in self._inflight.values()]
                    if handles:
                        failed = self._change_visibility(handles, self.visibility_timeout_s, "heartbeat")
                        self.metrics.visibility_extensions.labels("ok").inc(len(handles) - len(failed))
                        self.metrics.visibility_extensions.labels("failed").inc(len(failed))
            except Exception:  # the heartbeat must outlive any single bad round
                log.exception("visibility heartbeat round failed")

    def _change_visibility(self, handles: list[tuple[str, str]], visibility: int, purpose: str) -> list[str]:
        """ChangeMessageVisibilityBatch in chunks of 10; the message ids that could not be changed."""
        failed: list[str] = []
        for i in range(0, len(handles), SQS_MAX_MESSAGES):
            chunk = handles[i : i + SQS_MAX_MESSAGES]
            entries: list[ChangeMessageVisibilityBatchRequestEntryTypeDef] = [
                {"Id": str(n), "ReceiptHandle": receipt, "VisibilityTimeout": visibility}
                for n, (_, receipt) in enumerate(chunk)
            ]
            try:
                resp = self.sqs.change_message_visibility_batch(QueueUrl=self.options.queue_url, Entries=entries)
            except (ClientError, BotoCoreError) as exc:
                self.metrics.sqs_errors.labels("ChangeMessageVisibilityBatch").inc()
                log.warning("%s: visibility change failed: %s", purpose, describe(exc))
                failed.extend(mid for mid, _ in chunk)
                continue
            for f in resp.get("Failed", []):
                mid = chunk[int(f["Id"])][0]
                failed.append(mid)
                # Usually a message deleted between the snapshot and the call: harmless.
                log.debug("%s: visibility change refused for %s: %s", purpose, mid, f.get("Code"))
        return failed

    # -- shutdown -----------------------------------------------------------------------------------------

    def _drain(self) -> None:
        self.state = "draining"
        started = self._stop_requested_at if self._stop_requested_at is not None else self._clock()
        deadline = started + self.options.drain_timeout_s
        with self._cond:
            pending = len(self._inflight)
        log.info("draining", extra={"inflight": pending, "drain_timeout_s": self.options.drain_timeout_s})
        with self._cond:
            while self._inflight and self._clock() < deadline:
                self._cond.wait(max(0.0, min(1.0, deadline - self._clock())))
            left = list(self._inflight.values())
        if left:
            # Out of time: give them back now so another consumer starts at once, not after the timeout.
            self._release(left, "drain deadline reached")
        log.info(
            "drained",
            extra={"released": len(left), "seconds": round(self._clock() - started, 3)},
        )


def install_signal_handlers(consumer: SqsConsumer) -> None:
    """SIGTERM (Kubernetes) and SIGINT (a terminal) both start a drain."""

    def on_signal(signum: int, frame: FrameType | None) -> None:
        consumer.request_stop()  # flags only: logging from a signal handler can deadlock

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def serve(
    settings: Settings,
    options: SqsOptions,
    *,
    # S104: the metrics port is scraped from other pods; the NetworkPolicy limits who reaches it.
    metrics_host: str = "0.0.0.0",  # noqa: S104
    metrics_port: int = 8080,
    put_attempts: int | None = None,
    memory_budget_mib: int | None = None,
    throttle_attempts: int | None = None,
    backoff_delay_s: float = DEFAULT_HOLD_BASE_S,
    circuit_base_s: float = DEFAULT_CIRCUIT_BASE_S,
) -> int:
    """Run the SQS consumer with its metrics server until SIGTERM; the exit code. Raises ConfigError."""
    # All missing at once; the bucket too, since it is the only one the consumer delivers from.
    settings.require("queue_url", "bucket", "tenant_table", "ledger_table", "central_role_arn")
    options.validate()
    environment.check(settings, bucket=True, tenant_table=True, ledger_table=True, queue=True)
    metrics = Metrics()
    budget = MemoryBudget((memory_budget_mib or DEFAULT_CONSUMER_BUDGET_MIB) * 1024 * 1024)
    deliverer = consumer_deliverer(settings, put_attempts, throttle_attempts)
    circuits = CircuitBreakers(base_s=circuit_base_s)
    status = status_recorder(settings, deliverer.tenants, circuits)
    processor = MessageProcessor(
        deliverer,
        metrics,
        bucket=settings.bucket,
        budget=budget,
        circuits=circuits,
        hold_base_s=backoff_delay_s,
        status=status,
    )
    consumer = SqsConsumer(processor, aws.client("sqs"), options, metrics)
    install_signal_handlers(consumer)
    server = MetricsServer(metrics, consumer.health, metrics_host, metrics_port).start()
    if status is not None:
        status.start()
    try:
        code = consumer.run()
    finally:
        server.stop()
        if status is not None:
            status.close()  # after the drain: what the last objects did is written before the pod goes
    log.info("consumer stopped", extra={"exit_code": code})
    return code
