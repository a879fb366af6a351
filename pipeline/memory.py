"""A memory budget for decoded objects, shared by a replay worker's pod threads or a consumer's workers.

A decoded object lives in memory as Python strings until its last batch is sent, with its batches'
request bodies on top: about twelve times its stored (gzip) size, more than its uncompressed size
(docs/PERFORMANCE.md, memory). Eight pod threads on the collector's largest objects (64 MiB uncompressed)
took a worker to 630 MiB. Each thread asks the budget for its next object's
estimated footprint first and waits while the budget is spent, so peak memory follows the budget rather
than object size times threads.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

DECODED_BYTES_PER_STORED_BYTE = 12  # gzip NDJSON, rounded up (docs/PERFORMANCE.md, memory)
DEFAULT_BUDGET_MIB = 128  # throttles only objects over about 2 MiB gzip; typical ones are far smaller
# The consumer's pool delivers one object per worker. Its pod's limit is 1 GiB and the process itself takes
# about 300 MiB; eight workers on the collector's largest objects (64 MiB uncompressed, about 70 MiB decoded
# each) would take 560 MiB more. 256 MiB keeps the pod near 600 MiB whatever arrives.
DEFAULT_CONSUMER_BUDGET_MIB = 256


def decoded_footprint(stored_bytes: int, decoded: bool = True) -> int:
    """Estimated memory one object takes while it is delivered: decoded, or only held as its bytes (S3)."""
    return max(stored_bytes, 0) * (DECODED_BYTES_PER_STORED_BYTE if decoded else 1)


class MemoryBudget:
    """Bytes the holders may use at once. An object larger than the whole budget is let through alone,
    never refused: it waits until nothing else is held."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes <= 0:
            raise ValueError("a memory budget must be positive")
        self.capacity = capacity_bytes
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        with self._cond:
            return self._used

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        n = min(max(nbytes, 0), self.capacity)
        with self._cond:
            self._cond.wait_for(lambda: self._used + n <= self.capacity)
            self._used += n
        try:
            yield
        finally:
            with self._cond:
                self._used -= n
                self._cond.notify_all()
