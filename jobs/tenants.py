"""Tenants and their deliveries (CONTRACTS.md §3): list them, and migrate a v1 tenant table to v2.

python jobs/tenants.py list                                  # every tenant of $TENANT_CONFIG_TABLE, each delivery
python jobs/tenants.py list --table tenant-configs-v1 --json # another table (either shape), for scripts
python jobs/tenants.py migrate --from tenant-configs-v1 --to tenant-configs --dry-run

The logic lives in `pipeline.admin`; this file only reads options, prints and picks the exit code.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from botocore.exceptions import BotoCoreError

from pipeline import aws, logs
from pipeline.admin.listing import list_tenants
from pipeline.admin.migrate import migrate
from pipeline.admin.tables import open_table
from pipeline.cli import CONTEXT_SETTINGS, EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from pipeline.settings import ConfigError, Settings
from pipeline.tenants import TenantDirectory

AWS_ENV = "AWS_REGION, AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_DYNAMODB), AWS_PROFILE and the usual credentials"
ENVIRONMENT = f"Settings from the environment: TENANT_CONFIG_TABLE, {AWS_ENV}."


@click.group(
    context_settings=CONTEXT_SETTINGS,
    epilog=(
        f"{ENVIRONMENT} Exit codes: 0 ok; 1 an invalid delivery or a migration conflict was found (the output "
        "names it); 2 bad usage; 3 configuration: no table name, a table that does not exist or cannot be "
        "reached, or one with the wrong key schema. Run COMMAND --help for each command."
    ),
)
def main() -> None:
    """Look after the tenant table (CONTRACTS.md §3): each item is one delivery of one tenant, a CloudWatch
    Logs group or an S3 bucket in the tenant's own account.

    \b
    Table v2 (what new deployments create): hash key tenant_id, range key delivery_id, any number of
    deliveries per tenant. Table v1 (older deployments): hash key tenant_id only, one CloudWatch delivery
    per tenant, read as the delivery `cloudwatch`. Every command reads both; `migrate` copies v1 into v2."""


def _json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")(f)


def _log_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--log-level", default="WARNING", show_default=True, help="Structured log level (JSON on stderr)."
    )(f)


@contextmanager
def _configuration() -> Iterator[None]:
    """A configuration problem is one line on stderr and exit code 3, never a traceback."""
    try:
        yield
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_CONFIG)
    except BotoCoreError as exc:  # no region, no credentials, an endpoint that does not answer
        click.echo(f"error: cannot reach DynamoDB: {exc}", err=True)
        sys.exit(EXIT_CONFIG)


def _print(doc: dict[str, Any] | None, rendered: str, as_json: bool) -> None:
    click.echo(json.dumps(doc, indent=2) if as_json else rendered)


@main.command(
    "list",
    context_settings=CONTEXT_SETTINGS,
    epilog=(
        f"{ENVIRONMENT} Exit codes: 0 every delivery is valid; 1 some are invalid (each is listed with every "
        "bad field); 3 no table name, or a table that does not exist or is not a tenant table."
    ),
)
@click.option("--table", help="Tenant table, v1 or v2. [default: $TENANT_CONFIG_TABLE]")
@_json_option
@_log_option
def list_command(table: str | None, as_json: bool, log_level: str) -> None:
    """List every tenant and each of its deliveries: id, type, enabled, target (log group and region, or
    s3://bucket/prefix), desired_logs and clusters ("all" when the field is absent). A delivery that does not
    validate is listed as INVALID with the reason, naming every bad field.

    With --json, each delivery is printed as its v2 item (the §3 field names, defaults filled in) plus
    `target`."""
    logs.setup(log_level)
    settings = Settings.from_env().with_overrides(tenant_table=table)
    with _configuration():
        if not settings.tenant_table:
            raise ConfigError("no tenant table: set TENANT_CONFIG_TABLE or give --table")
        ddb = aws.client("dynamodb")
        open_table(ddb, settings.tenant_table)
        listing = list_tenants(TenantDirectory(settings.tenant_table, client=ddb))
    _print(listing.to_json(), listing.render(), as_json)
    sys.exit(EXIT_FAILED if listing.invalid else EXIT_OK)


@main.command(
    "migrate",
    context_settings=CONTEXT_SETTINGS,
    epilog=(
        f"Settings from the environment: {AWS_ENV}. Exit codes: 0 every v1 item is in the v2 table (copied "
        "now or before; with --dry-run: would be); 1 a conflict or an invalid v1 item (listed, not copied); "
        "2 bad usage; 3 a table that does not exist, or --from not a v1 / --to not a v2 tenant table."
    ),
)
@click.option("--from", "source", required=True, metavar="V1_TABLE", help="The v1 tenant table to read.")
@click.option("--to", "target", required=True, metavar="V2_TABLE", help="The v2 tenant table to write (must exist).")
@click.option("--dry-run", is_flag=True, help="Write nothing; report what would be copied, and every problem.")
@_json_option
@_log_option
def migrate_command(source: str, target: str, dry_run: bool, as_json: bool, log_level: str) -> None:
    """Copy each tenant of the v1 table V1_TABLE into the v2 table V2_TABLE, as its delivery `cloudwatch`.

    \b
    Every v1 item is validated first; one that does not validate is reported with every bad field and not
    copied. The v2 item keeps created_at/updated_at when the v1 item has them; attributes the schema does not
    define are not copied (the line names them). Nothing in V2_TABLE is ever overwritten: an item that is
    already there is `unchanged` when it is the same delivery, and a `conflict` otherwise (reported with the
    fields that differ, and left as it is). Idempotent: run it again after fixing what it reported; items
    copied before are `unchanged`. V1_TABLE is only read."""
    logs.setup(log_level)
    with _configuration():
        result = migrate(aws.client("dynamodb"), source, target, dry_run=dry_run)
    _print(result.to_json(), result.render(), as_json)
    sys.exit(EXIT_OK if result.ok else EXIT_FAILED)


if __name__ == "__main__":
    main()
