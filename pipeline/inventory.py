"""A bucket inventory in Parquet: one row per object, for volume analysis before a backfill (issue #6).

The listing is the replay's own (`pipeline.source.listing.list_window`): clusters first, then each
`cluster/tenant/` prefix down to its pods in parallel, each pod from a StartAfter derived from the window.
So the inventory holds exactly the objects a replay of the same window would read, including the
one-batch-timeout slack on both sides (CONTRACTS.md §1).

Each row carries the key's parts, the write time (from the filename), size, ETag and, when a ledger table
is configured, whether the ledger holds the object at that ETag. A deterministic fraction of the objects
can be downloaded and decoded with the delivery decoder (`pipeline.records.decode_events`) to record
events, uncompressed bytes and the message bytes CloudWatch would ingest; the notebooks extrapolate from
that sample. Whether an object is sampled depends only on its key and the seed, so re-running a larger
window samples the same objects again plus new ones.

`notebooks/volume_analysis.ipynb` reads what this writes; `log-inventory` (`pipeline.commands.inventory`) is the CLI.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import KW_ONLY, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import aws, storage
from pipeline.ledger import Ledger
from pipeline.records import DecodeStats, decode_events
from pipeline.source.listing import ListedObject, ListingFilter, list_window
from pipeline.timespec import to_ms

# CloudWatch Logs counts 26 bytes of overhead per event on top of the UTF-8 message (CONTRACTS.md §5);
# ingestion is billed on the same uncompressed size.
CW_EVENT_OVERHEAD_BYTES = 26
METADATA_KEY = b"pipeline.inventory"
PARQUET_SUFFIXES = (".parquet", ".pq")
SAMPLE_WORKERS = 16

_TS = pa.timestamp("ms", tz="UTC")
SCHEMA = pa.schema(
    [
        pa.field("cluster", pa.string(), nullable=False),
        pa.field("tenant", pa.string(), nullable=False),
        pa.field("application", pa.string(), nullable=False),
        pa.field("pod", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        # From the filename (UTC, when Vector wrote the batch); LastModified when the filename has none.
        pa.field("write_time", _TS, nullable=False),
        pa.field("last_modified", _TS, nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("etag", pa.string(), nullable=False),
        # True/False from the delivery ledger at this ETag; null when no ledger was consulted.
        pa.field("delivered", pa.bool_()),
        pa.field("sampled", pa.bool_(), nullable=False),
        # The sample columns are null for objects that were not sampled.
        pa.field("events", pa.int64()),
        pa.field("bytes_uncompressed", pa.int64()),
        pa.field("message_bytes", pa.int64()),  # UTF-8 bytes of the delivered messages
        pa.field("lines_malformed", pa.int64()),
        pa.field("damaged", pa.string()),  # why the body could not be read to the end, if it could not
    ]
)
SAMPLE_COLUMNS = ("events", "bytes_uncompressed", "message_bytes", "lines_malformed", "damaged")


@dataclass(frozen=True)
class InventoryOptions(ListingFilter):
    """What to inventory: the window's listing filter (tenants, since, until, clusters, applications, pods, slack:
    one declaration, `ListingFilter`'s), then, by keyword, where and how."""

    _: KW_ONLY
    bucket: str
    sample_fraction: float = 0.0
    seed: int = 0
    ledger_table: str = ""  # empty: no ledger lookup, `delivered` is null
    list_workers: int = 16
    sample_workers: int = SAMPLE_WORKERS

    def __post_init__(self) -> None:
        if not self.tenants:
            raise ValueError("at least one tenant is needed")
        if not 0.0 <= self.sample_fraction <= 1.0:
            raise ValueError("sample_fraction must be within [0, 1]")
        if self.until <= self.since:
            raise ValueError("until must be after since")


@dataclass(frozen=True)
class SampleResult:
    events: int
    bytes_uncompressed: int
    message_bytes: int
    lines_malformed: int
    damaged: str | None


@dataclass
class Inventory:
    """What one build found: the rows, plus what the listing could not use."""

    table: pa.Table
    options: InventoryOptions
    malformed: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) from the listing
    sample_errors: list[tuple[str, str]] = field(default_factory=list)  # (key, error) of failed sample GETs
    list_calls: int = 0
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def metadata(self) -> dict[str, Any]:
        o = self.options
        return {
            "bucket": o.bucket,
            "tenants": list(o.tenants),
            "clusters": list(o.clusters),
            "applications": list(o.applications),  # the filter's: empty, every one
            "pods": list(o.pods),
            "since": o.since.isoformat(),
            "until": o.until.isoformat(),
            "slack_s": o.slack.total_seconds(),
            "sample_fraction": o.sample_fraction,
            "seed": o.seed,
            "ledger_table": o.ledger_table,
            "list_calls": self.list_calls,
            "objects": self.table.num_rows,
            "malformed_keys": len(self.malformed),
            "sample_errors": len(self.sample_errors),
            "created_at": self.created_at.isoformat(),
        }

    def summary(self) -> dict[str, Any]:
        """Totals per tenant, for the CLI's stdout."""
        t = self.table
        out: dict[str, Any] = {}
        for tenant in self.options.tenants:
            rows = t.filter(pc.equal(t["tenant"], tenant))
            delivered = rows["delivered"]
            out[tenant] = {
                "objects": rows.num_rows,
                "bytes": int(pc.sum(rows["size"]).as_py() or 0),
                "sampled": int(pc.sum(rows["sampled"].cast(pa.int64())).as_py() or 0),
                "delivered": None
                if delivered.null_count == rows.num_rows and rows.num_rows
                else int(pc.sum(delivered.cast(pa.int64())).as_py() or 0),
            }
        return out


def is_sampled(key: str, fraction: float, seed: int) -> bool:
    """Whether `key` is in the sample: a pure function of key and seed, stable across runs and listings."""
    if fraction <= 0.0:
        return False
    if fraction >= 1.0:
        return True
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < fraction * 2**64


def sample_object(s3: Any, bucket: str, obj: ListedObject) -> SampleResult:
    """Download and decode one object as delivery would, counting what it holds."""
    stats = DecodeStats(key=obj.key)
    body = s3.get_object(Bucket=bucket, Key=obj.key)["Body"]
    message_bytes = 0
    try:
        for _, message in decode_events(body, to_ms(obj.last_modified), stats):
            message_bytes += len(message.encode("utf-8", "surrogatepass"))
    finally:
        body.close()
    return SampleResult(stats.events_decoded, stats.bytes_decoded, message_bytes, stats.lines_malformed, stats.damaged)


def build_inventory(
    opts: InventoryOptions,
    s3: Any | None = None,
    ledger: Ledger | None = None,
    on_sampled: Callable[[str], None] | None = None,
) -> Inventory:
    """List the window, look the objects up in the ledger, sample a fraction; the rows in key order."""
    s3 = s3 if s3 is not None else aws.client("s3")
    if ledger is None and opts.ledger_table:
        ledger = Ledger(opts.ledger_table)
    listing = list_window(s3, opts.bucket, opts, max_workers=opts.list_workers)
    objects = sorted(listing.objects, key=lambda o: o.key)

    delivered = _delivered(ledger, objects, opts.tenants) if ledger is not None else None
    samples, errors = _sample(s3, opts, objects, on_sampled)
    table = _table(objects, delivered, samples)
    return Inventory(table, opts, list(listing.malformed), errors, listing.list_calls)


def _delivered(ledger: Ledger, objects: Sequence[ListedObject], tenants: Iterable[str]) -> set[str]:
    found: set[str] = set()
    for tenant in tenants:
        # Delivered means: to at least one of the tenant's deliveries, at this ETag.
        found |= set(ledger.delivered_many(tenant, [(o.key, o.etag) for o in objects if o.parsed.tenant == tenant]))
    return found


def _sample(
    s3: Any, opts: InventoryOptions, objects: Sequence[ListedObject], on_sampled: Callable[[str], None] | None
) -> tuple[dict[str, SampleResult], list[tuple[str, str]]]:
    chosen = [o for o in objects if is_sampled(o.key, opts.sample_fraction, opts.seed)]
    results: dict[str, SampleResult] = {}
    errors: list[tuple[str, str]] = []
    if not chosen:
        return results, errors

    def one(o: ListedObject) -> tuple[str, SampleResult | None, str]:
        try:
            return o.key, sample_object(s3, opts.bucket, o), ""
        except Exception as exc:  # one unreadable object must not lose the whole inventory
            return o.key, None, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max_workers=max(1, opts.sample_workers), thread_name_prefix="sample") as pool:
        for key, result, error in pool.map(one, chosen):
            if result is None:
                errors.append((key, error))
            else:
                results[key] = result
            if on_sampled:
                on_sampled(key)
    return results, errors


def _table(objects: Sequence[ListedObject], delivered: set[str] | None, samples: dict[str, SampleResult]) -> pa.Table:
    cols: dict[str, list[Any]] = {name: [] for name in SCHEMA.names}
    for o in objects:
        p = o.parsed
        cols["cluster"].append(p.cluster)
        cols["tenant"].append(p.tenant)
        cols["application"].append(p.application)
        cols["pod"].append(p.pod)
        cols["key"].append(o.key)
        cols["write_time"].append(p.write_time or o.last_modified)
        cols["last_modified"].append(o.last_modified)
        cols["size"].append(o.size)
        cols["etag"].append(o.etag)
        cols["delivered"].append(None if delivered is None else o.key in delivered)
        s = samples.get(o.key)
        cols["sampled"].append(s is not None)
        for name in SAMPLE_COLUMNS:
            cols[name].append(getattr(s, name) if s is not None else None)
    return pa.Table.from_pydict(cols, schema=SCHEMA)


# ---------------------------------------------------------------------------------------------------------
# Writing and reading


def is_single_file(path: Path) -> bool:
    return path.suffix.lower() in PARQUET_SUFFIXES


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return bytes(sink.getvalue())


def _write_s3(table: pa.Table, inv: Inventory, uri: str) -> list[str]:
    if uri.endswith(".parquet"):
        storage.write_bytes(uri, _parquet_bytes(table))
        return [uri]
    prefix = uri.rstrip("/") + "/"
    written = []
    for tenant in inv.options.tenants:
        part = f"{prefix}tenant={tenant}/"
        storage.delete_s3(storage.list_s3(part, ".parquet"))
        target = f"{part}part-0.parquet"
        storage.write_bytes(target, _parquet_bytes(table.filter(pc.equal(table["tenant"], tenant))))
        written.append(target)
    return written


def _files(path: str | Path) -> list[str | Path]:
    """The Parquet files of a single-file inventory or of a dataset (directory or s3:// prefix)."""
    if storage.is_s3(path):
        uri = str(path)
        if uri.endswith(".parquet"):
            return [uri]
        return [u for u in storage.list_s3(uri.rstrip("/") + "/", ".parquet") if "/tenant=" in u]
    path = Path(path)
    return sorted(path.glob("tenant=*/*.parquet")) if path.is_dir() else [path]


def _read_file(f: str | Path) -> pq.ParquetFile:
    return pq.ParquetFile(pa.BufferReader(storage.read_bytes(f)) if storage.is_s3(f) else f)


def write_inventory(inv: Inventory, path: str | Path) -> list[Any]:
    """Write `path.parquet` as one file, or any other path as a dataset directory partitioned by tenant;
    either may be an s3:// URI (a dataset is then a prefix).

    In a dataset directory each tenant's partition (`tenant=<id>/`) is replaced as a whole, so an
    inventory of one tenant can be refreshed without touching the others. The build's parameters are
    kept in the Parquet schema metadata of every file. Returns the files written.
    """
    table = inv.table.replace_schema_metadata({METADATA_KEY: json.dumps(inv.metadata).encode()})
    if storage.is_s3(path):
        return _write_s3(table, inv, str(path))
    path = Path(path)
    if is_single_file(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        return [path]
    written: list[Path] = []
    path.mkdir(parents=True, exist_ok=True)
    # Write a partition even for a tenant with no objects: an empty partition says "listed, found none",
    # and replaces a stale one from an earlier build.
    for tenant in inv.options.tenants:
        part = path / f"tenant={tenant}"
        part.mkdir(exist_ok=True)
        for old in part.glob("*.parquet"):
            old.unlink()
        target = part / "part-0.parquet"
        pq.write_table(table.filter(pc.equal(table["tenant"], tenant)), target)
        written.append(target)
    return written


def read_inventory(path: str | Path) -> pa.Table:
    """Read a single-file inventory or a dataset (a directory or an s3:// prefix), with the columns of SCHEMA,
    in key order."""
    if not storage.is_s3(path) and not Path(path).is_dir():
        return pq.read_table(path, schema=SCHEMA).sort_by("key")
    tables = [_read_file(f).read().cast(SCHEMA) for f in _files(path)]
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    return table.sort_by("key")


def read_metadata(path: str | Path) -> list[dict[str, Any]]:
    """The build parameters stored with the inventory: one dict per file (one per tenant in a dataset)."""
    out = []
    for f in _files(path):
        meta = _read_file(f).schema_arrow.metadata or {}
        if METADATA_KEY in meta:
            out.append(json.loads(meta[METADATA_KEY]))
    return out


__all__ = [
    "CW_EVENT_OVERHEAD_BYTES",
    "SCHEMA",
    "Inventory",
    "InventoryOptions",
    "SampleResult",
    "build_inventory",
    "is_sampled",
    "read_inventory",
    "read_metadata",
    "sample_object",
    "write_inventory",
]
