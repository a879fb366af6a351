"""Ledger retention: items carry the TTL attribute, and an item past it counts as not delivered, for the
consumer's reads and the replay's plan alike, before DynamoDB gets round to deleting it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devstack import generator as gen
from devstack.provision import LocalEnvironment
from pipeline.delivery.engine import build_deliverer
from pipeline.ledger import TTL_ATTRIBUTE, Ledger, LedgerEntry
from pipeline.settings import ConfigError, Settings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
KEY = "prod-1/acme/payment-service/pod-a/20240101-000000-x.json.gz"
DAY = 86400.0


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def item(local: LocalEnvironment, key: str = KEY) -> dict:
    return local.client("dynamodb").get_item(
        TableName=local.names.ledger_table, Key={"tenant_id": {"S": "acme"}, "object_key": {"S": key}}
    )["Item"]


def test_every_write_stamps_the_expiry_and_moves_it_on(local_aws: LocalEnvironment) -> None:
    clock = Clock(1_700_000_000.0)
    ledger = Ledger(local_aws.names.ledger_table, retention_s=30 * DAY, clock=clock)
    ledger.record(LedgerEntry("acme", KEY, "e1", delivery_id="cloudwatch"))
    assert int(item(local_aws)[TTL_ATTRIBUTE]["N"]) == int(clock.now + 30 * DAY)
    clock.now += DAY
    ledger.record(LedgerEntry("acme", KEY, "e1", delivery_id="s3-archive"))
    assert int(item(local_aws)[TTL_ATTRIBUTE]["N"]) == int(clock.now + 30 * DAY)
    other = KEY.replace("x.json", "y.json")
    ledger.replace_items([LedgerEntry("acme", other, "e2", delivery_id="s3-archive")])
    assert int(item(local_aws, other)[TTL_ATTRIBUTE]["N"]) == int(clock.now + 30 * DAY)


def test_an_expired_item_counts_as_not_delivered(local_aws: LocalEnvironment) -> None:
    clock = Clock(1_700_000_000.0)
    ledger = Ledger(local_aws.names.ledger_table, retention_s=7 * DAY, clock=clock)
    ledger.record(LedgerEntry("acme", KEY, "e1"))
    assert ledger.delivered("acme", KEY, "e1") == {"cloudwatch"}
    assert ledger.delivered_many("acme", [(KEY, "e1")]) == {KEY: frozenset({"cloudwatch"})}
    clock.now += 7 * DAY  # expired, though DynamoDB has not deleted it
    assert TTL_ATTRIBUTE in item(local_aws)
    assert ledger.delivered("acme", KEY, "e1") == frozenset()
    assert ledger.delivered_many("acme", [(KEY, "e1")]) == {}


def test_without_a_retention_items_never_expire(local_aws: LocalEnvironment) -> None:
    Ledger(local_aws.names.ledger_table, retention_s=0).record(LedgerEntry("acme", KEY, "e1"))
    assert TTL_ATTRIBUTE not in item(local_aws)


def test_retention_comes_from_the_environment() -> None:
    assert Settings.from_env({"LEDGER_RETENTION_DAYS": "100"}).ledger_retention_s == 100 * DAY
    with pytest.raises(ConfigError, match="LEDGER_RETENTION_DAYS"):
        Settings.from_env({"LEDGER_RETENTION_DAYS": "a year"})


def test_the_deliverer_ledger_takes_the_retention_from_its_settings_not_the_environment(
    local_aws: LocalEnvironment, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The environment says otherwise on purpose: only the Settings handed to build_deliverer may count, as
    # a Ray worker gets the driver's Settings, not its environment.
    monkeypatch.setenv("LEDGER_RETENTION_DAYS", "5")
    settings = replace(local_aws.settings, ledger_retention_days=30)
    deliverer = build_deliverer(settings)
    assert deliverer.ledger is not None
    assert deliverer.ledger.retention_s == 30 * DAY
    deliverer.ledger.record(LedgerEntry("acme", KEY, "e1"))
    assert int(item(local_aws)[TTL_ATTRIBUTE]["N"]) == pytest.approx(time.time() + 30 * DAY, abs=60)
    # A ledger built without a retention (the plan's and the inventory's readers) stamps nothing.
    assert Ledger(local_aws.names.ledger_table).retention_s == 0


def test_a_replay_plans_an_expired_object_again(local_aws: LocalEnvironment) -> None:
    now = datetime.now(UTC)
    cfg = gen.GeneratorConfig(since=now - timedelta(minutes=30), until=now, tenants=("acme",), seed=5)
    (obj,) = gen.write_dataset(cfg, local_aws.names.bucket, s3=local_aws.client("s3")).objects
    etag = local_aws.client("s3").head_object(Bucket=local_aws.names.bucket, Key=obj.key)["ETag"]
    Ledger(local_aws.names.ledger_table, retention_s=DAY).record(LedgerEntry("acme", obj.key, etag))

    def planned() -> str:
        cmd = [sys.executable, str(REPO / "jobs" / "replay.py"), "--tenant", "acme", "--since", "1h", "--dry-run"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")} | local_aws.env
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return next(line for line in proc.stdout.splitlines() if line.startswith("Already delivered"))

    assert planned().startswith("Already delivered (ledger): 1 ")
    local_aws.client("dynamodb").update_item(
        TableName=local_aws.names.ledger_table,
        Key={"tenant_id": {"S": "acme"}, "object_key": {"S": obj.key}},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": {"N": str(int(now.timestamp()) - 60)}},
    )
    assert planned().startswith("Already delivered (ledger): 0 ")
