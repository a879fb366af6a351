"""The replay job: list → plan → (dry run stops here) → deliver on Ray workers → report."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

import orjson

from pipeline import aws, environment, storage
from pipeline.cli import EXIT_USAGE
from pipeline.delivery import LEDGER_SKIP, Routing, TimeWindow
from pipeline.errors import NonRecoverableError
from pipeline.keys import DEFAULT_WRITE_SLACK, parse_key
from pipeline.ledger import Ledger
from pipeline.records import decode_events
from pipeline.replay.budget import DEFAULT_BUDGET_MIB
from pipeline.replay.listing import Listing, ListingFilter, list_window
from pipeline.replay.plan import Plan, WorkUnit, make_plan
from pipeline.replay.report import ReplayReport
from pipeline.settings import ConfigError, Settings
from pipeline.sinks import plan_traits, sink_names, traits_of, writes_ledger
from pipeline.tenants import DeliveryType, Tenant, TenantDirectory
from pipeline.timespec import to_ms

log = logging.getLogger("pipeline.replay")

SINKS = sink_names(DeliveryType.CLOUDWATCH)  # --sink picks CloudWatch deliveries' sink; S3 keeps its own

IN_FLIGHT_PER_WORKER = 2  # one running, one queued: workers never idle, the driver never holds the window
SAMPLE_OBJECTS = 3
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
    known = set(DeliveryType)
    for t in tenants.values():
        if isinstance(t, Tenant):
            known |= set(t.delivery_ids)
    return [d for d in opts.deliveries if d not in known]


def estimate_events_per_byte(s3: Any, bucket: str, listing: Listing) -> float:
    """Decode a few objects to estimate events per stored byte, for the plan's event estimate."""
    sample = [objs[0] for objs in listing.pods.values()][:SAMPLE_OBJECTS]
    events = size = 0
    for o in sample:
        body = s3.get_object(Bucket=bucket, Key=o.key)["Body"]
        events += sum(1 for _ in decode_events(body, 0))
        size += o.size
    return events / size if size else 0.0


def build_plan(opts: ReplayOptions, settings: Settings, workers: int, tenants: Mapping[str, Tenant | str]) -> Plan:
    s3 = aws.client("s3")
    flt = ListingFilter(
        tenants=opts.tenants,
        since=opts.since,
        until=opts.until,
        clusters=opts.clusters,
        applications=opts.applications,
        pods=opts.pods,
        slack=opts.slack,
    )
    listing = list_window(s3, settings.bucket, flt)
    routing = routing_for(opts)
    delivered: dict[str, frozenset[str]] = {}
    if routing.use_ledger and settings.ledger_table:
        ledger = Ledger(settings.ledger_table)
        for tenant in opts.tenants:
            delivered |= ledger.delivered_many(
                tenant, [(o.key, o.etag) for o in listing.objects if o.parsed.tenant == tenant]
            )
    per_byte = estimate_events_per_byte(s3, settings.bucket, listing)
    return make_plan(listing, tenants, delivered, opts.since, opts.until, workers, datetime.now(UTC), per_byte, routing)


def _mib(n: int) -> str:
    return f"{n / 1048576:,.1f} MiB"


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render_plan(plan: Plan, opts: ReplayOptions, workers: int) -> str:
    hours = (plan.until - plan.since).total_seconds() / 3600
    lines = [
        f"Replay plan for {', '.join(opts.tenants)}: {plan.since:%Y-%m-%dT%H:%M:%SZ} → {plan.until:%Y-%m-%dT%H:%M:%SZ}"
        f" ({hours:,.1f} h), sink={opts.sink}, workers={workers}",
        "",
    ]
    rows = [("tenant", "application", "objects", "bytes", "est. events", "already delivered")]
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
    lines += [
        "",
        f"Objects listed: {plan.objects_listed:,} in {plan.list_calls:,} LIST calls",
        f"To deliver: {plan.objects_to_deliver:,} objects ({_mib(plan.bytes_to_deliver)})"
        f" in {len(plan.units)} work units",
        f"Already delivered (ledger): {plan.skipped_ledger:,} objects"
        + (" — ignored, --redeliver" if opts.redeliver else ""),
    ]
    if plan.undeliverable_fraction > 0 and plan.has_event_deliveries:
        lines.append(
            f"WARNING: {plan.undeliverable_fraction:.0%} of the window is older than CloudWatch's 14-day limit "
            f"({plan.undeliverable_objects:,} objects written then). Those events cannot be delivered to "
            "CloudWatch; they will be counted as events_rejected_too_old. S3 deliveries have no age limit."
        )
    other_skips = [r for _, r in plan.skipped if r != LEDGER_SKIP]
    for reason in sorted(set(other_skips)):
        lines.append(f"Skipped: {other_skips.count(reason):,} objects: {reason}")
    reasons = [r for _, r in plan.failed]
    for reason in sorted(set(reasons)):
        lines.append(f"Cannot deliver: {reasons.count(reason):,} objects: {reason}")
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
        # Plain `python jobs/replay.py`: start a local Ray, lean.
        kwargs.update(include_dashboard=False, configure_logging=False)
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
    """Run one replay; returns the process exit code (0: all deliverable delivered, 1: some failed)."""
    if opts.max_requests_per_second and not traits_of(opts.sink).fills_batches:
        print(f"error: --max-requests-per-second: the {opts.sink} sink makes its own requests", file=sys.stderr)
        return EXIT_USAGE
    needed = ["central_role_arn", "ledger_table"] if writes_ledger(opts.sink) else []
    settings.require("bucket", "tenant_table", *needed)
    environment.check(settings, bucket=True, tenant_table=True, ledger_table=True)
    if opts.all_tenants:
        tenants = TenantDirectory(settings.tenant_table).tenant_ids()
        opts = replace(opts, tenants=tuple(tenants))
        log.info("all tenants", extra={"tenants": tenants})
    workers = opts.workers or default_workers()
    tenants = resolve_tenants(TenantDirectory(settings.tenant_table, settings.tenant_cache_ttl_s), opts.tenants)
    unmatched = unmatched_deliveries(opts, tenants)
    if unmatched:
        names, tenants_named = ", ".join(unmatched), ", ".join(opts.tenants)
        print(f"error: --delivery {names} names no delivery of {tenants_named}", file=sys.stderr)
        return EXIT_USAGE
    started = datetime.now(UTC)
    plan = build_plan(opts, settings, workers, tenants)
    print(render_plan(plan, opts, workers), file=out, flush=True)
    report = ReplayReport(plan)
    if not opts.dry_run and plan.units:
        _deliver(plan, opts, settings, workers, report)
    if opts.dry_run:
        print("\nDry run: nothing was delivered.", file=out)
        return report.exit_code
    doc = report.to_dict()
    print("\n" + report.summary_table(), file=out)
    print("\n" + report.deliveries_table(), file=out)
    print(
        f"\n{doc['objects_delivered']:,} objects, {doc['events_delivered']:,} events delivered in {doc['duration_s']}s "
        f"({doc['events_per_s']:,.0f} events/s); {len(doc['objects_failed'])} objects failed",
        file=out,
    )
    for f in doc["objects_failed"][:20]:
        print(f"  FAILED {f['key']}: {f['reason']}", file=out)
    if opts.report_path:
        target = report_target(opts.report_path, started, settings.bucket)
        storage.write_bytes(target, orjson.dumps(doc, option=orjson.OPT_INDENT_2))
        print(f"Report written to {target}", file=out)
    return report.exit_code


def _deliver(plan: Plan, opts: ReplayOptions, settings: Settings, workers: int, report: ReplayReport) -> None:
    ray = _ray_init()
    from pipeline.replay.workers import DeliveryWorker, RateLimiter, worker_options

    window = TimeWindow(to_ms(opts.since), to_ms(opts.until))
    limits = (opts.max_events_per_second, opts.max_requests_per_second)
    limiter = RateLimiter.remote(*limits) if any(limits) else None
    n = min(workers, len(plan.units))
    actors = [
        DeliveryWorker.options(**worker_options(opts.worker_memory_mib)).remote(
            settings, opts.sink, window, opts.redeliver, limiter, opts.worker_memory_mib, opts.deliveries
        )
        for _ in range(n)
    ]
    queue: list[WorkUnit] | None = list(reversed(plan.units))
    pending: dict[Any, tuple[Any, WorkUnit]] = {}
    bar = _progress(plan, opts)
    log.info("replay started", extra={"units": len(plan.units), "workers": n, "sink": opts.sink})

    def submit(actor: Any) -> None:
        if not queue:
            return
        unit = queue.pop()
        pending[actor.run.remote(unit)] = (actor, unit)

    for actor in actors:
        for _ in range(IN_FLIGHT_PER_WORKER):
            if queue:
                submit(actor)
    interrupt = _Interrupt()
    try:
        while pending:
            if interrupt.requested and queue is not None:
                # Stop taking new units and ask workers to stop between objects; what they finished is in
                # the ledger, so a re-run resumes exactly from here.
                log.warning("interrupted: finishing the objects in flight", extra={"signal": interrupt.signal})
                for actor in actors:
                    actor.stop.remote()
                for unit in queue:
                    report.add_interrupted(unit.objects)
                queue = None
            done, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            if not done:
                continue
            ref = done[0]
            actor, unit = pending.pop(ref)
            try:
                results = ray.get(ref)
            except Exception as exc:  # a worker that died twice, or a bug: the unit's objects failed
                reason = f"worker failed on unit {unit.unit_id}: {type(exc).__name__}: {str(exc)[:300]}"
                log.error("unit failed", extra={"unit": unit.unit_id, "reason": reason})
                results = [
                    {"key": o.key, "tenant": parse_key(o.key).tenant, "status": "failed", "reason": reason}
                    for o in unit.objects
                ]
            for r in results:
                report.add(r)
            report.tick()
            if bar is not None:
                bar.update(unit.bytes)
                bar.set_postfix(
                    objects=report.objects_delivered,
                    events=report.total("events_delivered"),
                    ev_s=round(report.total("events_delivered") / max(1e-9, bar.format_dict["elapsed"])),
                    failed=len(report.failed),
                    refresh=False,
                )
            if queue:
                submit(actor)
    finally:
        interrupt.restore()
        report.interrupted = interrupt.requested
        if bar is not None:
            bar.close()
        for actor in actors:
            try:
                ray.get(actor.close.remote(), timeout=30)
            except Exception:  # closing is best effort; the job's outcome is already decided
                log.warning("worker did not close cleanly")


class _Interrupt:
    """SIGINT/SIGTERM ask for a clean stop instead of killing the driver mid-object."""

    def __init__(self) -> None:
        self.requested = False
        self.signal = 0
        self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:  # a second signal means "now"
            raise KeyboardInterrupt
        self.requested, self.signal = True, signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _progress(plan: Plan, opts: ReplayOptions) -> Any:
    show = sys.stderr.isatty() if opts.progress is None else opts.progress
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(total=plan.bytes_to_deliver, unit="B", unit_scale=True, desc="replay", file=sys.stderr)
