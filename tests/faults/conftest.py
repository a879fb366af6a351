"""Fixtures for the fault and security tests: one fault proxy in front of the session's moto server.

`stack` gives each test a freshly provisioned local AWS whose clients (in this process and in every
subprocess started with `stack.env`) go through the proxy, with no rules and an empty call log. Setup and
read-back go straight to moto (`stack.local`), so they never hit a rule and never show in the call log.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.faults import FaultProxy
from devstack.provision import provision
from devstack.server import MotoServer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus"))

from fault_helpers import ConsumerProcess, FaultStack, consumer_process


@pytest.fixture(scope="session")
def fault_proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server.endpoint_url, seed=8) as proxy:
        yield proxy


@pytest.fixture
def stack(moto_server: MotoServer, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultStack]:
    fault_proxy.clear()
    moto_server.reset()
    local = provision(moto_server.endpoint_url)
    fault_proxy.reset_log()
    through_proxy = {**local.env, "AWS_ENDPOINT_URL": fault_proxy.url}
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    for k, v in through_proxy.items():
        monkeypatch.setenv(k, v)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | through_proxy
    yield FaultStack(local, fault_proxy, env)
    fault_proxy.clear()


@pytest.fixture
def consumer(stack: FaultStack, tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    """Starts consumer subprocesses through the stack's proxy (ready when returned); kills them after the test."""
    started: list[ConsumerProcess] = []

    def start(*args: str) -> ConsumerProcess:
        c = consumer_process(stack, tmp_path / f"consumer-{len(started)}.log", list(args))
        started.append(c)
        return c.wait_ready()

    yield start
    for c in started:
        c.kill()
