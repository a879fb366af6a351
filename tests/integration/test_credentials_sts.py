"""The double hop against the embedded STS (CONTRACTS.md §4).

A small recording proxy sits between the broker and moto for STS, so the tests count real AssumeRole
requests and read their parameters off the wire instead of trusting the broker's own counter.
"""

from __future__ import annotations

import http.client
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from devstack.provision import CENTRAL_ACCOUNT_ID, LocalEnvironment
from pipeline import aws
from pipeline.credentials import CredentialBroker

pytestmark = pytest.mark.integration

SESSION_NAME_RE = re.compile(r"[A-Za-z0-9_+=,.@-]{2,64}")
ACCESS_KEY_RE = re.compile(r"Credential=([^/]+)/")


@dataclass
class StsCall:
    action: str
    params: dict[str, str]
    access_key: str  # the key that signed the request: which identity made the call


@dataclass
class RecordingProxy:
    upstream: str
    delay_s: float = 0.0
    calls: list[StsCall] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def assumes(self) -> list[StsCall]:
        return [c for c in self.calls if c.action == "AssumeRole"]

    def start(self) -> RecordingProxy:
        proxy = self
        up = urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                form = {k: v[0] for k, v in parse_qs(body.decode()).items()}
                m = ACCESS_KEY_RE.search(self.headers.get("Authorization", ""))
                proxy.calls.append(StsCall(form.get("Action", ""), form, m.group(1) if m else ""))
                if form.get("Action") == "AssumeRole" and proxy.delay_s:
                    time.sleep(proxy.delay_s)
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request("POST", self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()


@pytest.fixture(scope="module")
def stack(module_aws: LocalEnvironment) -> LocalEnvironment:
    return module_aws


@pytest.fixture
def sts_proxy(stack: LocalEnvironment, monkeypatch: pytest.MonkeyPatch) -> Iterator[RecordingProxy]:
    proxy = RecordingProxy(stack.endpoint_url).start()
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", proxy.url)
    yield proxy
    proxy.stop()


def group_names(logs: Any) -> set[str]:
    return {g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]}


def test_double_hop_acts_in_the_tenants_own_account(stack: LocalEnvironment, sts_proxy: RecordingProxy) -> None:
    acme, globex = stack.tenant("acme"), stack.tenant("globex")
    broker = CredentialBroker(stack.settings.central_role_arn)

    acme_logs = broker.client("logs", "acme", acme.role_arn, acme.region)
    assert group_names(acme_logs) == {"/logs/acme"}
    globex_logs = broker.client("logs", "globex", globex.role_arn, globex.region)
    assert group_names(globex_logs) == {"/logs/globex"}
    assert globex_logs.meta.region_name == "eu-west-1"

    who = aws.client("sts", credentials=broker.tenant("acme", acme.role_arn)).get_caller_identity()
    assert who["Account"] == "111111111111"
    assert ":assumed-role/CustomerLogDistribution-acme/" in who["Arn"]
    central = aws.client("sts", credentials=broker.central()).get_caller_identity()
    assert central["Account"] == CENTRAL_ACCOUNT_ID
    assert ":assumed-role/CentralLogDistributionRole/" in central["Arn"]

    # On the wire: central first with the process's own key, then each tenant role signed by the central
    # session, with ExternalId = the central account id.
    first, *tenant_calls = sts_proxy.assumes()
    assert first.params["RoleArn"] == stack.central_role_arn
    assert first.access_key == "testing"
    assert "ExternalId" not in first.params
    central_key = broker.central().access_key_id
    assert [c.params["RoleArn"] for c in tenant_calls] == [acme.role_arn, globex.role_arn]
    for c in [first, *tenant_calls]:
        assert SESSION_NAME_RE.fullmatch(c.params["RoleSessionName"])
        assert int(c.params["DurationSeconds"]) <= 3600
    for c in tenant_calls:
        assert c.params["ExternalId"] == CENTRAL_ACCOUNT_ID
        assert c.access_key == central_key
    assert broker.sts_calls == 3


def test_one_assume_per_role_across_many_calls(stack: LocalEnvironment, sts_proxy: RecordingProxy) -> None:
    acme, globex = stack.tenant("acme"), stack.tenant("globex")
    broker = CredentialBroker(stack.settings.central_role_arn)
    acme_first = broker.client("logs", "acme", acme.role_arn, acme.region)
    for _ in range(50):
        assert broker.client("logs", "acme", acme.role_arn, acme.region) is acme_first
        broker.client("logs", "globex", globex.role_arn, globex.region)
        broker.tenant("acme", acme.role_arn)
    assert broker.sts_calls == 3
    assert len(sts_proxy.assumes()) == 3

    # Forgetting one tenant's credentials re-assumes that role only; the central session is reused.
    broker.invalidate(acme.role_arn)
    again = broker.client("logs", "acme", acme.role_arn, acme.region)
    assert again is not acme_first
    assert group_names(again) == {"/logs/acme"}
    assert [c.params["RoleArn"] for c in sts_proxy.assumes()[3:]] == [acme.role_arn]


def test_refresh_within_the_margin_of_expiry(stack: LocalEnvironment, sts_proxy: RecordingProxy) -> None:
    acme = stack.tenant("acme")
    offset = [timedelta(0)]
    broker = CredentialBroker(
        stack.settings.central_role_arn,
        refresh_margin=timedelta(minutes=10),
        clock=lambda: datetime.now(UTC) + offset[0],
    )
    first = broker.client("logs", "acme", acme.role_arn, acme.region)
    creds = broker.tenant("acme", acme.role_arn)
    assert timedelta(minutes=55) < creds.expiration - datetime.now(UTC) <= timedelta(hours=1, seconds=5)
    assert broker.sts_calls == 2

    offset[0] = timedelta(minutes=45)  # 15 min left: still fresh
    assert broker.client("logs", "acme", acme.role_arn, acme.region) is first
    assert broker.sts_calls == 2

    offset[0] = timedelta(minutes=51)  # 9 min left: both hops refreshed ahead of expiry
    refreshed = broker.client("logs", "acme", acme.role_arn, acme.region)
    assert refreshed is not first
    assert broker.sts_calls == 4
    assert [c.params["RoleArn"] for c in sts_proxy.assumes()] == [
        stack.central_role_arn,
        acme.role_arn,
        stack.central_role_arn,
        acme.role_arn,
    ]
    assert group_names(refreshed) == {"/logs/acme"}
    offset[0] = timedelta(0)  # moto stamps expirations in real time: back to it, the new session is cached
    assert broker.tenant("acme", acme.role_arn).expiration > creds.expiration
    assert broker.client("logs", "acme", acme.role_arn, acme.region) is refreshed
    assert broker.sts_calls == 4


def test_concurrent_first_use_makes_two_sts_calls(stack: LocalEnvironment, sts_proxy: RecordingProxy) -> None:
    acme = stack.tenant("acme")
    sts_proxy.delay_s = 0.2  # every thread misses the cache while the first AssumeRole is in flight
    broker = CredentialBroker(stack.settings.central_role_arn)
    barrier = threading.Barrier(20)
    creds: list[Any] = []
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            creds.append(broker.tenant("acme", acme.role_arn))
            broker.client("logs", "acme", acme.role_arn, acme.region)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(creds) == 20 and all(c is creds[0] for c in creds)
    assert broker.sts_calls == 2
    assert len(sts_proxy.assumes()) == 2
