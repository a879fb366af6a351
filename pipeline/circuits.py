"""Per-destination circuits: one tenant's failing destination stops costing the consumer's workers.

A destination is one delivery of one tenant, keyed `(tenant_id, delivery_id)`: a tenant's CloudWatch
delivery and its S3 archive back off apart, and so do two tenants that share nothing but the consumer.

    closed ──(throttled, or a recoverable failure at the destination)──► open ──(open time passed)──►
    half-open: exactly one probe (one message) is let through ──success──► closed
                                                               └─failure──► open, for twice as long

The open time starts at `base_s` (5 s) and doubles with each failed probe up to `cap_s` (5 min): short
enough that a destination that recovers is found within seconds of a brief throttle, capped so that one
that stays down is still probed every few minutes (a probe costs one message's delivery, nothing more).
A success resets it. Only the destination's own answers move a circuit: a ledger write that failed, an
object that could not be read, a delivery that was held back or skipped say nothing about it.

Pure and thread-safe: every method takes the lock, nothing sleeps, and the clock is injected, so the
state machine is tested without waiting. The consumer asks `allow()` before delivering an object, holds
back the destinations that answer False, and reports each delivery's outcome with `report()`;
`retry_after()` says when a held message is worth receiving again (`release_delay`).
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from pipeline.classify import is_throttling

__all__ = [
    "CircuitBreakers",
    "CircuitState",
    "Key",
    "Verdict",
    "release_delay",
    "spread",
    "verdict_of",
]

Key = tuple[str, str]  # (tenant_id, delivery_id)

DEFAULT_BASE_S = 5.0
DEFAULT_CAP_S = 300.0
# A held message comes back no sooner than this grown floor (see release_delay); SQS caps visibility at 12 h.
DEFAULT_HOLD_BASE_S = 30.0
HOLD_GROWTH = 4
SQS_MAX_VISIBILITY_S = 12 * 3600
# SQS counts a message's 12 h of visibility from its receive, not from the change: a held message's delay
# leaves room for the time since (a Lambda invocation, an object in a worker under the heartbeat).
MAX_HOLD_S = SQS_MAX_VISIBILITY_S - 900


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"  # the open time has passed: the next allow() is the probe


class Verdict(StrEnum):
    """What one delivery's result says about its destination."""

    SUCCESS = "success"
    THROTTLED = "throttled"
    FAILURE = "failure"  # recoverable, at the destination (access denied, 5xx past the retries, …)
    NONE = "none"  # nothing about the destination: skipped, held, non-recoverable, ledger or source failures


@dataclass
class _Circuit:
    state: CircuitState = CircuitState.CLOSED
    opened_at: float = 0.0
    open_s: float = 0.0  # how long this opening lasts
    failures: int = 0  # consecutive openings without a success: the exponent of the open time
    probing: bool = False  # half-open and its one probe is out
    reason: str = ""  # the failure that opened it, for the held deliveries' reason and the logs
    code: str = ""  # its error code: a held delivery carries it, so its metrics say throttled
    throttled: bool = False


class CircuitBreakers:
    """The circuits of every destination this process delivers to. Thread-safe; the clock is injected."""

    def __init__(
        self,
        base_s: float = DEFAULT_BASE_S,
        cap_s: float = DEFAULT_CAP_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError("a circuit needs 0 < base_s <= cap_s")
        self.base_s = base_s
        self.cap_s = cap_s
        self._clock = clock
        self._lock = threading.Lock()
        self._circuits: dict[Key, _Circuit] = {}

    def _open_time(self, failures: int) -> float:
        return min(self.cap_s, self.base_s * 2.0 ** min(failures - 1, 62))

    def state(self, key: Key) -> CircuitState:
        with self._lock:
            c = self._circuits.get(key)
            if c is None or c.state is CircuitState.CLOSED:
                return CircuitState.CLOSED
            if self._clock() - c.opened_at >= c.open_s:
                return CircuitState.HALF_OPEN
            return CircuitState.OPEN

    def allow(self, key: Key) -> bool:
        """May a delivery to `key` be attempted now? True when closed; when half-open, True exactly once (the
        probe) until that probe is reported. Whoever gets True must `report()` (NONE if nothing was learnt)."""
        with self._lock:
            c = self._circuits.get(key)
            if c is None or c.state is CircuitState.CLOSED:
                return True
            if c.probing or self._clock() - c.opened_at < c.open_s:
                return False
            c.probing = True
            return True

    def report(self, key: Key, verdict: Verdict, reason: str = "", code: str = "") -> None:
        """The outcome of an attempt `allow()` let through."""
        with self._lock:
            c = self._circuits.get(key)
            if verdict is Verdict.SUCCESS:
                self._circuits.pop(key, None)
                return
            if verdict is Verdict.NONE:
                if c is not None:
                    c.probing = False  # the probe told nothing: the next message probes again
                return
            if c is None:
                c = self._circuits[key] = _Circuit()
            if c.state is CircuitState.OPEN and not c.probing and self._clock() - c.opened_at < c.open_s:
                # Another attempt that started before the circuit opened failed too: the same failure, not a
                # new one, so the open time does not grow with the number of workers that met it.
                return
            c.failures += 1
            c.state, c.opened_at, c.open_s = CircuitState.OPEN, self._clock(), self._open_time(c.failures)
            c.probing, c.reason, c.code, c.throttled = False, reason, code, verdict is Verdict.THROTTLED

    def open_time(self, key: Key) -> float:
        """How long the current opening of `key` lasts (0 when closed)."""
        with self._lock:
            c = self._circuits.get(key)
            return c.open_s if c is not None else 0.0

    def retry_after(self, key: Key) -> float:
        """Seconds until `key` half-opens (0 when it is closed or half-open now)."""
        with self._lock:
            c = self._circuits.get(key)
            if c is None or c.state is CircuitState.CLOSED:
                return 0.0
            return max(0.0, c.open_s - (self._clock() - c.opened_at))

    def cause(self, key: Key) -> tuple[str, str]:
        """The reason and error code of the failure that opened `key` ('' when closed)."""
        with self._lock:
            c = self._circuits.get(key)
            return (c.reason, c.code) if c is not None else ("", "")

    def backing_off(self) -> dict[Key, bool]:
        """Every destination in back-off, with whether throttling opened it (the metrics gauge).

        Open, or half-open while a probe is out or for one more open time: a circuit is only closed by a
        probe, and a process that stopped getting the destination's messages (another pod takes them now)
        would otherwise report it in back-off forever."""
        with self._lock:
            now = self._clock()
            return {
                k: c.throttled
                for k, c in self._circuits.items()
                if c.state is CircuitState.OPEN and (c.probing or now - c.opened_at < 2 * c.open_s)
            }


def verdict_of(status_done: bool, failed: bool, recoverable: bool, held: bool, code: str) -> Verdict:
    """What a delivery's result says about its destination (`pipeline.consumer.processor` passes its fields).

    Only a failure that carries the destination's error code counts: sinks attach one to every DeliveryError
    (`DeliveryError.code`), while a ledger write that failed after a delivery, an unreadable source object
    and a held delivery fail without one. A non-recoverable failure (a rejected parameter) is the data's
    fault, not the destination's.
    """
    if held:
        return Verdict.NONE
    if status_done:
        return Verdict.SUCCESS
    if not failed or not recoverable or not code:
        return Verdict.NONE
    return Verdict.THROTTLED if is_throttling(code) else Verdict.FAILURE


def release_delay(
    circuit_wait_s: float, receive_count: int, base_s: float = DEFAULT_HOLD_BASE_S, cap_s: float = MAX_HOLD_S
) -> int:
    """Seconds a message held back for an open circuit stays invisible: max(the circuit's wait, a floor of
    base·4^(receive_count−1)), at most SQS's 12 h less a quarter of an hour (`MAX_HOLD_S`).

    The floor is what keeps a long storm out of the DLQ: receives 1..4 of a held message wait at least
    30 + 120 + 480 + 1,920 s = 42.5 min before its 5th receive, so with maxReceiveCount 5 a destination
    must stay down for over 40 minutes before a message it holds is dead-lettered (docs/CONSUMER.md).
    """
    exponent = max(0, receive_count - 1)
    floor = base_s * HOLD_GROWTH ** min(exponent, 40)  # 4^40 s is far past the cap: no float overflow
    return int(min(cap_s, math.ceil(max(circuit_wait_s, floor))))


def spread(circuit_wait_s: float, open_s: float, rng: random.Random | None = None) -> float:
    """When a held message is worth receiving again, as far as its circuit goes: after the wait, plus a random
    part of one open time.

    Held messages that all came back the moment the circuit half-opens would find one probe out and be held
    again together: a herd that, arriving at once, takes the workers (and, with a queue that answers oldest
    first, the receives) from every other tenant for as long as it lasts. Spread over the next open time they
    trickle back at (held messages / open time) a second instead, the first of them after the wait is the
    probe, and a destination that recovered gets its backlog within one open time."""
    # S311: jitter, not a secret.
    return circuit_wait_s + (rng or random).uniform(0, open_s)
