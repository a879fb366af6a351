"""Time values people type on a command line: dates, ISO timestamps, and durations back from now."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

HELP = (
    "a date (2024-01-01), an ISO timestamp (2024-01-01T06:30:00Z), 'now', or a duration back from now (30m, 6h, 7d, 2w)"
)


def parse_time(value: str, now: datetime | None = None) -> datetime:
    """An aware UTC datetime for `value`; naive dates and timestamps are taken as UTC."""
    now = now or datetime.now(UTC)
    text = value.strip()
    if text.lower() == "now":
        return now
    m = _RELATIVE.match(text)
    if m:
        return now - timedelta(**{_UNITS[m.group(2).lower()]: float(m.group(1))})
    try:
        dt = datetime.fromisoformat(text.replace("z", "Z"))
    except ValueError:
        raise ValueError(f"cannot read {value!r} as a time: use {HELP}") from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def to_ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def iso_z(dt: datetime, timespec: str = "milliseconds") -> str:
    """UTC ISO 8601 with a Z, to `timespec`: how every time the pipeline writes for others is spelled."""
    return dt.astimezone(UTC).isoformat(timespec=timespec).replace("+00:00", "Z")
