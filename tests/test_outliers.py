import re

import numpy as np
import pytest

from vitreg_lib.outliers import (
    Absolute,
    HistogramGap,
    MeanStd,
    Percentile,
    attention_share,
    background_share,
    detect,
)


def bimodal(n=2000, share=0.02, seed=0):
    rng = np.random.default_rng(seed)
    bulk = rng.normal(50, 5, int(n * (1 - share)))
    high = rng.normal(400, 40, int(n * share))
    return np.concatenate([bulk, high])


def test_gap_rule_finds_planted_high_mode():
    x = bimodal()
    res = detect(x, HistogramGap())
    assert res.found and res.count == 40 and abs(res.fraction - 0.02) < 1e-9
    assert 80 < res.threshold < 360
    assert "histogram gap" in res.rule


def test_gap_rule_finds_nothing_in_unimodal_data():
    x = np.random.default_rng(0).normal(50, 5, 5000)
    res = detect(x, HistogramGap())
    assert not res.found and res.count == 0 and np.isinf(res.threshold)


def test_gap_rule_ignores_the_sparse_tail_of_one_mode():
    x = np.random.default_rng(0).normal(3, 0.8, 300)  # few tokens in the tail, small gaps
    assert detect(x, HistogramGap(min_iqr=0)).count > 0  # without the width test: fooled
    assert detect(x, HistogramGap()).count == 0


def test_gap_rule_ignores_majority_above_gap():
    x = np.concatenate([np.full(10, 1.0), np.full(90, 100.0)])  # "high mode" is the majority
    assert detect(x, HistogramGap()).count == 0


def test_other_rules_name_themselves_and_threshold():
    x = bimodal()
    assert detect(x, Absolute(150)).count == 40
    assert detect(x, Absolute(150)).rule == "norm > 150"
    m = detect(x, MeanStd(3))
    assert m.threshold == pytest.approx(x.mean() + 3 * x.std())
    p = detect(x, Percentile(99))
    assert p.fraction == pytest.approx(0.01, abs=1e-3) and p.rule == "norm > p99"


def test_attention_and_background_share():
    mask = np.zeros((1, 2, 2), bool)
    mask[0, 0, 0] = True
    attn = np.array([[[[0.5, 0.1], [0.1, 0.1]]]])  # one head, rows over all tokens
    out = attention_share(attn, mask)
    assert out["attention_share"] == pytest.approx(0.625) and out["ratio"] == pytest.approx(2.5)
    fg = np.array([[[0.0, 0.5], [0.0, 1.0]]])
    bg = background_share(mask, fg)
    assert bg == {"outliers": 1, "on_background": 1.0, "background_overall": 0.5}


def test_describe_outliers_reports_what_was_found():
    from vitreg_lib import outliers
    from vitreg_lib.outliers import describe_outliers

    base = dict(model="m", layer=-1, rule="r", tokens=100)
    assert "no outliers among 100" in describe_outliers(dict(base, outliers=0))
    text = describe_outliers(dict(base, outliers=3, outlier_pct=3.0, norm_ratio=9.5))
    assert "3 of 100" in text and "3.00 %" in text and "9.5x" in text
    assert not hasattr(outliers, "verdict")  # one verdict, the scorecard's (paper.verdict)


def test_split_layer_is_first_layer_over_the_fraction():
    import pandas as pd

    from vitreg_lib.outliers import split_layer

    t = pd.DataFrame(dict(layer=[0, 1, 2, 3], outlier_fraction=[0.0, 0.001, 0.02, 0.0]))
    assert split_layer(t) == 2 and split_layer(t, min_fraction=0.0005) == 1
    assert split_layer(t.assign(outlier_fraction=0.0)) is None


def test_depth_summary_reads_the_curves(tiny_model, images):
    """Split layer, the layer with most outliers and the largest max / median norm, as the
    per-layer curves give them (a rule that flags the top tokens of every layer)."""
    from vitreg_lib.features import extract
    from vitreg_lib.outliers import Percentile, depth_summary, layer_curves

    f = extract(tiny_model, images, layers="all")
    s = depth_summary(f, Percentile(90))
    curves = layer_curves(f, Percentile(90))
    assert s["blocks"] == f.depth and s["split_layer"] == 0 and s["split_depth"] == 0
    assert s["max_outlier_pct"] == pytest.approx(100 * curves["outlier_fraction"].max())
    assert s["max_over_median"] == pytest.approx(max(curves["max"] / curves["median"]))
    assert s["max_over_median"] >= 1


def planted_maps(outliers: bool, objects_brighter: bool = True, seed: int = 0):
    """64 images of 8x8 patches: background norms ~ N(10, 1); a 3x3 object per image
    (N(20, 2) when brighter); with ``outliers``, two background patches per image at ~100."""
    rng = np.random.default_rng(seed)
    maps = rng.normal(10, 1, (64, 8, 8))
    objects = np.zeros_like(maps, dtype=bool)
    objects[:, 2:5, 2:5] = True
    if objects_brighter:
        maps[objects] = rng.normal(20, 2, objects.sum())
    if outliers:
        maps[:, 7, 0] = rng.normal(100, 5, 64)
        maps[:, 0, 7] = rng.normal(100, 5, 64)
    return maps, objects


def test_objects_are_a_population_not_an_outlier_mode():
    from vitreg_lib.outliers import HistogramGap, describe_modes, mode_split

    maps, objects = planted_maps(outliers=False)
    split = mode_split(maps, HistogramGap(), objects)
    assert not split["outlier_mode"] and split["object_mode"] and split["tail_object_share"] > 0.9
    text = describe_modes(split, "m")
    assert text.startswith("m: two populations and no outlier mode — the upper one is the object patches")
    assert re.search(r"median norm 20(\.\d)? against (9\.9\d|10(\.0\d)?) for background", text), text


def test_an_outlier_mode_above_the_objects_is_named_with_where_it_sits():
    from vitreg_lib.outliers import HistogramGap, describe_modes, mode_split

    maps, objects = planted_maps(outliers=True)
    split = mode_split(maps, HistogramGap(), objects)
    assert split["outlier_mode"] and split["flagged_pct"] == pytest.approx(100 * 2 / 64)
    assert split["flagged_on_background"] == 1.0
    text = describe_modes(split)
    assert text.startswith("an outlier mode — 3.12 % of 4096 patches lie above an empty gap at norm")
    assert "100 % of them are background patches" in text


def test_one_population_and_photos_without_masks():
    from vitreg_lib.outliers import HistogramGap, describe_modes, mode_split

    maps, objects = planted_maps(outliers=False, objects_brighter=False)
    one = describe_modes(mode_split(maps, HistogramGap(), objects))
    assert one.startswith("one population and no outlier")
    photos = describe_modes(mode_split(maps, HistogramGap()))
    assert photos.startswith("no outlier mode — no empty gap") and "without object masks" in photos
    with pytest.raises(ValueError, match="shape"):
        mode_split(maps, HistogramGap(), objects[:2])


def test_norms_by_content_puts_each_patch_in_one_group():
    """Chapter 1's split histograms: object and background patches where the content is
    known (the scenes), photo patches elsewhere; every patch counted once."""
    from vitreg_lib.outliers import norms_by_content

    maps = np.arange(2 * 2 * 3, dtype=float).reshape(2, 2, 3)
    objects = np.zeros(maps.shape, bool)
    objects[1, 0, :2] = True
    known = np.zeros(maps.shape, bool)
    known[1] = True  # image 1 is a scene, image 0 a photo
    groups = norms_by_content(maps, objects, known)
    assert groups["object"].tolist() == [6.0, 7.0] and groups["background"].tolist() == [8.0, 9.0, 10.0, 11.0]
    assert groups["photo"].tolist() == list(range(6))
    assert norms_by_content(maps)["photo"].size == 12 and norms_by_content(maps)["object"].size == 0
    assert norms_by_content(maps, objects)["photo"].size == 0  # objects without known: all known
    with pytest.raises(ValueError, match="must have the maps' shape"):
        norms_by_content(maps, objects[:1])


def test_top_norms_on_background_is_the_share_of_the_top_decile_on_background():
    """Chapter 5's column: of the patches above the top percentile of the chosen images'
    last-block norms, the share (%) with no object pixel."""
    import torch

    from vitreg_lib.features import Features, TokenLayout
    from vitreg_lib.outliers import top_norms_on_background

    tokens = torch.zeros(2, 1 + 4, 3)  # two images: [CLS] and 2x2 patches, 3 channels
    tokens[1, 1:, 0] = torch.tensor([1.0, 2.0, 3.0, 10.0])  # image 1's patch norms
    tokens[0, 1:, 0] = 50.0  # image 0 is left out by ``indices``
    f = Features("toy", TokenLayout(num_cls=1, num_registers=0, grid=(2, 2), patch_size=1), 1, {0: tokens})
    objects_in_patch_1 = np.array([[[0.0, 0.5], [0.0, 0.0]]])
    objects_in_patch_3 = np.array([[[0.0, 0.0], [0.0, 1.0]]])
    assert top_norms_on_background(f, objects_in_patch_1, [1], top=70) == 100.0  # the 10 sits on background
    assert top_norms_on_background(f, objects_in_patch_3, [1], top=70) == 0.0


def test_rules_table_is_one_row_per_model_and_rule():
    """Chapter 1's table of the three rules: indexed by model and rule, the flagged share
    and count as summarize gives them, a ratio only where something is flagged."""
    import torch

    from vitreg_lib.features import Features, TokenLayout
    from vitreg_lib.outliers import Absolute, rules_table, summarize

    tokens = torch.zeros(1, 1 + 4, 2)
    tokens[0, 1:, 0] = torch.tensor([1.0, 1.0, 1.0, 100.0])
    f = Features("toy", TokenLayout(num_cls=1, num_registers=0, grid=(2, 2), patch_size=1), 1, {0: tokens})
    table = rules_table({"toy": f}, [Absolute(50), Absolute(500)])
    assert list(table.index) == [("toy", "norm > 50"), ("toy", "norm > 500")]
    assert table["flagged"].tolist() == [1, 0] and table["flagged (%)"].tolist() == [25.0, 0.0]
    assert table.loc[("toy", "norm > 50"), "ratio"] == summarize(f, -1, Absolute(50))["norm_ratio"] == 100.0
    assert np.isnan(table.loc[("toy", "norm > 500"), "ratio"])
