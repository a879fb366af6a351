"""The replay CLI with S3 and CloudWatch deliveries: a subprocess, a real moto server, a real local Ray.

S3 takes whole objects by the write time in their key (since <= t < until) and has no age limit;
CloudWatch takes events by their own timestamp and cannot take any older than 14 days. Expectations are
written from CONTRACTS.md §5 and §8 and the generator's manifest, not read from the code under test.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from devstack.generator import GeneratorConfig, Manifest, write_dataset
from devstack.provision import LocalEnvironment
from devstack.readback import read_bucket, read_group
from pipeline.keys import parse_key
from tests.support.replay_cli import run_replay_cli

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.usefixtures("shared_ray")]

REPO = Path(__file__).resolve().parents[2]
FOURTEEN_DAYS = timedelta(days=14)


def replay(env: LocalEnvironment, *args: str, report: Path | None = None) -> tuple[int, dict[str, Any], str]:
    cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), *args, "--no-progress", "--workers", "2"]
    if report is not None:
        cmd += ["--report", str(report)]
    proc = run_replay_cli(cmd, {**os.environ, **env.env}, 300)
    doc = orjson.loads(report.read_bytes()) if report is not None and report.exists() else {}
    return proc.returncode, doc, proc.stdout + proc.stderr


def sixty_days(local: LocalEnvironment, now: datetime) -> Manifest:
    """One object a day per pod for 60 days, for a tenant with both destinations."""
    cfg = GeneratorConfig(
        since=now - timedelta(days=60),
        until=now - timedelta(hours=1),
        tenants=("umbrella",),
        applications=("payment-service", "frontend"),
        objects_per_pod=60,
        events_per_object=5,
        message_bytes=100,
        seed=21,
    )
    return write_dataset(cfg, local.names.bucket, s3=local.client("s3"))


def s3_keys(local: LocalEnvironment) -> set[str]:
    return set(read_bucket(local.tenant_s3("umbrella"), local.tenant("umbrella").bucket))


def dest_key(source: str) -> str:
    _, tenant, app, pod, filename = source.split("/")
    return f"ROSA/cluster-logs/{tenant}/{app}/{pod}/{filename}"


def test_a_60_day_backfill_goes_wholly_to_s3_and_cloudwatch_takes_only_the_last_14_days(
    local_aws: LocalEnvironment, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    manifest = sixty_days(local_aws, now)
    cutoff_ms = (now - FOURTEEN_DAYS).timestamp() * 1000

    code, _, out = replay(local_aws, "--tenant", "umbrella", "--since", "61d", "--dry-run")
    assert code == 0, out
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("umbrella ")}
    n = len(manifest.objects)
    pay = sum(1 for o in manifest.objects if "/payment-service/" in o.key)
    old_pay = sum(
        1
        for o in manifest.objects
        if "/payment-service/" in o.key and parse_key(o.key).write_time.timestamp() * 1000 < cutoff_ms
    )
    assert f"{n} objects" in rows["s3-archive"] and rows["s3-archive"].rstrip().endswith("-")  # no age limit
    assert f"{pay} objects" in rows["cloudwatch"] and rows["cloudwatch"].rstrip().endswith(f"{old_pay} objects")
    assert "older than CloudWatch's 14-day limit" in out
    assert s3_keys(local_aws) == set()  # a dry run writes nothing

    code, report, out = replay(local_aws, "--tenant", "umbrella", "--since", "61d", report=tmp_path / "r.json")
    assert code == 0, out
    assert s3_keys(local_aws) == {dest_key(o.key) for o in manifest.objects}
    sections = {d["delivery_id"]: d for d in report["deliveries"]}
    assert sections["s3-archive"]["objects_delivered"] == n
    assert sections["s3-archive"]["bytes_delivered"] == sum(
        local_aws.client("s3").head_object(Bucket=local_aws.names.bucket, Key=o.key)["ContentLength"]
        for o in manifest.objects
    )
    events = [ts for o in manifest.objects if "/payment-service/" in o.key for ts, _ in (o.expected or [])]
    too_old = sum(1 for ts in events if ts < cutoff_ms)
    cw = sections["cloudwatch"]
    assert cw["events_rejected_too_old"] == too_old > 0
    assert cw["events_delivered"] == len(events) - too_old
    group = read_group(local_aws.tenant_logs("umbrella"), local_aws.tenant("umbrella").log_group)
    assert sum(len(v) for v in group.values()) == len(events) - too_old
    assert cw["objects_skipped"] == {"application 'frontend' is not in desired_logs of delivery 'cloudwatch'": n - pay}

    # A rerun of the same window sends nothing: every delivery is in the ledger.
    code, again, out = replay(local_aws, "--tenant", "umbrella", "--since", "61d", report=tmp_path / "r2.json")
    assert code == 0, out
    assert again["objects_delivered"] == 0 and again["objects_skipped_ledger"] == n
    assert {d["delivery_id"]: d["objects_delivered"] for d in again["deliveries"]} == {"cloudwatch": 0, "s3-archive": 0}


def test_adjacent_windows_cover_every_object_once_and_delivery_selects_by_id(
    local_aws: LocalEnvironment, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    manifest = sixty_days(local_aws, now)
    middle = (now - timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    first, *_ = replay(
        local_aws, "--tenant", "umbrella", "--since", "61d", "--until", middle, "--delivery", "s3-archive"
    )
    assert first == 0
    written_first = s3_keys(local_aws)
    second, report, out = replay(
        local_aws, "--tenant", "umbrella", "--since", middle, "--delivery", "s3", report=tmp_path / "r.json"
    )
    assert second == 0, out
    # The two windows split the objects by write time: none twice, none left out.
    assert report["deliveries"][0]["objects_delivered"] == len(manifest.objects) - len(written_first)
    assert s3_keys(local_aws) == {dest_key(o.key) for o in manifest.objects}
    # Only the S3 delivery was selected: CloudWatch got nothing.
    assert [d["delivery_id"] for d in report["deliveries"]] == ["s3-archive"]
    assert read_group(local_aws.tenant_logs("umbrella"), local_aws.tenant("umbrella").log_group) == {}

    code, _, out = replay(local_aws, "--tenant", "umbrella", "--since", "1d", "--delivery", "s3-archiv", "--dry-run")
    assert code == 2 and "s3-archiv" in out  # a typo is refused, not silently a no-op
