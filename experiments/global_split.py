"""Which single tokens of a run know the image's label: the "lazy aggregation" test.

    python experiments/global_split.py RUN [--scenes 2000] [--seed 4242] [--block -1]

Read from the run's checkpoint on fresh scenes of its own recipe. In one block (the
residual stream after the MLP; default the last), each image gives one token of each
kind: its highest-norm background patch, a random background patch, a random object
patch, and [CLS] and each register where the model has them. A logistic regression from
that one token to the image's label (the run's task) is fitted on 70 % of the images and
tested on the rest, with the global probe of chapter 4 (`vitreg_lib.probes.global_probe`:
split by image, 95 % bootstrap interval).

Why: Shi et al. (CVPR 2026) describe supervised ViTs keeping global semantics on
background patches ("lazy aggregation"), and the paper's outliers hold global
information (F5). If the background patches whose norms drift up in a run's last block
are such aggregators, the highest-norm background patch predicts the label better than a
random background or object patch, towards [CLS]. The numbers quoted in RESULTS.md come
from here.
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
from vitreg_lib.probes import global_probe, special_token_sets, to_frame  # noqa: E402
from vitreg_lib.train import to_tensor  # noqa: E402


def pick(patches: np.ndarray, norms: np.ndarray, on_object: np.ndarray,
         seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """One patch token per image of each kind: name -> (tokens ``[k, D]``, image indices
    ``[k]``). ``patches`` is ``[B, N, D]``, ``norms`` and ``on_object`` ``[B, N]``. An
    image without a patch of a kind (no object, or no background) is left out of it."""
    rng = np.random.default_rng(seed)
    rows = {"top-norm background patch": [], "random background patch": [], "random object patch": []}
    idx = {k: [] for k in rows}
    for i in range(len(patches)):
        bg, obj = np.flatnonzero(~on_object[i]), np.flatnonzero(on_object[i])
        if len(bg):
            rows["top-norm background patch"].append(patches[i, bg[np.argmax(norms[i, bg])]])
            rows["random background patch"].append(patches[i, rng.choice(bg)])
            idx["top-norm background patch"].append(i)
            idx["random background patch"].append(i)
        if len(obj):
            rows["random object patch"].append(patches[i, rng.choice(obj)])
            idx["random object patch"].append(i)
    d = patches.shape[-1]
    return {k: (np.array(v, dtype=np.float32).reshape(len(v), d), np.array(idx[k], dtype=int))
            for k, v in rows.items()}


def main() -> None:
    cfg, lm, scenes, args = read_run(__doc__, scenes=2000, options={
        "--block": dict(type=int, default=-1, help="the block to read (default: the last)")})
    block = args.block % cfg.depth
    feats = extract(lm, to_tensor(scenes.images), layers=[block], progress=False)
    patches = feats.patches(block).numpy().reshape(len(scenes.images), -1, cfg.dim)
    norms = token_norms(feats.patches(block)).numpy().reshape(len(scenes.images), -1)
    on_object = scenes.patch_foreground(cfg.patch).reshape(len(scenes.images), -1) > 0
    sets = pick(patches, norms, on_object)
    sets.update(special_token_sets(feats, block))
    labels = scenes.label(cfg.task)
    frame = to_frame(global_probe(sets, labels, len(labels)))
    print(f"block {block}, task {cfg.task!r} ({frame['note'].iloc[0].split(';')[0]})")
    for r in frame.itertuples():
        print(f"  {r.group:28s} {r.value:5.1f} % [{r.low:.1f}, {r.high:.1f}] on {r.images} test images")


if __name__ == "__main__":
    main()
