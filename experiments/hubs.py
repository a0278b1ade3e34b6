"""Where a run's attention hubs sit, read from its checkpoint.

    python experiments/hubs.py RUN [--scenes 96] [--seed 4242]

For each block: the head whose most-attended patch takes the largest share of the
attention (averaged over images), that share, how often the hub is a background patch,
the hub's norm rank among the patch tokens (0 = highest norm), the patch it sits on most
often and, where the model has them, the share the prefix tokens ([CLS], registers) take
of that head's attention and the largest share they take of any head's, separately for
empty scenes and scenes with objects. The numbers quoted in RESULTS.md come from here.
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
from vitreg_lib.train import attention_hub, to_tensor  # noqa: E402


def main() -> None:
    cfg, lm, scenes, _ = read_run(__doc__, scenes=96)
    counts = np.array([len(b) for b in scenes.boxes])
    feats = extract(lm, to_tensor(scenes.images), layers="all", received=True, progress=False)
    fg = scenes.patch_foreground(cfg.patch).reshape(len(counts), -1)
    for layer in range(cfg.depth):
        everything = feats.attention_received(layer)  # [B, heads, tokens]
        received = everything[..., -fg.shape[1]:]  # the patches
        prefix = everything[..., :-fg.shape[1]].sum(-1)  # [CLS] and registers together
        norms = token_norms(feats.patches(layer)).numpy()
        parts = []
        for name, sel in (("empty", counts == 0), ("with objects", counts > 0)):
            idx = np.where(sel)[0]
            if not len(idx):
                continue
            head, top, hub = attention_hub(received[idx])
            top, hub = top[:, head], hub[:, head]
            on_bg = np.mean([fg[i, h] == 0 for i, h in zip(idx, hub.tolist())])
            rank = np.mean([(norms[i] > norms[i, h]).sum() for i, h in zip(idx, hub.tolist())])
            where, times = np.unique(hub.numpy(), return_counts=True)
            cols = int(round(fg.shape[1] ** 0.5))
            row, col = divmod(int(where[times.argmax()]), cols)
            parts.append(f"{name} (n={len(idx)}): head {head}, hub takes {float(top.mean()):.2f}, "
                         f"on background {on_bg:.2f}, norm rank {rank:.0f}/{fg.shape[1]}, most often "
                         f"patch (row {row}, col {col}) in {times.max()}/{len(idx)}"
                         + (f"; prefix tokens take {float(prefix[idx, head].mean()):.2f} of it, and "
                            f"{float(prefix[idx].mean(0).max()):.2f} of head "
                            f"{int(prefix[idx].mean(0).argmax())}'s"
                            if everything.shape[-1] > fg.shape[1] else ""))
        print(f"block {layer}: " + " | ".join(parts))


if __name__ == "__main__":
    main()
