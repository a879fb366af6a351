"""Redelivery requests: the guard rails on a request body (CONTRACTS.md §9 "Replays"), the job's command line,
the cluster token as §7 names it, and the cap's arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import ConfigError
from pipeline.replay.ratelimit import EventCap
from pipeline.replay.requests import ID_RE, State, iso, max_window_days, new_replay_id, parse_spec
from pipeline.replay.service import ReplayService, answer, report_location
from pipeline.replay.submit import JobCommand, TokenFile, token_from_env
from pipeline.tenants import Delivery, DeliveryType, InvalidDelivery, Tenant, TenantConfigError

NOW = datetime(2026, 5, 2, 12, 0, tzinfo=UTC)


def refused(body: dict[str, Any], days: float = 90) -> dict[str, str]:
    with pytest.raises(TenantConfigError) as caught:
        parse_spec(body, NOW, days)
    return caught.value.fields


def test_a_window_defaults_until_to_now_and_reads_iso_8601() -> None:
    spec = parse_spec({"since": "2026-05-01T10:00:00Z"}, NOW)
    assert spec.since == datetime(2026, 5, 1, 10, tzinfo=UTC) and spec.until == NOW
    spec = parse_spec({"since": "2026-05-01T10:00:00+02:00", "until": "2026-05-01T16:30:00"}, NOW)
    assert spec.since == datetime(2026, 5, 1, 8, tzinfo=UTC)
    assert spec.until == datetime(2026, 5, 1, 16, 30, tzinfo=UTC)  # naive is UTC, as everywhere (timespec)


def test_each_guard_rail_names_its_field_with_its_own_message() -> None:
    assert "ISO 8601" in refused({})["since"]
    assert "ISO 8601" in refused({"since": "yesterday"})["since"]
    assert "empty or reversed" in refused({"since": "2026-05-01T10:00Z", "until": "2026-05-01T10:00Z"})["until"]
    assert "empty or reversed" in refused({"since": "2026-05-01T10:00Z", "until": "2026-05-01T09:00Z"})["until"]
    assert "future" in refused({"since": "2026-05-01T10:00Z", "until": "2026-05-02T12:00:01Z"})["until"]
    assert "future" in refused({"since": "2026-05-03T10:00Z"})["since"]
    too_long = refused({"since": "2026-01-01T00:00Z"})["since"]
    assert "at most 90" in too_long and "REPLAY_MAX_WINDOW_DAYS" in too_long
    assert "at most 7" in refused({"since": "2026-04-20T00:00Z"}, days=7)["since"]
    assert refused({"since": "2026-05-01T10:00Z", "max_events": 0}) == {
        "max_events": "must be a whole number from 1 to 1000000000000"
    }
    assert "max_events" in refused({"since": "2026-05-01T10:00Z", "max_events": True})
    assert "max_events" in refused({"since": "2026-05-01T10:00Z", "max_events": 1.5})
    assert "dry_run" in refused({"since": "2026-05-01T10:00Z", "dry_run": "yes"})
    assert "deliveries" in refused({"since": "2026-05-01T10:00Z", "deliveries": "cloudwatch"})
    assert "deliveries" in refused({"since": "2026-05-01T10:00Z", "deliveries": ["Not An Id"]})
    assert "applications" in refused({"since": "2026-05-01T10:00Z", "applications": [""]})
    assert refused({"since": "2026-05-01T10:00Z", "tenant": "other"}) == {"tenant": "unknown field"}


_times = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2026, 6, 1), timezones=st.just(UTC))


@given(since=_times, until=_times, days=st.floats(min_value=0.01, max_value=400))
def test_a_window_is_taken_exactly_when_every_rule_holds(since: datetime, until: datetime, days: float) -> None:
    ok = since <= NOW and until <= NOW and since < until and until - since <= timedelta(days=days)
    body = {"since": iso(since), "until": iso(until)}
    try:
        spec = parse_spec(body, NOW, days)
    except TenantConfigError as exc:
        assert not ok, exc.fields
        assert set(exc.fields) <= {"since", "until"} and len(exc.fields) == 1
    else:
        assert ok
        assert spec.since == since.replace(microsecond=since.microsecond // 1000 * 1000)


def test_the_window_limit_comes_from_the_environment() -> None:
    assert max_window_days({}) == 90
    assert max_window_days({"REPLAY_MAX_WINDOW_DAYS": "30"}) == 30
    for bad in ("0", "-1", "ninety"):
        with pytest.raises(ConfigError, match="REPLAY_MAX_WINDOW_DAYS"):
            max_window_days({"REPLAY_MAX_WINDOW_DAYS": bad})


def test_ids_sort_by_creation_time() -> None:
    a, b = new_replay_id(NOW), new_replay_id(NOW + timedelta(seconds=1))
    assert ID_RE.fullmatch(a) and ID_RE.fullmatch(b) and a < b


def test_the_job_runs_log_replay_with_the_requests_options() -> None:
    command = JobCommand(
        tenant_id="acme",
        replay_id="rp-20260502T120000Z-0123abcd",
        since="2026-05-01T10:00:00.000Z",
        until="2026-05-01T16:30:00.000Z",
        report=report_location("central", "rp-20260502T120000Z-0123abcd"),
        deliveries=("cloudwatch",),
        applications=("payment service",),
        max_events=500,
        max_events_per_second=2000,
        max_requests_per_second=50,
    )
    assert command.argv() == [
        *("log-replay", "--tenant", "acme", "--since", "2026-05-01T10:00:00.000Z"),
        *("--until", "2026-05-01T16:30:00.000Z", "--delivery", "cloudwatch", "--application", "payment service"),
        *("--max-events", "500", "--max-events-per-second", "2000", "--max-requests-per-second", "50"),
        *("--report", "s3://central/reports/replays/rp-20260502T120000Z-0123abcd.json"),
        *("--replay-request", "rp-20260502T120000Z-0123abcd", "--no-progress"),
    ]
    assert "'payment service'" in command.entrypoint  # one shell word


def test_the_cluster_token_is_read_as_contracts_7_names_it(tmp_path: Path) -> None:
    assert token_from_env({"RAY_AUTH_TOKEN": "t"}) is None  # no token auth
    assert token_from_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": " t0k "}) == "t0k"
    path = tmp_path / "token"
    path.write_text("fr0m-file\n")
    source = token_from_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(path)})
    assert isinstance(source, TokenFile) and source.read() == "fr0m-file"
    with pytest.raises(ConfigError, match="RAY_AUTH_TOKEN_PATH"):
        token_from_env({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
    assert token_from_env({"RAY_AUTH_MODE": "token"}) is None  # Ray's own loader looks in its default place


def test_the_cap_stops_at_the_first_batch_that_reaches_it() -> None:
    cap = EventCap(100)
    assert cap.spend(60) and not cap.reached
    assert not cap.spend(40) and cap.reached
    assert not cap.spend(10)
    with pytest.raises(ValueError):
        EventCap(0)


def _delivery(delivery_id: str, enabled: bool = True) -> Delivery:
    return Delivery("acme", delivery_id, DeliveryType.CLOUDWATCH, "arn:aws:iam::111111111111:role/R", "us-east-1",
                    enabled=enabled, log_group="/logs/acme")  # fmt: skip


def test_a_disabled_tenant_or_delivery_and_unknown_ids_are_refused() -> None:
    spec = parse_spec({"since": "2026-05-01T10:00Z"}, NOW)
    off = Tenant("acme", (_delivery("cloudwatch", enabled=False),))
    with pytest.raises(TenantConfigError) as caught:
        ReplayService.check(off, spec)
    assert "disabled" in caught.value.fields["tenant_id"]

    tenant = Tenant(
        "acme",
        (_delivery("cloudwatch"), _delivery("archive", enabled=False)),
        (InvalidDelivery("acme", "broken", "log_group_name: required"),),
    )
    ReplayService.check(tenant, spec)
    for named, says in (
        ("archive", "is disabled"),
        ("nope", "has no delivery 'nope'"),
        ("broken", "does not validate"),
    ):
        with pytest.raises(TenantConfigError) as caught:
            ReplayService.check(tenant, parse_spec({"since": "2026-05-01T10:00Z", "deliveries": [named]}, NOW))
        assert says in caught.value.fields["deliveries"]


def test_the_answer_holds_the_report_only_once_the_request_has_ended() -> None:
    item = {
        "replay_id": "rp-20260502T120000Z-0123abcd",
        "tenant_id": "acme",
        "state": State.RUNNING.value,
        "since": "a",
        "until": "b",
        "progress": {"objects_done": 3, "objects_planned": 9, "events_delivered": 40},
        "report": {"location": "s3://x"},
        "expires_at": 1,
    }
    doc = answer(item)
    assert doc["report"] is None and doc["progress"] == {
        "objects_done": 3,
        "objects_planned": 9,
        "events_delivered": 40,
    }
    assert "expires_at" not in doc
    assert answer({**item, "state": "succeeded"})["report"] == {"location": "s3://x"}
    assert answer({**item, "state": "failed", "report": None})["report"]["stopped_by"] is None
