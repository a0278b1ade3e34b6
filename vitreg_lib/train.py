"""The mini-lab: train small timm ViTs on the procedural scenes, log norm statistics.

Command line (``--preset`` names one of :data:`PRESETS`; any field can be overridden)::

    python -m vitreg_lib.train --preset mini_reg0 --out runs/mini_reg0
    python -m vitreg_lib.train --preset mini_reg4 --steps 50 --out /tmp/try

A run folder holds ``model.safetensors`` (final weights), ``config.json`` (the
architecture for :func:`vitreg_lib.models.build_vit`, the training config, final
validation accuracy, wall time, hardware, the command), ``log.json`` (per-layer
patch/register norm statistics on a fixed probe batch at ``log_points`` moments of
training, plus loss and accuracy) and ``snapshots/step_XXXXXX.safetensors`` for the
fractions of training listed in ``snapshots``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .data import make_scenes
from .features import extract
from .models import LoadedModel, ModelSpec, build_vit
from .outliers import HistogramGap, MeanStd, detect, token_norms

MEAN = STD = (0.5, 0.5, 0.5)


@dataclass
class TrainConfig:
    registers: int = 0
    depth: int = 6
    dim: int = 128
    heads: int = 4
    patch: int = 4
    img_size: int = 32
    cls_token: bool = True
    task: str = "count_shape"
    max_objects: int = 3
    min_object: float = 0.15  # object side as a share of the image: smaller = more background
    max_object: float = 0.35
    separate_objects: bool = False  # boxes never touch, so counts are unambiguous
    n_train: int = 20000
    n_val: int = 500
    steps: int = 600
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 100
    seed: int = 0
    threads: int = 1
    device: str = "cpu"
    log_points: int = 25
    probe_images: int = 128
    snapshots: list[float] = field(default_factory=list)

    def arch(self, num_classes: int) -> dict:
        return dict(img_size=self.img_size, patch_size=self.patch, embed_dim=self.dim,
                    depth=self.depth, num_heads=self.heads, num_classes=num_classes,
                    reg_tokens=self.registers, class_token=self.cls_token,
                    global_pool="token" if self.cls_token else "avg")


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


def _lr(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * t))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return (x - 0.5) / 0.5


def norm_stats(model: torch.nn.Module, probe: torch.Tensor, name: str) -> list[dict]:
    """Per-layer patch and register norm statistics on ``probe`` (used in the log)."""
    spec = ModelSpec(name, "mini", "", "mini", registers=int(model.num_reg_tokens or 0),
                     cls_token=model.cls_token is not None, img_size=probe.shape[-1])
    lm = LoadedModel(spec, model, MEAN, STD, probe.shape[-1])
    feats = extract(lm, probe, layers="all", progress=False)
    out = []
    for layer in feats.layers:
        n = token_norms(feats.patches(layer)).numpy().ravel()
        gap, ms = detect(n, HistogramGap()), detect(n, MeanStd(3))
        row = dict(layer=layer, median=float(np.median(n)), p99=float(np.percentile(n, 99)),
                   max=float(n.max()), gap_fraction=gap.fraction,
                   gap_threshold=gap.threshold if gap.found else None,
                   meanstd_fraction=ms.fraction)
        if feats.layout.num_registers:
            row["register_norm_mean"] = float(token_norms(feats.registers(layer)).mean())
        if feats.layout.num_cls:
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
    keys = ("size", "max_objects", "min_object", "max_object", "separate")
    scenes = make_scenes(n, seed=seed, **{k: data[k] for k in keys})
    x, y = _to_tensor(scenes.images), torch.from_numpy(scenes.label(data["task"]))
    return 100 * accuracy(lm.model, x, y)


def _hardware(cfg: TrainConfig) -> str:
    where = (torch.cuda.get_device_name(torch.device(cfg.device)) if cfg.device.startswith("cuda")
             else f"{platform.processor() or platform.machine()}, {cfg.threads} CPU thread(s)")
    return f"{where}, torch {torch.__version__}"


def train(cfg: TrainConfig, out: str | Path, command: str = "") -> dict:
    """Train one model as ``cfg`` says and write the run folder ``out``."""
    from safetensors.torch import save_file

    if cfg.task not in ("count", "largest_shape", "count_shape"):
        raise ValueError(f"Unknown task {cfg.task!r}.")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.snapshots:
        (out / "snapshots").mkdir(exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    t0 = time.time()
    scene = dict(size=cfg.img_size, max_objects=cfg.max_objects, min_object=cfg.min_object,
                 max_object=cfg.max_object, separate=cfg.separate_objects)
    train_set = make_scenes(cfg.n_train, seed=cfg.seed, **scene)
    val_set = make_scenes(cfg.n_val, seed=10_000 + cfg.seed, **scene)
    x_train, y_train = _to_tensor(train_set.images), torch.from_numpy(train_set.label(cfg.task))
    x_val, y_val = _to_tensor(val_set.images), torch.from_numpy(val_set.label(cfg.task))
    probe = x_val[: cfg.probe_images]
    num_classes = train_set.num_classes(cfg.task)
    arch = cfg.arch(num_classes)
    model = build_vit(arch).to(cfg.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    log_at = sorted({round(i * cfg.steps / (cfg.log_points - 1)) for i in range(cfg.log_points)})
    snap_at = {max(1, round(f * cfg.steps)) for f in cfg.snapshots}
    log, running = [], []
    for step in range(cfg.steps + 1):
        if step in log_at:
            entry = dict(step=step, fraction=step / cfg.steps,
                         loss=float(np.mean(running)) if running else None,
                         val_acc=accuracy(model, x_val, y_val),
                         layers=norm_stats(model, probe, "training"))
            log.append(entry)
            (out / "log.json").write_text(json.dumps(log))  # readable while training runs
            running = []
            print(f"step {step}/{cfg.steps} loss {entry['loss']} val_acc {entry['val_acc']:.3f}",
                  flush=True)
        if step in snap_at:
            save_file({k: v.cpu() for k, v in model.state_dict().items()},
                      str(out / "snapshots" / f"step_{step:06d}.safetensors"))
        if step == cfg.steps:
            break
        model.train()
        idx = torch.randint(0, len(x_train), (cfg.batch,), generator=gen)
        xb, yb = x_train[idx].to(cfg.device), y_train[idx].to(cfg.device)
        flip = (torch.rand(cfg.batch, generator=gen) < 0.5).to(cfg.device)
        xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
        for g in opt.param_groups:
            g["lr"] = _lr(step, cfg)
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        running.append(loss.item())

    wall = time.time() - t0
    model.cpu()
    save_file(model.state_dict(), str(out / "model.safetensors"))
    config = dict(
        arch=arch,
        data=dict(dataset="scenes", mean=MEAN, std=STD, task=cfg.task, n_train=cfg.n_train,
                  seed=cfg.seed, **scene),
        train=dataclasses.asdict(cfg),
        result=dict(val_acc=log[-1]["val_acc"], chance=1 / num_classes, wall_s=round(wall, 2),
                    hardware=_hardware(cfg),
                    command=command),
    )
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "log.json").write_text(json.dumps(log))
    return config


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


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", required=True, choices=sorted(PRESETS))
    p.add_argument("--out", required=True, help="run folder to write")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "snapshots":
            p.add_argument("--snapshots", type=float, nargs="*")
        elif f.type in ("bool", bool):
            p.add_argument(f"--{f.name}", type=lambda s: s.lower() in ("1", "true", "yes"))
        else:
            p.add_argument(f"--{f.name}", type={"int": int, "float": float, "str": str}[str(f.type)])
    args = p.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k not in ("preset", "out") and v is not None}
    cfg = dataclasses.replace(PRESETS[args.preset], **overrides)
    cmd = "python -m vitreg_lib.train " + " ".join(argv if argv is not None else sys.argv[1:])
    result = train(cfg, args.out, command=cmd)
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
