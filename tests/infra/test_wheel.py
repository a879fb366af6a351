"""The production wheel, built as the images build the project (pip, --no-build-isolation, no index): it holds
the `pipeline` package whole and nothing else (no devstack/, no moto, no generator or fault proxy, no jobs/
or tests/), and declares the four console scripts.

The build runs on a copy of the working tree, so package discovery sees every top-level folder the
repository has, without leaving build/ or *.egg-info behind in it."""

from __future__ import annotations

import ast
import configparser
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser

import pytest
from infra_helpers import REPO
from packaging.requirements import Requirement

# Never copied into the build: the venv, VCS data and what .gitignore keeps out.
IGNORED = (".venv", ".git", "__pycache__", "*.egg-info", ".pytest_cache", ".ruff_cache", ".hypothesis", "build")
IGNORED += ("dist", "reports", "*.pyc", ".ipynb_checkpoints")
DEV_MODULES = {"devstack", "moto"}
# devstack's modules by file name (the generator, the fault proxy, provisioning, read-back, the demo): none
# may turn up anywhere in the wheel. Its server.py is moto's, which the import check below catches (the
# package has an API server.py of its own).
DEVSTACK_FILES = {"generator.py", "generate.py", "faults.py", "provision.py", "readback.py", "demo.py"}
SCRIPTS = {
    "log-replay": "pipeline.commands.replay:main",
    "log-consumer": "pipeline.commands.consumer:main",
    "log-tenants": "pipeline.commands.tenants:main",
    "log-inventory": "pipeline.commands.inventory:main",
}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(*IGNORED))
    out = tmp / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q"]
    result = subprocess.run([*cmd, "-w", str(out), str(src)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (path,) = out.glob("pipeline-*.whl")
    with zipfile.ZipFile(path) as zf:
        yield zf


def dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}") and n.count("/") == 1]
    return wheel.read(path).decode()


def test_the_wheel_holds_the_pipeline_package_and_nothing_else(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    tops = {n.split("/")[0] for n in names}
    assert {t for t in tops if not t.endswith(".dist-info")} == {"pipeline"}
    # Every module of the package, none left behind by discovery.
    expected = {p.relative_to(REPO).as_posix() for p in (REPO / "pipeline").rglob("*.py")}
    assert {n for n in names if n.endswith(".py")} == expected
    assert "pipeline/commands/replay.py" in names and "pipeline/replay/job.py" in names


def test_the_wheel_has_no_dev_tooling(wheel: zipfile.ZipFile) -> None:
    names = wheel.namelist()
    assert not [n for n in names if n.startswith(("devstack/", "pipeline/local/", "jobs/", "tests/", "bench/"))]
    assert not [n for n in names if n.rsplit("/", 1)[-1] in DEVSTACK_FILES], "a devstack module was packaged"
    for name in (n for n in names if n.endswith(".py")):
        tree = ast.parse(wheel.read(name), filename=name)
        for node in ast.walk(tree):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module]
                if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module
                else []
            )
            assert not [m for m in modules if m.split(".")[0] in DEV_MODULES], f"{name} imports {modules}"


def test_the_wheel_declares_the_four_console_scripts(wheel: zipfile.ZipFile) -> None:
    entry_points = configparser.ConfigParser()
    entry_points.read_string(dist_info(wheel, "entry_points.txt"))
    assert dict(entry_points["console_scripts"]) == SCRIPTS
    for target in SCRIPTS.values():
        assert f"{target.partition(':')[0].replace('.', '/')}.py" in wheel.namelist()


def test_moto_is_only_an_optional_dependency(wheel: zipfile.ZipFile) -> None:
    metadata = Parser().parsestr(dist_info(wheel, "METADATA"))
    requires = [Requirement(r) for r in metadata.get_all("Requires-Dist") or []]
    assert requires
    moto = [r for r in requires if r.name == "moto"]
    assert moto and all(r.marker is not None and "extra" in str(r.marker) for r in moto)
    assert all(r.marker is not None for r in requires if r.name in ("pytest", "hypothesis"))
