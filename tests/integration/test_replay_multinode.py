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
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from devstack import generator as gen
from devstack.provision import LocalEnvironment
from devstack.server import free_port
from pipeline.replay.workers import worker_options
from pipeline.storage import REPORTS_PREFIX
from tests.support.consumer_process import wait_for as poll_until

pytestmark = [pytest.mark.integration, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")
WORKERS = 2
WORKER_MEMORY_MIB = 64
# Each node's object store is a /dev/shm file sized by default at 30% of the machine's memory (6.6 GB here):
# three nodes on one host would take most of /dev/shm, or all of a container's small one. The job's objects
# are small.
OBJECT_STORE_BYTES = 128 * 1024 * 1024


# The state API and `ray status` are subprocesses and RPCs: twice a second is often enough.
wait_for = partial(poll_until, interval=0.5)


class LocalRay:
    """A head and worker nodes, each a `ray start --block` child, so stopping them stops only this cluster."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.temp = Path("/tmp") / f"rmn{secrets.token_hex(3)}"  # short: Ray's socket paths have a length limit
        self.port, self.dashboard_port = free_port(), free_port()
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}
        self.last_error = ""

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], name: str, temp: Path) -> None:
        path = self.temp.parent / f"{self.temp.name}-{name}.log"
        log = open(path, "wb")  # noqa: SIM115 -- lives with the node
        # Each node has a temp dir of its own. In a shared one, nodes starting at once pick their socket and
        # log names by checking which exist, race, and the loser's plasma store dies on "bind: Address
        # already in use": its raylet never registers, and `ray start` fails with "Failed to get node info"
        # (ray-project/ray#10154). The agents' HTTP port is per node too, not the default 52365 they would
        # all try to bind.
        common = [
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
        ]
        proc = subprocess.Popen([RAY, "start", "--block", *args, *common], env=self.env, stdout=log, stderr=log)
        self.nodes.append(proc)
        self.logs[proc.pid] = path

    def check_nodes(self) -> None:
        """Fail at once, with its log, when a node's `ray start` has exited, rather than at a later timeout."""
        for node in self.nodes:
            if node.poll() is not None:
                tail = self.logs[node.pid].read_text(errors="replace")[-2000:]
                raise AssertionError(f"a Ray node exited with {node.returncode}:\n{tail}")

    def query(self, code: str) -> Any:
        """Run Python against the cluster in a child that has the cluster's token (Ray reads it once per
        process); the JSON the code prints last."""
        proc = subprocess.run(
            [sys.executable, "-c", f"import json\nADDRESS = {self.dashboard!r}\nGCS = {self.gcs!r}\n{code}"],
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
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
            ],
            "head",
            self.temp,
        )

        def up() -> bool:
            self.check_nodes()
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
            [f"--address={self.gcs}", "--num-cpus=1", f"--memory={1024 * 1024 * 1024}"],
            f"worker{n}",
            self.temp / f"w{n}",
        )

    def wait_for_workers(self, count: int) -> set[str]:
        """The node ids of `count` worker nodes once all are alive."""

        def joined() -> set[str]:
            self.check_nodes()
            alive = {n["node_id"] for n in nodes(self) if n["state"] == "ALIVE" and not n["is_head_node"]}
            return alive if len(alive) == count else set()

        found: set[str] = wait_for(joined, 90, f"{count} worker nodes to join")
        return found

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
    # A node that fails to stop cleanly must not hold the teardown for Ray's default 30 s drain.
    quick_stop = {"RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5"}
    env = (
        {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))} | local_aws.env | auth | quick_stop
    )
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


def unit_nodes(ray: LocalRay) -> list[str]:
    """The node each finished work unit (a DeliveryWorker.run call) ran on."""
    return ray.query(
        "from ray.util.state import list_tasks\n"
        "found = list_tasks(address=ADDRESS, filters=[('func_or_class_name', '=', 'DeliveryWorker.run')], "
        "detail=True, limit=10000)\n"
        "print(json.dumps([t.node_id for t in found if t.state == 'FINISHED']))"
    )


def actor_demands(ray: LocalRay) -> list[tuple[dict[str, float], int]]:
    """What the autoscaler is asked for: the cluster's pending task and actor demands, (shape, count)."""
    return [
        (bundle, count)
        for bundle, count in ray.query(
            "from ray.autoscaler.v2.sdk import get_cluster_status\n"
            "status = get_cluster_status(GCS)\n"
            "print(json.dumps([(dict(b.bundle), b.count) for d in status.resource_demands.ray_task_actor_demand "
            "for b in d.bundles_by_count]))"
        )
    ]


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
        f"--worker-memory {WORKER_MEMORY_MIB} --report s3://{{bucket}}/{REPORTS_PREFIX}"
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

    # What an autoscaler (KubeRay's) scales up for: the workers the job was sized for, each of its shape.
    shape = {"CPU": float(wanted["num_cpus"]), "memory": float(wanted["memory"])}
    demanded = wait_for(
        lambda: sum(count for bundle, count in actor_demands(cluster) if bundle == shape),
        60,
        "the autoscaler to see the workers' demands",
    )
    assert demanded == WORKERS, actor_demands(cluster)

    for n in range(WORKERS):
        cluster.add_worker(n)
    joined = cluster.wait_for_workers(WORKERS)

    final = ("SUCCEEDED", "FAILED", "STOPPED")
    done = wait_for(
        lambda: (j := job(cluster, job_id))["status"].rsplit(".", 1)[-1] in final and j,
        240,
        "the replay job to finish",
    )
    assert done["status"].endswith("SUCCEEDED"), done["logs"][-3000:]

    # One worker on each node that joined, none on the head.
    placed = [a["node_id"] for a in actors(cluster)]
    assert sorted(placed) == sorted(joined), (placed, joined)

    s3 = local_aws.client("s3")
    listed = s3.list_objects_v2(Bucket=local_aws.names.bucket, Prefix=REPORTS_PREFIX)["Contents"]
    keys = [o["Key"] for o in listed]
    assert len(keys) == 1 and keys[0].startswith(f"{REPORTS_PREFIX}replay-") and keys[0].endswith(".json")
    report = orjson.loads(s3.get_object(Bucket=local_aws.names.bucket, Key=keys[0])["Body"].read())
    assert report["objects_delivered"] == len(objects)
    assert report["objects_failed"] == []

    # Every unit ran on a node that joined, and each of those nodes ran some (task events arrive late).
    units = report["work_units"]
    assert units > WORKERS

    def all_units() -> list[str]:
        found = unit_nodes(cluster)
        return found if len(found) == units else []

    ran = wait_for(all_units, 30, "every unit's task")
    assert set(ran) == joined, (ran, joined)
