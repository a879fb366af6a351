"""Request signing with pre-shared keys that have ids and scopes (CONTRACTS.md §9).

    X-Timestamp:    Unix seconds, 1 to 12 ASCII digits; refused when more than 300 s from the server's clock
    X-Nonce:        16 to 128 characters of [A-Za-z0-9_-], new for every request (remembered by `nonces`)
    X-Body-SHA256:  hex SHA-256 of the raw body (of b"" when there is none)
    Authorization:  HMAC-SHA256 <key id>:<hex of HMAC-SHA256(key, the canonical string)>

The canonical string is nine lines joined by "\\n": method, canonical path, canonical query, X-Timestamp,
X-Nonce, Host (lower case), Content-Type (as sent, or empty), If-Match (as sent, or empty), X-Body-SHA256.

Every header is checked against its grammar before anything else is done with it: `str.isdigit()` accepts
"²" and `int()` accepts 400 digits, and either once reached an arithmetic error, so a value outside the
grammar is refused here and no later step sees it. `verify` answers only the key or None: a caller learns
nothing about which part was wrong. Digests are compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from urllib.parse import quote, unquote_to_bytes

WINDOW_S = 300
SCHEME = "HMAC-SHA256"

# [0-9], never \d: in a str pattern \d matches every Unicode digit ("٣", "²" is not one but "３" is).
TIMESTAMP = re.compile(r"[0-9]{1,12}")
NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")
AUTHORIZATION = re.compile(SCHEME + r" ([A-Za-z0-9._-]{1,64}):([0-9a-fA-F]{64})")

# The headers the signature covers or that carry it: each must come at most once, so what was signed and
# what a route reads can never be two different copies of one header.
SIGNED_HEADERS = ("host", "content-type", "if-match", "x-timestamp", "x-nonce", "x-body-sha256", "authorization")


class KeyScope(StrEnum):
    ADMIN = "admin"  # every route
    READ = "read"  # GET only


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    secret: str = field(repr=False)  # never in a repr, a log line or a traceback's locals display
    scope: KeyScope

    def allows(self, method: str) -> bool:
        return self.scope is KeyScope.ADMIN or method.upper() == "GET"


class KeyRing:
    """The live keys by id: during a rotation the old and the new one are both here."""

    def __init__(self, keys: Iterable[ApiKey]) -> None:
        self._keys: dict[str, ApiKey] = {}
        for k in keys:
            if k.key_id in self._keys:
                raise ValueError(f"duplicate key id {k.key_id!r}")
            self._keys[k.key_id] = k
        if not self._keys:
            raise ValueError("no keys")

    @classmethod
    def single(cls, secret: str, key_id: str = "local", scope: KeyScope = KeyScope.ADMIN) -> KeyRing:
        return cls([ApiKey(key_id, secret, scope)])

    def get(self, key_id: str) -> ApiKey | None:
        return self._keys.get(key_id)

    @property
    def ids(self) -> list[str]:
        return sorted(self._keys)


def body_digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _encode(raw: bytes) -> str:
    # quote(bytes, safe="") leaves exactly A-Z a-z 0-9 - _ . ~ and writes %XX in upper case.
    return quote(raw, safe="")


def canonical_path(path: str | bytes, decoded: bool = False) -> str:
    """The path percent-decoded once, then each '/'-separated segment percent-encoded again.

    `decoded` says the path was already decoded by whatever ran the application (Mangum gives API Gateway's
    decoded path, uvicorn the raw one): decoding it a second time would turn "%2541" into "A" where the
    client signed "%2541", so it is only encoded.
    """
    raw = path.encode("utf-8") if isinstance(path, str) else bytes(path)
    once = raw if decoded else unquote_to_bytes(raw)
    return "/".join(_encode(segment) for segment in once.split(b"/"))


def canonical_query(query: str | bytes) -> str:
    """Each name and value decoded once (RFC 3986: a '+' stays a '+'), encoded as a path segment is, the
    pairs sorted by encoded name then value and joined as name=value with '&'; "" for no query."""
    raw = query.encode("utf-8") if isinstance(query, str) else bytes(query)
    pairs = []
    for part in raw.split(b"&"):
        if not part:
            continue
        name, _, value = part.partition(b"=")
        pairs.append((_encode(unquote_to_bytes(name)), _encode(unquote_to_bytes(value))))
    return "&".join(f"{n}={v}" for n, v in sorted(pairs))


def string_to_sign(
    method: str,
    path: str,
    query: str,
    timestamp: str,
    nonce: str,
    host: str,
    content_type: str,
    if_match: str,
    body_sha256: str,
) -> str:
    """The nine lines of §9; `path` and `query` already canonical."""
    return "\n".join([method.upper(), path, query, timestamp, nonce, host.lower(), content_type, if_match, body_sha256])


def mac(secret: str, message: str) -> str:
    return hmac.new(secret.encode("utf-8"), message.encode("utf-8"), hashlib.sha256).hexdigest()


def new_nonce() -> str:
    return secrets.token_urlsafe(24)  # 32 characters of [A-Za-z0-9_-], 192 bits


def sign(
    key: ApiKey | str,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    host: str,
    content_type: str = "",
    if_match: str = "",
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The headers of a signed request (the client side). `target` is the path with its query string as it
    is sent; `host` the Host header the client sends (with the port when not the scheme's default). A str
    key is the local admin key, id `local`. The caller sends Content-Type and If-Match itself, as given."""
    api_key = key if isinstance(key, ApiKey) else ApiKey("local", key, KeyScope.ADMIN)
    path, _, query = target.partition("?")
    ts = str(int(time.time() if now is None else now))
    nonce = new_nonce() if nonce is None else nonce
    digest = body_digest(body)
    message = string_to_sign(
        method, canonical_path(path), canonical_query(query), ts, nonce, host, content_type, if_match, digest
    )
    return {
        "X-Timestamp": ts,
        "X-Nonce": nonce,
        "X-Body-SHA256": digest,
        "Authorization": f"{SCHEME} {api_key.key_id}:{mac(api_key.secret, message)}",
    }


@dataclass(frozen=True)
class Verified:
    """A request whose signature holds: the key that made it, and the nonce to remember."""

    key: ApiKey
    nonce: str
    timestamp: int


def header_map(pairs: Sequence[tuple[bytes, bytes]] | Iterable[Sequence[bytes]]) -> dict[str, str] | None:
    """Lower-case names to latin-1 values, or None when a header the signature covers comes twice."""
    out: dict[str, str] = {}
    for pair in pairs:
        name = bytes(pair[0]).decode("latin-1").lower()
        value = bytes(pair[1]).decode("latin-1")
        if name in out and name in SIGNED_HEADERS:
            return None
        out[name] = value
    return out


# A key id no key has still costs one HMAC, so timing does not tell a known id from an unknown one.
_DUMMY = ApiKey("-", secrets.token_hex(32), KeyScope.READ)


def verify(
    keys: KeyRing,
    method: str,
    path: str,
    query: str,
    headers: Mapping[str, str],
    body: bytes,
    clock: Callable[[], float] = time.time,
) -> Verified | None:
    """The key of a request that carries a valid signature of itself, made within the window; else None.
    `path` and `query` are canonical; `headers` has lower-case names."""
    ts = headers.get("x-timestamp", "")
    nonce = headers.get("x-nonce", "")
    claimed = headers.get("x-body-sha256", "")
    auth = headers.get("authorization", "")
    host = headers.get("host", "")
    if not (TIMESTAMP.fullmatch(ts) and NONCE.fullmatch(nonce) and HEX_DIGEST.fullmatch(claimed) and host):
        return None
    found = AUTHORIZATION.fullmatch(auth)
    if found is None:
        return None
    timestamp = int(ts)  # at most 12 ASCII digits: always a small int
    if abs(clock() - timestamp) > WINDOW_S:
        return None
    key_id, given = found.group(1), found.group(2).lower()
    key = keys.get(key_id)
    message = string_to_sign(
        method,
        path,
        query,
        ts,
        nonce,
        host,
        headers.get("content-type", ""),
        headers.get("if-match", ""),
        claimed,
    )
    expected = mac((key or _DUMMY).secret, message)
    # Both checks run whatever the first said, so timing does not tell which one failed.
    body_ok = hmac.compare_digest(claimed.lower().encode(), body_digest(body).encode())
    sig_ok = hmac.compare_digest(given.encode(), expected.encode())
    if key is None or not body_ok or not sig_ok:
        return None
    return Verified(key, nonce, timestamp)
