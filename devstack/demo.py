"""`make demo`: the whole system on one machine, no AWS account needed.

Starts the embedded local AWS, writes a realistic multi-tenant data set (plus damaged objects) and 30 days
of older data, runs the real replay CLI on a local Ray for one tenant and then a 30-day backfill into a
tenant with both destinations (S3 takes everything, CloudWatch says what it cannot take) and an S3-only
one, then reads every tenant's own CloudWatch and bucket back and shows what arrived, next to the reports.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from devstack.generator import DamageKind, GeneratorConfig, write_dataset
from devstack.provision import LocalEnvironment, SampleTenant, create_tenant_resources, provision
from devstack.readback import read_bucket, read_group
from devstack.server import MotoServer, free_port
from pipeline.admin.profiles import deploy_commands
from pipeline.tenants import PROFILE_ID, parse_profile

DEMO_TENANT = "acme"
REPORT_PATH = Path("reports/demo-report.json")
BACKFILL_REPORT_PATH = Path("reports/demo-backfill-report.json")
BACKFILL_DAYS = 30
BACKFILL_TENANTS = ("umbrella", "hooli")
ONBOARDED_TENANT = "wayne"  # onboarded through the tenant API, not provisioned
REDELIVERY_TENANT = "globex"  # asks for its logs again through the API: a Ray job on a local head


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
        seed=177,  # puts the three damaged objects in the replayed tenant, acme
    )


def backfill_dataset(now: datetime) -> GeneratorConfig:
    """30 days of a tenant with both destinations, and 6 hours of an S3-only one: the backfill's data."""
    return GeneratorConfig(
        since=now - timedelta(days=BACKFILL_DAYS),
        until=now - timedelta(hours=1),
        tenants=BACKFILL_TENANTS,
        clusters=("prod-1",),
        applications=("payment-service", "frontend"),
        pods_per_app=1,
        objects_per_pod=BACKFILL_DAYS,
        events_per_object=40,
        keep_events=False,
        seed=11,
    )


def replay_command() -> str:
    """The installed `log-replay` console script (pyproject's [project.scripts]) of this interpreter's venv,
    else the one on PATH: the demo runs the replay as an operator does, from the installed package."""
    beside = Path(sys.executable).parent / "log-replay"
    found = str(beside) if beside.is_file() else shutil.which("log-replay")
    if not found:
        raise SystemExit("log-replay is not installed: run `make demo` (it installs the project into .venv)")
    return found


def _replay(env: LocalEnvironment, report: Path, *args: str) -> tuple[int, dict[str, Any]]:
    cmd = [replay_command(), *args, "--report", str(report), "--no-progress"]
    code = subprocess.run([*cmd, "--log-level", "WARNING"], env={**os.environ, **env.env}, check=False).returncode
    return code, orjson.loads(report.read_bytes())


def _show_buckets(env: LocalEnvironment) -> bool:
    """Print what each tenant's bucket holds; True when every object is the source's bytes, unchanged."""
    central = env.client("s3")
    identical = True
    for t in env.tenants:
        if t.s3 is None:
            continue
        objects = read_bucket(env.tenant_s3(t.tenant_id), t.bucket)
        same = sum(
            o["body"]
            == central.get_object(Bucket=o["metadata"]["source-bucket"], Key=o["metadata"]["source-key"])["Body"].read()
            for o in objects.values()
        )
        identical &= same == len(objects)
        size = sum(o["size"] for o in objects.values())
        print(
            f"  account {t.account_id} ({t.tenant_id}) s3://{t.bucket}/: {len(objects)} objects, "
            f"{size / 1e6:.2f} MB, {same} byte-identical to their source"
        )
        for key in sorted(objects)[:2]:
            print(f"    {key}")
    return identical


def _show_deliveries(report: dict[str, Any]) -> None:
    for d in report["deliveries"]:
        skipped = ", ".join(f"{n} {reason}" for reason, n in d["objects_skipped"].items())
        line = f"  {d['tenant'] + '/' + d['delivery_id']:<22} {d['type']:<10} {d['objects_delivered']:>4} objects"
        line += f" {d['bytes_delivered'] / 1e6:>5.2f} MB"
        if d["type"] == "cloudwatch":
            line += f" {d['events_delivered']:>6,} events, {d['events_rejected_too_old']:,} too old for CloudWatch"
        print(line)
        if skipped:
            print(f"    skipped: {skipped}")


def _onboard_through_the_api(env: LocalEnvironment) -> bool:
    """Onboard a new tenant through the tenant API (signed requests over HTTP), then run its preflight."""
    import httpx
    import uvicorn

    from pipeline.admin.preflight import Preflight
    from pipeline.admin.store import TenantStore
    from pipeline.api.app import create_app
    from pipeline.api.auth import sign
    from pipeline.api.nonces import DynamoNonces

    tenant = SampleTenant(ONBOARDED_TENANT, "666666666666", clusters=("prod-1", "prod-2"))
    key = secrets.token_urlsafe(32)
    store = TenantStore(env.names.tenant_table, env.client("dynamodb"), actor="demo")
    nonces = DynamoNonces(env.names.nonce_table, env.client("dynamodb"))
    app = create_app(key, store, Preflight(env.central_role_arn), nonces=nonces)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    saved = {k: os.environ.get(k) for k in env.env}
    os.environ.update(env.env)  # the preflight's STS, CloudWatch and S3 clients go to the local AWS
    thread.start()
    try:
        while not server.started:
            time.sleep(0.02)

        def call(method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
            raw = orjson.dumps(body) if body is not None else b""
            content_type = "application/json" if raw else ""
            host = f"127.0.0.1:{port}"  # what httpx sends as Host, which the signature covers
            headers = sign(key, method, path, raw, host=host, content_type=content_type)
            if content_type:
                headers["Content-Type"] = content_type
            return httpx.request(method, f"http://127.0.0.1:{port}{path}", content=raw, headers=headers, timeout=30)

        # 1. The profile: its account, and an ExternalId the server generates (CONTRACTS.md §3).
        _banner(f"Onboarding tenant {ONBOARDED_TENANT} through the tenant API: PUT /tenants/{ONBOARDED_TENANT}")
        created = call("PUT", f"/tenants/{ONBOARDED_TENANT}", {"accounts": [tenant.account_id]})
        profile = parse_profile({**created.json(), "delivery_id": PROFILE_ID})
        print(
            f"  {created.status_code}: accounts {', '.join(sorted(profile.accounts))}, "
            f"generated ExternalId {profile.external_id}"
        )
        print("  the customer deploys its role with it:")
        for command in deploy_commands(profile, env.central_role_arn, [tenant.region]):
            print(f"    {command}")
        # 2. What that command makes in the customer's account: its role trusting exactly that id, its group.
        create_tenant_resources(env, tenant, external_id=profile.external_id)
        # 3. The delivery, bound to the profile's account and to the clusters it takes.
        path = f"/tenants/{ONBOARDED_TENANT}/deliveries/cloudwatch"
        _banner(f"PUT {path}")
        item = {k: v for k, v in tenant.delivery_items()[0].items() if k not in ("tenant_id", "delivery_id")}
        put = call("PUT", path, item)
        print(f"  {put.status_code} ETag {put.headers.get('etag')}: {tenant.log_group} in account {tenant.account_id}")
        elsewhere = {**item, "log_distribution_role_arn": env.tenant("acme").role_arn}
        stolen = call("PUT", f"/tenants/{ONBOARDED_TENANT}/deliveries/elsewhere", elsewhere)
        print(f"  and another tenant's role is refused: {stolen.status_code} {stolen.json().get('fields')}")
        _banner(f"POST {path}/validate  (the live preflight)")
        report = call("POST", f"{path}/validate").json()
        for step in report["steps"]:
            print(f"  {step['step']:<13} {step['status']:<7} {step['detail'] or step['hint'] or ''}")
        hop_ok = any(profile.external_id in (step["detail"] or "") for step in report["steps"])
        return (
            created.status_code == 201
            and put.status_code == 201
            and stolen.status_code == 400
            and (bool(report["ok"]) and hop_ok)
        )
    finally:
        server.should_exit = True
        thread.join(10)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _parquet_delivery_and_query(env: LocalEnvironment, manifest_keys: list[str]) -> bool:
    """One parquet delivery (CONTRACTS.md §3 `format: parquet`) for hooli, fed by the consumer's path, and a query
    by partition over what it wrote, as Athena would run it (pyarrow.dataset, and DuckDB when installed)."""
    import tempfile

    import pyarrow.dataset as pads
    from boto3.dynamodb.types import TypeSerializer

    from pipeline.delivery.engine import build_deliverer
    from pipeline.delivery.results import Status
    from pipeline.delivery.routing import ObjectRef

    tenant = env.tenant("hooli")
    item = {**tenant.delivery_items()[0], "delivery_id": "athena", "format": "parquet", "bucket_prefix": "athena/"}
    ser = TypeSerializer()
    env.client("dynamodb").put_item(
        TableName=env.names.tenant_table, Item={k: ser.serialize(v) for k, v in item.items()}
    )
    keys = [k for k in manifest_keys if k.split("/")[1] == "hooli"]
    print(f"  delivery athena of hooli: format parquet, s3://{tenant.bucket}/athena/ ({len(keys)} source objects)")
    saved = dict(os.environ)
    os.environ.update(env.env)  # the consumer's clients read the standard AWS variables, as in a deployment
    deliverer = build_deliverer(env.settings, deliveries=("athena",))
    try:
        results = [deliverer.deliver(ObjectRef(env.names.bucket, k)) for k in keys]
    finally:
        deliverer.close()
        os.environ.clear()
        os.environ.update(saved)
    ok = all(r.status in (Status.DELIVERED, Status.DAMAGED) for r in results)
    got = read_bucket(env.tenant_s3("hooli"), tenant.bucket, prefix="athena/")
    for key in sorted(got)[:3]:
        print(f"    {key}  {got[key]['size']:,} bytes")
    with tempfile.TemporaryDirectory() as tmp:
        for key, obj in got.items():
            path = Path(tmp) / key
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(obj["body"])
        root = Path(tmp) / "athena" / "hooli"
        dataset = pads.dataset(root, format="parquet", partitioning="hive")
        days = sorted({k.split("/dt=")[1][:10] for k in got})
        if not days:
            return False
        day = days[-1]
        table = dataset.to_table(
            columns=["application", "message"], filter=(pads.field("dt") == day) & ~pads.field("malformed")
        )
        counts = table.group_by("application").aggregate([("message", "count")]).sort_by("application")
        print(f"  pyarrow.dataset, hive partitions, WHERE dt = '{day}' AND NOT malformed: events by application")
        for row in counts.to_pylist():
            print(f"    {row['application']:<24} {row['message_count']:>6}")
        try:
            import duckdb
        except ImportError:
            return ok and table.num_rows > 0
        sql = (
            f"SELECT application, count(*) AS events FROM read_parquet('{root}/*/*/*.parquet', hive_partitioning=true) "
            f"WHERE dt = '{day}' AND NOT malformed GROUP BY application ORDER BY application"
        )
        print(f"  DuckDB: {sql.replace(str(root), '…')}")
        rows = duckdb.sql(sql).fetchall()
        for app, n in rows:
            print(f"    {app:<24} {n:>6}")
        return ok and rows == [(r["application"], r["message_count"]) for r in counts.to_pylist()]


def _show_status(env: LocalEnvironment) -> bool:
    """The last step: `log-tenants status`, each delivery's status as the replays above left it (pipeline/status.py),
    worst first. Exit 1 only says a delivery is failing; the demo's planted damaged objects make acme degraded."""
    _banner("log-tenants status  (each delivery, worst first)")
    tool = Path(replay_command()).with_name("log-tenants")
    run = subprocess.run([str(tool), "status"], env={**os.environ, **env.env}, check=False)
    return run.returncode in (0, 1)


def _redelivery_through_the_api(env: LocalEnvironment) -> bool:
    """A tenant asks for its logs again: POST /tenants/{id}/replays on the tenant API, run as a Ray job on a
    local Ray head with its Jobs API and token auth (`ray start --head`, as a RayCluster runs), followed with
    GET until it ends; then its report and what its own CloudWatch holds. The head takes some 20 s to start:
    the demo's one cluster with a dashboard."""
    import httpx

    from devstack.localray import LocalRay
    from pipeline.admin.store import TenantStore
    from pipeline.api.app import create_app
    from pipeline.api.auth import sign
    from pipeline.replay.requests import ReplayStore
    from pipeline.replay.service import Limits, ReplayService
    from pipeline.replay.submit import RayJobs

    token = secrets.token_hex(16)
    head_env = (
        {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
        | env.env
        | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5"}
        | {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "REPLAY_WORKERS": "1"}
    )
    _banner("A customer asks for its logs again: starting a local Ray head with its Jobs API (token auth)")
    ray = LocalRay(head_env)
    saved = {k: os.environ.get(k) for k in env.env}
    os.environ.update(env.env)  # the API's estimate lists the central bucket and reads the ledger
    try:
        ray.start_head(num_cpus=2)
        print(f"  Ray head at {ray.dashboard}")
        ddb = env.client("dynamodb")
        tenants = TenantStore(env.names.tenant_table, ddb, actor="demo")
        jobs = RayJobs(ray.dashboard, token, {"REPLAY_REQUEST_TABLE": env.names.replay_table})
        service = ReplayService(env.settings, ReplayStore(env.names.replay_table, ddb), tenants, jobs, Limits(90))
        key = secrets.token_urlsafe(32)
        app = create_app(key, tenants, None, replays=service)
        import uvicorn

        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.02)

        def call(method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
            raw = orjson.dumps(body) if body is not None else b""
            content_type = "application/json" if raw else ""
            headers = sign(key, method, path, raw, host=f"127.0.0.1:{port}", content_type=content_type)
            if content_type:
                headers["Content-Type"] = content_type
            return httpx.request(method, f"http://127.0.0.1:{port}{path}", content=raw, headers=headers, timeout=60)

        try:
            path = f"/tenants/{REDELIVERY_TENANT}/replays"
            now = datetime.now(UTC)
            window = {
                "since": (now - timedelta(hours=7)).isoformat().replace("+00:00", "Z"),
                "until": (now - timedelta(minutes=1)).isoformat().replace("+00:00", "Z"),
            }
            _banner(f"POST {path}  {orjson.dumps(window).decode()}")
            asked = call("POST", path, window)
            print(f"  {asked.status_code} {asked.text}")
            if asked.status_code != 202:
                return False
            rid = asked.json()["replay_id"]
            again = call("POST", path, window)
            print(f"  a second request while it is pending or running: {again.status_code} {again.json()['error']}")
            seen: list[str] = []
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                doc = call("GET", f"{path}/{rid}").json()
                p = doc["progress"]
                line = f"{doc['state']} {p['objects_done']}/{p['objects_planned']} objects, {p['events_delivered']} ev"
                if not seen or seen[-1] != line:
                    print(f"  GET {path}/{rid}: {line}")
                    seen.append(line)
                if doc["state"] in ("succeeded", "failed", "stopped"):
                    break
                time.sleep(0.5)
            print(f"  report: {orjson.dumps(doc['report']).decode()}")
            group = read_group(env.tenant_logs(REDELIVERY_TENANT), env.tenant(REDELIVERY_TENANT).log_group)
            held = sum(len(evs) for evs in group.values())
            print(f"  {REDELIVERY_TENANT}'s own CloudWatch now holds {held:,} events (it had none before)")
            listed = call("GET", path).json()["replays"]
            print(f"  GET {path}: {[(r['replay_id'], r['state']) for r in listed]}")
            report = doc["report"] or {}
            return doc["state"] == "succeeded" and again.status_code == 409 and report.get("events_delivered") == held
        finally:
            server.should_exit = True
            thread.join(10)
    finally:
        ray.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def run_demo() -> int:
    with MotoServer() as server:
        _banner(f"Local AWS (moto server) at {server.endpoint_url}")
        env = provision(server.endpoint_url)
        for t in env.tenants:
            state = "enabled" if t.enabled else "disabled"
            targets = []
            if t.cloudwatch:
                wants = ", ".join(t.desired_logs) if t.desired_logs else "all apps"
                targets.append(f"CloudWatch {t.log_group} ({wants})")
            if t.s3 is not None:
                targets.append(f"S3 s3://{t.bucket}/{t.s3.prefix} (all apps)")
            print(f"  tenant {t.tenant_id:<8} account {t.account_id}  {t.region:<10} {state:<8} {' + '.join(targets)}")

        onboarded = _onboard_through_the_api(env)

        _banner("Generating Vector-format objects for the last 6 hours, and 30 days for a backfill")
        now = datetime.now(UTC).replace(microsecond=0)
        manifest = write_dataset(demo_dataset(env, now), env.names.bucket, s3=env.client("s3"))
        s = manifest.summary()
        print(f"  {s['objects']} objects, {s['events']:,} events, {s['bytes'] / 1e6:.1f} MB in s3://{env.names.bucket}")
        for kind, key in s["damaged"].items():
            print(f"  damaged on purpose: {kind:<15} {key}")
        old = write_dataset(backfill_dataset(now), env.names.bucket, s3=env.client("s3")).summary()
        print(f"  backfill set: {old['objects']} objects over {BACKFILL_DAYS} days for {', '.join(BACKFILL_TENANTS)}")

        _banner(f"log-replay --tenant {DEMO_TENANT} --since 7h  (local Ray)")
        REPORT_PATH.parent.mkdir(exist_ok=True)
        code, report = _replay(env, REPORT_PATH, "--tenant", DEMO_TENANT, "--since", "7h")

        _banner(f"log-replay --tenant umbrella --tenant hooli --since {BACKFILL_DAYS + 1}d  (backfill)")
        backfill_code, backfill = _replay(
            env,
            BACKFILL_REPORT_PATH,
            *(a for t in BACKFILL_TENANTS for a in ("--tenant", t)),
            "--since",
            f"{BACKFILL_DAYS + 1}d",
        )
        print("  S3 takes every object of the window; CloudWatch cannot take events older than 14 days:")
        _show_deliveries(backfill)

        _banner("What arrived where (read back from each tenant's own account)")
        total = 0
        for t in env.tenants:
            if not t.cloudwatch:
                continue
            streams = _streams(env, t.tenant_id)
            n = sum(x[1] for x in streams)
            total += n if t.tenant_id == DEMO_TENANT else 0
            print(f"  account {t.account_id} ({t.tenant_id}) {t.log_group}: {len(streams)} streams, {n:,} events")
            for name, count, first, last, sample in streams[:6]:
                print(f"    {name:<52} {count:>5} events  {_ms(first)}–{_ms(last)}  {sample!r}")
            if len(streams) > 6:
                print(f"    … and {len(streams) - 6} more streams")
        identical = _show_buckets(env)

        _banner("A parquet delivery (format: parquet) and a query by partition, as Athena would run it")
        queried = _parquet_delivery_and_query(env, [o.key for o in manifest.objects])

        _banner("The job's report next to CloudWatch")
        print(f"  report events_delivered     {report['events_delivered']:,}")
        print(f"  CloudWatch ({DEMO_TENANT}) holds    {total:,}")
        print(f"  objects delivered / failed  {report['objects_delivered']} / {report['objects_failed_count']}")
        for f in report["objects_failed"]:
            print(f"    failed: {f['key']}: {f['reason']}")
        print(f"  lines_malformed             {report['lines_malformed']}")
        print(f"  full reports: {REPORT_PATH}, {BACKFILL_REPORT_PATH}")
        print(f"  (replay exit codes {code} and {backfill_code}: 1 means some objects failed, as planted)")
        redelivered = _redelivery_through_the_api(env)
        status_shown = _show_status(env)
        ok = (
            report["events_delivered"] == total
            and identical
            and backfill_code == 0
            and onboarded
            and queried
            and redelivered
            and status_shown
        )
        return 0 if ok else 1
