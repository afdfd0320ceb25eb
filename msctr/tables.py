"""One table, two renderings: the rich table printed to the terminal and the Markdown table
written to report files, built from the same header and rows (so they cannot drift apart).

    table = Table(header, rows, title="...")
    console.print(table.to_rich())
    text = table.to_markdown()

Cells are strings, formatted by the caller. A row shorter than the header is padded with
empty cells. The first `left` columns are left-aligned and the others right-aligned (labels
left, numbers right), in the terminal; Markdown keeps the plain `|---|` rule.

`print_tables` prints tables compactly, each in as many parts as the terminal's width needs
(`Table.fit`): each part repeats the label columns and takes the next value columns, so no
cell is cut. A cell that cannot fit even alone is folded onto more lines, never ellipsized.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, replace

from rich import box
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text


@dataclass(frozen=True)
class Table:
    header: Sequence[str]
    rows: Sequence[Sequence[str]]
    title: str | None = None  # the rich table's title; Markdown documents give their own
    left: int = 1  # leading columns aligned left (labels); the rest right (numbers)
    styles: Sequence[str | None] | None = None  # a rich style per row (e.g. "dim"), or None

    def cells(self) -> list[list[str]]:
        """The rows, each padded with empty cells to the header's width."""
        width = len(self.header)
        return [list(r) + [""] * (width - len(r)) for r in self.rows]

    def to_rich(self, compact: bool = False) -> RichTable:
        """The rich table: boxed, or `compact` (a rule under the header and two spaces
        between columns, no frame) where terminal columns are scarce."""
        frame = {}
        if compact:
            frame = {
                "box": box.SIMPLE_HEAD,
                "show_edge": False,
                "pad_edge": False,
                "collapse_padding": True,
            }
        # rich's default overflow ellipsizes a cell that does not fit ("0.7405 ±.001…"),
        # dropping what matters; compact tables fold it onto more lines instead (the boxed
        # style keeps rich's default: bench-inference's output is pinned by its tests)
        overflow = "fold" if compact else "ellipsis"
        # every cell, header and title as Text: they hold model labels, scenario names and
        # paths the user chose, which rich would read as markup ('[v2]' vanishes) if strings
        title = None if self.title is None else Text(self.title)
        table = RichTable(title=title, header_style="bold", **frame)
        for i, h in enumerate(self.header):
            justify = "left" if i < self.left else "right"
            table.add_column(Text(h), justify=justify, overflow=overflow)
        styles = self.styles or [None] * len(self.rows)
        for row, style in zip(self.cells(), styles, strict=True):
            table.add_row(*(Text(c) for c in row), style=style)
        return table

    def to_markdown(self) -> str:
        """The table in GitHub Markdown, without a trailing newline."""
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.cells()]
        return "\n".join(lines)

    def select(
        self, columns: Sequence[int], title: str | None, header: Sequence[str] | None = None
    ) -> Table:
        """The label columns and the value `columns` (indices into the header) as a table of
        their own; `header` renames the value columns."""
        keep = [*range(self.left), *columns]
        names = [self.header[i] for i in keep]
        if header is not None:
            names[self.left :] = header
        rows = [[row[i] for i in keep] for row in self.cells()]
        return replace(self, header=names, rows=rows, title=title)

    def width(self, compact: bool = True) -> int:
        """Terminal columns the rich table takes with no cell wrapped."""
        console = Console(width=100_000, file=io.StringIO())
        return console.measure(self.to_rich(compact)).maximum

    def fit(self, width: int, compact: bool = True) -> list[Table]:
        """This table as one or more tables of at most `width` terminal columns: each repeats
        the label columns and takes the next value columns in order, as evenly as fits (7
        columns that need two parts go 4 + 3, not 6 + 1). A value column too wide even alone
        is a part of its own, which rich folds."""
        values = list(range(self.left, len(self.header)))
        if not values or self.width(compact) <= width:
            return [self]
        greedy: list[list[int]] = [[]]
        for c in values:
            if greedy[-1] and self.select(greedy[-1] + [c], None).width(compact) > width:
                greedy.append([])
            greedy[-1].append(c)
        n = len(greedy)
        cut = [-(-len(values) * k // n) for k in range(n + 1)]  # ceil: the first parts larger
        even = [values[a:b] for a, b in zip(cut, cut[1:])]
        if all(self.select(p, None).width(compact) <= width for p in even):
            greedy = even
        return [
            self.select(p, f"{self.title} ({k + 1}/{n})" if self.title else None)
            for k, p in enumerate(greedy)
        ]


def print_tables(console: Console, *tables: Table) -> None:
    """Print the tables compactly, each in as many parts as the console's width needs."""
    parts = [part for table in tables for part in table.fit(console.width)]
    for i, part in enumerate(parts):
        if i:
            console.print()
        console.print(part.to_rich(compact=True))
