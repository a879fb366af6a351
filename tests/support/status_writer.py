"""A status writer in a process of its own (tests/integration/test_status.py): many writes of one item,
started together with another such process by a barrier, so their ADDs and max sets meet on the table."""

from __future__ import annotations

from typing import Any

from pipeline.status import Figures, Observation, StatusRecorder, StatusTable


def write_many(table: str, key: tuple[str, str], writes: int, first_key_time: float, barrier: Any, done: Any) -> None:
    recorder = StatusRecorder(StatusTable(table))
    barrier.wait(timeout=60)
    for i in range(writes):
        now = recorder.coalescer._clock()
        o = Observation(now, Figures(objects=1, events=i, bytes=100), key_time=first_key_time + i, delivered=True)
        recorder.coalescer.add(key, o)
        recorder.flush(force=True)
    done.put(recorder.table.writes)
