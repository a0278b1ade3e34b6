"""One batched forward pass that returns what the analyses read.

:func:`extract` runs a timm ``VisionTransformer`` block by block (the same steps as
timm's ``forward_intermediates``) and keeps, for the requested layers only:

* each block's residual output (before the final norm), ``[B, N, D]``;
* optionally the final normed output, the patch embeddings (after the patch-embedding
  layer, before position embeddings), the attention of every prefix token
  ([CLS], registers) over all tokens, per head, and the MLP hidden activations
  (post-nonlinearity, the input of ``mlp.fc2``);
* optionally the residual stream *inside* each block, after its attention and before
  its MLP (the input of ``norm2``: outliers can appear right after a middle MLP, and
  this tells the attention's part from the MLP's), and the attention each token
  *receives*: per head, the mean over every query of the block (an attention sink
  receives most of it);
* optionally the attention *keys* of each requested block (LOST's features, see
  :mod:`vitreg_lib.discovery`).

timm's attention is fused (``scaled_dot_product_attention``) and never materialises the
attention matrix, so it is recomputed from the block's ``qkv`` projection in a forward
hook: ``softmax(q kᵀ · scale)`` for the prefix queries only. Every hook is checked to
have fired once per batch, and all hooks are removed when the pass ends, even on error.

It never computes more than asked: blocks after the last requested layer are skipped
unless the final output is requested.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from PIL import Image

from . import feature_cache
from .models import LoadedModel, TokenLayout, each_model

Layer = int | str  # a block index, or "final"


@dataclass
class Features:
    """Tokens of one batch of images, split by the model's :class:`TokenLayout`."""

    model_name: str
    layout: TokenLayout
    depth: int
    tokens: dict[Layer, torch.Tensor]  # layer -> [B, N, D]
    embeddings: torch.Tensor | None = None  # [B, num_patches, D]
    attention: dict[int, torch.Tensor] = field(default_factory=dict)  # [B, heads, prefix, N]
    mlp: dict[int, torch.Tensor] = field(default_factory=dict)  # [B, N, hidden]
    mid: dict[int, torch.Tensor] = field(default_factory=dict)  # [B, N, D] after attention
    keys: dict[int, torch.Tensor] = field(default_factory=dict)  # [B, N, heads * head_dim]
    received: dict[int, torch.Tensor] = field(default_factory=dict)  # [B, heads, N]

    @property
    def layers(self) -> list[Layer]:
        return list(self.tokens)

    @property
    def num_images(self) -> int:
        return next(iter(self.tokens.values())).shape[0]

    def _key(self, layer: Layer, store: dict) -> Layer:
        key = layer
        if isinstance(layer, int) and layer < 0:
            key = self.depth + layer
        if key not in store:
            raise KeyError(f"Layer {layer!r} was not extracted; extracted: {list(store)}. "
                           "Ask extract() for it with layers=[...] (or final=True).")
        return key

    def layer(self, layer: Layer) -> torch.Tensor:
        """All tokens of ``layer``: ``[B, N, D]``."""
        return self.tokens[self._key(layer, self.tokens)]

    def cls(self, layer: Layer) -> torch.Tensor:
        """[CLS] token ``[B, D]``; an error if the model has none."""
        if not self.layout.num_cls:
            raise ValueError(f"{self.model_name} has no [CLS] token (it pools its patches).")
        return self.layer(layer)[:, 0]

    def registers(self, layer: Layer) -> torch.Tensor:
        """Register tokens ``[B, R, D]``; an error if the model has none."""
        if not self.layout.num_registers:
            raise ValueError(f"{self.model_name} has no register tokens: pick a model with "
                             "registers (e.g. dinov2_s_reg or mini_reg4).")
        return self.layer(layer)[:, self.layout.register_slice]

    def patches(self, layer: Layer) -> torch.Tensor:
        """Patch tokens ``[B, num_patches, D]`` in row-major grid order."""
        return self.layer(layer)[:, self.layout.patch_slice]

    def patch_grid(self, layer: Layer) -> torch.Tensor:
        """Patch tokens as ``[B, rows, cols, D]``."""
        p = self.patches(layer)
        return p.reshape(p.shape[0], *self.layout.grid, p.shape[-1])

    def prefix_attention(self, layer: int) -> torch.Tensor:
        """Attention rows of the prefix tokens over all tokens: ``[B, heads, prefix, N]``."""
        return self.attention[self._key(layer, self.attention)]

    def cls_attention(self, layer: int) -> torch.Tensor:
        """[CLS] -> patch attention per head as maps: ``[B, heads, rows, cols]``."""
        if not self.layout.num_cls:
            raise ValueError(f"{self.model_name} has no [CLS] token to read attention from.")
        a = self.prefix_attention(layer)[:, :, 0, self.layout.patch_slice]
        return a.reshape(a.shape[0], a.shape[1], *self.layout.grid)

    def register_attention(self, layer: int) -> torch.Tensor:
        """Register -> patch attention maps: ``[B, registers, heads, rows, cols]``."""
        if not self.layout.num_registers:
            raise ValueError(f"{self.model_name} has no register tokens.")
        a = self.prefix_attention(layer)[:, :, self.layout.register_slice, self.layout.patch_slice]
        a = a.permute(0, 2, 1, 3)
        return a.reshape(*a.shape[:3], *self.layout.grid)

    def mlp_hidden(self, layer: int) -> torch.Tensor:
        """MLP hidden activations (post-nonlinearity) ``[B, N, hidden]``."""
        return self.mlp[self._key(layer, self.mlp)]

    def after_attention(self, layer: int) -> torch.Tensor:
        """The residual stream of block ``layer`` after its attention, before its MLP:
        ``[B, N, D]`` (all tokens, split it with ``layout.split``)."""
        return self.mid[self._key(layer, self.mid)]

    def attention_keys(self, layer: int) -> torch.Tensor:
        """The attention keys of block ``layer`` (after ``k_norm``, heads concatenated):
        ``[B, N, heads * head_dim]``, all tokens (split them with ``layout.split``)."""
        return self.keys[self._key(layer, self.keys)]

    def attention_received(self, layer: int) -> torch.Tensor:
        """Attention each token receives in block ``layer``, per head, averaged over all
        queries: ``[B, heads, N]`` (each row sums to 1 over the tokens, or less where
        a learned bias slot takes a share)."""
        return self.received[self._key(layer, self.received)]


def _normalise_layers(layers: int | str | Iterable[int] | None, depth: int) -> list[int]:
    if layers is None:
        return []
    if layers == "all":
        return list(range(depth))
    if isinstance(layers, int):
        layers = [layers]
    out = []
    for i in layers:
        j = i + depth if i < 0 else i
        if not 0 <= j < depth:
            raise IndexError(f"Layer {i} is out of range for a model with {depth} blocks.")
        out.append(j)
    return sorted(set(out))


def _attention_probs(attn: torch.nn.Module, qkv_out: torch.Tensor, queries: slice) -> torch.Tensor:
    """``softmax(q kᵀ · scale)`` of the ``queries`` rows from a block's ``qkv`` output:
    ``[B, heads, queries, N]``. A learned key slot (``key_bias``, see
    :class:`vitreg_lib.lab.models.VariantAttention`) joins the softmax and its column is then
    dropped, so a row sums to what the tokens receive (less than 1)."""
    heads, head_dim = attn.num_heads, getattr(attn, "head_dim", None)
    b, n, _ = qkv_out.shape
    hd = head_dim or qkv_out.shape[-1] // (3 * heads)
    q, k, _v = qkv_out.reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4).unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    key_bias = getattr(attn, "key_bias", None)
    if key_bias is not None:
        k = torch.cat([k, key_bias[None, :, None].expand(b, -1, -1, -1)], dim=2)
    probs = ((q[:, :, queries] * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)
    return probs[..., :n]


def _attention_hook(attn: torch.nn.Module, num_prefix: int, sink: list) -> Callable:
    def hook(_module, _inputs, out):
        sink.append(_attention_probs(attn, out, slice(0, num_prefix)))

    return hook


def _keys_hook(attn: torch.nn.Module, sink: list) -> Callable:
    """The keys of every token, heads concatenated: ``[B, N, heads * head_dim]``."""
    heads, head_dim = attn.num_heads, getattr(attn, "head_dim", None)

    def hook(_module, _inputs, out):
        b, n, _ = out.shape
        hd = head_dim or out.shape[-1] // (3 * heads)
        k = attn.k_norm(out.reshape(b, n, 3, heads, hd)[:, :, 1].transpose(1, 2))  # [B, heads, N, hd]
        sink.append(k.transpose(1, 2).reshape(b, n, heads * hd).float().cpu())

    return hook


def _received_hook(attn: torch.nn.Module, sink: list) -> Callable:
    """Attention received by each key, averaged over all queries, per head."""
    def hook(_module, _inputs, out):
        sink.append(_attention_probs(attn, out, slice(None)).mean(dim=2).cpu())

    return hook


def extract(lm: LoadedModel, images: torch.Tensor | Sequence[Image.Image],
            layers: int | str | Iterable[int] | None = "all", *, final: bool = False,
            attention: bool = False, mlp: bool | Iterable[int] = False, embeddings: bool = False,
            mid: bool = False, received: bool = False, keys: bool = False,
            batch_size: int = 32, progress: bool | None = None) -> Features:
    """Run ``lm`` over ``images`` in batches and keep the requested outputs.

    ``images``: a preprocessed ``[B, 3, H, W]`` tensor, or PIL images (preprocessed
    with ``lm.preprocess``). ``layers``: ``"all"``, an index, or a list (negative
    indices count from the end). ``attention`` / ``mlp`` apply to the same layers.
    ``mlp``: ``True`` for the same layers, or a list of layers of its own (the
    register-neuron search reads the MLPs of many layers and the tokens of one).
    ``mid``: also keep each layer's residual stream after attention (before the MLP);
    ``received``: also keep the attention each token receives from all queries;
    ``keys``: also keep the attention keys of every token.
    Tokens appended after the patches (test-time registers, see
    :mod:`vitreg_lib.registers`) are reported by the layout as ``extra``.
    """
    options = dict(final=final, attention=attention, mlp=mlp, embeddings=embeddings, mid=mid,
                   received=received, keys=keys)
    if feature_cache.folder() is None or mlp:  # which models are cacheable: feature_cache.through
        # MLP activations are never cached: 4x the width of the tokens, at many layers
        # (a register-neuron search of ViT-L would write ~600 MB per batch of 8 images)
        return _extract(lm, images, layers, batch_size=batch_size, progress=progress, **options)
    if not isinstance(images, torch.Tensor):
        images = lm.preprocess(list(images))
    depth = len(lm.model.blocks)
    described = dict(options, layers=_normalise_layers(layers, depth),
                     mlp=mlp if isinstance(mlp, bool) else _normalise_layers(mlp, depth))
    return feature_cache.through(
        lm, images, described, lambda: _extract(lm, images, layers, batch_size=batch_size, progress=progress,
                                                **options), _to_tensors, _from_tensors)


_STORES = ("tokens", "attention", "mlp", "mid", "keys", "received")


def _to_tensors(f: Features) -> tuple[dict[str, torch.Tensor], dict]:
    """A :class:`Features` as flat named tensors and a JSON-able header (for the cache)."""
    tensors = {f"{store}/{k}": v for store in _STORES for k, v in getattr(f, store).items()}
    if f.embeddings is not None:
        tensors["embeddings"] = f.embeddings
    layout = dataclasses.asdict(f.layout)
    return tensors, dict(model_name=f.model_name, depth=f.depth, layout=layout)


def _from_tensors(tensors: dict[str, torch.Tensor], header: dict) -> Features:
    """The inverse of :func:`_to_tensors`."""
    stores: dict[str, dict] = {store: {} for store in _STORES}
    for name, t in tensors.items():
        if name == "embeddings":
            continue
        store, k = name.split("/")
        stores[store][k if k == "final" else int(k)] = t
    stores = {s: dict(sorted(d.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])))
              for s, d in stores.items()}
    layout = dict(header["layout"], grid=tuple(header["layout"]["grid"]))
    return Features(model_name=header["model_name"], layout=TokenLayout(**layout), depth=header["depth"],
                    embeddings=tensors.get("embeddings"), **stores)


@dataclass
class _Plan:
    """What one uncached extraction keeps, checked against the model and the images:
    the blocks whose output is kept (``take``), the blocks whose MLP is read, the last
    block that must run (later ones are skipped unless the final output is asked for),
    and which extras each kept block gives."""

    take: list[int]
    mlp_layers: list[int]
    last: int
    final: bool
    attention: bool
    embeddings: bool
    mid: bool
    received: bool
    keys: bool


def _plan(lm: LoadedModel, images: torch.Tensor | Sequence[Image.Image],
          layers: int | str | Iterable[int] | None, final: bool, attention: bool,
          mlp: bool | Iterable[int], **extras: bool) -> tuple[_Plan, torch.Tensor, TokenLayout]:
    """The :class:`_Plan` of an extraction, the images as a preprocessed batch and their
    token layout; or a clear error when there is nothing to extract or the images or the
    model cannot give what is asked."""
    depth = len(lm.model.blocks)
    take = _normalise_layers(layers, depth)
    if not take and not final:
        raise ValueError("Nothing to extract: pass layers=... and/or final=True.")
    if not isinstance(images, torch.Tensor):
        images = lm.preprocess(list(images))
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"Expected images of shape [B, 3, H, W], got {tuple(images.shape)}.")
    layout = lm.layout(tuple(images.shape[-2:]))
    if attention and not layout.num_prefix:
        raise ValueError(f"{lm.name} has no [CLS] or register token: there is no prefix "
                         "attention to read. Use attention=False.")
    mlp_layers = take if mlp is True else _normalise_layers(mlp or None, depth)
    last = depth - 1 if final else max(take + mlp_layers, default=depth - 1)
    return _Plan(take, mlp_layers, last, final, attention, **extras), images, layout


class _Sinks:
    """Where the hooks and the forward pass of one extraction put each batch's results:
    per kind (the :class:`Features` store it fills) and per block, one tensor a batch."""

    #: the hooked kinds, with the name an error message gives each hook
    HOOKED = (("attention", "attention"), ("mlp", "MLP"), ("mid", "norm2"),
              ("received", "received-attention"), ("keys", "keys"))

    def __init__(self, plan: _Plan):
        self.tokens: dict[Layer, list] = {i: [] for i in plan.take}
        if plan.final:
            self.tokens["final"] = []
        self.embeddings: list = []
        self.attention = {i: [] for i in plan.take} if plan.attention else {}
        self.mlp = {i: [] for i in plan.mlp_layers}
        self.mid = {i: [] for i in plan.take} if plan.mid else {}
        self.received = {i: [] for i in plan.take} if plan.received else {}
        self.keys = {i: [] for i in plan.take} if plan.keys else {}

    def hook(self, model: torch.nn.Module, name: str, layout: TokenLayout) -> list:
        """Register the forward hooks that fill the hooked kinds; returns their handles
        (the caller removes them). A block without a fused ``qkv`` cannot give attention."""
        handles = []

        def qkv_of(i: int, what: str) -> torch.nn.Module:
            if not hasattr(model.blocks[i].attn, "qkv"):
                raise TypeError(f"Block {i} of {name} has no fused qkv projection, so its {what} "
                                "cannot be read; use a timm ViT with standard attention.")
            return model.blocks[i].attn.qkv

        try:
            for i, sink in self.attention.items():
                handles.append(qkv_of(i, "attention maps").register_forward_hook(
                    _attention_hook(model.blocks[i].attn, layout.num_prefix, sink)))
            for i, sink in self.mlp.items():
                handles.append(model.blocks[i].mlp.fc2.register_forward_pre_hook(
                    lambda _m, inp, sink=sink: sink.append(inp[0].detach().float().cpu())))
            for i, sink in self.mid.items():
                handles.append(model.blocks[i].norm2.register_forward_pre_hook(
                    lambda _m, inp, sink=sink: sink.append(inp[0].detach().float().cpu())))
            for what, sinks, make in (("received attention", self.received, _received_hook),
                                      ("attention keys", self.keys, _keys_hook)):
                for i, sink in sinks.items():
                    handles.append(qkv_of(i, what).register_forward_hook(make(model.blocks[i].attn, sink)))
        except Exception:
            for h in handles:
                h.remove()
            raise
        return handles

    def check_fired(self, n_batch: int) -> None:
        """Every hook fired exactly once per batch so far; else the results would be wrong.
        The attention maps, computed where the model runs, then move to the CPU."""
        for kind, name in self.HOOKED:
            for i, sink in getattr(self, kind).items():
                if len(sink) != n_batch:
                    raise RuntimeError(f"The {name} hook of block {i} did not fire "
                                       "exactly once; results would be wrong.")
        for sink in self.attention.values():
            sink[-1] = sink[-1].cpu()

    def features(self, lm: LoadedModel, layout: TokenLayout, embeddings: bool) -> Features:
        """The batches joined into :class:`Features`; tokens after the patches that the
        model appended itself (test-time registers) are counted as the layout's ``extra``."""
        extra = next(iter(self.tokens.values()))[0].shape[1] - layout.num_prefix - layout.num_patches
        if extra != layout.extra:
            layout = TokenLayout(layout.num_cls, layout.num_registers, layout.grid,
                                 layout.patch_size, extra=extra)
        joined = {kind: {k: _join(v) for k, v in getattr(self, kind).items()}
                  for kind in ("tokens", "attention", "mlp", "mid", "received", "keys")}
        return Features(model_name=lm.name, layout=layout, depth=len(lm.model.blocks),
                        embeddings=_join(self.embeddings) if embeddings else None, **joined)


def _forward(model: torch.nn.Module, xb: torch.Tensor, plan: _Plan, sinks: _Sinks) -> None:
    """One batch through timm's steps (``forward_intermediates``'s), keeping the patch
    embeddings, each kept block's output and the final normed output as planned; the
    hooks fill the rest."""
    x = model.patch_embed(xb)
    if plan.embeddings:
        sinks.embeddings.append(x.reshape(x.shape[0], -1, x.shape[-1]).float().cpu())
    x = model._pos_embed(x)
    x = model.patch_drop(x)
    x = model.norm_pre(x)
    for i in range(plan.last + 1):
        x = model.blocks[i](x)
        if i in sinks.tokens:
            sinks.tokens[i].append(x.float().cpu())
    if plan.final:
        sinks.tokens["final"].append(model.norm(x).float().cpu())


def progress_bar(batches: list, desc: str, progress: bool | None = None):
    """The batches, behind a progress bar when asked for (by default: more than one
    batch). The static book draws no widget (a tqdm.auto bar there is an empty box): when
    the book build runs the notebook (VITREG_STATIC_BOOK, see vitreg_lib.explorer) there
    is no bar unless asked for, and an asked-for bar is plain text. Elsewhere: tqdm.auto.
    Every batched loop of the library that shows progress goes through here."""
    static_book = bool(os.environ.get("VITREG_STATIC_BOOK"))
    show = (len(batches) > 1 and not static_book) if progress is None else progress
    if static_book:
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(batches, desc=desc, disable=not show)


def _extract(lm: LoadedModel, images: torch.Tensor | Sequence[Image.Image],
             layers: int | str | Iterable[int] | None, *, final: bool, attention: bool,
             mlp: bool | Iterable[int], embeddings: bool, mid: bool, received: bool, keys: bool,
             batch_size: int, progress: bool | None) -> Features:
    """:func:`extract` without the cache: plan, hook, run the batches, join."""
    plan, images, layout = _plan(lm, images, layers, final, attention, mlp, embeddings=embeddings,
                                 mid=mid, received=received, keys=keys)
    sinks = _Sinks(plan)
    device = next(lm.model.parameters()).device
    handles = sinks.hook(lm.model, lm.name, layout)
    batches = list(torch.split(images, batch_size))
    try:
        with torch.inference_mode():
            for n_batch, xb in enumerate(progress_bar(batches, f"features {lm.name}", progress), start=1):
                _forward(lm.model, xb.to(device), plan, sinks)
                sinks.check_fired(n_batch)
    finally:
        for h in handles:
            h.remove()
    return sinks.features(lm, layout, embeddings)


def _join(chunks: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate per-batch results (no copy when there was one batch)."""
    return chunks[0] if len(chunks) == 1 else torch.cat(chunks)


def extract_models(names: Iterable[str], images: torch.Tensor | Sequence[Image.Image] | None = None,
                   device: str = "cpu", **kwargs) -> dict[str, Features]:
    """:func:`extract` for each registry model in ``names`` over the same PIL ``images``, one
    model in memory at a time (:func:`vitreg_lib.models.each_model`). ``kwargs`` go to
    :func:`extract`."""
    return each_model(names, lambda lm: extract(lm, images, **kwargs), device=device)


class HookSet:
    """Forward hooks put on a model together and taken off together: a ``with`` block gives
    :attr:`model` (the model the hooks change) and removes every hook on exit. The library's
    in-place edits (test-time registers, register-content controls) are such sets."""

    def __init__(self, model: LoadedModel):
        self.model = model
        self._handles: list = []

    @property
    def active(self) -> bool:
        return bool(self._handles)

    def remove(self) -> None:
        """Take every hook off."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> LoadedModel:
        return self.model

    def __exit__(self, *exc) -> None:
        self.remove()
