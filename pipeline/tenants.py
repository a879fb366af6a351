"""Tenants and their deliveries (CONTRACTS.md §3): the item schema, its validation, both table shapes, a cache.

A tenant has one or more deliveries, each a destination in the tenant's own account: a CloudWatch Logs
group or an S3 bucket, with its own application and cluster filters. Table v2 keys items by
(`tenant_id`, `delivery_id`); table v1 holds one CloudWatch delivery per tenant, keyed by `tenant_id`
alone, and is read as the delivery `cloudwatch`. The table's key schema says which shape it has.

This module is the one place an item is validated: the delivery path, the replay and the tenant CLI all
call `parse_delivery`. A delivery that does not validate is kept as an `InvalidDelivery`, so the objects
meant for it are reported against it while the tenant's other deliveries go on.

A v2 tenant may also have a **profile**, the item `delivery_id = "_tenant"` (`PROFILE_ID`, an id no delivery
can take): the AWS accounts its deliveries may write into and the ExternalId of its second hop, which the
provider generates. `tenant_from_items` is the one place a tenant's rows become a `Tenant`: the profile is
taken out (it is never read as a delivery), and every delivery is bound to it (`bind`): a delivery whose role
is in another account becomes an `InvalidDelivery`, so a row forged straight into the table is refused at
delivery time by the consumer, the replay and the preflight alike, and the tenant's other deliveries go on.
The management tools check the same thing, in the same words, before they write (`write_problems`).
"""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from boto3.dynamodb.types import TypeDeserializer
from botocore.exceptions import ClientError

from pipeline import aws
from pipeline.classify import Action, classify_error
from pipeline.errors import NonRecoverableError
from pipeline.filters import MAX_PATTERNS, ContentFilter, content_filter, pattern_problem
from pipeline.keys import NAME_SEGMENT_RE, TENANT_ID_RE, ObjectKey

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
REGION_RE = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d{1,2}$")
LOG_GROUP_RE = re.compile(r"^[\w\-/.#]{1,512}$")
DELIVERY_ID_RE = re.compile(r"^[a-z0-9][-a-z0-9]{0,62}$")
# S3's rules for new buckets (no dots next to each other or to a dash is not checked: S3 refuses those itself).
BUCKET_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
BUCKET_PREFIX_MAX = 512
KMS_KEY_ARN_RE = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:(key|alias)/[\w/+=,.@-]{1,256}$")
EXTERNAL_ID_RE = re.compile(r"^[\w+=,.@:/-]{2,1224}$")  # STS's own pattern and length for ExternalId
# What a profile's ExternalId must be (CONTRACTS.md §3): STS's alphabet, 32 to 128 characters. ASCII only:
# `\w` would take any Unicode letter, which STS refuses.
PROFILE_EXTERNAL_ID_RE = re.compile(r"^[A-Za-z0-9_+=,.@:/-]{32,128}$")
ACCOUNT_ID_RE = re.compile(r"^\d{12}$")
PROFILE_ID = "_tenant"  # the delivery_id of a tenant's profile: DELIVERY_ID_RE can never match it
EXTERNAL_ID_BYTES = 32  # 256 bits of randomness, 43 characters of token_urlsafe: above §3's 128 bits

DEFAULT_BUCKET_PREFIX = "ROSA/cluster-logs/"

# -- delivery options (CONTRACTS.md §3: format, include/exclude, retention_days, groups) --
FORMATS = ("original", "parquet")  # s3 deliveries: the source bytes as they are, or Parquet (pipeline/columnar.py)
DEFAULT_FORMAT = "original"
# The values CloudWatch Logs' PutRetentionPolicy accepts for retentionInDays.
RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653,
)  # fmt: skip
# Application groups (CONTRACTS.md §3): a name a tenant may choose instead of listing applications, expanded
# into the application filter when the delivery is validated. The original design's four, with the
# applications of a hosted control plane that make them up.
APPLICATION_GROUPS: dict[str, tuple[str, ...]] = {
    "API": ("kube-apiserver", "openshift-apiserver", "openshift-oauth-apiserver"),
    "Authentication": ("oauth-openshift", "openshift-oauth-apiserver"),
    "Controller Manager": (
        "kube-controller-manager",
        "openshift-controller-manager",
        "openshift-route-controller-manager",
        "cluster-policy-controller",
    ),
    "Scheduler": ("kube-scheduler",),
}
_GROUP_BY_NAME = {name.lower(): name for name in APPLICATION_GROUPS}
V1_DELIVERY_ID = "cloudwatch"  # the delivery a v1 item (and a ledger item from before deliveries) stands for


class DeliveryType(StrEnum):
    CLOUDWATCH = "cloudwatch"
    S3 = "s3"


class TableSchema(StrEnum):
    V1 = "v1"  # hash key tenant_id: one CloudWatch delivery per tenant
    V2 = "v2"  # hash key tenant_id, range key delivery_id


@dataclass(frozen=True)
class FieldSpec:
    """One field of a §3 delivery item. `FIELDS` is the table every other description of an item derives
    from: the required fields `parse_delivery` checks, the API's request and response models and its
    OpenAPI document, the tenant CLI's flags, and the set of attributes an item may hold."""

    name: str
    kind: str  # "string", "boolean", "integer", "names" (a list of strings) or "patterns" (a list of regexes)
    description: str
    required_for: frozenset[DeliveryType] = frozenset()  # the delivery types that must have it
    types: frozenset[DeliveryType] = frozenset(DeliveryType)  # the delivery types it belongs to
    pattern: re.Pattern[str] | None = None
    default: Any = None
    key: bool = False  # part of the table's key: comes from the path in the API, an argument in the CLI
    managed: bool = False  # set by the management tools, never taken from a request


_ALL = frozenset(DeliveryType)
_CW = frozenset({DeliveryType.CLOUDWATCH})
_S3 = frozenset({DeliveryType.S3})

FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("tenant_id", "string", "the tenant: a Kubernetes namespace name", _ALL, pattern=TENANT_ID_RE, key=True),
    FieldSpec("delivery_id", "string", "chosen by whoever creates the item, e.g. cloudwatch, s3-archive", _ALL,
              pattern=DELIVERY_ID_RE, key=True),
    FieldSpec("type", "string", "cloudwatch or s3", _ALL),
    FieldSpec("log_distribution_role_arn", "string",
              "the customer role in the tenant's account, assumed with ExternalId; may carry an IAM path", _ALL,
              pattern=ROLE_ARN_RE),
    FieldSpec("target_region", "string", "region of the destination", _ALL, pattern=REGION_RE),
    FieldSpec("enabled", "boolean", "false: skip this delivery (the tenant's others go on)", default=True),
    FieldSpec("desired_logs", "names", "application names for this delivery, case-insensitive; absent: all"),
    FieldSpec("clusters", "names",
              "cluster ids whose logs this delivery accepts; required for new deliveries; [] accepts none "
              "(an older item without it accepts all until migrated, and is flagged)"),
    FieldSpec("external_id", "string",
              "older items only: the ExternalId written before tenant profiles, honoured until the tenant has "
              "a profile; never written by the tools", pattern=EXTERNAL_ID_RE),
    FieldSpec("log_group_name", "string", "CloudWatch Logs group in the tenant's account", _CW, _CW,
              pattern=LOG_GROUP_RE),
    FieldSpec("bucket_name", "string", "the tenant's bucket", _S3, _S3, pattern=BUCKET_NAME_RE),
    FieldSpec("bucket_prefix", "string", "key prefix in the bucket; ends with '/' (or empty: the bucket's root)",
              types=_S3, default=DEFAULT_BUCKET_PREFIX),
    FieldSpec("kms_key_arn", "string", "SSE-KMS key for the objects written; absent: the bucket's default",
              types=_S3, pattern=KMS_KEY_ARN_RE),
    # -- delivery options (issue 26) --
    FieldSpec("format", "string", "original (the source objects' bytes) or parquet (one Parquet object per source "
              "object, at Hive-partitioned keys dt=/application=)", types=_S3, default=DEFAULT_FORMAT),
    FieldSpec("include", "patterns", "RE2 regular expressions: an event is delivered only when one matches its "
              "message; absent: every event"),
    FieldSpec("exclude", "patterns", "RE2 regular expressions: an event whose message matches one is not delivered"),
    FieldSpec("retention_days", "integer", "retention set on the log group when the sink creates it (never on an "
              "existing group); one of CloudWatch's values " + ",".join(map(str, RETENTION_DAYS)), types=_CW),
    FieldSpec("groups", "names", "application groups (" + ", ".join(APPLICATION_GROUPS) + "), case-insensitive: "
              "each adds its applications to the delivery's application filter"),
    # -- end of delivery options --
    # Status (pipeline/status.py, CONTRACTS.md §9): the delivery's figures as metrics in the tenant's account.
    FieldSpec("publish_metrics", "boolean",
              "true: put the delivery's status figures as CloudWatch metrics (namespace LogDelivery) in the "
              "tenant's own account, through its role", default=False),
    FieldSpec("created_at", "string", "ISO 8601, set by the management tools", managed=True),
    FieldSpec("updated_at", "string", "ISO 8601, set by the management tools", managed=True),
)  # fmt: skip
FIELD_NAMES: frozenset[str] = frozenset(f.name for f in FIELDS)

COMMON_REQUIRED = tuple(f.name for f in FIELDS if f.required_for == _ALL and not f.key and f.name != "type")
TYPE_REQUIRED: dict[DeliveryType, tuple[str, ...]] = {
    t: tuple(f.name for f in FIELDS if f.required_for == frozenset({t})) for t in DeliveryType
}


# The fields of a tenant profile (CONTRACTS.md §3), in the same form as FIELDS: the API's models, the CLI's
# words and `parse_profile` derive from it. `required_for=_ALL` means required.
PROFILE_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec("tenant_id", "string", "the tenant: a Kubernetes namespace name", _ALL, pattern=TENANT_ID_RE, key=True),
    FieldSpec("accounts", "names", "the 12-digit AWS account ids this tenant's deliveries may write into; non-empty",
              _ALL, pattern=ACCOUNT_ID_RE),
    FieldSpec("external_id", "string",
              "the ExternalId of the tenant's second hop, generated by the provider when the profile is created "
              "(never taken from a request); the customer's role trusts exactly this value",
              _ALL, pattern=PROFILE_EXTERNAL_ID_RE, managed=True),
    FieldSpec("external_id_next", "string",
              "during a rotation, the id that will replace external_id; the customer's trust accepts both",
              pattern=PROFILE_EXTERNAL_ID_RE, managed=True),
    FieldSpec("created_at", "string", "ISO 8601, set by the management tools", managed=True),
    FieldSpec("updated_at", "string", "ISO 8601, set by the management tools", managed=True),
)  # fmt: skip
PROFILE_FIELD_NAMES: frozenset[str] = frozenset(f.name for f in PROFILE_FIELDS) | {"delivery_id"}

LEGACY_REFUSAL = (
    "tenant {tenant!r} has no profile (a legacy tenant): it takes no new delivery and no new role until one is "
    "created (PUT /tenants/{tenant} or `log-tenants profile create {tenant} --account ID`; "
    "`log-tenants migrate-profiles` creates them for every existing tenant)"
)


class TenantConfigError(NonRecoverableError):
    """An unknown tenant, or an item that does not follow the schema: non-recoverable for the object.

    `fields` names every bad field and what is wrong with it, so one answer lists them all.
    """

    def __init__(self, reason: str, fields: Mapping[str, str] | None = None) -> None:
        super().__init__(reason)
        self.fields: dict[str, str] = dict(fields or {})


@dataclass(frozen=True)
class Delivery:
    """One destination of one tenant, validated. Sinks take it as their destination."""

    tenant_id: str
    delivery_id: str
    type: DeliveryType
    role_arn: str
    region: str
    enabled: bool = True
    desired_logs: frozenset[str] | None = None  # lower-cased application names, as stored; None means all
    clusters: frozenset[str] | None = None  # cluster ids; None means all
    external_id: str | None = None  # None: the central account id (CONTRACTS.md §4)
    log_group: str = ""  # cloudwatch
    bucket: str = ""  # s3
    bucket_prefix: str = ""  # s3, ends with "/"
    kms_key_arn: str = ""  # s3, optional
    created_at: str = ""
    updated_at: str = ""
    # Set by `bind` from the tenant's profile; None for a legacy tenant (no profile) or a lone item.
    profile_accounts: frozenset[str] | None = None
    profile_external_id: str | None = None
    # Delivery options (CONTRACTS.md §3), each defaulting to the behaviour from before it existed.
    format: str = DEFAULT_FORMAT  # s3
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    retention_days: int | None = None  # cloudwatch
    groups: tuple[str, ...] = ()  # as APPLICATION_GROUPS spells them
    publish_metrics: bool = False  # the status figures as CloudWatch metrics in the tenant's account
    # desired_logs and the groups' applications, expanded once when the delivery is built; None means all.
    applications: frozenset[str] | None = field(default=None, init=False, compare=False)

    def __post_init__(self) -> None:
        expanded = {app for g in self.groups for app in APPLICATION_GROUPS.get(g, ())}
        applications = self.desired_logs if not self.groups else (self.desired_logs or frozenset()) | expanded
        object.__setattr__(self, "applications", applications)

    @property
    def content_filter(self) -> ContentFilter | None:
        """The compiled include/exclude lists, None without either (compiled once per process per lists)."""
        return content_filter(self.include, self.exclude)

    @property
    def decodes(self) -> bool:
        """Whether an object delivery (S3) has to decode the object: Parquet, or a content filter."""
        return self.format != DEFAULT_FORMAT or bool(self.include or self.exclude)

    @property
    def account_id(self) -> str:
        return self.role_arn.split(":")[4]

    @property
    def legacy(self) -> bool:
        """Not bound to a tenant profile: delivered as before profiles existed, and flagged for it."""
        return self.profile_accounts is None

    @property
    def hop_external_id(self) -> str | None:
        """The ExternalId of the second hop (CONTRACTS.md §4): the profile's; for a legacy tenant the item's
        own, else None, which the credential broker and the preflight read as the central account id."""
        return self.profile_external_id if self.profile_accounts is not None else self.external_id

    def wants(self, application: str) -> bool:
        return self.applications is None or application.lower() in self.applications

    def skip_reason(self, parsed: ObjectKey) -> str:
        """Why this delivery does not take the object, or '' when it does."""
        if not self.enabled:
            return f"delivery {self.delivery_id!r} of tenant {self.tenant_id!r} is disabled"
        if self.clusters is not None and parsed.cluster not in self.clusters:
            # Before the application filter: a namespace of the same name in another cluster is not this
            # tenant, and the report must say so rather than name an application filter.
            return f"cluster {parsed.cluster!r} is not allowed for tenant {self.tenant_id!r}"
        if not self.wants(parsed.application):
            where = "desired_logs or groups" if self.groups else "desired_logs"
            return f"application {parsed.application!r} is not in {where} of delivery {self.delivery_id!r}"
        return ""

    @property
    def target(self) -> str:
        """Where it writes, for plans, reports and logs."""
        if self.type is DeliveryType.S3:
            return f"s3://{self.bucket}/{self.bucket_prefix}"
        return f"{self.log_group} ({self.region})"


@dataclass(frozen=True)
class InvalidDelivery:
    """A delivery item that does not validate: its objects are reported as failed, the others go on."""

    tenant_id: str
    delivery_id: str
    reason: str


@dataclass(frozen=True)
class TenantProfile:
    """What binds a tenant to its AWS accounts (CONTRACTS.md §3): the item `delivery_id = "_tenant"`."""

    tenant_id: str
    accounts: frozenset[str]
    external_id: str
    external_id_next: str | None = None  # during a rotation: the id that will replace external_id
    created_at: str = ""
    updated_at: str = ""


@dataclass(frozen=True)
class Tenant:
    tenant_id: str
    deliveries: tuple[Delivery, ...] = ()
    invalid: tuple[InvalidDelivery, ...] = ()
    profile: TenantProfile | None = None
    profile_error: str = ""  # the profile item exists but does not validate: every delivery is refused

    @property
    def legacy(self) -> bool:
        """No profile (and not a broken one): delivered as before, flagged, refused new deliveries."""
        return self.profile is None and not self.profile_error

    @property
    def unbound_clusters(self) -> tuple[str, ...]:
        """Deliveries without `clusters`: older items that take every cluster until migrated (flagged)."""
        return tuple(d.delivery_id for d in self.deliveries if d.clusters is None)

    @property
    def enabled(self) -> bool:
        """Whether any delivery could take objects (invalid ones count: their failures must be reported)."""
        return bool(self.invalid) or any(d.enabled for d in self.deliveries)

    @property
    def delivery_ids(self) -> tuple[str, ...]:
        return tuple(sorted([d.delivery_id for d in self.deliveries] + [i.delivery_id for i in self.invalid]))


# -- validation -------------------------------------------------------------------------------------------


def _text(item: Mapping[str, Any], name: str, errors: dict[str, str], pattern: re.Pattern[str]) -> str:
    value = item.get(name)
    if value is None:
        return ""
    if not isinstance(value, str) or not value.strip():
        errors[name] = "must be a non-empty string"
        return ""
    value = value.strip()
    if not pattern.fullmatch(value):
        errors[name] = f"{value[:200]!r} is not valid"
        return ""
    return value


def _bool(item: Mapping[str, Any], name: str, errors: dict[str, str], default: bool = True) -> bool:
    value = item.get(name, default)
    if isinstance(value, bool):
        return value
    # DynamoDB consoles and scripts often store flags as strings; accept only the unambiguous ones.
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    errors[name] = f"must be a boolean, got {type(value).__name__}"
    return default


def _names(item: Mapping[str, Any], name: str, errors: dict[str, str], lower: bool) -> frozenset[str] | None:
    value = item.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | set | tuple | frozenset) or not all(isinstance(v, str) for v in value):
        errors[name] = "must be a list of names"
        return None
    # An explicit empty list is a choice (take nothing), not a missing field (take all).
    return frozenset((v.strip().lower() if lower else v.strip()) for v in value if v.strip())


def _tenant_id(item: Mapping[str, Any], errors: dict[str, str]) -> str:
    """The item's tenant id; one that is not a namespace name is named in `errors` (and returned as text)."""
    tenant_id = item.get("tenant_id")
    if not isinstance(tenant_id, str) or not TENANT_ID_RE.fullmatch(tenant_id):
        errors["tenant_id"] = f"{tenant_id!r} is not a valid namespace name"
        return str(tenant_id)
    return tenant_id


def parse_delivery(item: Mapping[str, Any], schema: TableSchema = TableSchema.V2, strict: bool = False) -> Delivery:
    """A Delivery from a deserialized item, or TenantConfigError naming every bad field.

    A v1 item is the one delivery `cloudwatch`, whatever else it holds. `strict` (the management tools,
    before they write) also refuses attributes §3 does not define and fields of the other delivery type:
    readers tolerate them in the table, but nothing new should put them there.
    """
    errors: dict[str, str] = {}
    if strict:
        errors.update(_foreign_fields(item))
    tenant_id = _tenant_id(item, errors)
    if schema is TableSchema.V1:
        delivery_id, kind = V1_DELIVERY_ID, DeliveryType.CLOUDWATCH
    else:
        raw_id = item.get("delivery_id")
        delivery_id = str(raw_id)
        if not isinstance(raw_id, str) or not DELIVERY_ID_RE.fullmatch(raw_id):
            errors["delivery_id"] = f"{raw_id!r} must match {DELIVERY_ID_RE.pattern}"
        raw_type = item.get("type")
        if raw_type is None:
            errors["type"] = "required field is missing (cloudwatch or s3)"
            kind = None
        elif not isinstance(raw_type, str) or raw_type not in set(DeliveryType):
            errors["type"] = f"unknown type {raw_type!r} (cloudwatch or s3)"
            kind = None
        else:
            kind = DeliveryType(raw_type)
    required = COMMON_REQUIRED + (TYPE_REQUIRED[kind] if kind else ())
    for name in required:
        if item.get(name) is None:
            errors[name] = "required field is missing"
    role_arn = _text(item, "log_distribution_role_arn", errors, ROLE_ARN_RE)
    region = _text(item, "target_region", errors, REGION_RE)
    enabled = _bool(item, "enabled", errors)
    publish_metrics = _bool(item, "publish_metrics", errors, default=False)
    desired = _names(item, "desired_logs", errors, lower=True)
    clusters = _names(item, "clusters", errors, lower=False)
    if clusters and (bad := sorted(c for c in clusters if not NAME_SEGMENT_RE.fullmatch(c))):
        errors["clusters"] = f"{bad[0][:80]!r} is not a cluster id"
    external_id = _text(item, "external_id", errors, EXTERNAL_ID_RE) or None
    fields: dict[str, Any] = {}
    if kind is DeliveryType.CLOUDWATCH:
        fields["log_group"] = _text(item, "log_group_name", errors, LOG_GROUP_RE)
    elif kind is DeliveryType.S3:
        fields["bucket"] = _text(item, "bucket_name", errors, BUCKET_NAME_RE)
        fields["bucket_prefix"] = _bucket_prefix(item.get("bucket_prefix", DEFAULT_BUCKET_PREFIX), errors)
        fields["kms_key_arn"] = _text(item, "kms_key_arn", errors, KMS_KEY_ARN_RE)
    fields.update(_options(item, kind, errors))
    if errors or kind is None:  # no type is always an error too
        where = f"tenant {tenant_id!r}" + ("" if schema is TableSchema.V1 else f" delivery {delivery_id!r}")
        detail = "; ".join(f"{name}: {problem}" for name, problem in sorted(errors.items()))
        raise TenantConfigError(f"{where}: {detail}", errors)
    stamps: dict[str, Any] = {k: str(item[k]) for k in ("created_at", "updated_at") if isinstance(item.get(k), str)}
    if publish_metrics:
        fields["publish_metrics"] = True
    return Delivery(
        tenant_id, delivery_id, kind, role_arn, region, enabled, desired, clusters, external_id, **fields, **stamps
    )


def _options(item: Mapping[str, Any], kind: DeliveryType | None, errors: dict[str, str]) -> dict[str, Any]:
    """The delivery options (CONTRACTS.md §3) of an item, each checked; bad ones named in `errors`.

    An option of the other delivery type is refused here, not only by the strict check: a `format` on a
    CloudWatch delivery or a `retention_days` on an S3 one would otherwise be silently ignored by the path that
    delivers it, which is exactly the mistake a tenant needs to hear about.
    """
    out: dict[str, Any] = {}
    fmt = item.get("format")
    if fmt is not None:
        if kind is not None and kind is not DeliveryType.S3:
            errors["format"] = f"only s3 deliveries have a format (this is a {kind} delivery)"
        elif not isinstance(fmt, str) or fmt not in FORMATS:
            errors["format"] = f"{str(fmt)[:80]!r} is not a format: choose {' or '.join(FORMATS)}"
        else:
            out["format"] = fmt
    for name in ("include", "exclude"):
        value = item.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            errors[name] = "must be a list of regular expressions (strings)"
        elif len(value) > MAX_PATTERNS:
            errors[name] = f"holds {len(value)} patterns; at most {MAX_PATTERNS}"
        elif problems := [p for p in map(pattern_problem, value) if p]:
            errors[name] = problems[0]
        else:
            out[name] = tuple(dict.fromkeys(value))
    retention = item.get("retention_days")
    if retention is not None:
        days = _integer(retention)
        if kind is not None and kind is not DeliveryType.CLOUDWATCH:
            errors["retention_days"] = f"only cloudwatch deliveries have a retention (this is a {kind} delivery)"
        elif days is None or days not in RETENTION_DAYS:
            errors["retention_days"] = (
                f"{str(retention)[:40]!r} is not a retention CloudWatch accepts: one of "
                + ", ".join(map(str, RETENTION_DAYS))
            )
        else:
            out["retention_days"] = days
    groups = _names(item, "groups", errors, lower=False)
    if groups is not None and "groups" not in errors:
        unknown = sorted(g for g in groups if g.lower() not in _GROUP_BY_NAME)
        if unknown:
            errors["groups"] = f"unknown group {unknown[0][:80]!r}: choose from {', '.join(APPLICATION_GROUPS)}"
        else:
            out["groups"] = tuple(sorted({_GROUP_BY_NAME[g.lower()] for g in groups}))
    return out


def _integer(value: Any) -> int | None:
    """An integer from JSON (int), DynamoDB (Decimal) or a command line (digits); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdecimal() and value.strip().isascii():
        return int(value.strip())
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    return None


def _foreign_fields(item: Mapping[str, Any]) -> dict[str, str]:
    kind = item.get("type")
    out = {name: "not a field of a delivery (CONTRACTS.md §3)" for name in item if name not in FIELD_NAMES}
    if isinstance(kind, str) and kind in set(DeliveryType):  # a list or a dict cannot be hashed: not a type
        for spec in FIELDS:
            if spec.name in item and DeliveryType(kind) not in spec.types:
                out[spec.name] = f"not a field of a {kind} delivery"
    return out


def _bucket_prefix(value: Any, errors: dict[str, str]) -> str:
    if not isinstance(value, str):
        errors["bucket_prefix"] = "must be a string"
        return ""
    if value == "":
        return ""  # the bucket's root: objects go straight under {tenant_id}/
    problem = ""
    if not value.endswith("/"):
        problem = f"{value[:200]!r} must end with '/'"
    elif value.startswith("/") or "//" in value or len(value) > BUCKET_PREFIX_MAX:
        problem = f"{value[:200]!r} must not start with '/', hold '//' or exceed {BUCKET_PREFIX_MAX} characters"
    elif any(part in (".", "..") for part in value.split("/")):
        problem = f"{value[:200]!r} must not hold '.' or '..' segments"
    if problem:
        errors["bucket_prefix"] = problem
    return value


def generate_external_id() -> str:
    """A new ExternalId for a profile (CONTRACTS.md §3): 256 bits from `secrets`, in STS's alphabet
    (token_urlsafe's `[A-Za-z0-9_-]` is a subset), 43 characters."""
    return secrets.token_urlsafe(EXTERNAL_ID_BYTES)


def parse_profile(item: Mapping[str, Any], strict: bool = False) -> TenantProfile:
    """A TenantProfile from a deserialized `_tenant` item, or TenantConfigError naming every bad field.

    `strict` (the management tools, before they write) also refuses attributes a profile does not have.
    """
    errors: dict[str, str] = {}
    if strict:
        foreign = [n for n in item if n not in PROFILE_FIELD_NAMES]
        errors.update(dict.fromkeys(foreign, "not a field of a tenant profile (CONTRACTS.md §3)"))
    tenant_id = _tenant_id(item, errors)
    accounts = _names(item, "accounts", errors, lower=False)
    if accounts is None and "accounts" not in errors:
        errors["accounts"] = "required field is missing (the tenant's 12-digit AWS account ids)"
    elif accounts is not None and not accounts:
        errors["accounts"] = "must name at least one 12-digit AWS account id"
    elif accounts and (bad := sorted(a for a in accounts if not ACCOUNT_ID_RE.fullmatch(a))):
        errors["accounts"] = f"{bad[0][:80]!r} is not a 12-digit AWS account id"
    external_id = _text(item, "external_id", errors, PROFILE_EXTERNAL_ID_RE)
    if not external_id and "external_id" not in errors:
        errors["external_id"] = "required field is missing (generated when the profile is created)"
    external_id_next = _text(item, "external_id_next", errors, PROFILE_EXTERNAL_ID_RE) or None
    if errors:
        detail = "; ".join(f"{name}: {problem}" for name, problem in sorted(errors.items()))
        raise TenantConfigError(f"tenant {tenant_id!r} profile: {detail}", errors)
    stamps = {k: str(item[k]) for k in ("created_at", "updated_at") if isinstance(item.get(k), str)}
    return TenantProfile(tenant_id, frozenset(accounts or ()), external_id, external_id_next, **stamps)


def profile_item(p: TenantProfile) -> dict[str, Any]:
    """The `_tenant` item of a profile, as stored (the inverse of parse_profile)."""
    item: dict[str, Any] = {
        "tenant_id": p.tenant_id,
        "delivery_id": PROFILE_ID,
        "accounts": sorted(p.accounts),
        "external_id": p.external_id,
    }
    for name in ("external_id_next", "created_at", "updated_at"):
        if getattr(p, name):
            item[name] = getattr(p, name)
    return item


def binding_errors(d: Delivery, profile: TenantProfile) -> dict[str, str]:
    """Field → why the tenant's profile does not let this delivery write where it names; {} when it does.

    The role's account must be one of the profile's accounts: a log group is then in that account by
    construction, and an S3 write names that account as the bucket's expected owner. A KMS key, which names
    its account, must be in one of them too.
    """
    allowed = ", ".join(sorted(profile.accounts))
    errors: dict[str, str] = {}
    if d.account_id not in profile.accounts:
        errors["log_distribution_role_arn"] = (
            f"account {d.account_id} is not one of the accounts of tenant {d.tenant_id!r} ({allowed})"
        )
    if d.kms_key_arn and (key_account := d.kms_key_arn.split(":")[4]) not in profile.accounts:
        errors["kms_key_arn"] = (
            f"account {key_account} is not one of the accounts of tenant {d.tenant_id!r} ({allowed})"
        )
    return errors


def bind(d: Delivery, profile: TenantProfile | None) -> Delivery:
    """The delivery bound to its tenant's profile (its accounts and ExternalId), or TenantConfigError naming
    the field the profile refuses. A legacy tenant (no profile) keeps the delivery as it is."""
    if profile is None:
        return d
    errors = binding_errors(d, profile)
    if errors:
        detail = "; ".join(f"{name}: {problem}" for name, problem in sorted(errors.items()))
        raise TenantConfigError(f"tenant {d.tenant_id!r} delivery {d.delivery_id!r}: {detail}", errors)
    return replace(d, profile_accounts=profile.accounts, profile_external_id=profile.external_id)


def write_problems(
    item: Mapping[str, Any], profile: TenantProfile | None, before: Mapping[str, Any] | None
) -> dict[str, str]:
    """Field → why the management tools refuse to write `item` (a delivery that parses), beyond the schema.

    `before` is the stored item it replaces, None for a new delivery. What an older item already holds is
    kept (so a legacy delivery can still be disabled or refiltered), but nothing new is let in:
    - a legacy tenant (no profile) takes no new delivery, and no new role on an existing one;
    - `clusters` is required (an older item without it may stay so until it is migrated);
    - `external_id` is no longer written on a delivery: the profile's is the second hop's.
    The profile's accounts are checked by `binding_errors`, the same check the delivery path makes.
    """
    errors: dict[str, str] = {}
    tenant = str(item.get("tenant_id"))
    if profile is None:
        role = item.get("log_distribution_role_arn")
        if before is None or before.get("log_distribution_role_arn") != role:
            errors["tenant_id"] = LEGACY_REFUSAL.format(tenant=tenant)
    if item.get("clusters") is None and (before is None or before.get("clusters") is not None):
        errors["clusters"] = "required field is missing: the cluster ids whose logs this delivery takes ([] takes none)"
    if item.get("external_id") is not None and (before is None or before.get("external_id") != item["external_id"]):
        errors["external_id"] = "no longer written on a delivery: the second hop uses the tenant profile's external_id"
    return errors


def delivery_item(d: Delivery, schema: TableSchema = TableSchema.V2) -> dict[str, Any]:
    """The item of a delivery, as stored (the inverse of parse_delivery): migrations and the tenant CLI."""
    item: dict[str, Any] = {"tenant_id": d.tenant_id}
    if schema is TableSchema.V2:
        item.update(delivery_id=d.delivery_id, type=str(d.type))
    item.update(log_distribution_role_arn=d.role_arn, target_region=d.region, enabled=d.enabled)
    if d.log_group:
        item["log_group_name"] = d.log_group
    if d.type is DeliveryType.S3:
        item.update(bucket_name=d.bucket, bucket_prefix=d.bucket_prefix)
        if d.kms_key_arn:
            item["kms_key_arn"] = d.kms_key_arn
        if d.format != DEFAULT_FORMAT:
            item["format"] = d.format
    for name in ("include", "exclude", "groups"):
        if getattr(d, name):
            item[name] = list(getattr(d, name))
    if d.retention_days is not None:
        item["retention_days"] = d.retention_days
    for name in ("desired_logs", "clusters"):
        value = getattr(d, name)
        if value is not None:
            item[name] = sorted(value)
    for name in ("external_id", "created_at", "updated_at"):
        if getattr(d, name):
            item[name] = getattr(d, name)
    if d.publish_metrics:
        item["publish_metrics"] = True
    return item


def tenant_from_items(tenant_id: str, items: Sequence[Mapping[str, Any]], schema: TableSchema) -> Tenant:
    """A tenant from all of its rows: the profile (v2 only) taken out, never read as a delivery, and every
    delivery validated and bound to it. A delivery the profile refuses, or every delivery when the profile
    itself does not validate (fail closed: nothing says where they may write), is an InvalidDelivery."""
    good: list[Delivery] = []
    bad: list[InvalidDelivery] = []
    profile: TenantProfile | None = None
    profile_error = ""
    rows = list(items)
    if schema is TableSchema.V2:
        for item in [i for i in rows if i.get("delivery_id") == PROFILE_ID]:
            try:
                profile = parse_profile(item)
            except TenantConfigError as exc:
                profile_error = exc.reason
        rows = [i for i in rows if i.get("delivery_id") != PROFILE_ID]
    for item in rows:
        try:
            d = parse_delivery(item, schema)
            if profile_error:
                raise TenantConfigError(
                    f"tenant {tenant_id!r} delivery {d.delivery_id!r}: refused until the tenant profile is fixed "
                    f"({profile_error})",
                    {"tenant_id": "the tenant profile does not validate"},
                )
            good.append(bind(d, profile))
        except TenantConfigError as exc:
            delivery_id = V1_DELIVERY_ID if schema is TableSchema.V1 else str(item.get("delivery_id", "?"))
            bad.append(InvalidDelivery(tenant_id, delivery_id, exc.reason))
    return Tenant(tenant_id, tuple(sorted(good, key=lambda d: d.delivery_id)), tuple(bad), profile, profile_error)


# -- the table --------------------------------------------------------------------------------------------

_deserializer = TypeDeserializer()


def deserialize(raw: Mapping[str, Any]) -> dict[str, Any]:
    """An item as Python values. DynamoDB numbers come back as Decimal; a whole one (`retention_days`) becomes an
    int, so an item reads the same as it was written and prints as JSON."""
    out = {k: _deserializer.deserialize(v) for k, v in raw.items()}
    for k, v in out.items():
        if isinstance(v, Decimal) and v == v.to_integral_value():
            out[k] = int(v)
    return out


def tenant_items(ddb: DynamoDBClient, table: str, tenant_id: str, consistent: bool = False) -> list[dict[str, Any]]:
    """Every item of one tenant, deserialized: a Query, across its pages (boto3's paginator).

    A query the table can never answer (`never_held`) means no such tenant, so no items; anything else is the
    table's trouble, raised for the caller."""
    query: dict[str, Any] = {
        "TableName": table,
        "KeyConditionExpression": "tenant_id = :t",
        "ExpressionAttributeValues": {":t": {"S": tenant_id}},
    }
    if consistent:
        query["ConsistentRead"] = True
    try:
        return [deserialize(i) for page in ddb.get_paginator("query").paginate(**query) for i in page.get("Items", [])]
    except ClientError as exc:
        if never_held(exc):
            return []
        raise


def never_held(exc: ClientError) -> bool:
    """Whether the tenant table refused a read of a key it can never hold (classify: FAIL, a ValidationException
    for a tenant id it cannot store): no such item, rather than the table's trouble. Every read by key asks this."""
    return classify_error("dynamodb", exc) is Action.FAIL


def table_schema(ddb: DynamoDBClient, table: str) -> TableSchema:
    """v1 or v2, from the table's key schema."""
    keys = ddb.describe_table(TableName=table)["Table"]["KeySchema"]
    names = {k["KeyType"]: k["AttributeName"] for k in keys}
    if names.get("HASH") != "tenant_id" or names.get("RANGE") not in (None, "delivery_id"):
        raise TenantConfigError(f"table {table} has key schema {names}, neither tenant v1 nor v2")
    return TableSchema.V2 if "RANGE" in names else TableSchema.V1


@dataclass
class _Entry:
    expires: float
    value: Tenant | TenantConfigError = field(repr=False)


class TenantDirectory:
    """Looks tenants up in the config table (either shape), caching hits and misses for `ttl_s` seconds.

    Misses are cached too: a flood of objects for an unknown tenant must not become a flood of reads. Both
    caches are bounded LRUs, and apart: tenant ids come from object keys, which any cluster can write, so
    forged ids must neither grow memory without end nor evict the real tenants. A forged id costs one query
    and a place among at most `max_misses`; the real tenants keep their `max_tenants` places.
    """

    def __init__(
        self,
        table: str,
        ttl_s: float = 60.0,
        client: DynamoDBClient | None = None,
        clock: Callable[[], float] = time.monotonic,
        max_tenants: int = 4096,
        max_misses: int = 1024,
    ) -> None:
        self.table = table
        self._ttl = ttl_s
        self._client = client
        self._clock = clock
        self._schema: TableSchema | None = None
        self._hits: OrderedDict[str, _Entry] = OrderedDict()
        self._misses: OrderedDict[str, _Entry] = OrderedDict()
        self._max_tenants = max_tenants
        self._max_misses = max_misses
        self._lock = threading.Lock()
        self.lookups = 0

    @property
    def cached(self) -> int:
        """Entries held, hits and misses."""
        return len(self._hits) + len(self._misses)

    def _ddb(self) -> DynamoDBClient:
        if self._client is None:
            self._client = aws.client("dynamodb")
        return self._client

    @property
    def schema(self) -> TableSchema:
        if self._schema is None:
            self._schema = table_schema(self._ddb(), self.table)
        return self._schema

    def get(self, tenant_id: str) -> Tenant:
        now = self._clock()
        with self._lock:
            hit = self._hits.get(tenant_id) or self._misses.get(tenant_id)
        if hit is None or hit.expires <= now:
            hit = _Entry(now + self._ttl, self._load(tenant_id))
            with self._lock:
                self._hits.pop(tenant_id, None)
                self._misses.pop(tenant_id, None)
                missed = isinstance(hit.value, TenantConfigError)
                cache, bound = (self._misses, self._max_misses) if missed else (self._hits, self._max_tenants)
                cache[tenant_id] = hit
                while len(cache) > bound:
                    cache.popitem(last=False)  # the least recently used
        else:
            with self._lock:
                for cache in (self._hits, self._misses):
                    if tenant_id in cache:
                        cache.move_to_end(tenant_id)
        if isinstance(hit.value, TenantConfigError):
            # One cached instance is raised again and again: drop the last caller's traceback first, or
            # every raise chains more frames (and everything they hold) onto it until the entry expires.
            raise hit.value.with_traceback(None)
        return hit.value

    def items(self) -> Iterator[dict[str, Any]]:
        """Every item of the table, deserialized (the tenant CLI and migrations)."""
        for page in self._ddb().get_paginator("scan").paginate(TableName=self.table, ConsistentRead=True):
            for raw in page.get("Items", []):
                yield deserialize(raw)

    def tenants(self) -> list[Tenant]:
        """Every tenant in the table, each with all of its deliveries, sorted by tenant id."""
        by_tenant: dict[str, list[dict[str, Any]]] = {}
        for item in self.items():
            by_tenant.setdefault(str(item.get("tenant_id")), []).append(item)
        return [tenant_from_items(t, items, self.schema) for t, items in sorted(by_tenant.items())]

    def tenant_ids(self) -> list[str]:
        """Every tenant with a delivery that is enabled (or invalid, so the run reports it), for --all-tenants."""
        return [t.tenant_id for t in self.tenants() if t.enabled]

    def _load(self, tenant_id: str) -> Tenant | TenantConfigError:
        self.lookups += 1
        schema = self.schema
        items = tenant_items(self._ddb(), self.table, tenant_id)
        if not items:
            return TenantConfigError(f"unknown tenant {tenant_id!r}: no entry in {self.table}")
        return tenant_from_items(tenant_id, items, schema)
