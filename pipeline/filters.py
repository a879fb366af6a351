"""Content filters of a delivery (CONTRACTS.md §3 `include` / `exclude`): regular expressions matched against the
message of each event.

Patterns are RE2 (`google-re2`), never Python's `re`: RE2 matches in time linear in the message whatever the
pattern, so a tenant's expression cannot stall a worker (Python's backtracking engine takes exponential time on
`(a+)+$` and the like). What RE2 cannot match in bounded time it refuses to compile: backreferences and
lookaround, the constructs that need backtracking. A pattern is also refused when it is longer than
`MAX_PATTERN_CHARS` or its compiled program exceeds `MAX_PROGRAM_BYTES` (`(x{1000}){1000}`), so neither memory nor
the automaton's size is the tenant's to choose.

`pattern_problem` is the one check (the delivery validation calls it, so the CLI, the API and the delivery path
refuse the same patterns with the same words); `content_filter` compiles a delivery's lists once per process
(cached by the lists themselves, so a `Delivery` stays a plain value that pickles to replay workers).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import re2

MAX_PATTERNS = 32  # per list
MAX_PATTERN_CHARS = 512
# RE2's own memory budget for one compiled pattern (its default is 8 MiB): well above any sane filter, far
# below what nested counted repetitions would take.
MAX_PROGRAM_BYTES = 1 << 20

_BACKREFERENCE = re2.compile(r"invalid escape sequence: \\\d")
_OPTIONS = re2.Options()
_OPTIONS.max_mem = MAX_PROGRAM_BYTES
_OPTIONS.log_errors = False


def _compile(pattern: str) -> Any:
    return re2.compile(pattern, _OPTIONS)


def pattern_problem(pattern: Any) -> str:
    """Why `pattern` cannot be a content filter, or '' when it can."""
    if not isinstance(pattern, str) or not pattern:
        return "must be a non-empty string (a regular expression)"
    if len(pattern) > MAX_PATTERN_CHARS:
        return f"{pattern[:80]!r}… is longer than {MAX_PATTERN_CHARS} characters"
    try:
        _compile(pattern)
    except re2.error as exc:
        raw = exc.args[0] if exc.args else b""
        detail = (raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)) or "not valid"
        if detail.startswith("invalid perl operator") or _BACKREFERENCE.search(detail):
            detail += "; backreferences and lookaround need backtracking, whose time is unbounded (RE2 syntax only)"
        return f"{pattern[:200]!r} is refused: {detail}"
    return ""


@dataclass(frozen=True)
class ContentFilter:
    """One delivery's include and exclude lists, compiled: an event is kept when some include pattern matches
    its message (or there is no include list) and no exclude pattern does."""

    include: Any  # one compiled alternation of the include patterns, or None
    exclude: Any  # the same for exclude

    def keeps(self, message: str) -> bool:
        if self.include is not None and self.include.search(message) is None:
            return False
        return self.exclude is None or self.exclude.search(message) is None

    def split(self, events: list[tuple[int, str]]) -> tuple[list[tuple[int, str]], int]:
        """(the events kept, how many were dropped)."""
        keeps = self.keeps
        kept = [e for e in events if keeps(e[1])]
        return kept, len(events) - len(kept)


def _alternation(patterns: Iterable[str]) -> Any:
    parts = [f"(?:{p})" for p in patterns]
    return _compile("|".join(parts)) if parts else None


@lru_cache(maxsize=1024)
def content_filter(include: tuple[str, ...], exclude: tuple[str, ...]) -> ContentFilter | None:
    """The compiled filter of a delivery, None when it has neither list. Patterns were checked when the delivery
    was validated (`pattern_problem`)."""
    if not include and not exclude:
        return None
    return ContentFilter(_alternation(include), _alternation(exclude))
