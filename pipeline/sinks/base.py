"""What every sink is: the traits it declares, what it reports, and the two ways it takes work.

A sink declares its traits instead of being recognised by name, so the delivery path, the replay workers
and the consumer ask a sink what it can do (does it need decoded events? is a send durable when it
returns?) and adding a sink touches only the registry in `pipeline.sinks`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import ClassVar, Protocol, TypeVar

from botocore.exceptions import ClientError

from pipeline import aws
from pipeline.classify import NETWORK_ERRORS, Action, Remedy, Service, classify, describe, remedy
from pipeline.counters import DeliveryCounts
from pipeline.credentials import CredentialBroker
from pipeline.errors import DeliveryError
from pipeline.keys import ObjectKey
from pipeline.records import Event
from pipeline.retry import Retrying, RetryPolicy
from pipeline.tenants import Delivery, DeliveryType


@dataclass(frozen=True)
class SinkTraits:
    delivers: frozenset[DeliveryType]  # the delivery types it can deliver to
    needs_events: bool  # True: takes decoded, prepared events (send); False: the object's bytes (put_object)
    durable_on_return: bool  # True: what send/put_object accepted is at the destination; False: after flush()
    writes_ledger: bool  # False: it sends nothing real, so nothing may be recorded as delivered
    max_writers: int | None = None  # threads that may use it at once; None: any number
    idempotent: bool = False  # True: a resend overwrites what it sent before instead of adding a duplicate
    # True: it takes one PutLogEvents batch at a time (put_batch), so the replay can fill batches across
    # objects and keep several in flight; False: it batches on its own (Vector), one send per stream.
    fills_batches: bool = False


@dataclass(kw_only=True)
class SinkResult(DeliveryCounts):
    """What one send or put did at the destination."""


@dataclass(frozen=True)
class SourceObject:
    """One object of the central bucket, read once, as object sinks take it."""

    bucket: str
    key: str
    etag: str
    body: bytes
    parsed: ObjectKey
    last_modified: datetime | None = None  # when the key carries no write time, what dates a Parquet object


class Sink(Protocol):
    name: ClassVar[str]
    traits: ClassVar[SinkTraits]

    def flush(self) -> None:
        """Return once everything sent so far is durable at the destination."""
        ...

    def close(self) -> None: ...


T = TypeVar("T")


class TenantWriter:
    """What the sinks that write into a tenant's account with its role share: the credential broker, the
    shared retry policy (which errors it retries is `pipeline.classify`'s table), an injectable sleep, and
    the one loop that sends a data call until it is accepted (`_call`)."""

    service: ClassVar[Service]  # whose table in `pipeline.classify` decides on the writer's errors

    def __init__(
        self,
        credentials: CredentialBroker,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._creds = credentials
        self._retry = retry or RetryPolicy()
        self._sleep = sleep

    def _call(
        self,
        dest: Delivery,
        what: str,
        call: Callable[[], T],
        result: SinkResult,
        refusal: Callable[[str, str], str],
        create: Callable[[], str | None] | None = None,
    ) -> T:
        """`call()` (one data call: PutLogEvents, PutObject) until the destination accepts it: remedy →
        classify → back off, the same for every writer. Each refused or unanswered attempt is counted in
        `result.requests_refused`, each wait in `result.retries`.

        A remedy is tried once per call: `create` makes the missing destination (None when it is made, else
        the code of a create worth retrying, which is backed off on), and expired credentials are refreshed.
        What `classify` retries is backed off on until the policy is spent (a recoverable DeliveryError);
        anything else raises DeliveryError at once, its reason `refusal(code, message)`. Whatever raises
        carries `result` as `sent`: the calls made before giving up count in the report."""
        try:
            return self._until_accepted(dest, what, call, result, refusal, create)
        except DeliveryError as exc:
            exc.sent = result
            raise

    def _until_accepted(
        self,
        dest: Delivery,
        what: str,
        call: Callable[[], T],
        result: SinkResult,
        refusal: Callable[[str, str], str],
        create: Callable[[], str | None] | None,
    ) -> T:
        created = refreshed = False
        retrying = self._retry.begin(self._sleep)
        while True:
            try:
                return call()
            except ClientError as exc:
                result.requests_refused += 1
                code = aws.error_code(exc)
                fix = remedy(self.service, code)
                if fix is Remedy.CREATE_DESTINATION and create is not None and not created:
                    create_error = create()
                    created = create_error is None
                    if create_error is not None:  # the create calls were throttled: back off, then try again
                        self._backoff(retrying, what, create_error, result)
                    continue
                if fix is Remedy.REFRESH_CREDENTIALS and not refreshed:
                    self._creds.invalidate(dest.role_arn, dest.hop_external_id)
                    refreshed = True
                    continue
                action = classify(self.service, code, aws.http_status(exc))
                if action is Action.RETRY:
                    self._backoff(retrying, what, describe(exc), result)
                    continue
                message = str(exc.response.get("Error", {}).get("Message", ""))
                raise DeliveryError(
                    refusal(code, message)[:500], recoverable=action is not Action.FAIL, code=describe(exc)
                ) from exc
            except NETWORK_ERRORS as exc:
                result.requests_refused += 1
                self._backoff(retrying, what, type(exc).__name__, result)

    @staticmethod
    def _backoff(retrying: Retrying, what: str, code: str, result: SinkResult) -> None:
        retrying.backoff(what, code)
        result.retries += 1

    def flush(self) -> None:
        pass  # every write has returned by the time send() or put_object() does

    def close(self) -> None:
        pass


class EventSink(Sink, Protocol):
    def send(self, dest: Delivery, stream: str, events: list[Event]) -> SinkResult:
        """Deliver one stream's prepared events. Raises DeliveryError when they could not all be delivered."""
        ...


class BatchSink(EventSink, Protocol):
    def put_batch(self, dest: Delivery, stream: str, batch: list[Event]) -> SinkResult:
        """Send one batch that obeys every limit (from `pipeline.sinks.cloudwatch.limits`) as one request; thread-safe.
        Its rejected counts cover the batch's events in order: too old first, then expired, too new last."""
        ...


class ObjectSink(Sink, Protocol):
    def put_object(self, dest: Delivery, source: SourceObject) -> SinkResult:
        """Store the object's bytes unchanged at the destination. Raises DeliveryError when it could not."""
        ...
