"""The one registry of sinks: which sink serves which delivery type, what each declares, how they are built."""

from __future__ import annotations

import importlib

import pytest

from pipeline.sinks import (
    REGISTRY,
    build_sinks,
    describe_sinks,
    sink_names,
    sink_plan,
    traits_of,
)
from pipeline.sinks.cloudwatch.sink import CloudWatchSink
from pipeline.sinks.null import NullSink
from pipeline.sinks.s3 import S3Sink
from pipeline.sinks.vector import VectorSink
from pipeline.tenants import DeliveryType

CW, S3 = DeliveryType.CLOUDWATCH, DeliveryType.S3


class FakeBroker:
    """Sinks only keep the broker at construction; nothing here sends anything."""

    external_id = "123456789012"


def close_all(sinks: dict[DeliveryType, object]) -> None:
    for s in {id(s): s for s in sinks.values()}.values():
        s.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("chosen", "plan"),
    [
        ("cloudwatch", {CW: "cloudwatch", S3: "s3"}),
        ("vector", {CW: "vector", S3: "s3"}),  # Vector cannot write S3: the type's default does
        ("s3", {CW: "cloudwatch", S3: "s3"}),
        ("null", {CW: "null", S3: "null"}),  # serves both: one instance for both
    ],
)
def test_sink_plan_for_each_name(chosen: str, plan: dict[DeliveryType, str]) -> None:
    assert sink_plan(chosen) == plan
    assert set(sink_plan(chosen)) == set(DeliveryType)  # every type has a sink, whatever is chosen


def test_every_sink_in_the_registry_has_a_plan() -> None:
    for name in REGISTRY:
        plan = sink_plan(name)
        for kind, served_by in plan.items():
            assert kind in traits_of(served_by).delivers


def test_each_delivery_type_has_exactly_one_default_sink() -> None:
    for kind in DeliveryType:
        defaults = [s.name for s in REGISTRY.values() if kind in s.default_for]
        assert len(defaults) == 1, (kind, defaults)
        assert kind in traits_of(defaults[0]).delivers


def test_build_sinks_shares_one_instance_when_a_sink_serves_two_types() -> None:
    sinks = build_sinks("null")
    assert sinks[CW] is sinks[S3]
    assert isinstance(sinks[CW], NullSink)


def test_build_sinks_builds_one_instance_per_sink() -> None:
    broker = FakeBroker()
    sinks = build_sinks("cloudwatch", credentials=broker)
    assert isinstance(sinks[CW], CloudWatchSink) and isinstance(sinks[S3], S3Sink)
    assert sinks[CW] is not sinks[S3]
    assert sinks[CW]._creds is broker and sinks[S3]._creds is broker  # the one broker for every sink
    close_all(sinks)


def test_build_sinks_with_vector() -> None:
    sinks = build_sinks("vector", credentials=FakeBroker())
    assert isinstance(sinks[CW], VectorSink) and isinstance(sinks[S3], S3Sink)
    close_all(sinks)


def test_build_sinks_passes_the_retry_policy() -> None:
    from pipeline.retry import RetryPolicy

    policy = RetryPolicy(attempts=3)
    sinks = build_sinks("cloudwatch", credentials=FakeBroker(), retry=policy)
    assert sinks[CW]._retry is policy and sinks[S3]._retry is policy
    # None: each sink's own default policy.
    defaults = build_sinks("cloudwatch", credentials=FakeBroker())
    assert isinstance(defaults[CW]._retry, RetryPolicy) and isinstance(defaults[S3]._retry, RetryPolicy)


@pytest.mark.parametrize("name", list(REGISTRY))
def test_each_class_declares_the_traits_of_its_registry_entry(name: str) -> None:
    spec = REGISTRY[name]
    module, cls_name = spec.target.split(":")
    cls = getattr(importlib.import_module(module), cls_name)
    assert cls.name == name == spec.name
    assert cls.traits is spec.traits
    assert traits_of(name) is spec.traits
    assert spec.help


def test_traits() -> None:
    cw, vec, s3, null = (traits_of(n) for n in ("cloudwatch", "vector", "s3", "null"))
    assert cw.delivers == {CW} and cw.needs_events and cw.durable_on_return and cw.writes_ledger
    assert cw.max_writers is None
    # Vector: one process per destination fed through one stdin, durable only once flushed.
    assert vec.delivers == {CW} and vec.needs_events and not vec.durable_on_return and vec.writes_ledger
    assert vec.max_writers == 1
    # S3: the object's bytes, never decoded; stored when PutObject returns.
    assert s3.delivers == {S3} and not s3.needs_events and s3.durable_on_return and s3.writes_ledger
    # null sends nothing, so nothing may ever be recorded as delivered.
    assert null.delivers == {CW, S3} and not null.writes_ledger


def test_sink_names() -> None:
    assert set(sink_names()) == set(REGISTRY)
    assert sink_names(serving=CW) == ("cloudwatch", "vector", "null")
    assert sink_names(serving=S3) == ("s3", "null")
    # The consumer acknowledges as soon as delivery returns: only sinks durable on return.
    assert "vector" not in sink_names(durable_only=True)
    assert sink_names(serving=CW, durable_only=True) == ("cloudwatch", "null")


def test_describe_sinks() -> None:
    text = describe_sinks(("cloudwatch", "s3"))
    assert text.startswith("cloudwatch: ") and "; s3: " in text


@pytest.mark.parametrize("call", [traits_of, sink_plan, build_sinks])
def test_an_unknown_sink_name_is_a_clear_error(call: object) -> None:
    with pytest.raises(ValueError, match=r"unknown sink 'kinesis': choose one of cloudwatch, vector, s3, null"):
        call("kinesis")  # type: ignore[operator]
