"""The consumer's group commit (`pipeline.consumer.commit`): objects that finish while a ledger write is in
flight are written together after it; a write that does not end within the patience is not waited for;
a failed write leaves no delivery counting as done. Decided by events: the fake write blocks until told."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from pipeline.consumer.commit import GroupCommit, LedgerView
from pipeline.coverage import WHOLE
from pipeline.delivery import DeliveryResult, ObjectResult
from pipeline.ledger import NOTHING, ObjectLedger


def finished(key: str) -> ObjectResult:
    """An object delivered to one delivery whose record is left for the commit."""
    r = DeliveryResult("cloudwatch", "cloudwatch", batched=True)
    return ObjectResult(key, tenant="acme", deliveries=[r])


class Writes:
    """The write the group commit calls: records each group, and blocks the ones told to."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.entered = threading.Semaphore(0)
        self.gates: dict[str, threading.Event] = {}
        self.fail: set[str] = set()

    def __call__(self, results: Sequence[ObjectResult]) -> None:
        keys = [r.key for r in results]
        self.groups.append(keys)
        self.entered.release()
        for k in keys:
            if k in self.gates:
                assert self.gates[k].wait(30)
        if self.fail & set(keys):
            raise RuntimeError("ledger gone")
        for res in results:
            for d in res.deliveries:
                d.recorded = True


def run(commits: GroupCommit, key: str) -> tuple[threading.Thread, ObjectResult]:
    res = finished(key)
    t = threading.Thread(target=commits.commit, args=([res],), daemon=True)
    t.start()
    return t, res


def wait_waiting(commits: GroupCommit, n: int) -> None:
    with commits._cond:
        assert commits._cond.wait_for(lambda: len(commits._waiting) == n, 30)


def test_objects_finishing_during_a_write_are_written_together_after_it() -> None:
    writes = Writes()
    writes.gates["a"] = threading.Event()
    commits = GroupCommit(writes, patience_s=60)
    first, _ = run(commits, "a")
    assert writes.entered.acquire(timeout=30)
    others = [run(commits, k)[0] for k in ("b", "c", "d")]
    wait_waiting(commits, 3)
    writes.gates["a"].set()
    for t in [first, *others]:
        t.join(30)
    assert writes.groups[0] == ["a"]
    assert sorted(writes.groups[1]) == ["b", "c", "d"] and len(writes.groups) == 2


def test_a_write_that_does_not_end_is_not_waited_for_past_the_patience() -> None:
    writes = Writes()
    writes.gates["a"] = threading.Event()
    commits = GroupCommit(writes, patience_s=0.05)
    first, _ = run(commits, "a")
    assert writes.entered.acquire(timeout=30)
    second, res = run(commits, "b")
    second.join(30)
    assert not second.is_alive() and res.deliveries[0].recorded  # written alone, while "a" is still held
    assert writes.groups == [["a"], ["b"]]
    writes.gates["a"].set()
    first.join(30)


def test_a_failed_write_fails_every_delivery_it_held_recoverably() -> None:
    writes = Writes()
    writes.fail = {"a"}
    commits = GroupCommit(writes)
    res = finished("a")
    with pytest.raises(RuntimeError):
        commits.commit([res])
    (d,) = res.deliveries
    assert d.status == "failed" and d.recoverable and not res.acknowledged


def test_nothing_to_record_is_not_held_behind_a_write() -> None:
    writes = Writes()
    writes.gates["a"] = threading.Event()
    commits = GroupCommit(writes, patience_s=60)
    first, _ = run(commits, "a")
    assert writes.entered.acquire(timeout=30)
    skipped = ObjectResult("b", tenant="acme", deliveries=[DeliveryResult("cloudwatch", "cloudwatch").skip("x")])
    commits.commit([skipped])  # returns at once: settles, writes nothing
    writes.gates["a"].set()
    first.join(30)


def test_a_view_forgets_the_keys_recorded_after_its_read() -> None:
    writes = Writes()
    commits = GroupCommit(writes)
    held = ObjectLedger({"cloudwatch": ("e", WHOLE)})
    view = commits.watch(LedgerView({"b": held}, ["a", "b"]))
    assert view.get("a") is NOTHING and view.get("b") is held and view.get("c") is None
    commits.commit([finished("a")])
    assert view.get("a") is None  # recorded since the read: the message that meets it reads again
    assert view.get("b") is held
