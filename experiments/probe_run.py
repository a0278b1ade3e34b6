"""What the run-reading scripts of experiments/ (hubs.py, norm_split.py) share: the
command line (RUN, --scenes, --seed), the run's checkpoint, and fresh scenes of its own
recipe, announced in one header line."""

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vitreg_lib.data import make_scenes  # noqa: E402
from vitreg_lib.lab.train import load_checkpoint  # noqa: E402


def read_run(doc: str, scenes: int, options: dict[str, dict] | None = None):
    """Parse the command line, load RUN's checkpoint and draw its probe scenes.
    ``options``: a script's own flags, name -> ``argparse`` keywords. Returns (config,
    loaded model, scenes, parsed arguments, with the checkpoint's ``step`` added)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--scenes", type=int, default=scenes)
    ap.add_argument("--seed", type=int, default=4242)
    for flag, kw in (options or {}).items():
        ap.add_argument(flag, **kw)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg, lm, step = load_checkpoint(ROOT / "experiments" / "runs" / args.run)
    args.step = step  # the checkpoint's step, for the scripts' captions
    probe = make_scenes(args.scenes, seed=args.seed, **cfg.scene())
    print(f"{args.run}: step {step} ({step * cfg.batch / 1e6:.3f} M images), "
          f"{args.scenes} scenes of seed {args.seed}")
    return cfg, lm, probe, args
