"""The consumer's group commit (`pipeline.consumer.commit`): objects that finish while a ledger write is in
flight are written together after it; a write that does not end within the patience is not waited for;
a failed write leaves no delivery counting as done. Decided by events: the fake write blocks until told."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from types import SimpleNamespace

import pytest

from pipeline.consumer.commit import GroupCommit, LedgerView
from pipeline.consumer.metrics import Metrics
from pipeline.consumer.processor import DeferredRecords, MessageOutcome, MessageProcessor, Receive, _Work
from pipeline.consumer.sqs import SqsConsumer, SqsOptions
from pipeline.coverage import WHOLE
from pipeline.delivery.results import DeliveryResult, ObjectResult
from pipeline.ledger import NOTHING, ObjectLedger
from pipeline.tenants import DeliveryType


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


# -- records deferred across messages (pipeline.consumer.processor.DeferredRecords) ---------------------------


def delivered_to(key: str, *types: str) -> ObjectResult:
    """An object delivered to one delivery of each type, every record left for the commit; no tenant (so the
    processor's tenant metrics look nothing up)."""
    return ObjectResult(key, deliveries=[DeliveryResult(t, t, batched=True) for t in types])


def processor(writes: Writes, patience_s: float = 60, limit: int = 100) -> MessageProcessor:
    """A MessageProcessor whose Deliverer only commits (through `writes`) and knows which sinks are idempotent."""
    sink = lambda idempotent: SimpleNamespace(traits=SimpleNamespace(idempotent=idempotent))  # noqa: E731
    deliverer = SimpleNamespace(
        commit=lambda *results: writes(results),
        sinks={DeliveryType.S3: sink(True), DeliveryType.CLOUDWATCH: sink(False)},
    )
    proc = MessageProcessor(deliverer, bucket="central")  # type: ignore[arg-type]
    proc.deferred = DeferredRecords(proc, patience_s=patience_s, limit=limit)
    return proc


def work(result: ObjectResult) -> _Work:
    return _Work(
        MessageOutcome(f"m-{result.key}"),
        {"message_id": f"m-{result.key}", "receive_count": 1},
        [("", [], result, 0.0)],
    )


class Concluded:
    """The `then` of each message: the outcomes, in the order they were concluded."""

    def __init__(self) -> None:
        self.outcomes: list[MessageOutcome] = []
        self.all_in = threading.Event()
        self.expect = 0

    def __call__(self, outcome: MessageOutcome) -> None:
        self.outcomes.append(outcome)
        if len(self.outcomes) >= self.expect:
            self.all_in.set()


def test_idempotent_records_wait_for_a_full_group_and_no_message_is_concluded_before_the_write() -> None:
    writes = Writes()
    writes.gates["c"] = threading.Event()
    proc = processor(writes, limit=3)
    concluded = Concluded()
    for key in ("a", "b"):
        proc.deferred.add(work(delivered_to(key, "s3")), concluded)
    assert writes.groups == [] and concluded.outcomes == [] and proc.deferred.waiting == 2
    third = threading.Thread(target=proc.deferred.add, args=(work(delivered_to("c", "s3")), concluded), daemon=True)
    third.start()  # the third fills the group: its worker writes all three
    assert writes.entered.acquire(timeout=30)
    assert concluded.outcomes == []  # the write is in flight: no message may be deleted yet
    writes.gates["c"].set()
    third.join(30)
    assert writes.groups == [["a", "b", "c"]]
    assert [o.message_id for o in concluded.outcomes] == ["m-a", "m-b", "m-c"]
    assert all(o.acknowledged and o.outcome == "delivered" for o in concluded.outcomes)


def test_a_message_alone_is_written_by_the_timer_after_the_patience() -> None:
    writes = Writes()
    proc = processor(writes, patience_s=0.05)
    concluded = Concluded()
    concluded.expect = 1
    result = delivered_to("a", "s3")
    proc.deferred.add(work(result), concluded)
    assert concluded.all_in.wait(30)  # no other message came: the timer wrote it
    assert writes.groups == [["a"]] and result.deliveries[0].recorded and concluded.outcomes[0].acknowledged


def test_a_failed_group_write_leaves_every_message_of_the_group_for_redelivery() -> None:
    writes = Writes()
    writes.fail = {"b"}
    proc = processor(writes, limit=3)
    concluded = Concluded()
    for key in ("a", "b", "c"):
        proc.deferred.add(work(delivered_to(key, "s3")), concluded)
    assert writes.groups == [["a", "b", "c"]]
    assert len(concluded.outcomes) == 3
    assert not any(o.acknowledged for o in concluded.outcomes)  # none deleted: each comes back


def test_only_messages_whose_unwritten_records_are_all_idempotent_wait() -> None:
    proc = processor(Writes())
    assert proc._deferrable(work(delivered_to("a", "s3")))
    # A CloudWatch record waits for nobody: a kill between its put and its record resends events.
    assert not proc._deferrable(work(delivered_to("b", "cloudwatch")))
    assert not proc._deferrable(work(delivered_to("c", "s3", "cloudwatch")))
    nothing = work(ObjectResult("d", deliveries=[DeliveryResult("s3", "s3").skip("in the ledger")]))
    assert not proc._deferrable(nothing)  # nothing to write: concluded at once
    crashed = work(delivered_to("e", "s3"))
    crashed.outcome.error = "RuntimeError: boom"
    assert not proc._deferrable(crashed)


def test_a_receive_writes_a_cloudwatch_message_at_once_and_defers_an_s3_one() -> None:
    writes = Writes()
    proc = processor(writes)
    results = {"cw": delivered_to("cw", "cloudwatch"), "s3": delivered_to("s3", "s3")}
    proc._deliver_message = lambda body, message_id, count, view, parsed=None: work(results[str(body)])  # type: ignore[method-assign]
    concluded = Concluded()
    receive = Receive(proc, None)
    receive.process("cw", "m-cw", 1, concluded)
    assert writes.groups == [["cw"]] and [o.message_id for o in concluded.outcomes] == ["m-cw"]
    receive.process("s3", "m-s3", 1, concluded)
    assert writes.groups == [["cw"]] and proc.deferred.waiting == 1  # waits for others, undeleted
    proc.deferred.flush()
    assert writes.groups == [["cw"], ["s3"]] and concluded.outcomes[-1].acknowledged


class FinishingProcessor:
    """The processor as the poll loop sees it: `finishing` workers, each of which frees its slot when looked at
    (a worker whose record is written frees its slot within milliseconds)."""

    def __init__(self, finishing: int) -> None:
        self.metrics = Metrics()
        self.left = finishing
        self.slots: threading.Semaphore | None = None
        self.asked = 0

    @property
    def finishing(self) -> int:
        self.asked += 1
        if self.left and self.slots is not None:
            self.left -= 1
            self.slots.release()
            return self.left + 1
        return self.left


def busy_consumer(proc: FinishingProcessor, workers: int) -> SqsConsumer:
    """A consumer all of whose workers are busy, then one frees up."""
    options = SqsOptions(queue_url="q", workers=workers, wait_time_s=0, visibility_timeout_s=30)
    c = SqsConsumer(proc, SimpleNamespace(), options)  # type: ignore[arg-type]
    for _ in range(workers):
        assert c._slots.acquire(blocking=False)
    proc.slots = c._slots
    c._slots.release()
    return c


def test_the_poll_loop_receives_for_the_workers_finishing_with_the_one_that_is_free() -> None:
    # Two more workers are finishing (their records written together): one receive, one ledger read, for three.
    proc = FinishingProcessor(2)
    assert busy_consumer(proc, 4)._take_slots() == 3
    assert proc.left == 0


def test_the_poll_loop_waits_for_nobody_when_no_worker_is_finishing() -> None:
    proc = FinishingProcessor(0)
    assert busy_consumer(proc, 4)._take_slots() == 1
    assert proc.asked == 1  # the busy workers are delivering, not finishing: not waited for
