"""The replay job: list and deliver at once on Ray workers (`scheduler`), then report.

A dry run lists and plans only. Without RAY_ADDRESS it starts no Ray: the listing runs on threads here.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import orjson

from pipeline import aws, environment, storage
from pipeline.delivery.results import LEDGER_SKIP
from pipeline.delivery.routing import Routing, TimeWindow
from pipeline.errors import NonRecoverableError
from pipeline.exits import EXIT_USAGE
from pipeline.keys import DEFAULT_WRITE_SLACK
from pipeline.memory import DEFAULT_BUDGET_MIB
from pipeline.replay.plan import PlanTotals, UnitPacker, window_totals
from pipeline.replay.report import ReplayReport
from pipeline.replay.requests import ReplayStore, RequestRecorder, State
from pipeline.replay.scheduler import Backend, LocalBackend, Scheduler
from pipeline.replay.survey import Surveyor, SurveySpec
from pipeline.settings import ConfigError, Settings
from pipeline.sinks import plan_traits, sink_names, traits_of, writes_ledger
from pipeline.source.listing import ListingFilter, tenant_prefixes
from pipeline.status import status_recorder
from pipeline.tenants import DeliveryType, Tenant, TenantDirectory
from pipeline.timespec import to_ms

log = logging.getLogger("pipeline.replay")

SINKS = sink_names(DeliveryType.CLOUDWATCH)  # --sink picks CloudWatch deliveries' sink; S3 keeps its own

# Environment a worker on another node needs to reach the same endpoints; credentials are not forwarded
# (on a cluster they come from the pod's own identity).
FORWARDED_ENV_PREFIXES = ("AWS_ENDPOINT_URL", "AWS_REGION", "AWS_DEFAULT_REGION", "VECTOR_BIN", "LEDGER_RETENTION")
# The RayJob's explicit size: what its RayCluster can grow to (worker group maxReplicas times the workers
# one node holds). The autoscaler adds nodes for actors that wait, so sizing from the CPUs present at start
# would give an empty autoscaling cluster one worker.
WORKERS_ENV = "REPLAY_WORKERS"


@dataclass(frozen=True)
class ReplayOptions:
    tenants: tuple[str, ...]
    since: datetime
    until: datetime
    clusters: tuple[str, ...] = ()
    applications: tuple[str, ...] = ()
    pods: tuple[str, ...] = ()
    sink: str = "cloudwatch"
    deliveries: tuple[str, ...] = ()  # delivery ids or types; empty: every enabled delivery of each tenant
    workers: int | None = None
    dry_run: bool = False
    redeliver: bool = False
    max_events_per_second: float | None = None
    max_requests_per_second: float | None = None  # PutLogEvents calls; only sinks whose calls the job makes
    report_path: str | None = None  # a file, an s3:// URI, or a prefix ending in / (a name is added)
    slack: timedelta = DEFAULT_WRITE_SLACK
    progress: bool | None = None  # None: only on a terminal
    worker_memory_mib: int = DEFAULT_BUDGET_MIB  # decoded objects a worker holds at once
    all_tenants: bool = False  # every enabled tenant in the table; `tenants` is then filled in by run()
    sample: float = 1.0  # dry run: the share of pods listed; the plan then says it is an estimate
    max_events: int | None = None  # stop cleanly once this many events are delivered (report: stopped "cap")
    replay_request: str | None = None  # the redelivery request this run is (its progress and end are written)


def resolve_tenants(directory: TenantDirectory, tenant_ids: Sequence[str]) -> dict[str, Tenant | str]:
    out: dict[str, Tenant | str] = {}
    for t in tenant_ids:
        try:
            out[t] = directory.get(t)
        except NonRecoverableError as exc:
            out[t] = exc.reason
    return out


def routing_for(opts: ReplayOptions) -> Routing:
    traits = plan_traits(opts.sink)
    use_ledger = not opts.redeliver and any(t.writes_ledger for t in traits.values())
    window = TimeWindow(to_ms(opts.since), to_ms(opts.until))
    return Routing(traits, window, frozenset(opts.deliveries), use_ledger)


def unmatched_deliveries(opts: ReplayOptions, tenants: Mapping[str, Tenant | str]) -> list[str]:
    """The --delivery values that name no delivery of any of the tenants (a typo, most likely)."""
    known: set[str] = set(DeliveryType)
    for t in tenants.values():
        if isinstance(t, Tenant):
            known |= set(t.delivery_ids)
    return [d for d in opts.deliveries if d not in known]


def listing_filter(opts: ReplayOptions) -> ListingFilter:
    return ListingFilter(
        tenants=opts.tenants,
        since=opts.since,
        until=opts.until,
        clusters=opts.clusters,
        applications=opts.applications,
        pods=opts.pods,
        slack=opts.slack,
    )


def _mib(n: int) -> str:
    return f"{n / 1048576:,.1f} MiB"


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render_plan(plan: PlanTotals, opts: ReplayOptions, workers: int) -> str:
    hours = (plan.until - plan.since).total_seconds() / 3600
    lines = [
        f"Replay plan for {', '.join(opts.tenants)}: {plan.since:%Y-%m-%dT%H:%M:%SZ} → {plan.until:%Y-%m-%dT%H:%M:%SZ}"
        f" ({hours:,.1f} h), sink={opts.sink}, workers={workers}",
        "",
    ]
    if plan.sampled:
        lines += [
            f"SAMPLE: {plan.pods_listed:,} of {plan.pods_found:,} pods listed ({opts.sample:.0%} by --sample); the "
            "tables count the sample, the totals below are scaled to the whole window (marked ~).",
            "",
        ]
    rows: list[tuple[str, ...]] = [("tenant", "application", "objects", "bytes", "est. events", "already delivered")]
    for (tenant, app), s in sorted(plan.by_tenant_app.items()):
        rows.append(
            (tenant, app, f"{s.objects:,}", _mib(s.bytes), f"{s.estimated_events:,}", f"{s.already_delivered:,}")
        )
    lines += _table(rows)
    lines += ["", "Per delivery (S3 takes whole objects written in the window; CloudWatch takes events in it):"]
    rows = [("tenant", "delivery", "type", "target", "to deliver", "bytes", "already delivered", "past 14 days")]
    for (tenant, delivery_id), d in sorted(plan.deliveries.items()):
        past = "-" if d.whole_objects else f"{d.older_than_14d:,} objects"
        rows.append(
            (
                tenant,
                delivery_id,
                d.type,
                d.target,
                f"{d.objects:,} objects",
                _mib(d.bytes),
                f"{d.already_delivered:,}",
                past,
            )
        )
    lines += _table(rows)
    for (tenant, delivery_id), d in sorted(plan.deliveries.items()):
        for reason, n in sorted(d.skipped.items()):
            lines.append(f"  {tenant}/{delivery_id}: skips {n:,} objects: {reason}")
        for reason, n in sorted(d.failed.items()):
            lines.append(f"  {tenant}/{delivery_id}: cannot deliver {n:,} objects: {reason}")
    scale = plan.pods_found / plan.pods_listed if plan.sampled and plan.pods_listed else 1.0
    mark = "~" if plan.sampled else ""

    def scaled(n: int) -> str:
        return f"{mark}{round(n * scale):,}"

    lines += [
        "",
        f"Objects listed: {scaled(plan.objects_listed)} in {plan.list_calls:,} LIST calls ({plan.pods_listed:,} pods)",
        f"To deliver: {scaled(plan.objects_to_deliver)} objects ({mark}{_mib(round(plan.bytes_to_deliver * scale))})"
        + (f" in {plan.work_units} work units" if not plan.sampled else ""),
        f"Already delivered (ledger): {scaled(plan.skipped_ledger)} objects"
        + (" — ignored, --redeliver" if opts.redeliver else ""),
    ]
    if plan.undeliverable_fraction > 0 and plan.has_event_deliveries:
        lines.append(
            f"WARNING: {plan.undeliverable_fraction:.0%} of the window is older than CloudWatch's 14-day limit "
            f"({scaled(plan.undeliverable_objects)} objects written then). Those events cannot be delivered to "
            "CloudWatch; they will be counted as events_rejected_too_old. S3 deliveries have no age limit."
        )
    for reason, n in sorted(plan.skipped.items()):
        if reason != LEDGER_SKIP:
            lines.append(f"Skipped: {scaled(n)} objects: {reason}")
    for reason, n in sorted(plan.failed.items()):
        lines.append(f"Cannot deliver: {scaled(n)} objects: {reason}")
    return "\n".join(lines)


def _ray_init() -> Any:
    import ray

    if ray.is_initialized():
        return ray
    # Under `ray job submit` the job's own runtime env already reaches every worker, and Ray refuses a driver
    # env that sets any of its variables again: forward only what the job does not set.
    job_env = _submitted_job_env_vars()
    env_vars = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV_PREFIXES) and k not in job_env}
    kwargs: dict[str, Any] = {"log_to_driver": True}
    if env_vars:
        kwargs["runtime_env"] = {"env_vars": env_vars}
    if not os.environ.get("RAY_ADDRESS"):
        # Plain `python jobs/replay.py`: start a local Ray of its own, lean. A bare `ray.init()` would instead join
        # the head that Ray last recorded as started on this machine (/tmp/ray/ray_current_cluster), even one
        # long gone, and spend minutes trying to reach its GCS; "local" always starts a new instance. A cluster
        # is joined only when RAY_ADDRESS names one (`ray job submit` and KubeRay's RayJob set it).
        kwargs.update(address="local", include_dashboard=False, configure_logging=False)
    ray.init(**kwargs)
    return ray


def _submitted_job_env_vars() -> set[str]:
    """The variables the runtime env of the submitted job (if this driver is one) sets."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "")
    try:
        config = orjson.loads(raw) if raw else {}
    except orjson.JSONDecodeError:
        return set()
    runtime_env = config.get("runtime_env") or {} if isinstance(config, dict) else {}
    env_vars = runtime_env.get("env_vars") if isinstance(runtime_env, dict) else None
    return set(env_vars) if isinstance(env_vars, dict) else set()


def default_workers(env: Mapping[str, str] | None = None) -> int:
    """REPLAY_WORKERS when the RayJob sets it (what its cluster can grow to); else one worker per CPU, of the
    Ray cluster when joining one (RAY_ADDRESS), or of this machine."""
    env = os.environ if env is None else env
    explicit = env.get(WORKERS_ENV, "").strip()
    if explicit:
        try:
            n = int(explicit)
        except ValueError:
            n = 0
        if n < 1:
            raise ConfigError(f"{WORKERS_ENV} must be a positive integer, not {explicit!r}")
        return n
    if env.get("RAY_ADDRESS"):
        return max(1, int(_ray_init().cluster_resources().get("CPU", 1)))
    return max(1, os.cpu_count() or 1)


def report_target(target: str, started: datetime, bucket: str = "") -> str:
    """The report's file or URI; a target ending in / is a prefix, and the report is named by its start.
    `{bucket}` stands for the central bucket, so a manifest names its reports/ prefix without repeating it."""
    target = target.replace("{bucket}", bucket)
    if target.endswith("/"):
        return f"{target}replay-{started:%Y%m%dT%H%M%SZ}.json"
    return target


def run(opts: ReplayOptions, settings: Settings, out: TextIO = sys.stdout) -> int:
    """Run one replay; returns the process exit code (0: all deliverable delivered, 1: some failed).

    With `replay_request` the run is that redelivery request (CONTRACTS.md §9): it marks it running, writes
    its progress while it goes and its end (state and the report's totals) when it ends, whatever the end."""
    if opts.replay_request is None:
        return _run(opts, settings, out, None)
    if len(opts.tenants) != 1 or opts.all_tenants or opts.dry_run:
        print("error: --replay-request runs one request: one --tenant, not a dry run", file=sys.stderr)
        return EXIT_USAGE
    settings.require("replay_table")
    recorder = RequestRecorder(ReplayStore(settings.replay_table), opts.tenants[0], opts.replay_request)
    if not recorder.start():
        request = opts.replay_request
        print(f"error: replay request {request} is not pending: it was stopped or has ended", file=sys.stderr)
        return EXIT_USAGE
    try:
        return _run(opts, settings, out, recorder)
    except BaseException as exc:  # whatever ended the run early: the request says so, then the exit code does
        recorder.finish(State.FAILED, error=f"{type(exc).__name__}: {str(exc)[:500]}")
        raise


def _run(opts: ReplayOptions, settings: Settings, out: TextIO, recorder: RequestRecorder | None) -> int:
    if opts.max_requests_per_second and not traits_of(opts.sink).fills_batches:
        print(f"error: --max-requests-per-second: the {opts.sink} sink makes its own requests", file=sys.stderr)
        return EXIT_USAGE
    needed = ["central_role_arn", "ledger_table"] if writes_ledger(opts.sink) else []
    settings.require("bucket", "tenant_table", *needed)
    environment.check(settings, bucket=True, tenant_table=True, ledger_table=True, sink=opts.sink)
    if opts.all_tenants:
        tenant_ids = TenantDirectory(settings.tenant_table).tenant_ids()
        opts = replace(opts, tenants=tuple(tenant_ids))
        log.info("all tenants", extra={"tenants": tenant_ids})
    workers = opts.workers or default_workers()
    tenants = resolve_tenants(TenantDirectory(settings.tenant_table, settings.tenant_cache_ttl_s), opts.tenants)
    unmatched = unmatched_deliveries(opts, tenants)
    if unmatched:
        names, tenants_named = ", ".join(unmatched), ", ".join(opts.tenants)
        print(f"error: --delivery {names} names no delivery of {tenants_named}", file=sys.stderr)
        return EXIT_USAGE
    started = datetime.now(UTC)
    report = _replay(opts, settings, workers, tenants, out, recorder)
    if opts.dry_run:
        print("\nDry run: nothing was delivered.", file=out)
        return report.exit_code
    doc = report.to_dict()
    print("\n" + report.summary_table(), file=out)
    print("\n" + report.deliveries_table(), file=out)
    print(
        f"\n{doc['objects_delivered']:,} objects, {doc['events_delivered']:,} events delivered in {doc['duration_s']}s "
        f"({doc['events_per_s']:,.0f} events/s); {doc['objects_failed_count']:,} objects failed",
        file=out,
    )
    for f in doc["objects_failed"][:20]:
        print(f"  FAILED {f['key']}: {f['reason']}", file=out)
    for f in doc["prefixes_failed"][:20]:
        print(f"  NOT LISTED {f['key']}: {f['reason']}", file=out)
    target = report_target(opts.report_path, started, settings.bucket) if opts.report_path else None
    if target is not None:
        storage.write_bytes(target, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        print(f"Report written to {target}", file=out)
    if report.stopped == "cap":
        print(f"Stopped at the cap of {opts.max_events:,} events (--max-events): run again for the rest.", file=out)
    if recorder is not None:
        _record_end(recorder, report, doc, target)
    return report.exit_code


def _record_end(recorder: RequestRecorder, report: ReplayReport, doc: Mapping[str, Any], target: str | None) -> None:
    """The request's end: stopped (by its cap or a stop request), succeeded, or failed (objects failed)."""
    state = State.FAILED if report.exit_code not in (0, 130) else State.SUCCEEDED
    if report.stopped is not None:
        state = State.STOPPED
    summary = {
        "location": target,
        "events_delivered": doc["events_delivered"],
        "objects_delivered": doc["objects_delivered"],
        "objects_failed": doc["objects_failed_count"],
        "stopped_by": report.stopped,
    }
    progress = {
        "objects_done": report.objects_done,
        "objects_planned": report.plan.objects_to_deliver,
        "events_delivered": doc["events_delivered"],
    }
    recorder.finish(state, summary, progress=progress)


def _survey_spec(
    opts: ReplayOptions, settings: Settings, tenants: Mapping[str, Tenant | str], now: datetime
) -> tuple[SurveySpec, PlanTotals, list[str]]:
    """What the listing needs, the plan's empty figures, and the tenants' prefixes. The top level is one LIST
    call, made here; everything below runs on a backend."""
    routing = routing_for(opts)
    flt = listing_filter(opts)
    totals = window_totals(opts.since, opts.until, now)
    prefixes, totals.list_calls = tenant_prefixes(aws.client("s3"), settings.bucket, flt)
    ledger_table = settings.ledger_table if routing.use_ledger else ""
    return SurveySpec(settings.bucket, flt, tenants, routing, now, ledger_table), totals, list(prefixes)


@dataclass
class _Deadline:
    at: float
    requested: bool = False


def estimate(
    opts: ReplayOptions, settings: Settings, tenants: Mapping[str, Tenant | str], seconds: float
) -> PlanTotals:
    """The dry run's figures, for a redelivery request's estimate: listed on threads of this process (no Ray),
    and bounded: listing stops after `seconds`, and the figures then say `listing_complete` false."""
    spec, totals, prefixes = _survey_spec(opts, settings, tenants, datetime.now(UTC))
    backend = LocalBackend(Surveyor(spec))
    deadline = _Deadline(time.monotonic() + seconds)

    def tick() -> None:
        deadline.requested = deadline.requested or time.monotonic() >= deadline.at

    scheduler = Scheduler(backend, totals, ReplayReport(totals), UnitPacker(1), spec.filter, on_progress=tick)
    try:
        scheduler.run(prefixes, deadline)
    finally:
        backend.close()
    return totals


def _replay(
    opts: ReplayOptions,
    settings: Settings,
    workers: int,
    tenants: Mapping[str, Tenant | str],
    out: TextIO,
    recorder: RequestRecorder | None = None,
) -> ReplayReport:
    """List and deliver (or, in a dry run, list and plan), printing the plan once the window is listed."""
    spec, totals, prefixes = _survey_spec(opts, settings, tenants, datetime.now(UTC))
    flt = spec.filter
    # What the run delivers moves each delivery's status (pipeline.status): folded in by the driver from the
    # results the workers hand back, one process, so one write per delivery per 30 s; the rest at the end.
    status = (
        None
        if opts.dry_run or not writes_ledger(opts.sink)
        else status_recorder(settings, TenantDirectory(settings.tenant_table))
    )
    report = ReplayReport(totals, observer=status.observe if status is not None else None)
    backend, cap = _backend(opts, settings, workers, spec)
    bar = _progress(opts)
    interrupt = _Interrupt()

    def listed() -> None:
        print(render_plan(totals, opts, workers), file=out, flush=True)
        log.info("window listed", extra={"objects": totals.objects_to_deliver, "units": totals.work_units})

    def progress() -> None:
        events = report.total("events_delivered")
        if opts.max_events is not None and not interrupt.requested and _cap_reached(cap, events, opts.max_events):
            log.info("cap reached", extra={"max_events": opts.max_events, "events_delivered": events})
            report.stopped = "cap"
            interrupt.requested = True  # the same clean stop as a signal's: between objects
        # Before the listing finds anything, the request keeps its estimate's plan rather than a 0.
        if recorder is not None and (totals.objects_to_deliver or totals.listing_complete):
            recorder.progress(report.objects_done, totals.objects_to_deliver, events)
        if bar is not None:
            bar.total = totals.objects_to_deliver
            bar.n = report.objects_done
            bar.set_description("replay" if totals.listing_complete else "replay (listing)", refresh=False)
            bar.set_postfix(
                listed=totals.objects_listed,
                events=report.total("events_delivered"),
                failed=report.failed.count,
                refresh=False,
            )
            bar.refresh()

    scheduler = Scheduler(
        backend, totals, report, UnitPacker(workers), flt, sample=opts.sample, on_listed=listed, on_progress=progress
    )
    log.info("replay started", extra={"workers": backend.workers, "sink": opts.sink, "dry_run": opts.dry_run})
    if status is not None:
        status.start()
    try:
        scheduler.run(prefixes, interrupt)
    finally:
        interrupt.restore()
        if interrupt.requested and report.stopped is None:
            report.stopped = "request"  # SIGINT/SIGTERM: an operator's, or Ray's stop_job
        # A cap is the run's planned end, not an interruption: it exits 0 (or 1 for failures).
        report.interrupted = interrupt.requested and report.stopped != "cap"
        if bar is not None:
            bar.close()
        backend.close()
        if status is not None:
            status.close()
    if not totals.listing_complete:
        print("Listing was interrupted; the plan covers what was listed:", file=out)
        listed()
    return report


def _cap_reached(cap: Any | None, events_delivered: int, limit: int) -> bool:
    """Whether the run's --max-events is reached: by the events its workers sent (counted per batch, so before
    the units that hold them end), or by those the report has."""
    if events_delivered >= limit:
        return True
    if cap is None:
        return False
    import ray

    return bool(ray.get(cap.reached.remote()))


def _backend(opts: ReplayOptions, settings: Settings, workers: int, spec: SurveySpec) -> tuple[Backend, Any | None]:
    """The backend, and the run's shared --max-events counter (a Ray actor) when it has a cap."""
    if opts.dry_run and not os.environ.get("RAY_ADDRESS"):
        return LocalBackend(Surveyor(spec)), None
    _ray_init()
    from pipeline.replay.workers import CapKeeper, DeliveryWorker, RateLimiter, RayBackend, actor_class, worker_options

    window = TimeWindow(to_ms(opts.since), to_ms(opts.until))
    limits = (opts.max_events_per_second, opts.max_requests_per_second)
    limiter = actor_class(RateLimiter).remote(*limits) if any(limits) and not opts.dry_run else None
    cap = actor_class(CapKeeper).remote(opts.max_events) if opts.max_events and not opts.dry_run else None

    def make_worker() -> Any:
        return (
            actor_class(DeliveryWorker)
            .options(**worker_options(opts.worker_memory_mib))
            .remote(
                settings,
                opts.sink,
                window,
                opts.redeliver,
                limiter,
                opts.worker_memory_mib,
                opts.deliveries,
                cap,
            )
        )

    return RayBackend(spec, workers, 0 if opts.dry_run else workers, make_worker), cap


class _Interrupt:
    """SIGINT/SIGTERM ask for a clean stop instead of killing the driver mid-object."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:  # a second signal means "now"
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _progress(opts: ReplayOptions) -> Any:
    """A bar whose total grows as the listing finds work: the window's size is not known at the start."""
    show = sys.stderr.isatty() if opts.progress is None else opts.progress
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=0, unit="obj", unit_scale=True, desc="replay (listing)", file=sys.stderr)
