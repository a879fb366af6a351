"""Manual mode: one SQS body (SNS envelope or S3 event) in, the delivery result as JSON out.

The quickest way for an operator to reproduce one object: paste the body of a message from the DLQ, or
a hand-written S3 event, and read exactly what delivery made of it. A whole SQS message as
`aws sqs receive-message` prints it (`{"Body": ...}`) or as Lambda sees it (`{"body": ...}`) works too.
"""

from __future__ import annotations

from typing import Any

import orjson

from pipeline.consumer.events import unwrap_sqs_message
from pipeline.consumer.processor import MessageOutcome, MessageProcessor

EXIT_OK = 0
EXIT_FAILED = 1


def run_manual(processor: MessageProcessor, text: str | bytes) -> tuple[dict[str, Any], int]:
    """(the JSON report, exit code): 0 when everything was delivered or skipped, 1 when anything failed."""
    message_id, body = "manual", text
    try:
        unwrapped = unwrap_sqs_message(orjson.loads(text))
    except orjson.JSONDecodeError:
        unwrapped = None  # the processor reports a body that is not JSON, with a sample of it
    if unwrapped is not None:
        message_id, body = unwrapped[0] or message_id, unwrapped[1]
    outcome: MessageOutcome = processor.process(body, message_id)
    return outcome.to_dict(), EXIT_FAILED if outcome.failed else EXIT_OK
