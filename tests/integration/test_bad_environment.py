"""A wrong environment, at every entrypoint: one line naming what failed and the fix, exit code 3, and the
traceback only at --log-level DEBUG. Each entrypoint is a real subprocess against the moto server (through
the fault proxy where AWS itself must refuse)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from devstack.faults import Error, FaultProxy, Rule
from devstack.provision import LocalEnvironment
from devstack.server import MotoServer, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINTS: dict[str, Callable[[Path], list[str]]] = {
    "replay": lambda tmp: [str(REPO / "jobs" / "replay.py"), "--tenant", "acme", "--since", "1h", "--dry-run"],
    "consumer": lambda tmp: ["-m", "jobs.consumer", "--mode", "sqs", "--metrics-port", "0", "--wait-time", "1"],
    "inventory": lambda tmp: [str(REPO / "jobs" / "inventory.py"), "--tenant", "acme", "--since", "1h", "-o", str(tmp)],
}
NO_CREDENTIALS = {
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/credentials",
    "AWS_CONFIG_FILE": "/nonexistent/config",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def proxy(moto_server: MotoServer) -> Iterator[FaultProxy]:
    with FaultProxy(moto_server.endpoint_url) as p:
        yield p


def case_env(
    local: LocalEnvironment, proxy: FaultProxy, case: str
) -> tuple[dict[str, str], list[Rule], tuple[str, ...]]:
    """(environment, fault rules, what the error line must name) for one way the environment is wrong."""
    env = dict(local.env)
    if case == "unreachable endpoint":
        closed = f"http://127.0.0.1:{free_port()}"
        return {**env, "AWS_ENDPOINT_URL": closed}, [], ("cannot reach", closed, "AWS_ENDPOINT_URL")
    if case == "missing bucket":
        return {**env, "S3_BUCKET_NAME": "no-such-central-bucket"}, [], ("no-such-central-bucket", "S3_BUCKET_NAME")
    if case == "missing table":
        return (
            {**env, "TENANT_CONFIG_TABLE": "no-such-table", "DELIVERY_LEDGER_TABLE": "no-such-table"},
            [],
            (
                "no-such-table",
                "does not exist",
            ),
        )
    if case == "missing queue":
        url = env["SQS_QUEUE_URL"].rsplit("/", 1)[0] + "/no-such-queue"
        return {**env, "SQS_QUEUE_URL": url}, [], ("no-such-queue", "SQS_QUEUE_URL")
    if case == "no credentials":
        env = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
        return {**env, **NO_CREDENTIALS}, [], ("no AWS credentials", "AWS_PROFILE")
    if case == "access denied":
        rules = [
            Rule(service="s3", operation="ListObjectsV2", action=Error.access_denied()),
            Rule(service="dynamodb", action=Error.access_denied("AccessDeniedException")),
            Rule(service="sqs", action=Error.access_denied("AccessDenied")),
        ]
        return {**env, "AWS_ENDPOINT_URL": proxy.url}, rules, ("access denied", local.names.bucket, "s3:ListBucket")
    raise AssertionError(case)


CASES = [
    (entry, case)
    for entry in ENTRYPOINTS
    for case in (
        "unreachable endpoint",
        "missing bucket",
        "missing table",
        "missing queue",
        "no credentials",
        "access denied",
    )
    if not (case == "missing queue" and entry != "consumer")
]


@pytest.mark.parametrize(("entry", "case"), CASES, ids=[f"{e}-{c.replace(' ', '-')}" for e, c in CASES])
def test_a_wrong_environment_is_one_line_and_exit_3(
    module_aws: LocalEnvironment, proxy: FaultProxy, tmp_path: Path, entry: str, case: str
) -> None:
    env, rules, needles = case_env(module_aws, proxy, case)
    if case == "missing table" and entry == "inventory":
        needles = (*needles, "DELIVERY_LEDGER_TABLE")
    elif case == "missing table":
        needles = (*needles, "TENANT_CONFIG_TABLE")
    for rule in rules:
        proxy.add(rule)
    try:
        code, output = run(entry, env, tmp_path)
    finally:
        proxy.clear()
    assert_one_line(code, output, *needles)


def test_the_traceback_comes_at_debug_level(module_aws: LocalEnvironment, tmp_path: Path) -> None:
    env = {**module_aws.env, "S3_BUCKET_NAME": "no-such-central-bucket"}
    code, output = run("replay", env, tmp_path, "--log-level", "DEBUG")
    assert code == 3
    assert "Traceback" in output
    assert any(line.startswith("error: ") and "no-such-central-bucket" in line for line in plain_lines(output))


def run(entry: str, env: dict[str, str], tmp: Path, *extra: str) -> tuple[int, str]:
    cmd = [sys.executable, *ENTRYPOINTS[entry](tmp / "inventory.parquet"), *extra]
    base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.run(cmd, cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stderr + proc.stdout


def plain_lines(output: str) -> list[str]:
    """The output's lines that are not structured JSON log lines."""
    out = []
    for line in output.splitlines():
        try:
            if isinstance(orjson.loads(line), dict):
                continue
        except orjson.JSONDecodeError:
            pass
        if line.strip():
            out.append(line)
    return out


def assert_one_line(code: int, output: str, *needles: str) -> None:
    assert code == 3, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    lines = plain_lines(output)
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: "), lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
