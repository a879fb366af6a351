"""`python -m devstack generate`: write synthetic Vector-format log objects into the central bucket, or print
raw records for a real Vector.

A thin CLI over `devstack.generator`; see that module for the formats and the manifest. From the repository root:

    python -m devstack generate --tenant acme --tenant globex --apps 3 --since 6h --objects-per-pod 10
    python -m devstack generate --damaged --manifest /tmp/manifest.json
    python -m devstack generate --stdout | vector --config collector/vector/vector-local-test.yaml
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime

import click
import orjson

from devstack import generator as gen
from devstack.provision import SAMPLE_TENANTS


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option(
    "--bucket",
    default=lambda: os.environ.get("S3_BUCKET_NAME", ""),
    show_default="$S3_BUCKET_NAME",
    help="Central bucket to write into. Not needed with --stdout.",
)
@click.option(
    "--tenant",
    "tenants",
    multiple=True,
    help="Tenant id (Kubernetes namespace, the key's second segment). Repeatable. "
    f"Default: the local sample tenants ({', '.join(t.tenant_id for t in SAMPLE_TENANTS)}).",
)
@click.option(
    "--cluster", "clusters", multiple=True, help="Cluster id (the key's first segment). Repeatable. Default: prod-1."
)
@click.option(
    "--apps",
    "app_count",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Number of applications per tenant, named from a built-in list (payment-service, frontend, …). "
    "Ignored when --app is given.",
)
@click.option("--app", "apps", multiple=True, help="Application name. Repeatable. Overrides --apps.")
@click.option("--pods-per-app", type=click.IntRange(min=1), default=2, show_default=True, help="Pods per application.")
@click.option(
    "--since",
    default="1h",
    show_default=True,
    help="Start of the time range: ISO 8601 (2024-01-01, 2024-01-01T06:00:00Z), 'now', "
    "or an age such as 90s, 30m, 6h, 7d, 2w. No event is older than this.",
)
@click.option(
    "--until",
    default="now",
    show_default=True,
    help="End of the time range, same forms as --since. No object is written (named) later than this.",
)
@click.option(
    "--objects-per-pod",
    type=click.IntRange(min=0),
    default=4,
    show_default=True,
    help="Batches (objects) per pod, spread evenly over the range.",
)
@click.option(
    "--events-per-object",
    type=click.IntRange(min=0),
    default=50,
    show_default=True,
    help="Records per object. Each is at most 300 s older than the object's write time.",
)
@click.option(
    "--message-bytes",
    type=click.IntRange(min=1),
    default=gen.GeneratorConfig.message_bytes,
    show_default=True,
    help="Approximate mean message size in UTF-8 bytes, over all message kinds (stack traces are 2–8 KiB "
    "regardless, the others make up for them; short templates set a floor of ~150 bytes).",
)
@click.option(
    "--max-message-bytes",
    type=click.IntRange(min=1),
    default=gen.GeneratorConfig.max_message_bytes,
    show_default=True,
    help="Hard cap on one message's size.",
)
@click.option(
    "--epoch-fraction",
    type=click.FloatRange(0.0, 1.0),
    default=gen.GeneratorConfig.epoch_fraction,
    show_default=True,
    help="Share of records whose timestamp is an epoch number (seconds or milliseconds) instead of RFC 3339.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed: same options, same bytes.")
@click.option(
    "--damaged",
    is_flag=True,
    help="Also write one damaged object of each kind: " + ", ".join(k.value for k in gen.DamageKind) + ".",
)
@click.option(
    "--stdout",
    "to_stdout",
    is_flag=True,
    help="Print the records as NDJSON lines to stdout instead of writing S3 (to pipe into a real Vector). "
    "The summary then goes to stderr.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=64),
    default=32,
    show_default=True,
    help="Parallel S3 writes (one shared client with a 64-connection pool).",
)
@click.option(
    "--manifest",
    "manifest_path",
    type=click.Path(dir_okay=False, writable=True),
    help="Also write the full manifest (every key, size, ETag and expected event) as JSON to this file.",
)
@click.option(
    "--counts-only",
    is_flag=True,
    help="Keep only per-object counts in the manifest, not the expected events (large benchmark data sets).",
)
def main(
    bucket: str,
    tenants: tuple[str, ...],
    clusters: tuple[str, ...],
    app_count: int,
    apps: tuple[str, ...],
    pods_per_app: int,
    since: str,
    until: str,
    objects_per_pod: int,
    events_per_object: int,
    message_bytes: int,
    max_message_bytes: int,
    epoch_fraction: float,
    seed: int,
    damaged: bool,
    to_stdout: bool,
    workers: int,
    manifest_path: str | None,
    counts_only: bool,
) -> None:
    """Generate synthetic multi-tenant Kubernetes logs exactly as the Vector collector writes them.

    Objects go to {cluster}/{tenant}/{application}/{pod}/{YYYYMMDD-HHMMSS}-{uuid}.json.gz as gzipped NDJSON.
    AWS clients honour AWS_ENDPOINT_URL, so the same command fills the local stack or a real bucket.
    A JSON summary is printed at the end.
    """
    now = datetime.now(UTC)
    try:
        cfg = gen.GeneratorConfig(
            since=gen.utc_time(since, now),
            until=gen.utc_time(until, now),
            tenants=tenants or tuple(t.tenant_id for t in SAMPLE_TENANTS),
            clusters=clusters or ("prod-1",),
            applications=apps or gen.app_names(app_count),
            pods_per_app=pods_per_app,
            objects_per_pod=objects_per_pod,
            events_per_object=events_per_object,
            message_bytes=message_bytes,
            max_message_bytes=max_message_bytes,
            epoch_fraction=epoch_fraction,
            seed=seed,
            damaged=tuple(gen.DamageKind) if damaged else (),
            keep_events=not counts_only,
        )
        gen.plan(cfg)  # validates every key part (tenant ids, names) before anything is written
    except ValueError as e:  # InvalidKeyError is a ValueError too
        raise click.UsageError(str(e)) from e

    if to_stdout:
        if damaged:
            raise click.UsageError("--damaged makes objects, not lines; it cannot be used with --stdout")
        out = sys.stdout.buffer
        lines = 0
        for line in gen.iter_lines(cfg):
            out.write(line + b"\n")
            lines += 1
        out.flush()
        click.echo(orjson.dumps({"lines": lines, "seed": seed}).decode(), err=True)
        return

    if not bucket:
        raise click.UsageError("no bucket: pass --bucket or set S3_BUCKET_NAME")
    manifest = gen.write_dataset(cfg, bucket, workers=workers)
    if manifest_path:
        manifest.dump(manifest_path)
    click.echo(orjson.dumps(manifest.summary(), option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
