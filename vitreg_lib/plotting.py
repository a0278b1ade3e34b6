"""Figures, drawn from data the analyses return. Every figure takes a ``caption`` that
says which model(s), data, layer and rule produced it; it becomes the figure's title.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from PIL import Image


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
    (``name -> [B, rows, cols]``). Each map has its own colour scale, shared by its column."""
    n, cols = len(images), 1 + len(maps)
    fig, axes = plt.subplots(n, cols, figsize=(2.3 * cols + 0.8, 2.2 * n + 0.6), squeeze=False,
                             layout="constrained")
    for i, im in enumerate(images):
        _show_image(axes[i, 0], _square(im.convert("RGB")))
        for j, (name, m) in enumerate(maps.items(), start=1):
            vmax = float(np.max(m))
            h = axes[i, j].imshow(m[i], cmap=cmap, vmin=0, vmax=vmax)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
            if i == 0:
                axes[i, j].set_title(name, fontsize=9)
            if i == n - 1:
                fig.colorbar(h, ax=axes[:, j].tolist(), shrink=0.5, label=colorbar_label)
    axes[0, 0].set_title("image", fontsize=9)
    fig.suptitle(caption, fontsize=9)
    return fig


def layer_histograms(norms: Mapping[str, Mapping[int, np.ndarray]],
                     thresholds: Mapping[str, Mapping[int, float]], caption: str,
                     models_across: bool = False) -> plt.Figure:
    """One row per model, one column per layer (``models_across=True``: one row per
    layer, one column per model): histogram of patch-token norms (log count), with the
    rule's threshold as a dashed line where one was found."""
    models = list(norms)
    layers = list(next(iter(norms.values())))
    rows, cols = (layers, models) if models_across else (models, layers)
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(2.2 * len(cols) + 0.4, 2.0 * len(rows) + 0.8),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c, col in enumerate(cols):
            m, layer = (col, row) if models_across else (row, col)
            ax = axes[r, c]
            ax.hist(np.ravel(norms[m][layer]), bins=60, color="tab:blue")
            ax.set_yscale("log")
            thr = thresholds.get(m, {}).get(layer, float("inf"))
            if np.isfinite(thr):
                ax.axvline(thr, color="tab:red", ls="--", lw=1)
            ax.set_title(f"{m} · layer {layer}", fontsize=8)
            ax.tick_params(labelsize=7)
            if r == len(rows) - 1:
                ax.set_xlabel("patch norm", fontsize=8)
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    return fig


def curves(tables: Mapping[str, pd.DataFrame], caption: str) -> plt.Figure:
    """Per-layer norm statistics (median, p99, max) and outlier % for each model,
    from :func:`vitreg_lib.outliers.layer_curves` tables."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    for k, (name, t) in enumerate(tables.items()):
        colour = f"C{k}"
        a1.plot(t["layer"], t["median"], color=colour, label=f"{name} median")
        a1.plot(t["layer"], t["p99"], color=colour, ls="--", label=f"{name} p99")
        a1.plot(t["layer"], t["max"], color=colour, ls=":", label=f"{name} max")
        a2.plot(t["layer"], 100 * t["outlier_fraction"], color=colour, marker="o", label=name)
    a1.set_xlabel("layer (block index)")
    a1.set_ylabel("patch-token norm")
    a1.legend(fontsize=7, ncol=2)
    a2.set_xlabel("layer (block index)")
    a2.set_ylabel("outlier patches (%)")
    a2.set_title(next(iter(tables.values()))["rule"].iloc[0], fontsize=8)
    a2.legend(fontsize=7)
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    return fig


def norm_view(image: Image.Image, norm_map: np.ndarray, layer_norms: np.ndarray,
              threshold: float, caption: str) -> plt.Figure:
    """One image, its patch-norm map, and the histogram of all patch norms of the layer
    (over every image analysed) with the rule's threshold — the explorer's view."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.1))
    _show_image(axes[0], _square(image.convert("RGB")))
    h = axes[1].imshow(norm_map, cmap="viridis", vmin=0)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    fig.colorbar(h, ax=axes[1], shrink=0.8, label="patch norm")
    axes[2].hist(np.ravel(layer_norms), bins=60)
    axes[2].set_yscale("log")
    if np.isfinite(threshold):
        axes[2].axvline(threshold, color="tab:red", ls="--", lw=1, label="threshold")
        axes[2].legend(fontsize=7)
    axes[2].set_xlabel("patch norm (all images)")
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    return fig


def training_curves(table: pd.DataFrame, caption: str, paper_fraction: float | None = None) -> plt.Figure:
    """From :func:`vitreg_lib.train.log_table`: outlier % (gap rule) and max/median
    patch norm of each layer against the share of training done, with accuracy."""
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(13, 3.4))
    for layer, t in table.groupby("layer"):
        a1.plot(t["fraction"], 100 * t["gap_fraction"], marker=".", label=f"layer {layer}")
        a2.plot(t["fraction"], t["max_over_median"], marker=".", label=f"layer {layer}")
    acc = table.drop_duplicates("step")
    a3.plot(acc["fraction"], 100 * acc["val_acc"], color="k", marker=".")
    a1.set_ylabel("outlier patches (%), histogram gap")
    a1.set_ylim(bottom=0)
    a2.set_ylabel("max / median patch norm")
    a3.set_ylabel("validation accuracy (%)")
    for ax in (a1, a2, a3):
        ax.set_xlabel("share of training done")
        if paper_fraction is not None:
            ax.axvline(paper_fraction, color="tab:red", ls="--", lw=1)
    a1.legend(fontsize=7)
    if paper_fraction is not None:
        a1.text(paper_fraction, a1.get_ylim()[1], " paper: outliers from here", color="tab:red",
                fontsize=7, va="top")
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    return fig


def densities(groups: Mapping[str, Mapping[str, np.ndarray]], xlabel: str, caption: str) -> plt.Figure:
    """One panel per model: normalised histograms of a value for each token group
    (e.g. normal vs outlier), with the group's token count in the legend."""
    fig, axes = plt.subplots(1, len(groups), figsize=(4.2 * len(groups), 3.2), squeeze=False)
    for ax, (model, by_group) in zip(axes[0], groups.items()):
        for k, (group, values) in enumerate(by_group.items()):
            values = np.ravel(values)
            if values.size:
                ax.hist(values, bins=40, range=(-1, 1), density=True, alpha=0.55, color=f"C{k}",
                        label=f"{group} (n={values.size})")
            else:
                ax.plot([], [], color=f"C{k}", label=f"{group} (none)")
        ax.set_title(model, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.legend(fontsize=7)
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    return fig


def probe_bars(frame: pd.DataFrame, caption: str) -> plt.Figure:
    """Bars with 95 % intervals, one panel per (probe, metric) and model; a group
    that was not measured (too few tokens) is marked "n/a"."""
    keys = list(dict.fromkeys(zip(frame["probe"], frame["metric"])))
    models = list(dict.fromkeys(frame["model"]))
    fig, axes = plt.subplots(1, len(keys), figsize=(4.0 * len(keys), 3.4), squeeze=False)
    for ax, (probe, metric) in zip(axes[0], keys):
        sub = frame[(frame["probe"] == probe) & (frame["metric"] == metric)]
        groups = list(dict.fromkeys(sub["group"]))
        width = 0.8 / len(models)
        labelled = set()
        for j, model in enumerate(models):
            for i, group in enumerate(groups):
                row = sub[(sub["model"] == model) & (sub["group"] == group)]
                x = i + (j - (len(models) - 1) / 2) * width
                if row.empty:
                    continue
                r = row.iloc[0]
                if r["value"] is None or pd.isna(r["value"]):
                    ax.text(x, 0, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
                    continue
                ax.bar(x, r["value"], width, color=f"C{j}", label=None if model in labelled else model,
                       yerr=[[r["value"] - r["low"]], [r["high"] - r["value"]]], capsize=3)
                labelled.add(model)
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(groups, fontsize=8, rotation=20)
        ax.set_title(f"{probe}: {metric}", fontsize=9)
        if labelled:
            ax.legend(fontsize=7)
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    return fig


def kind_norms(curves: pd.DataFrame, caption: str) -> plt.Figure:
    """One panel per model: median (solid) and maximum (dotted) norm of each token kind
    ([CLS], registers, patches, extra) over the blocks, from
    :func:`vitreg_lib.registers.kind_curves` tables (concatenated)."""
    models = list(dict.fromkeys(curves["model"]))
    fig, axes = plt.subplots(1, len(models), figsize=(4.4 * len(models), 3.2), squeeze=False,
                             sharey=True)
    colours = {"cls": "C3", "registers": "C2", "patches": "C0", "extra": "C1"}
    for ax, model in zip(axes[0], models):
        t = curves[curves["model"] == model]
        for kind, g in t.groupby("kind", sort=False):
            ax.plot(g["layer"], g["median"], color=colours.get(kind), label=f"{kind} median")
            ax.plot(g["layer"], g["max"], color=colours.get(kind), ls=":", label=f"{kind} max")
        ax.set_title(model, fontsize=9)
        ax.set_xlabel("layer (block index)")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("token norm")
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    return fig


def register_ablation(table: pd.DataFrame, caption: str) -> plt.Figure:
    """The number-of-registers ablation: outlier % (each rule column) and, when present,
    task accuracy and extra FLOPs against the number of registers."""
    n = table["registers"]
    outlier_cols = [c for c in table.columns if c.startswith("outlier %")]
    other = [c for c in ("task accuracy (%)", "extra FLOPs (%)") if c in table.columns]
    fig, axes = plt.subplots(1, 1 + len(other), figsize=(4.2 * (1 + len(other)), 3.1), squeeze=False)
    for c in outlier_cols:
        axes[0, 0].plot(n, table[c], marker="o", label=c.replace("outlier % ", ""))
    axes[0, 0].set_ylabel("outlier patches (%)")
    axes[0, 0].legend(fontsize=7)
    for ax, c in zip(axes[0, 1:], other):
        ax.plot(n, table[c], marker="o", color="C2")
        ax.set_ylabel(c)
    for ax in axes[0]:
        ax.set_xlabel("registers")
        ax.set_xticks(sorted(set(n)))
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    return fig


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
    fig.suptitle(caption, fontsize=9)
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
    fig.suptitle(caption, fontsize=9)
    return fig


def corloc_bars(table: pd.DataFrame, caption: str, paper: Mapping[str, float] | None = None) -> plt.Figure:
    """CorLoc per model with its 95 % interval (from :func:`vitreg_lib.discovery.summary`);
    ``paper``: model -> the paper's CorLoc, drawn as a black tick where given."""
    fig, ax = plt.subplots(figsize=(1.1 * len(table) + 2.2, 3.3))
    x = np.arange(len(table))
    v = table["CorLoc (%)"].to_numpy()
    ax.bar(x, v, color=[f"C{i}" for i in range(len(table))],
           yerr=[v - table["low"].to_numpy(), table["high"].to_numpy() - v], capsize=3)
    if paper:
        for i, name in enumerate(table["model"]):
            if name in paper:
                ax.plot([i - 0.35, i + 0.35], [paper[name]] * 2, color="black", lw=2,
                        label="paper" if i == min(j for j, n in enumerate(table["model"]) if n in paper)
                        else None)
        ax.legend(fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(table["model"], rotation=25, ha="right", fontsize=8)
    ax.set_ylabel("CorLoc (%)")
    ax.set_ylim(0, max(100.0, float(table["high"].max())))
    fig.suptitle(caption, fontsize=9)
    fig.tight_layout()
    return fig


def lab_curves(log: list[dict], caption: str) -> plt.Figure:
    """A mini-lab v2 training log (:mod:`vitreg_lib.train`) against images seen, one line
    per block: max / median patch norm after the MLP (solid) and after the attention
    (dotted); the share of the top-1 % norm patches on background, beside background's
    share of all patches (black, dashed); the attention the most-attended token receives;
    and the task metric."""
    images = np.array([e["images"] for e in log]) / 1e6
    depth = len(log[0]["layers"])
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), layout="constrained")
    (a1, a2), (a3, a4) = axes
    for layer in range(depth):
        rows = [e["layers"][layer] for e in log]
        c = f"C{layer}"
        a1.plot(images, [r["max_over_median"] for r in rows], color=c, label=f"block {layer}")
        a1.plot(images, [r["attn_max_over_median"] for r in rows], color=c, ls=":")
        a2.plot(images, [100 * r["top1_background"] for r in rows], color=c)
        a3.plot(images, [r["sink_attention"] for r in rows], color=c)
    a2.plot(images, [100 * e["layers"][0]["background_share"] for e in log], color="k", ls="--",
            label="background's share of all patches")
    metric = "patch_acc" if "patch_acc" in log[-1] else "val_acc"
    a4.plot(images, [100 * e[metric] for e in log], color="k")
    a1.set_ylabel("max / median patch norm")
    a2.set_ylabel("top-1 % norms on background (%)")
    a3.set_ylabel("attention to the most-attended token")
    a4.set_ylabel(("patch" if metric == "patch_acc" else "image") + " accuracy, validation (%)")
    a1.legend(fontsize=7, ncol=2, title="solid: after MLP · dotted: after attention", title_fontsize=7)
    a2.legend(fontsize=7)
    a2.set_ylim(0, 100)
    for ax in axes.ravel():
        ax.set_xlabel("images seen (millions)")
    fig.suptitle(caption, fontsize=9)
    return fig
