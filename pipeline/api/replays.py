"""The API's redelivery routes (CONTRACTS.md §9 "Replays"), over `pipeline.replay.service`.

`POST /tenants/{id}/replays` (202 with the id and the estimate; 200 with the estimate alone for a dry run),
`GET /tenants/{id}/replays` (newest first), `GET` and `DELETE /tenants/{id}/replays/{rid}`. Bodies are read
by the app's strict JSON reader; the service validates them and names each bad field (400).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pipeline.errors import Busy, Ended, Unavailable
from pipeline.replay.service import ReplayService

RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "a bad field (window, deliveries, max_events...) or a disabled tenant or delivery"},
    404: {"description": "unknown tenant or replay"},
    409: {"description": "another replay of the tenant is pending or running, or this one has already ended"},
    503: {"description": "replays are not configured here, or the Ray cluster did not take the job"},
}
REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["since"],
                    "properties": {
                        "since": {"type": "string", "format": "date-time"},
                        "until": {"type": "string", "format": "date-time", "description": "default: now"},
                        "deliveries": {"type": "array", "items": {"type": "string"}},
                        "applications": {"type": "array", "items": {"type": "string"}},
                        "max_events": {"type": "integer", "minimum": 1},
                        "dry_run": {"type": "boolean"},
                    },
                }
            }
        },
    }
}


def add_replay_routes(
    app: FastAPI, service: ReplayService | None, read_body: Callable[[bytes], dict[str, Any]]
) -> None:
    """Register the routes; without a service each answers 503 (replays not configured)."""

    @app.exception_handler(Busy)
    async def _busy(_: Request, exc: Busy) -> JSONResponse:
        return JSONResponse({"error": str(exc), "replay_id": exc.replay_id}, status_code=409)

    @app.exception_handler(Ended)
    async def _ended(_: Request, exc: Ended) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=409)

    @app.exception_handler(Unavailable)
    async def _unavailable(_: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=503)

    def configured() -> ReplayService:
        if service is None:
            raise Unavailable("replay requests are not configured here: set REPLAY_REQUEST_TABLE and RAY_ADDRESS")
        return service

    async def call(fn: Callable[..., Any], *args: Any) -> Any:
        result: Awaitable[Any] = run_in_threadpool(fn, *args)
        return await result

    many = "/tenants/{tenant_id}/replays"
    one = many + "/{replay_id}"

    @app.post(many, response_model=None, openapi_extra=REQUEST_BODY, responses=RESPONSES)
    async def request_replay(tenant_id: str, request: Request) -> JSONResponse:
        body = read_body(await request.body())
        status, doc = await call(configured().start, tenant_id, body)
        return JSONResponse(doc, status_code=status)

    @app.get(many, response_model=None, responses=RESPONSES)
    async def list_replays(tenant_id: str, limit: int = Query(100, ge=1, le=1000)) -> JSONResponse:
        return JSONResponse({"replays": await call(configured().list, tenant_id, limit)})

    @app.get(one, response_model=None, responses=RESPONSES)
    async def show_replay(tenant_id: str, replay_id: str) -> JSONResponse:
        return JSONResponse(await call(configured().show, tenant_id, replay_id))

    @app.delete(one, response_model=None, responses=RESPONSES)
    async def stop_replay(tenant_id: str, replay_id: str) -> JSONResponse:
        return JSONResponse(await call(configured().stop, tenant_id, replay_id), status_code=202)
