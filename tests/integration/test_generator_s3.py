"""The generator against the embedded moto server over HTTP: what the manifest says is what S3 holds."""

from __future__ import annotations

import calendar
import re
import subprocess
import sys
import zlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from devstack import generator as gen
from devstack.generator import DamageKind, GeneratorConfig
from devstack.provision import LocalEnvironment

pytestmark = pytest.mark.integration

SINCE = datetime(2024, 1, 1, tzinfo=UTC)
UNTIL = datetime(2024, 1, 1, 1, tzinfo=UTC)
RFC3339_NS = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{9})Z$")


def ts_ms(value: Any) -> int:
    if isinstance(value, str):
        m = RFC3339_NS.match(value)
        assert m, value
        y, mo, d, h, mi, s, frac = m.groups()
        return calendar.timegm((int(y), int(mo), int(d), int(h), int(mi), int(s))) * 1000 + int(frac[:3])
    return int(value) if value >= 1e12 else int(value * 1000)


def message(rec: dict[str, Any]) -> str:
    if "message" not in rec:
        return orjson.dumps(rec).decode()
    m = rec["message"]
    return m if isinstance(m, str) else orjson.dumps(m).decode()


def decode(body: bytes) -> tuple[list[tuple[int, str]], list[int], list[int]]:
    """Delivered (timestamp_ms, message) pairs, invalid and repaired line numbers: gzip or plain, NDJSON or
    a JSON array."""
    data = body
    if body[:2] == b"\x1f\x8b":
        d = zlib.decompressobj(wbits=31)
        data = d.decompress(body)
        if not d.eof:  # truncated: keep the complete lines
            data = data[: data.rfind(b"\n") + 1]
    if data.startswith(b"["):
        return [(ts_ms(r["timestamp"]), message(r)) for r in orjson.loads(data)], [], []
    events: list[tuple[int, str]] = []
    invalid: list[int] = []
    repaired: list[int] = []
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    for n, line in enumerate(lines, 1):
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError:
            try:  # valid JSON apart from bad UTF-8 bytes: delivered with U+FFFD (the project's decoder rule)
                line.decode("utf-8")
                invalid.append(n)
                continue
            except UnicodeDecodeError:
                rec = orjson.loads(line.decode("utf-8", "replace"))
                repaired.append(n)
        events.append((ts_ms(rec["timestamp"]), message(rec)))
    return events, invalid, repaired


def listing(s3: Any, bucket: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = o
    return out


def test_written_objects_match_the_manifest_exactly(local_aws: LocalEnvironment) -> None:
    cfg = GeneratorConfig(
        since=SINCE,
        until=UNTIL,
        tenants=("acme", "globex"),
        applications=gen.app_names(2),
        pods_per_app=2,
        objects_per_pod=2,
        events_per_object=15,
        epoch_fraction=0.1,
        seed=7,
        damaged=tuple(DamageKind),
    )
    bucket = local_aws.names.bucket
    manifest = gen.write_dataset(cfg, bucket, workers=8)  # pipeline.aws client: AWS_ENDPOINT_URL applies
    assert len(manifest.objects) == 2 * 2 * 2 * 2 + len(DamageKind)

    s3 = local_aws.client("s3")
    listed = listing(s3, bucket)
    delivered = 0
    assert set(listed) == set(manifest.keys)
    for entry in manifest.objects:
        head = listed[entry.key]
        assert head["Size"] == entry.size
        assert head["ETag"] == entry.etag
        body = s3.get_object(Bucket=bucket, Key=entry.key)["Body"].read()
        assert len(body) == entry.size
        events, invalid, repaired = decode(body)
        assert entry.expected is not None
        assert events == [tuple(e) for e in entry.expected], entry.damage
        assert tuple(invalid) == entry.invalid_lines
        assert tuple(repaired) == entry.repaired_lines
        assert entry.expected_count == len(events)
        delivered += len(events)
    assert manifest.expected_count == delivered


def test_cli_writes_and_summarises(local_aws: LocalEnvironment, tmp_path: Path) -> None:
    path = tmp_path / "manifest.json"
    args = ["--tenant", "acme", "--apps", "1", "--pods-per-app", "2", "--objects-per-pod", "3"]
    args += ["--events-per-object", "5", "--since", "2024-01-01", "--until", "2024-01-01T01:00:00Z"]
    args += ["--damaged", "--counts-only", "--manifest", str(path)]
    # The command as a user runs it (from the repository root), in its own process; the bucket comes from
    # S3_BUCKET_NAME and the endpoint from AWS_ENDPOINT_URL, both set by the fixture.
    repo = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "devstack", "generate", *args]
    result = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout)
    assert summary["objects"] == 6 + len(DamageKind)
    assert set(summary["damaged"]) == {k.value for k in DamageKind}

    manifest = gen.Manifest.load(path)
    assert all(o.expected is None for o in manifest.objects)
    listed = listing(local_aws.client("s3"), local_aws.names.bucket)
    assert {k: v["ETag"] for k, v in listed.items()} == {o.key: o.etag for o in manifest.objects}
