"""The mini-lab's figures: a training run's curves and the registers' demand test.

Drawn from the lab's training logs (:mod:`vitreg_lib.lab.train`) in the course's style
(:mod:`vitreg_lib.plotting`); the chapters never draw them.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..plotting import MAX_HEIGHT, WIDTH, _caption


def lab_curves(log: list[dict], caption: str) -> plt.Figure:
    """A mini-lab training log (:mod:`vitreg_lib.lab.train`) against images seen, one line
    per block: max / median patch norm after the MLP (solid) and after the attention
    (dotted); the share of the top-1 % norm patches on background, beside background's
    share of all patches (black, dashed); the attention the most-attended token receives;
    and the task metric."""
    images = np.array([e["images"] for e in log]) / 1e6
    depth = len(log[0]["layers"])
    fig, axes = plt.subplots(2, 2, figsize=(8, 5.6 + 0.15 * (depth // 8)), layout="constrained")
    (a1, a2), (a3, a4) = axes
    # the default cycle repeats after 10 colours: deeper models get one colour per block,
    # from dark (block 0) to light (last block)
    colours = ([f"C{i}" for i in range(depth)] if depth <= 10
               else list(plt.get_cmap("viridis")(np.linspace(0, 0.92, depth))))
    for layer in range(depth):
        rows = [e["layers"][layer] for e in log]
        c = colours[layer]
        a1.plot(images, [r["max_over_median"] for r in rows], color=c, label=f"block {layer}")
        a1.plot(images, [r["attn_max_over_median"] for r in rows], color=c, ls=":")
        a2.plot(images, [100 * r["top1_background"] for r in rows], color=c)
        a3.plot(images, [r["sink_attention"] for r in rows], color=c)
    a2.plot(images, [100 * e["layers"][0]["background_share"] for e in log], color="k", ls="--",
            label="background's share of all patches")
    metric = "patch_acc" if "patch_acc" in log[-1] else "val_acc"
    a4.plot(images, [100 * e[metric] for e in log], color="k")
    # two-line labels: one line of this length runs into the neighbouring panel
    a1.set_ylabel("max / median\npatch norm")
    a2.set_ylabel("top-1 % norms\non background (%)")
    a3.set_ylabel("attention to the\nmost-attended token")
    a4.set_ylabel(("patch" if metric == "patch_acc" else "image") + " accuracy,\nvalidation (%)")
    fig.legend(*a1.get_legend_handles_labels(), loc="outside lower center", fontsize=7,
               ncol=min(depth, 8), title="solid: after MLP · dotted: after attention", title_fontsize=7)
    a2.legend(fontsize=7)
    a2.set_ylim(0, 100)
    for ax in axes.ravel():
        ax.set_xlabel("images seen (millions)")
    fig.suptitle(caption, fontsize=9)
    return fig


def register_use(shares: pd.DataFrame, caption: str) -> plt.Figure:
    """The demand test of the mini-lab as a heat map: one row per run, one column per
    block, each cell the largest share of a head's attention that the run's registers
    receive there (``shares``: runs x blocks, in [0, 1]; blocks a run does not have are
    NaN and left blank). Name each row with the share a head that spread its attention
    evenly would give the registers: cells far above it mark a block whose heads park
    their attention on the registers."""
    height = min(MAX_HEIGHT * 2, 1.0 + 0.3 * len(shares))
    fig, ax = plt.subplots(figsize=(WIDTH, height), layout="constrained")
    sns.heatmap(100 * shares, ax=ax, vmin=0, vmax=100, cmap="mako_r", annot=True, fmt=".0f",
                annot_kws=dict(fontsize=8), cbar_kws=dict(label="to the registers (%)"))
    ax.set_xlabel("block")
    ax.set_ylabel("")
    ax.tick_params(axis="y", labelsize=8)
    # two-digit block numbers of a deep model run together at the default size
    ax.tick_params(axis="x", labelsize=8 if shares.shape[1] <= 12 else 6)
    return _caption(fig, caption)
