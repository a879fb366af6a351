"""A replay that joins a cluster (RAY_ADDRESS) and is not told its size has one worker per CPU of the cluster.

The tests that share the run's Ray head (`shared_ray`) are told their size (REPLAY_WORKERS: the head has room for
the replays of all xdist workers at once, tests/support/ray_session.py), so this branch of
`pipeline.replay.job.default_workers` is checked here, against the head's own `--num-cpus`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.support import ray_session

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def test_a_replay_joining_a_cluster_without_replay_workers_has_one_worker_per_cpu_of_the_cluster(
    ray_head: str,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "REPLAY_WORKERS"}
    env |= {"RAY_ADDRESS": ray_head, "RAY_AUTH_MODE": "disabled"}
    code = "from pipeline.replay.job import default_workers\nprint(default_workers())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    head_cpus = int(ray_session.head_option(ray_session.head_process(ray_head), "num-cpus"))
    assert int(proc.stdout.strip().splitlines()[-1]) == head_cpus


HELD_RUN = """
import os, threading
from pathlib import Path

def test_holds_the_head(ray_head):
    Path(os.environ["HEAD_ADDRESS_FILE"]).write_text(ray_head)
    threading.Event().wait(240)  # until the run is interrupted
"""


def test_a_run_interrupted_with_ctrl_c_stops_the_head_it_started(tmp_path: Path) -> None:
    """Ctrl-C in a run that started the session's head (tests/support/ray_session.py) leaves no Ray behind: the
    head and its raylet, GCS and workers all end with the run."""
    (tmp_path / "test_held.py").write_text(HELD_RUN)
    address_file = tmp_path / "address"
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "PYTEST_"))}
    env |= {"HEAD_ADDRESS_FILE": str(address_file), "PYTHONPATH": str(root)}
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), str(tmp_path / "test_held.py")],
        cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not address_file.exists():  # written by the held test, once the head serves
            assert run.poll() is None, run.communicate()[0][-3000:]
            assert time.monotonic() < deadline, "the nested run's head did not come up"
            time.sleep(0.1)
        node = ray_session.head_process(address_file.read_text())
        head = [node, *node.children(recursive=True)]  # the raylet, the GCS, the agents
        run.send_signal(signal.SIGINT)
        output = run.communicate(timeout=120)[0]
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == pytest.ExitCode.INTERRUPTED, output[-3000:]
    _, alive = psutil.wait_procs(head, timeout=60)
    assert not alive, [" ".join(p.cmdline())[:200] for p in alive if p.is_running()]
