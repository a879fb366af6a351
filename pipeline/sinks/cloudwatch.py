"""The native CloudWatch Logs sink: PutLogEvents into the tenant's own account.

Groups and streams are created when a put says they are missing, never looked up with Describe* (5 TPS
per account). Throttling and 5xx are retried with capped exponential backoff and full jitter, matching
the error codes exactly. Rejected events (too old, too new, expired) are counted and never retried.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ClassVar

from botocore.exceptions import ClientError

from pipeline import aws
from pipeline.batching import Event, batches, count_rejected, put_log_events_body
from pipeline.errors import DeliveryError
from pipeline.retry import NETWORK_ERRORS, RetryPolicy
from pipeline.sinks import traits_of
from pipeline.sinks.base import SinkResult, SinkTraits, TenantWriter
from pipeline.tenants import Delivery

RETRYABLE_CODES = frozenset({"ThrottlingException", "ServiceUnavailableException"})
EXPIRED_CREDENTIAL_CODES = frozenset({"ExpiredTokenException", "ExpiredToken", "RequestExpired"})
ALREADY_EXISTS = "ResourceAlreadyExistsException"
NOT_FOUND = "ResourceNotFoundException"


__all__ = ["CloudWatchSink", "RetryPolicy"]


class CloudWatchSink(TenantWriter):
    name: ClassVar[str] = "cloudwatch"
    traits: ClassVar[SinkTraits] = traits_of(name)

    def _client(self, dest: Delivery) -> Any:
        return self._creds.client("logs", dest.tenant_id, dest.role_arn, dest.region, dest.external_id)

    def send(self, dest: Delivery, stream: str, events: list[Event]) -> SinkResult:
        result = SinkResult()
        for batch in batches(events):
            result.add(self.put_batch(dest, stream, batch))
        return result

    def put_batch(self, dest: Delivery, stream: str, batch: list[Event]) -> SinkResult:
        result = SinkResult()
        body = put_log_events_body(dest.log_group, stream, batch)
        where = f"{dest.log_group}/{stream} in {dest.region} for tenant {dest.tenant_id}"
        created = refreshed = False
        attempt = 0
        while True:
            try:
                resp = _put_serialized(self._client(dest), dest.log_group, stream, body)
                break
            except ClientError as exc:
                code, status = aws.error_code(exc), aws.http_status(exc)
                if code == NOT_FOUND and not created:
                    created = self._create(dest, stream)
                    if not created:  # the create calls were throttled: back off, then try again
                        attempt = self._backoff(attempt, where, "create throttled", result)
                    continue
                if code in EXPIRED_CREDENTIAL_CODES and not refreshed:
                    self._creds.invalidate(dest.role_arn, dest.external_id)
                    refreshed = True
                    continue
                if code in RETRYABLE_CODES or status >= 500:
                    attempt = self._backoff(attempt, where, code or f"HTTP {status}", result)
                    continue
                message = exc.response.get("Error", {}).get("Message", "")
                raise DeliveryError(f"PutLogEvents to {where} failed: {code}: {message}"[:500]) from exc
            except NETWORK_ERRORS as exc:
                attempt = self._backoff(attempt, where, type(exc).__name__, result)
        rejected = count_rejected(resp.get("rejectedLogEventsInfo"), len(batch))
        result.batches += 1
        result.delivered += len(batch) - rejected.total
        result.rejected_too_old += rejected.too_old
        result.rejected_too_new += rejected.too_new
        result.rejected_expired += rejected.expired
        return result

    def _backoff(self, attempt: int, where: str, code: str, result: SinkResult) -> int:
        attempt = self._retry.backoff(attempt, f"PutLogEvents to {where}", code, self._sleep)
        result.retries += 1
        return attempt

    def _create(self, dest: Delivery, stream: str) -> bool:
        """Create the stream, and the group first if that is what is missing. Existing counts as success.

        Returns False when CloudWatch throttled the create (CreateLogStream is 50/s per account).
        """
        logs = self._client(dest)
        stream_args = {"logGroupName": dest.log_group, "logStreamName": stream}
        outcome = _try_create(logs.create_log_stream, stream_args)
        if outcome == NOT_FOUND:  # the group itself is missing
            outcome = _try_create(logs.create_log_group, {"logGroupName": dest.log_group})
            if outcome == CREATED:
                outcome = _try_create(logs.create_log_stream, stream_args)
        if outcome in RETRYABLE_CODES:
            return False
        if outcome != CREATED:
            raise DeliveryError(f"creating {dest.log_group}/{stream} for tenant {dest.tenant_id} failed: {outcome}")
        return True


CREATED = "created"

# botocore serializes PutLogEvents parameter by parameter in Python, which costs more than everything else
# in the pipeline and caps a client near 200k events/s. The sink serializes the body once with orjson and
# swaps it in through botocore's documented before-sign hook, so the signature covers the real body.
_PRESET_EVENT = "before-sign.cloudwatch-logs.PutLogEvents"
_preset = threading.local()


def _swap_in_body(request: Any, **_: Any) -> None:
    body = getattr(_preset, "body", None)
    if body is not None:
        _preset.body = None
        request.data = body


def _put_serialized(logs: Any, group: str, stream: str, body: bytes) -> Any:
    if not getattr(logs, "_pipeline_body_hook", False):
        logs.meta.events.register(_PRESET_EVENT, _swap_in_body)
        logs._pipeline_body_hook = True
    _preset.body = body
    try:
        return logs.put_log_events(logGroupName=group, logStreamName=stream, logEvents=[])
    finally:
        _preset.body = None  # never leak a body into another call if this one failed before signing


def _try_create(call: Callable[..., Any], kwargs: dict[str, str]) -> str:
    """CREATED, or the error code; an existing resource counts as created."""
    try:
        call(**kwargs)
    except ClientError as exc:
        code = aws.error_code(exc)
        return CREATED if code == ALREADY_EXISTS else code or "unknown error"
    return CREATED
