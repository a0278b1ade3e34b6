"""Smoke-executes every notebook of _toc.yml through papermill and builds the book
(tools/build_book.py --mode smoke), then checks what the reader would get."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_book  # noqa: E402

from vitreg_lib import data, features, outliers  # noqa: E402
from vitreg_lib.config import settings  # noqa: E402
from vitreg_lib.models import load_model  # noqa: E402
from vitreg_lib.paper import PAPER  # noqa: E402


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("book")
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "build_book.py"), "--mode", "smoke",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out


def test_every_toc_notebook_ran_and_recorded(built):
    status = json.loads((built / "results" / "_status.json").read_text())
    assert [s["notebook"] for s in status] == build_book.notebooks()
    assert all(s["status"] == "ok" and s["mode"] == "smoke" for s in status)
    for nb in build_book.notebooks():
        assert (built / "results" / f"{Path(nb).stem}.json").is_file(), nb


def test_chapter1_numbers_are_what_the_library_measures(built):
    rec = json.loads((built / "results" / "01_high_norm_tokens.json").read_text())
    s = settings("mini", smoke=True)
    imgs = data.analysis_images(s.n_photos, s.n_scenes, seed=0)
    for name in s.models:
        entry = rec[f"outlier_pct_{name}"]
        assert entry["paper"] == PAPER["F1"]["outlier_pct"] and entry["model"] == name
        f = features.extract(load_model(name), list(imgs.images.values()), layers=[-1])
        expect = outliers.summarize(f, -1, outliers.HistogramGap())["outlier_pct"]
        assert entry["value"] == pytest.approx(expect, abs=1e-6)
        assert 0 <= entry["value"] <= 100
        assert "histogram gap" in entry["note"] and "scenes" in entry["note"]
    assert rec["register_over_patch_norm_mini_reg4"]["value"] > 0


def test_book_pages_show_figures_and_links(built):
    html = built / "_build" / "html"
    assert (html / "index.html").is_file()
    ch1 = (html / "notebooks" / "01_high_norm_tokens.html").read_text()
    assert len(re.findall(r"<img [^>]*src=\"[^\"]+\.png\"", ch1)) >= 5
    assert "Paper vs here" in ch1 and "google.colab" not in ch1  # setup cell hidden
    intro = (html / "book" / "intro.html").read_text()
    assert build_book.colab_url("notebooks/01_high_norm_tokens.ipynb") in intro
    assert "notebooks/01_high_norm_tokens.ipynb" in (html / "book" / "status.html").read_text()


def test_repository_url_is_one_setting():
    url = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]["url"]
    for nb in build_book.notebooks():
        text = (ROOT / nb).read_text()
        assert f"git+{url}" in text, f"{nb}: Colab install cell must use {url}"
    readme = (ROOT / "README.md").read_text()
    for nb in build_book.notebooks():
        assert build_book.colab_url(nb) in readme, f"README lacks the Colab link of {nb}"


def test_notebooks_are_committed_without_outputs_and_share_parameters():
    for nb in build_book.notebooks():
        cells = json.loads((ROOT / nb).read_text())["cells"]
        code = [c for c in cells if c["cell_type"] == "code"]
        assert all(not c["outputs"] and c["execution_count"] is None for c in code), nb
        params = [c for c in code if "parameters" in c["metadata"].get("tags", [])]
        assert len(params) == 1, nb
        src = "".join(params[0]["source"])
        for name in ("smoke", "tier", "device", "seed"):
            assert re.search(rf"^{name} = ", src, re.M), (nb, name)


@pytest.fixture(scope="module")
def pretrained_offline(tmp_path_factory):
    """What a Colab reader runs (tier "pretrained"), offline: the hub cache holds random
    weights under the real timm ids of every model the pretrained smoke settings use,
    and a planted folder of images (one sub-folder per class, boxes.json) stands in for
    the downloaded datasets. Numbers are meaningless; the code path is the reader's."""
    from conftest import fill_hub_cache, plant_image_folder

    from vitreg_lib.models import get_spec

    root = tmp_path_factory.mktemp("pretrained")
    s = settings("pretrained", smoke=True)
    names = {*s.models, *s.sizes, *s.probe_models, *s.family, s.search.model, s.search.trained,
             *s.discovery.models}
    for name in sorted(names):
        fill_hub_cache(root / "hub", get_spec(name).source)
    return root, plant_image_folder(root / "my_images"), s


@pytest.mark.parametrize("nb", build_book.notebooks())
def test_every_chapter_runs_unedited_on_the_pretrained_tier(nb, pretrained_offline, monkeypatch):
    import papermill as pm

    from vitreg_lib.config import FLOPS_ARCH

    root, folder, s = pretrained_offline
    monkeypatch.setenv("HF_HUB_CACHE", str(root / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    results = root / "results" / Path(nb).stem
    monkeypatch.setenv("VITREG_RESULTS_DIR", str(results))
    pm.execute_notebook(str(ROOT / nb), str(root / f"{Path(nb).stem}.ipynb"), kernel_name="vitreg",
                        parameters=dict(smoke=True, tier="pretrained", dataset=str(folder)),
                        cwd=str(ROOT), progress_bar=False)
    rec = json.loads((results / f"{Path(nb).stem}.json").read_text())
    assert rec, f"{nb} recorded nothing"
    pretrained = {m for pair in s.pairs for m in pair} | set(s.probe_models) | set(s.discovery.models)
    models = {e["model"].split("+")[0].strip() for e in rec.values() if e["model"]}
    # chapter 5 counts the FLOPs of ViT-L's architecture; chapter 6's planted demo is a mini
    assert models and models <= pretrained | {FLOPS_ARCH, "mini_reg0"}, models
    notes = " ".join(e["note"] for e in rec.values())
    if nb.startswith("notebooks/01"):
        assert rec["outlier_pct_dinov2_s_reg"]["note"].endswith("2 photos from my_images/")
    if any(nb.startswith(f"notebooks/0{i}") for i in (3, 4, 7)):
        assert "my_images/" in notes, notes[:500]  # the reader's folder, not CIFAR-10 / VOC07


def test_an_unknown_dataset_names_the_options():
    with pytest.raises(ValueError, match="nor a folder.*'auto'.*boxes.json"):
        settings("mini", smoke=True, dataset="imagenet")


def test_chapter2_numbers_are_what_the_library_measures(built):
    from vitreg_lib.models import training_log
    from vitreg_lib.train import summarize_log

    rec = json.loads((built / "results" / "02_where_and_when.json").read_text())
    s = settings("mini", smoke=True)
    assert rec["emergence_fraction"]["value"] == summarize_log(training_log(s.log_model))["emerged_at"]
    assert rec["emergence_fraction"]["paper"] == pytest.approx(1 / 3, abs=1e-3)
    for name in s.sizes:
        split = rec[f"split_depth_{name}"]["value"]
        assert split is None or 0 <= split < 1
        assert 0 <= rec[f"max_outlier_pct_{name}"]["value"] <= 100


def test_chapters3_and_4_recorded_numbers(built):
    from vitreg_lib.paper import probe_reference

    s = settings("mini", smoke=True)
    ch3 = json.loads((built / "results" / "03_redundant_patches.json").read_text())
    ch4 = json.loads((built / "results" / "04_local_and_global.json").read_text())
    ref = set(probe_reference().values())
    for name in s.probe_models:
        assert -1 <= ch3[f"median_similarity_normal_{name}"]["value"] <= 1
        assert -1 <= ch3[f"similarity_norm_spearman_{name}"]["value"] <= 1
        top1 = ch4[f"position_top1_normal_{name}"]
        assert 0 <= top1["value"] <= 100 and top1["paper"] == 41.7 and "95 % interval [" in top1["note"]
        cls = ch4[f"global_accuracy_cls_{name}"]
        assert 0 <= cls["value"] <= 100 and cls["paper"] == 86.0
        for key, entry in ch4.items():  # a group too small to measure carries no number, and says so
            if entry["value"] is None:
                assert "too few" in entry["note"], key
            if entry["paper"] is not None:
                assert entry["paper"] in ref, key


def test_chapter5_numbers_are_what_the_library_measures(built):
    from vitreg_lib import registers
    from vitreg_lib.config import FLOPS_ARCH

    rec = json.loads((built / "results" / "05_registers.json").read_text())
    s = settings("mini", smoke=True)
    imgs = data.analysis_images(s.n_photos, s.n_scenes, seed=0)
    for name in s.probe_models:
        f = features.extract(load_model(name), list(imgs.images.values()), layers=[-1])
        expect = outliers.summarize(f, -1, outliers.HistogramGap())["outlier_pct"]
        assert rec[f"outlier_pct_{name}"]["value"] == pytest.approx(expect, abs=1e-6)
    cost = registers.register_flops(FLOPS_ARCH, counts=(0, 4))
    assert rec["extra_flops_pct_vitl_4"]["value"] == pytest.approx(cost["extra FLOPs (%)"].iloc[1])
    assert rec["extra_flops_pct_vitl_4"]["paper"] == "< 2"
    assert rec["register_over_patch_norm_mini_reg4"]["value"] > 0
    assert -1 <= rec["register_attention_overlap_mini_reg4"]["value"] <= 1
    for name in s.probe_models:
        assert 0 <= rec[f"top_norms_on_background_pct_{name}"]["value"] <= 100


def test_chapter6_finds_the_planted_neuron_and_records_the_fix(built):
    rec = json.loads((built / "results" / "06_test_time_registers.json").read_text())
    assert rec["planted_neuron_ranked_first"]["value"] == 1
    assert rec["outlier_pct_planted"]["value"] > 0 and rec["outlier_pct_planted_fixed"]["value"] == 0
    assert rec["planted_extra_over_patch_norm"]["value"] > 5
    assert -1 <= rec["neuron_norm_map_correlation_mini_reg0"]["value"] <= 1
    ttr = rec["global_accuracy_test_time_register_0_mini_reg0"]
    assert ttr["paper"] == 84.5 and (ttr["value"] is None) == ("too few" in ttr["note"])
    html = (built / "_build" / "html" / "notebooks" / "06_test_time_registers.html").read_text()
    assert len(re.findall(r"<img [^>]*src=\"[^\"]+\.png\"", html)) >= 6 and "Paper vs here" in html


def test_chapter7_corloc_is_what_the_library_measures(built):
    from vitreg_lib import discovery

    rec = json.loads((built / "results" / "07_object_discovery.json").read_text())
    s = settings("mini", smoke=True)
    d = s.discovery
    assert {f"corloc_{m}" for m in d.models} | {f"corloc_{d.test_time}_ttr"} <= set(rec)
    scene = data.scene_kwargs(load_model(d.models[0]).info["data"])
    ds = data.boxed_images(d.dataset, d.n_images, seed=30_000, **scene)
    found = discovery.discover(load_model(d.pair[1]), ds.images, k=d.k)
    entry = rec[f"corloc_{d.pair[1]}"]
    assert entry["value"] == pytest.approx(discovery.corloc(found.boxes, ds.boxes))
    assert f"k = {d.k}" in entry["note"] and "scenes" in entry["note"]
    assert entry["comparable"].startswith("no")
    html = (built / "_build" / "html" / "notebooks" / "07_object_discovery.html").read_text()
    assert len(re.findall(r"<img [^>]*src=\"[^\"]+\.png\"", html)) >= 3 and "Paper vs here" in html
