"""Register-content controls: does a task need what the registers hold, or only that
something register-like is there?

Parodi, Matelsky & Segado (CVPR 2026 HOW workshop, arXiv 2604.14433; their figures are
:data:`vitreg_lib.paper.PAPER` ``["register_content"]``) zeroed the register tokens of
DINOv2+registers and DINOv3 at every block output and lost up to 36.6 points of
classification and 30.9 of segmentation; replacing them instead with the layer's dataset
mean, Gaussian noise of matched mean and variance, or another image's registers kept
every task within about 1 point. Zeroing [CLS] collapsed segmentation by 37 points
without registers and by less than 1 with them.

* :func:`calibrate` — per block and per token slot, the mean and the per-dimension
  variance of the target tokens over a calibration batch (each register slot keeps its
  own statistics: registers specialise);
* :func:`replace_tokens` — a context manager that, at the output of EVERY block,
  replaces the target tokens (``"registers"``, ``"cls"``, or ``"extra"``: the
  test-time registers of :func:`vitreg_lib.registers.add_test_time_registers`) with
  ``"zeros"``, the calibration ``"mean"``, seeded Gaussian ``"noise"`` matched to the
  calibration mean and variance, or the same tokens of another image of the batch
  (``"shuffle"``: image ``i`` gets image ``i + 1``'s, the last the first's, a fixed
  derangement). Leaving it restores the model exactly;
* :func:`control_effects` — one row per control and task: a global task (the course's
  linear probe on [CLS] or on the mean patch token, :mod:`vitreg_lib.probes`) and a
  dense one (the position probe on every patch token, or LOST CorLoc,
  :mod:`vitreg_lib.discovery`), each with a 95 % bootstrap interval over test images,
  its change from the no-control baseline on the same images (with a paired interval)
  and that change in words (``effect``).

Decisions: the probes are fitted once on the clean model's features of the training
images and evaluated under each control on the test images (a frozen head meeting
changed features; ``refit=True`` fits a new probe under each control instead). The
noise generator is seeded when the context opens, so a second pass draws new noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .features import Features, HookSet, extract
from .models import LoadedModel

TARGETS = ("registers", "cls", "extra")
CONTROLS = ("zeros", "mean", "noise", "shuffle")


def _count(lm: LoadedModel, target: str) -> int:
    """How many tokens of ``target`` each image has; a clear error where there are none."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}.")
    layout = lm.layout()
    count = {"registers": layout.num_registers, "cls": layout.num_cls, "extra": layout.extra}[target]
    if not count:
        what = {"registers": "trained register tokens (use a model with registers, e.g. "
                             "dinov2_s_reg or mini_reg4, or target='cls')",
                "cls": "[CLS] token (it pools its patches)",
                "extra": "test-time registers: apply registers.add_test_time_registers first and "
                         "pass the model it returns"}[target]
        raise ValueError(f"{lm.name} has no {what}.")
    return count


def _slice(lm: LoadedModel, target: str, n_tokens: int) -> slice:
    layout = lm.layout()
    if target == "registers":
        return layout.register_slice
    if target == "cls":
        return layout.cls_slice
    return slice(n_tokens - layout.extra, n_tokens)


@dataclass
class Calibration:
    """Per block, per token slot: mean and per-dimension variance of the target tokens."""

    model_name: str
    target: str
    mean: torch.Tensor  # [depth, T, D]
    var: torch.Tensor  # [depth, T, D], population variance over the calibration images
    n_images: int

    def describe(self) -> str:
        return (f"{self.target} of {self.model_name}: per-block mean and variance over "
                f"{self.n_images} calibration images")


def _target_tokens(f: Features, lm: LoadedModel, target: str, layer: int) -> torch.Tensor:
    tokens = f.layer(layer)
    return tokens[:, _slice(lm, target, tokens.shape[1])].double()


def calibrate(lm: LoadedModel, images: torch.Tensor | Sequence[Image.Image], target: str = "registers",
              batch_size: int = 16, progress: bool | None = None) -> Calibration:
    """The statistics :func:`replace_tokens` needs for ``"mean"`` and ``"noise"``: the mean
    and per-dimension variance of the ``target`` tokens at every block output over
    ``images`` (streamed in batches)."""
    _count(lm, target)
    x = images if isinstance(images, torch.Tensor) else lm.preprocess(list(images))
    if len(x) < 2:
        raise ValueError("Calibrate on at least 2 images (a variance needs two).")
    depth = len(lm.model.blocks)
    total = total_sq = None
    for xb in torch.split(x, batch_size):
        f = extract(lm, xb, layers="all", batch_size=len(xb), progress=progress)
        t = torch.stack([_target_tokens(f, lm, target, i) for i in range(depth)])  # [depth, B, T, D]
        s, sq = t.sum(dim=1), (t ** 2).sum(dim=1)
        total, total_sq = (s, sq) if total is None else (total + s, total_sq + sq)
    mean = total / len(x)
    var = (total_sq / len(x) - mean ** 2).clamp_min(0)
    return Calibration(lm.name, target, mean.float(), var.float(), len(x))


class TokenControl(HookSet):
    """Handle of :func:`replace_tokens`: ``model`` is the controlled model (the same
    module); :meth:`remove` (or leaving a ``with`` block) takes every hook off."""

    def __init__(self, lm: LoadedModel, control: str, target: str):
        super().__init__(lm)
        self.control, self.target = control, target

    def describe(self) -> str:
        return f"{self.target} replaced by {self.control} at every block output of {self.model.name}"



def _check_calibration(lm: LoadedModel, target: str, calibration: Calibration | None) -> None:
    if calibration is None:
        raise ValueError("'mean' and 'noise' need calibration=controls.calibrate(lm, images, target).")
    if calibration.target != target or calibration.model_name != lm.name:
        raise ValueError(f"The calibration is of {calibration.target} of {calibration.model_name}, "
                         f"not of {target} of {lm.name}.")
    if calibration.mean.shape[:2] != (len(lm.model.blocks), _count(lm, target)):
        raise ValueError(f"The calibration holds {tuple(calibration.mean.shape[:2])} (blocks, tokens); "
                         f"{lm.name} has {len(lm.model.blocks)} blocks and {_count(lm, target)} {target} "
                         "token(s).")


def _replacement(control: str, calibration: Calibration | None, gen: torch.Generator):
    """``new(block, tokens [B, T, D]) -> [B, T, D]`` for one control."""
    def new(i: int, t: torch.Tensor) -> torch.Tensor:
        if control == "zeros":
            return torch.zeros_like(t)
        if control == "shuffle":
            if t.shape[0] < 2:
                raise RuntimeError("'shuffle' needs at least 2 images in every batch (it gives each "
                                   "image another image's tokens); use a larger batch.")
            return t.roll(-1, dims=0)  # image i gets image i + 1's tokens
        mean = calibration.mean[i].to(t)
        if control == "mean":
            return mean.expand_as(t)
        noise = torch.randn(t.shape, generator=gen, dtype=torch.float32).to(t)
        return mean + calibration.var[i].to(t).sqrt() * noise

    return new


def replace_tokens(lm: LoadedModel, control: str, target: str = "registers",
                   calibration: Calibration | None = None, seed: int = 0) -> TokenControl:
    """Replace the ``target`` tokens (``"registers"``, ``"cls"`` or ``"extra"``) at the
    output of every block with ``control`` (``"zeros"``, ``"mean"``, ``"noise"``,
    ``"shuffle"``; see the module docstring) while the returned handle is active. Use as
    ``with replace_tokens(lm, "mean", calibration=cal) as m: extract(m, ...)``.
    ``"mean"`` and ``"noise"`` need a :class:`Calibration` of the same model and target."""
    if control not in CONTROLS:
        raise ValueError(f"control must be one of {CONTROLS}, got {control!r}.")
    _count(lm, target)
    if control in ("mean", "noise"):
        _check_calibration(lm, target, calibration)
    new = _replacement(control, calibration, torch.Generator().manual_seed(seed))
    handle = TokenControl(lm, control, target)

    def hook_for(i: int):
        def hook(_module, _inputs, out):
            sl = _slice(lm, target, out.shape[1])
            out = out.clone()
            out[:, sl] = new(i, out[:, sl])
            return out

        return hook

    for i, block in enumerate(lm.model.blocks):
        handle._handles.append(block.register_forward_hook(hook_for(i)))
    return handle


# --------------------------------------------------------------------------- effects on tasks

def describe_change(change: float, tolerance: float = 1.0,
                    interval: tuple[float, float] | None = None) -> str:
    """A change (points) against the baseline, in words; with the change's 95 %
    ``interval``, a change beyond ``tolerance`` whose interval holds 0 says so."""
    if abs(change) <= tolerance:
        return f"within {tolerance:g} point{'s' if tolerance != 1 else ''}"
    words = f"{'drops' if change < 0 else 'rises'} by {abs(change):.1f} points"
    if interval is not None and interval[0] <= 0 <= interval[1]:
        words += " (its 95 % interval holds 0)"
    return words


def _global_tokens(f: Features, layer: int, kind: str) -> np.ndarray:
    t = f.cls(layer) if kind == "cls" else f.patches(layer).mean(dim=1)
    return t.float().numpy()


def _fit(x: np.ndarray, y: np.ndarray, seed: int):
    from .probes import _fit as fit
    from .probes import _linear_classifier

    clf = _linear_classifier(seed)
    fit(clf, x, y)
    return clf


def _position_data(f: Features, layer: int, images: np.ndarray):
    p = f.patches(layer)[images].float().numpy()  # [b, P, D]
    return p, np.tile(np.arange(p.shape[1]), (len(images), 1))


def _fit_probes(f: Features, layer: int, kind: str, labels: np.ndarray, train: np.ndarray,
                dense: str, seed: int, max_train_tokens: int) -> dict:
    probes = {"global": _fit(_global_tokens(f, layer, kind)[train], labels[train], seed)}
    if dense == "position":
        p, pos = _position_data(f, layer, train)
        p, pos = p.reshape(-1, p.shape[-1]), pos.ravel()
        if len(p) > max_train_tokens:
            keep = np.random.default_rng(seed).choice(len(p), max_train_tokens, replace=False)
            p, pos = p[keep], pos[keep]
        probes["position"] = _fit(p, pos, seed)
    return probes


def _probe_scores(f: Features, probes: dict, layer: int, kind: str, labels: np.ndarray,
                  test: np.ndarray) -> dict[str, np.ndarray]:
    """Per test image: the global probe's hit (0 or 100) and the position probe's
    top-1 accuracy over the image's patches (%)."""
    hits = probes["global"].predict(_global_tokens(f, layer, kind)[test]) == labels[test]
    out = {"global": 100.0 * hits}
    if "position" in probes:
        p, pos = _position_data(f, layer, test)
        out["position"] = np.array([100.0 * np.mean(probes["position"].predict(p[i]) == pos[i])
                                    for i in range(len(test))])
    return out


def _paired_bootstrap(base: np.ndarray, other: np.ndarray, reps: int = 1000, seed: int = 0) -> dict:
    """The mean of ``other`` and its change from ``base`` (per-image scores of the same
    images), each with a 95 % interval from resampling the images (the same resamples for
    both, so the change's interval is paired)."""
    idx = np.random.default_rng(seed).integers(0, len(base), (reps, len(base)))
    values, changes = other[idx].mean(axis=1), (other - base)[idx].mean(axis=1)
    low, high = np.percentile(values, [2.5, 97.5])
    change_low, change_high = np.percentile(changes, [2.5, 97.5])
    return dict(value=float(other.mean()), low=float(low), high=float(high),
                change=float((other - base).mean()), change_low=float(change_low),
                change_high=float(change_high))


def _safe_batch(n: int, batch_size: int) -> int:
    """A batch size that leaves no batch of one image ('shuffle' needs two)."""
    while n > 1 and n % batch_size == 1:
        batch_size += 1
    return batch_size


@dataclass(frozen=True)
class _Task:
    layer: int
    kind: str  # global tokens: "cls" or "mean"
    dense: str  # "position" or "lost"
    train: np.ndarray
    test: np.ndarray
    labels: np.ndarray


def _scores_under(lm: LoadedModel, x: torch.Tensor, images, boxes, task: _Task, probes: dict | None,
                  seed: int, batch_size: int, max_train_tokens: int, k: int) -> dict:
    """Scores of the model as it is now (a control may be active)."""
    from .discovery import discover, hits

    f = extract(lm, x, layers=[task.layer], batch_size=batch_size, progress=False)
    if probes is None:  # refit under this control
        probes = _fit_probes(f, task.layer, task.kind, task.labels, task.train, task.dense, seed,
                             max_train_tokens)
    out = _probe_scores(f, probes, task.layer, task.kind, task.labels, task.test)
    if task.dense == "lost":
        found = discover(lm, images, k=k, batch_size=batch_size, progress=False)
        out["lost"] = 100.0 * hits(found.boxes, boxes)
    return out


def _task_names(task: _Task) -> dict[str, tuple[str, str]]:
    token = "[CLS]" if task.kind == "cls" else "mean patch token"
    return {"global": (f"global: linear probe on {token}", "accuracy (%)"),
            "position": ("dense: position probe on every patch", "top-1 accuracy (%)"),
            "lost": ("dense: LOST object discovery", "CorLoc (%)")}


def control_effects(lm: LoadedModel, images, labels, *, target: str = "registers",
                    controls: Sequence[str] = CONTROLS, calibration: Calibration | None = None,
                    layer: int = -1, global_tokens: str | None = None, dense: str = "position",
                    boxes: Sequence[np.ndarray] | None = None, k: int | None = None,
                    refit: bool = False, tolerance: float = 1.0, test_share: float = 0.3,
                    batch_size: int = 16, seed: int = 0, max_train_tokens: int = 4000) -> pd.DataFrame:
    """Each control's effect on a global and a dense task: one row per control x task
    (``control`` ``"none"`` is the baseline) with ``value``, ``low``, ``high`` (95 %
    bootstrap interval over the test images), ``change`` (points against the baseline on
    the same images) with its paired interval ``change_low``, ``change_high``, and
    ``effect`` (:func:`describe_change` with ``tolerance``).

    ``images``: PIL images (or a preprocessed tensor, except for ``dense="lost"``, which
    needs PIL images and their ``boxes``); ``labels``: one class per image.
    ``global_tokens``: ``"cls"`` or ``"mean"`` (default: [CLS] when the model has one and
    the target is not [CLS]). Without ``calibration``, ``"mean"`` and ``"noise"`` are
    calibrated on the training images (never the test images).
    """
    from .discovery import DEFAULT_K
    from .probes import split_images

    _count(lm, target)
    if dense not in ("position", "lost"):
        raise ValueError(f"dense must be 'position' or 'lost', got {dense!r}.")
    if dense == "lost" and (boxes is None or isinstance(images, torch.Tensor)):
        raise ValueError("dense='lost' needs PIL images and their ground-truth boxes (boxes=...).")
    x = images if isinstance(images, torch.Tensor) else lm.preprocess(list(images))
    kind = global_tokens or ("cls" if lm.layout().num_cls and target != "cls" else "mean")
    train, test = split_images(len(x), test_share, seed)
    task = _Task(layer, kind, dense, train, test, np.asarray(labels))
    if calibration is None and {"mean", "noise"} & set(controls):
        calibration = calibrate(lm, x[train], target, batch_size=batch_size)
    bs = _safe_batch(len(x), batch_size)
    run = dict(seed=seed, batch_size=bs, max_train_tokens=max_train_tokens,
               k=min(k or DEFAULT_K, lm.layout().num_patches))
    clean = extract(lm, x, layers=[layer], batch_size=bs, progress=False)
    frozen = None if refit else _fit_probes(clean, layer, kind, task.labels, train, dense, seed,
                                            max_train_tokens)
    results = {"none": _scores_under(lm, x, images, boxes, task, frozen, **run)}
    for control in controls:
        with replace_tokens(lm, control, target, calibration, seed=seed):
            results[control] = _scores_under(lm, x, images, boxes, task, frozen, **run)
    return _tidy(lm, target, task, results, tolerance, seed)


def effects_by_model(targets: Mapping[str, Sequence[str]], images, labels, *, device: str = "cpu",
                     **kwargs) -> pd.DataFrame:
    """:func:`control_effects` of each registry model of ``targets`` (name -> the tokens
    it controls, e.g. ``("registers", "cls")``) on the same images, one model in memory at
    a time, in one table. ``kwargs`` go to :func:`control_effects`."""
    from .models import each_model

    def run(lm: LoadedModel) -> pd.DataFrame:
        return pd.concat([control_effects(lm, images, labels, target=t, **kwargs) for t in targets[lm.name]],
                         ignore_index=True)

    return pd.concat(each_model(targets, run, device=device).values(), ignore_index=True)


def _tidy(lm: LoadedModel, target: str, task: _Task, results: dict, tolerance: float,
          seed: int) -> pd.DataFrame:
    names = _task_names(task)
    rows = []
    for control, scores in results.items():
        for key, per_image in scores.items():
            stats = _paired_bootstrap(results["none"][key], per_image, seed=seed)
            words = ("baseline" if control == "none" else
                     describe_change(stats["change"], tolerance, (stats["change_low"], stats["change_high"])))
            rows.append(dict(model=lm.name, target=target, control=control, task=names[key][0],
                             metric=names[key][1], **stats, effect=words, images=len(per_image)))
    return pd.DataFrame(rows)
