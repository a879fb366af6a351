"""The inventory CLI as a user runs it: a subprocess against a real moto server over HTTP.

Expectations come from the generator's manifest, an independent S3 listing and gzip reading, and ledger
entries the test writes itself, never from the code under test.
"""

from __future__ import annotations

import gzip
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from devstack.generator import DamageKind, GeneratorConfig, Manifest, write_dataset
from devstack.provision import LocalEnvironment, provision
from devstack.server import MotoServer
from pipeline.inventory import SCHEMA, InventoryOptions, build_inventory, read_inventory, read_metadata
from pipeline.ledger import Ledger, LedgerEntry

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC).replace(microsecond=0)


def inventory(env: LocalEnvironment, *args: str, drop_env: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in {**os.environ, **env.env}.items() if k not in drop_env}
    cmd = [sys.executable, str(REPO / "jobs" / "inventory.py"), *args]
    return subprocess.run(cmd, env=environ, capture_output=True, text=True, timeout=120)


def s3_objects(env: LocalEnvironment, tenant: str) -> dict[str, tuple[int, str]]:
    """key → (size, etag) of a tenant's objects, by a plain full listing of the bucket."""
    out: dict[str, tuple[int, str]] = {}
    for page in env.client("s3").get_paginator("list_objects_v2").paginate(Bucket=env.names.bucket):
        for o in page.get("Contents", []):
            parts = o["Key"].split("/")
            if len(parts) == 5 and parts[1] == tenant:
                out[o["Key"]] = (o["Size"], o["ETag"].strip('"'))
    return out


@pytest.fixture(scope="module")
def local_aws(moto_server: MotoServer) -> LocalEnvironment:
    """One provisioned stack for the whole module (provisioning costs seconds); every test only reads it,
    except one that adds an object and removes it again. Subprocesses get its environment explicitly."""
    moto_server.reset()
    return provision(moto_server.endpoint_url)


@pytest.fixture(scope="module")
def dataset(local_aws: LocalEnvironment) -> Manifest:
    cfg = GeneratorConfig(
        since=NOW - timedelta(hours=3),
        until=NOW - timedelta(minutes=10),
        tenants=("acme", "globex"),
        clusters=("prod-1", "prod-2"),
        applications=("payment-service", "frontend"),
        pods_per_app=2,
        objects_per_pod=3,
        events_per_object=15,
        damaged=(DamageKind.TRUNCATED_GZIP, DamageKind.JSON_ARRAY, DamageKind.PLAIN_NDJSON),
        seed=11,
    )
    manifest = write_dataset(cfg, local_aws.names.bucket, s3=local_aws.client("s3"), workers=8)
    # Noise the inventory must not pick up: another tenant, and a key outside the layout.
    s3 = local_aws.client("s3")
    s3.put_object(Bucket=local_aws.names.bucket, Key="prod-1/initech/app/pod-1/20240101-000000-x.json.gz", Body=b"x")
    s3.put_object(Bucket=local_aws.names.bucket, Key="prod-1/acme/loose.json.gz", Body=b"x")
    return manifest


def test_one_row_per_object_with_sizes_etags_ledger_and_sample(
    local_aws: LocalEnvironment, dataset: Manifest, tmp_path: Path
) -> None:
    acme = s3_objects(local_aws, "acme")
    keys = sorted(acme)
    ledger = Ledger(local_aws.names.ledger_table, client=local_aws.client("dynamodb"))
    ledger.record(LedgerEntry("acme", keys[0], acme[keys[0]][1], events_delivered=1))
    ledger.record(LedgerEntry("acme", keys[1], "stale-etag"))  # overwritten since: not delivered
    ledger.record(LedgerEntry("globex", keys[2], acme[keys[2]][1]))  # another tenant's entry: not acme's

    out = tmp_path / "inv.parquet"
    proc = inventory(local_aws, "--tenant", "acme", "--since", "4h", "--output", str(out), "--sample-fraction", "1")
    assert proc.returncode == 0, proc.stderr
    assert "prod-1/acme/loose.json.gz" in proc.stderr  # reported, not silently dropped

    assert pq.read_schema(out).remove_metadata() == SCHEMA
    rows = read_inventory(out).to_pylist()
    assert [r["key"] for r in rows] == keys
    assert sum(r["size"] for r in rows) == sum(size for size, _ in acme.values())
    by_manifest = dataset.by_key()
    body = local_aws.client("s3")
    for r in rows:
        cluster, tenant, app, pod, filename = r["key"].split("/")
        assert (r["cluster"], r["tenant"], r["application"], r["pod"]) == (cluster, tenant, app, pod)
        assert (r["size"], r["etag"]) == acme[r["key"]]
        assert r["write_time"] == datetime.strptime(filename[:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
        assert r["delivered"] is (r["key"] == keys[0])
        assert r["sampled"] is True
        m = by_manifest[r["key"]]
        if m.damage == DamageKind.TRUNCATED_GZIP:
            assert r["damaged"] and r["events"] == m.expected_count
            continue
        raw = body.get_object(Bucket=local_aws.names.bucket, Key=r["key"])["Body"].read()
        plain = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        assert r["damaged"] is None
        assert r["events"] == m.expected_count
        assert r["bytes_uncompressed"] == len(plain)
        assert m.expected is not None
        assert r["message_bytes"] == sum(len(msg.encode()) for _, msg in m.expected)
        assert r["lines_malformed"] == 0

    (meta,) = read_metadata(out)
    assert meta["tenants"] == ["acme"] and meta["objects"] == len(rows) and meta["sample_fraction"] == 1.0
    assert meta["bucket"] == local_aws.names.bucket and meta["malformed_keys"] == 1


def test_dataset_directory_partitions_by_tenant_and_refreshes_one_tenant(
    local_aws: LocalEnvironment, dataset: Manifest, tmp_path: Path
) -> None:
    out = tmp_path / "inventory"
    proc = inventory(local_aws, "--tenant", "acme", "--tenant", "globex", "--since", "4h", "--output", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["tenant=acme", "tenant=globex"]
    table = read_inventory(out)
    expected = {**s3_objects(local_aws, "acme"), **s3_objects(local_aws, "globex")}
    assert sorted(table["key"].to_pylist()) == sorted(expected)
    assert not any(table["sampled"].to_pylist())
    assert table["events"].null_count == table.num_rows

    # A new object for acme; refreshing only acme keeps globex's partition as it was.
    globex_before = (out / "tenant=globex" / "part-0.parquet").read_bytes()
    key = f"prod-1/acme/frontend/new-pod/{NOW - timedelta(minutes=1):%Y%m%d-%H%M%S}-0000.json.gz"
    s3 = local_aws.client("s3")
    s3.put_object(Bucket=local_aws.names.bucket, Key=key, Body=gzip.compress(b"{}\n"))
    try:
        proc = inventory(local_aws, "--tenant", "acme", "--since", "4h", "--output", str(out))
    finally:
        s3.delete_object(Bucket=local_aws.names.bucket, Key=key)
    assert proc.returncode == 0, proc.stderr
    assert (out / "tenant=globex" / "part-0.parquet").read_bytes() == globex_before
    assert sorted(read_inventory(out)["key"].to_pylist()) == sorted([*expected, key])


def test_window_and_cluster_list_what_a_replay_of_them_reads_and_no_ledger_means_unknown(
    local_aws: LocalEnvironment, dataset: Manifest, tmp_path: Path
) -> None:
    since, until = NOW - timedelta(hours=2), NOW - timedelta(hours=1)
    out = tmp_path / "w.parquet"
    window = ("--since", since.isoformat(), "--until", until.isoformat())
    proc = inventory(
        local_aws,
        "--tenant",
        "globex",
        "--cluster",
        "prod-2",
        *window,
        "-o",
        str(out),
        drop_env=("DELIVERY_LEDGER_TABLE",),
    )
    assert proc.returncode == 0, proc.stderr
    slack = timedelta(minutes=5)  # a file written at T holds events from up to one batch timeout before T
    lo, hi = f"{since - slack:%Y%m%d-%H%M%S}", f"{until + slack:%Y%m%d-%H%M%S}~"
    globex = [k for k in s3_objects(local_aws, "globex") if k.startswith("prod-2/")]
    expected = sorted(k for k in globex if lo < k.split("/")[4] <= hi)
    assert expected and len(expected) < len(globex)
    table = read_inventory(out)
    assert table["key"].to_pylist() == expected
    assert table["delivered"].null_count == table.num_rows
    assert "no ledger" in proc.stdout
    (meta,) = read_metadata(out)
    assert (meta["since"], meta["until"], meta["clusters"]) == (since.isoformat(), until.isoformat(), ["prod-2"])


def test_sample_is_a_stable_fraction_picked_by_seed(local_aws: LocalEnvironment, dataset: Manifest) -> None:
    s3 = local_aws.client("s3")

    def sampled(seed: int) -> set[str]:
        opts = InventoryOptions(
            ("acme", "globex"),
            NOW - timedelta(hours=4),
            NOW,
            bucket=local_aws.names.bucket,
            sample_fraction=0.5,
            seed=seed,
        )
        rows = build_inventory(opts, s3=s3).table.to_pylist()
        assert len(rows) == len(dataset.objects)
        assert all((r["events"] is not None) == r["sampled"] for r in rows)
        return {r["key"] for r in rows if r["sampled"]}

    first, again, other = sampled(1), sampled(1), sampled(2)
    assert first == again
    assert first != other
    assert 0.2 * len(dataset.objects) < len(first) < 0.8 * len(dataset.objects)


def test_a_bucket_that_does_not_exist_exits_3(local_aws: LocalEnvironment, tmp_path: Path) -> None:
    out = tmp_path / "x.parquet"
    proc = inventory(local_aws, "--tenant", "acme", "--since", "1h", "--bucket", "no-such-bucket", "-o", str(out))
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "NoSuchBucket" in proc.stderr
    assert not out.exists()
