"""A live preflight of one delivery: each step delivery takes, really taken, with what to fix when one fails.

Steps, in order, stopping at the first that fails:

1. `central_role`: assume the central role with this process's own credentials.
2. `tenant_role`: assume the delivery's role with the central session and the tenant's ExternalId (its
   profile's; a legacy tenant without a profile: the delivery's own, else the central account id).
3. `cloudwatch` (CloudWatch deliveries): the group exists or can be created, and one marked test event is
   written to a new `preflight-…` stream.
4. `s3` (S3 deliveries): a small marked object is written under `{bucket_prefix}{tenant}/_preflight/`.

Every write is made with the tenant role's credentials, only to the destination the delivery names (its
group, its bucket under its own tenant prefix, with `ExpectedBucketOwner` = the role's account): a
preflight never touches another tenant's destinations. A step that fails reports the AWS error code and
message and a hint in words for the usual cause. Credentials are never cached or reported.

The delivery it is given has been resolved against its tenant's profile (`pipeline.tenants.bind`): a
delivery the profile refuses never gets here, it is reported as invalid with the reason. The preflight
checks the binding once more before any call (nothing is assumed or written for a delivery outside its
tenant's accounts), and flags a legacy tenant (no profile) in its report.
"""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws
from pipeline.admin import text
from pipeline.aws import StaticCredentials
from pipeline.credentials import ROLE_SESSION_SECONDS, account_of, assume_role, session_name
from pipeline.tenants import Delivery, DeliveryType, TenantProfile, binding_errors
from pipeline.timespec import iso_z

if TYPE_CHECKING:
    from mypy_boto3_logs.type_defs import InputLogEventTypeDef
    from mypy_boto3_sts import STSClient

log = logging.getLogger("pipeline.admin.preflight")

PREFLIGHT_SESSION_SECONDS = 900  # the shortest session STS issues: a preflight takes seconds
MARKER = "log-delivery-preflight"


class Step(StrEnum):
    CENTRAL_ROLE = "central_role"
    TENANT_ROLE = "tenant_role"
    CLOUDWATCH = "cloudwatch"
    S3 = "s3"


class Outcome(StrEnum):
    OK = "ok"
    FAILED = "failed"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class StepResult:
    step: Step
    status: Outcome
    detail: str = ""  # what was done (ok) or tried (failed)
    error_code: str | None = None
    error_message: str | None = None
    hint: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "step": str(self.step),
            "status": str(self.status),
            "detail": self.detail,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "hint": self.hint,
        }


@dataclass(frozen=True)
class PreflightReport:
    tenant_id: str
    delivery_id: str
    steps: tuple[StepResult, ...] = field(default_factory=tuple)
    warnings: tuple[str, ...] = ()  # what passes today but must be fixed: a legacy tenant, no clusters

    @property
    def ok(self) -> bool:
        return all(s.status is Outcome.OK for s in self.steps)

    @property
    def failed(self) -> StepResult | None:
        return next((s for s in self.steps if s.status is Outcome.FAILED), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "tenant_id": self.tenant_id,
            "delivery_id": self.delivery_id,
            "ok": self.ok,
            "steps": [s.to_json() for s in self.steps],
            "warnings": list(self.warnings),
        }

    def render(self) -> str:
        rows: list[tuple[str, ...]] = []
        for s in self.steps:
            if s.status is Outcome.FAILED:
                rows.append((str(s.step), "FAILED", f"{s.error_code}: {s.error_message}"))
                rows.append(("", "", f"hint: {s.hint}"))
            else:
                rows.append((str(s.step), str(s.status), s.detail))
        head = f"preflight of tenant {self.tenant_id} delivery {self.delivery_id}"
        verdict = "ok: every step passed" if self.ok else f"FAILED at step {self.failed.step if self.failed else '?'}"
        warned = "".join(f"\nwarning: {w}" for w in self.warnings)
        return f"{head}\n{text.table(('STEP', 'STATUS', 'DETAIL'), rows)}\n{verdict}{warned}"


def warnings(d: Delivery) -> tuple[str, ...]:
    """What the report flags about a delivery that passes today: a legacy tenant, a delivery without clusters."""
    out: list[str] = []
    if d.legacy:
        sent = "the delivery's own ExternalId" if d.external_id else "the central account id as ExternalId"
        out.append(
            f"tenant {d.tenant_id!r} has no profile (legacy): its second hop sends {sent}, which other "
            "customers' roles may trust too; run `log-tenants migrate-profiles` and have the customer redeploy "
            "the role with the generated ExternalId"
        )
    if d.clusters is None:
        out.append(
            f"delivery {d.delivery_id!r} has no clusters: it takes namespace {d.tenant_id!r} from every cluster, "
            "including ones added later; set clusters (log-tenants patch --clusters)"
        )
    return tuple(out)


class _StepFailed(Exception):
    def __init__(self, code: str, message: str, hint: str) -> None:
        super().__init__(code)
        self.code, self.message, self.hint = code, message, hint


def _error(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        return str(err.get("Code") or aws.http_status(exc)), str(err.get("Message", ""))[:500]
    return type(exc).__name__, str(exc)[:500]


class Preflight:
    """Runs the steps for deliveries; `central_role_arn` is the first hop (CONTRACTS.md §4)."""

    def __init__(self, central_role_arn: str) -> None:
        self.central_role_arn = central_role_arn
        self.central_account = account_of(central_role_arn)

    def run(self, d: Delivery) -> PreflightReport:
        refused = binding_errors(d, self._profile_of(d)) if not d.legacy else {}
        if refused:  # never reached through the directory (bind refuses it first); checked again all the same
            problem = "; ".join(f"{k}: {v}" for k, v in sorted(refused.items()))
            hint = "the delivery must name a role in one of the tenant profile's accounts"
            refusal = StepResult(Step.CENTRAL_ROLE, Outcome.FAILED, "", "NotInTenantAccounts", problem, hint)
            return PreflightReport(d.tenant_id, d.delivery_id, (refusal,), warnings(d))
        steps: list[tuple[Step, Any]] = [
            (Step.CENTRAL_ROLE, lambda _: self._central(d)),
            (Step.TENANT_ROLE, lambda central: self._tenant(d, central)),
        ]
        if d.type is DeliveryType.CLOUDWATCH:
            steps.append((Step.CLOUDWATCH, lambda creds: self._cloudwatch(d, creds)))
        else:
            steps.append((Step.S3, lambda creds: self._s3(d, creds)))
        results: list[StepResult] = []
        carried: Any = None
        for step, action in steps:
            if results and results[-1].status is not Outcome.OK:
                results.append(StepResult(step, Outcome.SKIPPED, "not run: an earlier step failed"))
                continue
            try:
                carried, detail = action(carried)
                results.append(StepResult(step, Outcome.OK, detail))
            except _StepFailed as exc:
                results.append(StepResult(step, Outcome.FAILED, "", exc.code, exc.message, exc.hint))
        report = PreflightReport(d.tenant_id, d.delivery_id, tuple(results), warnings(d))
        failed = report.failed
        log.info(
            "preflight",
            extra={
                "tenant_id": d.tenant_id,
                "delivery_id": d.delivery_id,
                "ok": report.ok,
                "failed_step": str(failed.step) if failed else None,
                "error_code": failed.error_code if failed else None,
            },
        )
        return report

    @staticmethod
    def _profile_of(d: Delivery) -> TenantProfile:
        return TenantProfile(d.tenant_id, d.profile_accounts or frozenset(), d.profile_external_id or "")

    # -- the steps ----------------------------------------------------------------------------------------

    def _assume(
        self, sts: Callable[[], STSClient], role_arn: str, name: str, external_id: str | None, hint: str
    ) -> StaticCredentials:
        """One hop, tried afresh (not the broker, never from a cache): its STS error is the step's, with `hint`."""
        try:
            return assume_role(sts(), role_arn, name, external_id, min(PREFLIGHT_SESSION_SECONDS, ROLE_SESSION_SECONDS))
        except (ClientError, BotoCoreError) as exc:
            code, message = _error(exc)
            raise _StepFailed(code, message, hint) from None

    def _central(self, d: Delivery) -> tuple[StaticCredentials, str]:
        creds = self._assume(
            lambda: aws.client("sts"),
            self.central_role_arn,
            session_name("preflight", "central"),
            None,
            f"this process's identity must be allowed sts:AssumeRole on {self.central_role_arn}, and that "
            "role's trust policy must allow this identity (the processor or replay role)",
        )
        return creds, f"assumed {self.central_role_arn}"

    def _tenant(self, d: Delivery, central: StaticCredentials) -> tuple[StaticCredentials, str]:
        external_id = d.hop_external_id or self.central_account
        sts = aws.client("sts", credentials=central)
        creds = self._assume(
            lambda: sts,
            d.role_arn,
            session_name("preflight", d.tenant_id),
            external_id,
            f"the customer role's trust policy must allow {self.central_role_arn} with ExternalId "
            f"{external_id}; check the role ARN {d.role_arn} (account, IAM path, name) and that its name "
            "starts with CustomerLogDistribution- (the only roles the central role may assume)",
        )
        return creds, f"assumed {d.role_arn} with ExternalId {external_id}"

    def _cloudwatch(self, d: Delivery, creds: StaticCredentials) -> tuple[None, str]:
        logs = aws.client("logs", region=d.region, credentials=creds)
        now = datetime.now(UTC)
        stream = f"preflight-{now:%Y-%m-%dT%H-%M-%S}-{secrets.token_hex(4)}"
        where = f"log group {d.log_group} in {d.region} (account {d.account_id})"
        grants = (
            f"the role {d.role_arn} needs logs:CreateLogGroup, logs:CreateLogStream and logs:PutLogEvents on {where}"
        )
        created = False
        try:
            logs.create_log_group(logGroupName=d.log_group)
            created = True
        except ClientError as exc:
            if aws.error_code(exc) != "ResourceAlreadyExistsException":
                code, message = _error(exc)
                raise _StepFailed(code, message, f"the group does not exist and cannot be created: {grants}") from None
        except BotoCoreError as exc:
            code, message = _error(exc)
            raise _StepFailed(code, message, f"CloudWatch Logs in {d.region} cannot be reached") from None
        event: InputLogEventTypeDef = {"message": self._marker(d, now), "timestamp": int(now.timestamp() * 1000)}
        try:
            logs.create_log_stream(logGroupName=d.log_group, logStreamName=stream)
            logs.put_log_events(logGroupName=d.log_group, logStreamName=stream, logEvents=[event])
        except (ClientError, BotoCoreError) as exc:
            code, message = _error(exc)
            raise _StepFailed(code, message, f"the test event could not be written: {grants}") from None
        group = "created the group, " if created else "the group exists, "
        return None, f"{group}wrote one test event to {d.log_group}:{stream}"

    def _s3(self, d: Delivery, creds: StaticCredentials) -> tuple[None, str]:
        s3 = aws.client("s3", region=d.region, credentials=creds)
        now = datetime.now(UTC)
        key = f"{d.bucket_prefix}{d.tenant_id}/_preflight/{now:%Y-%m-%dT%H-%M-%S}-{secrets.token_hex(4)}.json"
        args: dict[str, Any] = {
            "Bucket": d.bucket,
            "Key": key,
            "Body": self._marker(d, now).encode(),
            "ContentType": "application/json",
            "Metadata": {"preflight": "true"},
            "ExpectedBucketOwner": d.account_id,
        }
        if d.kms_key_arn:
            args.update(ServerSideEncryption="aws:kms", SSEKMSKeyId=d.kms_key_arn)
        try:
            s3.put_object(**args)
        except (ClientError, BotoCoreError) as exc:
            code, message = _error(exc)
            raise _StepFailed(code, message, self._s3_hint(d, code, message)) from None
        return None, f"wrote s3://{d.bucket}/{key}"

    @staticmethod
    def _s3_hint(d: Delivery, code: str, message: str) -> str:
        grant = f"s3:PutObject on arn:aws:s3:::{d.bucket}/{d.bucket_prefix}*"
        if code == "NoSuchBucket":
            return f"the bucket {d.bucket} does not exist in {d.region}; create it in account {d.account_id}"
        if code.startswith("KMS.") or "kms" in message.lower():
            key = d.kms_key_arn or "the bucket's default key"
            return f"the KMS key does not let the role write: {d.role_arn} needs kms:GenerateDataKey on {key}"
        return (
            f"the bucket policy or KMS key does not let the role write: {d.role_arn} needs {grant}"
            + (f" and kms:GenerateDataKey on {d.kms_key_arn}" if d.kms_key_arn else "")
            + f", and the bucket must be owned by account {d.account_id}"
        )

    @staticmethod
    def _marker(d: Delivery, now: datetime) -> str:
        return json.dumps(
            {
                "marker": MARKER,
                "tenant_id": d.tenant_id,
                "delivery_id": d.delivery_id,
                "at": iso_z(now, "seconds"),
                "note": "a test write by the log delivery preflight; safe to delete",
            }
        )
