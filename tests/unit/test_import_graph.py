"""The folders show the flow, and the arrows point one way (issue #28): the consumer does not import the replay
(its image stays light), no library module imports the command-line layer, the pure delivery types load
without the engine, and the package's module-level imports have no cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_package_boundary import imported_modules

REPO = Path(__file__).resolve().parents[2]
PIPELINE = REPO / "pipeline"
CLICK_LAYER = ("click", "pipeline.cli", "pipeline.commands")


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


MODULES = sorted(PIPELINE.rglob("*.py"))
LIBRARY = [p for p in MODULES if not under(module_name(p), ("pipeline.cli", "pipeline.commands"))]


@pytest.mark.parametrize("path", sorted((PIPELINE / "consumer").rglob("*.py")), ids=lambda p: p.name)
def test_the_consumer_imports_nothing_of_the_replay(path: Path) -> None:
    assert not {m for m in imported_modules(path) if under(m, ("pipeline.replay", "ray"))}


def test_the_consumer_command_imports_nothing_of_the_replay() -> None:
    path = PIPELINE / "commands" / "consumer.py"
    assert not {m for m in imported_modules(path) if under(m, ("pipeline.replay", "ray"))}


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PIPELINE)))
def test_no_library_module_imports_the_command_line_layer(path: Path) -> None:
    assert not {m for m in imported_modules(path) if under(m, CLICK_LAYER)}


def test_the_delivery_types_and_routing_load_without_the_engine_or_any_sink() -> None:
    # The sinks' declared traits (`pipeline.sinks.base`) are plain values routing needs; no sink is loaded.
    probe = (
        "import sys\n"
        "import pipeline.delivery.routing, pipeline.delivery.results\n"
        "loaded = [m for m in sys.modules if m.startswith(('pipeline.delivery.engine', 'pipeline.sinks.'))]\n"
        "print(sorted(set(loaded) - {'pipeline.sinks.base'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def module_level_imports(path: Path) -> set[str]:
    """The pipeline modules a module imports when it is loaded (not inside functions or TYPE_CHECKING)."""
    found: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and under(node.module, ("pipeline",)):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from pipeline import aws`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if under(a.name, ("pipeline",)))
    return found


def test_the_package_has_no_import_cycle() -> None:
    names = {module_name(p): p for p in MODULES}
    graph = {m: {d for d in module_level_imports(p) if d in names and d != m} for m, p in names.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                pytest.fail("import cycle: " + " → ".join([*stack[stack.index(d) :], d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
