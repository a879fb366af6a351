"""A replay that joins a cluster (RAY_ADDRESS) and is not told its size has one worker per CPU of the cluster.

The tests that share the run's Ray head (`shared_ray`) are told their size (REPLAY_WORKERS: the head has room for
the replays of all xdist workers at once, tests/support/ray_session.py), so this branch of
`pipeline.replay.job.default_workers` is checked here, against the head's own `--num-cpus`.
"""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.ray]


def head_cpus(gcs: str) -> int:
    """The --num-cpus of the `ray start --head` that listens on the head's GCS port, from its command line."""
    port = gcs.rsplit(":", 1)[1]
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info.get("cmdline") or []
        if "start" in args and "--head" in args and f"--port={port}" in args:
            return int(next(a for a in args if a.startswith("--num-cpus=")).split("=", 1)[1])
    raise AssertionError(f"no `ray start --head --port={port}` process")


def test_a_replay_joining_a_cluster_without_replay_workers_has_one_worker_per_cpu_of_the_cluster(
    ray_head: str,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "REPLAY_WORKERS"}
    env |= {"RAY_ADDRESS": ray_head, "RAY_AUTH_MODE": "disabled"}
    code = "from pipeline.replay.job import default_workers\nprint(default_workers())"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip().splitlines()[-1]) == head_cpus(ray_head)
