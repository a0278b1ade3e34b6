"""Registers: trained-register comparisons and test-time registers for any timm ViT.

Trained registers (Darcet et al., F6-F10) are tokens the model learned. What this module
adds for them is measurement: :func:`norms_by_kind` and :func:`kind_curves` (the norms
of [CLS], register, patch and extra tokens; the latter is ``outliers.layer_curves`` per
kind), :func:`register_overlap` (do the registers attend to different places?),
:func:`ablation` (the number-of-registers table), and FLOPs counted by PyTorch's
``FlopCounterMode``: :func:`forward_flops` for a loaded model and :func:`register_flops`
for an architecture with 0..N registers, built on the ``meta`` device, so the cost of
registers is measured and not estimated.

Test-time registers (Jiang et al., 2025, T1) need no training:

1. :func:`find_register_neurons` — for each MLP hidden unit (post-nonlinearity, the
   input of ``mlp.fc2``) in layers ``0..max_layer``, the mean ``|activation|`` over the
   outlier patches of each image, averaged over the images that have outliers; the
   ``top_k`` units are the *register neurons*. Outlier patches are found at
   ``detect_layer`` (default: the second-to-last block, as Jiang et al. do for DINOv2)
   by a rule from :mod:`vitreg_lib.outliers` (default ``mean + 3·std``), applied to
   **each image's own patch norms** (so the search streams over batches).
2. :func:`add_test_time_registers` — appends ``n_tokens`` zero tokens without position
   embedding after the patches; in each layer holding register neurons, each such
   neuron's activation on the extra tokens is set to its **maximum over that image's
   patches** and set to zero on the patches. Batched: every image gets its own maxima
   (the reference code edits only batch element 0). The returned handle removes every
   hook and patch it added; the model then gives exactly its old output.

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

from .features import Features, extract
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

#: Jiang et al.'s outlier rule for the neuron search
DEFAULT_RULE = MeanStd(3)


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
    """Keep a unit (in one image) only if at least ``min_fraction`` of the image's tokens
    have an activation below ``below`` — register neurons are silent almost everywhere."""

    min_fraction: float = 0.5
    below: float = 0.5


@dataclass
class RegisterNeurons:
    """The result of :func:`find_register_neurons`."""

    model_name: str
    neurons: list[tuple[int, int]]  # (layer, unit), highest score first
    scores: np.ndarray  # [max_layer + 1, hidden]: mean |activation| at outlier patches
    detect_layer: int
    rule: str
    n_images: int  # images searched
    n_used: int  # images with at least one outlier patch (the average runs over these)
    outlier_fraction: float  # share of the searched patches the rule flagged

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
                f"0..{self.max_layer}, outlier patches at layer {self.detect_layer} by "
                f"'{self.rule}' ({self.n_used} of {self.n_images} images had some)")


def _as_batch(lm: LoadedModel, images) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    images = list(images)
    if images and isinstance(images[0], Image.Image):
        return lm.preprocess(images)
    raise TypeError("images must be a [B, 3, H, W] tensor or a list of PIL images.")


def find_register_neurons(lm: LoadedModel, images: torch.Tensor | Sequence[Image.Image], *,
                          max_layer: int, top_k: int = 10, detect_layer: int = -2,
                          rule: Rule = DEFAULT_RULE, sparsity: SparsityFilter | None = None,
                          batch_size: int = 8, progress: bool | None = None) -> RegisterNeurons:
    """Rank the MLP units of layers ``0..max_layer`` by their mean ``|activation|`` at
    outlier patches and keep the ``top_k`` (see the module docstring).

    Needs at least one image in which ``rule`` flags a patch at ``detect_layer``;
    otherwise raises ``ValueError`` saying what to change.
    """
    depth = len(lm.model.blocks)
    if not -depth <= max_layer < depth:
        raise IndexError(f"max_layer={max_layer} is out of range for {lm.name} ({depth} blocks).")
    if not -depth <= detect_layer < depth:
        raise IndexError(f"detect_layer={detect_layer} is out of range for {lm.name} ({depth} blocks).")
    max_layer %= depth
    detect_layer %= depth
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}.")
    x = _as_batch(lm, images)
    layers = list(range(max_layer + 1))
    total = torch.zeros(len(layers), lm.model.blocks[0].mlp.fc2.in_features, dtype=torch.float64)
    n_used = flagged = searched = 0
    from tqdm.auto import tqdm

    batches = list(torch.split(x, batch_size))
    show = len(batches) > 1 if progress is None else progress
    for xb in tqdm(batches, desc=f"register neurons {lm.name}", disable=not show):
        feats = extract(lm, xb, layers=[detect_layer], mlp=layers, batch_size=len(xb), progress=False)
        norms = as_numpy(token_norms(feats.patches(detect_layer)))  # [B, P]
        mask = np.stack([n > rule.threshold(n) for n in norms])  # each image its own rule
        searched += mask.size
        flagged += int(mask.sum())
        keep = torch.from_numpy(mask.any(axis=1))
        if not keep.any():
            continue
        n_used += int(keep.sum())
        m = torch.from_numpy(mask)[keep].double()  # [b, P]
        for j, i in enumerate(layers):
            h = feats.mlp_hidden(i)[keep].double()  # [b, N, H], all tokens
            score = torch.einsum("bp,bph->bh", m, h[:, feats.layout.patch_slice].abs())
            score = score / m.sum(dim=1, keepdim=True)  # mean over each image's outliers
            if sparsity is not None:
                quiet = (h < sparsity.below).double().mean(dim=1)  # [b, H]
                score = score * (quiet >= sparsity.min_fraction)
            total[j] += score.sum(dim=0)
    if not n_used:
        raise ValueError(
            f"'{rule.describe()}' flagged no patch at layer {detect_layer} of {lm.name} in "
            f"{len(x)} images, so there is nothing to average over. Use more images, a later "
            "detect_layer, or a looser rule (e.g. outliers.MeanStd(2)).")
    scores = as_numpy(total / n_used)
    order = np.argsort(-scores, axis=None, kind="stable")[:top_k]
    neurons = [tuple(int(v) for v in np.unravel_index(i, scores.shape)) for i in order]
    return RegisterNeurons(lm.name, neurons, scores, detect_layer, rule.describe(),
                           n_images=len(x), n_used=n_used, outlier_fraction=flagged / max(searched, 1))


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


class TestTimeRegisters:
    """Handle of an applied test-time-register fix (see :func:`add_test_time_registers`).

    ``model`` is a :class:`LoadedModel` over the same module whose layout reports the
    extra tokens; :meth:`remove` (or leaving a ``with`` block) undoes everything.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, lm: LoadedModel, neurons: dict[int, list[int]], n_tokens: int):
        self.base = lm
        self.neurons = neurons
        self.n_tokens = n_tokens
        spec = dataclasses.replace(lm.spec, name=f"{lm.name}+ttr{n_tokens}",
                                   note=f"{lm.spec.note or lm.name} + {n_tokens} test-time register(s)")
        self.model = dataclasses.replace(lm, spec=spec, extra_tokens=lm.extra_tokens + n_tokens)
        self._handles: list = []
        self._patched_head = False

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def remove(self) -> None:
        """Remove every hook and patch; the module is as before :func:`add_test_time_registers`."""
        for h in self._handles:
            h.remove()
        self._handles = []
        module = self.base.model
        if self._patched_head:
            del module.forward_head
            self._patched_head = False
        if getattr(module, _MARK, None) is self:
            delattr(module, _MARK)

    def __enter__(self) -> LoadedModel:
        return self.model

    def __exit__(self, *exc) -> None:
        self.remove()


def _neuron_map(neurons) -> dict[int, list[int]]:
    if isinstance(neurons, RegisterNeurons):
        return neurons.by_layer()
    if isinstance(neurons, dict):
        return {int(k): [int(u) for u in v] for k, v in sorted(neurons.items())}
    out: dict[int, list[int]] = {}
    for layer, unit in neurons:
        out.setdefault(int(layer), []).append(int(unit))
    return dict(sorted(out.items()))


def add_test_time_registers(lm: LoadedModel,
                            neurons: RegisterNeurons | dict[int, list[int]] | Iterable[tuple[int, int]],
                            n_tokens: int = 1) -> TestTimeRegisters:
    """Apply test-time registers to ``lm`` in place and return the handle.

    ``neurons``: a :class:`RegisterNeurons`, ``{layer: [units]}`` or ``[(layer, unit)]``.
    Use as ``with add_test_time_registers(lm, neurons) as fixed: extract(fixed, ...)``,
    or keep the handle and call ``.remove()``.
    """
    model = lm.model
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be at least 1, got {n_tokens}.")
    if getattr(model, _MARK, None) is not None:
        raise RuntimeError(f"{lm.name} already has test-time registers; remove() them first.")
    by_layer = _neuron_map(neurons)
    if not by_layer:
        raise ValueError("No register neurons given: nothing to move.")
    depth = len(model.blocks)
    for layer, units in by_layer.items():
        if not 0 <= layer < depth:
            raise IndexError(f"Layer {layer} is out of range for {lm.name} ({depth} blocks).")
        fc2 = getattr(getattr(model.blocks[layer], "mlp", None), "fc2", None)
        if not isinstance(fc2, torch.nn.Linear):
            raise TypeError(f"Block {layer} of {lm.name} has no mlp.fc2 linear layer; "
                            "test-time registers need a timm MLP.")
        bad = [u for u in units if not 0 <= u < fc2.in_features]
        if bad:
            raise IndexError(f"Units {bad} are out of range for layer {layer} "
                             f"({fc2.in_features} hidden units).")

    handle = TestTimeRegisters(lm, by_layer, n_tokens)
    prefix = lm.layout().num_prefix

    def append(_module, _inputs, x):
        return torch.cat([x, x.new_zeros(x.shape[0], n_tokens, x.shape[-1])], dim=1)

    def mover(units: list[int]):
        idx = torch.tensor(units)

        def hook(_module, inputs):
            h = inputs[0]
            i = idx.to(h.device)
            patches = slice(prefix, h.shape[1] - n_tokens)
            peak = h[:, patches][:, :, i].amax(dim=1)  # [B, units]: each image its own maxima
            h = h.clone()
            h[:, patches, i] = 0
            h[:, h.shape[1] - n_tokens:, i] = peak[:, None, :]
            return (h, *inputs[1:])

        return hook

    try:
        handle._handles.append(model.norm_pre.register_forward_hook(append))
        for layer, units in by_layer.items():
            handle._handles.append(
                model.blocks[layer].mlp.fc2.register_forward_pre_hook(mover(units)))
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
