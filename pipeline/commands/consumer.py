"""`log-consumer`: deliver objects as their S3 notifications arrive: a long-running SQS consumer, a Lambda
handler, or one event by hand.

    log-consumer --mode sqs                  # a pod (k8s/consumer); SIGTERM drains
    log-consumer --mode manual < event.json  # reproduce one object; prints the result as JSON
    python -m awslambdaric pipeline.commands.consumer.lambda_handler  # a Lambda container image

`python -m jobs.consumer` (a checkout) runs the same command. The logic lives in `pipeline.consumer`; this
module only reads options.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import click

from pipeline import logs
from pipeline.circuits import DEFAULT_BASE_S as DEFAULT_CIRCUIT_BASE_S
from pipeline.circuits import DEFAULT_CAP_S as DEFAULT_CIRCUIT_CAP_S
from pipeline.circuits import DEFAULT_HOLD_BASE_S, SQS_MAX_VISIBILITY_S
from pipeline.cli import CONTEXT_SETTINGS, exit_on_bad_environment, log_level_option
from pipeline.consumer import lambda_handler as _lambda
from pipeline.consumer.processor import DEFAULT_THROTTLE_ATTEMPTS, SINKS
from pipeline.exits import EXIT_OK
from pipeline.memory import DEFAULT_CONSUMER_BUDGET_MIB

MODES = ("sqs", "lambda", "manual")
# What a Lambda container image runs (lambda-stack.yaml's ImageConfig.Command): the function below.
LAMBDA_HANDLER = "pipeline.commands.consumer.lambda_handler"


def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, list[dict[str, str]]]:
    """What a Lambda container image points at: `LAMBDA_HANDLER`."""
    return _lambda.handler(event, context)


@click.command(
    context_settings=CONTEXT_SETTINGS,
    epilog=(
        "Settings from the environment: SQS_QUEUE_URL (sqs mode), TENANT_CONFIG_TABLE, DELIVERY_LEDGER_TABLE, "
        "CENTRAL_LOG_DISTRIBUTION_ROLE_ARN, AWS_REGION, AWS_ENDPOINT_URL (and AWS_ENDPOINT_URL_<SERVICE>), "
        "AWS_PROFILE; every option also reads the env var shown. Lambda mode inside Lambda "
        "(AWS_LAMBDA_RUNTIME_API set) starts the runtime interface client; outside it reads one Lambda SQS "
        "event from stdin and prints the response. Exit codes: 0 clean shutdown (sqs), or everything "
        "delivered or skipped (manual, lambda); 1 something failed (manual), or an unexpected error; "
        "2 bad usage; 3 missing or invalid configuration, or a wrong AWS environment (a bucket, table or queue "
        "that does not exist or may not be read, no credentials, an unreachable endpoint: one line naming it, "
        "the traceback at --log-level DEBUG). See docs/CONSUMER.md."
    ),
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    envvar="EXECUTION_MODE",
    default="sqs",
    show_default=True,
    show_envvar=True,
    help="sqs: long-running queue consumer; lambda: the Lambda handler; manual: one event from stdin.",
)
@click.option("--queue-url", envvar="SQS_QUEUE_URL", help="Queue to consume (sqs mode). [default: $SQS_QUEUE_URL]")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    envvar="CONSUMER_WORKERS",
    default=8,
    show_default=True,
    show_envvar=True,
    help="Messages delivered concurrently (the bounded pool).",
)
@click.option(
    "--max-messages",
    type=click.IntRange(1, 10),
    envvar="MAX_MESSAGES",
    default=10,
    show_default=True,
    show_envvar=True,
    help="Messages per ReceiveMessage call (never more than the free workers).",
)
@click.option(
    "--wait-time",
    type=click.IntRange(0, 20),
    envvar="POLL_WAIT_SECONDS",
    default=20,
    show_default=True,
    show_envvar=True,
    help="Long-poll wait in seconds.",
)
@click.option(
    "--visibility-timeout",
    type=click.IntRange(1, 43200),
    envvar="VISIBILITY_TIMEOUT_SECONDS",
    show_envvar=True,
    help="Visibility the heartbeat keeps extending in-flight messages to. [default: the queue's own]",
)
@click.option(
    "--heartbeat-interval",
    type=click.FloatRange(min=0, min_open=True),
    envvar="HEARTBEAT_INTERVAL_SECONDS",
    show_envvar=True,
    help="Seconds between visibility extensions; must be below the visibility timeout. "
    "[default: a third of it, at most 60]",
)
@click.option(
    "--retry-delay",
    type=click.IntRange(0, 43200),
    envvar="RETRY_DELAY_SECONDS",
    default=60,
    show_default=True,
    show_envvar=True,
    help="After a recoverable failure, the message comes back after this many seconds.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    envvar="DRAIN_TIMEOUT_SECONDS",
    default=45.0,
    show_default=True,
    show_envvar=True,
    help="On SIGTERM, finish in-flight messages for at most this long, then release the rest.",
)
@click.option(
    "--put-attempts",
    type=click.IntRange(min=1),
    envvar="PUT_ATTEMPTS",
    show_envvar=True,
    help="Attempts per PutLogEvents batch on throttling/5xx before the object counts as failed. [default: 8]",
)
@click.option(
    "--throttle-attempts",
    type=click.IntRange(min=1),
    envvar="THROTTLE_ATTEMPTS",
    default=DEFAULT_THROTTLE_ATTEMPTS,
    show_default=True,
    show_envvar=True,
    help="Throttled attempts per put before the object fails and its destination backs off (sqs, lambda): "
    "the back-off, not a worker, waits out a tenant's throttling.",
)
@click.option(
    "--circuit-wait",
    type=click.FloatRange(min=0.1, max=DEFAULT_CIRCUIT_CAP_S),
    envvar="CIRCUIT_WAIT_SECONDS",
    default=DEFAULT_CIRCUIT_BASE_S,
    show_default=True,
    show_envvar=True,
    help="How long a destination's circuit first stays open after throttling or a recoverable failure, doubled "
    f"after each failed probe up to {DEFAULT_CIRCUIT_CAP_S:.0f} s (sqs).",
)
@click.option(
    "--backoff-delay",
    type=click.FloatRange(min=0, max=SQS_MAX_VISIBILITY_S),
    envvar="BACKOFF_DELAY_SECONDS",
    default=DEFAULT_HOLD_BASE_S,
    show_default=True,
    show_envvar=True,
    help="A message held for a destination in back-off comes back after at least this long, x4 per receive "
    "(at most 12 h), or when the destination may be probed if later (sqs, lambda).",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    envvar="METRICS_PORT",
    default=8080,
    show_default=True,
    show_envvar=True,
    help="Port for /metrics and /healthz (sqs mode); 0 picks a free one.",
)
@click.option(
    "--memory-budget",
    "memory_budget_mib",
    type=click.IntRange(min=16),
    envvar="CONSUMER_MEMORY_MIB",
    default=DEFAULT_CONSUMER_BUDGET_MIB,
    show_default=True,
    show_envvar=True,
    help="MiB of decoded objects the workers hold at once (about 12x an object's gzip size); a worker waits "
    "for room beyond it. Size the pod for this plus about 300 MiB.",
)
# S104: the metrics port is scraped from other pods; the NetworkPolicy limits who reaches it.
@click.option("--metrics-host", envvar="METRICS_HOST", default="0.0.0.0", show_default=True, help="Bind address.")  # noqa: S104
@click.option("--redeliver", is_flag=True, help="manual: deliver even when the ledger says it was delivered.")
@click.option(
    "--sink",
    type=click.Choice(SINKS),
    default="cloudwatch",
    show_default=True,
    help="manual: null decodes and batches but sends nothing and writes no ledger entry.",
)
@log_level_option("INFO", envvar="LOG_LEVEL")
def main(
    mode: str,
    queue_url: str | None,
    workers: int,
    max_messages: int,
    wait_time: int,
    visibility_timeout: int | None,
    heartbeat_interval: float | None,
    retry_delay: int,
    drain_timeout: float,
    put_attempts: int | None,
    throttle_attempts: int,
    circuit_wait: float,
    backoff_delay: float,
    metrics_port: int,
    metrics_host: str,
    redeliver: bool,
    sink: str,
    log_level: str,
    memory_budget_mib: int,
) -> None:
    """Deliver each object named by an S3 notification to its tenant's CloudWatch Logs."""
    logs.setup(log_level)
    # Imported here so `--help` and the Lambda entry point stay fast to import.
    import orjson

    from pipeline.consumer.manual import run_manual
    from pipeline.consumer.processor import MessageProcessor
    from pipeline.consumer.sqs import SqsOptions, serve
    from pipeline.delivery.engine import build_deliverer
    from pipeline.memory import MemoryBudget
    from pipeline.settings import Settings
    from pipeline.sinks import writes_ledger

    settings = Settings.from_env().with_overrides(queue_url=queue_url)
    if mode != "manual" and (sink != "cloudwatch" or redeliver):
        raise click.UsageError("--sink and --redeliver are for manual mode only")
    with exit_on_bad_environment(log_level):
        if mode == "sqs":
            options = SqsOptions(
                queue_url=settings.queue_url,
                workers=workers,
                max_messages=max_messages,
                wait_time_s=wait_time,
                visibility_timeout_s=visibility_timeout,
                heartbeat_interval_s=heartbeat_interval,
                retry_delay_s=retry_delay,
                drain_timeout_s=drain_timeout,
            )
            sys.exit(
                serve(
                    settings,
                    options,
                    metrics_host=metrics_host,
                    metrics_port=metrics_port,
                    put_attempts=put_attempts,
                    memory_budget_mib=memory_budget_mib,
                    throttle_attempts=throttle_attempts,
                    backoff_delay_s=backoff_delay,
                    circuit_base_s=circuit_wait,
                )
            )
        if mode == "lambda":
            if os.environ.get("AWS_LAMBDA_RUNTIME_API"):
                # Inside Lambda with this CLI as the entry point: hand over to the runtime interface client.
                # S606: hands this process over to the Lambda runtime client, a fixed argv.
                os.execvp(sys.executable, [sys.executable, "-m", "awslambdaric", LAMBDA_HANDLER])  # noqa: S606
            event = orjson.loads(sys.stdin.buffer.read() or b"{}")
            # The handler prints its EMF metric lines on stdout, where Lambda's log capture wants them; here
            # stdout is the answer, for scripts, so they go to stderr.
            with contextlib.redirect_stdout(sys.stderr):
                answer = lambda_handler(event, None)
            click.echo(orjson.dumps(answer, option=orjson.OPT_INDENT_2).decode())
            sys.exit(EXIT_OK)
        # Everything the deliverer will need too, so one error names every missing variable.
        settings.require(
            "bucket", "tenant_table", *(["central_role_arn", "ledger_table"] if writes_ledger(sink) else [])
        )
        # No startup reads here: manual mode answers a body that names no object without touching AWS, and
        # every delivery failure is in the report it prints.
        processor = MessageProcessor(
            build_deliverer(settings, sink=sink, source="manual", put_attempts=put_attempts, redeliver=redeliver),
            bucket=settings.bucket,
            budget=MemoryBudget(memory_budget_mib * 1024 * 1024),
        )
        report, code = run_manual(processor, sys.stdin.buffer.read())
        click.echo(orjson.dumps(report, option=orjson.OPT_INDENT_2, default=str).decode())
        sys.exit(code)


if __name__ == "__main__":
    main()
