"""Render the figures in docs/img/ from the demo data set: `.venv/bin/python notebooks/render_docs.py`.

The same steps as `make demo` (local AWS, the demo's generated data set, a real replay of one tenant on a
local Ray, which fills the ledger and writes a report), then an inventory of every tenant with a 20 %
decoded sample, then both notebooks with FIGURES_DIR pointing at docs/img/. Executed notebooks are not
kept: the committed ones stay without outputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from devstack.demo import demo_dataset  # noqa: E402
from devstack.generator import write_dataset  # noqa: E402
from devstack.provision import provision  # noqa: E402
from devstack.server import MotoServer  # noqa: E402

FIGURES = REPO / "docs" / "img"


def run(cmd: list[str], env: dict[str, str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, env=env, check=cmd[1].endswith("inventory.py"))  # replay exits 1: damaged on purpose


def execute(name: str, env: dict[str, str], cwd: Path) -> None:
    os.environ.update(env)
    nb = nbformat.read(REPO / "notebooks" / name, as_version=4)
    NotebookClient(nb, kernel_name="python3", timeout=300, resources={"metadata": {"path": str(cwd)}}).execute()
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text = out.get("text", "")
            if "_RESULTS " in text:
                print(text.strip())


def main() -> None:
    os.environ["MPLBACKEND"] = "Agg"
    with MotoServer() as server, tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        env = provision(server.endpoint_url)
        aws_env = {**os.environ, **env.env}
        now = datetime.now(UTC).replace(microsecond=0)
        cfg = demo_dataset(env, now)
        write_dataset(cfg, env.names.bucket, s3=env.client("s3"))
        py = sys.executable
        report = work / "demo-report.json"
        replay = [py, str(REPO / "jobs/replay.py"), "--tenant", "acme", "--since", "7h", "--no-progress"]
        run([*replay, "--log-level", "WARNING", "--report", str(report)], aws_env)
        inventory = work / "inventory"
        tenants = [a for t in env.tenants for a in ("--tenant", t.tenant_id)]
        build = [py, str(REPO / "jobs/inventory.py"), *tenants, "--since", "7h", "--sample-fraction", "0.2"]
        run([*build, "--output", str(inventory)], aws_env)
        FIGURES.mkdir(parents=True, exist_ok=True)
        execute(
            "volume_analysis.ipynb", {**env.env, "INVENTORY_PATH": str(inventory), "FIGURES_DIR": str(FIGURES)}, work
        )
        execute("replay_report.ipynb", {"REPORT_PATHS": str(report), "FIGURES_DIR": str(FIGURES)}, work)


if __name__ == "__main__":
    main()
