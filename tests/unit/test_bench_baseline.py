"""The benchmarks' shared baseline helper (bench/baseline.py): older result shapes, units of any version,
and the worktree it makes and removes."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench import baseline
from pipeline.delivery import DeliveryResult, ObjectResult
from pipeline.replay.plan import ObjectSpec, WorkUnit


def test_result_dict_reads_todays_results_and_older_plain_dicts_alike() -> None:
    new = ObjectResult(
        "k", tenant="acme", deliveries=[DeliveryResult("cw", "cloudwatch", events_delivered=5, requests=2)]
    )
    old = {"key": "k", "status": "delivered", "events_delivered": 5, "deliveries": [{"requests": 2}]}
    for shape in (new, old):
        d = baseline.result_dict(shape)
        assert (d["key"], d["status"], d["events_delivered"]) == ("k", "delivered", 5)
        assert baseline.requests_of(d) == 2
    # Before deliveries, an object's calls were counted at the top, as batches.
    assert baseline.requests_of({"key": "k", "batches": 3}) == 3
    with pytest.raises(TypeError, match="not an object result"):
        baseline.result_dict(42)


@dataclass(frozen=True)
class OldSpec:  # ObjectSpec before tenants (f9a182e, 4f17a4b)
    key: str
    size: int
    etag: str
    last_modified: float


@dataclass(frozen=True)
class OldUnit:
    unit_id: int
    objects: tuple[OldSpec, ...]
    bytes: int


@dataclass(frozen=True)
class Extra:  # a field the helper does not know must have its default
    unit_id: int
    objects: tuple[OldSpec, ...]
    bytes: int
    notes: list[str] = field(default_factory=list)


def test_make_unit_builds_each_versions_unit_from_plain_tuples() -> None:
    plain = [("t/acme/a/p/1.json.gz", 10, "e1", 1.0, "acme"), ("t/acme/a/p/2.json.gz", 20, "e2", 2.0, "acme")]
    new = baseline.make_unit(WorkUnit, ObjectSpec, 7, plain)
    assert new == WorkUnit(7, tuple(ObjectSpec(*o) for o in plain), 30, "acme")
    old = baseline.make_unit(OldUnit, OldSpec, 7, plain)
    assert old == OldUnit(7, tuple(OldSpec(*o[:4]) for o in plain), 30)
    assert baseline.make_unit(Extra, OldSpec, 1, plain[:1]).notes == []


def test_ratio_ok_fails_a_drop_beyond_noise_only() -> None:
    assert baseline.ratio_ok(1.0) and baseline.ratio_ok(1 - baseline.NOISE) and baseline.ratio_ok(1.3)
    assert not baseline.ratio_ok(1 - baseline.NOISE - 0.01)


def worktrees() -> set[str]:
    out = subprocess.run(["git", "-C", str(baseline.REPO), "worktree", "list", "--porcelain"], capture_output=True)
    return {line.split(" ", 1)[1] for line in out.stdout.decode().splitlines() if line.startswith("worktree ")}


def test_a_baseline_tree_runs_its_own_code_and_is_removed_afterwards(tmp_path: Path) -> None:
    with baseline.baseline_tree("HEAD", root=tmp_path) as tree:
        assert str(tree) in worktrees() and (tree / "pipeline" / "__init__.py").exists()
        # A child runs against the tree's code, and has the helper whatever the tree holds.
        code = "import json, pipeline; print(json.dumps([pipeline.__file__, bench_baseline.result_dict({'a': 1})]))"
        where, shaped = json.loads(baseline.run_child(tree, code).stdout)
        assert where == str(tree / "pipeline" / "__init__.py") and shaped == {"a": 1}
    assert str(tree) not in worktrees() and not tree.exists()


def test_a_baseline_tree_is_removed_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="boom"), baseline.baseline_tree("HEAD", root=tmp_path) as tree:
        raise RuntimeError("boom")
    assert str(tree) not in worktrees() and not tree.exists()


def test_an_unknown_revision_says_so() -> None:
    with pytest.raises(subprocess.CalledProcessError), baseline.baseline_tree("no-such-rev-27"):
        pass
