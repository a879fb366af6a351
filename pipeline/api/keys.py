"""The API's pre-shared key: from TENANT_API_KEY, else the Secrets Manager secret TENANT_API_KEY_SECRET_ARN.

The key is held by the process only: never logged, never in an error message, never in the OpenAPI
document. Logs name it by a fingerprint (`key_id`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws
from pipeline.settings import ConfigError

MIN_KEY_CHARS = 16


def load_key(env: Mapping[str, str] | None = None) -> str:
    """The key, or ConfigError naming the variables (and, for the secret, only the error code)."""
    env = os.environ if env is None else env
    key = env.get("TENANT_API_KEY", "")
    if not key and env.get("TENANT_API_KEY_SECRET_ARN"):
        arn = env["TENANT_API_KEY_SECRET_ARN"]
        try:
            key = aws.client("secretsmanager").get_secret_value(SecretId=arn).get("SecretString", "")
        except (ClientError, BotoCoreError) as exc:
            code = aws.error_code(exc) or type(exc).__name__
            raise ConfigError(f"cannot read the secret TENANT_API_KEY_SECRET_ARN={arn}: {code}") from None
        if not key:
            raise ConfigError(f"the secret TENANT_API_KEY_SECRET_ARN={arn} has no SecretString")
    if not key:
        raise ConfigError("no API key: set TENANT_API_KEY, or TENANT_API_KEY_SECRET_ARN to a Secrets Manager secret")
    key = key.strip()
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"the API key is shorter than {MIN_KEY_CHARS} characters")
    return key


def key_id(key: str) -> str:
    """A name for the key in audit lines: enough to tell two keys apart, not to recover either."""
    return "key-" + hashlib.sha256(b"tenant-api-key-id\n" + key.encode()).hexdigest()[:12]
