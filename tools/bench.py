"""Costs measured as ratios (median of several runs, taken in turns).

    python tools/bench.py [--runs 7] [--batch 8] [--device cuda]

1. Extraction overhead: a randomly initialised ViT-S/16 at 224 px (the shape of the
   pretrained tier's small models; weights do not change the cost) and the bundled
   mini_reg0. The bare forward is ``model.forward_features(x)``;
   vitreg_lib.features.extract keeps every block's output and the final normed output,
   without and with attention maps. Target: at most 1.05x without attention maps.
2. Test-time registers (vitreg_lib.registers) on a randomly initialised DINOv2 ViT-S/14
   at 224 px with 10 register neurons in blocks 0-7: the fixed forward against the plain
   forward on the same batch (target: at most 1.1x), and the fix applied to the whole
   batch at once against one image at a time, in images/s.
"""

import argparse
import statistics
import time

import timm
import torch

from vitreg_lib.features import extract
from vitreg_lib.models import LoadedModel, ModelSpec, load_model
from vitreg_lib.registers import add_test_time_registers


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


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def test_time_registers(args) -> None:
    """The test-time-register fix: its cost on a batch, and batched against per image."""
    torch.manual_seed(0)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224,
                              dynamic_img_size=True).eval().to(args.device)
    lm = LoadedModel(ModelSpec("dinov2_s (random)", "pretrained", "", "bench", 0), model,
                     (0.5,) * 3, (0.5,) * 3, 224)
    neurons = [(layer, unit) for layer in range(8) for unit in (3, 97)][:10]
    x = torch.randn(args.batch, 3, 224, 224, device=args.device)

    def forward(inputs):
        def run():
            with torch.inference_mode():
                for xb in inputs:
                    model(xb)
            sync(args.device)
        return run

    plain = forward([x])
    handle = add_test_time_registers(lm, neurons)
    batched, single = forward([x]), forward(list(torch.split(x, 1)))
    t_fixed, t_single = median_times([batched, single], args.runs)
    handle.remove()
    t_plain = median_times([plain], args.runs)[0]
    handle = add_test_time_registers(lm, neurons)
    t_fixed2, t_plain2 = median_times([batched, plain], args.runs)  # taken in turns as well
    handle.remove()
    print(f"test-time registers, DINOv2 ViT-S/14 (random), 224 px, {len(neurons)} neurons, "
          f"batch {args.batch}, {args.device}:")
    print(f"  fixed forward / plain forward, same batch: {t_fixed2 / t_plain2:.3f}x "
          f"(plain {1000 * t_plain:.1f} ms)")
    print(f"  batched {args.batch / t_fixed:.1f} images/s | one image at a time "
          f"{args.batch / t_single:.1f} images/s | batched / one at a time: {t_single / t_fixed:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
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
    test_time_registers(args)


if __name__ == "__main__":
    main()
