"""The one error hierarchy: every failure the pipeline raises on purpose, and what each means for the work.

    DeliveryError                  recoverable: the same work may succeed later
    ├── NonRecoverableError        retrying can never help: acknowledge the message and report it
    │   ├── InvalidKeyError        (keys.py; also a ValueError) a key that does not follow the layout
    │   ├── TenantConfigError      (tenants.py) an unknown tenant, an invalid tenant item
    │   └── InvalidMessageError    (consumer/events.py) an SQS body that is not an S3 event
    ├── LedgerError                (ledger.py) DynamoDB kept throttling past the bounded retries
    └── ConfigError                (also a ValueError) the deployment is wrong: a missing setting, table,
        └── EnvironmentProblem     queue or program (environment.py); only an operator can fix it

Recoverable means the work is kept: the consumer leaves the message for redelivery (a poison message ends
in the DLQ), the replay reports the object as failed and a re-run sends it. Non-recoverable means the
consumer acknowledges it: keeping it could only fill the DLQ with work that can never succeed.

A ConfigError is meant to stop an entrypoint at startup (`cli.exit_on_bad_environment`: one line, exit 3).
Met in the middle of delivering (a `vector` binary removed from under a running worker), it fails the work
recoverably: retrying the call cannot help, but the data must wait for the fix, not be acknowledged away.

Whether one AWS error is worth retrying, and which of these it becomes otherwise, is decided in one table
(`pipeline.classify`); how a retry waits is one mechanism (`pipeline.retry`).
"""

from __future__ import annotations

from pipeline.counters import DeliveryCounts


class DeliveryError(Exception):
    """The root of the hierarchy; recoverable unless the class or the raiser says otherwise."""

    recoverable: bool = True

    def __init__(self, reason: str, *, recoverable: bool | None = None, code: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        # The AWS error code behind the failure, when there is one (ThrottlingException, AccessDenied…):
        # what the consumer's per-destination circuits and the failure metrics are keyed on.
        self.code = code
        # What the failed work did on the wire before it gave up (a sink's SinkResult): the calls it made
        # still count in reports, though nothing was delivered.
        self.sent: DeliveryCounts | None = None
        if recoverable is not None:
            self.recoverable = recoverable


class NonRecoverableError(DeliveryError):
    recoverable = False


class ConfigError(DeliveryError, ValueError):
    """A required setting, resource or program is missing or wrong; the message names it and the fix.

    A ValueError too, as it always was, for callers that catch bad values that way.
    """
