import json

import numpy as np
import pytest
from PIL import Image

from vitreg_lib.data import SCENE_OPTIONS, ImageReadError, load_images, make_scenes, sample_images
from vitreg_lib.record import Recorder


def test_scenes_are_deterministic_and_labelled():
    a, b = make_scenes(12, seed=3), make_scenes(12, seed=3)
    assert np.array_equal(a.images, b.images) and a.images.shape == (12, 32, 32, 3)
    assert not np.array_equal(a.images, make_scenes(12, seed=4).images)
    for i in range(12):
        for (x0, y0, x1, y1) in a.boxes[i]:
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
            assert a.masks[i, y0:y1, x0:x1].any()  # the object is inside its box
        assert not a.masks[i].all()  # background remains
    y = a.label("count_shape")
    assert y.min() >= 0 and y.max() < a.num_classes("count_shape")
    assert np.array_equal(y, a.label("count") * 3 + a.label("largest_shape"))
    fg = a.patch_foreground(4)
    assert fg.shape == (12, 8, 8) and 0 <= fg.min() and fg.max() <= 1
    with pytest.raises(ValueError, match="Unknown task"):
        a.label("colour")


def test_sample_photos_ship_offline():
    photos = sample_images()
    assert len(photos) == 4 and all(p.mode == "RGB" for p in photos.values())


def test_load_images_folder_and_bad_files(tmp_path):
    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    Image.new("L", (20, 20)).save(tmp_path / "b.jpg")
    assert list(load_images(tmp_path)) == ["a.png", "b.jpg"]
    (tmp_path / "c.png").write_bytes(b"not an image")
    with pytest.raises(ImageReadError, match="c.png"):
        load_images(tmp_path)
    with pytest.raises(ImageReadError, match="does not exist"):
        load_images(tmp_path / "missing.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="No image files"):
        load_images(tmp_path / "empty")


def test_recorder_writes_json_and_table(tmp_path):
    rec = Recorder("nb", results_dir=tmp_path, show=False)
    rec("outlier_pct", np.float32(1.5), paper=2.37, model="m", note="n")
    rec("no_paper", float("inf"))
    data = json.loads((tmp_path / "nb.json").read_text())
    assert data["outlier_pct"] == {"value": 1.5, "paper": 2.37, "model": "m", "note": "n",
                                   "comparable": ""}
    assert data["no_paper"]["value"] is None
    assert list(rec.table()["quantity"]) == ["outlier_pct"]
    with pytest.raises(ValueError, match="letters, digits"):
        rec("bad name", 1)


def test_a_number_recorded_quietly_is_kept_but_not_printed(tmp_path, capsys):
    """Chapter 5 records its 32 control numbers with show=False: its table shows them."""
    rec = Recorder("nb", results_dir=tmp_path)
    rec("shown", 1.0, model="m")
    rec("quiet", 2.0, model="m", show=False)
    assert capsys.readouterr().out == "shown = 1 — m\n"
    assert json.loads((tmp_path / "nb.json").read_text())["quiet"]["value"] == 2.0
    Recorder("nb2", results_dir=tmp_path, show=False)("forced", 3.0, show=True)
    assert capsys.readouterr().out == "forced = 3\n"


def test_image_set_showcase_mixes_photos_and_scenes():
    from vitreg_lib.data import analysis_images

    s = analysis_images(2, 5, seed=0)
    assert len(s.images) == 7 and s.scene_indices == [2, 3, 4, 5, 6]
    assert s.showcase(4) == ["astronaut", "chelsea", "scene_0", "scene_1"]
    assert analysis_images(0, 3).showcase(4) == ["scene_0", "scene_1", "scene_2"]
    assert analysis_images(3, 0).showcase(2) == ["astronaut", "chelsea"]
    objects, known = s.objects_on_grid(8)  # the scenes' masks on an 8x8 grid; photos unknown
    assert objects.shape == known.shape == (7, 8, 8)
    assert not known[:2].any() and known[2:].all() and not objects[:2].any()
    assert (objects[2:] == (s.scenes.foreground_on_grid(8) > 0)).all() and objects[2:].any()
    assert analysis_images(3, 0).objects_on_grid(8) is None


def test_separate_scenes_have_disjoint_boxes():
    s = make_scenes(40, seed=2, max_objects=4, separate=True)
    for boxes in s.boxes:
        for i in range(len(boxes)):
            for j in range(i):
                a, b = boxes[i], boxes[j]
                assert a[0] > b[2] or a[2] < b[0] or a[1] > b[3] or a[3] < b[1]
    assert np.array_equal(make_scenes(5, seed=1).images, make_scenes(5, seed=1, separate=False).images)


def test_labelled_images_scenes_and_offline_error(tmp_path, monkeypatch):
    from vitreg_lib.data import labelled_images

    s = labelled_images("scenes", 10, seed=3)
    assert len(s.images) == 10 and np.array_equal(s.labels, make_scenes(10, seed=3).label("count"))
    with pytest.raises(ValueError, match="Unknown dataset"):
        labelled_images("ImageNet", 5)



def test_an_unreachable_dataset_host_is_retried_then_named_with_the_mirror_setting(monkeypatch, tmp_path):
    import torchvision

    from vitreg_lib import data

    urls, waits = [], []

    class Offline:
        url = "https://www.example-host.org/~kriz/cifar-10-python.tar.gz"

        def __init__(self, root, train, download):
            urls.append(Offline.url)
            raise OSError("no network")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", Offline)
    monkeypatch.setattr(data.time, "sleep", waits.append)
    with pytest.raises(RuntimeError, match=r"www.example-host.org did not deliver cifar-10-python.tar.gz "
                                           r"after 4 tries.*VITREG_MIRROR_CIFAR10=URL"):
        data.labelled_images("CIFAR10", 5, root=tmp_path)
    assert len(urls) == 4 and waits == [2.0, 4.0, 8.0]  # backoff doubles
    monkeypatch.setenv("VITREG_MIRROR_CIFAR10", "https://mirror.example.net/c10.tar.gz")
    with pytest.raises(RuntimeError, match="mirror.example.net did not deliver c10.tar.gz"):
        data.labelled_images("CIFAR10", 5, root=tmp_path)
    assert urls[-1] == "https://mirror.example.net/c10.tar.gz"
    assert Offline.url.startswith("https://www.example-host.org")  # restored after the call
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "data"))
    assert data.data_root() == tmp_path / "data"


def test_settings_for_the_register_chapters():
    from vitreg_lib.config import MINI_FAMILY, settings
    from vitreg_lib.models import get_spec, load_model

    mini = settings("offline", smoke=False, device="cpu")
    assert mini.family == MINI_FAMILY  # all five are bundled
    assert [get_spec(n).registers for n in mini.family] == [0, 1, 2, 4, 8]
    depth = len(load_model(mini.search.model).model.blocks)
    assert 0 <= mini.search.max_layer < depth and get_spec(mini.search.trained).registers > 0
    full = settings("pretrained", smoke=False, device="cpu").search
    assert (full.model, full.max_layer, full.top_k) == ("dinov2_l", 17, 45)  # Jiang et al.'s DINOv2-L setting
    assert get_spec(full.trained).registers == 4


def test_the_content_controls_run_on_both_dinov2_register_models_of_the_published_book():
    """Chapter 5's controls: DINOv2-S and -B with registers in the publish profile ([CLS] on S
    only, for the CPU budget), every target on every model elsewhere, and a clear error for a
    model the controls do not run on."""
    from vitreg_lib.config import settings

    pub = settings("pretrained", smoke=False, device="cpu", profile="publish")
    assert pub.controls_models == ("dinov2_s_reg", "dinov2_b_reg")
    assert pub.control_targets("dinov2_s_reg") == ("registers", "cls")
    assert pub.control_targets("dinov2_b_reg") == ("registers",)
    assert "dinov2_b_reg" in pub.all_models()  # its weights are fetched (and planted by the benchmark)
    full = settings("pretrained", smoke=False, device="cpu", profile="full")
    assert all(full.control_targets(m) == ("registers", "cls") for m in full.controls_models)
    mini = settings("offline", smoke=True, device="cpu")
    assert mini.control_targets("mini_reg4") == ("registers", "cls")
    with pytest.raises(ValueError, match="not one of the controls' models"):
        pub.control_targets("dinov2_l_reg")


def test_chapter_1s_headline_pair_is_one_chapter_1_runs_in_every_profile():
    """The headline figure shows a model without registers beside its counterpart with
    them, both run by chapter 1: in the full profile too, whose pairs start with DINOv2-S
    (not among chapter 1's models: its headline once failed with a KeyError there)."""
    from dataclasses import replace

    from vitreg_lib.config import settings

    for s in (settings("pretrained", smoke=False, device="cpu", profile=p) for p in ("full", "publish")):
        assert s.headline_pair == ("dinov2_l", "dinov2_l_reg")
        assert s.outlier_pairs == [("dinov2_l", "dinov2_l_reg")]  # the explorer's pairs
    for smoke in (True, False):
        off = settings("offline", smoke=smoke, device="cpu")
        assert off.outlier_pairs == list(off.pairs) and off.headline_pair == off.pairs[0]
    odd = replace(settings("pretrained", smoke=False, device="cpu", profile="full"),
                  outlier_models=("dinov2_g",))
    with pytest.raises(ValueError, match="add one pair's models to outlier_models"):
        _ = odd.headline_pair


def test_a_notebook_shows_its_settings_within_the_column():
    """Each chapter displays its settings in the first cell: one field per line, no line over
    the 78 characters of output the book's column shows at 1280 px, every field there."""
    import dataclasses

    from IPython.lib.pretty import pretty

    from vitreg_lib.config import settings, shown

    for s in (settings("pretrained", smoke=False, device="cpu", profile="publish"),
              settings("offline", smoke=True, device="cpu")):
        text = shown(s)
        assert max(len(line) for line in text.splitlines()) <= 78
        assert text.startswith("Settings(\n    tier=") and text.endswith("\n)")
        assert all(f"\n    {f.name}=" in text for f in dataclasses.fields(s))
        assert shown(s.search).startswith("TestTimeSearch(\n    model=")
        assert pretty(s) == text and pretty(s.search) == shown(s.search)  # what a notebook displays


def test_the_offline_tier_keeps_its_old_name_as_an_alias():
    """The offline tier was called "mini" while it held the minis only: the old name still
    gives the same settings, and a build under it writes to the same results folder."""
    import sys
    from pathlib import Path

    from vitreg_lib.config import canonical_tier, settings

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import build_book

    assert settings("mini", smoke=True, device="cpu") == settings("offline", smoke=True, device="cpu")
    assert settings("mini", smoke=True, device="cpu").tier == "offline" == canonical_tier("mini")
    assert build_book.results_dir(Path("out"), "mini") == build_book.results_dir(Path("out"), "offline")
    with pytest.raises(ValueError, match="tier must be 'auto' or one of \\('offline', 'pretrained'\\)"):
        settings("tiny", device="cpu")


def test_scene_options_border_texture_trigger():
    plain = make_scenes(6, seed=2, size=32)
    # options left at their defaults draw exactly the scenes drawn before they existed
    assert np.array_equal(plain.images, make_scenes(6, seed=2, size=32, border=0, texture=0.0,
                                                    trigger=0.0).images)
    s = make_scenes(40, seed=1, size=32, border=4, max_object=0.3, trigger=0.5, separate=True)
    assert not s.masks[:, :4].any() and not s.masks[:, -4:].any()
    assert not s.masks[:, :, :4].any() and not s.masks[:, :, -4:].any()
    for b in s.boxes:
        assert (b[:, :2] >= 4).all() and (b[:, 2:] <= 28).all()
    trig = s.label("trigger")
    assert set(np.unique(trig)) == {0, 1}  # both kinds drawn at p = 0.5 in 40 scenes
    assert np.array_equal(s.label("count_trigger"), s.label("count") * 2 + trig)
    assert s.num_classes("count_trigger") == 2 * 3
    with pytest.raises(ValueError, match="trigger objects"):
        s.label("largest_shape")
    textured = make_scenes(6, seed=2, size=32, texture=0.2)
    bg = ~textured.masks
    assert textured.images[bg].std() > plain.images[~plain.masks].std()
    with pytest.raises(ValueError, match="border"):
        make_scenes(2, size=16, border=6, max_object=0.5)
    with pytest.raises(ValueError, match="probability"):
        make_scenes(2, trigger=2)


def test_clutter_varies_the_background_and_leaves_objects_flat():
    assert np.array_equal(make_scenes(4, seed=3, size=32).images,
                          make_scenes(4, seed=3, size=32, clutter=0.0).images)
    plain = make_scenes(8, seed=3, size=32, noise=0.0)
    cl = make_scenes(8, seed=3, size=32, noise=0.0, clutter=0.2)
    for s in (plain, cl):
        for img, mask in zip(s.images, s.masks):  # objects are one flat colour each
            assert len(np.unique(img[mask].reshape(-1, 3), axis=0)) <= len(s.boxes[0]) + 3
    # background patches (4 px) differ from each other far more under clutter
    def patch_spread(s):
        means = s.images.reshape(8, 8, 4, 8, 4, 3).mean(axis=(2, 4))
        bg = s.patch_foreground(4) == 0
        return np.mean([means[i][bg[i]].std(axis=0).mean() for i in range(8)])
    assert patch_spread(cl) > 3 * patch_spread(plain)
    assert "clutter" in SCENE_OPTIONS


def test_regions_split_the_background_into_flat_parts():
    assert np.array_equal(make_scenes(4, seed=3, size=32).images,
                          make_scenes(4, seed=3, size=32, regions=0).images)
    plain = make_scenes(16, seed=3, size=32, noise=0.0)
    reg = make_scenes(16, seed=3, size=32, noise=0.0, regions=5)

    def spreads(s):  # (spread of background patch means over the image, mean step to a neighbour)
        means = s.images.reshape(16, 8, 4, 8, 4, 3).mean(axis=(2, 4)).astype(float)
        bg = s.patch_foreground(4) == 0
        spread = np.mean([means[i][bg[i]].std(axis=0).mean() for i in range(16)])
        both = bg[:, :, 1:] & bg[:, :, :-1]
        step = np.abs(means[:, :, 1:] - means[:, :, :-1]).mean(-1)[both]
        return spread, np.median(step)
    (s0, n0), (s1, n1) = spreads(plain), spreads(reg)
    assert s1 > 3 * s0  # the background is no longer one value...
    assert n1 < 2 * n0 + 1  # ...yet most neighbouring background patches still look alike
    with pytest.raises(ValueError, match="regions"):
        make_scenes(1, regions=1)
    assert "regions" in SCENE_OPTIONS


def test_object_clutter_textures_objects_and_keeps_their_masks():
    flat = make_scenes(6, seed=4, size=32, noise=0.0, separate=True)
    assert np.array_equal(flat.images, make_scenes(6, seed=4, size=32, noise=0.0, separate=True,
                                                   object_clutter=0.0).images)
    tex = make_scenes(6, seed=4, size=32, noise=0.0, separate=True, object_clutter=0.1)
    # the objects' fields come from a stream of their own, so the layout is the same
    assert np.array_equal(tex.masks, flat.masks) and all(map(np.array_equal, tex.boxes, flat.boxes))
    for s, few in ((flat, True), (tex, False)):
        colours = [len(np.unique(img[m].reshape(-1, 3), axis=0)) for img, m in zip(s.images, s.masks)]
        assert (max(colours) <= 4) == few  # flat: one colour per object; textured: many
    assert np.array_equal(tex.images[~tex.masks], flat.images[~flat.masks])  # background untouched
    assert "object_clutter" in SCENE_OPTIONS


def test_gradient_zero_and_no_noise_make_every_background_patch_alike():
    ramp = make_scenes(6, seed=5, size=32, noise=0.0)
    assert np.array_equal(ramp.images, make_scenes(6, seed=5, size=32, noise=0.0, gradient=0.15).images)
    flat = make_scenes(6, seed=5, size=32, noise=0.0, gradient=0.0)
    # the same layout and colours: only the background's ramp is gone
    assert np.array_equal(flat.masks, ramp.masks) and all(map(np.array_equal, flat.boxes, ramp.boxes))
    for s, one in ((flat, True), (ramp, False)):
        bg = [len(np.unique(img[~m].reshape(-1, 3), axis=0)) for img, m in zip(s.images, s.masks)]
        assert (max(bg) == 1) == one  # flat: a single background colour per scene
    with pytest.raises(ValueError, match="gradient"):
        make_scenes(1, gradient=-0.1)
    assert "gradient" in SCENE_OPTIONS


def test_a_readers_own_folder_for_probes_photos_and_discovery(tmp_path):
    import json as _json

    from conftest import plant_image_folder

    from vitreg_lib.data import analysis_images, boxed_images, labelled_images

    folder = plant_image_folder(tmp_path / "mine", classes=2, per_class=5)
    lab = labelled_images(str(folder), 6, seed=1)
    assert len(lab.images) == 6 and set(lab.labels) <= {0, 1} and "class_0, class_1" in lab.description
    # the same file name in two class folders stays two images with two labels
    everything = labelled_images(str(folder), None)
    assert len(everything.images) == 10 and list(everything.labels).count(1) == 5
    box = boxed_images(str(folder), 3, seed=2)
    assert len(box.images) == len(box.boxes) == 3 and box.boxes[0].shape == (1, 4)
    photos = analysis_images(2, 0, photos=folder)
    assert list(photos.images) == ["class_0/000.png", "class_0/001.png"]
    assert photos.description == "2 photos from mine/"
    with pytest.raises(ValueError, match="one sub-folder per class"):
        labelled_images(str(folder / "class_0"), 3)
    (folder / "boxes.json").write_text(_json.dumps({"class_0/000.png": [[5, 5, 2, 9]]}))
    with pytest.raises(ValueError, match="x1 <= x0"):
        boxed_images(str(folder), 1)
    (folder / "boxes.json").unlink()
    with pytest.raises(ValueError, match="has no boxes.json"):
        boxed_images(str(folder), 1)
    with pytest.raises(ValueError, match="or the path of a folder"):
        labelled_images("ImageNet", 3)


def test_scenes_may_be_empty_when_asked():
    s = make_scenes(60, seed=4, min_objects=0, max_objects=2)
    counts = s.label("count0")
    assert set(np.unique(counts)) == {0, 1, 2} and s.num_classes("count0") == 3
    empty = np.flatnonzero(counts == 0)
    assert not s.masks[empty].any() and all(len(s.boxes[i]) == 0 for i in empty)
    # the default draws exactly what it drew before the option existed
    assert np.array_equal(make_scenes(5, seed=4).images, make_scenes(5, seed=4, min_objects=1).images)
    with pytest.raises(ValueError, match="min_objects"):
        make_scenes(2, min_objects=4, max_objects=3)


def test_shape_counts_label_counts_each_shape():
    s = make_scenes(50, seed=3, size=32, max_objects=4, separate=True, max_object=0.3)
    y = s.label("shape_counts")
    for label, shapes in zip(y, s.shapes):
        squares, circles, triangles = label % 5, label // 5 % 5, label // 25
        assert [squares, circles, triangles] == [int((shapes == k).sum()) for k in range(3)]
        assert squares + circles + triangles == len(shapes)
    assert s.num_classes("shape_counts") == 125 and y.max() < 125
    with pytest.raises(ValueError, match="no trigger"):
        make_scenes(20, seed=1, size=32, trigger=0.9).label("shape_counts")


def test_paper_table_cells_are_short_with_one_missing_marker_and_numbered_notes(tmp_path):
    from vitreg_lib.record import MISSING, format_value, verdict_word

    cases = [(2.3456, "2.35"), (0.000123456, "0.000123"), (12345.6, "12300"), (1.5e7, "1.5e+07"),
             (7, "7"), (np.int64(7), "7"), (np.float32(0.3333333), "0.333"), (None, MISSING),
             (float("nan"), MISSING), (float("inf"), MISSING), ((0, 100), "0 to 100"),
             ([1.23456, 2, 3], "[1.23, 2, 3]"), ({"a": 1.23456}, "a: 1.23"), ("< 2", "< 2")]
    assert [format_value(x) for x, _ in cases] == [shown for _, shown in cases]
    assert verdict_word("no: the paper's is ViT-g") == ("no", "the paper's is ViT-g")
    assert verdict_word("Yes") == ("yes", "") and verdict_word("") == (MISSING, "")
    assert verdict_word("same quantity, tiny model") == ("partly", "same quantity, tiny model")
    assert verdict_word("nothing alike") == ("partly", "nothing alike")  # "no" only as a whole word

    rec = Recorder("nb", results_dir=tmp_path, show=False)
    rec("outlier_pct_mini_reg0", np.float32(1.234567), paper=2.37, model="mini_reg0",
        note="last block, gap rule", comparable="no: paper is ViT-g")
    rec("norm_ratio_mini_reg0", float("nan"), paper=10.0, model="mini_reg0", note="last block, gap rule",
        comparable="no: paper is ViT-g")  # the same text: the same note number
    rec("outlier_pct_mini_reg4", 0.0, paper="≈ 0 (the high-norm mode disappears)", model="mini_reg4",
        comparable="yes")
    rec("count", 3)
    table = rec.table(list(rec.entries))
    assert table.rows == [
        dict(quantity="outlier_pct_mini_reg0", paper="2.37", here="1.23", model="mini_reg0", comparable="no",
             note="1"),
        dict(quantity="norm_ratio_mini_reg0", paper="10", here=MISSING, model="mini_reg0", comparable="no",
             note="1"),
        dict(quantity="outlier_pct_mini_reg4", paper="≈ 0", here="0", model="mini_reg4", comparable="yes",
             note="2"),
        dict(quantity="count", paper=MISSING, here="3", model=MISSING, comparable=MISSING, note="")]
    assert table.notes == ["comparable: paper is ViT-g; last block, gap rule",
                           "paper: ≈ 0 (the high-norm mode disappears)"]

    html = table._repr_html_()
    assert "table-layout:fixed" in html and "width:100%" in html and "overflow-wrap:anywhere" in html
    assert "outlier_<wbr>pct_<wbr>mini_<wbr>reg0" in html  # long names wrap at "_"
    body = html[html.index("<tbody>"):html.index("</tbody>")]
    assert "gap rule" not in body and "paper is ViT-g" not in body  # the long texts are notes...
    assert html.index("</table>") < html.index("<ol") < html.index("last block, gap rule")  # ...under it
    for text in (html, repr(table), table._repr_markdown_()):
        assert "nan" not in text.lower() and "None" not in text and "1.2345" not in text
        assert "Notes:" in text and "1.23" in text and MISSING in text
    assert repr(table).splitlines()[0].split() == list(table.COLUMNS)
    assert "| outlier\\_pct\\_mini\\_reg0 | 2.37 | 1.23 | mini\\_reg0 | no | 1 |" in table._repr_markdown_()


def test_the_raw_table_stays_a_dataframe(tmp_path):
    import pandas as pd

    rec = Recorder("nb", results_dir=tmp_path, show=False)
    rec("a", 1.234567, paper=2.37, model="m", note="n", comparable="no: x")
    rec("b", None, paper=(1, 2))
    rec("c", 3)  # no paper value: not in the default table
    raw = rec.frame()
    assert isinstance(raw, pd.DataFrame) and list(raw.columns) == ["quantity", "paper", "here", "model",
                                                                    "comparable", "note"]
    assert list(raw["quantity"]) == ["a", "b"] and raw["here"][0] == pytest.approx(1.234567)
    assert raw.loc[0, "comparable"] == "no: x" and raw.loc[0, "note"] == "n"  # the texts in full
    table = rec.table()
    pd.testing.assert_frame_equal(table.frame, raw)
    assert list(table["quantity"]) == ["a", "b"] and len(table) == 2
    assert list(table.columns) == list(raw.columns)
    assert list(rec.frame(names=["c"])["here"]) == [3]
    assert rec.table(names=[])._repr_html_() == "<p><em>No recorded number has a paper value.</em></p>"


def test_the_offline_chapters_draw_the_scenes_the_minis_were_trained_on():
    """Settings.scene is the minis' training data (their bundled configs: up to 4 separated
    objects, not make_scenes' default 3 that may touch), the same for every mini, and the
    chapters' image helpers draw with it; sizes given twice or unknown options are errors."""
    from vitreg_lib.config import MINI_FAMILY, settings
    from vitreg_lib.data import analysis_images, labelled_images, make_scenes
    from vitreg_lib.models import training_scenes

    s = settings("offline", smoke=True, device="cpu")
    assert s.scene["max_objects"] == 4 and s.scene["separate"] is True
    assert all(training_scenes(m) == s.scene for m in MINI_FAMILY)
    assert settings("pretrained", smoke=True, device="cpu").scene == {}
    with pytest.raises(ValueError, match="dinov2_s is a pretrained model"):
        training_scenes("dinov2_s")
    drawn = labelled_images("scenes", 64, seed=3, scene=s.scene)
    assert drawn.labels.max() == 3 and drawn.scenes.size == 32  # 4 objects: label = count - 1
    again = make_scenes(64, seed=3, **s.scene)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(drawn.images, again.pil()))
    assert labelled_images("scenes", 64, seed=3).labels.max() == 2  # the defaults: up to 3 objects
    imgs = analysis_images(0, 5, seed=3, scene=s.scene)
    assert np.array_equal(np.asarray(imgs.images["scene_0"]), np.asarray(again.pil()[0]))
    with pytest.raises(ValueError, match="Two sizes for the scenes"):
        labelled_images("scenes", 4, scene_size=224, scene=s.scene)
    with pytest.raises(ValueError, match="Unknown scene options"):
        analysis_images(0, 2, scene={"objects": 9})
