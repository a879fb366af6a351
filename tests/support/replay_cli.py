"""Running the replay CLI (`jobs/replay.py`) from a test, on the session's Ray head where the test joined it.

A test that asks for `shared_ray` (tests/conftest.py) has RAY_ADDRESS in its environment, and a replay it
starts joins that head instead of cold-starting a Ray of its own. A dry run is the exception: without
RAY_ADDRESS it must run with no Ray at all (the listing on threads), so it runs without the address, under a
Ray temp dir of its own that is checked afterwards to hold no Ray session.
"""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path


def run_replay_cli(cmd: Sequence[str], env: Mapping[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    if "--dry-run" not in cmd:
        return subprocess.run(list(cmd), env=dict(env), capture_output=True, text=True, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="rdry", dir="/tmp") as tmp:
        dry = {k: v for k, v in env.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": tmp}
        proc = subprocess.run(list(cmd), env=dry, capture_output=True, text=True, timeout=timeout)
        started = sorted(p.name for p in Path(tmp).glob("ray/session_*"))
        assert not started, f"a dry run started a Ray of its own: {started}\n{proc.stderr[-2000:]}"
    return proc
