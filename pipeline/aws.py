"""AWS client construction, in one place.

Clients are created without an explicit endpoint so botocore's own configuration chain applies:
AWS_ENDPOINT_URL, AWS_ENDPOINT_URL_<SERVICE>, AWS_PROFILE, the usual credential sources, and the
same code runs against AWS and against the embedded local stack.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, overload

import boto3
from botocore.config import Config

if TYPE_CHECKING:  # boto3-stubs is a dev dependency: the types exist for mypy only, never at run time
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_logs import CloudWatchLogsClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_sqs import SQSClient
    from mypy_boto3_sts import STSClient

# Workers run many puts in parallel; botocore's default pool of 10 would serialise them.
_POOL = 64

DEFAULT_CONFIG = Config(max_pool_connections=_POOL, retries={"mode": "standard", "max_attempts": 5})

# CloudWatch Logs retries are the sink's job (exact error codes, jitter, rejected-event accounting), so
# botocore must not retry underneath it. Parameter validation costs more CPU than the HTTP call at our
# batch sizes; the batcher already enforces every limit the service checks.
LOGS_CONFIG = Config(
    max_pool_connections=_POOL,
    retries={"total_max_attempts": 1},
    parameter_validation=False,
    connect_timeout=10,
    read_timeout=60,
)

# PutObject into a tenant's bucket: the S3 sink retries SlowDown and 5xx itself, counting each retry and
# bounding the whole delivery, so botocore must not multiply its attempts underneath.
S3_PUT_CONFIG = Config(
    max_pool_connections=_POOL,
    retries={"total_max_attempts": 1},
    connect_timeout=10,
    read_timeout=60,
)


@dataclass(frozen=True)
class StaticCredentials:
    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime

    def __repr__(self) -> str:  # never let a secret reach a log line or a report
        return f"StaticCredentials(access_key_id={self.access_key_id[:4]}…, expiration={self.expiration})"


# One boto3 Session for the process. Its loader keeps the service models it has read, so a client costs ~3 ms
# of CPU; a Session of its own per client read and parsed them again, 50-150 ms a client. That was paid for each
# tenant's clients at every credential refresh (hourly, a client per service and an STS client per second hop),
# so a consumer serving a thousand tenants spent minutes of CPU an hour on it, and its first pass over them as
# long again. Creating clients from one Session in several threads at once is not safe, hence the lock; the
# clients it makes are, and assumed-role credentials are given to each client, never to the Session.
_session_lock = threading.Lock()
_session: boto3.Session | None = None


# The services the pipeline calls get their typed client (boto3-stubs); any other service, and a client passed
# through code that serves several services (CredentialBroker.client), is Any.
@overload
def client(
    service: Literal["s3"],
    region: str | None = None,
    credentials: StaticCredentials | None = None,
    config: Config | None = None,
) -> S3Client: ...
@overload
def client(
    service: Literal["logs"],
    region: str | None = None,
    credentials: StaticCredentials | None = None,
    config: Config | None = None,
) -> CloudWatchLogsClient: ...
@overload
def client(
    service: Literal["sts"],
    region: str | None = None,
    credentials: StaticCredentials | None = None,
    config: Config | None = None,
) -> STSClient: ...
@overload
def client(
    service: Literal["dynamodb"],
    region: str | None = None,
    credentials: StaticCredentials | None = None,
    config: Config | None = None,
) -> DynamoDBClient: ...
@overload
def client(
    service: Literal["sqs"],
    region: str | None = None,
    credentials: StaticCredentials | None = None,
    config: Config | None = None,
) -> SQSClient: ...
@overload
def client(
    service: str,
    region: str | None = None,
    credentials: StaticCredentials | None = None,
    config: Config | None = None,
) -> Any: ...
def client(
    service: str,
    region: str | None = None,
    credentials: StaticCredentials | None = None,
    config: Config | None = None,
) -> Any:
    """A boto3 client for `service`, with the process's own or the given (assumed-role) credentials."""
    cfg = config or (LOGS_CONFIG if service == "logs" else DEFAULT_CONFIG)
    # botocore reads AWS_DEFAULT_REGION but not AWS_REGION (CONTRACTS.md §7 names both; the k8s config maps
    # set only AWS_REGION). None leaves the rest of botocore's chain (profile config) as it was.
    region = region or os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or None
    keys: dict[str, str] = {}
    if credentials is not None:
        keys = {
            "aws_access_key_id": credentials.access_key_id,
            "aws_secret_access_key": credentials.secret_access_key,
            "aws_session_token": credentials.session_token,
        }
    global _session
    with _session_lock:
        if _session is None:
            _session = boto3.Session()
        # boto3-stubs types Session.client for literal service names only; ours is the caller's, typed by the
        # overloads above, so the untyped signature here is the one honest one.
        make: Callable[..., Any] = _session.client
        return make(service, region_name=region, config=cfg, **keys)


def error_code(exc: BaseException) -> str:
    """The AWS error code of a botocore ClientError, or '' for anything else."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


# DynamoDB's answer to a write whose ConditionExpression is false: for every conditional write, "someone else
# wrote first", which each caller answers in its own way.
CONDITION_FAILED = "ConditionalCheckFailedException"
# TransactWriteItems' answer when any of its items failed, its condition among the reasons: nothing was written.
TRANSACTION_CANCELED = "TransactionCanceledException"


def condition_failed(exc: BaseException) -> bool:
    """Whether `exc` is DynamoDB refusing a conditional write because its condition is false."""
    return error_code(exc) == CONDITION_FAILED


def http_status(exc: BaseException) -> int:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return 0
