"""Every chapter, unedited, on the pretrained tier as a Colab reader runs it with their own
images, offline: random weights under the real hub ids, and a folder of images in place of
the downloaded datasets (smoke size). Its own file so that pytest-xdist can run it beside
the offline book's smoke build (tests/test_book.py)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import build_book  # noqa: E402

from vitreg_lib.config import settings  # noqa: E402


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
