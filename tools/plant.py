"""Planted stand-ins for what the pretrained tier downloads, in the real on-disk formats,
so its code path runs where the hub and the dataset hosts cannot be reached (tests, the
publish benchmark). Every stand-in is random: the numbers they give mean nothing, the
cost and the code path are the real ones.

* :func:`fill_hub_cache` — random weights saved as ``model.safetensors`` where the Hugging
  Face hub client caches ``timm/<name>`` (use with ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1``);
* :func:`plant_register_neurons` — rewrites planted weights so that given MLP units write
  high-norm tokens on the top-left patches of every image (a known answer for the
  test-time-register search, e.g. the authors' DINOv2-L list);
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


def plant_register_neurons(cache: Path, timm_name: str, neurons: dict[int, list[int]], corner: int = 6,
                           strength: float = 400.0, seed: int = 0) -> list[int]:
    """Rewrite the planted weights of ``timm/<timm_name>`` (:func:`fill_hub_cache`, a
    DINOv2-style ViT with layer scale) so that the MLP units ``neurons[layer]`` fire on
    the patches under the position grid's top-left ``corner x corner`` cells, whatever
    the image, and together write a vector of norm about ``strength`` there: those
    patches leave the planted blocks far above the others (DINOv2's cut is a norm of
    150). A known answer for the test-time-register search (e.g. the authors' DINOv2-L
    list). Each unit reads its own residual channel, kept clean of the patch embedding,
    [CLS] and every earlier block and set in the position embedding on the corner cells;
    each unit's output is scaled from its activation measured on two noise images at 224
    px (the planted blocks' MLP layer scale is set to 1). Returns the channels used."""
    import timm
    import torch
    from safetensors.torch import save_file

    path = hub_file(cache, timm_name)
    model = timm.create_model(timm_name, pretrained=False, dynamic_img_size=True)
    timm.models.load_checkpoint(model, str(path))
    model.eval()
    sd = model.state_dict()  # shares storage with the parameters
    gen = torch.Generator().manual_seed(seed)
    dim = sd["pos_embed"].shape[-1]
    side = int(round((sd["pos_embed"].shape[1] - 1) ** 0.5))  # one [CLS] position, then the grid
    cells = [1 + r * side + c for r in range(corner) for c in range(corner)]
    units = [(layer, unit) for layer in sorted(neurons) for unit in neurons[layer]]
    channels = torch.randperm(dim, generator=gen)[: len(units)].tolist()
    noise = torch.randn(2, 3, 224, 224, generator=gen)
    per_unit = strength / len(units) ** 0.5  # random directions: the norms add in quadrature
    seen: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for layer in sorted(neurons):
            mine = [(u, ch) for (la, u), ch in zip(units, channels) if la == layer]
            b = f"blocks.{layer}."
            for unit, ch in mine:
                sd["patch_embed.proj.weight"][ch] = 0
                sd["patch_embed.proj.bias"][ch] = 0
                for key in ("cls_token", "reg_token"):
                    if key in sd:
                        sd[key][..., ch] = 0
                sd["pos_embed"][0, :, ch] = 0
                sd["pos_embed"][0, cells, ch] = 10.0
                for earlier in range(layer + 1):
                    for key in ("attn.proj", "mlp.fc2") if earlier < layer else ("attn.proj",):
                        sd[f"blocks.{earlier}.{key}.weight"][ch] = 0
                        sd[f"blocks.{earlier}.{key}.bias"][ch] = 0
                sd[b + "norm2.weight"][ch] = 1
                sd[b + "norm2.bias"][ch] = 0
                sd[b + "mlp.fc1.weight"][unit] = 0
                sd[b + "mlp.fc1.weight"][unit, ch] = 40.0
                sd[b + "mlp.fc1.bias"][unit] = -20.0
                sd[b + "mlp.fc2.weight"][:, unit] = 0
            sd[b + "ls2.gamma"][:] = 1.0
            hook = model.blocks[layer].mlp.fc2.register_forward_hook(
                lambda mod, inp, out: seen.__setitem__("act", inp[0].detach()))
            model(noise)
            hook.remove()
            act = seen["act"][:, model.num_prefix_tokens:]  # [B, patches, hidden]
            for unit, _ in mine:
                fire = float(act[..., unit].amax(dim=1).mean())
                if fire <= 1.0:
                    raise RuntimeError(f"planted unit {layer}/{unit} does not fire ({fire:.3g}); "
                                       "a larger corner or trigger is needed")
                direction = torch.randn(dim, generator=gen)
                direction[channels] = 0
                sd[b + "mlp.fc2.weight"][:, unit] = direction / direction.norm() * per_unit / fire
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return channels


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
