"""
Plain tables for a terminal: a header of capitalised names, columns
aligned under them, two spaces apart, no borders; easy on C{grep}, C{awk}
and C{cut}.
"""

from __future__ import annotations

from typing import Any, List, Sequence


def render(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """
    The table, one line per row under the header; an empty cell shows as
    C{-} so every column has a word in every line.
    """
    cells: List[List[str]] = [[_cell(value) for value in row] for row in rows]
    widths = [len(header) for header in headers]
    for row in cells:
        for index, cell in enumerate(row):
            widths[index] = max(widths[index], len(cell))
    lines = []
    for row in [list(headers), *cells]:
        line = "  ".join(cell.ljust(width) for cell, width in zip(row, widths))
        lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    # One line per row, whatever a note holds.
    text = " ".join(text.split())
    return text or "-"


def size(count: Any) -> str:
    """
    A byte count for people, in one word: C{512B}, C{1.5KiB}, C{3.2GiB}.
    """
    value = float(count or 0)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover
