"""Decode beside an older commit, same run: the project's per-object decode path of each tree, paired.

    .venv/bin/python -m bench decode                                   # or: python bench/decode_bench.py
    .venv/bin/python bench/decode_bench.py --baseline 9339ae2 --repeats 15

The path is replay_bench's (a): `records.decode_events` → `group_by_stream` → `prepare`, for every object, over
bodies from the project's generator. Each tree runs it in a child process of its own (`child_command`: the tree's
`pipeline`, this venv), fed the same pickled bodies; the driver sends the children one pass each in turn, the
order reversed every other pass (ABBA), so the machine's load hits both alike. Reported per tree: events per
CPU-second of the child (`time.process_time`, the decode is single-threaded) and per wall second; the gate is
the paired median of this checkout's events per CPU-second over the baseline's (no drop beyond
`bench.baseline.NOISE`). A second child of this checkout (`--control`, on by default) is paired with the first
the same way: its ratio, ideally 1, is the run's own noise floor.
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
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.baseline import NOISE, RELEASE, baseline_tree, order_of, ratio_ok, short, start_child  # noqa: E402
from bench.machine import machine, write_result  # noqa: E402

# Runs in the child against its tree; `from_tree` finds a module moved by #28 in its former home.
CHILD = r"""
import json, pickle, sys, time
from pipeline import records
from pipeline.keys import parse_key
group_by_stream, prepare = from_tree("pipeline.sinks.cloudwatch.limits", "group_by_stream", "prepare")
with open(sys.argv[1], "rb") as f:
    d = pickle.load(f)
objects, now_ms = d["objects"], d["now_ms"]

def one_pass():
    n = 0
    for key, body, last_modified_ms in objects:
        p = parse_key(key)
        stats = records.DecodeStats(key=key)
        events = records.decode_events(body, last_modified_ms, stats)
        for evs in group_by_stream(events, p.application, p.pod).values():
            n += len(prepare(evs, now_ms).events)
    return n

one_pass()  # imports, caches, first-call costs
print("ready", flush=True)
for line in sys.stdin:
    cpu, wall = time.process_time(), time.perf_counter()
    n = one_pass()
    print(json.dumps({"events": n, "cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}), flush=True)
"""

QUICK_ARGS = ["--unique-objects", "16", "--copies", "2", "--repeats", "11"]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", default=RELEASE, help="the commit whose decode runs beside this checkout's")
    p.add_argument("--unique-objects", type=int, default=32, help="objects generated (the slow part)")
    p.add_argument("--copies", type=int, default=2, help="each unique body is decoded this many times a pass")
    p.add_argument("--events-per-object", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=21, help="timed passes per tree, alternated (ABBA)")
    p.add_argument("--no-control", dest="control", action="store_false", help="skip this checkout's second child")
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "decode.json")
    args = p.parse_args(argv)

    from bench import replay_bench as rb

    objs, info = rb.make_objects(args.unique_objects, args.copies, args.events_per_object, 1)
    data = Path(tempfile.mkdtemp(prefix="decode-bench-")) / "data.pkl"
    now_ms = int(time.time() * 1000)
    objects = [(o.key, o.body, int(o.last_modified.timestamp() * 1000)) for o in objs]
    data.write_bytes(pickle.dumps({"objects": objects, "now_ms": now_ms}))
    base = short(args.baseline)
    load_start = [round(x, 2) for x in os.getloadavg()]
    start = time.monotonic()
    with ExitStack() as stack:
        trees = {"this": REPO, base: stack.enter_context(baseline_tree(args.baseline))}
        if args.control:
            trees["this (control)"] = REPO
        procs: dict[str, subprocess.Popen[str]] = {}
        for name, tree in trees.items():
            procs[name] = start_child(stack, tree, CHILD, str(data))

        def run(name: str) -> dict[str, float]:
            proc = procs[name]
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write("run\n")
            proc.stdin.flush()
            answer: dict[str, float] = json.loads(proc.stdout.readline())
            return answer

        passes: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for i in range(args.repeats):
            names = list(trees) if order_of(i)[0] == "this" else list(reversed(trees))
            for name in names:
                r = run(name)
                assert r["events"] == info["events"], (name, r, info["events"])
                passes[name].append(r)
            print(
                f"pass {i}: " + ", ".join(f"{n} {passes[n][-1]['events'] / passes[n][-1]['cpu']:,.0f}" for n in trees),
                "events per CPU-s",
                flush=True,
            )

    def per(name: str, what: str) -> list[float]:
        return [r["events"] / r[what] for r in passes[name]]

    def paired(name: str, what: str) -> float:
        return round(statistics.median(a / b for a, b in zip(per("this", what), per(name, what), strict=True)), 3)

    sides = {
        name: {
            "median_events_per_cpu_s": round(statistics.median(per(name, "cpu"))),
            "best_events_per_cpu_s": round(max(per(name, "cpu"))),
            "median_events_per_s": round(statistics.median(per(name, "wall"))),
        }
        for name in trees
    }
    ratio_cpu, ratio_wall = paired(base, "cpu"), paired(base, "wall")
    result = {
        "benchmark": "decode",
        "machine": machine("orjson", inflate=getattr(rb.records.zlib, "__name__", "zlib")),
        "data": {k: info[k] for k in ("objects", "events", "bytes_compressed")},
        "repeats": args.repeats,
        "order": "ABBA",
        "baseline": base,
        "sides": sides,
        "ratio_vs_baseline_per_cpu_s": ratio_cpu,
        "ratio_vs_baseline_per_wall_s": ratio_wall,
        "noise": NOISE,
        "meets_baseline_target": ratio_ok(ratio_cpu),
        "load_average": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
        "wall_s": round(time.monotonic() - start, 1),
    }
    if args.control:
        result["control_ratio_per_cpu_s"] = paired("this (control)", "cpu")
        result["control_ratio_per_wall_s"] = paired("this (control)", "wall")
    write_result(args.output, result)
    print(
        f"this over {base}: events per CPU-s {ratio_cpu}, per wall-s {ratio_wall} (paired medians of {args.repeats});"
        f" control {result.get('control_ratio_per_cpu_s')}; load {load_start} -> {result['load_average']['end']}"
    )
    return 0 if result["meets_baseline_target"] else 1


if __name__ == "__main__":
    sys.exit(main())
