"""report.html: one self-contained page (inline CSS and script, plots as data: URIs, no external URL), so
it can be mailed, attached to a ticket or opened from a bucket without anything else."""

from __future__ import annotations

import base64
import hashlib
import html
from dataclasses import dataclass

from embedeval.report.leaderboard import (
    NEAR_BEST_LEGEND,
    PAIRWISE_INTRO,
    BEST_MARK,
    Leaderboard,
    columns_table,
    leaderboard_table,
    model_cell,
    random_banner_text,
)
from embedeval.report.plots import Plot
from embedeval.report.scores import format_value, is_missing, params_text
from embedeval.report.tables import Cell, Section, Table, sections_html, to_html
from embedeval.scoring.schema import ScoreRow

_CSS = """
*{box-sizing:border-box}
body{font:14px/1.45 -apple-system,BlinkMacSystemFont,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;
 color:#1d1d1f;margin:0;background:#fafafa}
main{max-width:1240px;margin:0 auto;padding:20px 28px 60px}
h1{font-size:26px;margin:8px 0 4px}
h2{font-size:20px;margin:34px 0 10px;padding-bottom:4px;border-bottom:2px solid #ddd}
h3{font-size:16px;margin:22px 0 8px}
code{background:#eee;padding:1px 4px;border-radius:3px;font-size:90%}
.meta{color:#555;margin:0 0 10px}
nav a{margin-right:14px;color:#0b5cad;text-decoration:none}
.banner{background:#b00020;color:#fff;font-weight:700;padding:12px 16px;border-radius:6px;margin:14px 0;
 font-size:15px}
table{border-collapse:collapse;background:#fff;font-size:13px;margin:6px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f0f0f3;position:sticky;top:0;z-index:1}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th:hover{background:#e2e2ea}
table.sortable th[data-dir=asc]::after{content:" \\25B4"}
table.sortable th[data-dir=desc]::after{content:" \\25BE"}
td.num,th.num{text-align:right;white-space:nowrap}
tbody tr:nth-child(even){background:#fafafc}
td.best{background:#fff4c2}
td.random{color:#b00020}
td.sig{color:#b00020}
td.border{color:#a05a00}
.ci{color:#777;font-size:11px;white-space:nowrap}
table.leaderboard .ci{display:block}
table.leaderboard td{white-space:nowrap}
.badge{display:inline-block;margin-left:4px;background:#b00020;color:#fff;font-size:10.5px;font-weight:700;
 padding:0 5px;border-radius:3px;white-space:nowrap}
table.leaderboard .badge{display:block;margin:2px 0 0;width:max-content}
.wide{overflow-x:auto;max-width:100%}
.scroll{overflow:auto;max-height:520px;max-width:100%;border:1px solid #ddd}
.scroll table{margin:0}
figure{margin:18px 0 28px;background:#fff;border:1px solid #e2e2e2;border-radius:6px;padding:10px}
figure img{max-width:100%;height:auto;display:block;margin:0 auto}
figcaption{color:#444;font-size:13px;margin-top:6px}
figcaption b{color:#111}
.notes{background:#f4f4f7;border-left:4px solid #aaa;padding:8px 14px;margin:12px 0;color:#333}
.notes ul{margin:4px 0;padding-left:20px}
.legend{color:#555;font-size:12.5px}
footer{color:#888;font-size:12px;margin-top:40px}
"""

# Click a header to sort its table by that column (numbers by data-sort, text otherwise); click again to flip.
# Cells without a number (a missing score, "—") stay last in both directions.
_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function(th){
 th.addEventListener('click',function(){
  var table=th.closest('table'),body=table.tBodies[0],i=Array.prototype.indexOf.call(th.parentNode.children,th);
  var asc=th.getAttribute('data-dir')!=='asc';
  table.querySelectorAll('th').forEach(function(h){h.removeAttribute('data-dir')});
  th.setAttribute('data-dir',asc?'asc':'desc');
  var rows=Array.prototype.slice.call(body.rows);
  rows.sort(function(a,b){
   var x=a.cells[i],y=b.cells[i],xs=x.getAttribute('data-sort'),ys=y.getAttribute('data-sort'),r;
   if(xs!==null&&ys!==null){r=parseFloat(xs)-parseFloat(ys);}
   else if(xs!==null||ys!==null){return xs!==null?-1:1;}
   else{r=x.textContent.localeCompare(y.textContent,undefined,{numeric:true});}
   return asc?r:-r;});
  rows.forEach(function(r){body.appendChild(r)});
 });
});
"""


def _csp_source(text: str) -> str:
    """The CSP hash source that allows exactly this inline <script> or <style> body."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode("ascii") + "'"


# The page may run only its own script and style (by hash) and show only data: images: nothing is fetched, and
# anything a manifest could smuggle past the escaping (a <script>, an on* handler, a remote <img>) is refused.
CONTENT_SECURITY_POLICY = (f"default-src 'none'; img-src data:; style-src {_csp_source(_CSS)}; "
                           f"script-src {_csp_source(_SCRIPT)}; base-uri 'none'; form-action 'none'")


@dataclass
class HtmlInputs:
    """Everything report.html shows, already computed by the build step."""

    title: str
    run_id: str
    run_date: str
    generated: str
    board: Leaderboard
    rows: list[ScoreRow]
    plots: list[Plot]
    example_plots: list[Plot]
    plot_notes: list[str]
    diff_title: str
    diff_sections: list[Section]
    include_tidy_table: bool = True
    pairwise: Table | None = None     # the paired model comparison (None: the run has none)


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def tidy_table(rows: list[ScoreRow], random: set[str]) -> Table:
    """Every score row of the run, in the contract's column order."""
    table = Table(["model", "task", "target", "metric", "k", "split", "protocol", "params", "value", "ci_low",
                   "ci_high", "n", "seconds", "note"], numeric={4, 8, 9, 10, 11, 12})

    def num(x: float | None, like: tuple[float | None, ...]) -> Cell:
        return Cell(format_value(x, like=like), sort=None if is_missing(x) else float(x))  # type: ignore[arg-type]

    for r in rows:
        like = (r.value, r.ci_low, r.ci_high)   # value and CI share their decimals
        table.rows.append([model_cell(r.model, random, short=True), Cell(r.task), Cell(r.target), Cell(r.metric),
                           Cell("" if r.k is None else str(r.k), sort=None if r.k is None else float(r.k)),
                           Cell(r.split), Cell(r.protocol), Cell(params_text(r.params)),
                           num(r.value, like), num(r.ci_low, like), num(r.ci_high, like),
                           Cell(str(r.n), sort=float(r.n)), Cell(f"{r.seconds:.2f}", sort=float(r.seconds)),
                           Cell(r.note or "")])
    return table


def _figure_html(p: Plot) -> str:
    return (f'<figure id="plot-{html.escape(p.name)}"><img src="{png_data_uri(p.png)}" '
            f'alt="{html.escape(p.title)}"><figcaption><b>{html.escape(p.title)}.</b> '
            f"{html.escape(p.caption)} <code>plots/{html.escape(p.name)}.png</code></figcaption></figure>")


def render_html(x: HtmlInputs) -> str:
    """The full page as a string."""
    b = x.board
    parts = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
             f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(x.title)} — {html.escape(x.run_id)}</title>", f"<style>{_CSS}</style></head>",
             "<body><main>", f"<h1>{html.escape(x.title)}</h1>",
             f'<p class="meta">Run <code>{html.escape(x.run_id)}</code> · scored {html.escape(x.run_date)} · '
             f"report generated {html.escape(x.generated)} · {len(b.models)} models · {len(x.rows)} score rows</p>",
             '<nav><a href="#leaderboard">Leaderboard</a><a href="#plots">Plots</a><a href="#diff">Diff</a>'
             + ('<a href="#scores">All scores</a>' if x.include_tidy_table else "") + "</nav>"]
    if b.random:
        parts.append(f'<div class="banner">{html.escape(random_banner_text(b.random))}</div>')
    parts.append('<section id="leaderboard"><h2>Leaderboard</h2>')
    if b.columns:
        parts.append(f'<div class="wide">{to_html(leaderboard_table(b), css="leaderboard", sortable=True)}</div>')
        parts.append(f'<p class="legend">{BEST_MARK} on yellow: best real (non-random) model per column; ties all '
                     "marked. Cells: value and [bootstrap 95% CI]. ↓: lower is better. Order: mean rank over the "
                     "columns a model has; random-weight models last. Click a header to sort."
                     + (" " + html.escape(NEAR_BEST_LEGEND) if x.pairwise is not None else "") + "</p>")
        parts.append("<h3>Columns</h3>")
        parts.append(f'<div class="wide">{to_html(columns_table(b))}</div>')
        if x.pairwise is not None and x.pairwise.rows:
            parts.append(f'<h3 id="pairwise">Pairwise comparison</h3><p class="legend">{html.escape(PAIRWISE_INTRO)}</p>')
            parts.append(f'<div class="wide">{to_html(x.pairwise, sortable=True)}</div>')
    else:
        parts.append("<p>No headline metric of the report settings is present in this run's scores.</p>")
    if b.notes:
        parts.append('<div class="notes"><ul>' + "".join(f"<li>{html.escape(n)}</li>" for n in b.notes)
                     + "</ul></div>")
    parts.append("</section>")
    parts.append('<section id="plots"><h2>Plots</h2>')
    parts += [_figure_html(p) for p in x.plots]
    if x.example_plots:
        parts.append("<h3>Examples: prototypes and ambiguous items</h3>")
        parts += [_figure_html(p) for p in x.example_plots]
    if x.plot_notes:
        parts.append('<div class="notes"><b>Not shown</b><ul>'
                     + "".join(f"<li>{html.escape(n)}</li>" for n in x.plot_notes) + "</ul></div>")
    parts.append("</section>")
    title = x.diff_title.replace("`", "")
    parts.append(f'<section id="diff"><h2>{html.escape(title)}</h2>{sections_html(x.diff_sections, level_offset=1)}'
                 "</section>")
    if x.include_tidy_table:
        parts.append(f'<section id="scores"><h2>All scores ({len(x.rows)} rows)</h2>'
                     f'<div class="scroll">{to_html(tidy_table(x.rows, b.random), sortable=True)}</div></section>')
    parts.append("<footer>Made by embedeval report from the run's scores table; self-contained (no external "
                 "resources).</footer>")
    parts.append(f"</main><script>{_SCRIPT}</script></body></html>")
    return "\n".join(parts) + "\n"
