"""SIGTERM to an idle consumer in the middle of its 20 s long poll: it exits 0 in under 2 s."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.provision import LocalEnvironment
from tests.support.consumer_process import ConsumerProcess, wait_for

pytestmark = pytest.mark.integration


def test_sigterm_while_idle_exits_within_two_seconds(local_aws: LocalEnvironment, tmp_path: Path) -> None:
    consumer = ConsumerProcess(local_aws.env, tmp_path / "consumer.log", ["--wait-time", "20"]).wait_ready()
    try:
        # Inside a poll: the first receive has started (the metric says so), and the queue is empty.
        wait_for(lambda: consumer.metric("logdelivery_last_poll_timestamp_seconds") > 0, 30, "the first poll")
        code, seconds = consumer.terminate(timeout=30)
    finally:
        consumer.kill()
    assert code == 0, consumer.log_text()[-2000:]
    assert seconds < 2.0, f"took {seconds:.2f} s to stop"
    assert any(r.get("msg") == "consumer stopped" for r in consumer.logs())
