"""Reading and writing reports and inventories at a local path or an `s3://bucket/key` URI.

S3 goes through smart-open with a client from `pipeline.aws`, so AWS_ENDPOINT_URL, the profile and the
pod's role apply exactly as for every other call the project makes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from pipeline import aws

S3_SCHEME = "s3://"
# Where backfills write their reports in the central bucket (`--report s3://{bucket}/reports/`): a top-level
# prefix no cluster can be named after, so the listing skips it and the replay role may write only there.
REPORTS_PREFIX = "reports/"


def is_s3(target: str | Path) -> bool:
    return str(target).startswith(S3_SCHEME)


def split_s3(uri: str) -> tuple[str, str]:
    """(bucket, key) of an s3:// URI."""
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    return bucket, key


def _transport() -> dict[str, Any]:
    return {"client": aws.client("s3")}


@contextmanager
def open_target(target: str | Path, mode: str = "rb") -> Iterator[IO[Any]]:
    """A file object for a local path (parent directories made on write) or an s3:// URI."""
    if is_s3(target):
        from smart_open import open as smart_open

        with smart_open(str(target), mode, transport_params=_transport()) as f:
            yield f
        return
    path = Path(target)
    if "w" in mode:
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, mode) as f:
        yield f


def write_bytes(target: str | Path, data: bytes) -> None:
    with open_target(target, "wb") as f:
        f.write(data)


def read_bytes(target: str | Path) -> bytes:
    with open_target(target, "rb") as f:
        data: bytes = f.read()
    return data


def list_s3(prefix_uri: str, suffix: str = "") -> list[str]:
    """Every s3:// URI under a prefix (ending in `suffix`), in key order."""
    bucket, prefix = split_s3(prefix_uri)
    s3 = aws.client("s3")
    out: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [f"{S3_SCHEME}{bucket}/{o['Key']}" for o in page.get("Contents", []) if o["Key"].endswith(suffix)]
    return out


def delete_s3(uris: list[str]) -> None:
    s3 = aws.client("s3")
    for uri in uris:
        bucket, key = split_s3(uri)
        s3.delete_object(Bucket=bucket, Key=key)
