"""`make demo`: the whole system on one machine, no AWS account needed.

Starts the embedded local AWS, writes a realistic multi-tenant data set (plus damaged objects), runs the
real replay CLI on a local Ray for one tenant, then reads every tenant's own CloudWatch back and shows,
per stream, what arrived, next to the job's report.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson

from pipeline.local.generator import DamageKind, GeneratorConfig, write_dataset
from pipeline.local.provision import LocalEnvironment, provision
from pipeline.local.readback import read_group
from pipeline.local.server import MotoServer

DEMO_TENANT = "acme"
REPORT_PATH = Path("reports/demo-report.json")
REPO = Path(__file__).resolve().parents[2]


def _banner(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def _streams(env: LocalEnvironment, tenant_id: str) -> list[tuple[str, int, int, int, str]]:
    """(stream, events, first ms, last ms, a sample message) for every stream of a tenant's group."""
    group = read_group(env.tenant_logs(tenant_id), env.tenant(tenant_id).log_group)
    return [
        (name, len(evs), evs[0][0], evs[-1][0], evs[0][1].splitlines()[0][:60])
        for name, evs in sorted(group.items())
        if evs
    ]


def _ms(ts: int) -> str:
    return datetime.fromtimestamp(ts / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


def demo_dataset(env: LocalEnvironment, now: datetime) -> GeneratorConfig:
    """The demo's data set: every sample tenant, two clusters, three apps, six hours, three damaged objects."""
    return GeneratorConfig(
        since=now - timedelta(hours=6),
        until=now,
        tenants=tuple(t.tenant_id for t in env.tenants),
        clusters=("prod-1", "prod-2"),
        applications=("payment-service", "frontend", "checkout"),
        pods_per_app=2,
        objects_per_pod=4,
        events_per_object=150,
        damaged=(DamageKind.TRUNCATED_GZIP, DamageKind.GARBAGE_LINES, DamageKind.JSON_ARRAY),
        keep_events=False,
        seed=7,
    )


def run_demo() -> int:
    with MotoServer() as server:
        _banner(f"Local AWS (moto server) at {server.endpoint_url}")
        env = provision(server.endpoint_url)
        for t in env.tenants:
            state = "enabled" if t.enabled else "disabled"
            wants = ", ".join(t.desired_logs) if t.desired_logs else "all apps"
            print(
                f"  tenant {t.tenant_id:<8} account {t.account_id}  {t.region:<10} {t.log_group:<14} {state}, {wants}"
            )

        _banner("Generating Vector-format objects for the last 6 hours")
        now = datetime.now(UTC).replace(microsecond=0)
        cfg = demo_dataset(env, now)
        manifest = write_dataset(cfg, env.names.bucket, s3=env.client("s3"))
        s = manifest.summary()
        print(f"  {s['objects']} objects, {s['events']:,} events, {s['bytes'] / 1e6:.1f} MB in s3://{env.names.bucket}")
        for kind, key in s["damaged"].items():
            print(f"  damaged on purpose: {kind:<15} {key}")

        _banner(f"python jobs/replay.py --tenant {DEMO_TENANT} --since 7h  (local Ray)")
        REPORT_PATH.parent.mkdir(exist_ok=True)
        cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), "--tenant", DEMO_TENANT, "--since", "7h"]
        cmd += ["--report", str(REPORT_PATH), "--no-progress", "--log-level", "WARNING"]
        code = subprocess.run(cmd, env={**os.environ, **env.env}, check=False).returncode
        report = orjson.loads(REPORT_PATH.read_bytes())

        _banner("What arrived where (read back from each tenant's own account)")
        total = 0
        for t in env.tenants:
            streams = _streams(env, t.tenant_id)
            n = sum(x[1] for x in streams)
            total += n if t.tenant_id == DEMO_TENANT else 0
            print(f"  account {t.account_id} ({t.tenant_id}) {t.log_group}: {len(streams)} streams, {n:,} events")
            for name, count, first, last, sample in streams:
                print(f"    {name:<52} {count:>5} events  {_ms(first)}–{_ms(last)}  {sample!r}")

        _banner("The job's report next to CloudWatch")
        print(f"  report events_delivered     {report['events_delivered']:,}")
        print(f"  CloudWatch ({DEMO_TENANT}) holds    {total:,}")
        print(f"  objects delivered / failed  {report['objects_delivered']} / {len(report['objects_failed'])}")
        for f in report["objects_failed"]:
            print(f"    failed: {f['key']}: {f['reason']}")
        print(f"  lines_malformed             {report['lines_malformed']}")
        print(f"  full report: {REPORT_PATH}  (replay exit code {code}: 1 means some objects failed, as planted)")
        return 0 if report["events_delivered"] == total else 1
