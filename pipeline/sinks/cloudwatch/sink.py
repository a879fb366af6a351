"""The native CloudWatch Logs sink: PutLogEvents into the tenant's own account.

Groups and streams are created when a put says they are missing, never looked up with Describe* (5 TPS
per account). Which errors are retried, refreshed or created for is `pipeline.classify`'s table for
"logs"; retries wait by the shared policy (capped exponential backoff, full jitter, bounded). Rejected
events (too old, too new, expired) are counted and never retried.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from botocore.exceptions import ClientError

from pipeline import aws
from pipeline.classify import NETWORK_ERRORS, Action, Remedy, classify, classify_error, describe, remedy
from pipeline.errors import DeliveryError
from pipeline.records import Event
from pipeline.retry import Retrying, RetryPolicy
from pipeline.sinks import traits_of
from pipeline.sinks.base import SinkResult, SinkTraits, TenantWriter
from pipeline.sinks.cloudwatch.limits import batches, count_rejected, put_log_events_body
from pipeline.tenants import Delivery

log = logging.getLogger(__name__)
ALREADY_EXISTS = "ResourceAlreadyExistsException"  # a create that lost a race: what it wanted exists


# RetryPolicy is re-exported: callers configure this sink's retries with it.
__all__ = ["CloudWatchSink", "RetryPolicy"]


class CloudWatchSink(TenantWriter):
    name: ClassVar[str] = "cloudwatch"
    traits: ClassVar[SinkTraits] = traits_of(name)

    def _client(self, dest: Delivery) -> Any:
        return self._creds.client("logs", dest.tenant_id, dest.role_arn, dest.region, dest.hop_external_id)

    def send(self, dest: Delivery, stream: str, events: list[Event]) -> SinkResult:
        result = SinkResult()
        try:
            for batch in batches(events):
                result.add(self.put_batch(dest, stream, batch))
        except DeliveryError as exc:
            if exc.sent is not None:
                result.add(exc.sent)
            exc.sent = result  # the batches before the failing one were delivered: they count
            raise
        return result

    def put_batch(self, dest: Delivery, stream: str, batch: list[Event]) -> SinkResult:
        result = SinkResult()
        try:
            return self._put_batch(dest, stream, batch, result)
        except DeliveryError as exc:
            exc.sent = result  # the calls it made count in the report though the batch failed
            raise

    def _put_batch(self, dest: Delivery, stream: str, batch: list[Event], result: SinkResult) -> SinkResult:
        body = put_log_events_body(dest.log_group, stream, batch)
        where = f"{dest.log_group}/{stream} in {dest.region} for tenant {dest.tenant_id}"
        created = refreshed = False
        retrying = self._retry.begin(self._sleep)
        while True:
            try:
                resp = _put_serialized(self._client(dest), dest.log_group, stream, body)
                break
            except ClientError as exc:
                result.requests_refused += 1
                code, status = aws.error_code(exc), aws.http_status(exc)
                fix = remedy("logs", code)
                if fix is Remedy.CREATE_DESTINATION and not created:
                    create_error = self._create(dest, stream, result)
                    created = create_error is None
                    if create_error is not None:  # the create calls were throttled: back off, then try again
                        self._backoff(retrying, where, create_error, result)
                    continue
                if fix is Remedy.REFRESH_CREDENTIALS and not refreshed:
                    self._creds.invalidate(dest.role_arn, dest.hop_external_id)
                    refreshed = True
                    continue
                action = classify("logs", code, status)
                if action is Action.RETRY:
                    self._backoff(retrying, where, describe(exc), result)
                    continue
                message = exc.response.get("Error", {}).get("Message", "")
                raise DeliveryError(
                    f"PutLogEvents to {where} failed: {code}: {message}"[:500],
                    recoverable=action is not Action.FAIL,
                    code=describe(exc),
                ) from exc
            except NETWORK_ERRORS as exc:
                result.requests_refused += 1
                self._backoff(retrying, where, type(exc).__name__, result)
        rejected = count_rejected(resp.get("rejectedLogEventsInfo"), len(batch))
        result.requests += 1
        result.events_delivered += len(batch) - rejected.events_rejected
        result.add(rejected)
        return result

    @staticmethod
    def _backoff(retrying: Retrying, where: str, code: str, result: SinkResult) -> None:
        retrying.backoff(f"PutLogEvents to {where}", code)
        result.retries += 1

    def _create(self, dest: Delivery, stream: str, result: SinkResult) -> str | None:
        """Create the stream, and the group first if that is what is missing. Existing counts as success.

        Returns None once it exists, or the error code when the create is worth retrying (CloudWatch throttled
        it: CreateLogStream is 50/s per account), for the put's retry loop to back off on.
        """
        logs = self._client(dest)
        stream_args = {"logGroupName": dest.log_group, "logStreamName": stream}

        def create(call: Callable[..., Any], args: dict[str, str]) -> Exception | None:
            result.creates += 1
            return _try_create(call, args)

        error = create(logs.create_log_stream, stream_args)
        # The stream's own destination, its group, is missing: create that first.
        if error is not None and remedy("logs", aws.error_code(error)) is Remedy.CREATE_DESTINATION:
            result.creates += 1
            error, made = _create_group(logs, dest.log_group)
            if made and dest.retention_days is not None:
                self._set_retention(logs, dest)
            if error is None:
                error = create(logs.create_log_stream, stream_args)
        if error is None:
            return None
        action = classify_error("logs", error)
        if action is Action.RETRY:
            return describe(error)
        raise DeliveryError(
            f"creating {dest.log_group}/{stream} for tenant {dest.tenant_id} failed: {describe(error)}",
            recoverable=action is not Action.FAIL,
            code=describe(error),
        )

    def _set_retention(self, logs: Any, dest: Delivery) -> None:
        """PutRetentionPolicy on a group this sink has just created (CONTRACTS.md §3 `retention_days`); never
        called for a group that existed, so a customer's own retention is never changed.

        Throttling is waited out like any call; a refusal (the role lacks logs:PutRetentionPolicy) is logged and
        delivery goes on: the logs matter more than their retention, and the customer can set it themselves.
        """
        what = f"PutRetentionPolicy {dest.retention_days} days on {dest.log_group} for tenant {dest.tenant_id}"
        retrying = self._retry.begin(self._sleep)
        while True:
            try:
                logs.put_retention_policy(logGroupName=dest.log_group, retentionInDays=dest.retention_days)
                return
            except (ClientError, *NETWORK_ERRORS) as exc:
                if classify_error("logs", exc) is Action.RETRY:
                    try:
                        retrying.backoff(what, describe(exc))
                        continue
                    except DeliveryError:
                        pass  # out of attempts: reported below like a refusal
                log.warning(
                    "log group created without its retention",
                    extra={"tenant": dest.tenant_id, "log_group": dest.log_group, "error": describe(exc)},
                )
                return


def _create_group(logs: Any, group: str) -> tuple[Exception | None, bool]:
    """CreateLogGroup: (None when the group exists now, else what went wrong; whether this call created it)."""
    try:
        logs.create_log_group(logGroupName=group)
    except ClientError as exc:
        return (None if aws.error_code(exc) == ALREADY_EXISTS else exc), False
    except NETWORK_ERRORS as exc:  # retried like a throttled create, by the put's own retry loop
        return exc, False
    return None, True


# botocore serializes PutLogEvents parameter by parameter in Python, which costs more than everything else
# in the pipeline and sets a client's ceiling (docs/PERFORMANCE.md). The sink serializes the body once with orjson and
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


def _try_create(call: Callable[..., Any], kwargs: dict[str, str]) -> Exception | None:
    """None when the resource exists now (created, or by someone else first), else what went wrong."""
    try:
        call(**kwargs)
    except ClientError as exc:
        return None if aws.error_code(exc) == ALREADY_EXISTS else exc
    except NETWORK_ERRORS as exc:  # retried like a throttled create, by the put's own retry loop
        return exc
    return None
