"""An on-disk cache of :class:`vitreg_lib.features.Features`, shared by the chapters of
one book build.

Chapters 3, 4, 5 and 6 read the same model's last block over the same images; a build
computes each such extraction once. The cache is **off** unless a folder is given
(``VITREG_FEATURE_CACHE``, which ``tools/build_book.py`` sets to a folder inside the
build folder), so a reader's notebook never reads stale features from an earlier run.

What makes a key (any change gives another entry):

* the model: its name, the hub revision it was loaded from, and a fingerprint of every
  parameter (shape and float64 sum), so a model whose weights were edited in place (a
  planted neuron) never hits an unedited model's entry;
* the exact input tensor (its bytes, hashed), so the images, their order, preprocessing
  and size all count;
* the layers, and every flag saying what is kept (attention, MLP layers, embeddings, ...).

Extractions that keep MLP activations are not cached (they are four times the width of
the tokens, at every searched layer: hundreds of MB per batch of ViT-L images); the
register-neuron search caches its result instead (:func:`vitreg_lib.registers.find_register_neurons`).
A model with forward hooks attached (test-time registers, a content control) is never
cached: what it computes is not a function of its weights alone. Entries are safetensors
files (tensors) with a JSON header (layout, depth, model name); nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch

ENV = "VITREG_FEATURE_CACHE"
#: what a lookup did, for the build's report: hits, misses, and the seconds a hit saved
STATS = {"hits": 0, "misses": 0, "saved_s": 0.0}
HITS_FILE = "hits.jsonl"


def folder() -> Path | None:
    """The cache folder, or ``None`` when caching is off."""
    value = os.environ.get(ENV)
    return Path(value) if value else None


def cacheable(model: torch.nn.Module) -> bool:
    """False when a hook is attached anywhere in ``model`` (its output then depends on
    more than its weights)."""
    return not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def fingerprint(model: torch.nn.Module) -> str:
    """A digest of every parameter's name, shape and float64 sum."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, p in model.named_parameters():
            h.update(f"{name}{tuple(p.shape)}{torch.sum(p, dtype=torch.float64).item():.17g}".encode())
    return h.hexdigest()


def key(name: str, revision: str | None, model: torch.nn.Module, images: torch.Tensor,
        options: dict) -> str:
    """The cache key of one extraction (see the module docstring)."""
    h = hashlib.sha256()
    h.update(json.dumps([name, revision, fingerprint(model), options], sort_keys=True, default=str).encode())
    x = images.detach().cpu().contiguous()
    h.update(str((tuple(x.shape), str(x.dtype))).encode())
    h.update(x.numpy().tobytes())
    return h.hexdigest()[:32]


def save(path: Path, tensors: dict[str, torch.Tensor], header: dict) -> None:
    """Write one entry atomically (a half-written file is never read)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
              metadata={"header": json.dumps(header)})
    tmp.replace(path)


def note_hit(path: Path, seconds: float) -> None:
    """Count a hit, and log it in the cache folder's ``hits.jsonl`` (the build reads what
    the cache saved per chapter from there: the extraction time of each entry reused)."""
    STATS["hits"] += 1
    STATS["saved_s"] += seconds
    with open(path.parent / HITS_FILE, "a") as log:
        log.write(json.dumps(dict(entry=path.name, saved_s=seconds)) + "\n")


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """An entry's tensors and header, or ``None`` when there is none."""
    if not path.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["header"])
        return {k: f.get_tensor(k) for k in f.keys()}, header


def through(lm: Any, images: torch.Tensor, options: dict, compute: Callable[[], Any],
            encode: Callable[[Any], tuple[dict[str, torch.Tensor], dict]],
            decode: Callable[[dict[str, torch.Tensor], dict], Any], tag: str = "") -> Any:
    """``compute()`` for the loaded model ``lm`` on ``images`` with ``options``, through the
    cache when it is on and ``lm`` is cacheable: a hit is ``decode(tensors, header)``; a miss
    is computed, stored as ``encode(value)`` with the seconds it took (for the build's
    report), and returned. ``tag`` names the kind of entry in its file name."""
    where = folder()
    if where is None or lm.extra_tokens or not cacheable(lm.model):
        return compute()
    digest = key(lm.name, lm.info.get("revision"), lm.model, images, options)
    path = where / f"{lm.name}{tag}-{digest}.safetensors"
    hit = load(path)
    if hit is not None:
        tensors, header = hit
        note_hit(path, header.pop("seconds"))
        return decode(tensors, header)
    t0 = time.perf_counter()
    value = compute()
    STATS["misses"] += 1
    tensors, header = encode(value)
    save(path, tensors, dict(header, seconds=round(time.perf_counter() - t0, 2)))
    return value
