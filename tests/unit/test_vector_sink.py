"""The Vector sink: the generated config and encoding (pure), then supervision of the child process.

The supervision tests run `tests/support/fake_vector.py` in place of `vector`: they test the supervisor
(stdin streaming, restarts, flush semantics, cleanup, secrets), not Vector. The real thing is exercised by
tests/integration/test_vector_e2e.py when a `vector` binary exists.
"""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from pipeline.aws import StaticCredentials
from pipeline.errors import ConfigError, DeliveryError, NonRecoverableError
from pipeline.retry import RetryPolicy
from pipeline.sinks import build_sinks, traits_of
from pipeline.sinks.cloudwatch.limits import EVENT_OVERHEAD_BYTES, MAX_BATCH_BYTES, MAX_BATCH_EVENTS
from pipeline.sinks.vector import (
    STREAM_FIELD,
    VECTOR_MAX_MESSAGE_BYTES,
    VectorSink,
    child_env,
    encode_events,
    error_lines,
    fit_messages,
    logs_endpoint,
    render_config,
    resolve_binary,
    serialize_config,
    vector_command,
)
from pipeline.tenants import Delivery, DeliveryType

FAKE_VECTOR = Path(__file__).resolve().parent.parent / "support" / "fake_vector.py"

DEST = Delivery(
    tenant_id="acme",
    delivery_id="cloudwatch",
    type=DeliveryType.CLOUDWATCH,
    role_arn="arn:aws:iam::111111111111:role/CustomerLogDistribution-acme",
    region="eu-west-1",
    log_group="/logs/acme",
)
OTHER = Delivery(
    tenant_id="globex",
    delivery_id="cloudwatch",
    type=DeliveryType.CLOUDWATCH,
    role_arn="arn:aws:iam::222222222222:role/CustomerLogDistribution-globex",
    region="us-east-1",
    log_group="/logs/globex",
)
CENTRAL_ACCOUNT = "123456789012"
SECRET = "sEcReT/never-in-a-file-0123456789abcdef"
TOKEN = "ToKeN//session-token-never-in-a-file-zyx"
KEY_ID = "ASIAFAKEKEYIDFORTESTS"
T0 = 1_700_000_000_123


class FakeBroker:
    """The two things VectorSink asks of CredentialBroker."""

    external_id = CENTRAL_ACCOUNT

    def __init__(self) -> None:
        self.calls = 0

    def central(self) -> StaticCredentials:
        self.calls += 1
        return StaticCredentials(KEY_ID, SECRET, TOKEN, datetime.now(UTC) + timedelta(hours=1))


def creds() -> StaticCredentials:
    return FakeBroker().central()


# ------------------------------------------------------------------------------------------------
# Pure: config, encoding, environment
# ------------------------------------------------------------------------------------------------


def config(**kw: object) -> dict:
    args: dict = {"external_id": CENTRAL_ACCOUNT, "data_dir": "/tmp/x/data"}
    args.update(kw)
    return render_config(DEST, **args)


def test_config_pipeline_is_stdin_json_to_remap_to_cloudwatch() -> None:
    cfg = config()
    (src_id, src), *rest = cfg["sources"].items()
    assert not rest
    assert src["type"] == "stdin"
    assert src["decoding"] == {"codec": "json"}
    assert src["framing"]["method"] == "newline_delimited"
    # Long lines must never be truncated (stdin's legacy default truncates at 100 KiB).
    assert src["max_length"] >= 6 * VECTOR_MAX_MESSAGE_BYTES
    assert src["framing"]["newline_delimited"]["max_length"] >= 6 * VECTOR_MAX_MESSAGE_BYTES
    (tr_id, tr), *rest = cfg["transforms"].items()
    assert not rest
    assert tr["type"] == "remap" and tr["inputs"] == [src_id]
    assert 'from_unix_timestamp!(to_int!(.timestamp), unit: "milliseconds")' in tr["source"]
    assert tr["drop_on_error"] is True  # never pass an event on with a "now" timestamp
    (_, sink), *rest = cfg["sinks"].items()
    assert not rest
    assert sink["type"] == "aws_cloudwatch_logs" and sink["inputs"] == [tr_id]
    assert sink["encoding"] == {"codec": "text"}  # the message only, not Vector's envelope
    assert cfg["data_dir"] == "/tmp/x/data"


def test_config_targets_the_tenant_group_region_and_per_event_stream() -> None:
    sink = config()["sinks"]["cloudwatch"]
    assert sink["group_name"] == "/logs/acme"
    assert sink["region"] == "eu-west-1"
    assert sink["stream_name"] == "{{ " + STREAM_FIELD + " }}"
    assert render_config(DEST, external_id="1", data_dir="d", stream_field="s")["sinks"]["cloudwatch"][
        "stream_name"
    ] == ("{{ s }}")


def test_config_assumes_the_tenant_role_with_the_central_account_as_external_id() -> None:
    auth = config()["sinks"]["cloudwatch"]["auth"]
    assert auth == {"assume_role": DEST.role_arn, "external_id": CENTRAL_ACCOUNT}


def test_config_enables_acknowledgements_and_keeps_batches_within_cloudwatch_limits() -> None:
    cfg = config()
    sink = cfg["sinks"]["cloudwatch"]
    assert cfg["acknowledgements"] == {"enabled": True}
    assert sink["acknowledgements"] == {"enabled": True}
    assert 0 < sink["batch"]["max_bytes"] <= 1_048_576
    assert 0 < sink["batch"]["max_events"] <= 10_000
    assert sink["batch"]["max_bytes"] == MAX_BATCH_BYTES and sink["batch"]["max_events"] == MAX_BATCH_EVENTS
    assert sink["healthcheck"] == {"enabled": False}  # DescribeLogGroups is 5 TPS per account
    assert 0 < sink["request"]["retry_attempts"] < 100  # Vector's default is "forever"


def test_config_endpoint_only_when_given() -> None:
    assert "endpoint" not in config()["sinks"]["cloudwatch"]
    assert config(endpoint="http://127.0.0.1:5000")["sinks"]["cloudwatch"]["endpoint"] == "http://127.0.0.1:5000"


def test_logs_endpoint_follows_botocore_precedence() -> None:
    assert logs_endpoint({}) is None
    assert logs_endpoint({"AWS_ENDPOINT_URL": "http://a"}) == "http://a"
    assert logs_endpoint({"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_LOGS": "http://b"}) == "http://b"
    env = {"AWS_ENDPOINT_URL": "http://a", "AWS_ENDPOINT_URL_LOGS": "http://b", "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": "c"}
    assert logs_endpoint(env) == "c"


def test_serialized_config_is_json_and_has_no_secret() -> None:
    data = serialize_config(config(endpoint="http://x"))
    assert orjson.loads(data) == config(endpoint="http://x")
    for secret in (SECRET, TOKEN, KEY_ID):
        assert secret.encode() not in data


def test_encode_events_is_ndjson_with_millisecond_timestamp_message_and_stream() -> None:
    data = encode_events("app-pod-2023-11-14", [(T0, "hello"), (T0 + 1, 'quote " and \n newline')])
    lines = data.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert [orjson.loads(x) for x in lines[:2]] == [
        {"timestamp": T0, "message": "hello", "stream": "app-pod-2023-11-14"},
        {"timestamp": T0 + 1, "message": 'quote " and \n newline', "stream": "app-pod-2023-11-14"},
    ]


def test_encode_events_survives_a_lone_surrogate() -> None:
    (line,) = encode_events("s", [(T0, "bad \udc80 byte")]).splitlines()
    assert orjson.loads(line)["message"].startswith("bad ")


def test_fit_messages_splits_what_vector_would_silently_drop() -> None:
    # Between Vector's limit and CloudWatch's: prepare() lets it through, Vector would drop it.
    msg = "x" * (VECTOR_MAX_MESSAGE_BYTES + 10)
    parts = fit_messages([(T0, msg)])
    assert len(parts) == 2
    assert all(len(p.encode()) <= VECTOR_MAX_MESSAGE_BYTES for _, p in parts)
    assert all(ts == T0 for ts, _ in parts)
    assert fit_messages([(T0, "small")]) == [(T0, "small")]


def test_fit_messages_refuses_an_empty_message() -> None:
    with pytest.raises(NonRecoverableError):
        fit_messages([(T0, "ok"), (T0, "")])


def test_child_env_carries_central_credentials_and_drops_other_sources() -> None:
    base = {
        "PATH": "/bin",
        "AWS_PROFILE": "dev",
        "AWS_ACCESS_KEY_ID": "own",
        "AWS_WEB_IDENTITY_TOKEN_FILE": "/t",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://x",
        "AWS_ENDPOINT_URL": "http://moto",
        "AWS_ENDPOINT_URL_STS": "http://moto-sts",
        "VECTOR_CONFIG": "/etc/vector/vector.yaml",
    }
    env = child_env(base, creds())
    assert env["AWS_ACCESS_KEY_ID"] == KEY_ID
    assert env["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert env["AWS_SESSION_TOKEN"] == TOKEN
    assert env["AWS_ENDPOINT_URL"] == "http://moto" and env["AWS_ENDPOINT_URL_STS"] == "http://moto-sts"
    assert env["PATH"] == "/bin"
    for gone in ("AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI", "VECTOR_CONFIG"):
        assert gone not in env


def test_vector_command_uses_json_config_and_json_logs() -> None:
    cmd = vector_command("/usr/bin/vector", "/tmp/c.json", 30.5)
    assert cmd[0] == "/usr/bin/vector"
    assert cmd[cmd.index("--config-json") + 1] == "/tmp/c.json"
    assert cmd[cmd.index("--log-format") + 1] == "json"
    assert cmd[cmd.index("--graceful-shutdown-limit-secs") + 1] == "31"


def test_error_lines_finds_json_and_text_errors() -> None:
    text = "\n".join(
        [
            json.dumps({"level": "INFO", "message": "fine"}),
            json.dumps({"level": "ERROR", "message": "PutLogEvents failed"}),
            "2024-01-01T00:00:00Z ERROR vector::topology: boom",
            "2024-01-01T00:00:00Z  WARN vector: meh",
            "{not json",
        ]
    )
    found = error_lines(text)
    assert len(found) == 2 and "PutLogEvents failed" in found[0] and "boom" in found[1]


def test_resolve_binary(tmp_path: Path) -> None:
    with pytest.raises(DeliveryError, match="not found on PATH"):
        resolve_binary(None, {"PATH": str(tmp_path)})
    with pytest.raises(DeliveryError, match="does not exist or is not executable"):
        resolve_binary(str(tmp_path / "nope"), {})
    exe = tmp_path / "vector"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    assert resolve_binary(None, {"PATH": str(tmp_path)}) == str(exe)
    assert resolve_binary(None, {"VECTOR_BIN": str(exe)}) == str(exe)


def test_build_sinks_builds_a_vector_sink() -> None:
    sinks = build_sinks("vector", credentials=FakeBroker())
    sink = sinks[DeliveryType.CLOUDWATCH]
    assert isinstance(sink, VectorSink) and sink.name == "vector"
    assert sink.traits == traits_of("vector")
    assert not isinstance(sinks[DeliveryType.S3], VectorSink)  # Vector writes CloudWatch only
    for s in {id(s): s for s in sinks.values()}.values():
        s.close()


# ------------------------------------------------------------------------------------------------
# Supervision tests: the supervisor around a stand-in executable (tests/support/fake_vector.py)
# ------------------------------------------------------------------------------------------------


class Fake:
    """Paths and knobs for one test's stand-in vector."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp = tmp_path
        self.out = tmp_path / "out.ndjson"
        self.record = tmp_path / "record.ndjson"
        self.binary = tmp_path / "fake-vector"
        # A wrapper so the stand-in runs with this interpreter whatever is on PATH.
        self.binary.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_VECTOR}" "$@"\n')
        self.binary.chmod(0o755)
        self.mp = monkeypatch
        monkeypatch.setenv("FAKE_VECTOR_OUT", str(self.out))
        monkeypatch.setenv("FAKE_VECTOR_RECORD", str(self.record))
        for var in ("FAKE_VECTOR_CRASH_AFTER", "FAKE_VECTOR_CRASH_MARKER", "FAKE_VECTOR_EXIT_CODE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv("FAKE_VECTOR_HANG", raising=False)
        monkeypatch.delenv("FAKE_VECTOR_LOG_ERROR", raising=False)

    def set(self, **knobs: object) -> None:
        for k, v in knobs.items():
            self.mp.setenv(f"FAKE_VECTOR_{k.upper()}", str(v))

    def lines(self) -> list[dict]:
        if not self.out.exists():
            return []
        return [json.loads(x) for x in self.out.read_bytes().splitlines()]

    def starts(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(x) for x in self.record.read_text().splitlines()]

    def sink(self, **kw: object) -> VectorSink:
        args: dict = {
            "binary": str(self.binary),
            "temp_parent": str(self.tmp),
            "flush_timeout_s": 10.0,
            "restart_backoff_s": 0.0,
        }
        args.update(kw)
        return VectorSink(FakeBroker(), **args)


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Fake:
    return Fake(tmp_path, monkeypatch)


def events(n: int, start: int = 0) -> list[tuple[int, str]]:
    return [(T0 + i, f"message {i}") for i in range(start, start + n)]


def wait_for(condition: Callable[[], object], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); the supervisor reaps what it starts, so check the state too.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_supervision_events_reach_stdin_in_order_and_flush_drains(fake: Fake) -> None:
    with fake.sink() as sink:
        r1 = sink.send(DEST, "s1", events(3))
        r2 = sink.send(DEST, "s2", events(2, start=3))
        assert (r1.events_delivered, r1.requests, r2.events_delivered, r2.requests) == (3, 1, 2, 1)
        sink.flush()
        got = fake.lines()
    assert [x["message"] for x in got] == [f"message {i}" for i in range(5)]
    assert [x["timestamp"] for x in got] == [T0 + i for i in range(5)]
    assert [x["stream"] for x in got] == ["s1"] * 3 + ["s2"] * 2
    assert len(fake.starts()) == 1  # one long-lived process per destination until flush


def test_supervision_batches_count_writes_under_cloudwatch_limits(fake: Fake) -> None:
    big = "y" * (MAX_BATCH_BYTES // 2 - EVENT_OVERHEAD_BYTES)  # exactly two fill a PutLogEvents batch
    evs = [(T0 + i, big) for i in range(4)] + [(T0 + 10, "small")]
    with fake.sink() as sink:
        result = sink.send(DEST, "s", evs)
        sink.flush()
    assert result.events_delivered == 5
    assert result.requests == 3  # [big, big], [big, big], [small]: one write each
    assert len(fake.lines()) == 5


def test_supervision_one_process_per_destination_each_with_its_own_config(fake: Fake) -> None:
    with fake.sink() as sink:
        sink.send(DEST, "s", events(1))
        sink.send(OTHER, "s", events(1, start=1))
        sink.send(DEST, "s", events(1, start=2))
        assert len(sink.pids()) == 2
        sink.flush()
    starts = fake.starts()
    assert len(starts) == 2
    groups = sorted(json.loads(s["config"])["sinks"]["cloudwatch"]["group_name"] for s in starts)
    assert groups == ["/logs/acme", "/logs/globex"]


def test_supervision_a_delivery_with_its_own_external_id_assumes_with_it(fake: Fake) -> None:
    """A delivery's `external_id` replaces the central account id in that delivery's process only."""
    own = dataclasses.replace(DEST, delivery_id="cw-own", external_id="tenant-acme-7f3a")
    with fake.sink() as sink:
        sink.send(DEST, "s", events(1))
        sink.send(own, "s", events(1, start=1))
        assert len(sink.pids()) == 2  # same group, role and region, but another ExternalId: another process
        sink.flush()
    auths = sorted(json.loads(s["config"])["sinks"]["cloudwatch"]["auth"]["external_id"] for s in fake.starts())
    assert auths == sorted([CENTRAL_ACCOUNT, "tenant-acme-7f3a"])


def test_the_shared_retry_policy_bounds_vectors_own_retries() -> None:
    assert VectorSink(FakeBroker(), retry=RetryPolicy(attempts=3)).retry_attempts == 3
    assert VectorSink(FakeBroker(), retry_attempts=5).retry_attempts == 5


def test_supervision_next_send_after_flush_starts_a_fresh_process(fake: Fake) -> None:
    with fake.sink() as sink:
        sink.send(DEST, "s", events(1))
        first = sink.pids()[DEST]
        sink.flush()
        assert sink.pids() == {}
        sink.send(DEST, "s", events(1, start=1))
        assert sink.pids()[DEST] != first
        sink.flush()
    assert len(fake.starts()) == 2 and len(fake.lines()) == 2


def test_supervision_credentials_only_in_the_child_env(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:5999")
    monkeypatch.setenv("AWS_PROFILE", "someone-else")
    fake.set(exit_code=1)  # make flush fail so the error message can be checked too
    with fake.sink() as sink:
        sink.send(DEST, "s", events(2))
        wait_for(fake.starts)  # the stand-in records what it saw as it starts
        (start,) = fake.starts()
        cfg_path = Path(start["config_path"])
        assert stat.S_IMODE(cfg_path.stat().st_mode) == 0o600
        assert stat.S_IMODE(cfg_path.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(sink.workdir.stat().st_mode) == 0o700  # type: ignore[union-attr]
        on_disk = cfg_path.read_text()
        with pytest.raises(DeliveryError) as err:
            sink.flush()
    env = start["env"]
    assert env["AWS_ACCESS_KEY_ID"] == KEY_ID
    assert env["AWS_SECRET_ACCESS_KEY"] == SECRET
    assert env["AWS_SESSION_TOKEN"] == TOKEN
    assert "AWS_PROFILE" not in env
    cfg = json.loads(on_disk)
    assert cfg["sinks"]["cloudwatch"]["endpoint"] == "http://127.0.0.1:5999"
    assert str(Path(cfg["data_dir"]).parent) == str(cfg_path.parent)
    for secret in (SECRET, TOKEN, KEY_ID):
        assert secret not in on_disk
        assert secret not in start["config"]
        assert secret not in " ".join(start["argv"])
        assert secret not in str(err.value)


def test_supervision_secrets_are_redacted_from_the_log_tail(fake: Fake) -> None:
    fake.set(exit_code=2, log_error=f"leaked {SECRET} and {TOKEN}")
    with fake.sink() as sink:
        sink.send(DEST, "s", events(1))
        with pytest.raises(DeliveryError) as err:
            sink.flush()
    assert "leaked *** and ***" in str(err.value)
    assert SECRET not in str(err.value) and TOKEN not in str(err.value)


def test_supervision_nonzero_exit_on_flush_is_a_recoverable_error_with_the_log_tail(fake: Fake) -> None:
    fake.set(exit_code=78, log_error="PutLogEvents failed: AccessDeniedException")
    with fake.sink() as sink:
        sink.send(DEST, "s", events(1))
        with pytest.raises(DeliveryError) as err:
            sink.flush()
        assert err.value.recoverable
        assert "exited with code 78" in str(err.value)
        assert "AccessDeniedException" in str(err.value)
        assert "/logs/acme" in str(err.value) and "acme" in str(err.value)
        # The failed process is gone; the next send starts afresh and a clean flush succeeds.
        fake.set(exit_code=0)
        fake.mp.delenv("FAKE_VECTOR_LOG_ERROR")
        sink.send(DEST, "s", events(1, start=1))
        sink.flush()


def test_supervision_error_in_vector_log_fails_flush_even_with_exit_zero(fake: Fake) -> None:
    # Vector exits 0 after its CloudWatch sink dropped a batch: only its log says so.
    fake.set(log_error="Service call failed. No retries or retries exhausted.")
    with fake.sink() as sink:
        sink.send(DEST, "s", events(1))
        with pytest.raises(DeliveryError, match="reported 1 error"):
            sink.flush()


def test_supervision_flush_timeout_kills_and_fails(fake: Fake) -> None:
    fake.set(hang=30)
    with fake.sink(flush_timeout_s=0.5) as sink:
        sink.send(DEST, "s", events(1))
        pid = sink.pids()[DEST]
        with pytest.raises(DeliveryError, match=r"did not finish delivering within 0.5s"):
            sink.flush()
        assert not alive(pid)


def test_supervision_crash_mid_stream_restarts_and_fails_the_next_flush(fake: Fake) -> None:
    """Semantics: events handed to a process that died before flush may be lost, so flush raises and the
    caller does not write its ledger. Later sends go to a restarted process and are not lost either."""
    fake.set(crash_after=2, crash_marker=fake.tmp / "crashed-once")
    sleeps: list[float] = []
    with fake.sink(sleep=sleeps.append, restart_backoff_s=0.25) as sink:
        sink.send(DEST, "s", events(3))  # the process reads 2 lines, then dies
        first = sink.pids()[DEST]
        wait_for(lambda: not alive(first))  # it exits right after reading line 2
        result = sink.send(DEST, "s", events(2, start=3))  # detected dead: restarted, then written
        assert result.events_delivered == 2 and result.retries == 1
        assert sink.pids()[DEST] != first
        assert sink.restarts == 1
        assert sleeps == [0.25]
        with pytest.raises(DeliveryError) as err:
            sink.flush()
        assert "exited with code 3 before flush, after 3 events" in str(err.value)
        assert err.value.recoverable
        # The events sent after the restart reached the new process.
        assert [x["message"] for x in fake.lines()][-2:] == ["message 3", "message 4"]
        # After the failed flush everything is clean: a redelivery goes through and flush succeeds.
        sink.send(DEST, "s", events(3))
        sink.flush()


def test_supervision_write_into_a_dead_process_is_retried_on_a_new_one(fake: Fake) -> None:
    fake.set(crash_after=1, crash_marker=fake.tmp / "crashed-once")
    # Large enough that the writes cannot all fit the pipe buffer before the child dies.
    msg = "z" * 200_000
    with fake.sink() as sink:
        result = sink.send(DEST, "s", [(T0 + i, msg) for i in range(12)])
        assert result.events_delivered == 12
        assert result.retries >= 1
        with pytest.raises(DeliveryError, match="before flush"):
            sink.flush()


def test_supervision_restarts_are_bounded(fake: Fake) -> None:
    fake.set(crash_after=1)  # every process dies after its first line
    with fake.sink(max_restarts=2) as sink:
        with pytest.raises(DeliveryError, match=r"not restarting it again|died twice"):
            for i in range(20):
                sink.send(DEST, "s", events(1, start=i))
                pid = sink.pids()[DEST]
                wait_for(lambda pid=pid: not alive(pid))
        assert sink.restarts <= 3
        with pytest.raises(DeliveryError):
            sink.flush()
        assert sink.pids() == {}


def test_supervision_missing_binary_is_a_clear_delivery_error(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(fake.tmp / "empty"))
    monkeypatch.delenv("VECTOR_BIN", raising=False)
    sink = VectorSink(FakeBroker(), temp_parent=str(fake.tmp))
    with pytest.raises(DeliveryError, match="vector binary 'vector' not found on PATH") as err:
        sink.send(DEST, "s", events(1))
    assert err.value.recoverable  # a deployment problem: leave the message for later, don't drop it
    assert isinstance(err.value, ConfigError)  # not retried: startup checks find it (environment.check_sink)
    sink.close()
    with pytest.raises(DeliveryError, match="does not exist or is not executable"):
        VectorSink(FakeBroker(), binary=str(fake.tmp / "missing")).send(DEST, "s", events(1))


def test_supervision_vector_bin_env_is_honoured(fake: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VECTOR_BIN", str(fake.binary))
    with VectorSink(FakeBroker(), temp_parent=str(fake.tmp)) as sink:
        sink.send(DEST, "s", events(1))
        sink.flush()
    assert len(fake.lines()) == 1


def test_supervision_close_leaves_no_child_and_no_temp_dir(fake: Fake) -> None:
    fake.set(hang=30)  # even a child that would not exit on its own
    sink = fake.sink(close_timeout_s=0.5)
    sink.send(DEST, "s", events(1))
    sink.send(OTHER, "s", events(1))
    pids = list(sink.pids().values())
    workdir = sink.workdir
    assert workdir is not None and workdir.is_dir()
    sink.close()
    assert not any(alive(p) for p in pids)
    assert not workdir.exists()
    assert [p for p in fake.tmp.iterdir() if p.name.startswith("vector-sink-")] == []
    sink.close()  # idempotent
    with pytest.raises(DeliveryError, match="closed"):
        sink.send(DEST, "s", events(1))


def test_supervision_flush_removes_process_files(fake: Fake) -> None:
    with fake.sink() as sink:
        sink.send(DEST, "s", events(1))
        sink.flush()
        assert sink.workdir is not None and list(sink.workdir.iterdir()) == []


def test_supervision_empty_send_starts_nothing(fake: Fake) -> None:
    with fake.sink() as sink:
        assert sink.send(DEST, "s", []).events_delivered == 0
        assert sink.pids() == {}
        sink.flush()
    assert fake.starts() == []
