"""Tenants apart by failure: calm tenants' delivery latency before and during another tenant's throttling
storm, for this checkout and for `--baseline` (the code before the per-destination circuits), same run.

    .venv/bin/python -m bench isolation                       # writes bench/results/isolation.json
    .venv/bin/python bench/isolation_bench.py --storm 60 --rate 2 --baseline ''   # this checkout only

The scenario of issue 23, on the local stack (a moto server over HTTP, provisioned as CONTRACTS.md §6: S3
→ SNS → SQS with a DLQ of maxReceiveCount 5, as production): three tenants each write `--rate` objects a
second (`devstack.steady.SteadyWriter`) while a consumer subprocess (`python -m jobs.consumer --mode sqs`,
8 workers) delivers them. After `--before` seconds, the fault proxy (`devstack/faults.py`) answers every
PutLogEvents of one tenant (umbrella, which also has an S3 archive) with ThrottlingException for `--storm`
seconds, then lets them through again. Latency is the ledger's delivered_at minus the moment the object's
PUT returned (both wall clock on this host), per object, for the objects written before and during the storm.

Each version runs on a fresh stack with the consumer started from its own tree (a `git worktree` of the
baseline commit for the old code). The new code runs with `--backoff-delay 1` so the noisy tenant's held
messages come back soon after the storm (the default, 30 s, is for production's long storms); the old code
has no such option and keeps its defaults. Numbers are for one 2-core machine shared with moto; compare
versions of one run, not runs of different machines.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.baseline import NOISE, RELEASE, baseline_tree  # noqa: E402
from bench.machine import machine, write_result  # noqa: E402
from devstack.faults import Error, FaultProxy, Rule  # noqa: E402
from devstack.provision import LocalEnvironment, provision  # noqa: E402
from devstack.server import MotoServer, free_port  # noqa: E402
from devstack.steady import SteadyWriter, percentile  # noqa: E402
from pipeline.ledger import Ledger  # noqa: E402

BASELINE = "b90abee"  # main before the per-destination circuits (#23)
CALM = ("acme", "globex")
NOISY = "umbrella"  # CloudWatch and an S3 archive
TENANTS = (*CALM, NOISY)


def start_consumer(tree: Path, env: dict[str, str], args: list[str], log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**env, "PYTHONPATH": str(tree), "METRICS_PORT": str(port), "METRICS_HOST": "127.0.0.1"}
    cmd = [sys.executable, "-m", "jobs.consumer", "--mode", "sqs", "--wait-time", "1", *args]
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "wb"))  # noqa: SIM115
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"consumer in {tree} exited with {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.1)
    raise TimeoutError("consumer did not come up")


_ledgers: dict[str, Ledger] = {}


def delivered_at(local: LocalEnvironment, tenant: str, delivery_id: str = "cloudwatch") -> dict[str, float]:
    """{object key: delivered_at} of one delivery of a tenant, from the ledger."""
    ledger = _ledgers.get(local.endpoint_url)
    if ledger is None:
        ledger = _ledgers[local.endpoint_url] = Ledger(local.names.ledger_table, client=local.client("dynamodb"))
    return {e.object_key: e.delivered_at for e in ledger.entries(tenant) if e.delivery_id == delivery_id}


def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.5)


def queue_counts(local: LocalEnvironment, url: str) -> tuple[int, int]:
    attrs = local.client("sqs").get_queue_attributes(
        QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def figures(values: list[float]) -> dict[str, float | int]:
    return {
        "objects": len(values),
        "p50_s": round(percentile(values, 0.50), 3),
        "p99_s": round(percentile(values, 0.99), 3),
        "max_s": round(max(values), 3),
    }


def run_version(tree: Path, extra: list[str], args: argparse.Namespace, log_dir: Path, name: str) -> dict[str, Any]:
    with MotoServer(log_path=log_dir / f"{name}-moto.log") as server, FaultProxy(server.endpoint_url) as proxy:
        local = provision(server.endpoint_url)
        sqs = local.client("sqs")
        dlq_arn = sqs.get_queue_attributes(QueueUrl=local.dlq_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        redrive = f'{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": "5"}}'
        sqs.set_queue_attributes(QueueUrl=local.queue_url, Attributes={"RedrivePolicy": redrive})
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | local.env
        env |= {"AWS_ENDPOINT_URL": proxy.url, "LOG_LEVEL": "INFO"}
        proc, _ = start_consumer(tree, env, ["--workers", str(args.workers), *extra], log_dir / f"{name}-consumer.log")
        writer = SteadyWriter(local, TENANTS, args.rate, seed=7).start()
        try:
            wait_until(lambda: all(delivered_at(local, t) for t in TENANTS), 120, "a first delivery per tenant")
            writer.phase = "before"
            time.sleep(args.before)  # the scenario's phases are durations; nothing here waits for the code
            group = f'"{local.tenant(NOISY).log_group}"'
            storm = proxy.add(Rule(Error.throttling(), service="logs", operation="PutLogEvents", body_contains=group))
            writer.phase = "storm"
            time.sleep(args.storm)
            storm_off = time.time()
            proxy.remove(storm)
            writer.phase = "after"
            time.sleep(10)
        finally:
            written = writer.stop()
        try:

            def done() -> bool:
                if proc.poll() is not None:  # a dead consumer delivers nothing: say so instead of waiting
                    raise RuntimeError(f"the consumer exited with {proc.returncode}; see {log_dir}")
                return all(writer.keys(t) <= delivered_at(local, t).keys() for t in TENANTS)

            wait_until(done, args.timeout, "every object delivered")
        finally:
            proc.terminate()
            proc.wait(60)
        out: dict[str, Any] = {"throttled_puts": storm.stats.injected}
        ats = {t: delivered_at(local, t) for t in CALM}  # one ledger read per tenant
        for t in CALM:
            out[t] = {
                p: figures([ats[t][k] - written[k].put_at for k in writer.keys(t, p)]) for p in ("before", "storm")
            }
        calm = {
            p: [ats[t][k] - written[k].put_at for t in CALM for k in writer.keys(t, p)] for p in ("before", "storm")
        }
        out["calm_tenants"] = {p: figures(v) for p, v in calm.items()}
        noisy = delivered_at(local, NOISY)
        storm_keys = writer.keys(NOISY, "storm")
        out[NOISY] = {
            "objects_in_storm": len(storm_keys),
            "cloudwatch_delivered_during_storm": sum(1 for k in storm_keys if noisy[k] < storm_off),
            "last_cloudwatch_delivery_after_storm_s": round(max(noisy.values()) - storm_off, 1),
        }
        archive = delivered_at(local, NOISY, "s3-archive")
        if archive:
            out[NOISY]["s3_archive_during_storm"] = figures([archive[k] - written[k].put_at for k in storm_keys])
        out["dlq_messages"] = sum(queue_counts(local, local.dlq_url))
        print(f"{name}: {out}", flush=True)
        return out


# `python -m bench --quick`: 15 s calm, a 30 s storm; the release beside, b90abee (before the circuits) left out.
QUICK_ARGS = ["--before", "15", "--storm", "30", "--baseline", ""]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=2.0, help="objects per second per tenant")
    p.add_argument("--before", type=float, default=30.0, help="seconds of calm traffic measured before the storm")
    p.add_argument("--storm", type=float, default=60.0, help="seconds the noisy tenant's CloudWatch throttles")
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for every object after the run")
    p.add_argument("--baseline", default=BASELINE, help="git revision to compare with ('' to skip)")
    p.add_argument("--release", default=RELEASE, help="the previous release, compared with too ('' to skip)")
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "isolation.json")
    args = p.parse_args()

    start = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="isolation-bench-"))
    result: dict[str, Any] = {
        "benchmark": "isolation",
        "machine": machine("moto", "boto3"),
        "settings": {
            "tenants": list(TENANTS),
            "noisy": NOISY,
            "rate_objects_per_s_per_tenant": args.rate,
            "before_s": args.before,
            "storm_s": args.storm,
            "workers": args.workers,
            "baseline": args.baseline,
            "release": args.release,
            "this_consumer_args": ["--backoff-delay", "1"],
        },
    }
    result["this"] = run_version(REPO, ["--backoff-delay", "1"], args, log_dir, "this")
    # The release has the circuits and their --backoff-delay; the historical baseline has neither.
    for name, rev, extra in (("release", args.release, ["--backoff-delay", "1"]), ("baseline", args.baseline, [])):
        if rev:
            with baseline_tree(rev) as tree:
                result[name] = run_version(tree, extra, args, log_dir, name)
    if "release" in result:
        # Calm tenants' p99 during the storm: no worse than the release's beyond noise (lower is better).
        mine, theirs = (
            result["this"]["calm_tenants"]["storm"]["p99_s"],
            result["release"]["calm_tenants"]["storm"]["p99_s"],
        )
        result["meets_release_target"] = mine <= max(theirs * (1 + NOISE), theirs + 0.5)
    result["wall_s"] = round(time.monotonic() - start, 1)
    write_result(args.output, result)
    print(f"logs: {log_dir}", file=sys.stderr)
    if not result.get("meets_release_target", True):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
