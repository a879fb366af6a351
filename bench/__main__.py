"""`python -m bench [--quick] [NAME ...]`: run every `bench/*_bench.py` that has a `main()`, or only those named.

Each benchmark writes its own JSON under bench/results/. A benchmark's main() parses its own options, so
it is called with its defaults, or with its `QUICK_ARGS` under `--quick` (smaller sets and fewer repeats,
the same comparisons: what `make bench` runs). One failing benchmark does not stop the others; the exit
status says whether any failed, and a summary line per benchmark ends the run.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def discover(names: list[str]) -> list[str]:
    """The benchmark modules (`*_bench`), or those whose name contains one of `names`."""
    modules = sorted(p.stem for p in BENCH_DIR.glob("*_bench.py"))
    if names:
        modules = [m for m in modules if any(n in m for n in names)]
    return modules


# Quick sizes of the benchmarks that do not define `QUICK_ARGS` themselves (yet): their owners' documented
# quick runs (docs/PERFORMANCE.md). A module's own `QUICK_ARGS` wins.
QUICK_FALLBACK: dict[str, list[str]] = {
    "replay_bench": ["--unique-objects", "32", "--copies", "2", "--repeats", "3"],
    "s3_bench": [
        *("--typical-unique", "16", "--typical-copies", "2", "--large-copies", "4"),
        *("--repeats", "2", "--large-repeats", "2"),
    ],
    "consumer_bench": ["--objects", "100", "--stream-objects", "40"],
    "ledger_bench": ["--repeats", "2"],
}


def arguments(module: object, quick: bool) -> list[str]:
    """The command line a benchmark is run with: none (its defaults), or its `QUICK_ARGS` when quick."""
    if not quick:
        return []
    name = getattr(module, "__name__", "").rpartition(".")[2]
    return [str(a) for a in getattr(module, "QUICK_ARGS", QUICK_FALLBACK.get(name, []))]


def usage() -> str:
    listed = "\n".join(f"  {m.removesuffix('_bench')}" for m in discover([]))
    return f"{(__doc__ or '').strip()}\n\nBenchmarks (a NAME matches those it is part of):\n{listed}\n"


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else list(argv)
    if {"-h", "--help"} & set(names):
        print(usage())
        return 0
    quick = "--quick" in names
    names = [n for n in names if n != "--quick"]
    unknown = [n for n in names if n.startswith("-")]
    if unknown:  # a benchmark's own options go to `python -m bench.NAME_bench`, not through the runner
        print(f"unknown option {' '.join(unknown)}: python -m bench [--quick] [NAME ...]", file=sys.stderr)
        return 2
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    modules = discover(names)
    if not modules:
        print(f"no benchmark matches {names}", file=sys.stderr)
        return 2
    outcome: list[tuple[str, str, float]] = []
    saved_argv = sys.argv
    began = time.monotonic()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    for name in modules:
        module = importlib.import_module(f"bench.{name}")
        entry = getattr(module, "main", None)
        if not callable(entry):
            continue
        args = arguments(module, quick)
        print(f"== {name} {' '.join(args)}", flush=True)
        start = time.monotonic()
        sys.argv = [str(BENCH_DIR / f"{name}.py"), *args]  # its own options, not ours
        try:
            code = entry()
        except SystemExit as exc:
            code = exc.code
        except Exception:
            traceback.print_exc()
            code = 1
        finally:
            sys.argv = saved_argv
        took = time.monotonic() - start
        verdict = "ok" if not code else f"FAILED ({code})"
        print(f"== {name}: {verdict} in {took:.1f}s", flush=True)
        outcome.append((name, verdict, took))
    print(
        f"== {len(outcome)} benchmarks in {time.monotonic() - began:.0f}s, load average at end: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    for name, verdict, took in outcome:
        print(f"   {name:<20} {verdict:<12} {took:7.1f}s")
    return 1 if any(v != "ok" for _, v, _ in outcome) else 0


if __name__ == "__main__":
    sys.exit(main())
