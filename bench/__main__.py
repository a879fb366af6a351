"""`python -m bench [NAME ...]`: run every `bench/*_bench.py` that has a `main()`, or only those named.

Each benchmark writes its own JSON under bench/results/. A benchmark's main() parses its own options, so
it is called with an empty command line (its defaults). One failing benchmark does not stop the others;
the exit status says whether any failed.
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def discover(names: list[str]) -> list[str]:
    modules = sorted(p.stem for p in BENCH_DIR.glob("*_bench.py"))
    if names:
        modules = [m for m in modules if any(n in m for n in names)]
    return modules


def main(argv: list[str] | None = None) -> int:
    names = sys.argv[1:] if argv is None else argv
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    modules = discover(names)
    if not modules:
        print(f"no benchmark matches {names}", file=sys.stderr)
        return 2
    failed: list[str] = []
    saved_argv = sys.argv
    for name in modules:
        module = importlib.import_module(f"bench.{name}")
        entry = getattr(module, "main", None)
        if not callable(entry):
            continue
        print(f"== {name}", flush=True)
        start = time.monotonic()
        sys.argv = [str(BENCH_DIR / f"{name}.py")]  # its own defaults, not our arguments
        try:
            code = entry()
        except SystemExit as exc:
            code = exc.code
        except Exception:
            traceback.print_exc()
            code = 1
        finally:
            sys.argv = saved_argv
        print(f"== {name}: {'ok' if not code else f'FAILED ({code})'} in {time.monotonic() - start:.1f}s", flush=True)
        if code:
            failed.append(name)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
