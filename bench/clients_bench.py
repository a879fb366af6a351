"""CPU to build a tenant's clients, as each of its credential refreshes does (pipeline/aws.py).

    .venv/bin/python -m bench clients      # or: python bench/clients_bench.py  (~80 s: the release runs beside)

A tenant's refresh builds an STS client for its second hop (on the central credentials) and a client per
service it delivers to, on its assumed-role credentials: here `sts`, `logs` and `s3`, for `--tenants` tenants,
each with credentials of its own. No request is sent: building a client is local work (the service model, the
endpoint rules, the event hooks), and it runs under the GIL that the process's deliveries share.

Measured, in turns (`--repeats`, the median of each kept), as process CPU per tenant:
- `pipeline.aws.client`, this checkout's (and, in a child of its own, the release's: `--release`);
- a Session per client (`boto3.Session(credentials...).client(...)`): what the pipeline did before 2026-12-05;
- the floor: one Session, the credentials given to each client, no lock.

All three build the same clients: the pipeline's own settings (`aws.DEFAULT_CONFIG`, `aws.LOGS_CONFIG`).

Targets: within 1.5x of the floor (`meets_floor_target`), and no drop against the release beyond
`bench.baseline.NOISE` (tenants per CPU-second, paired). Writes bench/results/clients.json.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import boto3  # noqa: E402

from bench.baseline import add_release_options, release_beside  # noqa: E402
from bench.machine import machine, write_result  # noqa: E402
from pipeline import aws  # noqa: E402

RESULT = REPO / "bench" / "results" / "clients.json"
QUICK_ARGS = ["--tenants", "10", "--repeats", "3", "--pairs", "1"]
SERVICES = ("sts", "logs", "s3")
REGION = "eu-west-1"
FLOOR_TARGET = 1.5
RELEASE_METRICS = {"pipeline.tenants_per_cpu_s": True}

Build = Callable[[str, aws.StaticCredentials], Any]


def credentials(n: int) -> list[aws.StaticCredentials]:
    expiry = datetime.now(UTC) + timedelta(hours=1)
    return [aws.StaticCredentials(f"ASIA{i:016d}", f"secret-{i}", f"token-{i}", expiry) for i in range(n)]


def pipeline_client(service: str, creds: aws.StaticCredentials) -> Any:
    return aws.client(service, REGION, credentials=creds)


def config(service: str) -> Any:
    """The pipeline's own client settings (pool, retries), so that every way builds the same client."""
    return aws.LOGS_CONFIG if service == "logs" else aws.DEFAULT_CONFIG


def session_per_client(service: str, creds: aws.StaticCredentials) -> Any:
    session = boto3.Session(
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        aws_session_token=creds.session_token,
        region_name=REGION,
    )
    return session.client(service, config=config(service))  # type: ignore[call-overload]


_FLOOR = boto3.Session()


def one_session(service: str, creds: aws.StaticCredentials) -> Any:
    return _FLOOR.client(  # type: ignore[call-overload]
        service,
        region_name=REGION,
        aws_access_key_id=creds.access_key_id,
        aws_secret_access_key=creds.secret_access_key,
        aws_session_token=creds.session_token,
        config=config(service),
    )


def cpu_per_tenant(build: Build, tenants: list[aws.StaticCredentials]) -> float:
    """Process CPU seconds per tenant to build its clients (the clients are kept until the end, as a broker
    keeps them)."""
    gc.collect()  # the clients of the pass before (reference cycles) are not this pass's to collect
    kept = []
    start = time.process_time()
    for creds in tenants:
        kept += [build(service, creds) for service in SERVICES]
    return (time.process_time() - start) / len(tenants)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--tenants", type=int, default=20, help="tenants per measured pass")
    parser.add_argument("--repeats", type=int, default=3, help="passes of each way, in turns")
    parser.add_argument("--output", type=Path, default=RESULT)
    add_release_options(parser)
    args = parser.parse_args(argv)
    code = release_beside(Path(__file__), argv, args, RELEASE_METRICS)
    if code is not None:
        return code
    ways: dict[str, Build] = {
        "pipeline": pipeline_client,
        "session_per_client": session_per_client,
        "one_session": one_session,
    }
    for build in ways.values():  # first use: imports, and the models a shared Session reads once
        cpu_per_tenant(build, credentials(1))
    wall = time.monotonic()
    passes: dict[str, list[float]] = {name: [] for name in ways}
    for i in range(args.repeats):
        order = list(ways) if i % 2 == 0 else list(reversed(ways))
        for name in order:
            passes[name].append(cpu_per_tenant(ways[name], credentials(args.tenants)))
    cpu = {name: statistics.median(v) for name, v in passes.items()}
    result: dict[str, Any] = {
        "benchmark": "clients",
        "command": "python -m bench clients  (= python bench/clients_bench.py " + " ".join(argv or sys.argv[1:]) + ")",
        "machine": machine(),
        "tenants": args.tenants,
        "services": list(SERVICES),
        "repeats": args.repeats,
        **{
            name: {
                "cpu_ms_per_tenant": round(cpu[name] * 1000, 2),
                "tenants_per_cpu_s": round(1 / cpu[name], 1),
                "passes_ms": [round(v * 1000, 2) for v in passes[name]],
            }
            for name in ways
        },
        "pipeline_over_floor": round(cpu["pipeline"] / cpu["one_session"], 3),
        "session_per_client_over_pipeline": round(cpu["session_per_client"] / cpu["pipeline"], 1),
        "floor_target": FLOOR_TARGET,
        "wall_s": round(time.monotonic() - wall, 1),
    }
    result["meets_floor_target"] = result["pipeline_over_floor"] <= FLOOR_TARGET
    for name in ways:
        print(f"{name:>20}: {result[name]['cpu_ms_per_tenant']:8.2f} ms of CPU per tenant ({len(SERVICES)} clients)")
    print(f"pipeline over the floor: {result['pipeline_over_floor']} (target <= {FLOOR_TARGET})")
    write_result(args.output, result)
    return 0 if result["meets_floor_target"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
