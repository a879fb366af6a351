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
from typing import ClassVar, Protocol

from pipeline.counters import DeliveryCounts
from pipeline.credentials import CredentialBroker
from pipeline.keys import ObjectKey
from pipeline.records import Event
from pipeline.retry import RetryPolicy
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


class TenantWriter:
    """What the sinks that write into a tenant's account with its role share: the credential broker, the
    shared retry policy (which errors it retries is `pipeline.classify`'s table), and an injectable sleep."""

    def __init__(
        self,
        credentials: CredentialBroker,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._creds = credentials
        self._retry = retry or RetryPolicy()
        self._sleep = sleep

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
