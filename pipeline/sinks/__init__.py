"""Where a delivery's data goes, and the one registry of sinks.

Event sinks take one stream's events already prepared by `pipeline.sinks.cloudwatch.limits.prepare` (sorted, within
the one-event limit, too-old and too-new held back and counted); object sinks take the source object's
bytes as they are. Each sink declares its traits (`SinkTraits`); nothing outside this package tests a
sink's name. Adding a sink is one entry in `REGISTRY`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.sinks.base import BatchSink, EventSink, ObjectSink, Sink, SinkResult, SinkTraits, SourceObject
from pipeline.tenants import DeliveryType

__all__ = [
    "REGISTRY",
    "BatchSink",
    "EventSink",
    "ObjectSink",
    "Sink",
    "SinkResult",
    "SinkSpec",
    "SinkTraits",
    "SourceObject",
    "build_sinks",
    "check_sinks",
    "describe_sinks",
    "plan_traits",
    "sink_names",
    "sink_plan",
    "traits_of",
    "writes_ledger",
]

CW, S3 = DeliveryType.CLOUDWATCH, DeliveryType.S3


@dataclass(frozen=True)
class SinkSpec:
    name: str
    traits: SinkTraits
    target: str  # "module:Class", imported only when the sink is built (Vector's module is not cheap)
    help: str
    default_for: frozenset[DeliveryType] = frozenset()  # the delivery types it serves when none is chosen


REGISTRY: dict[str, SinkSpec] = {
    s.name: s
    for s in (
        SinkSpec(
            "cloudwatch",
            SinkTraits(
                frozenset({CW}), needs_events=True, durable_on_return=True, writes_ledger=True, fills_batches=True
            ),
            "pipeline.sinks.cloudwatch.sink:CloudWatchSink",
            "native PutLogEvents into the tenant's log group",
            default_for=frozenset({CW}),
        ),
        SinkSpec(
            "vector",
            # One Vector process per destination is fed through one stdin; durable only once it has drained.
            SinkTraits(frozenset({CW}), needs_events=True, durable_on_return=False, writes_ledger=True, max_writers=1),
            "pipeline.sinks.vector:VectorSink",
            "a supervised vector process per destination, fed on stdin",
        ),
        SinkSpec(
            "s3",
            # The same source object always maps to the same destination key: a resend overwrites it.
            SinkTraits(
                frozenset({S3}), needs_events=False, durable_on_return=True, writes_ledger=True, idempotent=True
            ),
            "pipeline.sinks.s3:S3Sink",
            "the source object's bytes, unchanged, into the tenant's bucket",
            default_for=frozenset({S3}),
        ),
        SinkSpec(
            "null",
            SinkTraits(
                frozenset({CW, S3}), needs_events=True, durable_on_return=True, writes_ledger=False, fills_batches=True
            ),
            "pipeline.sinks.null:NullSink",
            "decode, batch and serialize every delivery's events, send nothing (throughput ceiling, no ledger)",
        ),
    )
}


def sink_names(serving: DeliveryType | None = None, durable_only: bool = False) -> tuple[str, ...]:
    """Sink names, optionally only those serving a delivery type, or durable when a send returns (the
    consumer acknowledges a message as soon as delivery returns, so it can only use those)."""
    return tuple(
        s.name
        for s in REGISTRY.values()
        if (serving is None or serving in s.traits.delivers) and (s.traits.durable_on_return or not durable_only)
    )


def describe_sinks(names: tuple[str, ...]) -> str:
    """`name: what it does` for each, for --help texts."""
    return "; ".join(f"{n}: {REGISTRY[n].help}" for n in names)


def traits_of(name: str) -> SinkTraits:
    return _spec(name).traits


def _spec(name: str) -> SinkSpec:
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown sink {name!r}: choose one of {', '.join(REGISTRY)}") from None


def sink_plan(chosen: str) -> dict[DeliveryType, str]:
    """Which sink serves each delivery type: `chosen` wherever it can, the type's default elsewhere."""
    spec = _spec(chosen)
    plan: dict[DeliveryType, str] = {}
    for kind in DeliveryType:
        if kind in spec.traits.delivers:
            plan[kind] = spec.name
        else:
            plan[kind] = next(s.name for s in REGISTRY.values() if kind in s.default_for)
    return plan


def plan_traits(chosen: str) -> dict[DeliveryType, SinkTraits]:
    """The traits of the sink serving each delivery type when `chosen` is picked (see sink_plan)."""
    return {kind: traits_of(name) for kind, name in sink_plan(chosen).items()}


def writes_ledger(chosen: str) -> bool:
    """Whether any sink `chosen` puts to work sends for real, so the ledger and credentials are needed."""
    return any(t.writes_ledger for t in plan_traits(chosen).values())


def _sink_class(name: str) -> Any:
    module, cls = _spec(name).target.split(":")
    return getattr(importlib.import_module(module), cls)


def check_sinks(chosen: str, env: Mapping[str, str] | None = None) -> None:
    """ConfigError when a sink `sink_plan(chosen)` puts to work cannot run here (a program it needs is
    missing): for startup checks, so a deployment error stops the entrypoint before it takes any work.
    A sink says what it needs with a `check_environment(env)` classmethod; most need nothing."""
    for name in dict.fromkeys(sink_plan(chosen).values()):
        check = getattr(_sink_class(name), "check_environment", None)
        if check is not None:
            check(env)


def build_sinks(chosen: str, *, credentials: Any = None, retry: Any = None) -> dict[DeliveryType, Sink]:
    """One sink instance per sink named in `sink_plan(chosen)`, shared by the types it serves.

    Every sink is built the same way, from the credential broker (None for sinks that send nothing) and
    the retry policy (None: the sink's default).
    """
    built: dict[str, Sink] = {}
    out: dict[DeliveryType, Sink] = {}
    for kind, name in sink_plan(chosen).items():
        if name not in built:
            built[name] = _sink_class(name)(credentials=credentials, retry=retry)
        out[kind] = built[name]
    return out
