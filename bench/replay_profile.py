"""The null-sink replay worker of this checkout beside an older commit's, without Ray: paired CPU and profiles.

    .venv/bin/python bench/replay_profile.py --baseline f9a182e --repeats 9
    .venv/bin/python bench/replay_profile.py --baseline f9a182e --serial --profile 10   # + cProfile per tree

Each tree's `UnitRunner` (sink "null", S3 reads from memory, its tenant table from a moto server that tree's own
code provisions) runs in a child process of its own, fed the same pickled bodies and units. The driver sends the
children one pass each in turn (each going first in every other pair), so the machine's load hits both alike,
and reports events per CPU-second of each child (all its threads, `time.process_time`) and the paired median
ratio with its quartiles: the figure issue #27 gates on, without Ray's own threads in the CPU count. Per tree it
also gives what else the passes cost (CPU over wall time, system time, the collector, page faults, context
switches). `--serial` runs the pod and put thread pools inline, so cProfile (which sees one thread) sees all the
work; `--profile N` accumulates N interleaved profiled passes per tree into `<out>-<tree>.prof`, for `pstats` or
a side-by-side diff.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import replay_bench as rb  # noqa: E402
from bench.baseline import baseline_tree, short, start_child, tree_stack  # noqa: E402

# Runs in the child against its tree (bench_baseline is this repo's bench/baseline.py, loaded by path).
CHILD = r"""
import cProfile, gc, io, json, os, pickle, resource, sys, time
tree, data, serial = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if serial:
    import concurrent.futures as cf

    class Inline:
        def __init__(self, *a, **k): pass
        def submit(self, fn, *a, **k):
            f = cf.Future()
            try:
                f.set_result(fn(*a, **k))
            except BaseException as exc:
                f.set_exception(exc)
            return f
        def map(self, fn, *its): return [fn(*x) for x in zip(*its)]
        def shutdown(self, wait=True, **k): pass
        def __enter__(self): return self
        def __exit__(self, *a): pass

    cf.ThreadPoolExecutor = Inline  # before pipeline imports it
with open(data, "rb") as f:
    d = pickle.load(f)
store = d["store"]

class MemoryS3:
    def get_object(self, Bucket, Key, **_):
        body, etag, lm = store[Key]
        return {"Body": io.BytesIO(body), "ETag": f'"{etag}"', "LastModified": lm}

TimeWindow = from_tree("pipeline.delivery.routing", "TimeWindow")
from pipeline.replay.plan import ObjectSpec, WorkUnit
from pipeline.replay.workers import UnitRunner
from pipeline.settings import Settings
runner = UnitRunner(Settings.from_env(), "null", TimeWindow(*d["window"]))
runner.deliverer._s3 = MemoryS3()
units = [bench_baseline.make_unit(WorkUnit, ObjectSpec, uid, objs) for uid, objs in d["units"]]

def one_pass():
    n = 0
    for u in units:
        for r in map(bench_baseline.result_dict, runner.run(u)):
            assert r["status"] == "delivered", r
            n += int(r["events_delivered"])
    return n

gc_time = [0.0, 0.0]  # CPU in the collector this pass, and when the current collection started


def _gc_clock(phase, info):
    if phase == "start":
        gc_time[1] = time.process_time()
    else:
        gc_time[0] += time.process_time() - gc_time[1]


gc.callbacks.append(_gc_clock)
one_pass()  # imports, tenant lookup, first-call costs
print("ready", flush=True)
prof = cProfile.Profile()
for line in sys.stdin:
    cmd, *arg = line.split()
    if cmd == "run" or cmd == "profile":
        gc_time[0], full = 0.0, gc.get_stats()[2]["collections"]
        cpu, wall, ru = time.process_time(), time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
        if cmd == "profile":
            prof.enable()
        n = one_pass()
        prof.disable()
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        after = resource.getrusage(resource.RUSAGE_SELF)
        print(json.dumps({
            "events": n, "cpu": cpu, "wall": wall, "sys": after.ru_stime - ru.ru_stime,
            "gc": gc_time[0], "full gc": gc.get_stats()[2]["collections"] - full,
            "faults": after.ru_minflt - ru.ru_minflt,
            "switches": after.ru_nvcsw - ru.ru_nvcsw, "preempted": after.ru_nivcsw - ru.ru_nivcsw,
        }), flush=True)
    elif cmd == "dump":
        prof.dump_stats(arg[0])
        print("{}", flush=True)
"""


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default=rb.HISTORICAL, help="the commit to run beside this checkout")
    p.add_argument("--unique-objects", type=int, default=32)
    p.add_argument("--copies", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9, help="timed passes per tree, interleaved")
    p.add_argument("--serial", action="store_true", help="pod and put pools inline (for cProfile)")
    p.add_argument("--profile", type=int, default=0, help="profiled passes per tree, after the timed ones")
    p.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "replay-profile"))
    args = p.parse_args(argv)

    objs, info = rb.make_objects(args.unique_objects, args.copies, 1000, 1)
    since, until = (datetime.fromisoformat(t) for t in info["window"])
    units = rb.plain_units(rb.pack_units(rb.pods_of(objs), 1))
    data = Path(tempfile.mkdtemp(prefix="replay-profile-")) / "data.pkl"
    window = (rb.to_ms(since), rb.to_ms(until) + 1)
    store = {o.key: (o.body, o.etag, o.last_modified) for o in objs}
    data.write_bytes(pickle.dumps({"store": store, "window": window, "units": units}))
    load_start = os.getloadavg()
    with ExitStack() as stack:
        trees = {"this": REPO, short(args.baseline): stack.enter_context(baseline_tree(args.baseline))}
        procs: dict[str, subprocess.Popen[str]] = {}
        for name, tree in trees.items():
            env = stack.enter_context(tree_stack(tree, [(rb.TENANT, "111111111111")]))
            serial = "1" if args.serial else "0"
            procs[name] = start_child(stack, tree, CHILD, str(tree), str(data), serial, env={**os.environ, **env})

        def ask(name: str, line: str) -> dict[str, float]:
            proc = procs[name]
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(line + "\n")
            proc.stdin.flush()
            answer: dict[str, float] = json.loads(proc.stdout.readline())
            return answer

        cpu: dict[str, list[float]] = {name: [] for name in trees}
        # Where the CPU goes besides the work: CPU over wall time (above 1: threads ran at once), system
        # time, the collector's CPU and full collections, minor page faults, and context switches
        # (voluntary: a thread blocked; involuntary: the kernel preempted it). Medians per pass.
        extra: dict[str, dict[str, list[float]]] = {name: {} for name in trees}
        for i in range(args.repeats):
            # Each tree goes first in every other pair: a child that runs right after the other one (caches,
            # the scheduler's view of it) is not always the same one.
            for name in list(trees)[:: 1 if i % 2 == 0 else -1]:
                r = ask(name, "run")
                assert r["events"] == info["events"], (name, r)
                cpu[name].append(r["cpu"])
                r["cpu/wall"] = r["cpu"] / r["wall"]
                for k in ("cpu/wall", "sys", "gc", "full gc", "faults", "switches", "preempted"):
                    extra[name].setdefault(k, []).append(r[k])
                print(f"pass {i} {name}: {r['events'] / r['cpu']:,.0f} events per CPU-s", flush=True)
        for _ in range(args.profile):
            for name in trees:
                ask(name, "profile")
        if args.profile:
            for name in trees:
                ask(name, f"dump {args.out}-{name}.prof")
                print(f"profile: {args.out}-{name}.prof", flush=True)
    base = list(trees)[1]
    if args.repeats:
        for name in trees:
            medians = ", ".join(f"{k} {statistics.median(v):.3g}" for k, v in extra[name].items())
            print(f"{name}: median {info['events'] / statistics.median(cpu[name]):,.0f} events per CPU-s ({medians})")
        ratios = sorted(b / a for a, b in zip(cpu["this"], cpu[base], strict=True))
        spread = ""
        if len(ratios) >= 4:
            q1, _, q3 = statistics.quantiles(ratios, n=4)
            spread = f" (quartiles {q1:.3f}-{q3:.3f}, range {ratios[0]:.3f}-{ratios[-1]:.3f}, {len(ratios)} pairs)"
        print(f"this over {base}, events per CPU-s, paired median: {statistics.median(ratios):.3f}{spread}")
    print(f"load average: {load_start} -> {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
