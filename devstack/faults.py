"""A fault-injecting HTTP proxy in front of the local AWS (moto server), for tests and experiments.

Every client reaches it the same way it reaches the moto server: set `AWS_ENDPOINT_URL` to `proxy.url`.
Subprocesses (the consumer, the replay CLI, Ray workers) inherit that, so one proxy started in the test
process sees the whole system's AWS traffic. Requests are forwarded unchanged (method, path, headers,
body; the `Host` header the client signed is kept, and moto does not check signatures anyway).

Rules decide what happens to a request:

    proxy = FaultProxy(moto.endpoint_url).start()
    throttle = proxy.add(Rule(service="logs", operation="PutLogEvents", probability=0.3,
                              action=Error.throttling()))
    proxy.add(Rule(service="sts", operation="AssumeRole", body_contains=role_arn, action=Error.access_denied()))
    proxy.add(Rule(service="logs", operation="PutLogEvents", action=Delay(0.5)))
    proxy.add(Rule(service="logs", operation="PutLogEvents", first=1, action=Hook(delete_group)))
    hold = Hold()
    proxy.add(Rule(service="dynamodb", operation="UpdateItem", action=hold))
    hold.wait_held(3); hold.release(2); ...; hold.open()
    ...
    proxy.stats()          # {rule name: RuleStats(matched, injected)}
    proxy.calls("logs", "PutLogEvents")   # every request seen: status, body, when
    proxy.clear()          # remove every rule (the request log stays until reset_log())

A request is matched by service (the credential scope of its SigV4 `Authorization` header:
`…/region/SERVICE/aws4_request`), operation (the `X-Amz-Target` suffix for JSON protocols such as logs,
dynamodb and sqs; `Action=` for query protocols such as sts, iam and sns; method and path for s3), and an
optional substring of the body (raw or URL-decoded, e.g. a tenant's role ARN or log group name). The
first rule that matches and fires decides; a rule fires with its `probability` (seeded RNG, so a run is
reproducible) and at most `first` times (None: no limit).

Actions: `Error` (an HTTP status and an AWS error code, rendered in the service's own protocol so botocore
parses it as the real service's error), `Drop` (close the socket without answering, before or after
forwarding), `Delay` (sleep, then forward), `Hold` (block until the test releases it, then forward: a test
that must catch the system between two steps decides by events with it, not by a delay being long
enough), `Answer` (sleep, then answer success without forwarding: a fixed-latency stand-in for
benchmarks), `Hook` (call a function, e.g. delete a log group through moto, then forward).

Answers are not kept, except for the operations named in `proxy.keep_answers` (e.g. `("sqs",
"ReceiveMessage")`, so a test can read the receipt handles a killed consumer held).

Credentials: the proxy reads STS AssumeRole answers and remembers which role each issued access key
belongs to (`proxy.role_of(access_key)`), and which key signed each request (`Call.access_key`), so tests
can check on the wire which identity wrote what. It also collects every secret it saw issued
(`proxy.secrets()`) for scanning logs and reports.
"""

from __future__ import annotations

import http.client
import json
import random
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlsplit
from xml.sax.saxutils import escape

_CREDENTIAL_RE = re.compile(r"Credential=([^/,\s]+)/[^/]+/([^/]+)/([^/]+)/aws4_request")
_ASSUMED_RE = {
    "access_key": re.compile(rb"<AccessKeyId>([^<]+)</AccessKeyId>"),
    "secret": re.compile(rb"<SecretAccessKey>([^<]+)</SecretAccessKey>"),
    "token": re.compile(rb"<SessionToken>([^<]+)</SessionToken>"),
}
# Headers the proxy sets itself on the way back (hop-by-hop, or recomputed).
_SKIP_RESPONSE_HEADERS = frozenset(
    {"transfer-encoding", "connection", "content-length", "keep-alive", "date", "server"}
)
_SKIP_REQUEST_HEADERS = frozenset({"connection", "keep-alive", "transfer-encoding", "proxy-connection"})
JSON_SERVICES = frozenset({"logs", "dynamodb", "sqs", "kinesis", "firehose"})
REST_XML_SERVICES = frozenset({"s3"})


# --------------------------------------------------------------------------------------------------------
# Requests


@dataclass
class Request:
    """What a rule or a hook sees of one request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    service: str
    operation: str
    region: str
    access_key: str

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def contains(self, needle: str) -> bool:
        text = self.text
        return needle in text or needle in unquote_plus(text) or needle in unquote_plus(self.path)


@dataclass
class Call:
    """One request as the proxy handled it: for tests to count calls and read what went over the wire."""

    seq: int
    service: str
    operation: str
    access_key: str
    body: bytes
    status: int  # the status the client saw; 0 when the connection was dropped
    injected: str = ""  # the rule that changed this call's outcome, if any
    at: float = field(default_factory=time.monotonic)
    path: str = ""  # for S3, the bucket and key: /bucket/key
    answer: bytes = b""  # the body the client got, for the operations in FaultProxy.keep_answers only
    # The request's headers, names lower-cased: what a test reads of a call besides its body (an S3
    # PutObject's x-amz-expected-bucket-owner, for one). Authorization is left out: it signs, it says nothing.
    headers: dict[str, str] = field(default_factory=dict)


def _operation(service: str, method: str, path: str, headers: dict[str, str], body: bytes) -> str:
    target = headers.get("x-amz-target", "")
    if target:
        return target.rsplit(".", 1)[-1]
    query = urlsplit(path).query
    for source in (query, body.decode("utf-8", "replace") if method == "POST" else ""):
        action = parse_qs(source).get("Action")
        if action:
            return action[0]
    if service == "s3":
        parts = urlsplit(path)
        has_key = len([p for p in parts.path.split("/") if p]) >= 2
        qs = parse_qs(parts.query, keep_blank_values=True)
        if method == "GET":
            if has_key:
                return "GetObject"
            return "ListObjectsV2" if qs.get("list-type") == ["2"] else "ListObjects"
        if not has_key:
            return method
        return {"PUT": "PutObject", "HEAD": "HeadObject", "DELETE": "DeleteObject"}.get(method, method)
    return ""


# --------------------------------------------------------------------------------------------------------
# Actions


@dataclass(frozen=True)
class Error:
    """Answer with an AWS error, in the protocol of the service the request was for."""

    code: str
    status: int = 400
    message: str = "injected by the fault proxy"
    sender_fault: bool = True

    @classmethod
    def throttling(cls) -> Error:
        return cls("ThrottlingException", 400, "Rate exceeded")

    @classmethod
    def unavailable(cls) -> Error:
        return cls("ServiceUnavailableException", 503, "The service is unavailable", sender_fault=False)

    @classmethod
    def internal(cls, status: int = 500) -> Error:
        return cls("InternalFailure", status, "Internal failure", sender_fault=False)

    @classmethod
    def access_denied(cls, code: str = "AccessDenied") -> Error:
        return cls(code, 403, "User is not authorized to perform this action")

    @classmethod
    def expired_token(cls, code: str = "ExpiredTokenException") -> Error:
        return cls(code, 400, "The security token included in the request is expired")

    @classmethod
    def not_found(cls, code: str = "ResourceNotFoundException") -> Error:
        return cls(code, 400, "The specified resource does not exist")

    def render(self, service: str) -> tuple[dict[str, str], bytes]:
        """(headers, body) of this error as `service` would send it."""
        if service in JSON_SERVICES:
            body = json.dumps({"__type": self.code, "message": self.message}).encode()
            return {
                "Content-Type": "application/x-amz-json-1.1",
                "x-amzn-ErrorType": self.code,
                "x-amzn-RequestId": "fault-proxy",
            }, body
        code, msg = escape(self.code), escape(self.message)
        if service in REST_XML_SERVICES:
            xml = f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{msg}</Message></Error>'
            return {"Content-Type": "application/xml"}, xml.encode()
        kind = "Sender" if self.sender_fault else "Receiver"
        xml = (
            f"<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{msg}</Message></Error>"
            "<RequestId>fault-proxy</RequestId></ErrorResponse>"
        )
        return {"Content-Type": "text/xml"}, xml.encode()


@dataclass(frozen=True)
class HttpStatus:
    """A bare HTTP status with a non-AWS body, like a load balancer's 502 page."""

    status: int = 502
    body: bytes = b"<html><body>502 Bad Gateway</body></html>"


@dataclass(frozen=True)
class Drop:
    """Close the connection without an answer. after_forward=True: the service did the work, the answer is lost."""

    after_forward: bool = False


@dataclass(frozen=True)
class Delay:
    """Hold the request, then forward it: a slow network on the way in. A request whose client went away
    meanwhile (a killed process) is not forwarded: the service never receives it."""

    seconds: float


class Hold:
    """Hold each request until the test lets it go, then forward it. A request whose client went away
    meanwhile (a killed process) is not forwarded: the service never receives it, and no request of a dead
    client is, even one the proxy reads only after the test removed its rule.

    Where a `Delay` decides by how long things take, a hold decides by events: `wait_held(n)` returns once
    n requests are held at once, `release(n)` lets the next n go (held now, or arriving later), `open()` lets
    every held and later request go. The proxy opens a hold whose rule is removed (`clear`, `remove`), and
    a request held `limit_s` goes by itself, so a failed test never leaves a proxy thread stuck.
    """

    def __init__(self, limit_s: float = 300.0) -> None:
        self.limit_s = limit_s
        self._cond = threading.Condition()
        self._held = 0  # requests waiting now
        self._passes = 0  # released, not yet used
        self._open = False
        self.let_go = 0  # requests that left the hold (released, opened or timed out)

    @property
    def held(self) -> int:
        with self._cond:
            return self._held

    def wait_held(self, n: int, timeout: float = 120.0) -> None:
        """Return once `n` requests are held at once; AssertionError (saying how many were) after `timeout`."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._held >= n, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {n} held requests ({self._held} held)")

    def release(self, n: int = 1) -> None:
        with self._cond:
            self._passes += n
            self._cond.notify_all()

    def open(self) -> None:
        with self._cond:
            self._open = True
            self._cond.notify_all()

    def block(self) -> None:
        """Called on the proxy's thread for the request: returns when the request may go on."""
        deadline = time.monotonic() + self.limit_s
        with self._cond:
            self._held += 1
            self._cond.notify_all()
            try:
                while not self._open and self._passes == 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return
                    self._cond.wait(left)
                if not self._open:
                    self._passes -= 1
            finally:
                self._held -= 1
                self.let_go += 1
                self._cond.notify_all()


@dataclass(frozen=True)
class Answer:
    """Answer with success after `seconds`, without forwarding: a stand-in for the service with a fixed
    latency and no cost of its own (for benchmarks, where the local service's CPU would be measured too)."""

    seconds: float = 0.0
    body: bytes = b"{}"  # PutLogEvents' answer when nothing was rejected


@dataclass(frozen=True)
class Hook:
    """Call `fn(request)` and then forward the request as usual (e.g. delete a log group first)."""

    fn: Callable[[Request], None]


Action = Error | HttpStatus | Drop | Delay | Hold | Answer | Hook


# --------------------------------------------------------------------------------------------------------
# Rules


@dataclass
class RuleStats:
    matched: int = 0  # requests that matched the rule's filters
    injected: int = 0  # of those, how many the rule acted on


@dataclass
class Rule:
    action: Action
    service: str | None = None
    operation: str | None = None
    body_contains: str | None = None
    probability: float = 1.0
    first: int | None = None  # act on at most this many matching requests
    name: str = ""
    stats: RuleStats = field(default_factory=RuleStats)

    def __post_init__(self) -> None:
        if not 0.0 <= self.probability <= 1.0:
            raise ValueError("probability must be within [0, 1]")
        if not self.name:
            self.name = ":".join(
                p
                for p in (self.service or "*", self.operation or "*", type(self.action).__name__, self.body_contains)
                if p
            )

    def matches(self, req: Request) -> bool:
        if self.service is not None and req.service != self.service:
            return False
        if self.operation is not None and req.operation != self.operation:
            return False
        return self.body_contains is None or req.contains(self.body_contains)


# --------------------------------------------------------------------------------------------------------
# The proxy


class FaultProxy:
    """A ThreadingHTTPServer on a free loopback port that forwards to `upstream`, applying rules on the way."""

    def __init__(self, upstream: str, *, seed: int = 0, host: str = "127.0.0.1", timeout_s: float = 120.0) -> None:
        up = urlsplit(upstream)
        if not up.hostname or not up.port:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = upstream
        self._up_host, self._up_port = up.hostname, up.port
        self._host = host
        self._timeout = timeout_s
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._calls: list[Call] = []
        self._roles: dict[str, str] = {}  # issued access key id → role ARN
        self._external_ids: dict[str, str] = {}  # issued access key id → the ExternalId it was assumed with
        self._secrets: set[str] = set()
        self._inflight = 0
        self.keep_answers: set[tuple[str, str]] = set()  # (service, operation) whose answers calls() keeps
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = _Server((self._host, 0), Handler)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="fault-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- control -------------------------------------------------------------------------------------------

    def add(self, rule: Rule) -> Rule:
        """Add a rule (after the existing ones); returns it, so its `stats` can be read later."""
        with self._lock:
            self._rules.append(rule)
        return rule

    def remove(self, rule: Rule) -> None:
        with self._lock:
            self._rules = [r for r in self._rules if r is not rule]
        if isinstance(rule.action, Hold):
            rule.action.open()

    def clear(self) -> None:
        """Remove every rule (a hold's requests go on)."""
        with self._lock:
            removed, self._rules = self._rules, []
        for rule in removed:
            if isinstance(rule.action, Hold):
                rule.action.open()

    @contextmanager
    def fault(self, rule: Rule) -> Iterator[Rule]:
        """A rule for the duration of a `with` block."""
        self.add(rule)
        try:
            yield rule
        finally:
            self.remove(rule)

    def stats(self) -> dict[str, RuleStats]:
        with self._lock:
            return {r.name: RuleStats(r.stats.matched, r.stats.injected) for r in self._rules}

    def reset_log(self) -> None:
        with self._lock:
            self._calls = []

    def calls(self, service: str | None = None, operation: str | None = None) -> list[Call]:
        with self._lock:
            return [
                c
                for c in self._calls
                if (service is None or c.service == service) and (operation is None or c.operation == operation)
            ]

    def inflight(self) -> int:
        """Requests being handled right now (held by a delay, or waiting for the upstream)."""
        with self._lock:
            return self._inflight

    def _enter(self, delta: int) -> None:
        with self._lock:
            self._inflight += delta

    def role_of(self, access_key: str) -> str:
        """The role ARN an access key was issued for by AssumeRole through this proxy ('' if unknown)."""
        with self._lock:
            return self._roles.get(access_key, "")

    def external_id_of(self, access_key: str) -> str:
        """The ExternalId the AssumeRole that issued an access key carried ('' if none, or unknown)."""
        with self._lock:
            return self._external_ids.get(access_key, "")

    def secrets(self) -> set[str]:
        """Every secret access key and session token the proxy saw STS issue."""
        with self._lock:
            return set(self._secrets)

    # -- the request path ----------------------------------------------------------------------------------

    def _decide(self, req: Request) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if not rule.matches(req):
                    continue
                rule.stats.matched += 1
                if rule.first is not None and rule.stats.injected >= rule.first:
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                rule.stats.injected += 1
                return rule
        return None

    def _record(self, req: Request, status: int, injected: str, answer: bytes = b"") -> None:
        with self._lock:
            keep = (req.service, req.operation) in self.keep_answers
            self._calls.append(
                Call(
                    len(self._calls),
                    req.service,
                    req.operation,
                    req.access_key,
                    req.body,
                    status,
                    injected,
                    path=unquote_plus(urlsplit(req.path).path),
                    answer=answer if keep else b"",
                    headers={k.lower(): v for k, v in req.headers.items() if k.lower() != "authorization"},
                )
            )

    def _learn_credentials(self, req: Request, body: bytes) -> None:
        if req.service != "sts" or req.operation != "AssumeRole":
            return
        found = {k: p.search(body) for k, p in _ASSUMED_RE.items()}
        form = parse_qs(req.text)
        role = form.get("RoleArn", [""])[0]
        with self._lock:
            if found["access_key"]:
                issued = found["access_key"].group(1).decode()
                self._roles[issued] = role
                self._external_ids[issued] = form.get("ExternalId", [""])[0]
            for k in ("secret", "token"):
                m = found[k]
                if m:
                    self._secrets.add(m.group(1).decode())

    def forward(self, req: Request) -> tuple[int, list[tuple[str, str]], bytes]:
        """Send the request to the upstream as it came (the client's own Host header included)."""
        conn = http.client.HTTPConnection(self._up_host, self._up_port, timeout=self._timeout)
        try:
            conn.putrequest(req.method, req.path, skip_host=True, skip_accept_encoding=True)
            for k, v in req.headers.items():
                if k.lower() not in _SKIP_REQUEST_HEADERS and k.lower() != "content-length":
                    conn.putheader(k, v)
            if req.body or req.method in ("POST", "PUT", "PATCH"):
                conn.putheader("Content-Length", str(len(req.body)))
            conn.endheaders(req.body or None)
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, resp.getheaders(), data
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that went away (a killed consumer or Ray worker) is part of the game, not an error.
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    owner: FaultProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as botocore expects of a real endpoint

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _handle(self) -> None:
        self.owner._enter(1)
        try:
            self._serve()
        finally:
            self.owner._enter(-1)

    def _serve(self) -> None:
        proxy = self.owner
        body = self._read_body()
        headers = {k: v for k, v in self.headers.items()}
        lower = {k.lower(): v for k, v in headers.items()}
        m = _CREDENTIAL_RE.search(lower.get("authorization", ""))
        access_key, region, service = (m.group(1), m.group(2), m.group(3)) if m else ("", "", "")
        operation = _operation(service, self.command, self.path, lower, body)
        req = Request(self.command, self.path, headers, body, service, operation, region, access_key)
        rule = proxy._decide(req)
        action = rule.action if rule else None
        injected = rule.name if rule else ""

        if isinstance(action, Delay):
            time.sleep(action.seconds)
        elif isinstance(action, Hold):
            action.block()
        elif isinstance(action, Hook):
            action.fn(req)
        elif isinstance(action, Drop) and not action.after_forward:
            proxy._record(req, 0, injected)
            self._drop()
            return
        elif isinstance(action, Error):
            extra, payload = action.render(service)
            proxy._record(req, action.status, injected)
            self._answer(action.status, list(extra.items()), payload)
            return
        elif isinstance(action, HttpStatus):
            proxy._record(req, action.status, injected)
            self._answer(action.status, [("Content-Type", "text/html")], action.body)
            return
        elif isinstance(action, Answer):
            time.sleep(action.seconds)
            proxy._record(req, 200, injected)
            self._answer(200, [("Content-Type", "application/x-amz-json-1.1")], action.body)
            return

        # A killed process's request is never forwarded, whenever the proxy comes to it: while it was held or
        # delayed, or still unread in the socket when a test removed the rule that would have held it. So a
        # test that kills a client knows that what it sent and was not answered never reached the service.
        if self._client_gone():
            waited = (
                " while held" if isinstance(action, Hold) else " while delayed" if isinstance(action, Delay) else ""
            )
            proxy._record(req, 0, f"client gone{waited}")
            self.close_connection = True
            return
        try:
            status, resp_headers, data = proxy.forward(req)
        except OSError:
            proxy._record(req, 0, "upstream unreachable")
            self._drop()
            return
        proxy._learn_credentials(req, data)
        if isinstance(action, Drop):  # after_forward: the work is done upstream, the answer never arrives
            proxy._record(req, 0, injected)
            self._drop()
            return
        proxy._record(req, status, injected if isinstance(action, Delay | Hold | Hook) else "", data)
        self._answer(status, resp_headers, data)

    def _answer(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in _SKIP_RESPONSE_HEADERS:
                self.send_header(k, v)
        if self.command == "HEAD":  # no body, but the length of the one a GET would return
            length = next((v for k, v in headers if k.lower() == "content-length"), "0")
            self.send_header("Content-Length", length)
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _client_gone(self) -> bool:
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _drop(self) -> None:
        self.close_connection = True
        with suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle
