"""Several deliveries per tenant, CloudWatch and S3, against the embedded local AWS (CONTRACTS.md §3, §4, §8).

Each tenant's bucket lives in the tenant's own account, and the moto server runs with cross-account S3
access off, so a write signed by the wrong account is refused just as AWS would refuse it. What arrived
is read back from each tenant's own account; expectations come from the generator's manifest.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from boto3.dynamodb.types import TypeSerializer
from botocore.exceptions import ClientError

from devstack import generator as gen
from devstack.provision import CENTRAL_ACCOUNT_ID, LocalEnvironment, provision
from devstack.readback import read_bucket, read_group
from devstack.server import MotoServer
from pipeline.delivery.engine import build_deliverer
from pipeline.delivery.results import LEDGER_SKIP, Status
from pipeline.delivery.routing import ObjectRef
from pipeline.ledger import NOTHING, Ledger
from pipeline.tenants import TableSchema

pytestmark = pytest.mark.integration

APPS = ("payment-service", "frontend", "checkout")


def write(local: LocalEnvironment, tenants: tuple[str, ...], **kw: Any) -> gen.Manifest:
    now = datetime.now(UTC).replace(microsecond=0)
    kw.setdefault("seed", 5)
    cfg = gen.GeneratorConfig(
        since=now - timedelta(minutes=40),
        until=now - timedelta(minutes=2),
        tenants=tenants,
        applications=APPS,
        pods_per_app=1,
        objects_per_pod=2,
        events_per_object=15,
        message_bytes=150,
        **kw,
    )
    return gen.write_dataset(cfg, local.names.bucket, s3=local.client("s3"))


def deliver_all(local: LocalEnvironment, manifest: gen.Manifest) -> dict[str, Any]:
    deliverer = build_deliverer(local.settings)
    return {o.key: deliverer.deliver(ObjectRef(local.names.bucket, o.key)) for o in manifest.objects}


def cloudwatch_events(local: LocalEnvironment, tenant: str) -> Counter[tuple[int, str]]:
    group = read_group(local.tenant_logs(tenant), local.tenant(tenant).log_group)
    return Counter((ts, msg) for evs in group.values() for ts, msg in evs)


def expected_events(manifest: gen.Manifest, tenant: str, apps: tuple[str, ...]) -> Counter[tuple[int, str]]:
    out: Counter[tuple[int, str]] = Counter()
    for o in manifest.objects:
        _, t, app, _, _ = o.key.split("/", 4)
        if t == tenant and app in apps:
            out.update(o.expected or [])
    return out


def destination_key(source_key: str, prefix: str = "ROSA/cluster-logs/") -> str:
    """CONTRACTS.md §8, written out here on purpose: prefix, tenant, application, pod, filename; no cluster."""
    _cluster, tenant, app, pod, filename = source_key.split("/")
    return f"{prefix}{tenant}/{app}/{pod}/{filename}"


def test_both_destinations_of_a_tenant_receive_exactly_their_applications(local_aws: LocalEnvironment) -> None:
    manifest = write(local_aws, ("umbrella",))
    results = deliver_all(local_aws, manifest)

    # CloudWatch: the hot set only (desired_logs = payment-service), in the tenant's own account.
    assert cloudwatch_events(local_aws, "umbrella") == expected_events(manifest, "umbrella", ("payment-service",))
    # S3: every application, byte for byte what the collector wrote, at the §8 key, with its metadata.
    central = local_aws.client("s3")
    got = read_bucket(local_aws.tenant_s3("umbrella"), local_aws.tenant("umbrella").bucket)
    assert set(got) == {destination_key(o.key) for o in manifest.objects}
    for o in manifest.objects:
        stored = got[destination_key(o.key)]
        source = central.get_object(Bucket=local_aws.names.bucket, Key=o.key)
        assert stored["body"] == source["Body"].read()
        assert stored["metadata"] == {
            "source-bucket": local_aws.names.bucket,
            "source-key": o.key,
            "source-etag": source["ETag"].strip('"'),
        }
        assert stored["content_type"] == "application/x-ndjson"
        assert stored["content_encoding"] == "gzip"
        r = results[o.key]
        by_id = {d.delivery_id: d for d in r.deliveries}
        assert by_id["s3-archive"].status is Status.DELIVERED
        assert by_id["s3-archive"].bytes_delivered == len(stored["body"])
        wanted = o.key.split("/")[2] == "payment-service"
        assert by_id["cloudwatch"].status is (Status.DELIVERED if wanted else Status.SKIPPED)
    # One ledger item per object, with a record per delivery that took it.
    entries = Ledger(local_aws.names.ledger_table).entries("umbrella")
    assert Counter(e.delivery_id for e in entries) == {
        "s3-archive": len(manifest.objects),
        "cloudwatch": sum(1 for o in manifest.objects if "/payment-service/" in o.key),
    }


def test_an_s3_only_tenant_is_never_decoded_and_lands_only_in_its_own_bucket(local_aws: LocalEnvironment) -> None:
    manifest = write(local_aws, ("hooli", "acme"))
    results = deliver_all(local_aws, manifest)
    hooli = [r for k, r in results.items() if k.split("/")[1] == "hooli"]
    assert hooli and all(r.status is Status.DELIVERED for r in hooli)
    assert all(r.events_decoded == 0 and r.lines_malformed == 0 for r in hooli)  # bytes only, never decoded
    assert all([d.delivery_id for d in r.deliveries] == ["archive"] for r in hooli)
    got = read_bucket(local_aws.tenant_s3("hooli"), local_aws.tenant("hooli").bucket)
    assert set(got) == {destination_key(o.key) for o in manifest.objects if o.key.split("/")[1] == "hooli"}
    # Nothing of acme's reached an S3 bucket, and umbrella's bucket (another account) stayed empty.
    assert read_bucket(local_aws.tenant_s3("umbrella"), local_aws.tenant("umbrella").bucket) == {}
    assert cloudwatch_events(local_aws, "acme") == expected_events(manifest, "acme", APPS)


def test_a_rerun_writes_nothing_new(local_aws: LocalEnvironment) -> None:
    manifest = write(local_aws, ("umbrella",))
    deliver_all(local_aws, manifest)
    bucket = local_aws.tenant("umbrella").bucket
    tenant_s3 = local_aws.tenant_s3("umbrella")
    before = {o["Key"]: o["LastModified"] for o in tenant_s3.list_objects_v2(Bucket=bucket)["Contents"]}
    events_before = cloudwatch_events(local_aws, "umbrella")

    again = deliver_all(local_aws, manifest)
    assert all(r.status is Status.SKIPPED for r in again.values())
    for r in again.values():
        for d in r.deliveries:
            assert d.reason == LEDGER_SKIP or "desired_logs" in d.reason, d.reason
    after = {o["Key"]: o["LastModified"] for o in tenant_s3.list_objects_v2(Bucket=bucket)["Contents"]}
    assert after == before  # not even rewritten
    assert cloudwatch_events(local_aws, "umbrella") == events_before


def test_a_ledger_item_from_before_deliveries_counts_for_cloudwatch_only(local_aws: LocalEnvironment) -> None:
    manifest = write(local_aws, ("umbrella",), seed=9)
    o = next(x for x in manifest.objects if "/payment-service/" in x.key)
    etag = local_aws.client("s3").head_object(Bucket=local_aws.names.bucket, Key=o.key)["ETag"].strip('"')
    legacy = {"tenant_id": "umbrella", "object_key": o.key, "etag": etag, "events_delivered": 15, "source": "old"}
    ser = TypeSerializer()
    local_aws.client("dynamodb").put_item(
        TableName=local_aws.names.ledger_table, Item={k: ser.serialize(v) for k, v in legacy.items()}
    )
    r = build_deliverer(local_aws.settings).deliver(ObjectRef(local_aws.names.bucket, o.key))
    by_id = {d.delivery_id: d for d in r.deliveries}
    assert by_id["cloudwatch"].status is Status.SKIPPED and by_id["cloudwatch"].reason == LEDGER_SKIP
    assert by_id["s3-archive"].status is Status.DELIVERED
    assert cloudwatch_events(local_aws, "umbrella") == Counter()
    assert {e.delivery_id for e in Ledger(local_aws.names.ledger_table).entries("umbrella")} == {
        "cloudwatch",
        "s3-archive",
    }


def test_a_v1_tenant_table_still_delivers_unchanged(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> None:
    moto_server.reset()
    local = provision(moto_server.endpoint_url, tenant_schema=TableSchema.V1)
    for k, v in local.env.items():
        monkeypatch.setenv(k, v)
    manifest = write(local, ("acme", "globex"))
    results = deliver_all(local, manifest)
    assert {d.delivery_id for r in results.values() for d in r.deliveries} == {"cloudwatch"}
    assert cloudwatch_events(local, "acme") == expected_events(manifest, "acme", APPS)
    assert cloudwatch_events(local, "globex") == expected_events(manifest, "globex", ("payment-service", "frontend"))


def test_bad_delivery_items_fail_alone_with_a_clear_reason(local_aws: LocalEnvironment) -> None:
    acme = local_aws.tenant("acme")
    base = {"tenant_id": "acme", "log_distribution_role_arn": acme.role_arn, "target_region": "us-east-1"}
    bad = {
        "pager": {**base, "type": "pagerduty"},
        "untyped": {**base, "log_group_name": "/logs/acme-2"},
        "no-bucket": {**base, "type": "s3"},
        "bad-prefix": {**base, "type": "s3", "bucket_name": "acme-bucket", "bucket_prefix": "logs"},
    }
    ser = TypeSerializer()
    for delivery_id, item in bad.items():
        item = {**item, "delivery_id": delivery_id}
        local_aws.client("dynamodb").put_item(
            TableName=local_aws.names.tenant_table, Item={k: ser.serialize(v) for k, v in item.items()}
        )
    manifest = write(local_aws, ("acme",), seed=12)
    results = deliver_all(local_aws, manifest)

    # The valid delivery delivered everything; each bad one failed for good, saying what is wrong.
    assert cloudwatch_events(local_aws, "acme") == expected_events(manifest, "acme", APPS)
    for r in results.values():
        by_id = {d.delivery_id: d for d in r.deliveries}
        assert by_id["cloudwatch"].status is Status.DELIVERED
        assert r.status is Status.FAILED and not r.recoverable and r.acknowledged
        assert "unknown type 'pagerduty'" in by_id["pager"].reason
        assert "type: required field is missing" in by_id["untyped"].reason
        assert "bucket_name: required field is missing" in by_id["no-bucket"].reason
        assert "bucket_prefix: 'logs' must end with '/'" in by_id["bad-prefix"].reason
        assert all(not d.recoverable for d in r.deliveries)


def test_the_tenant_bucket_refuses_another_accounts_write(local_aws: LocalEnvironment) -> None:
    """The local stack keeps S3 accounts apart, or the isolation tests above would prove nothing."""
    with pytest.raises(ClientError) as err:
        local_aws.client("s3", account_id=CENTRAL_ACCOUNT_ID).put_object(
            Bucket=local_aws.tenant("umbrella").bucket, Key="ROSA/cluster-logs/x", Body=b"x"
        )
    assert err.value.response["Error"]["Code"] == "AccessDenied"


def test_a_batched_ledger_view_answers_for_every_object_and_stands_in_for_the_per_object_read(
    local_aws: LocalEnvironment,
) -> None:
    manifest = write(local_aws, ("umbrella", "hooli"), seed=14)
    deliverer = build_deliverer(local_aws.settings)
    refs = [ObjectRef(local_aws.names.bucket, o.key) for o in manifest.objects]
    assert deliverer.ledger_view(refs) == {}
    for ref in refs:
        deliverer.deliver(ref)

    view = deliverer.ledger_view([*refs, ObjectRef(local_aws.names.bucket, "not/a/key")])
    assert view is not None
    for o in manifest.objects:
        tenant, app = o.key.split("/")[1:3]
        # Each record at the object's own ETag, each covering the whole object (the consumer's deliveries).
        held = view[o.key].at(o.etag)
        assert all(c.whole for c in held.values())
        if tenant == "hooli":
            assert set(held) == {"archive"}
        else:
            assert set(held) == ({"cloudwatch", "s3-archive"} if app == "payment-service" else {"s3-archive"})
    # The view is what the caller knows: given it, the object is skipped; told "nothing yet", it is sent again.
    ref = next(r for r in refs if "/hooli/" in r.key)
    assert deliverer.deliver(ref, view[ref.key]).status is Status.SKIPPED
    again = deliverer.deliver(ref, NOTHING)
    assert again.status is Status.DELIVERED and again.deliveries[0].bytes_delivered > 0
    # A Deliverer that ignores the ledger (--redeliver) has no view to offer.
    assert build_deliverer(local_aws.settings, redeliver=True).ledger_view(refs) is None


def test_an_s3_delivery_with_a_kms_key_writes_sse_kms_objects(local_aws: LocalEnvironment) -> None:
    hooli = local_aws.tenant("hooli")
    key_arn = local_aws.client("kms", region=hooli.region, account_id=hooli.account_id).create_key()["KeyMetadata"][
        "Arn"
    ]
    item = {**hooli.delivery_items()[0], "kms_key_arn": key_arn}
    ser = TypeSerializer()
    local_aws.client("dynamodb").put_item(
        TableName=local_aws.names.tenant_table, Item={k: ser.serialize(v) for k, v in item.items()}
    )
    manifest = write(local_aws, ("hooli",), seed=15)
    results = deliver_all(local_aws, manifest)
    assert all(r.status is Status.DELIVERED for r in results.values())
    s3 = local_aws.tenant_s3("hooli")
    for o in manifest.objects:
        head = s3.head_object(Bucket=hooli.bucket, Key=destination_key(o.key))
        assert head["ServerSideEncryption"] == "aws:kms"
        assert head["SSEKMSKeyId"] == key_arn


def test_may_decode_tells_the_memory_budget_which_objects_only_travel_as_bytes(local_aws: LocalEnvironment) -> None:
    def key(tenant: str, app: str) -> str:
        return f"prod-1/{tenant}/{app}/{app}-1/20240101-000000-u.json.gz"

    d = build_deliverer(local_aws.settings)
    assert d.may_decode(key("acme", "frontend"))  # CloudWatch only
    assert d.may_decode(key("umbrella", "payment-service"))  # CloudWatch wants it, and S3
    assert not d.may_decode(key("umbrella", "frontend"))  # only S3 wants it
    assert not d.may_decode(key("hooli", "payment-service"))  # S3 only
    assert d.may_decode("not/a/valid/key")  # cannot tell: charged as decoded
    assert d.may_decode(key("nobody", "api"))
    only_s3 = build_deliverer(local_aws.settings, deliveries=("s3",))
    assert not only_s3.may_decode(key("umbrella", "payment-service"))


def test_group_commit_batches_only_records_whose_loss_costs_an_overwrite(local_aws: LocalEnvironment) -> None:
    manifest = write(local_aws, ("umbrella", "hooli"), seed=16)
    d = build_deliverer(local_aws.settings, group_commit=True)
    ledger = Ledger(local_aws.names.ledger_table)
    hooli = [o.key for o in manifest.objects if "/hooli/" in o.key]
    umbrella = [o.key for o in manifest.objects if "/umbrella/" in o.key]

    # An S3-only tenant's objects the ledger had nothing for: stored now, recorded by commit(), in batches.
    results = [d.deliver(ObjectRef(local_aws.names.bucket, k), NOTHING) for k in hooli]
    assert all(r.deliveries[0].batched and not r.deliveries[0].recorded for r in results)
    assert ledger.entries("hooli") == []
    d.commit(*results)
    assert {e.object_key for e in ledger.entries("hooli")} == set(hooli)
    assert all(r.status is Status.DELIVERED and r.deliveries[0].recorded for r in results)

    # A tenant with a CloudWatch delivery too: never batched, every record written as its delivery completes.
    r = d.deliver(ObjectRef(local_aws.names.bucket, umbrella[0]), NOTHING)
    assert not any(x.batched for x in r.deliveries) and all(x.recorded for x in r.deliveries if x.done)
    # Without a ledger view (the consumer's path), nothing is batched either.
    again = build_deliverer(local_aws.settings, redeliver=True, group_commit=True)
    r = again.deliver(ObjectRef(local_aws.names.bucket, hooli[0]))
    assert not r.deliveries[0].batched and r.deliveries[0].recorded
