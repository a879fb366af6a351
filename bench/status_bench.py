"""Status writes per delivery per process, across object rates (pipeline/status.py).

`python -m bench status`: a StatusRecorder on a simulated clock is fed N objects a second for five simulated
minutes, spread over 5 deliveries, with its timer ticking every 5 s as in the consumer; its table counts the
UpdateItem calls it would make (no AWS: the figure is about how many writes, not how fast). The claim: at
most one write per delivery in any 30 s window, whatever the rate, so the table's write rate does not grow
with the object rate. Writes bench/results/status.json.

Not run against the release (`bench.baseline.RELEASE`): the release has no status writes (pipeline/status.py
came with issue 25, after it), and the figure is a count on a simulated clock, not a speed; the result says
so under `vs_release`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.baseline import RELEASE, short  # noqa: E402
from bench.machine import machine, write_result  # noqa: E402
from pipeline.status import (  # noqa: E402
    FLUSH_INTERVAL_S,
    Figures,
    Key,
    Observation,
    StatusRecorder,
    StatusTable,
)

RESULTS = REPO / "bench" / "results" / "status.json"
# `python -m bench --quick`: two simulated minutes per rate (the 30 s bound is checked in each).
QUICK_ARGS = ["--seconds", "120"]
DELIVERIES: list[Key] = [("acme", "cloudwatch"), ("acme", "s3-archive"), ("globex", "cloudwatch"),
                         ("umbrella", "cloudwatch"), ("umbrella", "s3-archive")]  # fmt: skip


class CountingTable(StatusTable):
    """Counts the writes, with their simulated time, instead of sending them."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__("bench")
        self.clock = clock
        self.at: dict[Key, list[float]] = defaultdict(list)

    def update(self, key: Key, request: Any) -> dict[str, Any]:
        self.writes += 1
        self.at[key].append(self.clock[0])
        return {}


def max_in_window(times: list[float], window: float) -> int:
    """The most writes of one delivery in any half-open window of `window` seconds."""
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window:
            start += 1
        best = max(best, end - start + 1)
    return best


def run(rate: int, seconds: int, tick_s: float = 5.0) -> dict[str, Any]:
    clock = [1_800_000_000.0]
    table = CountingTable(clock)
    recorder = StatusRecorder(table, clock=lambda: clock[0])
    next_tick = clock[0] + tick_s
    wall = time.perf_counter()
    for second in range(seconds):
        for i in range(rate):
            clock[0] = 1_800_000_000.0 + second + i / rate
            key = DELIVERIES[i % len(DELIVERIES)]
            recorder.coalescer.add(
                key, Observation(clock[0], Figures(1, 20, 4000), key_time=clock[0] - 60, delivered=True)
            )
            if clock[0] >= next_tick:
                recorder.flush()
                next_tick += tick_s
    clock[0] = 1_800_000_000.0 + seconds
    recorder.flush(force=True)  # the process's last flush
    worst = max(max_in_window(t[:-1], FLUSH_INTERVAL_S) for t in table.at.values())  # timer writes
    return {
        "objects_per_s": rate,
        "objects": rate * seconds,
        "simulated_s": seconds,
        "deliveries": len(DELIVERIES),
        "writes": table.writes,
        "writes_per_delivery_per_minute": round(table.writes / len(DELIVERIES) / (seconds / 60), 2),
        "max_writes_per_delivery_in_any_30s": worst,
        "wall_s": round(time.perf_counter() - wall, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=300, help="simulated seconds per rate")
    parser.add_argument("--rates", default="10,100,1000,10000", help="objects per second, comma-separated")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    wall = time.monotonic()
    mach = machine()
    rows = [run(int(r), args.seconds) for r in args.rates.split(",")]
    for r in rows:
        print(
            f"{r['objects_per_s']:>6} objects/s: {r['writes']} writes for {r['objects']:,} objects "
            f"({r['writes_per_delivery_per_minute']}/delivery/min), "
            f"at most {r['max_writes_per_delivery_in_any_30s']} per delivery in any 30 s"
        )
    ok = all(r["max_writes_per_delivery_in_any_30s"] <= 1 for r in rows)
    result = {
        "benchmark": "status",
        "command": "python -m bench status  (= python bench/status_bench.py " + " ".join(sys.argv[1:]) + ")",
        "machine": {**mach, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "flush_interval_s": FLUSH_INTERVAL_S,
        "runs": rows,
        "ok": ok,
        "vs_release": {
            "release": short(RELEASE),
            "not_compared": "the release has no status writes (pipeline/status.py came with issue 25, after it); "
            "the figure is a count on a simulated clock, not a speed",
        },
        "wall_s": round(time.monotonic() - wall, 2),
    }
    write_result(args.output, result)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
