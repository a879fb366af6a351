"""What the click CLIs in jobs/ share: time parameters, help layout, exit codes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import click

from pipeline.timespec import parse_time

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 110}

EXIT_OK = 0
EXIT_FAILED = 1  # some objects failed: the report says which and why
EXIT_USAGE = 2  # click's own code for bad usage
EXIT_CONFIG = 3  # a required setting is missing or wrong
EXIT_INTERRUPTED = 130


class TimeParam(click.ParamType):
    """A date, an ISO timestamp, 'now', or a duration back from now (see pipeline.timespec)."""

    name = "TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_time(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
