"""Memory benchmark: peak RSS of one replay worker process for N objects and for 10x N objects.

    .venv/bin/python -m bench memory             # or: .venv/bin/python bench/memory_bench.py   (~40 s)
    .venv/bin/python bench/memory_bench.py --objects 8 --sink null   # quicker

A moto server (the project's `MotoServer`) holds N objects under one cluster and 10x N under another,
written with bucket notifications off. For each set, a fresh worker process (this file with `--child`)
does what a Ray `DeliveryWorker` does: one `UnitRunner` with the chosen sink, running the work units of
`plan.pack_units` for one worker one after another (S3 GetObject from moto, decode, batch, PutLogEvents
into the tenant's CloudWatch in moto through the double hop, a ledger write per object). Listing is done in
the same process beforehand, as the driver would, and is part of the baseline.

The child reports its own peak RSS (`VmHWM` in /proc/self/status) after setup and a one-object warm-up
(the baseline: interpreter, boto3, clients, credentials), and after the last unit. A fresh process per set
keeps one run's peak from hiding the other's. One object per pod, so that the small set's work units
already hold 8 pods and keep all of the worker's 8 pod threads busy: the sets differ in objects only.
Targets: peak(10x N) / peak(N) <= 1.15, and both under 512 MiB.

A third set holds the collector's largest objects (64 MiB uncompressed, `batch.max_bytes` in
collector/vector/base/vector.yaml), one per pod, enough pods to keep all 8 pod threads busy. It runs twice
with the `null` sink (S3 reads from moto, decode, batch, serialize; no puts, which would only take longer):
once with the worker's default memory budget (`--worker-memory`), once with the budget lifted, to show what
the budget prevents. Target: under 512 MiB with the default budget.
"""

from __future__ import annotations

import argparse
import gzip
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.baseline import add_release_options, code_path, from_tree, release_beside, result_dict  # noqa: E402
from bench.machine import machine, write_result  # noqa: E402
from devstack.generator import (  # noqa: E402
    GZIP_PUT_ARGS,
    GeneratedObject,
    GeneratorConfig,
    app_names,
    generate,
)
from devstack.provision import SampleTenant, provision  # noqa: E402
from devstack.server import MotoServer  # noqa: E402
from pipeline.keys import format_key, parse_key  # noqa: E402

DEFAULT_BUDGET_MIB = from_tree("pipeline.memory", "DEFAULT_BUDGET_MIB")
from pipeline.replay.workers import POD_THREADS  # noqa: E402

TARGET_PEAK_RATIO = 1.15
TARGET_PEAK_MIB = 512
UNBOUNDED_MIB = 1 << 20  # a budget no set comes near: the worker as it was without one
TENANT = SampleTenant("acme", "111111111111")
OBJECTS_PER_POD = 1  # so that even the small set's units hold 8 pods and the worker's 8 pod threads are all busy


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def child(cluster: str, sink: str, since: str, until: str, budget_mib: int) -> int:
    """One replay worker: list the cluster's objects, then run its units; print peak RSS as JSON."""
    from pipeline import aws

    TimeWindow = from_tree("pipeline.delivery.routing", "TimeWindow")
    from pipeline.replay.plan import WorkUnit, pack_units
    from pipeline.replay.workers import UnitRunner
    from pipeline.settings import Settings

    ListingFilter, list_window = from_tree("pipeline.source.listing", "ListingFilter", "list_window")
    from pipeline.timespec import to_ms

    settings = Settings.from_env(os.environ)
    lo, hi = datetime.fromisoformat(since), datetime.fromisoformat(until)
    flt = ListingFilter((TENANT.tenant_id,), lo, hi, clusters=(cluster,))
    listing = list_window(aws.client("s3"), settings.bucket, flt)
    units = pack_units(listing.pods, 1)
    window = TimeWindow(to_ms(lo), to_ms(hi) + 1)
    runner = UnitRunner(settings, sink, window, redeliver=True, memory_budget_mib=budget_mib)
    runner.run(WorkUnit(-1, units[0].objects[:1], 0))  # imports, STS, clients, first stream
    baseline_kib, rss_baseline_kib = status_kib("VmHWM"), status_kib("VmRSS")
    start = time.perf_counter()
    objects = events = 0
    for unit in units:
        for r in map(result_dict, runner.run(unit)):
            if r["status"] != "delivered":
                raise RuntimeError(f"{r['key']}: {r['status']} {r['reason']}")
            objects += 1
            events += r["events_delivered"]
    seconds = time.perf_counter() - start
    runner.close()
    out = {
        "objects": objects,
        "events": events,
        "work_units": len(units),
        "memory_budget_mib": budget_mib,
        "seconds": round(seconds, 2),
        "events_per_s": round(events / seconds),
        "peak_rss_after_warm_up_mib": round(baseline_kib / 1024, 1),
        "rss_after_warm_up_mib": round(rss_baseline_kib / 1024, 1),
        "peak_rss_mib": round(status_kib("VmHWM") / 1024, 1),
        "rss_at_end_mib": round(status_kib("VmRSS") / 1024, 1),
    }
    print(orjson.dumps(out).decode(), flush=True)
    return 0


def generate_bodies(
    since: datetime, until: datetime, unique: int, events_per_object: int, seed: int
) -> list[GeneratedObject]:
    cfg = GeneratorConfig(
        since=since,
        until=until,
        tenants=(TENANT.tenant_id,),
        applications=app_names(1),
        pods_per_app=1,
        objects_per_pod=unique,
        events_per_object=events_per_object,
        seed=seed,
        keep_events=False,
    )
    return list(generate(cfg))


def put_copies(local: Any, cluster: str, generated: list[GeneratedObject], n: int) -> None:
    """`n` objects under `cluster`, cycling through the generated bodies, OBJECTS_PER_POD to a pod."""
    s3 = local.client("s3")
    for i in range(n):
        g = generated[i % len(generated)]
        p = parse_key(g.key)
        assert p.write_time is not None
        pod = f"{p.pod}-{i // OBJECTS_PER_POD}"
        key = format_key(cluster, p.tenant, p.application, pod, p.write_time, f"{g.spec.uid[:-4]}{i:04d}")
        s3.put_object(Bucket=local.names.bucket, Key=key, Body=g.body, **GZIP_PUT_ARGS)


def mean_size(generated: list[GeneratedObject]) -> int:
    return round(sum(len(g.body) for g in generated) / len(generated))


def write_sets(
    local: Any, objects: int, factor: int, unique: int, events_per_object: int, seed: int
) -> tuple[dict[str, Any], datetime, datetime]:
    """N objects under cluster `mem-n`, factor x N under `mem-xn`, reusing `unique` generated bodies."""
    now = datetime.now(UTC).replace(microsecond=0)
    since, until = now - timedelta(hours=3), now - timedelta(hours=1)
    generated = generate_bodies(since, until, unique, events_per_object, seed)
    local.client("s3").put_bucket_notification_configuration(Bucket=local.names.bucket, NotificationConfiguration={})
    sets = {"mem-n": objects, "mem-xn": objects * factor}
    for cluster, n in sets.items():
        put_copies(local, cluster, generated, n)
    info = {
        "unique_bodies": len(generated),
        "events_per_object": events_per_object,
        "object_bytes_mean": mean_size(generated),
        "objects_per_pod": OBJECTS_PER_POD,
        "sets": sets,
    }
    return info, since, until


def write_large_set(
    local: Any, since: datetime, until: datetime, objects: int, events_per_object: int, unique: int, seed: int
) -> dict[str, Any]:
    """`objects` copies of `unique` big generated bodies under cluster `mem-large`, one per pod."""
    generated = generate_bodies(since, until, unique, events_per_object, seed + 1)
    put_copies(local, "mem-large", generated, objects)
    return {
        "objects": objects,
        "unique_bodies": len(generated),
        "events_per_object": events_per_object,
        "object_bytes_mean": mean_size(generated),
        "uncompressed_bytes_mean": round(sum(len(gzip.decompress(g.body)) for g in generated) / len(generated)),
    }


def run_child(env: dict[str, str], cluster: str, sink: str, since: datetime, until: datetime, budget: int) -> Any:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--sink", sink, "--worker-memory", str(budget)]
    cmd += ["--child", cluster, since.isoformat(), until.isoformat()]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode:
        raise RuntimeError(f"worker for {cluster} failed:\n{proc.stderr[-3000:]}")
    out = orjson.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{cluster} (sink {sink}, budget {budget} MiB): {out}", flush=True)
    return out


# Compared with the release's `pipeline` in the same run (bench.baseline.main_beside); lower is better for
# each: a worker's peak RSS on the small and the large set, and the large objects' peak with the budget.
RELEASE_METRICS = {
    "n.peak_rss_mib": False,
    "ten_n.peak_rss_mib": False,
    "large_objects.default_budget.peak_rss_mib": False,
}
# `python -m bench --quick`: 16 objects and 4x, two large objects.
QUICK_ARGS = ["--objects", "16", "--factor", "4", "--large-objects", "4"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=32, help="N: objects of the small set")
    p.add_argument("--events-per-object", type=int, default=1000)
    p.add_argument("--factor", type=int, default=10, help="the large set has factor x N objects")
    p.add_argument("--unique-objects", type=int, default=8, help="bodies generated and reused")
    p.add_argument("--sink", choices=["cloudwatch", "null"], default="cloudwatch")
    p.add_argument("--worker-memory", type=int, default=DEFAULT_BUDGET_MIB, help="the workers' memory budget, MiB")
    p.add_argument("--large-objects", type=int, default=32, help="objects (and pods) of the large-object set")
    p.add_argument("--large-events-per-object", type=int, default=80_000, help="about 64 MiB uncompressed")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "memory.json")
    add_release_options(p)
    p.add_argument("--child", nargs=3, metavar=("CLUSTER", "SINCE", "UNTIL"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args.child[0], args.sink, args.child[1], args.child[2], args.worker_memory)
    code = release_beside(Path(__file__), argv, args, RELEASE_METRICS)
    if code is not None:
        return code

    mach = machine()
    t_all = time.monotonic()
    runs: dict[str, Any] = {}
    with MotoServer() as server:
        local = provision(server.endpoint_url, tenants=(TENANT,))
        data, since, until = write_sets(
            local, args.objects, args.factor, args.unique_objects, args.events_per_object, args.seed
        )
        large_data = (
            write_large_set(local, since, until, args.large_objects, args.large_events_per_object, 2, args.seed)
            if args.large_objects
            else None
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | local.env
        env["PYTHONPATH"] = code_path()
        for cluster in ("mem-n", "mem-xn"):
            runs[cluster] = run_child(env, cluster, args.sink, since, until, args.worker_memory)
        large_runs: dict[str, Any] = {}
        if large_data:
            for name, budget in (("default_budget", args.worker_memory), ("no_budget", UNBOUNDED_MIB)):
                large_runs[name] = run_child(env, "mem-large", "null", since, until, budget)
    small, large = runs["mem-n"], runs["mem-xn"]
    ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    growth_small = small["peak_rss_mib"] - small["peak_rss_after_warm_up_mib"]
    growth_large = large["peak_rss_mib"] - large["peak_rss_after_warm_up_mib"]
    result = {
        "benchmark": "memory",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench memory  (= python bench/memory_bench.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + ")",
        "machine": {**mach, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "sink": args.sink,
        "pod_threads_per_worker": POD_THREADS,
        "data": data,
        "n": small,
        "ten_n": large,
        "peak_ratio_10n_over_n": round(ratio, 3),
        "peak_growth_over_warm_up_mib": {"n": round(growth_small, 1), "ten_n": round(growth_large, 1)},
        "target_peak_ratio_at_most": TARGET_PEAK_RATIO,
        "target_peak_mib_under": TARGET_PEAK_MIB,
        "meets_ratio_target": ratio <= TARGET_PEAK_RATIO,
        "meets_peak_target": max(small["peak_rss_mib"], large["peak_rss_mib"]) < TARGET_PEAK_MIB,
        "large_objects": {
            "data": large_data,
            "sink": "null",
            **large_runs,
            "meets_peak_target_with_default_budget": bool(large_runs)
            and large_runs["default_budget"]["peak_rss_mib"] < TARGET_PEAK_MIB,
        },
        "wall_s": round(time.monotonic() - t_all, 1),
    }
    print(
        f"peak RSS: {small['peak_rss_mib']} MiB for {small['objects']} objects, {large['peak_rss_mib']} MiB for "
        f"{large['objects']}: ratio {result['peak_ratio_10n_over_n']}",
        flush=True,
    )
    write_result(args.output, result)
    return 0 if result["meets_ratio_target"] and result["meets_peak_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
