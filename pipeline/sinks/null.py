"""A sink that does all the work but the network: batches and serializes each request, then drops it.

It measures the pipeline's own ceiling (decode, group, batch, serialize) for benchmarks and dry
throughput experiments.
"""

from __future__ import annotations

import orjson

from pipeline.batching import Event, batches
from pipeline.sinks.base import Destination, SinkResult


class NullSink:
    name = "null"

    def __init__(self) -> None:
        self.bytes_serialized = 0

    def send(self, dest: Destination, stream: str, events: list[Event]) -> SinkResult:
        result = SinkResult()
        for batch in batches(events):
            body = orjson.dumps(
                {
                    "logGroupName": dest.log_group,
                    "logStreamName": stream,
                    "logEvents": [{"timestamp": ts, "message": msg} for ts, msg in batch],
                }
            )
            self.bytes_serialized += len(body)
            result.batches += 1
            result.delivered += len(batch)
        return result

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass
