"""A source object for the S3 sink's tests (tests/unit/test_s3_sink.py, tests/integration/test_s3_sink_local.py)."""

from __future__ import annotations

import gzip

from pipeline.keys import parse_key
from pipeline.sinks.base import SourceObject

KEY = "prod-1/umbrella/payment-service/pay-7d9f/20240620-110000-00000000-0000-4000-8000-000000000000.json.gz"
BODY = gzip.compress(b'{"message":"hello"}\n')


def source(body: bytes = BODY, key: str = KEY) -> SourceObject:
    return SourceObject("central-logs", key, "0123456789abcdef", body, parse_key(key))
