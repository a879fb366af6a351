"""Consumer S3 delivery through the consumer's own path (MessageProcessor: one ledger read per receive, none
for S3-only objects, grouped writes) against a plain boto3 get-then-put loop, on the same moto, paired.

    .venv/bin/python -m bench.ledger_bench --unique 16 --copies 2 --repeats 3 --threads 1 8

A quick measurement for bench/results/ledger_ratios.json, built at the end of issue 27's ledger work:
passes alternate (baseline, consumer) per repeat; the ratio is the median of per-repeat ratios. Messages
are S3 event bodies in receives of 10, each receive's messages processed by `threads` workers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import machine, write_result  # noqa: E402
from bench.s3_bench import TENANT, Baseline, CallCounter, clear_ledger, write_set  # noqa: E402
from devstack.provision import provision  # noqa: E402
from devstack.server import MotoServer  # noqa: E402
from pipeline.consumer.processor import MessageProcessor, consumer_deliverer  # noqa: E402
from pipeline.consumer.sqs import SqsConsumer, SqsOptions  # noqa: E402
from pipeline.delivery import ObjectRef  # noqa: E402


def body(ref: ObjectRef) -> bytes:
    record = {
        "eventSource": "aws:s3",
        "eventName": "ObjectCreated:Put",
        "s3": {"bucket": {"name": ref.bucket}, "object": {"key": ref.key, "size": ref.size, "eTag": ref.etag}},
    }
    return orjson.dumps({"Records": [record]})


class LocalQueue:
    """The part of an SQS client `SqsConsumer` calls, in memory: the bodies to deliver, received in order
    (up to what the consumer asks for) and deleted once; nothing comes back. The queue costs nothing, like
    the baseline's loop, which has none: what is compared is what the consumer does around the deliveries."""

    def __init__(self, bodies: list[bytes]) -> None:
        self._bodies = list(reversed(bodies))
        self._lock = threading.Lock()
        self.left = len(bodies)
        self.stop: Callable[[], None] = lambda: None
        self.empty = threading.Event()

    def receive_message(self, MaxNumberOfMessages: int, **_: Any) -> dict[str, Any]:
        with self._lock:
            n = min(MaxNumberOfMessages, len(self._bodies))
            taken = [self._bodies.pop() for _ in range(n)]
        if not taken:
            self.empty.wait(1.0)  # a long poll on an empty queue
        return {
            "Messages": [
                {"MessageId": str(id(b)), "ReceiptHandle": str(id(b)), "Body": b, "Attributes": {}} for b in taken
            ]
        }

    def delete_message(self, **_: Any) -> dict[str, Any]:
        with self._lock:
            self.left -= 1
            done = self.left == 0
        if done:
            self.empty.set()
            self.stop()
        return {}

    def change_message_visibility_batch(self, **_: Any) -> dict[str, Any]:
        return {"Failed": []}


def consumer_pass(processor: MessageProcessor, refs: list[ObjectRef], threads: int) -> None:
    """The real `SqsConsumer` (its receive loop, slots, workers and heartbeat) with `threads` workers, on a
    `LocalQueue` of one message per object; returns when every message is deleted."""
    queue = LocalQueue([body(r) for r in refs])
    options = SqsOptions(
        queue_url="local", workers=threads, wait_time_s=1, visibility_timeout_s=300, drain_timeout_s=60
    )
    consumer = SqsConsumer(processor, queue, options)  # type: ignore[arg-type]
    queue.stop = consumer.request_stop
    before = processor.metrics.messages.labels("retried")._value.get()
    assert consumer.run() == 0 and queue.left == 0
    retried = processor.metrics.messages.labels("retried")._value.get() - before
    if retried:
        raise RuntimeError(f"{retried} message(s) retried")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unique", type=int, default=16)
    p.add_argument("--copies", type=int, default=2)
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    args = p.parse_args(argv)
    out: dict[str, Any] = {"machine": machine(), "args": vars(args)}
    began = time.monotonic()
    with MotoServer() as server:
        local = provision(server.endpoint_url, tenants=(TENANT,))
        os.environ.update(local.env)
        local.client("s3").put_bucket_notification_configuration(
            Bucket=local.names.bucket, NotificationConfiguration={}
        )
        data = write_set(local, "typical", args.unique, args.copies, args.events, seed=7)
        out["data"] = data.info
        deliverer = consumer_deliverer(local.settings, None, None)
        processor = MessageProcessor(deliverer, bucket=local.names.bucket)
        assert deliverer.ledger is not None and deliverer.ledger._client is not None
        calls = CallCounter(deliverer.ledger._client)
        baseline = Baseline(local)
        ddb = local.client("dynamodb")
        consumer_pass(processor, data.refs[:2], 1)  # warm: STS, clients, tenant cache
        for threads in args.threads:
            ratios, ledger_per_object = [], []
            for _ in range(args.repeats):
                clear_ledger(ddb, local.names.ledger_table)
                calls.take()
                start = time.perf_counter()
                with ThreadPoolExecutor(threads) as pool:
                    list(pool.map(baseline, data.refs))
                base = len(data.refs) / (time.perf_counter() - start)
                start = time.perf_counter()
                consumer_pass(processor, data.refs, threads)
                cons = len(data.refs) / (time.perf_counter() - start)
                ledger = sum(v["calls"] for k, v in calls.take().items() if k.startswith("dynamodb:"))
                ratios.append(cons / base)
                ledger_per_object.append(ledger / len(data.refs))
            out[f"threads_{threads}"] = {
                "ratio_paired_median": round(statistics.median(ratios), 3),
                "ratios": [round(r, 3) for r in ratios],
                "ledger_calls_per_object_median": round(statistics.median(ledger_per_object), 3),
                "meets_target": statistics.median(ratios) >= 0.8,
            }
            print(threads, out[f"threads_{threads}"], flush=True)
    out["wall_s"] = round(time.monotonic() - began, 1)
    write_result(REPO / "bench" / "results" / "ledger_ratios.json", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
