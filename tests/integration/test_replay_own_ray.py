"""A plain `log-replay` (no RAY_ADDRESS) starts a Ray of its own, whatever head Ray last recorded on the machine.

A bare `ray.init()` joins the head named in <ray temp dir>/ray_current_cluster, which `ray start --head`
writes and nothing removes when that head dies: a replay then spent minutes trying to reach a dead GCS. Here
that file names a port nobody listens on, in a Ray temp dir of the test's own (RAY_TMPDIR), so the machine's
/tmp/ray (other sessions' Ray) is not touched.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from devstack.generator import GeneratorConfig, write_dataset
from devstack.provision import LocalEnvironment
from devstack.server import free_port

pytestmark = [pytest.mark.integration, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
# A local Ray starts in seconds here, and this replay delivers a handful of objects; trying a dead GCS took
# over nine minutes. Far below that, far above a cold start on a loaded 2-core machine.
PROMPT_S = 150


@pytest.fixture
def stale_ray_tmpdir() -> Iterator[Path]:
    # Short: Ray's socket paths under it have a length limit.
    root = Path("/tmp") / f"r28{secrets.token_hex(3)}"
    (root / "ray").mkdir(parents=True)
    (root / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}\n")  # a head that is gone
    yield root
    shutil.rmtree(root, ignore_errors=True)


def test_a_plain_replay_starts_its_own_ray_beside_a_stale_head_record(
    local_aws: LocalEnvironment, tmp_path: Path, stale_ray_tmpdir: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    cfg = GeneratorConfig(
        since=now - timedelta(hours=1),
        until=now - timedelta(minutes=5),
        tenants=("acme",),
        applications=("payment-service",),
        pods_per_app=1,
        objects_per_pod=2,
        events_per_object=5,
        seed=28,
    )
    manifest = write_dataset(cfg, local_aws.names.bucket, s3=local_aws.client("s3"))
    report = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | local_aws.env
    env["RAY_TMPDIR"] = str(stale_ray_tmpdir)
    cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), "--tenant", "acme", "--since", "2h"]
    cmd += ["--workers", "1", "--no-progress", "--report", str(report)]
    started = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=PROMPT_S)
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = orjson.loads(report.read_bytes())
    want = sum(len(o.expected or []) for o in manifest.objects)
    assert want > 0 and doc["events_delivered"] == want
    # It ran on a Ray it started under its own temp dir: a session of its own is there.
    assert list((stale_ray_tmpdir / "ray").glob("session_*")), f"no Ray session of its own ({took:.0f}s)"
