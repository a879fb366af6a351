"""Shared fixtures: one moto server per test session, reset and re-provisioned per test that needs it."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pipeline.local.provision import LocalEnvironment, provision
from pipeline.local.server import MotoServer


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with MotoServer(log_path=log) as server:
        yield server


@pytest.fixture
def local_aws(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> LocalEnvironment:
    """A freshly provisioned local AWS, with this process's environment pointing at it."""
    moto_server.reset()
    env = provision(moto_server.endpoint_url)
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    for k, v in env.env.items():
        monkeypatch.setenv(k, v)
    return env
