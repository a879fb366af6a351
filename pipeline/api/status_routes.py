"""The status routes of the tenant API (CONTRACTS.md §9 "Status"): each delivery's state, newest delivered,
lag, recent counts and last error, read from the status table (`pipeline.status`). Read-only, so a `read`
key may call them; signed like every other route (the app's `HmacAuth` runs before them)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from pipeline.admin.store import TenantStore
from pipeline.status import StatusTable, tenant_status

NO_TABLE = {"error": "no status table: set DELIVERY_STATUS_TABLE"}


def register(
    app: FastAPI,
    store: TenantStore,
    statuses: StatusTable | None,
    errors: dict[int | str, dict[str, Any]],
    clock: Callable[[], float] = time.time,
) -> None:
    """Add `GET /tenants/{tenant_id}/status` and `GET /tenants/{tenant_id}/deliveries/{delivery_id}/status`."""

    @app.get("/tenants/{tenant_id}/status", response_model=None, responses=errors)
    async def get_tenant_status(tenant_id: str) -> JSONResponse:
        if statuses is None:
            return JSONResponse(NO_TABLE, status_code=503)
        doc = await run_in_threadpool(tenant_status, store, statuses, tenant_id, clock())
        return JSONResponse(doc)

    @app.get("/tenants/{tenant_id}/deliveries/{delivery_id}/status", response_model=None, responses=errors)
    async def get_delivery_status(tenant_id: str, delivery_id: str) -> JSONResponse:
        if statuses is None:
            return JSONResponse(NO_TABLE, status_code=503)
        doc = await run_in_threadpool(tenant_status, store, statuses, tenant_id, clock(), delivery_id)
        return JSONResponse(doc["deliveries"][0])
