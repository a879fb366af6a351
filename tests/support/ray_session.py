"""One Ray head for a whole test run, shared by every xdist worker, started only when a selected test asks for it.

The head belongs to the run's controller: the process without `workerinput` (xdist's controller, or the only
process of a run without xdist). It holds a run directory, passed to each worker in its `workerinput`:

- a worker whose collection holds a test that asks for the head (`ray_head`, through `shared_ray`) writes
  `wanted` there before it reports its collection to the controller;
- the controller, told of the collection, starts the head in a thread (so its start overlaps the first tests),
  then writes `address` (the GCS address), or `error` if it failed;
- a test asking for the head waits for one of the two files;
- the controller stops the head in `pytest_unconfigure`, which runs also when the run is interrupted.

So `make unit` (and any selection without such a test) starts no Ray, and a run starts one head, not one per
worker (13 to 43 s each, and a second head idling beside the first for the rest of the run).

The head is the controller's child, not a worker's: the unit guard of the worker that would have started it
would otherwise see the Ray workers that another worker's job spawns under it as its own test's leftovers.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import psutil

from devstack.localray import LocalRay
from devstack.provision import LOCAL_CREDENTIALS

WANTED, ADDRESS, ERROR = "wanted", "address", "error"
# What one replay may take of the head: the CPUs that a Ray of its own would have had (a plain local ray.init()),
# and at least the 2 workers the tests ask for at most. The head has this many per xdist worker, and each job
# that does not size itself (--workers) is told this many (REPLAY_WORKERS): jobs of different workers run at
# once on the head, and each must find all its workers' CPUs free. A job whose workers wait for CPUs that another
# job holds until its end waits forever: Ray hands a unit to a worker that is not placed yet, and two jobs
# placed one worker each would each wait for the other.
JOB_CPUS = max(2, os.cpu_count() or 1)
START_TIMEOUT_S = 180.0


def auth_env() -> dict[str, str]:
    """The session head runs without token auth, and says so to every client of it. Ray reads its auth mode
    once per process: a test process that touched Ray before (as "disabled", the default here) could never
    present a token set later, and the in-process driver of test_replay_streaming failed so under xdist. The
    head is the tests' own, on this machine; token auth is what test_replay_multinode and test_replay_requests
    test, each on a cluster of its own."""
    return {"RAY_AUTH_MODE": "disabled"}


class SessionHead:
    """The controller's side: started at most once, in a thread; stopped once, whatever its state."""

    def __init__(self, slots: int) -> None:
        self.run_dir = Path(tempfile.mkdtemp(prefix="pytest-ray-"))
        self.num_cpus = JOB_CPUS * max(1, slots)
        self._lock = threading.Lock()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._head: LocalRay | None = None

    @property
    def wanted(self) -> bool:
        return (self.run_dir / WANTED).exists()

    def node_pids(self) -> set[int]:
        """The pids of the head's `ray start` processes (none before it starts)."""
        return {p.pid for p in self._head.nodes} if self._head else set()

    def start(self) -> None:
        """Launch the head's process now (before any test runs: a unit test's guard refuses LocalRay._start
        while it runs), and wait for it to serve in a thread, so that its start overlaps the first tests."""
        with self._lock:
            if self._head is not None or self._stopping:
                return
            # The nodes' own identity is the local AWS's credentials, as a RayCluster's pods have theirs; each
            # job brings its endpoint and region in its runtime env (pipeline/replay/job.py forwards them).
            env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "AWS_"))}
            env |= LOCAL_CREDENTIALS | auth_env()
            # A node that fails to stop cleanly must not hold the run's end for Ray's default 30 s drain.
            env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "5"
            self._head = head = LocalRay(env)
            try:
                head.launch_head(num_cpus=self.num_cpus)
            except Exception as exc:  # the tests that wait for the head fail with this
                _publish(self.run_dir / ERROR, f"the session's Ray head did not start: {exc}")
                return
            self._thread = threading.Thread(target=self._wait, args=(head,), name="session-ray-head", daemon=True)
            self._thread.start()

    def _wait(self, head: LocalRay) -> None:
        try:
            head.wait_head()
        except Exception as exc:  # the tests that wait for the head fail with this (a stop makes it fail at once)
            _publish(self.run_dir / ERROR, f"the session's Ray head did not start: {exc}")
            return
        _publish(self.run_dir / ADDRESS, head.gcs)

    def stop(self) -> None:
        with self._lock:
            self._stopping = True
            head = self._head
        if head is not None:
            head.stop()  # a start still waiting then fails at once: its node has exited
        if self._thread is not None:
            self._thread.join(timeout=60)
        shutil.rmtree(self.run_dir, ignore_errors=True)


def want(run_dir: Path) -> None:
    """A worker's side: its collection holds a test that asks for the head."""
    (run_dir / WANTED).touch()


def wait_address(run_dir: Path, timeout: float = START_TIMEOUT_S) -> str:
    """The head's GCS address, once the controller has written it; fails with the start's error, or if no
    head was asked for (a test that reaches `ray_head` without naming it in its fixtures)."""
    deadline = time.monotonic() + timeout
    while True:
        if (run_dir / ADDRESS).exists():
            return (run_dir / ADDRESS).read_text()
        if (run_dir / ERROR).exists():
            raise AssertionError((run_dir / ERROR).read_text())
        if not (run_dir / WANTED).exists():
            raise AssertionError(
                "no session Ray head was asked for: name ray_head or shared_ray in the test's fixtures"
            )
        if time.monotonic() > deadline:
            raise AssertionError(f"the session's Ray head was not up after {timeout:.0f} s")
        time.sleep(0.1)  # polling a file the controller writes once: the wait ends on it, not on this interval


def descendants(pids: set[int]) -> set[int]:
    """These processes and all their descendants that are alive now."""
    found = set(pids)
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
    return found


def head_process(gcs: str) -> psutil.Process:
    """The `ray start --head` process of the head whose GCS listens at `gcs` (its command line names the port)."""
    port = gcs.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info.get("cmdline") or []
        if "start" in args and "--head" in args and f"--port={port}" in args:
            return proc
    raise AssertionError(f"no `ray start --head --port={port}` process")


def head_option(proc: psutil.Process, name: str) -> str:
    """The value of `--{name}=` on that process's command line."""
    return next(a for a in proc.cmdline() if a.startswith(f"--{name}=")).split("=", 1)[1]


def _publish(path: Path, text: str) -> None:
    """Write a file that appears whole (readers poll for it)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
