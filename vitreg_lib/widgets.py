"""ipywidgets explorers over the same calls as the static figures, for a live kernel
(Colab, Jupyter).

A static page runs no Python, so in the book these widgets show nothing (their cells are
tagged ``remove-output``); :func:`vitreg_lib.explorer.show` gives the book an explorer that
runs in the page itself: the same norms, rule and attention, precomputed for every layer
and drawn by plotly.js. :func:`explorer_view` and :func:`attention_view` (the very
functions the widgets call) draw one view as a plain figure, for a script or a page of
your own.
"""

from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
from PIL import Image

from .features import Features
from .outliers import Rule, detect, patch_norm_maps
from .plotting import map_grid, norm_view


def explorer_view(features: Mapping[str, Features], images: Mapping[str, Image.Image],
                  model: str, image: str, layer: int, rule: Rule, data: str) -> plt.Figure:
    """The figure the explorer shows for one (model, image, layer)."""
    f = features[model]
    maps = patch_norm_maps(f, layer)
    res = detect(maps, rule)
    i = list(images).index(image)
    caption = (f"{model} · layer {layer} · image '{image}' · {data} · "
               f"{res.rule}: {100 * res.fraction:.2f} % outliers")
    return norm_view(images[image], maps[i], maps, res.threshold, caption)


def attention_view(features: Mapping[str, Features], images: Mapping[str, Image.Image],
                   model: str, image: str, layer: int, head: int | str, data: str) -> plt.Figure:
    """What the attention explorer shows for one (model, image, layer, head): the
    attention of [CLS] and of each register over the patches (``head="mean"``: the
    mean over heads)."""
    f = features[model]
    i = list(images).index(image)
    a = f.prefix_attention(layer)[i]  # [heads, prefix, N]
    a = a.mean(dim=0) if head == "mean" else a[int(head)]
    names = ["[CLS]"] * f.layout.num_cls + [f"register {r}" for r in range(f.layout.num_registers)]
    maps = {name: a[p, f.layout.patch_slice].reshape(1, *f.layout.grid).numpy()
            for p, name in enumerate(names)}
    caption = f"{model} · layer {layer} · head {head} · image '{image}' · {data}"
    return map_grid([images[image]], maps, caption, colorbar_label="attention")


def _explorer(controls: list, draw) -> "object":
    """Controls above a PNG view redrawn by ``draw(*values)`` on every change.

    The view is an ``Image`` widget, not an ``Output`` capture, which was seen to hang
    a headless kernel under papermill once.
    """
    import io

    import ipywidgets as w

    out = w.Image(format="png")

    def redraw(*_):
        fig = draw(*(c.value for c in controls))
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        out.value = buf.getvalue()

    for control in controls:
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox(controls), out])


def norm_explorer(features: Mapping[str, Features], images: Mapping[str, Image.Image],
                  rule: Rule, data: str):
    """Dropdowns for model and image, a slider for the layer; redraws :func:`explorer_view`.

    ``features[model]`` must hold the patch tokens of every image in ``images``, in order.
    """
    import ipywidgets as w

    models = list(features)
    layers = [x for x in features[models[0]].layers if isinstance(x, int)]
    controls = [w.Dropdown(options=models, description="model"),
                w.Dropdown(options=list(images), description="image"),
                w.IntSlider(value=layers[-1], min=layers[0], max=layers[-1], description="layer")]
    return _explorer(controls, lambda m, i, layer: explorer_view(features, images, m, i, layer, rule, data))


def attention_explorer(features: Mapping[str, Features], images: Mapping[str, Image.Image], data: str):
    """Dropdowns for model, image and head (or their mean), a slider for the layer;
    redraws :func:`attention_view`. ``features[model]`` must hold the attention maps
    (``extract(..., attention=True)``) of every image in ``images``, in order."""
    import ipywidgets as w

    models = list(features)
    layers = sorted(features[models[0]].attention)
    heads = features[models[0]].prefix_attention(layers[0]).shape[1]
    controls = [w.Dropdown(options=models, description="model"),
                w.Dropdown(options=list(images), description="image"),
                w.IntSlider(value=layers[-1], min=layers[0], max=layers[-1], description="layer"),
                w.Dropdown(options=["mean", *range(heads)], description="head")]
    return _explorer(controls, lambda m, i, layer, h: attention_view(features, images, m, i, layer, h, data))
