"""Issue 27's speed ratios, each paired and interleaved in one run (medians of per-repeat ratios):

    .venv/bin/python -m bench.ledger_bench                       # all three (~6 min on a quiet machine)
    .venv/bin/python -m bench.ledger_bench --only s3 cloudwatch --copies 4 --repeats 3   # quicker

- consumer, S3 (tenant hooli): the real `SqsConsumer` (receive loop, slots, workers, heartbeat, one ledger
  read per receive, S3 records deferred and written in groups, `DeferredRecords`) on an in-memory queue
  (`LocalQueue`: a queue that costs nothing, like the loop it is compared with), against s3_bench's
  `Baseline` (plain boto3 get-then-put) on a pool of as many threads. Typical objects (1,000 events, ~86 KB).
- consumer, CloudWatch (tenant acme): the same consumer, against `GetDecodePut` (plain boto3 GetObject, the
  project's decoder, full batches per stream, PutLogEvents) on as many threads.
- replay with 40 ms per PutLogEvents: batching_bench's replay worker process on its 2,000-small-object set,
  every PutLogEvents answered by the fault proxy after 40 ms (`Answer`), against the same worker's null sink.

Beside the release (bench.baseline.RELEASE, `--release ''` to skip): the whole measurement runs again in child
processes, alternately with this checkout's `pipeline` and the release's (`main_beside`, ABBA, `--pairs`); the
release's consumer is its own (`MessageProcessor.process` per message: a GetItem and an UpdateItem per object).
Each side's ratios to the plain loops and its ledger calls per object are compared pair by pair
(`RELEASE_METRICS`); a drop beyond bench.baseline.NOISE fails the run (`meets_release_target`).

Targets (issue 27): consumer >= 0.8 on 1 and 8 threads, replay >= 0.7. Results: bench/results/
ledger_ratios.json (every pass), and the `ratios` of bench/results/ledger.json with their meets_* flags (the
call counts there come from tests/faults/test_ledger_calls.py). Exits 1 when a target is missed. Also
recorded: ledger calls per object (botocore's count on the consumer's ledger client) and this process's CPU,
consumer over plain loop, which the machine's load disturbs much less than the wall clock.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import pipeline  # noqa: E402
from bench import batching_bench as batching  # noqa: E402
from bench.baseline import add_release_options, from_tree, is_child, release_beside  # noqa: E402
from bench.cloudwatch_bench import full_batches  # noqa: E402
from bench.machine import machine, write_result  # noqa: E402
from bench.s3_bench import TENANT, Baseline, CallCounter, clear_ledger, write_set  # noqa: E402
from devstack.faults import Answer, FaultProxy, Rule  # noqa: E402
from devstack.provision import SAMPLE_TENANTS, LocalEnvironment, SampleTenant, provision  # noqa: E402
from devstack.server import MotoServer  # noqa: E402
from pipeline import records  # noqa: E402
from pipeline.consumer.processor import MessageProcessor, consumer_retry  # noqa: E402
from pipeline.consumer.sqs import SqsConsumer, SqsOptions  # noqa: E402
from pipeline.settings import Settings  # noqa: E402

# The tree whose `pipeline` this process runs: this checkout, or the release's beside it (`main_beside`). The
# replay's worker process runs the same one.
TREE = Path(pipeline.__file__).resolve().parent.parent


def consumer_deliverer(settings: Settings) -> Any:
    """The Deliverer the SQS consumer of the code under test builds (`serve`): today's `consumer_deliverer`;
    the release built its own in `serve`, with the consumer's retry policy."""
    try:
        from pipeline.consumer.processor import consumer_deliverer as build
    except ImportError:  # the release: no group commit, a GetItem and an UpdateItem per object
        build_deliverer = from_tree("pipeline.delivery.engine", "build_deliverer")
        return build_deliverer(settings, retry=consumer_retry(None, None))
    return build(settings, None, None)


ObjectRef = from_tree("pipeline.delivery.routing", "ObjectRef")
from pipeline.keys import parse_key  # noqa: E402

stream_name = from_tree("pipeline.sinks.cloudwatch.limits", "stream_name")

CW_TENANT = next(t for t in SAMPLE_TENANTS if t.tenant_id == "acme")  # CloudWatch delivery only
TARGET_CONSUMER = 0.8  # issue 27: consumer objects/s against the plain loop, S3 and CloudWatch, 1 and 8 threads
TARGET_REPLAY_40MS = 0.7  # issue 27: replay with 40 ms per PutLogEvents against the null sink


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


class GetDecodePut:
    """Plain boto3 for a CloudWatch delivery: GetObject (central credentials), the project's decoder (the same
    decode both paths pay), events grouped by the stream the sink names (`stream_name`), time-sorted full
    batches (`cloudwatch_bench.full_batches`), PutLogEvents with a logs client assumed into the tenant's
    account. No ledger, no status, no metrics. Streams are made on first need (the warm-up pass)."""

    def __init__(self, local: LocalEnvironment) -> None:
        self.central = local.client("s3")
        self.logs = local.tenant_logs(CW_TENANT.tenant_id)
        self.group = CW_TENANT.log_group

    def __call__(self, ref: ObjectRef) -> int:
        body = self.central.get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read()
        key = parse_key(ref.key)
        streams: dict[str, list[tuple[int, str]]] = defaultdict(list)
        for ts, msg in records.decode_events(body, 0):
            streams[stream_name(key.application, key.pod, ts)].append((ts, msg))
        for name, events in streams.items():
            for batch in full_batches(events):
                try:
                    self.logs.put_log_events(logGroupName=self.group, logStreamName=name, logEvents=batch)
                except self.logs.exceptions.ResourceNotFoundException:
                    self.logs.create_log_stream(logGroupName=self.group, logStreamName=name)
                    self.logs.put_log_events(logGroupName=self.group, logStreamName=name, logEvents=batch)
        return sum(len(v) for v in streams.values())


def consumer_vs_plain(
    processor: MessageProcessor,
    plain: Callable[[ObjectRef], int],
    refs: list[ObjectRef],
    threads: int,
    repeats: int,
    calls: CallCounter,
    clear: Callable[[], None],
) -> dict[str, Any]:
    """Passes alternated (plain, consumer) `repeats` times; the median of the per-repeat ratios."""
    ratios, ledger_per_object, cpu_ratios = [], [], []
    for _ in range(repeats):
        clear()
        calls.take()
        start, cpu = time.perf_counter(), time.process_time()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(plain, refs))
        base = len(refs) / (time.perf_counter() - start)
        base_cpu = time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        consumer_pass(processor, refs, threads)
        cons = len(refs) / (time.perf_counter() - start)
        # This process's CPU (not moto's): what the consumer's own code adds, much less exposed to the load.
        cpu_ratios.append((time.process_time() - cpu) / base_cpu)
        ledger = sum(v["calls"] for k, v in calls.take().items() if k.startswith("dynamodb:"))
        ratios.append(cons / base)
        ledger_per_object.append(ledger / len(refs))
    return {
        "ratio_paired_median": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "ledger_calls_per_object_median": round(statistics.median(ledger_per_object), 3),
        "client_cpu_consumer_over_plain_median": round(statistics.median(cpu_ratios), 3),
        "meets_target": statistics.median(ratios) >= TARGET_CONSUMER,
    }


def replay_40ms_vs_null(args: argparse.Namespace) -> dict[str, Any]:
    """batching_bench's replay worker (one process, `run_pass`) on its small-object set, with every
    PutLogEvents answered by the fault proxy after 40 ms (`Answer`: a CloudWatch of fixed latency and no local
    cost), against the same worker's null sink, passes alternated; the median of the per-repeat ratios."""
    bargs = argparse.Namespace(
        pods_per_app=args.replay_pods_per_app, objects_per_pod=args.replay_objects_per_pod, seed=13
    )
    with MotoServer() as server, FaultProxy(server.endpoint_url) as proxy:
        local = provision(server.endpoint_url, tenants=(batching.TENANT,))
        local.client("s3").put_bucket_notification_configuration(
            Bucket=local.names.bucket, NotificationConfiguration={}
        )
        manifests, since, until = batching.write_data(local, bargs)
        streams = batching.streams_of(manifests)
        logs = local.tenant_logs(batching.TENANT.tenant_id)
        for name in streams:
            logs.create_log_stream(logGroupName=batching.TENANT.log_group, logStreamName=name)
        env = {**os.environ, **local.env, "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": proxy.url}
        events = sum(len(evs) for evs in streams.values())
        passes: dict[str, list[dict[str, Any]]] = {"standin": [], "null": []}
        for i in range(args.repeats):
            for mode, sink in (("standin", "cloudwatch"), ("null", "null")):
                proxy.clear()
                proxy.reset_log()
                batching.clear_ledger(local)
                if sink == "cloudwatch":
                    proxy.add(Rule(Answer(batching.PUT_DELAY_S), service="logs", operation="PutLogEvents"))
                p = batching.run_pass(TREE, sink, env, since, until)
                if p["events"] != events:
                    raise RuntimeError(f"{mode}: {p['events']} events, want {events}")
                passes[mode].append(p)
                print(f"replay pass {i} {mode}: {p}", flush=True)
    ratios = [c["events_per_s"] / n["events_per_s"] for c, n in zip(passes["standin"], passes["null"], strict=True)]
    return {
        "objects": sum(len(m.objects) for m in manifests),
        "events": events,
        "put_delay_s": batching.PUT_DELAY_S,
        "ratio_paired_median": round(statistics.median(ratios), 3),
        "ratios": [round(r, 3) for r in ratios],
        "standin_events_per_s": [p["events_per_s"] for p in passes["standin"]],
        "null_events_per_s": [p["events_per_s"] for p in passes["null"]],
        "put_requests": [p["requests"] for p in passes["standin"]],
        "meets_target": statistics.median(ratios) >= TARGET_REPLAY_40MS,
    }


# Compared with the release's `pipeline` in the same run (bench.baseline.main_beside), each side's figures
# measured in its own child: the consumer's objects/s over the plain loop's (the loop runs in the same child,
# so the machine's load cancels out), higher is better, and its ledger calls per object, lower is better; the
# replay's 40 ms stand-in over its null sink. The client CPU ratios are reported, not gated.
RELEASE_METRICS = {
    **{f"{kind}.threads_{n}.ratio_paired_median": True for kind in ("s3", "cloudwatch") for n in (1, 8)},
    **{f"{kind}.threads_{n}.ledger_calls_per_object_median": False for kind in ("s3", "cloudwatch") for n in (1, 8)},
    "replay_40ms.ratio_paired_median": True,
}
RELEASE_INFO = {
    f"{kind}.threads_{n}.client_cpu_consumer_over_plain_median": False for kind in ("s3", "cloudwatch") for n in (1, 8)
}
# `python -m bench --quick`: 32 typical objects, three repeats, one pair beside the release.
QUICK_ARGS = ["--copies", "2", "--repeats", "3", "--pairs", "1"]


def targets_met(out: dict[str, Any]) -> bool:
    """Issue 27's speed targets, as measured in `out` (a result of `measure`): every one measured is met."""
    flags = [
        v["meets_target"] for kind in ("s3", "cloudwatch") for k, v in out.get(kind, {}).items() if "threads_" in k
    ]
    if "replay_40ms" in out:
        flags.append(out["replay_40ms"]["meets_target"])
    return all(flags)


def medians(result: dict[str, Any]) -> dict[str, Any]:
    """`main_beside`'s result (this checkout's first run, and the comparison) with each compared figure of this
    checkout replaced by its median over this checkout's runs (one per pair), and the targets judged on those."""
    figures = result.get("vs_release", {}).get("figures", {})
    for path, fig in figures.items():
        values = [v for v in fig["this"] if v is not None]
        *parents, leaf = path.split(".")
        node = result
        for part in parents:
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if values and isinstance(node, dict) and leaf in node:
            node[leaf] = round(statistics.median(values), 3)
            node.setdefault("runs_of_this_checkout", {})[leaf] = values
    for kind in ("s3", "cloudwatch"):
        for k, v in result.get(kind, {}).items():
            if k.startswith("threads_"):
                v["meets_target"] = v["ratio_paired_median"] >= TARGET_CONSUMER
    if "replay_40ms" in result:
        result["replay_40ms"]["meets_target"] = result["replay_40ms"]["ratio_paired_median"] >= TARGET_REPLAY_40MS
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--unique", type=int, default=16)
    p.add_argument("--copies", type=int, default=4)
    p.add_argument("--events", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=[1, 8])
    p.add_argument("--only", choices=("s3", "cloudwatch", "replay"), nargs="+", default=["s3", "cloudwatch", "replay"])
    p.add_argument("--replay-pods-per-app", type=int, default=10)
    p.add_argument("--replay-objects-per-pod", type=int, default=40)
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "ledger_ratios.json")
    add_release_options(p)
    args = p.parse_args(argv)
    code = release_beside(Path(__file__), argv, args, RELEASE_METRICS, ok=targets_met, info=RELEASE_INFO)
    if code is not None:
        merged = merge_ratios(medians(orjson.loads(args.output.read_bytes()))) if args.output.exists() else False
        return code or (0 if merged else 1)
    out = measure(args)
    write_result(args.output, out)
    if is_child():  # one side of a comparison: the parent merges this checkout's figures
        return 0
    return 0 if merge_ratios(out) else 1


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Every measurement `args.only` names, on this side's `pipeline`."""
    out: dict[str, Any] = {
        "machine": machine(),
        "pipeline": str(TREE),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_before": os.getloadavg(),
    }
    began = time.monotonic()
    if {"s3", "cloudwatch"} & set(args.only):
        with MotoServer() as server:
            local = provision(server.endpoint_url, tenants=(TENANT, CW_TENANT))
            os.environ.update(local.env)
            local.client("s3").put_bucket_notification_configuration(
                Bucket=local.names.bucket, NotificationConfiguration={}
            )
            deliverer = consumer_deliverer(local.settings)
            processor = MessageProcessor(deliverer, bucket=local.names.bucket)
            assert deliverer.ledger is not None
            calls = CallCounter(deliverer.ledger._ddb())
            ddb = local.client("dynamodb")

            def clear() -> None:
                clear_ledger(ddb, local.names.ledger_table)

            kinds: dict[str, tuple[SampleTenant, Callable[[LocalEnvironment], Callable[[ObjectRef], int]]]] = {
                "s3": (TENANT, Baseline),
                "cloudwatch": (CW_TENANT, GetDecodePut),
            }
            for kind in [k for k in kinds if k in args.only]:
                tenant, make_plain = kinds[kind]
                data = write_set(local, f"typical-{kind}", args.unique, args.copies, args.events, seed=7, tenant=tenant)
                plain = make_plain(local)
                list(map(plain, data.refs))  # warm: clients, STS, the streams
                consumer_pass(processor, data.refs[:2], 1)  # warm: STS, clients, tenant cache
                out[kind] = {"data": data.info}
                for threads in args.threads:
                    r = consumer_vs_plain(processor, plain, data.refs, threads, args.repeats, calls, clear)
                    out[kind][f"threads_{threads}"] = r
                    print(kind, threads, r, flush=True)
                deferred = getattr(processor, "deferred", None)  # the release had none
                out[kind]["deferred_groups"] = deferred.groups if deferred is not None else None
    if "replay" in args.only:
        out["replay_40ms"] = replay_40ms_vs_null(args)
    out["load_after"] = os.getloadavg()
    out["wall_s"] = round(time.monotonic() - began, 1)
    return out


def merge_ratios(out: dict[str, Any]) -> bool:
    """Fill ledger.json's `ratios` (kept beside the call counts test_ledger_calls measured) with this run's
    figures and their meets_* flags; whether every target measured is met."""
    path = REPO / "bench" / "results" / "ledger.json"
    ledger = orjson.loads(path.read_bytes()) if path.exists() else {}
    ratios = ledger.setdefault("ratios", {})
    for threads in (1, 8):
        if f"threads_{threads}" in out.get("s3", {}):
            r = out["s3"][f"threads_{threads}"]
            ratios[f"consumer_s3_vs_get_then_put_{threads}_thread{'s' if threads > 1 else ''}"] = r[
                "ratio_paired_median"
            ]
            ratios[f"consumer_s3_ledger_calls_per_object_{threads}_thread{'s' if threads > 1 else ''}"] = r[
                "ledger_calls_per_object_median"
            ]
        if f"threads_{threads}" in out.get("cloudwatch", {}):
            r = out["cloudwatch"][f"threads_{threads}"]
            suffix = f"{threads}_thread{'s' if threads > 1 else ''}"
            ratios[f"consumer_cloudwatch_vs_get_decode_put_{suffix}"] = r["ratio_paired_median"]
            ratios[f"consumer_cloudwatch_ledger_calls_per_object_{suffix}"] = r["ledger_calls_per_object_median"]
    ratios.pop("consumer_cloudwatch_vs_get_decode_put", None)
    for kind, flag in (("s3", "meets_consumer_s3_target"), ("cloudwatch", "meets_consumer_cloudwatch_target")):
        if kind in out:
            ratios[flag] = all(v["meets_target"] for k, v in out[kind].items() if k.startswith("threads_"))
    if "replay_40ms" in out:
        ratios["replay_40ms_put_vs_null_sink"] = out["replay_40ms"]["ratio_paired_median"]
        ratios["meets_replay_40ms_target"] = out["replay_40ms"]["meets_target"]
    if "vs_release" in out:
        vs = out["vs_release"]
        ratios["vs_release"] = {
            k: vs.get(k) for k in ("release", "pairs", "noise", "ratios", "errors") if vs.get(k) is not None
        }
        ratios["meets_release_target"] = vs["meets_release_target"]
    else:  # not compared this time: an older comparison's flag would not be about these figures
        ratios.pop("vs_release", None)
        ratios.pop("meets_release_target", None)
    ratios["targets"] = {"consumer": TARGET_CONSUMER, "replay_40ms": TARGET_REPLAY_40MS}
    ratios["source"] = (
        "bench/ledger_bench.py (bench/results/ledger_ratios.json): the consumer (the real SqsConsumer on an "
        "in-memory queue) vs the plain loops, paired medians; the replay worker with 40 ms stand-in puts vs its "
        f"null sink. Load average {out['load_before'][0]:.1f} before, {out['load_after'][0]:.1f} after, 2 cores"
    )
    ratios.pop("note", None)
    ratios["date"] = time.strftime("%Y-%m-%d", time.gmtime())
    flags = [v for k, v in ratios.items() if k.startswith("meets_") and v is not None]
    flags += [v for k, v in ledger.items() if isinstance(v, dict) for kk, vv in v.items() if kk.startswith("meets_")]
    path.write_bytes(orjson.dumps(ledger, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"written {path}", flush=True)
    return all(flags) and all(ratios.get(f) is not None for f in MEETS)


MEETS = ("meets_consumer_s3_target", "meets_consumer_cloudwatch_target", "meets_replay_40ms_target")


if __name__ == "__main__":
    raise SystemExit(main())
