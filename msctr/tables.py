"""One table, two renderings: the rich table printed to the terminal and the Markdown table
written to report files, built from the same header and rows (so they cannot drift apart).

    table = Table(header, rows, title="...")
    console.print(table.to_rich())
    text = table.to_markdown()

Cells are strings, formatted by the caller. A row shorter than the header is padded with
empty cells. The first `left` columns are left-aligned and the others right-aligned (labels
left, numbers right), in the terminal; Markdown keeps the plain `|---|` rule.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.table import Table as RichTable


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

    def to_rich(self) -> RichTable:
        table = RichTable(title=self.title, header_style="bold")
        for i, h in enumerate(self.header):
            table.add_column(h, justify="left" if i < self.left else "right")
        styles = self.styles or [None] * len(self.rows)
        for row, style in zip(self.cells(), styles, strict=True):
            table.add_row(*row, style=style)
        return table

    def to_markdown(self) -> str:
        """The table in GitHub Markdown, without a trailing newline."""
        lines = ["| " + " | ".join(self.header) + " |", "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(row) + " |" for row in self.cells()]
        return "\n".join(lines)
