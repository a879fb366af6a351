"""AWS Lambda entry for the tenant API behind API Gateway (HTTP API, payload 2.0), through Mangum.

The application is built once per execution environment (the key read from Secrets Manager then), so a warm
invocation costs no secret or DescribeTable call.
"""

from __future__ import annotations

from typing import Any

from mangum import Mangum

from pipeline import logs
from pipeline.api.server import app_from_env

_handler: Mangum | None = None


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    global _handler
    if _handler is None:
        logs.setup("INFO")
        _handler = Mangum(app_from_env(), lifespan="off")
    return _handler(event, context)
