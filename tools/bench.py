"""Extraction overhead against a bare timm forward, as ratios (median of several runs,
taken in turns).

    python tools/bench.py [--runs 7] [--batch 8]

Models: a randomly initialised ViT-S/16 at 224 px (the shape of the pretrained tier's
small models; weights do not change the cost) and the bundled mini_reg0. The bare
forward is ``model.forward_features(x)``; vitreg_lib.features.extract keeps every
block's output and the final normed output, without and with attention maps.
Target: at most 1.05x without attention maps.
"""

import argparse
import statistics
import time

import timm
import torch

from vitreg_lib.features import extract
from vitreg_lib.models import LoadedModel, ModelSpec, load_model


def median_times(fns: list, runs: int) -> list[float]:
    """Median time of each function; the functions take turns within every run so that
    drifts of the machine (clock, other load) hit them alike."""
    for fn in fns:
        fn()  # warm-up
    times = [[] for _ in fns]
    for r in range(runs):
        order = list(range(len(fns)))
        order = order[r % len(fns):] + order[: r % len(fns)]
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def ratios(lm: LoadedModel, x: torch.Tensor, runs: int) -> list[float]:
    def bare():
        with torch.inference_mode():
            lm.model.forward_features(x)

    return median_times([
        bare,
        lambda: extract(lm, x, layers="all", final=True, progress=False),
        lambda: extract(lm, x, layers="all", final=True, attention=True, progress=False),
    ], runs)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args()
    torch.manual_seed(0)
    vit_s = timm.create_model("vit_small_patch16_224", pretrained=False, dynamic_img_size=True).eval()
    cases = {
        "ViT-S/16 (random), 224 px": (
            LoadedModel(ModelSpec("vit_s16", "pretrained", "", "bench", 0), vit_s,
                        (0.5,) * 3, (0.5,) * 3, 224), 224),
        "mini_reg0, 32 px": (load_model("mini_reg0"), 32),
    }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"median of {args.runs} runs")
    for label, (lm, size) in cases.items():
        bare, plain, attn = ratios(lm, torch.randn(args.batch, 3, size, size), args.runs)
        print(f"{label}: bare forward {1000 * bare:.1f} ms | extract {plain / bare:.3f}x | "
              f"extract + attention maps {attn / bare:.3f}x")


if __name__ == "__main__":
    main()
