"""Where prepared events go: the native CloudWatch Logs sink, a supervised Vector process, or nowhere.

Every sink takes one stream's events already prepared by `pipeline.batching.prepare` (sorted, within the
one-event limit, too-old and too-new held back and counted) and reports what happened to them.
"""

from pipeline.sinks.base import Destination, Sink, SinkResult

__all__ = ["Destination", "Sink", "SinkResult", "make_sink"]


def make_sink(kind: str, **kwargs: object) -> Sink:
    """Build a sink by name: 'cloudwatch', 'vector' or 'null'."""
    if kind == "cloudwatch":
        from pipeline.sinks.cloudwatch import CloudWatchSink

        return CloudWatchSink(**kwargs)  # type: ignore[arg-type]
    if kind == "vector":
        from pipeline.sinks.vector import VectorSink

        return VectorSink(**kwargs)  # type: ignore[arg-type]
    if kind == "null":
        from pipeline.sinks.null import NullSink

        return NullSink()
    raise ValueError(f"unknown sink {kind!r}: choose cloudwatch, vector or null")
