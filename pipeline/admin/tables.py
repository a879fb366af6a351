"""Open a tenant table by name: its shape (v1 or v2), or a ConfigError in one line that names the table."""

from __future__ import annotations

from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError, ClientError

from pipeline import aws
from pipeline.errors import ConfigError
from pipeline.tenants import TableSchema, TenantConfigError, table_schema

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

SHAPES = {
    TableSchema.V1: "v1 (hash key tenant_id)",
    TableSchema.V2: "v2 (hash key tenant_id, range key delivery_id)",
}


def open_table(ddb: DynamoDBClient, table: str, expect: TableSchema | None = None, role: str = "") -> TableSchema:
    """The shape of `table`; ConfigError when it does not exist, cannot be read, or is not the `expect`ed one.

    `role` names the option the table came from (`--from`), so the message says which argument is wrong.
    """
    what = f"{role} table {table!r}" if role else f"table {table!r}"
    try:
        schema = table_schema(ddb, table)
    except TenantConfigError as exc:
        raise ConfigError(f"{what} is not a tenant table: {exc.reason}") from None
    except ClientError as exc:
        region = getattr(getattr(ddb, "meta", None), "region_name", None) or "?"
        if aws.error_code(exc) == "ResourceNotFoundException":
            raise ConfigError(f"{what} does not exist (region {region})") from None
        raise ConfigError(f"{what} cannot be read (region {region}): {aws.error_code(exc)}: {_message(exc)}") from None
    except BotoCoreError as exc:  # no credentials, no region, endpoint unreachable
        raise ConfigError(f"{what} cannot be reached: {exc}") from None
    if expect is not None and schema is not expect:
        raise ConfigError(f"{what} is a {SHAPES[schema]} tenant table; {role or 'this'} needs a {SHAPES[expect]} one")
    return schema


def _message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", "")) or str(exc)
