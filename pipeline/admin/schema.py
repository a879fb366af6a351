"""The API's request and response models, built from `pipeline.tenants.FIELDS` (the §3 table).

They describe an item for the OpenAPI document and for clients; they do not validate it. Validation is
`parse_delivery(..., strict=True)`, the same function the delivery path runs, so what the API accepts is
exactly what the consumer and the replay can deliver, and a bad item is answered with every bad field
named in the same words the CLI and the delivery reports use.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from pipeline.tenants import FIELDS, DeliveryType, FieldSpec

_PYTHON_TYPES: dict[str, Any] = {"string": str, "boolean": bool, "names": list[str]}


def _describe(spec: FieldSpec) -> str:
    parts = [spec.description]
    if spec.required_for == frozenset(DeliveryType):
        parts.append("required")
    elif spec.required_for:
        parts.append(f"required for {', '.join(sorted(spec.required_for))}")
    if spec.types != frozenset(DeliveryType):
        parts.append(f"{', '.join(sorted(spec.types))} only")
    if spec.default is not None:
        parts.append(f"default {spec.default!r}")
    return "; ".join(parts)


def _field(spec: FieldSpec, required: bool) -> tuple[Any, Any]:
    extra: dict[str, Any] = {}
    if spec.pattern is not None:
        extra["pattern"] = spec.pattern.pattern
    if spec.name == "type":
        extra["enum"] = [str(t) for t in DeliveryType]
    annotation = _PYTHON_TYPES[spec.kind]
    if required:
        return annotation, Field(description=_describe(spec), json_schema_extra=extra or None)
    return annotation | None, Field(default=None, description=_describe(spec), json_schema_extra=extra or None)


def _model(name: str, doc: str, include_keys: bool, include_managed: bool, required: set[str]) -> type[BaseModel]:
    # Any: create_model's **field_definitions share the call with __config__ and __doc__, so mypy would match
    # a dict of (annotation, FieldInfo) pairs against those too.
    fields: dict[str, Any] = {
        spec.name: _field(spec, spec.name in required)
        for spec in FIELDS
        if (include_keys or not spec.key) and (include_managed or not spec.managed)
    }
    return create_model(name, __config__=ConfigDict(extra="forbid"), __doc__=doc, **fields)


DeliveryBody = _model(
    "DeliveryBody",
    "A delivery as PUT takes it (PATCH takes any subset; a null removes a field). tenant_id and delivery_id "
    "come from the path; in a body they may be left out and must match the path when present.",
    include_keys=True,
    include_managed=False,
    required={"type", "log_distribution_role_arn", "target_region"},
)

DeliveryOut = _model(
    "Delivery",
    "A delivery as stored (CONTRACTS.md §3), defaults filled in. The ETag header of a GET, PUT or PATCH "
    "answer is what If-Match takes.",
    include_keys=True,
    include_managed=True,
    required={"tenant_id", "delivery_id", "type", "log_distribution_role_arn", "target_region", "enabled"},
)


class InvalidItem(BaseModel):
    delivery_id: str
    reason: str = Field(description="names every bad field")


class DeliveryList(BaseModel):
    tenant_id: str
    # DeliveryOut is built from FIELDS by create_model at import time: a value, which mypy cannot take as a type;
    # pydantic resolves it when the class is made.
    deliveries: list[DeliveryOut]  # type: ignore[valid-type]
    invalid: list[InvalidItem] = Field(description="items in the table that do not validate")


class TenantPage(BaseModel):
    tenants: list[str]
    next: str | None = Field(description="pass as ?next= for the following page; null on the last one")


class ErrorBody(BaseModel):
    error: str
    fields: dict[str, str] | None = Field(default=None, description="each bad field and what is wrong with it")


class PreflightStepOut(BaseModel):
    step: str = Field(description="central_role, tenant_role, cloudwatch or s3")
    status: str = Field(description="ok, failed or skipped (after an earlier failure)")
    detail: str = ""
    error_code: str | None = None
    error_message: str | None = None
    hint: str | None = Field(default=None, description="the usual cause, in words")


class PreflightOut(BaseModel):
    tenant_id: str
    delivery_id: str
    ok: bool
    steps: list[PreflightStepOut]


def body_schema() -> dict[str, Any]:
    """The JSON schema of a PUT/PATCH body, inlined into the OpenAPI document (the body is read raw, so
    that the signature covers exactly the bytes sent and validation stays parse_delivery's)."""
    return DeliveryBody.model_json_schema()
