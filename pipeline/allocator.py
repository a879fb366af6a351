"""Keep glibc from handing megabyte buffers back to the kernel after every object.

Delivering an object allocates a few short-lived buffers of a megabyte or more: the compressed body, the
inflated chunks, the PutLogEvents request. glibc serves blocks over its mmap threshold (128 KiB at
first) with a fresh mmap and returns freed memory at the top of a heap to the kernel once it passes the
trim threshold; the next object then page-faults all of it back in, zero-filled. In a Ray worker that
cost a third of the null-sink throughput (docs/PERFORMANCE.md). Fixed thresholds keep those buffers in
the process for reuse: minor page faults per object fell from about 130 to 3 with 8 pod threads. The
trim threshold is kept low so peak memory barely moves: 443 against 417 MiB after 32 of the collector's
largest objects (the memory benchmark's large-object set, one object at a time).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

# mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD_BYTES = 16 * 1024 * 1024  # glibc caps it at 32 MiB on 64-bit
TRIM_THRESHOLD_BYTES = 32 * 1024 * 1024

_lock = threading.Lock()
_tuned: bool | None = None


def tune() -> bool:
    """Set the thresholds once per process. False where the C library is not glibc (nothing to do)."""
    global _tuned
    with _lock:
        if _tuned is None:
            _tuned = all(
                _mallopt(param, value)
                for param, value in (
                    (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
                    (_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES),
                )
            )
        return _tuned


def _mallopt(param: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(param, value) == 1)
