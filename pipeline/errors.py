"""The two kinds of failure every path must tell apart.

Non-recoverable: retrying cannot help (a malformed key, an unknown or disabled tenant, an invalid tenant
config). The consumer acknowledges the message and reports it. Recoverable: the same work may succeed
later (throttling that outlasted its retries, access denied until a customer fixes a role, a network
failure). The consumer leaves the message for redelivery, so a poison message ends in the DLQ.
"""

from __future__ import annotations


class DeliveryError(Exception):
    recoverable: bool = True

    def __init__(self, reason: str, *, recoverable: bool | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        if recoverable is not None:
            self.recoverable = recoverable


class NonRecoverableError(DeliveryError):
    recoverable = False
