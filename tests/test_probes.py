import numpy as np
import pandas as pd
import pytest
import torch

from vitreg_lib.probes import (
    global_probe,
    local_probes,
    neighbour_similarity,
    patch_pixels,
    pick_tokens,
    split_images,
)

GRID = (4, 4)


def test_split_is_by_image_and_disjoint():
    train, test = split_images(50, 0.3, seed=1)
    assert len(set(train) & set(test)) == 0 and len(train) + len(test) == 50 and len(test) == 15
    with pytest.raises(ValueError, match="at least 4 images"):
        split_images(3)


def test_neighbour_similarity_known_cases():
    e = torch.ones(1, 16, 8)  # identical patches: similarity 1 everywhere
    assert np.allclose(neighbour_similarity(e, GRID), 1.0)
    stripes = torch.tensor([1.0, -1.0]).repeat(8).view(1, 16, 1)  # columns alternate sign
    s = neighbour_similarity(stripes, GRID)[0]
    # left/right neighbours are opposite (-1), up/down neighbours equal (+1)
    assert s[0, 0] == pytest.approx(0.0)  # corner: one of each
    assert s[0, 1] == pytest.approx(-1 / 3)  # top edge: two opposite, one equal
    assert s[1, 1] == pytest.approx(0.0)  # interior: two of each


def _position_tokens(b=40, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    onehot = np.eye(16)[None].repeat(b, 0)
    return onehot @ rng.normal(size=(16, 12)) + noise * rng.normal(size=(b, 16, 12))


def test_position_probe_reads_linear_positions_and_fails_on_constants():
    x = _position_tokens()
    mask = np.zeros((40, 16), bool)
    mask[:, 5] = True  # one "outlier" position per image
    pixels = np.random.default_rng(0).normal(size=(40, 16, 6))
    res = {(r.probe, r.group, r.metric): r for r in local_probes(x, mask, pixels, GRID, min_tokens=5)}
    top1 = res[("position", "normal", "top-1 accuracy (%)")]
    assert top1.value > 95 and top1.low <= top1.value <= top1.high and top1.tokens == 12 * 15
    assert res[("position", "normal", "mean distance (patches)")].value < 0.1
    const = local_probes(np.ones((40, 16, 12)), mask, pixels, GRID, min_tokens=5)
    acc = next(r for r in const if r.group == "normal" and r.metric.startswith("top-1"))
    assert acc.value < 100 / 15 + 1  # chance: one cell of the 15 normal positions at best


def test_pixel_probe_recovers_linearly_encoded_pixels():
    rng = np.random.default_rng(0)
    pixels = rng.normal(size=(40, 16, 6))
    x = np.concatenate([pixels, rng.normal(size=(40, 16, 4))], -1)  # pixels readable from tokens
    res = local_probes(x, np.zeros((40, 16), bool), pixels, GRID)
    err = next(r for r in res if r.probe == "pixels" and r.group == "normal")
    assert err.value < 0.1 * (pixels ** 2).sum(-1).mean()


def test_too_few_outliers_gives_no_number():
    x = _position_tokens()
    res = local_probes(x, np.zeros((40, 16), bool), np.zeros((40, 16, 3)), GRID)
    out = [r for r in res if r.group == "outlier"]
    assert all(r.value is None and "too few outlier tokens" in r.note for r in out)


def test_global_probe_reads_image_label_and_respects_the_split():
    rng = np.random.default_rng(0)
    n = 200
    labels = rng.integers(0, 3, n)
    patches = rng.normal(size=(n, 16, 8))
    patches[:, :, :3] += 4 * np.eye(3)[labels][:, None]  # every patch carries the label
    mask = np.zeros((n, 16), bool)
    mask[: n // 2, 0] = True  # half the images have an outlier
    sets = pick_tokens(patches, mask)
    assert len(sets["outlier patch"][1]) == n // 2
    sets["noise"] = (rng.normal(size=(n, 8)), np.arange(n))
    res = {r.group: r for r in global_probe(sets, labels, n)}
    assert res["normal patch"].value > 95 and res["outlier patch"].value > 90
    assert res["noise"].value < 60
    assert res["normal patch"].images == 60  # 30 % of 200 images, one token each
    _, test = split_images(n)
    assert res["outlier patch"].images == np.isin(np.arange(n // 2), test).sum()


def test_patch_pixels_order_matches_patch_grid():
    img = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    px = patch_pixels(img, 4)
    assert px.shape == (2, 4, 48)
    assert px[0, 1, 0] == img[0, 0, 0, 4]  # patch (row 0, col 1) starts at pixel column 4
    assert px[0, 2, 0] == img[0, 0, 4, 0]


def test_global_token_sets_from_features():
    from conftest import tiny

    from vitreg_lib.features import extract
    from vitreg_lib.probes import global_token_sets, special_token_sets

    f = extract(tiny(registers=2), torch.randn(6, 3, 16, 16), layers=[-1])
    mask = np.zeros((6, 4, 4), bool)
    mask[:2, 0, 0] = True
    sets = global_token_sets(f, -1, mask)
    assert list(sets) == ["cls", "normal patch", "outlier patch", "register 0", "register 1"]
    assert sets["outlier patch"][1].tolist() == [0, 1]
    np.testing.assert_allclose(sets["outlier patch"][0][1], f.patches(-1)[1, 0].numpy())
    np.testing.assert_allclose(sets["register 1"][0], f.registers(-1)[:, 1].numpy())
    special = special_token_sets(f, -1)  # what experiments/global_split.py adds to its patches
    assert list(special) == ["cls", "register 0", "register 1"]
    assert special["cls"][1].tolist() == list(range(6))
    np.testing.assert_allclose(special["cls"][0], f.cls(-1).numpy())


def test_similarity_norm_correlation_sign():
    from vitreg_lib.probes import similarity_norm_correlation

    sim = np.linspace(0, 1, 50)
    assert similarity_norm_correlation(sim, 3 * sim + 1) == pytest.approx(1.0)
    assert similarity_norm_correlation(sim, -sim) == pytest.approx(-1.0)


def test_headlines_name_value_paper_and_interval():
    import pandas as pd

    from vitreg_lib.probes import ProbeResult, headlines, to_frame

    rows = [ProbeResult("position", "outlier", "top-1 accuracy (%)", 30.0, 25.0, 35.5, 40, 9),
            ProbeResult("global", "cls", "accuracy (%)", None, None, None, 0, 0, "too few")]
    frame = to_frame(rows).assign(model="m")
    out = headlines(frame, {("position", "top-1 accuracy (%)", "outlier"): 22.8}, "data", "no")
    assert out[0]["name"] == "position_top1_outlier_m" and out[0]["paper"] == 22.8
    assert "[25, 35.5], 40 test tokens" in out[0]["note"] and out[0]["note"].endswith("data")
    assert out[1]["name"] == "global_accuracy_cls_m" and out[1]["value"] is None
    assert "n/a" in out[1]["note"] and "too few" in out[1]["note"]
    assert isinstance(frame, pd.DataFrame)


def test_paper_reference_keys_match_probe_results():
    from vitreg_lib.paper import probe_reference

    ref = probe_reference()
    x = _position_tokens()
    mask = np.zeros((40, 16), bool)
    mask[:, 3] = True
    keys = {(r.probe, r.metric, r.group) for r in local_probes(x, mask, x[..., :2], GRID, min_tokens=5)}
    labels = np.arange(40) % 2
    keys |= {(r.probe, r.metric, r.group) for r in global_probe(
        {"cls": (x[:, 0], np.arange(40)), **pick_tokens(x, mask)}, labels, 40, min_tokens=5)}
    assert keys == set(ref)
    assert ref[("position", "top-1 accuracy (%)", "outlier")] == 22.8


def test_pivot_one_row_per_quantity_one_column_per_model():
    from vitreg_lib.probes import NO_GROUP, ProbeResult, pivot, to_frame

    def rows(model, outlier_value, registers):
        out = [ProbeResult("position", "normal", "top-1 accuracy (%)", 41.7, 38.21, 45.0, 900, 30),
               ProbeResult("position", "normal", "mean distance (patches)", 0.79, 0.7123, 0.874, 900, 30),
               ProbeResult("position", "outlier", "top-1 accuracy (%)", *outlier_value, 12 if
                           outlier_value[0] is None else 60, 9),
               ProbeResult("global", "cls", "accuracy (%)", 86.0, 80.0, 91.5, 30, 30)]
        out += [ProbeResult("global", f"register {r}", "accuracy (%)", None, None, None, 5, 5, "too few")
                for r in range(registers)]
        return to_frame(out).assign(model=model)

    frame = pd.concat([rows("plain", (22.8, 15.0, 30.31), 0), rows("reg", (None, None, None), 1)])
    table = pivot(frame)
    assert list(table.columns) == ["plain", "reg"] and table.columns.name == "model"
    assert list(table.index) == [("position", "top-1 accuracy (%)", "normal"),
                                 ("position", "top-1 accuracy (%)", "outlier"),  # grouped by quantity
                                 ("position", "mean distance (patches)", "normal"),
                                 ("global", "accuracy (%)", "cls"),
                                 ("global", "accuracy (%)", "register 0")]
    assert table.loc[("position", "top-1 accuracy (%)", "normal"), "plain"] == "41.7 [38.2, 45.0]"
    assert table.loc[("position", "top-1 accuracy (%)", "outlier"), "plain"] == "22.8 [15.0, 30.3]"
    assert table.loc[("position", "top-1 accuracy (%)", "outlier"), "reg"] == "n/a (too few tokens: 12)"
    assert table.loc[("position", "mean distance (patches)", "normal"), "reg"] == "0.790 [0.712, 0.874]"
    assert table.loc[("global", "accuracy (%)", "register 0"), "reg"] == "n/a (too few images: 5)"
    assert table.loc[("global", "accuracy (%)", "register 0"), "plain"] == NO_GROUP  # no registers


def test_estimate_keeps_three_significant_digits():
    from vitreg_lib.probes import estimate

    assert estimate(123.456, 100.0, 150.0) == "123 [100, 150]"
    assert estimate(0.0123, 0.01, 0.015) == "0.0123 [0.0100, 0.0150]"
    assert estimate(0.0, 0.0, 0.0) == "0.0 [0.0, 0.0]"
    assert estimate(5.0, None, None) == "5.00"


def test_a_negative_correlation_made_by_the_content_is_named_so():
    """Objects: high norm, low similarity; background: the opposite. Within each group the
    two are unrelated, so the overall negative rho is the content's."""
    from vitreg_lib.probes import correlation_by_content, describe_correlation

    rng = np.random.default_rng(0)
    objects = rng.random(4000) < 0.3
    sim = np.where(objects, rng.normal(0.4, 0.05, 4000), rng.normal(0.9, 0.03, 4000))
    norm = np.where(objects, rng.normal(30, 2, 4000), rng.normal(12, 1, 4000))
    res = correlation_by_content(sim, norm, objects)
    assert res["all"] < -0.5 and abs(res["background"]) < 0.1 and abs(res["object"]) < 0.1
    text = describe_correlation(res, "m")
    assert text.startswith("m: Spearman rho = -0.") and "the opposite of the paper's direction" in text
    assert "comes mostly from the content" in text
    inside = norm + 20 * sim  # now the sign holds within each group too: no such sentence
    same = correlation_by_content(sim, inside, objects)
    assert same["background"] > 0.5 and "comes mostly from the content" not in describe_correlation(same, "m")
    alone = describe_correlation(correlation_by_content(sim, norm), "m")
    assert "Within background" not in alone
