"""Replay fairness benchmark: how long calm tenants take when replayed together with a throttled one.

    .venv/bin/python -m bench fairness            # or: .venv/bin/python bench/fairness_bench.py   (~10 min)
    .venv/bin/python bench/fairness_bench.py --base-tree ''     # this tree only

One moto server and one fault proxy in front of it (`devstack.faults`), provisioned as for the demo. Three
tenants' objects in the central bucket: `acme` and `globex` (calm) and `umbrella` (noisy: its CloudWatch
throttles every PutLogEvents for the whole run, so each of its batches goes through the sink's 8 attempts
with capped backoff and then fails recoverably). The replay CLI (`jobs/replay.py`, a real subprocess with a
local Ray, `--workers 2`, `--redeliver` and an emptied ledger, so every run sends the same objects the same
way) runs in two scenarios:

- calm: `--tenant acme --tenant globex`, nothing throttled;
- throttled: the same plus `--tenant umbrella`, whose log group the proxy throttles,

`--repeats` times each, alternating this tree with the release (`--release`) and `--base-tree` (by default
a `git worktree` of the commit before fair dispatch, b90abee, made by `bench.baseline`; the same venv, with
PYTHONPATH pointing at that tree so the driver and
its Ray workers import its `pipeline`). CloudWatch is a stand-in for every tenant (the proxy answers
PutLogEvents itself after `--put-delay` s, `devstack.faults.Answer`), so moto's CPU does not decide the
figures; S3 reads, the ledger and the throttled tenant's errors go through the proxy for real.

The figure is a tenant's completion: the time of its last delivery call the proxy answered with success
(PutLogEvents with its log group, PutObject to its bucket), from the first GetObject a delivery worker made
in the run, so listing and Ray's start are left out. Results: bench/results/fairness.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.baseline import NOISE, RELEASE, baseline_tree, short  # noqa: E402
from bench.machine import machine, write_result  # noqa: E402
from devstack import generator as gen  # noqa: E402
from devstack.faults import Answer, Call, Error, FaultProxy, Rule  # noqa: E402
from devstack.provision import LocalEnvironment, provision  # noqa: E402
from devstack.server import MotoServer  # noqa: E402

BASE_COMMIT = "b90abee"  # main before fair dispatch
CALM = ("acme", "globex")
NOISY = "umbrella"
PUT = "PutLogEvents"


def write_data(local: LocalEnvironment, pods: int, objects: int, events: int) -> gen.Manifest:
    now = datetime.now(UTC).replace(microsecond=0)
    cfg = gen.GeneratorConfig(
        since=now - timedelta(minutes=30),
        until=now - timedelta(minutes=2),
        tenants=(*CALM, NOISY),
        applications=("payment-service", "frontend"),
        pods_per_app=pods,
        objects_per_pod=objects,
        events_per_object=events,
        message_bytes=300,
        seed=61,
        keep_events=False,
    )
    return gen.write_dataset(cfg, local.names.bucket, s3=local.client("s3"), workers=8)


def clear_ledger(local: LocalEnvironment) -> None:
    """Empty the ledger, so every run writes it as a first delivery does (a record over an existing item
    takes a second, conditional write)."""
    ddb = local.client("dynamodb")
    table = local.names.ledger_table
    keys = [
        {"tenant_id": item["tenant_id"], "object_key": item["object_key"]}
        for page in ddb.get_paginator("scan").paginate(TableName=table, ProjectionExpression="tenant_id, object_key")
        for item in page["Items"]
    ]
    for i in range(0, len(keys), 25):
        ddb.batch_write_item(RequestItems={table: [{"DeleteRequest": {"Key": k}} for k in keys[i : i + 25]]})


def completion(calls: list[Call], local: LocalEnvironment, tenant: str, start: float) -> float | None:
    """Seconds from `start` to the tenant's last delivery call answered with success (None: it had none)."""
    t = local.tenant(tenant)
    group = f'"{t.log_group}"'
    bucket = f"/{t.bucket}/" if t.s3 is not None else None
    times = [
        c.at
        for c in calls
        if c.status == 200
        and (
            (c.service == "logs" and c.operation == PUT and group.encode() in c.body)
            or (bucket is not None and c.service == "s3" and c.operation == "PutObject" and c.path.startswith(bucket))
        )
    ]
    return round(max(times) - start, 2) if times else None


def run_once(
    tree: Path, tenants: Sequence[str], throttled: bool, proxy: FaultProxy, local: LocalEnvironment,
    env: dict[str, str], args: argparse.Namespace, out_dir: Path, repeat: int,
) -> dict[str, Any]:  # fmt: skip
    clear_ledger(local)
    proxy.clear()
    proxy.reset_log()
    central = f"/{local.names.bucket}/"
    if throttled:
        group = local.tenant(NOISY).log_group
        proxy.add(Rule(Error.throttling(), service="logs", operation=PUT, body_contains=f'"{group}"'))
    proxy.add(Rule(Answer(args.put_delay), service="logs", operation=PUT))
    report = out_dir / f"{tree.name}-{'throttled' if throttled else 'calm'}-{repeat}.json"
    cmd = [sys.executable, str(tree / "jobs" / "replay.py"), *(a for t in tenants for a in ("--tenant", t))]
    cmd += ["--since", "45m", "--workers", str(args.workers), "--redeliver", "--no-progress", "--report", str(report)]
    started = time.monotonic()
    proc = subprocess.run(
        cmd, cwd=tree, env={**env, "PYTHONPATH": str(tree)}, capture_output=True, text=True, timeout=args.timeout
    )
    wall = time.monotonic() - started
    calls = proxy.calls()
    proxy.clear()
    # From the first object a delivery worker reads: listing and Ray's start (tens of seconds on a small
    # machine, the same for every run) are left out.
    reads = [c.at for c in calls if c.service == "s3" and c.operation == "GetObject" and c.path.startswith(central)]
    if not reads:
        output = proc.stdout[-2000:] + proc.stderr[-3000:]
        raise RuntimeError(f"the replay read nothing (exit {proc.returncode}):\n{output}")
    start = min(reads)
    doc = orjson.loads(report.read_bytes()) if report.exists() else {}
    done = {t: completion(calls, local, t, start) for t in tenants}
    calm_done = [done[t] for t in CALM if done.get(t) is not None]
    result = {
        "tree": str(tree),
        "tenants": list(tenants),
        "throttled": NOISY if throttled else None,
        "exit_code": proc.returncode,
        "wall_s": round(wall, 1),
        "work_units": doc.get("work_units"),
        "objects_delivered": doc.get("objects_delivered"),
        "objects_failed": len(doc.get("objects_failed") or []),
        "completion_s": done,
        "calm_completion_s": max(calm_done) if len(calm_done) == len(CALM) else None,
        "throttled_calls": sum(1 for c in calls if c.injected.startswith("logs:PutLogEvents:Error")),
    }
    print(
        f"{tree.name} {'throttled' if throttled else 'calm     '}: calm tenants done at {result['calm_completion_s']} s"
        f" {done}, {result['work_units']} units, exit {proc.returncode}, {wall:.0f} s wall",
        flush=True,
    )
    return result


def summary(runs: list[dict[str, Any]], trees: list[Path]) -> dict[str, Any]:
    """Per tree: the median calm-tenant completion alone and beside the throttled tenant, and their ratio."""
    out: dict[str, Any] = {}
    for tree in trees:
        mine = [r for r in runs if r["tree"] == str(tree)]
        calm = [r["calm_completion_s"] for r in mine if not r["throttled"] and r["calm_completion_s"] is not None]
        noisy = [r["calm_completion_s"] for r in mine if r["throttled"] and r["calm_completion_s"] is not None]
        if calm and noisy:
            out["this tree" if tree == REPO else tree.name.removeprefix("baseline-")] = {
                "calm_alone_s": {"median": statistics.median(calm), "runs": calm},
                "calm_beside_throttled_s": {"median": statistics.median(noisy), "runs": noisy},
                "slowdown": round(statistics.median(noisy) / statistics.median(calm), 2),
            }
    return out


# `python -m bench --quick`: 2 pods per application, 4 objects each, one repeat; the release beside, b90abee
# (the code before fairness) left out.
QUICK_ARGS = ["--pods", "2", "--objects", "4", "--repeats", "1", "--base-tree", ""]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="delivery workers (a local Ray: one CPU each)")
    p.add_argument("--pods", type=int, default=4, help="pods per application (two applications per tenant)")
    p.add_argument("--objects", type=int, default=6, help="objects per pod")
    p.add_argument("--events", type=int, default=1000, help="events per object")
    p.add_argument("--put-delay", type=float, default=0.04, help="the CloudWatch stand-in's latency, seconds")
    p.add_argument("--base-tree", default=None, help=f"tree to compare with (default: a worktree of {BASE_COMMIT})")
    p.add_argument("--release", default=RELEASE, help="the previous release, compared with too ('' to skip)")
    p.add_argument("--repeats", type=int, default=3, help="runs of each tree and scenario, alternated")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "fairness.json")
    args = p.parse_args(argv)
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    with (
        ExitStack() as stack,
        MotoServer() as server,
        FaultProxy(server.endpoint_url, seed=5) as proxy,
        tempfile.TemporaryDirectory() as tmp,
    ):
        trees = [REPO]
        for rev in (args.release, BASE_COMMIT if args.base_tree is None else ""):
            if rev:
                trees.append(stack.enter_context(baseline_tree(rev)))
        if args.base_tree:
            trees.append(Path(args.base_tree))
        local = provision(server.endpoint_url)
        manifest = write_data(local, args.pods, args.objects, args.events)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env |= {**local.env, "AWS_ENDPOINT_URL": proxy.url}
        for repeat in range(args.repeats):  # trees alternate, so a drift in the machine's load hits both
            for throttled in (False, True):
                for tree in trees:
                    tenants = (*CALM, NOISY) if throttled else CALM
                    run = run_once(tree, tenants, throttled, proxy, local, env, args, Path(tmp), repeat)
                    runs.append(run)
    result = {
        "benchmark": "fairness",
        "machine": machine("ray", "moto"),
        "data": {
            "objects": len(manifest.objects),
            "bytes": sum(o.size for o in manifest.objects),
            "tenants": [*CALM, NOISY],
            "pods_per_tenant": 2 * args.pods,
            "objects_per_pod": args.objects,
            "events_per_object": args.events,
        },
        "workers": args.workers,
        "put_delay_s": args.put_delay,
        "base_commit": BASE_COMMIT,
        "summary": summary(runs, trees),
        "runs": runs,
        "wall_s": round(time.monotonic() - started, 1),
    }
    summary_ = result["summary"]
    release = short(args.release) if args.release else ""
    if release in summary_ and "this tree" in summary_:
        # The calm tenants' slowdown beside the throttled one: no worse than the release's beyond noise.
        mine, theirs = summary_["this tree"]["slowdown"], summary_[release]["slowdown"]
        result["meets_release_target"] = mine <= theirs * (1 + NOISE)
    write_result(args.out, result)
    return 0 if result.get("meets_release_target", True) else 1


if __name__ == "__main__":
    sys.exit(main())
