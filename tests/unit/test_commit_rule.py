"""The commit rule's values (`Commit`) and the views callers read of it (`batched`, `durable`)."""

from __future__ import annotations

import pickle
from dataclasses import replace

from pipeline.delivery.results import Commit, DeliveryResult
from pipeline.retry import RetryPolicy


def test_batched_is_a_view_of_the_commit_rule() -> None:
    r = DeliveryResult("cloudwatch", "cloudwatch")
    assert r.commit is Commit.NOW and not r.batched and r.durable
    asked = DeliveryResult("s3", "s3", batched=True)  # how the consumer's tests build one
    assert asked.commit is Commit.GROUP and asked.batched and asked.durable
    whole = DeliveryResult("s3", "s3", commit=Commit.WHOLE)
    assert whole.batched
    whole.batched = True  # already a group commit: stays WHOLE
    assert whole.commit is Commit.WHOLE
    late = DeliveryResult("vector", "cloudwatch", commit=Commit.AFTER_FLUSH)
    assert not late.durable and not late.batched


def test_the_rule_survives_copies_and_pickling() -> None:
    """Ray ships results between processes (pickle), and callers copy them (`dataclasses.replace`)."""
    whole = DeliveryResult("s3", "s3", commit=Commit.WHOLE)
    assert replace(whole, events_delivered=3).commit is Commit.WHOLE
    assert pickle.loads(pickle.dumps(whole)).commit is Commit.WHOLE
    group = DeliveryResult("s3", "s3", batched=True)
    assert pickle.loads(pickle.dumps(group)).batched
    assert {"commit", "batched", "durable"}.isdisjoint(group.to_dict())


def test_a_policy_without_jitter_waits_the_capped_exponential() -> None:
    """Vector's restarts: one process of its own to wait for, no herd to spread."""
    policy = RetryPolicy(base_s=0.25, cap_s=30.0, jitter=False)
    assert [policy.delay(n) for n in range(9)] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert "jitter=False" in repr(policy)
