"""The bad-input corpus (issue #8): objects, keys, queue messages and a tenant config that a real bucket,
queue and table will sooner or later hold. Each entry says what delivery must make of it.

Builders, not binary files: a 5 MB line and a truncated gzip are cheaper to build than to store, and the
expectations come from the same place as the bodies. The fault tests put the objects in the central
bucket (so S3 notifications reach the consumer as in production), send the messages to the queue, and
replay the same bucket.
"""

from __future__ import annotations

import gzip
import random
import zlib
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote_plus

import orjson

from pipeline.keys import format_filename
from pipeline.records import vector_record

CLUSTER = "prod-1"
TENANT = "acme"
APP = "payment-service"
FIVE_MB = 5 * 1024 * 1024


@dataclass
class CorpusObject:
    name: str
    key: str
    body: bytes
    outcome: str  # delivered | damaged | failed
    reason: str = ""  # a substring the reported reason must hold ("" for delivered)
    events: list[tuple[int, str]] = field(default_factory=list)  # what must arrive (stream from the key)
    lines_malformed: int = 0
    via_s3: bool = True  # False: S3 cannot hold the key as given; only a notification names it


@dataclass
class CorpusMessage:
    name: str
    body: str
    reason: str  # the rejection reason must hold this


def _rec(pod: str, ms: int, message: str) -> bytes:
    ts = datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}000000Z"
    return orjson.dumps(vector_record(message, ts, CLUSTER, TENANT, APP, pod))


def _key(pod: str, written: datetime, uid: str) -> str:
    return f"{CLUSTER}/{TENANT}/{APP}/{pod}/{format_filename(written, uid)}"


def objects(written: datetime, seed: int = 0) -> list[CorpusObject]:
    """Every bad object, written at `written` (events a few seconds before), plus good lines around them."""
    rng = random.Random(seed)
    base = int((written - timedelta(seconds=30)).timestamp() * 1000)
    out: list[CorpusObject] = []

    def good(pod: str, n: int, start: int = 0) -> tuple[list[bytes], list[tuple[int, str]]]:
        evs = [(base + start + i, f"{pod} good line {start + i}") for i in range(n)]
        return [_rec(pod, ms, m) for ms, m in evs], evs

    # Truncated gzip: the complete lines before the cut are delivered; the object is reported damaged.
    lines, evs = good("truncated", 400)
    full = gzip.compress(b"\n".join(lines) + b"\n")
    cut = full[: len(full) // 2]
    complete = zlib.decompressobj(31).decompress(cut).count(b"\n")  # the lines a reader can finish
    out.append(
        CorpusObject(
            "truncated gzip", _key("truncated", written, "t"), cut, "damaged", "truncated gzip", evs[:complete]
        )
    )

    out.append(CorpusObject("zero-byte object", _key("zero-byte", written, "z"), b"", "delivered"))

    lines, evs = good("plain-body", 5)
    out.append(
        CorpusObject(
            "non-gzip body with a .gz name",
            _key("plain-body", written, "p"),
            b"\n".join(lines) + b"\n",
            "delivered",
            events=evs,
        )
    )

    lines, evs = good("json-array", 5)
    out.append(
        CorpusObject(
            "JSON array body",
            _key("json-array", written, "a"),
            gzip.compress(b"[" + b",".join(lines) + b"]"),
            "delivered",
            events=evs,
        )
    )

    lines, evs = good("garbage", 6)
    mixed = [
        lines[0],
        b"this is not json",
        lines[1],
        b'{"message": "cut',
        lines[2],
        b"\x00\x01 binary",
        *lines[3:],
        b"}{",
    ]
    out.append(
        CorpusObject(
            "NDJSON with garbage lines",
            _key("garbage", written, "g"),
            gzip.compress(b"\n".join(mixed) + b"\n"),
            "delivered",
            events=evs,
            lines_malformed=4,
        )
    )

    # 5 MB lines: one valid record whose message is 5 MiB (split into marked parts, nothing lost), and one
    # 5 MiB line of garbage (counted as one malformed line, its sample bounded).
    # Random bytes mapped onto the alphabet: 50 times cheaper than 5 million `rng.choice` calls (1.2 s of CPU
    # each time the corpus is built), and as incompressible.
    alphabet = b"abcdefghij klmnop"
    big_msg = rng.randbytes(FIVE_MB).translate(bytes(alphabet[b % len(alphabet)] for b in range(256))).decode()
    lines, evs = good("huge-lines", 4)
    big_ms = base + 100
    body = b"\n".join([lines[0], _rec("huge-lines", big_ms, big_msg), lines[1], b"x" * FIVE_MB, *lines[2:]]) + b"\n"
    out.append(
        CorpusObject(
            "5 MB lines",
            _key("huge-lines", written, "h"),
            gzip.compress(body),
            "delivered",
            events=[*evs, (big_ms, big_msg)],
            lines_malformed=1,
        )
    )

    # Invalid UTF-8 inside a JSON string: delivered with U+FFFD in place of the bad bytes.
    lines, evs = good("bad-utf8", 3)
    bad = _rec("bad-utf8", base + 50, "caf\u0000 au lait").replace(b"\\u0000", b"\xe9\xff")
    out.append(
        CorpusObject(
            "invalid UTF-8",
            _key("bad-utf8", written, "u"),
            gzip.compress(b"\n".join([lines[0], bad, *lines[1:]]) + b"\n"),
            "delivered",
            events=[*evs, (base + 50, "caf\ufffd\ufffd au lait")],
        )
    )

    # Keys the layout rejects: reported with the reason, never fetched, never retried. S3 keys are at most
    # 1,024 bytes, so the 1,000-character pod name leaves no room for a timestamped filename: it is only
    # ever seen through a notification (a LIST by time window cannot place it, see keys.listing_bounds).
    body = gzip.compress(b"\n".join(good("x", 2)[0]) + b"\n")
    name = format_filename(written, "k")
    out += [
        CorpusObject(
            "key with a .. segment", f"{CLUSTER}/{TENANT}/../pod-1/{name}", body, "failed", "'..' segment", via_s3=False
        ),
        CorpusObject("key with %2F", f"{CLUSTER}/{TENANT}/{APP}/pod%2Fescaped/{name}", body, "failed", "pod segment"),
        CorpusObject(
            "key with spaces", f"{CLUSTER}/{TENANT}/{APP}/pod with spaces/{name}", body, "failed", "pod segment"
        ),
        CorpusObject("key with +", f"{CLUSTER}/{TENANT}/{APP}/pod+plus/{name}", body, "failed", "pod segment"),
        CorpusObject(
            "1,000-character pod name", f"{CLUSTER}/{TENANT}/a/{'p' * 1000}/x.gz", body, "failed", "pod segment"
        ),
    ]
    return out


def s3_event(bucket: str, key: str, name: str = "ObjectCreated:Put") -> dict[str, Any]:
    return {
        "Records": [
            {
                "eventSource": "aws:s3",
                "eventName": name,
                "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key), "size": 1}},
            }
        ]
    }


def messages(bucket: str, written: datetime) -> list[CorpusMessage]:
    gone = _key("deleted-pod", written, "gone")
    return [
        CorpusMessage("not JSON", "this is not json {", "message body is not JSON"),
        CorpusMessage("truncated JSON", '{"Type": "Notification", "Message": "{\\"Rec', "message body is not JSON"),
        CorpusMessage("JSON but not an object", "[1, 2, 3]", "not an object"),
        CorpusMessage(
            "SNS envelope around garbage",
            orjson.dumps({"Type": "Notification", "Message": "<xml/>"}).decode(),
            "SNS Message is not JSON",
        ),
        CorpusMessage(
            "S3 event for a deleted object", orjson.dumps(s3_event(bucket, gone)).decode(), "no longer exists"
        ),
    ]


DELETED_KEY_POD = "deleted-pod"

# A tenant whose one delivery (a v2 item) has the wrong types (DynamoDB attribute values as stored): a number
# for a region, a string that is not a boolean, a number for a list. The validator names every bad field.
WRONG_TYPES_TENANT = "wrongtypes"
WRONG_TYPES_ITEM: dict[str, Any] = {
    "tenant_id": {"S": WRONG_TYPES_TENANT},
    "delivery_id": {"S": "cloudwatch"},
    "type": {"S": "cloudwatch"},
    "log_distribution_role_arn": {"S": "arn:aws:iam::444444444444:role/CustomerLogDistribution-wrongtypes"},
    "log_group_name": {"S": "/logs/wrongtypes"},
    "target_region": {"N": "5"},
    "enabled": {"S": "maybe"},
    "desired_logs": {"N": "7"},
}
WRONG_TYPES_REASON = (
    "delivery 'cloudwatch': desired_logs: must be a list of names; enabled: must be a boolean, got str; "
    "target_region: must be a non-empty string"
)


def wrong_types_object(written: datetime) -> CorpusObject:
    key = f"{CLUSTER}/{WRONG_TYPES_TENANT}/{APP}/pod-1/{format_filename(written, 'w')}"
    body = gzip.compress(orjson.dumps({"message": "for a tenant with a broken config"}) + b"\n")
    return CorpusObject("tenant config with wrong types", key, body, "failed", WRONG_TYPES_REASON)
