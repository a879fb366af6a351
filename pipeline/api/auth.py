"""Request signing with a pre-shared key (CONTRACTS.md §9).

    X-Timestamp:    Unix seconds; refused when more than 300 s from the server's clock
    X-Body-SHA256:  hex SHA-256 of the raw body (of b"" when there is none)
    Authorization:  HMAC-SHA256 <hex of HMAC-SHA256(key, METHOD \\n path-with-query \\n X-Timestamp \\n X-Body-SHA256)>

`verify` answers only True or False: a caller learns nothing about which part was wrong. Digests are compared
in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Mapping

WINDOW_S = 300
SCHEME = "HMAC-SHA256"


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def string_to_sign(method: str, path: str, timestamp: str, body_sha256: str) -> str:
    return f"{method.upper()}\n{path}\n{timestamp}\n{body_sha256}"


def signature(key: str, method: str, path: str, timestamp: str, body_sha256: str) -> str:
    message = string_to_sign(method, path, timestamp, body_sha256).encode()
    return hmac.new(key.encode("utf-8"), message, hashlib.sha256).hexdigest()


def sign(key: str, method: str, path: str, body: bytes = b"", now: float | None = None) -> dict[str, str]:
    """The three headers of a signed request; `path` is the path with its query string, as sent."""
    ts = str(int(time.time() if now is None else now))
    digest = body_digest(body)
    return {
        "X-Timestamp": ts,
        "X-Body-SHA256": digest,
        "Authorization": f"{SCHEME} {signature(key, method, path, ts, digest)}",
    }


def verify(
    key: str,
    method: str,
    path: str,
    headers: Mapping[str, str],
    body: bytes,
    clock: Callable[[], float] = time.time,
) -> bool:
    """Whether the request carries a valid signature of itself, made within the window. `headers` has
    lower-case names."""
    ts, claimed, auth = headers.get("x-timestamp"), headers.get("x-body-sha256"), headers.get("authorization")
    if not ts or not claimed or not auth:
        return False
    if not ts.isdigit() or abs(clock() - int(ts)) > WINDOW_S:
        return False
    scheme, _, given = auth.partition(" ")
    if scheme != SCHEME or not given:
        return False
    actual = body_digest(body)
    # Both checks run whatever the first said, so timing does not tell which one failed.
    body_ok = hmac.compare_digest(claimed.strip().lower().encode(), actual.encode())
    expected = signature(key, method, path, ts, claimed.strip().lower())
    sig_ok = hmac.compare_digest(given.strip().lower().encode(), expected.encode())
    return body_ok and sig_ok
