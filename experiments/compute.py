"""What the known small-model cases of high-norm tokens would cost on this machine.

    python experiments/compute.py [--steps 4] [--batch 8]

Times full training steps (forward, backward, AdamW) on one CPU thread for the mini-lab's
``lab_v3`` ViT and for timm's ``vit_small_patch16_224`` (ViT-S/16, random weights: nothing
is downloaded), with the project's benchmark timer (``tools/bench.py``: a warm-up, then
the two take turns, median per step), prints images/s, their ratio, and the core-hours
the smallest published cases with artifacts would take at the measured ViT-S/16 rate. The budgets are the
papers' (images seen = epochs x 1.28 M ImageNet-1k images); only the rates are measured.
It also times drawing one batch of the mini's fresh scenes (``train.fresh_batch``) in the
same turns, and prints what share of a CPU training step that is and how many scenes one
core draws per second: a faster device needs about its images/s over that rate in
``--workers``. The numbers quoted in RESULTS.md come from here.
"""

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tools.bench import median_times  # noqa: E402
from vitreg_lib.lab.models import build_vit  # noqa: E402
from vitreg_lib.lab.train import PRESETS, fresh_batch  # noqa: E402

IMAGENET = 1_281_167
# smallest published models with high-norm / outlier tokens, and their training length
BUDGETS = {
    "ViT-S/16, ImageNet-1k, 300 epochs (Bondarenko et al. 2023)": 300 * IMAGENET,
    "DeiT-III-S, ImageNet-1k, 800 epochs (Bach et al. 2025)": 800 * IMAGENET,
}


def training_step(model: torch.nn.Module, x: torch.Tensor, classes: int):
    """One full training step (forward, cross-entropy, backward, AdamW) on ``x``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    y = torch.randint(0, classes, (len(x),))

    def step() -> None:
        out = model(x)
        loss = torch.nn.functional.cross_entropy(out[0] if isinstance(out, tuple) else out, y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


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
    mini_x = torch.rand(64, 3, cfg.img_size, cfg.img_size)
    vits_x = torch.rand(args.batch, 3, 224, 224)
    steps = [training_step(build_vit(cfg.arch(4)), mini_x, 4),
             training_step(timm.create_model("vit_small_patch16_224", pretrained=False), vits_x, 1000)]
    draws = iter(range(10**9))
    steps.append(lambda: fresh_batch(cfg, next(draws)))  # a new batch of 64 scenes each time
    mini_s, vits_s, draw_s = median_times(steps, args.steps)  # they take turns, after a warm-up
    mini_rate, vits_rate, draw_rate = len(mini_x) / mini_s, len(vits_x) / vits_s, cfg.batch / draw_s
    print(f"lab_v3 mini ({cfg.depth} x {cfg.dim}, {(cfg.img_size // cfg.patch) ** 2} patches): "
          f"{mini_rate:.1f} images/s on one thread")
    print(f"drawing its fresh scenes: {draw_rate:.0f} scenes/s on one thread, "
          f"{draw_s / (draw_s + mini_s):.0%} of a training step that draws its own batch")
    print(f"ViT-S/16 (196 patches, 22 M parameters): {vits_rate:.2f} images/s on one thread, "
          f"{mini_rate / vits_rate:.0f}x slower per image")
    for name, images in BUDGETS.items():
        hours = images / vits_rate / 3600
        print(f"{name}: {images / 1e6:.0f} M images = {hours:,.0f} core-hours "
              f"({hours / 24 / 2:,.0f} days on this machine's 2 cores)")


if __name__ == "__main__":
    main()
