from conftest import tiny
from PIL import Image

from vitreg_lib.features import extract
from vitreg_lib.outliers import HistogramGap
from vitreg_lib.widgets import attention_explorer, attention_view, explorer_view, norm_explorer


def test_explorer_redraws_on_every_control():
    lm = tiny()
    images = {"a": Image.new("RGB", (16, 16), "red"), "b": Image.new("RGB", (16, 16), "blue")}
    feats = {"tiny": extract(lm, list(images.values()), layers="all")}
    box = norm_explorer(feats, images, HistogramGap(), data="2 test images")
    model_dd, image_dd, layer_sl = box.children[0].children
    view = box.children[1]
    first = view.value
    assert first[:4] == b"\x89PNG" and layer_sl.max == 2
    layer_sl.value = 0
    assert view.value != first
    image_dd.value = "b"
    assert view.value[:4] == b"\x89PNG"
    fig = explorer_view(feats, images, "tiny", "a", 2, HistogramGap(), data="2 test images")
    assert "tiny · layer 2 · image 'a' · 2 test images" in fig._suptitle.get_text()


def test_attention_explorer_shows_cls_and_each_register():
    lm = tiny(registers=2)
    images = {"a": Image.new("RGB", (16, 16), "red"), "b": Image.new("RGB", (16, 16), "blue")}
    feats = {"tiny": extract(lm, list(images.values()), layers="all", attention=True)}
    box = attention_explorer(feats, images, data="2 test images")
    model_dd, image_dd, layer_sl, head_dd = box.children[0].children
    view = box.children[1]
    first = view.value
    assert first[:4] == b"\x89PNG" and list(head_dd.options) == ["mean", 0, 1]
    head_dd.value = 1
    assert view.value != first
    fig = attention_view(feats, images, "tiny", "b", 1, 0, data="2 test images")
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["image", "[CLS]", "register 0", "register 1"]
    assert "tiny · layer 1 · head 0 · image 'b'" in fig._suptitle.get_text()


def test_layer_histograms_can_put_models_across():
    import numpy as np

    from vitreg_lib.plotting import layer_histograms

    norms = {m: {5: np.arange(10.0)} for m in ("a", "b", "c")}
    fig = layer_histograms(norms, {"a": {5: 4.5}}, caption="t", models_across=True)
    assert [ax.get_title() for ax in fig.axes] == ["a · layer 5", "b · layer 5", "c · layer 5"]
    assert fig.axes[0].get_position().y0 == fig.axes[2].get_position().y0  # one row
