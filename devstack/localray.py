"""A local Ray cluster with its Jobs API, for `make demo` and the tests: a head (and worker nodes), each a
`ray start --block` child with a temp dir of its own, on free ports; stopping it stops only this cluster's
processes."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from devstack.server import free_port

RAY = str(Path(sys.executable).parent / "ray")
# Each node's object store is a /dev/shm file sized by default at 30% of the machine's memory (6.6 GB here):
# three nodes on one host would take most of /dev/shm, or all of a container's small one. The job's objects
# are small.
OBJECT_STORE_BYTES = 128 * 1024 * 1024


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.5) -> Any:
    """Poll until `predicate` returns something truthy (and return it), or fail saying what never happened.
    The state API and `ray status` are subprocesses and RPCs: twice a second is often enough."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class LocalRay:
    """A head and worker nodes, each a `ray start --block` child, so stopping them stops only this cluster."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.temp = Path("/tmp") / f"rmn{secrets.token_hex(3)}"  # short: Ray's socket paths have a length limit
        self.port, self.dashboard_port = free_port(), free_port()
        self.nodes: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}
        self.last_error = ""

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], name: str, temp: Path) -> None:
        path = self.temp.parent / f"{self.temp.name}-{name}.log"
        log = open(path, "wb")  # noqa: SIM115 -- lives with the node
        # Each node has a temp dir of its own. In a shared one, nodes starting at once pick their socket and
        # log names by checking which exist, race, and the loser's plasma store dies on "bind: Address
        # already in use": its raylet never registers, and `ray start` fails with "Failed to get node info"
        # (ray-project/ray#10154). The agents' HTTP port is per node too, not the default 52365 they would
        # all try to bind.
        common = [
            "--node-ip-address=127.0.0.1",
            f"--temp-dir={temp}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--object-store-memory={OBJECT_STORE_BYTES}",
            "--disable-usage-stats",
        ]
        proc = subprocess.Popen([RAY, "start", "--block", *args, *common], env=self.env, stdout=log, stderr=log)
        self.nodes.append(proc)
        self.logs[proc.pid] = path

    def check_nodes(self) -> None:
        """Fail at once, with its log, when a node's `ray start` has exited, rather than at a later timeout."""
        for node in self.nodes:
            if node.poll() is not None:
                tail = self.logs[node.pid].read_text(errors="replace")[-2000:]
                raise AssertionError(f"a Ray node exited with {node.returncode}:\n{tail}")

    def query(self, code: str) -> Any:
        """Run Python against the cluster in a child that has the cluster's token (Ray reads it once per
        process); the JSON the code prints last."""
        proc = subprocess.run(
            [sys.executable, "-c", f"import json\nADDRESS = {self.dashboard!r}\nGCS = {self.gcs!r}\n{code}"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr[-1500:])
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def start_head(self, num_cpus: int = 0) -> None:
        """The head; with no CPUs (as KubeRay's) unless `num_cpus`, so that a one-node cluster runs jobs."""
        self.launch_head(num_cpus)
        self.wait_head()

    def launch_head(self, num_cpus: int = 0) -> None:
        """Start the head's `ray start` and return at once; `wait_head` waits until it serves."""
        self._start(
            [
                "--head",
                f"--num-cpus={num_cpus}",
                f"--port={self.port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
            ],
            "head",
            self.temp,
        )

    def wait_head(self, timeout: float = 120) -> None:
        """Until the head's Jobs API answers, or fail with why (its node exited, or what the API last said)."""

        def up() -> bool:
            self.check_nodes()
            return self._serving()

        try:
            wait_for(up, timeout, "the Ray head's dashboard", interval=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {self.last_error}") from None

    def _serving(self) -> bool:
        """Whether the dashboard answers the version check that a JobSubmissionClient makes first (GET
        /api/version). Asked over HTTP from this process: a child importing Ray to ask took a second or two of
        CPU per try, and a head's start twice as long (22 s against 10 s at load 5)."""
        headers = {"Authorization": f"Bearer {self.env['RAY_AUTH_TOKEN']}"} if self.env.get("RAY_AUTH_TOKEN") else {}
        request = urllib.request.Request(f"{self.dashboard}/api/version", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                version = json.loads(response.read()).get("ray_version")
        except (OSError, ValueError) as exc:  # not serving yet (refused, reset, an error page, half a body)
            self.last_error = f"{type(exc).__name__}: {exc}"
            return False
        return bool(version)

    def add_worker(self, n: int) -> None:
        self._start(
            [f"--address={self.gcs}", "--num-cpus=1", f"--memory={1024 * 1024 * 1024}"],
            f"worker{n}",
            self.temp / f"w{n}",
        )

    def wait_for_workers(self, count: int) -> set[str]:
        """The node ids of `count` worker nodes once all are alive."""

        def joined() -> set[str]:
            self.check_nodes()
            alive = {n["node_id"] for n in nodes(self) if n["state"] == "ALIVE" and not n["is_head_node"]}
            return alive if len(alive) == count else set()

        found: set[str] = wait_for(joined, 90, f"{count} worker nodes to join")
        return found

    def stop(self) -> None:
        for node in reversed(self.nodes):
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                node.wait(45)
            except subprocess.TimeoutExpired:
                node.kill()
        # Anything of this cluster left behind (its processes name its temp dir); nothing else is touched.
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = " ".join(proc.info.get("cmdline") or [])
            if str(self.temp) in cmdline and proc.pid != os.getpid():
                with contextlib.suppress(psutil.Error):
                    proc.kill()
        shutil.rmtree(self.temp, ignore_errors=True)


def nodes(ray: LocalRay) -> list[dict[str, Any]]:
    return ray.query(
        "from dataclasses import asdict\nfrom ray.util.state import list_nodes\n"
        "print(json.dumps([asdict(n) for n in list_nodes(address=ADDRESS, detail=True)], default=str))"
    )
