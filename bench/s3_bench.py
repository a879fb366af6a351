"""S3 delivery benchmark: the project's delivery path into a tenant's bucket, against a plain boto3 loop.

    .venv/bin/python -m bench s3              # or: .venv/bin/python -m bench.s3_bench   (~2.5 min)
    .venv/bin/python -m bench.s3_bench --typical-unique 8 --large-copies 4 --repeats 2 --large-repeats 2   # quicker

One moto server (the project's `MotoServer`, a separate process, over HTTP, started with
MOTO_S3_ALLOW_CROSSACCOUNT_ACCESS=false), provisioned with the sample tenant `hooli` only: S3 delivery
`archive` into its own bucket in its own account (555555555555), no CloudWatch. Three passes over the same
objects, with the same number of threads, rotated and repeated (`--repeats`, `--large-repeats`):

- project: `Deliverer.deliver(ObjectRef(bucket, key, etag, size))` of `build_deliverer(settings)`, as the
  consumer calls it: tenant lookup (cached), ledger read (GetItem), GetObject from the central bucket with
  the process's own credentials, PutObject through the real `S3Sink` with the tenant role's credentials
  (double hop, cached), and the ledger record (UpdateItem). The ledger is emptied between passes (outside
  the timings), so every pass delivers every object.
- project, no ledger: the same Deliverer parts (tenant directory, sink, credential broker, S3 client) in a
  `Deliverer(..., ledger=None)`: no ledger read, no ledger write. The difference to the full path is what
  the ledger costs; the ledger calls of the full pass are also timed one by one.
- baseline: plain boto3. GetObject from the central bucket with the local default (central) credentials,
  then PutObject of the same bytes to the same destination key in the tenant's bucket, with credentials
  assumed into the tenant's account and the headers the sink sends (ContentType, ContentEncoding,
  x-amz-meta-source-*, ExpectedBucketOwner). No ledger.

Each pass runs on 1 thread, and on 8 threads (a replay worker's pod threads). Target: project objects/s
(and MB/s) >= 0.8 of the baseline's, as the median of the per-repeat ratios of passes run back to back.
Also recorded per pass: the API calls each path made and their mean wall time (botocore before-call to
after-call), the CPU seconds of this process and of moto's (psutil) per object, which are much less exposed
than the wall clock to whatever else the machine runs, and the time spent inside the ledger's calls.

Data comes from the project's generator (`write_dataset`, realistic mix, gzip level 6): a typical set of
1,000-event objects (about 87 KB gzip) and a set of the collector's largest objects (80,000 events, about
6.7 MB gzip, 64 MiB raw). Generating is slow (~8k events/s here), so each generated object is also
copied server-side under `--*-copies` pod names. Bucket notifications are switched off first. STS, client
construction and the tenant lookup are outside the timings (one warm-up delivery per path).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.machine import machine, write_result  # noqa: E402
from pipeline.delivery import Deliverer, ObjectRef, Status, build_deliverer  # noqa: E402
from pipeline.keys import parse_key, pod_prefix  # noqa: E402
from pipeline.local.generator import GeneratorConfig, app_names, write_dataset  # noqa: E402
from pipeline.local.provision import SAMPLE_TENANTS, LocalEnvironment, provision  # noqa: E402
from pipeline.local.server import MotoServer  # noqa: E402
from pipeline.tenants import DeliveryType  # noqa: E402

TARGET_RATIO = 0.8
TENANT = next(t for t in SAMPLE_TENANTS if t.tenant_id == "hooli")
MB = 1_000_000
PATHS = ("baseline", "project", "project_no_ledger")


@dataclass(frozen=True)
class DataSet:
    name: str
    refs: list[ObjectRef]
    info: dict[str, Any]


def write_set(
    local: LocalEnvironment, name: str, unique: int, copies: int, events_per_object: int, seed: int
) -> DataSet:
    """`unique` generated objects under cluster `name`, each also copied (server-side) under `copies - 1`
    more pod names; the references a notification would carry."""
    now = datetime.now(UTC).replace(microsecond=0)
    apps = app_names(4)
    pods_per_app = 2 if unique >= 8 else 1
    per_pod = max(1, unique // (len(apps) * pods_per_app))
    if unique < len(apps) * pods_per_app:
        apps, pods_per_app, per_pod = app_names(unique), 1, 1
    cfg = GeneratorConfig(
        since=now - timedelta(hours=3),
        until=now - timedelta(hours=1),
        tenants=(TENANT.tenant_id,),
        clusters=(name,),
        applications=apps,
        pods_per_app=pods_per_app,
        objects_per_pod=per_pod,
        events_per_object=events_per_object,
        seed=seed,
        keep_events=False,
    )
    s3 = local.client("s3")
    bucket = local.names.bucket
    start = time.monotonic()
    manifest = write_dataset(cfg, bucket, s3=s3, workers=4)
    gen_s = time.monotonic() - start
    refs = [ObjectRef(bucket, o.key, o.etag, o.size) for o in manifest.objects]
    for c in range(1, copies):
        for o in manifest.objects:
            p = parse_key(o.key)
            key = pod_prefix(p.cluster, p.tenant, p.application, f"{p.pod}-c{c}") + p.filename
            parse_key(key)  # still a valid collector key
            resp = s3.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": o.key})
            refs.append(ObjectRef(bucket, key, resp["CopyObjectResult"]["ETag"], o.size))
    sizes = [r.size or 0 for r in refs]
    return DataSet(
        name,
        refs,
        {
            "generated_objects": len(manifest.objects),
            "copies": copies,
            "objects": len(refs),
            "events_per_object": events_per_object,
            "events": manifest.total_events * copies,
            "bytes": sum(sizes),
            "object_bytes_mean": round(statistics.mean(sizes)),
            "object_bytes_min": min(sizes),
            "object_bytes_max": max(sizes),
            "generate_and_write_s": round(gen_s, 2),
        },
    )


# ---------------------------------------------------------------------------------------------------------
# The three paths: each takes one ObjectRef and returns the bytes it delivered.


class Baseline:
    """Plain boto3: GetObject (central credentials), PutObject of the same bytes (tenant's account)."""

    def __init__(self, local: LocalEnvironment) -> None:
        self.central = local.client("s3")
        self.tenant = local.tenant_s3(TENANT.tenant_id)  # assumed into the tenant's account
        assert TENANT.s3 is not None
        self.bucket = TENANT.bucket
        self.prefix = TENANT.s3.prefix
        self.owner = TENANT.account_id

    def __call__(self, ref: ObjectRef) -> int:
        obj = self.central.get_object(Bucket=ref.bucket, Key=ref.key)
        body = obj["Body"].read()
        _, tenant, app, pod, filename = ref.key.split("/", 4)
        extra = {"ContentEncoding": "gzip"} if body[:2] == b"\x1f\x8b" else {}
        self.tenant.put_object(
            Bucket=self.bucket,
            Key=f"{self.prefix}{tenant}/{app}/{pod}/{filename}",
            Body=body,
            ContentType="application/x-ndjson",
            Metadata={"source-bucket": ref.bucket, "source-key": ref.key, "source-etag": obj["ETag"].strip('"')},
            ExpectedBucketOwner=self.owner,
            **extra,
        )
        return len(body)


class Project:
    """`Deliverer.deliver`, failing loudly on anything but one delivered (and, with a ledger, recorded) S3 delivery."""

    def __init__(self, deliverer: Deliverer) -> None:
        self.deliverer = deliverer

    def __call__(self, ref: ObjectRef) -> int:
        result = self.deliverer.deliver(ref)
        ok = result.status is Status.DELIVERED and [d.status for d in result.deliveries] == [Status.DELIVERED]
        if not ok or (self.deliverer.ledger is not None and not result.deliveries[0].recorded):
            raise RuntimeError(f"{ref.key}: {result.status} {result.reason} {[d.to_dict() for d in result.deliveries]}")
        return result.deliveries[0].bytes_delivered


class LedgerClock:
    """Wall time spent inside the ledger's calls (read and record), summed over threads."""

    def __init__(self, deliverer: Deliverer) -> None:
        ledger = deliverer.ledger
        assert ledger is not None
        self.read_s = self.record_s = 0.0
        self._lock = threading.Lock()
        ledger.delivered = self._timed(ledger.delivered, "read_s")  # type: ignore[method-assign]
        ledger.record = self._timed(ledger.record, "record_s")  # type: ignore[method-assign]

    def _timed(self, fn: Callable[..., Any], slot: str) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - start
                with self._lock:
                    setattr(self, slot, getattr(self, slot) + elapsed)

        return wrapper

    def take(self) -> tuple[float, float]:
        with self._lock:
            out = (self.read_s, self.record_s)
            self.read_s = self.record_s = 0.0
        return out


class CallCounter:
    """API calls the clients made, and the wall time of each from botocore's before-call to after-call
    (errors included: botocore emits after-call before it raises)."""

    def __init__(self, *clients: Any) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.seconds: Counter[str] = Counter()
        for c in clients:
            c.meta.events.register("before-call", self._start)
            c.meta.events.register("after-call", self._count)

    def _start(self, context: dict[str, Any], **_: Any) -> None:
        context["bench_start"] = time.perf_counter()

    def _count(self, model: Any, context: dict[str, Any], http_response: Any = None, **_: Any) -> None:
        elapsed = time.perf_counter() - context.pop("bench_start", time.perf_counter())
        failed = getattr(http_response, "status_code", 200) >= 300
        name = f"{model.service_model.service_id.hyphenize()}:{model.name}{' (error)' if failed else ''}"
        with self._lock:
            self.calls[name] += 1
            self.seconds[name] += elapsed

    def take(self) -> dict[str, dict[str, float]]:
        with self._lock:
            out = {
                k: {"calls": n, "ms_mean": round(self.seconds[k] / n * 1000, 2)} for k, n in sorted(self.calls.items())
            }
            self.calls, self.seconds = Counter(), Counter()
        return out


def clear_ledger(ddb: Any, table: str) -> int:
    """Delete every ledger item, so the next full pass delivers (and records) every object again."""
    deleted = 0
    for page in ddb.get_paginator("scan").paginate(TableName=table, ProjectionExpression="tenant_id, object_key"):
        items = page.get("Items", [])
        for i in range(0, len(items), 25):
            request = [{"DeleteRequest": {"Key": k}} for k in items[i : i + 25]]
            while request:
                resp = ddb.batch_write_item(RequestItems={table: request})
                request = resp.get("UnprocessedItems", {}).get(table, [])
            deleted += len(items[i : i + 25])
    return deleted


# ---------------------------------------------------------------------------------------------------------


@dataclass
class Sample:
    wall_s: float
    objects: int
    bytes: int
    client_cpu_s: float
    moto_cpu_s: float
    ledger_read_s: float = 0.0
    ledger_record_s: float = 0.0
    calls: dict[str, dict[str, float]] | None = None

    @property
    def objects_per_s(self) -> float:
        return self.objects / self.wall_s

    @property
    def mb_per_s(self) -> float:
        return self.bytes / MB / self.wall_s

    @property
    def cpu_ms_per_object(self) -> float:
        """CPU of this process and of moto per object: what the path costs, whatever else the machine runs."""
        return (self.client_cpu_s + self.moto_cpu_s) / self.objects * 1000


def timed_pass(
    fn: Callable[[ObjectRef], int], refs: list[ObjectRef], pool: ThreadPoolExecutor | None, moto: Any
) -> Sample:
    m0 = moto.cpu_times()
    cpu0 = time.process_time()
    start = time.perf_counter()
    delivered = sum(fn(r) for r in refs) if pool is None else sum(pool.map(fn, refs))
    wall = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    m1 = moto.cpu_times()
    expected = sum(r.size or 0 for r in refs)
    if delivered != expected:
        raise RuntimeError(f"delivered {delivered} bytes, expected {expected}")
    return Sample(wall, len(refs), delivered, cpu, (m1.user + m1.system) - (m0.user + m0.system))


def summarize(samples: list[Sample]) -> dict[str, Any]:
    best = max(samples, key=lambda s: s.objects_per_s)
    out: dict[str, Any] = {
        "best_objects_per_s": round(best.objects_per_s, 1),
        "median_objects_per_s": round(statistics.median(s.objects_per_s for s in samples), 1),
        "best_mb_per_s": round(best.mb_per_s, 2),
        "median_mb_per_s": round(statistics.median(s.mb_per_s for s in samples), 2),
        "best_wall_s": round(best.wall_s, 3),
        "best_client_cpu_s": round(best.client_cpu_s, 3),
        "best_moto_cpu_s": round(best.moto_cpu_s, 3),
        # Share of the pass moto's process spent on a CPU: near 1.0 (one core), moto is the bottleneck.
        "moto_busy_share": round(best.moto_cpu_s / best.wall_s, 2),
        "client_busy_share": round(best.client_cpu_s / best.wall_s, 2),
        "cpu_ms_per_object_median": round(statistics.median(s.cpu_ms_per_object for s in samples), 2),
        "client_cpu_ms_per_object_median": round(
            statistics.median(s.client_cpu_s / s.objects for s in samples) * 1000, 2
        ),
        "moto_cpu_ms_per_object_median": round(statistics.median(s.moto_cpu_s / s.objects for s in samples) * 1000, 2),
        "passes_objects_per_s": [round(s.objects_per_s, 1) for s in samples],
    }
    if best.calls is not None:
        out["api_calls_per_pass"] = best.calls
    return out


def paired(num: list[Sample], den: list[Sample]) -> float:
    """Median over repeats of num/den rates from passes run back to back."""
    return round(statistics.median(a.objects_per_s / b.objects_per_s for a, b in zip(num, den, strict=True)), 3)


def measure(
    data: DataSet,
    threads: int,
    paths: dict[str, Callable[[ObjectRef], int]],
    repeats: int,
    moto: Any,
    clear: Callable[[], int],
    ledger_clock: LedgerClock,
    counter: CallCounter,
) -> dict[str, Any]:
    samples: dict[str, list[Sample]] = {name: [] for name in PATHS}
    pool = ThreadPoolExecutor(threads, thread_name_prefix="deliver") if threads > 1 else None
    try:
        for i in range(repeats):
            order = PATHS[i % len(PATHS) :] + PATHS[: i % len(PATHS)]  # rotate: no path always goes first
            for name in order:
                if name == "project":
                    clear()
                    ledger_clock.take()
                counter.take()
                s = timed_pass(paths[name], data.refs, pool, moto)
                s.calls = counter.take()
                if name == "project":
                    s.ledger_read_s, s.ledger_record_s = ledger_clock.take()
                samples[name].append(s)
            print(
                f"  {data.name}, {threads} thread(s), repeat {i}: "
                + ", ".join(f"{n} {samples[n][-1].objects_per_s:,.1f} obj/s" for n in PATHS),
                flush=True,
            )
    finally:
        if pool is not None:
            pool.shutdown()
    clear()
    full, bare, base = samples["project"], samples["project_no_ledger"], samples["baseline"]
    # Thread-seconds inside the ledger's calls over thread-seconds inside deliver(): the share of the full
    # path's time that is the ledger, for 1 and for 8 threads alike.
    ledger_share = statistics.median((s.ledger_read_s + s.ledger_record_s) / (s.wall_s * threads) for s in full)
    ratio = paired(full, base)
    return {
        "threads": threads,
        "baseline": {
            **summarize(base),
            "path": "plain boto3: get_object (central credentials), put_object of the same bytes (tenant's "
            "account, the sink's headers); no ledger",
        },
        "project": {
            **summarize(full),
            "path": "build_deliverer(settings).deliver(ObjectRef): tenant lookup (cached), ledger GetItem, "
            "GetObject, S3Sink PutObject (double hop, cached), ledger UpdateItem",
            "ledger_read_ms_per_object_median": round(
                statistics.median(s.ledger_read_s / s.objects for s in full) * 1000, 2
            ),
            "ledger_record_ms_per_object_median": round(
                statistics.median(s.ledger_record_s / s.objects for s in full) * 1000, 2
            ),
        },
        "project_no_ledger": {
            **summarize(bare),
            "path": "the same tenant directory, S3Sink, broker and S3 client in Deliverer(ledger=None)",
        },
        "ratio_objects_per_s_paired_median": ratio,
        # The same objects in every pass, so the MB/s ratio is the objects/s ratio.
        "ratio_mb_per_s_paired_median": paired_mb(full, base),
        "ratio_best": round(max(s.objects_per_s for s in full) / max(s.objects_per_s for s in base), 3),
        # Wall-clock independent: baseline CPU per object (this process + moto) over the project's.
        "ratio_cpu_per_object_median": round(
            statistics.median(b.cpu_ms_per_object for b in base) / statistics.median(f.cpu_ms_per_object for f in full),
            3,
        ),
        "ratio_no_ledger_paired_median": paired(bare, base),
        "ratio_full_vs_no_ledger_paired_median": paired(full, bare),
        "ledger_share_of_project_time_median": round(ledger_share, 3),
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio >= TARGET_RATIO,
    }


def paired_mb(num: list[Sample], den: list[Sample]) -> float:
    return round(statistics.median(a.mb_per_s / b.mb_per_s for a, b in zip(num, den, strict=True)), 3)


def same_headers(local: LocalEnvironment, ref: ObjectRef, project: Project, baseline: Baseline) -> dict[str, Any]:
    """Deliver one object both ways; the destination object's headers must be the same, its bytes the source's."""
    tenant_s3 = local.tenant_s3(TENANT.tenant_id)
    source = local.client("s3").get_object(Bucket=ref.bucket, Key=ref.key)["Body"].read()
    key = None
    heads = {}
    for name, path in (("project", project), ("baseline", baseline)):
        path(ref)
        listed = tenant_s3.list_objects_v2(Bucket=TENANT.bucket)["Contents"]
        key = next(o["Key"] for o in listed if o["Key"].endswith(ref.key.rsplit("/", 1)[1]))
        obj = tenant_s3.get_object(Bucket=TENANT.bucket, Key=key)
        if obj["Body"].read() != source:
            raise RuntimeError(f"{name}: the delivered object is not byte-identical to the source")
        heads[name] = {k: obj.get(k) for k in ("ContentType", "ContentEncoding", "Metadata")}
    if heads["project"] != heads["baseline"]:
        raise RuntimeError(f"the baseline does not write what the sink writes: {heads}")
    return {"destination_key": key, **heads["project"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    saved_env = dict(os.environ)
    out: dict[str, Any] = {}
    with MotoServer() as server:
        try:
            local = provision(server.endpoint_url, tenants=(TENANT,))
            os.environ.update(local.env)  # the pipeline's clients follow the environment, as in a worker
            # Every PUT into the central bucket would fan out S3 → SNS → SQS in moto; not needed here.
            local.client("s3").put_bucket_notification_configuration(
                Bucket=local.names.bucket, NotificationConfiguration={}
            )
            sets = [
                write_set(local, "typical", args.typical_unique, args.typical_copies, args.typical_events, args.seed),
                write_set(local, "large", args.large_unique, args.large_copies, args.large_events, args.seed + 1),
            ]
            for d in sets:
                print(f"data {d.name}: {d.info}", flush=True)
            moto = psutil.Process(server._proc.pid)  # type: ignore[union-attr]

            full = build_deliverer(local.settings)
            bare = Deliverer(full.tenants, full.sinks, None, s3=full.s3)
            project, no_ledger, baseline = Project(full), Project(bare), Baseline(local)
            paths: dict[str, Callable[[ObjectRef], int]] = {
                "baseline": baseline,
                "project": project,
                "project_no_ledger": no_ledger,
            }
            ddb = local.client("dynamodb")

            def clear() -> int:
                return clear_ledger(ddb, local.names.ledger_table)

            # Warm-up (STS, clients, tenant lookup, first connections) and the fairness check.
            out["destination_object"] = same_headers(local, sets[0].refs[0], project, baseline)
            no_ledger(sets[0].refs[0])
            clear()
            ledger_clock = LedgerClock(full)
            sink = full.sinks[DeliveryType.S3]
            dest = full.tenants.get(TENANT.tenant_id).deliveries[0]
            # The clients the paths use, to count their calls: the Deliverer's S3 and DynamoDB clients, the
            # sink's cached tenant client, and the baseline's two.
            counter = CallCounter(
                full.s3,
                full.ledger._ddb(),  # type: ignore[union-attr]
                sink._client(dest),  # type: ignore[attr-defined]
                baseline.central,
                baseline.tenant,
            )
            out["sets"] = {}
            for d in sets:
                out["sets"][d.name] = {"data": d.info, "runs": []}
                repeats = args.large_repeats if d.name == "large" else args.repeats
                for threads in args.threads:
                    m = measure(d, threads, paths, repeats, moto, clear, ledger_clock, counter)
                    out["sets"][d.name]["runs"].append(m)
                    print(
                        f"{d.name}, {threads} thread(s): project {m['project']['best_objects_per_s']} obj/s "
                        f"({m['project']['best_mb_per_s']} MB/s) vs baseline {m['baseline']['best_objects_per_s']} "
                        f"obj/s: ratio {m['ratio_objects_per_s_paired_median']} (paired median); "
                        f"without ledger {m['ratio_no_ledger_paired_median']}",
                        flush=True,
                    )
            out["sts_calls"] = sink._creds.sts_calls  # type: ignore[attr-defined]
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
    return out


def tree() -> dict[str, Any]:
    """The commit measured, and any uncommitted change to the code under test (results depend on it)."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "uncommitted_pipeline_files": [
            line[3:] for line in git("status", "--porcelain", "--", "pipeline").splitlines()
        ],
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--typical-unique", type=int, default=40, help="typical objects generated (from 8 on, a multiple of 8)"
    )
    p.add_argument("--typical-copies", type=int, default=4, help="each typical object is also copied to make this many")
    p.add_argument("--typical-events", type=int, default=1000, help="events per typical object")
    p.add_argument("--large-unique", type=int, default=1, help="large objects generated")
    p.add_argument("--large-copies", type=int, default=12, help="each large object is also copied to make this many")
    p.add_argument("--large-events", type=int, default=80_000, help="events per large object (about 64 MiB raw)")
    p.add_argument("--threads", type=int, action="append", help="concurrency of every path (default 1 and 8)")
    p.add_argument("--repeats", type=int, default=3, help="rotated baseline/project/no-ledger passes, typical set")
    p.add_argument("--large-repeats", type=int, default=5, help="the same for the large set (its passes are short)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "s3.json")
    args = p.parse_args(argv)
    args.threads = args.threads or [1, 8]
    mach = machine("moto", "boto3", "botocore")
    t_all = time.monotonic()
    measured = run(args)
    result = {
        "benchmark": "s3",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench s3  (= python -m bench.s3_bench "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + ")",
        "machine": {**mach, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "tree": tree(),
        "tenant": {"tenant_id": TENANT.tenant_id, "account_id": TENANT.account_id, "bucket": TENANT.bucket},
        "target_ratio": TARGET_RATIO,
        **measured,
        "meets_target": {
            f"{name}/{m['threads']}": m["meets_target"] for name, s in measured["sets"].items() for m in s["runs"]
        },
        "wall_s": round(time.monotonic() - t_all, 1),
    }
    write_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
