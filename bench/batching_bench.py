"""Batching benchmark: PutLogEvents calls against the minimum, and a replay worker's speed when every call
takes 40 ms, on many small objects; this code beside the code before batches spanned objects.

    .venv/bin/python -m bench batching              # or: .venv/bin/python bench/batching_bench.py   (~4 min)
    .venv/bin/python bench/batching_bench.py --pods-per-app 4 --objects-per-pod 20 --repeats 1   # quicker

Data: the project's generator, one tenant, 5 applications of 10 pods, 40 objects per pod (2,000 objects),
each application with its own object size: 20, 60, 120, 200 or 300 events per object. Most pods are quiet:
that is the shape that made one call per object.

One moto server (the project's `MotoServer`); CloudWatch Logs calls reach it through the project's fault
proxy (`AWS_ENDPOINT_URL_CLOUDWATCH_LOGS`), which adds 40 ms to every PutLogEvents (`Rule(Delay(0.04))`): a
call to real CloudWatch takes tens of milliseconds. S3, DynamoDB and STS go to moto directly. The tenant's
streams exist before the passes start. Each pass is a fresh process that is one replay worker: the body of
a Ray `DeliveryWorker` (`UnitRunner(settings, sink, window, redeliver=True)`), running the units
`plan.pack_units` makes for one worker, after a warm-up object (imports, STS, clients). Passes alternate,
`--repeats` times, over the same data:

- `cloudwatch`: S3 GetObject, decode, batch, PutLogEvents through the double hop and the 40 ms proxy into
  moto, ledger. Moto is one Python process on the same 2 cores: storing each event costs it CPU that real
  CloudWatch spends on its own machines, so this pass measures moto as much as the latency.
- `cloudwatch_standin`: the same, but the proxy answers each PutLogEvents itself after 40 ms (`Answer`),
  without forwarding it: a CloudWatch of fixed latency and no local cost. This isolates what the issue
  asks about, a worker waiting on the round trip.
- `null`: the same path with the null sink: everything but the network (and no ledger).

All three run for this checkout, for the previous release (`--release`, `bench.baseline.RELEASE`) and for
`--baseline` (the last commit before batches spanned objects), each a temporary `git worktree`
(`bench.baseline`), in the same run, passes interleaved. Older workers return plain dicts where newer ones
return `ObjectResult`s: the pass reads either through `bench.baseline.result_dict`. Reported:

- calls: PutLogEvents calls of a cloudwatch pass divided by the fewest the events need
  (`pipeline.sinks.cloudwatch.limits.min_put_requests`, stream by stream, over the generator's own manifest).
  Target <= 1.1.
- latency-bound speed: events/s of a cloudwatch pass divided by events/s of the null pass, paired by
  repeat (medians), for both kinds of cloudwatch pass. Target >= 0.5. Moto's CPU seconds per pass are
  recorded: when they approach the pass's wall time, moto is the bottleneck.
- peak RSS of each pass's process (VmHWM). The 512 MiB target on the largest objects is memory_bench's.
- against the release, paired by repeat: null-sink events/s, and the calls. A drop beyond
  `bench.baseline.NOISE` fails (`meets_release_target`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.baseline import NOISE, RELEASE, baseline_tree, from_tree, ratio_ok, run_child, tree_stack  # noqa: E402
from bench.machine import machine, write_result  # noqa: E402
from devstack.faults import Answer, Delay, FaultProxy, Rule  # noqa: E402
from devstack.generator import GeneratorConfig, Manifest, write_dataset  # noqa: E402
from devstack.provision import LocalEnvironment, SampleTenant, provision  # noqa: E402
from devstack.server import MotoServer  # noqa: E402

min_put_requests, stream_name = from_tree("pipeline.sinks.cloudwatch.limits", "min_put_requests", "stream_name")

TARGET_CALL_RATIO = 1.1
TARGET_SPEED_RATIO = 0.5
PUT_DELAY_S = 0.04
BASELINE = "4f17a4b"  # the last commit before batches spanned objects
TENANT = SampleTenant("acme", "111111111111")
EVENTS_PER_OBJECT = (20, 60, 120, 200, 300)
APPS = ("payment-service", "frontend", "checkout", "inventory", "search")

# One replay worker in its own process, written against what every version shares, so the same pass runs
# this checkout's code and the older trees' (`bench.baseline.run_child` puts the tree first on the path and
# gives the pass `bench_baseline`, whose readers take every version's result shape).
CHILD = r"""
import json, sys, time
from datetime import datetime
from pipeline import aws
TimeWindow = from_tree("pipeline.delivery.routing", "TimeWindow")
ListingFilter, list_window = from_tree("pipeline.source.listing", "ListingFilter", "list_window")
from pipeline.replay.plan import WorkUnit, pack_units
from pipeline.replay.workers import UnitRunner
from pipeline.settings import Settings
from pipeline.timespec import to_ms

sink, tenant, since, until = sys.argv[1:5]
settings = Settings.from_env()
lo, hi = datetime.fromisoformat(since), datetime.fromisoformat(until)
listing = list_window(aws.client("s3"), settings.bucket, ListingFilter((tenant,), lo, hi))
units = pack_units(listing.pods, 1)
runner = UnitRunner(settings, sink, TimeWindow(to_ms(lo), to_ms(hi) + 1), redeliver=True)
runner.run(WorkUnit(-1, units[0].objects[:1], 0))
start, cpu = time.perf_counter(), time.process_time()
objects = events = requests = 0
for unit in units:
    for r in map(bench_baseline.result_dict, runner.run(unit)):
        if r["status"] != "delivered":
            raise SystemExit(f"{r['key']}: {r['status']} {r['reason']}")
        objects += 1
        events += r["events_delivered"]
        requests += bench_baseline.requests_of(r)
seconds, cpu_s = time.perf_counter() - start, time.process_time() - cpu
runner.close()
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"objects": objects, "events": events, "requests": requests, "seconds": seconds,
                  "cpu_s": cpu_s, "peak_rss_mib": round(hwm / 1024, 1)}))
"""


def write_data(local: LocalEnvironment, args: argparse.Namespace) -> tuple[list[Manifest], datetime, datetime]:
    until = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    since = until - timedelta(hours=3)
    manifests = []
    for i, (app, events) in enumerate(zip(APPS, EVENTS_PER_OBJECT, strict=True)):
        cfg = GeneratorConfig(
            since=since,
            until=until,
            tenants=(TENANT.tenant_id,),
            applications=(app,),
            pods_per_app=args.pods_per_app,
            objects_per_pod=args.objects_per_pod,
            events_per_object=events,
            seed=args.seed + i,
        )
        manifests.append(write_dataset(cfg, local.names.bucket, s3=local.client("s3"), workers=8))
    return manifests, since, until + timedelta(minutes=10)


def streams_of(manifests: list[Manifest]) -> dict[str, list[tuple[int, str]]]:
    streams: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for m in manifests:
        for o in m.objects:
            _, _, app, pod, _ = o.key.split("/", 4)
            for ts, msg in o.expected or []:
                streams[stream_name(app, pod, ts)].append((ts, msg))
    return streams


def run_pass(tree: Path, sink: str, env: dict[str, str], since: datetime, until: datetime) -> dict[str, Any]:
    proc = run_child(tree, CHILD, sink, TENANT.tenant_id, since.isoformat(), until.isoformat(), env=env)
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["events_per_s"] = round(out["events"] / out["seconds"])
    out["events_per_cpu_s"] = round(out["events"] / out["cpu_s"])  # the worker's own CPU, all its threads
    return out


def clear_ledger(local: LocalEnvironment) -> None:
    """Empty the ledger between passes, outside the timing: a backfill records objects it has no record of
    (one UpdateItem each), not objects recorded by the previous pass (a failed condition, then a second)."""
    ddb = local.client("dynamodb")
    table = local.names.ledger_table
    keys = [
        {"DeleteRequest": {"Key": item}}
        for page in ddb.get_paginator("scan").paginate(TableName=table, ProjectionExpression="tenant_id, object_key")
        for item in page["Items"]
    ]
    for i in range(0, len(keys), 25):
        ddb.batch_write_item(RequestItems={table: keys[i : i + 25]})


def run(args: argparse.Namespace) -> dict[str, Any]:
    trees = {"this": REPO}
    with MotoServer() as server, FaultProxy(server.endpoint_url) as proxy, ExitStack() as stack:
        for version, rev in (("release", args.release), ("baseline", args.baseline)):
            if rev:
                trees[version] = stack.enter_context(baseline_tree(rev))
        local = provision(server.endpoint_url, tenants=(TENANT,))
        local.client("s3").put_bucket_notification_configuration(
            Bucket=local.names.bucket, NotificationConfiguration={}
        )
        manifests, since, until = write_data(local, args)
        streams = streams_of(manifests)
        logs = local.tenant_logs(TENANT.tenant_id)
        for name in streams:
            logs.create_log_stream(logGroupName=TENANT.log_group, logStreamName=name)
        minimum = sum(min_put_requests(evs) for evs in streams.values())
        data = {
            "objects": sum(len(m.objects) for m in manifests),
            "events": sum(len(evs) for evs in streams.values()),
            "pods": len(APPS) * args.pods_per_app,
            "streams": len(streams),
            "events_per_object": list(EVENTS_PER_OBJECT),
            "min_put_requests": minimum,
        }
        print(f"data: {data}", flush=True)
        # Only CloudWatch Logs goes through the proxy: S3, DynamoDB and STS cost the same as without it.
        env = {**os.environ, **local.env, "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": proxy.url}
        envs = {version: env for version in trees}
        if "baseline" in trees:
            # The historical tree cannot read today's tenant items (a tenant's profile is an item of its own
            # since #24): its tenant and ledger tables are provisioned by its own code, on a moto of their
            # own (`tree_stack`); S3, STS and CloudWatch are the shared ones.
            own = stack.enter_context(tree_stack(trees["baseline"], [(TENANT.tenant_id, TENANT.account_id)]))
            tables = ("TENANT_CONFIG_TABLE", "DELIVERY_LEDGER_TABLE")
            envs["baseline"] = {**env, "AWS_ENDPOINT_URL_DYNAMODB": own["AWS_ENDPOINT_URL"]}
            envs["baseline"] |= {k: own[k] for k in tables if k in own}
        moto = psutil.Process(server._proc.pid)  # type: ignore[union-attr]
        put = {"service": "logs", "operation": "PutLogEvents"}
        modes = {
            "cloudwatch": ("cloudwatch", Rule(Delay(PUT_DELAY_S), **put)),
            "cloudwatch_standin": ("cloudwatch", Rule(Answer(PUT_DELAY_S), **put)),
            "null": ("null", None),
        }
        passes: dict[str, dict[str, list[dict[str, Any]]]] = {v: {m: [] for m in modes} for v in trees}
        for i in range(args.repeats):
            # This checkout first on even repeats, last on odd ones (ABBA): a drift of the machine over the run
            # favours no version.
            for version, tree in list(trees.items())[:: 1 if i % 2 == 0 else -1]:
                for mode, (sink, rule) in modes.items():
                    proxy.clear()
                    proxy.reset_log()
                    clear_ledger(local)
                    if rule is not None:
                        proxy.add(rule)
                    cpu = moto.cpu_times()
                    p = run_pass(tree, sink, envs[version], since, until)
                    after = moto.cpu_times()
                    p["moto_cpu_s"] = round(after.user + after.system - cpu.user - cpu.system, 2)
                    if p["events"] != data["events"]:
                        raise RuntimeError(f"{version}/{mode}: {p['events']} events, want {data['events']}")
                    passes[version][mode].append(p)
                    print(f"pass {i} {version}/{mode}: {p}", flush=True)

    out: dict[str, Any] = {"data": data}
    for version, by_mode in passes.items():
        null = by_mode["null"]
        calls = statistics.median(c["requests"] for c in by_mode["cloudwatch"])
        out[version] = {
            "put_requests": calls,
            "calls_over_minimum": round(calls / minimum, 3),
            "null_events_per_s": statistics.median(n["events_per_s"] for n in null),
            "peak_rss_mib": max(p["peak_rss_mib"] for ps in by_mode.values() for p in ps),
            "passes": by_mode,
        }
        for mode in ("cloudwatch", "cloudwatch_standin"):
            cw = by_mode[mode]
            ratios = [c["events_per_s"] / n["events_per_s"] for c, n in zip(cw, null, strict=True)]
            out[version][f"{mode}_events_per_s"] = statistics.median(c["events_per_s"] for c in cw)
            out[version][f"{mode}_speed_ratio"] = round(statistics.median(ratios), 3)
    this = out["this"]
    out["meets_call_target"] = this["calls_over_minimum"] <= TARGET_CALL_RATIO
    out["meets_speed_target"] = this["cloudwatch_standin_speed_ratio"] >= TARGET_SPEED_RATIO
    if "release" in passes:
        mine, theirs = passes["this"], passes["release"]

        def paired(mode: str, figure: str) -> float:
            pairs = zip(mine[mode], theirs[mode], strict=True)
            return round(statistics.median(a[figure] / b[figure] for a, b in pairs), 3)

        # Events per wall second gate; the worker's own CPU per event (all its threads) is reported beside:
        # less exposed to the other processes of a shared machine, it says whether a wall-time drop is the code.
        vs = out["vs_release"] = {mode: paired(mode, "events_per_s") for mode in modes}
        vs |= {f"{mode}_per_cpu_s": paired(mode, "events_per_cpu_s") for mode in modes}
        vs["calls"] = round(this["put_requests"] / out["release"]["put_requests"], 3)
        out["meets_release_target"] = (
            ratio_ok(vs["null"]) and ratio_ok(vs["cloudwatch_standin"]) and vs["calls"] <= 1 + NOISE
        )
    return out


# `python -m bench --quick`: 400 objects, 56,000 events, one repeat; the release and 4f17a4b beside.
QUICK_ARGS = ["--pods-per-app", "4", "--objects-per-pod", "20", "--repeats", "1"]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods-per-app", type=int, default=10)
    ap.add_argument("--objects-per-pod", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--baseline", default=BASELINE, help="git revision to compare with ('' to skip)")
    ap.add_argument("--release", default=RELEASE, help="the previous release, compared with too ('' to skip)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "batching.json")
    args = ap.parse_args(argv)
    started = time.monotonic()
    result = {
        "benchmark": "batching",
        "machine": machine("boto3", "moto"),
        "method": {
            "put_delay_s": PUT_DELAY_S,
            "targets": {"calls_over_minimum": TARGET_CALL_RATIO, "latency_bound_speed_ratio": TARGET_SPEED_RATIO},
            "baseline": args.baseline,
            "release": args.release,
            "noise": NOISE,
            "repeats": args.repeats,
        },
        **run(args),
    }
    result["wall_s"] = round(time.monotonic() - started, 1)
    write_result(args.out, result)
    for version in ("this", "release", "baseline"):
        if version in result:
            r = result[version]
            print(
                f"{version}: calls {r['put_requests']} = {r['calls_over_minimum']}x the minimum; null "
                f"{r['null_events_per_s']:,} ev/s; 40 ms stand-in {r['cloudwatch_standin_events_per_s']:,} ev/s "
                f"= {r['cloudwatch_standin_speed_ratio']}; moto + 40 ms {r['cloudwatch_events_per_s']:,} ev/s "
                f"= {r['cloudwatch_speed_ratio']}; peak RSS {r['peak_rss_mib']} MiB"
            )
    return 0 if all(v for k, v in result.items() if k.startswith("meets_")) else 1


if __name__ == "__main__":
    sys.exit(main())
