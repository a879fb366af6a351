"""The retry mechanism every sink shares: how many attempts, and how long to wait between them.

Which errors are worth retrying is each sink's own decision (CloudWatch and S3 name them differently);
how to retry is this one policy: capped exponential backoff with full jitter, as the AWS architecture
blog recommends, bounded in attempts so a stuck destination fails its delivery instead of a worker.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from botocore.exceptions import ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError, ReadTimeoutError

from pipeline.errors import DeliveryError

# Failures below the HTTP layer: the request may or may not have arrived, and sending it again is safe for
# every call the sinks make (PutLogEvents duplicates are bounded by the ledger; PutObject overwrites).
NETWORK_ERRORS = (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)


class RetryPolicy:
    def __init__(self, attempts: int = 8, base_s: float = 0.1, cap_s: float = 10.0) -> None:
        self.attempts = attempts
        self.base_s = base_s
        self.cap_s = cap_s

    def delay(self, attempt: int) -> float:
        # S311: jitter, not a secret.
        return random.uniform(0, min(self.cap_s, self.base_s * (2**attempt)))  # noqa: S311

    def backoff(self, attempt: int, what: str, code: str, sleep: Callable[[float], None]) -> int:
        """Sleep before attempt `attempt + 1`, or raise DeliveryError once the attempts are spent."""
        if attempt + 1 >= self.attempts:
            raise DeliveryError(f"{what} still failing after {attempt + 1} attempts: {code}")
        sleep(self.delay(attempt))
        return attempt + 1
