"""Markdown: headings, pipe tables, footnotes, and links to the plot files beside it."""

from __future__ import annotations

from bench.report.document import Block, Grid


def render_markdown(blocks: list[Block]) -> str:
    parts = []
    for block in blocks:
        parts.append(f"{'#' * block.level} {block.title}")
        parts += block.paragraphs
        if block.grid is not None:
            parts.append(_table(block.grid))
        parts += block.notes
        parts += [f"![{image.title}]({image.filename})" for image in block.images]
    return "\n\n".join(parts) + "\n"


def _table(grid: Grid) -> str:
    lines = [_line(grid.header), _line(["---:" if numeric else "---" for numeric in grid.numeric])]
    lines += [_line(row) for row in grid.rows]
    return "\n".join(lines)


def _line(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"
