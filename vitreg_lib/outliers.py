"""Token norms, outlier rules and per-layer curves.

The paper's cut-off (norm > 150) was hand-picked for DINOv2 ViT-g; norm scales differ
by model, so every rule here is computed per model and per layer from the norms it is
given, and every result names its rule and parameters:

* :class:`Absolute` — ``norm > value`` (the paper's rule, with ``value=150``);
* :class:`HistogramGap` — the longest run of empty histogram bins with a minority of
  tokens above it; ``norm`` above the gap is an outlier. No gap -> no outliers
  (``found=False``). This is the "clearly bimodal" test;
* :class:`MeanStd` — ``norm > mean + k·std`` (k = 3: the course's per-image register-neuron
  search, not the authors' fixed cut);
* :class:`Percentile` — ``norm > q-th percentile`` (always flags about ``100 - q`` %;
  useful for ranking, never as evidence that outliers exist).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch


def token_norms(tokens: torch.Tensor) -> torch.Tensor:
    """L2 norm over the last (feature) dimension."""
    return tokens.float().norm(dim=-1)


def as_numpy(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A tensor (any device) or array as a NumPy array."""
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


@dataclass(frozen=True)
class Rule:
    def threshold(self, norms: np.ndarray) -> float:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True)
class Absolute(Rule):
    value: float = 150.0

    def threshold(self, norms: np.ndarray) -> float:
        return float(self.value)

    def describe(self) -> str:
        return f"norm > {self.value:g}"


@dataclass(frozen=True)
class MeanStd(Rule):
    k: float = 3.0

    def threshold(self, norms: np.ndarray) -> float:
        return float(norms.mean() + self.k * norms.std())

    def describe(self) -> str:
        return f"norm > mean + {self.k:g}·std"


@dataclass(frozen=True)
class Percentile(Rule):
    q: float = 99.0

    def threshold(self, norms: np.ndarray) -> float:
        return float(np.percentile(norms, self.q))

    def describe(self) -> str:
        return f"norm > p{self.q:g}"


@dataclass(frozen=True)
class HistogramGap(Rule):
    """Outliers = tokens above the longest empty gap of a ``bins``-bin histogram.

    A gap counts if it spans at least ``min_empty`` consecutive empty bins, is at least
    ``min_iqr`` times as wide as the interquartile range of the norms (so the sparse
    tail of a single mode is not mistaken for a second mode), and at most ``max_share``
    of the tokens lie above it (the high mode is the minority).
    """

    bins: int = 60
    min_empty: int = 2
    min_iqr: float = 1.0
    max_share: float = 0.5

    def gap(self, norms: np.ndarray) -> tuple[float, float] | None:
        """``(low, high)`` edges of the chosen gap, or ``None``."""
        counts, edges = np.histogram(norms, bins=self.bins)
        min_width = self.min_iqr * float(np.subtract(*np.percentile(norms, [75, 25])))
        above = np.cumsum(counts[::-1])[::-1]  # tokens in bin j and above
        best, j = None, 0
        n = len(counts)
        while j < n:
            if counts[j] == 0:
                start = j
                while j < n and counts[j] == 0:
                    j += 1
                length = j - start
                if (length >= self.min_empty and j < n and 0 < above[j] <= self.max_share * len(norms)
                        and edges[j] - edges[start] >= min_width
                        and (best is None or length > best[1] - best[0])):
                    best = (start, j)
            j += 1
        if best is None:
            return None
        return float(edges[best[0]]), float(edges[best[1]])

    def threshold(self, norms: np.ndarray) -> float:
        g = self.gap(norms)
        return float("inf") if g is None else (g[0] + g[1]) / 2

    def describe(self) -> str:
        return f"histogram gap (≥{self.min_iqr:g}·IQR wide, {self.bins} bins)"


@dataclass
class OutlierResult:
    """Which tokens a rule flags, and how many."""

    mask: np.ndarray
    threshold: float
    rule: str

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    @property
    def total(self) -> int:
        return int(self.mask.size)

    @property
    def fraction(self) -> float:
        return self.count / max(self.total, 1)

    @property
    def found(self) -> bool:
        return bool(np.isfinite(self.threshold)) and self.count > 0

    def __str__(self) -> str:
        thr = "none (no gap)" if not np.isfinite(self.threshold) else f"{self.threshold:.3g}"
        return (f"{self.count}/{self.total} tokens ({100 * self.fraction:.2f} %) flagged by "
                f"{self.rule}; threshold {thr}")


def detect(norms: torch.Tensor | np.ndarray, rule: Rule) -> OutlierResult:
    """Flag outliers among ``norms`` (any shape; the rule sees all of them at once)."""
    arr = as_numpy(norms).astype(np.float64)
    if arr.size == 0:
        raise ValueError("No norms given.")
    thr = rule.threshold(arr.ravel())
    return OutlierResult(mask=arr > thr, threshold=thr, rule=rule.describe())


def layer_curves(features, rule: Rule, part: str = "patches") -> pd.DataFrame:
    """Per extracted layer: median, p99 and max norm of ``part`` tokens, the rule's
    threshold and outlier fraction (rule computed per layer).

    ``part``: ``"patches"``, ``"registers"``, ``"cls"`` or ``"extra"`` (test-time registers).
    """
    rows = []
    for layer in features.layers:
        toks = {"patches": features.patches, "registers": features.registers, "cls": features.cls,
                "extra": lambda i: features.layout.split(features.layer(i))["extra"]}[part](layer)
        n = as_numpy(token_norms(toks)).ravel()
        res = detect(n, rule)
        rows.append(dict(layer=layer, median=float(np.median(n)),
                         p99=float(np.percentile(n, 99)), max=float(n.max()),
                         threshold=res.threshold, outlier_fraction=res.fraction,
                         tokens=res.total, rule=res.rule))
    return pd.DataFrame(rows)


def patch_norm_maps(features, layer) -> np.ndarray:
    """Patch-token norms as maps ``[B, rows, cols]``."""
    return as_numpy(token_norms(features.patch_grid(layer)))


def summarize(features, layer, rule: Rule) -> dict:
    """Headline numbers of one model at one layer, the rule applied to all its patches.

    ``outlier_pct``; ``threshold``; median norm of normal and of outlier patches and
    their ratio (NaN without outliers); mean norm of registers and [CLS] when present.
    """
    norms = patch_norm_maps(features, layer)
    res = detect(norms, rule)
    normal, high = norms[~res.mask], norms[res.mask]
    out = dict(model=features.model_name, layer=layer, rule=res.rule, threshold=res.threshold,
               outlier_pct=100 * res.fraction, outliers=res.count, tokens=res.total,
               median_normal=float(np.median(normal)) if normal.size else float("nan"),
               median_outlier=float(np.median(high)) if high.size else float("nan"))
    out["norm_ratio"] = out["median_outlier"] / out["median_normal"] if high.size else float("nan")
    if features.layout.num_registers:
        out["register_norm_mean"] = float(token_norms(features.registers(layer)).mean())
    if features.layout.num_cls:
        out["cls_norm_mean"] = float(token_norms(features.cls(layer)).mean())
    return out


def rules_table(features: Mapping[str, object], rules: Sequence[Rule], layer=-1) -> pd.DataFrame:
    """:func:`summarize` of each model under each rule at ``layer``, as a table narrow
    enough for the book's column: one row per model and rule (the index), the threshold,
    the share and count of flagged patches and the median norms (the ratio is NaN where
    nothing is flagged)."""
    rows = [summarize(f, layer, r) for f in features.values() for r in rules]
    names = dict(threshold="threshold", outlier_pct="flagged (%)", outliers="flagged",
                 median_normal="median norm, rest", median_outlier="median norm, flagged",
                 norm_ratio="ratio")
    return pd.DataFrame(rows).set_index(["model", "rule"])[list(names)].rename(columns=names)


def attention_share(attention_maps: torch.Tensor | np.ndarray, mask: np.ndarray) -> dict:
    """How much [CLS]->patch attention falls on flagged patches.

    ``attention_maps``: ``[B, heads, rows, cols]`` (rows over all tokens, as returned by
    ``Features.cls_attention``); ``mask``: ``[B, rows, cols]``. Returns the attention
    share on flagged patches (mean over heads, renormalised over patches) and the share
    of patches flagged; a ratio above 1 means the flagged patches draw extra attention.
    """
    a = as_numpy(attention_maps).mean(axis=1)
    a = a / a.sum(axis=(1, 2), keepdims=True)
    share = float((a * mask).sum() / a.shape[0])
    base = float(mask.mean())
    return dict(attention_share=share, token_share=base,
                ratio=share / base if base > 0 else float("nan"))


def background_share(mask: np.ndarray, foreground: np.ndarray) -> dict:
    """Where flagged patches sit: share of them on background patches (no object pixel)
    against the share of background patches overall. ``mask``, ``foreground``:
    ``[B, rows, cols]`` (``foreground`` = share of object pixels in each patch)."""
    background = foreground == 0
    n = int(mask.sum())
    return dict(outliers=n, on_background=float(background[mask].mean()) if n else float("nan"),
                background_overall=float(background.mean()))


def top_norms_on_background(features, foreground: np.ndarray, indices: Sequence[int],
                            top: float = 90.0, layer=-1) -> float:
    """Share (%) of the largest patch norms (above the ``top`` percentile of the images
    ``indices`` at ``layer``) that sit on background patches (no object pixel):
    where the high norms are, with or without an outlier mode. ``foreground``:
    ``[len(indices), rows, cols]``, each patch's share of object pixels (the scenes')."""
    mask = detect(patch_norm_maps(features, layer)[list(indices)], Percentile(top)).mask
    return 100 * background_share(mask, foreground)["on_background"]


def layer_norms(features, layers, rule: Rule) -> tuple[dict, dict]:
    """Patch-norm maps and the rule's threshold for each of ``layers``."""
    norms = {layer: patch_norm_maps(features, layer) for layer in layers}
    return norms, {layer: detect(n, rule).threshold for layer, n in norms.items()}


def spread_layers(depth: int, count: int) -> list[int]:
    """``count`` block indices spread evenly from the first to the last block."""
    return sorted({int(round(x)) for x in np.linspace(0, depth - 1, min(count, depth))})


def describe_outliers(summary: dict) -> str:
    """One sentence on a :func:`summarize` result, for the notebook to print: how many
    outliers the rule found and how far above the others they sit. (A description, not
    a verdict: the one verdict, measured against the paper, is
    :func:`vitreg_lib.paper.verdict`.)"""
    head = f"{summary['model']}, layer {summary['layer']}, {summary['rule']}: "
    if not summary["outliers"]:
        return head + (f"no outliers among {summary['tokens']} patch tokens — "
                       "no empty gap sets a high mode apart by this rule.")
    return head + (f"{summary['outliers']} of {summary['tokens']} patch tokens "
                   f"({summary['outlier_pct']:.2f} %) are outliers; their median norm is "
                   f"{summary['norm_ratio']:.1f}x that of the others.")



#: objects make a second population, not an outlier mode, when their median patch norm is
#: at least this many times the background's (the scenes' shapes against their flat ground)
OBJECT_MODE_RATIO = 1.25


def _content(norms: np.ndarray, objects, known) -> tuple[np.ndarray, np.ndarray]:
    """``objects`` and ``known`` as boolean arrays of the maps' shape (``known``: all of
    them by default), as :func:`mode_split` and :func:`norms_by_content` read them."""
    objects = np.asarray(objects, dtype=bool)
    known = np.ones_like(objects) if known is None else np.asarray(known, dtype=bool)
    if objects.shape != norms.shape or known.shape != norms.shape:
        raise ValueError(f"objects {objects.shape} and known {known.shape} must have the maps' shape "
                         f"{norms.shape}.")
    return objects, known


def mode_split(maps: np.ndarray, rule: Rule, objects: np.ndarray | None = None,
               known: np.ndarray | None = None) -> dict:
    """What the upper part of a norm histogram is. ``maps``: patch norms ``[B, rows,
    cols]`` (one layer), all of which the rule sees; ``objects``: which patches hold
    object pixels (same shape, bool), or ``None`` where no image has masks (photos);
    ``known``: which patches' content ``objects`` knows (default: all of them; e.g. the
    scenes' patches and not the photos').

    Returns the rule's threshold and flagged share; with ``objects``, the median norm of
    object and of background patches, the share of the patches above the background's
    99th percentile that are object patches (``tail_object_share``), the share of the
    flagged patches that are background (``flagged_on_background``), and
    ``object_mode``: the objects form a second population of their own (median ratio
    at least :data:`OBJECT_MODE_RATIO`). An *outlier mode* is only what the rule flags:
    a mode above an empty gap, whatever lies below it."""
    norms = np.asarray(maps, dtype=np.float64)
    res = detect(norms, rule)
    out = dict(rule=rule.describe(), tokens=int(norms.size), threshold=res.threshold,
               flagged_pct=100 * res.fraction, outlier_mode=bool(res.fraction > 0), objects_known=False)
    if objects is None:
        return out
    objects, known = _content(norms, objects, known)
    ob, bg = objects & known, ~objects & known
    if not ob.any() or not bg.any():
        return out
    tail = known & (norms > np.percentile(norms[bg], 99))
    flagged = res.mask & known
    out.update(objects_known=True, object_median=float(np.median(norms[ob])),
               background_median=float(np.median(norms[bg])),
               tail_object_share=float(ob[tail].mean()) if tail.any() else float("nan"),
               flagged_on_background=float(bg[flagged].mean()) if flagged.any() else float("nan"))
    out["object_mode"] = out["object_median"] >= OBJECT_MODE_RATIO * out["background_median"]
    return out


def norms_by_content(maps: np.ndarray, objects: np.ndarray | None = None,
                     known: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The patch norms of ``maps`` split by what the patches hold, as :func:`mode_split`
    reads ``objects`` and ``known``: ``"background"`` and ``"object"`` (patches whose
    content is known) and ``"photo"`` (the rest, e.g. photos without masks). Without
    ``objects`` every patch is a ``"photo"`` patch. Each patch is in exactly one group."""
    norms = np.asarray(maps, dtype=np.float64)
    if objects is None:
        objects, known = np.zeros(norms.shape, bool), np.zeros(norms.shape, bool)
    objects, known = _content(norms, objects, known)
    return {"background": norms[known & ~objects], "object": norms[known & objects], "photo": norms[~known]}


def describe_modes(split: dict, what: str = "") -> str:
    """The sentence a chapter prints under its histograms, from :func:`mode_split`: an
    outlier mode only where the rule found a gap; an object population named as one."""
    head = f"{what}: " if what else ""
    if split["outlier_mode"]:
        text = (f"an outlier mode — {split['flagged_pct']:.2f} % of {split['tokens']} patches lie above an "
                f"empty gap at norm {split['threshold']:.3g} ({split['rule']})")
        if split["objects_known"]:
            text += (f"; {100 * split['flagged_on_background']:.0f} % of them are background patches "
                     "(the paper finds its outliers on background)")
        return head + text + "."
    if split["objects_known"] and split["object_mode"]:
        return head + (f"two populations and no outlier mode — the upper one is the object patches (median "
                       f"norm {split['object_median']:.3g} against {split['background_median']:.3g} for "
                       f"background; {100 * split['tail_object_share']:.0f} % of the patches above the "
                       "background's 99th percentile hold object pixels), and no empty gap separates a "
                       f"mode above them ({split['rule']}).")
    if split["objects_known"]:
        return head + (f"one population and no outlier mode — object and background patches have similar "
                       f"norms (medians {split['object_median']:.3g} and {split['background_median']:.3g}) "
                       f"and no empty gap splits the histogram ({split['rule']}).")
    return head + (f"no outlier mode — no empty gap splits the histogram ({split['rule']}); without object "
                   "masks (photos), the upper tail cannot be split by content.")


def split_layer(curves: pd.DataFrame, min_fraction: float = 0.002):
    """The first layer of a :func:`layer_curves` table where the rule flags at least
    ``min_fraction`` of the patches (the paper's "the high mode splits off"), or
    ``None`` when no layer does."""
    hit = curves[curves["outlier_fraction"] >= min_fraction]
    return None if hit.empty else hit["layer"].iloc[0]


def depth_summary(features, rule: Rule, min_fraction: float = 0.002) -> dict:
    """Where in depth a model's outliers are: the split layer (first layer with at least
    ``min_fraction`` flagged), the layer with the most, and that share; and the largest
    max / median patch norm of any layer (about 10 where the paper sees outliers, under
    2 in a model without them), whatever the rule says."""
    curves = layer_curves(features, rule)
    top = curves.loc[curves["outlier_fraction"].idxmax()]
    split = split_layer(curves, min_fraction)
    return dict(model=features.model_name, blocks=features.depth, split_layer=split,
                split_depth=None if split is None else split / features.depth,
                most_layer=int(top["layer"]), max_outlier_pct=100 * float(top["outlier_fraction"]),
                max_over_median=float((curves["max"] / curves["median"]).max()), rule=rule.describe())
