"""`python -m jobs.consumer ...`: the `log-consumer` command, and `jobs.consumer.lambda_handler` for Lambda.

A thin wrapper: the command is `pipeline.commands.consumer`, installed as the console script `log-consumer`.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipeline.commands.consumer import lambda_handler, main

__all__ = ["lambda_handler", "main"]

if __name__ == "__main__":
    main()
