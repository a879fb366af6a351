"""Helpers shared by the tests that run the consumer as a real subprocess (integration and fault suites)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import orjson
from prometheus_client.parser import text_string_to_metric_families

from devstack.localray import wait_for as poll
from devstack.provision import LocalEnvironment
from devstack.server import free_port

REPO = Path(__file__).resolve().parents[2]


def queue_counts(local: LocalEnvironment, url: str) -> tuple[int, int]:
    """(visible, in flight) as SQS reports them."""
    attrs = local.client("sqs").get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return int(attrs["ApproximateNumberOfMessages"]), int(attrs["ApproximateNumberOfMessagesNotVisible"])


def queue_empty(local: LocalEnvironment) -> bool:
    return queue_counts(local, local.queue_url) == (0, 0)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """devstack.localray's poll, ten times a second: what the tests here wait for is a file, a queue or a
    table on this machine, cheap to look at."""
    return poll(predicate, timeout, what, interval)


class ConsumerProcess:
    """One `python -m jobs.consumer --mode sqs` child, its JSON logs in a file, its metrics port."""

    def __init__(self, env: Mapping[str, str], log_path: Path, args: list[str]) -> None:
        self.port = free_port()
        self.log_path = log_path
        child_env = {**env, "METRICS_PORT": str(self.port), "METRICS_HOST": "127.0.0.1"}
        self._log = open(log_path, "wb")  # noqa: SIM115 -- closed in terminate()/kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.consumer", "--mode", "sqs", *args],
            cwd=REPO,
            env=child_env,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
        )

    def wait_ready(self, timeout: float = 60) -> ConsumerProcess:
        def ready() -> bool:
            assert self.proc.poll() is None, f"consumer exited early:\n{self.log_text()[-3000:]}"
            return any(r.get("msg") == "consumer started" for r in self.logs())

        wait_for(ready, timeout, "the consumer to start")
        return self

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                out.append({"raw": line.decode("utf-8", "replace")})
        return out

    def get(self, path: str) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called `name` whose labels include `labels` (0 when there are none)."""
        _, body = self.get("/metrics")
        total = 0.0
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def request_stop(self) -> None:
        """SIGTERM, without waiting: the test then decides when the drain's work may end (`wait_exit`)."""
        self.proc.send_signal(signal.SIGTERM)

    def wait_exit(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def terminate(self, timeout: float = 60) -> tuple[int, float]:
        """SIGTERM; (exit code, seconds to exit)."""
        start = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self._log.close()
        return code, time.monotonic() - start

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
