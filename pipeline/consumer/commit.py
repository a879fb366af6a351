"""The consumer's ledger reads and writes, shared by its workers: one read per received batch of messages,
and the records of objects that finish at the same time written together (CONTRACTS.md §10).

- `LedgerView`: what the ledger held for the objects of one receive, read at once (BatchGetItem, 100 keys a
  call) before its messages are handed to workers. Objects whose deliveries with work are all idempotent
  (S3) are not asked about: a resend overwrites the same key (`Routing.read_idempotent`). A key this
  process records after the read is struck from every live view, so a message that reaches it later (a
  duplicate notification, received in the same batch) reads it again rather than trust a stale answer.
- `GroupCommit`: workers hand in their finished objects; one of them writes every record handed in so far
  (`Deliverer.commit`: TransactWriteItems of up to 100 objects) while the others wait, and whatever arrives
  during that write goes in the next. No timer: an idle consumer writes at once, a busy one writes fewer,
  larger groups. A worker waits for at most the write in progress and its own; its messages stay in flight
  meanwhile (the heartbeat extends them), and a message is deleted only after its records are written.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence

from pipeline.delivery import ObjectResult
from pipeline.ledger import NOTHING, ObjectLedger


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
    __slots__ = ("done", "results")

    def __init__(self, results: list[ObjectResult]) -> None:
        self.results = results
        self.done = False


class GroupCommit:
    """Writes the records of the objects workers hand in, together (see the module's docstring)."""

    def __init__(self, write: Callable[[Sequence[ObjectResult]], None]) -> None:
        self._write = write
        self._cond = threading.Condition()
        self._waiting: list[_Ticket] = []
        self._busy = False
        self._views: weakref.WeakSet[LedgerView] = weakref.WeakSet()
        self.writes = 0  # group writes made, for tests and metrics

    def watch(self, view: LedgerView) -> LedgerView:
        """Strike from this view every key recorded from now on, for as long as it lives."""
        with self._cond:
            self._views.add(view)
        return view

    def commit(self, results: list[ObjectResult]) -> None:
        """Return once every record of these objects is written (or failed, each delivery saying why)."""
        if not any(r.batched and not r.recorded and r.done for res in results for r in res.deliveries):
            self._write(results)  # nothing to write: settle them without waiting for anyone
            return
        ticket = _Ticket(results)
        with self._cond:
            self._waiting.append(ticket)
            while self._busy and not ticket.done:
                self._cond.wait()
            if ticket.done:
                return
            self._busy = True
            group, self._waiting = self._waiting, []
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
                self._busy = False
                self.writes += 1
                self._cond.notify_all()
