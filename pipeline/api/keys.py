"""The API's keys, each with an id and a scope (CONTRACTS.md §9), from exactly one of:

- `TENANT_API_KEYS_FILE`: the path of a mounted file (a Kubernetes Secret volume) holding the key document;
- `TENANT_API_KEY_SECRET_ARN`: a Secrets Manager secret whose SecretString is the key document;
- `TENANT_API_KEY`: one admin key whose id is `local` (local use only).

The key document is JSON, either `{"keys": [KEY, ...]}` or one KEY, where KEY is
`{"id": "<[A-Za-z0-9._-]{1,64}>", "secret": "<at least 16 characters>", "scope": "admin" | "read"}`.
The one-key form is what CloudFormation's GenerateSecretString writes (a template object plus one generated
field); the list holds two keys during a rotation (docs/TENANTS.md).

Keys are held by the process only: never logged, never in an error message (errors name the source and the
field, never a value), never in the OpenAPI document. Logs name a key by its id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws
from pipeline.api.auth import KEY_ID, ApiKey, KeyRing, KeyScope
from pipeline.classify import describe
from pipeline.errors import ConfigError

MIN_KEY_CHARS = 16
SOURCES = ("TENANT_API_KEYS_FILE", "TENANT_API_KEY_SECRET_ARN", "TENANT_API_KEY")


def parse_keys(text: str, source: str) -> KeyRing:
    """The keys of a key document; ConfigError naming the source and what is wrong (never a secret)."""
    try:
        doc: Any = json.loads(text)
    except ValueError:
        raise ConfigError(f"{source}: the key document is not JSON") from None
    if isinstance(doc, dict) and "keys" in doc:
        entries = doc["keys"]
        if set(doc) != {"keys"} or not isinstance(entries, list) or not entries:
            raise ConfigError(f"{source}: the document must be {{'keys': [...]}}, a non-empty list, and nothing else")
    else:
        entries = [doc]  # one key object: what CloudFormation's GenerateSecretString writes
    keys = []
    for i, entry in enumerate(entries):
        where = f"{source}: key {i}"
        if not isinstance(entry, dict) or set(entry) - {"id", "secret", "scope"}:
            raise ConfigError(f"{where} must be an object of id, secret and scope")
        key_id, secret, scope = entry.get("id"), entry.get("secret"), entry.get("scope")
        if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
            raise ConfigError(f"{where}: id must be 1 to 64 characters of [A-Za-z0-9._-]")
        if not isinstance(secret, str) or len(secret.strip()) < MIN_KEY_CHARS:
            raise ConfigError(f"{where} ({key_id}): secret must be at least {MIN_KEY_CHARS} characters")
        if scope not in {s.value for s in KeyScope}:
            raise ConfigError(f"{where} ({key_id}): scope must be admin or read")
        keys.append(ApiKey(key_id, secret.strip(), KeyScope(scope)))
    try:
        return KeyRing(keys)
    except ValueError as exc:
        raise ConfigError(f"{source}: {exc}") from None


def load_keys(env: Mapping[str, str] | None = None) -> KeyRing:
    """The keys, or ConfigError naming the variables (and, for the secret, only the error code)."""
    env = os.environ if env is None else env
    given = [name for name in SOURCES if env.get(name)]
    if not given:
        raise ConfigError(
            "no API keys: set TENANT_API_KEYS_FILE (a mounted key file), TENANT_API_KEY_SECRET_ARN "
            "(a Secrets Manager secret) or, locally, TENANT_API_KEY"
        )
    if len(given) > 1:
        raise ConfigError(f"set one of {', '.join(given)}, not several: which keys are live must be plain")
    source = given[0]
    if source == "TENANT_API_KEY":
        key = env["TENANT_API_KEY"].strip()
        if len(key) < MIN_KEY_CHARS:
            raise ConfigError(f"the API key is shorter than {MIN_KEY_CHARS} characters")
        return KeyRing.single(key)
    if source == "TENANT_API_KEYS_FILE":
        path = env["TENANT_API_KEYS_FILE"]
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read TENANT_API_KEYS_FILE={path}: {type(exc).__name__}") from None
        return parse_keys(text, f"TENANT_API_KEYS_FILE={path}")
    arn = env["TENANT_API_KEY_SECRET_ARN"]
    try:
        text = aws.client("secretsmanager").get_secret_value(SecretId=arn).get("SecretString", "")
    except (ClientError, BotoCoreError) as exc:
        raise ConfigError(f"cannot read the secret TENANT_API_KEY_SECRET_ARN={arn}: {describe(exc)}") from None
    if not text:
        raise ConfigError(f"the secret TENANT_API_KEY_SECRET_ARN={arn} has no SecretString")
    return parse_keys(text, f"TENANT_API_KEY_SECRET_ARN={arn}")
