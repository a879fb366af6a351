"""The consumer's ledger reads and writes, shared by its workers: one read per received batch of messages,
and the records of objects that finish at the same time written together (CONTRACTS.md §10).

- `LedgerView`: what the ledger held for the objects of one receive, read at once (BatchGetItem, 100 keys a
  call) before its messages are handed to workers. Objects whose deliveries with work are all idempotent
  (S3) are not asked about: a resend overwrites the same key (`Routing.read_idempotent`). A key this
  process records after the read is struck from every live view, so a message that reaches it later (a
  duplicate notification, received in the same batch) reads it again rather than trust a stale answer.
- `GroupCommit`: workers hand in their finished objects. With no ledger write in flight, they are written at
  once; objects that finish while one is in flight wait for it, and are then written together, in one group
  (`Deliverer.commit`: TransactWriteItems of up to 100 objects). An idle consumer writes at once, a busy
  one writes fewer, larger groups. A worker waits for the write in progress only up to `GROUP_PATIENCE_S`,
  then writes alone; its messages stay in flight meanwhile (the heartbeat extends them), and a message is
  deleted only after its records are written.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence

from pipeline.delivery.results import ObjectResult
from pipeline.ledger import NOTHING, ObjectLedger

# How long finished objects wait for a ledger write in flight, to be written together after it. A write takes
# milliseconds; waiting longer than this means the ledger is slow, and then each goes alone. Far below any
# heartbeat interval, and the messages stay in flight (extended by the heartbeat) while they wait.
GROUP_PATIENCE_S = 0.25


class LedgerView:
    """The ledger's answer for the objects of one receive; `get` is None for a key it cannot answer for."""

    def __init__(self, records: Mapping[str, ObjectLedger], asked: Iterable[str]) -> None:
        self._records = dict(records)
        self._asked = set(asked)
        self._lock = threading.Lock()

    def get(self, key: str) -> ObjectLedger | None:
        with self._lock:
            return self._records.get(key, NOTHING) if key in self._asked else None

    def forget(self, keys: Iterable[str]) -> None:
        """These keys were recorded since the read: the answer for them is stale."""
        with self._lock:
            self._asked.difference_update(keys)


class _Ticket:
    __slots__ = ("done", "results", "taken")

    def __init__(self, results: list[ObjectResult]) -> None:
        self.results = results
        self.taken = False  # in a write (its own or a group's)
        self.done = False  # that write is over


class GroupCommit:
    """Writes the records of the objects workers hand in, together (see the module's docstring)."""

    def __init__(self, write: Callable[[Sequence[ObjectResult]], None], patience_s: float = GROUP_PATIENCE_S) -> None:
        self._write = write
        self._patience_s = patience_s
        self._cond = threading.Condition()
        self._waiting: list[_Ticket] = []
        self._writing = 0  # writes in flight
        self._finished = 0  # writes over, ever: a waiter leads once one more is over than when it came
        self._views: weakref.WeakSet[LedgerView] = weakref.WeakSet()
        self.writes = 0  # group writes made, for tests and metrics

    def watch(self, view: LedgerView) -> LedgerView:
        """Strike from this view every key recorded from now on, for as long as it lives."""
        with self._cond:
            self._views.add(view)
        return view

    def commit(self, results: list[ObjectResult]) -> None:
        """Return once every record of these objects is written (or failed, each delivery saying why).

        With no write in flight, the records go at once. Otherwise they wait for it: when it is over, the
        first waiter to wake writes every waiting object's records in one group. A write that is not over
        within the patience (a slow or throttled ledger) is not waited for any longer: the records go on
        their own, alone, so one stuck write never holds the others' messages."""
        if not any(r.batched and not r.recorded and r.done for res in results for r in res.deliveries):
            self._write(results)  # nothing to write: settle them without waiting for anyone
            return
        ticket = _Ticket(results)
        deadline = time.monotonic() + self._patience_s
        with self._cond:
            group = [ticket]
            if self._writing:
                seen = self._finished
                self._waiting.append(ticket)
                while not ticket.taken and self._finished == seen and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                if ticket.taken:  # in another waiter's group
                    while not ticket.done:
                        self._cond.wait()
                    return
                self._waiting.remove(ticket)
                if self._finished != seen:  # the write it waited for is over: lead every waiter
                    group, self._waiting = [ticket, *self._waiting], []
            for t in group:
                t.taken = True
            self._writing += 1
        objects = [res for t in group for res in t.results]
        try:
            self._write(objects)
        except BaseException as exc:
            # Whatever went wrong, no delivery whose record is not written may count as done: its message
            # must come back, never be deleted.
            for res in objects:
                for r in res.deliveries:
                    if r.batched and r.done and not r.recorded:
                        r.fail(f"delivered, but the ledger write failed ({type(exc).__name__})", recoverable=True)
                res.settle()
            raise
        finally:
            with self._cond:
                for view in list(self._views):
                    view.forget(res.key for res in objects)
                for t in group:
                    t.done = True
                self._writing -= 1
                self._finished += 1
                self.writes += 1
                self._cond.notify_all()
