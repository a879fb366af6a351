"""The event-driven path: SQS notifications (or a Lambda batch, or one event on stdin) to `Deliverer`.

- `events`: unwrap an SQS body (SNS envelope or raw S3 event) into object references (CONTRACTS.md §6).
- `processor`: one message end to end, with the ack decision every mode shares.
- `sqs`: the long-running poll loop with a bounded pool, visibility heartbeat, deletion and drain.
- `lambda_handler`: `batchItemFailures` for the messages to retry.
- `manual`: one body from stdin, the result as JSON.
- `metrics`: Prometheus metrics and the /metrics + /healthz server.
"""
