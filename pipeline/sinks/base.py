"""The one small interface every sink implements."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

from pipeline.batching import Event


@dataclass(frozen=True)
class Destination:
    """One tenant's log group, in the tenant's own account and region."""

    tenant_id: str
    role_arn: str
    log_group: str
    region: str


@dataclass
class SinkResult:
    delivered: int = 0
    rejected_too_old: int = 0
    rejected_too_new: int = 0
    rejected_expired: int = 0
    batches: int = 0
    retries: int = 0

    def add(self, other: SinkResult) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


class Sink(Protocol):
    name: str

    def send(self, dest: Destination, stream: str, events: list[Event]) -> SinkResult:
        """Deliver one stream's prepared events. Raises DeliveryError when they could not all be delivered."""
        ...

    def flush(self) -> None:
        """Return once everything sent so far is durable at the destination."""
        ...

    def close(self) -> None: ...
