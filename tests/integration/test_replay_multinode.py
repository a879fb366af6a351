"""The replay on a real multi-node Ray, the way KubeRay runs it: a head with no CPUs (`ray start --head
--num-cpus 0`), the job submitted with `ray job submit`, and worker nodes that join only after the job
started. The job is sized by REPLAY_WORKERS (what the cluster can grow to), its workers wait as resource
demands (what an autoscaler scales up for), then run on the nodes that joined, and the report lands in
the central bucket's reports/ prefix."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from pipeline.local import generator as gen
from pipeline.local.provision import LocalEnvironment
from pipeline.local.server import free_port
from pipeline.replay.workers import worker_options

pytestmark = [
    pytest.mark.integration,
    pytest.mark.ray,
    # The head, the job submission and the pending workers' demands work (the first half of this test
    # passes); worker nodes started on the same host then time out joining the head (raylet "Failed to get
    # node info: Deadline Exceeded") on a 2-core machine. Until that is solved this stays out of `make test`.
    pytest.mark.skip(reason="worker nodes on one host time out joining the head: see the comment above"),
]

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
WORKERS = 2
WORKER_MEMORY_MIB = 64


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.5)


class LocalRay:
    """A head and worker nodes, each a `ray start --block` child, so stopping them stops only this cluster."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.temp = Path("/tmp") / f"rmn{secrets.token_hex(3)}"  # short: Ray's socket paths have a length limit
        self.port, self.dashboard_port = free_port(), free_port()
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.last_error = ""

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def _start(self, args: list[str], name: str) -> None:
        log = open(self.temp.parent / f"{self.temp.name}-{name}.log", "wb")  # noqa: SIM115 -- lives with the node
        self.nodes.append(subprocess.Popen([RAY, "start", "--block", *args], env=self.env, stdout=log, stderr=log))

    def query(self, code: str) -> Any:
        """Run Python against the cluster in a child that has the cluster's token (Ray reads it once per
        process); the JSON the code prints last."""
        proc = subprocess.run(
            [sys.executable, "-c", f"import json\nADDRESS = {self.dashboard!r}\n{code}"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-1500:])
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def start_head(self) -> None:
        self._start(
            [
                "--head",
                "--num-cpus=0",
                f"--port={self.port}",
                "--node-ip-address=127.0.0.1",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--temp-dir={self.temp}",
                "--disable-usage-stats",
            ],
            "head",
        )

        def up() -> bool:
            try:
                self.query("from ray.job_submission import JobSubmissionClient as C\nC(ADDRESS)\nprint('true')")
            except RuntimeError as exc:  # not serving yet
                self.last_error = str(exc)
                return False
            return True

        try:
            wait_for(up, 120, "the Ray head's dashboard")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.last_error}") from None

    def add_worker(self, n: int) -> None:
        self._start(
            [
                f"--address=127.0.0.1:{self.port}",
                "--num-cpus=1",
                f"--memory={1024 * 1024 * 1024}",
                "--node-ip-address=127.0.0.1",
                # Nodes on one host share the head's session directory.
                f"--temp-dir={self.temp}",
                "--disable-usage-stats",
            ],
            f"worker{n}",
        )

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.wait(45)
            except subprocess.TimeoutExpired:
                node.kill()
        # Anything of this cluster left behind (its processes name its temp dir); nothing else is touched.
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if str(self.temp) in cmdline and proc.pid != os.getpid():
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture
def cluster(local_aws: LocalEnvironment) -> Iterator[LocalRay]:
    # Token authentication, as the RayCluster and RayJobs run (authOptions): every node, the submitter and
    # the clients present the same token.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))} | local_aws.env | auth
    ray = LocalRay(env)
    try:
        ray.start_head()
        yield ray
    finally:
        ray.stop()


def actors(ray: LocalRay) -> list[dict[str, Any]]:
    return ray.query(
        "from dataclasses import asdict\nfrom ray.util.state import list_actors\n"
        "found = list_actors(address=ADDRESS, filters=[('class_name', '=', 'DeliveryWorker')], detail=True)\n"
        "print(json.dumps([asdict(a) for a in found], default=str))"
    )


def nodes(ray: LocalRay) -> list[dict[str, Any]]:
    return ray.query(
        "from dataclasses import asdict\nfrom ray.util.state import list_nodes\n"
        "print(json.dumps([asdict(n) for n in list_nodes(address=ADDRESS, detail=True)], default=str))"
    )


def job(ray: LocalRay, job_id: str) -> dict[str, str]:
    return ray.query(
        "from ray.job_submission import JobSubmissionClient as C\nc = C(ADDRESS)\n"
        f"print(json.dumps({{'status': str(c.get_job_status({job_id!r})), 'logs': c.get_job_logs({job_id!r})}}))"
    )


def test_a_job_on_an_empty_cluster_asks_for_its_workers_and_spreads_over_nodes_that_join(
    cluster: LocalRay, local_aws: LocalEnvironment
) -> None:
    now = datetime.now(UTC)
    cfg = gen.GeneratorConfig(
        since=now - timedelta(minutes=50),
        until=now - timedelta(minutes=5),
        tenants=("acme",),
        applications=("payment-service", "frontend"),
        pods_per_app=2,
        objects_per_pod=4,
        # Enough bytes for the plan to make a unit per worker and more (units are at least 256 KiB).
        events_per_object=4000,
        seed=11,
    )
    objects = gen.write_dataset(cfg, local_aws.names.bucket, s3=local_aws.client("s3")).objects
    runtime_env = {"env_vars": {**local_aws.env, "REPLAY_WORKERS": str(WORKERS)}}
    entrypoint = (
        f"{sys.executable} {REPO / 'jobs' / 'replay.py'} --tenant acme --since 1h --no-progress "
        f"--worker-memory {WORKER_MEMORY_MIB} --report s3://{{bucket}}/reports/"
    )
    job_id = f"replay-{secrets.token_hex(3)}"
    submit = subprocess.run(
        [
            *(RAY, "job", "submit", "--address", cluster.dashboard, "--submission-id", job_id, "--no-wait"),
            *("--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint.split()),
        ],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert submit.returncode == 0, submit.stdout + submit.stderr

    # No node can hold a worker yet: the job's workers wait as resource demands, each for what it uses.
    def requested() -> list[dict[str, Any]]:
        j = job(cluster, job_id)
        assert not j["status"].endswith(("FAILED", "STOPPED", "SUCCEEDED")), j["logs"][-1200:]
        found = actors(cluster)
        return found if len(found) == WORKERS else []

    pending = wait_for(requested, 120, "the job's workers to be requested")
    wanted = worker_options(WORKER_MEMORY_MIB)
    for actor in pending:
        assert actor["state"] in ("PENDING_CREATION", "DEPENDENCIES_UNREADY"), actor["state"]
        assert actor["required_resources"]["CPU"] == wanted["num_cpus"]
        assert actor["required_resources"]["memory"] == wanted["memory"]

    for n in range(WORKERS):
        cluster.add_worker(n)

    final = ("SUCCEEDED", "FAILED", "STOPPED")
    done = wait_for(
        lambda: (j := job(cluster, job_id))["status"].rsplit(".", 1)[-1] in final and j,
        240,
        "the replay job to finish",
    )
    assert done["status"].endswith("SUCCEEDED"), done["logs"][-3000:]

    head_node = next(n for n in nodes(cluster) if n["is_head_node"])["node_id"]
    placed = {a["node_id"] for a in actors(cluster)}
    assert len(placed) == WORKERS and head_node not in placed, placed

    s3 = local_aws.client("s3")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=local_aws.names.bucket, Prefix="reports/")["Contents"]]
    assert len(keys) == 1 and keys[0].startswith("reports/replay-") and keys[0].endswith(".json")
    report = orjson.loads(s3.get_object(Bucket=local_aws.names.bucket, Key=keys[0])["Body"].read())
    assert report["objects_delivered"] == len(objects)
    assert report["objects_failed"] == []
