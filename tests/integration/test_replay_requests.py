"""Redelivery requests through the API, run as Ray jobs (CONTRACTS.md §9 "Replays"), end to end: the API over
HTTP (signed as §9 says), a real local Ray head with token auth whose Jobs API takes the jobs, the moto
server over HTTP for every AWS call, reached by the jobs through the fault proxy, so a test can hold a
replay's PutLogEvents and keep it running until it lets them go (an event, not a sleep).

One Ray head for the module; each test has a tenant of its own (its own lock, log group and ledger items).
"""

from __future__ import annotations

import os
import secrets
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from devstack import generator as gen
from devstack.faults import FaultProxy, Hold, Rule
from devstack.localray import LocalRay
from devstack.provision import LocalEnvironment, SampleTenant, add_tenants
from devstack.readback import read_group
from pipeline.admin.store import TenantStore
from pipeline.api.app import create_app
from pipeline.replay.requests import ReplayStore, iso
from pipeline.replay.service import Limits, ReplayService
from pipeline.replay.submit import JobCommand, JobsUnavailable, RayJobs
from tests.support.consumer_process import wait_for
from tests.support.tenant_api import ApiClient, serving

pytestmark = [pytest.mark.integration, pytest.mark.ray]

KEY = "k3y-" + uuid.uuid4().hex
ACCOUNT = "111111111111"
ENDED = ("succeeded", "failed", "stopped")


@dataclass
class Stack:
    aws: LocalEnvironment
    proxy: FaultProxy
    ray: LocalRay
    api: ApiClient
    token: str

    def tenant(self) -> SampleTenant:
        """A tenant of its own, onboarded as every new one is: a profile, a delivery that lists its clusters."""
        t = SampleTenant(f"rq-{uuid.uuid4().hex[:8]}", ACCOUNT, clusters=("prod-1",))
        add_tenants(self.aws, [t])
        return t

    def logs(self, t: SampleTenant) -> Counter[tuple[int, str]]:
        """Every event in the tenant's log group, read with a client in the tenant's own account."""
        streams = read_group(self.aws.client("logs", t.region, t.account_id), t.log_group)
        return Counter(e for events in streams.values() for e in events)

    def replay(self, t: SampleTenant, rid: str) -> dict[str, Any]:
        r = self.api.get(f"/tenants/{t.tenant_id}/replays/{rid}")
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc

    def until_ended(self, t: SampleTenant, rid: str) -> dict[str, Any]:
        found: dict[str, Any] = wait_for(
            lambda: (d := self.replay(t, rid))["state"] in ENDED and d, 180, f"replay {rid} to end", interval=0.5
        )
        return found

    def job_logs(self, rid: str) -> str:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(self.ray.dashboard, headers={"Authorization": f"Bearer {self.token}"})
        return str(client.get_job_logs(rid))


@pytest.fixture(scope="module")
def stack(module_aws: LocalEnvironment) -> Iterator[Stack]:
    token = secrets.token_hex(16)
    with FaultProxy(module_aws.endpoint_url) as proxy:
        env = (
            {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
            | module_aws.env
            # The jobs reach AWS through the proxy; the API and the test go straight to moto.
            | {"AWS_ENDPOINT_URL": proxy.url}
            | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "5"}
            # `log-replay` on the jobs' PATH, as the Ray image installs it; one delivery worker per job.
            | {"PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}", "REPLAY_WORKERS": "1"}
        )
        ray = LocalRay(env)
        try:
            ray.start_head(num_cpus=2)
            settings = module_aws.settings
            ddb = module_aws.client("dynamodb")
            tenants = TenantStore(settings.tenant_table, ddb, actor="api:test")
            service = ReplayService(
                settings,
                ReplayStore(settings.replay_table, ddb),
                tenants,
                RayJobs(ray.dashboard, token, {"REPLAY_REQUEST_TABLE": settings.replay_table}),
                Limits(max_window_days=90),
            )
            app = create_app(KEY, tenants, None, replays=service)
            with serving(app) as url:
                yield Stack(module_aws, proxy, ray, ApiClient(url, KEY), token)
        finally:
            ray.stop()


def write_logs(stack: Stack, t: SampleTenant, pods: int, objects: int, events: int) -> list[gen.ExpectedEvent]:
    now = datetime.now(UTC)
    cfg = gen.GeneratorConfig(
        since=now - timedelta(minutes=50),
        until=now - timedelta(minutes=15),
        tenants=(t.tenant_id,),
        pods_per_app=pods,
        objects_per_pod=objects,
        events_per_object=events,
        seed=int(uuid.uuid4().int % 1000),
    )
    manifest = gen.write_dataset(cfg, stack.aws.names.bucket, s3=stack.aws.client("s3"))
    return [e for o in manifest.objects for e in o.expected or []]


def window() -> dict[str, str]:
    now = datetime.now(UTC)
    return {"since": iso(now - timedelta(hours=1)), "until": iso(now - timedelta(minutes=1))}


def report_in_s3(stack: Stack, location: str) -> dict[str, Any]:
    bucket, _, key = location.removeprefix("s3://").partition("/")
    doc: dict[str, Any] = orjson.loads(stack.aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    return doc


def hold_puts(stack: Stack, t: SampleTenant) -> Hold:
    hold = Hold(limit_s=150)
    stack.proxy.add(Rule(hold, service="logs", operation="PutLogEvents", body_contains=t.log_group))
    return hold


def test_a_requested_replay_runs_as_a_ray_job_and_delivers_its_window_once(stack: Stack) -> None:
    t = stack.tenant()
    expected = write_logs(stack, t, pods=2, objects=3, events=40)
    path = f"/tenants/{t.tenant_id}/replays"

    dry = stack.api.post(path, {**window(), "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert set(dry.json()) == {"estimate"} and dry.json()["estimate"]["objects"] == 6
    assert stack.api.get(path).json() == {"replays": []}  # a dry run creates nothing

    hold = hold_puts(stack, t)
    try:
        asked = stack.api.post(path, window())
        assert asked.status_code == 202, asked.text
        rid = asked.json()["replay_id"]
        assert asked.json()["state"] == "pending"
        assert asked.json()["estimate"]["objects"] == 6 and asked.json()["estimate"]["bytes"] > 0

        hold.wait_held(1)  # the job's first PutLogEvents reached the tenant's account: it is running
        running = stack.replay(t, rid)
        assert running["state"] == "running" and running["report"] is None
        assert running["progress"]["objects_planned"] >= 0

        # One replay per tenant: a second request while the first runs is refused, and names the first.
        again = stack.api.post(path, window())
        assert again.status_code == 409, again.text
        assert again.json()["replay_id"] == rid
    finally:
        hold.open()

    done = stack.until_ended(t, rid)
    assert done["state"] == "succeeded", done
    assert done["progress"] == {"objects_done": 6, "objects_planned": 6, "events_delivered": len(expected)}
    report = done["report"]
    assert report["stopped_by"] is None and report["objects_failed"] == 0
    assert report["events_delivered"] == len(expected)
    assert report["location"] == f"s3://{stack.aws.names.bucket}/reports/replays/{rid}.json"
    in_s3 = report_in_s3(stack, report["location"])
    assert in_s3["events_delivered"] == len(expected) and in_s3["stopped"] is None

    # Exactly once into the tenant's own account; a second request for the same window sends nothing more.
    assert stack.logs(t) == Counter((e.timestamp_ms, e.message) for e in expected)
    second = stack.api.post(path, window())
    assert second.status_code == 202, second.text
    assert second.json()["estimate"]["objects"] == 0  # the ledger has them all
    assert stack.until_ended(t, second.json()["replay_id"])["report"]["events_delivered"] == 0
    assert stack.logs(t) == Counter((e.timestamp_ms, e.message) for e in expected)

    listed = stack.api.get(path).json()["replays"]
    assert [r["replay_id"] for r in listed] == [second.json()["replay_id"], rid]  # newest first


def test_delete_stops_a_running_replay(stack: Stack) -> None:
    t = stack.tenant()
    write_logs(stack, t, pods=1, objects=6, events=40)
    path = f"/tenants/{t.tenant_id}/replays"
    hold = hold_puts(stack, t)
    try:
        rid = stack.api.post(path, window()).json()["replay_id"]
        hold.wait_held(1)
        stopping = stack.api.delete(f"{path}/{rid}")
        assert stopping.status_code == 202, stopping.text
        assert stopping.json()["stop_requested"] is True
        # The driver has Ray's SIGTERM once it says it is finishing the objects in flight.
        wait_for(lambda: "finishing the objects in flight" in stack.job_logs(rid), 60, "the driver to stop", 0.5)
    finally:
        hold.open()
    done = stack.until_ended(t, rid)
    assert done["state"] == "stopped", done
    assert done["report"]["stopped_by"] == "request"
    assert report_in_s3(stack, done["report"]["location"])["stopped"] == "request"
    assert stack.api.delete(f"{path}/{rid}").status_code == 409  # it has ended: nothing to stop


def test_a_cap_stops_a_run_cleanly_and_a_later_run_sends_the_rest_once(stack: Stack) -> None:
    t = stack.tenant()
    # One pod: its objects go in order on one thread, and batches go out as they fill (1 MiB), so the cap is
    # met with objects of the pod still to come.
    expected = write_logs(stack, t, pods=1, objects=24, events=300)
    path = f"/tenants/{t.tenant_id}/replays"
    cap = 500
    asked = stack.api.post(path, {**window(), "max_events": cap})
    assert asked.status_code == 202, asked.text
    capped = stack.until_ended(t, asked.json()["replay_id"])
    assert capped["state"] == "stopped", capped
    assert capped["report"]["stopped_by"] == "cap"
    delivered = capped["report"]["events_delivered"]
    assert cap <= delivered < len(expected)
    in_s3 = report_in_s3(stack, capped["report"]["location"])
    assert in_s3["stopped"] == "cap" and in_s3["events_delivered"] == delivered
    assert sum(stack.logs(t).values()) == delivered

    rest = stack.api.post(path, window())
    assert rest.status_code == 202, rest.text
    done = stack.until_ended(t, rest.json()["replay_id"])
    assert done["state"] == "succeeded", done
    assert done["report"]["events_delivered"] == len(expected) - delivered
    assert stack.logs(t) == Counter((e.timestamp_ms, e.message) for e in expected)


def test_the_jobs_rest_client_against_ray_itself_a_resubmission_an_unknown_job_and_a_wrong_token(
    stack: Stack,
) -> None:
    """pipeline/replay/submit.py speaks Ray's Jobs REST API without Ray's SDK: the answers it reads are Ray's."""
    jobs = RayJobs(stack.ray.dashboard, stack.token)
    rid = f"rp-rest-{uuid.uuid4().hex[:8]}"
    command = JobCommand("rest", rid, "2026-05-01T00:00:00Z", "2026-05-01T01:00:00Z", "s3://b/r.json")
    jobs.submit(command)
    jobs.submit(command)  # Ray has the id: the same job, no error, no second run
    assert jobs.status(rid)[0] is not None  # Ray has it (whatever it makes of a tenant no table holds)
    assert jobs.status("rp-none-here") == (None, "the Ray cluster has no job rp-none-here")
    assert jobs.stop("rp-none-here") is False
    for token in ("wrong", None):
        with pytest.raises(JobsUnavailable, match="refused the token"):
            RayJobs(stack.ray.dashboard, token).status(rid)
