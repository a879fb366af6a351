"""Adjacent and overlapping replay windows, run as a user runs them: each event exactly once.

The replay CLI in a subprocess on the session's Ray head (RAY_ADDRESS), against the moto server over HTTP.
Three adjacent windows whose bounds fall inside objects (events on both sides of each bound in one object), then one
window overlapping the last and reaching past it: the tenant's CloudWatch group holds every event of the
union once, and the reports say how many events each run found already delivered. Expectations come from the
generator's manifest, never from the code under test.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from devstack.generator import GeneratorConfig, write_dataset
from devstack.provision import LocalEnvironment
from tests.integration.test_replay_cli import delivered_events, expected_events, replay

pytestmark = [pytest.mark.integration, pytest.mark.ray, pytest.mark.usefixtures("shared_ray")]

APPS = ("payment-service",)


def iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def test_adjacent_windows_then_an_overlapping_one_deliver_each_event_once(
    local_aws: LocalEnvironment, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    start = now - timedelta(hours=6)
    cfg = GeneratorConfig(
        since=start,
        until=now - timedelta(minutes=10),
        tenants=("acme",),
        clusters=("prod-1",),
        applications=APPS,
        pods_per_app=2,
        objects_per_pod=12,
        events_per_object=20,
        seed=23,
    )
    manifest = write_dataset(cfg, local_aws.names.bucket, s3=local_aws.client("s3"))

    # Bounds on whole seconds (what the CLI takes) inside objects: events of one object on both sides.
    def inside_an_object(near: datetime) -> datetime:
        spans = sorted(
            ((min(o.expected)[0], max(o.expected)[0]) for o in manifest.objects if o.expected),
            key=lambda span: abs(span[0] - ms(near)),
        )
        for lo, hi in spans:
            second = (lo // 1000 + 1) * 1000
            if second < hi:
                return datetime.fromtimestamp(second / 1000, UTC)
        raise AssertionError("no object spans a whole second")

    b0 = start
    b1, b2, b3 = (inside_an_object(start + timedelta(hours=h)) for h in (1.3, 3.6, 5))
    assert b0 < b1 < b2 < b3 < now - timedelta(minutes=20)

    runs = [(b0, b1), (b1, b2), (b2, b3)]
    for n, (since, until) in enumerate(runs):
        code, doc, out = replay(
            local_aws, "--tenant", "acme", "--since", iso(since), "--until", iso(until), report=tmp_path / f"{n}.json"
        )
        assert code == 0, out[-3000:]
        assert doc["events_already_delivered"] == 0  # adjacent: nothing of one window is in another's
    want = expected_events(manifest, "acme", APPS, ms(b0), ms(b3))
    assert delivered_events(local_aws, "acme") == want  # every event of the union exactly once

    # Overlapping the last window and reaching past it: only the events past the union's end are sent, once.
    overlap = (b2 - timedelta(minutes=37, seconds=11), now)
    code, doc, out = replay(
        local_aws,
        "--tenant",
        "acme",
        "--since",
        iso(overlap[0]),
        "--until",
        iso(overlap[1]),
        report=tmp_path / "o.json",
    )
    assert code == 0, out[-3000:]
    past = expected_events(manifest, "acme", APPS, ms(b3), ms(now))
    assert doc["events_delivered"] == sum(past.values()) > 0
    # Objects whose events all lie in the union are skipped from the ledger, unread; those straddling its
    # end are read again, and their events before it counted as already delivered.
    straddling_end = [o for o in manifest.objects if o.expected and min(o.expected)[0] < ms(b3) <= max(o.expected)[0]]
    assert straddling_end and doc["objects_skipped_ledger"] > 0
    assert doc["events_already_delivered"] == sum(
        1 for o in straddling_end for t, _ in o.expected or [] if ms(overlap[0]) <= t < ms(b3)
    )
    assert (
        delivered_events(local_aws, "acme") == want + past == expected_events(manifest, "acme", APPS, ms(b0), ms(now))
    )
