"""A sink that does all the work but the network: batches and serializes each request, then drops it.

It measures the pipeline's own ceiling (decode, group, batch, serialize) for benchmarks and dry
throughput experiments.
"""

from __future__ import annotations

from typing import ClassVar

from pipeline.batching import Event, batches, put_log_events_body
from pipeline.sinks import traits_of
from pipeline.sinks.base import SinkResult, SinkTraits
from pipeline.tenants import Delivery


class NullSink:
    name: ClassVar[str] = "null"
    traits: ClassVar[SinkTraits] = traits_of(name)

    def __init__(self, credentials: object = None, retry: object = None) -> None:
        self.bytes_serialized = 0

    def send(self, dest: Delivery, stream: str, events: list[Event]) -> SinkResult:
        result = SinkResult()
        for batch in batches(events):
            body = put_log_events_body(dest.log_group, stream, batch)
            self.bytes_serialized += len(body)
            result.batches += 1
            result.delivered += len(batch)
        return result

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
