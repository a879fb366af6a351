"""The tenant management API (CONTRACTS.md §9), as a FastAPI application.

Everything but `GET /healthz` and `GET /openapi.json` is authenticated by `HmacAuth`, an ASGI middleware in
front of the routes: it reads the raw body, checks the signature and uses up the nonce, and answers 401
with the same body whatever was wrong (a header outside its grammar, stale time, another body, another key,
a nonce seen before), before any route or 404 is reached; then 403 when the key's scope does not allow the
method. Routes read bodies raw (`_json_body`: strict JSON, no duplicate keys, bounded depth) and validate
them with `parse_delivery(strict=True)` through `pipeline.admin.store`, the one validator; the request and
response models in the OpenAPI document come from the same field table.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from pipeline.admin.preflight import Preflight
from pipeline.admin.schema import (
    DeliveryList,
    DeliveryOut,
    ErrorBody,
    PreflightOut,
    ProfileOut,
    TenantOut,
    TenantPage,
    body_schema,
    profile_body_schema,
)
from pipeline.admin.store import ACTOR, TenantStore
from pipeline.api import auth, status_routes
from pipeline.api.nonces import MemoryNonces, NonceStore
from pipeline.api.replays import add_replay_routes
from pipeline.errors import NonceStoreError, NotFound, PreconditionFailed
from pipeline.replay.service import ReplayService
from pipeline.status import StatusTable
from pipeline.tenants import TenantConfigError

log = logging.getLogger("pipeline.api")

OPEN_PATHS = frozenset({"/healthz", "/openapi.json"})
MAX_BODY = 256 * 1024  # a delivery is a few hundred bytes
MAX_DEPTH = 32  # §9; a delivery nests 2 deep
UNAUTHORIZED = b'{"error":"unauthorized"}'
FORBIDDEN = b'{"error":"forbidden"}'

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class HmacAuth:
    """ASGI middleware: every request outside OPEN_PATHS must carry a valid signature of itself (§9).

    Order, each step refusing with the same 401 body whatever was wrong: read the body (413 over MAX_BODY),
    check every header against its grammar and the signature (`auth.verify`, no I/O), then remember the
    nonce (a reuse is a 401 too). Only a request that passed all three learns anything else: 403 when its
    key's scope does not allow the method, 503 when the nonce store cannot answer (refused, never let
    through). Nothing before that can raise: a request the code did not foresee is a 401, not a 500.
    """

    def __init__(
        self,
        app: Any,
        keys: auth.KeyRing,
        nonces: NonceStore,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self._keys = keys
        self._nonces = nonces
        self._clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (scope["method"] == "GET" and scope["path"] in OPEN_PATHS):
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                await _answer(send, 413, b'{"error":"body too large"}')
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            verified = self._verify(scope, body)
        except Exception:  # a request no rule foresaw: refused like any other unsigned one, and logged
            log.exception("refused a request the signature check could not read")
            verified = None
        if verified is not None:
            try:
                fresh = await run_in_threadpool(self._nonces.remember, verified.key.key_id, verified.nonce)
            except NonceStoreError as exc:
                log.error("nonce store unavailable: %s", exc)
                await _answer(send, 503, b'{"error":"unavailable"}')
                return
            if not fresh:
                log.warning("replayed request refused", extra={"key_id": verified.key.key_id})
                verified = None
        if verified is None:
            log.warning(
                "unauthorized request",
                extra={"method": _printable(scope.get("method"), 16), "path": _printable(scope.get("path"), 200)},
            )
            await _answer(send, 401, UNAUTHORIZED)
            return
        if not verified.key.allows(scope["method"]):
            log.warning("forbidden by scope", extra={"key_id": verified.key.key_id, "method": scope["method"]})
            await _answer(send, 403, FORBIDDEN)
            return
        delivered = False

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        # The audit lines of this request's changes name its key (never the key itself).
        token = ACTOR.set(f"api:{verified.key.key_id}")
        try:
            await self.app(scope, replay, send)
        finally:
            ACTOR.reset(token)

    def _verify(self, scope: Scope, body: bytes) -> auth.Verified | None:
        headers = auth.header_map(scope.get("headers") or [])
        if headers is None:
            return None
        path, query = signed_target(scope)
        return auth.verify(self._keys, str(scope["method"]), path, query, headers, body, self._clock)


def signed_target(scope: Scope) -> tuple[str, str]:
    """The canonical path and query of the request, the same under uvicorn and Mangum.

    uvicorn gives the path as sent (`raw_path`); Mangum gives API Gateway's decoded path and no raw one, so
    that one is only re-encoded (`auth.canonical_path`). Both pass the query string as sent.
    """
    raw = scope.get("raw_path")
    if isinstance(raw, bytes | bytearray) and raw:
        path = auth.canonical_path(bytes(raw))
    else:
        path = auth.canonical_path(str(scope.get("path", "")), decoded=True)
    return path, auth.canonical_query(bytes(scope.get("query_string") or b""))


def _printable(value: Any, limit: int) -> str:
    return str(value)[:limit].encode("ascii", "backslashreplace").decode()


async def _answer(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _DuplicateKey(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    for name, value in pairs:
        if name in doc:
            raise _DuplicateKey(name)
        doc[name] = value
    return doc


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


_STRUCTURE = re.compile(rb'[\[\]{}"\\]')


def _too_deep(raw: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text nests arrays and objects deeper than `limit`, found by one scan of the bytes
    before parsing: `json.loads` recurses on the interpreter's stack, so 100k "[" would raise
    RecursionError inside it (a 500) long before any check on the parsed document could run."""
    depth = 0
    in_string = False
    escaped = -1  # the position of the character a backslash escapes
    for m in _STRUCTURE.finditer(raw):
        pos, char = m.start(), m.group()
        if in_string:
            if pos == escaped:
                continue
            if char == b"\\":
                escaped = pos + 1
            elif char == b'"':
                in_string = False
        elif char == b'"':
            in_string = True
        elif char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif char in (b"]", b"}"):
            depth -= 1
    return False


def _json_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object. Strict (§9): no duplicate keys (a second "type" would otherwise win
    silently), no nesting deeper than MAX_DEPTH, no NaN or Infinity."""
    if _too_deep(raw):
        raise TenantConfigError("the body is nested too deeply", {"body": f"nested deeper than {MAX_DEPTH}"})
    try:
        doc = json.loads(raw or b"{}", object_pairs_hook=_no_duplicates, parse_constant=_not_json)
    except _DuplicateKey as exc:
        raise TenantConfigError("the body repeats a key", {"body": f"duplicate key {str(exc)[:64]!r}"}) from None
    except (ValueError, RecursionError):
        raise TenantConfigError("the body is not JSON", {"body": "not valid JSON"}) from None
    if not isinstance(doc, dict):
        raise TenantConfigError("the body is not a JSON object", {"body": "must be a JSON object"})
    return doc


def _error(status: int, error: str, fields: dict[str, str] | None = None) -> JSONResponse:
    content: dict[str, Any] = {"error": error}
    if fields:
        content["fields"] = dict(sorted(fields.items()))
    return JSONResponse(content, status_code=status)


def _item_response(item: dict[str, Any], etag: str, status: int = 200) -> JSONResponse:
    return JSONResponse(item, status_code=status, headers={"ETag": etag})


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a malformed item or parameter: `fields` names each bad one"},
    401: {"description": "no valid signature, or a reused nonce (no detail is given)"},
    403: {"description": "the key's scope does not allow this method (a read key may only GET)"},
    404: {"model": ErrorBody, "description": "unknown tenant or delivery"},
}
BODY = {"requestBody": {"required": True, "content": {"application/json": {"schema": body_schema()}}}}


class _Api(FastAPI):
    """The application, whose OpenAPI document also names the HMAC scheme every signed route needs."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            doc = get_openapi(title=self.title, version=self.version, description=self.description, routes=self.routes)
            doc.setdefault("components", {})["securitySchemes"] = {
                "hmac": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": (
                        "HMAC-SHA256 <key id>:<hex>, with X-Timestamp, X-Nonce and X-Body-SHA256 (see the description)"
                    ),
                }
            }
            doc["security"] = [{"hmac": []}]
            self.openapi_schema = doc
        return self.openapi_schema


def create_app(
    keys: auth.KeyRing | str,
    store: TenantStore,
    preflight: Preflight | None,
    clock: Callable[[], float] = time.time,
    nonces: NonceStore | None = None,
    statuses: StatusTable | None = None,
    replays: ReplayService | None = None,
) -> FastAPI:
    """The application over `store`; `preflight` None answers validate with 503 (no central role set).

    A str key is the one admin key `local`. Without `nonces`, the process remembers nonces itself
    (`MemoryNonces`): one process only, as locally and in tests; deployments pass `DynamoNonces`."""
    app = _Api(
        title="Tenant management API",
        version="1",
        description=(
            "Deliveries of tenants (CONTRACTS.md §3, §9). Every request but /healthz and /openapi.json is signed: "
            "X-Timestamp (Unix seconds, 1 to 12 digits, within 300 s), X-Nonce (16 to 128 of [A-Za-z0-9_-], "
            "never reused), X-Body-SHA256 (hex SHA-256 of the raw body) and "
            "Authorization: HMAC-SHA256 <key id>:<hex HMAC-SHA256 with that key of the nine lines "
            "METHOD, canonical path, canonical query, X-Timestamp, X-Nonce, Host (lower case), Content-Type, "
            "If-Match, X-Body-SHA256 joined by \\n>. A read key may only GET (403 otherwise)."
        ),
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(TenantConfigError)
    async def _invalid(_: Request, exc: TenantConfigError) -> JSONResponse:
        return _error(400, exc.reason, exc.fields or None)

    @app.exception_handler(RequestValidationError)
    async def _bad_parameter(_: Request, exc: RequestValidationError) -> JSONResponse:
        fields = {str(e["loc"][-1]): str(e["msg"]) for e in exc.errors()}
        return _error(400, "invalid parameters", fields)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _error(404, str(exc))

    @app.exception_handler(PreconditionFailed)
    async def _precondition(_: Request, exc: PreconditionFailed) -> JSONResponse:
        return _error(412, str(exc))

    @app.get("/healthz", include_in_schema=True)
    async def healthz() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/tenants", response_model=None, responses={200: {"model": TenantPage}, **ERRORS})
    async def list_tenants(
        limit: int = Query(100, ge=1, le=1000), next_token: str | None = Query(None, alias="next")
    ) -> JSONResponse:
        ids, token = await run_in_threadpool(store.page, limit, next_token)
        return JSONResponse({"tenants": ids, "next": token})

    # -- the tenant and its profile (CONTRACTS.md §3, §9) --------------------------------------------------

    @app.get("/tenants/{tenant_id}", response_model=None, responses={200: {"model": TenantOut}, **ERRORS})
    async def get_tenant(tenant_id: str) -> JSONResponse:
        described = await run_in_threadpool(store.describe, tenant_id)
        profile = described["profile"]
        if profile is not None:
            described = {**described, "profile": {k: v for k, v in profile.items() if k != "delivery_id"}}
        return JSONResponse(described)

    @app.put(
        "/tenants/{tenant_id}",
        response_model=None,
        openapi_extra={
            "requestBody": {"required": True, "content": {"application/json": {"schema": profile_body_schema()}}}
        },
        responses={
            200: {"model": ProfileOut, "description": "the accounts changed (or not); external_id kept"},
            201: {"model": ProfileOut, "description": "created, with the generated external_id"},
            **ERRORS,
            412: {"model": ErrorBody, "description": "If-Match names another version: read it again"},
        },
    )
    async def put_tenant(tenant_id: str, request: Request) -> JSONResponse:
        body = _json_body(await request.body())
        change = await run_in_threadpool(store.put_profile, tenant_id, body, request.headers.get("if-match"))
        item = {k: v for k, v in (change.after or {}).items() if k != "delivery_id"}
        return _item_response(item, change.etag or "", 201 if change.action == "created" else 200)

    @app.get("/tenants/{tenant_id}/deliveries", response_model=None, responses={200: {"model": DeliveryList}, **ERRORS})
    async def list_deliveries(tenant_id: str) -> JSONResponse:
        good, bad = await run_in_threadpool(store.tenant, tenant_id)
        return JSONResponse(
            {
                "tenant_id": tenant_id,
                "deliveries": [s.item for s in good],
                "invalid": [{"delivery_id": d, "reason": r} for d, r in bad],
            }
        )

    one = "/tenants/{tenant_id}/deliveries/{delivery_id}"

    @app.get(one, response_model=None, responses={200: {"model": DeliveryOut}, **ERRORS})
    async def get_delivery(tenant_id: str, delivery_id: str) -> JSONResponse:
        stored = await run_in_threadpool(store.get, tenant_id, delivery_id)
        return _item_response(stored.item, stored.etag)

    conflict: dict[int | str, dict[str, Any]] = {
        412: {"model": ErrorBody, "description": "If-Match names another version: read it again"}
    }

    @app.put(
        one,
        response_model=None,
        openapi_extra=BODY,
        responses={200: {"model": DeliveryOut}, 201: {"model": DeliveryOut}, **ERRORS, **conflict},
    )
    async def put_delivery(tenant_id: str, delivery_id: str, request: Request) -> JSONResponse:
        body = _json_body(await request.body())
        change = await run_in_threadpool(store.put, tenant_id, delivery_id, body, request.headers.get("if-match"))
        return _item_response(change.after or {}, change.etag or "", 201 if change.action == "created" else 200)

    @app.patch(
        one,
        response_model=None,
        openapi_extra=BODY,
        responses={200: {"model": DeliveryOut}, **ERRORS, **conflict},
    )
    async def patch_delivery(tenant_id: str, delivery_id: str, request: Request) -> JSONResponse:
        body = _json_body(await request.body())
        change = await run_in_threadpool(store.patch, tenant_id, delivery_id, body, request.headers.get("if-match"))
        return _item_response(change.after or {}, change.etag or "")

    @app.delete(one, status_code=204, response_model=None, responses={**ERRORS, **conflict})
    async def delete_delivery(tenant_id: str, delivery_id: str, request: Request) -> Response:
        await run_in_threadpool(store.delete, tenant_id, delivery_id, request.headers.get("if-match"))
        return Response(status_code=204)

    @app.post(
        one + "/validate",
        response_model=None,
        responses={200: {"model": PreflightOut, "description": "the steps; `ok` false when one failed"}, **ERRORS},
    )
    async def validate_delivery(tenant_id: str, delivery_id: str) -> JSONResponse:
        # As the delivery path resolves it: bound to the tenant's profile, or refused (400) with the reason.
        delivery = await run_in_threadpool(store.resolve, tenant_id, delivery_id)
        if preflight is None:
            return _error(503, "no central role: set CENTRAL_LOG_DISTRIBUTION_ROLE_ARN")
        report = await run_in_threadpool(preflight.run, delivery)
        return JSONResponse(report.to_json())

    status_routes.register(app, store, statuses, ERRORS, clock)
    add_replay_routes(app, replays, _json_body)  # CONTRACTS.md §9 "Replays": pipeline/api/replays.py

    ring = auth.KeyRing.single(keys) if isinstance(keys, str) else keys
    app.add_middleware(HmacAuth, keys=ring, nonces=nonces or MemoryNonces(), clock=clock)
    return app
