"""The Vector sink: prepared events are streamed into supervised `vector` processes, one per destination.

Each destination (tenant log group + region + role) gets its own `vector` process, started lazily, because
the second hop of the double-hop credentials (CONTRACTS.md §4) is per tenant and Vector's
`aws_cloudwatch_logs` sink takes one `auth.assume_role` per sink. The process's *base* credentials are the
central role's temporary credentials, passed only through the child's environment; the generated config
holds the tenant role ARN and the ExternalId, never a secret.

Durability model (what `flush()` promises):
- `send()` writes NDJSON lines to the child's stdin and counts what it handed over. Nothing is durable yet.
- `flush()` closes every child's stdin. On EOF Vector's stdin source finishes, the topology drains, and
  the CloudWatch sink finishes its in-flight requests before the process exits. A zero exit code *and*
  no ERROR line in Vector's own (JSON) log means every event reached CloudWatch; anything else (non-zero
  exit, timeout, an ERROR such as a failed PutLogEvents or an event Vector dropped) raises DeliveryError.
  Vector's stdin source cannot carry end-to-end acknowledgements back to us (`can_acknowledge = false`);
  acknowledgements are still enabled in the config, but exit status plus the error log is the real signal.
- A child that dies before flush (crash, OOM kill) is restarted, with backoff and a bounded number of
  restarts, so later sends keep going; but the events it had been given may be lost, so the next
  `flush()` raises. The caller then does not write the ledger and the objects are delivered again.
  CloudWatch has no dedup, so that redelivery can duplicate: at-least-once, never silent loss.

Vector facts this module relies on (checked against Vector's reference and source):
- `aws_cloudwatch_logs` uses the event's `timestamp` only when it is a timestamp *value*; anything else
  silently becomes "now". The stdin JSON decoder leaves our epoch-millisecond integer an integer, so a
  `remap` converts it with `from_unix_timestamp!(…, unit: "milliseconds")`, and drops (loudly) on error.
- It drops a message of `1 MiB - 76` bytes or more with only an error log, a little below CloudWatch's own
  one-event limit that `prepare()` splits at; this sink splits again at Vector's limit so nothing is lost.
- An empty message makes it panic, so empty messages are refused before anything is written.
- `stdin`'s legacy `max_length` truncates long lines on some versions; it and the framing limit are raised.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import orjson

from pipeline.aws import StaticCredentials
from pipeline.errors import ConfigError, DeliveryError, NonRecoverableError
from pipeline.records import Event
from pipeline.retry import RetryPolicy
from pipeline.sinks import traits_of
from pipeline.sinks.base import SinkResult, SinkTraits
from pipeline.sinks.cloudwatch.limits import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, batches, message_bytes, split_message
from pipeline.tenants import Delivery

log = logging.getLogger(__name__)

# Vector's CloudWatch request builder drops a message when len >= 1 MiB - 50 (its per-event estimate) - 26.
VECTOR_MAX_MESSAGE_BYTES = 1024 * 1024 - 50 - 26 - 1
# One NDJSON line is a message plus a small envelope, and JSON escaping can grow a message up to 6x
# (control characters become \u00XX). Lines must never be truncated by the stdin source.
STDIN_MAX_LINE_BYTES = 8 * VECTOR_MAX_MESSAGE_BYTES

STREAM_FIELD = "stream"
SOURCE_ID = "events"
TRANSFORM_ID = "event_time"
SINK_ID = "cloudwatch"
# The timestamp arrives as epoch milliseconds; CloudWatch needs a timestamp value to keep it (see above).
TIMESTAMP_VRL = '.timestamp = from_unix_timestamp!(to_int!(.timestamp), unit: "milliseconds")'

# Variables that would make the child pick credentials other than the central role's (the AWS SDK's
# chain prefers env keys, but a profile or web identity must not be able to win or confuse), or make
# Vector load configuration other than ours.
_STRIPPED_ENV = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_ROLE_ARN",
        "AWS_ROLE_SESSION_NAME",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_SHARED_CREDENTIALS_FILE",
    }
)
_STRIPPED_PREFIXES = ("AWS_CONTAINER_", "VECTOR_")

LOG_TAIL_LINES = 20
LOG_TAIL_BYTES = 8192
MAX_REASON_CHARS = 4000


class CentralCredentials(Protocol):
    """What the sink needs from CredentialBroker: the central role's credentials and the ExternalId."""

    external_id: str

    def central(self) -> StaticCredentials: ...


# --------------------------------------------------------------------------------------------------
# Pure parts: configuration, encoding, environment. No I/O, unit-tested directly.
# --------------------------------------------------------------------------------------------------


def logs_endpoint(env: Mapping[str, str]) -> str | None:
    """The CloudWatch Logs endpoint override, read the way botocore reads it.

    botocore's service-specific variable for CloudWatch Logs is AWS_ENDPOINT_URL_CLOUDWATCH_LOGS;
    AWS_ENDPOINT_URL_LOGS is accepted too because this project's docs use that spelling.
    """
    for var in ("AWS_ENDPOINT_URL_CLOUDWATCH_LOGS", "AWS_ENDPOINT_URL_LOGS", "AWS_ENDPOINT_URL"):
        value = env.get(var, "").strip()
        if value:
            return value
    return None


def render_config(
    dest: Delivery,
    *,
    external_id: str,
    data_dir: str,
    endpoint: str | None = None,
    stream_field: str = STREAM_FIELD,
    batch_timeout_s: float = 1.0,
    retry_attempts: int = 8,
) -> dict[str, Any]:
    """The Vector configuration for one destination, as a plain dict (serialize with `serialize_config`).

    stdin (NDJSON) → remap (epoch ms → timestamp) → aws_cloudwatch_logs with the tenant role assumed on top
    of the process's env credentials. No credentials appear here: they travel in the child's environment.
    """
    sink: dict[str, Any] = {
        "type": "aws_cloudwatch_logs",
        "inputs": [TRANSFORM_ID],
        "group_name": dest.log_group,
        "stream_name": "{{ " + stream_field + " }}",
        "region": dest.region,
        "auth": {"assume_role": dest.role_arn, "external_id": external_id},
        # Deliver the message only, never Vector's envelope (CONTRACTS.md §2).
        "encoding": {"codec": "text"},
        "create_missing_group": True,
        "create_missing_stream": True,
        "compression": "none",
        # Same limits as PutLogEvents (CONTRACTS.md §5); Vector counts message bytes + 26 per event too.
        "batch": {"max_bytes": MAX_BATCH_BYTES, "max_events": MAX_BATCH_EVENTS, "timeout_secs": batch_timeout_s},
        # Vector retries forever by default; a bounded retry turns a stuck destination into a logged error
        # (and so a failed flush) instead of a flush that can only time out.
        "request": {"retry_attempts": retry_attempts, "retry_max_duration_secs": 10},
        # The healthcheck is a DescribeLogGroups call (5 TPS per account) per process start: keep it off.
        "healthcheck": {"enabled": False},
        "acknowledgements": {"enabled": True},
    }
    if endpoint:
        sink["endpoint"] = endpoint
    return {
        "data_dir": data_dir,
        "acknowledgements": {"enabled": True},
        "sources": {
            SOURCE_ID: {
                "type": "stdin",
                "decoding": {"codec": "json"},
                "framing": {"method": "newline_delimited", "newline_delimited": {"max_length": STDIN_MAX_LINE_BYTES}},
                "max_length": STDIN_MAX_LINE_BYTES,
            }
        },
        "transforms": {
            TRANSFORM_ID: {
                "type": "remap",
                "inputs": [SOURCE_ID],
                "source": TIMESTAMP_VRL,
                # Passing a failed event on unchanged would stamp it "now": drop it, which logs an error
                # and so fails the flush.
                "drop_on_error": True,
                "drop_on_abort": True,
            }
        },
        "sinks": {SINK_ID: sink},
    }


def serialize_config(config: Mapping[str, Any]) -> bytes:
    """JSON for `vector --config-json`."""
    return orjson.dumps(config, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def fit_messages(events: Iterable[Event], max_message_bytes: int = VECTOR_MAX_MESSAGE_BYTES) -> list[Event]:
    """Events as Vector can take them: an event over Vector's message limit is split (marked), not dropped.

    Raises NonRecoverableError for an empty message: Vector's CloudWatch sink panics on one.
    """
    out: list[Event] = []
    for ts, msg in events:
        if not msg:
            raise NonRecoverableError("an empty message cannot go through Vector (its CloudWatch sink panics)")
        if len(msg) * 4 > max_message_bytes and message_bytes(msg) > max_message_bytes:
            out.extend((ts, part) for part in split_message(msg, max_message_bytes))
        else:
            out.append((ts, msg))
    return out


def encode_events(stream: str, events: Iterable[Event], stream_field: str = STREAM_FIELD) -> bytes:
    """NDJSON lines `{"timestamp": <epoch ms>, "message": …, "stream": …}` for Vector's stdin source."""
    lines = []
    for ts, msg in events:
        try:
            line = orjson.dumps({"timestamp": ts, "message": msg, stream_field: stream})
        except orjson.JSONEncodeError:
            # A lone surrogate (kept by the decoder's surrogatepass) is not valid UTF-8 JSON: replace it.
            clean = msg.encode("utf-8", "replace").decode("utf-8")
            line = orjson.dumps({"timestamp": ts, "message": clean, stream_field: stream})
        lines.append(line)
    lines.append(b"")
    return b"\n".join(lines)


def child_env(base: Mapping[str, str], creds: StaticCredentials) -> dict[str, str]:
    """The child's environment: the parent's, minus other credential sources, plus the central role's keys."""
    env = {
        k: v for k, v in base.items() if k not in _STRIPPED_ENV and not any(k.startswith(p) for p in _STRIPPED_PREFIXES)
    }
    env["AWS_ACCESS_KEY_ID"] = creds.access_key_id
    env["AWS_SECRET_ACCESS_KEY"] = creds.secret_access_key
    env["AWS_SESSION_TOKEN"] = creds.session_token
    return env


def vector_command(binary: str, config_path: str, shutdown_limit_s: float) -> list[str]:
    return [
        binary,
        "--config-json",
        config_path,
        # JSON logs let flush() find ERROR lines reliably; --quiet keeps per-request INFO lines out.
        "--log-format",
        "json",
        "--quiet",
        # After stdin's EOF Vector waits at most this long for its sinks; keep it within flush's timeout.
        "--graceful-shutdown-limit-secs",
        str(max(1, math.ceil(shutdown_limit_s))),
    ]


def resolve_binary(binary: str | None, env: Mapping[str, str]) -> str:
    """The vector executable: the explicit path, else $VECTOR_BIN, else `vector` on PATH.

    ConfigError when there is none: the image is wrong, so no retry can help, but the events must wait for
    the fix rather than be dropped (recoverable at the object). Entrypoints find it before any work:
    `VectorSink.check_environment`, through `environment.check_sink`.
    """
    candidate = binary or env.get("VECTOR_BIN") or "vector"
    if os.sep in candidate:
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
        raise ConfigError(f"vector binary {candidate!r} does not exist or is not executable")
    found = shutil.which(candidate, path=env.get("PATH"))
    if not found:
        raise ConfigError(
            f"vector binary {candidate!r} not found on PATH: install Vector, or set VECTOR_BIN or the sink's binary"
        )
    return found


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def error_lines(log_text: str) -> list[str]:
    """Vector's ERROR-level log lines (JSON format, with a text-format fallback)."""
    found = []
    for line in log_text.splitlines():
        line = line.strip()
        if not line:
            continue
        level = ""
        if line.startswith("{"):
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                obj = None
            if isinstance(obj, dict):
                level = str(obj.get("level", "")).upper()
        elif " ERROR " in f" {line} ":
            level = "ERROR"
        if level == "ERROR":
            found.append(line)
    return found


def _where(dest: Delivery) -> str:
    return f"{dest.log_group} in {dest.region} for tenant {dest.tenant_id}"


# --------------------------------------------------------------------------------------------------
# One supervised vector process
# --------------------------------------------------------------------------------------------------


@dataclass
class _Process:
    dest: Delivery
    popen: subprocess.Popen[bytes]
    directory: Path
    log_path: Path
    secrets: tuple[str, ...]
    events_written: int = 0
    started_at: float = field(default_factory=time.monotonic)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def write(self, payload: bytes) -> None:
        stdin = self.popen.stdin
        if stdin is None:  # started with stdin=PIPE, so only after close(): the same as a dead process
            raise BrokenPipeError("vector's stdin is closed")
        stdin.write(payload)
        stdin.flush()  # hand it over now: Vector batches on its own clock

    def close_stdin(self) -> None:
        stdin = self.popen.stdin
        if stdin is not None and not stdin.closed:
            # Already dead: the broken pipe is reported through the exit code, not here.
            with contextlib.suppress(OSError):
                stdin.close()

    def log_text(self, limit: int | None = None) -> str:
        try:
            with open(self.log_path, "rb") as f:
                if limit is not None:
                    f.seek(max(0, os.path.getsize(self.log_path) - limit))
                data = f.read()
        except OSError:
            return ""
        return redact(data.decode("utf-8", "replace"), self.secrets)

    def tail(self) -> str:
        lines = self.log_text(LOG_TAIL_BYTES).splitlines()[-LOG_TAIL_LINES:]
        return " | ".join(line.strip() for line in lines if line.strip()) or "(vector wrote no log output)"

    def stop(self, grace_s: float) -> int | None:
        """Close stdin, wait up to grace_s for a clean exit, then terminate and kill. Returns the exit code,
        or None when it had to be killed."""
        self.close_stdin()
        try:
            return self.popen.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
        self.popen.terminate()
        try:
            self.popen.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
        return None

    def remove_files(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# The sink
# --------------------------------------------------------------------------------------------------


class VectorSink:
    """Delivers through one supervised `vector` process per destination. See the module docstring.

    Not durable on return: callers `flush()` after a unit's objects, then `Deliverer.commit()` each result.
    """

    name: ClassVar[str] = "vector"
    traits: ClassVar[SinkTraits] = traits_of(name)

    @classmethod
    def check_environment(cls, env: Mapping[str, str] | None = None) -> None:
        """ConfigError unless the binary the sink will run (VECTOR_BIN, else `vector` on PATH) is there.

        Startup checks call it, so a missing binary stops the entrypoint with one line instead of
        failing every object. The sink itself still resolves the binary at each start, from the
        environment of that moment.
        """
        resolve_binary(None, os.environ if env is None else env)

    def __init__(
        self,
        credentials: CentralCredentials,
        *,
        binary: str | None = None,
        flush_timeout_s: float = 120.0,
        close_timeout_s: float = 10.0,
        max_restarts: int = 3,
        restart_backoff_s: float = 0.5,
        batch_timeout_s: float = 1.0,
        retry_attempts: int = 8,
        retry: RetryPolicy | None = None,
        max_message_bytes: int = VECTOR_MAX_MESSAGE_BYTES,
        env: Mapping[str, str] | None = None,
        temp_parent: str | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._creds = credentials
        self._binary = binary
        self.flush_timeout_s = flush_timeout_s
        self.close_timeout_s = close_timeout_s
        self.max_restarts = max_restarts
        self.restart_backoff_s = restart_backoff_s
        self.batch_timeout_s = batch_timeout_s
        self.retry_attempts = retry.attempts if retry is not None else retry_attempts  # Vector's own retries
        self.max_message_bytes = max_message_bytes
        self._env = env  # None: read os.environ at each start, so a refreshed environment is seen
        self._temp_parent = temp_parent
        self._sleep = sleep
        self._lock = threading.RLock()
        self._procs: dict[Delivery, _Process] = {}
        self._crashes: dict[Delivery, int] = {}  # deaths since the last flush, per destination
        self._lost: list[str] = []  # why events handed over since the last flush may not be delivered
        self._workdir: Path | None = None
        self._spawned = 0
        self.restarts = 0  # over the sink's lifetime, for reports and metrics
        self.closed = False

    # -- the Sink protocol -------------------------------------------------------------------------

    def send(self, dest: Delivery, stream: str, events: list[Event]) -> SinkResult:
        result = SinkResult()
        if not events:
            return result
        fitted = fit_messages(events, self.max_message_bytes)  # validates all before writing any
        with self._lock:
            if self.closed:
                raise DeliveryError("the vector sink is closed")
            for chunk in batches(fitted):
                result.retries += self._write(dest, encode_events(stream, chunk), len(chunk))
                result.requests += 1
                result.events_delivered += len(chunk)
        return result

    def flush(self) -> None:
        """Drain every process; return only when everything sent since the last flush is in CloudWatch."""
        with self._lock:
            problems = self._lost
            self._lost = []
            procs = list(self._procs.values())
            self._procs.clear()
            self._crashes.clear()
            # Close every stdin first so the processes drain in parallel, then wait for each.
            for proc in procs:
                proc.close_stdin()
            deadline = time.monotonic() + self.flush_timeout_s
            for proc in procs:
                problem = self._finish(proc, max(0.0, deadline - time.monotonic()))
                if problem:
                    problems.append(problem)
            if problems:
                raise DeliveryError("; ".join(problems)[:MAX_REASON_CHARS])

    def close(self) -> None:
        """Stop every process (without promising delivery: flush() first for that) and remove the temp dir."""
        with self._lock:
            self.closed = True
            procs = list(self._procs.values())
            self._procs.clear()
            for proc in procs:
                proc.close_stdin()
            deadline = time.monotonic() + self.close_timeout_s
            for proc in procs:
                proc.stop(max(0.0, deadline - time.monotonic()))
                proc.remove_files()
            if self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._workdir = None

    def __enter__(self) -> VectorSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- introspection (tests, metrics) -------------------------------------------------------------

    @property
    def workdir(self) -> Path | None:
        return self._workdir

    def pids(self) -> dict[Delivery, int]:
        with self._lock:
            return {dest: proc.popen.pid for dest, proc in self._procs.items()}

    # -- supervision --------------------------------------------------------------------------------

    def _write(self, dest: Delivery, payload: bytes, count: int) -> int:
        """Write one chunk, restarting a dead process once. Returns how many restarts this write needed."""
        restarts = 0
        failed_writes = 0
        while True:
            proc = self._procs.get(dest)
            if proc is not None and not proc.alive():
                self._buried(proc, during_write=False)
                restarts += 1
                proc = None
            if proc is None:
                proc = self._start(dest)
            try:
                proc.write(payload)
            except OSError:  # BrokenPipeError: it died under us; part of the chunk may have gone through
                tail = proc.tail()
                self._buried(proc, during_write=True)
                failed_writes += 1
                if failed_writes > 1:
                    raise DeliveryError(
                        f"vector for {_where(dest)} died twice while taking the same events: {tail}"
                    ) from None
                restarts += 1
                continue
            proc.events_written += count
            return restarts

    def _buried(self, proc: _Process, *, during_write: bool) -> None:
        """Record a process that died before flush, so the next flush fails instead of claiming delivery."""
        dest = proc.dest
        code = proc.popen.wait()
        self._procs.pop(dest, None)
        self._crashes[dest] = self._crashes.get(dest, 0) + 1
        self.restarts += 1
        tail = proc.tail()
        log.warning("vector for %s exited with code %s before flush; restarting. Log: %s", _where(dest), code, tail)
        if proc.events_written or during_write:
            self._lost.append(
                f"vector for {_where(dest)} exited with code {code} before flush, after {proc.events_written} "
                f"events were handed to it; they may not have been delivered: {tail}"
            )
        proc.remove_files()

    def _start(self, dest: Delivery) -> _Process:
        crashes = self._crashes.get(dest, 0)
        if crashes > self.max_restarts:
            raise DeliveryError(
                f"vector for {_where(dest)} died {crashes} times since the last flush; not restarting it again"
            )
        if crashes:
            self._sleep(min(30.0, self.restart_backoff_s * 2 ** (crashes - 1)))
        env_base = dict(os.environ if self._env is None else self._env)
        binary = resolve_binary(self._binary, env_base)
        creds = self._creds.central()
        workdir = self._ensure_workdir()
        self._spawned += 1
        directory = workdir / f"p{self._spawned}"
        directory.mkdir(mode=0o700)
        data_dir = directory / "data"
        data_dir.mkdir(mode=0o700)
        config = render_config(
            dest,
            external_id=dest.hop_external_id or self._creds.external_id,
            data_dir=str(data_dir),
            endpoint=logs_endpoint(env_base),
            batch_timeout_s=self.batch_timeout_s,
            retry_attempts=self.retry_attempts,
        )
        config_path = directory / "vector.json"
        _write_private(config_path, serialize_config(config))
        log_path = directory / "vector.log"
        secrets = (creds.secret_access_key, creds.session_token, creds.access_key_id)
        # Vector's own shutdown limit sits a little inside ours, so that when CloudWatch is too slow it is
        # Vector that gives up first and logs what it dropped, rather than us killing it silently.
        cmd = vector_command(binary, str(config_path), self.flush_timeout_s * 0.9)
        log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            # S603: a fixed argv without a shell; the binary comes from the operator's own config.
            popen = subprocess.Popen(  # noqa: S603
                cmd,
                stdin=subprocess.PIPE,
                stdout=log_fd,
                stderr=log_fd,
                env=child_env(env_base, creds),
                cwd=directory,
                close_fds=True,
            )
        except OSError as exc:
            shutil.rmtree(directory, ignore_errors=True)
            raise DeliveryError(f"cannot start vector ({binary}): {type(exc).__name__}: {exc.strerror}") from exc
        finally:
            os.close(log_fd)  # the child holds its own copy
        proc = _Process(dest, popen, directory, log_path, secrets)
        self._procs[dest] = proc
        return proc

    def _finish(self, proc: _Process, timeout_s: float) -> str:
        """Wait for a drained process to exit; '' when it delivered everything, else what went wrong."""
        where = _where(proc.dest)
        try:
            code: int | None = proc.popen.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = proc.stop(0)
            problem = (
                f"vector for {where} did not finish delivering within {self.flush_timeout_s:g}s "
                f"and was killed: {proc.tail()}"
            )
            proc.remove_files()
            return problem
        problem = ""
        if code != 0:
            problem = f"vector for {where} exited with code {code}: {proc.tail()}"
        else:
            errors = error_lines(proc.log_text())
            if errors:
                shown = " | ".join(e[:500] for e in errors[-5:])
                problem = f"vector for {where} reported {len(errors)} error(s) while delivering: {shown}"
        proc.remove_files()
        return problem

    def _ensure_workdir(self) -> Path:
        if self._workdir is None:
            # mkdtemp creates the directory 0700: the configs and logs inside are this user's only.
            self._workdir = Path(tempfile.mkdtemp(prefix="vector-sink-", dir=self._temp_parent))
        return self._workdir


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
