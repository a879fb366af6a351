"""SIGTERM to an idle consumer in the middle of its 20 s long poll: it exits 0 without waiting the poll out.

The poll is held open at a fault proxy in front of moto for as long as the test likes, so "in the middle of
its poll" and "did not wait for it" are events (the proxy holds the receive; the consumer exited while the
proxy still held it), not a race between the poll's 20 s and a stopwatch on a loaded machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.faults import FaultProxy, Hold, Rule
from devstack.provision import LocalEnvironment
from tests.support.consumer_process import ConsumerProcess

pytestmark = pytest.mark.integration

WAIT_S = 20  # SQS's longest long poll, the consumer's default


def test_sigterm_while_idle_exits_without_waiting_out_its_long_poll(
    local_aws: LocalEnvironment, tmp_path: Path
) -> None:
    with FaultProxy(local_aws.endpoint_url) as proxy:
        hold = Hold()
        proxy.add(Rule(hold, service="sqs", operation="ReceiveMessage"))
        env = {**local_aws.env, "AWS_ENDPOINT_URL": proxy.url}
        consumer = ConsumerProcess(env, tmp_path / "consumer.log", ["--wait-time", str(WAIT_S)]).wait_ready()
        try:
            # Inside a poll: its ReceiveMessage is at the proxy, unanswered (the queue is empty anyway).
            hold.wait_held(1, timeout=30)
            code, seconds = consumer.terminate(timeout=60)
            # It exited while its poll was still open: it did not wait for the poll's answer.
            still_held, let_go = hold.held, hold.let_go
        finally:
            consumer.kill()
            hold.open()  # the consumer is gone: its held receive is dropped, not forwarded
    assert code == 0, consumer.log_text()[-2000:]
    assert (still_held, let_go) == (1, 0), "its long poll had been answered before it exited"
    # Well inside the poll's own length, however loaded the machine (normally well under a second).
    assert seconds < WAIT_S, f"took {seconds:.2f} s to stop"
    messages = [r.get("msg") for r in consumer.logs()]
    assert "left an idle long poll open at shutdown" in messages
    assert "consumer stopped" in messages
