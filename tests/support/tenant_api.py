"""The tenant API served for real (uvicorn on a free loopback port, in a thread) and a signing client."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_to_bytes, urlsplit

import httpx
import uvicorn

from devstack.server import free_port


def _enc(raw: bytes) -> str:
    return quote(raw, safe="")  # leaves A-Z a-z 0-9 - _ . ~, %XX in upper case


def contract_canonical(target: str) -> tuple[str, str]:
    """§9 lines 2 and 3 of a path-with-query as sent, from the contract's words (not the code under test)."""
    path, _, query = target.partition("?")
    canonical_path = "/".join(_enc(s) for s in unquote_to_bytes(path).split(b"/"))
    pairs = sorted(
        (_enc(unquote_to_bytes(n)), _enc(unquote_to_bytes(v)))
        for n, _, v in (p.partition("=") for p in query.split("&") if p)
    )
    return canonical_path, "&".join(f"{n}={v}" for n, v in pairs)


def contract_headers(
    key: str,
    method: str,
    path: str,
    body: bytes,
    timestamp: int | None = None,
    *,
    host: str = "api.example",
    content_type: str = "",
    if_match: str = "",
    nonce: str | None = None,
    key_id: str = "local",
) -> dict[str, str]:
    """The signature headers of §9 for `path` (with its query, as sent), written out from the contract."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    nonce = secrets.token_urlsafe(18) if nonce is None else nonce
    digest = hashlib.sha256(body).hexdigest()
    cpath, cquery = contract_canonical(path)
    lines = [method.upper(), cpath, cquery, ts, nonce, host.lower(), content_type, if_match, digest]
    mac = hmac.new(key.encode("utf-8"), "\n".join(lines).encode("utf-8"), hashlib.sha256).hexdigest()
    return {
        "X-Timestamp": ts,
        "X-Nonce": nonce,
        "X-Body-SHA256": digest,
        "Authorization": f"HMAC-SHA256 {key_id}:{mac}",
    }


@contextmanager
def serving(app: Any, ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> Iterator[str]:
    """Serve `app` until the block ends (over HTTPS with a certificate and key); yields its base URL."""
    port = free_port()
    config = uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="tenant-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the tenant API did not start")
        time.sleep(0.02)
    try:
        yield f"{'https' if ssl_certfile else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class Signed:
    """A request as it went on the wire: enough to send it again, byte for byte (a captured request)."""

    method: str
    path: str
    content: bytes
    headers: dict[str, Any]


@dataclass
class ApiClient:
    """Signs every request the way CONTRACTS.md §9 says, written out here from the contract."""

    base_url: str
    key: str
    key_id: str = "local"
    verify: Any = True  # httpx's: a CA bundle path or an ssl context for HTTPS

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).netloc  # what httpx sends as Host: 127.0.0.1:<port>

    def prepare(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        signed: bool = True,
        raw: bytes | None = None,
    ) -> Signed:
        content = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        all_headers = {"Content-Type": "application/json"} if content else {}
        all_headers.update(headers or {})
        if signed:
            lower = {k.lower(): v for k, v in all_headers.items()}
            all_headers.update(
                contract_headers(
                    self.key,
                    method,
                    path,
                    content,
                    host=lower.get("host", self.host),  # a Host given is what goes out, and is signed
                    content_type=lower.get("content-type", ""),
                    if_match=lower.get("if-match", ""),
                    key_id=self.key_id,
                )
            )
        return Signed(method, path, content, all_headers)

    def send(self, req: Signed) -> httpx.Response:
        return httpx.request(
            req.method,
            self.base_url + req.path,
            content=req.content,
            headers=req.headers,
            timeout=30,
            verify=self.verify,
        )

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        signed: bool = True,
        raw: bytes | None = None,
    ) -> httpx.Response:
        return self.send(self.prepare(method, path, body, headers, signed, raw))

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("GET", path, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return self.request("PUT", path, body, **kw)

    def patch(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return self.request("PATCH", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.request("DELETE", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        return self.request("POST", path, body, **kw)


def self_signed_certificate(directory: Path) -> tuple[str, str]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files in `directory`: (cert, key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tenant-api.log-delivery.svc")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return str(cert_path), str(key_path)
