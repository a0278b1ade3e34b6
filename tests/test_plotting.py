"""The figures' layout rules: at most MAX_COLS panels a row, each figure at most the
book's column wide, captions kept as titles, thresholds and intervals where the data put them."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import BarContainer, ErrorbarContainer  # noqa: E402
from PIL import Image  # noqa: E402

from vitreg_lib import plotting  # noqa: E402
from vitreg_lib.probes import ProbeResult, to_frame  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def rows_of(axes):
    """Axes grouped by row (same top edge), top row first, each row left to right."""
    fig = axes[0].figure
    fig.canvas.draw()
    rows = {}
    for ax in axes:
        rows.setdefault(round(ax.get_position().y1, 3), []).append(ax)
    return [sorted(r, key=lambda a: a.get_position().x0) for _, r in sorted(rows.items(), reverse=True)]


def title(fig):
    return fig._suptitle.get_text().replace("\n", " ")


@pytest.mark.parametrize("n, per_row", [(1, 1), (3, 3), (4, 4), (5, 3), (6, 3), (7, 4), (12, 4)])
def test_panels_per_row(n, per_row):
    assert plotting.panels_per_row(n) == per_row


def test_layer_histograms_wrap_each_model_onto_its_own_rows():
    rng = np.random.default_rng(0)
    norms = {m: {layer: rng.normal(10, 2, 500) for layer in range(6)} for m in ("a", "b")}
    caption = "Patch-norm histograms · two models · some images · rule: histogram gap, a long caption " * 2
    fig = plotting.layer_histograms(norms, {"a": {4: 14.0}}, caption=caption.strip())
    assert title(fig) == caption.strip()
    assert fig.get_figwidth() <= plotting.WIDTH
    rows = rows_of(fig.axes)
    assert [[ax.get_title() for ax in r] for r in rows] == [
        ["a · layer 0", "a · layer 1", "a · layer 2"], ["a · layer 3", "a · layer 4", "a · layer 5"],
        ["b · layer 0", "b · layer 1", "b · layer 2"], ["b · layer 3", "b · layer 4", "b · layer 5"]]
    assert all(ax.get_yscale() == "log" for ax in fig.axes)
    assert fig._supylabel.get_text() == "patches (log count)"  # once for the figure, not per row
    lines = {ax.get_title(): [ln.get_xdata()[0] for ln in ax.get_lines()] for ax in fig.axes}
    assert lines["a · layer 4"] == [14.0] and lines["a · layer 3"] == [] and lines["b · layer 4"] == []
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["a", "b", "the rule's threshold"]


def test_models_across_wraps_five_models_three_and_two():
    norms = {f"m{r}": {5: np.arange(20.0)} for r in range(5)}
    fig = plotting.layer_histograms(norms, {}, caption="t", models_across=True)
    assert [len(r) for r in rows_of(fig.axes)] == [3, 2]
    fig.canvas.draw()
    texts = fig.legends[0].get_texts()
    boxes = [t.get_window_extent() for t in texts]
    reading = sorted(range(len(texts)), key=lambda i: (-round(boxes[i].y0), boxes[i].x0))
    assert [texts[i].get_text() for i in reading] == [f"m{r}" for r in range(5)]  # row by row, no threshold
    assert len({round(b.y0) for b in boxes}) == 2


def test_probe_bars_intervals_sit_on_their_bars_and_unmeasured_groups_say_na():
    def frame(model, outlier):
        return to_frame([ProbeResult("position", "normal", "top-1 accuracy (%)", 40.0, 35.0, 44.0, 900, 30),
                         ProbeResult("position", "outlier", "top-1 accuracy (%)", *outlier, 30, 9),
                         ProbeResult("pixels", "normal", "L2 error", 5.0, 4.0, 5.5, 900, 30)]
                        ).assign(model=model)

    probes = pd.concat([frame("plain", (20.0, 10.0, 26.0)), frame("reg", (None, None, None))])
    fig = plotting.probe_bars(probes, caption="Local probes · scenes · rule")
    assert title(fig) == "Local probes · scenes · rule" and fig.get_figwidth() <= plotting.WIDTH
    ax = next(a for a in fig.axes if a.get_title().startswith("position"))
    bars = [(round(p.get_x() + p.get_width() / 2, 6), p.get_height())
            for c in ax.containers if isinstance(c, BarContainer) for p in c]
    (errors,) = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    spans = sorted((round(s[0][0], 6), s[0][1], s[1][1]) for s in errors.lines[2][0].get_segments())
    assert sorted(x for x, _ in bars) == [x for x, _, _ in spans]  # one interval per bar, centred on it
    assert spans == [(-0.2, 35.0, 44.0), (0.2, 35.0, 44.0), (0.8, 10.0, 26.0)]
    assert [(round(t.get_position()[0], 6), t.get_text()) for t in ax.texts] == [(1.2, "n/a")]
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels[:2] == ["plain", "reg"] and "n/a: too few test tokens" in labels


def test_map_grid_turns_when_an_image_has_more_than_four_panels():
    images = [Image.new("RGB", (20, 16), c) for c in ("red", "green", "blue")]
    maps = {f"register {r}": np.random.default_rng(r).random((3, 4, 4)) for r in range(4)}
    fig = plotting.map_grid(images, maps, caption="registers · 3 images")
    panels = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(panels) == 15 and max(len(r) for r in rows_of(panels)) == 3  # images across, 5 rows
    assert [r[0].get_ylabel() for r in rows_of(panels)] == ["image"] + list(maps)
    one = plotting.map_grid(images[:1], {k: v[:1] for k, v in maps.items()}, caption="one image")
    panels = [ax for ax in one.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert [len(r) for r in rows_of(panels)] == [3, 2]
    assert [ax.get_title() for r in rows_of(panels) for ax in r] == ["image"] + list(maps)


def test_every_statistical_figure_fits_the_column_and_keeps_its_caption():
    table = pd.DataFrame({"model": ["r0", "r4"], "registers": [0, 4], "outlier % (histogram gap)": [1.0, 0.0],
                          "outlier % (mean + 3·std)": [2.0, 1.0], "extra FLOPs (%)": [0.0, 6.0]})
    curves = pd.DataFrame([dict(model=m, kind=k, layer=la, median=1.0 + la, max=2.0 + la)
                           for m in ("r0", "r4") for k in ("cls", "patches") for la in range(3)])
    layer_curves = pd.DataFrame(dict(layer=range(3), median=1.0, p99=2.0, max=3.0, outlier_fraction=0.0,
                                     rule="gap"))
    log = pd.DataFrame([dict(step=s, fraction=s / 4, val_acc=0.5, layer=la, gap_fraction=0.0,
                             max_over_median=2.0) for s in range(5) for la in range(2)])
    corloc = pd.DataFrame({"model": ["r0", "r4"], "CorLoc (%)": [40.0, 50.0], "low": [30.0, 41.0],
                           "high": [49.0, 58.0]})
    def caption(name):
        return f"{name} · models r0, r4 · scenes (seed 0) · last block · histogram gap"

    figures = {
        "ablation": plotting.register_ablation(table, caption=caption("ablation")),
        "kinds": plotting.kind_norms(curves, caption=caption("kinds")),
        "curves": plotting.curves({"r0": layer_curves, "r4": layer_curves}, caption=caption("curves")),
        "training": plotting.training_curves(log, caption=caption("training"), paper_fraction=0.3),
        "densities": plotting.densities({"r0": {"normal": np.zeros(5), "outlier": np.array([])}},
                                        xlabel="similarity", caption=caption("densities")),
        "corloc": plotting.corloc_bars(corloc, caption=caption("corloc"), paper={"r4": 55.0}),
        "split": plotting.norm_split({"r0": {"background": np.arange(9.0), "objects": np.arange(5.0) + 20},
                                      "r4": {"photos": np.arange(3.0)}}, {"r0": 25.0, "r4": float("inf")},
                                     caption=caption("split")),
    }
    for name, fig in figures.items():
        assert fig.get_figwidth() <= plotting.WIDTH, name
        assert title(fig) == caption(name), name
        assert len(fig.legends) == 1, name
    assert [ax.get_title() for ax in figures["ablation"].axes] == ["outlier patches (%)", "extra FLOPs (%)"]
    assert "outlier: none" in figures["densities"].axes[0].get_title()
    split = figures["split"]  # one panel per model, the threshold drawn where the rule found one
    assert [ax.get_title() for ax in split.axes[:2]] == ["r0", "r4"]
    assert [len(ax.get_lines()) for ax in split.axes[:2]] == [1, 0]


def test_register_use_draws_one_annotated_cell_per_run_and_block():
    from vitreg_lib.lab.plotting import register_use

    shares = pd.DataFrame([[0.06, 0.40, 0.05], [0.07, 0.06, np.nan]],
                          index=["a (uniform 6 %)", "b (uniform 6 %)"])
    fig = register_use(shares, caption="demand test")
    ax = fig.axes[0]
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(["6", "40", "5", "7", "6"])  # the missing block stays blank
    assert [t.get_text() for t in ax.get_yticklabels()] == list(shares.index)
    assert fig._suptitle.get_text() == "demand test"
