"""`log-inventory`: a Parquet inventory of the central bucket for some tenants and a window, one row per object.

log-inventory --tenant acme --since 7d --output inventory/            # dataset dir, one partition per tenant
log-inventory --tenant acme --tenant globex --since 2024-05-01 --until 2024-05-02 \\
    --sample-fraction 0.05 --output /tmp/inventory.parquet             # one file, 5 % decoded

notebooks/volume_analysis.ipynb turns it into plots; docs/VOLUME_ANALYSIS.md explains the columns.
"""

from __future__ import annotations

from datetime import datetime

import click

from pipeline import environment, logs
from pipeline.cli import CONTEXT_SETTINGS, TimeParam, exit_on_bad_environment, log_level_option
from pipeline.inventory import InventoryOptions, build_inventory, write_inventory
from pipeline.settings import Settings
from pipeline.timespec import HELP as TIME_HELP


@click.command(
    context_settings=CONTEXT_SETTINGS,
    epilog=(
        "Settings from the environment: S3_BUCKET_NAME, DELIVERY_LEDGER_TABLE (when set, each row says whether "
        "the ledger holds the object at its ETag; otherwise `delivered` is null), AWS_REGION, AWS_ENDPOINT_URL "
        "(and AWS_ENDPOINT_URL_<SERVICE>), AWS_PROFILE. Exit codes: 0 the inventory was written; 2 bad usage; "
        "3 missing configuration or a wrong AWS environment (a bucket or table that does not exist or may not be "
        "read, no credentials, an unreachable endpoint: one line naming it, the traceback at --log-level DEBUG)."
    ),
)
@click.option("--tenant", "tenants", multiple=True, required=True, help="Tenant (namespace) to list. Repeatable.")
@click.option("--since", required=True, type=TimeParam(), help=f"Start of the window: {TIME_HELP}.")
@click.option("--until", default="now", show_default=True, type=TimeParam(), help="End of the window (exclusive).")
@click.option("--cluster", "clusters", multiple=True, help="Only these clusters. Repeatable.")
@click.option("--bucket", envvar="S3_BUCKET_NAME", help="Central bucket. [default: $S3_BUCKET_NAME]")
@click.option(
    "--output",
    "-o",
    required=True,
    metavar="PATH|s3://BUCKET/KEY",
    help="A file ending in .parquet, or a dataset directory (one tenant=<id>/ partition per tenant, each "
    "replaced as a whole, so other tenants' partitions stay); either may be an s3:// URI.",
)
@click.option(
    "--sample-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Share of objects to download and decode, recording events, uncompressed and message bytes.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Picks the sample: same seed, same objects.")
@log_level_option()
def main(
    tenants: tuple[str, ...],
    since: datetime,
    until: datetime,
    clusters: tuple[str, ...],
    bucket: str | None,
    output: str,
    sample_fraction: float,
    seed: int,
    log_level: str,
) -> None:
    """List TENANT's objects written between --since and --until (plus the replay's 5-minute slack on each
    side, so the rows are exactly what a replay of that window reads) and write one Parquet row per object."""
    logs.setup(log_level)
    if until <= since:
        raise click.BadParameter("--until must be after --since", param_hint="--until")
    settings = Settings.from_env().with_overrides(bucket=bucket)
    with exit_on_bad_environment(log_level):
        settings.require("bucket")
        environment.check(settings, bucket=True, ledger_table=True)
    opts = InventoryOptions(
        bucket=settings.bucket,
        tenants=tenants,
        since=since,
        until=until,
        clusters=clusters,
        sample_fraction=sample_fraction,
        seed=seed,
        ledger_table=settings.ledger_table,
    )
    with exit_on_bad_environment(log_level):
        inv = build_inventory(opts)
        files = write_inventory(inv, output)

    for key, reason in inv.malformed:
        click.echo(f"warning: not in the inventory, malformed key {key!r}: {reason}", err=True)
    for key, error in inv.sample_errors:
        click.echo(f"warning: sample of {key!r} failed: {error}", err=True)
    click.echo(
        f"{inv.table.num_rows} objects ({inv.list_calls} LIST calls) for {since:%Y-%m-%dT%H:%M:%SZ} → "
        f"{until:%Y-%m-%dT%H:%M:%SZ}; wrote {', '.join(str(f) for f in files)}"
    )
    for tenant, s in inv.summary().items():
        ledger = "no ledger" if s["delivered"] is None else f"{s['delivered']} delivered per the ledger"
        click.echo(
            f"  {tenant:<20} {s['objects']:>8} objects {s['bytes']:>14,} bytes  {s['sampled']} sampled, {ledger}"
        )


if __name__ == "__main__":
    main()
