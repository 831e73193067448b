"""Score plots (matplotlib, Agg, no pyplot state): each function takes score rows and returns PNG plots.

Every model keeps one colour across all plots (its leaderboard position picks it); random-weight models are
drawn hatched / dotted and labelled RANDOM in every legend, so a baseline is never mistaken for a model.
A plot whose data is absent from the run is simply not drawn; the caller lists what was skipped.
"""

from __future__ import annotations

import importlib
import io
import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from embedeval.report.scores import is_missing, metric_label
from embedeval.report.settings import ReportSettings
from embedeval.scoring.schema import ScoreRow

log = logging.getLogger(__name__)

RANDOM_COLORS = ["#7f7f7f", "#b5b5b5", "#4d4d4d"]   # greys: random baselines never take a real model's hue
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf",
            "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1"]


@dataclass
class Plot:
    """One figure: file name (no extension), a title and caption for the HTML, and the PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes


@dataclass
class Style:
    """Model order, colours and the random flag shared by every plot of one report."""

    models: list[str]
    random: set[str]
    dpi: int

    def color(self, model: str) -> str:
        if model in self.random:
            return RANDOM_COLORS[sorted(self.random).index(model) % len(RANDOM_COLORS)]
        real = [m for m in self.models if m not in self.random]
        return _PALETTE[real.index(model) % len(_PALETTE)] if model in real else "#000000"

    def label(self, model: str) -> str:
        return f"{model} (RANDOM weights)" if model in self.random else model

    def position(self, model: str) -> int:
        """Leaderboard position (unknown models after all known ones)."""
        return self.models.index(model) if model in self.models else len(self.models)

    def order(self, models: Iterable[str]) -> list[str]:
        present = set(models)
        return [m for m in self.models if m in present] + sorted(present - set(self.models))


def figure_png(fig: Figure, dpi: int) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, facecolor="white")
    return buf.getvalue()


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)  # an Agg canvas of its own: measurable text, no pyplot or global backend state
    fig.get_layout_engine().set(w_pad=0.08, h_pad=0.08)  # type: ignore[union-attr,call-arg]
    return fig


def _err(row: ScoreRow) -> tuple[float, float] | None:
    """(below, above) error-bar lengths of a row's CI, or None without one."""
    if is_missing(row.ci_low) or is_missing(row.ci_high) or is_missing(row.value):
        return None
    v = float(row.value)  # type: ignore[arg-type]
    return max(0.0, v - float(row.ci_low)), max(0.0, float(row.ci_high) - v)  # type: ignore[arg-type]


def _one_split(rows: list[ScoreRow], prefer: tuple[str, ...]) -> list[ScoreRow]:
    """Keep one split (the first preferred one present) so a plot never mixes splits silently."""
    present = {r.split for r in rows}
    chosen = next((s for s in prefer if s in present), min(present) if present else None)
    return [r for r in rows if r.split == chosen]


def _legend(fig: Figure, style: Style, models: list[str], extra: Sequence[Line2D | Patch] | None = None,
            bars: bool = False, below: bool = False) -> None:
    """One figure-level legend: right of the axes, or ``below`` them for multi-panel figures (which have a
    centred suptitle a right-hand legend would collide with)."""
    handles: list[Line2D | Patch] = []
    for m in models:
        if bars:
            handles.append(Patch(facecolor=style.color(m), edgecolor="#333333", hatch="//" if m in style.random else "",
                                 label=style.label(m)))
        else:
            handles.append(Line2D([], [], color=style.color(m), marker="o", linestyle=":" if m in style.random else "-",
                                  label=style.label(m)))
    handles += list(extra or [])
    if below:
        # as many columns as fit the figure's width (measured), so long model names are never cut off
        ncols = min(len(handles), 4)
        while True:
            legend = fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=9, frameon=False)
            renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
            if ncols == 1 or legend.get_window_extent(renderer).width <= fig.bbox.width * 0.98:
                break
            legend.remove()
            ncols -= 1
    else:
        fig.legend(handles=handles, loc="outside right upper", fontsize=9, frameon=False)


def _grouped_bars(ax: Axes, groups: list[str], style: Style, models: list[str],
                  value_of: dict[tuple[str, str], ScoreRow]) -> None:
    """Bars for (group, model) with CI error bars; groups on x, one bar per model within a group."""
    span = min(0.8, 0.25 * max(1, len(models)))   # few models: narrower bars, not giant slabs
    width = span / max(1, len(models))
    for mi, m in enumerate(models):
        xs, ys, lo, hi = [], [], [], []
        for gi, g in enumerate(groups):
            row = value_of.get((g, m))
            if row is None or is_missing(row.value):
                continue
            xs.append(gi - span / 2 + width * (mi + 0.5))
            ys.append(float(row.value))  # type: ignore[arg-type]
            e = _err(row) or (0.0, 0.0)
            lo.append(e[0])
            hi.append(e[1])
        if not xs:
            continue
        ax.bar(xs, ys, width=width * 0.92, color=style.color(m), edgecolor="#333333", linewidth=0.5,
               hatch="//" if m in style.random else "", yerr=[lo, hi], capsize=2,
               error_kw={"elinewidth": 0.8, "ecolor": "#222222"})
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=30 if max((len(g) for g in groups), default=0) > 10 else 0,
                       ha="right" if max((len(g) for g in groups), default=0) > 10 else "center")
    ax.axhline(0, color="#444444", linewidth=0.6)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def _curve(ax: Axes, rows: list[ScoreRow], style: Style, model: str, reference: ScoreRow | None,
           markersize: float, band_alpha: float) -> None:
    """One model's score against k: line with markers, its CI as a band, and ``reference`` as a dashed
    horizontal line in the same colour (the all-items CorrEmbed, or the full ridge fit)."""
    pts = sorted((r for r in rows if r.k is not None and not is_missing(r.value)), key=lambda r: int(r.k or 0))
    if not pts:
        return
    color = style.color(model)
    ax.plot([float(r.k or 0) for r in pts], [float(r.value or 0.0) for r in pts], marker="o", markersize=markersize,
            color=color, linestyle=":" if model in style.random else "-", linewidth=1.8)
    band = [r for r in pts if _err(r)]
    if band:
        ax.fill_between([float(r.k or 0) for r in band], [float(r.ci_low or 0.0) for r in band],
                        [float(r.ci_high or 0.0) for r in band], color=color, alpha=band_alpha, linewidth=0)
    if reference is not None and not is_missing(reference.value):
        ax.axhline(float(reference.value or 0.0), color=color, linestyle="--", linewidth=1.0, alpha=0.75)


def _k_axis(ax: Axes, ks: list[int], fontsize: float | None = None) -> None:
    """Ticks exactly at the k values scored; log scale when they span a decade or more."""
    if len(ks) > 1 and ks[-1] / max(ks[0], 1) >= 10:
        ax.set_xscale("log")
    ax.set_xticks(ks)
    ax.set_xticklabels([str(k) for k in ks], fontsize=fontsize)
    ax.minorticks_off()


def _corrembed_target(rows: list[ScoreRow], wanted: str) -> str | None:
    targets = sorted({r.target for r in rows if r.task == "corrembed"})
    if not targets:
        return None
    return wanted if wanted in targets else ("all" if "all" in targets else targets[0])


def plot_corr_knn_vs_k(rows: list[ScoreRow], style: Style, settings: ReportSettings) -> Plot | None:
    """corr_knn against k per model, CI as a band; the paper's CorrEmbed (all items) as a dashed reference."""
    target = _corrembed_target(rows, settings.corrembed_target)
    knn = _one_split([r for r in rows if r.task == "corrembed" and r.target == target and r.metric == "corr_knn"
                      and r.k is not None], ("all", "test"))
    if not knn:
        return None
    full = {r.model: r for r in _one_split([r for r in rows if r.task == "corrembed" and r.target == target
                                            and r.metric == "corrembed" and r.protocol != "paper-code"],
                                           ("all", "test"))}
    models = style.order(r.model for r in knn)
    ks = sorted({int(r.k) for r in knn})  # type: ignore[arg-type]
    fig = _figure(9.5, 5.2)
    ax = fig.add_subplot()
    for m in models:
        _curve(ax, [r for r in knn if r.model == m], style, m, full.get(m), markersize=6, band_alpha=0.15)
    _k_axis(ax, ks)
    ax.set_xlabel("k (nearest neighbours in embedding space)")
    ax.set_ylabel("corr_knn (mean per-anchor Pearson)")
    ax.set_title(f"CorrEmbed within the k nearest neighbours (target: {target})")
    ax.grid(alpha=0.3)
    extra = [Line2D([], [], color="#333333", linestyle="--", label="CorrEmbed over all items\n(paper's metric)")] \
        if full else []
    _legend(fig, style, models, extra)
    caption = ("How well the neighbourhood a recommender would show matches tag similarity, by neighbourhood size. "
               "Bands: bootstrap 95% CI. Dashed lines: each model's CorrEmbed over all items (the paper's number).")
    return Plot("corrembed_vs_k", "CorrEmbed vs k", caption, figure_png(fig, style.dpi))


_DIRECTIONS = [(1, 0, "left", "center"), (-1, 0, "right", "center"), (0, 1, "center", "bottom"),
               (0, -1, "center", "top"), (1, 1, "left", "bottom"), (-1, 1, "right", "bottom"),
               (1, -1, "left", "top"), (-1, -1, "right", "top")]


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def label_points(fig: Figure, ax: Axes, points: list[tuple[float, float, str, str]], fontsize: float = 9,
                 bars: list[tuple[float, float, float]] | None = None) -> None:
    """Label each (x, y, text, colour) point where the label overlaps no other label, marker or axes edge.

    Runs the layout once so display coordinates are final, measures each label's real extent, then tries
    8 directions at growing distances; the first free spot wins, else the least-overlapping one. Labels
    placed away from their point get a thin leader line. Labels stay out of the layout (in_layout=False),
    so placing them cannot move the axes they were measured against.
    """
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    frame = ax.get_window_extent(renderer)
    marker = 7.0
    taken: list[tuple[float, float, float, float]] = []
    centres = [tuple(ax.transData.transform((x, y))) for x, y, _, _ in points]
    taken += [(cx - marker, cy - marker, cx + marker, cy + marker) for cx, cy in centres]
    for bx, lo, hi in bars or []:  # error bars are obstacles too
        (x0, y0), (_, y1) = ax.transData.transform((bx, lo)), ax.transData.transform((bx, hi))
        taken.append((x0 - 4, min(y0, y1), x0 + 4, max(y0, y1)))
    for (x, y, text, color), (cx, cy) in zip(points, centres):
        probe = ax.text(0, 0, text, fontsize=fontsize)
        ext = probe.get_window_extent(renderer)
        probe.remove()
        w, h = ext.width, ext.height
        best: tuple[float, float, float, str, str] | None = None
        for step in (1.0, 2.0, 3.2, 4.6, 6.5):
            for dx, dy, ha, va in _DIRECTIONS:
                ox, oy = dx * 9 * step, dy * 7 * step
                x0 = cx + ox if ha == "left" else cx + ox - w if ha == "right" else cx - w / 2
                y0 = cy + oy if va == "bottom" else cy + oy - h if va == "top" else cy - h / 2
                box = (x0, y0, x0 + w, y0 + h)
                inside = _overlap(box, (frame.x0, frame.y0, frame.x1, frame.y1))
                cost = sum(_overlap(box, t) for t in taken) + (w * h - inside) * 4
                cost = 0.0 if cost < 0.5 else cost      # under half a pixel of overlap is rounding, not a clash
                if best is None or cost < best[0]:
                    best = (cost, ox, oy, ha, va)
                if cost == 0.0:
                    break
            if best is not None and best[0] == 0.0:
                break
        assert best is not None
        cost, ox, oy, ha, va = best
        far = abs(ox) > 10 or abs(oy) > 8
        to_points = 72.0 / fig.dpi
        ann = ax.annotate(text, (x, y), xytext=(ox * to_points, oy * to_points), textcoords="offset points",
                          ha=ha, va=va, fontsize=fontsize, color=color,
                          arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.6, "shrinkA": 0, "shrinkB": 4}
                          if far else None)
        ann.set_in_layout(False)
        x0 = cx + ox if ha == "left" else cx + ox - w if ha == "right" else cx - w / 2
        y0 = cy + oy if va == "bottom" else cy + oy - h if va == "top" else cy - h / 2
        taken.append((x0, y0, x0 + w, y0 + h))


def plot_corrembed_vs_columns(rows: list[ScoreRow], style: Style, settings: ReportSettings
                              ) -> tuple[list[Plot], list[str]]:
    """CorrEmbed against each user-given per-model number (e.g. ImageNet top-1), one scatter per column."""
    plots: list[Plot] = []
    notes: list[str] = []
    target = _corrembed_target(rows, settings.corrembed_target)
    ce = {r.model: r for r in _one_split([r for r in rows if r.task == "corrembed" and r.target == target
                                          and r.metric == "corrembed" and r.protocol != "paper-code"],
                                         ("all", "test")) if not is_missing(r.value)}
    for column, per_model in settings.model_columns.items():
        models = [m for m in style.order(per_model) if m in ce]
        if len(models) < 2:
            notes.append(f"CorrEmbed vs {column}: fewer than two models have both a CorrEmbed score and a "
                         f"'{column}' value (given for: {', '.join(sorted(per_model)) or 'none'})")
            continue
        xs = [float(per_model[m]) for m in models]
        ys = [float(ce[m].value) for m in models]  # type: ignore[arg-type]
        fig = _figure(8.5, 5.0)
        ax = fig.add_subplot()
        for m, x, y in zip(models, xs, ys):
            e = _err(ce[m])
            ax.errorbar([x], [y], yerr=[[e[0]], [e[1]]] if e else None, fmt="X" if m in style.random else "o",
                        color=style.color(m), markersize=8, capsize=3, elinewidth=1)
        pad_x = (max(xs) - min(xs)) * 0.12 or 1.0
        pad_y = (max(ys) - min(ys)) * 0.15 or 0.05
        xr = (min(xs) - pad_x, max(xs) + pad_x)
        yr = (min(ys) - pad_y, max(ys) + pad_y)
        ax.set_xlim(*xr)
        ax.set_ylim(*yr)
        real = [(x, y) for m, x, y in zip(models, xs, ys) if m not in style.random]
        r_text = ""
        if len(real) >= 3:
            r = _pearson([p[0] for p in real], [p[1] for p in real])
            if r is not None:
                r_text = f"  (Pearson r = {r:.2f} over {len(real)} real models)"
        ax.set_title(f"CorrEmbed vs {column}{r_text}")
        ax.set_xlabel(column)
        ax.set_ylabel(f"CorrEmbed (target: {target})")
        ax.grid(alpha=0.3)
        # labels last: their placement is measured against the finished axes
        label_points(fig, ax, [(x, y, style.label(m), "#b00000" if m in style.random else "#222222")
                               for m, x, y in sorted(zip(models, xs, ys), key=lambda p: -p[2])],
                     bars=[(x, float(ce[m].ci_low), float(ce[m].ci_high))  # type: ignore[arg-type]
                           for m, x in zip(models, xs) if _err(ce[m])])
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", column)
        caption = (f"Does a better '{column}' mean an embedding whose similarity matches human tags better? "
                   "Error bars: bootstrap 95% CI of CorrEmbed.")
        plots.append(Plot(f"corrembed_vs_{safe}", f"CorrEmbed vs {column}", caption, figure_png(fig, style.dpi)))
    return plots, notes


def _pearson(xs: list[float], ys: list[float]) -> float | None:
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    syy = sum((y - my) ** 2 for y in ys)
    if sxx == 0 or syy == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / math.sqrt(sxx * syy)


def plot_rankability(rows: list[ScoreRow], style: Style) -> Plot | None:
    """Held-out Spearman per attribute, one panel per fitting method (regression, extremes...)."""
    rk = _one_split([r for r in rows if r.task == "rankability" and r.metric == "spearman"
                     and r.protocol != "fewshot"], ("test", "all"))
    if not rk:
        return None
    methods = sorted({r.protocol for r in rk}, key=lambda m: (m != "regression", m))
    attrs = sorted({r.target for r in rk})
    models = style.order(r.model for r in rk)
    width = min(16.0, max(7.0, 1.4 + len(attrs) * (0.45 + 0.18 * len(models))) * len(methods) / 1.3)
    fig = _figure(max(8.0, width), 4.8)
    axes = fig.subplots(1, len(methods), sharey=True, squeeze=False)[0]
    for ax, method in zip(axes, methods):
        value_of = {(r.target, r.model): r for r in rk if r.protocol == method}
        _grouped_bars(ax, attrs, style, models, value_of)
        ax.set_title(f"fit = {method}")
        ax.set_xlabel("attribute")
    axes[0].set_ylabel(f"Spearman ρ on held-out items (split: {rk[0].split})")
    fig.suptitle("Rankability: can one direction in embedding space order items by the attribute?")
    _legend(fig, style, models, bars=True, below=True)
    caption = ("Spearman correlation between the projection on a fitted direction and the attribute, on held-out "
               "items; error bars: bootstrap 95% CI. regression: ridge fit on train; extremes: the direction "
               "between the two most extreme train items.")
    return Plot("rankability", "Rankability per attribute", caption, figure_png(fig, style.dpi))


def plot_fewshot(rows: list[ScoreRow], style: Style) -> Plot | None:
    """Few-shot rankability: Spearman against the number of labelled items, one panel per attribute."""
    fs = _one_split([r for r in rows if r.task == "rankability" and r.metric == "spearman"
                     and r.protocol == "fewshot" and r.k is not None], ("test", "all"))
    if not fs:
        return None
    attrs = sorted({r.target for r in fs})
    regression = {(r.target, r.model): r for r in _one_split(
        [r for r in rows
         if r.task == "rankability" and r.metric == "spearman" and r.protocol == "regression"],
        ("test", "all"))}
    models = style.order(r.model for r in fs)
    ncols = min(3, len(attrs))
    nrows = math.ceil(len(attrs) / ncols)
    fig = _figure(4.2 * ncols + 2.6, 3.6 * nrows + 0.6)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    ns = sorted({int(r.k) for r in fs})  # type: ignore[arg-type]
    for i, attr in enumerate(attrs):
        ax = axes[i // ncols][i % ncols]
        for m in models:
            _curve(ax, [r for r in fs if r.target == attr and r.model == m], style, m, regression.get((attr, m)),
                   markersize=4, band_alpha=0.12)
        _k_axis(ax, ns, fontsize=8)
        ax.set_title(attr)
        ax.set_xlabel("labelled items (n)")
        ax.grid(alpha=0.3)
    for j in range(len(attrs), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    for r in range(nrows):
        axes[r][0].set_ylabel("Spearman ρ (held-out)")
    fig.suptitle("Few-shot rankability: how many labelled items does the direction need?")
    extra = [Line2D([], [], color="#333333", linestyle="--", label="ridge regression on all train items")] \
        if regression else []
    _legend(fig, style, models, extra, below=True)
    caption = ("Spearman on held-out items against the number of labelled items used to fit the direction; "
               "bands: 95% CI.")
    return Plot("rankability_fewshot", "Few-shot rankability", caption, figure_png(fig, style.dpi))


_RECALL = re.compile(r"^R@(\d+)$")


def plot_text_retrieval(rows: list[ScoreRow], style: Style) -> Plot | None:
    """R@1/5/10 for image->text and text->image, grouped by K, one panel per direction."""
    rt = _one_split([r for r in rows if r.task == "retrieval" and r.target in ("image->text", "text->image")
                     and _RECALL.match(metric_label(r.metric, r.k))], ("all", "test"))
    if not rt:
        return None
    directions = [d for d in ("image->text", "text->image") if any(r.target == d for r in rt)]
    metrics = sorted({metric_label(r.metric, r.k) for r in rt}, key=lambda s: int(_RECALL.match(s).group(1)))  # type: ignore[union-attr]
    models = style.order(r.model for r in rt)
    fig = _figure(max(8.0, 3.0 + 2.4 * len(directions) * (0.6 + 0.12 * len(models)) * len(metrics) / 1.5), 4.6)
    axes = fig.subplots(1, len(directions), sharey=True, squeeze=False)[0]
    for ax, d in zip(axes, directions):
        value_of = {(metric_label(r.metric, r.k), r.model): r for r in rt if r.target == d}
        _grouped_bars(ax, metrics, style, models, value_of)
        ax.set_title(d.replace("->", " → "))
    axes[0].set_ylabel("recall (a true match in the top K)")
    fig.suptitle("Cross-modal retrieval")
    _legend(fig, style, models, bars=True, below=True)
    return Plot("retrieval_text", "Image ↔ text retrieval",
                "Recall@K in both directions; error bars: bootstrap 95% CI over queries.", figure_png(fig, style.dpi))


_LABELLED = re.compile(r"^(mAP|P)@")


def plot_labelled_retrieval(rows: list[ScoreRow], style: Style) -> Plot | None:
    """mAP / P@K for label-relevance retrieval (sketch->image...), one panel per target and split."""
    lr = [r for r in rows if r.task == "retrieval" and r.target not in ("image->text", "text->image")
          and _LABELLED.match(metric_label(r.metric, r.k))]
    if not lr:
        return None
    panels = sorted({(r.target, r.split, r.protocol) for r in lr},
                    key=lambda p: (p[0], {"unseen": 0, "test": 1, "all": 2}.get(p[1], 3), p[1], p[2] or ""))[:6]

    def metric_order(s: str) -> tuple[int, int]:
        head, _, tail = s.partition("@")
        return (0 if head == "mAP" else 1, -1 if tail == "all" else int(tail) if tail.isdigit() else 10**8)

    models = style.order(r.model for r in lr)
    fig = _figure(max(8.0, 2.6 + 4.2 * len(panels)), 4.6)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (target, split, protocol) in zip(axes, panels):
        sel = [r for r in lr if (r.target, r.split, r.protocol) == (target, split, protocol)]
        metrics = sorted({metric_label(r.metric, r.k) for r in sel}, key=metric_order)
        _grouped_bars(ax, metrics, style, models, {(metric_label(r.metric, r.k), r.model): r for r in sel})
        title = f"{target.replace('->', ' → ')} ({split})"
        ax.set_title(title + (f"\n{protocol}" if protocol != "standard" else ""), fontsize=10)
    axes[0].set_ylabel("score (relevance = same label)")
    fig.suptitle("Label-relevance retrieval")
    _legend(fig, style, models, bars=True, below=True)
    return Plot("retrieval_labelled", "Sketch / label retrieval",
                "mAP and precision at K, relevance = same label; error bars: bootstrap 95% CI over queries. "
                "Panels per split (unseen = zero-shot classes).", figure_png(fig, style.dpi))


PlotsOfTask = Callable[[list[ScoreRow], Style, ReportSettings], tuple[list[Plot], list[str]]]


def _drawn(pairs: Sequence[tuple[Plot | None, str]]) -> tuple[list[Plot], list[str]]:
    """Plots that could be drawn, and the note of each that could not."""
    return [p for p, _ in pairs if p], [why for p, why in pairs if not p]


def corrembed_plots(rows: list[ScoreRow], style: Style, settings: ReportSettings) -> tuple[list[Plot], list[str]]:
    """The corrembed task's plots: corr_knn against k, CorrEmbed against the report's model columns."""
    plots, notes = _drawn([(plot_corr_knn_vs_k(rows, style, settings), "CorrEmbed vs k: no corr_knn scores in this run")])
    extra, extra_notes = plot_corrembed_vs_columns(rows, style, settings)
    return plots + extra, notes + extra_notes


def rankability_plots(rows: list[ScoreRow], style: Style, settings: ReportSettings) -> tuple[list[Plot], list[str]]:
    return _drawn([(plot_rankability(rows, style), "rankability: no rankability scores in this run"),
                   (plot_fewshot(rows, style), "few-shot rankability: no fewshot scores in this run")])


def retrieval_plots(rows: list[ScoreRow], style: Style, settings: ReportSettings) -> tuple[list[Plot], list[str]]:
    return _drawn([(plot_text_retrieval(rows, style), "image ↔ text retrieval: no R@K scores in this run"),
                   (plot_labelled_retrieval(rows, style), "label retrieval: no mAP / P@K scores in this run")])


def _plot_function(ref: str) -> PlotsOfTask:
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def score_plots(rows: list[ScoreRow], style: Style, settings: ReportSettings) -> tuple[list[Plot], list[str]]:
    """Every score plot the run's data supports, and notes on those that could not be drawn.

    The plots are those each registered score task declares (:mod:`embedeval.scoring.registry`), for
    the tasks present in this run's rows, in registry order; a plot function that raises is a note,
    never a failed report."""
    from embedeval.scoring import registry

    plots: list[Plot] = []
    notes: list[str] = []
    rows = [r for r in rows if not is_missing(r.value)]   # undefined scores have nothing to draw
    present = {r.task for r in rows}
    for task in registry.all_tasks():
        if task.name not in present:
            if task.plots:
                notes.append(f"{task.name}: no {task.name} scores in this run")
            continue
        for ref in task.plots:
            try:
                got, why = _plot_function(ref)([r for r in rows if r.task == task.name], style, settings)
            except Exception as exc:  # noqa: BLE001 - one plot must not lose the report
                log.warning("plot %s failed: %s", ref, exc)
                got, why = [], [f"{task.name}: plot {ref} failed: {type(exc).__name__}: {exc}"]
            plots += got
            notes += why
    return plots, notes


def _bar_panels(style: Style, models: list[str], groups: list[str],
                panels: list[tuple[str, dict[tuple[str, str], ScoreRow]]], ylabel: str, title: str) -> Figure:
    """Side-by-side panels of grouped bars (one bar per model in each group), with one shared legend."""
    fig = _figure(max(7.0, 2.0 + 2.6 * len(panels) * (0.6 + 0.12 * len(models))), 4.4)
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    for ax, (panel_title, value_of) in zip(axes, panels):
        _grouped_bars(ax, groups, style, models, value_of)
        ax.set_title(panel_title)
    axes[0].set_ylabel(ylabel)
    fig.suptitle(title)
    _legend(fig, style, models, bars=True, below=True)
    return fig


def plot_zeroshot(rows: list[ScoreRow], style: Style) -> Plot | None:
    """Zero-shot classification by prompts: acc@1, acc@5, mean per-class recall, one panel per modality."""
    zs = [r for r in rows if r.task == "zeroshot" and r.split == "all" and not is_missing(r.value)
          and r.metric in ("acc@1", "acc@5", "mean_per_class_recall")]
    if not zs:
        return None
    metrics = [m for m in ("acc@1", "acc@5", "mean_per_class_recall") if any(r.metric == m for r in zs)]
    panels = [(f"{target} classified by text prompts", {(r.metric, r.model): r for r in zs if r.target == target})
              for target in sorted({r.target for r in zs})]
    fig = _bar_panels(style, style.order(r.model for r in zs), metrics, panels, "accuracy / recall",
                      "Zero-shot classification")
    return Plot("zeroshot", "Zero-shot classification",
                "Each labelled item classified by cosine to its class's prompt-ensemble vector; error bars: bootstrap "
                "95% CI over items.", figure_png(fig, style.dpi))


def plot_bridged_retrieval(rows: list[ScoreRow], style: Style) -> Plot | None:
    """Sketch -> image mAP@all by text-bridged protocol, one panel per class split."""
    br = [r for r in rows if r.task == "zeroshot" and r.metric == "mAP@all" and not is_missing(r.value)
          and "->" in r.target]
    if not br:
        return None
    panels = [(f"{split} classes", {(r.protocol, r.model): r for r in br if r.split == split})
              for split in ("unseen", "seen", "all") if any(r.split == split for r in br)]
    fig = _bar_panels(style, style.order(r.model for r in br), sorted({r.protocol for r in br}), panels, "mAP@all",
                      "Text-bridged sketch → image retrieval")
    return Plot("zeroshot_bridge", "Text-bridged sketch → image retrieval",
                "Gallery ranked by the sketch's class prompt (hard), a softmax mix of prompts (soft), or direct "
                "similarity after removing each modality's mean; error bars: bootstrap 95% CI over queries.",
                figure_png(fig, style.dpi))


def zeroshot_plots(rows: list[ScoreRow], style: Style, settings: ReportSettings) -> tuple[list[Plot], list[str]]:
    return _drawn([(plot_zeroshot(rows, style), "zero-shot: no classification scores (no prompt vectors?)"),
                   (plot_bridged_retrieval(rows, style), "text-bridged retrieval: no bridged mAP scores")])
