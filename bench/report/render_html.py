"""One self-contained HTML file: inline CSS, plots as data URIs; no script, no network, no sibling files."""

from __future__ import annotations

import base64
from html import escape

from bench.report.document import TITLE, Block, Grid

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 78rem; padding: 0 1rem;
       color: #1b1b1b; background: #fff; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .3rem; }
h2 { margin-top: 2.5rem; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: .8rem 0; font-size: .9rem; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid #ddd; white-space: nowrap; }
th { border-bottom: 2px solid #444; background: #f3f3f3; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.text, th.text { text-align: left; white-space: normal; }
p.note { font-size: .85rem; color: #444; margin: .2rem 0; }
section.published table { background: #fbf7ec; }
figure { margin: 1.2rem 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .85rem; color: #444; }
"""


def render_html(blocks: list[Block]) -> str:
    body = "\n".join(_block(block) for block in blocks)
    return ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{escape(TITLE)}</title>\n<style>{STYLE}</style>\n</head>\n"
            f"<body>\n{body}\n</body>\n</html>\n")


def _block(block: Block) -> str:
    parts = [f"<h{block.level}>{escape(block.title)}</h{block.level}>"]
    parts += [f"<p>{escape(paragraph)}</p>" for paragraph in block.paragraphs]
    if block.grid is not None:
        parts.append(_table(block.grid))
    parts += [f'<p class="note">{escape(note)}</p>' for note in block.notes]
    for image in block.images:
        data = base64.b64encode(image.png).decode("ascii")
        parts.append(f'<figure><img src="data:image/png;base64,{data}" alt="{escape(image.title)}">'
                     f"<figcaption>{escape(image.title)}</figcaption></figure>")
    return f'<section class="{block.kind}">\n' + "\n".join(parts) + "\n</section>"


def _table(grid: Grid) -> str:
    def cells(tag: str, values: list[str]) -> str:
        return "".join(f'<{tag} class="{"num" if numeric else "text"}">{escape(value)}</{tag}>'
                       for value, numeric in zip(values, grid.numeric, strict=True))

    rows = "\n".join(f"<tr>{cells('td', row)}</tr>" for row in grid.rows)
    return f"<table>\n<thead><tr>{cells('th', grid.header)}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"
