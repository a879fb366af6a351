"""The replay CLI (a real subprocess with a local Ray) under service faults and process faults.

Service faults come from the fault proxy, which every Ray worker reaches through AWS_ENDPOINT_URL. Process
faults: a DeliveryWorker actor SIGKILLed in the middle of a unit (Ray restarts it and retries the unit
once), and the driver SIGKILLed mid-run, then run again. The README's bound for the latter: objects in
flight at the kill may be sent twice (they are not in the ledger yet); everything else exactly once.
"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import orjson
import psutil
import pytest
from fault_helpers import (
    FaultStack,
    accepted_batches,
    accepted_objects,
    delivered,
    duplicated_keys,
    expected,
    kill_group,
    kill_replay_mid_run,
    ledger_count,
    ledger_keys,
    min_calls,
    objects_of,
    replay_cmd,
    run_replay,
    wait_for,
    write,
)

from devstack.faults import Drop, Error, Hold, Rule
from pipeline.ledger import Ledger
from pipeline.replay.plan import LEDGER_SKIP
from pipeline.sinks.cloudwatch.inflight import IN_FLIGHT_PUTS

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.slow]

PUT = "PutLogEvents"
# The ledger's write calls: UpdateItem records one object, TransactWriteItems those one put answer settles.
LEDGER_WRITES = ("UpdateItem", "TransactWriteItems")
WINDOW = ("--since", "45m")


def test_replay_under_throttling_5xx_expiry_and_one_denied_tenant_then_a_rerun_picks_it_up(
    stack: FaultStack, tmp_path: Path, shared_ray: str
) -> None:
    manifest = write(
        stack.local, tenants=("acme", "globex"), applications=("payment-service", "frontend"), pods_per_app=2,
        objects_per_pod=3, events_per_object=30, seed=21,
    )  # fmt: skip
    acme, globex = stack.local.tenant("acme"), stack.local.tenant("globex")
    acme_pods = sorted({k.split("/")[3] for k in objects_of(manifest, "acme")})
    proxy = stack.proxy
    faults = [
        proxy.add(Rule(Error.throttling(), service="logs", operation=PUT, probability=0.15)),
        proxy.add(Rule(Error.unavailable(), service="logs", operation=PUT, probability=0.05)),
        proxy.add(Rule(Drop(), service="logs", operation=PUT, probability=0.03)),
    ]
    expiries = [
        proxy.add(Rule(Error.expired_token(), service="logs", operation=PUT, body_contains=pod, first=1))
        for pod in acme_pods[:2]
    ]
    proxy.add(Rule(Error.access_denied(), service="sts", operation="AssumeRole", body_contains=globex.role_arn))
    tenants = ("--tenant", "acme", "--tenant", "globex", "--workers", "2")
    code, doc, output = run_replay(stack, *tenants, *WINDOW, report=tmp_path / "first.json")

    assert code == 1, output[-3000:]  # globex's objects failed; nothing else did
    failed = {f["key"]: f["reason"] for f in doc["objects_failed"]}
    assert set(failed) == objects_of(manifest, "globex"), output[-3000:]
    assert all(f"cannot assume {globex.role_arn}: AccessDenied" in r for r in failed.values())
    assert delivered(stack.local, "acme") == expected(manifest, "acme")  # every acme event exactly once
    assert ledger_keys(stack.local, "acme") == objects_of(manifest, "acme")
    assert ledger_keys(stack.local, "globex") == set()
    assert doc["tenants"]["acme"]["events_delivered"] == sum(expected(manifest, "acme").values())
    assert [r.stats.injected for r in expiries] == [1, 1]

    calls = proxy.calls("logs", PUT)
    ok = [c for c in calls if c.status == 200]
    injected = sum(r.stats.injected for r in faults)
    # Batches filled across each pod's objects: the fewest calls, and the report says so.
    assert len(ok) == min_calls(manifest, "acme") < len(objects_of(manifest, "acme"))
    assert doc["tenants"]["acme"]["put_requests"] == len(ok) == doc["tenants"]["acme"]["put_requests_minimum"]
    # Bounded: every extra attempt is an injected fault (or a new stream's first put), never a retry storm.
    creates = proxy.calls("logs", "CreateLogStream")
    assert len(calls) == len(ok) + injected + sum(r.stats.injected for r in expiries) + len(creates)
    assert 0 < injected / len(ok) < 2.0, f"{injected} retries for {len(ok)} batches"
    print(f"replay retry rate: {injected} injected over {len(ok)} batches ({injected / len(ok):.2f})")
    # Expired tokens were refreshed, not turned into failures: the batch's next attempt is signed with
    # newly issued credentials for the same role. Two threads that hit expiry together share one refresh.
    for i, c in enumerate(calls):
        if c.injected.startswith("logs:PutLogEvents:Error:") and c.injected.split(":")[-1] in acme_pods:
            retry = next(x for x in calls[i + 1 :] if x.body == c.body)
            assert retry.access_key != c.access_key
            assert proxy.role_of(retry.access_key) == acme.role_arn
    acme_assumes = [c for c in proxy.calls("sts", "AssumeRole") if acme.role_arn in unquote_plus(c.body.decode())]
    assert 2 <= len(acme_assumes) <= 2 + 2  # one per worker that served acme, at most one more per expiry

    # The customer fixes the role; the same command again sends globex's objects and only those.
    proxy.clear()
    code, doc2, output = run_replay(stack, *tenants, *WINDOW, report=tmp_path / "second.json")
    assert code == 0, output[-3000:]
    assert doc2["objects_delivered"] == len(objects_of(manifest, "globex"))
    assert doc2["objects_skipped_ledger"] == len(objects_of(manifest, "acme"))
    assert delivered(stack.local, "globex") == expected(manifest, "globex")
    assert delivered(stack.local, "acme") == expected(manifest, "acme")


def delivery_workers(root: psutil.Process) -> list[psutil.Process]:
    """The DeliveryWorker actor processes under a replay driver (Ray titles them `ray::DeliveryWorker…`)."""
    out = []
    for p in root.children(recursive=True):
        try:
            if " ".join(p.cmdline()).startswith("ray::DeliveryWorker"):
                out.append(p)
        except psutil.Error:
            continue
    return out


def test_worker_killed_mid_unit_is_restarted_and_the_unit_redelivered_at_most_once(
    stack: FaultStack, tmp_path: Path
) -> None:
    manifest = write(stack.local, applications=("payment-service",), pods_per_app=3, objects_per_pod=6, seed=22)
    keys = set(manifest.keys)
    # Decided by events: ledger writes are held after the first (which may record several objects), so at
    # the kill the test knows which objects are recorded and that some were accepted by CloudWatch and are not;
    # at the kill, CloudWatch puts are held too, so what the dying worker had in flight and what the retry sends
    # are told apart.
    ledger_table = stack.local.names.ledger_table
    ledger_hold, put_hold = Hold(), Hold()
    for op in LEDGER_WRITES:  # one Hold for both: three ledger writes pass, whichever form each takes
        stack.proxy.add(Rule(ledger_hold, service="dynamodb", operation=op, body_contains=ledger_table))
    # One write passes: this unit's three pods fill few batches, and three answers could settle all of them.
    ledger_hold.release(1)
    report = tmp_path / "report.json"
    proc = subprocess.Popen(
        replay_cmd("--tenant", "acme", *WINDOW, "--workers", "1", report=report),
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        driver = psutil.Process(proc.pid)
        worker = wait_for(lambda: delivery_workers(driver), 120, "the DeliveryWorker actor")[0]
        wait_for(lambda: ledger_count(stack.local) >= 1 or proc.poll() is not None, 120, "objects done")
        wait_for(
            lambda: accepted_objects(stack, manifest) - ledger_keys(stack.local, "acme"), 60, "an unrecorded object"
        )
        stack.proxy.add(Rule(put_hold, service="logs", operation=PUT))
        worker.send_signal(signal.SIGKILL)
        wait_for(lambda: not worker.is_running() or worker.status() == psutil.STATUS_ZOMBIE, 10, "the worker's end")
        # Every request still in the proxy is a held one (the dying worker's, or the retry's first): what was
        # forwarded before the kill has been answered and is in the proxy's log.
        wait_for(lambda: stack.proxy.inflight() == ledger_hold.held + put_hold.held, 30, "forwarded requests answered")
        before = ledger_keys(stack.local, "acme")
        at_kill = accepted_batches(stack, manifest)
        sent_unrecorded = set().union(*at_kill) - before
        assert before and sent_unrecorded, "the kill did not land mid-unit"
        stack.proxy.clear()  # opens the holds: the dead worker's requests are dropped, the retry's go on
        out, _ = proc.communicate(timeout=180)
    finally:
        kill_group(proc)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-3000:]
    doc = orjson.loads(report.read_bytes())

    # Ray restarted the actor and retried the unit: everything is delivered and in the ledger.
    assert doc["objects_failed"] == [], text[-3000:]
    assert ledger_keys(stack.local, "acme") == keys
    got = delivered(stack.local, "acme")
    assert not expected(manifest, "acme") - got, "events lost"
    # At most once more: only objects that were not in the ledger at the kill, each at most twice, and only
    # those of the batches being sent or recorded then (pipeline.sinks.cloudwatch.inflight: at most
    # IN_FLIGHT_PUTS), which spanned several objects each.
    dups = duplicated_keys(manifest, got, "acme")
    assert set(dups) == sent_unrecorded and set(dups.values()) == {2}, (dups, sent_unrecorded)
    holding = [b for b in at_kill if b & sent_unrecorded]
    assert len(holding) <= IN_FLIGHT_PUTS and max(map(len, holding)) > 1
    assert len(dups) <= sum(map(len, holding))
    # Report and ledger agree: the retried unit reports the objects the first attempt finished as ledger
    # skips, and the rest as delivered, with the counts the ledger holds.
    assert doc["objects_delivered"] + doc["objects_skipped_ledger"] == len(keys)
    skipped = {s["key"] for s in doc["objects_skipped"] if s["reason"] == LEDGER_SKIP}
    assert skipped <= before
    entries = {e.object_key: e for e in Ledger(stack.local.names.ledger_table).entries("acme")}
    assert doc["events_delivered"] == sum(entries[k].events_delivered for k in keys - skipped)
    print(f"worker kill: {len(before)} objects done before, {len(dups)} sent twice")


def test_driver_killed_mid_run_then_rerun_loses_nothing_and_resends_exactly_the_unrecorded_objects(
    stack: FaultStack, tmp_path: Path, shared_ray: str
) -> None:
    """The replay CLI and the local Ray it started are SIGKILLed together (a lost pod), then run again.

    Ledger writes after the first three (each one object or a group) are held by the proxy, so at the kill some
    objects have been accepted by CloudWatch but are not in the ledger: exactly those are sent twice, nothing
    else, nothing is lost.
    """
    manifest = write(
        stack.local, applications=("payment-service", "frontend"), pods_per_app=2, objects_per_pod=5, seed=23
    )
    keys = set(manifest.keys)
    ledger_table = stack.local.names.ledger_table
    # Ledger writes are held after the first three: at the kill, which objects are recorded is decided by the
    # test, not by how long a delay was.
    hold = Hold()
    for op in LEDGER_WRITES:
        stack.proxy.add(Rule(hold, service="dynamodb", operation=op, body_contains=ledger_table))
    hold.release(3)
    args = ("--tenant", "acme", *WINDOW, "--workers", "2")

    def some_sent_not_recorded(proc: subprocess.Popen[Any]) -> None:
        wait_for(lambda: ledger_count(stack.local) >= 3 or proc.poll() is not None, 120, "objects done")
        wait_for(
            lambda: accepted_objects(stack, manifest) - ledger_keys(stack.local, "acme"),
            60,
            "an object sent, not yet recorded",
        )

    kill_replay_mid_run(stack, *args, report=tmp_path / "killed.json", when=some_sent_not_recorded, holds=[hold])
    settled = ledger_keys(stack.local, "acme")
    at_kill = accepted_batches(stack, manifest)
    sent_unrecorded = set().union(*at_kill) - settled
    assert settled and sent_unrecorded, "the kill did not land mid-run"
    assert not (tmp_path / "killed.json").exists()  # no report from a killed driver

    stack.proxy.clear()
    code, doc, output = run_replay(stack, *args, report=tmp_path / "rerun.json")
    assert code == 0, output[-3000:]
    assert doc["objects_skipped_ledger"] == len(settled)
    assert doc["objects_delivered"] == len(keys - settled)
    assert ledger_keys(stack.local, "acme") == keys
    got = delivered(stack.local, "acme")
    assert not expected(manifest, "acme") - got, "events lost"
    dups = duplicated_keys(manifest, got, "acme")
    # At-least-once exactly for what was in flight: accepted by CloudWatch, not yet in the ledger.
    assert set(dups) == sent_unrecorded and set(dups.values()) == {2}
    # Only objects of batches being sent or recorded at the kill: at most IN_FLIGHT_PUTS per worker.
    assert len([b for b in at_kill if b & sent_unrecorded]) <= 2 * IN_FLIGHT_PUTS
    print(f"driver kill: {len(settled)} of {len(keys)} recorded, {len(dups)} sent twice")
