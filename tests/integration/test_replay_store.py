"""The redelivery request store on the moto server over HTTP, and the API's refusals of a request (CONTRACTS.md
§9 "Replays") that come before any Ray job: a request racing another for the tenant's one run, each guard rail
naming its field, a disabled tenant or delivery, an unknown one, and a deployment without a Ray cluster."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from devstack.provision import LocalEnvironment, SampleTenant, add_tenants
from pipeline.admin.store import TenantStore
from pipeline.api.app import create_app
from pipeline.replay.requests import Busy, ReplaySpec, ReplayStore, State, iso, new_replay_id
from pipeline.replay.service import Limits, ReplayService
from pipeline.replay.submit import RayJobs
from tests.support.tenant_api import ApiClient, serving

pytestmark = pytest.mark.integration

KEY = "k3y-" + uuid.uuid4().hex
NOW = datetime.now(UTC)
SPEC = ReplaySpec(NOW - timedelta(hours=2), NOW - timedelta(hours=1))


@pytest.fixture(scope="module")
def store(module_aws: LocalEnvironment) -> ReplayStore:
    return ReplayStore(module_aws.names.replay_table, module_aws.client("dynamodb"))


def tenant_id() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def test_of_requests_racing_for_a_tenant_exactly_one_is_taken(store: ReplayStore) -> None:
    t = tenant_id()
    barrier = threading.Barrier(8)
    won: list[str] = []
    busy: list[str] = []

    def ask(n: int) -> None:
        rid = new_replay_id(NOW + timedelta(seconds=n))
        barrier.wait()
        try:
            store.create(t, rid, SPEC, {"objects": 1, "bytes": 2})
            won.append(rid)
        except Busy as exc:
            busy.append(exc.replay_id)

    threads = [threading.Thread(target=ask, args=(n,)) for n in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(won) == 1 and len(busy) == 7
    assert set(busy) == set(won)  # each refusal names the request that holds the run
    assert [r["replay_id"] for r in store.list(t)] == won  # the refused ones left nothing behind


def test_the_run_is_freed_when_its_request_ends_and_an_end_is_written_once(store: ReplayStore) -> None:
    t = tenant_id()
    first = new_replay_id(NOW)
    store.create(t, first, SPEC, {"objects": 3, "bytes": 10})
    assert store.active(t) == first
    assert store.mark_running(t, first) and not store.mark_running(t, first)
    assert store.progress(t, first, 1, 3, 40)
    assert store.get(t, first)["progress"] == {"objects_done": 1, "objects_planned": 3, "events_delivered": 40}
    assert store.finish(t, first, State.SUCCEEDED, {"location": "s3://b/k", "stopped_by": None})
    assert not store.finish(t, first, State.FAILED, error="late")  # the first end wins
    assert store.get(t, first)["state"] == "succeeded" and store.active(t) is None
    assert not store.progress(t, first, 3, 3, 99)  # an ended request's progress is not rewritten

    second = new_replay_id(NOW + timedelta(seconds=1))
    store.create(t, second, SPEC, {"objects": 0, "bytes": 0})
    assert [r["replay_id"] for r in store.list(t)] == [second, first]


def test_a_lock_left_by_an_ended_request_does_not_block_the_tenant(
    store: ReplayStore, module_aws: LocalEnvironment
) -> None:
    t = tenant_id()
    old = new_replay_id(NOW)
    store.create(t, old, SPEC, {"objects": 0, "bytes": 0})
    # The end written without freeing the run (a hand edit, or a crash between the two in an older version).
    module_aws.client("dynamodb").update_item(
        TableName=store.table,
        Key={"tenant_id": {"S": t}, "replay_id": {"S": old}},
        UpdateExpression="SET #s = :s",
        ExpressionAttributeNames={"#s": "state"},
        ExpressionAttributeValues={":s": {"S": "failed"}},
    )
    new = new_replay_id(NOW + timedelta(seconds=1))
    store.create(t, new, SPEC, {"objects": 0, "bytes": 0})
    assert store.active(t) == new


@pytest.fixture(scope="module")
def api(module_aws: LocalEnvironment) -> Iterator[tuple[ApiClient, LocalEnvironment]]:
    settings = module_aws.settings
    ddb = module_aws.client("dynamodb")
    tenants = TenantStore(settings.tenant_table, ddb, actor="api:test")
    # A cluster address nothing listens on: every refusal here comes before any call to it.
    service = ReplayService(
        settings,
        ReplayStore(settings.replay_table, ddb),
        tenants,
        RayJobs("http://127.0.0.1:9", "t0ken"),
        Limits(max_window_days=30, estimate_seconds=5),
    )
    with serving(create_app(KEY, tenants, None, replays=service)) as url:
        yield ApiClient(url, KEY), module_aws


def test_the_api_names_the_field_of_each_refusal(api: tuple[ApiClient, LocalEnvironment]) -> None:
    client, aws = api
    t = SampleTenant(tenant_id(), "111111111111", clusters=("prod-1",))
    off = SampleTenant(tenant_id(), "111111111111", clusters=("prod-1",), enabled=False)
    add_tenants(aws, [t, off])
    path = f"/tenants/{t.tenant_id}/replays"
    now = datetime.now(UTC)

    def refused(body: dict[str, object], tenant: str = t.tenant_id) -> dict[str, str]:
        r = client.post(f"/tenants/{tenant}/replays", body)
        assert r.status_code == 400, r.text
        fields: dict[str, str] = r.json()["fields"]
        return fields

    assert "ISO 8601" in refused({})["since"]
    assert (
        "empty or reversed"
        in refused({"since": iso(now - timedelta(hours=1)), "until": iso(now - timedelta(hours=2))})["until"]
    )
    assert (
        "future" in refused({"since": iso(now - timedelta(hours=1)), "until": iso(now + timedelta(hours=1))})["until"]
    )
    assert "at most 30" in refused({"since": iso(now - timedelta(days=31))})["since"]
    assert (
        "has no delivery 'nope'"
        in refused({"since": iso(now - timedelta(hours=1)), "deliveries": ["nope"]})["deliveries"]
    )
    assert "disabled" in refused({"since": iso(now - timedelta(hours=1))}, off.tenant_id)["tenant_id"]
    assert (
        "disabled"
        in refused({"since": iso(now - timedelta(hours=1)), "deliveries": ["cloudwatch"]}, off.tenant_id)["deliveries"]
    )
    assert refused({"since": iso(now - timedelta(hours=1)), "max_events": -1}).keys() == {"max_events"}
    bad_body = client.request("POST", path, raw=b'{"since": "a", "since": "b"}')
    assert bad_body.status_code == 400 and "body" in bad_body.json()["fields"]

    assert client.post("/tenants/nobody-here/replays", {"since": iso(now - timedelta(hours=1))}).status_code == 404
    assert client.get(f"{path}/rp-20260101T000000Z-00000000").status_code == 404
    assert client.get("/tenants/nobody-here/replays").status_code == 404
    assert client.get(path).json() == {"replays": []}

    # Valid, but no cluster answers: 503, and the request is kept as failed, naming why (the run is free).
    r = client.post(path, {"since": iso(now - timedelta(hours=1))})
    assert r.status_code == 503, r.text
    (kept,) = client.get(path).json()["replays"]
    assert kept["state"] == "failed" and "cannot be reached" in kept["error"]
    assert client.delete(f"{path}/{kept['replay_id']}").status_code == 409


def test_without_a_request_table_or_cluster_replays_answer_503(module_aws: LocalEnvironment) -> None:
    tenants = TenantStore(module_aws.names.tenant_table, module_aws.client("dynamodb"))
    with serving(create_app(KEY, tenants, None)) as url:
        r = ApiClient(url, KEY).post("/tenants/acme/replays", {"since": "2026-01-01T00:00:00Z"})
    assert r.status_code == 503 and "REPLAY_REQUEST_TABLE" in r.json()["error"]
