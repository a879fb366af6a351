"""Running a benchmark's passes against older code in the same run: one home for the baseline tree.

Every benchmark compares this checkout with the previous release (`RELEASE`), and some also with a commit
that means more for what they measure (the code before batches spanned objects, before the circuits). The
older code is a `git worktree` of that commit, made for the run and removed after it (`baseline_tree`);
the same venv runs it, with the tree first on the import path (`tree_env`, `child_command`).

Older code speaks older shapes: a replay worker's results were plain dicts before they were `ObjectResult`s,
`ObjectSpec` and `WorkUnit` had fewer fields. Code that runs inside another tree therefore reads results
through `result_dict` and builds units with `make_unit`, which accept either shape. This module imports
nothing from the project, so a child process running an older tree can load it by its path
(`child_command` does) without importing this tree's `pipeline`.

    with baseline_tree("1b4c7bf") as tree:
        subprocess.run(child_command(tree, CODE, "arg"), env=tree_env(tree, env), cwd=tree)
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve()

# The last landed release: what every benchmark also runs, in the same run, unless told otherwise.
RELEASE = "1b4c7bf"
# A ratio to the release below this fails a benchmark: the passes are interleaved and paired, and on this
# shared 2-core machine paired ratios of identical code spread by about ±5% (docs/PERFORMANCE.md).
NOISE = 0.07


def short(rev: str) -> str:
    """The commit `rev` names, abbreviated (a stable label for results)."""
    out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", f"{rev}^{{commit}}"], capture_output=True)
    return out.stdout.decode().strip() if out.returncode == 0 else rev


@contextmanager
def baseline_tree(rev: str, root: Path | None = None) -> Iterator[Path]:
    """A detached `git worktree` of `rev` for the duration of the block, removed afterwards (also when the
    block raises). Under `root`, or a fresh temporary directory. Raises CalledProcessError with git's
    message when `rev` does not exist."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-baseline-")) if root is None else None
    path = (tmp or root or Path(".")) / f"baseline-{rev}"
    add = ["git", "-C", str(REPO), "worktree", "add", "--detach", "--force", str(path), rev]
    done = subprocess.run(add, capture_output=True, text=True)
    if done.returncode != 0:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise subprocess.CalledProcessError(done.returncode, add, done.stdout, done.stderr)
    try:
        yield path
    finally:
        remove_tree(path)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def remove_tree(path: Path) -> None:
    """Remove a worktree `baseline_tree` made, and git's record of it."""
    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["git", "-C", str(REPO), "worktree", "prune"], capture_output=True)


def tree_env(tree: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) with `tree` alone on PYTHONPATH: its `pipeline` is the one imported."""
    return {**(os.environ if env is None else env), "PYTHONPATH": str(tree)}


# Run first in a child, before its own code: makes this module importable as `bench_baseline` from its
# file (not from the tree under test, which may not have it) and puts the tree first on the import path.
_PRELUDE = """\
import importlib.util as _u, sys as _s
_spec = _u.spec_from_file_location("bench_baseline", {helper!r})
bench_baseline = _u.module_from_spec(_spec)
_s.modules["bench_baseline"] = bench_baseline
_spec.loader.exec_module(bench_baseline)
_s.path.insert(0, {tree!r})
from_tree = bench_baseline.from_tree
"""


def child_command(tree: Path, code: str, *args: str) -> list[str]:
    """A command line that runs `code` in a fresh interpreter (this venv's) against `tree`'s code, with this
    module available to it as `bench_baseline` (`result_dict`, `make_unit`) and `from_tree` as a name. Run it
    with `tree_env`."""
    return [sys.executable, "-c", _PRELUDE.format(helper=str(HERE), tree=str(tree)) + code, *args]


def start_child(
    stack: ExitStack, tree: Path, code: str, *args: str, env: Mapping[str, str] | None = None
) -> subprocess.Popen[str]:
    """`child_command` started in `tree` as a server of one request per stdin line, once it said "ready"; the
    stack closes its stdin and waits for it."""
    proc = subprocess.Popen(
        child_command(tree, code, *args),
        env=tree_env(tree, env),
        cwd=tree,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    stack.callback(proc.wait)
    stack.callback(proc.stdin.close)  # type: ignore[union-attr]
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", tree
    return proc


def run_child(
    tree: Path, code: str, *args: str, env: Mapping[str, str] | None = None, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    """`child_command` run to completion in `tree`; raises RuntimeError with the child's stderr if it fails."""
    proc = subprocess.run(
        child_command(tree, code, *args),
        env=tree_env(tree, env),
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"child in {tree} exited with {proc.returncode}:\n{proc.stderr[-3000:]}")
    return proc


# A moto server provisioned by a tree's own code (its tables' shapes are that version's), held until stdin
# closes. The provisioning modules moved from pipeline.local to devstack.
_STACK = """
import json, sys
try:
    from devstack.provision import SampleTenant, provision
    from devstack.server import MotoServer
except ImportError:
    from pipeline.local.provision import SampleTenant, provision
    from pipeline.local.server import MotoServer
tenants = [SampleTenant(t, a) for t, a in json.loads(sys.argv[1])]
with MotoServer() as server:
    local = provision(server.endpoint_url, tenants=tuple(tenants))
    print(json.dumps(local.env), flush=True)
    sys.stdin.read()
"""


@contextmanager
def tree_stack(tree: Path, tenants: Sequence[tuple[str, str]]) -> Iterator[dict[str, str]]:
    """A moto server provisioned by `tree`'s own code with `tenants` ((tenant id, account id) pairs), for
    the block: yields the environment that code's processes use to reach it (AWS endpoint, table names)."""
    proc = subprocess.Popen(
        child_command(tree, _STACK, json.dumps([list(t) for t in tenants])),
        env=tree_env(tree),
        cwd=tree,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the local stack of {tree} did not start (exit {proc.wait()})")
        yield dict(json.loads(line))
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def result_dict(result: Any) -> dict[str, Any]:
    """One object's result as a plain dict, from any version: older workers return dicts, newer ones
    `ObjectResult`s (`to_dict()`). Counters a version lacks are absent, not invented."""
    if isinstance(result, Mapping):
        return dict(result)
    to_dict = getattr(result, "to_dict", None)
    if callable(to_dict):
        out = to_dict()
        if isinstance(out, Mapping):
            return dict(out)
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return dataclasses.asdict(result)
    raise TypeError(f"not an object result: {type(result).__name__}")


def requests_of(result: Mapping[str, Any]) -> int:
    """The data calls one object's result counts, in either shape: per delivery (`deliveries[].requests`)
    or, before deliveries, at the top (`batches`, then `requests`)."""
    deliveries = result.get("deliveries")
    if isinstance(deliveries, Sequence) and deliveries:
        return sum(int(d.get("requests", 0)) for d in deliveries)
    return int(result.get("requests", result.get("batches", 0)) or 0)


def make_unit(unit_cls: type[Any], spec_cls: type[Any], unit_id: int, objects: Sequence[Sequence[Any]]) -> Any:
    """A WorkUnit of any version from plain (key, size, etag, last_modified, tenant) tuples: fields an older
    ObjectSpec or WorkUnit does not have are left out."""
    spec_fields = [f.name for f in dataclasses.fields(spec_cls)]
    names = ("key", "size", "etag", "last_modified", "tenant")
    specs = tuple(spec_cls(**{k: v for k, v in zip(names, o, strict=False) if k in spec_fields}) for o in objects)
    unit_fields = {f.name for f in dataclasses.fields(unit_cls)}
    kwargs: dict[str, Any] = {"unit_id": unit_id, "objects": specs, "bytes": sum(int(o[1]) for o in objects)}
    tenants = {o[4] for o in objects if len(o) > 4}
    if "tenant" in unit_fields and len(tenants) == 1:
        kwargs["tenant"] = tenants.pop()
    return unit_cls(**kwargs)


# Where today's modules lived in older trees (issue #28 moved them): a benchmark that runs an older tree's
# pipeline beside today's imports through `from_tree`, which tries today's home first.
FORMER_HOMES = {
    "pipeline.delivery.routing": "pipeline.delivery",
    "pipeline.delivery.results": "pipeline.delivery",
    "pipeline.delivery.engine": "pipeline.delivery",
    "pipeline.sinks.cloudwatch.limits": "pipeline.batching",
    "pipeline.sinks.cloudwatch.filling": "pipeline.batching",
    "pipeline.sinks.cloudwatch.inflight": "pipeline.assembly",
    "pipeline.memory": "pipeline.replay.budget",
    "pipeline.source.listing": "pipeline.replay.listing",
}


def from_tree(module: str, *names: str) -> Any:
    """The named objects of `module`, from today's home or, in an older tree, its former one (one name: the
    object itself; several: a tuple)."""
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError:
        if module not in FORMER_HOMES:
            raise
        mod = importlib.import_module(FORMER_HOMES[module])
    values = tuple(getattr(mod, name) for name in names)
    return values[0] if len(values) == 1 else values


def ratio_ok(ratio: float, noise: float = NOISE) -> bool:
    """Whether this code's figure over the baseline's (higher is better) is no drop beyond noise."""
    return ratio >= 1 - noise


# --- A whole benchmark run again with the release's `pipeline`, interleaved with this checkout's -------------
#
# Benchmarks that time this checkout's code through their own harness (moto, generated data, stand-ins) compare
# with the release the same way for all: the benchmark script of *this* checkout runs in child processes, once
# with this checkout's `pipeline` and once with the release's (`pipeline_overlay`), alternately (ABBA), and the
# figures named in `metrics` are compared pair by pair. Only `pipeline` comes from the release: the harness,
# devstack's provisioning (its tables are a superset of the release's) and the data generator stay the same,
# so the two sides measure the same thing. A benchmark opts in by calling `main_beside` from its main() unless
# `is_child()`; its own options are passed to both sides unchanged.

# Set in the children `beside_release` starts: such a run measures once and does not compare again.
CHILD_ENV = "BENCH_BESIDE_CHILD"


def is_child() -> bool:
    """Whether this process is one side of a `beside_release` comparison (it must not compare again)."""
    return os.environ.get(CHILD_ENV) == "1"


def code_path() -> str:
    """The PYTHONPATH a benchmark gives its own subprocesses (children, Ray): this side's, so that on the
    release's side of a comparison they import the release's `pipeline` too."""
    return os.environ.get("PYTHONPATH", str(REPO)) if is_child() else str(REPO)


def has_module(name: str) -> bool:
    """Whether the `pipeline` being measured has module `name`: a benchmark of a feature the release does not
    have measures on that side only what both have (and says so), rather than failing."""
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


# Written into the overlay as sitecustomize.py, which every interpreter started with the overlay on its path
# imports first: at exit, a process that imported some other `pipeline` (a benchmark that puts this checkout
# first on sys.path) says so in WRONG_PIPELINE, and the comparison is reported as a harness error instead of
# silently comparing this checkout with itself.
WRONG_PIPELINE = "wrong-pipeline.txt"
_SIDE_CHECK = """\
import atexit, os, sys
def _bench_side_check():
    mod = sys.modules.get("pipeline")
    where = os.path.realpath(getattr(mod, "__file__", None) or "") if mod is not None else ""
    if where and not where.startswith({expected!r}):
        with open({mark!r}, "a") as f:
            f.write(f"{{os.getpid()}} {{' '.join(sys.argv)[:200]}} imported {{where}}\\n")
atexit.register(_bench_side_check)
"""


def pipeline_overlay(tree: Path, root: Path) -> Path:
    """A directory under `root` holding only `tree`'s `pipeline` (a symlink). Ahead of this checkout on the
    path, it makes the older `pipeline` the one imported while `bench` and `devstack` stay this checkout's.
    Processes that import another `pipeline` anyway are recorded in `root / WRONG_PIPELINE`."""
    overlay = root / "overlay"
    overlay.mkdir(parents=True, exist_ok=True)
    link = overlay / "pipeline"
    if not link.exists():
        link.symlink_to(tree / "pipeline", target_is_directory=True)
    expected = os.path.realpath(tree / "pipeline") + os.sep
    (overlay / "sitecustomize.py").write_text(_SIDE_CHECK.format(expected=expected, mark=str(root / WRONG_PIPELINE)))
    return overlay


def side_env(overlay: Path | None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of one side's child: this checkout on PYTHONPATH, after `overlay` when given. Ray
    workers and the benchmark's own subprocesses inherit it, so they import the same `pipeline`."""
    path = [str(overlay)] if overlay is not None else []
    return {**(os.environ if env is None else env), "PYTHONPATH": os.pathsep.join([*path, str(REPO)]), CHILD_ENV: "1"}


def pick(result: Any, path: str) -> float | None:
    """The number at a dotted `path` in a result (`sets.0.replay.best_events_per_s`: keys, or list indices),
    or None when the result has no such figure."""
    node = result
    for part in path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, Sequence) and not isinstance(node, str) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def paired_ratio(this: Sequence[float | None], release: Sequence[float | None], higher_is_better: bool) -> float | None:
    """The median over pairs of this checkout's figure relative to the release's, oriented so that above 1 is
    better whichever way the figure points (for a time or a peak: release / this). Pairs missing a figure or
    with a zero are left out; None when none is left."""
    ratios = []
    for mine, theirs in zip(this, release, strict=True):
        if mine is None or theirs is None or mine == 0 or theirs == 0:
            continue
        ratios.append(mine / theirs if higher_is_better else theirs / mine)
    return round(statistics.median(ratios), 3) if ratios else None


def order_of(pair: int) -> tuple[str, str]:
    """Which side runs first in pair `pair`: ABBA, so a drift of the machine over the run favours neither."""
    return ("this", "release") if pair % 2 == 0 else ("release", "this")


def beside_release(
    script: Path,
    args: Sequence[str],
    metrics: Mapping[str, bool],
    *,
    pairs: int = 1,
    rev: str = RELEASE,
    output_flag: str = "--output",
    timeout: float = 3600,
    info: Mapping[str, bool] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run `script` with `args` `pairs` times on each side, alternating, and compare `metrics` (dotted paths
    into its result, each mapped to whether higher is better). `info` are compared the same way and reported,
    but do not gate (figures that are mostly moto's, or too small to time in a quick run).

    Returns this checkout's results (in run order) and the comparison: per metric the paired median ratio
    (above 1: this checkout better), the figures of each side, and `meets_release_target` (no gating ratio
    below 1 - NOISE). A side whose run wrote no result is a harness error: its stderr is reported and the
    target is not met. A child's own exit status (its other targets) does not matter here."""
    runs: dict[str, list[dict[str, Any]]] = {"this": [], "release": []}
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-beside-") as tmp, baseline_tree(rev, Path(tmp)) as tree:
        overlay = pipeline_overlay(tree, Path(tmp))
        for pair in range(pairs):
            for side in order_of(pair):
                out = Path(tmp) / f"{side}-{pair}.json"
                env = side_env(overlay if side == "release" else None)
                cmd = [sys.executable, str(script), *args, output_flag, str(out)]
                print(f"  [{side} {pair + 1}/{pairs}] {' '.join(cmd[1:])}", flush=True)
                proc = subprocess.run(cmd, env=env, cwd=tmp, capture_output=True, text=True, timeout=timeout)
                if not out.exists():
                    errors.append(
                        f"{side} run {pair + 1} exited {proc.returncode} without a result:\n{proc.stderr[-2000:]}"
                    )
                    continue
                runs[side].append(json.loads(out.read_text()))
        wrong = Path(tmp) / WRONG_PIPELINE
        if wrong.exists():
            errors.append(f"the release's side imported another pipeline:\n{wrong.read_text()[-2000:]}")
    comparison: dict[str, Any] = {"release": short(rev), "noise": NOISE, "pairs": pairs, "order": "ABBA"}
    if errors or len(runs["this"]) != len(runs["release"]):
        comparison.update(errors=errors, meets_release_target=False)
        return runs["this"], comparison
    ratios: dict[str, float | None] = {}
    figures: dict[str, dict[str, list[float | None]]] = {}
    for path, higher in {**(info or {}), **metrics}.items():
        mine = [pick(r, path) for r in runs["this"]]
        theirs = [pick(r, path) for r in runs["release"]]
        figures[path] = {"this": mine, "release": theirs, "higher_is_better": [higher]}  # type: ignore[list-item]
        ratios[path] = paired_ratio(mine, theirs, higher)
    gating = {p: ratios[p] for p in metrics}
    missing = [p for p, r in gating.items() if r is None]
    comparison.update(
        ratios=ratios,
        gating=sorted(metrics),
        figures=figures,
        missing=missing,
        meets_release_target=not missing and all(ratio_ok(r) for r in gating.values() if r is not None),
    )
    return runs["this"], comparison


def add_release_options(parser: argparse.ArgumentParser) -> None:
    """The options of a benchmark whose main() runs the release beside it (`release_beside`)."""
    parser.add_argument(
        "--release", default=RELEASE, help="the previous release, run beside in the same run ('' to skip)"
    )
    parser.add_argument("--pairs", type=int, default=1, help="runs of each side, alternated (ABBA)")


def release_beside(
    script: Path, argv: Sequence[str] | None, args: argparse.Namespace, metrics: Mapping[str, bool], **kwargs: Any
) -> int | None:
    """`main_beside` with the options of `add_release_options` and the benchmark's own `--output`, in the parent
    process when a release is named; None when the benchmark measures itself (a child pass, or `--release ''`)."""
    if not args.release or is_child():
        return None
    raw = list(argv if argv is not None else sys.argv[1:])
    return main_beside(script, raw, metrics, args.output, pairs=args.pairs, rev=args.release, **kwargs)


def main_beside(
    script: Path,
    args: Sequence[str],
    metrics: Mapping[str, bool],
    output: Path,
    *,
    pairs: int = 1,
    rev: str = RELEASE,
    output_flag: str = "--output",
    ok: Callable[[dict[str, Any]], bool] | None = None,
    info: Mapping[str, bool] | None = None,
) -> int:
    """A benchmark's main() when it compares with the release: `beside_release`, then this checkout's first
    result with the comparison under `vs_release` and `meets_release_target` written to `output`. The exit
    status is non-zero when the release target is missed, or when `ok(result)` (the benchmark's own targets,
    default: every top-level `meets_*` that is a bool) is false."""
    from bench.machine import write_result

    start = time.monotonic()
    load_start = [round(x, 2) for x in os.getloadavg()]
    this, comparison = beside_release(script, args, metrics, pairs=pairs, rev=rev, output_flag=output_flag, info=info)
    result: dict[str, Any] = dict(this[0]) if this else {"benchmark": script.stem.removesuffix("_bench")}
    if len(this) > 1:
        result["this_runs"] = len(this)
    result["vs_release"] = comparison
    result["meets_release_target"] = comparison["meets_release_target"]
    result["load_average_over_comparison"] = {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}
    result["wall_s"] = round(time.monotonic() - start, 1)
    write_result(output, result)
    for path, ratio in comparison.get("ratios", {}).items():
        print(f"  vs release {comparison['release']}: {path} {ratio}", flush=True)
    for error in comparison.get("errors", []):
        print(f"  {error}", file=sys.stderr, flush=True)
    own = bool(this) and (ok(result) if ok is not None else own_targets_met(result))
    return 0 if own and comparison["meets_release_target"] else 1


def own_targets_met(result: Mapping[str, Any]) -> bool:
    """A benchmark's own targets, by default: every top-level `meets_*` flag that is a bool is true (a dict of
    flags, as listing's per-shape `meets_targets`, is the benchmark's to judge through `main_beside(ok=)`)."""
    return all(
        v for k, v in result.items() if k.startswith("meets_") and k != "meets_release_target" and isinstance(v, bool)
    )
