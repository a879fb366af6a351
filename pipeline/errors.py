"""The one error hierarchy: every failure the pipeline raises on purpose, and what each means for the work.

    DeliveryError                  recoverable: the same work may succeed later
    ├── NonRecoverableError        retrying can never help: acknowledge the message and report it
    │   ├── InvalidKeyError        (keys.py; also a ValueError) a key that does not follow the layout
    │   ├── TenantConfigError      (tenants.py) an unknown tenant, an invalid tenant item
    │   └── InvalidMessageError    (consumer/events.py) an SQS body that is not an S3 event
    ├── LedgerError                (ledger.py) DynamoDB kept throttling past the bounded retries
    └── ConfigError                (also a ValueError) the deployment is wrong: a missing setting, table,
        └── EnvironmentProblem     queue or program (environment.py); only an operator can fix it

    RequestError                   a request of the tenant CLI, the tenant API or a replay request is refused
    │                              as asked; no work is at stake (each has one API status, one CLI exit)
    ├── NotFound                   (also a LookupError) an unknown tenant, delivery or replay: 404
    ├── PreconditionFailed         (also a RuntimeError) If-Match named another version, or the item changed
    │                              between the read and the write: 412
    ├── Busy                       (also a RuntimeError) another of the tenant's replays holds its run: 409
    ├── Ended                      (also a RuntimeError) the replay has ended already: nothing to stop: 409
    ├── Unavailable                (also a RuntimeError) replays cannot run here (no table, no Ray): 503
    ├── JobsUnavailable            (also a RuntimeError) the Ray Jobs API could not be reached or refused
    └── NonceStoreError            the API's nonce store could not answer: the request is refused, 503

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


class RequestError(Exception):
    """The root of the refusals of a request (the tenant CLI and API, replay requests); the message says why."""


class NotFound(RequestError, LookupError):
    """An unknown tenant, or an unknown delivery of a known tenant; the message says which."""


class PreconditionFailed(RequestError, RuntimeError):
    """If-Match named another version, or the item changed between the read and the write."""


class Busy(RequestError, RuntimeError):
    """Another of the tenant's replays is pending or running."""

    def __init__(self, replay_id: str) -> None:
        super().__init__(f"replay {replay_id} of this tenant is still pending or running: one runs at a time")
        self.replay_id = replay_id


class Ended(RequestError, RuntimeError):
    """The request has already ended: there is nothing to stop."""


class Unavailable(RequestError, RuntimeError):
    """Replays cannot be run here: no request table or no Ray cluster configured, or the cluster is away."""


class JobsUnavailable(RequestError, RuntimeError):
    """The Ray cluster's Jobs API could not be reached or refused the call."""


class NonceStoreError(RequestError):
    """The store could not say whether a nonce is new: the request is refused (503), never let through."""
