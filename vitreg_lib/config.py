"""Run settings for the notebooks: one function, so no cell branches on ``smoke``.

``settings(tier, smoke, device, dataset)`` resolves ``tier="auto"`` to ``"pretrained"``
inside Colab and ``"mini"`` elsewhere (the offline default of ``make book`` and CI), and
``device="auto"`` to CUDA when present.

``dataset="auto"`` keeps each tier's data: scenes offline; CIFAR-10 (probes) and VOC07
(object discovery) in the pretrained tier, downloaded by torchvision. Otherwise it
names ``"scenes"``, a torchvision dataset (``"CIFAR10"``, ``"CIFAR100"``: probes;
``"VOC07"``: discovery), or **a folder of the reader's own images**: one sub-folder per
class for the probes, a ``boxes.json`` for object discovery (see
:func:`vitreg_lib.data.boxed_folder`), and its images replace the sample photos of the
chapters that show photos.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

from .data import BOXED_DATASETS, BOXES_FILE, LABELLED_DATASETS
from .models import REGISTRY

TIERS = ("mini", "pretrained")
#: the mini models without registers, smallest first, that chapter 2 compares by size
MINI_SIZES = ("mini_s_reg0", "mini_reg0", "mini_l_reg0")
#: the mini register family of chapter 5: one recipe, 0 to 8 registers
MINI_FAMILY = ("mini_reg0", "mini_reg1", "mini_reg2", "mini_reg4", "mini_reg8")
#: the architecture whose FLOPs chapter 5 counts for 0..16 registers (the paper's F8 model)
FLOPS_ARCH = "vit_large_patch14_reg4_dinov2.lvd142m"


@dataclass(frozen=True)
class TestTimeSearch:
    """Chapter 6: where to look for register neurons, and what to compare with."""

    __test__ = False  # not a pytest test class

    model: str  # the model to fix
    trained: str  # the same family with trained registers
    max_layer: int  # neurons in blocks 0..max_layer
    top_k: int
    n_images: int  # images the search averages over
    source: str  # where the layer limit and k come from


@dataclass(frozen=True)
class DiscoverySettings:
    """Chapter 7: LOST object discovery."""

    dataset: str  # "scenes" (offline, with boxes) or "VOC07"
    n_images: int
    k: int
    k_source: str  # where k comes from
    models: tuple[str, ...]  # run LOST on each
    pair: tuple[str, str]  # the model without registers and its counterpart with them
    test_time: str  # the model that also runs with test-time registers (chapter 6's search)


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
    family: tuple[str, ...] = ()  # chapter 5: the same model with 0, 1, ... registers
    search: TestTimeSearch | None = None  # chapter 6
    discovery: DiscoverySettings | None = None  # chapter 7
    photos: str | None = None  # a folder whose images replace the sample photos
    probe_tokens: int = 8000  # tokens the position / pixel probes are fitted on (at most)

    @property
    def models(self) -> list[str]:
        return [m for pair in self.pairs for m in pair]


def in_colab() -> bool:
    return "google.colab" in sys.modules


def settings(tier: str = "auto", smoke: bool = False, device: str = "auto",
             dataset: str = "auto") -> Settings:
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
        family = tuple(n for n in MINI_FAMILY if n in REGISTRY)
        search = TestTimeSearch("mini_reg0", "mini_reg4", max_layer=3, top_k=5,
                                n_images=32 if smoke else 256,
                                source="course's choice: first 4 of 6 blocks (no outliers to place it by)")
        discovery = DiscoverySettings(
            "scenes", 32 if smoke else 256, k=9,
            k_source="course's choice: 14 % of the 64 patches, the share LOST's k = 100 is of a "
                     "full-size VOC07 image at ViT-S/16 (about 700 patches)",
            models=family, pair=("mini_reg0", "mini_reg4"), test_time="mini_reg0")
    else:
        pairs = (("dinov2_s", "dinov2_s_reg"),) if smoke else (
            ("dinov2_s", "dinov2_s_reg"), ("dinov2_b", "dinov2_b_reg"), ("dinov2_l", "dinov2_l_reg"))
        n_photos, n_scenes, batch = (2, 0, 4) if smoke else (4, 0, 8)
        sizes = ("dinov2_s",) if smoke else ("dinov2_s", "dinov2_b", "dinov2_l", "dinov2_g")
        probe_dataset, n_probe = "CIFAR10", (48 if smoke else 600)
        probe_models = ("dinov2_s", "dinov2_s_reg") if smoke else ("dinov2_l", "dinov2_l_reg")
        family = probe_models  # public checkpoints exist with 0 and 4 registers only
        search = (TestTimeSearch("dinov2_s", "dinov2_s_reg", max_layer=7, top_k=10, n_images=16,
                                 source="course's choice for the smoke run (ViT-S, not in the paper)")
                  if smoke else
                  TestTimeSearch("dinov2_l", "dinov2_l_reg", max_layer=17, top_k=45, n_images=300,
                                 source="Jiang et al. for DINOv2-L/14: layers <= 17, k ~ 45"))
        discovery = DiscoverySettings(
            "VOC07", 8 if smoke else 5011, k=100,
            k_source="LOST's default (for full-size images; here 224-px crops, 256 patches)",
            models=("dinov2_s", "dinov2_s_reg") if smoke else
            ("dinov2_l", "dinov2_l_reg", "deit3_b", "openclip_b16"),
            pair=("dinov2_s", "dinov2_s_reg") if smoke else ("dinov2_l", "dinov2_l_reg"),
            test_time=search.model)
    photos = None
    if dataset != "auto":
        from dataclasses import replace
        from pathlib import Path

        folder = Path(dataset).expanduser()
        if folder.is_dir():
            probe_dataset, photos = str(folder), str(folder)
            if (folder / BOXES_FILE).is_file():
                discovery = replace(discovery, dataset=str(folder))
        elif dataset in LABELLED_DATASETS or dataset in BOXED_DATASETS:
            if dataset in LABELLED_DATASETS:
                probe_dataset = dataset
            if dataset in BOXED_DATASETS:
                discovery = replace(discovery, dataset=dataset)
        else:
            raise ValueError(f"dataset={dataset!r} is neither a dataset the course knows "
                             f"({', '.join(dict.fromkeys(LABELLED_DATASETS + BOXED_DATASETS))}) nor a "
                             "folder. Use 'auto', one of those, or the path of a folder of your images "
                             f"(one sub-folder per class; a {BOXES_FILE} for object discovery).")
    return Settings(tier, smoke, device, pairs, n_photos, n_scenes, batch,
                    hist_layers=4 if smoke else 6, sizes=sizes,
                    retrain=device.startswith("cuda") and not smoke,
                    probe_dataset=probe_dataset, n_probe=n_probe, probe_models=probe_models,
                    family=family, search=search, discovery=discovery, photos=photos,
                    probe_tokens=1000 if smoke else 8000)
