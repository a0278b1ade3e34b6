"""What single tokens know: neighbour similarity (F3), local probes (F4), global
probes (F5). Built on scikit-learn estimators; no hand-written training loops.

Protocol, fixed here so every chapter and test uses the same one:

* Train and test are split **by image** (:func:`split_images`): every token of an image
  is on one side.
* Local probes are fitted on all patch tokens of the training images and evaluated
  separately on the normal and the outlier tokens of the test images:
  position (a linear classifier over grid cells: top-1 accuracy, mean distance in
  patches between predicted and true cell) and pixels (ridge regression onto the
  patch's normalised input pixels: mean squared L2 error per token).
* The global probe is logistic regression on one token per image: [CLS], a random
  normal patch, a random outlier patch (images that have one), each register.
* Every number comes with a 95 % bootstrap interval over test images and the number of
  tokens and images it rests on. With fewer than ``min_tokens`` test tokens in a
  group, the value is ``None`` and the note says so: no number is printed for a
  group too small to measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from .features import Features, extract
from .outliers import as_numpy, detect, patch_norm_maps

MIN_TOKENS = 20


# ---------------------------------------------------------------- neighbour similarity
def neighbour_similarity(embeddings, grid: tuple[int, int]) -> np.ndarray:
    """Mean cosine similarity of each patch embedding with its 4 neighbours (fewer at
    the border): ``[B, num_patches, D]`` -> ``[B, rows, cols]``."""
    e = as_numpy(embeddings).astype(np.float64)
    b, n, d = e.shape
    rows, cols = grid
    if n != rows * cols:
        raise ValueError(f"{n} patches do not fill a {rows}x{cols} grid.")
    e = e / (np.linalg.norm(e, axis=-1, keepdims=True) + 1e-12)
    e = e.reshape(b, rows, cols, d)
    total = np.zeros((b, rows, cols))
    count = np.zeros((1, rows, cols))
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        ys, yd = slice(max(dy, 0), rows + min(dy, 0)), slice(max(-dy, 0), rows + min(-dy, 0))
        xs, xd = slice(max(dx, 0), cols + min(dx, 0)), slice(max(-dx, 0), cols + min(-dx, 0))
        total[:, yd, xd] += (e[:, yd, xd] * e[:, ys, xs]).sum(-1)
        count[:, yd, xd] += 1
    return total / count


# ---------------------------------------------------------------- results and splits
@dataclass
class ProbeResult:
    probe: str  # "position", "pixels", "global"
    group: str  # "normal", "outlier", "cls", "register 0", ...
    metric: str
    value: float | None
    low: float | None
    high: float | None
    tokens: int
    images: int
    note: str = ""


def split_images(n_images: int, test_share: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train / test image indices."""
    if n_images < 4:
        raise ValueError(f"Need at least 4 images to split into train and test, got {n_images}.")
    order = np.random.default_rng(seed).permutation(n_images)
    n_test = max(1, int(round(test_share * n_images)))
    return np.sort(order[n_test:]), np.sort(order[:n_test])


def _bootstrap(per_image: list[np.ndarray], stat, reps: int = 200, seed: int = 0):
    """``stat`` over the concatenated per-image values, with a 95 % interval from
    resampling images."""
    rng = np.random.default_rng(seed)
    value = stat(np.concatenate(per_image))
    boots = [stat(np.concatenate([per_image[i] for i in rng.integers(0, len(per_image), len(per_image))]))
             for _ in range(reps)]
    return float(value), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def _result(probe, group, metric, per_image, stat, note="", min_tokens=MIN_TOKENS) -> ProbeResult:
    per_image = [v for v in per_image if len(v)]
    n = int(sum(len(v) for v in per_image))
    if n < min_tokens:
        return ProbeResult(probe, group, metric, None, None, None, n, len(per_image),
                           f"too few {group} tokens in the test images ({n} < {min_tokens}): not measured")
    v, lo, hi = _bootstrap(per_image, stat)
    return ProbeResult(probe, group, metric, v, lo, hi, n, len(per_image), note)


def to_frame(results: list[ProbeResult]) -> pd.DataFrame:
    return pd.DataFrame([r.__dict__ for r in results])


# ---------------------------------------------------------------- local probes (F4)
MAX_ITER = 500


def _linear_classifier(seed: int):
    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER, C=1.0, random_state=seed))


def _fit(model, x, y) -> str:
    """Fit; return a note if the solver stopped before converging (instead of a warning)."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    if any(issubclass(w.category, ConvergenceWarning) for w in caught):
        return f"solver stopped at {MAX_ITER} iterations before full convergence"
    return ""


def interval(low, high) -> str:
    """``[low, high]`` with 3 significant digits, or ``n/a``."""
    if low is None or high is None or low != low:
        return "n/a"
    return f"[{low:.3g}, {high:.3g}]"


def estimate(value, low, high) -> str:
    """``value [low, high]`` as text, every number with the decimals that give the value
    three significant digits: ``41.7 [38.2, 45.0]``, ``0.790 [0.712, 0.874]``."""
    v = float(value)
    decimals = 1 if v == 0 or not np.isfinite(v) else int(min(max(2 - np.floor(np.log10(abs(v))), 0), 6))
    if low is None or high is None or pd.isna(low) or pd.isna(high):
        return f"{v:.{decimals}f}"
    return f"{v:.{decimals}f} [{float(low):.{decimals}f}, {float(high):.{decimals}f}]"


#: the cell of :func:`pivot` for a model that has no such group (e.g. no registers)
NO_GROUP = "—"


def pivot(frame: pd.DataFrame) -> pd.DataFrame:
    """A probe table (one row per probe × metric × group × model, as :func:`probe_model`
    returns) as a summary to read: one row per quantity (probe, metric, group), one
    column per model, each cell the value with its 95 % interval as text (see
    :func:`estimate`). A group too small to measure reads ``n/a (too few tokens: n)``
    (``images`` for the global probe, which takes one token per image); a group a model
    does not have reads :data:`NO_GROUP`. Rows and columns keep the order of ``frame``,
    except that the groups of one (probe, metric) are put together."""
    def cell(r) -> str:
        if r.value is None or pd.isna(r.value):
            unit, count = ("images", r.images) if r.probe == "global" else ("tokens", r.tokens)
            return f"n/a (too few {unit}: {count})"
        return estimate(r.value, r.low, r.high)

    keys = ["probe", "metric", "group"]
    cells = frame.assign(cell=[cell(r) for r in frame.itertuples()])
    rows = list(dict.fromkeys(zip(*(cells[k] for k in keys))))
    quantities = list(dict.fromkeys(r[:2] for r in rows))
    rows.sort(key=lambda r: quantities.index(r[:2]))  # the groups of one quantity together
    models = list(dict.fromkeys(cells["model"]))
    table = cells.pivot(index=keys, columns="model", values="cell")
    table = table.reindex(index=pd.MultiIndex.from_tuples(rows, names=keys), columns=models).fillna(NO_GROUP)
    table.columns.name = "model"
    return table


def local_probes(tokens, outlier_mask, pixels, grid: tuple[int, int], test_share: float = 0.3,
                 seed: int = 0, min_tokens: int = MIN_TOKENS,
                 max_train_tokens: int = 8000) -> list[ProbeResult]:
    """Position and pixel probes on patch tokens.

    ``tokens`` ``[B, num_patches, D]``; ``outlier_mask`` ``[B, num_patches]`` (or
    ``[B, rows, cols]``); ``pixels`` ``[B, num_patches, P]`` (each patch's input pixels).
    The probes are fitted on at most ``max_train_tokens`` tokens drawn at random from
    the training images (a many-class logistic regression on every token is slow on a
    CPU); every token of the test images is evaluated.
    """
    x, px = as_numpy(tokens), as_numpy(pixels)
    m = as_numpy(outlier_mask).reshape(len(tokens), -1).astype(bool)
    b, n, d = x.shape
    rows, cols = grid
    pos = np.tile(np.arange(n), (b, 1))
    train, test = split_images(b, test_share, seed)
    xt, pt, yt = x[train].reshape(-1, d), pos[train].ravel(), px[train].reshape(len(train) * n, -1)
    if len(xt) > max_train_tokens:
        keep = np.random.default_rng(seed).choice(len(xt), max_train_tokens, replace=False)
        xt, pt, yt = xt[keep], pt[keep], yt[keep]
    clf = _linear_classifier(seed)
    note = _fit(clf, xt, pt)
    reg = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(xt, yt)
    out = []
    for group, sel in (("normal", ~m), ("outlier", m)):
        hits, dists, errs = [], [], []
        for i in test:
            idx = np.flatnonzero(sel[i])
            if not len(idx):
                hits.append(np.array([]))
                dists.append(np.array([]))
                errs.append(np.array([]))
                continue
            pred = clf.predict(x[i, idx])
            hits.append((pred == idx).astype(float))
            dists.append(np.hypot(pred // cols - idx // cols, pred % cols - idx % cols))
            errs.append(((reg.predict(x[i, idx]) - px[i, idx]) ** 2).sum(-1))
        out += [_result("position", group, "top-1 accuracy (%)", [100 * h for h in hits], np.mean,
                        note=note, min_tokens=min_tokens),
                _result("position", group, "mean distance (patches)", dists, np.mean, note=note,
                        min_tokens=min_tokens),
                _result("pixels", group, "L2 error (squared, per patch)", errs, np.mean,
                        min_tokens=min_tokens)]
    return out


def patch_pixels(images: torch.Tensor, patch: int) -> np.ndarray:
    """The input pixels under each patch: ``[B, 3, H, W]`` -> ``[B, num_patches, 3·p·p]``
    in the model's row-major patch order."""
    x = as_numpy(images)
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // patch, patch, w // patch, patch).transpose(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // patch) * (w // patch), c * patch * patch)


# ---------------------------------------------------------------- global probe (F5)
def pick_tokens(patches, outlier_mask, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One random normal and one random outlier patch per image: name -> (tokens
    ``[k, D]``, image indices ``[k]``). Images without such a patch are left out."""
    x, m = as_numpy(patches), as_numpy(outlier_mask).reshape(len(patches), -1).astype(bool)
    rng = np.random.default_rng(seed)
    out = {}
    for name, sel in (("normal patch", ~m), ("outlier patch", m)):
        rows, idx = [], []
        for i in range(len(x)):
            cand = np.flatnonzero(sel[i])
            if len(cand):
                rows.append(x[i, rng.choice(cand)])
                idx.append(i)
        out[name] = (np.array(rows).reshape(len(rows), x.shape[-1]), np.array(idx, dtype=int))
    return out


def global_probe(token_sets: dict[str, tuple[np.ndarray, np.ndarray]], labels, n_images: int,
                 test_share: float = 0.3, seed: int = 0, min_tokens: int = MIN_TOKENS) -> list[ProbeResult]:
    """Logistic regression from one token per image to the image's label, for each
    entry of ``token_sets`` (name -> (tokens ``[k, D]``, image indices ``[k]``)).
    The split by image is the same for every entry."""
    y = as_numpy(labels)
    train, test = split_images(n_images, test_share, seed)
    out = []
    for name, (x, idx) in token_sets.items():
        tr, te = np.isin(idx, train), np.isin(idx, test)
        if te.sum() < min_tokens or tr.sum() < min_tokens or len(np.unique(y[idx[tr]])) < 2:
            out.append(ProbeResult("global", name, "accuracy (%)", None, None, None, int(te.sum()),
                                   int(te.sum()), f"too few images with a {name} to fit and test "
                                                  f"({int(tr.sum())} train, {int(te.sum())} test)"))
            continue
        clf = _linear_classifier(seed)
        note = _fit(clf, x[tr], y[idx[tr]])
        hits = (clf.predict(x[te]) == y[idx[te]]).astype(float) * 100
        chance = f"uniform chance {100 / len(np.unique(y)):.1f} %"
        out.append(_result("global", name, "accuracy (%)", [np.array([h]) for h in hits], np.mean,
                           note="; ".join(filter(None, [chance, note])), min_tokens=min_tokens))
    return out


def special_token_sets(features, layer) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The tokens every image has exactly one of, from a
    :class:`~vitreg_lib.features.Features`: [CLS] (if any), each register (if any) and
    each test-time register (if any), as name -> (tokens ``[B, D]``, image indices)."""
    every = np.arange(features.num_images)
    sets = {"cls": (as_numpy(features.cls(layer)), every)} if features.layout.num_cls else {}
    for r in range(features.layout.num_registers):
        sets[f"register {r}"] = (as_numpy(features.registers(layer)[:, r]), every)
    extra = features.layout.split(features.layer(layer))["extra"]
    for e in range(features.layout.extra):
        sets[f"test-time register {e}"] = (as_numpy(extra[:, e]), every)
    return sets


def global_token_sets(features, layer, outlier_mask,
                      seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The tokens of the global probe from a :class:`~vitreg_lib.features.Features`:
    [CLS] (if any), one random normal and one random outlier patch per image, each
    register (if any) and each test-time register (if any)."""
    special = special_token_sets(features, layer)
    sets = {k: v for k, v in special.items() if k == "cls"}
    sets.update(pick_tokens(features.patches(layer), outlier_mask, seed=seed))
    sets.update({k: v for k, v in special.items() if k != "cls"})
    return sets


def similarity_norm_correlation(similarity, norms) -> float:
    """Spearman rank correlation between neighbour similarity and token norm over all
    patches: a graded version of F3 that exists even where no token is an outlier."""
    from scipy.stats import spearmanr

    return float(spearmanr(as_numpy(similarity).ravel(), as_numpy(norms).ravel()).statistic)


def correlation_by_content(similarity, norms, objects=None) -> dict:
    """:func:`similarity_norm_correlation` over all patches, and, where ``objects``
    (which patches hold object pixels, same shape) is given, within background patches,
    within object patches, and each group's median similarity and norm: whether the sign
    overall comes from the content (objects against their ground) or holds within each."""
    sim, nrm = as_numpy(similarity).ravel(), as_numpy(norms).ravel()
    out = dict(all=similarity_norm_correlation(sim, nrm))
    if objects is None:
        return out
    obj = np.asarray(objects, dtype=bool).ravel()
    if obj.shape != sim.shape:
        raise ValueError(f"objects has {obj.size} patches, the similarities {sim.size}.")
    for key, sel in (("background", ~obj), ("object", obj)):
        out[key] = similarity_norm_correlation(sim[sel], nrm[sel]) if sel.sum() > 2 else float("nan")
        out[f"{key}_similarity"] = float(np.median(sim[sel])) if sel.any() else float("nan")
        out[f"{key}_norm"] = float(np.median(nrm[sel])) if sel.any() else float("nan")
    return out


def describe_correlation(result: dict, name: str) -> str:
    """The sentence a chapter prints for :func:`correlation_by_content`: the sign against
    the paper's (outliers on the most redundant patches: positive), and where the content
    is known, whether the sign holds within background and within object patches."""
    rho = result["all"]
    head = f"{name}: Spearman rho = {rho:+.2f} over all patches"
    if not np.isfinite(rho):
        return head + " (undefined: constant norms or similarities)."
    sign = ("the paper's direction: higher norms on more redundant patches" if rho > 0.1 else
            "the opposite of the paper's direction: higher norms on less redundant patches" if rho < -0.1 else
            "no clear direction")
    text = f"{head} — {sign}."
    if "background" not in result:
        return text
    text += (f" Within background patches rho = {result['background']:+.2f}, within object patches "
             f"{result['object']:+.2f}; object patches have median similarity "
             f"{result['object_similarity']:.2f} and norm {result['object_norm']:.3g}, background "
             f"{result['background_similarity']:.2f} and {result['background_norm']:.3g}.")
    inside = [result["background"], result["object"]]
    if all(np.isfinite(inside)) and all(abs(r) < abs(rho) / 2 for r in inside):
        text += (" The overall sign comes mostly from the content: within each group it is less than half "
                 "as strong, so it says that objects differ from their ground, not where outliers sit.")
    return text


def headlines(frame: pd.DataFrame, paper: dict, data: str, comparable: str) -> list[dict]:
    """One record per row of a probe table (see :class:`vitreg_lib.record.Recorder`):
    ``name`` from probe, metric, group and model; the paper's value from ``paper``
    keyed by ``(probe, metric, group)`` (missing: none); the interval and token count in
    the note."""
    out = []
    for r in frame.itertuples():
        metric = r.metric.split(" ")[0].replace("-", "")
        name = f"{r.probe}_{metric}_{r.group}_{r.model}".lower().replace(" ", "_").replace("-", "_")
        count = f"{r.tokens} test tokens" if r.probe != "global" else f"{r.images} test images"
        note = "; ".join(filter(None, [f"{r.metric}, 95 % interval {interval(r.low, r.high)}, {count}",
                                       r.note, data]))
        value = None if r.value is None or r.value != r.value else float(r.value)  # NaN: not measured
        out.append(dict(name=name, value=value, paper=paper.get((r.probe, r.metric, r.group)),
                        model=r.model, note=note, comparable=comparable))
    return out


#: what the probes extract (the last block, with the patch embeddings chapter 3 reads):
#: chapters 3, 4 and 5 make this one request, so a book build computes it once per model
PROBE_EXTRACT = dict(layers=[-1], embeddings=True)


def probe_model(lm, images, labels, rule, layer=-1, batch_size: int = 32, seed: int = 0,
                max_train_tokens: int = 8000) -> tuple[pd.DataFrame, Features, np.ndarray]:
    """Every probe of chapter 4 on one model: extract ``layer`` for ``images`` (PIL),
    flag outlier patches with ``rule``, run the local probes (position, pixels; fitted on
    at most ``max_train_tokens`` tokens) and the global probe (one token per image ->
    ``labels``). Returns the results frame (with a ``model`` column), the features and
    the outlier mask ``[B, rows, cols]``."""
    x = lm.preprocess(images)
    f = extract(lm, x, **dict(PROBE_EXTRACT, layers=[layer]), batch_size=batch_size)
    mask = detect(patch_norm_maps(f, layer), rule).mask
    local = local_probes(f.patches(layer), mask, patch_pixels(x, f.layout.patch_size), f.layout.grid,
                         seed=seed, max_train_tokens=max_train_tokens)
    glob = global_probe(global_token_sets(f, layer, mask, seed=seed), labels, len(labels), seed=seed)
    return to_frame(local + glob).assign(model=lm.name), f, mask
