"""Train the bundled mini ViTs on the procedural scenes, log norm statistics, read the logs.

This is the course's trainer: the recipe of the bundled minis (``mini_reg0`` ...
``mini_reg8``), which chapter 2 retrains live on a GPU (:func:`logged_run`), and the
functions the chapters read a training log with (:func:`log_table`,
:func:`summarize_log`, :func:`emergence`, :func:`task_accuracy`). The mini-lab's search
for a recipe that grows outliers extends it in :mod:`vitreg_lib.lab.train` (attention
variants, fresh scenes every step, dense and masked objectives, its criterion).

Command line (``--preset`` names one of :data:`PRESETS`; any field can be overridden)::

    python -m vitreg_lib.train --preset mini_reg0 --out runs/mini_reg0
    python -m vitreg_lib.train --preset mini_reg4 --steps 50 --out /tmp/try
    python -m vitreg_lib.train --resume --out runs/long        # continue a stopped run

A run folder holds ``model.safetensors`` (final weights of the ViT), ``config.json``
(the architecture for :func:`vitreg_lib.models.build_vit`, the training config, final
validation metrics, wall time, hardware, the command), ``command.txt``, ``log.json``
(per-layer norm statistics on a fixed probe batch at ``log_points`` moments of
training, plus loss and validation metrics), ``snapshots/step_XXXXXX.safetensors`` for
the fractions of training listed in ``snapshots``, and ``checkpoint.pt``.

**Resuming.** Every ``checkpoint_every`` seconds (and when the run ends, reaches
``--until`` or receives SIGTERM / SIGINT, e.g. ``kill PID`` or Ctrl-C) the run writes
``checkpoint.pt``: model, optimiser, step, the data sampler's and PyTorch's random
state, the log so far and the running loss. It is written to a temporary file and
renamed, so a run killed while writing keeps the previous one. ``--resume`` continues
from it and gives the same weights and the same log (timing fields aside) as a run
that was never stopped. A resumed run may change ``steps`` only with a constant
schedule (a cosine schedule depends on it), and ``threads``, ``device``,
``checkpoint_every`` and ``until`` freely; anything else is refused.

**Data.** Batches are sampled from a fixed training set of ``n_train`` scenes. Scene
options (``border``, ``texture``, ``clutter``, ``regions``, ``object_clutter``,
``min_objects``, ``trigger``, object sizes, image size) are
:func:`vitreg_lib.data.make_scenes`'s.

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

**Emergence** has one meaning in the course and the lab: the first logged fraction of
training from which every later logged point shows outliers (:func:`held_from`). The
course's test of "shows outliers" is the paper's bimodality, some block with at least
0.2 % of its patches above a histogram gap (:func:`emergence`); the lab's stricter
criterion is reported as when that criterion held, not as emergence.
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
from typing import Callable

import numpy as np
import torch

from .data import make_scenes, scene_kwargs, task_classes
from .features import extract
from .models import LoadedModel, ModelSpec, build_vit
from .outliers import HistogramGap, MeanStd, detect, token_norms

MEAN = STD = (0.5, 0.5, 0.5)
SCHEDULES = ("cosine", "constant")
#: fields a resumed run may change (``steps`` only under a constant schedule)
RESUMABLE_CHANGES = ("steps", "threads", "device", "checkpoint_every")


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
    n_train: int = 20000  # the fixed training set
    n_val: int = 500
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
    device: str = "cpu"
    log_points: int = 25
    probe_images: int = 128
    snapshots: list[float] = field(default_factory=list)
    checkpoint_every: float = 600.0  # seconds between checkpoints

    def arch(self, num_classes: int) -> dict:
        """The architecture for :func:`vitreg_lib.models.build_vit` (``config.json``'s ``arch``)."""
        arch = dict(img_size=self.img_size, patch_size=self.patch, embed_dim=self.dim,
                    depth=self.depth, num_heads=self.heads, num_classes=num_classes,
                    reg_tokens=self.registers, class_token=self.cls_token,
                    global_pool="token" if self.cls_token else "avg")
        if self.layerscale:
            arch["init_values"] = self.layerscale
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
        if self.schedule not in SCHEDULES:
            raise ValueError(f"Unknown schedule {self.schedule!r}; choose one of {SCHEDULES}.")
        if self.img_size % self.patch:
            raise ValueError(f"img_size={self.img_size} is not a multiple of patch={self.patch}.")


#: the recipe behind the bundled mini models: the best-learning one of the mini-lab's
#: search so far (experiments/RESULTS.md, r2_sep_count). No recipe has made outliers yet.
MINI_RECIPE = dict(steps=1500, separate_objects=True, task="count", max_objects=4)
PRESETS: dict[str, TrainConfig] = {
    "mini_v1": TrainConfig(),  # the foundation's first recipe, the mini-lab's starting point
    # the register family of chapter 5: one recipe, 0, 1, 2, 4 or 8 registers
    **{f"mini_reg{n}": TrainConfig(registers=n, **MINI_RECIPE) for n in (0, 1, 2, 4, 8)},
    "tiny_test": TrainConfig(depth=2, dim=32, heads=2, n_train=64, n_val=32, steps=4,
                             batch=16, warmup=1, log_points=2, probe_images=8,
                             img_size=16, snapshots=[0.5]),
}


def param_groups(model: torch.nn.Module, heads: torch.nn.Module | None, cfg: TrainConfig) -> list[dict]:
    """AdamW parameter groups of the ViT and its training ``heads`` (if any). With
    ``no_decay_1d`` the usual ViT recipe (timm, DeiT, DINOv2): no weight decay on biases,
    norm gains, LayerScale, the [CLS] / register tokens and the position embedding;
    otherwise one group, every parameter decayed (the bundled minis were trained so)."""
    named = list(model.named_parameters()) + (
        [(f"recon.{n}", p) for n, p in heads.named_parameters()] if heads is not None else [])
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


def attention_hub(received: torch.Tensor) -> tuple[int, torch.Tensor, torch.Tensor]:
    """The attention hub of a block, from ``received`` ``[B, heads, tokens]`` (the share of
    each head's attention that each token receives): per image and head the most-attended
    token's share and index (``[B, heads]`` each), and the head whose most-attended token
    takes the largest share on average over the images."""
    top_val, top_idx = received.max(dim=-1)
    return int(top_val.mean(0).argmax()), top_val, top_idx


def _attention_stats(recv: torch.Tensor, lay, bg: np.ndarray | None) -> dict:
    """The attention columns of one block's log row, from the attention each token
    receives (``[B, heads, N]``): the hub's share and where it sits, and the largest share
    of one head's attention the prefix tokens take."""
    row = {}
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
    return row


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
        row.update(_attention_stats(recv, lay, bg))
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


def _check_resume(saved: TrainConfig, cfg: TrainConfig, allowed: tuple[str, ...] = RESUMABLE_CHANGES) -> None:
    changed = [f.name for f in dataclasses.fields(saved) if getattr(saved, f.name) != getattr(cfg, f.name)]
    refused = [k for k in changed if k not in allowed]
    if refused:
        raise ValueError(f"A resumed run cannot change {refused} (saved: "
                         f"{ {k: getattr(saved, k) for k in refused} }); start a new run instead.")
    if "steps" in changed and cfg.schedule != "constant":
        raise ValueError("steps can change on resume only with schedule='constant': the cosine "
                         "schedule depends on the total number of steps.")


class Trainer:
    """One training run of ``cfg`` into the run folder ``out``, as named steps.

    Building it draws the data (:meth:`load_data`), builds the model, its training heads
    (none here) and the optimiser in that order (the order fixes what the seeded random
    generators give each), and with ``resume=True`` restores ``out/checkpoint.pt``
    (``cfg`` must match the saved config but for :attr:`resumable_changes`);
    :meth:`run` trains. ``until``: stop after that step with a checkpoint (no final
    model), e.g. to train in chunks.

    The mini-lab's trainer (:class:`vitreg_lib.lab.train.LabTrainer`) is this class with
    :meth:`training_set`, :meth:`count_classes`, :meth:`build_model`,
    :meth:`build_heads`, :meth:`next_batch`, :meth:`loss`, :meth:`validate` and the
    batch stream (:meth:`open_batches`, :meth:`close_batches`) of its own.
    """

    resumable_changes = RESUMABLE_CHANGES
    #: validation metrics of the last logged point that go to ``config.json``'s result
    result_metrics: tuple[str, ...] = ()

    def __init__(self, cfg: TrainConfig, out: str | Path, command: str = "", resume: bool = False,
                 until: int | None = None):
        cfg.check()
        self.cfg, self.out, self.command, self.until = cfg, Path(out), command, until
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.snapshots:
            (self.out / "snapshots").mkdir(exist_ok=True)
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        self.scene = cfg.scene()
        self.load_data()
        self.num_classes = self.count_classes()
        self.arch = cfg.arch(self.num_classes)
        self.model = self.build_model().to(cfg.device)
        self.heads = self.build_heads()
        self.opt = torch.optim.AdamW(param_groups(self.model, self.heads, cfg), lr=cfg.lr,
                                     weight_decay=cfg.weight_decay, betas=(0.9, cfg.beta2), eps=cfg.eps)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.log, self.running, self.start, self.wall_before, self.carried = [], [], 0, 0.0, {}
        self.ckpt_path = self.out / "checkpoint.pt"
        self.t0 = time.time()
        if resume:
            self.restore()

    # -- building the run -------------------------------------------------------------

    def training_set(self):
        """The fixed training set of ``n_train`` scenes (seeded by ``seed``)."""
        return make_scenes(self.cfg.n_train, seed=self.cfg.seed, **self.scene)

    def load_data(self) -> None:
        """The training tensors, the validation scenes (seed ``10,000 + seed``, never
        trained on) and the probe batch the log reads, with which of its patches are
        background (the log's background shares)."""
        cfg = self.cfg
        self.train_set = self.training_set()
        if self.train_set is not None:
            self.x_train = to_tensor(self.train_set.images)
            self.y_train = torch.from_numpy(self.train_set.label(cfg.task))
        self.val_set = make_scenes(cfg.n_val, seed=10_000 + cfg.seed, **self.scene)
        self.x_val = to_tensor(self.val_set.images)
        self.y_val = torch.from_numpy(self.val_set.label(cfg.task))
        self.probe = self.x_val[: cfg.probe_images]
        fg = self.val_set.patch_foreground(cfg.patch)[: cfg.probe_images]
        self.probe_bg = fg.reshape(len(self.probe), -1) == 0

    def count_classes(self) -> int:
        """How many classes the head predicts: for counts, the ones the training set
        holds (the bundled minis' rule, unchanged)."""
        if self.cfg.task in ("count", "count_shape"):
            return self.train_set.num_classes(self.cfg.task)
        return task_classes(self.cfg.task, self.cfg.max_objects)

    def build_model(self) -> torch.nn.Module:
        return build_vit(self.arch)

    def build_heads(self) -> torch.nn.Module | None:
        """Training heads beyond the ViT's own (the lab's pixel reconstruction); none here."""
        return None

    def restore(self) -> None:
        """Continue from ``checkpoint.pt``: weights, optimiser, both random generators, the
        log so far (points at the resumed step are logged again) and the running loss."""
        if not self.ckpt_path.is_file():
            raise FileNotFoundError(f"No checkpoint to resume in {self.out} "
                                    f"(expected {self.ckpt_path.name}).")
        ck = torch.load(self.ckpt_path, weights_only=True, map_location="cpu")
        _check_resume(type(self.cfg)(**ck["config"]), self.cfg, self.resumable_changes)
        self.model.load_state_dict(ck["model"])
        if self.heads is not None:
            self.heads.load_state_dict(ck["recon"])
        self.opt.load_state_dict(ck["optimizer"])
        self.gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        self.log, self.running = ck["log"], ck["running"]
        self.start, self.wall_before = ck["step"], ck["wall_s"]
        # entries at `start` are recomputed; a finished run extended to more steps was
        # checkpointed after its last entry, so that entry's training loss is carried over
        self.carried = {e["step"]: e["loss"] for e in self.log if e["step"] >= self.start}
        self.log = [e for e in self.log if e["step"] < self.start]
        print(f"resumed {self.out} at step {self.start}/{self.cfg.steps}", flush=True)

    # -- one step of training -----------------------------------------------------------

    def open_batches(self, start: int) -> None:
        """Start the stream of training batches at step ``start`` (the fixed set needs none)."""

    def close_batches(self) -> None:
        """Stop the stream of training batches."""

    def draw_fixed(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Which scenes of the fixed set make a batch, and which of them are flipped: both
        drawn from the run's generator, which is checkpointed with it."""
        idx = torch.randint(0, len(self.x_train), (self.cfg.batch,), generator=self.gen)
        return idx, torch.rand(self.cfg.batch, generator=self.gen) < 0.5

    def next_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Step ``step``'s batch on the device: scenes of the fixed set, flipped at random
        (:meth:`draw_fixed`), and nothing else the loss needs."""
        cfg = self.cfg
        idx, flip = self.draw_fixed()
        xb, yb = self.x_train[idx].to(cfg.device), self.y_train[idx].to(cfg.device)
        if cfg.flip:
            xb = torch.where(flip.to(cfg.device)[:, None, None, None], xb.flip(-1), xb)
        return xb, yb, {}

    def loss(self, xb: torch.Tensor, yb: torch.Tensor, extra: dict) -> torch.Tensor:
        """The training loss: the image label through the model's own head."""
        return torch.nn.functional.cross_entropy(self.model(xb), yb)

    def train_step(self, step: int) -> None:
        self.model.train()
        xb, yb, extra = self.next_batch(step)
        for g in self.opt.param_groups:
            g["lr"] = _lr(step, self.cfg)
        loss = self.loss(xb, yb, extra)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.running.append(loss.item())

    # -- what the run writes ------------------------------------------------------------

    def validate(self) -> dict:
        """The validation metrics of a log point."""
        return dict(val_acc=accuracy(self.model, self.x_val, self.y_val))

    def log_point(self, step: int) -> None:
        """Append a log point (loss, learning rate, validation metrics, the per-layer norm
        statistics of the probe batch, timing) and rewrite ``log.json``, which is readable
        while the run trains."""
        cfg, now = self.cfg, time.time()
        entry = dict(step=step, fraction=step / cfg.steps, images=step * cfg.batch,
                     loss=float(np.mean(self.running)) if self.running else self.carried.get(step),
                     lr=_lr(min(step, cfg.steps - 1), cfg), **self.validate())
        entry["layers"] = norm_stats(self.model, self.probe, "training", self.probe_bg)
        entry["wall_s"] = round(self.wall_before + now - self.t0, 1)
        entry["images_per_s"] = (round((step - self.tick_step) * cfg.batch / (now - self.tick), 1)
                                 if step > self.tick_step else None)
        self.log.append(entry)
        (self.out / "log.json").write_text(json.dumps(self.log))
        self.running = []
        print(f"step {step}/{cfg.steps} loss {entry['loss']} val_acc {entry['val_acc']:.3f} "
              f"images/s {entry['images_per_s']}", flush=True)
        self.tick, self.tick_step = time.time(), step

    def checkpoint(self, step: int) -> None:
        """Write ``checkpoint.pt``: everything :meth:`restore` needs to go on as if never
        stopped (the heads under ``recon``, the key the lab's checkpoints use)."""
        _save_atomic(dict(config=dataclasses.asdict(self.cfg), step=step, model=self.model.state_dict(),
                          recon=self.heads.state_dict() if self.heads is not None else {},
                          optimizer=self.opt.state_dict(), generator=self.gen.get_state(),
                          torch_rng=torch.get_rng_state(), log=self.log, running=self.running,
                          wall_s=self.wall_before + time.time() - self.t0), self.ckpt_path)

    def data_config(self) -> dict:
        """``config.json``'s ``data``: how to draw scenes like the training data."""
        cfg = self.cfg
        return dict(dataset="scenes", mean=MEAN, std=STD, task=cfg.task, n_train=cfg.n_train,
                    seed=cfg.seed, **self.scene)

    def finish(self) -> dict:
        """The end of a run: a last checkpoint, the final weights (and heads) as
        safetensors, ``config.json`` and the log. Returns the config dict."""
        from safetensors.torch import save_file

        wall = self.wall_before + time.time() - self.t0
        self.checkpoint(self.cfg.steps)
        self.model.cpu()
        save_file(self.model.state_dict(), str(self.out / "model.safetensors"))
        if self.heads is not None:
            save_file({f"recon.{k}": v.cpu() for k, v in self.heads.state_dict().items()},
                      str(self.out / "heads.safetensors"))
        last = self.log[-1]
        result = dict(val_acc=last["val_acc"], chance=1 / self.num_classes, wall_s=round(wall, 2),
                      hardware=_hardware(self.cfg), command=self.command)
        result.update({key: last[key] for key in self.result_metrics if key in last})
        config = dict(arch=self.arch, data=self.data_config(), train=dataclasses.asdict(self.cfg),
                      result=result)
        (self.out / "config.json").write_text(json.dumps(config, indent=1))
        (self.out / "log.json").write_text(json.dumps(self.log))
        return config

    # -- the loop -----------------------------------------------------------------------

    def _stop_here(self, step: int, stop: _StopRequest) -> bool:
        """At ``until`` or on a signal (never at the last step): checkpoint and say so."""
        until = self.until
        if not ((until is not None and step >= until or stop.requested) and step < self.cfg.steps):
            return False
        self.close_batches()
        self.checkpoint(step)
        why = f"until={until}" if until is not None and step >= until else f"signal {stop.requested}"
        print(f"stopped at step {step} ({why}); resume with --resume", flush=True)
        return True

    def run(self) -> dict | None:
        """Train from the current step to ``steps``: log at ``log_points`` evenly spaced
        steps, save snapshots, checkpoint every ``checkpoint_every`` seconds. Returns the
        run's config dict, or ``None`` when stopped early (``until`` or a signal)."""
        from safetensors.torch import save_file

        cfg = self.cfg
        self.t0 = time.time()
        last_ckpt = self.t0
        stop = _StopRequest()
        log_at = sorted({round(i * cfg.steps / (cfg.log_points - 1)) for i in range(cfg.log_points)})
        snap_at = {max(1, round(f * cfg.steps)) for f in cfg.snapshots}
        self.tick, self.tick_step = time.time(), self.start
        self.open_batches(self.start)
        for step in range(self.start, cfg.steps + 1):
            if self._stop_here(step, stop):
                stop.restore()
                return None
            if step in log_at:
                self.log_point(step)
            if step in snap_at:
                save_file({k: v.cpu() for k, v in self.model.state_dict().items()},
                          str(self.out / "snapshots" / f"step_{step:06d}.safetensors"))
            if step == cfg.steps:
                break
            if cfg.checkpoint_every >= 0 and time.time() - last_ckpt >= cfg.checkpoint_every \
                    and step > self.start:
                self.checkpoint(step)
                last_ckpt = time.time()
            self.train_step(step)
        stop.restore()
        self.close_batches()
        return self.finish()


def train(cfg: TrainConfig, out: str | Path, command: str = "", resume: bool = False,
          until: int | None = None) -> dict | None:
    """Train one model as ``cfg`` says and write the run folder ``out`` (see
    :class:`Trainer`). Returns the run's config dict, or ``None`` when stopped by ``until``."""
    return Trainer(cfg, out, command=command, resume=resume, until=until).run()


def log_table(log: list[dict]):
    """A training log as one row per (logged step, layer), for plots and tables."""
    import pandas as pd

    rows = [dict(step=e["step"], fraction=e["fraction"], val_acc=e["val_acc"], loss=e["loss"], **r)
            for e in log for r in e["layers"]]
    df = pd.DataFrame(rows)
    df["max_over_median"] = df["max"] / df["median"]
    return df


def held_from(log: list[dict], holds: Callable[[dict], bool]) -> float | None:
    """The first logged fraction of training from which ``holds(entry)`` is true at every
    later logged point; ``None`` if it is false at the last one. A test that holds for a
    while and then stops does not count: what emerges must stay."""
    start = None
    for entry in log:
        if holds(entry):
            start = entry["fraction"] if start is None else start
        else:
            start = None
    return start


def emergence(log: list[dict], min_fraction: float = 0.002) -> float | None:
    """When outliers emerged in a training run: the first logged fraction of training
    from which, at every later logged point, some block keeps at least ``min_fraction``
    of its patches above a histogram gap (the course's one meaning of *emergence*; the
    paper sees it about a third of the way into training)."""
    return held_from(log, lambda e: max(r["gap_fraction"] for r in e["layers"]) >= min_fraction)


def summarize_log(log: list[dict], min_fraction: float = 0.002) -> dict:
    """What a training log says about outliers: at the end, the layer with the largest
    gap-rule outlier fraction, that fraction, the largest max/median patch-norm ratio
    over layers, and when outliers emerged (:func:`emergence`, ``emerged_at``)."""
    last = log[-1]["layers"]
    best = max(last, key=lambda r: r["gap_fraction"])
    return dict(val_acc=log[-1]["val_acc"], best_layer=best["layer"],
                outlier_fraction=best["gap_fraction"],
                max_over_median=max(r["max"] / r["median"] for r in last),
                emerged_at=emergence(log, min_fraction))


def _parser(config: type, presets: dict, module: str, description: str) -> argparse.ArgumentParser:
    """The command line of ``python -m MODULE``: the run's options and one flag per
    field of ``config``."""
    lab = "" if module != "vitreg_lib.train" else \
        "The mini-lab's presets and levers are python -m vitreg_lib.lab.train's."
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=description, epilog=lab)
    p.add_argument("--preset", choices=sorted(presets), help="the recipe (not with --resume)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--until", type=int, help="stop after this step, leaving a checkpoint")
    for f in dataclasses.fields(config):
        if f.name == "snapshots":
            p.add_argument("--snapshots", type=float, nargs="*")
        elif f.type in ("bool", bool):
            p.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"))
        else:
            p.add_argument(f"--{f.name}", type={"int": int, "float": float, "str": str}[str(f.type)])
    return p


def main(argv: list[str] | None = None, config: type = TrainConfig, presets: dict | None = None,
         trainer: type = Trainer, module: str = "vitreg_lib.train", description: str | None = None) -> None:
    """``python -m vitreg_lib.train``; the lab's command line is this one with its own
    config, presets and trainer (``python -m vitreg_lib.lab.train``)."""
    presets = PRESETS if presets is None else presets
    p = _parser(config, presets, module, description or __doc__.split("\n\n")[0])
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items()
                 if k not in ("preset", "out", "resume", "until") and v is not None}
    cmd = f"python -m {module} " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.resume:
        if args.preset:
            p.error("--resume reads the recipe from the checkpoint: leave out --preset.")
        ck = Path(args.out) / "checkpoint.pt"
        if not ck.is_file():
            p.error(f"--resume: no checkpoint at {ck}.")
        saved = torch.load(ck, weights_only=True, map_location="cpu")["config"]
        cfg = dataclasses.replace(config(**saved), **overrides)
        old = Path(args.out) / "command.txt"
        first = old.read_text().strip() if old.is_file() else ""
        cmd = f"{first} ; {cmd}" if first else cmd
    else:
        if not args.preset:
            p.error("--preset is required (or --resume to continue a run).")
        cfg = dataclasses.replace(presets[args.preset], **overrides)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "command.txt").write_text(cmd + "\n")
    result = trainer(cfg, args.out, command=cmd, resume=args.resume, until=args.until).run()
    if result is not None:
        print(json.dumps(result["result"]))


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


if __name__ == "__main__":
    main()
