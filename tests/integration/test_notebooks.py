"""Both notebooks, run top to bottom in a real kernel against the embedded local AWS and generated data.

Each notebook prints one machine-readable line of its key numbers as its last output and saves its
figures under FIGURES_DIR; the expectations here come from S3, the generator's manifest and the
reports the test writes, never from the notebook's own code.
"""

from __future__ import annotations

import gzip
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

from devstack.generator import DamageKind, GeneratorConfig, Manifest, write_dataset
from devstack.provision import LocalEnvironment, provision
from devstack.server import MotoServer
from pipeline.delivery.results import DeliveryResult, ObjectResult, Status
from pipeline.ledger import Ledger, LedgerEntry
from pipeline.replay.plan import Plan
from pipeline.replay.report import ReplayReport

pytestmark = pytest.mark.integration

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NOW = datetime.now(UTC).replace(microsecond=0)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def kernel() -> str:
    """The python3 kernel must be this interpreter (the venv), with the project importable."""
    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:  # pragma: no cover - ipykernel normally ships the spec into the venv
        from ipykernel.kernelspec import install

        install(prefix=sys.prefix)
    return "python3"


def run_notebook(name: str, kernel: str, cwd: Path, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Execute a committed notebook in a fresh kernel that inherits `env`; the executed notebook."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, kernel_name=kernel, timeout=120, resources={"metadata": {"path": str(cwd)}}).execute()
    return nb


def results(nb: Any, marker: str) -> dict[str, Any]:
    for cell in reversed(nb.cells):
        for out in cell.get("outputs", []):
            for line in out.get("text", "").splitlines():
                if line.startswith(marker + " "):
                    return json.loads(line[len(marker) + 1 :])
    raise AssertionError(f"no {marker} line in the notebook's outputs")


def assert_figures(found: dict[str, str], names: set[str]) -> None:
    assert set(found) == names
    for path in found.values():
        data = Path(path).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, path


@pytest.mark.parametrize("name", ["volume_analysis.ipynb", "replay_report.ipynb"])
def test_notebooks_are_committed_clean_with_a_parameters_cell(name: str) -> None:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.outputs == [] and c.execution_count is None for c in code)
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is code[0]
    assert nb.metadata.kernelspec.name == "python3"


@pytest.fixture(scope="module")
def world(moto_server: MotoServer) -> tuple[LocalEnvironment, Manifest]:
    moto_server.reset()
    env = provision(moto_server.endpoint_url)
    cfg = GeneratorConfig(
        since=NOW - timedelta(hours=5),
        until=NOW - timedelta(minutes=10),
        tenants=("acme", "globex", "initech"),
        clusters=("prod-1",),
        applications=("payment-service", "frontend", "checkout"),
        pods_per_app=2,
        objects_per_pod=3,
        events_per_object=25,
        damaged=(DamageKind.TRUNCATED_GZIP,),
        seed=5,
    )
    return env, write_dataset(cfg, env.names.bucket, s3=env.client("s3"), workers=8)


def test_volume_analysis_notebook(
    world: tuple[LocalEnvironment, Manifest], kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, manifest = world
    tenants = ("acme", "globex")
    objects = [o for o in manifest.objects if o.key.split("/")[1] in tenants]
    sizes = {o.key: o.size for o in objects}
    # The ledger says a third of acme's objects were delivered; one more entry is at a stale ETag.
    ledger = Ledger(env.names.ledger_table, client=env.client("dynamodb"))
    acme_objs = sorted((o for o in objects if o.key.split("/")[1] == "acme"), key=lambda o: o.key)
    delivered = acme_objs[::3]
    for o in delivered:
        ledger.record(LedgerEntry("acme", o.key, o.etag, events_delivered=o.expected_count))
    ledger.record(LedgerEntry("acme", acme_objs[1].key, "stale"))

    s3_total = sum(
        o["Size"]
        for page in env.client("s3").get_paginator("list_objects_v2").paginate(Bucket=env.names.bucket)
        for o in page.get("Contents", [])
        if o["Key"].split("/")[1] in tenants
    )
    figures = tmp_path / "figures"
    nb = run_notebook(
        "volume_analysis.ipynb",
        kernel,
        tmp_path,
        {
            **env.env,
            "INVENTORY_PATH": str(tmp_path / "inventory"),  # does not exist: the notebook builds it from the bucket
            "TENANTS": ",".join(tenants),
            "SINCE": (NOW - timedelta(hours=6)).isoformat(),
            "UNTIL": NOW.isoformat(),
            "SAMPLE_FRACTION": "1",
            "CW_PRICE_PER_GB": "2.0",
            "EVENTS_PER_SECOND_PER_WORKER": "100",
            "WORKERS": "4",
            "FIGURES_DIR": str(figures),
        },
        monkeypatch,
    )
    r = results(nb, "VOLUME_RESULTS")
    assert (tmp_path / "inventory" / "tenant=acme").is_dir()

    # Totals: the notebook's bytes are exactly the sizes S3 holds for those tenants.
    assert r["bytes"] == s3_total == sum(sizes.values())
    assert r["objects"] == len(objects)
    for t in tenants:
        mine = [o for o in objects if o.key.split("/")[1] == t]
        assert r["tenants"][t]["objects"] == len(mine)
        assert r["tenants"][t]["bytes"] == sum(o.size for o in mine)

    # Ledger: delivered at the right ETag only; globex has no entries, so all of it is pending.
    assert r["delivered_objects"] == len(delivered)
    assert r["undelivered_objects"] == len(objects) - len(delivered)
    assert r["undelivered_bytes"] == sum(sizes.values()) - sum(o.size for o in delivered)
    assert r["unknown_objects"] == 0
    assert r["tenants"]["globex"]["pending_bytes"] == r["tenants"]["globex"]["bytes"]

    # Sample (everything, damaged objects left out): events and compression from an independent gunzip.
    clean = [o for o in objects if o.damage is None]
    s3 = env.client("s3")
    plain = sum(len(gzip.decompress(s3.get_object(Bucket=env.names.bucket, Key=o.key)["Body"].read())) for o in clean)
    stored = sum(o.size for o in clean)
    events = sum(o.expected_count for o in clean)
    assert (r["sampled_objects"], r["sample_events"], r["sample_bytes"]) == (len(clean), events, stored)
    assert r["compression_ratio"] == pytest.approx(plain / stored)
    assert r["events_per_object"] == pytest.approx(events / len(clean))
    assert r["events_per_byte"] == pytest.approx(events / stored)

    # Estimates follow the parameters read from the environment.
    assert r["est_events"] == pytest.approx(r["bytes"] * events / stored)
    assert r["est_cost_usd"] == pytest.approx(r["est_ingest_bytes"] / 2**30 * 2.0)
    assert r["est_replay_s"] == pytest.approx(r["est_events"] / (100 * 4))
    message_bytes = sum(len(m.encode()) for o in clean for _, m in o.expected or [])
    assert r["est_ingest_bytes"] == pytest.approx(r["bytes"] * (message_bytes + 26 * events) / stored)
    assert r["small_objects"] == len(objects)  # generated objects are all far below 1 MiB

    assert_figures(
        r["figures"],
        {"bytes_objects_per_hour", "top_applications_pods", "object_sizes", "sample_compression_events"}
        | {"replay_cost", "ledger_state"},
    )


def result(n: str, status: Status, events: int, reason: str = "") -> ObjectResult:
    """An object of acme's delivered (or damaged) into its CloudWatch delivery with `events` events."""
    r = ObjectResult(f"prod-1/acme/app/pod/{n}.json.gz", status, reason, tenant="acme")
    r.deliveries.append(DeliveryResult("cloudwatch", "cloudwatch", status=status, events_delivered=events))
    return r


def make_report(
    since: datetime, results_: list[ObjectResult], step_s: float, failed: list[tuple[str, str]]
) -> dict[str, Any]:
    """A report from the replay's own ReplayReport, with a timeline point after every object."""
    report = ReplayReport(Plan(since=since, until=since + timedelta(hours=1)))
    for key, reason in failed:
        report.settle(ObjectResult(key).fail(reason, recoverable=False))
    report.started = time.monotonic()
    for i, res in enumerate(results_):
        report.add(res)
        report.started -= step_s  # as if each object took step_s seconds
        report.tick()
        assert report.timeline[-1]["t"] == pytest.approx((i + 1) * step_s, abs=0.05)
    return report.to_dict()


def test_replay_report_notebook(
    kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, world: tuple[LocalEnvironment, Manifest]
) -> None:
    local = world[0]
    since = NOW - timedelta(hours=2)
    ok = [result(str(i), Status.DELIVERED, 100) for i in range(4)]
    damaged = [
        result("d1", Status.DAMAGED, 10, "truncated gzip stream after 1234 bytes"),
        result("d2", Status.DAMAGED, 5, "truncated gzip stream after 99 bytes"),
    ]
    first = make_report(since, ok + damaged, 0.5, [("a//b/c/f.json.gz", "invalid object key: empty segment")])
    second = make_report(since, ok[:2], 2.0, [])
    (tmp_path / "first.json").write_text(json.dumps(first))
    # The second where the backfill RayJob writes its reports: the central bucket's reports/ prefix.
    bucket = local.names.bucket
    local.client("s3").put_object(Bucket=bucket, Key="reports/second.json", Body=json.dumps(second).encode())

    figures = tmp_path / "figures"
    paths = f"{tmp_path / 'first.json'},s3://{bucket}/reports/"
    env = {**local.env, "REPORT_PATHS": paths, "FIGURES_DIR": str(figures)}
    r = results(run_notebook("replay_report.ipynb", kernel, tmp_path, env, monkeypatch), "REPLAY_RESULTS")

    assert r["reports"] == ["first", "second"]
    assert r["events_delivered"] == {"first": 415, "second": 200}
    assert r["objects_failed"] == {"first": 3, "second": 0}
    assert r["failures_by_reason"] == {
        "truncated gzip stream after N bytes": 2,
        "invalid object key: empty segment": 1,
    }
    # 100 events per 0.5 s at best in the first report, 100 per 2 s in the second.
    assert r["peak_events_per_s"]["first"] == pytest.approx(200, rel=0.15)
    assert r["peak_events_per_s"]["second"] == pytest.approx(50, rel=0.15)
    assert_figures(r["figures"], {"throughput", "failures_by_reason"})
