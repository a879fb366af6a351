"""Plain-text tables for the tenant CLI: left-aligned columns, two spaces apart, no trailing blanks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A row with fewer cells than `headers` is a note: its first cells line up with the columns and its last
    one (a reason) runs on without widening the table, so one long error does not push every row apart."""
    rows = [list(r) for r in rows]
    full = [r for r in rows if len(r) == len(headers)]
    widths = [max([len(h)] + [len(r[i]) for r in full]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        head = [c.ljust(w) for c, w in zip(cells[:-1], widths, strict=False)]
        return "  ".join([*head, cells[-1]]).rstrip()

    return "\n".join(line(r) for r in [list(headers), *rows])


def names(value: frozenset[str] | None) -> str:
    """A name filter as a cell: None takes everything, an empty set takes nothing."""
    if value is None:
        return "all"
    return ",".join(sorted(value)) or "(none)"
