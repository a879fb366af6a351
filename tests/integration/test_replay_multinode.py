"""The replay on a real multi-node Ray, the way KubeRay runs it: a head with no CPUs (`ray start --head
--num-cpus 0`), the job submitted with `ray job submit`, and worker nodes that join only after the job
started. The job is sized by REPLAY_WORKERS (what the cluster can grow to), its workers wait as resource
demands (what an autoscaler scales up for), then run on the nodes that joined, and the report lands in
the central bucket's reports/ prefix."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from devstack import generator as gen
from devstack.localray import RAY, LocalRay, wait_for
from devstack.provision import LocalEnvironment
from pipeline.replay.workers import worker_options
from pipeline.storage import REPORTS_PREFIX

pytestmark = [pytest.mark.integration, pytest.mark.ray]

REPO = Path(__file__).resolve().parents[2]
WORKERS = 2
WORKER_MEMORY_MIB = 64


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
