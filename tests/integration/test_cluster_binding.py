"""Cluster binding (CONTRACTS.md §3 `clusters`), end to end on the moto server, consumer and replay paths.

A tenant is a namespace name, and the same name can exist in any cluster that ships logs. The tenant
`stark` has both deliveries (CloudWatch and S3) bound to `clusters: [prod-1]`; the same namespace also
runs in `prod-2`. Objects from `prod-2` must reach neither destination, be reported with the reason
`cluster 'prod-2' is not allowed for tenant 'stark'`, and never be retried. Nothing of the project is
mocked: the consumer is the real `python -m jobs.consumer --mode sqs` fed by S3 → SNS → SQS, the replay
is `jobs/replay.py` on a local Ray, and what arrived is read back from the tenant's own account.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from devstack import generator as gen
from devstack.provision import LocalEnvironment, SampleBucket, SampleTenant, add_tenants
from devstack.readback import read_bucket, read_group
from pipeline.ledger import Ledger
from tests.support.consumer_process import ConsumerProcess, queue_counts, queue_empty, wait_for
from tests.support.replay_cli import run_replay_cli

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STARK = SampleTenant("stark", "777777777777", clusters=("prod-1",), s3=SampleBucket())
REASON = "cluster 'prod-2' is not allowed for tenant 'stark'"


@pytest.fixture
def stark(local_aws: LocalEnvironment) -> LocalEnvironment:
    add_tenants(local_aws, [STARK])
    local_aws.tenants = (*local_aws.tenants, STARK)
    return local_aws


def write_both_clusters(local: LocalEnvironment) -> gen.Manifest:
    now = datetime.now(UTC).replace(microsecond=0)
    cfg = gen.GeneratorConfig(
        since=now - timedelta(minutes=20),
        until=now - timedelta(minutes=2),
        tenants=("stark",),
        clusters=("prod-1", "prod-2"),
        applications=("payment-service",),
        objects_per_pod=2,
        events_per_object=10,
        message_bytes=120,
        seed=61,
    )
    manifest = gen.write_dataset(cfg, local.names.bucket, s3=local.client("s3"))
    assert {k.split("/")[0] for k in manifest.keys} == {"prod-1", "prod-2"}
    return manifest


def split(manifest: gen.Manifest) -> tuple[set[str], set[str]]:
    """(keys from prod-1, keys from prod-2)."""
    return {k for k in manifest.keys if k.startswith("prod-1/")}, {k for k in manifest.keys if k.startswith("prod-2/")}


def assert_only_prod_1_arrived(local: LocalEnvironment, manifest: gen.Manifest) -> None:
    allowed, _ = split(manifest)
    by_key = manifest.by_key()
    group = read_group(local.tenant_logs("stark"), STARK.log_group)
    got = sorted(ev for events in group.values() for ev in events)
    want = sorted(ev for k in allowed for ev in by_key[k].expected or [])
    assert got == want
    stored = read_bucket(local.tenant_s3("stark"), STARK.bucket)
    assert {k.rsplit("/", 1)[1] for k in stored} == {k.rsplit("/", 1)[1] for k in allowed}
    assert {e.object_key for e in Ledger(local.names.ledger_table).entries("stark")} == allowed


# --------------------------------------------------------------------------------------------------------
# The consumer


@pytest.fixture
def consumer(stark: LocalEnvironment, tmp_path: Path) -> Iterator[ConsumerProcess]:
    # A short visibility timeout: a message the consumer did not acknowledge would be back within seconds.
    stark.client("sqs").set_queue_attributes(QueueUrl=stark.queue_url, Attributes={"VisibilityTimeout": "3"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | stark.env
    args = ["--wait-time", "1", "--heartbeat-interval", "1", "--retry-delay", "0", "--workers", "4"]
    c = ConsumerProcess(env, tmp_path / "consumer.log", args)
    yield c.wait_ready()
    c.kill()


def test_the_consumer_reports_objects_of_another_cluster_and_neither_delivers_nor_retries_them(
    stark: LocalEnvironment, consumer: ConsumerProcess
) -> None:
    manifest = write_both_clusters(stark)
    allowed, refused = split(manifest)
    ledger = Ledger(stark.names.ledger_table)
    wait_for(lambda: {e.object_key for e in ledger.entries("stark")} >= allowed, 60, "prod-1 to be delivered")
    wait_for(lambda: queue_empty(stark), 30, "every message to be acknowledged")
    time.sleep(4)  # past the visibility timeout: an unacknowledged message would have come back by now
    assert queue_counts(stark, stark.queue_url) == (0, 0)
    assert queue_counts(stark, stark.dlq_url) == (0, 0)

    assert_only_prod_1_arrived(stark, manifest)
    lines = [r for r in consumer.logs() if r.get("object_key") in refused]
    # Reported once each (never retried), with the reason, per delivery too: not silent.
    assert sorted(r["object_key"] for r in lines) == sorted(refused)
    for r in lines:
        assert (r["status"], r["reason"]) == ("skipped", REASON)
        assert r["msg"] == f"object skipped: {REASON}"
        assert {(d["delivery_id"], d["status"], d["reason"]) for d in r["deliveries"]} == {
            ("cloudwatch", "skipped", REASON),
            ("s3-archive", "skipped", REASON),
        }
    assert consumer.metric("logdelivery_objects_total", tenant="stark", status="skipped") == len(refused)
    assert consumer.metric("logdelivery_objects_total", tenant="stark", status="delivered") == len(allowed)


# --------------------------------------------------------------------------------------------------------
# The replay


def replay(local: LocalEnvironment, *args: str, report: Path | None = None) -> tuple[int, dict[str, Any], str]:
    cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), *args, "--no-progress", "--workers", "1"]
    if report is not None:
        cmd += ["--report", str(report)]
    proc = run_replay_cli(cmd, {**os.environ, **local.env}, 300)
    doc = orjson.loads(report.read_bytes()) if report is not None and report.exists() else {}
    return proc.returncode, doc, proc.stdout + proc.stderr


@pytest.mark.ray
@pytest.mark.usefixtures("shared_ray")
def test_the_replay_reports_objects_of_another_cluster_and_neither_delivers_nor_fails_them(
    stark: LocalEnvironment, tmp_path: Path
) -> None:
    manifest = write_both_clusters(stark)
    allowed, refused = split(manifest)

    code, _, out = replay(stark, "--tenant", "stark", "--since", "30m", "--dry-run")
    assert code == 0, out
    assert f"Skipped: {len(refused)} objects: {REASON}" in out

    code, doc, out = replay(stark, "--tenant", "stark", "--since", "30m", report=tmp_path / "report.json")
    assert code == 0, out  # skipped, not failed: nothing to rerun
    assert doc["objects_failed"] == []
    assert sorted(s["key"] for s in doc["objects_skipped"] if s["reason"] == REASON) == sorted(refused)
    assert doc["objects_delivered"] == len(allowed)
    for section in doc["deliveries"]:
        assert section["objects_skipped"].get(REASON) == len(refused), section
        assert section["objects_failed_count"] == 0
    assert_only_prod_1_arrived(stark, manifest)

    # A rerun sends nothing: prod-1 is in the ledger, prod-2 is refused again, and again reported.
    code, doc, out = replay(stark, "--tenant", "stark", "--since", "30m", report=tmp_path / "again.json")
    assert code == 0, out
    assert doc["objects_delivered"] == 0
    assert sorted(s["key"] for s in doc["objects_skipped"] if s["reason"] == REASON) == sorted(refused)
    assert_only_prod_1_arrived(stark, manifest)
