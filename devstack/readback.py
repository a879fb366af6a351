"""Read a tenant's destinations back (a log group, a bucket), whole: for the demo, the tests and the benchmarks."""

from __future__ import annotations

from typing import Any


def read_group(logs: Any, group: str) -> dict[str, list[tuple[int, str]]]:
    """{stream: [(timestamp_ms, message), ...]} in stored order; {} when the group does not exist."""
    out: dict[str, list[tuple[int, str]]] = {}
    try:
        pages = list(logs.get_paginator("describe_log_streams").paginate(logGroupName=group))
    except logs.exceptions.ResourceNotFoundException:
        return out
    for page in pages:
        for s in page["logStreams"]:
            name = s["logStreamName"]
            events: list[tuple[int, str]] = []
            kwargs: dict[str, Any] = {"logGroupName": group, "logStreamName": name, "startFromHead": True}
            while True:
                resp = logs.get_log_events(**kwargs)
                events.extend((e["timestamp"], e["message"]) for e in resp["events"])
                token = resp.get("nextForwardToken")
                if not resp["events"] or not token or token == kwargs.get("nextToken"):
                    break
                kwargs["nextToken"] = token
            out[name] = events
    return out


def read_bucket(s3: Any, bucket: str, prefix: str = "") -> dict[str, dict[str, Any]]:
    """{key: {"size", "metadata", "content_encoding", "body"}} of every object under `prefix`."""
    out: dict[str, dict[str, Any]] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            got = s3.get_object(Bucket=bucket, Key=o["Key"])
            out[o["Key"]] = {
                "size": o["Size"],
                "metadata": got.get("Metadata", {}),
                "content_type": got.get("ContentType", ""),
                "content_encoding": got.get("ContentEncoding", ""),
                "body": got["Body"].read(),
            }
    return out
