"""Start and stop a moto server subprocess on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# moto's own server answers each request on a thread of its own, and its DynamoDB applies an UpdateItem by
# reading the item, computing and storing it without a lock: two ADDs to one item at the same instant can lose
# one, where DynamoDB applies each update atomically. A server that answers one request at a time gives each
# update DynamoDB's atomicity, for the tests of two processes adding to one item at once (tests/integration/
# test_status.py). Same moto, same HTTP, one thread (`moto_main.py --serial`).


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MotoServer:
    """A moto server in its own process, so Ray workers and consumer subprocesses reach it over HTTP."""

    port: int = field(default_factory=free_port)
    host: str = "127.0.0.1"
    log_path: Path | None = None
    serial: bool = False  # one request at a time: each UpdateItem atomic, as in DynamoDB (see above)
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> MotoServer:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        env = dict(os.environ)
        # A server must not forward its own calls to itself, nor inherit a caller's endpoint.
        for var in [v for v in env if v.startswith("AWS_ENDPOINT_URL")]:
            env.pop(var)
        # Without this, moto lets any account write any bucket, and an S3 isolation test would prove nothing.
        env["MOTO_S3_ALLOW_CROSSACCOUNT_ACCESS"] = "false"
        # moto's server, with its TransactWriteItems fit for concurrent requests (devstack/moto_main.py).
        main_py = str(Path(__file__).with_name("moto_main.py"))
        argv = (
            [sys.executable, main_py, "--serial", self.host, str(self.port)]
            if self.serial
            else [sys.executable, main_py, "-H", self.host, "-p", str(self.port)]
        )
        env.setdefault("MOTO_PORT", str(self.port))
        self._proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, and we stop it in order
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto server exited with code {self._proc.returncode}")
            try:
                with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/", timeout=1):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"moto server did not answer on {self.endpoint_url} within {timeout_s}s")

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def reset(self) -> None:
        """Wipe every account's state (moto's own reset API)."""
        req = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def __enter__(self) -> MotoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
