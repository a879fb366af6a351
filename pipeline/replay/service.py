"""Redelivery requests as a service (CONTRACTS.md §9 "Replays"): what the API routes and `log-tenants replay`
both call, over the one request store (`requests.py`) and the Ray cluster's Jobs API (`submit.py`).

The stored request is the source of truth: the job's driver writes running, progress and the end. Ray's job
status is asked only for a request still pending or running, to end one whose driver could not say so itself
(a job that failed to start, was killed, or is gone from the cluster).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.admin.store import TenantStore
from pipeline.errors import Busy, ConfigError, Ended, JobsUnavailable, NotFound, Unavailable
from pipeline.replay.job import ReplayOptions, estimate
from pipeline.replay.requests import (
    ReplaySpec,
    ReplayStore,
    State,
    iso,
    max_window_days,
    new_replay_id,
    parse_spec,
)
from pipeline.replay.submit import JobCommand, RayJobs
from pipeline.settings import Settings
from pipeline.storage import REPORTS_PREFIX
from pipeline.tenants import TableSchema, Tenant, TenantConfigError, tenant_from_items

log = logging.getLogger("pipeline.replay")

ESTIMATE_SECONDS_ENV = "REPLAY_ESTIMATE_SECONDS"
DEFAULT_ESTIMATE_SECONDS = 20.0
EVENTS_PER_SECOND_ENV = "REPLAY_MAX_EVENTS_PER_SECOND"
REQUESTS_PER_SECOND_ENV = "REPLAY_MAX_REQUESTS_PER_SECOND"
# Every request's job runs at these per-tenant limits (0: none): they leave the tenant's own CloudWatch quota
# (PutLogEvents: 1,500-5,000 calls/s per account and region) room for its own workloads.
DEFAULT_EVENTS_PER_SECOND = 5000.0
DEFAULT_REQUESTS_PER_SECOND = 50.0
# A pending request whose job Ray does not know yet may be between its creation and its submission.
SUBMIT_GRACE = timedelta(minutes=2)


def report_location(bucket: str, replay_id: str) -> str:
    return f"s3://{bucket}/{REPORTS_PREFIX}replays/{replay_id}.json"


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ConfigError(f"{name} must be a number, 0 or more, not {raw!r}")
    return value


@dataclass
class Limits:
    """Guard rails and defaults from the environment (CONTRACTS.md §7)."""

    max_window_days: float
    estimate_seconds: float = DEFAULT_ESTIMATE_SECONDS
    events_per_second: float = DEFAULT_EVENTS_PER_SECOND
    requests_per_second: float = DEFAULT_REQUESTS_PER_SECOND

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Limits:
        env = os.environ if env is None else env
        return cls(
            max_window_days(env),
            _number(env, ESTIMATE_SECONDS_ENV, DEFAULT_ESTIMATE_SECONDS) or DEFAULT_ESTIMATE_SECONDS,
            _number(env, EVENTS_PER_SECOND_ENV, DEFAULT_EVENTS_PER_SECOND),
            _number(env, REQUESTS_PER_SECOND_ENV, DEFAULT_REQUESTS_PER_SECOND),
        )


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class ReplayService:
    settings: Settings
    requests: ReplayStore | None  # None: no REPLAY_REQUEST_TABLE (every route answers 503)
    tenants: TenantStore
    jobs: RayJobs | None  # None: no RAY_ADDRESS (requests cannot be run)
    limits: Limits = field(default_factory=lambda: Limits(90.0))
    clock: Callable[[], datetime] = _now

    @classmethod
    def from_env(cls, settings: Settings, tenants: TenantStore, env: Mapping[str, str] | None = None) -> ReplayService:
        env = os.environ if env is None else env
        requests = ReplayStore(settings.replay_table) if settings.replay_table else None
        jobs = RayJobs.from_env(env, {"REPLAY_REQUEST_TABLE": settings.replay_table} if settings.replay_table else {})
        return cls(settings, requests, tenants, jobs, Limits.from_env(env))

    def _store(self) -> ReplayStore:
        if self.requests is None:
            raise Unavailable("replay requests are not configured here: set REPLAY_REQUEST_TABLE")
        return self.requests

    # -- checks ---------------------------------------------------------------------------------------------

    def tenant(self, tenant_id: str) -> Tenant:
        items = self.tenants.raw_items(tenant_id)
        if not items:
            raise NotFound(f"unknown tenant {tenant_id!r}")
        return tenant_from_items(tenant_id, items, TableSchema.V2)

    @staticmethod
    def check(tenant: Tenant, spec: ReplaySpec) -> None:
        """The guard rails that depend on the tenant: a disabled tenant, or an unknown, invalid or disabled
        delivery named, is refused (TenantConfigError naming `tenant_id` or `deliveries`)."""
        if tenant.profile_error:
            raise TenantConfigError(tenant.profile_error, {"tenant_id": tenant.profile_error})
        enabled = {d.delivery_id for d in tenant.deliveries if d.enabled}
        if not spec.deliveries and not enabled:
            reason = f"tenant {tenant.tenant_id!r} is disabled: none of its deliveries is enabled"
            raise TenantConfigError(reason, {"tenant_id": reason})
        invalid = {i.delivery_id: i.reason for i in tenant.invalid}
        problems = []
        for d in spec.deliveries:
            if d in invalid:
                problems.append(f"delivery {d!r} does not validate: {invalid[d]}")
            elif d not in {x.delivery_id for x in tenant.deliveries}:
                problems.append(f"tenant {tenant.tenant_id!r} has no delivery {d!r}")
            elif d not in enabled:
                problems.append(f"delivery {d!r} of tenant {tenant.tenant_id!r} is disabled")
        if problems:
            raise TenantConfigError("; ".join(problems), {"deliveries": "; ".join(problems)})

    def options(self, tenant: Tenant, spec: ReplaySpec, dry_run: bool) -> ReplayOptions:
        return ReplayOptions(
            tenants=(tenant.tenant_id,),
            since=spec.since,
            until=spec.until,
            applications=spec.applications,
            deliveries=spec.deliveries,
            dry_run=dry_run,
            max_events=spec.max_events,
        )

    def estimate(self, tenant: Tenant, spec: ReplaySpec) -> dict[str, Any]:
        """The dry run's figures for the request (listed in this process, bounded in time)."""
        totals = estimate(
            self.options(tenant, spec, dry_run=True),
            self.settings,
            {tenant.tenant_id: tenant},
            self.limits.estimate_seconds,
        )
        return {
            "objects": totals.objects_to_deliver,
            "bytes": totals.bytes_to_deliver,
            "objects_listed": totals.objects_listed,
            "objects_already_delivered": totals.skipped_ledger,
            "objects_older_than_14d": totals.undeliverable_objects,
            "list_calls": totals.list_calls,
            "complete": totals.listing_complete,
        }

    # -- the routes -----------------------------------------------------------------------------------------

    def start(self, tenant_id: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        """(200, {estimate}) for a dry run; (202, {replay_id, state, estimate}) for a request taken."""
        spec = parse_spec(body, self.clock(), self.limits.max_window_days)
        tenant = self.tenant(tenant_id)
        self.check(tenant, spec)
        if spec.dry_run:
            return 200, {"estimate": self.estimate(tenant, spec)}
        store = self._store()
        if self.jobs is None:
            raise Unavailable("no Ray cluster to run replays on: set RAY_ADDRESS")
        self.settings.require("bucket")
        holder = store.active(tenant_id)
        if holder is not None:  # the cheap refusal before an estimate; `create` is the atomic one
            held = store.get(tenant_id, holder)
            if held is not None and State(held["state"]).active:
                raise Busy(holder)
        replay_id = new_replay_id(self.clock())
        figures = self.estimate(tenant, spec)
        store.create(tenant_id, replay_id, spec, figures)
        command = JobCommand(
            tenant_id=tenant_id,
            replay_id=replay_id,
            since=iso(spec.since),
            until=iso(spec.until),
            report=report_location(self.settings.bucket, replay_id),
            deliveries=spec.deliveries,
            applications=spec.applications,
            max_events=spec.max_events,
            max_events_per_second=self.limits.events_per_second or None,
            max_requests_per_second=self.limits.requests_per_second or None,
        )
        try:
            self.jobs.submit(command)
        except JobsUnavailable as exc:
            store.finish(tenant_id, replay_id, State.FAILED, error=str(exc))
            raise Unavailable(f"{exc} (request {replay_id} failed)") from None
        log.info("replay requested", extra={"tenant_id": tenant_id, "replay_id": replay_id, "estimate": figures})
        return 202, {"replay_id": replay_id, "state": State.PENDING.value, "estimate": figures}

    def show(self, tenant_id: str, replay_id: str) -> dict[str, Any]:
        item = self._get(tenant_id, replay_id)
        return answer(self._reconcile(item))

    def list(self, tenant_id: str, limit: int = 100) -> list[dict[str, Any]]:
        store = self._store()
        items = store.list(tenant_id, limit)
        if not items:
            self.tenant(tenant_id)  # an unknown tenant is a 404, a tenant without requests an empty list
        return [answer(self._reconcile(i) if State(i["state"]).active else i) for i in items]

    def stop(self, tenant_id: str, replay_id: str) -> dict[str, Any]:
        """Ask a pending or running request to stop: marked, then Ray's stop_job (SIGTERM to the driver, which
        stops between objects and ends the request `stopped`, stopped_by `request`). A request whose job Ray
        does not have is ended here."""
        store = self._store()
        item = self._get(tenant_id, replay_id)
        if not State(item["state"]).active or not store.request_stop(tenant_id, replay_id):
            raise Ended(f"replay {replay_id} has already ended ({item['state']})")
        stopped = False
        if self.jobs is not None:
            try:
                stopped = self.jobs.stop(replay_id)
            except JobsUnavailable as exc:
                log.warning("replay stop not delivered to Ray", extra={"replay_id": replay_id, "error": str(exc)})
                stopped = True  # the mark stays; the next reconciliation or the driver's end decides
        if not stopped:
            store.finish(tenant_id, replay_id, State.STOPPED, report=_no_report("request"))
        return answer(self._get(tenant_id, replay_id))

    # -- helpers --------------------------------------------------------------------------------------------

    def _get(self, tenant_id: str, replay_id: str) -> dict[str, Any]:
        item = self._store().get(tenant_id, replay_id)
        if item is None:
            self.tenant(tenant_id)
            raise NotFound(f"tenant {tenant_id!r} has no replay {replay_id!r}")
        return item

    def _reconcile(self, item: dict[str, Any]) -> dict[str, Any]:
        """A pending or running request whose job Ray says has ended (or does not have) is ended to match."""
        if not State(item["state"]).active or self.jobs is None:
            return item
        tenant_id, replay_id = str(item["tenant_id"]), str(item["replay_id"])
        try:
            status, message = self.jobs.status(replay_id)
        except JobsUnavailable as exc:
            log.warning("replay job status unavailable", extra={"replay_id": replay_id, "error": str(exc)})
            return item
        if status is None:
            created = datetime.fromisoformat(str(item["created_at"]).replace("Z", "+00:00"))
            if self.clock() - created < SUBMIT_GRACE:
                return item
            state, error, report = State.FAILED, message, None
        elif status == "FAILED":
            state, error, report = State.FAILED, f"the Ray job failed: {message}"[:2000], None
        elif status == "STOPPED":
            state, error, report = State.STOPPED, None, _no_report("request")
        elif status == "SUCCEEDED":
            state, error, report = State.FAILED, "the Ray job ended without recording the request's end", None
        else:
            return item
        if self._store().finish(tenant_id, replay_id, state, report=report, error=error):
            log.warning("replay ended by reconciliation", extra={"replay_id": replay_id, "state": state.value})
        return self._get(tenant_id, replay_id)


def _no_report(stopped_by: str | None) -> dict[str, Any]:
    return {"location": None, "events_delivered": None, "objects_failed": None, "stopped_by": stopped_by}


ANSWER_FIELDS = (
    "deliveries",
    "applications",
    "max_events",
    "estimate",
    "created_at",
    "started_at",
    "ended_at",
    "stop_requested",
    "error",
)


def answer(item: Mapping[str, Any]) -> dict[str, Any]:
    """A stored request as the API answers it (CONTRACTS.md §9)."""
    progress = item.get("progress") or {}
    doc: dict[str, Any] = {
        "replay_id": item["replay_id"],
        "tenant_id": item["tenant_id"],
        "state": item["state"],
        "since": item["since"],
        "until": item["until"],
        "progress": {
            "objects_done": int(progress.get("objects_done", 0)),
            "objects_planned": int(progress.get("objects_planned", 0)),
            "events_delivered": int(progress.get("events_delivered", 0)),
        },
        "report": None if State(item["state"]).active else item.get("report") or _no_report(None),
    }
    for name in ANSWER_FIELDS:
        if name in item:
            doc[name] = item[name]
    return doc
