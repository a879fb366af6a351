"""The central bucket as a source: one object's ETag and body, read with the central identity."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws
from pipeline.classify import Action, classify_error
from pipeline.delivery.routing import ObjectRef
from pipeline.errors import DeliveryError, NonRecoverableError


class S3Object:
    """One object of the central bucket, as the ledger check and the delivery see it.

    The ledger is compared with the object's real ETag, never one a notification names. When the check
    needs it before the body (the ledger holds something for the key), a HeadObject answers; the GetObject
    that follows only if work is left is then made with `IfMatch` on that ETag, so what is sent is the
    object that was checked. Without a check, GetObject alone gives the body and its ETag.
    """

    def __init__(self, s3: Any, ref: ObjectRef) -> None:
        self.s3, self.ref = s3, ref
        self._etag: str | None = None
        self._error: DeliveryError | None = None

    def _call(self, op: str, call: Callable[..., Any], **kwargs: Any) -> Any:
        if self._error is not None:
            raise self._error
        try:
            return call(Bucket=self.ref.bucket, Key=self.ref.key, **kwargs)
        except ClientError as exc:
            code = aws.error_code(exc)
            # The central client keeps botocore's retries: what reaches here is a verdict, not a hiccup.
            if classify_error("s3", exc) is Action.FAIL:  # NoSuchKey: deleted since the notification
                self._error = NonRecoverableError(f"object no longer exists in s3://{self.ref.bucket}")
            elif code == "PreconditionFailed":  # overwritten since the check: the next attempt checks again
                self._error = DeliveryError("the object changed while it was being delivered", code=code)
            else:
                self._error = DeliveryError(f"{op} failed: {code or aws.http_status(exc)}", code=code)
            raise self._error from exc
        except BotoCoreError as exc:
            self._error = DeliveryError(f"{op} failed: {type(exc).__name__}")
            raise self._error from exc

    def etag(self) -> str | None:
        """The object's ETag (one HeadObject), or None when it cannot be read (open() then raises why)."""
        if self._etag is None:
            try:
                self._etag = str(self._call("HeadObject", self.s3.head_object).get("ETag", "")).strip('"')
            except DeliveryError:
                return None
        return self._etag

    def open(self) -> Any:
        """GetObject: the body, at the ETag checked if there was a check."""
        obj = self._call("GetObject", self.s3.get_object, **({"IfMatch": f'"{self._etag}"'} if self._etag else {}))
        self._etag = str(obj.get("ETag", "")).strip('"') or self._etag
        return obj
