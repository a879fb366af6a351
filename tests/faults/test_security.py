"""Tenant isolation and secret hygiene, checked on the wire through the fault proxy.

- Property test: over random tenant sets (long ids, ids sharing prefixes, tenants sharing one AWS account,
  two regions, CloudWatch, S3 or both, several bucket prefixes, roles with an IAM path, deliveries bound
  to clusters, tenants with a profile or legacy ones, legacy deliveries with their own ExternalId) and
  random keys from two clusters, plus a **dishonest row**: a delivery forged straight into the table for a
  tenant with a profile, naming another tenant's role, bucket or log group (in another account). Every
  PutLogEvents and every PutObject is signed with credentials issued for the role of the tenant whose
  events or object it carries, and goes to that tenant's group, or that tenant's bucket under that
  tenant's prefix, naming the role's account as ExpectedBucketOwner; the forged row is refused at delivery
  time (another account's role: by the binding to the profile's accounts, before any call; another's
  bucket: by the bucket's owner; another's group name: created in the forger's own account) and reported
  with its reason, while the tenant's other deliveries go on; an object from a cluster a tenant's
  deliveries do not allow is reported skipped with that reason and sent nowhere; every second hop carries
  the tenant's own ExternalId (its profile's; a legacy tenant's delivery id or the central account id);
  every account holds only its own tenants' events and objects; every RoleSessionName is valid and at most
  64 characters.
- A legacy delivery with its own `external_id` assumes its role with that id, on the wire, and the
  tenant's other delivery with the default keeps the central account id.
- Tenants with profiles: each second hop carries that tenant's own generated ExternalId; a row forged with
  another tenant's role is refused by the consumer and the replay alike, and the tenant's honest
  delivery goes on.
- No issued secret key or session token appears in any log line or report, on the replay and consumer
  paths, error paths included.
"""

from __future__ import annotations

import gzip
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs

import orjson
import pytest
from boto3.dynamodb.types import TypeSerializer
from fault_helpers import FaultStack, consumer_process, ledger_keys, run_replay, s3_path, wait_for, write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.faults import Error, FaultProxy, Rule
from devstack.provision import (
    CENTRAL_ACCOUNT_ID,
    LocalEnvironment,
    SampleBucket,
    SampleTenant,
    add_tenants,
    provision,
)
from devstack.readback import read_bucket
from devstack.server import MotoServer
from pipeline.delivery.engine import build_deliverer
from pipeline.delivery.results import Status
from pipeline.delivery.routing import ObjectRef
from pipeline.keys import format_key
from pipeline.records import vector_record
from pipeline.replay.plan import ObjectSpec, WorkUnit
from pipeline.replay.workers import UnitRunner
from pipeline.tenants import DEFAULT_BUCKET_PREFIX, TenantDirectory
from tests.support import ray_session

pytestmark = pytest.mark.integration

SESSION_NAME_RE = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)
MARK_RE = re.compile(r"^<([a-z0-9-]+)> ")

tenant_ids = st.one_of(
    st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True),
    st.integers(0, 9).map(lambda i: f"{'t' * 60}-{i}"[:63]),  # long, sharing a 60-character prefix
)
pod_names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?", fullmatch=True)
buckets = st.sampled_from([DEFAULT_BUCKET_PREFIX, "", "audit/k8s/"]).map(lambda p: SampleBucket(prefix=p))
CLUSTERS = ("prod-1", "prod-2")
cluster_bindings = st.sampled_from([None, ("prod-1",), ("prod-2",), CLUSTERS])
external_ids = st.none() | st.from_regex(r"[A-Za-z0-9_+=,.@:/-]{2,40}", fullmatch=True)
role_paths = st.sampled_from(["", "logging/", "a/b.c/"])


@dataclass(frozen=True)
class Forged:
    """A delivery forged straight into the table for `tenant`, naming `victim`'s role, bucket or group."""

    tenant: SampleTenant
    victim: SampleTenant
    kind: str  # role, bucket or group

    @property
    def item(self) -> dict[str, object]:
        t, v = self.tenant, self.victim
        base = {"tenant_id": t.tenant_id, "delivery_id": "forged", "enabled": True}
        if self.kind == "role":  # the victim's own role and group: the confused deputy
            return {**base, "type": "cloudwatch", "log_distribution_role_arn": v.role_arn,
                    "target_region": v.region, "log_group_name": v.log_group}  # fmt: skip
        if self.kind == "bucket":  # its own role, the victim's bucket
            return {**base, "type": "s3", "log_distribution_role_arn": t.role_arn, "target_region": v.region,
                    "bucket_name": v.bucket, "bucket_prefix": DEFAULT_BUCKET_PREFIX}  # fmt: skip
        return {**base, "type": "cloudwatch", "log_distribution_role_arn": t.role_arn,  # its own role, their group
                "target_region": v.region, "log_group_name": v.log_group}  # fmt: skip


@st.composite
def tenant_sets(draw: st.DrawFn) -> list[tuple[SampleTenant, list[tuple[str, str]]]]:
    """Tenants, each with its (cluster, pod) pairs: the same namespace may run in both clusters."""
    ids = draw(st.lists(tenant_ids, min_size=2, max_size=4, unique=True))
    accounts = draw(st.lists(st.sampled_from(["111111111111", "222222222222", "333333333333"]), min_size=len(ids),
                             max_size=len(ids)))  # fmt: skip
    out: list[tuple[SampleTenant, list[tuple[str, str]]]] = []
    for i, (tid, account) in enumerate(zip(ids, accounts, strict=True)):
        region = draw(st.sampled_from(["us-east-1", "eu-west-1"]))
        pods = draw(st.lists(st.tuples(st.sampled_from(CLUSTERS), pod_names), min_size=1, max_size=3, unique=True))
        # The first tenant always has a bucket and takes every cluster, so every example writes S3; the
        # others have CloudWatch, S3 or both, bound to clusters or not.
        s3 = draw(buckets if i == 0 else st.none() | buckets)
        cloudwatch = s3 is None or draw(st.booleans())
        clusters = None if i == 0 else draw(cluster_bindings)
        legacy = i > 0 and draw(st.booleans())  # the first always has a profile, so a row can be forged for it
        tenant = SampleTenant(
            tid,
            account,
            region=region,
            cloudwatch=cloudwatch,
            s3=s3,
            clusters=clusters,
            external_id=draw(external_ids) if legacy else None,
            role_path=draw(role_paths),
            legacy=legacy,
        )
        out.append((tenant, pods))
    return out


def allowed(t: SampleTenant, cluster: str) -> bool:
    return t.clusters is None or cluster in t.clusters


@pytest.fixture
def wire(moto_server: MotoServer, fault_proxy: FaultProxy, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    yield fault_proxy
    fault_proxy.clear()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tenants=tenant_sets(), kind=st.sampled_from(["role", "bucket", "group"]), pick=st.integers(0, 3))
def test_no_event_is_written_with_another_tenants_credentials_or_to_another_tenants_group(
    moto_server: MotoServer,
    wire: FaultProxy,
    tenants: list[tuple[SampleTenant, list[tuple[str, str]]]],
    kind: str,
    pick: int,
) -> None:
    moto_server.reset()
    local = provision(moto_server.endpoint_url, tenants=[t for t, _ in tenants])
    # The dishonest row: for the first tenant (it has a profile), naming a tenant of another account. When
    # every tenant shares its account there is no other customer to steal from: the account is the boundary.
    dishonest = tenants[0][0]
    victims = [t for t, _ in tenants if t.account_id != dishonest.account_id]
    forged = Forged(dishonest, victims[pick % len(victims)], kind) if victims else None
    if forged is not None:
        ser = TypeSerializer()
        local.client("dynamodb").put_item(
            TableName=local.names.tenant_table, Item={k: ser.serialize(v) for k, v in forged.item.items()}
        )
    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**local.env, "AWS_ENDPOINT_URL": wire.url}.items():
            mp.setenv(k, v)
        wire.reset_log()
        check_isolation(local, wire, tenants, forged)


def check_isolation(
    local: LocalEnvironment,
    wire: FaultProxy,
    tenants: list[tuple[SampleTenant, list[tuple[str, str]]]],
    forged: Forged | None = None,
) -> None:
    s3 = local.client("s3")
    written = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    ms = int(written.timestamp() * 1000) - 10_000
    specs = []
    keys: dict[str, list[str]] = {}  # the keys each tenant's deliveries take
    refused: dict[str, str] = {}  # key -> the reason it must be reported with
    for t, pods in tenants:
        for cluster, pod in pods:
            key = format_key(cluster, t.tenant_id, "app", pod, written, f"{t.tenant_id[:8]}-{cluster}-{pod[:8]}")
            lines = [orjson.dumps(vector_record(f"<{t.tenant_id}> {i}", ms + i, cluster, t.tenant_id, "app", pod))
                     for i in range(5)]  # fmt: skip
            body = gzip.compress(b"\n".join(lines) + b"\n")
            etag = s3.put_object(Bucket=local.names.bucket, Key=key, Body=body)["ETag"]
            specs.append(ObjectSpec(key, len(body), etag.strip('"'), written.timestamp()))
            if allowed(t, cluster):
                keys.setdefault(t.tenant_id, []).append(key)
            else:
                refused[key] = f"cluster {cluster!r} is not allowed for tenant {t.tenant_id!r}"
    runner = UnitRunner(local.settings, "cloudwatch", None)  # 8 threads, one broker for every tenant
    try:
        results = [r.to_dict() for r in runner.run(WorkUnit(1, tuple(specs), 0))]
    finally:
        runner.close()
    by_key = {r["key"]: r for r in results}
    for key, r in by_key.items():
        honest = [d for d in r["deliveries"] if d["delivery_id"] != "forged"]
        if forged is not None and key.split("/")[1] == forged.tenant.tenant_id:
            # The forged row fails for that delivery only, for good, with its reason; the others go on.
            (bad,) = [d for d in r["deliveries"] if d["delivery_id"] == "forged"]
            # Another's group *name* is only a group of that name in the forger's own account: delivered there.
            # (The forger is the first tenant, which takes every cluster: none of its keys is refused.)
            assert bad["status"] == ("delivered" if forged.kind == "group" else "failed"), bad
            if forged.kind == "role":  # refused by the binding, for good, before any call
                assert f"account {forged.victim.account_id} is not one of the accounts" in bad["reason"]
                assert not bad["recoverable"], bad
            elif forged.kind == "bucket" and key not in refused:
                assert "AccessDenied" in bad["reason"] or "NoSuchBucket" in bad["reason"], bad
        if key in refused:  # reported with its reason, never silently dropped, and not a failure to retry
            assert {d["reason"] for d in honest} == {refused[key]}
            if forged is None or key.split("/")[1] != forged.tenant.tenant_id:
                assert (r["status"], r["reason"]) == ("skipped", refused[key]), r
        else:
            assert {d["status"] for d in honest} == {"delivered"}, r

    by_role = {t.role_arn: t for t, _ in tenants}
    # A group the forger may write: the victim's group *name*, created in the forger's own account.
    forged_group = forged.victim.log_group if forged is not None and forged.kind == "group" else None
    for c in wire.calls("logs", "PutLogEvents"):
        owner = by_role[wire.role_of(c.access_key)]  # signed with credentials issued for this tenant's role
        doc = orjson.loads(c.body)
        mine = {owner.log_group} if owner.cloudwatch else set()
        if forged is not None and owner is forged.tenant and forged_group:
            mine.add(forged_group)
        assert doc["logGroupName"] in mine, (owner.tenant_id, doc["logGroupName"])
        marks = {MARK_RE.match(e["message"]).group(1) for e in doc["logEvents"]}  # type: ignore[union-attr]
        assert marks == {owner.tenant_id}
    # Every PutObject: signed for the role of the tenant whose object it carries, into that tenant's bucket
    # only, under that tenant's prefix; each of the tenant's objects once.
    every = wire.calls("s3", "PutObject")
    for c in every:  # on the wire: each write names the role's account as the bucket's expected owner
        assert c.headers.get("x-amz-expected-bucket-owner") == by_role[wire.role_of(c.access_key)].account_id
    # The forged bucket row: tried with the forger's own role, naming the forger's account, refused by the bucket.
    victim_bucket = f"/{forged.victim.bucket}/" if forged is not None and forged.kind == "bucket" else None
    attempts = [c for c in every if victim_bucket and c.path.startswith(victim_bucket) and
                by_role[wire.role_of(c.access_key)] is tenants[0][0]]  # fmt: skip
    assert all(c.status != 200 for c in attempts)
    if victim_bucket:
        assert attempts, "the forged row was never tried: the test proves nothing"
    puts = [c for c in every if c not in attempts]
    want = {t.tenant_id: {s3_path(t, k) for k in keys.get(t.tenant_id, [])} for t, _ in tenants if t.s3}
    assert sorted(c.path for c in puts) == sorted(p for paths in want.values() for p in paths)
    for c in puts:
        owner = by_role[wire.role_of(c.access_key)]
        assert owner.s3 is not None and c.status == 200
        bucket, key = c.path[1:].split("/", 1)
        assert bucket == owner.bucket and key.startswith(f"{owner.s3.prefix}{owner.tenant_id}/"), c.path
        assert c.path in want[owner.tenant_id]
    second_hops = set()
    for c in wire.calls("sts", "AssumeRole"):
        form = {k: v[0] for k, v in parse_qs(c.body.decode()).items()}
        assert SESSION_NAME_RE.fullmatch(form["RoleSessionName"]), form["RoleSessionName"]
        if form["RoleArn"] != local.central_role_arn:  # the second hop: from the central session only
            owner = by_role[form["RoleArn"]]
            # The tenant's own id (its profile's; legacy: its delivery's, else the central account's), and
            # never a victim's role for a forged row: that one is refused before any call.
            assert form["ExternalId"] == owner.hop_external_id
            assert wire.role_of(c.access_key) == local.central_role_arn
            second_hops.add(owner.tenant_id)
    # Only tenants with something to deliver were assumed at all: a refused cluster costs no credentials.
    assert second_hops == set(keys)

    # Read back every account and region the tenants use: each group holds its own tenant's events only,
    # each account's buckets are its own tenants', each holding that tenant's objects only.
    places = {(t.account_id, t.region) for t, _ in tenants}
    if forged_group and forged is not None:
        places.add((forged.tenant.account_id, forged.victim.region))
    for account, region in places:
        logs = local.client("logs", region=region, account_id=account)
        groups = {g["logGroupName"] for g in logs.describe_log_groups()["logGroups"]}
        owners = {t.log_group: t for t, _ in tenants if t.cloudwatch and (t.account_id, t.region) == (account, region)}
        if (
            forged is not None
            and forged_group
            and (account, region) == (forged.tenant.account_id, forged.victim.region)
        ):
            # The forged group name exists in the forger's account only, holding the forger's events only.
            events = logs.filter_log_events(logGroupName=forged_group)["events"]
            assert {MARK_RE.match(e["message"]).group(1) for e in events} <= {forged.tenant.tenant_id}  # type: ignore[union-attr]
            groups.discard(forged_group)
        assert groups == set(owners)
        for group, t in owners.items():
            events = logs.filter_log_events(logGroupName=group)["events"]
            assert len(events) == 5 * len(keys.get(t.tenant_id, []))
            marks = {MARK_RE.match(e["message"]).group(1) for e in events}  # type: ignore[union-attr]
            assert marks <= {t.tenant_id}
    for account in {t.account_id for t, _ in tenants}:
        s3_in = local.client("s3", account_id=account)
        mine = {t.bucket: t for t, _ in tenants if t.s3 and t.account_id == account}
        assert {b["Name"] for b in s3_in.list_buckets()["Buckets"]} == set(mine)
        for bucket, t in mine.items():
            got = read_bucket(s3_in, bucket)
            assert {f"/{bucket}/{k}" for k in got} == want[t.tenant_id]
            for obj in got.values():
                messages = [orjson.loads(line)["message"] for line in gzip.decompress(obj["body"]).splitlines()]
                assert {MARK_RE.match(m).group(1) for m in messages} == {t.tenant_id}  # type: ignore[union-attr]


def test_a_delivery_with_its_own_external_id_assumes_its_role_with_that_id(stack: FaultStack) -> None:
    """On the wire: the second hop for the delivery with `external_id` carries it, the same tenant's other
    delivery (no `external_id`) carries the central account id, and each write is signed with the
    credentials of its own hop. The role has an IAM path, as customers who file roles under one may."""
    own_id = "stark-logs-7f3a"
    stark = SampleTenant(
        "stark", "777777777777", role_path="logging/", external_id=own_id, s3=SampleBucket(), legacy=True
    )
    add_tenants(stack.local, [stark])
    s3_item = next(i for i in stark.delivery_items() if i["type"] == "s3")
    del s3_item["external_id"]  # this one keeps the default
    ser = TypeSerializer()
    stack.local.client("dynamodb").put_item(
        TableName=stack.local.names.tenant_table, Item={k: ser.serialize(v) for k, v in s3_item.items()}
    )
    assert stark.role_arn == "arn:aws:iam::777777777777:role/logging/CustomerLogDistribution-stark"
    manifest = write(stack.local, tenants=("stark",), applications=("payment-service",), seed=43)
    stack.proxy.reset_log()
    deliverer = build_deliverer(stack.local.settings)
    results = [deliverer.deliver(ObjectRef(stack.bucket, k)) for k in manifest.keys]
    assert {r.status for r in results} == {Status.DELIVERED}, [r.reason for r in results]

    hops = [{k: v[0] for k, v in parse_qs(c.body.decode()).items()} for c in stack.proxy.calls("sts", "AssumeRole")]
    second = sorted((h["RoleArn"], h["ExternalId"]) for h in hops if h["RoleArn"] != stack.local.central_role_arn)
    assert second == sorted([(stark.role_arn, own_id), (stark.role_arn, CENTRAL_ACCOUNT_ID)])
    puts = stack.proxy.calls("logs", "PutLogEvents")
    objects = stack.proxy.calls("s3", "PutObject")
    assert puts and objects
    assert {stack.proxy.external_id_of(c.access_key) for c in puts} == {own_id}
    assert {stack.proxy.external_id_of(c.access_key) for c in objects} == {CENTRAL_ACCOUNT_ID}
    assert {stack.proxy.role_of(c.access_key) for c in puts + objects} == {stark.role_arn}


def ray_logs(gcs: str) -> dict[str, str]:
    """Every log file of the Ray head whose GCS listens at `gcs`: the workers' stdout and stderr, the job's
    driver log, the runtime env agent's and the raylet's own."""
    temp = Path(ray_session.head_option(ray_session.head_process(gcs), "temp-dir"))
    return {str(f): f.read_text(errors="replace") for f in temp.glob("session_*/logs/**/*") if f.is_file()}


def scan(texts: dict[str, str], secrets: set[str]) -> list[str]:
    return [f"{secret[:6]}… in {where}" for where, text in texts.items() for secret in secrets if secret in text]


@pytest.mark.slow
@pytest.mark.ray
def test_no_credentials_or_secrets_in_logs_or_reports(stack: FaultStack, tmp_path: Path, shared_ray: str) -> None:
    # On the session's Ray head, whose log files (workers, job driver, agents) are scanned too.
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
    logs = ray_logs(shared_ray)
    assert any("/worker-" in f for f in logs), sorted(logs)[:20]  # the replay's workers wrote there
    texts |= logs
    assert "AccessDeniedException" in texts["replay report"]  # the error paths did run
    assert not scan(texts, secrets)
    assert "testing" not in texts["replay report"]  # not even the process's own (local) secret key


# -- tenant profiles on the wire (CONTRACTS.md §3, §4) --------------------------------------------------------


def second_hops(proxy: FaultProxy, central_role_arn: str) -> list[dict[str, str]]:
    forms = [{k: v[0] for k, v in parse_qs(c.body.decode()).items()} for c in proxy.calls("sts", "AssumeRole")]
    return [f for f in forms if f["RoleArn"] != central_role_arn]


def stored_profile_ids(local: LocalEnvironment) -> dict[str, str]:
    """tenant → the ExternalId its profile holds, read back from the table (not from the sample tenants)."""
    return {
        t.tenant_id: t.profile.external_id for t in TenantDirectory(local.names.tenant_table).tenants() if t.profile
    }


def test_each_tenants_second_hop_carries_its_own_external_id_and_every_put_object_its_expected_owner(
    stack: FaultStack,
) -> None:
    tenants = ("acme", "globex", "umbrella", "hooli")
    manifest = write(stack.local, tenants=tenants, applications=("payment-service", "frontend"), seed=45)
    stack.proxy.reset_log()
    deliverer = build_deliverer(stack.local.settings)
    results = [deliverer.deliver(ObjectRef(stack.bucket, k)) for k in manifest.keys]
    assert {r.status for r in results} <= {Status.DELIVERED, Status.SKIPPED}, [r.reason for r in results]

    ids = stored_profile_ids(stack.local)
    assert len(set(ids.values())) == len(ids)  # one of its own per tenant, never a shared one
    by_role = {stack.local.tenant(t).role_arn: t for t in tenants}
    hops = second_hops(stack.proxy, stack.local.central_role_arn)
    assert {by_role[h["RoleArn"]] for h in hops} == set(tenants)
    for h in hops:
        assert h["ExternalId"] == ids[by_role[h["RoleArn"]]]
        assert h["ExternalId"] != CENTRAL_ACCOUNT_ID
    writes = stack.proxy.calls("logs", "PutLogEvents") + stack.proxy.calls("s3", "PutObject")
    assert writes
    for c in writes:  # every write signed by a session assumed with its own tenant's id
        tenant = by_role[stack.proxy.role_of(c.access_key)]
        assert stack.proxy.external_id_of(c.access_key) == ids[tenant]
    puts = stack.proxy.calls("s3", "PutObject")
    assert {by_role[stack.proxy.role_of(c.access_key)] for c in puts} == {"umbrella", "hooli"}
    for c in puts:
        owner = stack.local.tenant(by_role[stack.proxy.role_of(c.access_key)])
        assert c.headers["x-amz-expected-bucket-owner"] == owner.account_id


def s3_notification(bucket: str, key: str, size: int) -> str:
    """A raw S3 event body (CONTRACTS.md §6), as S3 → SQS delivers it."""
    record = {"eventSource": "aws:s3", "eventName": "ObjectCreated:Put",
              "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": size}}}  # fmt: skip
    return orjson.dumps({"Records": [record]}).decode()


def test_a_forged_row_is_refused_by_the_consumer_and_the_replay_while_the_tenants_other_deliveries_go_on(
    stack: FaultStack,
) -> None:
    """umbrella has a profile (account 444…); a row forged straight into the table for it names globex's role
    and group (account 222…). The consumer and the replay refuse it for that delivery only, with the reason,
    before any call with globex's role; umbrella's own deliveries go on, and globex's group gets nothing."""
    from pipeline.consumer.metrics import Metrics
    from pipeline.consumer.processor import MessageProcessor

    umbrella, globex = stack.local.tenant("umbrella"), stack.local.tenant("globex")
    forged = {"tenant_id": "umbrella", "delivery_id": "stolen", "type": "cloudwatch", "enabled": True,
              "log_distribution_role_arn": globex.role_arn, "target_region": globex.region,
              "log_group_name": globex.log_group}  # fmt: skip
    ser = TypeSerializer()
    stack.local.client("dynamodb").put_item(
        TableName=stack.local.names.tenant_table, Item={k: ser.serialize(v) for k, v in forged.items()}
    )
    reason = f"account {globex.account_id} is not one of the accounts of tenant 'umbrella' ({umbrella.account_id})"
    # Objects for the consumer, then others (of other pods) for the replay.
    for_consumer = write(stack.local, tenants=("umbrella",), applications=("payment-service",), seed=46).objects
    for_replay = write(stack.local, tenants=("umbrella",), applications=("payment-service",), seed=48).objects
    for_replay = [o for o in for_replay if o.key not in {c.key for c in for_consumer}]
    assert for_consumer and for_replay
    stack.proxy.reset_log()

    # The consumer: each object's notification through the message processor, as the SQS loop hands it over.
    metrics = Metrics()
    processor = MessageProcessor(build_deliverer(stack.local.settings), metrics, bucket=stack.bucket)
    consumed = [processor.process(s3_notification(stack.bucket, o.key, o.size)) for o in for_consumer]
    # The replay: the others as one work unit of a replay worker.
    specs = [ObjectSpec(o.key, o.size, o.etag.strip('"'), time.time()) for o in for_replay]
    runner = UnitRunner(stack.local.settings, "cloudwatch", None)
    try:
        replayed = [r.to_dict() for r in runner.run(WorkUnit(1, tuple(specs), 0))]
    finally:
        runner.close()

    assert [len(o.results) for o in consumed] == [1] * len(for_consumer)
    results = [r.to_dict() for o in consumed for r in o.results] + replayed
    assert len(results) == len(for_consumer) + len(for_replay)
    for r in results:
        by_id = {d["delivery_id"]: d for d in r["deliveries"]}
        assert by_id["stolen"]["status"] == "failed" and not by_id["stolen"]["recoverable"]
        assert reason in by_id["stolen"]["reason"]
        assert by_id["cloudwatch"]["status"] == "delivered" and by_id["s3-archive"]["status"] == "delivered"
        assert r["status"] == "failed" and reason in r["reason"]  # reported, never silently dropped
    assert all(o.acknowledged for o in consumed)  # non-recoverable: not left on the queue to retry forever

    # On the wire: globex's role was never assumed, nothing went into globex's group or account.
    assert globex.role_arn not in {h["RoleArn"] for h in second_hops(stack.proxy, stack.local.central_role_arn)}
    assert all(orjson.loads(c.body)["logGroupName"] == umbrella.log_group
               for c in stack.proxy.calls("logs", "PutLogEvents"))  # fmt: skip
    assert not stack.local.tenant_logs("globex").filter_log_events(logGroupName=globex.log_group)["events"]
    assert len(read_bucket(stack.local.tenant_s3("umbrella"), umbrella.bucket)) == len(results)
    # The tenant has a profile: not flagged legacy.
    assert 'logdelivery_tenant_legacy{tenant="umbrella"} 0.0' in metrics.render().decode()


def test_a_legacy_tenant_is_flagged_in_the_consumers_metrics(stack: FaultStack) -> None:
    from pipeline.consumer.metrics import Metrics
    from pipeline.consumer.processor import MessageProcessor

    add_tenants(stack.local, [SampleTenant("oldco", "888888888888", legacy=True)])
    manifest = write(stack.local, tenants=("oldco", "acme"), applications=("payment-service",), seed=47)
    metrics = Metrics()
    processor = MessageProcessor(build_deliverer(stack.local.settings), metrics, bucket=stack.bucket)
    for o in manifest.objects:
        assert processor.process(s3_notification(stack.bucket, o.key, o.size)).acknowledged
    text = metrics.render().decode()
    assert 'logdelivery_tenant_legacy{tenant="oldco"} 1.0' in text
    assert 'logdelivery_tenant_legacy{tenant="acme"} 0.0' in text
    assert 'logdelivery_deliveries_without_clusters{tenant="oldco"} 1.0' in text
    # A legacy tenant is delivered as before: with the central account id as its ExternalId.
    (hop,) = [h for h in second_hops(stack.proxy, stack.local.central_role_arn) if "oldco" in h["RoleArn"]]
    assert hop["ExternalId"] == CENTRAL_ACCOUNT_ID
