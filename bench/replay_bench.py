"""Replay benchmark: the decode ceiling, and null-sink replay throughput on 1 and 2 Ray workers.

    .venv/bin/python -m bench replay                 # or: .venv/bin/python bench/replay_bench.py
    .venv/bin/python bench/replay_bench.py --unique-objects 32 --copies 2 --repeats 2   # quicker

Everything is measured in one run, on the same objects, so the ratios hold even on a noisy machine:

(a) Decode ceiling, one process: the project's path for one object (`records.decode_events` →
    `batching.group_by_stream` → `batching.prepare`) against a minimal reference loop over the same bodies
    (`zlib.decompress` + `orjson.loads` per line, results discarded). Target: ratio >= 0.7.
(b) Replay, null sink: `UnitRunner` (the body of `DeliveryWorker`) inside Ray actors, fed work units from
    `plan.pack_units`, against a sequential loop in the style of the original processor (gunzip,
    `json.loads` per line, PutLogEvents batches of 1,000 serialized with `json.dumps`, nothing sent).
    Targets: 200k events/s per core, and 2 workers >= 1.7x one worker.

Objects come from the project's generator (realistic message mix, gzip level 6). Generating is slow
(~10k events/s), so a pool of unique objects is generated once and each body is reused under several
pod prefixes. Bodies are served to the workers from memory, not from moto: on a 2-core machine a moto
server answering GETs would compete with the workers for the CPUs and the benchmark would measure moto.
Tenant config is read from a real moto DynamoDB (once per worker, then cached). Ray start-up, actor
creation and a warm-up unit per actor are excluded from the timings.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import json
import os
import pstats
import statistics
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import machine, write_result  # noqa: E402
from devstack.generator import GeneratorConfig, app_names, generate  # noqa: E402
from pipeline import records  # noqa: E402
from pipeline.batching import group_by_stream, prepare  # noqa: E402
from pipeline.delivery import TimeWindow  # noqa: E402
from pipeline.keys import format_key, parse_key  # noqa: E402
from pipeline.replay.listing import ListedObject  # noqa: E402
from pipeline.replay.plan import WorkUnit, pack_units  # noqa: E402
from pipeline.settings import Settings  # noqa: E402
from pipeline.timespec import to_ms  # noqa: E402

TARGET_DECODE_RATIO = 0.7
TARGET_EVENTS_PER_CORE = 200_000
TARGET_SCALING = 1.7
BATCH = 1000  # the original processor's PutLogEvents batch
TENANT = "acme"


@dataclass(frozen=True)
class BenchObject:
    key: str
    body: bytes
    etag: str
    last_modified: datetime
    events: int


# ---------------------------------------------------------------------------------------------------------
# Data


def make_objects(unique: int, copies: int, events_per_object: int, seed: int) -> tuple[list[BenchObject], dict]:
    now = datetime.now(UTC).replace(microsecond=0)
    apps = app_names(4)
    pods_per_app = 2
    cfg = GeneratorConfig(
        since=now - timedelta(hours=3),
        until=now - timedelta(hours=1),
        tenants=(TENANT,),
        applications=apps,
        pods_per_app=pods_per_app,
        objects_per_pod=max(1, unique // (len(apps) * pods_per_app)),
        events_per_object=events_per_object,
        seed=seed,
        keep_events=False,
    )
    start = time.monotonic()
    generated = list(generate(cfg))
    gen_s = time.monotonic() - start
    out: list[BenchObject] = []
    for copy in range(copies):
        for g in generated:
            p = parse_key(g.key)
            assert p.write_time is not None
            key = format_key(p.cluster, p.tenant, p.application, f"{p.pod}-c{copy}", p.write_time, g.spec.uid)
            etag = f"{zlib.crc32(g.body):08x}"
            out.append(BenchObject(key, g.body, etag, p.write_time, g.events))
    raw = sum(len(zlib.decompress(g.body, 31)) for g in generated) * copies
    info = {
        "unique_objects": len(generated),
        "copies": copies,
        "objects": len(out),
        "events": sum(o.events for o in out),
        "events_per_object": events_per_object,
        "bytes_compressed": sum(len(o.body) for o in out),
        "bytes_uncompressed": raw,
        "pods": len({o.key.rsplit("/", 1)[0] for o in out}),
        "generate_s": round(gen_s, 2),
        "window": [cfg.since.isoformat(), cfg.until.isoformat()],
    }
    return out, info


# ---------------------------------------------------------------------------------------------------------
# (a) decode ceiling


def project_decode(objs: Sequence[BenchObject], now_ms: int) -> int:
    """The project's per-object path up to the sink: decode, group into streams, prepare."""
    n = 0
    for o in objs:
        p = parse_key(o.key)
        stats = records.DecodeStats(key=o.key)
        events = records.decode_events(o.body, int(o.last_modified.timestamp() * 1000), stats)
        for evs in group_by_stream(events, p.application, p.pod).values():
            n += len(prepare(evs, now_ms).events)
    return n


def reference_decode(objs: Sequence[BenchObject], inflate: Callable[[bytes, int], bytes] = zlib.decompress) -> int:
    """The least any decoder must do: inflate, split lines, parse each; results discarded."""
    loads = orjson.loads
    n = 0
    for o in objs:
        for line in inflate(o.body, 31).split(b"\n"):
            if line:
                loads(line)
                n += 1
    return n


# ---------------------------------------------------------------------------------------------------------
# (b) the original processor, sequential


def _original_ts(value: Any, fallback_ms: int) -> int:
    if isinstance(value, int | float):
        return int(value) if value >= 1e12 else int(value * 1000)
    if isinstance(value, str):
        try:
            return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
        except ValueError:
            pass
    return fallback_ms


def original_processor(objs: Sequence[BenchObject], store: Mapping[str, BenchObject]) -> int:
    """What the processor this project replaces did per object, minus the network: download, gunzip,
    json.loads per line, group into {app}-{pod}-{date} streams, sort, and serialize PutLogEvents
    requests of 1,000 events."""
    n = 0
    for o in objs:
        body = io.BytesIO(store[o.key].body).read()  # "download"
        text = gzip.decompress(body).decode("utf-8")
        _, _, app, pod, _ = o.key.split("/", 4)
        fallback = int(o.last_modified.timestamp() * 1000)
        streams: dict[str, list[dict[str, Any]]] = {}
        for line in text.splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            msg = rec.get("message")
            if not isinstance(msg, str):
                msg = json.dumps(msg, separators=(",", ":"))
            ts = _original_ts(rec.get("timestamp"), fallback)
            day = datetime.fromtimestamp(ts / 1000, UTC).strftime("%Y-%m-%d")
            streams.setdefault(f"{app}-{pod}-{day}", []).append({"timestamp": ts, "message": msg})
        for name, evs in streams.items():
            evs.sort(key=lambda e: e["timestamp"])
            for i in range(0, len(evs), BATCH):
                json.dumps({"logGroupName": f"/logs/{TENANT}", "logStreamName": name, "logEvents": evs[i : i + BATCH]})
                n += len(evs[i : i + BATCH])
    return n


# ---------------------------------------------------------------------------------------------------------
# (b) Ray workers


class MemoryS3:
    """GetObject from memory, shaped like boto3's answer (Body with read(), ETag, LastModified)."""

    def __init__(self, store: Mapping[str, tuple[bytes, str, datetime]]) -> None:
        self._store = store

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:  # boto3's argument names
        body, etag, last_modified = self._store[Key]
        return {"Body": io.BytesIO(body), "ETag": f'"{etag}"', "LastModified": last_modified}


class BenchWorker:
    """A DeliveryWorker's UnitRunner with sink 'null', its S3 reads served from memory."""

    def __init__(self, settings: Settings, window: TimeWindow, store: Mapping[str, tuple[bytes, str, datetime]]):
        from pipeline.replay.workers import UnitRunner

        self.runner = UnitRunner(settings, "null", window)
        self.runner.deliverer._s3 = MemoryS3(store)  # the Deliverer's own client slot; no other change

    def run(self, unit: WorkUnit) -> tuple[int, float]:
        """Events delivered, and the CPU seconds this worker process spent on the unit (all threads)."""
        cpu = time.process_time()
        results = [r.to_dict() for r in self.runner.run(unit)]
        cpu = time.process_time() - cpu
        bad = [r for r in results if r["status"] != "delivered"]
        if bad:
            raise RuntimeError(f"{len(bad)} objects not delivered, e.g. {bad[0]['key']}: {bad[0]['reason']}")
        return sum(r["events_delivered"] for r in results), cpu


def pods_of(objs: Sequence[BenchObject]) -> dict[str, list[ListedObject]]:
    pods: dict[str, list[ListedObject]] = {}
    for o in sorted(objs, key=lambda o: o.key):
        listed = ListedObject(o.key, len(o.body), o.etag, o.last_modified, parse_key(o.key))
        pods.setdefault(o.key.rsplit("/", 1)[0] + "/", []).append(listed)
    return pods


def run_ray(ray: Any, actors: list[Any], units: list[WorkUnit]) -> tuple[float, int, float]:
    """Pull scheduling as in pipeline.replay.job: two units in flight per worker.

    Returns (wall seconds, events, CPU seconds the workers spent)."""
    queue = list(reversed(units))
    pending: dict[Any, Any] = {}
    start = time.perf_counter()
    for actor in actors:
        for _ in range(2):
            if queue:
                pending[actor.run.remote(queue.pop())] = actor
    events = 0
    cpu = 0.0
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        actor = pending.pop(done[0])
        n, unit_cpu = ray.get(done[0])
        events += n
        cpu += unit_cpu
        if queue:
            pending[actor.run.remote(queue.pop())] = actor
    return time.perf_counter() - start, events, cpu


# ---------------------------------------------------------------------------------------------------------


def timed(fn: Callable[[], int]) -> tuple[float, int]:
    start = time.perf_counter()
    n = fn()
    return time.perf_counter() - start, n


def paired_ratio(num: list[tuple[float, int]], den: list[tuple[float, int]]) -> float:
    """Median over repeats of num/den rates measured back to back: steadier than a ratio of bests when
    other processes come and go."""
    return round(statistics.median((n1 / s1) / (n2 / s2) for (s1, n1), (s2, n2) in zip(num, den, strict=True)), 3)


def rates(samples: list[tuple[float, int]]) -> dict[str, float]:
    per_s = [n / s for s, n in samples]
    return {"best_events_per_s": round(max(per_s)), "median_events_per_s": round(statistics.median(per_s))}


def profile_decode(objs: Sequence[BenchObject], now_ms: int, top: int = 12) -> list[dict[str, Any]]:
    prof = cProfile.Profile()
    prof.enable()
    project_decode(objs, now_ms)
    prof.disable()
    st = pstats.Stats(prof)
    total = sum(v[2] for v in st.stats.values())  # type: ignore[attr-defined]
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]  # type: ignore[attr-defined]
    out = []
    for (file, line, func), (_cc, ncalls, tottime, cumtime, _) in rows:
        where = file.replace(str(REPO) + "/", "") if file.startswith(str(REPO)) else Path(file).name
        out.append(
            {
                "function": f"{where}:{line}({func})",
                "calls": ncalls,
                "tottime_share": round(tottime / total, 3),
                "cumtime_s": round(cumtime, 3),
            }
        )
    return out


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unique-objects", type=int, default=64, help="objects generated (the slow part)")
    p.add_argument("--copies", type=int, default=4, help="each unique body is reused under this many pods")
    p.add_argument("--events-per-object", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5, help="timed passes per measurement; best and median kept")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "replay.json")
    args = p.parse_args(argv)
    mach = machine("ray", inflate=getattr(records.zlib, "__name__", "zlib"))
    t_all = time.monotonic()

    objs, data = make_objects(args.unique_objects, args.copies, args.events_per_object, args.seed)
    print(
        f"data: {data['objects']} objects, {data['events']:,} events, {data['bytes_compressed']:,} bytes gz", flush=True
    )
    now_ms = int(time.time() * 1000)
    store = {o.key: o for o in objs}

    # (a) decode ceiling, and (b) the sequential baseline: interleaved passes, so load from other
    # processes hits all of them alike.
    proj, ref, ref_ng, orig = [], [], [], []
    for _ in range(args.repeats):
        proj.append(timed(lambda: project_decode(objs, now_ms)))
        ref.append(timed(lambda: reference_decode(objs)))
        ref_ng.append(timed(lambda: reference_decode(objs, records.zlib.decompress)))
        orig.append(timed(lambda: original_processor(objs, store)))
    assert {n for _, n in proj} == {n for _, n in ref} == {data["events"]}, "decoders disagree on the event count"
    assert {n for _, n in orig} == {data["events"]}
    decode = {
        "project": rates(proj),
        "reference_zlib": rates(ref),
        "reference_zlib_ng": rates(ref_ng),
    }
    decode["ratio_vs_reference_zlib"] = round(
        decode["project"]["best_events_per_s"] / decode["reference_zlib"]["best_events_per_s"], 3
    )
    decode["ratio_vs_reference_zlib_ng"] = round(
        decode["project"]["best_events_per_s"] / decode["reference_zlib_ng"]["best_events_per_s"], 3
    )
    decode["paired_ratio_vs_reference_zlib"] = paired_ratio(proj, ref)
    decode["paired_ratio_vs_reference_zlib_ng"] = paired_ratio(proj, ref_ng)
    decode["target_ratio"] = TARGET_DECODE_RATIO
    decode["meets_target"] = decode["paired_ratio_vs_reference_zlib"] >= TARGET_DECODE_RATIO
    print(f"decode: {decode}", flush=True)

    replay = replay_on_ray(objs, data, args.repeats)
    baseline = rates(orig)
    one = replay["workers_1"]["best_events_per_s"]
    two = replay["workers_2"]["best_events_per_s"]
    replay["original_processor_sequential"] = baseline
    replay["events_per_s_per_core_1_worker"] = one
    replay["events_per_s_per_core_2_workers"] = round(two / 2)
    replay["scaling_2_vs_1"] = round(two / one, 3)
    replay["speedup_1_worker_vs_original"] = round(one / baseline["best_events_per_s"], 3)
    replay["target_events_per_s_per_core"] = TARGET_EVENTS_PER_CORE
    replay["target_scaling"] = TARGET_SCALING
    replay["meets_per_core_target"] = one >= TARGET_EVENTS_PER_CORE
    replay["meets_scaling_target"] = replay["paired_scaling_2_vs_1"] >= TARGET_SCALING
    print(f"replay: {replay}", flush=True)

    sample = objs[: max(1, len(objs) // args.copies // 2)]
    result = {
        "benchmark": "replay",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench replay  (= python bench/replay_bench.py " + " ".join(argv or sys.argv[1:]) + ")",
        "machine": {**mach, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "data": data,
        "decode_ceiling": decode,
        "replay_null_sink": replay,
        "profile_decode_top_tottime": profile_decode(sample, now_ms),
        "wall_s": round(time.monotonic() - t_all, 1),
    }
    write_result(args.output, result)
    return 0


def replay_on_ray(objs: list[BenchObject], data: dict[str, Any], repeats: int) -> dict[str, Any]:
    import ray

    from devstack.provision import SampleTenant, provision
    from devstack.server import MotoServer

    since, until = (datetime.fromisoformat(t) for t in data["window"])
    window = TimeWindow(to_ms(since), to_ms(until) + 1)
    mem = {o.key: (o.body, o.etag, o.last_modified) for o in objs}
    pods = pods_of(objs)
    warm = WorkUnit(-1, pack_units({k: v[:1] for k, v in list(pods.items())[:1]}, 1)[0].objects, 0)
    out: dict[str, Any] = {}
    with MotoServer() as server:
        local = provision(server.endpoint_url, tenants=(SampleTenant(TENANT, "111111111111"),))
        env = {**local.env, "PYTHONPATH": str(REPO)}
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            configure_logging=False,
            log_to_driver=False,
            runtime_env={"env_vars": env},
        )
        try:
            worker_cls = ray.remote(num_cpus=1)(BenchWorker)
            store_ref = ray.put(mem)
            actors = [worker_cls.remote(local.settings, window, store_ref) for _ in range(2)]
            ray.get([a.run.remote(warm) for a in actors])  # imports, tenant lookup, first-call costs
            samples: dict[int, list[tuple[float, int]]] = {1: [], 2: []}
            cpu: dict[int, list[float]] = {1: [], 2: []}
            units = {n: pack_units(pods, n) for n in (1, 2)}
            for _ in range(repeats):
                for n in (1, 2):
                    seconds, events, cpu_s = run_ray(ray, actors[:n], units[n])
                    assert events == data["events"], (events, data["events"])
                    samples[n].append((seconds, events))
                    cpu[n].append(cpu_s)
            for n in (1, 2):
                out[f"workers_{n}"] = {
                    **rates(samples[n]),
                    # Wall-clock independent: events per CPU-second the workers actually got.
                    "events_per_cpu_s": round(data["events"] / min(cpu[n])),
                    "work_units": len(units[n]),
                }
            out["paired_scaling_2_vs_1"] = paired_ratio(samples[2], samples[1])
        finally:
            ray.shutdown()
    return out


if __name__ == "__main__":
    sys.exit(main())
