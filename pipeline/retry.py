"""How every loop that retries waits: bounded attempts, capped exponential backoff with full jitter, and an
optional deadline.

Whether an error is worth retrying is not decided here but in `pipeline.classify`, one table for every
service; this is only the mechanism, as the AWS architecture blog recommends it: the n-th wait is drawn
uniformly from [0, min(cap, base * 2**n)], so clients that failed together do not retry together. Bounded
in attempts (and, when given, in time) so a stuck destination fails its work instead of holding a worker.

    retrying = policy.begin(sleep)
    while True:
        try:
            return call()
        except SomeError as exc:
            if classify_error(service, exc) is not Action.RETRY:
                raise
            retrying.backoff("PutObject s3://…", describe(exc))  # sleeps, or raises once spent
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from pipeline.classify import is_throttling
from pipeline.errors import DeliveryError

__all__ = ["RetryPolicy", "Retrying"]


class RetryPolicy:
    """The settings, shared by every call that retries the same way; `begin` starts one loop."""

    def __init__(
        self,
        attempts: int = 8,
        base_s: float = 0.1,
        cap_s: float = 10.0,
        deadline_s: float | None = None,
        throttle_attempts: int | None = None,
        jitter: bool = True,
    ) -> None:
        if attempts < 1 or (throttle_attempts is not None and throttle_attempts < 1):
            raise ValueError("a retry policy needs at least one attempt")
        self.attempts = attempts
        self.base_s = base_s
        self.cap_s = cap_s
        self.deadline_s = deadline_s
        # How many throttled attempts a loop may spend before it gives up, when that should come sooner than
        # `attempts`: the consumer's circuits take over a throttled destination, so a worker must not wait
        # out the whole budget on it (`pipeline.circuits`). None: throttling counts like any other retry.
        self.throttle_attempts = throttle_attempts
        # False: wait the capped exponential itself. Jitter spreads clients that failed together; a caller
        # that alone waits on something of its own (restarting its child process) has no one to spread from.
        self.jitter = jitter

    def delay(self, retry: int) -> float:
        """The wait before retry number `retry` (0 for the first): full jitter under the capped exponential."""
        bound = min(self.cap_s, self.base_s * (2**retry))
        # S311: jitter, not a secret.
        return random.uniform(0, bound) if self.jitter else bound  # noqa: S311

    def begin(
        self, sleep: Callable[[float], object] = time.sleep, clock: Callable[[], float] = time.monotonic
    ) -> Retrying:
        """One retry loop under this policy; its attempts and deadline count from now."""
        return Retrying(self, sleep, clock)

    def __repr__(self) -> str:
        deadline = f", deadline_s={self.deadline_s}" if self.deadline_s is not None else ""
        throttle = f", throttle_attempts={self.throttle_attempts}" if self.throttle_attempts is not None else ""
        jitter = "" if self.jitter else ", jitter=False"
        extra = f"{deadline}{throttle}{jitter}"
        return f"RetryPolicy(attempts={self.attempts}, base_s={self.base_s}, cap_s={self.cap_s}{extra})"


class Retrying:
    """The state of one retry loop: how many attempts failed, and since when it has been trying."""

    def __init__(self, policy: RetryPolicy, sleep: Callable[[float], object], clock: Callable[[], float]) -> None:
        self.policy = policy
        self.failures = 0
        self.throttled = 0  # of the failures, how many were throttling
        self._sleep = sleep
        self._clock = clock
        self._started = clock()

    def wait(self) -> bool:
        """After a failed attempt: sleep, then True (try again); False once the attempts or the deadline are spent.

        A wait never runs past the deadline, so no attempt starts after it.
        """
        self.failures += 1
        if self.failures >= self.policy.attempts:
            return False
        delay = self.policy.delay(self.failures - 1)
        if self.policy.deadline_s is not None:
            left = self.policy.deadline_s - (self._clock() - self._started)
            if left <= 0:
                return False
            delay = min(delay, left)
        self._sleep(delay)
        return True

    def backoff(self, what: str, code: str) -> None:
        """`wait()`, or raise a recoverable DeliveryError naming what kept failing, how, and how often.

        `code` is the bare error code (ThrottlingException, HTTP 503, a network error's type): the error
        carries it as `DeliveryError.code`, and a throttling code counts against `throttle_attempts`."""
        limit = self.policy.throttle_attempts
        if limit is not None and is_throttling(code):
            self.throttled += 1
            if self.throttled >= limit:
                self.failures += 1
                raise DeliveryError(f"{what} still throttled after {self.failures} attempts: {code}", code=code)
        if not self.wait():
            raise DeliveryError(f"{what} still failing after {self.failures} attempts: {code}", code=code)
