"""The replay worker's memory budget for decoded objects (pipeline.memory)."""

from __future__ import annotations

import threading

import pytest

from pipeline.memory import DECODED_BYTES_PER_STORED_BYTE, MemoryBudget, decoded_footprint

WAIT = 5.0  # generous: only reached when something is wrong


def hold_in_thread(budget: MemoryBudget, nbytes: int) -> tuple[threading.Thread, threading.Event, threading.Event]:
    """A thread that holds `nbytes` until told to let go; `inside` is set once it holds them."""
    inside, leave = threading.Event(), threading.Event()

    def run() -> None:
        with budget.hold(nbytes):
            inside.set()
            leave.wait(WAIT)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, inside, leave


def test_holders_wait_while_the_budget_is_spent() -> None:
    budget = MemoryBudget(100)
    t1, in1, out1 = hold_in_thread(budget, 60)
    assert in1.wait(WAIT)
    t2, in2, out2 = hold_in_thread(budget, 60)
    assert not in2.wait(0.2)  # 60 + 60 > 100: the second waits
    assert budget.used == 60
    out1.set()
    assert in2.wait(WAIT)  # room again once the first lets go
    assert budget.used == 60
    out2.set()
    for t in (t1, t2):
        t.join(WAIT)
    assert budget.used == 0


def test_small_holders_share_the_budget() -> None:
    budget = MemoryBudget(100)
    threads = [hold_in_thread(budget, 30) for _ in range(3)]
    assert all(inside.wait(WAIT) for _, inside, _ in threads)
    assert budget.used == 90
    for t, _, leave in threads:
        leave.set()
        t.join(WAIT)
    assert budget.used == 0


def test_an_object_over_the_whole_budget_runs_alone_rather_than_never() -> None:
    budget = MemoryBudget(100)
    t1, in1, out1 = hold_in_thread(budget, 10)
    assert in1.wait(WAIT)
    t2, in2, out2 = hold_in_thread(budget, 10_000)
    assert not in2.wait(0.2)  # waits for everything else to finish
    out1.set()
    assert in2.wait(WAIT)
    assert budget.used == 100
    t3, in3, out3 = hold_in_thread(budget, 1)
    assert not in3.wait(0.2)  # and nothing else runs beside it
    out2.set()
    assert in3.wait(WAIT)
    out3.set()
    for t in (t1, t2, t3):
        t.join(WAIT)


def test_an_error_gives_the_bytes_back() -> None:
    budget = MemoryBudget(100)
    with pytest.raises(RuntimeError), budget.hold(80):
        raise RuntimeError("delivery blew up")
    assert budget.used == 0
    with budget.hold(100):
        assert budget.used == 100


def test_footprint_estimate_and_bad_capacity() -> None:
    assert decoded_footprint(1_000_000) == 1_000_000 * DECODED_BYTES_PER_STORED_BYTE
    assert decoded_footprint(-5) == 0
    with pytest.raises(ValueError, match="positive"):
        MemoryBudget(0)


def test_an_object_that_is_not_decoded_costs_only_its_bytes() -> None:
    assert decoded_footprint(1_000_000, decoded=False) == 1_000_000
    assert decoded_footprint(1_000_000, decoded=True) == decoded_footprint(1_000_000)
