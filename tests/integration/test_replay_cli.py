"""The replay CLI as a user runs it: a subprocess, a real moto server over HTTP, a real local Ray.

Expectations are computed from the generator's manifest and an independent reading of the contracts
(stream = {app}-{pod}-{UTC date}, window on each event's own timestamp), never from the code under test.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from devstack.faults import FaultProxy, Hold, Rule
from devstack.generator import GeneratorConfig, Manifest, write_dataset
from devstack.provision import LocalEnvironment
from devstack.readback import read_group
from pipeline.replay.report import INTERRUPTED
from pipeline.storage import REPORTS_PREFIX
from tests.support.replay_cli import run_replay_cli

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.usefixtures("shared_ray")]

REPO = Path(__file__).resolve().parents[2]
APPS = ("payment-service", "frontend", "checkout")


def replay(env: LocalEnvironment, *args: str, report: Path, timeout: float = 300) -> tuple[int, dict[str, Any], str]:
    cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), *args, "--report", str(report), "--no-progress"]
    proc = run_replay_cli(cmd, {**os.environ, **env.env}, timeout)
    doc = orjson.loads(report.read_bytes()) if report.exists() else {}
    return proc.returncode, doc, proc.stdout + proc.stderr


def stream_of(key: str, ts_ms: int) -> str:
    _, _, app, pod, _ = key.split("/", 4)
    return f"{app}-{pod}-{datetime.fromtimestamp(ts_ms / 1000, UTC):%Y-%m-%d}"


def expected_events(manifest: Manifest, tenant: str, apps: tuple[str, ...], lo: int, hi: int) -> Counter:
    out: Counter = Counter()
    for o in manifest.objects:
        parts = o.key.split("/")
        if parts[1] != tenant or parts[2] not in apps:
            continue
        assert o.expected is not None
        for ts, msg in o.expected:
            if lo <= ts < hi:
                out[(stream_of(o.key, ts), ts, msg)] += 1
    return out


def delivered_events(env: LocalEnvironment, tenant: str) -> Counter:
    t = env.tenant(tenant)
    group = read_group(env.tenant_logs(tenant), t.log_group)
    return Counter((stream, ts, msg) for stream, evs in group.items() for ts, msg in evs)


def readable_prefix(body: bytes) -> list[dict[str, Any]]:
    """An independent reading of a truncated gzip: complete lines only."""
    data = zlib.decompressobj(31).decompress(body)
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


@pytest.fixture
def window() -> tuple[datetime, datetime, datetime]:
    now = datetime.now(UTC).replace(microsecond=0)
    return now, now - timedelta(hours=4), now - timedelta(hours=2)


def test_replay_delivers_each_tenant_exactly_its_window(
    local_aws: LocalEnvironment, tmp_path: Path, window: tuple[datetime, datetime, datetime]
) -> None:
    now, since, until = window
    cfg = GeneratorConfig(
        since=now - timedelta(hours=6),
        until=now - timedelta(minutes=5),
        tenants=("acme", "globex", "initech"),
        clusters=("prod-1", "prod-2"),
        applications=APPS,
        pods_per_app=1,
        objects_per_pod=6,
        events_per_object=15,
        seed=11,
    )
    s3 = local_aws.client("s3")
    bucket = local_aws.names.bucket
    manifest = write_dataset(cfg, bucket, s3=s3)

    # Planted inside the window for acme: a truncated gzip, a key the layout rejects, garbage lines.
    write_time = since + timedelta(minutes=30)
    stamp = write_time.strftime("%Y%m%d-%H%M%S")
    ts = (write_time - timedelta(seconds=10)).isoformat().replace("+00:00", "Z")
    records = [{"message": f"truncated-{i}", "timestamp": ts} for i in range(200)]
    full = gzip.compress(b"\n".join(orjson.dumps(r) for r in records) + b"\n")
    truncated_key = f"prod-1/acme/payment-service/damaged-pod/{stamp}-trunc.json.gz"
    s3.put_object(Bucket=bucket, Key=truncated_key, Body=full[: len(full) - 40])
    bad_key = f"prod-1/acme/payment-service/bad pod/{stamp}-x.json.gz"
    s3.put_object(Bucket=bucket, Key=bad_key, Body=full)
    garbage_key = f"prod-2/acme/frontend/garbage-pod/{stamp}-g.json.gz"
    garbage = b'{"message":"good-1","timestamp":"' + ts.encode() + b'"}\nnot json at all\n{"message":"good-2"'
    garbage += b',"timestamp":"' + ts.encode() + b'"}\n{broken\n'
    s3.put_object(Bucket=bucket, Key=garbage_key, Body=gzip.compress(garbage))

    report = tmp_path / "report.json"
    code, doc, output = replay(
        local_aws,
        *("--tenant", "acme", "--tenant", "globex", "--tenant", "initech"),
        *("--since", since.isoformat(), "--until", until.isoformat(), "--workers", "2"),
        *("--worker-memory", "16"),  # the smallest budget still delivers everything, a few objects at a time
        report=report,
    )
    assert code == 1, output  # the planted damaged objects fail the run, and nothing else does
    failed = {f["key"]: f["reason"] for f in doc["objects_failed"]}
    assert set(failed) == {truncated_key, bad_key}, output
    assert "truncated" in failed[truncated_key]
    assert "pod" in failed[bad_key]

    lo, hi = int(since.timestamp() * 1000), int(until.timestamp() * 1000)
    want_acme = expected_events(manifest, "acme", APPS, lo, hi)
    # The readable part of the truncated object is delivered; its cut-off last line is not.
    for r in readable_prefix(full[: len(full) - 40]):
        t = int(datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")).timestamp() * 1000)
        want_acme[(stream_of(truncated_key, t), t, r["message"])] += 1
    for msg in ("good-1", "good-2"):
        t = int(datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() * 1000)
        want_acme[(stream_of(garbage_key, t), t, msg)] += 1

    got_acme = delivered_events(local_aws, "acme")
    assert got_acme == want_acme  # exactly the window, once each, in the right streams
    got_globex = delivered_events(local_aws, "globex")
    assert got_globex == expected_events(manifest, "globex", ("payment-service", "frontend"), lo, hi)
    assert not any(s.startswith("checkout-") for s, _, _ in got_globex)  # filtered by desired_logs
    assert delivered_events(local_aws, "initech") == Counter()  # disabled tenant
    # Nothing landed in the central account, and no tenant's messages appear in another's account.
    assert local_aws.client("logs").describe_log_groups()["logGroups"] == []
    acme_msgs = {m for _, _, m in got_acme}
    assert not acme_msgs & {m for _, _, m in got_globex}

    assert doc["events_delivered"] == sum(got_acme.values()) + sum(got_globex.values())
    assert doc["tenants"]["acme"]["events_delivered"] == sum(got_acme.values())
    assert doc["lines_malformed"] == 2
    assert doc["events_filtered"] > 0  # objects straddling the window bounds had events outside it
    skipped = Counter(s["reason"] for s in doc["objects_skipped"])
    assert any("disabled" in r for r in skipped)
    assert any("desired_logs" in r for r in skipped)
    assert doc["objects_listed"] >= doc["objects_delivered"] + len(doc["objects_failed"])

    # Run again: the ledger makes it a no-op, and CloudWatch is unchanged.
    # Its own report file: a rerun that fails before writing one must not be read as the first run's.
    _, doc2, output2 = replay(
        local_aws,
        *("--tenant", "acme", "--since", since.isoformat(), "--until", until.isoformat()),
        report=tmp_path / "rerun.json",
    )
    assert doc2, output2[-3000:]
    assert doc2["objects_delivered"] == 0, output2[-1500:]
    assert doc2["objects_skipped_ledger"] == doc["tenants"]["acme"]["objects_delivered"] + 1  # + the damaged one
    assert delivered_events(local_aws, "acme") == want_acme


def test_interrupted_replay_resumes_without_duplicates_or_gaps(
    local_aws: LocalEnvironment, tmp_path: Path, window: tuple[datetime, datetime, datetime]
) -> None:
    now, _, _ = window
    since, until = now - timedelta(hours=3), now
    cfg = GeneratorConfig(
        since=since,
        until=now - timedelta(minutes=1),
        tenants=("acme",),
        applications=APPS,
        pods_per_app=6,  # more pods than a worker's pod threads: some are still waiting to start when stopped
        objects_per_pod=4,
        events_per_object=25,
        seed=5,
    )
    manifest = write_dataset(cfg, local_aws.names.bucket, s3=local_aws.client("s3"))
    total_objects = len(manifest.objects)
    args = ("--tenant", "acme", "--since", since.isoformat(), "--until", until.isoformat(), "--workers", "1")
    report1 = tmp_path / "first.json"
    cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), *args, "--report", str(report1), "--no-progress"]
    # "Mid-run" is decided by events, not by how fast the machine is. Every PutLogEvents waits at a proxy hold
    # until the test lets it go: four go at once (at least one pod's objects delivered and recorded, whether
    # its stream needs a refused put and a create first or not), then the run is stopped while a put is held,
    # so objects are in flight and pods not started. The holds open only once the driver says it is stopping,
    # and one put a second (the rate limit) leaves the stop far more time to reach the worker than it needs,
    # so the run cannot deliver everything before it stops.
    cmd += ["--max-requests-per-second", "1"]
    hold = Hold()
    with FaultProxy(local_aws.endpoint_url) as proxy:
        proxy.add(Rule(hold, service="logs", operation="PutLogEvents"))
        hold.release(4)
        # On a Ray of its own, as before the shared head: the interrupted run's workers go with it, so the
        # report, written as it ends, can be held to what the ledger has.
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | local_aws.env
        env["AWS_ENDPOINT_URL_CLOUDWATCH_LOGS"] = proxy.url
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        assert proc.stdout is not None
        output: list[bytes] = []
        stopping = threading.Event()

        def read_output(stream: IO[bytes]) -> None:
            for line in stream:
                output.append(line)
                if b"interrupted: finishing the objects in flight" in line:
                    stopping.set()

        reader = threading.Thread(target=read_output, args=(proc.stdout,), daemon=True)
        reader.start()
        ddb = local_aws.client("dynamodb")
        deadline = time.monotonic() + 180
        while ddb.scan(TableName=local_aws.names.ledger_table, Select="COUNT")["Count"] < 4:
            assert proc.poll() is None and time.monotonic() < deadline, b"".join(output).decode()
            time.sleep(0.1)  # polling the ledger's state: the condition is the event, not the interval
        hold.wait_held(1)
        proc.send_signal(signal.SIGTERM)
        assert stopping.wait(120), b"".join(output).decode()
        hold.open()
        proc.wait(timeout=120)
        reader.join(timeout=30)
    out = b"".join(output)
    assert proc.returncode == 130, out.decode()
    first = orjson.loads(report1.read_bytes())
    assert first["interrupted"] is True
    assert 4 <= first["objects_delivered"] < total_objects, out.decode()
    assert first["objects_skipped_by_reason"].get(INTERRUPTED, 0) > 0, out.decode()  # pods left for the re-run
    in_ledger = ddb.scan(TableName=local_aws.names.ledger_table, Select="COUNT")["Count"]
    assert in_ledger == first["objects_delivered"]  # the report and the ledger agree

    code, second, output = replay(local_aws, *args, report=tmp_path / "second.json")
    assert code == 0, output
    assert second["objects_skipped_ledger"] == first["objects_delivered"]
    assert first["objects_delivered"] + second["objects_delivered"] == total_objects

    lo, hi = int(since.timestamp() * 1000), int(until.timestamp() * 1000)
    assert delivered_events(local_aws, "acme") == expected_events(manifest, "acme", APPS, lo, hi)


def test_dry_run_plans_and_delivers_nothing(local_aws: LocalEnvironment, tmp_path: Path) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    cfg = GeneratorConfig(
        since=now - timedelta(days=20),
        until=now - timedelta(days=1),
        tenants=("acme",),
        applications=("payment-service",),
        pods_per_app=2,
        objects_per_pod=4,
        events_per_object=5,
    )
    write_dataset(cfg, local_aws.names.bucket, s3=local_aws.client("s3"))
    cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), "--tenant", "acme", "--since", "21d", "--dry-run"]
    proc = run_replay_cli(cmd, {**os.environ, **local_aws.env}, 120)
    assert proc.returncode == 0, proc.stderr
    assert "Dry run: nothing was delivered." in proc.stdout
    assert "older than CloudWatch's 14-day limit" in proc.stdout
    assert "payment-service" in proc.stdout and "work units" in proc.stdout
    assert delivered_events(local_aws, "acme") == Counter()
    ddb = local_aws.client("dynamodb")
    assert ddb.scan(TableName=local_aws.names.ledger_table, Select="COUNT")["Count"] == 0


def test_report_to_s3_lands_in_the_central_bucket(local_aws: LocalEnvironment) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    cfg = GeneratorConfig(
        since=now - timedelta(hours=1),
        until=now - timedelta(minutes=5),
        tenants=("acme",),
        applications=("payment-service",),
        objects_per_pod=3,
        events_per_object=5,
    )
    objects = write_dataset(cfg, local_aws.names.bucket, s3=local_aws.client("s3")).objects
    bucket, s3 = local_aws.names.bucket, local_aws.client("s3")

    def run(report: str) -> str:
        cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), "--tenant", "acme", "--since", "2h"]
        cmd += ["--report", report, "--no-progress"]
        proc = run_replay_cli(cmd, {**os.environ, **local_aws.env}, 300)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout

    out = run(f"s3://{bucket}/{REPORTS_PREFIX}x.json")
    assert f"Report written to s3://{bucket}/{REPORTS_PREFIX}x.json" in out
    first = orjson.loads(s3.get_object(Bucket=bucket, Key=f"{REPORTS_PREFIX}x.json")["Body"].read())
    assert first["objects_listed"] == first["objects_delivered"] == len(objects)
    assert first["objects_failed"] == [] and first["events_delivered"] == sum(o.events for o in objects)
    assert "window" in first and "tenants" in first and first["tenants"]["acme"]["objects_delivered"] == len(objects)

    # The manifest's form: {bucket} and a prefix, the report named by its start. The report already in the
    # bucket is not taken for a cluster: the same objects, the same LIST calls, nothing malformed.
    run(f"s3://{{bucket}}/{REPORTS_PREFIX}")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=REPORTS_PREFIX)["Contents"])
    assert len(keys) == 2 and keys[0].startswith(f"{REPORTS_PREFIX}replay-") and keys[1] == f"{REPORTS_PREFIX}x.json"
    second = orjson.loads(s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read())
    assert second["objects_listed"] == second["objects_skipped_ledger"] == len(objects)
    assert second["list_calls"] == first["list_calls"] and second["objects_failed"] == []


def test_missing_configuration_exits_3_naming_the_variable(local_aws: LocalEnvironment) -> None:
    env = {k: v for k, v in {**os.environ, **local_aws.env}.items() if k != "TENANT_CONFIG_TABLE"}
    cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), "--tenant", "acme", "--since", "1h", "--dry-run"]
    proc = run_replay_cli(cmd, env, 60)
    assert proc.returncode == 3
    assert "TENANT_CONFIG_TABLE" in proc.stderr


def test_bad_time_is_a_usage_error() -> None:
    cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), "--tenant", "acme", "--since", "yesterday-ish"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "cannot read 'yesterday-ish' as a time" in proc.stderr


def test_all_tenants_replays_every_enabled_tenant_in_the_table(local_aws: LocalEnvironment) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    cfg = GeneratorConfig(
        since=now - timedelta(hours=2),
        until=now - timedelta(minutes=5),
        tenants=("acme", "globex", "initech"),
        applications=("payment-service",),
        objects_per_pod=2,
        events_per_object=5,
    )
    write_dataset(cfg, local_aws.names.bucket, s3=local_aws.client("s3"))
    cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), "--all-tenants", "--since", "3h", "--dry-run"]
    proc = run_replay_cli(cmd, {**os.environ, **local_aws.env}, 120)
    assert proc.returncode == 0, proc.stderr
    plan_header = proc.stdout.splitlines()[0]
    assert "acme, globex" in plan_header
    assert "initech" not in proc.stdout  # disabled: not even listed


@pytest.mark.parametrize("args", [(), ("--tenant", "acme", "--all-tenants")])
def test_tenant_selection_is_either_tenants_or_all(args: tuple[str, ...]) -> None:
    cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), *args, "--since", "1h", "--dry-run"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "either --tenant" in proc.stderr
