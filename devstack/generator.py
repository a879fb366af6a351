"""Synthetic log objects exactly as the Vector collector writes them, plus a manifest of what to expect.

Tests, the demo and the benchmarks use this to fill the central bucket. Every object is a real
Vector-format batch (CONTRACTS.md §1, §2): gzipped NDJSON, one compact orjson record per line, at a key
built by `pipeline.keys.format_key`. Records come from `pipeline.records.vector_record`, so the envelope
has one definition.

The result of a write is a `Manifest`: for every object its key, size, ETag, record count and the events
delivery must produce, as `(timestamp_ms, message_str)`:

- `message_str` is the `message` itself when it is a string, the compact JSON (`records.compact_json`) of
  it when it is an object or array, and the compact JSON of the whole record when the record has no
  `message`.
- `timestamp_ms` is the record timestamp truncated (not rounded) to milliseconds. Epoch-seconds numbers
  are only ever whole seconds or multiples of 1/8 s, which binary floats hold exactly, so `value * 1000`
  gives the same milliseconds however a decoder converts them.

Everything is a pure function of the configuration and the seed: same config, same bytes.

Damaged objects (`DamageKind`) are extra objects for error-path tests. What each one still delivers:

| kind | body | expected events | invalid_lines |
|---|---|---|---|
| truncated_gzip | gzip cut inside the deflate data | every complete line of what zlib can inflate | none |
| empty | zero bytes | none | none |
| plain_ndjson | NDJSON, not gzipped, `.gz` name | all | none |
| json_array | gzip of one JSON array of records | all | none |
| garbage_lines | NDJSON with non-JSON lines mixed in | all records | the garbage lines |
| oversized_line | NDJSON with one message over 1 MiB | all, the big one in full | none |
| invalid_utf8 | NDJSON, one line with Latin-1 bytes | all; that line's bad bytes as U+FFFD | none |

The invalid UTF-8 line follows the project decoder (`pipeline.records.decode_events`): a line that is
valid JSON apart from its bytes is repaired, one U+FFFD per bad byte, and counted as repaired
(`repaired_lines`), not as invalid. The truncated object's cut leaves no partial line that happens to
parse, so "complete lines" is well defined; the cut-off last line is part of the damage, not an invalid
line. Garbage is never the first line (a body starting with `[` reads as a JSON array).
"""

from __future__ import annotations

import gzip
import random
import time
import uuid
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from pipeline import timespec
from pipeline.keys import DEFAULT_WRITE_SLACK, format_key
from pipeline.records import MESSAGE_FIELD, compact_json, vector_record

NS_PER_S = 1_000_000_000
NS_PER_MS = 1_000_000
MIB = 1 << 20
GZIP_LEVEL = 6  # Vector's default; benchmarks should see realistic compression ratios and CPU cost.
# Vector sets these on what its aws_s3 sink writes; a plain (uncompressed) body gets neither.
GZIP_PUT_ARGS: dict[str, str] = {"ContentEncoding": "gzip", "ContentType": "text/x-log"}

# Realistic Kubernetes application names. The first two match the sample tenant `globex`'s desired_logs
# (devstack.provision), so a default data set exercises application filtering.
APP_NAMES: tuple[str, ...] = (
    "payment-service",
    "frontend",
    "checkout",
    "inventory-api",
    "auth-gateway",
    "search-indexer",
    "notification-worker",
    "billing-cron",
    "recommendation-engine",
    "shipping-tracker",
)


class MessageKind(StrEnum):
    PLAIN = "plain"  # access logs, framework log lines, free text
    JSON_OBJECT = "json_object"  # the message field *is* a JSON object (structured logging parsed by Vector)
    JSON_STRING = "json_string"  # structured logging left as text: a string that holds JSON
    JSON_ARRAY = "json_array"  # rare, but it happens, and it must be delivered as compact JSON too
    KLOG = "klog"  # Kubernetes components: `I0101 00:00:00.123456       1 file.go:123] msg`
    STACK_TRACE = "stack_trace"  # multi-KB Java / Python traces with newlines
    UNICODE = "unicode"  # CJK, emoji (incl. ZWJ sequences), accented and combining characters
    NO_MESSAGE = "no_message"  # a record without `message`: delivered as the whole record's compact JSON


class DamageKind(StrEnum):
    TRUNCATED_GZIP = "truncated_gzip"
    EMPTY = "empty"
    PLAIN_NDJSON = "plain_ndjson"
    JSON_ARRAY = "json_array"
    GARBAGE_LINES = "garbage_lines"
    OVERSIZED_LINE = "oversized_line"
    INVALID_UTF8 = "invalid_utf8"


# Relative weights. NO_MESSAGE is off by default: the collector never writes it, but the contract defines
# its delivery, so a test can switch it on.
DEFAULT_MIX: Mapping[MessageKind, float] = {
    MessageKind.PLAIN: 0.34,
    MessageKind.JSON_OBJECT: 0.20,
    MessageKind.JSON_STRING: 0.10,
    MessageKind.JSON_ARRAY: 0.02,
    MessageKind.KLOG: 0.15,
    MessageKind.STACK_TRACE: 0.04,
    MessageKind.UNICODE: 0.15,
    MessageKind.NO_MESSAGE: 0.0,
}

# Damaged objects need enough lines that truncation and garbage have something to cut into.
DAMAGED_MIN_EVENTS = 20
OVERSIZED_MESSAGE_BYTES = MIB + 4096
STACK_TRACE_MIN_BYTES = 2048
STACK_TRACE_MAX_BYTES = 8192


class ExpectedEvent(NamedTuple):
    """One event as CloudWatch should receive it. A plain tuple, so `(ms, "text")` compares equal."""

    timestamp_ms: int
    message: str


# --------------------------------------------------------------------------------------------------------
# Configuration and plan


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. The seed plus these fields determine every byte."""

    since: datetime
    until: datetime
    tenants: tuple[str, ...] = ("acme",)
    clusters: tuple[str, ...] = ("prod-1",)
    applications: tuple[str, ...] = ("payment-service",)
    pods_per_app: int = 1
    objects_per_pod: int = 1
    events_per_object: int = 10
    # Mean message size in UTF-8 bytes, over all kinds. Approximate, and a floor applies: an access-log line
    # is ~200 bytes before padding, so small means come out larger.
    message_bytes: int = 300
    max_message_bytes: int = 16 * 1024  # hard cap per message, stack traces included
    seed: int = 0
    # Share of events whose timestamp is an epoch number (half seconds, half milliseconds), not RFC 3339.
    epoch_fraction: float = 0.02
    # Events in a batch are at most this much older than the batch's write time (Vector's batch timeout).
    batch_seconds: int = int(DEFAULT_WRITE_SLACK.total_seconds())
    mix: Mapping[MessageKind, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    damaged: tuple[DamageKind, ...] = ()  # one extra damaged object per entry
    keep_events: bool = True  # False: the manifest keeps counts only (large benchmark data sets)

    def __post_init__(self) -> None:
        if self.since.tzinfo is None or self.until.tzinfo is None:
            raise ValueError("since and until must be timezone-aware")
        if self.until < self.since:
            raise ValueError("until is before since")
        if _ceil_s(_ns(self.since)) > _ns(self.until) // NS_PER_S:
            raise ValueError("the window holds no whole second to use as a write time")
        for name in ("tenants", "clusters", "applications"):
            if not getattr(self, name):
                raise ValueError(f"{name} is empty")
        if min(self.pods_per_app, self.objects_per_pod, self.events_per_object) < 0:
            raise ValueError("counts must not be negative")
        if not 1 <= self.message_bytes <= self.max_message_bytes:
            raise ValueError("need 1 <= message_bytes <= max_message_bytes")
        if not 0.0 <= self.epoch_fraction <= 1.0:
            raise ValueError("epoch_fraction must be within [0, 1]")
        if self.batch_seconds < 0:
            raise ValueError("batch_seconds must not be negative")
        if sum(self.mix.values()) <= 0 or any(w < 0 for w in self.mix.values()):
            raise ValueError("mix weights must be non-negative and not all zero")

    @property
    def since_ns(self) -> int:
        return _ns(self.since)

    @property
    def until_ns(self) -> int:
        return _ns(self.until)


@dataclass(frozen=True, slots=True)
class PlannedObject:
    """One object to generate: where it goes, when it was written, and what (if anything) is wrong."""

    index: int  # position in the plan; seeds the object's own RNG
    cluster: str
    tenant: str
    application: str
    pod: str
    write_second: int  # epoch seconds; the filename timestamp
    uid: str
    damage: DamageKind | None = None

    @property
    def key(self) -> str:
        return format_key(
            self.cluster, self.tenant, self.application, self.pod, _dt(self.write_second * NS_PER_S), self.uid
        )

    @property
    def write_time(self) -> datetime:
        return _dt(self.write_second * NS_PER_S)


def pod_name(rng: random.Random, application: str) -> str:
    """A Deployment-style pod name: `<app>-<replicaset hash>-<5 chars>`, Kubernetes' own alphabet."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"
    rs = "".join(rng.choice(alphabet) for _ in range(10))
    suffix = "".join(rng.choice(alphabet) for _ in range(5))
    return f"{application}-{rs}-{suffix}"


def app_names(count: int) -> tuple[str, ...]:
    """The first `count` realistic application names, numbered once the list runs out."""
    return tuple(
        APP_NAMES[i] if i < len(APP_NAMES) else f"{APP_NAMES[i % len(APP_NAMES)]}-{i // len(APP_NAMES)}"
        for i in range(count)
    )


def plan(cfg: GeneratorConfig) -> list[PlannedObject]:
    """Every object to write, in a fixed order: regular objects pod by pod, then the damaged ones."""
    # str seeds hash with SHA-512: stable across runs and hosts.
    rng = random.Random(f"{cfg.seed}:plan")
    first_s = _ceil_s(cfg.since_ns)
    last_s = cfg.until_ns // NS_PER_S
    seconds = last_s - first_s + 1
    specs: list[PlannedObject] = []
    pods: list[tuple[str, str, str, str]] = []
    for cluster in cfg.clusters:
        for tenant in cfg.tenants:
            for app in cfg.applications:
                for _ in range(cfg.pods_per_app):
                    pod = pod_name(rng, app)
                    pods.append((cluster, tenant, app, pod))
                    # One slot per object, jittered inside it: batches spread over the window like a
                    # steadily logging pod, not clumped at random.
                    width = seconds / max(cfg.objects_per_pod, 1)
                    for i in range(cfg.objects_per_pod):
                        sec = min(last_s, first_s + int((i + rng.random()) * width))
                        specs.append(PlannedObject(len(specs), cluster, tenant, app, pod, sec, _uuid(rng)))
    if cfg.damaged and not pods:
        raise ValueError("damaged objects need at least one pod")
    for kind in cfg.damaged:
        cluster, tenant, app, pod = rng.choice(pods)
        sec = rng.randint(first_s, last_s)
        specs.append(PlannedObject(len(specs), cluster, tenant, app, pod, sec, _uuid(rng), DamageKind(kind)))
    for s in specs:
        s.key  # noqa: B018 -- validates every part through format_key before anything is written
    return specs


# --------------------------------------------------------------------------------------------------------
# Time


def _ns(t: datetime) -> int:
    # Exact integer arithmetic; datetime.timestamp() goes through a float and loses microseconds.
    delta = t.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * NS_PER_S + delta.microseconds * 1000


def _dt(ns: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=ns // 1000)


def _ceil_s(ns: int) -> int:
    return -(-ns // NS_PER_S)


def rfc3339_ns(ns: int) -> str:
    """`2024-01-01T00:00:00.123456789Z`, the form Vector's kubernetes_logs source writes."""
    sec, frac = divmod(ns, NS_PER_S)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def timestamp_value(ns: int, style: str) -> tuple[str | int | float, int]:
    """The record's timestamp in `style` ("rfc3339", "epoch_s", "epoch_s_frac", "epoch_ms"), and its ms.

    Epoch styles lose precision, always downwards, so the value never moves past the write time.
    """
    if style == "rfc3339":
        return rfc3339_ns(ns), ns // NS_PER_MS
    if style == "epoch_ms":
        return ns // NS_PER_MS, ns // NS_PER_MS
    sec = ns // NS_PER_S
    if style == "epoch_s":
        return sec, sec * 1000
    if style == "epoch_s_frac":
        # Eighths of a second are exact in binary floating point, so the milliseconds are unambiguous.
        eighths = (ns % NS_PER_S) // (NS_PER_S // 8)
        return sec + eighths / 8, sec * 1000 + eighths * 125
    raise ValueError(f"unknown timestamp style {style!r}")


def utc_time(value: str | datetime | date, now: datetime | None = None) -> datetime:
    """A UTC datetime from ISO 8601 (`2024-01-01`, `2024-01-01T06:00:00Z`), `now`, or an age (`6h`, `7d`).

    Strings go to the project's one CLI time parser, `pipeline.timespec.parse_time`, so the generator and
    the replay job read `--since` the same way. Datetimes and dates pass through (naive ones as UTC).
    """
    if isinstance(value, datetime):
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    return timespec.parse_time(value, now).astimezone(UTC)


# --------------------------------------------------------------------------------------------------------
# Messages

_WORDS = [
    "request",
    "completed",
    "processing",
    "order",
    "payment",
    "cache",
    "miss",
    "hit",
    "upstream",
    "timeout",
    "retry",
    "connection",
    "pool",
    "database",
    "query",
    "user",
    "session",
    "token",
    "refreshed",
    "handler",
    "started",
    "finished",
    "queued",
    "batch",
    "flushed",
    "worker",
    "shard",
    "replica",
    "leader",
    "election",
    "lease",
    "renewed",
    "config",
    "reloaded",
    "metrics",
    "exported",
    "health",
    "check",
    "passed",
    "invoice",
    "customer",
    "cart",
    "item",
    "inventory",
    "reserved",
    "released",
    "shipment",
    "label",
    "created",
    "webhook",
    "delivered",
    "rate",
    "limit",
    "exceeded",
    "backoff",
    "circuit",
    "breaker",
    "open",
    "closed",
    "half-open",
    "feature",
    "flag",
    "evaluated",
]
_UNICODE_WORDS = [
    "注文",
    "処理",
    "完了",
    "用户",
    "登录",
    "成功",
    "数据库",
    "连接",
    "超时",
    "東京",
    "서울",
    "결제",
    "승인",
    "café",
    "naïve",
    "Zürich",
    "São",
    "Paulo",
    "Ελληνικά",
    "Привет",
    "мир",
    "crème",
    "brûlée",
    "jalapeño",
    "façade",
    "été",
    "🚀",
    "✅",
    "⚠️",
    "🔥",
    "💳",
    "📦",
    "👩\u200d💻",
    "🇯🇵",
    "😀",
    "∑",
    "≥",
    "∞",
    "½",
    "€",
]
_HTTP_PATHS = ("/api/v1/orders", "/api/v1/payments", "/healthz", "/api/v2/cart/items", "/login", "/metrics")
_USER_AGENTS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36",
    "curl/8.4.0",
    "kube-probe/1.28",
    "okhttp/4.12.0",
)
_LEVELS = ("debug", "info", "info", "info", "warn", "error")
_GO_FILES = ("controller.go", "reflector.go", "leaderelection.go", "server.go", "round_trippers.go")
_JAVA_EXC = (
    "java.lang.IllegalStateException",
    "java.lang.NullPointerException",
    "org.springframework.dao.DataAccessResourceFailureException",
    "java.util.concurrent.TimeoutException",
)
_PY_EXC = (
    "KeyError: 'customer_id'",
    "ValueError: invalid literal for int() with base 10: 'abc'",
    "TimeoutError: timed out",
    "ConnectionResetError: [Errno 104] Connection reset by peer",
)
# Fixed English month names: strftime("%b") follows the process locale, which would break determinism.
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class MessageFactory:
    """Builds messages of each kind, sized around a target, from one RNG (so deterministic)."""

    def __init__(self, rng: random.Random, cfg: GeneratorConfig) -> None:
        self.rng = rng
        self.cfg = cfg
        kinds = [k for k, w in cfg.mix.items() if w > 0]
        self._kinds = [MessageKind(k) for k in kinds]
        self._weights = [cfg.mix[k] for k in kinds]
        # message_bytes is the mean over *all* messages. Stack traces are multi-KB whatever the mean, so the
        # other kinds aim lower to make up for them (never below a small floor).
        share = cfg.mix.get(MessageKind.STACK_TRACE, 0.0) / sum(self._weights)
        trace_mean = min(cfg.max_message_bytes, (STACK_TRACE_MIN_BYTES + STACK_TRACE_MAX_BYTES) // 2)
        self._mean = max(32.0, (cfg.message_bytes - share * trace_mean) / (1 - share) if share < 1 else 32.0)

    def kind(self) -> MessageKind:
        return self.rng.choices(self._kinds, self._weights)[0]

    def target_bytes(self) -> int:
        # Log sizes are long-tailed: exponential around the mean, capped.
        return max(1, min(self.cfg.max_message_bytes, int(self.rng.expovariate(1 / self._mean))))

    def make(self, kind: MessageKind, ns: int, app: str) -> Any:
        """A message of `kind` for an event at `ns`. Strings never exceed max_message_bytes."""
        target = self.target_bytes()
        match kind:
            case MessageKind.PLAIN | MessageKind.NO_MESSAGE:
                msg: Any = self._plain(ns, target, app)
            case MessageKind.JSON_OBJECT:
                msg = self._structured(ns, target, app)
            case MessageKind.JSON_STRING:
                msg = orjson.dumps(self._structured(ns, target, app)).decode()
            case MessageKind.JSON_ARRAY:
                msg = [self._structured(ns, target // 2, app), {"seq": self.rng.randint(0, 1000)}]
            case MessageKind.KLOG:
                msg = self._klog(ns, target)
            case MessageKind.STACK_TRACE:
                size = self.rng.randint(STACK_TRACE_MIN_BYTES, STACK_TRACE_MAX_BYTES)
                msg = self._stack_trace(ns, min(self.cfg.max_message_bytes, size), app)
            case MessageKind.UNICODE:
                msg = self._unicode(target)
        return clip_utf8(msg, self.cfg.max_message_bytes) if isinstance(msg, str) else msg

    def filler(self, nbytes: int) -> str:
        """ASCII words, about `nbytes` long: a random slice of a fixed corpus (one RNG call, not one per
        word, because benchmarks generate millions of messages)."""
        return _corpus_slice(self.rng, _ASCII_CORPUS, nbytes)

    def _pad(self, text: str, target: int) -> str:
        missing = target - len(text.encode())
        return f"{text} {self.filler(missing - 1)}" if missing > 1 else text

    def _plain(self, ns: int, target: int, app: str) -> str:
        r = self.rng
        t = _dt(ns)
        match r.randrange(3):
            case 0:  # nginx combined access log
                text = (
                    f"10.{r.randrange(256)}.{r.randrange(256)}.{r.randrange(1, 255)} - - "
                    f"[{t.day:02d}/{_MONTHS[t.month - 1]}/{t.strftime('%Y:%H:%M:%S')} +0000] "
                    f'"{r.choice(("GET", "POST", "PUT"))} '
                    f'{r.choice(_HTTP_PATHS)}/{r.randrange(10**6)} HTTP/1.1" {r.choice((200, 200, 201, 404, 502))} '
                    f'{r.randrange(50, 50_000)} "-" "{r.choice(_USER_AGENTS)}" rt={r.randrange(1, 3000) / 1000:.3f}'
                )
            case 1:  # Spring/logback style
                text = (
                    f"{t.strftime('%Y-%m-%d %H:%M:%S')},{t.microsecond // 1000:03d} "
                    f"{r.choice(('INFO', 'WARN', 'DEBUG', 'ERROR'))} [http-nio-8080-exec-{r.randrange(1, 200)}] "
                    f"c.e.{app.replace('-', '')}.Service - {r.choice(_WORDS)} {r.choice(_WORDS)} "
                    f"id={r.randrange(10**9)}"
                )
            case _:
                text = f"{r.choice(_WORDS).capitalize()} {r.choice(_WORDS)} took {r.randrange(1, 5000)}ms"
        return self._pad(text, target)

    def _structured(self, ns: int, target: int, app: str) -> dict[str, Any]:
        r = self.rng
        obj: dict[str, Any] = {
            "level": r.choice(_LEVELS),
            "ts": rfc3339_ns(ns),
            "logger": f"{app}.handler",
            "msg": "",
            "request_id": f"{r.getrandbits(64):016x}",
            "user_id": r.randrange(10**7),
            "duration_ms": r.randrange(0, 10_000),
            "http": {"method": r.choice(("GET", "POST")), "path": r.choice(_HTTP_PATHS), "status": 200},
            "retry": r.random() < 0.1,
            "tags": [r.choice(_WORDS) for _ in range(r.randrange(0, 4))],
            "parent_span": None,
        }
        base = len(orjson.dumps(obj))
        words = _UNICODE_WORDS if r.random() < 0.1 else _WORDS
        obj["msg"] = " ".join(r.choice(words) for _ in range(3))
        if target > base + len(obj["msg"]) + 1:
            obj["msg"] = self._pad(obj["msg"], target - base)
        # Bound by the cap too: the delivered string is the compact JSON.
        overshoot = len(orjson.dumps(obj)) - self.cfg.max_message_bytes
        if overshoot > 0:
            obj["msg"] = clip_utf8(obj["msg"], max(1, len(obj["msg"].encode()) - overshoot))
        return obj

    def _klog(self, ns: int, target: int) -> str:
        r = self.rng
        t = _dt(ns)
        head = (
            f"{r.choice('IIIIWE')}{t.strftime('%m%d %H:%M:%S')}.{(ns % NS_PER_S) // 1000:06d} "
            f"{r.randrange(1, 99):7d} {r.choice(_GO_FILES)}:{r.randrange(1, 999)}] "
        )
        text = f'"{r.choice(_WORDS).capitalize()} {r.choice(_WORDS)}" key="ns/obj-{r.randrange(999)}"'
        return self._pad(head + text, target)

    def _stack_trace(self, ns: int, target: int, app: str) -> str:
        r = self.rng
        if r.random() < 0.5:
            head = [
                f"{_dt(ns).strftime('%Y-%m-%d %H:%M:%S')} ERROR 1 --- [nio-8080-exec-{r.randrange(1, 50)}] "
                "{pkg}.Controller : Request processing failed",
                f"{r.choice(_JAVA_EXC)}: {r.choice(_WORDS)} {r.choice(_WORDS)} failed",
            ]
            frames, tail = _JAVA_FRAMES, f"\t... {r.randrange(10, 90)} more"
            placeholder, value = "{pkg}", f"com.example.{app.replace('-', '')}"
        else:
            head = ["Traceback (most recent call last):"]
            frames, tail = _PY_FRAMES, r.choice(_PY_EXC)
            placeholder, value = "{mod}", app.replace("-", "_")
        # Frames come from a prebuilt pool; only the application's package/path is filled in per trace.
        frame_len = _avg_len(frames) + len(value) - len(placeholder)
        n = max(1, (target - sum(map(len, head)) - len(tail)) // frame_len)
        return "\n".join([*head, *r.choices(frames, k=n), tail]).replace(placeholder, value)

    def _unicode(self, target: int) -> str:
        r = self.rng
        head = f"{r.choice(('INFO', 'WARN', 'ERROR'))} {r.choice(_UNICODE_WORDS)}"
        # The corpus averages several UTF-8 bytes per character; slice by characters to land near `target`.
        chars = max(1, int((target - len(head.encode())) / _UNICODE_BYTES_PER_CHAR))
        return f"{head} {_corpus_slice(r, _UNICODE_CORPUS, chars)}"


def _build_corpus(words: list[str], size: int, seed: str) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    total = 0
    while total < size:
        w = rng.choice(words)
        out.append(w)
        total += len(w) + 1
    return " ".join(out)


def _corpus_slice(rng: random.Random, corpus: str, n: int) -> str:
    """About `n` characters of `corpus` from a random word boundary; repeats the corpus for huge `n`."""
    if n >= len(corpus) // 2:
        corpus = corpus * (n // len(corpus) + 2)
    start = corpus.find(" ", rng.randrange(len(corpus) - n - 1)) + 1
    return corpus[start : start + n].strip() or corpus.split(" ", 1)[0]


def _frame_pool(rng: random.Random, java: bool) -> tuple[str, ...]:
    classes = ("Service", "Repository", "Handler", "Filter", "Invoker", "Client", "Mapper")
    frames: list[str] = []
    for _ in range(256):
        w = rng.choice(_WORDS).replace("-", "")
        if java and rng.random() < 0.03:
            frames.append(f"Caused by: {rng.choice(_JAVA_EXC)}: {w}")
        elif java:
            cls = rng.choice(classes)
            frames.append(f"\tat {{pkg}}.{cls}.{w}({cls}.java:{rng.randrange(20, 900)})")
        else:
            frames.append(
                f'  File "/app/{{mod}}/{w}.py", line {rng.randrange(1, 700)}, in {rng.choice(_WORDS)}\n'
                f"    result = self.{rng.choice(_WORDS).replace('-', '_')}(request, timeout=30)"
            )
    return tuple(frames)


def _avg_len(items: tuple[str, ...]) -> int:
    return max(1, sum(len(x) + 1 for x in items) // len(items))


# Fixed corpora, built once from fixed seeds: messages slice them instead of drawing word by word.
_ASCII_CORPUS = _build_corpus(_WORDS, 256 * 1024, "ascii-corpus")
_UNICODE_CORPUS = _build_corpus(_UNICODE_WORDS * 3 + _WORDS, 64 * 1024, "unicode-corpus")
_UNICODE_BYTES_PER_CHAR = len(_UNICODE_CORPUS.encode()) / len(_UNICODE_CORPUS)
_JAVA_FRAMES = _frame_pool(random.Random("java-frames"), java=True)
_PY_FRAMES = _frame_pool(random.Random("python-frames"), java=False)


def clip_utf8(text: str, max_bytes: int) -> str:
    """`text` cut to at most `max_bytes` UTF-8 bytes, never inside a character, never empty."""
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    return raw[: max(1, max_bytes)].decode("utf-8", "ignore") or text[0]


def delivered_message(record: Mapping[str, Any]) -> str:
    """What CloudWatch should receive for a record (CONTRACTS.md §2). The manifest's rule, spelled out."""
    if MESSAGE_FIELD not in record:
        return compact_json(record)
    msg = record[MESSAGE_FIELD]
    return msg if isinstance(msg, str) else compact_json(msg)


# --------------------------------------------------------------------------------------------------------
# Objects


@dataclass(slots=True)
class GeneratedObject:
    """An object's body and what decoding it must yield; built in memory, not yet written."""

    spec: PlannedObject
    key: str
    body: bytes
    events: int  # records the generator put in the body (before any damage)
    expected: list[ExpectedEvent]
    invalid_lines: tuple[int, ...] = ()  # 1-based line numbers a decoder must report as not JSON
    kinds: dict[str, int] = field(default_factory=dict)
    repaired_lines: tuple[int, ...] = ()  # 1-based lines delivered with U+FFFD for invalid UTF-8 bytes

    @property
    def damage(self) -> DamageKind | None:
        return self.spec.damage

    @property
    def gzipped(self) -> bool:
        return self.body[:2] == b"\x1f\x8b"


def _rng(cfg: GeneratorConfig, spec: PlannedObject) -> random.Random:
    return random.Random(f"{cfg.seed}:object:{spec.index}")


def build_records(
    cfg: GeneratorConfig, spec: PlannedObject, rng: random.Random, count: int | None = None
) -> tuple[list[dict[str, Any]], list[ExpectedEvent], Counter[str]]:
    """The records of one batch, oldest first, with what each must deliver and the kinds used."""
    count = cfg.events_per_object if count is None else count
    factory = MessageFactory(rng, cfg)
    hi = spec.write_second * NS_PER_S
    lo = max(cfg.since_ns, hi - cfg.batch_seconds * NS_PER_S)
    stamps = sorted(rng.randint(lo, hi) for _ in range(count))
    records: list[dict[str, Any]] = []
    expected: list[ExpectedEvent] = []
    kinds: Counter[str] = Counter()
    for ns in stamps:
        kind = factory.kind()
        style = "rfc3339"
        if rng.random() < cfg.epoch_fraction:
            style = rng.choice(("epoch_s", "epoch_s_frac", "epoch_ms"))
        value, ms = timestamp_value(ns, style)
        if ms * NS_PER_MS < cfg.since_ns:  # a coarser stamp must not fall out of the window
            value, ms = timestamp_value(ns, "rfc3339")
        message = factory.make(kind, ns, spec.application)
        stream = "stderr" if kind is MessageKind.STACK_TRACE else "stdout"
        rec = vector_record(message, value, spec.cluster, spec.tenant, spec.application, spec.pod, stream=stream)  # type: ignore[arg-type]  # vector_record is annotated str; epoch numbers are valid too
        if kind is MessageKind.NO_MESSAGE:
            del rec[MESSAGE_FIELD]
        records.append(rec)
        expected.append(ExpectedEvent(ms, delivered_message(rec)))
        kinds[kind.value] += 1
    return records, expected, kinds


def ndjson(records: Iterable[Mapping[str, Any]]) -> bytes:
    """Vector's `newline_delimited` framing: every record followed by a newline."""
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def gzip_bytes(data: bytes) -> bytes:
    # mtime=0: the gzip header would otherwise carry the wall clock and break determinism.
    return gzip.compress(data, compresslevel=GZIP_LEVEL, mtime=0)


def build_object(cfg: GeneratorConfig, spec: PlannedObject) -> GeneratedObject:
    """The body of one object, damaged as its spec says, and exactly what decoding it must yield."""
    rng = _rng(cfg, spec)
    key = spec.key
    if spec.damage is None:
        records, expected, kinds = build_records(cfg, spec, rng)
        return GeneratedObject(spec, key, gzip_bytes(ndjson(records)), len(records), expected, kinds=kinds)
    return _DAMAGE_BUILDERS[spec.damage](cfg, spec, rng, key)


def _damaged_records(
    cfg: GeneratorConfig, spec: PlannedObject, rng: random.Random
) -> tuple[list[dict[str, Any]], list[ExpectedEvent], Counter[str]]:
    return build_records(cfg, spec, rng, max(cfg.events_per_object, DAMAGED_MIN_EVENTS))


def _truncated_gzip(cfg: GeneratorConfig, spec: PlannedObject, rng: random.Random, key: str) -> GeneratedObject:
    records, expected, kinds = _damaged_records(cfg, spec, rng)
    full = gzip_bytes(ndjson(records))
    # Cut inside the deflate data (after the 10-byte header, before the 8-byte trailer): the stream then
    # really is incomplete, not just missing its checksum.
    cut = max(11, min(len(full) - 9, int(len(full) * rng.uniform(0.4, 0.7))))
    while True:
        prefix = zlib.decompressobj(wbits=31).decompress(full[:cut])
        tail = prefix[prefix.rfind(b"\n") + 1 :]
        # A partial last line that still parses (cut right after its closing brace) would make
        # "recoverable" depend on the decoder; move the cut until the tail is clearly broken or empty.
        if not tail or not _parses(tail):
            break
        cut -= 1
    complete = prefix.count(b"\n")
    return GeneratedObject(spec, key, full[:cut], len(records), expected[:complete], kinds=kinds)


def _parses(line: bytes) -> bool:
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return True


def _empty(cfg: GeneratorConfig, spec: PlannedObject, rng: random.Random, key: str) -> GeneratedObject:
    return GeneratedObject(spec, key, b"", 0, [])


def _plain_ndjson(cfg: GeneratorConfig, spec: PlannedObject, rng: random.Random, key: str) -> GeneratedObject:
    records, expected, kinds = _damaged_records(cfg, spec, rng)
    return GeneratedObject(spec, key, ndjson(records), len(records), expected, kinds=kinds)


def _json_array(cfg: GeneratorConfig, spec: PlannedObject, rng: random.Random, key: str) -> GeneratedObject:
    records, expected, kinds = _damaged_records(cfg, spec, rng)
    return GeneratedObject(spec, key, gzip_bytes(orjson.dumps(records)), len(records), expected, kinds=kinds)


# Lines that are not JSON at all, or JSON cut short. No blank lines and no valid-JSON non-objects: how a
# decoder treats those is not pinned down by the contract, so they would make the expectation ambiguous.
GARBAGE_LINES: tuple[bytes, ...] = (
    b"this is not json",
    b'{"message": "unterminated',
    b"[1, 2",
    b"}{",
    b"\x00\x01\x02 binary noise \x7f",
    b"panic: runtime error: index out of range [3] with length 3",
    b'{"message": "x", "timestamp": }',
)


def _garbage_lines(cfg: GeneratorConfig, spec: PlannedObject, rng: random.Random, key: str) -> GeneratedObject:
    records, expected, kinds = _damaged_records(cfg, spec, rng)
    lines = [orjson.dumps(r) for r in records]
    n_garbage = max(2, len(lines) // 10)
    for _ in range(n_garbage):
        # Never first: a body starting with "[1, 2" could be taken for a (broken) JSON array body.
        lines.insert(rng.randint(1, len(lines)), rng.choice(GARBAGE_LINES))
    garbage = set(GARBAGE_LINES)
    invalid = tuple(i + 1 for i, line in enumerate(lines) if line in garbage)
    body = gzip_bytes(b"".join(line + b"\n" for line in lines))
    return GeneratedObject(spec, key, body, len(records), expected, invalid, kinds)


def _oversized_line(cfg: GeneratorConfig, spec: PlannedObject, rng: random.Random, key: str) -> GeneratedObject:
    records, expected, kinds = _damaged_records(cfg, spec, rng)
    pos = rng.randrange(len(records))
    # Bigger than a whole CloudWatch event (1 MiB); the sink has to split or truncate it, visibly.
    big = MessageFactory(rng, cfg).filler(OVERSIZED_MESSAGE_BYTES)
    records[pos] = {**records[pos], MESSAGE_FIELD: big}
    expected[pos] = ExpectedEvent(expected[pos].timestamp_ms, big)
    body = gzip_bytes(ndjson(records))
    return GeneratedObject(spec, key, body, len(records), expected, kinds=kinds)


_INVALID_UTF8_MARK = "\u0000INVALID\u0000"


def _invalid_utf8(cfg: GeneratorConfig, spec: PlannedObject, rng: random.Random, key: str) -> GeneratedObject:
    records, expected, kinds = _damaged_records(cfg, spec, rng)
    pos = rng.randrange(len(records))
    lines = [orjson.dumps(r) for r in records]
    # The classic real case: a Latin-1 "café" written by a process that ignored the locale, plus 0xFF.
    marked = {**records[pos], MESSAGE_FIELD: f"caf{_INVALID_UTF8_MARK} au lait"}
    lines[pos] = orjson.dumps(marked).replace(b"\\u0000INVALID\\u0000", b"\xe9\xff")
    # Repaired the way the decoder does it: decode with "replace" (one U+FFFD per bad byte), then parse.
    repaired = orjson.loads(lines[pos].decode("utf-8", "replace"))
    expected[pos] = ExpectedEvent(expected[pos].timestamp_ms, delivered_message(repaired))
    body = gzip_bytes(b"".join(line + b"\n" for line in lines))
    return GeneratedObject(spec, key, body, len(records), expected, kinds=kinds, repaired_lines=(pos + 1,))


_DAMAGE_BUILDERS: dict[DamageKind, Callable[[GeneratorConfig, PlannedObject, random.Random, str], GeneratedObject]] = {
    DamageKind.TRUNCATED_GZIP: _truncated_gzip,
    DamageKind.EMPTY: _empty,
    DamageKind.PLAIN_NDJSON: _plain_ndjson,
    DamageKind.JSON_ARRAY: _json_array,
    DamageKind.GARBAGE_LINES: _garbage_lines,
    DamageKind.OVERSIZED_LINE: _oversized_line,
    DamageKind.INVALID_UTF8: _invalid_utf8,
}


def generate(cfg: GeneratorConfig) -> Iterator[GeneratedObject]:
    """Every object of the plan, built one at a time (nothing is written anywhere)."""
    for spec in plan(cfg):
        yield build_object(cfg, spec)


def iter_lines(cfg: GeneratorConfig) -> Iterator[bytes]:
    """The regular (undamaged) records as NDJSON lines without the newline, batch by batch in write-time
    order, to pipe into a real Vector."""
    specs = sorted((s for s in plan(cfg) if s.damage is None), key=lambda s: (s.write_second, s.index))
    for spec in specs:
        records, _, _ = build_records(cfg, spec, _rng(cfg, spec))
        for rec in records:
            yield orjson.dumps(rec)


# --------------------------------------------------------------------------------------------------------
# Manifest and writing


@dataclass(slots=True)
class ManifestObject:
    """One written object: where it is, what S3 says about it, and what delivery must make of it."""

    key: str
    size: int
    etag: str  # as S3 returned it, quotes included
    events: int  # records the generator put in the body (before any damage)
    expected_count: int  # events delivery must produce
    expected: list[ExpectedEvent] | None  # None when the manifest keeps counts only
    damage: DamageKind | None = None
    invalid_lines: tuple[int, ...] = ()  # 1-based line numbers a decoder must report as not JSON
    kinds: dict[str, int] = field(default_factory=dict)
    repaired_lines: tuple[int, ...] = ()  # 1-based lines delivered with U+FFFD for invalid UTF-8 bytes

    @classmethod
    def of(cls, obj: GeneratedObject, etag: str, keep_events: bool) -> ManifestObject:
        return cls(
            key=obj.key,
            size=len(obj.body),
            etag=etag,
            events=obj.events,
            expected_count=len(obj.expected),
            expected=list(obj.expected) if keep_events else None,
            damage=obj.damage,
            invalid_lines=obj.invalid_lines,
            kinds=dict(obj.kinds),
            repaired_lines=obj.repaired_lines,
        )

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "key": self.key,
            "size": self.size,
            "etag": self.etag,
            "events": self.events,
            "expected_count": self.expected_count,
            "damage": self.damage.value if self.damage else None,
            "invalid_lines": list(self.invalid_lines),
            "repaired_lines": list(self.repaired_lines),
            "kinds": self.kinds,
        }
        if self.expected is not None:
            d["expected"] = [list(e) for e in self.expected]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ManifestObject:
        exp = d.get("expected")
        return cls(
            key=d["key"],
            size=d["size"],
            etag=d["etag"],
            events=d["events"],
            expected_count=d["expected_count"],
            expected=None if exp is None else [ExpectedEvent(int(t), str(m)) for t, m in exp],
            damage=DamageKind(d["damage"]) if d.get("damage") else None,
            invalid_lines=tuple(d.get("invalid_lines", ())),
            kinds=dict(d.get("kinds", {})),
            repaired_lines=tuple(d.get("repaired_lines", ())),
        )


@dataclass
class Manifest:
    """Everything a write produced, in plan order (not completion order), so it is deterministic."""

    bucket: str
    seed: int
    since: datetime
    until: datetime
    objects: list[ManifestObject]
    seconds: float = 0.0  # wall time of the write

    @property
    def keys(self) -> list[str]:
        return [o.key for o in self.objects]

    def by_key(self) -> dict[str, ManifestObject]:
        return {o.key: o for o in self.objects}

    @property
    def total_events(self) -> int:
        return sum(o.events for o in self.objects)

    @property
    def expected_count(self) -> int:
        return sum(o.expected_count for o in self.objects)

    @property
    def total_bytes(self) -> int:
        return sum(o.size for o in self.objects)

    def damaged(self) -> dict[DamageKind, ManifestObject]:
        return {o.damage: o for o in self.objects if o.damage is not None}

    def expected_events(self, prefix: str = "") -> list[ExpectedEvent]:
        """All expected events of objects whose key starts with `prefix` (a tenant or pod prefix)."""
        out: list[ExpectedEvent] = []
        for o in self.objects:
            if o.key.startswith(prefix):
                if o.expected is None:
                    raise ValueError("this manifest keeps counts only (keep_events=False)")
                out.extend(o.expected)
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "bucket": self.bucket,
            "seed": self.seed,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "objects": len(self.objects),
            "events": self.total_events,
            "expected_events": self.expected_count,
            "bytes": self.total_bytes,
            "damaged": {k.value: o.key for k, o in self.damaged().items()},
            "seconds": round(self.seconds, 3),
            "objects_per_second": round(len(self.objects) / self.seconds, 1) if self.seconds else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        return cls(
            bucket=d["bucket"],
            seed=d["seed"],
            since=datetime.fromisoformat(d["since"]),
            until=datetime.fromisoformat(d["until"]),
            objects=[ManifestObject.from_dict(o) for o in d["objects"]],
            seconds=d.get("seconds", 0.0),
        )

    def dump(self, path: str | Path) -> None:
        Path(path).write_bytes(orjson.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> Manifest:
        return cls.from_dict(orjson.loads(Path(path).read_bytes()))


def put_object(s3: Any, bucket: str, obj: GeneratedObject) -> str:
    """Write one object as Vector's sink would; returns the ETag."""
    extra = GZIP_PUT_ARGS if obj.gzipped else {}
    return str(s3.put_object(Bucket=bucket, Key=obj.key, Body=obj.body, **extra)["ETag"])


def write_dataset(
    cfg: GeneratorConfig,
    bucket: str,
    s3: Any | None = None,
    workers: int = 32,
    on_written: Callable[[ManifestObject], None] | None = None,
) -> Manifest:
    """Build and write every object of the plan into `bucket` in parallel; the manifest of what was written.

    One shared client: botocore clients are thread-safe, and `pipeline.aws.client` gives it a connection
    pool large enough for `workers` <= 64. Bodies are built inside the workers so at most `workers` of them
    are in memory at once. On the first failure the remaining writes are cancelled and the error raised.
    """
    if s3 is None:
        from pipeline import aws  # imported here so pure generation (tests, --stdout) needs no boto3

        s3 = aws.client("s3")
    specs = plan(cfg)
    start = time.monotonic()

    def write_one(spec: PlannedObject) -> ManifestObject:
        obj = build_object(cfg, spec)
        entry = ManifestObject.of(obj, put_object(s3, bucket, obj), cfg.keep_events)
        if on_written:
            on_written(entry)
        return entry

    pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="generate")
    futures: list[Future[ManifestObject]] = []
    try:
        futures = [pool.submit(write_one, s) for s in specs]
        objects = [f.result() for f in futures]
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return Manifest(bucket, cfg.seed, cfg.since, cfg.until, objects, time.monotonic() - start)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))
