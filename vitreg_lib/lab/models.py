"""The mini-lab's attention variants: the two fixes the lab compares with registers.

:func:`build_vit` builds a mini ViT like :func:`vitreg_lib.models.build_vit` and, when
``arch["attention"]`` names a variant, swaps every block's attention for a
:class:`VariantAttention`. The course's models never use them.
"""

from __future__ import annotations

import torch

from ..models import build_vit as build_course_vit

#: attention variants a mini model can be built with (``arch["attention"]``): plain
#: softmax attention, and the two fixes the mini-lab compares with registers
ATTENTION_VARIANTS = ("softmax", "gated", "bias")


def build_vit(arch: dict) -> torch.nn.Module:
    """A timm ``VisionTransformer`` from the ``arch`` dict of a mini-lab config.

    ``arch["attention"]`` (default ``"softmax"``) picks the attention of every block:

    * ``"gated"`` — a learned sigmoid gate per head and token multiplies each head's
      output before the output projection (Bondarenko et al. 2023's gated attention,
      head-wise as in Fesser et al. 2026): a head can switch itself off without a sink;
    * ``"bias"`` — one learned key and value per head join every attention as an extra
      slot any query can attend to (Sun et al. 2024's explicit attention bias): a head
      can put its attention there instead of on a token.

    Both are :class:`VariantAttention` modules with timm's attribute names (``qkv``,
    ``q_norm``, ``k_norm``, ``scale``, ``proj``), so every hook of :mod:`vitreg_lib.features`
    reads them; the attention maps it reports leave out the bias slot's share.
    """
    arch = dict(arch)
    variant = arch.pop("attention", "softmax")
    if variant not in ATTENTION_VARIANTS:
        raise ValueError(f"Unknown attention {variant!r}; choose one of {ATTENTION_VARIANTS}.")
    model = build_course_vit(arch)
    if variant != "softmax":
        for blk in model.blocks:
            blk.attn = VariantAttention(blk.attn, variant)
    return model


class VariantAttention(torch.nn.Module):
    """timm's multi-head self-attention with a head-wise output gate (``"gated"``) or a
    learned key/value slot (``"bias"``). Built from a timm ``Attention`` whose
    projections it takes over.

    Initialisation: the gate's weights ~ N(0, 1e-6) and bias 2 (every gate starts
    near sigmoid(2) = 0.88, as in Fesser et al.'s ViTs); the bias key and value ~
    N(0, 0.02) (as in Sun et al.).
    """

    def __init__(self, base: torch.nn.Module, variant: str):
        super().__init__()
        self.variant = variant
        self.num_heads, self.head_dim, self.scale = base.num_heads, base.head_dim, base.scale
        self.fused_attn = getattr(base, "fused_attn", True)
        self.qkv, self.q_norm, self.k_norm = base.qkv, base.q_norm, base.k_norm
        self.attn_drop, self.proj, self.proj_drop = base.attn_drop, base.proj, base.proj_drop
        self.norm = getattr(base, "norm", torch.nn.Identity())
        dim = base.qkv.in_features
        if variant == "gated":
            self.head_gate = torch.nn.Linear(dim, self.num_heads)
            torch.nn.init.normal_(self.head_gate.weight, std=1e-6)
            torch.nn.init.constant_(self.head_gate.bias, 2.0)
        elif variant == "bias":
            self.key_bias = torch.nn.Parameter(0.02 * torch.randn(self.num_heads, self.head_dim))
            self.value_bias = torch.nn.Parameter(0.02 * torch.randn(self.num_heads, self.head_dim))
        else:
            raise ValueError(f"Unknown attention variant {variant!r}.")

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, **_) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        if self.variant == "bias":
            k = torch.cat([k, self.key_bias[None, :, None].expand(b, -1, -1, -1)], dim=2)
            v = torch.cat([v, self.value_bias[None, :, None].expand(b, -1, -1, -1)], dim=2)
        if attn_mask is not None:
            raise ValueError("VariantAttention does not take an attention mask.")
        if self.fused_attn:
            out = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            out = self.attn_drop(((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)) @ v
        out = out.transpose(1, 2)  # [B, N, heads, head_dim]
        if self.variant == "gated":
            out = out * self.head_gate(x).sigmoid()[..., None]
        out = self.norm(out.reshape(b, n, -1))
        return self.proj_drop(self.proj(out))
