"""`log-tenants status [TENANT...]`: one line per delivery, worst first, for an operator's morning look.

The same figures as the API's `GET /tenants/{id}/status` (`pipeline.status.tenant_status`, CONTRACTS.md §9).
Registered on the `log-tenants` group by `pipeline.commands.tenants`, whose helpers it reuses.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from pipeline import aws, logs
from pipeline.admin import text
from pipeline.cli import CONTEXT_SETTINGS
from pipeline.exits import EXIT_FAILED, EXIT_OK
from pipeline.settings import ConfigError, Settings
from pipeline.status import State, StatusTable, tenant_status, worst_first


def _lag(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _row(s: dict[str, Any]) -> tuple[str, ...]:
    h = s["last_hour"]
    e = s["last_error"]
    return (
        s["state"],
        f"{s['tenant_id']}/{s['delivery_id']}",
        _lag(s["lag_seconds"]),
        s["newest_object_time"] or "-",
        f"{h['objects']}/{h['events']}/{h['bytes']}",
        f"{h['events_rejected']}/{h['objects_failed']}",
        f"{e['code']} at {e['at']}: {e['message']}"[:160] if e else "-",
    )


HEADERS = ("STATE", "TENANT/DELIVERY", "LAG", "NEWEST OBJECT", "1H OBJ/EVENTS/BYTES", "1H REJ/FAILED", "LAST ERROR")


@click.command(
    "status",
    context_settings=CONTEXT_SETTINGS,
    epilog=(
        "Settings from the environment: TENANT_CONFIG_TABLE, DELIVERY_STATUS_TABLE, AWS_REGION, AWS_ENDPOINT_URL "
        "and the usual credentials. Exit codes: 0 shown, nothing failing; 1 an unknown tenant, or a delivery is "
        "failing; 3 configuration (no table name, a table that cannot be reached)."
    ),
)
@click.argument("tenants", nargs=-1)
@click.option("--table", help="Tenant table (v2). [default: $TENANT_CONFIG_TABLE]")
@click.option("--status-table", help="The status table. [default: $DELIVERY_STATUS_TABLE]")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@click.option("--log-level", default="WARNING", show_default=True, help="Structured log level (JSON on stderr).")
def status_command(
    tenants: tuple[str, ...], table: str | None, status_table: str | None, as_json: bool, log_level: str
) -> None:
    """Each delivery's status (of TENANT..., default every tenant): state (failing, backing-off, degraded,
    healthy, disabled, in that order), lag (newest object seen for it minus newest delivered), the newest
    object delivered, the last hour's counts and the last error with what to do about it (in --json).

    \b
    The rules of each state are in docs/CONTRACTS.md §9; the RUNBOOK says how to read a line."""
    from pipeline.commands.tenants import _changes, _store  # the group's own helpers (it registers this)

    logs.setup(log_level)
    now = time.time()
    statuses: list[dict[str, Any]] = []
    with _changes(as_json):
        store = _store(table)
        name = status_table or Settings.from_env().status_table
        if not name:
            raise ConfigError("no status table: set DELIVERY_STATUS_TABLE or give --status-table")
        st = StatusTable(name, aws.client("dynamodb"))
        for tenant_id in tenants or store.tenant_ids():
            doc = tenant_status(store, st, tenant_id, now)
            statuses += [{"tenant_id": tenant_id, **s} for s in doc["deliveries"]]
    ordered = worst_first(statuses)
    if as_json:
        click.echo(json.dumps({"deliveries": ordered}, indent=2))
    else:
        click.echo(text.table(HEADERS, [_row(s) for s in ordered]))
    sys.exit(EXIT_FAILED if any(s["state"] == State.FAILING for s in ordered) else EXIT_OK)
