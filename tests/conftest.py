"""Shared fixtures: one moto server per test session, reset and re-provisioned where a test needs it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devstack.provision import LocalEnvironment, provision
from devstack.server import MotoServer


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with MotoServer(log_path=log) as server:
        yield server


def _fresh_stack(server: MotoServer, mp: pytest.MonkeyPatch) -> LocalEnvironment:
    """Reset and provision the local AWS, and point this process's AWS environment (only) at it."""
    server.reset()
    env = provision(server.endpoint_url)
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        mp.delenv(var)
    for k, v in env.env.items():
        mp.setenv(k, v)
    return env


@pytest.fixture
def local_aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> LocalEnvironment:
    """A freshly provisioned local AWS, with this process's environment pointing at it."""
    return _fresh_stack(moto_server, monkeypatch)


@pytest.fixture(scope="module")
def module_aws(moto_server: MotoServer) -> Iterator[LocalEnvironment]:
    """One provisioned local AWS for a whole module whose tests only read it: set up once, not per test."""
    with pytest.MonkeyPatch.context() as mp:
        yield _fresh_stack(moto_server, mp)
