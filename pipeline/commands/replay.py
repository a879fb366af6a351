"""`log-replay`: replay a tenant's logs from the central bucket into its deliveries (CloudWatch Logs, S3), on Ray.

log-replay --tenant acme --since 6h --dry-run
ray job submit -- python jobs/replay.py --tenant acme --since 2024-01-01   # the same command, from jobs/
"""

from __future__ import annotations

import sys
from datetime import datetime

import click

from pipeline import logs
from pipeline.cli import CONTEXT_SETTINGS, TimeParam, exit_on_bad_environment
from pipeline.memory import DEFAULT_BUDGET_MIB
from pipeline.replay.job import SINKS, WORKERS_ENV, ReplayOptions, run
from pipeline.settings import Settings
from pipeline.sinks import describe_sinks
from pipeline.timespec import HELP as TIME_HELP


@click.command(
    context_settings=CONTEXT_SETTINGS,
    epilog=(
        "Settings from the environment: S3_BUCKET_NAME, TENANT_CONFIG_TABLE, DELIVERY_LEDGER_TABLE, "
        "CENTRAL_LOG_DISTRIBUTION_ROLE_ARN, REPLAY_REQUEST_TABLE (with --replay-request), AWS_REGION, "
        "AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_<SERVICE>), "
        "AWS_PROFILE. Exit codes: 0 everything deliverable was delivered; 1 some objects failed (see the "
        "report); 2 bad usage; 3 missing configuration or a wrong AWS environment (one line naming the resource "
        "and the fix; the traceback at --log-level DEBUG); 130 interrupted by SIGINT/SIGTERM after finishing the "
        "objects in flight (run again to resume from the ledger)."
    ),
)
@click.option("--tenant", "tenants", multiple=True, help="Tenant (namespace) to replay. Repeatable.")
@click.option(
    "--all-tenants",
    is_flag=True,
    help="Every enabled tenant in the tenant table (scheduled backfills). Instead of --tenant.",
)
@click.option("--since", required=True, type=TimeParam(), help=f"Start of the window: {TIME_HELP}.")
@click.option("--until", default="now", show_default=True, type=TimeParam(), help="End of the window (exclusive).")
@click.option("--cluster", "clusters", multiple=True, help="Only these clusters. Repeatable.")
@click.option("--application", "applications", multiple=True, help="Only these applications. Repeatable.")
@click.option("--pod", "pods", multiple=True, help="Only these pods. Repeatable.")
@click.option("--bucket", envvar="S3_BUCKET_NAME", help="Central bucket. [default: $S3_BUCKET_NAME]")
@click.option(
    "--sink",
    type=click.Choice(SINKS),
    default="cloudwatch",
    show_default=True,
    help="The sink for CloudWatch deliveries (S3 deliveries always write through the S3 sink, except with "
    f"null). {describe_sinks(SINKS)}.",
)
@click.option(
    "--delivery",
    "deliveries",
    multiple=True,
    metavar="ID_OR_TYPE",
    help="Only these deliveries: a delivery id (s3-archive) or a type (cloudwatch, s3). Repeatable. "
    "[default: every enabled delivery of each tenant]",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help=f"Ray workers (actors), each asking Ray for 1 CPU and --worker-memory plus 300 MiB. [default: "
    f"${WORKERS_ENV} (a RayJob sets what its cluster can grow to), else the CPUs of the cluster or machine]",
)
@click.option("--dry-run", is_flag=True, help="Print the plan (volumes, work units, 14-day limit, ledger) and stop.")
@click.option(
    "--sample",
    type=click.FloatRange(0, 1, min_open=True),
    default=1.0,
    show_default=True,
    help="With --dry-run: list only this share of the pods (chosen by a hash of the pod, so the same ones each "
    "time) and scale the totals; the plan says it is a sample. For a fleet-wide window where a full count costs "
    "a LIST per pod.",
)
@click.option("--redeliver", is_flag=True, help="Ignore the ledger and deliver everything in the window again.")
@click.option(
    "--max-events-per-second",
    type=click.FloatRange(min=0, min_open=True),
    help="Per-tenant rate limit shared by all workers, to leave the tenant's own CloudWatch quota room.",
)
@click.option(
    "--max-requests-per-second",
    type=click.FloatRange(min=0, min_open=True),
    help="Per-tenant limit on PutLogEvents calls, shared by all workers: the unit CloudWatch's per-account quota "
    "counts (1,500-5,000/s per region, shared with the tenant's own workloads). Needs a sink whose calls the "
    "job makes (cloudwatch, null).",
)
@click.option(
    "--worker-memory",
    "worker_memory_mib",
    type=click.IntRange(min=16),
    default=DEFAULT_BUDGET_MIB,
    show_default=True,
    help="MiB of decoded objects one worker holds at once (about 12x an object's gzip size); its pods wait for "
    "room beyond that. Size Ray workers for this plus about 300 MiB.",
)
@click.option(
    "--report",
    "report_path",
    metavar="PATH|s3://BUCKET/KEY",
    envvar="REPLAY_REPORT",
    help="Write the JSON report to a file or to S3; a target ending in / is a prefix, and the report is named "
    "replay-<start time>.json under it; {bucket} is the central bucket (s3://{bucket}/reports/). "
    "[default: $REPLAY_REPORT]",
)
@click.option(
    "--max-events",
    type=click.IntRange(min=1),
    help="Stop cleanly once this many events are delivered (counted as batches go out, across workers; the "
    "objects in flight then finish, so it may pass the cap by those). The report says stopped: cap, the ledger "
    "holds what was delivered, and a later run sends the rest.",
)
@click.option(
    "--replay-request",
    metavar="ID",
    help="This run is the redelivery request ID of the tenant (POST /tenants/{id}/replays, log-tenants replay "
    "start): it is marked running, its progress written to $REPLAY_REQUEST_TABLE at most every 5 s, and its end "
    "with the report's totals. Needs one --tenant.",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar. [default: on a terminal only]")
@click.option("--log-level", default="INFO", show_default=True, help="Structured log level (JSON on stderr).")
def main(
    tenants: tuple[str, ...],
    all_tenants: bool,
    since: datetime,
    until: datetime,
    clusters: tuple[str, ...],
    applications: tuple[str, ...],
    pods: tuple[str, ...],
    bucket: str | None,
    sink: str,
    deliveries: tuple[str, ...],
    workers: int | None,
    dry_run: bool,
    sample: float,
    redeliver: bool,
    max_events_per_second: float | None,
    max_requests_per_second: float | None,
    worker_memory_mib: int,
    report_path: str | None,
    max_events: int | None,
    replay_request: str | None,
    progress: bool | None,
    log_level: str,
) -> None:
    """Replay TENANT's logs written between --since and --until from the central S3 bucket into each of the
    tenant's deliveries (its own CloudWatch Logs group, S3 bucket, or both), skipping what the delivery ledger
    says each delivery already has.

    \b
    Windows: CloudWatch deliveries take the events whose own timestamp is in [since, until), and cannot take
    events older than 14 days (they are counted as events_rejected_too_old). S3 deliveries take whole objects
    whose write time (in the key) is in [since, until), with no age limit: adjacent windows cover every
    object exactly once."""
    logs.setup(log_level)
    if bool(tenants) == all_tenants:
        raise click.UsageError("give either --tenant (repeatable) or --all-tenants")
    if until <= since:
        raise click.BadParameter("--until must be after --since", param_hint="--until")
    if sample < 1 and not dry_run:
        raise click.UsageError("--sample plans from part of the window: it needs --dry-run")
    opts = ReplayOptions(
        tenants=tenants,
        since=since,
        until=until,
        clusters=clusters,
        applications=applications,
        pods=pods,
        sink=sink,
        deliveries=deliveries,
        workers=workers,
        dry_run=dry_run,
        sample=sample,
        redeliver=redeliver,
        max_events_per_second=max_events_per_second,
        max_requests_per_second=max_requests_per_second,
        worker_memory_mib=worker_memory_mib,
        report_path=report_path,
        progress=progress,
        all_tenants=all_tenants,
        max_events=max_events,
        replay_request=replay_request,
    )
    settings = Settings.from_env().with_overrides(bucket=bucket)
    with exit_on_bad_environment(log_level):
        code = run(opts, settings)
    sys.exit(code)


if __name__ == "__main__":
    main()
