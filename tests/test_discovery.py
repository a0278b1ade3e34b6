"""LOST and CorLoc on known answers (vitreg_lib.discovery)."""

import numpy as np
import pytest
import torch
from conftest import tiny
from PIL import Image

from vitreg_lib import discovery
from vitreg_lib.data import boxed_images, voc_box
from vitreg_lib.features import extract
from vitreg_lib.models import crop_geometry


def _scene_features(grid, objects, dim=16, noise=0.3, seed=0):
    """Background patches share a direction b (plus noise); each object's patches share
    a direction of its own that points away from b, so they correlate positively with
    each other only. ``objects``: (row0, col0, row1, col1, direction index) boxes."""
    rng = np.random.default_rng(seed)
    rows, cols = grid
    b = np.zeros(dim)
    b[0] = 1.0
    f = b + noise * rng.normal(size=(rows, cols, dim)) / np.sqrt(dim)
    for r0, c0, r1, c1, axis in objects:
        d = np.zeros(dim)
        d[axis] = 2.0 if axis % 2 else -2.0
        f[r0:r1, c0:c1] = d - b + noise * rng.normal(size=(r1 - r0, c1 - c0, dim)) / np.sqrt(dim)
    return f.reshape(rows * cols, dim)


def test_hand_computed_affinity_degree_and_seed():
    feats = np.array([[1.0, 0], [0, 1], [1, 1], [-1, 0]])
    a = discovery.affinity(feats)
    assert np.array_equal(a, [[1, 0, 1, -1], [0, 1, 1, 0], [1, 1, 2, -1], [-1, 0, -1, 1]])
    assert list(discovery.degree(a)) == [1, 1, 2, 0]  # the diagonal is not a link
    r = discovery.lost(feats, (2, 2), k=4)
    assert r.seed == 3 and r.seed_rc == (1, 1)
    assert r.box_patches == (1, 1, 2, 2) and r.mask.sum() == 1


def test_lost_boxes_the_object_of_a_constructed_feature_map():
    feats = _scene_features((8, 10), [(2, 3, 5, 7, 1)])
    r = discovery.lost(feats, (8, 10), k=20)
    assert 2 <= r.seed_rc[0] < 5 and 3 <= r.seed_rc[1] < 7
    assert r.box_patches == (3, 2, 7, 5)  # col0, row0, col1, row1
    assert r.mask.sum() == 12


def test_lost_keeps_the_seeds_component_only():
    # the smaller object has the lower degree, so it seeds; the larger one is not boxed
    feats = _scene_features((10, 10), [(1, 1, 3, 3, 1), (5, 4, 9, 9, 2)])
    r = discovery.lost(feats, (10, 10), k=30)
    assert r.box_patches == (1, 1, 3, 3)


def test_corloc_at_the_iou_boundary():
    gt = [np.array([[0.0, 0, 10, 10]])]
    assert discovery.iou([0, 0, 10, 5], gt[0])[0] == pytest.approx(0.5)
    assert discovery.corloc(np.array([[0, 0, 10, 5]]), gt) == 100.0  # IoU 0.50: a hit
    assert discovery.corloc(np.array([[0, 0, 10, 4.9]]), gt) == 0.0  # IoU 0.49: a miss
    # some ground-truth box is enough; disjoint boxes have IoU 0
    gts = [np.array([[50.0, 50, 60, 60], [0, 0, 10, 10]]), np.array([[0.0, 0, 4, 4]])]
    assert discovery.corloc(np.array([[0, 0, 10, 10], [10, 10, 20, 20]]), gts) == 50.0
    with pytest.raises(ValueError, match="no ground-truth box"):
        discovery.corloc(np.array([[0, 0, 1, 1]]), [np.zeros((0, 4))])
    with pytest.raises(ValueError, match="2 predicted boxes for 1 images"):
        discovery.corloc(np.zeros((2, 4)), gt)


def test_voc_boxes_become_continuous():
    assert voc_box(1, 1, 500, 375) == (0.0, 0.0, 500.0, 375.0)  # the whole 500x375 image


@pytest.mark.parametrize("w,h", [(200, 100), (90, 160), (64, 64)])
def test_boxes_map_back_through_resize_and_centre_crop(w, h):
    size = 32
    g = crop_geometry(w, h, size)
    # the model's whole input is the centre square of the original image
    whole = g.to_original(np.array([0, 0, size, size]))
    side = min(w, h)
    np.testing.assert_allclose(whole, [(w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2],
                               atol=0.02 * side)
    # a marked square lands where the mapping says it does
    arr = np.zeros((h, w, 3), np.uint8)
    x0, y0 = w // 2 - 8, h // 2 - 8
    arr[y0:y0 + 16, x0:x0 + 16] = 255
    from vitreg_lib.models import preprocess

    x = preprocess(Image.fromarray(arr), size, (0, 0, 0), (1, 1, 1), 4)[0, 0].numpy()
    ys, xs = np.nonzero(x > 0.5)
    back = g.to_original(np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]))
    np.testing.assert_allclose(back, [x0, y0, x0 + 16, y0 + 16], atol=max(w, h) / size * 1.5)


def test_keys_are_the_blocks_keys(images):
    lm = tiny(registers=1)
    f = extract(lm, images, layers=[-1], keys=True)
    m = lm.model
    with torch.no_grad():
        x = m.norm_pre(m._pos_embed(m.patch_embed(images)))
        for blk in m.blocks[:-1]:
            x = blk(x)
        blk = m.blocks[-1]
        b, n, d = x.shape
        k = blk.attn.qkv(blk.norm1(x)).reshape(b, n, 3, 2, d // 2)[:, :, 1].reshape(b, n, d)
    torch.testing.assert_close(f.attention_keys(-1), k, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("registers,test_time", [(0, False), (2, False), (0, True)])
def test_only_patch_keys_enter_and_boxes_are_in_original_pixels(registers, test_time):
    from vitreg_lib import registers as regs

    lm = tiny(registers=registers, img_size=16)
    photos = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (24 + 8 * i, 40, 3), np.uint8))
              for i in range(3)]

    def run(model):
        found = discovery.discover(model, photos, k=8)
        f = extract(model, photos, layers=[-1], keys=True)
        assert f.attention_keys(-1).shape[1] == f.layout.num_tokens  # keys of every token exist
        patches = f.layout.split(f.attention_keys(-1))["patches"]
        assert patches.shape[1] == f.layout.num_patches == 16
        for i, r in enumerate(found.results):
            again = discovery.lost(patches[i], f.layout.grid, 8)
            assert (again.seed, again.box_patches) == (r.seed, r.box_patches)
        return found, f.layout

    if test_time:
        with regs.add_test_time_registers(lm, [(1, 0)]) as fixed:
            found, layout = run(fixed)
        assert layout.extra == 1
    else:
        found, layout = run(lm)
    assert layout.num_registers == registers
    for im, box in zip(photos, found.boxes):
        w, h = im.size
        assert 0 <= box[0] < box[2] <= w + 1e-6 and 0 <= box[1] < box[3] <= h + 1e-6
    assert "k = 8" in found.describe() and "keys of the last block" in found.describe()


def test_discovery_errors():
    lm = tiny(registers=0, img_size=16)  # 16 patches
    photo = [Image.new("RGB", (16, 16))]
    with pytest.raises(ValueError, match="k=100 is outside 1..16"):
        discovery.discover(lm, photo)
    with pytest.raises(ValueError, match="k=0"):
        discovery.lost(np.ones((4, 2)), (2, 2), k=0)
    with pytest.raises(ValueError, match="for a 2x3 grid"):
        discovery.lost(np.ones((4, 2)), (2, 3), k=2)

    class NoQKV(torch.nn.Module):  # an attention with separate q, k, v projections
        def __init__(self, dim):
            super().__init__()
            self.q = torch.nn.Linear(dim, dim)

        def forward(self, x, **_):
            return self.q(x)

    lm.model.blocks[-1].attn = NoQKV(32)
    with pytest.raises(TypeError, match="no fused qkv"):
        discovery.discover(lm, photo, k=4)
    with pytest.raises(ValueError, match="'scenes' \\(offline\\), 'VOC07'.*boxes.json"):
        boxed_images("COCO", 3)


def test_scenes_come_with_their_boxes():
    s = boxed_images("scenes", 5, seed=1, size=32, separate=True, max_objects=3)
    assert len(s.images) == len(s.boxes) == 5 and s.images[0].size == (32, 32)
    for b, mask in zip(s.boxes, s.scenes.masks):
        assert b.shape[1] == 4 and len(b) >= 1
        for x0, y0, x1, y1 in b.astype(int):
            assert mask[y0:y1, x0:x1].any()


def test_summary_interval_placement_and_comparison():
    import pandas as pd

    from vitreg_lib.models import crop_geometry as geometry

    # two images of 4x4 patches of 4 px; seeds at patch (0, 0) and (3, 3)
    results = [discovery.LostResult(0, (4, 4), np.zeros((4, 4)), np.zeros((4, 4), bool), (0, 0, 1, 1)),
               discovery.LostResult(15, (4, 4), np.zeros((4, 4)), np.zeros((4, 4), bool), (3, 3, 4, 4))]
    res = discovery.Discovery("m", results, np.array([[0.0, 0, 4, 4], [12, 12, 16, 16]]), 3, 4,
                              [geometry(16, 16, 16)] * 2)
    gt = [np.array([[0.0, 0, 4, 4]]), np.array([[0.0, 0, 8, 8]])]  # a hit, then a miss
    value, low, high = discovery.corloc_interval(res.boxes, gt)
    assert value == 50.0 and 0 <= low <= 50 <= high <= 100
    norms = np.arange(32, dtype=float).reshape(2, 4, 4)  # the seed of image 1 is its top patch
    flags = norms >= 31
    place = discovery.seed_placement(res, norms, flags, gt)
    assert place["seed on outlier (%)"] == 50.0
    assert place["seed off every object box (%)"] == 50.0  # seed 2 at (14, 14) is outside [0, 8)
    assert place["seed norm percentile (mean)"] == pytest.approx((0 + 100 * 15 / 16) / 2)
    table = discovery.summary({"a": res, "b": res}, gt, {"a": place})
    assert list(table["model"]) == ["a", "b"] and table.loc[0, "CorLoc (%)"] == 50.0
    assert pd.isna(table.loc[1, "seed on outlier (%)"])
    assert "intervals overlap" in discovery.compare(table, "a", "b")
    far = table.copy()
    far.loc[0, ["low", "high"]] = [40.0, 60.0]
    far.loc[1, ["CorLoc (%)", "low", "high"]] = [95.0, 90.0, 99.0]
    sentence = discovery.compare(far, "a", "b")
    assert "rises beyond the 95 % intervals" in sentence and "nan" not in sentence
    with pytest.raises(ValueError, match="norm maps and flags for the 2 images"):
        discovery.seed_placement(res, norms[:1], flags[:1], gt)


def test_published_corloc_beside_each_model():
    from vitreg_lib.paper import lost_reference

    assert lost_reference("DINOv2", 0) == 35.3 and lost_reference("DINOv2", 4) == 55.4
    assert lost_reference("DeiT-III", 0) == 11.7 and lost_reference("OpenCLIP", 4) == 37.1
    assert lost_reference("mini", 4) is None  # the paper ran no mini model
    assert lost_reference("DINOv2", 0, "dinov2_l", test_time=True) == 53.8  # Jiang et al., ViT-L only
    assert lost_reference("DINOv2", 0, "dinov2_s", test_time=True) is None
    # the mini tier sets DINOv2's numbers beside its minis, marked not comparable
    assert lost_reference("mini", 4, stand_in=True) == 55.4
    assert lost_reference("mini", 0, stand_in=True) == 35.3
    assert lost_reference("mini", 0, "mini_reg0", test_time=True, stand_in=True) == 53.8
    assert [lost_reference("mini", r, stand_in=True) for r in (1, 2, 8)] == [None] * 3  # never measured


def test_the_spread_over_register_counts_is_set_against_its_noise():
    import pandas as pd

    table = pd.DataFrame({"model": ["r0", "r1", "r4"], "CorLoc (%)": [16.4, 29.3, 20.0],
                          "low": [9.0, 20.0, 12.0], "high": [24.0, 38.0, 28.0], "images": [64] * 3})
    text = discovery.spread(table, ["r0", "r1", "r4"])
    assert text.startswith("Over r0, r1, r4, CorLoc ranges from 16.4 % (r0, [9.0, 24.0]) to 29.3 % (r1, ")
    assert "is not monotone" in text and "intervals overlap, so the spread is within sampling noise" in text
    assert "One image moves CorLoc by 1.6 points on 64 images." in text
    table.loc[1, ["low", "high"]] = [25.0, 33.0]
    assert "larger than sampling noise" in discovery.spread(table, ["r0", "r1"])
    assert "rises with every step" in discovery.spread(table, ["r0", "r1"])


# --- the degenerate case: a shared key component makes every degree the same ---------------


def test_lost_flags_keys_dominated_by_a_shared_bias():
    feats = _scene_features((8, 10), [(2, 3, 5, 7, 1)])
    plain = discovery.lost(feats, (8, 10), k=20)
    assert not plain.degenerate and plain.box_patches == (3, 2, 7, 5)
    bias = np.zeros(feats.shape[1])
    bias[-1] = 50.0  # a direction no patch uses, far larger than any patch's own part
    r = discovery.lost(feats + bias, (8, 10), k=20)
    assert (discovery.affinity(feats + bias) > 0).all()  # every pair correlates positively
    assert r.degenerate and (r.degree == 79).all()  # every patch has the maximal degree
    assert r.seed == 0 and r.box_patches == (0, 0, 10, 8)  # the tie rule's seed, the whole crop
    # centring removes any shared component: the object is found again
    centred = discovery.lost(feats + bias - (feats + bias).mean(axis=0), (8, 10), k=20)
    assert not centred.degenerate and centred.box_patches == (3, 2, 7, 5)
    # equal degrees below the maximum are degenerate too (the seed is the tie rule's)
    assert discovery.lost(np.eye(4), (2, 2), k=2).degenerate


def _biased_keys_model(bias: float = 1000.0):
    """A tiny ViT whose last block adds a huge constant to every key."""
    lm = tiny(registers=1, img_size=16)
    attn = lm.model.blocks[-1].attn
    d = attn.qkv.in_features
    with torch.no_grad():
        attn.qkv.bias[d:2 * d] = bias
    return lm


def _photos(n=3):
    return [Image.fromarray(np.random.default_rng(i).integers(0, 255, (24, 32, 3), np.uint8))
            for i in range(n)]


def test_discover_warns_and_flags_degenerate_images():
    import warnings

    lm, photos = _biased_keys_model(), _photos()
    with pytest.warns(UserWarning, match=r"degenerated on 3 of 3 images.*tie rule \(patch 0.*"
                                         r"centre_keys=True.*layer="):
        found = discovery.discover(lm, photos, k=8)
    assert found.degenerate.tolist() == [True, True, True]
    assert found.seeds == [(0, 0)] * 3 and found.subset([1]).degenerate.tolist() == [True]
    gt = [np.array([[0.0, 0, 8, 8]])] * 3
    assert discovery.summary({"m": found}, gt).loc[0, "degenerate"] == 3
    # the knob: centred keys lose the shared bias, and nothing degenerates or warns
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        centred = discovery.discover(lm, photos, k=8, centre_keys=True)
    assert not centred.degenerate.any()
    assert "centred per image" in centred.describe() and "centred" not in found.describe()
    f = extract(lm, photos, layers=[-1], keys=True)
    keys = f.layout.split(f.attention_keys(-1))["patches"]
    for i, r in enumerate(centred.results):
        again = discovery.lost(keys[i] - keys[i].mean(dim=0), f.layout.grid, 8)
        assert (again.seed, again.box_patches) == (r.seed, r.box_patches)


def test_discover_reads_the_keys_of_the_layer_asked_for():
    lm, photos = _biased_keys_model(), _photos(2)
    found = discovery.discover(lm, photos, k=8, layer=0)  # block 0 has no bias: no warning needed
    assert "keys of block 0" in found.describe()
    f = extract(lm, photos, layers=[0], keys=True)
    keys = f.layout.split(f.attention_keys(0))["patches"]
    for i, r in enumerate(found.results):
        again = discovery.lost(keys[i], f.layout.grid, 8)
        assert (again.seed, again.box_patches, again.degenerate) == (r.seed, r.box_patches, r.degenerate)
    with pytest.warns(UserWarning, match="degenerated on 2 of 2 images") as caught:
        discovery.discover(lm, photos, k=8, layer=-1, centre_keys=False)
    assert "centre_keys=True" in str(caught[0].message)


def test_discover_in_chunks_keeps_the_same_boxes_and_the_norm_maps_of_one_pass():
    """Chunks bound the memory of a long run (VOC07's 5,011 images) and change nothing; the
    norm maps come from the same forward pass as the keys."""
    import warnings

    from vitreg_lib import features, outliers
    from vitreg_lib.data import make_scenes
    from vitreg_lib.discovery import discover
    from vitreg_lib.models import load_model

    lm = load_model("mini_reg4")
    images = make_scenes(7, seed=5).pil()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a degenerate image or two warns; not the point here
        whole = discover(lm, images, k=9, norms=True)
        parts = discover(lm, images, k=9, norms=True, chunk=3)
        plain = discover(lm, images, k=9)
    assert np.array_equal(whole.boxes, parts.boxes) and whole.seeds == parts.seeds == plain.seeds
    expect = outliers.patch_norm_maps(features.extract(lm, images, layers=[-1]), -1)
    np.testing.assert_allclose(parts.norm_maps, expect, rtol=1e-6)
    assert plain.norm_maps is None and parts.subset([1, 4]).norm_maps.shape == (2, 8, 8)


def test_discover_models_gives_each_model_its_own_run():
    import warnings

    from vitreg_lib.data import make_scenes
    from vitreg_lib.discovery import discover, discover_models
    from vitreg_lib.models import load_model

    images = make_scenes(4, seed=2).pil()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        many = discover_models(["mini_reg0", "mini_reg4"], images, k=9, norms=True)
        one = discover(load_model("mini_reg4"), images, k=9, norms=True)
    assert list(many) == ["mini_reg0", "mini_reg4"] and many["mini_reg4"].model_name == "mini_reg4"
    assert np.array_equal(many["mini_reg4"].boxes, one.boxes)
    assert np.array_equal(many["mini_reg4"].norm_maps, one.norm_maps)


def test_voc07_reads_its_images_when_used_and_they_are_torchvision_s(tmp_path):
    """VOC07's 5,011 images decoded take ~4.4 GB: the boxed set holds their paths and
    reads an image when it is used; what it reads is what torchvision's VOCDetection
    returns, boxes included, and LOST on it equals LOST on the decoded list."""
    import sys
    import warnings
    from pathlib import Path

    import torchvision

    from vitreg_lib.data import ImageFiles
    from vitreg_lib.discovery import discover
    from vitreg_lib.models import load_model

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import plant

    plant.plant_voc07(tmp_path, n=6)
    ds = boxed_images("VOC07", 4, seed=3, root=tmp_path)
    assert isinstance(ds.images, ImageFiles) and len(ds.images) == 4
    assert "4 random (seed 3) of 6" in ds.description
    tv = torchvision.datasets.VOCDetection(str(tmp_path), year="2007", image_set="trainval")
    picked = [int(Path(p).stem) - 1 for p in ds.images.paths]
    for i, j in enumerate(picked):
        image, target = tv[j]
        assert np.array_equal(np.asarray(ds.images[i]), np.asarray(image.convert("RGB")))
        objects = target["annotation"]["object"]
        first = objects[0]["bndbox"] if isinstance(objects, list) else objects["bndbox"]
        assert tuple(ds.boxes[i][0]) == voc_box(*(first[c] for c in ("xmin", "ymin", "xmax", "ymax")))
    assert [im.size for im in ds.images[1:3]] == [ds.images[1].size, ds.images[2].size]  # slices read too
    lm = load_model("mini_reg4")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lazy = discover(lm, ds.images, k=9, chunk=3)
        held = discover(lm, list(ds.images), k=9)
    assert np.array_equal(lazy.boxes, held.boxes) and lazy.seeds == held.seeds
