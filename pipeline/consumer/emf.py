"""Lambda mode's metrics: CloudWatch embedded metric format (EMF) lines, with the Prometheus names.

Lambda has no port to scrape. Each invocation counts into its own `Metrics` registry, and at its end one
JSON document per label set is printed on stdout; CloudWatch Logs turns them into metrics in the
namespace given (METRICS_NAMESPACE), with the labels as dimensions. Counters carry the increase of the
invocation under their `_total` name; histograms carry every value observed (at most 100 per document,
as EMF allows), so CloudWatch's own percentiles apply. Of the gauges only the destinations in back-off
(`logdelivery_destinations_backing_off`, the container's circuits) applies to Lambda; the others are the
SQS poll loop's and are left out. A counter with a `reason` label is published both with it and without
it (two dimension sets of one document), so alarms written before the label (the canary's, on
status and tenant) still find their metric.
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from typing import IO, Any

import orjson

from pipeline.consumer.metrics import Metrics

DEFAULT_NAMESPACE = "LogDelivery"
GAUGES = frozenset({"logdelivery_destinations_backing_off"})  # the gauges that mean something in Lambda
OPTIONAL_DIMENSIONS = ("reason",)  # added after alarms were written on the rest
MAX_VALUES = 100  # EMF: values per metric in one document
MAX_METRICS = 100  # EMF: metrics per directive


class _Recording:
    """A histogram that also keeps each value observed, for EMF."""

    def __init__(self, histogram: Any, values: list[float]) -> None:
        self._histogram = histogram
        self._values = values

    def observe(self, value: float) -> None:
        self._values.append(value)
        self._histogram.observe(value)


class EmfMetrics(Metrics):
    """The consumer's metrics for one invocation, printable as EMF documents."""

    def __init__(self) -> None:
        super().__init__()
        self.observed: dict[str, list[float]] = defaultdict(list)
        # The two histograms are wrapped to keep each observation for EMF; _Recording has their observe().
        self.latency = _Recording(self.latency, self.observed["logdelivery_delivery_latency_seconds"])  # type: ignore[assignment]
        self.duration = _Recording(self.duration, self.observed["logdelivery_object_duration_seconds"])  # type: ignore[assignment]

    def documents(
        self, namespace: str = DEFAULT_NAMESPACE, properties: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        timestamp = int(time.time() * 1000)
        by_labels: dict[tuple[tuple[str, str], ...], dict[str, float]] = defaultdict(dict)
        for family in self.registry.collect():
            if family.type == "gauge" and family.name in GAUGES:
                for sample in family.samples:  # 0 too: a destination that recovered says so
                    by_labels[tuple(sorted(sample.labels.items()))][sample.name] = sample.value
            if family.type != "counter":
                continue
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.value > 0:
                    by_labels[tuple(sorted(sample.labels.items()))][sample.name] = sample.value
        docs = []
        for labels, values in sorted(by_labels.items()):
            names = sorted(values)
            for i in range(0, len(names), MAX_METRICS):
                chunk = names[i : i + MAX_METRICS]
                docs.append(_document(namespace, timestamp, dict(labels), {n: values[n] for n in chunk}, properties))
        for name, observed in sorted(self.observed.items()):
            for i in range(0, len(observed), MAX_VALUES):
                docs.append(_document(namespace, timestamp, {}, {name: observed[i : i + MAX_VALUES]}, properties))
        return docs

    def emit(
        self, namespace: str = DEFAULT_NAMESPACE, properties: dict[str, Any] | None = None, out: IO[str] | None = None
    ) -> int:
        """Print the documents, one per line (Lambda sends stdout to CloudWatch Logs); how many."""
        docs = self.documents(namespace, properties)
        stream = out or sys.stdout
        for doc in docs:
            stream.write(orjson.dumps(doc).decode() + "\n")
        stream.flush()
        return len(docs)


def _unit(name: str) -> str:
    if name.endswith("_seconds"):
        return "Seconds"
    if "bytes" in name:
        return "Bytes"
    return "Count"


def _document(
    namespace: str,
    timestamp: int,
    dimensions: dict[str, str],
    values: dict[str, Any],
    properties: dict[str, Any] | None,
) -> dict[str, Any]:
    dimension_sets = [sorted(dimensions)]
    if any(d in dimensions for d in OPTIONAL_DIMENSIONS):
        dimension_sets.append(sorted(d for d in dimensions if d not in OPTIONAL_DIMENSIONS))
    directive = {
        "Namespace": namespace,
        "Dimensions": dimension_sets,
        "Metrics": [{"Name": n, "Unit": _unit(n)} for n in values],
    }
    return {
        **(properties or {}),
        "_aws": {"Timestamp": timestamp, "CloudWatchMetrics": [directive]},
        **dimensions,
        **values,
    }
