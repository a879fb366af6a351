"""The API as the environment configures it: what `log-tenants serve` and the Lambda handler run."""

from __future__ import annotations

import os
from collections.abc import Mapping

from fastapi import FastAPI

from pipeline import aws
from pipeline.admin.preflight import Preflight
from pipeline.admin.store import TenantStore
from pipeline.api.app import create_app
from pipeline.api.keys import key_id, load_key
from pipeline.settings import Settings


def app_from_env(env: Mapping[str, str] | None = None, table: str | None = None) -> FastAPI:
    """ConfigError (naming the variable) without a key, a tenant table, or a central role; or when the
    table does not exist or is not v2."""
    env = os.environ if env is None else env
    key = load_key(env)
    settings = Settings.from_env(env).with_overrides(tenant_table=table)
    settings.require("tenant_table", "central_role_arn")
    store = TenantStore(settings.tenant_table, aws.client("dynamodb"), actor=f"api:{key_id(key)}")
    store.check()
    return create_app(key, store, Preflight(settings.central_role_arn))
