"""What an S3 delivery writes when it has to decode the object (CONTRACTS.md §8): Parquet, or the lines a content
filter keeps.

- `format: parquet`: one Parquet object per source object, zstd, one row per line, with the columns of `SCHEMA`.
  Every line of the object is a row, including the events CloudWatch would refuse (over 14 days old, over 2 h
  ahead, empty messages): an S3 archive has no such limits. A line that is not JSON is a row too, with
  `malformed` true, the line itself (bad UTF-8 replaced) as its `message`, the object's LastModified as its
  `timestamp`, the source key's cluster, namespace, application and pod, and the other columns null.
- `format: original` with `include`/`exclude`: the object's own lines that the filter keeps, byte for byte, as
  gzip NDJSON (the same shape as the source, fewer lines).

In both, the filter is matched against each row's `message` (what CloudWatch would receive), so a tenant's
patterns keep the same events on every delivery type. The key is the S3 sink's (`pipeline/sinks/s3.py`);
pyarrow is imported when the first Parquet object is written, so processes that never write one never load it.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pipeline.filters import ContentFilter
from pipeline.keys import ObjectKey
from pipeline.records import DecodeStats, Row, compact_json, decode_rows

PARQUET_CONTENT_TYPE = "application/vnd.apache.parquet"
NDJSON_CONTENT_TYPE = "application/x-ndjson"
COMPRESSION = "zstd"
# The columns, in order, with their Parquet types (SCHEMA builds them; the customer template's Glue table and
# docs/CONTRACTS.md §8 list the same).
COLUMNS: tuple[tuple[str, str], ...] = (
    ("timestamp", "timestamp(ms, UTC)"),
    ("message", "string"),
    ("cluster", "string"),
    ("namespace", "string"),
    ("application", "string"),
    ("pod", "string"),
    ("container", "string"),
    ("stream", "string"),
    ("node", "string"),
    ("labels", "map<string,string>"),
    ("malformed", "boolean"),
)


def schema() -> Any:
    """The Arrow schema of a delivered Parquet object (pyarrow is imported here, not at module load)."""
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("timestamp", pa.timestamp("ms", tz="UTC"), nullable=False),
            pa.field("message", pa.string(), nullable=False),
            *(pa.field(n, pa.string()) for n in ("cluster", "namespace", "application", "pod")),
            *(pa.field(n, pa.string()) for n in ("container", "stream", "node")),
            pa.field("labels", pa.map_(pa.string(), pa.string())),
            pa.field("malformed", pa.bool_(), nullable=False),
        ]
    )


@dataclass
class Rendered:
    """What to store for one source object, and what happened to its lines."""

    body: bytes
    content_type: str
    content_encoding: str | None
    rows: int  # events written
    filtered: int  # events the content filter dropped


def _text(value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    return compact_json(value)


def _kept(rows: Iterator[Row], keep: ContentFilter | None, dropped: list[int]) -> Iterator[Row]:
    if keep is None:
        yield from rows
        return
    for row in rows:
        if keep.keeps(row.message):
            yield row
        else:
            dropped[0] += 1


def render(
    fmt: str, keep: ContentFilter | None, body: bytes, parsed: ObjectKey, fallback_ts_ms: int, stats: DecodeStats
) -> Rendered:
    """The object to store for `body` in format `fmt` ('parquet' or 'original'), keeping what `keep` keeps."""
    dropped = [0]
    rows = _kept(decode_rows(body, fallback_ts_ms, stats), keep, dropped)
    if fmt == "parquet":
        payload, n = _parquet(rows, parsed)
        return Rendered(payload, PARQUET_CONTENT_TYPE, None, n, dropped[0])
    lines = [row.raw for row in rows]
    # mtime=0: the same lines always give the same bytes, so a resend writes an identical object.
    payload = gzip.compress(b"\n".join(lines) + b"\n", compresslevel=6, mtime=0) if lines else b""
    return Rendered(payload, NDJSON_CONTENT_TYPE, "gzip", len(lines), dropped[0])


def _parquet(rows: Iterator[Row], parsed: ObjectKey) -> tuple[bytes, int]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols: dict[str, list[Any]] = {name: [] for name, _ in COLUMNS}
    keyed = {
        "cluster": parsed.cluster,
        "namespace": parsed.tenant,
        "application": parsed.application,
        "pod": parsed.pod,
    }
    for row in rows:
        rec = row.record if type(row.record) is dict else {}
        kube = rec.get("kubernetes")
        kube = kube if type(kube) is dict else {}
        cols["timestamp"].append(row.ts)
        cols["message"].append(row.message)
        # The key's values where the record has none: the key is what routed the object here.
        cols["cluster"].append(_text(rec.get("cluster_id")) or keyed["cluster"])
        cols["namespace"].append(_text(rec.get("namespace") or kube.get("pod_namespace")) or keyed["namespace"])
        cols["application"].append(_text(rec.get("application")) or keyed["application"])
        cols["pod"].append(_text(rec.get("pod_name") or kube.get("pod_name")) or keyed["pod"])
        cols["container"].append(_text(kube.get("container_name")))
        cols["stream"].append(_text(rec.get("stream")))
        cols["node"].append(_text(kube.get("pod_node_name")))
        labels = kube.get("pod_labels")
        cols["labels"].append([(str(k), _text(v)) for k, v in labels.items()] if type(labels) is dict else None)
        cols["malformed"].append(row.record is None)
    table = pa.table(cols, schema=schema())
    sink = BytesIO()
    pq.write_table(table, sink, compression=COMPRESSION)
    return sink.getvalue(), table.num_rows
