"""What every benchmark records about the machine it ran on, so results from different runs can be told apart."""

from __future__ import annotations

import os
import platform
from importlib.metadata import version
from pathlib import Path
from typing import Any


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
