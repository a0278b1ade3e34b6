"""How a run's patch-token norms split between background and object patches, per block.

    python experiments/norm_split.py RUN [--scenes 128] [--seed 4242] [--maps K]

Read from the run's checkpoint on fresh scenes of its own recipe. For each block, at
both sites of the training log (the residual stream after the attention and after the
MLP): the median norm of background and of object patches and their ratio, the share of
background patches above the object patches' 90th percentile, the 99th percentile and
the maximum over the median of all patches. Where the recipe's ``border`` makes a frame
of whole patches that is always background (``lab_v3``: one patch wide), it also prints
the frame's median norm over the inner background's and the share of the top-1 % norm
patches on the frame beside the frame's share of all patches: a fixed-position anchor
(the search's mechanism (c)) would show as the frame holding the top norms. With
``--maps K`` it also draws the first K scenes beside each block's norm map (after the
MLP, over the median of all probe patches) into ``figures/RUN_norm_maps.png``, to see
which patches carry the high norms. A high-norm *mode* would show as a small share of
background patches far above every object patch; a ratio near 1 with a share of 10-20 %
is a tail, not a mode. The numbers quoted in RESULTS.md come from here.
"""

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))  # probe_run, also when imported from the tests

from probe_run import read_run  # noqa: E402

from vitreg_lib.features import extract  # noqa: E402
from vitreg_lib.outliers import token_norms  # noqa: E402
from vitreg_lib.train import to_tensor  # noqa: E402


def split(norms: np.ndarray, on_object: np.ndarray) -> dict:
    """The background / object split of one block's patch norms (``[B, patches]`` each)."""
    bg, obj = norms[~on_object], norms[on_object]
    return dict(median_background=float(np.median(bg)), median_object=float(np.median(obj)),
                ratio=float(np.median(bg) / np.median(obj)),
                background_above_object_p90=float(np.mean(bg > np.quantile(obj, 0.9))),
                p99_over_median=float(np.quantile(norms, 0.99) / np.median(norms)),
                max_over_median=float(norms.max() / np.median(norms)))


def frame_mask(rows: int, width: int) -> np.ndarray:
    """``[rows * rows]`` bool, row-major like the patch tokens: the outer ``width`` rings."""
    idx = np.arange(rows)
    edge = (idx < width) | (idx >= rows - width)
    return (edge[:, None] | edge[None, :]).reshape(-1)


def frame_split(norms: np.ndarray, frame: np.ndarray, on_object: np.ndarray) -> dict:
    """How one block's patch norms (``[B, patches]``) sit on the frame (``[patches]`` bool)
    against the background inside it, and where the top 1 % of all patches lie."""
    on_frame = np.broadcast_to(frame, norms.shape)
    inner = ~on_frame & ~on_object
    top = norms >= np.quantile(norms, 0.99)
    return dict(ratio=float(np.median(norms[on_frame]) / np.median(norms[inner])),
                top1_on_frame=float(on_frame[top].mean()), frame_share=float(frame.mean()))


def main() -> None:
    cfg, lm, scenes, args = read_run(__doc__, scenes=128, options={
        "--maps": dict(type=int, default=0, help="draw the norm maps of this many scenes")})
    feats = extract(lm, to_tensor(scenes.images), layers="all", mid=True, progress=False)
    on_object = scenes.patch_foreground(cfg.patch).reshape(len(scenes.images), -1) > 0
    rows = cfg.img_size // cfg.patch
    frame = frame_mask(rows, cfg.border // cfg.patch) if cfg.border >= cfg.patch else None
    after_mlp = []  # per block, [B, patches]: the sites the maps draw
    for layer in range(cfg.depth):
        after_mlp.append(token_norms(feats.patches(layer)).numpy())
        sites = (("attn", token_norms(feats.layout.split(feats.after_attention(layer))["patches"]).numpy()),
                 ("mlp", after_mlp[-1]))
        for site, norms in sites:
            s = split(norms, on_object)
            print(f"block {layer} {site:4s}: median norm background {s['median_background']:.0f}, "
                  f"objects {s['median_object']:.0f} (ratio {s['ratio']:.2f}); background above "
                  f"the objects' 90th percentile {100 * s['background_above_object_p90']:.0f} %; "
                  f"99th percentile / median {s['p99_over_median']:.2f}, max / median "
                  f"{s['max_over_median']:.2f}")
            if frame is not None:
                f = frame_split(norms, frame, on_object)
                print(f"    frame: median norm {f['ratio']:.2f} x the inner background's; "
                      f"top 1 % on the frame {100 * f['top1_on_frame']:.0f} % "
                      f"(frame {100 * f['frame_share']:.0f} % of patches)")
    if args.maps:
        draw_maps(after_mlp, scenes, cfg, args)


def draw_maps(after_mlp: list[np.ndarray], scenes, cfg, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from vitreg_lib.plotting import map_grid

    k, rows = min(args.maps, len(scenes.images)), cfg.img_size // cfg.patch
    maps = {f"block {layer}": (norms / np.median(norms))[:k].reshape(k, rows, rows)
            for layer, norms in enumerate(after_mlp)}
    run = Path(args.run).name
    fig = map_grid(scenes.pil(range(k)), maps, colorbar_label="norm / median",
                   caption=f"{run} at {args.step * cfg.batch / 1e6:.2f} M images: "
                           f"patch-token norm after each block's MLP over the median of all "
                           f"{len(scenes.images)} probe scenes' patches (seed {args.seed}); "
                           "each block its own scale")
    out = ROOT / "experiments" / "figures" / f"{run}_norm_maps.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=60)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
