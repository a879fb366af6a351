"""Fleet benchmark (issue #18): the replay driver's memory does not grow with the window, and listing
scales with listing workers, against a simulated fleet that answers real ListObjectsV2 requests.

    .venv/bin/python -m bench fleet              # or: .venv/bin/python bench/fleet_bench.py   (7-9 min)
    .venv/bin/python bench/fleet_bench.py --sizes 100000 --scaling 1,2 --no-delivery   # quicker

The full comparison (12-15 min) adds `--baseline-sizes 100000,300000,1000000 --scaling-tenants 21
--output bench/results/fleet_full.json`: the old listing at 1M objects too, and scaling on the 300k set.

**The stand-in.** A `ThreadingHTTPServer` in child processes (`--servers` of them on one port, SO_REUSEPORT)
serves bucket `fleet-logs` from a model, not from stored keys: cluster `prod-1`, tenants `tenant-0000…`,
5 applications x 10 pods per tenant, each pod writing one object every 5 minutes (pods offset from one
another) from a day before the window to 10 minutes after it (a daily backfill run shortly after
midnight). Keys are made with `pipeline.keys.format_filename`, so they parse. It answers ListObjectsV2 as
S3 does, over HTTP to boto3: Prefix, Delimiter='/', StartAfter, ContinuationToken, MaxKeys (at most 1,000),
EncodingType=url echoed when asked for; the response carries Contents (Key, LastModified, ETag, Size,
StorageClass), CommonPrefixes, KeyCount, IsTruncated and NextContinuationToken. A pod's listing from a
StartAfter bisects the pod's key sequence, so a LIST costs the keys it returns, not the pod's history.
GetObject (and HeadObject) answer any listed key with a gzipped NDJSON body of Vector records whose events
lie in the 5 minutes before the object's write time; the body is padded (a gzip header comment) to the
exact Size the listing gave. The servers count the requests they serve in shared memory.

**The driver.** Every measurement runs in a fresh child process (this file with `--child`), which reads its
own peak RSS (`VmHWM` of /proc/self/status) at the end, and before listing (after imports, `ray.init` and
warm-up) for the baseline. The streaming driver is the replay's own: `tenant_prefixes` (the one LIST of the
bucket's top level), a `Scheduler` with `UnitPacker(4)`, `window_totals`, `ReplayReport`, and a
`RayBackend(spec, listers=N, workers=0)` on a Ray cluster the bench starts once (`ray start --head
--num-cpus=4`, its environment pointing boto3 at the stand-in: AWS_ENDPOINT_URL_S3, dummy credentials).
The `SurveySpec` holds one `Tenant` per tenant with one CloudWatch delivery, routing from `routing_for` with
the ledger off (`--redeliver`, no ledger table: there is no DynamoDB here, and a dry run reads no ledger
without one). Before timing, each listing worker answers one empty `descend`, so actor start-up (reported
as `startup_s`) is not listing time. Listing time runs from the top-level LIST to `on_listed`.

**Why a dry run (workers=0).** Units are packed and counted, not delivered. Delivering 1M objects would put
1M GETs (and decoding) through the stand-in on the same 2 cores: it would measure the stand-in and the
decoder, which other benchmarks measure. What delivery adds to the driver is bounded by the worker count,
not by the window: units waiting (the queue, packer buffer included, is capped at QUEUED_OBJECTS_MAX
objects, and surveys pause while it is full) and IN_FLIGHT_PER_WORKER units per worker; a dry run keeps
no units at all, so this bound is not exercised here (the scheduler's unit tests check it). A small
real-delivery point (`--delivery-tenants` tenants, a 2-hour window, 2 `DeliveryWorker`s with the `null`
sink, tenants in a moto DynamoDB) shows units flowing through real workers and every object delivered, at
a size where the GETs and decoding take seconds.

**Baseline.** `list_window`, the in-memory listing the inventory still uses (and the driver used before),
in a fresh child: it holds every listed object, so its peak grows with the window. By default at 100k and
300k only: at 1M it lists in one process for about 4.5 minutes (`--baseline-sizes` adds it).

**Sizes.** A 1-day window lists about 290 objects per pod (the day, plus the 5-minute write slack at
either end), 14,500 per tenant: 7, 21 and 69 tenants give about 100k, 300k and 1M objects. The memory
series uses 4 listing workers. The listing-time series (1, 2, 4 listing workers) runs on the 100k set by
default (`--scaling-tenants 21` for the 300k set), each in a fresh driver, interleaved over `--repeats`.
Listing is CPU-bound here (botocore parses every page), so on 2 cores 4 workers gain little over 2.
Expected LIST calls: 1 (top level) + tenants + applications + pods, every level one page (the issue's
"2 + applications + pods" for one tenant). The result also holds each actor's peak RSS (VmHWM of the Ray
worker processes of this cluster) and, by tracemalloc, the bytes of one ObjectSpec as the driver holds it.

Targets (issue #18): driver peak RSS flat within 1.2x across 100k/300k/1M and under 1 GiB; listing time
falls as listing workers are added, 2 vs 1 >= 1.5 (on 2 cores); LIST calls as expected.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import itertools
import json
import multiprocessing as mp
import os
import pickle
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote
from xml.sax.saxutils import escape

import orjson

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.baseline import add_release_options, code_path, from_tree, release_beside  # noqa: E402
from bench.machine import machine, write_result  # noqa: E402
from devstack.server import free_port  # noqa: E402
from pipeline.keys import FILENAME_TIME_LEN, format_filename, format_key, listing_bounds, parse_key  # noqa: E402
from pipeline.records import vector_record  # noqa: E402

RAY = str(Path(sys.executable).parent / "ray")
BUCKET = "fleet-logs"
REGION = "us-east-1"
CLUSTER = "prod-1"
APPLICATIONS = ("api", "checkout", "frontend", "payments", "worker")  # sorted, as S3 lists them
PODS_PER_APP = 10
PODS_PER_TENANT = len(APPLICATIONS) * PODS_PER_APP
CADENCE_S = 300  # one object per pod every 5 minutes (Vector's batch timeout)
WINDOW = timedelta(days=1)
HISTORY_BEFORE = timedelta(days=1)  # data the pods wrote before the window (skipped by StartAfter)
TAIL_AFTER = timedelta(minutes=10)  # data after the window: the backfill runs shortly after midnight
MAX_KEYS = 1000
RECORDS_PER_OBJECT = (150, 300, 600)  # three body sizes, by pod
PAD_MARGIN = 512  # bytes the nominal size leaves for bodies that compress a little worse
PACKER_WORKERS = 4  # the delivery workers the dry run plans for (UnitPacker), as the job does
RAY_CPUS = 4
OBJECT_STORE_BYTES = 256 * 1024 * 1024
LIST_DELIMITED, LIST_OBJECTS, GETS, OTHER = range(4)  # shared counters of the stand-in

TARGET_RSS_RATIO = 1.2
TARGET_RSS_MIB = 1024
TARGET_SCALING_2_VS_1 = 1.5
SPEC_SAMPLE = 100_000


# --- the simulated fleet --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fleet:
    """The key space, computed: tenants x applications x pods, one object per pod every CADENCE_S seconds
    from `start` to `end` (epoch seconds), each pod offset by a few seconds from the others."""

    tenants: int
    start: int
    end: int

    @staticmethod
    def tenant(t: int) -> str:
        return f"tenant-{t:04d}"

    @staticmethod
    def pod(application: str, p: int) -> str:
        return f"{application}-6d5f8c7b9-{p:05d}"

    def tenant_index(self, name: str) -> int | None:
        if len(name) != 11 or not name.startswith("tenant-") or not name[7:].isdigit():
            return None
        t = int(name[7:])
        return t if t < self.tenants else None

    @staticmethod
    def pod_index(application: str, name: str) -> int | None:
        head = f"{application}-6d5f8c7b9-"
        if not name.startswith(head) or len(name) != len(head) + 5 or not name[len(head) :].isdigit():
            return None
        p = int(name[len(head) :])
        return p if p < PODS_PER_APP else None

    @staticmethod
    def pod_id(t: int, a: int, p: int) -> int:
        return (t * len(APPLICATIONS) + a) * PODS_PER_APP + p

    @staticmethod
    def offset(pod_id: int) -> int:
        return (pod_id * 37) % CADENCE_S

    def objects_of(self, pod_id: int) -> int:
        return max(0, (self.end - self.start - self.offset(pod_id)) // CADENCE_S + 1)

    def write_time(self, pod_id: int, i: int) -> int:
        return self.start + self.offset(pod_id) + i * CADENCE_S

    def filename(self, pod_id: int, i: int) -> str:
        uid = f"{pod_id:08x}-{i:04x}-4{pod_id % 4096:03x}-8000-{(pod_id * 2654435761 + i * 40503) & (2**48 - 1):012x}"
        return format_filename(datetime.fromtimestamp(self.write_time(pod_id, i), UTC), uid)

    def children(self, path: list[str]) -> list[str] | None:
        """The names one level below a complete path (cluster, tenant, application), or None if none."""
        depth = len(path)
        if depth == 0:
            return [CLUSTER]
        if path[0] != CLUSTER:
            return None
        if depth == 1:
            return [self.tenant(t) for t in range(self.tenants)]
        if self.tenant_index(path[1]) is None:
            return None
        if depth == 2:
            return list(APPLICATIONS)
        if path[2] not in APPLICATIONS:
            return None
        if depth == 3:
            return [self.pod(path[2], p) for p in range(PODS_PER_APP)]
        return None

    def pod_of(self, path: list[str]) -> int | None:
        """The pod id of a complete cluster/tenant/application/pod path, or None."""
        if len(path) != 4 or path[0] != CLUSTER or path[2] not in APPLICATIONS:
            return None
        t = self.tenant_index(path[1])
        p = self.pod_index(path[2], path[3])
        if t is None or p is None:
            return None
        return self.pod_id(t, APPLICATIONS.index(path[2]), p)

    def pod_keys(self, prefix: str, pod_id: int, partial: str, after: str) -> Iterator[tuple[str, int, int]]:
        """(key, pod id, index) of the pod's keys that start with prefix + partial and sort after `after`."""
        n = self.objects_of(pod_id)
        floor = max(after, prefix + partial) if partial else after
        first = bisect_right(range(n), floor, key=lambda i: prefix + self.filename(pod_id, i))
        for i in range(first, n):
            name = self.filename(pod_id, i)
            if not name.startswith(partial):
                return
            yield prefix + name, pod_id, i

    def entries(self, prefix: str, delimited: bool, after: str) -> Iterator[tuple[str, int, int]]:
        """(key or common prefix, pod id, index) under `prefix`, after `after`, in S3's order; a common
        prefix has index -1."""
        *path, partial = prefix.split("/")
        base = "".join(f"{p}/" for p in path)
        pod = self.pod_of(path)
        if pod is not None:
            yield from self.pod_keys(base, pod, partial, after)
            return
        for name in self.children(path) or ():
            if not name.startswith(partial):
                continue
            child = f"{base}{name}/"
            if child + "\uffff" <= after:  # everything under it sorts before the marker
                continue
            if delimited:
                yield child, -1, -1
            else:
                yield from self.entries(child, False, after)

    def object_of(self, key: str) -> tuple[int, int] | None:
        """(pod id, index) of a key the fleet holds, else None."""
        path = key.split("/")
        pod = self.pod_of(path[:4])
        if pod is None or len(path) != 5:
            return None
        try:
            i = int(path[4].split("-")[3], 16)
        except (IndexError, ValueError):
            return None
        if i >= self.objects_of(pod) or self.filename(pod, i) != path[4]:
            return None
        return pod, i

    def listed(self, tenants: int, since: datetime, until: datetime) -> int:
        """How many objects a window listing must find in the first `tenants` tenants (listing_bounds)."""
        count = 0
        for t in range(tenants):
            for a, app in enumerate(APPLICATIONS):
                for p in range(PODS_PER_APP):
                    pod_id = self.pod_id(t, a, p)
                    prefix = f"{CLUSTER}/{self.tenant(t)}/{app}/{self.pod(app, p)}/"
                    start, stop = listing_bounds(prefix, since, until)
                    keys = range(self.objects_of(pod_id))

                    def key(i: int, prefix: str = prefix, pod_id: int = pod_id) -> str:
                        return prefix + self.filename(pod_id, i)

                    count += bisect_right(keys, stop, key=key) - bisect_right(keys, start, key=key)
        return count


def etag_of(key: str) -> str:
    return hashlib.md5(key.encode(), usedforsecurity=False).hexdigest()


def _iso_ms(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{epoch_ms % 1000:03d}Z"


def raw_body(key: str, written: int, records: int) -> bytes:
    """NDJSON Vector records spread over the 5 minutes before `written`: only the timestamps depend on it."""
    cluster, tenant, application, pod, _ = key.split("/")
    lines = []
    for j in range(records):
        ts = _iso_ms((written - CADENCE_S) * 1000 + j * CADENCE_S * 1000 // records)
        message = f'10.0.{j % 7}.{j % 251} - - "GET /api/v1/orders/{j} HTTP/1.1" 200 {512 + j} "kube-probe/1.29"'
        lines.append(orjson.dumps(vector_record(message, ts, cluster, tenant, application, pod)))
    return b"\n".join(lines) + b"\n"


def pad_gzip(gz: bytes, size: int) -> bytes:
    """A gzip member of exactly `size` bytes: the same data, with a header comment (FCOMMENT) as padding."""
    pad = size - len(gz)
    if pad <= 1:
        return gz
    return gz[:3] + bytes([gz[3] | 0x10]) + gz[4:10] + b"p" * (pad - 1) + b"\0" + gz[10:]


def nominal_sizes(fleet: Fleet) -> tuple[int, ...]:
    """The Size listed for each body variant: a sample body's gzip size plus a margin."""
    key = f"{CLUSTER}/{fleet.tenant(0)}/{APPLICATIONS[0]}/{fleet.pod(APPLICATIONS[0], 0)}/{fleet.filename(0, 0)}"
    return tuple(len(gzip.compress(raw_body(key, fleet.start, n), 6, mtime=0)) + PAD_MARGIN for n in RECORDS_PER_OBJECT)


def body_of(fleet: Fleet, sizes: tuple[int, ...], key: str, pod: int, i: int) -> bytes:
    variant = pod % len(RECORDS_PER_OBJECT)
    gz = gzip.compress(raw_body(key, fleet.write_time(pod, i), RECORDS_PER_OBJECT[variant]), 6, mtime=0)
    return pad_gzip(gz, sizes[variant])


def _http_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


class _Server(ThreadingHTTPServer):
    allow_reuse_port = True
    daemon_threads = True
    request_queue_size = 256
    fleet: Fleet
    sizes: tuple[int, ...]
    counters: Any  # multiprocessing.Array('q')


class _Handler(BaseHTTPRequestHandler):
    """ListObjectsV2, GetObject and HeadObject of one bucket, path-style, as boto3 sends them."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _count(self, which: int) -> None:
        with self.server.counters.get_lock():
            self.server.counters[which] += 1

    def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None, head: bool = False) -> None:
        self.send_response(status)
        for k, v in (headers or {"Content-Type": "application/xml"}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, code: str, message: str, head: bool = False) -> None:
        body = f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code><Message>{escape(message)}</Message>"
        self._send(status, (body + "</Error>").encode(), head=head)

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _dispatch(self, head: bool) -> None:
        path, _, query = self.path.partition("?")
        bucket, _, key = unquote(path.lstrip("/")).partition("/")
        if bucket != BUCKET:
            self._count(OTHER)
            self._error(404, "NoSuchBucket", "The specified bucket does not exist", head)
        elif key:
            self._count(GETS)
            self._object(key, head)
        else:
            params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
            if head or params.get("list-type") != "2":
                self._count(OTHER)
                self._send(200, b"", {"Content-Type": "application/xml"}, head)
                return
            self._list(params)

    def _object(self, key: str, head: bool) -> None:
        fleet = self.server.fleet
        found = fleet.object_of(key)
        if found is None:
            self._error(404, "NoSuchKey", "The specified key does not exist.", head)
            return
        pod, i = found
        body = body_of(fleet, self.server.sizes, key, pod, i)
        headers = {
            "Content-Type": "application/octet-stream",
            "ETag": f'"{etag_of(key)}"',
            "Last-Modified": _http_time(fleet.write_time(pod, i) + 3),
        }
        self._send(200, body, headers, head)

    def _list(self, params: dict[str, str]) -> None:
        fleet = self.server.fleet
        prefix = params.get("prefix", "")
        delimiter = params.get("delimiter", "")
        if delimiter not in ("", "/"):
            self._count(OTHER)
            self._error(400, "NotImplemented", "only Delimiter='/' is simulated")
            return
        self._count(LIST_DELIMITED if delimiter else LIST_OBJECTS)
        max_keys = min(MAX_KEYS, int(params.get("max-keys", MAX_KEYS)))
        start_after = params.get("start-after", "")
        token = params.get("continuation-token", "")
        after = max(start_after, unquote(token)) if token else start_after
        url = params.get("encoding-type") == "url"

        def enc(s: str) -> str:
            return quote(s, safe="/~") if url else escape(s)

        taken: list[tuple[str, int, int]] = []
        truncated = False
        for entry in fleet.entries(prefix, bool(delimiter), after):
            if len(taken) == max_keys:
                truncated = True
                break
            taken.append(entry)
        out = [
            '<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
            f"<Name>{BUCKET}</Name><Prefix>{enc(prefix)}</Prefix>",
        ]
        if start_after:
            out.append(f"<StartAfter>{enc(start_after)}</StartAfter>")
        if token:
            out.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
        out.append(f"<KeyCount>{len(taken)}</KeyCount><MaxKeys>{max_keys}</MaxKeys>")
        if delimiter:
            out.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
        if url:
            out.append("<EncodingType>url</EncodingType>")
        out.append(f"<IsTruncated>{'true' if truncated else 'false'}</IsTruncated>")
        if truncated:
            last, _, last_index = taken[-1]
            marker = last + "\uffff" if last_index < 0 else last
            out.append(f"<NextContinuationToken>{quote(marker, safe='')}</NextContinuationToken>")
        sizes = self.server.sizes
        for name, pod, i in taken:
            if i < 0:
                out.append(f"<CommonPrefixes><Prefix>{enc(name)}</Prefix></CommonPrefixes>")
                continue
            modified = datetime.fromtimestamp(fleet.write_time(pod, i) + 3, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
            out.append(
                f"<Contents><Key>{enc(name)}</Key><LastModified>{modified}</LastModified>"
                f"<ETag>&quot;{etag_of(name)}&quot;</ETag><Size>{sizes[pod % len(sizes)]}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
        out.append("</ListBucketResult>")
        self._send(200, "".join(out).encode())


def serve(port: int, fleet: Fleet, counters: Any) -> None:
    """Child process: one of the stand-in's servers (they share the port with SO_REUSEPORT)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = _Server(("127.0.0.1", port), _Handler)
    server.fleet, server.sizes, server.counters = fleet, nominal_sizes(fleet), counters
    server.serve_forever(poll_interval=0.5)


class StandIn:
    """`servers` server processes on one port, and the request counters they share."""

    def __init__(self, fleet: Fleet, servers: int) -> None:
        self.fleet = fleet
        self.port = free_port()
        self._ctx = mp.get_context("spawn")
        self.counters = self._ctx.Array("q", 4)
        self._procs = [
            self._ctx.Process(target=serve, args=(self.port, fleet, self.counters), daemon=True) for _ in range(servers)
        ]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StandIn:
        for proc in self._procs:
            proc.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            time.sleep(0.1)
        raise TimeoutError("the stand-in did not come up")

    def snapshot(self) -> list[int]:
        with self.counters.get_lock():
            return [int(self.counters[i]) for i in range(4)]

    def stop(self) -> None:
        for proc in self._procs:
            if proc.is_alive():
                proc.terminate()
        for proc in self._procs:
            proc.join(10)


# --- the Ray cluster -----------------------------------------------------------------------------------


class RayHead:
    """One `ray start --head --block` child, with its own temp dir and ports; stopping it stops only it."""

    def __init__(self, env: dict[str, str], cpus: int) -> None:
        self.env = env
        self.cpus = cpus
        self.temp = Path(tempfile.mkdtemp(prefix="rfb", dir="/tmp"))  # short: Ray's socket paths are limited
        self.port = free_port()
        self.log = self.temp.parent / f"{self.temp.name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RayHead:
        args = [
            *(RAY, "start", "--head", "--block", f"--num-cpus={self.cpus}", "--include-dashboard=false"),
            f"--port={self.port}",
            f"--temp-dir={self.temp}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--ray-client-server-port={free_port()}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
        ]
        with open(self.log, "wb") as log:
            self._proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=log, start_new_session=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self._proc.returncode}: {self.log.read_text()[-2000:]}")
            if "Ray runtime started" in self.log.read_text(errors="replace"):
                return self
            time.sleep(0.5)
        raise TimeoutError(f"the Ray head did not start: {self.log.read_text()[-2000:]}")

    def stop(self) -> None:
        import psutil

        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(60)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        # Anything of this cluster left behind (its processes name its temp dir); nothing else is touched.
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if str(self.temp) in cmdline and proc.pid != os.getpid():
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        shutil.rmtree(self.temp, ignore_errors=True)
        self.log.unlink(missing_ok=True)


# --- the driver, in a child process ---------------------------------------------------------------------


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def _mib(kib: int) -> float:
    return round(kib / 1024, 1)


class _NoInterrupt:
    requested = False


def worker_peaks(ray_temp: str) -> dict[str, list[float]]:
    """Peak RSS (MiB) of this cluster's Ray actors, by class: the children of the raylet that runs in
    `ray_temp` whose process title names a replay actor."""
    import psutil

    peaks: dict[str, list[float]] = {}
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] != "raylet" or not any(ray_temp in a for a in proc.info["cmdline"] or ()):
            continue
        for child in proc.children():
            with contextlib.suppress(psutil.Error, OSError, KeyError):
                title = child.name()
                for cls in ("ListingWorker", "DeliveryWorker"):
                    if title.startswith(f"ray::{cls}"):
                        status = Path(f"/proc/{child.pid}/status").read_text().splitlines()
                        kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
                        peaks.setdefault(cls, []).append(_mib(kib))
    return {cls: sorted(v) for cls, v in peaks.items()}


def _tenants(names: list[str]) -> dict[str, Any]:
    from pipeline.tenants import Delivery, DeliveryType, Tenant

    def tenant(name: str) -> Tenant:
        role = f"arn:aws:iam::111111111111:role/CustomerLogDistribution-{name}"
        delivery = Delivery(name, "cloudwatch", DeliveryType.CLOUDWATCH, role, REGION, log_group=f"/logs/{name}")
        return Tenant(name, (delivery,))

    return {n: tenant(n) for n in names}


def child_streaming(cfg: dict[str, Any]) -> dict[str, Any]:
    """The replay's streaming driver on Ray, a dry run unless cfg['deliver']; peak RSS and figures."""
    t_start = time.perf_counter()
    import ray

    from pipeline import aws
    from pipeline.replay.job import ReplayOptions, routing_for
    from pipeline.replay.plan import UnitPacker, window_totals
    from pipeline.replay.report import ReplayReport
    from pipeline.replay.scheduler import QUEUED_OBJECTS_MAX, Scheduler
    from pipeline.replay.survey import SurveySpec
    from pipeline.replay.workers import RayBackend

    ListingFilter, tenant_prefixes = from_tree("pipeline.source.listing", "ListingFilter", "tenant_prefixes")

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, configure_logging=False)
    since, until = datetime.fromisoformat(cfg["since"]), datetime.fromisoformat(cfg["until"])
    names = [Fleet.tenant(t) for t in range(cfg["tenants"])]
    now = datetime.now(UTC)
    opts = ReplayOptions(tuple(names), since, until, sink=cfg.get("sink", "cloudwatch"), redeliver=True)
    flt = ListingFilter(tenants=opts.tenants, since=since, until=until)
    deliver = int(cfg.get("deliver", 0))
    spec = SurveySpec(BUCKET, flt, _tenants(names), routing_for(opts), now, "")
    make_worker = _delivery_workers(opts, cfg) if deliver else (lambda: None)
    backend = RayBackend(spec, listers=cfg["listers"], workers=deliver, make_worker=make_worker)
    s3 = aws.client("s3")
    s3.head_bucket(Bucket=BUCKET)  # the client's first-call costs, not a LIST
    warm = [backend.descend([], ()) for _ in range(cfg["listers"])]  # one call reaches each listing worker
    for f in warm:
        f.result()
    startup_s = time.perf_counter() - t_start
    hwm_before = status_kib("VmHWM")

    totals = window_totals(since, until, now)
    report = ReplayReport(totals)
    listed_at: list[float] = []
    queued_peak = [0]
    t0 = time.perf_counter()
    prefixes, totals.list_calls = tenant_prefixes(s3, BUCKET, flt)
    scheduler = Scheduler(
        backend,
        totals,
        report,
        UnitPacker(deliver or PACKER_WORKERS),
        flt,
        on_listed=lambda: listed_at.append(time.perf_counter()),
    )

    def progress() -> None:
        queued_peak[0] = max(queued_peak[0], scheduler._queued_objects())

    scheduler.on_progress = progress
    scheduler.run(prefixes, _NoInterrupt())
    done_s = time.perf_counter() - t0
    actors = worker_peaks(cfg["ray_temp"])
    backend.close()
    doc = report.to_dict() if deliver else {}
    return {
        "listers": cfg["listers"],
        "delivery_workers": deliver,
        "tenants": cfg["tenants"],
        "objects_listed": totals.objects_listed,
        "objects_to_deliver": totals.objects_to_deliver,
        "work_units": totals.work_units,
        "list_calls_counted_by_plan": totals.list_calls,
        "pods_listed": totals.pods_listed,
        "listing_complete": totals.listing_complete,
        "listing_s": round(listed_at[0] - t0, 3) if listed_at else None,
        "run_s": round(done_s, 3),
        "startup_s": round(startup_s, 2),
        "queued_objects_peak_seen": queued_peak[0],
        "queued_objects_max": QUEUED_OBJECTS_MAX,
        "report_failed": report.failed.count,
        "objects_delivered": doc.get("objects_delivered"),
        "events_delivered": doc.get("events_delivered"),
        "vm_hwm_before_listing_mib": _mib(hwm_before),
        "vm_hwm_mib": _mib(status_kib("VmHWM")),
        "vm_rss_end_mib": _mib(status_kib("VmRSS")),
        "actor_vm_hwm_mib": actors,
    }


def _delivery_workers(opts: Any, cfg: dict[str, Any]) -> Any:
    """A factory of the job's own DeliveryWorker actors (sink from opts), with the settings of the env."""
    TimeWindow = from_tree("pipeline.delivery.routing", "TimeWindow")
    from pipeline.replay.workers import DeliveryWorker, worker_options
    from pipeline.settings import Settings
    from pipeline.timespec import to_ms

    settings = Settings.from_env().with_overrides(bucket=BUCKET)  # objects are read from the stand-in
    window = TimeWindow(to_ms(opts.since), to_ms(opts.until))

    def make() -> Any:
        return DeliveryWorker.options(**worker_options(cfg["worker_memory_mib"])).remote(
            settings, opts.sink, window, True, None, cfg["worker_memory_mib"], ()
        )

    return make


def child_in_memory(cfg: dict[str, Any]) -> dict[str, Any]:
    """The old driver's listing: `list_window`, every listed object held; peak RSS and figures."""
    from pipeline import aws

    ListingFilter, list_window = from_tree("pipeline.source.listing", "ListingFilter", "list_window")

    since, until = datetime.fromisoformat(cfg["since"]), datetime.fromisoformat(cfg["until"])
    names = tuple(Fleet.tenant(t) for t in range(cfg["tenants"]))
    s3 = aws.client("s3")
    s3.head_bucket(Bucket=BUCKET)  # the client's first-call costs, not a LIST
    hwm_before = status_kib("VmHWM")
    t0 = time.perf_counter()
    listing = list_window(s3, BUCKET, ListingFilter(tenants=names, since=since, until=until))
    listing_s = time.perf_counter() - t0
    objects = sum(len(v) for v in listing.pods.values())
    hwm = status_kib("VmHWM")
    return {
        "tenants": cfg["tenants"],
        "objects_listed": objects,
        "list_calls_counted_by_listing": listing.list_calls,
        "listing_s": round(listing_s, 3),
        "vm_hwm_before_listing_mib": _mib(hwm_before),
        "vm_hwm_mib": _mib(hwm),
        "bytes_per_object_held": round((hwm - hwm_before) * 1024 / max(1, objects)),
    }


def child_main(raw: str) -> int:
    cfg = json.loads(raw)
    result = child_streaming(cfg) if cfg["mode"] == "streaming" else child_in_memory(cfg)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


def run_child(cfg: dict[str, Any], env: dict[str, str], timeout: float = 900) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"child {cfg} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
    return result


# --- what the driver holds per object --------------------------------------------------------------------


def object_sizes(fleet: Fleet, n: int) -> dict[str, Any]:
    """Bytes per object, by tracemalloc: an ObjectSpec as the driver holds it (unpickled from a survey, as Ray
    hands it over: n of them), and a ListedObject with its parsed key as `list_window` builds it (n / 10)."""
    from pipeline.replay.plan import ObjectSpec

    ListedObject = from_tree("pipeline.source.listing", "ListedObject")

    keys = []
    pods = fleet.tenants * PODS_PER_TENANT
    for j in range(n):
        pod_id = j % pods
        t, rest = divmod(pod_id, PODS_PER_TENANT)
        a, p = divmod(rest, PODS_PER_APP)
        app = APPLICATIONS[a]
        keys.append(f"{CLUSTER}/{fleet.tenant(t)}/{app}/{fleet.pod(app, p)}/{fleet.filename(pod_id, j // pods)}")
    # What spec_of makes in a survey: the tenant is a segment of the parsed key, a string of its own.
    blob = pickle.dumps([ObjectSpec(k, 12345, etag_of(k), 1.8e9 + i, k.split("/")[1]) for i, k in enumerate(keys)])
    tracemalloc.start()
    specs = pickle.loads(blob)
    spec_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del specs
    sample = keys[: n // 10]
    etags = [etag_of(k) for k in sample]
    modified = datetime(2026, 1, 1, tzinfo=UTC)
    tracemalloc.start()
    held = [
        ListedObject(k, 12345, e, modified + timedelta(seconds=i), parse_key(k))
        for i, (k, e) in enumerate(zip(sample, etags, strict=True))
    ]
    listed_bytes = tracemalloc.get_traced_memory()[0] - sys.getsizeof(held)
    tracemalloc.stop()
    del held
    return {
        "objects": n,
        "object_spec_bytes": round(spec_bytes / n),
        "listed_object_bytes": round(listed_bytes / len(sample)),
        "key_chars": round(sum(map(len, keys)) / n),
    }


# --- the benchmark ----------------------------------------------------------------------------------------


def self_check(stand_in: StandIn, since: datetime, until: datetime) -> dict[str, Any]:
    """The stand-in against boto3: keys parse and round-trip, pages continue, bodies decode to their Size."""
    import boto3
    from botocore.config import Config

    from pipeline.records import decode_events

    fleet = stand_in.fleet
    s3 = boto3.client("s3", endpoint_url=stand_in.endpoint, config=Config(retries={"max_attempts": 1}))
    tenants = [
        p["Prefix"]
        for p in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{CLUSTER}/", Delimiter="/", MaxKeys=3)["CommonPrefixes"]
    ]
    pages = list(
        s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"{CLUSTER}/", Delimiter="/", PaginationConfig={"PageSize": 3}
        )
    )
    all_tenants = [p["Prefix"] for page in pages for p in page.get("CommonPrefixes", [])]
    assert all_tenants == [f"{CLUSTER}/{fleet.tenant(t)}/" for t in range(fleet.tenants)], all_tenants[:5]
    assert tenants == all_tenants[:3]
    pod = f"{CLUSTER}/{fleet.tenant(0)}/{APPLICATIONS[1]}/{fleet.pod(APPLICATIONS[1], 3)}/"
    start, _ = listing_bounds(pod, since, until)
    paged = [
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=pod, StartAfter=start, PaginationConfig={"PageSize": 100}
        )
        for o in page.get("Contents", [])
    ]
    whole = s3.list_objects_v2(Bucket=BUCKET, Prefix=pod)
    assert paged and paged == [o["Key"] for o in whole["Contents"] if o["Key"] > start]
    assert all(a < b for a, b in itertools.pairwise(paged))
    first = paged[0]
    parsed = parse_key(first)
    uid = parsed.filename[FILENAME_TIME_LEN + 1 : -len(".json.gz")]
    assert parsed.write_time is not None
    assert format_key(parsed.cluster, parsed.tenant, parsed.application, parsed.pod, parsed.write_time, uid) == first
    assert since - timedelta(seconds=2 * CADENCE_S) <= parsed.write_time <= since
    partial = s3.list_objects_v2(Bucket=BUCKET, Prefix=first[:-20])["Contents"]
    assert [o["Key"] for o in partial] == [first]
    whole_tenant = sum(
        1
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=f"{CLUSTER}/{fleet.tenant(0)}/")
        for _ in page.get("Contents", [])
    )
    expected = sum(
        fleet.objects_of(fleet.pod_id(0, a, p)) for a in range(len(APPLICATIONS)) for p in range(PODS_PER_APP)
    )
    assert whole_tenant == expected, (whole_tenant, expected)
    listed = {o["Key"]: o for o in whole["Contents"]}
    got = s3.get_object(Bucket=BUCKET, Key=first)
    body = got["Body"].read()
    assert len(body) == listed[first]["Size"] == got["ContentLength"], (len(body), listed[first]["Size"])
    assert got["ETag"] == listed[first]["ETag"]
    events = list(decode_events(body, 0))
    written = parsed.write_time.timestamp() * 1000
    assert events and all(written - CADENCE_S * 1000 <= ts < written for ts, _ in events)
    for p in range(len(RECORDS_PER_OBJECT)):  # every body variant is served at its listed size
        prefix = f"{CLUSTER}/{fleet.tenant(0)}/{APPLICATIONS[0]}/{fleet.pod(APPLICATIONS[0], p)}/"
        item = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix, MaxKeys=1)["Contents"][0]
        assert len(s3.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()) == item["Size"]
    return {
        "tenants_paged_3_a_page": len(pages),
        "pod_objects_stored": len(whole["Contents"]),
        "objects_after_start_paged_100_a_page": len(paged),
        "tenant_objects_stored": whole_tenant,
        "object_size": len(body),
        "events_per_object": len(events),
    }


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


# Compared with the release's `pipeline` in the same run (bench.baseline.main_beside), lower is better for
# both: the streaming driver's peak RSS at the first size, and the listing time with one listing worker.
RELEASE_METRICS = {"driver_memory.streaming.0.vm_hwm_mib": False, "listing_scaling.best_listing_s.1": False}
# `python -m bench --quick`: 20k and 60k objects (the in-memory baseline at 20k), 1 and 2 listing workers
# over 2 tenants, the small delivery point.
QUICK_ARGS = ["--sizes", "20000,60000", "--baseline-sizes", "20000", "--scaling", "1,2", "--scaling-tenants", "2"]


def targets_met(result: dict[str, Any]) -> bool:
    """Every flag of `meets_targets` (driver memory, listing time with workers, calls, objects delivered)."""
    return all(result.get("meets_targets", {}).values()) and bool(result.get("meets_targets"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--sizes", default="100000,300000,1000000", help="objects in the window (rounded to tenants)")
    p.add_argument("--listers", type=int, default=4, help="listing workers for the memory series")
    p.add_argument("--scaling", default="1,2,4", help="listing workers for the listing-time series")
    p.add_argument("--scaling-tenants", type=int, default=7, help="tenants of the listing-time series (7: ~100k)")
    p.add_argument("--repeats", type=int, default=1, help="interleaved passes of the listing-time series")
    p.add_argument("--servers", type=int, default=2, help="stand-in server processes (SO_REUSEPORT)")
    p.add_argument(
        "--baseline-sizes",
        default="100000,300000",
        help="sizes (of --sizes) at which the in-memory list_window baseline runs too ('' for none)",
    )
    p.add_argument("--no-delivery", action="store_true", help="skip the small real-delivery point")
    p.add_argument("--delivery-tenants", type=int, default=1, help="tenants of the real-delivery point")
    p.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "fleet.json")
    add_release_options(p)
    args = p.parse_args(argv)
    if args.child:
        return child_main(args.child)
    code = release_beside(Path(__file__), argv, args, RELEASE_METRICS, ok=targets_met)
    if code is not None:
        return code

    t_all = time.monotonic()
    mach = machine("ray", "boto3")
    until = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)  # today's midnight
    since = until - WINDOW
    sizes = [int(s) for s in args.sizes.split(",") if s]
    baseline_sizes = {int(s) for s in args.baseline_sizes.split(",") if s}
    per_tenant_guess = PODS_PER_TENANT * round((WINDOW + 2 * timedelta(minutes=5)).total_seconds() / CADENCE_S)
    size_tenants = [max(1, round(n / per_tenant_guess)) for n in sizes]
    scaling = [int(s) for s in args.scaling.split(",") if s]
    max_tenants = max([*size_tenants, args.scaling_tenants, args.delivery_tenants])
    fleet = Fleet(max_tenants, int((since - HISTORY_BEFORE).timestamp()), int((until + TAIL_AFTER).timestamp()))

    stand_in = StandIn(fleet, args.servers).start()
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RAY_"))}
    env = base_env | {
        "AWS_ENDPOINT_URL_S3": stand_in.endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": REGION,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/dev/null",
        "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
        "PYTHONPATH": code_path(),  # the release's side of a comparison: the release's pipeline in Ray too
        # Token authentication, as the project's clusters run it: the head and the drivers share the token.
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    moto = None
    head = None
    results: dict[str, Any] = {}
    try:
        os.environ.update({k: env[k] for k in env if k.startswith("AWS_")})
        check = self_check(stand_in, since, until)
        print(f"stand-in ok: {check}", flush=True)
        if not args.no_delivery:
            moto, delivery_env = _delivery_setup(args.delivery_tenants)
            env |= delivery_env
        head = RayHead(env, RAY_CPUS).start()
        ray_temp = str(head.temp)
        driver_env = env | {"RAY_ADDRESS": head.address}
        window = {"since": since.isoformat(), "until": until.isoformat()}

        def measure(cfg: dict[str, Any]) -> dict[str, Any]:
            before = stand_in.snapshot()
            t = time.monotonic()
            r = run_child({**window, "ray_temp": ray_temp, **cfg}, driver_env)
            after = stand_in.snapshot()
            r["server_list_calls"] = (after[LIST_DELIMITED] - before[LIST_DELIMITED]) + (
                after[LIST_OBJECTS] - before[LIST_OBJECTS]
            )
            r["server_get_calls"] = after[GETS] - before[GETS]
            r["child_wall_s"] = round(time.monotonic() - t, 1)
            tenants = cfg["tenants"]
            r["expected_list_calls"] = 1 + tenants * (1 + len(APPLICATIONS) + PODS_PER_TENANT)
            span = [datetime.fromisoformat(cfg.get(k, window[k])) for k in ("since", "until")]
            r["expected_objects"] = fleet.listed(tenants, *span)
            print(f"  {cfg['mode']} {json.dumps(r)}", flush=True)
            return r

        streaming, in_memory = [], []
        for size, tenants in zip(sizes, size_tenants, strict=True):
            print(f"size {size:,}: {tenants} tenants", flush=True)
            streaming.append(measure({"mode": "streaming", "tenants": tenants, "listers": args.listers}))
            if size in baseline_sizes:
                in_memory.append(measure({"mode": "in_memory", "tenants": tenants}))
        runs: dict[int, list[dict[str, Any]]] = {n: [] for n in scaling}
        for _ in range(args.repeats):
            for n in scaling:
                print(f"scaling: {n} listing workers, {args.scaling_tenants} tenants", flush=True)
                runs[n].append(measure({"mode": "streaming", "tenants": args.scaling_tenants, "listers": n}))
        delivery = None
        if not args.no_delivery:
            d_until = until - timedelta(hours=12)
            print(f"delivery: {args.delivery_tenants} tenants, 2 h, 2 workers, null sink", flush=True)
            delivery = measure(
                {
                    "mode": "streaming",
                    "tenants": args.delivery_tenants,
                    "listers": 2,
                    "deliver": 2,
                    "sink": "null",
                    "worker_memory_mib": 128,
                    "since": (d_until - timedelta(hours=2)).isoformat(),
                    "until": d_until.isoformat(),
                }
            )
        results = summarize(streaming, in_memory, runs, delivery, check, object_sizes(fleet, SPEC_SAMPLE))
    finally:
        if head is not None:
            head.stop()
        if moto is not None:
            moto.stop()
        stand_in.stop()

    result = {
        "benchmark": "fleet",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python -m bench fleet  (= python bench/fleet_bench.py "
        + " ".join(argv if argv is not None else sys.argv[1:])
        + ")",
        "machine": {**mach, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "fleet": {
            "cluster": CLUSTER,
            "applications_per_tenant": len(APPLICATIONS),
            "pods_per_application": PODS_PER_APP,
            "cadence_s": CADENCE_S,
            "window": [since.isoformat(), until.isoformat()],
            "history_before_window_h": HISTORY_BEFORE.total_seconds() / 3600,
            "tail_after_window_min": TAIL_AFTER.total_seconds() / 60,
            "stand_in_servers": args.servers,
            "ray_cpus": RAY_CPUS,
            "packer_workers": PACKER_WORKERS,
        },
        "target": {
            "driver_rss_ratio_at_most": TARGET_RSS_RATIO,
            "driver_rss_mib_under": TARGET_RSS_MIB,
            "listing_2_vs_1_at_least": TARGET_SCALING_2_VS_1,
            "list_calls": "1 + tenants + applications + pods (the issue's 2 + applications + pods for one tenant)",
        },
        **results,
        "wall_s": round(time.monotonic() - t_all, 1),
    }
    write_result(args.output, result)
    return 0 if targets_met(result) else 1


def _delivery_setup(tenants: int) -> tuple[Any, dict[str, str]]:
    """A moto server with the tenant table (and the rest of the local stack) for the delivery point; its env
    points every service but S3 at moto."""
    from devstack.provision import SampleTenant, provision
    from devstack.server import MotoServer

    server = MotoServer().start()
    local = provision(
        server.endpoint_url, tenants=tuple(SampleTenant(Fleet.tenant(t), "111111111111") for t in range(tenants))
    )
    env = {k: v for k, v in local.env.items() if not k.startswith("AWS_ENDPOINT_URL_S3")}
    return server, env


def driver_bounds() -> dict[str, int]:
    """The constants that bound what the driver and the workers hold, as this tree sets them."""
    from pipeline.replay import report, scheduler, survey, workers
    from pipeline.replay.plan import MIN_UNIT_BYTES, PACK_BUFFER_OBJECTS, UNITS_PER_WORKER

    return {
        "PACK_BUFFER_OBJECTS": PACK_BUFFER_OBJECTS,
        "QUEUED_OBJECTS_MAX": scheduler.QUEUED_OBJECTS_MAX,
        "IN_FLIGHT_PER_WORKER": scheduler.IN_FLIGHT_PER_WORKER,
        "SURVEY_CHUNK": scheduler.SURVEY_CHUNK,
        "DESCEND_CHUNK": scheduler.DESCEND_CHUNK,
        "LISTING_CALLS_PER_WORKER": workers.LISTING_CALLS_PER_WORKER,
        "POD_THREADS_survey": survey.POD_THREADS,
        "UNITS_PER_WORKER": UNITS_PER_WORKER,
        "MIN_UNIT_BYTES": MIN_UNIT_BYTES,
        "RUN_FAILED_MAX": report.RUN_FAILED_MAX,
        "RUN_SKIPPED_SAMPLE": report.RUN_SKIPPED_SAMPLE,
        "FAILED_DETAIL_MAX": report.FAILED_DETAIL_MAX,
    }


def summarize(
    streaming: list[dict[str, Any]],
    in_memory: list[dict[str, Any]],
    runs: dict[int, list[dict[str, Any]]],
    delivery: dict[str, Any] | None,
    check: dict[str, Any],
    sizes: dict[str, Any],
) -> dict[str, Any]:
    peaks = [r["vm_hwm_mib"] for r in streaming]
    rss_ratio = round(max(peaks) / min(peaks), 3) if peaks else None
    best = {n: min(r["listing_s"] for r in rs) for n, rs in runs.items() if rs}
    med = {n: median([r["listing_s"] for r in rs]) for n, rs in runs.items() if rs}
    scaling_2_vs_1 = round(best[1] / best[2], 2) if 1 in best and 2 in best else None
    every = [*streaming, *(r for rs in runs.values() for r in rs)]
    calls_ok = all(r["server_list_calls"] == r["expected_list_calls"] == r["list_calls_counted_by_plan"] for r in every)
    objects_ok = all(r["objects_listed"] == r["expected_objects"] for r in [*every, *in_memory])
    falls = [best[n] for n in sorted(best)]
    meets = {
        "driver_rss_flat_within_1_2x": rss_ratio is not None and rss_ratio <= TARGET_RSS_RATIO,
        "driver_rss_under_1_gib": bool(peaks) and max(peaks) < TARGET_RSS_MIB,
        "listing_time_falls_with_workers": all(a > b for a, b in itertools.pairwise(falls)),
        "listing_2_vs_1_at_least_1_5": scaling_2_vs_1 is not None and scaling_2_vs_1 >= TARGET_SCALING_2_VS_1,
        "list_calls_as_expected": calls_ok,
        "every_object_listed": objects_ok,
    }
    if delivery is not None:
        meets["delivery_point_delivers_every_object"] = delivery["objects_delivered"] == delivery["expected_objects"]
    return {
        "stand_in_self_check": check,
        "bytes_per_object": sizes,
        "bounds": driver_bounds(),
        "driver_memory": {
            "streaming": streaming,
            "in_memory_list_window": in_memory,
            "streaming_peak_ratio_max_over_min": rss_ratio,
            "in_memory_over_streaming_peak": {
                str(m["tenants"]): round(m["vm_hwm_mib"] / s["vm_hwm_mib"], 2)
                for m in in_memory
                for s in streaming
                if s["tenants"] == m["tenants"]
            },
        },
        "listing_scaling": {
            "runs": {str(n): rs for n, rs in runs.items()},
            "best_listing_s": {str(n): s for n, s in best.items()},
            "median_listing_s": {str(n): s for n, s in med.items()},
            "speedup_over_1": {str(n): round(best[1] / s, 2) for n, s in best.items()} if 1 in best else {},
            "2_vs_1": scaling_2_vs_1,
        },
        "delivery_point": delivery,
        "meets_targets": meets,
    }


if __name__ == "__main__":
    sys.exit(main())
