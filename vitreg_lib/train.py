"""The mini-lab: train small timm ViTs on the procedural scenes, log norm statistics.

Command line (``--preset`` names one of :data:`PRESETS`; any field can be overridden)::

    python -m vitreg_lib.train --preset mini_reg0 --out runs/mini_reg0
    python -m vitreg_lib.train --preset mini_reg4 --steps 50 --out /tmp/try
    python -m vitreg_lib.train --resume --out runs/long        # continue a stopped run
    python -m vitreg_lib.train --resume --out runs/long --steps 40000   # and extend it

A run folder holds ``model.safetensors`` (final weights of the ViT), ``heads.safetensors``
(extra training heads, e.g. pixel reconstruction, when the objective has one),
``config.json`` (the architecture for :func:`vitreg_lib.models.build_vit`, the training
config, final validation metrics, wall time, hardware, the command), ``log.json``
(per-layer norm statistics on a fixed probe batch at ``log_points`` moments of
training, plus loss and validation metrics), ``snapshots/step_XXXXXX.safetensors`` for
the fractions of training listed in ``snapshots``, and ``checkpoint.pt``.

**Resuming.** Every ``checkpoint_every`` seconds (and when the run ends, reaches
``--until`` or receives SIGTERM / SIGINT, e.g. ``kill PID`` or Ctrl-C) the run writes
``checkpoint.pt``: model, heads, optimiser, step, the data sampler's and PyTorch's
random state, the log so far and the running loss. It is
written to a temporary file and renamed, so a run killed while writing keeps the
previous one. ``--resume`` continues from it and gives the same weights and the same
log (timing fields aside) as a run that was never stopped. A resumed run may change
``steps`` only with a constant schedule (a cosine schedule depends on it), and
``threads``, ``device``, ``checkpoint_every`` and ``until`` freely; anything else is
refused.

**Data.** ``fresh=False`` (the bundled minis) samples batches from a fixed training set
of ``n_train`` scenes; ``fresh=True`` draws new scenes every step, seeded by
``(seed, step)``, so no image is seen twice and nothing but the step is needed to
resume. Scene options (``border``, ``texture``, ``clutter``, ``regions``,
``object_clutter``, ``min_objects``, ``trigger``, object sizes, image size) are
:func:`vitreg_lib.data.make_scenes`'s.

**Objectives** (``objective``):

* ``label`` — the image label through the model's own head ([CLS] token, or the mean
  of the patches without [CLS]);
* ``dense_label`` — *every patch* predicts the image label (the model's head applied to
  each normed patch token; the image prediction is the mean of the patch logits, which
  is what ``model(x)`` returns, since the model pools before a linear head);
* ``dense_recon`` — every patch reconstructs its own pixels (a linear head, saved in
  ``heads.safetensors``), mean squared error in normalised pixel units;
* ``dense_both`` — the two dense losses added, the reconstruction weighted by
  ``recon_weight``;
* ``dense_objects`` — as ``dense_both``, but only the patches that hold object pixels
  predict the image label; background patches only reconstruct themselves, so the
  heads that gather the label must do nothing for nine patches in ten (the no-op
  setting of Kempner's toy, Fesser et al. 2026). Its ``patch_acc`` counts object patches;
* ``masked`` — DINOv2's split of the work: the image label through [CLS], and, in a share
  ``mask_images`` of the images, a random ``mask_min..mask_max`` of the patches replaced by
  a learned mask token, each of those reconstructing its own pixels (iBOT scores only the
  masked patches, so the visible ones carry no loss of their own and are free to be
  recycled). At validation and in the saved model nothing is masked.

**The log** (:func:`norm_stats`) measures the residual stream *before any LayerNorm*,
at two places in each block: after the attention (keys ``attn_*``) and after the MLP
(the block output, the keys without prefix, as in the bundled logs). For each: median,
p99, max, max/median, kurtosis, the share of patches above a histogram gap (and the
share of those on background), the mean + 3·std share, and the share of the top-1 %
norm patches that lie on background, beside ``background_share``, the share of
background among all patches (a random placement already puts that share there).
``sink_attention`` is, over the block's heads, the largest mean (over images) of the
attention the most-attended token receives from all queries; ``sink_on_prefix`` /
``sink_on_background`` say where that token sits in that head.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import make_scenes, scene_kwargs, task_classes
from .features import extract
from .models import LoadedModel, ModelSpec, build_vit
from .outliers import HistogramGap, MeanStd, detect, token_norms

MEAN = STD = (0.5, 0.5, 0.5)
OBJECTIVES = ("label", "dense_label", "dense_recon", "dense_both", "dense_objects", "masked")
#: the objectives with a pixel-reconstruction head
RECON_OBJECTIVES = ("dense_recon", "dense_both", "dense_objects", "masked")
SCHEDULES = ("cosine", "constant")
#: fields a resumed run may change (``steps`` only under a constant schedule)
RESUMABLE_CHANGES = ("steps", "threads", "device", "checkpoint_every", "workers")


@dataclass
class TrainConfig:
    registers: int = 0
    depth: int = 6
    dim: int = 128
    heads: int = 4
    patch: int = 4
    img_size: int = 32
    cls_token: bool = True
    layerscale: float = 0.0  # LayerScale init (DINOv2: 1e-5); 0 = none
    attention: str = "softmax"  # or "gated" / "bias" (models.ATTENTION_VARIANTS)
    task: str = "count_shape"
    max_objects: int = 3
    min_objects: int = 1  # 0: some scenes are empty (task count0)
    min_object: float = 0.15  # object side as a share of the image: smaller = more background
    max_object: float = 0.35
    separate_objects: bool = False  # boxes never touch, so counts are unambiguous
    border: int = 0  # pixels along the edge that no object enters
    texture: float = 0.0  # amplitude of a background grating
    gradient: float = 0.15  # amplitude of the background's linear ramp (0 + noise 0: flat)
    clutter: float = 0.0  # amplitude of a random multi-scale background field
    regions: int = 0  # up to this many flat background regions of different colours (0: one)
    object_clutter: float = 0.0  # amplitude of a random field inside each object (0: flat objects)
    trigger: float = 0.0  # probability of the rare trigger shape in a scene
    noise: float = 0.02
    fresh: bool = False  # new scenes every step instead of a fixed training set
    n_train: int = 20000  # the fixed training set (fresh=False)
    n_val: int = 500
    objective: str = "label"
    recon_weight: float = 1.0
    mask_images: float = 0.5  # objective "masked": the share of images whose patches are masked
    mask_min: float = 0.1  # ... and the share of their patches masked, drawn in [mask_min, mask_max]
    mask_max: float = 0.5
    steps: int = 600
    batch: int = 64
    lr: float = 1e-3
    schedule: str = "cosine"  # after linear warmup: cosine to 0, or constant
    weight_decay: float = 0.05
    no_decay_1d: bool = False  # True: no weight decay on biases, norms, LayerScale, tokens, pos_embed
    beta2: float = 0.999
    eps: float = 1e-8
    warmup: int = 100
    flip: bool = True  # random horizontal flips
    seed: int = 0
    threads: int = 1
    workers: int = 0  # fresh=True: processes drawing the scenes ahead of the loop (0: in the loop)
    device: str = "cpu"
    log_points: int = 25
    probe_images: int = 128
    snapshots: list[float] = field(default_factory=list)
    checkpoint_every: float = 600.0  # seconds between checkpoints

    @property
    def dense(self) -> bool:
        """Every patch is read by a head (the model pools its patches for the label)."""
        return self.objective not in ("label", "masked")

    def arch(self, num_classes: int) -> dict:
        arch = dict(img_size=self.img_size, patch_size=self.patch, embed_dim=self.dim,
                    depth=self.depth, num_heads=self.heads, num_classes=num_classes,
                    reg_tokens=self.registers, class_token=self.cls_token,
                    global_pool="token" if self.cls_token and not self.dense else "avg")
        if self.dense:  # the final norm acts on every token; the head reads each patch
            arch["fc_norm"] = False
        if self.layerscale:
            arch["init_values"] = self.layerscale
        if self.attention != "softmax":
            arch["attention"] = self.attention
        return arch

    def scene(self) -> dict:
        """Keyword arguments of :func:`vitreg_lib.data.make_scenes` for this run."""
        out = dict(size=self.img_size, max_objects=self.max_objects, min_object=self.min_object,
                   max_object=self.max_object, separate=self.separate_objects)
        # options left at their defaults are left out, so old configs read the same
        for key, default in (("border", 0), ("texture", 0.0), ("trigger", 0.0), ("noise", 0.02),
                             ("min_objects", 1), ("clutter", 0.0), ("regions", 0),
                             ("object_clutter", 0.0), ("gradient", 0.15)):
            if getattr(self, key) != default:
                out[key] = getattr(self, key)
        return out

    def check(self) -> None:
        from .data import Scenes

        if self.task not in Scenes.TASKS:
            raise ValueError(f"Unknown task {self.task!r}; choose one of {Scenes.TASKS}.")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"Unknown objective {self.objective!r}; choose one of {OBJECTIVES}.")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {self.schedule!r}; choose one of {SCHEDULES}.")
        if self.img_size % self.patch:
            raise ValueError(f"img_size={self.img_size} is not a multiple of patch={self.patch}.")
        if self.workers < 0 or (self.workers and not self.fresh):
            raise ValueError(f"workers={self.workers}: workers draw fresh scenes ahead of the "
                             "training loop, so they need fresh=True and a count >= 0.")


#: the recipe behind the bundled mini models: the best-learning one of the mini-lab's
#: search so far (experiments/RESULTS.md, r2_sep_count). No recipe has made outliers yet.
MINI_RECIPE = dict(steps=1500, separate_objects=True, task="count", max_objects=4)
#: mini-lab v2 (issue 9): 64-px scenes with 4-px patches (256 patches), 6 x 64 ViT, fresh
#: scenes every step, objects kept off a 4-px background frame, constant learning rate
LAB_V2 = dict(img_size=64, dim=64, depth=6, heads=4, patch=4, max_objects=4, separate_objects=True,
              min_object=0.1, max_object=0.25, border=4, fresh=True, schedule="constant",
              task="count", steps=20000, lr=2e-3, weight_decay=0.1, warmup=500, log_points=41,
              probe_images=64, n_val=256)
#: mini-lab v3: the v2 recipe at 32 px (8 x 8 = 64 patches, a 1-patch background frame),
#: 4-5x faster per image than v2's 256 patches, so a run of 1 M images takes ~1 core-hour;
#: no weight decay on biases, norms, tokens and the position embedding
LAB_V3 = dict(LAB_V2, img_size=32, min_object=0.12, max_object=0.3, steps=16000, probe_images=128,
              weight_decay=0.05, no_decay_1d=True)
PRESETS: dict[str, TrainConfig] = {
    "mini_v1": TrainConfig(),  # the foundation's first recipe, the mini-lab's starting point
    # the register family of chapter 5: one recipe, 0, 1, 2, 4 or 8 registers
    **{f"mini_reg{n}": TrainConfig(registers=n, **MINI_RECIPE) for n in (0, 1, 2, 4, 8)},
    "lab_v2": TrainConfig(**LAB_V2),
    "lab_v3": TrainConfig(**LAB_V3),
    "tiny_test": TrainConfig(depth=2, dim=32, heads=2, n_train=64, n_val=32, steps=4,
                             batch=16, warmup=1, log_points=2, probe_images=8,
                             img_size=16, snapshots=[0.5]),
    "tiny_v2": TrainConfig(depth=2, dim=32, heads=2, n_val=32, steps=6, batch=8, warmup=2,
                           log_points=3, probe_images=8, img_size=16, cls_token=False,
                           fresh=True, objective="dense_both", schedule="constant", border=2,
                           max_object=0.4, trigger=0.3, task="count_trigger", max_objects=2,
                           checkpoint_every=0.0),
}


def param_groups(model: torch.nn.Module, recon: torch.nn.Module | None, cfg: TrainConfig) -> list[dict]:
    """AdamW parameter groups. With ``no_decay_1d`` the usual ViT recipe (timm, DeiT,
    DINOv2): no weight decay on biases, norm gains, LayerScale, the [CLS] / register
    tokens and the position embedding; otherwise one group, every parameter decayed
    (the bundled minis were trained so)."""
    named = list(model.named_parameters()) + (
        [(f"recon.{n}", p) for n, p in recon.named_parameters()] if recon is not None else [])
    if not cfg.no_decay_1d:
        return [{"params": [p for _, p in named]}]
    skip = ("cls_token", "reg_token", "pos_embed")
    no = [p for n, p in named if p.ndim <= 1 or n.split(".")[-1] in skip]
    yes = [p for n, p in named if not (p.ndim <= 1 or n.split(".")[-1] in skip)]
    return [{"params": yes}, {"params": no, "weight_decay": 0.0}]


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    if cfg.schedule == "constant":
        return cfg.lr
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images ``[N, H, W, 3]`` as the trainer feeds them to a model: ``[N, 3, H, W]``
    floats normalised with :data:`MEAN` and :data:`STD`."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


def patchify(x: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, 3, H, W]`` -> ``[B, N, patch*patch*3]``, patches in row-major grid order
    (the order of the ViT's patch tokens), each patch's pixels row-major, channels last."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"Image {h}x{w} is not a multiple of the patch {patch}.")
    x = x.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def _step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s fresh scenes: independent of every other step's and
    of the validation (10,000 + seed) and task-accuracy (20,000) seeds' streams."""
    return int(np.random.SeedSequence([seed, step, 0x5CE7E5]).generate_state(1, np.uint64)[0])


def fresh_batch(cfg: TrainConfig, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The fresh scenes of training step ``step`` (``fresh=True``): uint8 images
    ``[B, H, W, 3]``, labels ``[B]`` and which patches hold object pixels ``[B, rows, cols]``.
    A function of the config and the step alone, so a worker process draws the same batch
    as the training loop would."""
    batch = make_scenes(cfg.batch, seed=_step_seed(cfg.seed, step), **cfg.scene())
    return batch.images, batch.label(cfg.task), batch.patch_foreground(cfg.patch) > 0


def _ignore_ctrl_c() -> None:
    """The scene workers' initializer. Ctrl-C reaches the whole process group, and a worker
    it killed mid-batch would leave the training loop waiting for that batch forever; the
    loop itself turns Ctrl-C into a checkpoint. A worker hit while it is still starting
    (before this runs) dies holding no batch, and the pool starts another."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def fresh_batches(cfg: TrainConfig, start: int):
    """Yield :func:`fresh_batch` for the steps ``start .. steps - 1`` in order. With
    ``cfg.workers`` processes the scenes are drawn ahead of the loop, at most four batches
    per worker in flight, so a fast device is not held up by one core drawing scenes
    (about 2,100 32-px scenes/s per core: ``experiments/compute.py``); the batches are the
    same either way. The workers ignore Ctrl-C, which the training loop turns into a
    checkpoint; closing the generator (or the run stopping) stops them."""
    if not cfg.workers:
        for step in range(start, cfg.steps):
            yield fresh_batch(cfg, step)
        return
    from collections import deque
    from multiprocessing import get_context

    with get_context("spawn").Pool(cfg.workers, initializer=_ignore_ctrl_c) as pool:
        todo, pending = iter(range(start, cfg.steps)), deque()
        for step in todo:
            pending.append(pool.apply_async(fresh_batch, (cfg, step)))
            if len(pending) >= 4 * cfg.workers:
                break
        while pending:
            batch = pending.popleft().get()
            step = next(todo, None)
            if step is not None:
                pending.append(pool.apply_async(fresh_batch, (cfg, step)))
            yield batch


def _kurtosis(x: np.ndarray) -> float:
    """Excess kurtosis (0 for a normal distribution; large for a heavy tail)."""
    d = x - x.mean()
    var = float((d ** 2).mean())
    return float((d ** 4).mean() / var ** 2 - 3) if var > 0 else 0.0


def _site_stats(n: np.ndarray, background: np.ndarray | None, prefix: str = "") -> dict:
    """Norm statistics of one site (patch norms ``n``, flat) for the log."""
    gap, ms = detect(n, HistogramGap()), detect(n, MeanStd(3))
    med = float(np.median(n))
    row = {"median": med, "p99": float(np.percentile(n, 99)), "max": float(n.max()),
           "max_over_median": float(n.max() / med) if med > 0 else float("inf"),
           "kurtosis": _kurtosis(n), "gap_fraction": gap.fraction,
           "gap_threshold": gap.threshold if gap.found else None, "meanstd_fraction": ms.fraction}
    if background is not None:
        top = n >= np.percentile(n, 99)
        row["top1_background"] = float(background[top].mean())
        row["gap_background"] = float(background[gap.mask].mean()) if gap.found else None
    return {prefix + k: v for k, v in row.items()}


def as_loaded(model: torch.nn.Module, name: str, img_size: int) -> LoadedModel:
    """A model of the trainer wrapped for :func:`vitreg_lib.features.extract` (with the
    trainer's input normalisation)."""
    spec = ModelSpec(name, "mini", "", "mini", registers=int(model.num_reg_tokens or 0),
                     cls_token=model.cls_token is not None, img_size=img_size)
    return LoadedModel(spec, model, MEAN, STD, img_size)


def load_checkpoint(folder: str | Path) -> tuple[TrainConfig, LoadedModel, int]:
    """The model of an unfinished run, from ``folder/checkpoint.pt``: ``(config, model,
    step)``, the model in eval mode, ready for :func:`vitreg_lib.features.extract`."""
    path = Path(folder) / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}: a run writes one every "
                                f"checkpoint_every seconds and when it is stopped.")
    ck = torch.load(path, weights_only=True, map_location="cpu")
    cfg = TrainConfig(**ck["config"])
    model = build_vit(cfg.arch(ck["model"]["head.weight"].shape[0]))
    model.load_state_dict(ck["model"])
    model.eval()
    return cfg, as_loaded(model, Path(folder).name, cfg.img_size), int(ck["step"])


def attention_hub(received: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """The attention hub of a block, from ``received`` ``[B, heads, tokens]`` (the share of
    each head's attention that each token receives): per image and head the most-attended
    token's share and index (``[B, heads]`` each), and the head whose most-attended token
    takes the largest share on average over the images."""
    top_val, top_idx = received.max(dim=-1)
    return int(top_val.mean(0).argmax()), top_val, top_idx


def norm_stats(model: torch.nn.Module, probe: torch.Tensor, name: str,
               background: np.ndarray | None = None) -> list[dict]:
    """Per-layer norm statistics on ``probe`` (the training log; see the module's
    docstring). ``background``: ``[B, num_patches]`` bool, True where a patch holds no
    object pixel; without it the background shares are left out."""
    lm = as_loaded(model, name, probe.shape[-1])
    feats = extract(lm, probe, layers="all", mid=True, received=True, progress=False)
    lay = feats.layout
    bg = None if background is None else np.asarray(background, bool).ravel()
    out = []
    for layer in feats.layers:
        n = token_norms(feats.patches(layer)).numpy().ravel()
        row = dict(layer=layer, **_site_stats(n, bg))
        mid = lay.split(feats.after_attention(layer))["patches"]
        row.update(_site_stats(token_norms(mid).numpy().ravel(), bg, prefix="attn_"))
        if bg is not None:
            row["background_share"] = float(bg.mean())
        recv = feats.attention_received(layer)  # [B, heads, N]
        head, top_val, top_idx = attention_hub(recv)
        row["sink_attention"] = float(top_val.mean(0)[head])
        idx = top_idx[:, head].numpy()
        row["sink_on_prefix"] = float((idx < lay.num_prefix).mean())
        if bg is not None:
            is_patch = (idx >= lay.num_prefix) & (idx < lay.num_prefix + lay.num_patches)
            per_image = bg.reshape(len(idx), -1)
            on_bg = [is_patch[i] and per_image[i, idx[i] - lay.num_prefix] for i in range(len(idx))]
            row["sink_on_background"] = float(np.mean(on_bg))
        if lay.num_prefix:  # the head that gives the prefix tokens the largest share
            row["prefix_attention"] = float(recv[..., :lay.num_prefix].sum(-1).mean(0).max())
        if lay.num_registers:
            row["register_norm_mean"] = float(token_norms(feats.registers(layer)).mean())
            row["register_attention"] = float(recv[..., lay.register_slice].sum(-1).mean(0).max())
        if lay.num_cls:
            row["cls_norm_mean"] = float(token_norms(feats.cls(layer)).mean())
        out.append(row)
    return out


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    device = next(model.parameters()).device
    pred = torch.cat([model(xb.to(device)).argmax(-1).cpu() for xb in torch.split(x, 256)])
    return float((pred == y).float().mean())


@torch.no_grad()
def dense_metrics(model: torch.nn.Module, recon: torch.nn.Module | None, x: torch.Tensor,
                  y: torch.Tensor, patch: int, labelled: torch.Tensor | None = None) -> dict:
    """Validation metrics of a dense objective: the share of patches that predict the
    image label (of the ``labelled`` ``[B, N]`` patches only, when given), and the pixel
    reconstruction error (normalised units, every patch)."""
    model.eval()
    device = next(model.parameters()).device
    correct = err = 0.0
    n_patches = (x.shape[-1] // patch) ** 2
    labelled = torch.ones(x.shape[0], n_patches, dtype=torch.bool) if labelled is None else labelled
    for xb, yb, lb in zip(torch.split(x, 128), torch.split(y, 128), torch.split(labelled, 128)):
        tokens = model.forward_features(xb.to(device))[:, model.num_prefix_tokens:]
        right = model.head(tokens).argmax(-1).cpu() == yb[:, None]
        correct += float(right[lb].float().sum())
        if recon is not None:
            err += float(((recon(tokens) - patchify(xb.to(device), patch)) ** 2).mean(-1).sum())
    n = x.shape[0] * n_patches
    out = {"patch_acc": correct / max(1, int(labelled.sum()))}
    if recon is not None:
        out["recon_mse"] = err / n
    return out


def task_accuracy(lm: LoadedModel, n: int = 500, seed: int = 20_000) -> float:
    """Accuracy (%) of a mini model's own head on ``n`` fresh scenes drawn like its
    training data (its ``config.json``), from a seed its training and validation never used."""
    data = lm.info.get("data")
    if not data or data.get("dataset") != "scenes":
        raise ValueError(f"{lm.name} has no scenes training config: task accuracy is measured "
                         "for mini models only.")
    scenes = make_scenes(n, seed=seed, **scene_kwargs(data))
    x, y = to_tensor(scenes.images), torch.from_numpy(scenes.label(data["task"]))
    return 100 * accuracy(lm.model, x, y)


def _hardware(cfg: TrainConfig) -> str:
    where = (torch.cuda.get_device_name(torch.device(cfg.device)) if cfg.device.startswith("cuda")
             else f"{platform.processor() or platform.machine()}, {cfg.threads} CPU thread(s)")
    return f"{where}, torch {torch.__version__}"


class _StopRequest:
    """SIGTERM / SIGINT while training: finish the step, checkpoint, stop (resumable)."""

    def __init__(self):
        import signal
        import threading

        self.requested = None
        self._old = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, _frame):
        self.requested = signum

    def restore(self) -> None:
        import signal

        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}


def _save_atomic(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _check_resume(saved: TrainConfig, cfg: TrainConfig) -> None:
    changed = [f.name for f in dataclasses.fields(TrainConfig)
               if getattr(saved, f.name) != getattr(cfg, f.name)]
    refused = [k for k in changed if k not in RESUMABLE_CHANGES]
    if refused:
        raise ValueError(f"A resumed run cannot change {refused} (saved: "
                         f"{ {k: getattr(saved, k) for k in refused} }); start a new run instead.")
    if "steps" in changed and cfg.schedule != "constant":
        raise ValueError("steps can change on resume only with schedule='constant': the cosine "
                         "schedule depends on the total number of steps.")


def train(cfg: TrainConfig, out: str | Path, command: str = "", resume: bool = False,
          until: int | None = None) -> dict:
    """Train one model as ``cfg`` says and write the run folder ``out``.

    ``resume=True`` continues from ``out/checkpoint.pt`` (``cfg`` must match the saved
    config but for :data:`RESUMABLE_CHANGES`). ``until``: stop after that step with a
    checkpoint (no final model), e.g. to train in chunks. Returns the run's config
    dict, or ``None`` when stopped by ``until``.
    """
    from safetensors.torch import save_file

    cfg.check()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.snapshots:
        (out / "snapshots").mkdir(exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    scene = cfg.scene()
    if cfg.fresh:
        train_set = x_train = y_train = None
    else:
        train_set = make_scenes(cfg.n_train, seed=cfg.seed, **scene)
        x_train, y_train = to_tensor(train_set.images), torch.from_numpy(train_set.label(cfg.task))
        fg_train = torch.from_numpy(train_set.patch_foreground(cfg.patch) > 0)
    val_set = make_scenes(cfg.n_val, seed=10_000 + cfg.seed, **scene)
    x_val, y_val = to_tensor(val_set.images), torch.from_numpy(val_set.label(cfg.task))
    fg_val = torch.from_numpy(val_set.patch_foreground(cfg.patch) > 0).flatten(1)
    probe = x_val[: cfg.probe_images]
    probe_bg = val_set.patch_foreground(cfg.patch)[: cfg.probe_images].reshape(len(probe), -1) == 0
    num_classes = task_classes(cfg.task, cfg.max_objects)
    if not cfg.fresh and cfg.task in ("count", "count_shape"):
        num_classes = train_set.num_classes(cfg.task)  # the bundled minis' rule, unchanged
    arch = cfg.arch(num_classes)
    model = build_vit(arch).to(cfg.device)
    recon = None
    if cfg.objective in RECON_OBJECTIVES:
        recon = ReconHead(cfg.dim, cfg.patch * cfg.patch * 3, cfg.objective == "masked").to(cfg.device)
    opt = torch.optim.AdamW(param_groups(model, recon, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay,
                            betas=(0.9, cfg.beta2), eps=cfg.eps)
    gen = torch.Generator().manual_seed(cfg.seed)
    log, running, start, wall_before, carried = [], [], 0, 0.0, {}
    ckpt_path = out / "checkpoint.pt"
    if resume:
        if not ckpt_path.is_file():
            raise FileNotFoundError(f"No checkpoint to resume in {out} (expected {ckpt_path.name}).")
        ck = torch.load(ckpt_path, weights_only=True, map_location="cpu")
        _check_resume(TrainConfig(**ck["config"]), cfg)
        model.load_state_dict(ck["model"])
        if recon is not None:
            recon.load_state_dict(ck["recon"])
        opt.load_state_dict(ck["optimizer"])
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        log, running, start, wall_before = ck["log"], ck["running"], ck["step"], ck["wall_s"]
        # entries at `start` are recomputed; a finished run extended to more steps was
        # checkpointed after its last entry, so that entry's training loss is carried over
        carried = {e["step"]: e["loss"] for e in log if e["step"] >= start}
        log = [e for e in log if e["step"] < start]
        print(f"resumed {out} at step {start}/{cfg.steps}", flush=True)

    def checkpoint(step: int) -> None:
        _save_atomic(dict(config=dataclasses.asdict(cfg), step=step, model=model.state_dict(),
                          recon=recon.state_dict() if recon is not None else {},
                          optimizer=opt.state_dict(), generator=gen.get_state(),
                          torch_rng=torch.get_rng_state(), log=log, running=running,
                          wall_s=wall_before + time.time() - t0), ckpt_path)

    t0 = time.time()
    last_ckpt = t0
    stop = _StopRequest()
    log_at = sorted({round(i * cfg.steps / (cfg.log_points - 1)) for i in range(cfg.log_points)})
    snap_at = {max(1, round(f * cfg.steps)) for f in cfg.snapshots}
    tick, tick_step = time.time(), start
    batches = fresh_batches(cfg, start) if cfg.fresh else None
    for step in range(start, cfg.steps + 1):
        if (until is not None and step >= until or stop.requested) and step < cfg.steps:
            if batches is not None:
                batches.close()
            checkpoint(step)
            why = f"until={until}" if until is not None and step >= until else f"signal {stop.requested}"
            print(f"stopped at step {step} ({why}); resume with --resume", flush=True)
            stop.restore()
            return None
        if step in log_at:
            now = time.time()
            entry = dict(step=step, fraction=step / cfg.steps, images=step * cfg.batch,
                         loss=float(np.mean(running)) if running else carried.get(step),
                         lr=_lr(min(step, cfg.steps - 1), cfg),
                         val_acc=accuracy(model, x_val, y_val))
            if cfg.dense:
                entry.update(dense_metrics(model, recon, x_val, y_val, cfg.patch,
                                           fg_val if cfg.objective == "dense_objects" else None))
            entry["layers"] = norm_stats(model, probe, "training", probe_bg)
            entry["wall_s"] = round(wall_before + now - t0, 1)
            entry["images_per_s"] = (round((step - tick_step) * cfg.batch / (now - tick), 1)
                                     if step > tick_step else None)
            log.append(entry)
            (out / "log.json").write_text(json.dumps(log))  # readable while training runs
            running = []
            print(f"step {step}/{cfg.steps} loss {entry['loss']} val_acc {entry['val_acc']:.3f} "
                  f"images/s {entry['images_per_s']}", flush=True)
            tick, tick_step = time.time(), step
        if step in snap_at:
            save_file({k: v.cpu() for k, v in model.state_dict().items()},
                      str(out / "snapshots" / f"step_{step:06d}.safetensors"))
        if step == cfg.steps:
            break
        if cfg.checkpoint_every >= 0 and time.time() - last_ckpt >= cfg.checkpoint_every \
                and step > start:
            checkpoint(step)
            last_ckpt = time.time()
        model.train()
        if cfg.fresh:
            sseed = _step_seed(cfg.seed, step)
            images, labels, fg = next(batches)
            xb, yb, fg = to_tensor(images), torch.from_numpy(labels), torch.from_numpy(fg)
            flip = torch.rand(cfg.batch, generator=torch.Generator().manual_seed(sseed % 2**63)) < 0.5
            mask_gen = torch.Generator().manual_seed((sseed + 1) % 2**63)
        else:
            idx = torch.randint(0, len(x_train), (cfg.batch,), generator=gen)
            xb, yb, fg = x_train[idx], y_train[idx], fg_train[idx]
            flip = torch.rand(cfg.batch, generator=gen) < 0.5
            mask_gen = gen
        xb, yb, fg = xb.to(cfg.device), yb.to(cfg.device), fg.to(cfg.device)
        if cfg.flip:
            flip = flip.to(cfg.device)
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            fg = torch.where(flip[:, None, None], fg.flip(-1), fg)
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        masked = (random_masks(cfg, fg.shape[0], fg.shape[1] * fg.shape[2], mask_gen).to(cfg.device)
                  if cfg.objective == "masked" else None)
        loss = _loss(model, recon, xb, yb, cfg, fg.flatten(1), masked)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.item())

    stop.restore()
    if batches is not None:
        batches.close()
    wall = wall_before + time.time() - t0
    checkpoint(cfg.steps)
    model.cpu()
    save_file(model.state_dict(), str(out / "model.safetensors"))
    if recon is not None:
        save_file({f"recon.{k}": v.cpu() for k, v in recon.state_dict().items()},
                  str(out / "heads.safetensors"))
    result = dict(val_acc=log[-1]["val_acc"], chance=1 / num_classes, wall_s=round(wall, 2),
                  hardware=_hardware(cfg), command=command)
    for key in ("patch_acc", "recon_mse"):
        if key in log[-1]:
            result[key] = log[-1][key]
    config = dict(
        arch=arch,
        data=dict(dataset="scenes", mean=MEAN, std=STD, task=cfg.task,
                  n_train=None if cfg.fresh else cfg.n_train, seed=cfg.seed, **scene),
        train=dataclasses.asdict(cfg),
        result=result,
    )
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "log.json").write_text(json.dumps(log))
    return config


class ReconHead(torch.nn.Linear):
    """The pixel-reconstruction head (a linear map from a token to its patch's pixels);
    for the ``masked`` objective it also holds the learned ``mask_token``."""

    def __init__(self, dim: int, pixels: int, mask_token: bool = False):
        super().__init__(dim, pixels)
        if mask_token:
            self.mask_token = torch.nn.Parameter(torch.zeros(dim))


def random_masks(cfg: TrainConfig, images: int, patches: int, gen: torch.Generator) -> torch.Tensor:
    """``[images, patches]`` bool: which patches the ``masked`` objective hides. A share
    ``mask_images`` of the images is masked (iBOT masks about half of DINOv2's), each with
    its own share of patches drawn uniformly in ``[mask_min, mask_max]``."""
    chosen = torch.rand(images, generator=gen) < cfg.mask_images
    share = cfg.mask_min + (cfg.mask_max - cfg.mask_min) * torch.rand(images, generator=gen)
    return (torch.rand(images, patches, generator=gen) < share[:, None]) & chosen[:, None]


def masked_features(model: torch.nn.Module, x: torch.Tensor, masked: torch.Tensor,
                    mask_token: torch.Tensor) -> torch.Tensor:
    """timm's ``forward_features`` with the embeddings of the ``masked`` patches
    (``[B, N]`` bool) replaced by ``mask_token`` before the position embedding is added."""
    tokens = model.patch_embed(x)  # [B, N, D], or [B, rows, cols, D] with dynamic_img_size
    hide = masked.reshape(tokens.shape[:-1])[..., None]
    tokens = torch.where(hide, mask_token.to(tokens.dtype).expand_as(tokens), tokens)
    tokens = model.norm_pre(model.patch_drop(model._pos_embed(tokens)))
    return model.norm(model.blocks(tokens))


def _loss(model: torch.nn.Module, recon: torch.nn.Module | None, xb: torch.Tensor,
          yb: torch.Tensor, cfg: TrainConfig, fg: torch.Tensor | None = None,
          masked: torch.Tensor | None = None) -> torch.Tensor:
    """The training loss of ``cfg.objective`` on one batch (``fg``: ``[B, N]`` bool, the
    patches holding object pixels; ``dense_objects`` needs it; ``masked``: ``[B, N]``
    bool, the hidden patches; the ``masked`` objective needs it)."""
    if cfg.objective == "masked":
        if masked is None:
            raise ValueError("The masked objective needs the mask of hidden patches.")
        feats = masked_features(model, xb, masked, recon.mask_token)
        loss = torch.nn.functional.cross_entropy(model.forward_head(feats), yb)
        if masked.any():  # only the hidden patches are scored; the visible ones are free
            hidden = feats[:, model.num_prefix_tokens:][masked]
            loss = loss + cfg.recon_weight * torch.nn.functional.mse_loss(
                recon(hidden), patchify(xb, cfg.patch)[masked])
        return loss
    if not cfg.dense:
        return torch.nn.functional.cross_entropy(model(xb), yb)
    tokens = model.forward_features(xb)[:, model.num_prefix_tokens:]  # normed patch tokens
    loss = 0.0
    if cfg.objective in ("dense_label", "dense_both", "dense_objects"):
        logits = model.head(tokens)  # [B, N, classes]
        target = yb[:, None].expand(-1, tokens.shape[1])
        if cfg.objective == "dense_objects":
            if fg is None:
                raise ValueError("dense_objects needs the object-patch mask fg.")
            loss = torch.nn.functional.cross_entropy(logits[fg], target[fg])
        else:
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten())
    if recon is not None:
        mse = torch.nn.functional.mse_loss(recon(tokens), patchify(xb, cfg.patch))
        loss = loss + (cfg.recon_weight * mse if cfg.objective != "dense_recon" else mse)
    return loss


def log_table(log: list[dict]):
    """A training log as one row per (logged step, layer), for plots and tables."""
    import pandas as pd

    rows = [dict(step=e["step"], fraction=e["fraction"], val_acc=e["val_acc"], loss=e["loss"], **r)
            for e in log for r in e["layers"]]
    df = pd.DataFrame(rows)
    df["max_over_median"] = df["max"] / df["median"]
    return df


def summarize_log(log: list[dict], min_fraction: float = 0.002) -> dict:
    """What a training log says about outliers: at the end, the layer with the largest
    gap-rule outlier fraction, that fraction, the largest max/median patch-norm ratio
    over layers, and the first logged point (as a fraction of training) from which some
    layer keeps at least ``min_fraction`` of its patches above a histogram gap."""
    last = log[-1]["layers"]
    best = max(last, key=lambda r: r["gap_fraction"])
    emerged_at = None
    for entry in log:
        if max(r["gap_fraction"] for r in entry["layers"]) >= min_fraction:
            if emerged_at is None:
                emerged_at = entry["fraction"]
        else:
            emerged_at = None
    return dict(val_acc=log[-1]["val_acc"], best_layer=best["layer"],
                outlier_fraction=best["gap_fraction"],
                max_over_median=max(r["max"] / r["median"] for r in last),
                emerged_at=emerged_at)


#: the mini-lab's success criterion (issues 3 and 9): a high mode above an empty
#: histogram gap holding this share of the patches ...
CRITERION_SHARE = (0.002, 0.10)


def criterion(entry: dict) -> dict:
    """Does one logged point meet the mini-lab's criterion? In some block, at either
    site (after attention, ``attn``; after the MLP, ``block``), the patch norms have a
    histogram gap with 0.2-10 % of the patches above it, most of those on background
    and more often than background's share of all patches.

    Returns the best (block, site) — the one that meets the criterion, else the one with
    the largest gap share, else the largest max/median — with its numbers and ``met``.
    Needs a v2 log (background shares); an older log has ``met=None``."""
    lo, hi = CRITERION_SHARE
    cands = []
    for r in entry["layers"]:
        for site, pre in (("block", ""), ("attn", "attn_")):
            if pre + "median" not in r:
                continue
            gap, bg = r[pre + "gap_fraction"], r.get(pre + "gap_background")
            share = r.get("background_share")
            met = None if share is None else bool(lo <= gap <= hi and bg is not None and bg > 0.5
                                                  and bg > share)
            cands.append(dict(layer=r["layer"], site=site, gap_fraction=gap, gap_background=bg,
                              background_share=share, top1_background=r.get(pre + "top1_background"),
                              max_over_median=r[pre + "max"] / r[pre + "median"],
                              kurtosis=r.get(pre + "kurtosis"), met=met))
    if not cands:
        raise ValueError("This log entry has no per-layer norm statistics.")
    return max(cands, key=lambda c: (bool(c["met"]), lo <= c["gap_fraction"] <= hi, c["gap_fraction"],
                                     c["max_over_median"]))


def emergence(log: list[dict]) -> float | None:
    """The first logged fraction of training from which every later point meets
    :func:`criterion`; ``None`` if the last one does not."""
    start = None
    for entry in log:
        if criterion(entry)["met"]:
            start = entry["fraction"] if start is None else start
        else:
            start = None
    return start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), help="the recipe (not with --resume)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--until", type=int, help="stop after this step, leaving a checkpoint")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "snapshots":
            p.add_argument("--snapshots", type=float, nargs="*")
        elif f.type in ("bool", bool):
            p.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"))
        else:
            p.add_argument(f"--{f.name}", type={"int": int, "float": float, "str": str}[str(f.type)])
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("preset", "out", "resume", "until") and v is not None}
    cmd = "python -m vitreg_lib.train " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.resume:
        if args.preset:
            p.error("--resume reads the recipe from the checkpoint: leave out --preset.")
        ck = Path(args.out) / "checkpoint.pt"
        if not ck.is_file():
            p.error(f"--resume: no checkpoint at {ck}.")
        saved = torch.load(ck, weights_only=True, map_location="cpu")["config"]
        cfg = dataclasses.replace(TrainConfig(**saved), **overrides)
        old = Path(args.out) / "command.txt"
        first = old.read_text().strip() if old.is_file() else ""
        cmd = f"{first} ; {cmd}" if first else cmd
    else:
        if not args.preset:
            p.error("--preset is required (or --resume to continue a run).")
        cfg = dataclasses.replace(PRESETS[args.preset], **overrides)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "command.txt").write_text(cmd + "\n")
    result = train(cfg, args.out, command=cmd, resume=args.resume, until=args.until)
    if result is not None:
        print(json.dumps(result["result"]))


if __name__ == "__main__":
    main()


def logged_run(name: str, retrain: bool = False, device: str = "cpu",
               out: str | Path | None = None) -> tuple[list[dict], str]:
    """The training log of mini model ``name``: the bundled one, or (``retrain=True``) a
    fresh run of its preset on ``device``. Returns the log and a line saying which."""
    from .models import training_log

    if not retrain:
        return training_log(name), f"bundled log of {name}"
    import tempfile

    folder = Path(out or tempfile.mkdtemp(prefix=f"{name}_"))
    cfg = dataclasses.replace(PRESETS[name], device=device)
    result = train(cfg, folder, command=f"logged_run({name!r}, retrain=True, device={device!r})")
    log = json.loads((folder / "log.json").read_text())
    res = result["result"]
    return log, f"{name} retrained live on {res['hardware']} in {res['wall_s']:.0f} s"
