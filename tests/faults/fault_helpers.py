"""Helpers shared by the fault tests (pytest puts this folder on sys.path). Nothing of the project is mocked:
expectations come from the generator's manifest and the contracts, results are read back from the
tenants' own CloudWatch accounts, the ledger and the proxy's record of the wire."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import psutil
from botocore.exceptions import ClientError

from devstack import generator as gen
from devstack.faults import FaultProxy, Hold
from devstack.provision import LocalEnvironment, SampleTenant
from devstack.readback import read_group
from pipeline.ledger import Ledger
from pipeline.sinks.cloudwatch.limits import min_put_requests
from tests.support.consumer_process import (  # noqa: F401 -- re-exported to the fault tests
    ConsumerProcess,
    queue_counts,
    queue_empty,
    wait_for,
)

REPO = Path(__file__).resolve().parents[2]
Events = Counter[tuple[str, int, str]]


@dataclass
class FaultStack:
    local: LocalEnvironment  # straight to moto: setup and read-back
    proxy: FaultProxy
    env: dict[str, str]  # a subprocess environment whose AWS endpoint is the proxy

    @property
    def bucket(self) -> str:
        return self.local.names.bucket


def stream_of(key: str, ts_ms: int) -> str:
    _, _, app, pod, _ = key.split("/", 4)
    return f"{app}-{pod}-{datetime.fromtimestamp(ts_ms / 1000, UTC):%Y-%m-%d}"


def write(local: LocalEnvironment, minutes: int = 30, ago: timedelta = timedelta(minutes=2), **kw: Any) -> gen.Manifest:
    """Generated Vector objects in the central bucket, written between `minutes` and `ago` before now."""
    now = datetime.now(UTC).replace(microsecond=0)
    kw.setdefault("message_bytes", 200)
    cfg = gen.GeneratorConfig(since=now - timedelta(minutes=minutes), until=now - ago, **kw)
    return gen.write_dataset(cfg, local.names.bucket, s3=local.client("s3"), workers=8)


def expected(manifest: gen.Manifest, tenant: str, keys: Iterable[str] | None = None) -> Events:
    wanted = set(keys) if keys is not None else None
    out: Events = Counter()
    for o in manifest.objects:
        if o.key.split("/")[1] != tenant or (wanted is not None and o.key not in wanted):
            continue
        assert o.expected is not None
        out.update((stream_of(o.key, ts), ts, msg) for ts, msg in o.expected)
    return out


def delivered(local: LocalEnvironment, tenant: str) -> Events:
    """Every event in the tenant's group, read in the tenant's own account and region."""
    group = read_group(local.tenant_logs(tenant), local.tenant(tenant).log_group)
    return Counter((stream, ts, msg) for stream, evs in group.items() for ts, msg in evs)


def ledger_keys(local: LocalEnvironment, tenant: str) -> set[str]:
    return {e.object_key for e in Ledger(local.names.ledger_table).entries(tenant)}


def ledger_records(local: LocalEnvironment, tenant: str, delivery_id: str) -> set[str]:
    """The tenant's objects the ledger holds as delivered to one of its deliveries."""
    return {e.object_key for e in Ledger(local.names.ledger_table).entries(tenant) if e.delivery_id == delivery_id}


def s3_path(t: SampleTenant, source_key: str) -> str:
    """`/bucket/key` of a source object in the tenant's bucket, as `Call.path` shows a PutObject.

    CONTRACTS.md §8, written out here on purpose: prefix, tenant, application, pod, filename; no cluster.
    """
    assert t.s3 is not None, f"{t.tenant_id} has no S3 delivery"
    _cluster, tenant, app, pod, filename = source_key.split("/")
    return f"/{t.bucket}/{t.s3.prefix}{tenant}/{app}/{pod}/{filename}"


def ledger_count(local: LocalEnvironment) -> int:
    return int(local.client("dynamodb").scan(TableName=local.names.ledger_table, Select="COUNT")["Count"])


def objects_of(manifest: gen.Manifest, tenant: str) -> set[str]:
    return {k for k in manifest.keys if k.split("/")[1] == tenant}


def duplicated_keys(manifest: gen.Manifest, got: Events, tenant: str) -> dict[str, int]:
    """{object key: how many times its events arrived} for the objects that arrived more than once."""
    out: dict[str, int] = {}
    for o in manifest.objects:
        if o.key.split("/")[1] != tenant or not o.expected:
            continue
        counts = {got[(stream_of(o.key, ts), ts, msg)] for ts, msg in o.expected}
        if max(counts) > 1:
            out[o.key] = max(counts)
    return out


def accepted_batches(stack: FaultStack, manifest: gen.Manifest) -> list[set[str]]:
    """The objects each batch CloudWatch accepted held events of, from the proxy's record of the wire: the
    replay fills a batch across a pod's objects."""
    by_event = {(ts, msg): o.key for o in manifest.objects for ts, msg in o.expected or []}
    return [
        {by_event[(e["timestamp"], e["message"])] for e in orjson.loads(c.body)["logEvents"]}
        for c in stack.proxy.calls("logs", "PutLogEvents")
        if c.status == 200
    ]


def accepted_objects(stack: FaultStack, manifest: gen.Manifest) -> set[str]:
    """Objects of which CloudWatch accepted at least one event."""
    return set().union(*accepted_batches(stack, manifest))


def min_calls(manifest: gen.Manifest, tenant: str) -> int:
    """The fewest PutLogEvents calls the tenant's events need (`min_put_requests`, stream by stream)."""
    streams: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for o in manifest.objects:
        if o.key.split("/")[1] == tenant:
            for ts, msg in o.expected or []:
                streams[stream_of(o.key, ts)].append((ts, msg))
    return sum(min_put_requests(evs) for evs in streams.values())


# --------------------------------------------------------------------------------------------------------
# The replay CLI


def replay_cmd(*args: str, report: Path) -> list[str]:
    return [sys.executable, str(REPO / "jobs" / "replay.py"), *args, "--report", str(report), "--no-progress"]


def run_replay(stack: FaultStack, *args: str, report: Path, timeout: float = 240) -> tuple[int, dict[str, Any], str]:
    """Run the replay CLI to its end; on the session's Ray head when the test asked for it (`shared_ray` put
    RAY_ADDRESS in the environment, perhaps after `stack` was set up), else on a Ray of its own. There, a run
    not told its size (--workers) has the size `shared_ray` sets (REPLAY_WORKERS), not one worker per CPU of
    the shared head."""
    ray_vars = {k: v for k, v in os.environ.items() if k.startswith(("RAY_", "REPLAY_WORKERS"))}
    proc = subprocess.run(
        replay_cmd(*args, report=report),
        env=stack.env | ray_vars,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )
    doc = orjson.loads(report.read_bytes()) if report.exists() else {}
    return proc.returncode, doc, proc.stdout + proc.stderr


def kill_replay_mid_run(
    stack: FaultStack,
    *args: str,
    report: Path,
    when: Callable[[subprocess.Popen[Any]], None],
    holds: Iterable[Hold] = (),
) -> None:
    """Run the replay CLI, SIGKILL it with its local Ray (a lost pod) once `when(proc)` returns, open the
    `holds` and wait for the proxy to settle the requests it held (a held request whose client died is never
    forwarded)."""
    # Always on a Ray of its own, never the session's head: the kill takes the driver and its Ray together.
    proc = subprocess.Popen(
        replay_cmd(*args, report=report),
        env={k: v for k, v in stack.env.items() if k != "RAY_ADDRESS"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        when(proc)
        kill_tree(proc.pid)  # the driver, its raylet, GCS and workers, in the same instant
        proc.wait(30)
    finally:
        kill_group(proc)
        for hold in holds:
            hold.open()
    wait_for(lambda: stack.proxy.inflight() == 0, 30, "requests held by the proxy to be settled")


def kill_tree(pid: int) -> list[psutil.Process]:
    """SIGKILL a process this test started and every descendant, all at once (Ray starts its workers in
    their own process groups, so a group kill misses them); returns them, to wait on."""
    root = psutil.Process(pid)
    family = [root, *root.children(recursive=True)]
    for p in family:
        with contextlib.suppress(psutil.Error):
            p.send_signal(signal.SIGKILL)
    psutil.wait_procs(family, timeout=30)
    return family


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL what is left of a process group this test started (a replay and the local Ray it spawned)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


# --------------------------------------------------------------------------------------------------------
# The SQS consumer


def set_queue(stack: FaultStack, **attrs: str) -> None:
    stack.local.client("sqs").set_queue_attributes(QueueUrl=stack.local.queue_url, Attributes=attrs)


def allow_receives(stack: FaultStack, n: int) -> None:
    """Redrive to the DLQ only after `n` receives (production: 3), so a test that decides when a customer
    fixes their side does not race the redrive."""
    dlq_arn = stack.local.client("sqs").get_queue_attributes(QueueUrl=stack.local.dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    set_queue(stack, RedrivePolicy=json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(n)}))


def watch_receives(stack: FaultStack) -> None:
    """Keep the proxy's record of every ReceiveMessage answer, for `release_received`."""
    stack.proxy.keep_answers.add(("sqs", "ReceiveMessage"))


def release_received(stack: FaultStack) -> int:
    """Make every message a consumer received through the proxy (`watch_receives`) and did not delete
    visible again now, as SQS would after its visibility timeout: a killed consumer's messages come back at
    once, so a test can keep a long visibility timeout (no message comes back while a slow, loaded consumer
    still works on it) and still not wait it out. Returns how many came back."""
    latest: dict[str, str] = {}  # message id → its latest receipt handle (older ones are void)
    for c in stack.proxy.calls("sqs", "ReceiveMessage"):
        if c.status == 200 and c.answer:
            for m in orjson.loads(c.answer).get("Messages", []):
                latest[m["MessageId"]] = m["ReceiptHandle"]
    sqs = stack.local.client("sqs")
    back = 0
    for handle in latest.values():
        try:
            sqs.change_message_visibility(QueueUrl=stack.local.queue_url, ReceiptHandle=handle, VisibilityTimeout=0)
            back += 1
        except ClientError:  # deleted: the consumer finished it
            continue
    return back


def consumer_process(stack: FaultStack, log_path: Path, args: list[str]) -> ConsumerProcess:
    """A consumer subprocess whose clients go through the stack's fault proxy, polling fast."""
    return ConsumerProcess(stack.env, log_path, ["--wait-time", "1", "--heartbeat-interval", "0.4", *args])
