"""`log-tenants replay start|show|list|stop`: redelivery requests for operators without the API, over the same
request store and Ray cluster the API uses (pipeline/replay/service.py).

log-tenants replay start acme --since 2024-05-01T10:00Z --until 2024-05-01T16:30Z
log-tenants replay start acme --since 2024-05-01 --dry-run      # the estimate only
log-tenants replay list acme
log-tenants replay show acme rp-20240502T081500Z-1a2b3c4d
log-tenants replay stop acme rp-20240502T081500Z-1a2b3c4d
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click

from pipeline import logs
from pipeline.cli import CONTEXT_SETTINGS, TimeParam
from pipeline.exits import EXIT_CONFIG, EXIT_FAILED
from pipeline.replay.requests import Busy, iso
from pipeline.replay.service import Ended, ReplayService, Unavailable
from pipeline.settings import Settings
from pipeline.timespec import HELP as TIME_HELP

ENVIRONMENT = (
    "Settings from the environment: TENANT_CONFIG_TABLE, REPLAY_REQUEST_TABLE, S3_BUCKET_NAME, "
    "DELIVERY_LEDGER_TABLE (the estimate), RAY_ADDRESS with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or "
    "RAY_AUTH_TOKEN_PATH (the cluster the job runs on), REPLAY_MAX_WINDOW_DAYS, REPLAY_MAX_EVENTS_PER_SECOND, "
    "REPLAY_MAX_REQUESTS_PER_SECOND, AWS_REGION, AWS_ENDPOINT_URL, AWS_PROFILE."
)
EPILOG = (
    f"{ENVIRONMENT} Exit codes: 0 ok; 1 refused (a bad window or field, a disabled tenant or delivery, another "
    "replay of the tenant still pending or running, one already ended, or unknown); 3 configuration (no table, "
    "no Ray cluster, or a cluster that cannot be reached)."
)


@click.group("replay", context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
def replay() -> None:
    """Redelivery requests (CONTRACTS.md §9 "Replays"): each runs `log-replay` as a Ray job on the cluster at
    RAY_ADDRESS, and is kept in REPLAY_REQUEST_TABLE with its state, progress and report, as the API's
    /tenants/{id}/replays routes keep them."""


def _json_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of text.")(f)


def _log_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--log-level", default="WARNING", show_default=True, help="Structured log level (JSON on stderr)."
    )(f)


def _service(table: str | None) -> ReplayService:
    from pipeline.commands.tenants import _store  # the tenant table as every log-tenants command opens it

    return ReplayService.from_env(Settings.from_env(), _store(table))


@contextmanager
def _refusals() -> Iterator[None]:
    """Configuration as exit 3 (one line), a refusal as exit 1 (its reason, each bad field)."""
    from pipeline.admin.store import NotFound
    from pipeline.commands.tenants import _configuration
    from pipeline.tenants import TenantConfigError

    with _configuration():
        try:
            yield
        except Unavailable as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_CONFIG)
        except TenantConfigError as exc:
            click.echo(f"error: {exc.reason}", err=True)
            for name, problem in sorted(exc.fields.items()):
                click.echo(f"  {name}: {problem}", err=True)
            sys.exit(EXIT_FAILED)
        except (Busy, Ended, NotFound) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILED)


def render(doc: Mapping[str, Any]) -> str:
    """One line per request: id, state, window, progress, and the report's totals once it has ended."""
    p = doc["progress"]
    line = (
        f"{doc['replay_id']}  {doc['state']:<9}  {doc['since']} → {doc['until']}  "
        f"{p['objects_done']:,}/{p['objects_planned']:,} objects, {p['events_delivered']:,} events"
    )
    report = doc.get("report")
    if report:
        stopped = f", stopped by {report['stopped_by']}" if report.get("stopped_by") else ""
        failed = report.get("objects_failed")
        line += f"  report {report.get('location') or '-'} ({failed if failed is not None else '?'} failed{stopped})"
    if doc.get("error"):
        line += f"  error: {doc['error']}"
    return line


_table_option = click.option("--table", help="Tenant table (v2). [default: $TENANT_CONFIG_TABLE]")


@replay.command("start", context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@click.argument("tenant")
@click.option("--since", required=True, type=TimeParam(), help=f"Start of the window: {TIME_HELP}.")
@click.option("--until", type=TimeParam(), help="End of the window (exclusive). [default: now]")
@click.option("--delivery", "deliveries", multiple=True, help="Only this delivery id. Repeatable.")
@click.option("--application", "applications", multiple=True, help="Only this application. Repeatable.")
@click.option("--max-events", type=click.IntRange(min=1), help="Stop cleanly after this many events (stopped: cap).")
@click.option("--dry-run", is_flag=True, help="Print the estimate only; nothing is created or run.")
@_table_option
@_json_option
@_log_option
def start_command(
    tenant: str,
    since: datetime,
    until: datetime | None,
    deliveries: tuple[str, ...],
    applications: tuple[str, ...],
    max_events: int | None,
    dry_run: bool,
    table: str | None,
    as_json: bool,
    log_level: str,
) -> None:
    """Ask for TENANT's logs of a window again: checked by the API's guard rails (one replay at a time per
    tenant, a window of at most REPLAY_MAX_WINDOW_DAYS that does not reach into the future, enabled tenant and
    deliveries), estimated, stored, then submitted to the Ray cluster as a job."""
    logs.setup(log_level)
    body: dict[str, Any] = {"since": iso(since), "dry_run": dry_run}
    if until is not None:
        body["until"] = iso(until)
    if deliveries:
        body["deliveries"] = list(deliveries)
    if applications:
        body["applications"] = list(applications)
    if max_events is not None:
        body["max_events"] = max_events
    with _refusals():
        _, doc = _service(table).start(tenant, body)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    e = doc["estimate"]
    partial = "" if e["complete"] else " (listing stopped at its time limit: at least)"
    figures = f"{e['objects']:,} objects, {e['bytes'] / 1048576:,.1f} MiB to deliver{partial}"
    click.echo(f"estimate: {figures}" if dry_run else f"{doc['replay_id']}: {doc['state']}, {figures}")


@replay.command("show", context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@click.argument("tenant")
@click.argument("replay_id")
@_table_option
@_json_option
@_log_option
def show_command(tenant: str, replay_id: str, table: str | None, as_json: bool, log_level: str) -> None:
    """One request: its state (reconciled with the Ray job when it is still pending or running), progress,
    and the report's totals and location once it has ended."""
    logs.setup(log_level)
    with _refusals():
        doc = _service(table).show(tenant, replay_id)
    click.echo(json.dumps(doc, indent=2) if as_json else render(doc))


@replay.command("list", context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@click.argument("tenant")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True, help="At most this many.")
@_table_option
@_json_option
@_log_option
def list_command(tenant: str, limit: int, table: str | None, as_json: bool, log_level: str) -> None:
    """TENANT's requests, newest first."""
    logs.setup(log_level)
    with _refusals():
        docs = _service(table).list(tenant, limit)
    if as_json:
        click.echo(json.dumps({"replays": docs}, indent=2))
        return
    for doc in docs:
        click.echo(render(doc))
    if not docs:
        click.echo(f"tenant {tenant} has no replay requests")


@replay.command("stop", context_settings=CONTEXT_SETTINGS, epilog=EPILOG)
@click.argument("tenant")
@click.argument("replay_id")
@_table_option
@_json_option
@_log_option
def stop_command(tenant: str, replay_id: str, table: str | None, as_json: bool, log_level: str) -> None:
    """Ask a pending or running request to stop: the job's driver stops between objects (what it delivered
    is in the ledger; a later request sends the rest) and the request ends `stopped`, stopped_by `request`."""
    logs.setup(log_level)
    with _refusals():
        doc = _service(table).stop(tenant, replay_id)
    click.echo(json.dumps(doc, indent=2) if as_json else render(doc))
