"""What the click commands of `pipeline.commands` (the console scripts) share: time parameters, help layout, and
the one-line exit on a bad environment. The exit codes themselves are `pipeline.exits`."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import click
from botocore.exceptions import BotoCoreError, ClientError

from pipeline.environment import explain
from pipeline.exits import EXIT_CONFIG
from pipeline.settings import ConfigError
from pipeline.timespec import parse_time

CONTEXT_SETTINGS: dict[str, Any] = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


class TimeParam(click.ParamType[datetime, str | datetime]):
    """A date, an ISO timestamp, 'now', or a duration back from now (see pipeline.timespec)."""

    name = "TIME"

    def convert(self, value: str | datetime, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        try:
            return parse_time(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


@contextmanager
def exit_on_bad_environment(log_level: str = "INFO") -> Iterator[None]:
    """A missing setting or a wrong AWS environment: one line naming it and the fix, and exit code 3.

    The traceback is printed only at --log-level DEBUG: an operator needs the line, a developer the stack.
    Errors that no environment explains propagate unchanged.
    """
    try:
        yield
    except ConfigError as exc:
        _fail(str(exc), log_level)
    except (ClientError, BotoCoreError) as exc:
        line = explain(exc)
        if line is None:
            raise
        _fail(line, log_level)


def _fail(line: str, log_level: str) -> None:
    if logging.getLevelName(log_level.upper()) == logging.DEBUG:
        traceback.print_exc(file=sys.stderr)
    click.echo(f"error: {line}", err=True)
    sys.exit(EXIT_CONFIG)
