"""Event-time coverage: which part of an object's events a delivery has received (CONTRACTS.md §10).

A `Coverage` is a set of half-open millisecond intervals [lo, hi), kept sorted, disjoint and merged.
An event with timestamp t is covered when some interval holds t. A replay window is one interval; a
delivery that took the whole object (the consumer's) is `WHOLE`, the interval that holds every t.

Pure values, no I/O: the ledger stores and reads them, routing subtracts them, `sinks.cloudwatch.limits.prepare` filters
events by them. Each run of an event delivery sends exactly `scope - covered` and records `scope`, so the
union of what is recorded is what was sent, whatever the order or overlap of the runs.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass

# Outside any timestamp an event can carry (CONTRACTS §2 caps them to what a datetime can hold), so an
# interval with these bounds holds every event of an object.
MIN_MS = -(2**63)
MAX_MS = 2**63

Interval = tuple[int, int]


@dataclass(frozen=True)
class Coverage:
    intervals: tuple[Interval, ...] = ()

    @staticmethod
    def of(intervals: Iterable[Interval]) -> Coverage:
        """Normalised: empty intervals dropped, the rest sorted and merged (touching ones too)."""
        merged: list[list[int]] = []
        for lo, hi in sorted(i for i in intervals if i[0] < i[1]):
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        return Coverage(tuple((lo, hi) for lo, hi in merged))

    @staticmethod
    def window(since_ms: int | None, until_ms: int | None) -> Coverage:
        """[since, until), either end open when None."""
        return Coverage.of([(MIN_MS if since_ms is None else since_ms, MAX_MS if until_ms is None else until_ms)])

    @staticmethod
    def outside(lo: int, hi: int) -> Coverage:
        """Every instant but [lo, hi)."""
        return Coverage.of([(MIN_MS, lo), (hi, MAX_MS)])

    def __bool__(self) -> bool:
        return bool(self.intervals)

    @property
    def whole(self) -> bool:
        return self.intervals == ((MIN_MS, MAX_MS),)

    def union(self, other: Coverage) -> Coverage:
        if not other:
            return self
        if not self:
            return other
        return Coverage.of(self.intervals + other.intervals)

    def minus(self, other: Coverage) -> Coverage:
        """The part of this coverage that `other` does not hold."""
        if not other or not self:
            return self
        out: list[Interval] = []
        for lo, hi in self.intervals:
            start = lo
            for olo, ohi in other.intervals:
                if ohi <= start or olo >= hi:
                    continue
                if olo > start:
                    out.append((start, olo))
                start = max(start, ohi)
                if start >= hi:
                    break
            if start < hi:
                out.append((start, hi))
        return Coverage(tuple(out))

    def covers(self, other: Coverage) -> bool:
        """Whether every instant of `other` is held here."""
        return not other.minus(self)

    def holds(self, t: int) -> bool:
        i = bisect_right(self.intervals, (t, MAX_MS + 1)) - 1
        return i >= 0 and self.intervals[i][0] <= t < self.intervals[i][1]


EMPTY = Coverage()
WHOLE = Coverage(((MIN_MS, MAX_MS),))


def encode_bound(ms: int) -> str:
    return "*" if ms in (MIN_MS, MAX_MS) else str(ms)


def decode_bound(text: str, open_end: int) -> int:
    return open_end if text == "*" else int(text)
