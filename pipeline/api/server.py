"""The API as the environment configures it: what `log-tenants serve` and the Lambda handler run."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from fastapi import FastAPI

from pipeline import aws
from pipeline.admin.preflight import Preflight
from pipeline.admin.store import TenantStore
from pipeline.api.app import create_app
from pipeline.api.keys import load_keys
from pipeline.api.nonces import DynamoNonces, MemoryNonces, NonceStore
from pipeline.replay.service import ReplayService
from pipeline.settings import Settings
from pipeline.status import StatusTable

log = logging.getLogger("pipeline.api")


def app_from_env(env: Mapping[str, str] | None = None, table: str | None = None) -> FastAPI:
    """ConfigError (naming the variable) without keys, a tenant table, a central role, or a nonce table
    (API_NONCE_TABLE, which only the local TENANT_API_KEY may go without); or when the tenant table does
    not exist or is not v2."""
    env = os.environ if env is None else env
    keys = load_keys(env)
    settings = Settings.from_env(env).with_overrides(tenant_table=table)
    settings.require("tenant_table", "central_role_arn")
    if not env.get("TENANT_API_KEY"):
        # Two replicas, or Lambda's many execution environments, would each accept the same request once
        # if each remembered nonces itself: every deployed key source requires the shared table.
        settings.require("api_nonce_table")
    nonces: NonceStore
    if settings.api_nonce_table:
        nonces = DynamoNonces(settings.api_nonce_table, aws.client("dynamodb"))
    else:
        log.warning("API_NONCE_TABLE is not set: nonces are remembered by this process only (local use)")
        nonces = MemoryNonces()
    store = TenantStore(settings.tenant_table, aws.client("dynamodb"), actor="api")
    store.check()
    log.info("tenant API keys loaded", extra={"key_ids": keys.ids})
    statuses = StatusTable(settings.status_table, aws.client("dynamodb")) if settings.status_table else None
    replays = ReplayService.from_env(settings, store, env)
    return create_app(
        keys, store, Preflight(settings.central_role_arn), nonces=nonces, statuses=statuses, replays=replays
    )
