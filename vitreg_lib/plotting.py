"""Figures, drawn from data the analyses return. Every figure takes a ``caption`` that
says which model(s), data, layer and rule produced it; it becomes the figure's title.

Two kinds of figure:

* **Statistical figures** (norm histograms, densities, per-layer curves, bars with
  intervals) are seaborn figures on a :class:`seaborn.FacetGrid`: one panel per model,
  layer or quantity, at most :data:`MAX_COLS` panels a row (more wrap into balanced
  rows), one palette and one legend (below the panels) per figure. Each panel names its
  quantity in its title, so no text has to be read sideways. (:func:`corloc_bars` has
  one panel and draws it with seaborn directly.)
* **Image grids** (:func:`map_grid`, :func:`discovery_grid`) are plain matplotlib.

Sizes are chosen for the book's content column, about 800 px: :data:`WIDTH` inches at
matplotlib's 100 dpi. A figure no wider than that is shown at its own size, so its
text stays at the size it was drawn at (seaborn's ``notebook`` context). Red is kept
for a rule's threshold; models and token groups take the other colours of seaborn's
colour-blind palette.
"""

from __future__ import annotations

import functools
import math
import textwrap
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from PIL import Image

#: the book's content column in inches (about 800 px at 100 dpi)
WIDTH = 8.0
#: at most this many panels (or image columns) in a row
MAX_COLS = 4
#: the tallest a statistical panel gets (inches)
MAX_HEIGHT = 3.2
#: the colour of a rule's threshold
THRESHOLD = "tab:red"
#: series colours: seaborn's colour-blind palette without its vermillion (too close to THRESHOLD)
SERIES = [c for i, c in enumerate(sns.color_palette("colorblind")) if i != 3]
_PAD = "_pad:"  # names an empty slot of a facet grid


def palette(names) -> dict:
    """One colour per name, in order of first appearance."""
    return {n: SERIES[i % len(SERIES)] for i, n in enumerate(dict.fromkeys(names))}


def panels_per_row(n: int) -> int:
    """All ``n`` panels in one row up to :data:`MAX_COLS`; beyond, rows as even as
    possible (5 -> 3 + 2, 6 -> 3 + 3, 7 -> 4 + 3, 12 -> 4 + 4 + 4)."""
    return n if n <= MAX_COLS else math.ceil(n / math.ceil(n / MAX_COLS))


def _styled(draw):
    """Draw inside seaborn's ``whitegrid`` style and ``notebook`` context, without
    changing matplotlib's global settings."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.9):
            return draw(*args, **kwargs)

    return wrapper


def _wrap(text: str, chars: int) -> str:
    return textwrap.fill(str(text), width=max(chars, 8), break_on_hyphens=False)


def _facets(order: list[str], ncol: int | None = None, aspect: float = 1.4, max_panel: float = 4.0,
            **kwargs) -> sns.FacetGrid:
    """A grid with one panel per name in ``order`` (a name starting with ``_PAD`` keeps
    its slot empty), ``ncol`` panels a row (default :func:`panels_per_row`), at most
    :data:`WIDTH` inches wide. The panels are drawn by the caller, axis by axis."""
    ncol = ncol or panels_per_row(len(order))
    width = min(WIDTH / ncol, max_panel)
    height = min(width / aspect, MAX_HEIGHT)
    frame = pd.DataFrame({"panel": pd.Series(order, dtype=object)})
    g = sns.FacetGrid(frame, col="panel", col_order=order, col_wrap=ncol, height=height,
                      aspect=width / height, despine=False, **kwargs)
    g.set_titles("{col_name}")
    g.panels_per_row = ncol
    return g


def _finish(g: sns.FacetGrid, caption: str, legend: Mapping[str, object] | None = None,
            xlabel: str = "", ylabel: str = "") -> plt.Figure:
    """Empty the padding slots, label the x axes of the lowest panels and the figure's
    y axis once, put one legend below the panels and the caption on top."""
    order = list(g.col_names)
    ncol = g.panels_per_row
    xlabel = _wrap(xlabel, int(g.figure.get_figwidth() / ncol * 72 / 6)) if xlabel else ""
    for p, name in enumerate(order):
        ax = g.axes_dict[name]
        if name.startswith(_PAD):
            ax.remove()
            continue
        below = p + ncol
        ax.set_xlabel(xlabel if below >= len(order) or order[below].startswith(_PAD) else "")
        ax.set_ylabel("")
    if ylabel:
        g.figure.supylabel(ylabel, fontsize=plt.rcParams["axes.labelsize"])
    title_lines = max(ax.get_title().count("\n") for ax in g.figure.axes)
    g.figure.set_figheight(g.figure.get_figheight() + 0.2 * title_lines * math.ceil(len(order) / ncol))
    return _caption(g.figure, caption, legend)


def _caption(fig: plt.Figure, caption: str, legend: Mapping[str, object] | None = None) -> plt.Figure:
    """Caption on top, legend below; the figure grows by their height, so that they do
    not squeeze the panels."""
    fig.set_layout_engine("constrained")
    size, extra = 11, 0.1
    if legend:
        ncol = panels_per_row(len(legend))
        # matplotlib fills a legend column by column; this order reads row by row
        big = len(legend) % ncol or ncol
        order = [row * ncol + col for col in range(ncol)
                 for row in range(math.ceil(len(legend) / ncol) - (col >= big))]
        labels = [list(legend)[i] for i in order]
        fig.legend([legend[k] for k in labels], labels, loc="outside lower center", frameon=False, ncol=ncol)
        extra += 0.3 * math.ceil(len(legend) / ncol)
    title = _wrap(caption, int(fig.get_figwidth() * 72 / (0.55 * size)))
    fig.suptitle(title, fontsize=size)
    fig.set_figheight(fig.get_figheight() + extra + 0.22 * (title.count("\n") + 1))
    return fig


def _panel_title(ax, text: str) -> None:
    ax.set_title(_wrap(text, int(ax.get_position().width * ax.figure.get_figwidth() * 72 / 6)))


def _interval(ax, x, low, high) -> None:
    """A 95 % interval drawn from ``low`` to ``high`` (whatever the point estimate)."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    ax.errorbar(x, (low + high) / 2, yerr=(high - low) / 2, fmt="none", ecolor="0.15", elinewidth=1.3,
                capsize=3, zorder=3)


def _show_image(ax, image) -> None:
    ax.imshow(np.asarray(image))
    ax.set_xticks([])
    ax.set_yticks([])


def _square(image: Image.Image) -> Image.Image:
    w, h = image.size
    s = min(w, h)
    return image.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))


def map_grid(images: Sequence[Image.Image], maps: Mapping[str, np.ndarray], caption: str,
             cmap: str = "viridis", colorbar_label: str = "token norm") -> plt.Figure:
    """Rows: images; columns: the image, then one map per entry of ``maps``
    (``name -> [B, rows, cols]``). Each map has its own colour scale, shared by all images.

    With more than :data:`MAX_COLS` panels per image the grid turns: several images
    become the columns (rows: the image, then each map, named on the left); a single
    image has its panels wrapped into balanced rows."""
    n, k = len(images), 1 + len(maps)
    if k <= MAX_COLS:
        nrows, ncols, turned = n, k, False
        at = lambda i, j: (i, j)  # noqa: E731
    elif n > 1:
        nrows, ncols, turned = k, n, True
        at = lambda i, j: (j, i)  # noqa: E731
    else:
        ncols, turned = panels_per_row(k), False
        nrows = math.ceil(k / ncols)
        at = lambda i, j: divmod(j, ncols)  # noqa: E731
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.3 * ncols + 0.8, 2.2 * nrows + 0.6), squeeze=False,
                             layout="constrained")
    for ax in axes.flat[k * n:]:
        ax.remove()

    def name(ax, text):
        if turned:
            ax.set_ylabel(text, fontsize=9)
        else:
            ax.set_title(text, fontsize=9)

    for i, im in enumerate(images):
        _show_image(axes[at(i, 0)], _square(im.convert("RGB")))
    name(axes[at(0, 0)], "image")
    for j, (title, m) in enumerate(maps.items(), start=1):
        vmax = float(np.max(m))
        for i in range(n):
            ax = axes[at(i, j)]
            h = ax.imshow(m[i], cmap=cmap, vmin=0, vmax=vmax)
            ax.set_xticks([])
            ax.set_yticks([])
        name(axes[at(0, j)], title)
        fig.colorbar(h, ax=[axes[at(i, j)] for i in range(n)], shrink=0.5, label=colorbar_label)
    fig.suptitle(_wrap(caption, int(fig.get_figwidth() * 72 / (0.55 * 9))), fontsize=9)
    return fig


@_styled
def layer_histograms(norms: Mapping[str, Mapping[int, np.ndarray]],
                     thresholds: Mapping[str, Mapping[int, float]], caption: str,
                     models_across: bool = False) -> plt.Figure:
    """Histograms of patch-token norms (log count), one panel per (model, layer), with
    the rule's threshold as a red dashed line where one was found. By default each
    model's layers fill its own rows, in order; ``models_across=True`` puts the models
    of each layer side by side instead. At most :data:`MAX_COLS` panels a row."""
    models = list(norms)
    if models_across:
        blocks = [[(m, layer) for m in models] for layer in next(iter(norms.values()))]
    else:
        blocks = [[(m, layer) for layer in norms[m]] for m in models]
    if all(len(b) == 1 for b in blocks):  # one panel each: side by side
        blocks = [[b[0] for b in blocks]]
    ncol = panels_per_row(max(len(b) for b in blocks))
    where, order = {}, []
    for block in blocks:
        for m, layer in block:
            where[f"{m} · layer {layer}"] = (m, layer)
            order.append(f"{m} · layer {layer}")
        order += [f"{_PAD}{len(order) + p}" for p in range(-len(block) % ncol)]  # next block: new row
    colours = palette(models)
    g = _facets(order, ncol=ncol, aspect=1.2, sharex=False, sharey=False)
    drawn = False
    for name, (m, layer) in where.items():
        ax = g.axes_dict[name]
        sns.histplot(x=np.ravel(norms[m][layer]), bins=60, color=colours[m], linewidth=0, alpha=0.85, ax=ax)
        ax.set_yscale("log")
        thr = thresholds.get(m, {}).get(layer, float("inf"))
        if thr is not None and np.isfinite(thr):
            ax.axvline(thr, color=THRESHOLD, ls="--", lw=1.5)
            drawn = True
    legend = {m: Patch(color=c) for m, c in colours.items()}
    if drawn:
        legend["the rule's threshold"] = Line2D([], [], color=THRESHOLD, ls="--", lw=1.5)
    return _finish(g, caption, legend, xlabel="patch norm", ylabel="patches (log count)")


@_styled
def norm_split(groups: Mapping[str, Mapping[str, np.ndarray]], thresholds: Mapping[str, float],
               caption: str) -> plt.Figure:
    """One panel per model: histograms (log count, shared bins) of patch norms split by
    what the patches hold (e.g. ``{"background": ..., "objects": ..., "photos": ...}``),
    with the rule's threshold (red dashed) where it found one: the object population and
    an outlier mode side by side."""
    names = list(dict.fromkeys(group for by_group in groups.values() for group in by_group))
    colours = palette(names)
    g = _facets(list(groups), aspect=1.3, max_panel=WIDTH / 2, sharex=False, sharey=False)
    drawn = False
    for model, by_group in groups.items():
        ax = g.axes_dict[model]
        every = np.concatenate([np.ravel(v) for v in by_group.values() if np.size(v)])
        bins = np.histogram_bin_edges(every, bins=60)
        for group, values in by_group.items():
            if np.size(values):
                sns.histplot(x=np.ravel(values), bins=bins, element="step", color=colours[group], alpha=0.3,
                             ax=ax)
        ax.set_yscale("log")
        thr = thresholds.get(model)
        if thr is not None and np.isfinite(thr):
            ax.axvline(thr, color=THRESHOLD, ls="--", lw=1.5)
            drawn = True
    legend = {f"{name} patches": Patch(facecolor=c, edgecolor=c, alpha=0.6) for name, c in colours.items()}
    if drawn:
        legend["the rule's threshold"] = Line2D([], [], color=THRESHOLD, ls="--", lw=1.5)
    return _finish(g, caption, legend, xlabel="patch norm", ylabel="patches (log count)")


_STAT_DASHES = {"median": "", "p99": (4, 2), "max": (1, 1.5)}


def _lines(ax, frame, x, y, hue, colours, style=None) -> None:
    sns.lineplot(frame, x=x, y=y, hue=hue, hue_order=list(colours), palette=colours, style=style,
                 style_order=list(_STAT_DASHES) if style else None, dashes=_STAT_DASHES if style else True,
                 marker="o" if style is None else None, markersize=5, estimator=None, legend=False, ax=ax)


def _style_legend(colours: Mapping[str, object], statistics: Sequence[str] = ()) -> dict:
    legend = {name: Line2D([], [], color=c, lw=2) for name, c in colours.items()}
    for s in statistics:
        legend[s] = Line2D([], [], color="0.3", lw=1.5, dashes=_STAT_DASHES[s] or (None, None))
    return legend


@_styled
def curves(tables: Mapping[str, pd.DataFrame], caption: str) -> plt.Figure:
    """Per-layer norm statistics (median, p99, max) and outlier % for each model,
    from :func:`vitreg_lib.outliers.layer_curves` tables: colour = model, dash = statistic."""
    frame = pd.concat([t.assign(model=name) for name, t in tables.items()], ignore_index=True)
    stats = frame.melt(id_vars=["model", "layer"], value_vars=list(_STAT_DASHES), var_name="statistic",
                       value_name="norm")
    frame["outlier %"] = 100 * frame["outlier_fraction"]
    colours = palette(tables)
    rule = frame["rule"].iloc[0]
    g = _facets(["patch-token norm", f"outlier patches (%) · {rule}"], aspect=1.3, sharey=False)
    a1, a2 = g.axes.flat
    _lines(a1, stats, "layer", "norm", "model", colours, style="statistic")
    _lines(a2, frame, "layer", "outlier %", "model", colours)
    for ax in (a1, a2):
        ax.set_xticks(sorted(frame["layer"].unique()))
        _panel_title(ax, ax.get_title())
    return _finish(g, caption, _style_legend(colours, list(_STAT_DASHES)), xlabel="layer (block index)")


def norm_view(image: Image.Image, norm_map: np.ndarray, layer_norms: np.ndarray,
              threshold: float, caption: str) -> plt.Figure:
    """One image, its patch-norm map, and the histogram of all patch norms of the layer
    (over every image analysed) with the rule's threshold — the explorer's view."""
    fig, axes = plt.subplots(1, 3, figsize=(WIDTH, 2.6))
    _show_image(axes[0], _square(image.convert("RGB")))
    h = axes[1].imshow(norm_map, cmap="viridis", vmin=0)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    fig.colorbar(h, ax=axes[1], shrink=0.8, label="patch norm")
    axes[2].hist(np.ravel(layer_norms), bins=60)
    axes[2].set_yscale("log")
    if np.isfinite(threshold):
        axes[2].axvline(threshold, color=THRESHOLD, ls="--", lw=1, label="threshold")
        axes[2].legend(fontsize=7)
    axes[2].set_xlabel("patch norm (all images)")
    axes[2].set_ylabel("patches (log count)")
    fig.suptitle(_wrap(caption, int(WIDTH * 72 / (0.55 * 9))), fontsize=9)
    fig.tight_layout()
    return fig


@_styled
def training_curves(table: pd.DataFrame, caption: str, paper_fraction: float | None = None) -> plt.Figure:
    """From :func:`vitreg_lib.train.log_table`: outlier % (gap rule) and max/median
    patch norm of each layer (colour: depth) against the share of training done, and
    the validation accuracy."""
    t = table.assign(outlier=100 * table["gap_fraction"])
    layers = sorted(t["layer"].unique())
    colours = dict(zip([f"layer {la}" for la in layers], sns.color_palette("crest", len(layers))))
    t["layer name"] = [f"layer {la}" for la in t["layer"]]
    g = _facets(["outlier patches (%), histogram gap", "max / median patch norm",
                 "validation accuracy (%)"], aspect=1.0, sharey=False)
    a1, a2, a3 = g.axes.flat
    for ax, y in ((a1, "outlier"), (a2, "max_over_median")):
        sns.lineplot(t, x="fraction", y=y, hue="layer name", palette=colours, marker=".", estimator=None,
                     legend=False, ax=ax)
    acc = t.drop_duplicates("step")
    a3.plot(acc["fraction"], 100 * acc["val_acc"], color="k", marker=".")
    a1.set_ylim(bottom=0)
    legend = {name: Line2D([], [], color=c, lw=2) for name, c in colours.items()}
    for ax in (a1, a2, a3):
        _panel_title(ax, ax.get_title())
        if paper_fraction is not None:
            ax.axvline(paper_fraction, color=THRESHOLD, ls="--", lw=1.2)
    if paper_fraction is not None:
        legend["paper: outliers from here on"] = Line2D([], [], color=THRESHOLD, ls="--", lw=1.2)
    return _finish(g, caption, legend, xlabel="share of training done")


@_styled
def densities(groups: Mapping[str, Mapping[str, np.ndarray]], xlabel: str, caption: str) -> plt.Figure:
    """One panel per model: normalised histograms (density) of a value for each token
    group (e.g. normal vs outlier); the panel's title gives each group's token count."""
    names = list(dict.fromkeys(group for by_group in groups.values() for group in by_group))
    colours = palette(names)
    titles = {model: model + "\n" + " · ".join(f"{group}: {np.size(v):,}" if np.size(v) else f"{group}: none"
                                               for group, v in by_group.items())
              for model, by_group in groups.items()}
    g = _facets(list(titles.values()), aspect=1.3, max_panel=WIDTH / 2, sharey=False)
    for model, by_group in groups.items():
        ax = g.axes_dict[titles[model]]
        for group, values in by_group.items():
            values = np.ravel(values)
            if values.size:
                sns.histplot(x=values, bins=40, binrange=(-1, 1), stat="density", element="step",
                             color=colours[group], alpha=0.35, ax=ax)
    legend = {f"{name} tokens": Patch(facecolor=c, edgecolor=c, alpha=0.6) for name, c in colours.items()}
    return _finish(g, caption, legend, xlabel=xlabel, ylabel="density")


@_styled
def probe_bars(frame: pd.DataFrame, caption: str) -> plt.Figure:
    """Bars with 95 % intervals: one panel per (probe, metric), token groups along x,
    one colour per model; a group that was not measured (too few tokens) is marked
    "n/a"."""
    frame = frame.assign(value=pd.to_numeric(frame["value"]), low=pd.to_numeric(frame["low"]),
                         high=pd.to_numeric(frame["high"]))
    keys = list(dict.fromkeys(zip(frame["probe"], frame["metric"])))
    models = list(dict.fromkeys(frame["model"]))
    colours = palette(models)
    most = max(frame[(frame["probe"] == p) & (frame["metric"] == m)]["group"].nunique() for p, m in keys)
    g = _facets([f"{p}: {m}" for p, m in keys], aspect=1.0,
                max_panel=max(4.0, 0.45 * most * len(models) + 1.0), sharex=False, sharey=False)
    width = 0.8 / len(models)
    missing = False
    for probe, metric in keys:
        ax = g.axes_dict[f"{probe}: {metric}"]
        sub = frame[(frame["probe"] == probe) & (frame["metric"] == metric)]
        groups = list(dict.fromkeys(sub["group"]))
        measured = sub.dropna(subset=["value"])
        if len(measured):
            sns.barplot(measured, x="group", y="value", hue="model", order=groups, hue_order=models,
                        palette=colours, errorbar=None, legend=False, ax=ax)
        x = [groups.index(r.group) + (models.index(r.model) - (len(models) - 1) / 2) * width
             for r in sub.itertuples()]
        sub = sub.assign(x=x)
        ok = sub.dropna(subset=["value"])
        if len(ok):
            _interval(ax, ok["x"], ok["low"], ok["high"])
        for r in sub[sub["value"].isna()].itertuples():
            ax.text(r.x, 0, "n/a", ha="center", va="bottom", rotation=90, fontsize=9, color="0.25")
            missing = True
        ax.set_xticks(range(len(groups)), [_wrap(gr, 10) for gr in groups])
        ax.set_xlim(-0.5, len(groups) - 0.5)
        ax.set_ylim(bottom=0)
        _panel_title(ax, f"{probe}: {metric}")
    legend = {m: Patch(color=c) for m, c in colours.items()}
    legend["95 % interval"] = Line2D([], [], color="0.15", marker="_", markersize=8, lw=1.3)
    if missing:
        legend["n/a: too few test tokens"] = Line2D([], [], ls="none")
    return _finish(g, caption, legend)


@_styled
def kind_norms(curves: pd.DataFrame, caption: str) -> plt.Figure:
    """One panel per model: median (solid) and maximum (dotted) norm of each token kind
    ([CLS], registers, patches, extra) over the blocks, from
    :func:`vitreg_lib.registers.kind_curves` tables (concatenated)."""
    models = list(dict.fromkeys(curves["model"]))
    kinds = [k for k in ("patches", "cls", "registers", "extra") if k in set(curves["kind"])]
    kinds += [k for k in dict.fromkeys(curves["kind"]) if k not in kinds]
    colours = palette(kinds)
    long = curves.melt(id_vars=["model", "kind", "layer"], value_vars=["median", "max"], var_name="statistic",
                       value_name="norm")
    g = _facets(models, aspect=1.3, sharey=True)
    for model in models:
        ax = g.axes_dict[model]
        _lines(ax, long[long["model"] == model], "layer", "norm", "kind", colours, style="statistic")
        ax.set_xticks(sorted(curves["layer"].unique()))
    return _finish(g, caption, _style_legend(colours, ["median", "max"]), xlabel="layer (block index)",
                   ylabel="token norm")


@_styled
def register_ablation(table: pd.DataFrame, caption: str) -> plt.Figure:
    """The number-of-registers ablation: outlier % (one line per rule column) and, when
    present, task accuracy and extra FLOPs against the number of registers."""
    outlier_cols = [c for c in table.columns if c.startswith("outlier %")]
    other = [c for c in ("task accuracy (%)", "extra FLOPs (%)") if c in table.columns]
    rules = {c: c.replace("outlier % ", "").strip("()") for c in outlier_cols}
    colours = palette(list(rules.values()) + other)
    g = _facets(["outlier patches (%)"] + other, aspect=1.2, sharey=False)
    long = table.melt(id_vars=["registers"], value_vars=outlier_cols + other, var_name="column")
    long["series"] = long["column"].map(lambda c: rules.get(c, c))
    for panel, series in [("outlier patches (%)", list(rules.values()))] + [(c, [c]) for c in other]:
        ax = g.axes_dict[panel]
        sns.lineplot(long[long["series"].isin(series)], x="registers", y="value", hue="series",
                     hue_order=series, palette=colours, marker="o", estimator=None, legend=False, ax=ax)
        ax.set_xticks(sorted(set(table["registers"])))
        _panel_title(ax, panel)
    legend = {f"outlier rule: {r}": Line2D([], [], color=colours[r], marker="o", lw=2)
              for r in rules.values()}
    return _finish(g, caption, legend, xlabel="registers")


def neuron_scores(scores: np.ndarray, neurons: Sequence[tuple[int, int]], caption: str) -> plt.Figure:
    """Register-neuron search: every unit's score (mean |activation| at outlier patches)
    per layer, the chosen top-k in red."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    layers = np.repeat(np.arange(scores.shape[0]), scores.shape[1])
    jitter = np.random.default_rng(0).uniform(-0.3, 0.3, layers.size)
    ax.scatter(layers + jitter, scores.ravel(), s=3, color="0.6", label="all units")
    if neurons:
        lay, unit = zip(*neurons)
        ax.scatter(lay, scores[list(lay), list(unit)], s=18, color="tab:red",
                   label=f"top {len(neurons)} (register neurons)")
    ax.set_xlabel("layer (block index)")
    ax.set_ylabel("mean |activation| at outliers")
    ax.set_xticks(range(scores.shape[0]))
    ax.legend(fontsize=7)
    fig.suptitle(_wrap(caption, int(fig.get_figwidth() * 72 / (0.55 * 9))), fontsize=9)
    fig.tight_layout()
    return fig


def _box(ax, box, colour, style="-", width=1.6) -> None:
    x0, y0, x1, y1 = box
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                               linestyle=style, linewidth=width))


def discovery_grid(images: Sequence[Image.Image], results: Mapping[str, object],
                   gt_boxes: Sequence[np.ndarray], caption: str,
                   norm_maps: Mapping[str, np.ndarray] | None = None) -> plt.Figure:
    """LOST's boxes: one row per image, one column per model (``results``: name ->
    :class:`vitreg_lib.discovery.Discovery`). Each panel shows the original image with
    the ground-truth boxes (white, dashed), LOST's box (red) and its seed patch (red
    cross). With ``norm_maps`` (name -> ``[n, rows, cols]``) the panels show the
    model's patch-norm map instead, with the same box and seed in patch units."""
    names = list(results)
    n = len(images)
    fig, axes = plt.subplots(n, len(names), figsize=(2.5 * len(names) + 0.6, 2.4 * n + 0.6),
                             squeeze=False, layout="constrained")
    for j, name in enumerate(names):
        res = results[name]
        for i, im in enumerate(images):
            ax = axes[i, j]
            r = res.results[i]
            row, col = r.seed_rc
            if norm_maps is None:
                w, h = im.size  # pixel i covers [i, i + 1): the boxes' continuous coordinates
                ax.imshow(np.asarray(im.convert("RGB")), extent=(0, w, h, 0))
                ax.set_xticks([])
                ax.set_yticks([])
                for g in np.asarray(gt_boxes[i]).reshape(-1, 4):
                    _box(ax, g, "white", "--", 1.2)
                _box(ax, res.boxes[i], "red")
                p = res.patch_size
                centre = res.geometries[i].to_original(np.array([(col + .5) * p, (row + .5) * p] * 2))
                ax.plot(centre[0], centre[1], "x", color="red", ms=8, mew=2)
                ax.set_xlim(0, w)
                ax.set_ylim(h, 0)
            else:
                m = norm_maps[name][i]
                h = ax.imshow(m, cmap="viridis")
                ax.set_xticks([])
                ax.set_yticks([])
                c0, r0, c1, r1 = r.box_patches
                _box(ax, (c0 - .5, r0 - .5, c1 - .5, r1 - .5), "red")
                ax.plot(col, row, "x", color="red", ms=8, mew=2)
                ax.set_xlim(-0.5, m.shape[1] - 0.5)
                ax.set_ylim(m.shape[0] - 0.5, -0.5)
                if i == n - 1:
                    fig.colorbar(h, ax=axes[:, j].tolist(), shrink=0.5, label="patch norm")
            if i == 0:
                ax.set_title(name, fontsize=9)
    fig.suptitle(_wrap(caption, int(fig.get_figwidth() * 72 / (0.55 * 9))), fontsize=9)
    return fig


@_styled
def corloc_bars(table: pd.DataFrame, caption: str, paper: Mapping[str, float] | None = None) -> plt.Figure:
    """CorLoc per model with its 95 % interval (from :func:`vitreg_lib.discovery.summary`);
    ``paper``: model -> the paper's CorLoc, drawn as a black tick where given."""
    models = list(table["model"])
    fig, ax = plt.subplots(figsize=(min(WIDTH, 1.0 * len(table) + 2.5), 3.6))
    sns.barplot(table, x="model", y="CorLoc (%)", hue="model", order=models, palette=palette(models),
                errorbar=None, legend=False, ax=ax)
    x = np.arange(len(table))
    _interval(ax, x, table["low"], table["high"])
    legend = {"95 % interval": Line2D([], [], color="0.15", marker="_", markersize=8, lw=1.3)}
    marked = [i for i, name in enumerate(models) if paper and name in paper]
    if marked:
        ax.hlines([paper[models[i]] for i in marked], [i - 0.4 for i in marked], [i + 0.4 for i in marked],
                  color="black", lw=2.5, zorder=4)
        legend["the paper's CorLoc"] = Line2D([], [], color="black", lw=2.5)
    ax.set_xticks(x, models, rotation=25, ha="right")
    ax.set_xlabel("")
    ax.set_ylim(0, max(100.0, float(table["high"].max())))
    return _caption(fig, caption, legend)
