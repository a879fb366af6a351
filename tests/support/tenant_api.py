"""The tenant API served for real (uvicorn on a free loopback port, in a thread) and a signing client."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI

from devstack.server import free_port


def contract_headers(key: str, method: str, path: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The signature headers of §9, from the contract's words (not from the code under test)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    digest = hashlib.sha256(body).hexdigest()
    message = f"{method}\n{path}\n{ts}\n{digest}".encode()
    mac = hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()
    return {"X-Timestamp": ts, "X-Body-SHA256": digest, "Authorization": f"HMAC-SHA256 {mac}"}


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """Serve `app` until the block ends; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="tenant-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the tenant API did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@dataclass
class ApiClient:
    """Signs every request the way CONTRACTS.md §9 says, written out here from the contract."""

    base_url: str
    key: str

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        signed: bool = True,
        raw: bytes | None = None,
    ) -> httpx.Response:
        content = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
        all_headers = {"Content-Type": "application/json"} if content else {}
        if signed:
            all_headers.update(contract_headers(self.key, method, path, content))
        all_headers.update(headers or {})
        return httpx.request(method, self.base_url + path, content=content, headers=all_headers, timeout=30)

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
