"""The bad-input corpus (tests/corpus/bad_inputs.py) through both paths: the SQS consumer, fed by real
S3 notifications plus hand-made messages, and the replay CLI over the same bucket. Every bad input is
reported with a clear reason, the good data around it is delivered, and no process crashes."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from bad_inputs import (
    WRONG_TYPES_ITEM,
    CorpusObject,
    messages,
    objects,
    s3_event,
    wrong_types_object,
)
from fault_helpers import (
    FaultStack,
    consumer_process,
    delivered,
    ledger_keys,
    queue_counts,
    queue_empty,
    run_replay,
    stream_of,
    wait_for,
)

from pipeline.sinks.cloudwatch.limits import MAX_MESSAGE_BYTES

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SPLIT_RE = re.compile(r"^\[split (\d+)/(\d+)\] ", re.S)


@pytest.fixture
def corpus(stack: FaultStack) -> Iterator[list[CorpusObject]]:
    """The corpus objects in the central bucket (those S3 can hold), and the broken tenant in the table."""
    written = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    items = [*objects(written), wrong_types_object(written)]
    stack.local.client("dynamodb").put_item(TableName=stack.local.names.tenant_table, Item=WRONG_TYPES_ITEM)
    s3 = stack.local.client("s3")
    for o in items:
        if o.via_s3:
            s3.put_object(Bucket=stack.bucket, Key=o.key, Body=o.body)
    stored = {x["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket)
              for x in page.get("Contents", [])}  # fmt: skip
    assert stored == {o.key for o in items if o.via_s3}  # S3 (moto) holds every key verbatim
    yield items


def joined(events: Counter[tuple[str, int, str]]) -> Counter[tuple[str, int, str]]:
    """Events with `[split i/n]` parts put back together (CONTRACTS §5: split, never truncated)."""
    parts: dict[tuple[str, int], dict[int, str]] = {}
    out: Counter[tuple[str, int, str]] = Counter()
    for (stream, ts, msg), n in events.items():
        m = SPLIT_RE.match(msg)
        if m is None:
            out[(stream, ts, msg)] += n
            continue
        assert len(msg.encode()) + 26 <= MAX_MESSAGE_BYTES + 26  # every part fits one CloudWatch event
        parts.setdefault((stream, ts), {})[int(m.group(1))] = msg[m.end() :]
        assert n == 1
    for (stream, ts), pieces in parts.items():
        out[(stream, ts, "".join(pieces[i] for i in sorted(pieces)))] += 1
    return out


def want(items: list[CorpusObject]) -> Counter[tuple[str, int, str]]:
    return Counter((stream_of(o.key, ts), ts, msg) for o in items if o.outcome != "failed" for ts, msg in o.events)


def test_consumer_reports_every_bad_input_and_delivers_the_good_data(
    stack: FaultStack, corpus: list[CorpusObject], tmp_path: Path
) -> None:
    sqs = stack.local.client("sqs")
    for o in corpus:
        if not o.via_s3:  # S3 cannot hold it, but a notification can still name it
            sqs.send_message(
                QueueUrl=stack.local.queue_url, MessageBody=orjson.dumps(s3_event(stack.bucket, o.key)).decode()
            )
    bad_messages = messages(stack.bucket, datetime.now(UTC))
    for m in bad_messages:
        sqs.send_message(QueueUrl=stack.local.queue_url, MessageBody=m.body)
    c = consumer_process(stack, tmp_path / "consumer.log", ["--workers", "4", "--retry-delay", "0"]).wait_ready()
    try:
        wait_for(lambda: queue_empty(stack.local), 90, "the queue to drain")
        assert c.proc.poll() is None, "the consumer crashed"
        logs = c.logs()
        assert c.terminate()[0] == 0
    finally:
        c.kill()

    # Nothing was retried (every bad input is non-recoverable): nothing in the DLQ, nothing left.
    assert queue_counts(stack.local, stack.local.dlq_url) == (0, 0)
    assert not [r for r in logs if r.get("msg") == "message left for redelivery"]
    assert not [r for r in logs if r.get("level") in ("error", "critical") or "exc" in r]
    by_key = {r["object_key"]: r for r in logs if "object_key" in r and r.get("msg", "").startswith("object ")}
    for o in corpus:
        r = by_key.get(o.key)
        assert r is not None, f"{o.name}: no result logged for {o.key[:80]}"
        status = {"delivered": "delivered", "damaged": "damaged", "failed": "rejected"}[o.outcome]
        assert r["status"] == status, (o.name, r)
        assert o.reason in r["reason"], (o.name, r["reason"])
        assert r["lines_malformed"] == o.lines_malformed, o.name
        assert len(orjson.dumps(r)) < 20_000, f"{o.name}: a log line must not carry the bad input itself"
    rejected = " | ".join(r.get("reason", "") for r in logs if r.get("msg", "").startswith("message rejected"))
    rejected += " | ".join(r.get("reason", "") for r in logs if r.get("msg", "").startswith("object rejected"))
    for m in bad_messages:
        assert m.reason in rejected, m.name

    assert joined(delivered(stack.local, "acme")) == want(corpus)
    delivered_keys = {o.key for o in corpus if o.outcome != "failed"}
    assert ledger_keys(stack.local, "acme") == delivered_keys  # damaged included: resending can't help
    assert ledger_keys(stack.local, "wrongtypes") == set()


def test_replay_reports_every_bad_input_and_delivers_the_good_data(
    stack: FaultStack, corpus: list[CorpusObject], tmp_path: Path, shared_ray: str
) -> None:
    args = ("--tenant", "acme", "--tenant", "wrongtypes", "--since", "30m", "--workers", "1")
    code, doc, output = run_replay(stack, *args, report=tmp_path / "report.json")
    assert code == 1, output[-3000:]  # some objects failed; the job itself finished and wrote its report
    failed = {f["key"]: f["reason"] for f in doc["objects_failed"]}
    listed = [o for o in corpus if o.via_s3 and o.key.endswith(".json.gz")]  # a LIST by window finds these
    for o in listed:
        if o.outcome == "delivered":
            assert o.key not in failed, (o.name, failed.get(o.key))
        else:
            assert o.reason in failed.get(o.key, ""), (o.name, failed.get(o.key))
    assert {d["key"] for d in doc["objects_damaged"]} == {o.key for o in corpus if o.outcome == "damaged"}
    assert doc["lines_malformed"] == sum(o.lines_malformed for o in corpus if o.outcome != "failed")
    assert doc["events_split"] == 1
    assert len(orjson.dumps(doc)) < 200_000  # a 5 MB bad line is counted and sampled, not copied
    assert joined(delivered(stack.local, "acme")) == want(listed)
