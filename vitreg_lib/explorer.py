"""Explorers that run in the static page, with no kernel.

The book is static HTML: no Python runs behind it, so an ipywidgets explorer
(:mod:`vitreg_lib.widgets`, for Colab and Jupyter) shows nothing there. :func:`show` computes
everything such an explorer could show for a set of models x images x layers in the
notebook, quantises it, and emits ONE self-contained HTML output that draws it in the
reader's browser with `Plotly <https://plotly.com/javascript/>`_ (plotly.js, bundled with
the PyPI package ``plotly``):

* a **model** menu (each model, and each pair given as ``pairs``: without and with
  registers side by side), an **image** menu, a **register** menu where a model has
  registers, and a **layer** slider: Plotly's own controls (``updatemenus``, ``sliders``);
* per model, the patch-norm map over the photo with the patches the rule flags outlined
  in red; hovering a patch shows its norm, its rank in the image (1 = highest) and
  whether it is flagged;
* the layer's norm histogram over *all* the images (log count, the bins of the rule)
  with the rule's threshold (red, dashed);
* the [CLS] -> patch attention (mean over heads) and, for a model with registers, the
  chosen register's attention over the patches.

What is sent, and how precisely (the caption of every explorer says it again, with its
size):

* norms: 8 bits per patch, with an offset and a step per model and layer (the layer's
  minimum and ``(max - min) / 255`` over all images), so a decoded norm is within half a
  step (at most 0.2 % of the layer's range) of the library's float32 norm;
* attention: 8 bits, step ``max / 255`` per model, layer and kind ([CLS], registers);
* exact: the rule's threshold, which patches it flags (one bit each, computed here with
  :func:`vitreg_lib.outliers.detect`), each patch's rank, the histogram counts;
* photos: a centre-square JPEG thumbnail (``thumb`` px);
* all arrays as base64 in one JSON block.

Where the plotting library comes from (``plotlyjs``):

* ``"inline"``: plotly.js (about 4.8 MB) is inside the output. Works anywhere (Jupyter,
  Colab, a page saved to disk); too heavy for a book page with several explorers;
* ``"static"``: the output loads ``_static/`` :func:`bundle_name` once per page, found
  from the page's ``data-content_root`` (Sphinx) or its other ``_static/`` scripts. The
  book build (``tools/build_book.py``) copies :func:`bundle_path` there once and sets
  :data:`STATIC_BOOK_ENV`, so a chapter page carries only its data and still works
  opened from disk with no network;
* ``"auto"`` (the default): ``"static"`` when :data:`STATIC_BOOK_ENV` is set, else
  ``"inline"``.

Progress bars: a tqdm bar in a notebook is an ipywidget, which the static
book cannot draw (an empty box). When :data:`STATIC_BOOK_ENV` is set (the book build sets
it for the kernels it runs), :func:`vitreg_lib.features.progress_bar` (the bar of
:func:`~vitreg_lib.features.extract`) draws none unless asked, and then as plain text; elsewhere
it keeps ``tqdm.auto`` (a widget in a notebook, text in a terminal).

The analyses never import this module; it reads :mod:`~vitreg_lib.features` and
:mod:`~vitreg_lib.outliers` and draws nothing in Python.
"""

from __future__ import annotations

import base64
import io
import json
import math
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from PIL import Image

from .features import Features
from .outliers import Rule, as_numpy, detect, patch_norm_maps

#: set (to anything) by the book build: outputs load plotly.js from the book's ``_static``
#: and progress bars are off (the static page can draw neither a kernel nor a widget)
STATIC_BOOK_ENV = "VITREG_STATIC_BOOK"
#: histogram bins when the rule has none of its own
BINS = 60
#: images offered by default (the rule and histogram always use every image)
MAX_SHOWN = 8
#: the colour of a rule's threshold and of flagged patches (as :mod:`vitreg_lib.plotting`)
RED = "#d62728"
#: one colour per model of a pair (seaborn's colour-blind palette, as the figures)
SERIES = ["#0173b2", "#de8f05", "#029e73", "#cc78bc"]


def bundle_path() -> Path:
    """The plotly.js bundle that the PyPI package ``plotly`` ships."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: reinstall the 'plotly' package (pip install plotly).")
    return path


def bundle_name() -> str:
    """The file name a page loads from ``_static/``: ``plotly-<plotly.js version>.min.js``."""
    from plotly.offline import get_plotlyjs_version

    return f"plotly-{get_plotlyjs_version()}.min.js"


def static_book() -> bool:
    """Whether this run's outputs go into the static book (:data:`STATIC_BOOK_ENV`)."""
    return bool(os.environ.get(STATIC_BOOK_ENV))


# --------------------------------------------------------------------------- precompute

@dataclass
class ModelArrays:
    """Exact (float) values of one model over every image, per extracted block."""

    name: str
    layers: list[int]
    grid: tuple[int, int]
    norms: np.ndarray  # [L, B, N] float32: patch norms (N = rows * cols, row-major)
    thresholds: np.ndarray  # [L] the rule's threshold over all B x N norms (inf: none)
    masks: np.ndarray  # [L, B, N] bool: outliers.detect(norms of the layer, rule).mask
    cls_attention: np.ndarray | None  # [L, B, N]: [CLS] -> patch, mean over heads
    register_attention: np.ndarray | None  # [L, B, R, N]: each register -> patch, mean over heads
    rule: str = ""

    @property
    def num_registers(self) -> int:
        return 0 if self.register_attention is None else self.register_attention.shape[2]

    def ranks(self) -> np.ndarray:
        """``[L, B, N]``: each patch's rank by norm within its image and layer, 1 = highest
        (ties: the earlier patch first)."""
        order = np.argsort(-self.norms, axis=-1, kind="stable")
        ranks = np.empty_like(order)
        np.put_along_axis(ranks, order, np.arange(1, order.shape[-1] + 1)[None, None], axis=-1)
        return ranks


def precompute(features: Features, rule: Rule) -> ModelArrays:
    """Norms, the rule's threshold and mask, and attention maps of every extracted block
    (``features.layers``; ``"final"`` is skipped) for every image. The rule sees all the
    patches of a layer at once, as :func:`vitreg_lib.outliers.summarize` does."""
    layers = [x for x in features.layers if isinstance(x, int)]
    if not layers:
        raise ValueError(f"{features.model_name}: no block was extracted; use extract(..., layers='all').")
    norms, thresholds, masks, cls, reg = [], [], [], [], []
    lay = features.layout
    attention = all(layer in features.attention for layer in layers)
    for layer in layers:
        maps = patch_norm_maps(features, layer)  # [B, rows, cols]
        res = detect(maps, rule)
        norms.append(maps.reshape(maps.shape[0], -1).astype(np.float32))
        masks.append(res.mask.reshape(maps.shape[0], -1))
        thresholds.append(res.threshold)
        if attention and lay.num_cls:
            cls.append(as_numpy(features.cls_attention(layer).float().mean(1)).reshape(maps.shape[0], -1))
        if attention and lay.num_registers:
            a = as_numpy(features.register_attention(layer).float().mean(2))  # [B, R, rows, cols]
            reg.append(a.reshape(*a.shape[:2], -1))
    return ModelArrays(
        name=features.model_name, layers=layers, grid=tuple(lay.grid), norms=np.stack(norms),
        thresholds=np.asarray(thresholds, dtype=np.float64), masks=np.stack(masks),
        cls_attention=np.stack(cls).astype(np.float32) if cls else None,
        register_attention=np.stack(reg).astype(np.float32) if reg else None, rule=rule.describe())


# --------------------------------------------------------------------------- encode / decode

def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")


def _unb64(s: str, dtype, shape) -> np.ndarray:
    return np.frombuffer(base64.b64decode(s), dtype=dtype).reshape(shape)


def _uint(max_value: int) -> str:
    return "u1" if max_value < 2 ** 8 else "u2" if max_value < 2 ** 16 else "u4"


def _quantise(x: np.ndarray, lo: np.ndarray, step: np.ndarray) -> np.ndarray:
    """``x`` ``[L, ...]`` as uint8 codes ``round((x - lo) / step)`` with a per-layer
    ``lo`` and ``step`` (a zero step codes everything as 0)."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    safe = np.where(step > 0, step, 1.0).reshape(shape)
    q = np.rint((x - lo.reshape(shape)) / safe)
    return np.clip(q, 0, 255).astype(np.uint8)


def encode(arrays: ModelArrays, shown: Sequence[int], bins: int = BINS) -> dict:
    """The JSON-able payload of one model: the ``shown`` images' maps, every image's
    histogram. Norms and attention as uint8 with a per-layer offset and step."""
    shown = list(shown)
    norms = arrays.norms.astype(np.float64)
    lo, hi = norms.min(axis=(1, 2)), norms.max(axis=(1, 2))
    step = (hi - lo) / 255
    counts = np.stack([np.histogram(n, bins=bins)[0] for n in norms])  # the rule's binning
    n = arrays.norms.shape[-1]
    out = dict(name=arrays.name, layers=arrays.layers, grid=list(arrays.grid), patches=n,
               images=len(arrays.norms[0]), registers=arrays.num_registers, bins=bins,
               norm=dict(lo=lo.tolist(), hi=hi.tolist(), step=step.tolist(),
                         q=_b64(_quantise(norms[:, shown], lo, step))),
               threshold=[None if not math.isfinite(t) else float(t) for t in arrays.thresholds],
               flagged_pct=[float(100 * m.mean()) for m in arrays.masks],
               mask=_b64(np.packbits(arrays.masks[:, shown].ravel())),
               rank=dict(dtype=_uint(n - 1), q=_b64((arrays.ranks()[:, shown] - 1).astype(_uint(n - 1)))),
               hist=dict(dtype=_uint(int(counts.max())), q=_b64(counts.astype(_uint(int(counts.max()))))))
    for key, a in (("cls", arrays.cls_attention), ("reg", arrays.register_attention)):
        if a is None:
            out[key] = None
            continue
        a = a[:, shown].astype(np.float64)
        top = a.reshape(len(a), -1).max(axis=1)
        out[key] = dict(step=(top / 255).tolist(), q=_b64(_quantise(a, np.zeros_like(top), top / 255)))
    return out


def decode(payload: Mapping) -> dict[str, np.ndarray]:
    """What the page decodes from :func:`encode`'s payload, decoded the same way in
    Python (for the tests): ``norms`` ``[L, S, N]``, ``mask``, ``rank``, ``hist``
    ``[L, bins]``, ``cls`` ``[L, S, N]`` and ``reg`` ``[L, S, R, N]`` where present
    (``S``: the shown images)."""
    n_layers, n = len(payload["layers"]), payload["patches"]
    norm = payload["norm"]
    q = np.frombuffer(base64.b64decode(norm["q"]), dtype=np.uint8)
    shown = q.size // (n_layers * n)
    q = q.reshape(n_layers, shown, n).astype(np.float64)
    bits = np.unpackbits(np.frombuffer(base64.b64decode(payload["mask"]), np.uint8))
    out = dict(norms=np.asarray(norm["lo"])[:, None, None] + q * np.asarray(norm["step"])[:, None, None],
               mask=bits[: n_layers * shown * n].reshape(n_layers, shown, n).astype(bool),
               rank=_unb64(payload["rank"]["q"], payload["rank"]["dtype"], (n_layers, shown, n)) + 1,
               hist=_unb64(payload["hist"]["q"], payload["hist"]["dtype"], (n_layers, payload["bins"])))
    for key in ("cls", "reg"):
        if payload[key] is not None:
            a = np.frombuffer(base64.b64decode(payload[key]["q"]), dtype=np.uint8).astype(np.float64)
            shape = (n_layers, shown, n) if key == "cls" else (n_layers, shown, payload["registers"], n)
            step = np.asarray(payload[key]["step"]).reshape((-1,) + (1,) * (len(shape) - 1))
            out[key] = a.reshape(shape) * step
    return out


def colorscale(name: str, stops: int = 11) -> list:
    """A matplotlib colour map as a Plotly colour scale (the figures' ``viridis`` for norms,
    ``inferno`` for attention, as :mod:`vitreg_lib.plotting` draws them)."""
    import matplotlib
    from matplotlib.colors import to_hex

    cmap = matplotlib.colormaps[name]
    return [[i / (stops - 1), to_hex(cmap(i / (stops - 1)))] for i in range(stops)]


def thumbnail(image: Image.Image, size: int) -> dict:
    """The centre square of ``image`` (as the figures show it), at most ``size`` px:
    ``{"size": px, "jpeg": base64 JPEG}``."""
    im = image.convert("RGB")
    w, h = im.size
    s = min(w, h)
    im = im.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s > size:
        im = im.resize((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    return dict(size=im.size[0], jpeg=base64.b64encode(buf.getvalue()).decode("ascii"))


# --------------------------------------------------------------------------- the output

@dataclass
class Explorer:
    """One explorer output. Displays as HTML in a notebook (and in the book); ``nbytes``
    is what it adds to a page (UTF-8 bytes, plotly.js included only when inline)."""

    html: str
    payload_nbytes: int  # the JSON data block alone
    plotlyjs: str  # "inline" or "static"
    models: list[str] = field(default_factory=list)
    shown: list[str] = field(default_factory=list)
    max_norm_error: float = 0.0  # the largest half step of any model and layer

    @property
    def nbytes(self) -> int:
        return len(self.html.encode("utf-8"))

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return (f"Explorer({', '.join(self.models)}; {len(self.shown)} images; {self.nbytes / 1e3:.0f} kB "
                f"in the page, plotly.js {self.plotlyjs})")

    def save(self, path: str | Path) -> Path:
        """A standalone page with this explorer. With plotly.js ``"static"``, the bundle
        is copied to ``_static/`` beside it, where the page looks for it (as in the book)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.plotlyjs == "static":
            (path.parent / "_static").mkdir(exist_ok=True)
            target = path.parent / "_static" / bundle_name()
            if not target.is_file():
                target.write_bytes(bundle_path().read_bytes())
        path.write_text('<!DOCTYPE html>\n<html lang="en" data-content_root="./">\n<head>\n'
                        '<meta charset="utf-8"><title>vitreg explorer</title>\n</head>\n<body>\n'
                        f'<div style="max-width: 800px">\n{self.html}\n</div>\n</body>\n</html>\n',
                        encoding="utf-8")
        return path


def show(features: Mapping[str, Features], images: Mapping[str, Image.Image], *, rule: Rule, data: str,
         pairs: Sequence[tuple[str, str]] = (), shown: Sequence[str] | None = None,
         title: str = "Explore layers", thumb: int = 160, plotlyjs: str = "auto") -> Explorer:
    """An explorer of ``features`` (``{label: Features}``, each extracted from ``images``
    in order with ``layers="all", attention=True``) that runs in the page.

    ``rule``: the chapter's outlier rule (applied per model and layer over every image);
    ``data``: what the images are (for the caption); ``pairs``: ``(without, with)``
    labels of ``features`` to show side by side (the first one is the default view;
    both must have the same blocks); ``shown``: names of the images offered (default: the
    first :data:`MAX_SHOWN`); ``plotlyjs``: ``"inline"``, ``"static"`` or ``"auto"`` (see
    the module's docstring). Returns an :class:`Explorer`; its ``nbytes`` is its weight.
    """
    if not features:
        raise ValueError("No features given: pass {model name: Features}.")
    names = list(images)
    for label, f in features.items():
        if f.num_images != len(names):
            raise ValueError(f"{label}: {f.num_images} images in its features but {len(names)} given; pass "
                             "the images the features were extracted from, in the same order.")
    shown = list(shown) if shown is not None else names[:MAX_SHOWN]
    unknown = [s for s in shown if s not in images]
    if unknown or not shown:
        raise ValueError(f"Images to show {unknown or shown} are not among the images {names[:5]}...")
    idx = [names.index(s) for s in shown]
    for pair in pairs:
        missing = [p for p in pair if p not in features]
        if len(pair) != 2 or missing:
            raise ValueError(f"A pair is two labels of the features {list(features)}; got {pair}.")
    arrays = {label: precompute(f, rule) for label, f in features.items()}
    for a, b in pairs:
        if arrays[a].layers != arrays[b].layers:
            raise ValueError(f"Pair ({a}, {b}): blocks {arrays[a].layers} and {arrays[b].layers} differ; "
                             "a pair shares its layer slider.")
    if plotlyjs == "auto":
        plotlyjs = "static" if static_book() else "inline"
    if plotlyjs not in ("inline", "static"):
        raise ValueError(f"plotlyjs must be 'inline', 'static' or 'auto', not {plotlyjs!r}.")
    bins = int(getattr(rule, "bins", BINS))
    models = []
    for label, a in arrays.items():
        m = encode(a, idx, bins)
        m["name"] = label
        models.append(m)
    labels = list(arrays)
    payload = dict(models=models, pairs=[[labels.index(a), labels.index(b)] for a, b in pairs],
                   images=[dict(name=s, **thumbnail(images[s], thumb)) for s in shown],
                   rule=rule.describe(), data=data,
                   colorscales=dict(norm=colorscale("viridis"), attention=colorscale("inferno")))
    blob = json.dumps(payload, separators=(",", ":")).replace("</", "<\\/")
    half_step = max(float(np.max(m["norm"]["step"])) / 2 for m in models)
    rel = max(float(np.max(np.asarray(m["norm"]["step"]) / np.maximum(
        np.asarray(m["norm"]["hi"]) - np.asarray(m["norm"]["lo"]), 1e-30))) / 2 for m in models)
    uid = "vitreg-explorer-" + uuid.uuid4().hex[:10]
    caption = _caption(title, list(arrays), shown, len(names), rule, data, thumb, half_step, rel, plotlyjs)
    html = _html(uid, blob, caption, plotlyjs)
    size = len(html.encode("utf-8")) + 8  # the weight as the caption states it (with its own digits)
    html = html.replace("__WEIGHT__", _weight(size, plotlyjs))
    return Explorer(html=html, payload_nbytes=len(blob), plotlyjs=plotlyjs, models=list(arrays), shown=shown,
                    max_norm_error=half_step)


def _weight(nbytes: int, plotlyjs: str) -> str:
    js = f"plotly.js {bundle_path().stat().st_size / 1e6:.1f} MB"
    where = f"{js} included" if plotlyjs == "inline" else f"{js} loaded once from the book's _static"
    return f"{nbytes / 1e3:.0f} kB in this page ({where})"


def _caption(title, models, shown, n_images, rule, data, thumb, half_step, rel, plotlyjs) -> str:
    import html as h

    return (f"<b>{h.escape(title)}</b>: move the layer slider, pick a model (or a pair side by side) "
            f"and an image, hover a patch for its norm and rank. Models: {h.escape(', '.join(models))}. "
            f"Data: {h.escape(data)} ({len(shown)} of {n_images} images offered; the rule and the "
            f"histogram use all {n_images}). Rule: {h.escape(rule.describe())}, per model and layer, "
            f"threshold in red. Precision: norms 8-bit per model and layer, decoded within ± half a step "
            f"(≤ {100 * rel:.2f} % of a layer's range; here ≤ {half_step:.3g}); attention 8-bit per layer "
            f"(± 0.2 % of the layer's largest weight); ranks, flags and histogram counts exact; photos "
            f"{thumb}-px JPEG. Weight: __WEIGHT__.")


def _html(uid: str, blob: str, caption: str, plotlyjs: str) -> str:
    if plotlyjs == "inline":
        loader = ("<script>" + bundle_path().read_text(encoding="utf-8") + "</script>\n<script>"
                  "window.vitregPlotly = window.vitregPlotly || Promise.resolve(window.Plotly);</script>")
    else:
        loader = "<script>" + _LOADER_JS.replace("__FILE__", bundle_name()) + "</script>"
    return (f'<div class="vitreg-explorer" style="max-width: 800px">\n'
            f'<div id="{uid}" style="width: 100%; height: 790px;"></div>\n'
            f'<p id="{uid}-caption" style="font-size: 0.85em; line-height: 1.35;">{caption}</p>\n'
            f'<script type="application/json" id="{uid}-data">{blob}</script>\n'
            f"{loader}\n<script>{_EXPLORER_JS.replace('__UID__', uid)}</script>\n</div>")


#: loads _static/<bundle> once per page, relative to the page's content root
_LOADER_JS = r"""
window.vitregPlotly = window.vitregPlotly || new Promise(function (resolve, reject) {
  if (window.Plotly) { resolve(window.Plotly); return; }
  var root = document.documentElement.getAttribute("data-content_root");
  if (root === null) {
    var s = document.querySelector('script[src*="_static/"]');
    root = s ? s.getAttribute("src").split("_static/")[0] : "";
  }
  var el = document.createElement("script");
  el.src = root + "_static/__FILE__";
  el.onload = function () { resolve(window.Plotly); };
  el.onerror = function () { reject(new Error("could not load " + el.src)); };
  document.head.appendChild(el);
});
"""

#: draws the figure from the JSON block with Plotly; the controls are Plotly's
_EXPLORER_JS = r"""
(function () {
  var uid = "__UID__";
  var gd = document.getElementById(uid);
  var P = JSON.parse(document.getElementById(uid + "-data").textContent);
  var RED = "#d62728", SERIES = ["#0173b2", "#de8f05", "#029e73", "#cc78bc"];
  var S = P.images.length;

  function bytes(s) {
    var bin = atob(s), a = new Uint8Array(bin.length);
    for (var i = 0; i < bin.length; i++) a[i] = bin.charCodeAt(i);
    return a;
  }
  function typed(s, dtype) {
    var b = bytes(s);
    if (dtype === "u1") return b;
    return dtype === "u2" ? new Uint16Array(b.buffer) : new Uint32Array(b.buffer);
  }
  var cache = {};
  function dec(mi) {  // a model's arrays, decoded once
    if (!cache[mi]) {
      var m = P.models[mi];
      cache[mi] = {norm: bytes(m.norm.q), mask: bytes(m.mask), rank: typed(m.rank.q, m.rank.dtype),
                   hist: typed(m.hist.q, m.hist.dtype), cls: m.cls ? bytes(m.cls.q) : null,
                   reg: m.reg ? bytes(m.reg.q) : null};
    }
    return cache[mi];
  }

  // the views: each pair (side by side), then each model alone
  var views = P.pairs.map(function (p) {
    return {label: P.models[p[0]].name + " vs " + P.models[p[1]].name, members: p};
  }).concat(P.models.map(function (m, i) { return {label: m.name, members: [i]}; }));
  var maxReg = Math.max.apply(null, P.models.map(function (m) { return m.registers; }));
  var state = {view: 0, image: 0, layer: P.models[views[0].members[0]].layers.length - 1, reg: 0};

  function grid(m, value, off) {  // a rows x cols array of value(off + row-major index)
    var z = [];
    for (var r = 0; r < m.grid[0]; r++) {
      var row = [];
      for (var c = 0; c < m.grid[1]; c++) row.push(value(off + r * m.grid[1] + c));
      z.push(row);
    }
    return z;
  }
  function colorbar(dom, ydom) {
    return {x: dom[1], xanchor: "left", y: (ydom[0] + ydom[1]) / 2, len: ydom[1] - ydom[0], thickness: 8,
            outlinewidth: 0, tickfont: {size: 9}};
  }
  function hover(m, what) {
    return "patch row %{y}, col %{x}<br>" + what + "<extra>" + m.name + "</extra>";
  }

  function figure() {
    var v = views[state.view], k = v.members.length, L = state.layer, s = state.image;
    var regMember = v.members.filter(function (mi) { return P.models[mi].reg; })[0];
    var attn = regMember !== undefined || v.members.some(function (mi) { return P.models[mi].cls; });
    var gap = 0.07, w = (1 - 2 * gap) / 3;
    function col(j, span) {
      span = span || 1;
      return [j * (w + gap), j * (w + gap) + span * w + (span - 1) * gap];
    }
    var top = attn ? [0.6, 1] : [0, 1], bottom = [0, 0.4];
    var data = [], nAxis = 0, layout = {
      margin: {l: 10, r: 40, t: 110, b: 90}, height: (attn ? 590 : 270) + 200, font: {size: 11},
      showlegend: false, barmode: "overlay", uirevision: uid + state.view, annotations: [], shapes: [],
      hoverlabel: {font: {size: 11}}
    };
    function axes(dom, ydom, image) {
      nAxis += 1;
      var n = nAxis === 1 ? "" : String(nAxis), x = "x" + n, y = "y" + n;
      layout["xaxis" + n] = {domain: dom, anchor: y, showgrid: false, zeroline: false, visible: !image};
      layout["yaxis" + n] = image ?
        {domain: ydom, anchor: x, scaleanchor: x, constrain: "domain", autorange: "reversed",
         visible: false} :
        {domain: ydom, anchor: x, type: "log", dtick: 1, side: "right", tickfont: {size: 9}};
      return {x: x, y: y, n: n};
    }
    function title(text, dom, ydom) {
      layout.annotations.push({text: text, x: (dom[0] + dom[1]) / 2, y: ydom[1], xref: "paper",
                               yref: "paper", yanchor: "bottom", xanchor: "center", showarrow: false,
                               font: {size: 11}});
    }
    var px = (gd.clientWidth || 780) * w;  // a map's width in pixels

    // row 1: each model's norm map over the photo, flagged patches outlined
    v.members.forEach(function (mi, j) {
      var m = P.models[mi], d = dec(mi), N = m.patches, off = (L * S + s) * N, ax = axes(col(j), top, true);
      var lo = m.norm.lo[L], step = m.norm.step[L], fx = [], fy = [];
      var z = grid(m, function (i) { return lo + d.norm[i] * step; }, off);
      var cd = grid(m, function (i) {
        var f = (d.mask[i >> 3] >> (7 - (i & 7))) & 1;
        if (f) { fx.push((i - off) % m.grid[1]); fy.push(Math.floor((i - off) / m.grid[1])); }
        return [d.rank[i] + 1, f ? "flagged by the rule" : "not flagged"];
      }, off);
      var th = P.images[s], dx = m.grid[1] / th.size, dy = m.grid[0] / th.size;
      data.push({type: "image", source: "data:image/jpeg;base64," + th.jpeg, xaxis: ax.x, yaxis: ax.y,
                 x0: -0.5 + dx / 2, y0: -0.5 + dy / 2, dx: dx, dy: dy, hoverinfo: "skip", name: "photo"});
      data.push({type: "heatmap", z: z, customdata: cd, xaxis: ax.x, yaxis: ax.y, zmin: 0,
                 zmax: m.norm.hi[L], colorscale: P.colorscales.norm, opacity: 0.6, name: m.name, meta: "norm",
                 colorbar: colorbar(col(j), top),
                 hovertemplate: hover(m, "norm %{z:.4g}<br>rank %{customdata[0]} of " + N +
                                         " in this image<br>%{customdata[1]}")});
      data.push({type: "scatter", mode: "markers", x: fx, y: fy, xaxis: ax.x, yaxis: ax.y,
                 hoverinfo: "skip", name: "flagged",
                 marker: {symbol: "square-open", color: RED, line: {width: 2},
                          size: Math.max(4, 0.8 * px / m.grid[1])}});
      title("<b>" + m.name + "</b> · norm, layer " + m.layers[L] + "<br>" + fx.length + " of " + N +
            " patches flagged", col(j), top);
    });

    // row 1, right: the layer's histogram over every image, the rule's threshold in red
    var hdom = k === 1 ? col(1, 2) : col(2), hx = axes(hdom, top, false);
    layout["xaxis" + hx.n].title = {text: "patch norm (all " + P.models[v.members[0]].images + " images)"};
    var notes = [];
    v.members.forEach(function (mi, j) {
      var m = P.models[mi], d = dec(mi), lo = m.norm.lo[L], b = m.bins, bw = (m.norm.hi[L] - lo) / b;
      var x = [], y = [], t = m.threshold[L];
      for (var i = 0; i < b; i++) { x.push(lo + (i + 0.5) * bw); y.push(d.hist[L * b + i]); }
      data.push({type: "bar", x: x, y: y, width: bw || 1, xaxis: hx.x, yaxis: hx.y, name: m.name,
                 meta: "histogram", marker: {color: SERIES[j], opacity: k > 1 ? 0.6 : 0.85},
                 hovertemplate: "norm %{x:.4g}: %{y} patches<extra>" + m.name + "</extra>"});
      if (t !== null) {
        layout.shapes.push({type: "line", xref: hx.x, yref: hx.y + " domain", x0: t, x1: t, y0: 0, y1: 1,
                            line: {color: RED, dash: "dash", width: 1.5}});
      }
      notes.push("<span style='color:" + SERIES[j] + "'>" + m.name + "</span>: " +
                 (t === null ? "no threshold (none flagged)" :
                  "threshold " + t.toPrecision(4) + ", " + m.flagged_pct[L].toFixed(2) + " % flagged"));
    });
    title("patches per norm (log count), layer " + P.models[v.members[0]].layers[L] + "<br>" +
          notes.join("<br>"), hdom, top);

    // row 2: [CLS] -> patches for each model, and one register (or their mean) -> patches
    if (attn) {
      v.members.forEach(function (mi, j) {
        var m = P.models[mi];
        if (!m.cls) return;
        var d = dec(mi), step = m.cls.step[L], ax = axes(col(j), bottom, true);
        data.push({type: "heatmap", xaxis: ax.x, yaxis: ax.y, zmin: 0, zmax: 255 * step,
                   z: grid(m, function (i) { return d.cls[i] * step; }, (L * S + s) * m.patches),
                   colorscale: P.colorscales.attention, name: m.name, meta: "cls",
                   colorbar: colorbar(col(j), bottom),
                   hovertemplate: hover(m, "[CLS] attention %{z:.3g}")});
        title(m.name + " · [CLS] → patches<br>(mean of heads)", col(j), bottom);
      });
      if (regMember !== undefined) {
        var m = P.models[regMember], d = dec(regMember), N = m.patches, R = m.registers;
        var step = m.reg.step[L], base = (L * S + s) * R * N;
        var r = state.reg >= maxReg ? R : Math.min(state.reg, R - 1);  // R: the mean of its registers
        var ax = axes(col(k), bottom, true);
        var z = grid(m, function (i) {
          if (r < R) return d.reg[base + r * N + i] * step;
          for (var q = 0, t = 0; q < R; q++) t += d.reg[base + q * N + i];
          return t * step / R;
        }, 0);
        data.push({type: "heatmap", z: z, xaxis: ax.x, yaxis: ax.y, zmin: 0, zmax: 255 * step,
                   colorscale: P.colorscales.attention, name: m.name, meta: "register",
                   colorbar: colorbar(col(k), bottom),
                   hovertemplate: hover(m, "register attention %{z:.3g}")});
        title(m.name + " · " + (r < R ? "register " + r : "mean of its " + R + " register(s)") +
              " → patches<br>(mean of heads)", col(k), bottom);
      }
    }

    // Plotly's controls: the layer slider below, the menus above
    layout.sliders = [{
      name: "layer", active: L, x: 0.05, len: 0.9, y: 0, yanchor: "top", pad: {t: 20, b: 0},
      currentvalue: {prefix: "layer (block) ", font: {size: 12}},
      steps: P.models[v.members[0]].layers.map(function (l, i) {
        return {label: String(l), value: String(i), method: "skip", args: []};
      })}];
    function menu(name, x, labels, active) {
      return {name: name, type: "dropdown", x: x, y: 1, xanchor: "left", yanchor: "bottom",
              pad: {t: 0, b: 62}, active: active, showactive: true, font: {size: 11},
              buttons: labels.map(function (t) { return {label: t, method: "skip", args: []}; })};
    }
    layout.updatemenus = [menu("view", 0, views.map(function (x) { return x.label; }), state.view),
                          menu("image", 0.5, P.images.map(function (x) { return x.name; }), state.image)];
    if (maxReg > 0) {
      var regs = [];
      for (var q = 0; q < maxReg; q++) regs.push("register " + q);
      regs.push("mean of registers");
      layout.updatemenus.push(menu("register", 0.78, regs, Math.min(state.reg, maxReg)));
    }
    return {data: data, layout: layout};
  }

  function draw() {
    var f = figure();
    gd.style.height = f.layout.height + "px";
    return Plotly.react(gd, f.data, f.layout, {responsive: true, displayModeBar: false});
  }

  window.vitregPlotly.then(function (plotly) {
    window.Plotly = window.Plotly || plotly;
    return draw().then(function () {
      gd.on("plotly_sliderchange", function (e) {
        var L = parseInt(e.step.value, 10);
        if (L !== state.layer) { state.layer = L; draw(); }
      });
      gd.on("plotly_buttonclicked", function (e) {
        if (e.menu.name === "view") {  // keep the relative depth when the number of blocks changes
          var before = P.models[views[state.view].members[0]].layers.length;
          state.view = e.active;
          var after = P.models[views[state.view].members[0]].layers.length;
          state.layer = before > 1 ? Math.round(state.layer / (before - 1) * (after - 1)) : after - 1;
        } else if (e.menu.name === "image") {
          state.image = e.active;
        } else if (e.menu.name === "register") {
          state.reg = e.active;
        }
        draw();
      });
      gd.setAttribute("data-ready", "1");
    });
  }).catch(function (err) {
    gd.textContent = "The explorer needs plotly.js, which did not load (" + err.message + ").";
    gd.style.height = "auto";
    console.error(err);
  });
})();
"""
