"""The delivery options of CONTRACTS.md §3 (format, include/exclude, retention_days, groups), end to end against the
embedded local AWS: real gzip objects in the central bucket, moto over HTTP, each tenant in its own account.

Expectations come from the generator's manifest and from the contract's words (keys and columns written out
here on purpose), never from the code under test.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from boto3.dynamodb.types import TypeSerializer
from click.testing import CliRunner

from devstack import generator as gen
from devstack.provision import LocalEnvironment
from devstack.readback import read_bucket, read_group
from pipeline.commands.tenants import main as tenants_cli
from pipeline.consumer.metrics import Metrics
from pipeline.delivery.engine import build_deliverer
from pipeline.delivery.results import Status
from pipeline.delivery.routing import ObjectRef

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
APPS = ("kube-apiserver", "frontend", "kube-scheduler")


def write(local: LocalEnvironment, tenant: str, seed: int = 7, **kw: Any) -> gen.Manifest:
    now = datetime.now(UTC).replace(microsecond=0)
    cfg = gen.GeneratorConfig(
        since=now - timedelta(minutes=40),
        until=now - timedelta(minutes=2),
        tenants=(tenant,),
        applications=kw.pop("applications", APPS),
        pods_per_app=1,
        objects_per_pod=2,
        events_per_object=20,
        message_bytes=120,
        seed=seed,
        **kw,
    )
    return gen.write_dataset(cfg, local.names.bucket, s3=local.client("s3"))


def put_delivery(local: LocalEnvironment, tenant: str, delivery_id: str, **changes: Any) -> None:
    """The sample tenant's delivery, changed, written straight into the table (as the delivery path reads it)."""
    item = next(i for i in local.tenant(tenant).delivery_items() if i["delivery_id"] == delivery_id)
    item = {**item, **changes}
    ser = TypeSerializer()
    local.client("dynamodb").put_item(
        TableName=local.names.tenant_table, Item={k: ser.serialize(v) for k, v in item.items() if v is not None}
    )


def deliver(local: LocalEnvironment, keys: list[str], **kw: Any) -> dict[str, Any]:
    deliverer = build_deliverer(local.settings, **kw)
    try:
        return {k: deliverer.deliver(ObjectRef(local.names.bucket, k)) for k in keys}
    finally:
        deliverer.close()


def parquet_key(source_key: str, written: datetime, prefix: str = "ROSA/cluster-logs/") -> str:
    """CONTRACTS.md §8 written out: prefix, tenant, dt= the key's write date, application=, pod_stem.parquet."""
    _cluster, tenant, app, pod, filename = source_key.split("/")
    stem = filename.removesuffix(".json.gz")
    return f"{prefix}{tenant}/dt={written:%Y-%m-%d}/application={app}/{pod}_{stem}.parquet"


def write_time(source_key: str) -> datetime:
    return datetime.strptime(source_key.split("/")[-1][:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)


def hostile_object(local: LocalEnvironment, tenant: str) -> tuple[str, list[tuple[int, str]]]:
    """One object with what CloudWatch would refuse: a 30-day-old event, an empty message, a line that is not
    JSON. Returns its key and the (timestamp, message) every row must carry (the malformed row: the line)."""
    old = datetime.now(UTC) - timedelta(days=30)
    key = f"prod-1/{tenant}/frontend/frontend-0/{datetime.now(UTC):%Y%m%d-%H%M%S}-hostile.json.gz"
    lines = [
        b'{"message":"thirty days old","timestamp":"' + old.strftime("%Y-%m-%dT%H:%M:%S.000Z").encode() + b'"}',
        b'{"message":"","timestamp":"2024-01-01T00:00:00.000Z"}',
        b"this line is not JSON",
    ]
    local.client("s3").put_object(Bucket=local.names.bucket, Key=key, Body=gzip.compress(b"\n".join(lines) + b"\n"))
    return key, [(int(old.replace(microsecond=0).timestamp() * 1000), "thirty days old"), (1704067200000, "")]


# -- format: parquet --------------------------------------------------------------------------------------------


def test_parquet_delivery_writes_every_event_typed_at_partitioned_keys_and_a_rerun_overwrites(
    local_aws: LocalEnvironment, tmp_path: Path
) -> None:
    put_delivery(local_aws, "hooli", "archive", format="parquet")
    manifest = write(local_aws, "hooli")
    hostile, kept = hostile_object(local_aws, "hooli")
    keys = [o.key for o in manifest.objects] + [hostile]
    results = deliver(local_aws, keys)
    assert all(r.status is Status.DELIVERED for r in results.values()), [r.reason for r in results.values()]

    tenant = local_aws.tenant("hooli")
    got = read_bucket(local_aws.tenant_s3("hooli"), tenant.bucket)
    assert set(got) == {parquet_key(k, write_time(k)) for k in keys}
    for o in manifest.objects:
        stored = got[parquet_key(o.key, write_time(o.key))]
        assert stored["content_type"] == "application/vnd.apache.parquet"
        assert stored["metadata"]["source-key"] == o.key
        table = pq.read_table(io.BytesIO(stored["body"]))
        assert table.schema.field("timestamp").type == pa.timestamp("ms", tz="UTC")
        assert table.schema.field("labels").type == pa.map_(pa.string(), pa.string())
        assert pq.ParquetFile(io.BytesIO(stored["body"])).metadata.row_group(0).column(0).compression == "ZSTD"
        rows = table.to_pylist()
        assert Counter((int(r["timestamp"].timestamp() * 1000), r["message"]) for r in rows) == Counter(o.expected)
        cluster, ten, app, pod, _ = o.key.split("/")
        assert {(r["cluster"], r["namespace"], r["application"], r["pod"]) for r in rows} == {(cluster, ten, app, pod)}
        assert not any(r["malformed"] for r in rows)
        assert results[o.key].deliveries[0].events_delivered == len(o.expected or [])
    # What CloudWatch would refuse is all there, and the malformed line is a row of its own, marked.
    hostile_rows = pq.read_table(io.BytesIO(got[parquet_key(hostile, write_time(hostile))]["body"])).to_pylist()
    good = [(int(r["timestamp"].timestamp() * 1000), r["message"]) for r in hostile_rows if not r["malformed"]]
    assert good == kept
    bad = [r for r in hostile_rows if r["malformed"]]
    assert [(r["message"], r["application"], r["container"]) for r in bad] == [
        ("this line is not JSON", "frontend", None)
    ]

    # A rerun (the ledger ignored) writes the same keys, and the same rows.
    again = deliver(local_aws, keys, redeliver=True)
    assert all(r.status is Status.DELIVERED for r in again.values())
    regot = read_bucket(local_aws.tenant_s3("hooli"), tenant.bucket)
    assert set(regot) == set(got)
    for key in got:
        assert pq.read_table(io.BytesIO(regot[key]["body"])).equals(pq.read_table(io.BytesIO(got[key]["body"])))

    # A query by partition, as Athena would run it over the Hive layout: pyarrow.dataset and DuckDB.
    for key, obj in got.items():
        path = tmp_path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(obj["body"])
    root = tmp_path / "ROSA/cluster-logs/hooli"
    day = f"{write_time(manifest.objects[0].key):%Y-%m-%d}"
    want = sum(
        len(o.expected or [])
        for o in manifest.objects
        if "/kube-apiserver/" in o.key and f"{write_time(o.key):%Y-%m-%d}" == day
    )
    dataset = pads.dataset(root, format="parquet", partitioning="hive")
    selected = dataset.to_table(filter=(pads.field("dt") == day) & (pads.field("application") == "kube-apiserver"))
    assert selected.num_rows == want > 0
    duckdb = pytest.importorskip("duckdb")
    count = duckdb.sql(
        f"SELECT count(*) FROM read_parquet('{root}/*/*/*.parquet', hive_partitioning = true) "
        f"WHERE dt = '{day}' AND application = 'kube-apiserver'"
    ).fetchall()
    assert count == [(want,)]


@pytest.mark.ray
@pytest.mark.usefixtures("shared_ray")
def test_the_replay_writes_the_same_parquet_object_as_the_consumer_path(local_aws: LocalEnvironment) -> None:
    put_delivery(local_aws, "hooli", "archive", format="parquet")
    manifest = write(local_aws, "hooli", seed=9, applications=("frontend",))
    deliver(local_aws, [o.key for o in manifest.objects])  # the consumer's path (build_deliverer, source=consumer)
    tenant = local_aws.tenant("hooli")
    streamed = read_bucket(local_aws.tenant_s3("hooli"), tenant.bucket)
    for key in streamed:
        local_aws.tenant_s3("hooli").delete_object(Bucket=tenant.bucket, Key=key)
    cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), "--tenant", "hooli", "--since", "1h", "--redeliver",
           "--no-progress", "--workers", "1"]  # fmt: skip
    proc = subprocess.run(cmd, env={**os.environ, **local_aws.env}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    replayed = read_bucket(local_aws.tenant_s3("hooli"), tenant.bucket)
    assert set(replayed) == set(streamed) == {parquet_key(o.key, write_time(o.key)) for o in manifest.objects}
    for key in streamed:
        assert pq.read_table(io.BytesIO(replayed[key]["body"])).equals(pq.read_table(io.BytesIO(streamed[key]["body"])))


# -- include / exclude ------------------------------------------------------------------------------------------


def test_include_and_exclude_deliver_exactly_the_matching_events_and_count_the_rest(
    local_aws: LocalEnvironment,
) -> None:
    include, exclude = [r"ERROR|WARN|took"], [r"took \d*5ms"]
    put_delivery(local_aws, "umbrella", "cloudwatch", desired_logs=None, include=include, exclude=exclude)
    put_delivery(local_aws, "umbrella", "s3-archive", include=include, exclude=exclude)
    manifest = write(local_aws, "umbrella", seed=11)

    def kept(msg: str) -> bool:  # the same patterns, by Python's engine: these are simple enough to agree
        return bool(re.search(include[0], msg)) and not re.search(exclude[0], msg)

    results = deliver(local_aws, [o.key for o in manifest.objects])
    metrics = Metrics()
    for r in results.values():
        metrics.observe_object(r, 0.1)
    events = [e for o in manifest.objects for e in (o.expected or [])]
    want = Counter(e for e in events if kept(e[1]))
    dropped = len(events) - sum(want.values())
    assert 0 < dropped < len(events)

    group = read_group(local_aws.tenant_logs("umbrella"), local_aws.tenant("umbrella").log_group)
    assert Counter((ts, msg) for evs in group.values() for ts, msg in evs) == want
    by_type: Counter[str] = Counter()
    for r in results.values():
        for d in r.deliveries:
            assert d.status is Status.DELIVERED
            by_type[d.type] += d.events_filtered_content
            assert d.events_filtered == d.events_filtered_content  # no window: every filtered event is content
    assert by_type == {"cloudwatch": dropped, "s3": dropped}
    # S3 original with a filter: the source's own lines that the filter keeps, gzip NDJSON, at the §8 key.
    got = read_bucket(local_aws.tenant_s3("umbrella"), local_aws.tenant("umbrella").bucket)
    lines = [ln for obj in got.values() for ln in gzip.decompress(obj["body"]).splitlines()]
    assert len(lines) == sum(want.values())
    text = metrics.render().decode()
    assert f'logdelivery_events_filtered_total{{reason="content",tenant="umbrella"}} {float(2 * dropped)}' in text


# -- retention_days ---------------------------------------------------------------------------------------------


def test_a_group_the_sink_creates_gets_its_retention_and_an_existing_group_is_left_alone(
    local_aws: LocalEnvironment,
) -> None:
    acme = local_aws.tenant("acme")
    logs = local_aws.tenant_logs("acme")
    put_delivery(local_aws, "acme", "cloudwatch", retention_days=30)  # its group exists (provisioned)
    fresh = acme.delivery_items()[0] | {
        "delivery_id": "fresh",
        "log_group_name": "/logs/acme-created",
        "retention_days": 7,
    }
    ser = TypeSerializer()
    local_aws.client("dynamodb").put_item(
        TableName=local_aws.names.tenant_table, Item={k: ser.serialize(v) for k, v in fresh.items()}
    )
    manifest = write(local_aws, "acme", seed=13, applications=("frontend",))
    results = deliver(local_aws, [o.key for o in manifest.objects])
    assert all(r.status is Status.DELIVERED for r in results.values())
    groups = {g["logGroupName"]: g for g in logs.describe_log_groups()["logGroups"]}
    assert groups["/logs/acme-created"].get("retentionInDays") == 7
    assert "retentionInDays" not in groups[acme.log_group]


# -- groups -----------------------------------------------------------------------------------------------------


def test_groups_expand_into_the_application_filter(local_aws: LocalEnvironment) -> None:
    put_delivery(local_aws, "acme", "cloudwatch", groups=["api", "Scheduler"], desired_logs=None)
    manifest = write(local_aws, "acme", seed=17)
    results = deliver(local_aws, [o.key for o in manifest.objects])
    group = read_group(local_aws.tenant_logs("acme"), local_aws.tenant("acme").log_group)
    apps = {stream.split("-")[0] + "-" + stream.split("-")[1] for stream in group}
    assert apps == {"kube-apiserver", "kube-scheduler"}
    skipped = [r for k, r in results.items() if "/frontend/" in k]
    assert skipped and all("is not in desired_logs or groups" in r.reason for r in skipped)


# -- hostile values, refused with the same words by the CLI and the validator ----------------------------------


@pytest.mark.parametrize(
    ("flags", "field", "words"),
    [
        (["--include", r"(a)\1"], "include", "backreferences and lookaround"),
        (["--include", "(?=x)y"], "include", "unbounded"),
        (["--groups", "Databases"], "groups", "unknown group 'Databases'"),
        (["--retention-days", "8"], "retention_days", "is not a retention CloudWatch accepts"),
        (["--retention-days", "a week"], "retention_days", "is not a retention CloudWatch accepts"),
        (["--format", "parquet"], "format", "only s3 deliveries have a format"),
    ],
)
def test_the_cli_refuses_hostile_options_naming_the_field(
    local_aws: LocalEnvironment, flags: list[str], field: str, words: str
) -> None:
    acme = local_aws.tenant("acme")
    args = ["put", "acme", "hostile", "--type", "cloudwatch", "--log-distribution-role-arn", acme.role_arn,
            "--target-region", acme.region, "--log-group-name", "/logs/x", "--clusters", "prod-1", *flags,
            "--json"]  # fmt: skip
    result = CliRunner().invoke(tenants_cli, args, catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert words in result.output and f'"{field}"' in result.output


def test_show_displays_the_groups_and_the_applications_they_expand_to(local_aws: LocalEnvironment) -> None:
    acme = local_aws.tenant("acme")
    args = ["put", "acme", "control-plane", "--type", "cloudwatch", "--log-distribution-role-arn", acme.role_arn,
            "--target-region", acme.region, "--log-group-name", "/logs/cp", "--clusters", "prod-1",
            "--groups", "scheduler,API", "--desired-logs", "etcd", "--include", "a{1,3}",
            "--retention-days", "14"]  # fmt: skip
    put = CliRunner().invoke(tenants_cli, args, catch_exceptions=False)
    assert put.exit_code == 0, put.output
    shown = CliRunner().invoke(tenants_cli, ["show", "acme", "--json"], catch_exceptions=False)
    doc = next(d for d in json.loads(shown.output)["deliveries"] if d["delivery_id"] == "control-plane")
    assert doc["groups"] == ["API", "Scheduler"] and doc["desired_logs"] == ["etcd"]
    assert doc["applications"] == sorted(["etcd", "kube-scheduler", "kube-apiserver", "openshift-apiserver",
                                          "openshift-oauth-apiserver"])  # fmt: skip
    assert doc["include"] == ["a{1,3}"] and doc["retention_days"] == 14  # a regex's comma is not a list separator
    text = CliRunner().invoke(tenants_cli, ["show", "acme"], catch_exceptions=False).output
    assert "applications" in text and "kube-scheduler" in text
