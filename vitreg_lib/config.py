"""Run settings for the notebooks: one function, so no cell branches on ``smoke``.

``settings(tier, smoke, device)`` resolves ``tier="auto"`` to ``"pretrained"`` inside
Colab and ``"mini"`` elsewhere (the offline default of ``make book`` and CI), and
``device="auto"`` to CUDA when present.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from .models import REGISTRY

TIERS = ("mini", "pretrained")
#: the mini models without registers, smallest first, that chapter 2 compares by size
MINI_SIZES = ("mini_s_reg0", "mini_reg0", "mini_l_reg0")


@dataclass(frozen=True)
class Settings:
    tier: str
    smoke: bool
    device: str
    pairs: tuple[tuple[str, str], ...]  # (without registers, with registers)
    n_photos: int  # sample photos from skimage.data
    n_scenes: int  # procedural scenes (mini tier: the training distribution)
    batch_size: int
    hist_layers: int  # how many layers the histogram grid shows
    sizes: tuple[str, ...] = ()  # models without registers, smallest first (chapter 2)
    log_model: str = "mini_reg0"  # the model whose bundled training log chapter 2 reads
    retrain: bool = False  # chapter 2 retrains log_model live (full mode on a GPU only)
    probe_dataset: str = "scenes"  # chapters 3-4: labelled images for the probes
    n_probe: int = 0
    probe_models: tuple[str, ...] = ()  # without, then with registers

    @property
    def models(self) -> list[str]:
        return [m for pair in self.pairs for m in pair]


def in_colab() -> bool:
    return "google.colab" in sys.modules


def settings(tier: str = "auto", smoke: bool = False, device: str = "auto") -> Settings:
    if tier == "auto":
        tier = "pretrained" if in_colab() else "mini"
    if tier not in TIERS:
        raise ValueError(f"tier must be 'auto' or one of {TIERS}, got {tier!r}.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but no GPU is visible; use device='cpu' "
                           "(or in Colab: Runtime > Change runtime type > GPU).")
    if tier == "mini":
        pairs = (("mini_reg0", "mini_reg4"),)
        n_photos, n_scenes, batch = (2, 16, 16) if smoke else (4, 256, 64)
        sizes = tuple(n for n in MINI_SIZES if n in REGISTRY)
        probe_dataset, n_probe = "scenes", (80 if smoke else 512)
        probe_models = ("mini_reg0", "mini_reg4")
    else:
        pairs = (("dinov2_s", "dinov2_s_reg"),) if smoke else (
            ("dinov2_s", "dinov2_s_reg"), ("dinov2_b", "dinov2_b_reg"), ("dinov2_l", "dinov2_l_reg"))
        n_photos, n_scenes, batch = (2, 0, 4) if smoke else (4, 0, 8)
        sizes = ("dinov2_s",) if smoke else ("dinov2_s", "dinov2_b", "dinov2_l", "dinov2_g")
        probe_dataset, n_probe = "CIFAR10", (48 if smoke else 600)
        probe_models = ("dinov2_s", "dinov2_s_reg") if smoke else ("dinov2_l", "dinov2_l_reg")
    return Settings(tier, smoke, device, pairs, n_photos, n_scenes, batch,
                    hist_layers=4 if smoke else 6, sizes=sizes,
                    retrain=device.startswith("cuda") and not smoke,
                    probe_dataset=probe_dataset, n_probe=n_probe, probe_models=probe_models)
