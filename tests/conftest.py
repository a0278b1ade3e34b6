"""Shared tiny models: random timm ViTs small enough for a unit test; the planted
stand-ins for hub weights and datasets come from tools/plant.py."""

import sys
from pathlib import Path

import pytest
import torch

from vitreg_lib.models import LoadedModel, ModelSpec, build_vit

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from plant import fill_hub_cache, plant_image_folder  # noqa: E402, F401 (re-exported to the tests)


def tiny(registers: int = 2, cls_token: bool = True, img_size: int = 16, depth: int = 3,
         seed: int = 0) -> LoadedModel:
    torch.manual_seed(seed)
    arch = dict(img_size=img_size, patch_size=4, embed_dim=32, depth=depth, num_heads=2,
                num_classes=3, reg_tokens=registers, class_token=cls_token,
                global_pool="token" if cls_token else "avg")
    model = build_vit(arch).eval()
    spec = ModelSpec(f"tiny_r{registers}", "mini", "", "test", registers=registers,
                     cls_token=cls_token, img_size=img_size)
    return LoadedModel(spec, model, (0.5,) * 3, (0.5,) * 3, img_size)


@pytest.fixture
def tiny_model():
    return tiny()


@pytest.fixture
def images():
    torch.manual_seed(1)
    return torch.randn(5, 3, 16, 16)
