"""What every benchmark records about the machine it ran on, and how it writes its result file."""

from __future__ import annotations

import os
import platform
from importlib.metadata import version
from pathlib import Path
from typing import Any

import orjson


def machine(*packages: str, **extra: str) -> dict[str, Any]:
    """Python, platform, CPU model and count, load average now, the versions of `packages`, and `extra`."""
    cpu = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        lines = cpuinfo.read_text().splitlines()
        cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        **{name: version(name) for name in packages},
        **extra,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write a benchmark's result as indented JSON under bench/results/, and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"written {path} in {result['wall_s']}s", flush=True)
