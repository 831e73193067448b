"""Prototype and ambiguity examples drawn as thumbnail grids, so a reader can *see* what a model groups.

Inputs are the optional scoring outputs ``scores/prototypes.parquet`` (model, modality, prototype, id,
label, distance, rank) and ``scores/ambiguity.parquet`` (model, modality, kind 'pair'|'item', id_a, id_b,
label_a, label_b, similarity, prototype, score, rank), plus an ``image_loader(id) -> bytes | None`` the
caller supplies (the report has no idea where a catalogue keeps its images). Each image is fetched once and
shrunk to a thumbnail at once, so memory stays at (images shown) x thumbnail size.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from embedeval.io.score_files import ScoreTable, read_committed_score_table
from embedeval.io.storage import Storage
from embedeval.report.plots import Plot, Style, figure_png
from embedeval.report.scores import is_missing

ImageLoader = Callable[[str], "bytes | None"]


@dataclass
class Thumbnails:
    """Loads each id once through the caller's loader; failures become a grey 'no image' tile."""

    loader: ImageLoader
    px: int
    cache: dict[str, np.ndarray | None] = field(default_factory=dict)
    failed: int = 0

    def get(self, item_id: str) -> np.ndarray | None:
        if item_id not in self.cache:
            self.cache[item_id] = self._load(item_id)
        return self.cache[item_id]

    def _load(self, item_id: str) -> np.ndarray | None:
        from PIL import Image

        try:
            data = self.loader(item_id)
            if data is None:
                self.failed += 1
                return None
            with Image.open(io.BytesIO(data)) as opened:
                im = opened.convert("RGB")
            im.thumbnail((self.px, self.px))
            # letterbox onto a square so every tile of a grid has the same size whatever the aspect
            canvas = Image.new("RGB", (self.px, self.px), "white")
            canvas.paste(im, ((self.px - im.width) // 2, (self.px - im.height) // 2))
            return np.asarray(canvas)
        except Exception:  # a broken image must not break the report; it is counted and shown as missing
            self.failed += 1
            return None


def _short(text: Any, n: int = 18) -> str:
    s = "" if text is None else str(text)
    return s if len(s) <= n else s[: n - 1] + "…"


@dataclass
class Tile:
    """One thumbnail of a grid with the text above (title) and below (footer) it."""

    image: np.ndarray | None
    title: str
    footer: str = ""


# Grid geometry in canvas pixels; the figure is sized from it, so text never depends on a layout engine.
_GAP, _GROUP_GAP, _TITLE_H, _HEADER_H, _FOOTER_H, _ROW_GAP, _TOP = 8, 26, 18, 18, 16, 12, 38


def grid_figure(rows: list[list[Tile]], px: int, title: str, title_color: str = "black",
                row_labels: list[str] | None = None, group: int = 1,
                headers: list[list[str]] | None = None) -> Figure:
    """A thumbnail grid drawn as ONE image on one axes, with labels as text at pixel positions.

    ``group`` tiles form a unit (2 for pairs) separated by a wider gap; ``headers[r][g]`` is a line of text
    above unit g of row r. One axes instead of one per tile keeps a 50-tile grid to a fraction of a second.
    """
    ncols = max(len(r) for r in rows)
    ngroups = -(-ncols // group)
    left = 92 if row_labels else 10
    footer_h = _FOOTER_H if any(t.footer for r in rows for t in r) else 4
    header_h = _HEADER_H if headers else 0
    row_h = header_h + _TITLE_H + px + footer_h + _ROW_GAP
    width = left + ncols * (px + _GAP) + (ngroups - 1) * _GROUP_GAP + 10
    height = _TOP + len(rows) * row_h
    canvas = np.full((height, width, 3), 255, np.uint8)
    fig = Figure(figsize=(width / 100, height / 100))
    ax = fig.add_axes((0, 0, 1, 1))
    texts: list[tuple[float, float, str, dict[str, Any]]] = []

    def x_of(col: int) -> int:
        return left + col * (px + _GAP) + (col // group) * _GROUP_GAP

    for ri, row in enumerate(rows):
        y0 = _TOP + ri * row_h
        ty = y0 + header_h + _TITLE_H
        for ci, tile in enumerate(row):
            x = x_of(ci)
            if tile.image is None:
                canvas[ty:ty + px, x:x + px] = 236
                texts.append((x + px / 2, ty + px / 2, "no image", {"fontsize": 7, "color": "#777777", "va": "center"}))
            else:
                h, w = tile.image.shape[:2]
                canvas[ty:ty + h, x:x + w] = tile.image[:, :, :3]
            canvas[ty:ty + px, [x, x + px - 1]] = 200          # a light frame ties tile, title and footer
            canvas[[ty, ty + px - 1], x:x + px] = 200
            texts.append((x + px / 2, ty - 4, tile.title, {"fontsize": 8, "va": "bottom"}))
            if tile.footer:
                texts.append((x + px / 2, ty + px + 3, tile.footer, {"fontsize": 7, "color": "#555555", "va": "top"}))
        if headers:
            for g, text in enumerate(headers[ri]):
                first, last = x_of(g * group), x_of(min(ncols, (g + 1) * group) - 1) + px
                texts.append(((first + last) / 2, y0 + header_h - 2, text,
                              {"fontsize": 8, "color": "#333333", "va": "bottom", "fontweight": "bold"}))
        if row_labels:
            texts.append((left - 10, ty + px / 2, row_labels[ri], {"fontsize": 9, "va": "center", "ha": "right"}))
    ax.imshow(canvas, extent=(0, width, height, 0), interpolation="antialiased")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    for tx, ty_, text, kw in texts:
        ax.text(tx, ty_, text, **{"ha": "center", **kw})
    ax.text(width / 2, _TOP / 2, title, ha="center", va="center", fontsize=11, color=title_color)
    return fig


def _title(style: Style, model: str, what: str, modality: str) -> str:
    flag = "  ⚠ RANDOM WEIGHTS — not a real model" if model in style.random else ""
    return f"{what}: {model} ({modality}){flag}"


def _title_color(style: Style, model: str) -> str:
    return "#b00000" if model in style.random else "black"


def _records(storage: Storage, run_id: str, which: ScoreTable) -> list[dict[str, Any]] | None:
    """The rows of a committed score-stage table, or None when the run's scores marker does not list it
    or it has no rows (the score job writes empty tables when no prototypes task ran)."""
    table = read_committed_score_table(storage, run_id, which)
    return None if table is None or table.num_rows == 0 else table.to_pylist()


def prototype_plots(records: list[dict[str, Any]], style: Style, thumbs: Thumbnails, max_prototypes: int,
                    max_items: int) -> list[Plot]:
    """One grid per (model, modality): a row per prototype, its nearest items by rank left to right."""
    plots = []
    groups = sorted({(r["model"], r["modality"]) for r in records}, key=lambda g: (style.position(g[0]), g))
    for model, modality in groups:
        sel = [r for r in records if r["model"] == model and r["modality"] == modality]
        protos = sorted({r["prototype"] for r in sel})[:max_prototypes]
        rows = [sorted((r for r in sel if r["prototype"] == p), key=lambda r: r["rank"])[:max_items] for p in protos]
        tiles = [[Tile(thumbs.get(str(it["id"])), _short(it.get("label")),
                       "" if is_missing(it.get("distance")) else f"d = {it['distance']:.3f}") for it in items]
                 for items in rows]
        fig = grid_figure(tiles, thumbs.px, _title(style, model, "Prototypes", modality), _title_color(style, model),
                          row_labels=[f"prototype {p}" for p in protos])
        plots.append(Plot(f"prototypes_{_safe(model)}_{_safe(modality)}", f"Prototypes — {model} ({modality})",
                          f"Each row: a k-means prototype and its nearest items (rank 1 = closest); title = label, "
                          f"d = distance to the prototype. First {len(rows)} prototypes shown.",
                          figure_png(fig, style.dpi)))
    return plots


def ambiguity_plots(records: list[dict[str, Any]], style: Style, thumbs: Thumbnails, max_shown: int) -> list[Plot]:
    """Per (model, modality, kind): the top-ranked ambiguous pairs side by side, or ambiguous items in a grid."""
    plots = []
    groups = sorted({(r["model"], r["modality"], r["kind"]) for r in records},
                    key=lambda g: (style.position(g[0]), g))
    for model, modality, kind in groups:
        sel = sorted((r for r in records if (r["model"], r["modality"], r["kind"]) == (model, modality, kind)),
                     key=lambda r: r["rank"])[:max_shown]
        title, color = _title(style, model, f"Ambiguous {kind}s", modality), _title_color(style, model)
        if kind == "pair":
            fig = _pair_figure(sel, thumbs, title, color)
            caption = ("Nearest-neighbour pairs with different labels inside the same prototype (soft positives): "
                       "the pairs a recommender would show together though the labels disagree.")
        else:
            fig = _item_figure(sel, thumbs, title, color)
            caption = "Items the model finds most ambiguous (score as the scorer defines it; rank 1 = most ambiguous)."
        plots.append(Plot(f"ambiguity_{kind}_{_safe(model)}_{_safe(modality)}",
                          f"Ambiguous {kind}s — {model} ({modality})", caption, figure_png(fig, style.dpi)))
    return plots


def _pair_figure(sel: list[dict[str, Any]], thumbs: Thumbnails, title: str, color: str) -> Figure:
    """Two pairs per row: (a, b) side by side under a header with rank, similarity and prototype."""
    per_row = 2
    rows, headers = [], []
    for start in range(0, len(sel), per_row):
        chunk = sel[start:start + per_row]
        rows.append([Tile(thumbs.get(str(r[f"id_{s}"])), _short(r.get(f"label_{s}"), 16)) for r in chunk for s in "ab"])
        headers.append([_pair_header(r) for r in chunk])
    return grid_figure(rows, thumbs.px, title, color, group=2, headers=headers)


def _pair_header(r: dict[str, Any]) -> str:
    sim = "" if is_missing(r.get("similarity")) else f"similarity {r['similarity']:.2f}"
    proto = "" if r.get("prototype") is None else f"prototype {r['prototype']}"
    return f"#{r['rank']}  " + " · ".join(x for x in (sim, proto) if x)


def _item_figure(sel: list[dict[str, Any]], thumbs: Thumbnails, title: str, color: str) -> Figure:
    per_row = 6
    rows = [[Tile(thumbs.get(str(r["id_a"])), _short(r.get("label_a")),
                  f"#{r['rank']}" + ("" if is_missing(r.get("score")) else f" · score {r['score']:.2f}"))
             for r in sel[start:start + per_row]] for start in range(0, len(sel), per_row)]
    return grid_figure(rows, thumbs.px, title, color)


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))


def example_plots(storage: Storage, run_id: str, style: Style, image_loader: ImageLoader | None,
                  max_prototypes: int, max_thumbnails: int, max_ambiguity: int, thumbnail_px: int
                  ) -> tuple[list[Plot], list[str]]:
    """Prototype and ambiguity grids, and notes on what was skipped and why (never raises for absent inputs)."""
    notes: list[str] = []
    protos = _records(storage, run_id, "prototypes")
    ambig = _records(storage, run_id, "ambiguity")
    if protos is None:
        notes.append("prototype examples: scores/prototypes.parquet is not in this run's committed scores, or empty")
    if ambig is None:
        notes.append("ambiguity examples: scores/ambiguity.parquet is not in this run's committed scores, or empty")
    if (protos or ambig) and image_loader is None:
        notes.append("prototype / ambiguity thumbnails: no image loader was given to the report, so these "
                     "plots were skipped (pass image_loader= to build_report)")
        return [], notes
    if image_loader is None:
        return [], notes
    thumbs = Thumbnails(image_loader, thumbnail_px)
    plots: list[Plot] = []
    if protos:
        plots += prototype_plots(protos, style, thumbs, max_prototypes, max_thumbnails)
    if ambig:
        plots += ambiguity_plots(ambig, style, thumbs, max_ambiguity)
    if thumbs.failed:
        notes.append(f"{thumbs.failed} of {len(thumbs.cache)} example images could not be loaded or decoded; "
                     "they are drawn as grey 'no image' tiles")
    return plots, notes
