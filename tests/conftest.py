"""Shared tiny models: random timm ViTs small enough for a unit test."""

from pathlib import Path  # noqa: F401 (used in a type hint)

import pytest
import torch

from vitreg_lib.models import LoadedModel, ModelSpec, build_vit


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


def fill_hub_cache(cache: "Path", timm_name: str) -> None:
    """Put randomly initialised weights where the Hugging Face hub client caches
    ``timm/<timm_name>``, so the real hub loading path runs offline
    (with ``HF_HUB_CACHE=cache`` and ``HF_HUB_OFFLINE=1``)."""
    import timm
    from safetensors.torch import save_file

    folder = cache / f"models--timm--{timm_name}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    save_file(timm.create_model(timm_name, pretrained=False).state_dict(), str(snap / "model.safetensors"))


def plant_image_folder(folder: "Path", classes: int = 2, per_class: int = 16,
                       size: tuple[int, int] = (160, 120), seed: int = 0) -> "Path":
    """A reader's own images in the layout the course reads: one sub-folder per class,
    and ``boxes.json`` with each image's object box (a coloured rectangle on a smooth
    background; class 0 rectangles are wide, class 1 tall)."""
    import json

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    boxes = {}
    for c in range(classes):
        (folder / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.empty((h, w, 3), np.uint8)
            arr[:] = rng.integers(40, 200, 3)
            bw, bh = (60, 30) if c % 2 == 0 else (30, 60)
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            arr[y0:y0 + bh, x0:x0 + bw] = rng.integers(0, 255, 3)
            name = f"class_{c}/{i:03d}.png"
            Image.fromarray(arr).save(folder / name)
            boxes[name] = [[x0, y0, x0 + bw, y0 + bh]]
    (folder / "boxes.json").write_text(json.dumps(boxes))
    return folder
