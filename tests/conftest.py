"""Shared fixtures: one moto server per test session, reset and re-provisioned where a test needs it; one Ray
head per test session, joined through RAY_ADDRESS by the modules that ask for it (`shared_ray`); the markers
applied by folder, and the guard that keeps unit tests free of moto and Ray."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import settings

from devstack.localray import LocalRay
from devstack.provision import LOCAL_CREDENTIALS, LocalEnvironment, provision
from devstack.server import MotoServer

TESTS = Path(__file__).resolve().parent
# The marker each folder gives its tests (registered in pyproject.toml). A unit-folder test marked
# integration or ray by its module is not a unit test (`make unit` leaves it out).
FOLDER_MARKS = {"unit": "unit", "integration": "integration", "faults": "faults"}
NOT_UNIT = {"integration", "ray", "slow"}
# Fixtures that start or reach the moto server: a unit test that asks for one is a mistake, said at setup.
MOTO_FIXTURES = {"moto_server", "local_aws", "module_aws", "stack", "fault_proxy"}
RAY_PROCESSES = ("raylet", "gcs_server", "ray::")

# Property tests are decided by their examples, not by how fast one runs: hypothesis's default 200 ms deadline
# per example failed test_coverage on a machine at load 28. Tests that care about time measure it themselves.
settings.register_profile("suite", deadline=None)
settings.load_profile("suite")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            folder = Path(str(item.path)).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        mark = FOLDER_MARKS.get(folder)
        if mark == "unit" and any(item.get_closest_marker(m) for m in NOT_UNIT):
            continue
        if mark:
            item.add_marker(mark)


@pytest.fixture(autouse=True)
def _unit_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A unit test starts no moto server and no Ray, in this process or a child: it fails saying which."""
    if request.node.get_closest_marker("unit") is None:
        yield
        return
    asked = MOTO_FIXTURES & set(request.fixturenames)
    if asked:
        pytest.fail(f"a unit test must not use moto ({', '.join(sorted(asked))}): mark it integration")

    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a unit test must not start moto or Ray: mark it integration or ray")

    monkeypatch.setattr(MotoServer, "start", refuse)
    monkeypatch.setattr(LocalRay, "_start", refuse)
    ray_before = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    # What ran before (the session's moto server and Ray head, when this worker ran integration tests too)
    # is not this test's doing.
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    ray = sys.modules.get("ray")
    if ray is not None and not ray_before and ray.is_initialized():
        ray.shutdown()
        pytest.fail("a unit test started Ray (ray.init): mark it ray")
    for child in psutil.Process().children(recursive=True):
        if child.pid in before:
            continue
        try:
            name = " ".join(child.cmdline()) or child.name()
        except psutil.Error:
            continue
        if any(p in name for p in RAY_PROCESSES) or "moto_main.py" in name:
            pytest.fail(f"a unit test left a moto or Ray process running: {name[:200]}")


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


@functools.cache
def ray_auth() -> dict[str, str]:
    """The session head runs without token auth, and says so to every client of it. Ray reads its auth mode
    once per process: a test process that touched Ray before (as "disabled", the default here) could never
    present a token set later, and the in-process driver of test_replay_streaming failed so under xdist. The
    head is the tests' own, on this machine; token auth is what test_replay_multinode and test_replay_requests
    test, each on a cluster of its own."""
    return {"RAY_AUTH_MODE": "disabled"}


@pytest.fixture(scope="session")
def ray_head() -> Iterator[LocalRay]:
    """One Ray head for the test session, started once (`ray start --head`, as devstack's LocalRay), with the
    machine's CPUs as a plain local `ray.init()` would have. Joined only by what is told its address."""
    # The nodes' own identity is the local AWS's credentials, as a RayCluster's pods have theirs; each job
    # brings its endpoint and region in its runtime env (pipeline/replay/job.py forwards them).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))} | LOCAL_CREDENTIALS | ray_auth()
    # A node that fails to stop cleanly must not hold the session's end for Ray's default 30 s drain.
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "5"
    head = LocalRay(env)
    try:
        head.start_head(num_cpus=os.cpu_count() or 1)
        yield head
    finally:
        head.stop()


@pytest.fixture
def shared_ray(ray_head: LocalRay, monkeypatch: pytest.MonkeyPatch) -> str:
    """RAY_ADDRESS naming the session's head, for this test's process and the replay CLIs it starts (they pass
    os.environ on): each joins it instead of starting a Ray of its own. Dry runs that must run without Ray
    drop it from their environment."""
    monkeypatch.setenv("RAY_ADDRESS", ray_head.gcs)
    for k, v in ray_auth().items():
        monkeypatch.setenv(k, v)
    return ray_head.gcs
