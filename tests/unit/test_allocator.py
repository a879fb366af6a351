"""The allocator tuning every delivering process applies (pipeline.allocator)."""

from __future__ import annotations

import ctypes.util
import subprocess
import sys

import pytest

from pipeline import allocator


def test_tune_is_idempotent() -> None:
    assert allocator.tune() == allocator.tune()


@pytest.mark.skipif(not ctypes.util.find_library("c") or sys.platform != "linux", reason="glibc only")
def test_freed_megabyte_buffers_stay_in_the_process() -> None:
    # Untuned, glibc maps and unmaps big buffers and trims its heaps, so buffers are page-faulted in again
    # (2,048 faults per 8 MiB); tuned, later buffers reuse the first one's pages.
    script = """
import resource, sys
from pipeline import allocator
if sys.argv[1] == "tuned":
    assert allocator.tune()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
bytearray(8 << 20)
before = faults()
for _ in range(20):
    bytearray(8 << 20)
print(faults() - before)
"""
    counts = {
        mode: int(
            subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True).stdout
        )
        for mode in ("default", "tuned")
    }
    assert counts["tuned"] * 10 < counts["default"], counts
