"""What ships does not depend on what does not: `pipeline` (the wheel, the images) and the jobs/ wrappers (the
images copy them) never import the dev tooling of devstack/ (moto, the generator, the fault proxy), moto,
the tests or the benchmarks; and each console script is one function of the package, which jobs/ wraps."""

from __future__ import annotations

import ast
import importlib
import tomllib
from pathlib import Path

import click
import pytest

REPO = Path(__file__).resolve().parents[2]
DEV_ONLY = {"devstack", "moto", "tests", "bench", "jobs"}
SCRIPTS = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]


def imported_modules(path: Path) -> set[str]:
    """Every absolute module a file imports, at any depth (lazy imports inside functions too), and every
    constant name handed to importlib.import_module / __import__."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.add(node.args[0].value)
    return found


def dev_imports(path: Path, forbidden: set[str]) -> set[str]:
    return {m for m in imported_modules(path) if m.split(".")[0] in forbidden}


def test_the_walk_sees_every_kind_of_import(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import moto\nfrom devstack.server import MotoServer\n"
        "def f():\n    import devstack.faults\n    return importlib.import_module('devstack.generator')\n"
        "from . import sibling\n"
    )
    assert dev_imports(probe, DEV_ONLY) == {"moto", "devstack.server", "devstack.faults", "devstack.generator"}


@pytest.mark.parametrize(
    "path", sorted((REPO / "pipeline").rglob("*.py")), ids=lambda p: str(p.relative_to(REPO / "pipeline"))
)
def test_the_production_package_imports_no_dev_tooling(path: Path) -> None:
    assert not dev_imports(path, DEV_ONLY), f"{path.relative_to(REPO)} imports dev-only code"


@pytest.mark.parametrize("path", sorted((REPO / "jobs").glob("*.py")), ids=lambda p: p.name)
def test_the_jobs_wrappers_the_images_copy_import_no_dev_tooling(path: Path) -> None:
    assert not dev_imports(path, DEV_ONLY - {"jobs"}), f"{path.relative_to(REPO)} imports dev-only code"


def test_the_dev_tooling_is_not_inside_the_package() -> None:
    assert not (REPO / "pipeline" / "local").exists()
    assert (REPO / "devstack" / "__init__.py").is_file()


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_each_console_script_is_a_click_command_of_the_package_that_jobs_wraps(script: str) -> None:
    target = SCRIPTS[script]
    module_name, _, attr = target.partition(":")
    assert module_name.startswith("pipeline.commands."), target
    command = getattr(importlib.import_module(module_name), attr)
    assert isinstance(command, click.Command)
    # jobs/<name>.py re-exports the same object, so `python jobs/replay.py` and `log-replay` are one CLI.
    name = module_name.rsplit(".", 1)[1]
    assert script == f"log-{name}"
    assert importlib.import_module(f"jobs.{name}").main is command


def test_the_four_console_scripts() -> None:
    assert set(SCRIPTS) == {"log-replay", "log-consumer", "log-tenants", "log-inventory"}


def test_the_demo_runs_the_replay_through_the_installed_console_script() -> None:
    from devstack.demo import replay_command

    assert Path(replay_command()).name == "log-replay"
