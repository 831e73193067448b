"""One small table model rendered both as Markdown and as HTML, so leaderboard.md, diff.md and report.html
show the same cells from the same code."""

from __future__ import annotations

import html
from dataclasses import dataclass, field


@dataclass
class Cell:
    """A table cell. ``emphasis`` renders bold; ``css`` is an HTML class; ``sort`` a numeric sort key."""

    text: str
    emphasis: bool = False
    css: str | None = None
    sort: float | None = None
    detail: str = ""          # secondary text: a CI in smaller type (HTML) or after the value (Markdown)
    badge: str = ""           # a warning after the text: a red label (HTML), bold text (Markdown)


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    numeric: set[int] = field(default_factory=set)   # column indexes to right-align

    def add(self, *cells: Cell | str) -> None:
        self.rows.append([c if isinstance(c, Cell) else Cell(c) for c in cells])


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table (pipes in cells escaped)."""
    align = ["---:" if i in table.numeric else "---" for i in range(len(table.headers))]
    lines = ["| " + " | ".join(_md_escape(h) for h in table.headers) + " |", "|" + "|".join(align) + "|"]
    for row in table.rows:
        cells = []
        for c in row:
            text = _md_escape(c.text)
            if c.badge:
                text = f"{text} {_md_escape(c.badge)}" if c.emphasis else f"{text} **{_md_escape(c.badge)}**"
            if c.emphasis and text:
                text = f"**{text}**"
            if c.detail:
                text = f"{text} {_md_escape(c.detail)}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_html(table: Table, css: str = "", sortable: bool = False) -> str:
    """An HTML table; every text escaped. ``sortable`` marks it for the page's click-to-sort script."""
    classes = " ".join(x for x in (css, "sortable" if sortable else "") if x)
    out = [f'<table class="{classes}">' if classes else "<table>", "<thead><tr>"]
    for i, h in enumerate(table.headers):
        cls = ' class="num"' if i in table.numeric else ""
        out.append(f"<th{cls}>{html.escape(h)}</th>")
    out.append("</tr></thead><tbody>")
    for row in table.rows:
        out.append("<tr>")
        for i, c in enumerate(row):
            cls = " ".join(x for x in ("num" if i in table.numeric else "", c.css or "") if x)
            attrs = f' class="{cls}"' if cls else ""
            if c.sort is not None:
                attrs += f' data-sort="{c.sort!r}"'
            text = html.escape(c.text)
            if c.emphasis and text:
                text = f"<strong>{text}</strong>"
            if c.badge:
                text += f' <span class="badge">{html.escape(c.badge)}</span>'
            if c.detail:
                text += f' <span class="ci">{html.escape(c.detail)}</span>'
            out.append(f"<td{attrs}>{text}</td>")
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


@dataclass
class Section:
    """A titled block of paragraphs and an optional table: the unit both diff.md and report.html render."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: Table | None = None
    level: int = 2


def sections_markdown(sections: list[Section]) -> str:
    out: list[str] = []
    for s in sections:
        out += ["#" * s.level + " " + s.title, ""]
        for p in s.paragraphs:
            out += [p, ""]
        if s.table is not None:
            out += [to_markdown(s.table)]
    return "\n".join(out).rstrip() + "\n"


def _inline_markdown_to_html(text: str) -> str:
    """Escape, then render the two inline marks the report's prose uses: **bold** and `code`."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def sections_html(sections: list[Section], level_offset: int = 1, scroll_rows: int = 25) -> str:
    """Sections as HTML; tables longer than ``scroll_rows`` scroll inside their own box."""
    out: list[str] = []
    for s in sections:
        h = min(6, s.level + level_offset)
        out.append(f"<h{h}>{_inline_markdown_to_html(s.title)}</h{h}>")
        for p in s.paragraphs:
            if p.startswith("- "):
                items = "".join(f"<li>{_inline_markdown_to_html(x[2:])}</li>" for x in p.split("\n"))
                out.append(f"<ul>{items}</ul>")
            else:
                out.append(f"<p>{_inline_markdown_to_html(p)}</p>")
        if s.table is not None:
            box = "scroll" if len(s.table.rows) > scroll_rows else "wide"
            out.append(f'<div class="{box}">{to_html(s.table, sortable=True)}</div>')
    return "\n".join(out)
