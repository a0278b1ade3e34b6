"""The publish profile's benchmark at smoke size: the pretrained book built end to end
from planted hub weights (real ids) and planted CIFAR-10 / VOC07 in their on-disk formats,
hub offline, as the Pages workflow builds it with the network."""

import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import bench_publish  # noqa: E402
import build_book  # noqa: E402


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    work = tmp_path_factory.mktemp("bench_publish")
    code = bench_publish.main(["--smoke", "--work", str(work)])
    return work, code


def test_the_pretrained_book_builds_from_planted_downloads(bench):
    work, code = bench
    out = work / "build"
    assert code == 0, (work / "build" / "results" / "pretrained" / "_failed.json").read_text()[-3000:]
    runs = json.loads((build_book.results_dir(out, "pretrained") / "_status.json").read_text())
    assert [r["notebook"] for r in runs] == build_book.notebooks()
    assert all(r["status"] == "ok" and r["profile"] == "publish" for r in runs)
    assert all(0 < r["peak_gb"] < bench_publish.BUDGET_GB for r in runs)  # measured, from VmHWM
    # chapters 3-5 read the probes' extraction of chapter 3 from the feature cache
    assert sum(r["cache_saved_s"] > 0 for r in runs) >= 2, [r["cache_saved_s"] for r in runs]
    report = json.loads((work / "bench_publish.json").read_text())
    assert report["exit"] == 0 and "cores" in report["machine"]


def test_the_status_page_says_what_built_the_book(bench):
    work, _ = bench
    html = build_book.html_dir(work / "build")
    status = (html / "book" / "status.html").read_text()
    assert "<strong>pretrained</strong> tier" in status and "<strong>publish</strong> profile" in status
    assert "timm/vit_small_patch14_dinov2.lvd142m" in status
    assert '<span class="pre">000000000000</span>' in status  # the planted snapshot's revision
    assert re.search(r"cores, [0-9.]+ GB RAM", status) and "CIFAR10, 48 images" in status
    assert "VOC07, 8 images" in status and "peak RAM (GB)" in status
    # the offline tier's DINOv2-S against the hub's, which a pretrained build has: the table,
    # and the verdict on planted random weights
    assert "DINOv2-S against the hub" in status
    assert "<th class=\"head\"><p>block</p></th>" in status and "Unrelated weights" in status


def test_the_intro_shows_the_headline_figure_served_at_a_fixed_address(bench):
    work, _ = bench
    html = build_book.html_dir(work / "build")
    assert (html / build_book.HEADLINE_FILE).is_file()  # the README links to BOOK_URL/headline.png
    intro = (html / "book" / "intro.html").read_text()
    assert "come from the <strong>pretrained</strong> tier" in intro and "publish" in intro
    assert "headline.png" in intro and "DINOv2 ViT-S/14 with 4 registers" in intro  # caption: the models
    assert "No pretrained build has published" not in intro


def test_chapters_alone_remeasure_one_chapter_cold(bench):
    """--chapters reruns the named chapters alone (no feature cache) on the planted data of
    an earlier run, and an unknown name says which chapters exist."""
    work, _ = bench
    assert bench_publish.main(["--smoke", "--work", str(work), "--chapters", "02_where_and_when"]) == 0
    runs = json.loads((work / "bench_publish_alone.json").read_text())["runs"]
    assert [r["notebook"] for r in runs] == ["notebooks/02_where_and_when.ipynb"]
    assert runs[0]["status"] == "ok" and runs[0]["cache_saved_s"] == 0 and runs[0]["peak_gb"] > 0
    with pytest.raises(SystemExit, match="the book's are"):
        bench_publish.main(["--smoke", "--work", str(work), "--chapters", "99_nope"])
    with pytest.raises(SystemExit):  # the full profile is measured chapter by chapter only
        bench_publish.main(["--smoke", "--work", str(work), "--profile", "full"])


def test_chapter_7s_memory_is_read_after_every_step(bench):
    """tools/bench_lost_memory.py (chapter 7's steps, each LOST pass stopped after a few
    chunks) prints the resident memory and its high-water mark after each model's pass."""
    import subprocess

    work, _ = bench
    out = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_lost_memory.py"), "--smoke", "--work",
                          str(work), "--chunks", "1"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = {line[:58].strip(): line[58:].split() for line in out.stdout.splitlines() if "LOST on" in line}
    names = ("dinov2_s", "dinov2_s_reg", "dinov2_s+ttr")
    assert list(rows) == [f"{m}: LOST on 8 images (1 chunks)" for m in names]
    assert all(0 < float(rss) <= float(peak) < bench_publish.BUDGET_GB for rss, peak in rows.values())
