"""ipywidgets explorers over the same calls as the static figures.

A static page runs no Python, so every notebook also draws the explorer's default view
with :func:`explorer_view` (the very function the widget calls) as a plain figure.
"""

from __future__ import annotations

from typing import Mapping

import matplotlib.pyplot as plt
from PIL import Image

from .features import Features
from .outliers import Rule, detect, patch_norm_maps
from .plotting import norm_view


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


def norm_explorer(features: Mapping[str, Features], images: Mapping[str, Image.Image],
                  rule: Rule, data: str):
    """Dropdowns for model and image, a slider for the layer; redraws :func:`explorer_view`.

    ``features[model]`` must hold the patch tokens of every image in ``images``, in order.
    The view is rendered to PNG into an ``Image`` widget: no ``Output`` capture, which
    was seen to hang a headless kernel under papermill once.
    """
    import io

    import ipywidgets as w

    models = list(features)
    layers = [x for x in features[models[0]].layers if isinstance(x, int)]
    model_dd = w.Dropdown(options=models, description="model")
    image_dd = w.Dropdown(options=list(images), description="image")
    layer_sl = w.IntSlider(value=layers[-1], min=layers[0], max=layers[-1], description="layer")
    out = w.Image(format="png")

    def redraw(*_):
        fig = explorer_view(features, images, model_dd.value, image_dd.value, layer_sl.value, rule, data)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        out.value = buf.getvalue()

    for control in (model_dd, image_dd, layer_sl):
        control.observe(redraw, names="value")
    redraw()
    return w.VBox([w.HBox([model_dd, image_dd, layer_sl]), out])
