"""The benchmarks' shared baseline helper (bench/baseline.py): older result shapes, units of any version,
and the worktree it makes and removes."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench import baseline
from pipeline.delivery.results import DeliveryResult, ObjectResult
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


def test_pick_reads_dotted_paths_through_dicts_and_lists() -> None:
    result = {"sets": [{"replay": {"best": 12}}, {"replay": {"best": 3.5}}], "flag": True, "name": "x"}
    assert baseline.pick(result, "sets.0.replay.best") == 12.0
    assert baseline.pick(result, "sets.1.replay.best") == 3.5
    # Absent, out of range, not a number, a bool: no figure.
    for path in ("sets.2.replay.best", "sets.0.nope", "name", "flag", "sets.x"):
        assert baseline.pick(result, path) is None


def test_paired_ratio_is_oriented_so_above_one_is_better() -> None:
    # Higher is better (rates): this / release, median over pairs.
    assert baseline.paired_ratio([110, 90, 100], [100, 100, 100], higher_is_better=True) == 1.0
    # Lower is better (seconds, MiB): release / this.
    assert baseline.paired_ratio([50.0], [100.0], higher_is_better=False) == 2.0
    # Pairs missing a figure, or with a zero, are left out; none left: None.
    assert baseline.paired_ratio([None, 80.0], [100.0, 100.0], higher_is_better=True) == 0.8
    assert baseline.paired_ratio([None, 0.0], [1.0, 1.0], higher_is_better=True) is None


def test_sides_alternate_abba() -> None:
    assert [baseline.order_of(i) for i in range(3)] == [("this", "release"), ("release", "this"), ("this", "release")]


def test_a_side_imports_its_own_pipeline_and_this_checkouts_bench(tmp_path: Path) -> None:
    with baseline.baseline_tree("HEAD", root=tmp_path) as tree:
        overlay = baseline.pipeline_overlay(tree, tmp_path)
        assert sorted(p.name for p in overlay.iterdir()) == ["pipeline", "sitecustomize.py"]
        code = "import json, bench, pipeline, devstack; print(json.dumps([bench.__file__, pipeline.__file__]))"
        for side, expected in ((overlay, tree), (None, baseline.REPO)):
            env = baseline.side_env(side)
            assert env[baseline.CHILD_ENV] == "1"
            out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
            bench_file, pipeline_file = json.loads(out.stdout)
            assert Path(bench_file).parent == baseline.REPO / "bench"
            assert Path(pipeline_file).resolve().parent == (expected / "pipeline").resolve()


# A stand-in benchmark: reports a rate from the environment and the `pipeline` it imported, and exits 1 (its
# own target missed), which does not stop the comparison.
FAKE_BENCH = """
import json, os, sys
import pipeline
out = sys.argv[sys.argv.index("--output") + 1]
rate = float(os.environ.get("FAKE_RATE", "100"))
if "release" in os.environ.get("PYTHONPATH", "").split(os.pathsep)[0]:
    rate = float(os.environ.get("FAKE_RELEASE_RATE", "100"))
with open(out, "w") as f:
    json.dump({"benchmark": "fake", "rate": {"events_per_s": rate}, "pipeline": pipeline.__file__}, f)
sys.exit(1)
"""


def fake_bench(tmp_path: Path) -> Path:
    script = tmp_path / "fake_bench.py"
    script.write_text(FAKE_BENCH)
    return script


def test_beside_release_runs_both_sides_and_gates_on_noise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = fake_bench(tmp_path)
    # The overlay directory's name carries no "release"; mark the release side by its tree instead.
    monkeypatch.setattr(baseline, "pipeline_overlay", lambda tree, root: _marked_overlay(tree, root))
    monkeypatch.setenv("FAKE_RATE", "100")
    monkeypatch.setenv("FAKE_RELEASE_RATE", "100")
    this, cmp = baseline.beside_release(script, [], {"rate.events_per_s": True}, pairs=2, rev="HEAD")
    assert len(this) == 2 and cmp["ratios"] == {"rate.events_per_s": 1.0} and cmp["meets_release_target"]
    assert "release" not in this[0]["pipeline"]  # this checkout's side ran this checkout's pipeline
    monkeypatch.setenv("FAKE_RELEASE_RATE", "125")  # the release 25% faster: a drop beyond noise
    _, cmp = baseline.beside_release(script, [], {"rate.events_per_s": True}, rev="HEAD", info={"missing.x": True})
    assert cmp["ratios"]["rate.events_per_s"] == 0.8 and not cmp["meets_release_target"]
    assert cmp["ratios"]["missing.x"] is None and cmp["missing"] == []  # info neither gates nor goes missing


def _marked_overlay(tree: Path, root: Path) -> Path:
    overlay = root / "release-overlay"
    overlay.mkdir(exist_ok=True)
    (overlay / "pipeline").symlink_to(tree / "pipeline", target_is_directory=True)
    return overlay


def test_a_side_without_a_result_is_a_harness_error(tmp_path: Path) -> None:
    script = tmp_path / "broken_bench.py"
    script.write_text("import sys; sys.exit('no result: ' + ' '.join(sys.argv[1:]))")
    this, cmp = baseline.beside_release(script, ["--x"], {"a": True}, rev="HEAD")
    assert this == [] and not cmp["meets_release_target"]
    assert len(cmp["errors"]) == 2 and "no result: --x" in cmp["errors"][0]


def test_main_beside_writes_this_result_with_the_comparison(tmp_path: Path) -> None:
    out = tmp_path / "fake.json"
    code = baseline.main_beside(fake_bench(tmp_path), [], {"rate.events_per_s": True}, out, rev="HEAD")
    written = json.loads(out.read_text())
    assert code == 0 and written["benchmark"] == "fake" and written["meets_release_target"] is True
    assert written["vs_release"]["ratios"] == {"rate.events_per_s": 1.0}
    # The benchmark's own targets count too.
    assert (
        baseline.main_beside(fake_bench(tmp_path), [], {"rate.events_per_s": True}, out, rev="HEAD", ok=lambda r: False)
        == 1
    )
    assert baseline.own_targets_met({"meets_a": True, "meets_release_target": False, "meets_b": {"x": False}})
    assert not baseline.own_targets_met({"meets_a": False})


def test_a_release_side_that_imports_this_checkouts_pipeline_is_a_harness_error(tmp_path: Path) -> None:
    # A benchmark that puts this checkout first on sys.path would compare this checkout with itself.
    script = tmp_path / "stubborn_bench.py"
    script.write_text(
        f"import json, sys\nsys.path.insert(0, {str(baseline.REPO)!r})\nimport pipeline\n"
        "json.dump({'a': 1}, open(sys.argv[sys.argv.index('--output') + 1], 'w'))\n"
    )
    this, cmp = baseline.beside_release(script, [], {"a": True}, rev="HEAD")
    assert len(this) == 1 and not cmp["meets_release_target"]
    assert "imported another pipeline" in cmp["errors"][0] and str(baseline.REPO / "pipeline") in cmp["errors"][0]


def test_the_bench_runner_answers_help_and_refuses_options_it_does_not_know(capsys: pytest.CaptureFixture[str]) -> None:
    from bench.__main__ import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "python -m bench [--quick] [NAME ...]" in out and "\n  replay\n" in out  # and runs nothing
    assert main(["replay", "--repeats", "2"]) == 2  # not a name to match: a benchmark's own option
    assert "unknown option --repeats" in capsys.readouterr().err


def test_a_benchmark_measures_itself_without_a_release_or_as_one_side_of_a_comparison(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--output", type=Path, default=Path("out.json"))
    baseline.add_release_options(parser)
    args = parser.parse_args([])
    assert (args.release, args.pairs) == (baseline.RELEASE, 1)
    skip = parser.parse_args(["--release", ""])
    assert baseline.release_beside(Path("x_bench.py"), ["--release", ""], skip, {}) is None
    monkeypatch.setenv(baseline.CHILD_ENV, "1")  # one side of a comparison never compares again
    assert baseline.release_beside(Path("x_bench.py"), [], args, {}) is None
