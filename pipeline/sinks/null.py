"""A sink that does all the work but the network: batches and serializes each request, then drops it.

It measures the pipeline's own ceiling (decode, group, batch, serialize) for benchmarks and dry
throughput experiments.
"""

from __future__ import annotations

from typing import ClassVar

from pipeline.records import Event
from pipeline.sinks import traits_of
from pipeline.sinks.base import SinkResult, SinkTraits
from pipeline.sinks.cloudwatch.limits import batches, put_log_events_body
from pipeline.tenants import Delivery


class NullSink:
    name: ClassVar[str] = "null"
    traits: ClassVar[SinkTraits] = traits_of(name)

    def __init__(self, credentials: object = None, retry: object = None) -> None:
        """The other sinks' constructor; a sink that sends nothing needs neither argument."""

    def send(self, dest: Delivery, stream: str, events: list[Event]) -> SinkResult:
        result = SinkResult()
        for batch in batches(events):
            result.add(self.put_batch(dest, stream, batch))
        return result

    def put_batch(self, dest: Delivery, stream: str, batch: list[Event]) -> SinkResult:
        put_log_events_body(dest.log_group, stream, batch)  # the work of a real put, then dropped
        return SinkResult(events_delivered=len(batch), requests=1)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
