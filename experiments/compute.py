"""What the known small-model cases of high-norm tokens would cost on this machine.

    python experiments/compute.py [--steps 4] [--batch 8]

Times full training steps (forward, backward, AdamW) on one CPU thread for the mini-lab's
``lab_v3`` ViT and for timm's ``vit_small_patch16_224`` (ViT-S/16, random weights: nothing
is downloaded), prints images/s, their ratio, and the core-hours the smallest published
cases with artifacts would take at the measured ViT-S/16 rate. The budgets are the
papers' (images seen = epochs x 1.28 M ImageNet-1k images); only the rates are measured.
The numbers quoted in RESULTS.md come from here.
"""

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vitreg_lib.models import build_vit  # noqa: E402
from vitreg_lib.train import PRESETS  # noqa: E402

IMAGENET = 1_281_167
# smallest published models with high-norm / outlier tokens, and their training length
BUDGETS = {
    "ViT-S/16, ImageNet-1k, 300 epochs (Bondarenko et al. 2023)": 300 * IMAGENET,
    "DeiT-III-S, ImageNet-1k, 800 epochs (Bach et al. 2025)": 800 * IMAGENET,
}


def images_per_s(model: torch.nn.Module, x: torch.Tensor, classes: int, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    y = torch.randint(0, classes, (len(x),))

    def step() -> None:
        out = model(x)
        out = out[0] if isinstance(out, tuple) else out
        loss = torch.nn.functional.cross_entropy(out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, first-call overheads
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * len(x) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8, help="ViT-S/16 batch (the mini uses 64)")
    args = ap.parse_args()
    if args.steps < 1 or args.batch < 1:
        sys.exit("--steps and --batch must be at least 1")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    import timm

    cfg = PRESETS["lab_v3"]
    mini = build_vit(cfg.arch(4))
    mini_rate = images_per_s(mini, torch.rand(64, 3, cfg.img_size, cfg.img_size), 4, 8 * args.steps)
    vits = timm.create_model("vit_small_patch16_224", pretrained=False)
    vits_rate = images_per_s(vits, torch.rand(args.batch, 3, 224, 224), 1000, args.steps)
    print(f"lab_v3 mini ({cfg.depth} x {cfg.dim}, {(cfg.img_size // cfg.patch) ** 2} patches): "
          f"{mini_rate:.1f} images/s on one thread")
    print(f"ViT-S/16 (196 patches, 22 M parameters): {vits_rate:.2f} images/s on one thread, "
          f"{mini_rate / vits_rate:.0f}x slower per image")
    for name, images in BUDGETS.items():
        hours = images / vits_rate / 3600
        print(f"{name}: {images / 1e6:.0f} M images = {hours:,.0f} core-hours "
              f"({hours / 24 / 2:,.0f} days on this machine's 2 cores)")


if __name__ == "__main__":
    main()
