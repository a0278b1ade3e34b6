"""Planted stand-ins for what the pretrained tier downloads, in the real on-disk formats,
so its code path runs where the hub and the dataset hosts cannot be reached (tests, the
publish benchmark). Every stand-in is random: the numbers they give mean nothing, the
cost and the code path are the real ones.

* :func:`fill_hub_cache` — random weights saved as ``model.safetensors`` where the Hugging
  Face hub client caches ``timm/<name>`` (use with ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1``);
* :func:`plant_cifar10` — ``cifar-10-batches-py/`` as the CIFAR-10 archive unpacks;
* :func:`plant_voc07` — ``VOCdevkit/VOC2007/`` as the VOC 2007 trainval tar unpacks;
* :func:`plant_image_folder` — a reader's own images (one sub-folder per class, boxes.json).
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

REVISION = "0" * 40  # the snapshot folder a planted hub repo gets


def hub_file(cache: Path, timm_name: str) -> Path:
    """Where :func:`fill_hub_cache` puts the weights of ``timm/<timm_name>``."""
    return Path(cache) / f"models--timm--{timm_name}" / "snapshots" / REVISION / "model.safetensors"


def fill_hub_cache(cache: Path, timm_name: str) -> None:
    """Random weights under the hub cache's layout for ``timm/<timm_name>``."""
    import timm
    import torch
    from safetensors.torch import save_file

    path = hub_file(cache, timm_name)
    (path.parents[2] / "refs").mkdir(parents=True, exist_ok=True)
    (path.parents[2] / "refs" / "main").write_text(REVISION)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = timm.create_model(timm_name, pretrained=False)
    save_file(model.state_dict(), str(path))


def plant_cifar10(root: Path, n: int = 10_000, seed: int = 0) -> Path:
    """CIFAR-10's test split as torchvision reads it (``test_batch`` and ``batches.meta``,
    Python pickles, as the real archive has them): ``n`` random 32x32 images. Their md5
    sums differ from the real files', so torchvision's integrity check must be skipped
    (see ``bench_publish.py``)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    labels = rng.integers(0, 10, n)
    base = rng.integers(0, 255, (10, 3, 1, 1))
    pixels = np.clip(base[labels] + rng.normal(0, 40, (n, 3, 32, 32)), 0, 255).astype(np.uint8)
    batch = {"batch_label": "testing batch 1 of 1", "labels": labels.tolist(),  # str keys, as torchvision
             "data": pixels.reshape(n, 3072), "filenames": [f"img_{i}.png" for i in range(n)]}  # reads them
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch, f)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names, "num_cases_per_batch": n, "num_vis": 3072}, f)
    return folder


def plant_voc07(root: Path, n: int = 5011, seed: int = 0) -> Path:
    """Pascal VOC 2007 trainval as its tar unpacks: ``n`` JPEGs of VOC's sizes with one to
    three boxed objects each, their XML annotations and ``ImageSets/Main/trainval.txt``."""
    rng = np.random.default_rng(seed)
    voc = Path(root) / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True, exist_ok=True)
    ids = [f"{i:06d}" for i in range(1, n + 1)]
    for image_id in ids:
        w, h = (500, 375) if rng.random() < 0.7 else (375, 500)
        arr = np.empty((h, w, 3), np.uint8)
        arr[:] = rng.integers(40, 200, 3)
        objects = []
        for _ in range(int(rng.integers(1, 4))):
            bw, bh = int(rng.integers(40, w // 2)), int(rng.integers(40, h // 2))
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            arr[y0:y0 + bh, x0:x0 + bw] = rng.integers(0, 255, 3)
            objects.append((x0 + 1, y0 + 1, x0 + bw, y0 + bh))  # VOC: 1-based, inclusive
        Image.fromarray(arr).save(voc / "JPEGImages" / f"{image_id}.jpg", quality=85)
        boxes = "".join(f"<object><name>thing</name><pose>Unspecified</pose><truncated>0</truncated>"
                        f"<difficult>0</difficult><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                        f"<ymax>{d}</ymax></bndbox></object>" for a, b, c, d in objects)
        (voc / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename><size><width>{w}"
            f"</width><height>{h}</height><depth>3</depth></size><segmented>0</segmented>{boxes}</annotation>")
    (voc / "ImageSets" / "Main" / "trainval.txt").write_text("\n".join(ids) + "\n")
    return voc


def plant_image_folder(folder: Path, classes: int = 2, per_class: int = 16,
                       size: tuple[int, int] = (160, 120), seed: int = 0) -> Path:
    """A reader's own images in the layout the course reads: one sub-folder per class,
    and ``boxes.json`` with each image's object box (a coloured rectangle on a smooth
    background; class 0 rectangles are wide, class 1 tall)."""
    rng = np.random.default_rng(seed)
    w, h = size
    boxes = {}
    for c in range(classes):
        (Path(folder) / f"class_{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = np.empty((h, w, 3), np.uint8)
            arr[:] = rng.integers(40, 200, 3)
            bw, bh = (60, 30) if c % 2 == 0 else (30, 60)
            x0, y0 = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            arr[y0:y0 + bh, x0:x0 + bw] = rng.integers(0, 255, 3)
            name = f"class_{c}/{i:03d}.png"
            Image.fromarray(arr).save(Path(folder) / name)
            boxes[name] = [[x0, y0, x0 + bw, y0 + bh]]
    (Path(folder) / "boxes.json").write_text(json.dumps(boxes))
    return Path(folder)
