"""The mini-lab's trainer: the course's trainer with the lab's levers.

Command line (``--preset`` names one of :data:`PRESETS`: the course's and the lab's;
any field can be overridden)::

    python -m vitreg_lib.lab.train --preset lab_v3 --out experiments/runs/try --objective dense_both
    python -m vitreg_lib.lab.train --resume --out experiments/runs/long        # continue a stopped run
    python -m vitreg_lib.lab.train --resume --out experiments/runs/long --steps 40000   # and extend it

:class:`LabConfig` is :class:`vitreg_lib.train.TrainConfig` plus the lab's options, and
:class:`LabTrainer` is :class:`vitreg_lib.train.Trainer` (the run folder, the log, the
checkpoints and resuming are the course trainer's) with:

* **attention variants** (``attention``: :mod:`vitreg_lib.lab.models`);
* **fresh scenes** (``fresh=True``): new scenes every step, seeded by ``(seed, step)``,
  so no image is seen twice and nothing but the step is needed to resume; ``workers``
  processes can draw them ahead of the loop (:func:`fresh_batches`);
* **objectives** beyond the image label (``objective``: :mod:`vitreg_lib.lab.objectives`),
  with a pixel-reconstruction head saved in ``heads.safetensors`` and validation
  metrics ``patch_acc`` / ``recon_mse``.

A resumed run may also change ``workers``. :func:`load_checkpoint` reads a stopped run's
model for the run-reading scripts of ``experiments/``; the criterion the search applies
to a log is :mod:`vitreg_lib.lab.criterion`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data import make_scenes, task_classes
from ..models import LoadedModel
from ..train import PRESETS as COURSE_PRESETS
from ..train import RESUMABLE_CHANGES as COURSE_RESUMABLE
from ..train import TrainConfig, Trainer, as_loaded, to_tensor
from ..train import main as course_main
from .models import build_vit
from .objectives import (
    DENSE_OBJECTIVES,
    OBJECTIVES,
    RECON_OBJECTIVES,
    ReconHead,
    dense_metrics,
    objective_loss,
    random_masks,
)

#: fields a resumed lab run may change (``steps`` only under a constant schedule)
RESUMABLE_CHANGES = COURSE_RESUMABLE + ("workers",)


@dataclass
class LabConfig(TrainConfig):
    attention: str = "softmax"  # or "gated" / "bias" (lab.models.ATTENTION_VARIANTS)
    fresh: bool = False  # new scenes every step instead of a fixed training set
    workers: int = 0  # fresh=True: processes drawing the scenes ahead of the loop (0: in the loop)
    objective: str = "label"  # see lab.objectives
    recon_weight: float = 1.0
    mask_images: float = 0.5  # objective "masked": the share of images whose patches are masked
    mask_min: float = 0.1  # ... and the share of their patches masked, drawn in [mask_min, mask_max]
    mask_max: float = 0.5

    @property
    def dense(self) -> bool:
        """Every patch is read by a head (the model pools its patches for the label)."""
        return self.objective in DENSE_OBJECTIVES

    def arch(self, num_classes: int) -> dict:
        arch = super().arch(num_classes)
        if self.dense:  # the final norm acts on every token; the head reads each patch
            arch.update(global_pool="avg", fc_norm=False)
        if self.attention != "softmax":
            arch["attention"] = self.attention
        return arch

    def check(self) -> None:
        super().check()
        if self.objective not in OBJECTIVES:
            raise ValueError(f"Unknown objective {self.objective!r}; choose one of {OBJECTIVES}.")
        if self.workers < 0 or (self.workers and not self.fresh):
            raise ValueError(f"workers={self.workers}: workers draw fresh scenes ahead of the "
                             "training loop, so they need fresh=True and a count >= 0.")


#: mini-lab v2: 64-px scenes with 4-px patches (256 patches), 6 x 64 ViT, fresh scenes
#: every step, objects kept off a 4-px background frame, constant learning rate
LAB_V2 = dict(img_size=64, dim=64, depth=6, heads=4, patch=4, max_objects=4, separate_objects=True,
              min_object=0.1, max_object=0.25, border=4, fresh=True, schedule="constant",
              task="count", steps=20000, lr=2e-3, weight_decay=0.1, warmup=500, log_points=41,
              probe_images=64, n_val=256)
#: mini-lab v3: the v2 recipe at 32 px (8 x 8 = 64 patches, a 1-patch background frame),
#: 4-5x faster per image than v2's 256 patches, so a run of 1 M images takes ~1 core-hour;
#: no weight decay on biases, norms, tokens and the position embedding
LAB_V3 = dict(LAB_V2, img_size=32, min_object=0.12, max_object=0.3, steps=16000, probe_images=128,
              weight_decay=0.05, no_decay_1d=True)
PRESETS: dict[str, LabConfig] = {
    **{name: LabConfig(**dataclasses.asdict(cfg)) for name, cfg in COURSE_PRESETS.items()},
    "lab_v2": LabConfig(**LAB_V2),
    "lab_v3": LabConfig(**LAB_V3),
    "tiny_v2": LabConfig(depth=2, dim=32, heads=2, n_val=32, steps=6, batch=8, warmup=2,
                         log_points=3, probe_images=8, img_size=16, cls_token=False,
                         fresh=True, objective="dense_both", schedule="constant", border=2,
                         max_object=0.4, trigger=0.3, task="count_trigger", max_objects=2,
                         checkpoint_every=0.0),
}


def _step_seed(seed: int, step: int) -> int:
    """The seed of step ``step``'s fresh scenes: independent of every other step's and
    of the validation (10,000 + seed) and task-accuracy (20,000) seeds' streams."""
    return int(np.random.SeedSequence([seed, step, 0x5CE7E5]).generate_state(1, np.uint64)[0])


def fresh_batch(cfg: LabConfig, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
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


def fresh_batches(cfg: LabConfig, start: int):
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


class LabTrainer(Trainer):
    """:class:`vitreg_lib.train.Trainer` with the lab's levers (see the module docstring)."""

    resumable_changes = RESUMABLE_CHANGES
    result_metrics = ("patch_acc", "recon_mse")

    def training_set(self):
        """The fixed training set, or none when every step draws fresh scenes."""
        return None if self.cfg.fresh else super().training_set()

    def load_data(self) -> None:
        """The course trainer's data, and which patches hold object pixels (the
        ``dense_objects`` objective labels those only; masks and flips follow them)."""
        super().load_data()
        patch = self.cfg.patch
        if self.train_set is not None:
            self.fg_train = torch.from_numpy(self.train_set.patch_foreground(patch) > 0)
        self.fg_val = torch.from_numpy(self.val_set.patch_foreground(patch) > 0).flatten(1)

    def count_classes(self) -> int:
        """Fresh scenes: every class the task can give; a fixed set: the course's rule."""
        if self.cfg.fresh:
            return task_classes(self.cfg.task, self.cfg.max_objects)
        return super().count_classes()

    def build_model(self) -> torch.nn.Module:
        return build_vit(self.arch)

    def build_heads(self) -> torch.nn.Module | None:
        """The pixel-reconstruction head (with the mask token for ``masked``), if the
        objective has one."""
        cfg = self.cfg
        if cfg.objective not in RECON_OBJECTIVES:
            return None
        return ReconHead(cfg.dim, cfg.patch * cfg.patch * 3, cfg.objective == "masked").to(cfg.device)

    def open_batches(self, start: int) -> None:
        self.batches = fresh_batches(self.cfg, start) if self.cfg.fresh else None

    def close_batches(self) -> None:
        if getattr(self, "batches", None) is not None:
            self.batches.close()

    def next_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Step ``step``'s batch on the device, with its object patches (``fg``) flipped
        with the images and, for ``masked``, the hidden patches. Fresh scenes draw their
        flips and masks from generators seeded by the step (nothing to checkpoint); a
        fixed set draws them from the run's generator, as the course trainer does."""
        cfg = self.cfg
        if cfg.fresh:
            sseed = _step_seed(cfg.seed, step)
            images, labels, fg = next(self.batches)
            xb, yb, fg = to_tensor(images), torch.from_numpy(labels), torch.from_numpy(fg)
            flip = torch.rand(cfg.batch, generator=torch.Generator().manual_seed(sseed % 2**63)) < 0.5
            mask_gen = torch.Generator().manual_seed((sseed + 1) % 2**63)
        else:
            idx, flip = self.draw_fixed()
            xb, yb, fg = self.x_train[idx], self.y_train[idx], self.fg_train[idx]
            mask_gen = self.gen
        xb, yb, fg = xb.to(cfg.device), yb.to(cfg.device), fg.to(cfg.device)
        if cfg.flip:
            flip = flip.to(cfg.device)
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            fg = torch.where(flip[:, None, None], fg.flip(-1), fg)
        masked = (random_masks(cfg, fg.shape[0], fg.shape[1] * fg.shape[2], mask_gen).to(cfg.device)
                  if cfg.objective == "masked" else None)
        return xb, yb, dict(fg=fg.flatten(1), masked=masked)

    def loss(self, xb: torch.Tensor, yb: torch.Tensor, extra: dict) -> torch.Tensor:
        return objective_loss(self.model, self.heads, xb, yb, self.cfg, extra["fg"], extra["masked"])

    def validate(self) -> dict:
        """The image accuracy, and for a dense objective the patches' accuracy (object
        patches only for ``dense_objects``) and the reconstruction error."""
        out = super().validate()
        cfg = self.cfg
        if cfg.dense:
            labelled = self.fg_val if cfg.objective == "dense_objects" else None
            out.update(dense_metrics(self.model, self.heads, self.x_val, self.y_val, cfg.patch, labelled))
        return out

    def data_config(self) -> dict:
        data = super().data_config()
        if self.cfg.fresh:  # no fixed training set
            data["n_train"] = None
        return data


def train(cfg: LabConfig, out: str | Path, command: str = "", resume: bool = False,
          until: int | None = None) -> dict | None:
    """:func:`vitreg_lib.train.train` with the lab's trainer."""
    return LabTrainer(cfg, out, command=command, resume=resume, until=until).run()


def load_checkpoint(folder: str | Path) -> tuple[LabConfig, LoadedModel, int]:
    """The model of a run, from ``folder/checkpoint.pt`` (a stopped run's, or a finished
    run's last): ``(config, model, step)``, the model in eval mode, ready for
    :func:`vitreg_lib.features.extract`."""
    path = Path(folder) / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"No checkpoint at {path}: a run writes one every "
                                f"checkpoint_every seconds and when it is stopped.")
    ck = torch.load(path, weights_only=True, map_location="cpu")
    cfg = LabConfig(**ck["config"])
    model = build_vit(cfg.arch(ck["model"]["head.weight"].shape[0]))
    model.load_state_dict(ck["model"])
    model.eval()
    return cfg, as_loaded(model, Path(folder).name, cfg.img_size), int(ck["step"])


def main(argv: list[str] | None = None) -> None:
    """``python -m vitreg_lib.lab.train``: the course's command line with the lab's
    config, presets and trainer."""
    course_main(argv, config=LabConfig, presets=PRESETS, trainer=LabTrainer,
                module="vitreg_lib.lab.train", description=__doc__.split("\n\n")[0])


if __name__ == "__main__":
    main()
