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

import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
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
"""


def child_command(tree: Path, code: str, *args: str) -> list[str]:
    """A command line that runs `code` in a fresh interpreter (this venv's) against `tree`'s code, with this
    module available to it as `bench_baseline` (`result_dict`, `make_unit`). Run it with `tree_env`."""
    return [sys.executable, "-c", _PRELUDE.format(helper=str(HERE), tree=str(tree)) + code, *args]


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
    import json

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


def ratio_ok(ratio: float, noise: float = NOISE) -> bool:
    """Whether this code's figure over the baseline's (higher is better) is no drop beyond noise."""
    return ratio >= 1 - noise
