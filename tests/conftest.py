"""Shared fixtures: one moto server per test process, reset and re-provisioned where a test needs it; one Ray
head for the whole run (all xdist workers), started only if a selected test asks for it and joined through
RAY_ADDRESS (`shared_ray`; tests/support/ray_session.py); the markers applied by folder, and the guard that
keeps unit tests free of moto and Ray."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hypothesis import settings

from devstack.localray import LocalRay
from devstack.provision import LocalEnvironment, provision
from devstack.server import MotoServer
from tests.support import ray_session

TESTS = Path(__file__).resolve().parent
# The marker each folder gives its tests (registered in pyproject.toml). A unit-folder test marked
# integration or ray by its module is not a unit test (`make unit` leaves it out).
FOLDER_MARKS = {"unit": "unit", "integration": "integration", "faults": "faults"}
NOT_UNIT = {"integration", "ray", "slow"}
# Fixtures that start or reach the moto server: a unit test that asks for one is a mistake, said at setup.
MOTO_FIXTURES = {"moto_server", "local_aws", "module_aws", "stack", "fault_proxy"}
RAY_PROCESSES = ("raylet", "gcs_server", "ray::")
# The run's Ray head: the controller's SessionHead; a worker's run directory (where it says it wants the head,
# and reads its address).
HEAD = pytest.StashKey[ray_session.SessionHead]()
RUN_DIR = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        config.stash[RUN_DIR] = Path(workerinput["ray_run_dir"])
        return
    # The controller (or the only process): room on the head for one replay per worker at once.
    slots = getattr(config.option, "numprocesses", 0) or 1
    head = ray_session.SessionHead(slots)
    config.stash[HEAD] = head
    config.stash[RUN_DIR] = head.run_dir


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: object) -> None:
    """xdist, on the controller, before it starts a worker: the worker's run directory."""
    config: pytest.Config = node.config  # type: ignore[attr-defined]
    node.workerinput["ray_run_dir"] = str(config.stash[RUN_DIR])  # type: ignore[attr-defined]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """Before a worker reports its collection (xdist's own hook sends it): whether a selected test asks for
    the head. Without xdist this process is the controller and starts it now."""
    config = session.config
    if config.option.collectonly:
        return
    if not any("ray_head" in getattr(item, "fixturenames", ()) for item in session.items):
        return
    ray_session.want(config.stash[RUN_DIR])
    if HEAD in config.stash:
        config.stash[HEAD].start()


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: object, ids: list[str]) -> None:
    """xdist, on the controller: a worker collected, having said before whether the head is wanted. Started in
    the background, the head comes up while the workers run their first tests."""
    config: pytest.Config = node.config  # type: ignore[attr-defined]
    head = config.stash[HEAD]
    if head.wanted:
        head.start()


def pytest_unconfigure(config: pytest.Config) -> None:
    """On the controller: the head stops at the run's end, an interrupted one too."""
    if HEAD in config.stash:
        config.stash[HEAD].stop()


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
    # What ran before (this process's moto server when it ran integration tests too) is not this test's doing;
    # nor is the run's Ray head, this process's child in a run without xdist, and what other tests' jobs start
    # under it.
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    head = request.config.stash.get(HEAD, None)
    before |= ray_session.descendants(head.node_pids()) if head else set()
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


@pytest.fixture(scope="session")
def ray_head(pytestconfig: pytest.Config) -> str:
    """The GCS address of the run's Ray head (tests/support/ray_session.py): `ray start --head`, as devstack's
    LocalRay, started by the run's controller once a selected test asks for it, with room for one replay per
    xdist worker at once. Joined only by what is told its address."""
    return ray_session.wait_address(pytestconfig.stash[RUN_DIR])


@pytest.fixture
def shared_ray(ray_head: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """RAY_ADDRESS naming the run's head, for this test's process and the replay CLIs it starts (they pass
    os.environ on): each joins it instead of starting a Ray of its own. Dry runs that must run without Ray
    drop it from their environment. A replay that does not size itself (--workers) has the workers a Ray of
    its own would have given it (REPLAY_WORKERS), not one per CPU of the shared head, which has room for the
    replays of all workers at once."""
    monkeypatch.setenv("RAY_ADDRESS", ray_head)
    monkeypatch.setenv("REPLAY_WORKERS", str(ray_session.JOB_CPUS))
    for k, v in ray_session.auth_env().items():
        monkeypatch.setenv(k, v)
    return ray_head
