"""Streaming planning end to end, in this process as the driver of the session's Ray head (listing and delivery
workers), a real moto server over HTTP.

The driver's buffers are shrunk so a small window goes through many packer flushes and a full queue, as a
fleet-wide window does at the real sizes (bench/fleet_bench.py measures those). The driver's own ledger
reads are made to fail: the ledger is read by the workers only.
"""

from __future__ import annotations

import io
import sys
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from devstack.generator import GeneratorConfig, Manifest, write_dataset
from devstack.provision import LocalEnvironment
from devstack.readback import read_group
from pipeline import ledger as ledger_module
from pipeline.replay import plan as plan_module
from pipeline.replay import scheduler as scheduler_module
from pipeline.replay.job import ReplayOptions, run
from pipeline.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.ray]

TENANTS = ("acme", "globex")
APPS = ("payment-service", "frontend")


@pytest.fixture
def ray_driver() -> Iterator[None]:
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def small_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_module, "PACK_BUFFER_OBJECTS", 6)
    monkeypatch.setattr(scheduler_module, "QUEUED_OBJECTS_MAX", 12)
    monkeypatch.setattr(scheduler_module, "SURVEY_CHUNK", 2)
    monkeypatch.setattr(scheduler_module, "DESCEND_CHUNK", 1)


def dataset(env: LocalEnvironment, now: datetime) -> Manifest:
    cfg = GeneratorConfig(
        since=now - timedelta(hours=3),
        until=now - timedelta(minutes=10),
        tenants=TENANTS,
        clusters=("prod-1", "prod-2"),
        applications=APPS,
        pods_per_app=3,
        objects_per_pod=4,
        events_per_object=5,
        seed=18,
    )
    return write_dataset(cfg, env.names.bucket, s3=env.client("s3"))


def expected(manifest: Manifest, tenant: str) -> Counter[tuple[int, str]]:
    return Counter((ts, msg) for o in manifest.objects if o.key.split("/")[1] == tenant for ts, msg in o.expected or [])


def delivered(env: LocalEnvironment, tenant: str) -> Counter[tuple[int, str]]:
    group = read_group(env.tenant_logs(tenant), env.tenant(tenant).log_group)
    return Counter((ts, msg) for evs in group.values() for ts, msg in evs)


def opts(now: datetime, **kw: object) -> ReplayOptions:
    base: dict[str, object] = {
        "tenants": TENANTS,
        "since": now - timedelta(hours=4),
        "until": now,
        "workers": 2,
        "progress": False,
    }
    return ReplayOptions(**{**base, **kw})  # type: ignore[arg-type]


def test_a_window_streams_through_bounded_buffers_and_a_rerun_delivers_nothing(
    local_aws: LocalEnvironment, shared_ray: str, ray_driver: None, small_buffers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    manifest = dataset(local_aws, now)

    def no_driver_reads(*args: object, **kw: object) -> dict[str, frozenset[str]]:
        raise AssertionError("the driver read the ledger")

    monkeypatch.setattr(ledger_module.Ledger, "delivered_many", no_driver_reads)
    settings = Settings.from_env()
    out = io.StringIO()
    code = run(opts(now), settings, out=out)
    assert code == 0, out.getvalue()[-3000:]
    for tenant in TENANTS:
        assert delivered(local_aws, tenant) == expected(manifest, tenant)  # every event once, nowhere else

    # The plan, printed once the window was listed: 2 clusters × 2 tenants × 2 apps × 3 pods × 4 objects.
    text = out.getvalue()
    assert "To deliver: 96 objects" in text
    # One LIST for the top level, then one per tenant prefix, per application and per pod.
    listed = next(line for line in text.splitlines() if line.startswith("Objects listed"))
    assert listed == "Objects listed: 96 in 37 LIST calls (24 pods)"  # 1 + 4 + 8 + 24 (a pod fits in one page)

    again = io.StringIO()
    assert run(opts(now), settings, out=again) == 0
    assert "To deliver: 0 objects" in again.getvalue()
    assert "Already delivered (ledger): 96 objects" in again.getvalue()
    for tenant in TENANTS:
        assert delivered(local_aws, tenant) == expected(manifest, tenant)


def test_a_sampled_dry_run_says_so_and_scales_its_totals(local_aws: LocalEnvironment, small_buffers: None) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    dataset(local_aws, now)
    out = io.StringIO()
    assert run(opts(now, dry_run=True, sample=0.5), Settings.from_env(), out=out) == 0
    text = out.getvalue()
    assert "SAMPLE: " in text and " of 24 pods listed (50% by --sample)" in text
    listed = int(text.split("SAMPLE: ")[1].split(" of ")[0])
    assert 0 < listed < 24
    assert f"To deliver: ~{round(listed * 4 * 24 / listed):,} objects" in text
    assert "Dry run: nothing was delivered." in text
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()  # without RAY_ADDRESS a dry run lists on threads, with no Ray
