"""Tenant isolation and secret hygiene, checked on the wire through the fault proxy.

- Property test: over random tenant sets (long ids, ids sharing prefixes, tenants sharing one AWS account,
  two regions) and random keys, every PutLogEvents is signed with credentials issued for the role of the
  tenant whose events it carries, and goes to that tenant's group; every account holds only its own
  tenants' events; every RoleSessionName is valid and at most 64 characters.
- No issued secret key or session token appears in any log line or report, on the replay and consumer
  paths, error paths included.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import orjson
import pytest
from fault_helpers import FaultStack, consumer_process, ledger_keys, run_replay, wait_for, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.keys import format_key
from pipeline.local.faults import Error, FaultProxy, Rule
from pipeline.local.provision import CENTRAL_ACCOUNT_ID, LocalEnvironment, SampleTenant, provision
from pipeline.local.server import MotoServer
from pipeline.records import vector_record
from pipeline.replay.plan import ObjectSpec, WorkUnit
from pipeline.replay.workers import UnitRunner

pytestmark = pytest.mark.integration

SESSION_NAME_RE = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)
MARK_RE = re.compile(r"^<([a-z0-9-]+)> ")

tenant_ids = st.one_of(
    st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True),
    st.integers(0, 9).map(lambda i: f"{'t' * 60}-{i}"[:63]),  # long, sharing a 60-character prefix
)
pod_names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?", fullmatch=True)


@st.composite
def tenant_sets(draw: st.DrawFn) -> list[tuple[SampleTenant, list[str]]]:
    ids = draw(st.lists(tenant_ids, min_size=2, max_size=4, unique=True))
    accounts = draw(st.lists(st.sampled_from(["111111111111", "222222222222", "333333333333"]), min_size=len(ids),
                             max_size=len(ids)))  # fmt: skip
    out = []
    for tid, account in zip(ids, accounts, strict=True):
        region = draw(st.sampled_from(["us-east-1", "eu-west-1"]))
        pods = draw(st.lists(pod_names, min_size=1, max_size=2, unique=True))
        out.append((SampleTenant(tid, account, region=region), pods))
    return out


@pytest.fixture
def wire(moto_server: MotoServer, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    yield fault_proxy
    fault_proxy.clear()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tenants=tenant_sets())
def test_no_event_is_written_with_another_tenants_credentials_or_to_another_tenants_group(
    moto_server: MotoServer, wire: FaultProxy, tenants: list[tuple[SampleTenant, list[str]]]
) -> None:
    moto_server.reset()
    local = provision(moto_server.endpoint_url, tenants=[t for t, _ in tenants])
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**local.env, "AWS_ENDPOINT_URL": wire.url}.items():
            mp.setenv(k, v)
        wire.reset_log()
        check_isolation(local, wire, tenants)


def check_isolation(local: LocalEnvironment, wire: FaultProxy, tenants: list[tuple[SampleTenant, list[str]]]) -> None:
    s3 = local.client("s3")
    written = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    ms = int(written.timestamp() * 1000) - 10_000
    specs = []
    for t, pods in tenants:
        for pod in pods:
            key = format_key("prod-1", t.tenant_id, "app", pod, written, f"{t.tenant_id[:8]}-{pod[:8]}")
            lines = [orjson.dumps(vector_record(f"<{t.tenant_id}> {i}", ms + i, "prod-1", t.tenant_id, "app", pod))
                     for i in range(5)]  # fmt: skip
            body = gzip.compress(b"\n".join(lines) + b"\n")
            etag = s3.put_object(Bucket=local.names.bucket, Key=key, Body=body)["ETag"]
            specs.append(ObjectSpec(key, len(body), etag.strip('"'), written.timestamp()))
    runner = UnitRunner(local.settings, "cloudwatch", None)  # 8 threads, one broker for every tenant
    try:
        results = runner.run(WorkUnit(1, tuple(specs), 0))
    finally:
        runner.close()
    assert {r["status"] for r in results} == {"delivered"}, [r["reason"] for r in results]

    by_role = {t.role_arn: t for t, _ in tenants}
    for c in wire.calls("logs", "PutLogEvents"):
        owner = by_role[wire.role_of(c.access_key)]  # signed with credentials issued for this tenant's role
        doc = orjson.loads(c.body)
        assert doc["logGroupName"] == owner.log_group
        marks = {MARK_RE.match(e["message"]).group(1) for e in doc["logEvents"]}  # type: ignore[union-attr]
        assert marks == {owner.tenant_id}
    for c in wire.calls("sts", "AssumeRole"):
        form = {k: v[0] for k, v in parse_qs(c.body.decode()).items()}
        assert SESSION_NAME_RE.fullmatch(form["RoleSessionName"]), form["RoleSessionName"]
        if form["RoleArn"] != local.central_role_arn:  # the second hop: from the central session only
            assert form["ExternalId"] == CENTRAL_ACCOUNT_ID
            assert wire.role_of(c.access_key) == local.central_role_arn

    # Read back every account and region the tenants use: each group holds its own tenant's events only.
    for account, region in {(t.account_id, t.region) for t, _ in tenants}:
        logs = local.client("logs", region=region, account_id=account)
        groups = {g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]}
        owners = {t.log_group: t for t, _ in tenants if (t.account_id, t.region) == (account, region)}
        assert groups == set(owners)
        for group, t in owners.items():
            events = logs.filter_log_events(logGroupName=group)["events"]
            assert (
                len(events) == 5 * len(dict(tenants)[t])
                if False
                else len(events) == 5 * len(next(p for x, p in tenants if x is t))
            )
            assert {MARK_RE.match(e["message"]).group(1) for e in events} == {t.tenant_id}  # type: ignore[union-attr]


def scan(texts: dict[str, str], secrets: set[str]) -> list[str]:
    return [f"{secret[:6]}… in {where}" for where, text in texts.items() for secret in secrets if secret in text]


@pytest.mark.slow
@pytest.mark.ray
def test_no_credentials_or_secrets_in_logs_or_reports(stack: FaultStack, tmp_path: Path) -> None:
    write(stack.local, tenants=("acme", "globex"), applications=("payment-service",), seed=41)
    globex = stack.local.tenant("globex")
    # Error paths log the most: an expired token (refresh) and a tenant whose PutLogEvents is denied.
    stack.proxy.add(Rule(Error.expired_token(), service="logs", operation="PutLogEvents", first=1))
    stack.proxy.add(
        Rule(Error.access_denied("AccessDeniedException"), service="logs", operation="PutLogEvents",
             body_contains=globex.log_group)
    )  # fmt: skip
    report = tmp_path / "report.json"
    _, _, replay_output = run_replay(
        stack, "--tenant", "acme", "--tenant", "globex", "--since", "45m", "--log-level", "DEBUG", report=report
    )
    # The consumer, on new objects (their S3 notifications are already on the queue).
    later = write(stack.local, tenants=("acme", "globex"), applications=("payment-service",), seed=42)
    acme_later = {k for k in later.keys if k.split("/")[1] == "acme"}
    c = consumer_process(stack, tmp_path / "consumer.log", ["--log-level", "DEBUG", "--retry-delay", "0"]).wait_ready()
    try:
        wait_for(lambda: acme_later <= ledger_keys(stack.local, "acme"), 60, "the consumer to deliver")
        wait_for(lambda: "AccessDeniedException" in c.log_text(), 30, "globex's denied put to be logged")
    finally:
        c.kill()
    secrets = stack.proxy.secrets()
    assert len(secrets) >= 4  # central and tenant sessions, secret keys and tokens, from both runs
    texts = {"replay output": replay_output, "replay report": report.read_text(), "consumer log": c.log_text()}
    assert "AccessDeniedException" in texts["replay report"]  # the error paths did run
    assert not scan(texts, secrets)
    assert "testing" not in texts["replay report"]  # not even the process's own (local) secret key
