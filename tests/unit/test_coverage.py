"""Event-time coverage (pipeline/coverage.py) against a model: the set of instants it holds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipeline.coverage import EMPTY, MAX_MS, MIN_MS, WHOLE, Coverage

SPAN = 40  # instants 0..SPAN-1 are enough to meet every overlap, touch and nesting of a few intervals

intervals = st.lists(st.tuples(st.integers(0, SPAN), st.integers(0, SPAN)), max_size=5)


def model(c: Coverage) -> set[int]:
    return {t for t in range(-1, SPAN + 1) if c.holds(t)}


def points(raw: list[tuple[int, int]]) -> set[int]:
    return {t for lo, hi in raw for t in range(lo, hi)}


@given(intervals)
def test_of_normalises_to_sorted_disjoint_non_touching_intervals(raw: list[tuple[int, int]]) -> None:
    c = Coverage.of(raw)
    assert model(c) == points(raw)
    assert all(lo < hi for lo, hi in c.intervals)
    assert all(a[1] < b[0] for a, b in zip(c.intervals, c.intervals[1:], strict=False))


@given(intervals, intervals)
def test_union_minus_and_covers_agree_with_sets(a_raw: list[tuple[int, int]], b_raw: list[tuple[int, int]]) -> None:
    a, b = Coverage.of(a_raw), Coverage.of(b_raw)
    assert model(a.union(b)) == points(a_raw) | points(b_raw)
    assert model(a.minus(b)) == points(a_raw) - points(b_raw)
    assert a.covers(b) == (points(b_raw) <= points(a_raw))
    assert a.minus(b) == Coverage.of(a.minus(b).intervals)  # already normal


def test_whole_and_empty() -> None:
    assert WHOLE.whole and not EMPTY and not EMPTY.whole
    assert WHOLE.holds(MIN_MS) and WHOLE.holds(0) and not WHOLE.holds(MAX_MS)
    assert WHOLE.covers(Coverage.window(5, 10)) and not Coverage.window(5, 10).covers(WHOLE)
    assert Coverage.window(None, None) == WHOLE
    assert WHOLE.minus(Coverage.window(0, 10)) == Coverage(((MIN_MS, 0), (10, MAX_MS)))
    assert Coverage.window(0, 10).union(Coverage.window(10, 20)) == Coverage.window(0, 20)  # adjacent merge
