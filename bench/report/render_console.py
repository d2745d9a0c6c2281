"""The leaderboards as rich tables for the terminal: the columns that matter most, short headers, nothing cut or
split (`bench.console_tables`); where they do not fit the console, px, train time, few and n are left out, in
that order, and the caption says so (every column is in the report files)."""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from bench.console_tables import compact_table, fitted, left_out_note
from bench.report.document import Block

# a leaderboard column shown on the console → its header there
CONSOLE_COLUMNS = {"method": "method", "px": "px", "overall": "overall", "overall 95 % CI": "95 % CI",
                   "few": "few", "vs best": "vs best", "n": "n", "train time": "train time"}
LEFT_OUT_FIRST = ("px", "train time", "few", "n")


def console_tables(blocks: list[Block], console: Console) -> list[Table]:
    return [fitted(lambda left_out, block=block: _leaderboard(block, left_out), LEFT_OUT_FIRST, console)
            for block in blocks if block.kind == "leaderboard" and block.grid is not None]


def _leaderboard(block: Block, left_out: Sequence[str]) -> Table:
    grid = block.grid
    shown = [index for index, name in enumerate(grid.header) if name in CONSOLE_COLUMNS and name not in left_out]
    note = f" {left_out_note(left_out).capitalize()} (every column is in the report files)." if left_out else ""
    table = compact_table(f"{block.where or block.dataset}: test accuracy, mean ± std over seeds; configuration "
                          "chosen on val", Text(" ".join(block.notes) + note))
    for index in shown:
        table.add_column(CONSOLE_COLUMNS[grid.header[index]], justify="right" if grid.numeric[index] else "left",
                         no_wrap=True)
    for row in grid.rows:
        table.add_row(*(Text(row[index]) for index in shown))
    return table
