"""Each delivery's status against moto (pipeline/status.py, CONTRACTS.md §9 "Status"): two consumer processes
and two bare writers adding to one item at once, the tenant's own CloudWatch metrics with `publish_metrics`,
the API's status routes over real HTTP with signed requests, and `log-tenants status`."""

from __future__ import annotations

import json
import multiprocessing
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from devstack import generator as gen
from devstack.provision import LocalEnvironment, provision
from devstack.server import MotoServer
from pipeline.admin.store import TenantStore
from pipeline.api.app import create_app
from pipeline.commands.tenants import main as tenants_cli
from pipeline.delivery.engine import build_deliverer
from pipeline.delivery.routing import ObjectRef
from pipeline.ledger import Ledger
from pipeline.status import (
    NAMESPACE,
    Figures,
    LastError,
    Observation,
    StatusRecorder,
    StatusTable,
    maximum,
    status_recorder,
    tenant_status,
)
from tests.support.consumer_process import ConsumerProcess, wait_for
from tests.support.status_writer import write_many
from tests.support.tenant_api import ApiClient, serving

pytestmark = pytest.mark.integration

API_KEY = "status-admin-key-0123456789"


def _write(local: LocalEnvironment, **kw: Any) -> gen.Manifest:
    now = datetime.now(UTC).replace(microsecond=0)
    cfg = gen.GeneratorConfig(since=now - timedelta(minutes=20), until=now - timedelta(minutes=2), **kw)
    return gen.write_dataset(cfg, local.names.bucket, s3=local.client("s3"), workers=4)


def _table(local: LocalEnvironment) -> StatusTable:
    return StatusTable(local.names.status_table, local.client("dynamodb"))


def _store(local: LocalEnvironment) -> TenantStore:
    return TenantStore(local.names.tenant_table, local.client("dynamodb"))


def _status(local: LocalEnvironment, tenant: str, delivery: str) -> dict[str, Any]:
    doc = tenant_status(_store(local), _table(local), tenant, time.time(), delivery)
    return dict(doc["deliveries"][0])


# -- two processes writing one item at once ----------------------------------------------------------------


@pytest.fixture
def serial_aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalEnvironment]:
    """A moto of its own answering one request at a time, so each UpdateItem is atomic as in DynamoDB
    (devstack/server.py says why the shared one is not); this process's AWS environment points at it."""
    import os

    with MotoServer(log_path=tmp_path / "moto.log", serial=True) as server:
        env = provision(server.endpoint_url)
        for var in [v for v in os.environ if v.startswith("AWS_")]:
            monkeypatch.delenv(var)
        for k, v in env.env.items():
            monkeypatch.setenv(k, v)
        yield env


def test_two_writers_in_separate_processes_add_up_exactly(serial_aws: LocalEnvironment) -> None:
    local_aws = serial_aws
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    key = ("acme", "cloudwatch")
    writes = 60
    base = time.time() - 3600
    done = ctx.Queue()
    # The second writer's objects are older: its newest must not hide the first's.
    procs = [
        ctx.Process(target=write_many, args=(local_aws.names.status_table, key, writes, first, barrier, done))
        for first in (base + 1000, base)
    ]
    for p in procs:
        p.start()
    assert [done.get(timeout=240), done.get(timeout=240)] == [writes, writes]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    s = _status(local_aws, *key)
    each = sum(range(writes))
    assert s["last_hour"] == {
        "objects": 2 * writes,
        "events": 2 * each,
        "bytes": 2 * writes * 100,
        "events_rejected": 0,
        "objects_failed": 0,
    }
    assert s["last_day"] == s["last_hour"]
    item = _table(local_aws).tenant("acme")["cloudwatch"]
    assert maximum(item, "newest_object") == pytest.approx(base + 1000 + writes - 1, abs=0.01)
    # The max sets stay a few elements long: each write prunes what it saw below the largest.
    assert len(item.get("newest_object_0", ())) + len(item.get("newest_object_1", ())) <= 6


@pytest.fixture
def start_consumer(serial_aws: LocalEnvironment, tmp_path: Path) -> Iterator[Callable[..., ConsumerProcess]]:
    import os

    started: list[ConsumerProcess] = []
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | serial_aws.env

    def start(*args: str) -> ConsumerProcess:
        fast = ["--wait-time", "1", "--heartbeat-interval", "0.4", "--retry-delay", "0", "--workers", "4"]
        c = ConsumerProcess(env, tmp_path / f"consumer-{len(started)}.log", [*fast, *args])
        started.append(c)
        return c.wait_ready()

    yield start
    for c in started:
        c.kill()


def test_two_consumer_processes_count_every_object_once(
    serial_aws: LocalEnvironment, start_consumer: Callable[..., ConsumerProcess]
) -> None:
    local_aws = serial_aws
    one, two = start_consumer(), start_consumer()
    manifest = _write(
        local_aws,
        tenants=("acme", "umbrella"),
        applications=("payment-service", "frontend"),
        pods_per_app=3,
        objects_per_pod=4,
        events_per_object=15,
        seed=2525,
    )
    ledger = Ledger(local_aws.names.ledger_table)

    def recorded(tenant: str) -> set[str]:
        return {e.object_key for e in ledger.entries(tenant)}

    for tenant in ("acme", "umbrella"):
        keys = {o.key for o in manifest.objects if o.key.split("/")[1] == tenant}
        wait_for(lambda t=tenant, k=keys: recorded(t) >= k, 120, f"every {tenant} object in the ledger")  # type: ignore[misc]
    # SIGTERM: each drains, then writes what it has (its last flush).
    assert one.terminate()[0] == 0 and two.terminate()[0] == 0
    both = [r for c in (one, two) for r in c.logs() if r.get("msg", "").startswith("object ")]
    assert {r.get("tenant") for r in both} >= {"acme", "umbrella"}
    for tenant, delivery, apps in (
        ("acme", "cloudwatch", None),
        ("umbrella", "cloudwatch", {"payment-service"}),  # its CloudWatch delivery takes one application
        ("umbrella", "s3-archive", None),
    ):
        objs = [
            o
            for o in manifest.objects
            if o.key.split("/")[1] == tenant and (apps is None or o.key.split("/")[2] in apps)
        ]
        s = _status(local_aws, tenant, delivery)
        assert s["last_day"]["objects"] == len(objs), (tenant, delivery)
        assert s["last_day"]["objects_failed"] == 0 and s["state"] == "healthy"
        if delivery == "cloudwatch":
            assert s["last_day"]["events"] == sum(o.expected_count for o in objs)
        else:
            assert s["last_day"]["bytes"] == sum(o.size for o in objs)  # the objects, byte for byte
        assert s["lag_seconds"] == 0


# -- the tenant's own metrics ----------------------------------------------------------------------------


def _metrics(local: LocalEnvironment, account: str | None) -> list[dict[str, Any]]:
    cw = local.client("cloudwatch", account_id=account)
    return list(cw.list_metrics(Namespace=NAMESPACE).get("Metrics", []))


def test_publish_metrics_puts_the_figures_in_the_tenants_account_and_nowhere_else(local_aws: LocalEnvironment) -> None:
    ddb = local_aws.client("dynamodb")
    ddb.update_item(
        TableName=local_aws.names.tenant_table,
        Key={"tenant_id": {"S": "acme"}, "delivery_id": {"S": "cloudwatch"}},
        UpdateExpression="SET publish_metrics = :t",
        ExpressionAttributeValues={":t": {"BOOL": True}},
    )
    manifest = _write(local_aws, tenants=("acme", "globex"), objects_per_pod=2, events_per_object=10, seed=7)
    settings = local_aws.settings
    deliverer = build_deliverer(settings)
    recorder = status_recorder(settings, deliverer.tenants)
    assert recorder is not None and recorder.publisher is not None
    for o in manifest.objects:
        recorder.observe(deliverer.deliver(ObjectRef(settings.bucket, o.key)))
    recorder.close()
    acme = _metrics(local_aws, local_aws.tenant("acme").account_id)
    names = {m["MetricName"] for m in acme}
    assert {"ObjectsDelivered", "EventsDelivered", "BytesDelivered", "EventsRejected", "ObjectsFailed"} <= names
    assert all(
        {(d["Name"], d["Value"]) for d in m["Dimensions"]} == {("tenant", "acme"), ("delivery", "cloudwatch")}
        for m in acme
    )
    cw = local_aws.client("cloudwatch", account_id=local_aws.tenant("acme").account_id)
    stats = cw.get_metric_statistics(
        Namespace=NAMESPACE,
        MetricName="ObjectsDelivered",
        Dimensions=[{"Name": "tenant", "Value": "acme"}, {"Name": "delivery", "Value": "cloudwatch"}],
        StartTime=datetime.now(UTC) - timedelta(hours=1),
        EndTime=datetime.now(UTC) + timedelta(minutes=5),
        Period=3600,
        Statistics=["Sum"],
    )
    acme_objects = sum(1 for o in manifest.objects if o.key.split("/")[1] == "acme")
    assert sum(p["Sum"] for p in stats["Datapoints"]) == acme_objects
    # Nowhere else: not the central account, not another tenant's (globex delivered too, without the flag).
    assert _metrics(local_aws, None) == []
    assert _metrics(local_aws, local_aws.tenant("globex").account_id) == []


# -- the API ---------------------------------------------------------------------------------------------


@pytest.fixture
def api(local_aws: LocalEnvironment) -> Iterator[tuple[ApiClient, ApiClient]]:
    from pipeline.api.auth import ApiKey, KeyRing, KeyScope

    keys = KeyRing([ApiKey("ops", API_KEY, KeyScope.ADMIN), ApiKey("dash", API_KEY + "-read", KeyScope.READ)])
    app = create_app(keys, _store(local_aws), None, statuses=_table(local_aws))
    with serving(app) as url:
        yield ApiClient(url, API_KEY, "ops"), ApiClient(url, API_KEY + "-read", "dash")


def _record(local: LocalEnvironment, key: tuple[str, str], *observations: Observation) -> None:
    recorder = StatusRecorder(_table(local))
    for o in observations:
        recorder.coalescer.add(key, o)
    recorder.close()


def test_api_status_routes(local_aws: LocalEnvironment, api: tuple[ApiClient, ApiClient]) -> None:
    admin, reader = api
    now = time.time()
    _record(
        local_aws,
        ("umbrella", "s3-archive"),
        Observation(now - 5, Figures(1, 0, 2048), key_time=now - 200, delivered=True),
        Observation(
            now - 2, Figures(objects_failed=1), key_time=now - 100, error=LastError("NoSuchBucket", "m", "r", now - 2)
        ),
    )
    r = reader.get("/tenants/umbrella/status")  # a read key may read it
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["tenant_id"] == "umbrella"
    by_id = {d["delivery_id"]: d for d in doc["deliveries"]}
    assert set(by_id) == {"cloudwatch", "s3-archive"}
    assert [d["delivery_id"] for d in doc["deliveries"]] == ["s3-archive", "cloudwatch"]  # worst first
    s3 = by_id["s3-archive"]
    assert s3["state"] == "failing" and s3["last_error"]["code"] == "NoSuchBucket"
    assert s3["last_hour"]["bytes"] == 2048 and s3["lag_seconds"] == pytest.approx(100, abs=0.01)
    assert by_id["cloudwatch"] == {
        "delivery_id": "cloudwatch",
        "state": "healthy",
        "newest_object_time": None,
        "newest_event_time": None,
        "lag_seconds": None,
        "last_hour": {"objects": 0, "events": 0, "bytes": 0, "events_rejected": 0, "objects_failed": 0},
        "last_day": {"objects": 0, "events": 0, "bytes": 0, "events_rejected": 0, "objects_failed": 0},
        "last_error": None,
    }
    one = admin.get("/tenants/umbrella/deliveries/s3-archive/status")
    assert one.status_code == 200 and one.json() == s3
    assert admin.get("/tenants/initech/status").json()["deliveries"][0]["state"] == "disabled"
    assert admin.get("/tenants/nobody/status").status_code == 404
    assert admin.get("/tenants/umbrella/deliveries/nothing/status").status_code == 404
    assert admin.get("/tenants/umbrella/deliveries/_profile/status").status_code == 404
    # Signed like every other route: no signature, another key, or a read key writing: refused.
    assert admin.get("/tenants/umbrella/status", signed=False).status_code == 401
    assert ApiClient(admin.base_url, "not-the-key-0123456789", "ops").get("/tenants/umbrella/status").status_code == 401
    assert reader.post("/tenants/umbrella/status").status_code in (403, 405)


def test_api_without_a_status_table_says_so(local_aws: LocalEnvironment) -> None:
    app = create_app(API_KEY, _store(local_aws), None)
    with serving(app) as url:
        r = ApiClient(url, API_KEY).get("/tenants/acme/status")
    assert r.status_code == 503 and "DELIVERY_STATUS_TABLE" in r.text


# -- the CLI ---------------------------------------------------------------------------------------------


def test_log_tenants_status_one_line_per_delivery_worst_first(local_aws: LocalEnvironment) -> None:
    now = time.time()
    _record(local_aws, ("acme", "cloudwatch"), Observation(now, Figures(3, 30, 300), key_time=now - 60, delivered=True))
    _record(
        local_aws,
        ("globex", "cloudwatch"),
        Observation(now, Figures(objects_failed=1), error=LastError("ThrottlingException", "slow", "r", now)),
    )
    runner = CliRunner()
    out = runner.invoke(tenants_cli, ["status", "--json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.output)["deliveries"]
    assert [(r["tenant_id"], r["delivery_id"], r["state"]) for r in rows][:1] == [
        ("globex", "cloudwatch", "backing-off")
    ]
    assert rows[-1]["state"] == "disabled"  # initech
    assert {(r["tenant_id"], r["delivery_id"]) for r in rows} == {
        (t.tenant_id, d) for t in local_aws.tenants for d in _ids(t)
    }
    text = runner.invoke(tenants_cli, ["status", "acme", "globex"])
    assert text.exit_code == 0
    lines = text.output.strip().splitlines()
    assert lines[0].split()[:2] == ["STATE", "TENANT/DELIVERY"]
    assert lines[1].startswith("backing-off") and "globex/cloudwatch" in lines[1] and "ThrottlingException" in lines[1]
    assert lines[2].startswith("healthy") and "acme/cloudwatch" in lines[2] and "3/30/300" in lines[2]
    assert len(lines) == 3
    # A failing delivery makes the exit code 1; an unknown tenant too, with a message.
    _record(
        local_aws,
        ("acme", "cloudwatch"),
        Observation(now + 1, Figures(objects_failed=1), error=LastError("AccessDenied", "no", "r", now + 1)),
    )
    assert runner.invoke(tenants_cli, ["status", "acme"]).exit_code == 1
    unknown = runner.invoke(tenants_cli, ["status", "nobody"])
    assert unknown.exit_code == 1 and "nobody" in unknown.output


def _ids(t: Any) -> list[str]:
    return [str(i["delivery_id"]) for i in t.delivery_items()]
