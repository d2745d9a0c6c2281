"""The leaderboards as rich tables for the terminal: the columns that matter most, so they fit a terminal."""

from __future__ import annotations

from rich import box
from rich.table import Table

from bench.report.document import Block

CONSOLE_COLUMNS = ("method", "px", "overall", "overall 95 % CI", "few", "vs best", "n", "train time")


def console_tables(blocks: list[Block]) -> list[Table]:
    tables = []
    for block in blocks:
        if block.kind != "leaderboard" or block.grid is None:
            continue
        grid = block.grid
        shown = [index for index, name in enumerate(grid.header) if name in CONSOLE_COLUMNS]
        title = f"{block.where or block.dataset}: test accuracy, mean ± std over seeds; configuration chosen on val"
        table = Table(title=title,
                      box=box.SIMPLE_HEAD, pad_edge=False, caption=" ".join(block.notes),
                      caption_justify="left")
        for index in shown:
            table.add_column(grid.header[index], justify="right" if grid.numeric[index] else "left",
                             overflow="fold", no_wrap=index == 0)
        for row in grid.rows:
            table.add_row(*(row[index] for index in shown))
        tables.append(table)
    return tables
