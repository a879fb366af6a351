"""What an AWS error means for the work that met it: one table, for every service the pipeline calls.

Kept apart from how a retry waits (`pipeline.retry`), as Vector keeps its `retry.rs` logic apart from each
sink's `is_retriable_error`: every loop that retries asks `classify` whether to, and the answer for an
error code is written once, here, whichever module made the call.

    RETRY             transient (throttling, 5xx, a dropped connection): the same request may succeed in
                      a moment. Retried with the shared backoff policy; once the policy is spent, the work
                      fails recoverably.
    FAIL_RECOVERABLE  refused because of something outside the request that someone can change (a role's
                      policy, a missing bucket, a quota, an expired session): the work fails now and is kept
                      for later (the message is left for redelivery, the replay reports it).
    FAIL              the request itself can never be accepted (a parameter the service rejects, an object
                      that no longer exists): the work fails for good and is acknowledged.

A code the table does not know is RETRY with a 5xx status or 429, else FAIL_RECOVERABLE: an unknown refusal
keeps the data rather than dropping it. Matching is exact and per service: CloudWatch Logs says
`ThrottlingException`, STS `Throttling`, and neither is the other's code.

Some codes also name a remedy the caller may try once before the verdict applies: an expired session is
refreshed (the tenant writers), a missing log stream or group is created (the CloudWatch sink).

For SQS no object is at stake: FAIL there means the consumer's own configuration is wrong (its queue is
gone), so it stops; anything else is waited out with backoff.

Clients that keep botocore's standard retries (STS, DynamoDB, SQS, the central bucket's GetObject) have
retried a RETRY code already by the time it reaches us; the table then only says how the work fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from pipeline import aws

Service = Literal["logs", "s3", "sts", "dynamodb", "sqs"]


class Action(StrEnum):
    RETRY = "retry"
    FAIL_RECOVERABLE = "fail_recoverable"
    FAIL = "fail"


class Remedy(StrEnum):
    REFRESH_CREDENTIALS = "refresh_credentials"  # drop the cached role session, assume it again, send again
    CREATE_DESTINATION = "create_destination"  # create the log stream (and its group), send again


@dataclass(frozen=True)
class Rule:
    action: Action
    remedy: Remedy | None = None


RETRY = Rule(Action.RETRY)
FAIL_RECOVERABLE = Rule(Action.FAIL_RECOVERABLE)
FAIL = Rule(Action.FAIL)
EXPIRED = Rule(Action.FAIL_RECOVERABLE, Remedy.REFRESH_CREDENTIALS)  # still expired after a refresh: recoverable

# Failures below the HTTP layer: the request may or may not have arrived, and sending it again is safe for
# every call that is retried (PutLogEvents duplicates are bounded by the ledger; PutObject overwrites).
NETWORK_ERRORS = (EndpointConnectionError, ConnectionClosedError, ConnectTimeoutError, ReadTimeoutError)

# Families of codes, for explaining a failure in words (`pipeline.environment`) rather than deciding on it.
ACCESS_DENIED = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "AllAccessDisabled", "Forbidden", "403"}
)
BAD_CREDENTIALS = frozenset(
    {
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidToken",
    }
)
MISSING = frozenset(
    {"NoSuchBucket", "ResourceNotFoundException", "QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"}
)

# The tenant writers sign with a cached role session; the service says it expired in one of these words.
_EXPIRED_SESSION = dict.fromkeys(("ExpiredToken", "ExpiredTokenException", "RequestExpired"), EXPIRED)
_REFUSED_IDENTITY = dict.fromkeys(
    ("AccessDenied", "AccessDeniedException", "UnrecognizedClientException", "InvalidClientTokenId"),
    FAIL_RECOVERABLE,
)

TABLE: dict[Service, dict[str, Rule]] = {
    # PutLogEvents, CreateLogStream, CreateLogGroup into the tenant's account.
    "logs": {
        "ThrottlingException": RETRY,
        "ServiceUnavailableException": RETRY,
        "OperationAbortedException": RETRY,  # a concurrent create of the same group: it settles at once
        "ResourceNotFoundException": Rule(Action.FAIL_RECOVERABLE, Remedy.CREATE_DESTINATION),
        "LimitExceededException": FAIL_RECOVERABLE,  # the account's group or stream quota: the customer's to raise
        "InvalidParameterException": FAIL,  # the batcher enforces every limit the service checks
        **_EXPIRED_SESSION,
        **_REFUSED_IDENTITY,
    },
    # GetObject from the central bucket; PutObject into the tenant's bucket.
    "s3": {
        "SlowDown": RETRY,
        "ServiceUnavailable": RETRY,
        "InternalError": RETRY,
        "RequestTimeout": RETRY,  # the connection sat idle too long: sending again is the documented fix
        "503": RETRY,  # a 503 whose body is not S3's (a proxy's): botocore names it by its status
        "NoSuchKey": FAIL,  # the source object was deleted: nothing left to deliver, ever
        "NotFound": FAIL,
        "404": FAIL,
        "NoSuchBucket": FAIL_RECOVERABLE,  # the customer creates it, then the same objects go through
        "AllAccessDisabled": FAIL_RECOVERABLE,
        "RequestTimeTooSkewed": FAIL_RECOVERABLE,
        # KMS.* and bucket-side refusals (InvalidRequest, InvalidArgument: Object Lock, a KMS key) are the
        # customer's settings to fix, so they take the default, FAIL_RECOVERABLE.
        **_EXPIRED_SESSION,
        **_REFUSED_IDENTITY,
    },
    # AssumeRole: the central hop with the process's identity, the tenant hop with the central session.
    "sts": {
        "Throttling": RETRY,
        "ThrottlingException": RETRY,
        "IDPCommunicationError": RETRY,
        "ServiceUnavailable": RETRY,
        "InternalFailure": RETRY,
        "RegionDisabledException": FAIL_RECOVERABLE,  # an operator enables STS in the region
        "ExpiredToken": FAIL_RECOVERABLE,  # the process's own session: botocore refreshes it on its own
        "ValidationError": FAIL,  # every field we send is validated first (tenants.FIELDS, session_name)
        "MalformedPolicyDocument": FAIL,
        "PackedPolicyTooLarge": FAIL,
        **_REFUSED_IDENTITY,
    },
    # The ledger and the tenant table.
    "dynamodb": {
        "ProvisionedThroughputExceededException": RETRY,
        "ThrottlingException": RETRY,
        "RequestLimitExceeded": RETRY,
        "InternalServerError": RETRY,
        "ServiceUnavailable": RETRY,
        "TransactionConflictException": RETRY,
        "LimitExceededException": RETRY,  # too many control-plane calls at once
        "ResourceNotFoundException": FAIL_RECOVERABLE,  # the table is missing: deployment, not data
        "ItemCollectionSizeLimitExceededException": FAIL_RECOVERABLE,
        "ExpiredTokenException": FAIL_RECOVERABLE,
        "ValidationException": FAIL,  # e.g. a key the table cannot hold: no such tenant, ever
        "ConditionalCheckFailedException": FAIL,  # callers that expect it handle it before asking
        "SerializationException": FAIL,
        **_REFUSED_IDENTITY,
    },
    # The consumer's queue (query-protocol and JSON-protocol names alike).
    "sqs": {
        "RequestThrottled": RETRY,
        "ThrottlingException": RETRY,
        "OverLimit": RETRY,  # 120,000 messages in flight: waits for consumers to finish some
        "KmsThrottled": RETRY,
        "KmsThrottledException": RETRY,
        "InternalError": RETRY,
        "InternalFailure": RETRY,
        "ServiceUnavailable": RETRY,
        "KmsAccessDenied": FAIL_RECOVERABLE,
        "KmsAccessDeniedException": FAIL_RECOVERABLE,
        "KmsDisabled": FAIL_RECOVERABLE,
        "ExpiredToken": FAIL_RECOVERABLE,
        "QueueDoesNotExist": FAIL,
        "AWS.SimpleQueueService.NonExistentQueue": FAIL,
        "InvalidAddress": FAIL,
        "InvalidParameterValue": FAIL,
        "InvalidParameterValueException": FAIL,
        "InvalidAttributeName": FAIL,
        "ReceiptHandleIsInvalid": FAIL,
        "MessageNotInflight": FAIL,
        **_REFUSED_IDENTITY,
    },
}


def rule(service: Service, code: str, status: int = 0) -> Rule:
    """The table's rule for an error code (and HTTP status) of `service`; the default for an unknown code."""
    # A 5xx or a 429 is transient whatever it is called: a load balancer's 502 has no AWS code at all.
    if status >= 500 or status == 429:
        return RETRY
    return TABLE[service].get(code, FAIL_RECOVERABLE)


def classify(service: Service, code: str, status: int = 0) -> Action:
    """RETRY, FAIL_RECOVERABLE or FAIL for an AWS error code (and HTTP status) of `service`."""
    return rule(service, code, status).action


def classify_error(service: Service, exc: BaseException) -> Action:
    """The action for an exception a botocore call of `service` raised."""
    if isinstance(exc, ClientError):
        return classify(service, aws.error_code(exc), aws.http_status(exc))
    if isinstance(exc, NETWORK_ERRORS):
        return Action.RETRY
    # Anything else botocore raises (no credentials, no region, a parameter it refused to send) is the
    # process's setup, not the data: keep the work.
    return Action.FAIL_RECOVERABLE


def remedy(service: Service, code: str) -> Remedy | None:
    """What a caller may try once before the verdict for `code` applies, if anything."""
    found = TABLE[service].get(code)
    return found.remedy if found is not None else None


def describe(exc: BaseException) -> str:
    """The error's code, or its HTTP status, or its type: the short name reasons and logs carry."""
    code = aws.error_code(exc)
    if code:
        return code
    status = aws.http_status(exc)
    return f"HTTP {status}" if status else type(exc).__name__


# The codes by which a service says "slow down": the destination is fine but over its rate (for CloudWatch Logs
# usually the tenant's account-wide PutLogEvents quota, shared with its own workloads). Across services,
# since the callers that ask (the consumer's circuits, a retry policy's throttling budget) hold only a code.
THROTTLING = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "SlowDown",
        "RequestThrottled",
        "ProvisionedThroughputExceededException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "429",
    }
)


def is_throttling(code: str) -> bool:
    """Whether an error code (as `describe` and `DeliveryError.code` carry it) says the caller is throttled."""
    return code in THROTTLING


# What the status of a delivery (pipeline.status) tells its owner to do about its last error, in words: the
# families above, then the codes that need their own sentence. One place, so the API, the CLI and the
# tenant's own metrics say the same thing.
_ADVICE_BY_CODE = {
    "NoSuchBucket": "the destination bucket does not exist: create it in the tenant's account, in the delivery's "
    "region",
    "LimitExceededException": "the account's CloudWatch Logs quota (groups or streams) is reached: raise it or "
    "remove unused ones",
    "InvalidParameterException": "CloudWatch refused the request's parameters: report it, with the object key, to "
    "the operators",
    "DamagedObject": "the object's body is damaged: its readable part was delivered; check the collector",
    "Unrecoverable": "the object cannot be delivered (a bad key, an invalid delivery item): fix the item or the "
    "source; retrying cannot help",
}


def advice(code: str, delivery_type: str = "") -> str:
    """The remedy, in words, for a delivery's error code (`DeliveryError.code`, or the status's own codes)."""
    if code in _ADVICE_BY_CODE:
        return _ADVICE_BY_CODE[code]
    if code in THROTTLING:
        return (
            "the destination throttles: the account's quota is shared with the tenant's own workloads; deliveries "
            "back off and resume on their own, or raise the quota"
        )
    if code in ACCESS_DENIED:
        where = "logs:PutLogEvents on the log group" if delivery_type == "cloudwatch" else "s3:PutObject on the bucket"
        return (
            f"the tenant's role refused the write: it needs {where} (the customer template grants it), and its "
            "trust policy must allow the central role with the tenant's ExternalId; `log-tenants validate` checks it"
        )
    if code in BAD_CREDENTIALS or code in ("RequestExpired",):
        return "the tenant role's session was refused: check the role ARN and its trust policy (`log-tenants validate`)"
    if code in MISSING:
        return "the destination does not exist and could not be created: check its name, region and the role's grants"
    if code.startswith("KMS") or code.startswith("Kms"):
        return "the KMS key does not let the tenant's role write: grant it kms:GenerateDataKey on the key"
    return (
        "a delivery error the service keeps for retry: it is retried on its own; if it persists, run "
        "`log-tenants validate` on the delivery"
    )
