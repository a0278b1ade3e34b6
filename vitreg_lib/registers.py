"""Registers: trained-register comparisons and test-time registers for any timm ViT.

Trained registers (Darcet et al., F6-F10) are tokens the model learned. What this module
adds for them is measurement: :func:`norms_by_kind` and :func:`kind_curves` (the norms
of [CLS], register, patch and extra tokens; the latter is ``outliers.layer_curves`` per
kind), :func:`register_overlap` (do the registers attend to different places?),
:func:`ablation` (the number-of-registers table), and FLOPs counted by PyTorch's
``FlopCounterMode``: :func:`forward_flops` for a loaded model and :func:`register_flops`
for an architecture with 0..N registers, built on the ``meta`` device, so the cost of
registers is measured and not estimated.

Test-time registers (Jiang, Dravid, Efros & Gandelsman, 2025, T1) need no training. By
default this module does what the authors' code does (``nickjiang2378/test-time-registers``
at the commit in :data:`vitreg_lib.paper.JIANG_SOURCE`, read line by line), and says
where it departs:

1. :func:`find_register_neurons` — outliers are the tokens of **any** kind ([CLS]
   included) whose norm at ``detect_layer`` is strictly above the model family's fixed
   cut (:data:`vitreg_lib.paper.JIANG_SEARCH`: DINOv2 > 150 at block -2, OpenCLIP > 30 at
   the last block, from the authors' configs). A unit's score in an image is its mean
   ``|activation|`` (post-nonlinearity, the input of ``mlp.fc2``) over the flagged
   tokens, times the authors' sparsity filter (:class:`SparsityFilter`); scores are
   averaged over the images with a flagged token, and the ``top_k`` units of layers
   ``0..max_layer`` are the *register neurons* (DINOv2: 45 units of layers <= 17; the
   authors' list is :data:`vitreg_lib.paper.JIANG_DINOV2_L_NEURONS`, and
   :func:`jaccard_by_layer` compares a found set with it). A family with no recorded cut
   (DeiT-III, the minis, ...) needs an explicit ``rule``; with one, outliers default to
   the patches and the filter to off: ``rule=PATCH_MEAN_3STD`` is this library's earlier
   search (mean + 3·std of each image's own patch norms, no filter), which is **not**
   the authors' rule.
2. :func:`add_test_time_registers` — appends ``n_tokens`` zero tokens (no position
   embedding) after the patches, by default *before* ``norm_pre`` as the authors do for
   OpenCLIP (their zero token enters ``ln_pre``, so it reaches the first block as
   ``ln_pre``'s bias; DINOv2 has no ``norm_pre``, so both placements are the same). In
   each layer holding register neurons, the listed units are zeroed on the patches and,
   on every extra token, set to ``value``:

   * ``"layer_signed_max"`` (default, the authors' code): ONE number per image and
     layer, the signed maximum (the max or the min, whichever is larger in magnitude;
     a tie takes the min) of the listed units' activations over ALL tokens of the image
     ([CLS], trained registers, patches and the extra tokens) and ALL listed units of
     that layer. The code's own comment speaks of each neuron's maximum across patches,
     which is not what it computes;
   * ``"neuron_patch_max"`` (this library's earlier rule): each listed unit its own
     maximum over the image's patches.

   Measured on a random-weight ``vit_base_patch16_clip_224`` (OpenCLIP's timm class,
   224 px, 8 noise images, 10 units of layers <= 5 found with ``Percentile(99)`` over
   all tokens at the last block): with timm's init ``norm_pre``'s bias is 0 and the two
   placements are bit-identical; with a random bias of 0.02, 0.1 or 0.5 per dimension,
   the last block's patches and [CLS] move by a median 0.43-0.54 % of their norm (max
   0.63 %), and the extra token itself by 75-99 %: a zero vector enters every LayerNorm
   as that norm's bias, a small non-zero one is scaled up to unit variance. How much the
   pretrained ``ln_pre`` bias moves the patches must be measured on the real weights.

   [CLS] and trained registers keep their activations. The authors' hook edits batch
   element 0 only (``output[0, ...]``); here **every image of a batch** is edited with
   its own values, so a batch gives what its images give one at a time. The returned
   handle removes every hook and patch it added; the model then gives exactly its old
   output.

While applied, the fix lives in the module itself, so every forward pass (``model(x)``,
``forward_features``, :func:`vitreg_lib.features.extract`) sees it, and the handle's
``model`` reports the extra tokens in its layout (``TokenLayout.extra``), so every
analysis of the library keeps working. ``model(x)`` (logits) ignores the extra tokens:
they are dropped before the head pools the sequence, so average pooling never sees them.
timm's own ``forward_intermediates`` assumes no token after the patches and raises a
shape error while the fix is applied; read the fixed model with :func:`extract`.

:func:`plant_register_neuron` builds a known answer for tests and for chapter 6: it
rewrites one MLP unit of a model so that it writes a large vector on chosen patches.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .features import Features, HookSet, extract, progress_bar
from .models import LoadedModel
from .outliers import (
    HistogramGap,
    MeanStd,
    Rule,
    as_numpy,
    layer_curves,
    patch_norm_maps,
    summarize,
    token_norms,
)

#: mean + 3·std of each image's own patch norms: this library's earlier outlier rule for
#: the neuron search (``find_register_neurons(..., rule=PATCH_MEAN_3STD)``) and the second
#: outlier column of :func:`ablation`. NOT Jiang et al.'s rule: they cut at a fixed norm
#: (:data:`vitreg_lib.paper.JIANG_SEARCH`), which is the search's default.
PATCH_MEAN_3STD = MeanStd(3)
#: the name chapters 6 and 7 use; the same rule as :data:`PATCH_MEAN_3STD`
DEFAULT_RULE = PATCH_MEAN_3STD


# --------------------------------------------------------------------------- trained registers

def norms_by_kind(features: Features, layer) -> dict[str, np.ndarray]:
    """Token norms of one layer by kind: ``cls``, ``registers``, ``patches``, ``extra``
    (each ``[B, count]``; kinds the model does not have are left out)."""
    parts = features.layout.split(features.layer(layer))
    return {kind: as_numpy(token_norms(t)) for kind, t in parts.items() if t.shape[1]}


def kind_curves(features: Features, rule: Rule | None = None) -> pd.DataFrame:
    """:func:`~vitreg_lib.outliers.layer_curves` for every kind of token the model has
    ([CLS], registers, patches, extra), stacked with ``model`` and ``kind`` columns."""
    layout = features.layout
    counts = {"cls": layout.num_cls, "registers": layout.num_registers,
              "patches": layout.num_patches, "extra": layout.extra}
    return pd.concat([layer_curves(features, rule or HistogramGap(), kind).assign(model=features.model_name,
                                                                                 kind=kind)
                      for kind, count in counts.items() if count], ignore_index=True)


def ablation(models: Mapping[str, LoadedModel], feats: Mapping[str, Features], layer=-1,
             rule: Rule | None = None, base_gflops: float | None = None) -> pd.DataFrame:
    """One row per model: registers (trained + test-time), outlier % of the patches
    (``rule``, default the histogram gap, and mean + 3·std), max / median patch norm,
    median register norm / median patch norm, counted GFLOPs per image and extra FLOPs
    (%) over ``base_gflops`` (default: the model with the fewest registers)."""
    rule = rule or HistogramGap()
    rows = []
    for name, lm in models.items():
        f = feats[name]
        gap, ms = summarize(f, layer, rule), summarize(f, layer, DEFAULT_RULE)
        kinds = norms_by_kind(f, layer)
        patch_median = float(np.median(kinds["patches"]))
        registers = kinds.get("registers")
        rows.append({"model": name, "registers": f.layout.num_registers + f.layout.extra,
                     outlier_column(rule): gap["outlier_pct"],
                     outlier_column(DEFAULT_RULE): ms["outlier_pct"],
                     "max / median patch norm": float(kinds["patches"].max()) / patch_median,
                     "register / patch norm (medians)": (float(np.median(registers)) / patch_median
                                                         if registers is not None else float("nan")),
                     "GFLOPs": forward_flops(lm) / 1e9})
    table = pd.DataFrame(rows)
    base = base_gflops or table.loc[table["registers"].idxmin(), "GFLOPs"]
    table["extra FLOPs (%)"] = 100 * (table["GFLOPs"] / base - 1)
    return table


def fix_effect(before: Features, after: Features, labels, *, rule: Rule | None = None, layer=-1,
               seed: int = 0) -> pd.DataFrame:
    """What a fix (e.g. :func:`add_test_time_registers`) did to a model, from its features
    on the same images ``before`` and ``after`` it, one row per measure (columns
    ``before``, ``after``, ``change``, ``note``): outlier % of the patches (``rule``,
    default the histogram gap); max / median patch norm; how far the tokens moved (mean
    cosine of each patch token, and of [CLS], with itself: 1 = unchanged); and a global
    probe (logistic regression from [CLS] to ``labels``, the same split both times) with
    its bootstrap intervals. On a model with no outliers, a harmless fix moves none of
    these by more than their noise."""
    from .probes import global_probe, interval, special_token_sets

    rule = rule or HistogramGap()
    if before.num_images != after.num_images or tuple(before.layout.grid) != tuple(after.layout.grid):
        raise ValueError("before and after must be features of the same images "
                         f"({before.num_images} vs {after.num_images} images).")
    rows = []

    def add(measure, b, a, note=""):
        rows.append(dict(measure=measure, before=b, after=a,
                         change=None if a is None or b is None else a - b, note=note))

    s = [summarize(f, layer, rule)["outlier_pct"] for f in (before, after)]
    add("outlier %", *s, note=rule.describe())
    patches = [norms_by_kind(f, layer)["patches"] for f in (before, after)]
    ratio = [float(p.max() / np.median(p)) for p in patches]
    add("max / median patch norm", *ratio)
    cos = torch.nn.functional.cosine_similarity
    add("patch tokens: mean cosine with themselves", 1.0,
        float(cos(before.patches(layer).float(), after.patches(layer).float(), dim=-1).mean()))
    if before.layout.num_cls:
        add("[CLS]: mean cosine with itself", 1.0,
            float(cos(before.cls(layer).float(), after.cls(layer).float(), dim=-1).mean()))
        probe = [global_probe({"cls": special_token_sets(f, layer)["cls"]}, labels, f.num_images,
                              seed=seed)[0] for f in (before, after)]
        add("[CLS] probe accuracy (%)", probe[0].value, probe[1].value,
            note=f"95 % bootstrap intervals: before {interval(probe[0].low, probe[0].high)}, "
                 f"after {interval(probe[1].low, probe[1].high)}; {probe[1].images} test images")
    return pd.DataFrame(rows)


def outlier_column(rule: Rule) -> str:
    """The :func:`ablation` column holding the outlier % under ``rule`` (the rule's
    description without its bracketed parameters)."""
    return f"outlier % ({rule.describe().split(' (')[0]})"


def register_flops(timm_name: str, counts: Sequence[int] = (0, 1, 2, 4, 8, 16),
                   img_size: int = 224) -> pd.DataFrame:
    """Counted FLOPs of a timm ViT architecture with each number of registers, and the
    extra FLOPs (%) over none. Built on PyTorch's ``meta`` device: no weights, no
    download, no memory — FLOPs do not depend on weight values."""
    import timm

    rows = []
    for n in counts:
        with torch.device("meta"):
            model = timm.create_model(timm_name, pretrained=False, reg_tokens=n, img_size=img_size,
                                      dynamic_img_size=True)
        rows.append(dict(registers=n, GFLOPs=_count_flops(model, img_size, "meta") / 1e9))
    table = pd.DataFrame(rows)
    base = table.loc[table["registers"] == 0, "GFLOPs"]
    if not base.empty:
        table["extra FLOPs (%)"] = 100 * (table["GFLOPs"] / float(base.iloc[0]) - 1)
    return table


def forward_flops(lm: LoadedModel, img_size: int | None = None) -> int:
    """FLOPs of one forward pass of one image, counted by ``torch.utils.flop_counter``
    (matrix products, convolutions and attention; a multiply-add counts as 2).

    The count runs with timm's unfused attention: the counter does not see inside the
    fused CPU attention kernel of torch 2.14 (measured: it counted the linear layers
    only), while the unfused path is two plain matrix products it does count.
    """
    return _count_flops(lm.model, img_size or lm.img_size, next(lm.model.parameters()).device)


def _count_flops(model: torch.nn.Module, size: int, device) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 3, size, size, device=device)
    attns = [b.attn for b in model.blocks if hasattr(b.attn, "fused_attn")]
    fused = [a.fused_attn for a in attns]
    counter = FlopCounterMode(display=False)
    try:
        for a in attns:
            a.fused_attn = False
        with torch.inference_mode(), counter:
            model(x)
    finally:
        for a, f in zip(attns, fused):
            a.fused_attn = f
    return int(counter.get_total_flops())


# --------------------------------------------------------------------------- neuron search

@dataclass(frozen=True)
class SparsityFilter:
    """The authors' sparsity filter (``apply_sparsity_filter`` in their
    ``shared/algorithms.py``, on in their search): in each image and layer, a unit's
    score counts only if at least ``min_fraction`` of the image's tokens (all of them)
    have an activation below ``below``; otherwise it is 0 for that image. Register
    neurons are silent almost everywhere."""

    min_fraction: float = 0.5
    below: float = 0.5

    def describe(self) -> str:
        return f"sparsity filter (>= {self.min_fraction:g} of tokens below {self.below:g})"


@dataclass
class RegisterNeurons:
    """The result of :func:`find_register_neurons`."""

    model_name: str
    neurons: list[tuple[int, int]]  # (layer, unit), highest score first
    scores: np.ndarray  # [max_layer + 1, hidden]: mean |activation| at the flagged tokens
    detect_layer: int
    rule: str
    n_images: int  # images searched
    n_used: int  # images with at least one flagged token (the average runs over these)
    outlier_fraction: float  # share of the searched tokens the rule flagged
    tokens: str = "patches"  # which tokens could be flagged: "all" or "patches"
    sparsity: str = "none"  # the sparsity filter used, described
    protocol: str = "explicit rule"  # or "Jiang et al.'s search, settings set for <model>"

    @property
    def max_layer(self) -> int:
        return self.scores.shape[0] - 1

    def by_layer(self) -> dict[int, list[int]]:
        """layer -> units, for the layers that hold register neurons."""
        out: dict[int, list[int]] = {}
        for layer, unit in self.neurons:
            out.setdefault(layer, []).append(unit)
        return dict(sorted(out.items()))

    def score(self, layer: int, unit: int) -> float:
        return float(self.scores[layer, unit])

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([dict(rank=r + 1, layer=layer, unit=unit, score=self.score(layer, unit))
                             for r, (layer, unit) in enumerate(self.neurons)])

    def describe(self) -> str:
        return (f"{len(self.neurons)} register neurons of {self.model_name} in layers "
                f"0..{self.max_layer} ({self.protocol}): {self.tokens} tokens flagged at layer "
                f"{self.detect_layer} by '{self.rule}', {self.sparsity} ({self.n_used} of "
                f"{self.n_images} images had some)")


#: register neurons as every function here takes them: a search result, ``{layer: [units]}``
#: or ``[(layer, unit)]``
NeuronSet = RegisterNeurons | Mapping[int, Sequence[int]] | Iterable[tuple[int, int]]


def _as_batch(lm: LoadedModel, images) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    images = list(images)
    if images and isinstance(images[0], Image.Image):
        return lm.preprocess(images)
    raise TypeError("images must be a [B, 3, H, W] tensor or a list of PIL images.")


@dataclass(frozen=True)
class _Search:
    rule: Rule
    tokens: str
    sparsity: SparsityFilter | None
    detect_layer: int
    max_layer: int
    top_k: int
    protocol: str


def _search_settings(lm: LoadedModel, max_layer, top_k, detect_layer, rule, tokens, sparsity) -> _Search:
    """Fill what the caller left ``None`` from the authors' settings for the model's family
    (``rule=None``) or from this library's explicit-rule defaults."""
    from .outliers import Absolute
    from .paper import JIANG_SEARCH, jiang_search

    if rule is None:
        rec = jiang_search(lm.spec.family)
        if rec is None:
            raise ValueError(
                f"{lm.name} (family {lm.spec.family!r}) has no recorded norm cut: Jiang et al. "
                f"published cuts for {', '.join(JIANG_SEARCH)} only. Pass an explicit rule, e.g. "
                "rule=registers.PATCH_MEAN_3STD (mean + 3·std of each image's own patch norms) "
                "or rule=outliers.Absolute(cut).")
        depth = len(lm.model.blocks)
        if depth != rec["depth"] and max_layer is None:
            raise ValueError(
                f"Jiang et al.'s {lm.spec.family} settings were set for {rec['set_for']} "
                f"({rec['depth']} blocks); {lm.name} has {depth}. Pass max_layer (and top_k) to use "
                f"their norm cut ({rec['norm_cut']:g}) anyway, or an explicit rule.")
        defaults = dict(rule=Absolute(rec["norm_cut"]), tokens="all", sparsity=SparsityFilter(
            **rec["sparsity"]), detect_layer=rec["detect_layer"], max_layer=rec["highest_layer"],
            top_k=rec["top_k"], protocol=f"Jiang et al.'s search, settings set for {rec['set_for']}")
    else:
        if max_layer is None:
            raise ValueError("With an explicit rule, pass max_layer (the last layer searched).")
        defaults = dict(rule=rule, tokens="patches", sparsity=None, detect_layer=-2, max_layer=max_layer,
                        top_k=10, protocol="explicit rule")
    given = dict(tokens=tokens, detect_layer=detect_layer, max_layer=max_layer, top_k=top_k)
    settings = {**defaults, **{k: v for k, v in given.items() if v is not None}}
    if sparsity is not None:
        settings["sparsity"] = (SparsityFilter() if sparsity is True else sparsity or None)
    if settings["tokens"] not in ("all", "patches"):
        raise ValueError(f"tokens must be 'all' or 'patches', got {settings['tokens']!r}.")
    return _Search(**settings)


def _check_layers(lm: LoadedModel, search: _Search) -> _Search:
    depth = len(lm.model.blocks)
    for name in ("max_layer", "detect_layer"):
        value = getattr(search, name)
        if not -depth <= value < depth:
            raise IndexError(f"{name}={value} is out of range for {lm.name} ({depth} blocks).")
    if search.top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {search.top_k}.")
    return dataclasses.replace(search, max_layer=search.max_layer % depth,
                               detect_layer=search.detect_layer % depth)


def _batch_scores(feats: Features, search: _Search, layers: list[int]):
    """Per-image scores ``[b, len(layers), hidden]`` of the images with a flagged token,
    and the flag mask of every image ``[B, tokens]``."""
    part = slice(None) if search.tokens == "all" else feats.layout.patch_slice
    norms = as_numpy(token_norms(feats.layer(search.detect_layer)[:, part]))  # [B, T]
    mask = np.stack([n > search.rule.threshold(n) for n in norms])  # each image its own rule
    keep = torch.from_numpy(mask.any(axis=1))
    m = torch.from_numpy(mask)[keep].double()  # [b, T]
    out = []
    for i in layers:
        h = feats.mlp_hidden(i)[keep].double()  # [b, N, H], all tokens
        score = torch.einsum("bt,bth->bh", m, h[:, part].abs()) / m.sum(dim=1, keepdim=True)
        if search.sparsity is not None:
            quiet = (h < search.sparsity.below).double().mean(dim=1)  # [b, H]
            score = score * (quiet >= search.sparsity.min_fraction)
        out.append(score)
    return torch.stack(out, dim=1), mask


def find_register_neurons(lm: LoadedModel, images: torch.Tensor | Sequence[Image.Image], *,
                          max_layer: int | None = None, top_k: int | None = None,
                          detect_layer: int | None = None, rule: Rule | None = None,
                          tokens: str | None = None, sparsity: SparsityFilter | bool | None = None,
                          batch_size: int = 8, progress: bool | None = None) -> RegisterNeurons:
    """Rank the MLP units of layers ``0..max_layer`` by their mean ``|activation|`` at
    outlier tokens and keep the ``top_k`` (see the module docstring).

    ``rule=None`` (default): the authors' search for ``lm``'s family
    (:data:`vitreg_lib.paper.JIANG_SEARCH`: fixed norm cut, ``tokens="all"``, sparsity
    filter on, their ``detect_layer``, ``max_layer`` and ``top_k``); a family with none
    recorded raises ``ValueError``. An explicit ``rule`` is applied to each image's own
    norms, with ``tokens="patches"``, no sparsity filter, ``detect_layer=-2``,
    ``top_k=10`` unless given; ``max_layer`` is then required. ``sparsity``: a
    :class:`SparsityFilter`, ``True`` (the authors' 0.5 / 0.5) or ``False`` (off).
    Needs at least one image in which a token is flagged; otherwise ``ValueError``.
    """
    search = _check_layers(lm, _search_settings(lm, max_layer, top_k, detect_layer, rule, tokens,
                                                sparsity))
    x = _as_batch(lm, images)
    return _cached_search(lm, x, search, batch_size, progress)


def _cached_search(lm: LoadedModel, x: torch.Tensor, search: _Search, batch_size: int,
                   progress: bool | None) -> RegisterNeurons:
    """:func:`_search`, through the build's cache (:mod:`vitreg_lib.feature_cache`) when it is
    on: a later chapter searching the same model, images and settings reads the result (the
    scores and the header, a few hundred kB) instead of passing the images again. The MLP
    activations the search reads are never cached (hundreds of MB per batch of ViT-L)."""
    from . import feature_cache

    def encode(found: RegisterNeurons):
        header = {k: v for k, v in dataclasses.asdict(found).items() if k != "scores"}
        return {"scores": torch.from_numpy(np.ascontiguousarray(found.scores))}, header

    def decode(tensors, header) -> RegisterNeurons:
        return RegisterNeurons(scores=tensors["scores"].numpy(),
                               **dict(header, neurons=[tuple(n) for n in header["neurons"]]))

    options = dict(kind="register_neurons", search=repr(search), batch_size=batch_size)
    return feature_cache.through(lm, x, options, lambda: _search(lm, x, search, batch_size, progress),
                                 encode, decode, tag="-neurons")


def _search(lm: LoadedModel, x: torch.Tensor, search: _Search, batch_size: int,
            progress: bool | None) -> RegisterNeurons:
    """The search itself: one pass over ``x`` in batches, reading the MLPs of the searched
    layers and the tokens of the detect layer."""
    layers = list(range(search.max_layer + 1))
    total = torch.zeros(len(layers), lm.model.blocks[0].mlp.fc2.in_features, dtype=torch.float64)
    n_used = flagged = searched = 0
    batches = list(torch.split(x, batch_size))
    for xb in progress_bar(batches, f"register neurons {lm.name}", progress):
        feats = extract(lm, xb, layers=[search.detect_layer], mlp=layers, batch_size=len(xb),
                        progress=False)
        scores, mask = _batch_scores(feats, search, layers)
        searched, flagged = searched + mask.size, flagged + int(mask.sum())
        n_used += len(scores)
        total += scores.sum(dim=0)
    if not n_used:
        raise ValueError(
            f"'{search.rule.describe()}' flagged no token ({search.tokens}) at layer "
            f"{search.detect_layer} of {lm.name} in {len(x)} images, so there is nothing to "
            "average over. Use more images, another detect_layer, or a looser rule "
            "(e.g. outliers.MeanStd(2)).")
    scores = as_numpy(total / n_used)
    order = np.argsort(-scores, axis=None, kind="stable")[:search.top_k]
    neurons = [tuple(int(v) for v in np.unravel_index(i, scores.shape)) for i in order]
    return RegisterNeurons(lm.name, neurons, scores, search.detect_layer, search.rule.describe(),
                           n_images=len(x), n_used=n_used, outlier_fraction=flagged / max(searched, 1),
                           tokens=search.tokens, protocol=search.protocol,
                           sparsity=search.sparsity.describe() if search.sparsity else "no sparsity filter")


def jaccard_by_layer(found: NeuronSet, reference: NeuronSet | None = None) -> pd.DataFrame:
    """Per-layer overlap of a set of register neurons with a reference set (default: the
    authors' DINOv2 ViT-L/14 list, :data:`vitreg_lib.paper.JIANG_DINOV2_L_NEURONS`): one
    row per layer that either set uses (``found``, ``reference``, ``shared`` unit counts
    and the Jaccard index shared / union), then a row ``"all"`` over (layer, unit) pairs."""
    from .paper import JIANG_DINOV2_L_NEURONS

    a = _neuron_map(found)
    b = _neuron_map(JIANG_DINOV2_L_NEURONS if reference is None else reference)
    rows = []
    for layer in sorted(set(a) | set(b)):
        sa, sb = set(a.get(layer, ())), set(b.get(layer, ()))
        rows.append(dict(layer=layer, found=len(sa), reference=len(sb), shared=len(sa & sb),
                         jaccard=len(sa & sb) / len(sa | sb)))
    pa = {(la, u) for la, us in a.items() for u in us}
    pb = {(la, u) for la, us in b.items() for u in us}
    rows.append(dict(layer="all", found=len(pa), reference=len(pb), shared=len(pa & pb),
                     jaccard=len(pa & pb) / len(pa | pb) if pa | pb else float("nan")))
    return pd.DataFrame(rows)


def neuron_maps(lm: LoadedModel, images: torch.Tensor | Sequence[Image.Image],
                found: RegisterNeurons, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the summed activation of the register neurons on each patch (each at
    its own layer) and the patch-norm map at the search's ``detect_layer``; both
    ``[B, rows, cols]``. Where the neurons fire is where the outliers appear.
    Streams over batches and keeps only the maps (a large model's MLP activations of
    hundreds of images would not fit in memory)."""
    x = _as_batch(lm, images)
    acts, norms = [], []
    for xb in torch.split(x, batch_size):
        f = extract(lm, xb, layers=[found.detect_layer], mlp=sorted(found.by_layer()), progress=False)
        act = sum(f.mlp_hidden(layer)[:, f.layout.patch_slice][:, :, units].sum(dim=-1)
                  for layer, units in found.by_layer().items())
        acts.append(as_numpy(act).reshape(len(xb), *f.layout.grid))
        norms.append(patch_norm_maps(f, found.detect_layer))
    return np.concatenate(acts), np.concatenate(norms)


def map_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over images of the Pearson correlation of two maps ``[B, rows, cols]``
    (images where either map is constant are left out; NaN if all are)."""
    rs = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)
          if np.ptp(x) > 0 and np.ptp(y) > 0]
    return float(np.mean(rs)) if rs else float("nan")


def register_overlap(features: Features, layer) -> float:
    """How alike the registers' attention maps are (mean over heads): the mean Pearson
    correlation over all pairs of registers and all images. Near 1: every register looks
    at the same place; the paper's registers specialise (F10). NaN with < 2 registers."""
    maps = as_numpy(features.register_attention(layer).mean(dim=2))  # [B, R, rows, cols]
    pairs = [(r, s) for r in range(maps.shape[1]) for s in range(r + 1, maps.shape[1])]
    if not pairs:
        return float("nan")
    return float(np.nanmean([map_correlation(maps[:, r], maps[:, s]) for r, s in pairs]))


# --------------------------------------------------------------------------- test-time registers

_MARK = "_vitreg_test_time_registers"

#: what :func:`add_test_time_registers` writes on the extra tokens (see the module docstring)
VALUES = ("layer_signed_max", "neuron_patch_max")
#: where the zero tokens join the sequence: before ``norm_pre`` (the authors) or after it
POSITIONS = ("before_norm_pre", "after_norm_pre")


class TestTimeRegisters(HookSet):
    """Handle of an applied test-time-register fix (see :func:`add_test_time_registers`).

    ``model`` is a :class:`LoadedModel` over the same module whose layout reports the
    extra tokens; :meth:`remove` (or leaving a ``with`` block) undoes everything.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, lm: LoadedModel, neurons: dict[int, list[int]], n_tokens: int,
                 value: str = VALUES[0], position: str = POSITIONS[0]):
        self.base = lm
        self.neurons = neurons
        self.n_tokens = n_tokens
        self.value = value
        self.position = position
        spec = dataclasses.replace(lm.spec, name=f"{lm.name}+ttr{n_tokens}",
                                   note=f"{lm.spec.note or lm.name} + {n_tokens} test-time register(s)")
        super().__init__(dataclasses.replace(lm, spec=spec, extra_tokens=lm.extra_tokens + n_tokens))
        self._patched_head = False

    def remove(self) -> None:
        """Remove every hook and patch; the module is as before :func:`add_test_time_registers`."""
        super().remove()
        module = self.base.model
        if self._patched_head:
            del module.forward_head
            self._patched_head = False
        if getattr(module, _MARK, None) is self:
            delattr(module, _MARK)


def _neuron_map(neurons) -> dict[int, list[int]]:
    if isinstance(neurons, RegisterNeurons):
        return neurons.by_layer()
    if isinstance(neurons, Mapping):
        return {int(k): [int(u) for u in v] for k, v in sorted(neurons.items())}
    out: dict[int, list[int]] = {}
    for layer, unit in neurons:
        out.setdefault(int(layer), []).append(int(unit))
    return dict(sorted(out.items()))


def _check_neurons(lm: LoadedModel, by_layer: dict[int, list[int]]) -> None:
    if not by_layer:
        raise ValueError("No register neurons given: nothing to move.")
    depth = len(lm.model.blocks)
    for layer, units in by_layer.items():
        if not 0 <= layer < depth:
            raise IndexError(f"Layer {layer} is out of range for {lm.name} ({depth} blocks).")
        fc2 = getattr(getattr(lm.model.blocks[layer], "mlp", None), "fc2", None)
        if not isinstance(fc2, torch.nn.Linear):
            raise TypeError(f"Block {layer} of {lm.name} has no mlp.fc2 linear layer; "
                            "test-time registers need a timm MLP.")
        bad = [u for u in units if not 0 <= u < fc2.in_features]
        if bad:
            raise IndexError(f"Units {bad} are out of range for layer {layer} "
                             f"({fc2.in_features} hidden units).")


def signed_max(h: torch.Tensor) -> torch.Tensor:
    """Per image, the max or the min of ``h`` ``[B, ...]`` over everything but the batch
    dimension, whichever is larger in magnitude (a tie takes the min, as the authors'
    ``sign_max`` does): ``[B]``."""
    flat = h.reshape(h.shape[0], -1)
    top, bottom = flat.amax(dim=1), flat.amin(dim=1)
    return torch.where(top.abs() > bottom.abs(), top, bottom)


def _mover(units: list[int], prefix: int, n_tokens: int, value: str):
    """The pre-hook of ``mlp.fc2`` that moves ``units`` onto the last ``n_tokens`` tokens."""
    idx = torch.tensor(units)

    def hook(_module, inputs):
        h = inputs[0]
        i = idx.to(h.device)
        patches = slice(prefix, h.shape[1] - n_tokens)
        if value == "layer_signed_max":  # one number per image: all tokens, all listed units
            written = signed_max(h[:, :, i])[:, None, None].to(h.dtype)
        else:  # each unit its own maximum over the patches
            written = h[:, patches][:, :, i].amax(dim=1)[:, None, :]
        h = h.clone()
        h[:, patches, i] = 0
        h[:, h.shape[1] - n_tokens:, i] = written.expand(h.shape[0], n_tokens, len(units))
        return (h, *inputs[1:])

    return hook


def add_test_time_registers(lm: LoadedModel, neurons: NeuronSet, n_tokens: int = 1, *,
                            value: str = "layer_signed_max",
                            position: str = "before_norm_pre") -> TestTimeRegisters:
    """Apply test-time registers to ``lm`` in place and return the handle.

    ``neurons``: a :class:`RegisterNeurons`, ``{layer: [units]}`` or ``[(layer, unit)]``.
    ``value``: what the extra tokens get, ``"layer_signed_max"`` (the authors' code) or
    ``"neuron_patch_max"``; ``position``: ``"before_norm_pre"`` (the authors) or
    ``"after_norm_pre"`` (see the module docstring; they differ only where ``norm_pre``
    is not the identity, e.g. OpenCLIP). Every image of a batch is edited.
    Use as ``with add_test_time_registers(lm, neurons) as fixed: extract(fixed, ...)``,
    or keep the handle and call ``.remove()``.
    """
    model = lm.model
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be at least 1, got {n_tokens}.")
    if value not in VALUES:
        raise ValueError(f"value must be one of {VALUES}, got {value!r}.")
    if position not in POSITIONS:
        raise ValueError(f"position must be one of {POSITIONS}, got {position!r}.")
    if getattr(model, _MARK, None) is not None:
        raise RuntimeError(f"{lm.name} already has test-time registers; remove() them first.")
    by_layer = _neuron_map(neurons)
    _check_neurons(lm, by_layer)
    handle = TestTimeRegisters(lm, by_layer, n_tokens, value, position)
    prefix = lm.layout().num_prefix

    def zeros(x):
        return torch.cat([x, x.new_zeros(x.shape[0], n_tokens, x.shape[-1])], dim=1)

    try:
        if position == "before_norm_pre":  # the zero token goes through norm_pre
            hook = model.norm_pre.register_forward_pre_hook(lambda _m, inputs: (zeros(inputs[0]),))
        else:
            hook = model.norm_pre.register_forward_hook(lambda _m, _inputs, x: zeros(x))
        handle._handles.append(hook)
        for layer, units in by_layer.items():
            handle._handles.append(model.blocks[layer].mlp.fc2.register_forward_pre_hook(
                _mover(units, prefix, n_tokens, value)))
        head = model.forward_head

        def forward_head(x, *args, **kwargs):  # logits ignore the extra tokens
            return head(x[:, :-n_tokens], *args, **kwargs)

        model.forward_head = forward_head
        handle._patched_head = True
        setattr(model, _MARK, handle)
    except Exception:
        handle.remove()
        raise
    return handle


# --------------------------------------------------------------------------- a known answer

def plant_register_neuron(lm: LoadedModel, layer: int, unit: int, positions: Iterable[int],
                          strength: float = 10.0, seed: int = 0) -> torch.Tensor:
    """Rewrite MLP unit ``unit`` of block ``layer`` so that it writes a large vector on
    the patches at ``positions`` (row-major grid indices), whatever the image: a model
    with a known register neuron, for tests and for chapter 6. Changes ``lm.model``
    in place and returns the written direction (the unit's ``fc2`` column).

    How: one residual channel ``c`` is made clean (no patch embedding, no position
    embedding, no block before ``layer`` writes to it) except on the chosen patches,
    where its position embedding equals the median token norm (so those patches are
    *not* outliers before ``layer``). The unit reads channel ``c`` after the block's
    LayerNorm, so it fires on the chosen patches only, and writes a direction of about
    ``strength`` times the median token norm.
    """
    model = lm.model
    layout = lm.layout()
    depth = len(model.blocks)
    positions = sorted(set(int(p) for p in positions))
    if not positions or not all(0 <= p < layout.num_patches for p in positions):
        raise IndexError(f"positions must be patch indices in 0..{layout.num_patches - 1}.")
    if not 0 <= layer < depth:
        raise IndexError(f"layer must be in 0..{depth - 1}, got {layer}.")
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(4, 3, lm.img_size, lm.img_size, generator=gen)
    feats = extract(lm, noise, layers=[0], embeddings=True, progress=False)
    typical = float(token_norms(feats.embeddings).median())  # the scale of the input tokens
    dim = model.pos_embed.shape[-1]
    c = int(torch.randint(dim, (1,), generator=gen))
    offset = model.pos_embed.shape[1] - layout.num_patches  # prefix tokens with a position embedding
    direction = torch.randn(dim, generator=gen)
    direction[c] = 0
    block = model.blocks[layer]
    with torch.no_grad():
        model.patch_embed.proj.weight[c] = 0
        model.patch_embed.proj.bias[c] = 0
        model.pos_embed[0, :, c] = 0
        model.pos_embed[0, [offset + p for p in positions], c] = typical
        for name in ("cls_token", "reg_token"):
            if getattr(model, name, None) is not None:
                getattr(model, name)[..., c] = 0
        for blk in model.blocks[:layer]:
            for lin in (blk.attn.proj, blk.mlp.fc2):
                lin.weight[c] = 0
                lin.bias[c] = 0
        block.attn.proj.weight[c] = 0
        block.attn.proj.bias[c] = 0
        block.norm2.weight[c] = 1
        block.norm2.bias[c] = 0
        block.mlp.fc1.weight[unit] = 0
        block.mlp.fc1.weight[unit, c] = 4.0
        block.mlp.fc1.bias[unit] = -5.0
        direction = direction / direction.norm() * strength * typical / 6
        block.mlp.fc2.weight[:, unit] = direction.to(block.mlp.fc2.weight)
    return direction
