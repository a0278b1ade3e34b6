"""The in-page explorer (vitreg_lib.explorer): what it sends decodes back to the library's
numbers within the stated precision, and a real browser (Debian's chromium driven by
Playwright, network blocked) draws those numbers from a page opened from disk."""

import json
import re

import numpy as np
import pytest
import torch
from conftest import Page, tiny
from PIL import Image

from vitreg_lib import explorer
from vitreg_lib.features import extract, progress_bar
from vitreg_lib.outliers import HistogramGap, MeanStd, Percentile, detect, patch_norm_maps

RULES = [HistogramGap(), Percentile(90), MeanStd(1.0)]


def noise_images(n: int, size: int = 16, seed: int = 0) -> dict[str, Image.Image]:
    rng = np.random.default_rng(seed)
    return {f"noise_{i}": Image.fromarray(rng.integers(0, 256, (size, size + 4 * i, 3), dtype=np.uint8))
            for i in range(n)}


@pytest.fixture(scope="module")
def pair():
    """A tiny model without and one with 2 registers, on 4 noise images, every block."""
    images = noise_images(4)
    feats = {"tiny_r0": extract(tiny(registers=0), list(images.values()), layers="all", attention=True),
             "tiny_r2": extract(tiny(registers=2, seed=1), list(images.values()), layers="all",
                                attention=True)}
    return feats, images


@pytest.mark.parametrize("rule", RULES, ids=lambda r: type(r).__name__)
def test_decoded_arrays_are_the_librarys_within_the_stated_precision(pair, rule):
    feats, _ = pair
    shown = [0, 2, 3]
    for f in feats.values():
        arrays = explorer.precompute(f, rule)
        payload = json.loads(json.dumps(explorer.encode(arrays, shown, bins=getattr(rule, "bins", 60))))
        got = explorer.decode(payload)
        for pos, layer in enumerate(arrays.layers):
            norms = patch_norm_maps(f, layer)  # [B, rows, cols], float32
            exact = norms.reshape(len(norms), -1)
            lo, hi = float(exact.min()), float(exact.max())
            step = payload["norm"]["step"][pos]
            assert step == pytest.approx((hi - lo) / 255)
            err = np.abs(got["norms"][pos] - exact[shown])
            assert err.max() <= step / 2 * (1 + 1e-6) + 1e-6  # half a step: <= 0.2 % of the range
            res = detect(norms, rule)
            assert np.array_equal(got["mask"][pos], res.mask.reshape(len(norms), -1)[shown])
            thr = payload["threshold"][pos]
            assert (thr is None) == (not np.isfinite(res.threshold))
            assert thr is None or thr == res.threshold
            assert payload["flagged_pct"][pos] == pytest.approx(100 * res.fraction)
            ranks = got["rank"][pos]
            assert (ranks[np.arange(len(shown)), exact[shown].argmax(axis=1)] == 1).all()
            assert sorted(ranks[0]) == list(range(1, exact.shape[1] + 1))
            counts, _ = np.histogram(exact.astype(np.float64), bins=payload["bins"])
            assert np.array_equal(got["hist"][pos], counts)
            cls = f.cls_attention(layer).float().mean(1).reshape(len(norms), -1).numpy()[shown]
            assert np.abs(got["cls"][pos] - cls).max() <= payload["cls"]["step"][pos] / 2 + 1e-7
            if f.layout.num_registers:
                reg = f.register_attention(layer).float().mean(2).flatten(2).numpy()[shown]
                assert got["reg"][pos].shape == reg.shape
                assert np.abs(got["reg"][pos] - reg).max() <= payload["reg"]["step"][pos] / 2 + 1e-7
            else:
                assert "reg" not in got and payload["reg"] is None


def test_payload_is_bounded_by_its_arrays_and_the_page_says_its_weight(pair):
    feats, images = pair
    ex = explorer.show(feats, images, rule=HistogramGap(), data="4 noise images",
                       pairs=[("tiny_r0", "tiny_r2")], plotlyjs="static")
    # per model: layers x shown images x patches x (norm + rank + [CLS] + registers) bytes + 1 bit of flag
    raw = sum(f.depth * 4 * 16 * (3 + f.layout.num_registers + 1 / 8) for f in feats.values())
    thumbs = sum(len(explorer.thumbnail(im, 160)["jpeg"]) for im in images.values())
    assert ex.payload_nbytes <= 4 / 3 * raw + thumbs + 12_000  # base64 + the per-layer scales and histograms
    assert ex.nbytes - ex.payload_nbytes < 20_000  # the caption and the drawing code
    stated = re.search(r"Weight: (\d+) kB in this page \(plotly\.js [\d.]+ MB loaded once", ex.html)
    assert stated and abs(int(stated.group(1)) * 1000 - ex.nbytes) <= 600
    assert "8-bit" in ex.html and "HistogramGap" not in ex.html and "histogram gap" in ex.html
    inline = explorer.show(feats, images, rule=HistogramGap(), data="4 noise images", plotlyjs="inline")
    assert inline.nbytes > explorer.bundle_path().stat().st_size > 1e6
    assert ex._repr_html_() == ex.html


def test_plotlyjs_follows_the_book_build(pair, monkeypatch):
    feats, images = pair
    monkeypatch.delenv(explorer.STATIC_BOOK_ENV, raising=False)
    assert explorer.show(feats, images, rule=HistogramGap(), data="d").plotlyjs == "inline"
    monkeypatch.setenv(explorer.STATIC_BOOK_ENV, "1")
    ex = explorer.show(feats, images, rule=HistogramGap(), data="d")
    assert ex.plotlyjs == "static" and f"_static/{explorer.bundle_name()}" in ex.html
    assert "plotly.js v" not in ex.html  # the bundle itself is not in the page


def test_bad_input_is_named(pair):
    feats, images = pair
    with pytest.raises(ValueError, match="4 images in its features but 2 given"):
        explorer.show(feats, dict(list(images.items())[:2]), rule=HistogramGap(), data="d")
    with pytest.raises(ValueError, match="not among the images"):
        explorer.show(feats, images, rule=HistogramGap(), data="d", shown=["nope"])
    with pytest.raises(ValueError, match="two labels"):
        explorer.show(feats, images, rule=HistogramGap(), data="d", pairs=[("tiny_r0", "nope")])
    deeper = extract(tiny(registers=0, depth=4), list(images.values()), layers="all", attention=True)
    with pytest.raises(ValueError, match="a pair shares its layer slider"):
        explorer.show({**feats, "deep": deeper}, images, rule=HistogramGap(), data="d",
                      pairs=[("tiny_r0", "deep")])
    with pytest.raises(ValueError, match="plotlyjs must be"):
        explorer.show(feats, images, rule=HistogramGap(), data="d", plotlyjs="cdn")


def test_progress_bars_in_the_static_book_are_text_or_nothing(monkeypatch, capsys):
    """A tqdm.auto bar in the static book is an empty widget box: in a book build
    (VITREG_STATIC_BOOK) extract draws none unless asked, and then as plain text."""
    import tqdm.std

    lm, x = tiny(), torch.randn(6, 3, 16, 16)
    made = []
    real_init = tqdm.std.tqdm.__init__

    def spy(self, *args, **kwargs):
        made.append((type(self).__module__, kwargs.get("disable")))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(tqdm.std.tqdm, "__init__", spy)
    monkeypatch.delenv("VITREG_FEATURE_CACHE", raising=False)  # a cache hit would run no pass at all
    monkeypatch.setenv(explorer.STATIC_BOOK_ENV, "1")
    extract(lm, x, layers=[-1], batch_size=2)  # three batches: a bar by default elsewhere
    assert made == [("tqdm.std", True)] and capsys.readouterr().err == ""
    extract(lm, x, layers=[-1], batch_size=2, progress=True)
    assert made[-1] == ("tqdm.std", False) and "features tiny_r2" in capsys.readouterr().err
    monkeypatch.delenv(explorer.STATIC_BOOK_ENV)
    extract(lm, x, layers=[-1], batch_size=2)
    assert made[-1][1] is False  # outside the book: tqdm.auto's bar, as before
    monkeypatch.setenv(explorer.STATIC_BOOK_ENV, "1")  # the one bar every batched loop goes through
    assert list(progress_bar([1, 2], "register neurons")) == [1, 2] and made[-1] == ("tqdm.std", True)


# --------------------------------------------------------------------------- in a real browser

#: the system browser Playwright drives (its own browser download is not used):
#: $VITREG_CHROMIUM, else Debian's chromium, else another Chromium found on the machine
def test_a_browser_with_no_network_draws_the_librarys_norms(browser, pair, tmp_path):
    feats, images = pair
    rule = Percentile(90)  # flags 10 %, so the outlined patches can be checked
    names = list(images)
    ex = explorer.show(feats, images, rule=rule, data="4 noise images", pairs=[("tiny_r0", "tiny_r2")],
                       shown=names[:3], plotlyjs="static")
    page = Page(browser, ex.save(tmp_path / "book" / "page.html").as_uri())
    page.ready()
    steps = {label: explorer.precompute(f, rule) for label, f in feats.items()}

    def check(layer: int, image: int) -> None:
        drawn = page.traces("norm")
        assert [t["name"] for t in drawn] == ["tiny_r0", "tiny_r2"]
        for t in drawn:
            f = feats[t["name"]]
            exact = patch_norm_maps(f, layer)[image]
            every = steps[t["name"]].norms[layer]
            step = (every.max() - every.min()) / 255  # one step per model and layer, over every image
            assert np.abs(np.asarray(t["z"]) - exact).max() <= step / 2 * (1 + 1e-5) + 1e-6
        flagged = sorted(map(tuple, page.flagged()[0]))
        mask = detect(patch_norm_maps(feats["tiny_r0"], layer), rule).mask[image]
        assert flagged == sorted(zip(*np.nonzero(mask)))
        assert f"norm, layer {layer}" in page.titles()

    last = feats["tiny_r0"].depth - 1
    check(last, 0)  # the default view: the pair, first image, last block
    assert len(page.traces("cls")) == 2 and len(page.traces("register")) == 1
    page.move_slider_to(0, last + 1)
    page.page.wait_for_function("() => document.querySelector('.js-plotly-plot .annotation-text')"
                                ".textContent.includes('layer 0')")
    check(0, 0)
    page.pick(1, 2)  # the third image
    page.page.wait_for_timeout(300)
    check(0, 2)
    text = page.hover_patch(1, 1, 2)  # trace 1: tiny_r0's norm heatmap
    value = float(patch_norm_maps(feats["tiny_r0"], 0)[2, 1, 2])
    shown = re.search(r"norm ([\d.]+)", text)
    assert shown and abs(float(shown.group(1)) - value) <= 1e-3 * max(abs(value), 1) + 0.01, text
    assert re.search(r"rank \d+ of 16 in this image", text), text
    assert not page.errors, page.errors
    assert not page.blocked, page.blocked  # nothing asked for the network


def test_the_inline_explorer_works_offline_too(browser, pair, tmp_path):
    feats, images = pair
    ex = explorer.show({"tiny_r2": feats["tiny_r2"]}, images, rule=HistogramGap(), data="4 noise images",
                       plotlyjs="inline")
    page = Page(browser, ex.save(tmp_path / "inline.html").as_uri())
    page.ready()
    assert [t["name"] for t in page.traces("norm")] == ["tiny_r2"]
    assert not page.errors and not page.blocked
