"""Consumer benchmark on the local stack: throughput and latency from object creation to delivery.

    .venv/bin/python bench/consumer_bench.py                     # writes bench/results/consumer.json
    .venv/bin/python bench/consumer_bench.py --objects 1000 --workers 16

Everything is real except AWS itself: a moto server over HTTP, provisioned as in CONTRACTS.md §6 (S3 →
SNS → SQS with a DLQ), and the consumer as a subprocess (`python -m jobs.consumer --mode sqs`). Two
phases:

1. Backlog drain (throughput): objects are written while no consumer runs, the notifications queue up,
   then a consumer starts; objects/s and events/s are measured from its start to the last ledger write.
2. Steady stream (latency): with the consumer running and warm, objects are written at a fixed rate;
   latency is the ledger's delivered_at minus the moment the object's PUT returned (both on this host's
   clock). p50/p99 over the objects.

Numbers measure the consumer plus moto on one machine (moto is single-process Python and usually the
bottleneck), not AWS. Compare runs on the same machine only.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # beside the release, the release's pipeline comes first on the path
    sys.path.insert(0, str(REPO))

from bench.baseline import add_release_options, code_path, release_beside  # noqa: E402
from devstack import generator as gen  # noqa: E402
from devstack.provision import LocalEnvironment, provision  # noqa: E402
from devstack.server import MotoServer, free_port  # noqa: E402
from pipeline.ledger import Ledger  # noqa: E402

TENANTS = ("acme", "globex")  # two accounts, two regions
APPLICATION = "payment-service"  # wanted by both sample tenants


def start_consumer(local: LocalEnvironment, workers: int, log_path: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | local.env
    env |= {"METRICS_PORT": str(port), "METRICS_HOST": "127.0.0.1", "LOG_LEVEL": "WARNING"}
    # The consumer imports the `pipeline` of this side (`code_path`: the release's beside it). Not run from the
    # checkout: `-m` would put the working directory, and this checkout's pipeline, first on its path.
    env["PYTHONPATH"] = code_path()
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.consumer", "--mode", "sqs", "--workers", str(workers), "--wait-time", "2"],
        cwd=log_path.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log_path, "wb"),  # noqa: SIM115 -- lives as long as the process
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"consumer exited with {proc.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("consumer did not come up")


def config(objects: int, events: int, seed: int) -> gen.GeneratorConfig:
    now = datetime.now(UTC)
    per_tenant = max(1, objects // len(TENANTS))
    return gen.GeneratorConfig(
        since=now - timedelta(minutes=30),
        until=now,
        tenants=TENANTS,
        applications=(APPLICATION,),
        pods_per_app=1,
        objects_per_pod=per_tenant,
        events_per_object=events,
        seed=seed,
        keep_events=False,
    )


def delivered(local: LocalEnvironment) -> dict[str, float]:
    """{object key: delivered_at} from the ledger."""
    ledger = Ledger(local.names.ledger_table)
    return {e.object_key: e.delivered_at for t in TENANTS for e in ledger.entries(t)}


def wait_delivered(local: LocalEnvironment, keys: set[str], timeout: float) -> dict[str, float]:
    deadline = time.monotonic() + timeout
    while True:
        done = delivered(local)
        if keys <= done.keys():
            return done
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(keys - done.keys())} of {len(keys)} objects not delivered in {timeout}s")
        time.sleep(0.2)


def queue_depth(local: LocalEnvironment) -> int:
    attrs = local.client("sqs").get_queue_attributes(
        QueueUrl=local.queue_url, AttributeNames=["ApproximateNumberOfMessages"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"])


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def backlog_phase(local: LocalEnvironment, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    manifest = gen.write_dataset(config(args.objects, args.events, seed=1), local.names.bucket, s3=local.client("s3"))
    keys = set(manifest.keys)
    deadline = time.monotonic() + 60
    while queue_depth(local) < len(keys) and time.monotonic() < deadline:
        time.sleep(0.2)
    proc, _ = start_consumer(local, args.workers, log_dir / "consumer-backlog.log")
    start = time.time()
    try:
        done = wait_delivered(local, keys, timeout=600)
    finally:
        proc.terminate()
        proc.wait(60)
    seconds = max(done[k] for k in keys) - start
    events = manifest.expected_count
    return {
        "objects": len(keys),
        "events": events,
        "bytes": manifest.total_bytes,
        "seconds": round(seconds, 3),
        "objects_per_s": round(len(keys) / seconds, 1),
        "events_per_s": round(events / seconds, 0),
        "note": "from consumer start (process already up, cold caches) to the last ledger write",
    }


def stream_phase(local: LocalEnvironment, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    proc, port = start_consumer(local, args.workers, log_dir / "consumer-stream.log")
    try:
        # Warm the credential and tenant caches so the numbers are steady-state, not cold start.
        warm = gen.write_dataset(config(len(TENANTS), 10, seed=2), local.names.bucket, s3=local.client("s3"))
        wait_delivered(local, set(warm.keys), timeout=60)

        stream_cfg = config(args.stream_objects, args.events, seed=3)
        specs = gen.plan(stream_cfg)
        created: dict[str, float] = {}
        s3 = local.client("s3")
        interval = 1.0 / args.rate
        lock = threading.Lock()

        def put(spec: gen.PlannedObject) -> None:
            obj = gen.build_object(stream_cfg, spec)
            gen.put_object(s3, local.names.bucket, obj)
            with lock:
                created[obj.key] = time.time()

        threads: list[threading.Thread] = []
        next_at = time.monotonic()
        for spec in specs:
            time.sleep(max(0.0, next_at - time.monotonic()))
            t = threading.Thread(target=put, args=(spec,))
            t.start()
            threads.append(t)
            next_at += interval
        for t in threads:
            t.join()
        done = wait_delivered(local, set(created), timeout=600)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            metrics_text = resp.read().decode()
    finally:
        proc.terminate()
        proc.wait(60)
    latencies = [done[k] - created[k] for k in created]
    return {
        "objects": len(latencies),
        "rate_objects_per_s": args.rate,
        "latency_p50_s": round(percentile(latencies, 0.50), 3),
        "latency_p99_s": round(percentile(latencies, 0.99), 3),
        "latency_max_s": round(max(latencies), 3),
        "latency_mean_s": round(statistics.fmean(latencies), 3),
        "note": "object PUT returned -> ledger delivered_at; includes S3 -> SNS -> SQS on moto",
        "consumer_latency_histogram_count": _sample(metrics_text, "logdelivery_delivery_latency_seconds_count"),
    }


def _sample(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


# Compared with the release's `pipeline` in the same run (bench.baseline.main_beside): the backlog drain's
# objects/s gates (higher is better); the stream's latency (mostly S3 -> SNS -> SQS on moto) is reported.
RELEASE_METRICS = {"throughput.objects_per_s": True}
RELEASE_INFO = {"latency.latency_p50_s": False, "latency.latency_p99_s": False}
# `python -m bench --quick`: 100 objects drained, 40 streamed, two pairs beside the release.
QUICK_ARGS = ["--objects", "100", "--stream-objects", "40", "--pairs", "2"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=int, default=400, help="objects in the backlog phase")
    p.add_argument("--events", type=int, default=200, help="events per object")
    p.add_argument("--workers", type=int, default=8, help="consumer pool size")
    p.add_argument("--stream-objects", type=int, default=100, help="objects in the latency phase")
    p.add_argument("--rate", type=float, default=10.0, help="objects written per second in the latency phase")
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "consumer.json")
    add_release_options(p)
    args = p.parse_args(argv)
    code = release_beside(Path(__file__), argv, args, RELEASE_METRICS, info=RELEASE_INFO)
    if code is not None:
        return code

    args.output.parent.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="consumer-bench-"))  # moto and consumer logs, for a failed run
    saved_env = dict(os.environ)  # `python -m bench` runs other benchmarks in this process after us
    try:
        with MotoServer(log_path=log_dir / "consumer-bench-moto.log") as server:
            local = provision(server.endpoint_url)
            os.environ.update(local.env)  # this process reads the ledger and queue too
            local.client("sqs").set_queue_attributes(QueueUrl=local.queue_url, Attributes={"VisibilityTimeout": "120"})
            backlog = backlog_phase(local, args, log_dir)
            stream = stream_phase(local, args, log_dir)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    result = {
        "benchmark": "consumer",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        "settings": {"workers": args.workers, "events_per_object": args.events, "tenants": list(TENANTS)},
        "throughput": backlog,
        "latency": stream,
    }
    args.output.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    print(f"logs: {log_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
