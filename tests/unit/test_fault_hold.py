"""The fault proxy's `Hold`: requests wait until the test lets them go, counted by events, never by time."""

from __future__ import annotations

import threading

import pytest

from devstack.faults import FaultProxy, Hold, Rule


def held_threads(hold: Hold, n: int) -> tuple[list[threading.Thread], list[int]]:
    """n threads blocked in the hold as the proxy's request threads would be; each appends its index once let go."""
    gone: list[int] = []
    threads = [threading.Thread(target=lambda i=i: (hold.block(), gone.append(i)), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads, gone


def test_release_lets_exactly_that_many_go_and_open_lets_the_rest_go() -> None:
    hold = Hold()
    threads, gone = held_threads(hold, 3)
    hold.wait_held(3, timeout=10)
    hold.release(2)
    with hold._cond:  # two leave; the third stays until opened
        assert hold._cond.wait_for(lambda: hold.let_go >= 2, 10)
    assert hold.held == 1 and hold.let_go == 2
    hold.open()
    for t in threads:
        t.join(10)
    assert sorted(gone) == [0, 1, 2] and hold.held == 0 and hold.let_go == 3


def test_a_release_before_the_request_arrives_lets_it_through() -> None:
    hold = Hold()
    hold.release(1)
    hold.block()  # returns at once
    assert hold.let_go == 1


def test_wait_held_fails_saying_how_many_were_held() -> None:
    hold = Hold()
    with pytest.raises(AssertionError, match="0 held"):
        hold.wait_held(1, timeout=0.05)


def test_removing_the_rule_opens_its_hold() -> None:
    proxy = FaultProxy("http://127.0.0.1:1")
    hold = Hold()
    proxy.add(Rule(hold, service="logs"))
    threads, _ = held_threads(hold, 2)
    hold.wait_held(2, timeout=10)
    proxy.clear()
    for t in threads:
        t.join(10)
    assert hold.held == 0
